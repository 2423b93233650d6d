//! Both editions side by side: every call runs on each and must agree.

use std::collections::HashSet;

use alloy::json_abi::StateMutability;
use alloy::primitives::Address;
use alloy::sol_types::{SolCall, SolError};
use healthsense_abi::bindings::HealthSense;

use crate::evm::{EvmEdition, CHAIN_ID};
use crate::stylus::StylusEdition;
use crate::{Edition, Outcome};

/// The accounts scenarios act as (anvil dev accounts, unlocked).
#[derive(Debug, Clone, Copy)]
pub struct Actors {
    /// Deployer and first admin.
    pub admin: Address,
    /// A ward hub.
    pub hub: Address,
    /// A doctor.
    pub doctor: Address,
    /// An insurer.
    pub insurer: Address,
    /// Holds no role.
    pub stranger: Address,
    /// A second hub (a second ward).
    pub hub2: Address,
    /// A second insurer.
    pub insurer2: Address,
    /// A second doctor.
    pub doctor2: Address,
}

/// The two editions, deployed with the same admin at the same address.
pub struct Twin {
    /// Stylus edition (TestVM).
    pub stylus: StylusEdition,
    /// EVM edition (anvil).
    pub evm: EvmEdition,
    /// Block time of the next state-changing call (seconds); each call
    /// advances it by one so every block has a distinct time.
    pub time: u64,
    /// Who is who.
    pub who: Actors,
    views: HashSet<[u8; 4]>,
    /// Calls compared so far.
    pub calls: usize,
}

impl Twin {
    /// Starts anvil, deploys both editions from the same admin, and checks
    /// that both constructors emitted the same logs.
    pub fn new() -> Self {
        let evm = EvmEdition::start(0).expect("anvil starts and the EVM edition deploys");
        let a = evm.accounts().to_vec();
        let who = Actors {
            admin: a[0],
            hub: a[1],
            doctor: a[2],
            insurer: a[3],
            stranger: a[4],
            hub2: a[5],
            insurer2: a[6],
            doctor2: a[7],
        };
        let time = evm.deployed_at + 1;
        let (stylus, ctor) = StylusEdition::deploy(evm.address, CHAIN_ID, who.admin, who.admin, evm.deployed_at);
        assert!(ctor.success, "stylus constructor reverted: {}", ctor.data);
        assert_eq!(ctor.logs, evm.constructor.logs, "constructor logs differ");
        let views = HealthSense::abi::contract()
            .functions()
            .filter(|f| matches!(f.state_mutability, StateMutability::View | StateMutability::Pure))
            .map(|f| f.selector().0)
            .collect();
        Self { stylus, evm, time, who, views, calls: 0 }
    }

    /// Runs `call` from `from` on both editions; panics on any difference.
    pub fn call<C: SolCall>(&mut self, from: Address, call: &C) -> Outcome {
        let data = call.abi_encode();
        let view = self.views.contains(&C::SELECTOR);
        let s = self.stylus.call(from, &data, view, self.time);
        let e = self.evm.call(from, &data, view, self.time);
        if !view {
            self.time += 1;
        }
        self.calls += 1;
        assert_eq!(s.success, e.success, "{}: success differs (stylus data {}, evm data {})", C::SIGNATURE, s.data, e.data);
        assert_eq!(s.data, e.data, "{}: return/revert data differs", C::SIGNATURE);
        assert_eq!(s.logs, e.logs, "{}: logs differ", C::SIGNATURE);
        s
    }

    /// Runs `call`, requires success on both, and decodes the return value.
    pub fn ok<C: SolCall>(&mut self, from: Address, call: C) -> C::Return {
        let out = self.call(from, &call);
        assert!(out.success, "{} reverted: {}", C::SIGNATURE, decode_error(&out.data));
        C::abi_decode_returns(&out.data).expect("return data decodes")
    }

    /// Runs `call`, requires success, and returns its logs.
    pub fn ok_logs<C: SolCall>(&mut self, from: Address, call: C) -> Outcome {
        let out = self.call(from, &call);
        assert!(out.success, "{} reverted: {}", C::SIGNATURE, decode_error(&out.data));
        out
    }

    /// Runs `call` and requires both editions to revert with exactly `err`.
    pub fn fails<C: SolCall, E: SolError + std::fmt::Debug>(&mut self, from: Address, call: C, err: E) {
        let out = self.call(from, &call);
        assert!(!out.success, "{} succeeded, expected {:?}", C::SIGNATURE, err);
        assert_eq!(out.data.as_ref(), err.abi_encode().as_slice(), "{}: expected {:?}, got {}", C::SIGNATURE, err, decode_error(&out.data));
    }

    /// Moves block time forward.
    pub fn advance(&mut self, secs: u64) {
        self.time += secs;
    }
}

/// Human form of revert data, for failure messages.
pub fn decode_error(data: &[u8]) -> String {
    use alloy::sol_types::SolInterface;
    match HealthSense::HealthSenseErrors::abi_decode(data) {
        Ok(e) => format!("{e:?}"),
        Err(_) => format!("0x{}", alloy::hex::encode(data)),
    }
}
