//! The Stylus edition in-process: the exact calldata through the main
//! program's router on the SDK's `TestVM`, with EVM semantics the TestVM lacks
//! supplied here (a revert rolls storage back; the ecrecover precompile is
//! answered by a real native recovery, never a canned value; the main
//! program's delegate call to the records program runs the records program's
//! router on the same storage, as on chain).

use std::collections::BTreeMap;

use alloy::primitives::{Address, Bytes, B256, U256};
use alloy::sol_types::SolCall;
use healthsense_abi::bindings::HealthSense as Abi;
use healthsense_abi::rules::eip712;
use healthsense_contract::{HealthSense, HealthSenseRecords};
use stylus_sdk::abi::{router_entrypoint, Router, CONSTRUCTOR_SELECTOR};
use stylus_sdk::storage::StorageType;
use stylus_sdk::host::VM;
use stylus_sdk::testing::TestVM;

use crate::{Edition, Outcome};

/// Where the records program is deployed; the main program's constructor is
/// given this address.
pub const RECORDS_PROGRAM: Address = Address::new([0x5e; 20]);

/// The Stylus edition on a `TestVM`.
pub struct StylusEdition {
    vm: TestVM,
    address: Address,
    chain_id: u64,
}

pub use healthsense_stylus_host::native_ecrecover;

impl StylusEdition {
    /// A contract at `address` on chain `chain_id` (copy the EVM edition's so
    /// EIP-712 digests agree), constructed by `deployer` with `admin`.
    pub fn deploy(address: Address, chain_id: u64, deployer: Address, admin: Address, time: u64) -> (Self, Outcome) {
        let vm = TestVM::new();
        vm.set_contract_address(address);
        vm.set_chain_id(chain_id);
        let mut me = Self { vm, address, chain_id };
        let mut calldata = CONSTRUCTOR_SELECTOR.to_be_bytes().to_vec();
        calldata.extend(alloy::sol_types::SolValue::abi_encode_params(&(admin, RECORDS_PROGRAM)));
        let out = me.call(deployer, &calldata, false, time);
        (me, out)
    }

    /// The contract's non-zero storage slots, keyed as on chain.
    pub fn storage(&self) -> BTreeMap<B256, B256> {
        self.vm
            .snapshot()
            .storage
            .into_iter()
            .filter(|(_, v)| !v.is_zero())
            .map(|(k, v)| (B256::from(k), v))
            .collect()
    }

    /// Runs `calldata` in the records program on this contract's storage,
    /// as the main program's fallback would by its delegate call, and
    /// registers that outcome as the delegate call's answer. A selector the
    /// records program does not route reverts there with empty data.
    fn answer_delegate_call(&self, calldata: &[u8]) {
        let host = VM { host: Box::new(self.vm.clone()) };
        // SAFETY: slot 0 is the whole contract's storage, as on chain.
        let mut records = unsafe { HealthSenseRecords::new(U256::ZERO, 0, host) };
        let outcome = match calldata.get(..4) {
            Some(head) => {
                let selector = u32::from_be_bytes([head[0], head[1], head[2], head[3]]);
                <HealthSenseRecords as Router<HealthSenseRecords>>::route(&mut records, selector, &calldata[4..])
            }
            None => None,
        };
        self.vm.mock_delegate_call(RECORDS_PROGRAM, calldata.to_vec(), outcome.unwrap_or(Err(Vec::new())));
    }

    /// Registers the precompile answers for every signature in a
    /// `postReadings` call.
    fn answer_ecrecover(&self, calldata: &[u8]) {
        let Ok(call) = Abi::postReadingsCall::abi_decode(calldata) else { return };
        let domain = eip712::domain_separator(self.chain_id, self.address);
        for (reading, sig) in call.readings.into_iter().zip(call.signatures) {
            if sig.len() != 65 {
                continue;
            }
            let digest = eip712::reading_digest(domain, &reading.into());
            let mut input = Vec::with_capacity(128);
            input.extend_from_slice(digest.as_slice());
            input.extend_from_slice(&[0u8; 31]);
            input.push(sig[64]);
            input.extend_from_slice(&sig[..64]);
            let output = native_ecrecover(&input);
            self.vm.mock_static_call(Address::with_last_byte(1), input, Ok(output));
        }
    }
}

impl Edition for StylusEdition {
    fn name(&self) -> &'static str {
        "stylus"
    }

    fn call(&mut self, from: Address, calldata: &[u8], _view: bool, time: u64) -> Outcome {
        let before = self.vm.snapshot().storage;
        self.vm.clear_mocks();
        self.answer_ecrecover(calldata);
        self.vm.set_sender(from);
        self.vm.set_block_timestamp(time);
        if calldata.get(..4) != Some(CONSTRUCTOR_SELECTOR.to_be_bytes().as_slice()) {
            self.answer_delegate_call(calldata);
        }
        let host = VM { host: Box::new(self.vm.clone()) };
        match router_entrypoint::<HealthSense, HealthSense>(calldata.to_vec(), host) {
            Ok(data) => Outcome {
                success: true,
                data: data.into(),
                logs: self
                    .vm
                    .get_emitted_logs()
                    .into_iter()
                    .map(|(topics, data)| (topics, Bytes::from(data)))
                    .collect(),
            },
            Err(data) => {
                self.vm.clear_storage();
                for (k, v) in before {
                    self.vm.set_storage(k, v);
                }
                Outcome { success: false, data: data.into(), logs: vec![] }
            }
        }
    }
}
