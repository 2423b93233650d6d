//! The editions side by side: every call runs on three engines (TestVM,
//! the WASM on the Stylus host, anvil) and must agree; the two Stylus
//! engines' storage must agree slot by slot after every state change.

use std::collections::HashSet;

use alloy::json_abi::StateMutability;
use alloy::primitives::Address;
use alloy::sol_types::{SolCall, SolError};
use healthsense_abi::bindings::HealthSense;

use crate::evm::{EvmEdition, CHAIN_ID};
use crate::stylus::StylusEdition;
use crate::wasm::{self, WasmEdition};
use crate::{Edition, Outcome};
use healthsense_stylus_host::Artifacts;

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

/// The editions, deployed with the same admin at the same address (the
/// name is from when there were two engines).
pub struct Twin {
    /// Stylus edition's source (TestVM).
    pub stylus: StylusEdition,
    /// Stylus edition's WASM artifacts (Stylus host).
    pub wasm: WasmEdition,
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
    /// Starts anvil, deploys the editions from the same admin (the WASM
    /// from [`wasm::artifacts`]), and checks that every constructor emitted
    /// the same logs.
    pub fn new() -> Self {
        Self::with_artifacts(wasm::artifacts())
    }

    /// As [`Twin::new`], with the WASM engine running `artifacts`.
    pub fn with_artifacts(artifacts: &Artifacts) -> Self {
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
        let (wasm, wctor) = WasmEdition::deploy(artifacts, evm.address, CHAIN_ID, who.admin, who.admin, evm.deployed_at);
        assert!(wctor.success, "wasm constructor reverted: {} (trap: {:?})", wctor.data, wasm.last_trap());
        assert_eq!(wctor.logs, evm.constructor.logs, "wasm constructor logs differ");
        let views = HealthSense::abi::contract()
            .functions()
            .filter(|f| matches!(f.state_mutability, StateMutability::View | StateMutability::Pure))
            .map(|f| f.selector().0)
            .collect();
        let twin = Self { stylus, wasm, evm, time, who, views, calls: 0 };
        twin.assert_same_storage("constructor");
        twin
    }

    /// Runs `call` from `from` on every engine; panics on any difference.
    pub fn call<C: SolCall>(&mut self, from: Address, call: &C) -> Outcome {
        let view = self.views.contains(&C::SELECTOR);
        self.call_raw(C::SIGNATURE, from, &call.abi_encode(), view)
    }

    /// Runs raw `calldata` (named `what` in failures) from `from` on every
    /// engine; panics on any difference in outcome, or in the Stylus
    /// engines' storage after a state-changing call.
    pub fn call_raw(&mut self, what: &str, from: Address, calldata: &[u8], view: bool) -> Outcome {
        let s = self.stylus.call(from, calldata, view, self.time);
        let w = self.wasm.call(from, calldata, view, self.time);
        let e = self.evm.call(from, calldata, view, self.time);
        if !view {
            self.time += 1;
        }
        self.calls += 1;
        for (name, other) in [("evm", &e), ("wasm", &w)] {
            assert_eq!(
                s.success, other.success,
                "{what}: success differs between stylus and {name} (stylus data {}, {name} data {}, wasm trap {:?})",
                s.data, other.data, self.wasm.last_trap()
            );
            assert_eq!(s.data, other.data, "{what}: return/revert data differs between stylus and {name}");
            assert_eq!(s.logs, other.logs, "{what}: logs differ between stylus and {name}");
        }
        if !view {
            self.assert_same_storage(what);
        }
        s
    }

    /// Panics unless the TestVM and WASM engines hold the same non-zero
    /// storage slots, naming the first slot that differs.
    pub fn assert_same_storage(&self, after: &str) {
        let (s, w) = (self.stylus.storage(), self.wasm.storage());
        if s == w {
            return;
        }
        let keys: std::collections::BTreeSet<_> = s.keys().chain(w.keys()).collect();
        for k in keys {
            let (a, b) = (s.get(k), w.get(k));
            assert_eq!(a, b, "after {after}: storage slot {k} differs between TestVM ({a:?}) and WASM ({b:?})");
        }
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
