//! The Stylus edition in-process: the exact calldata through the main
//! program's router on the SDK's `TestVM`, with EVM semantics the TestVM lacks
//! supplied here (a revert rolls storage back; the ecrecover precompile is
//! answered by a real native recovery, never a canned value; the main
//! program's delegate call to the records program runs the records program's
//! router on the same storage, as on chain).
//!
//! TestVM keeps one return-data buffer, filled when a mock is registered
//! rather than when a call is made, so several mocked `ecrecover` calls in
//! one transaction would all read the last answer. [`CallHost`] wraps the
//! TestVM and answers each call with its own return data.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;

use alloy::primitives::{Address, Bytes, B256, U256};
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
}

pub use healthsense_stylus_host::native_ecrecover;

impl StylusEdition {
    /// A contract at `address` on chain `chain_id` (copy the EVM edition's so
    /// EIP-712 digests agree), constructed by `deployer` with `admin`.
    pub fn deploy(address: Address, chain_id: u64, deployer: Address, admin: Address, time: u64) -> (Self, Outcome) {
        let vm = TestVM::new();
        vm.set_contract_address(address);
        vm.set_chain_id(chain_id);
        let mut me = Self { vm };
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
        let host = VM { host: Box::new(CallHost::new(&self.vm)) };
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

}

impl Edition for StylusEdition {
    fn name(&self) -> &'static str {
        "stylus"
    }

    fn call(&mut self, from: Address, calldata: &[u8], _view: bool, time: u64) -> Outcome {
        let before = self.vm.snapshot().storage;
        self.vm.clear_mocks();
        self.vm.set_sender(from);
        self.vm.set_block_timestamp(time);
        if calldata.get(..4) != Some(CONSTRUCTOR_SELECTOR.to_be_bytes().as_slice()) {
            self.answer_delegate_call(calldata);
        }
        let host = VM { host: Box::new(CallHost::new(&self.vm)) };
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

/// The ecrecover precompile's address.
const ECRECOVER: Address = Address::with_last_byte(1);

/// A TestVM whose calls each leave their own return data: static calls to
/// the `ecrecover` precompile are answered by a native recovery of their
/// input, every other call goes to the TestVM's mocks (and its buffer).
#[derive(Clone)]
pub struct CallHost {
    vm: TestVM,
    /// The last call's return data, when this host answered it.
    return_data: Rc<RefCell<Option<Vec<u8>>>>,
}

impl CallHost {
    /// Wraps `vm` (which it shares: storage, logs and mocks are the VM's).
    pub fn new(vm: &TestVM) -> Self {
        Self { vm: vm.clone(), return_data: Rc::new(RefCell::new(None)) }
    }
}

mod call_host {
    use stylus_sdk::alloy_primitives::{Address, B256, U256};
    use stylus_sdk::stylus_core::host::*;

    use super::{native_ecrecover, CallHost, ECRECOVER};

    impl Host for CallHost {}

    impl CryptographyAccess for CallHost {
        fn native_keccak256(&self, input: &[u8]) -> B256 {
            self.vm.native_keccak256(input)
        }
    }

    impl CalldataAccess for CallHost {
        fn read_args(&self, len: usize) -> Vec<u8> {
            self.vm.read_args(len)
        }
        fn read_return_data(&self, offset: usize, size: Option<usize>) -> Vec<u8> {
            match &*self.return_data.borrow() {
                Some(data) => {
                    let start = offset.min(data.len());
                    let end = size.map_or(data.len(), |s| start.saturating_add(s).min(data.len()));
                    data[start..end].to_vec()
                }
                None => self.vm.read_return_data(offset, size),
            }
        }
        fn return_data_size(&self) -> usize {
            match &*self.return_data.borrow() {
                Some(data) => data.len(),
                None => self.vm.return_data_size(),
            }
        }
        fn write_result(&self, data: &[u8]) {
            self.vm.write_result(data)
        }
    }

    unsafe impl UnsafeDeploymentAccess for CallHost {
        unsafe fn create1(&self, code: *const u8, code_len: usize, endowment: *const u8, contract: *mut u8, revert_data_len: *mut usize) {
            *self.return_data.borrow_mut() = None;
            self.vm.create1(code, code_len, endowment, contract, revert_data_len)
        }
        unsafe fn create2(
            &self,
            code: *const u8,
            code_len: usize,
            endowment: *const u8,
            salt: *const u8,
            contract: *mut u8,
            revert_data_len: *mut usize,
        ) {
            *self.return_data.borrow_mut() = None;
            self.vm.create2(code, code_len, endowment, salt, contract, revert_data_len)
        }
    }

    impl StorageAccess for CallHost {
        fn storage_load_bytes32(&self, key: U256) -> B256 {
            self.vm.storage_load_bytes32(key)
        }
        unsafe fn storage_cache_bytes32(&self, key: U256, value: B256) {
            self.vm.storage_cache_bytes32(key, value)
        }
        fn flush_cache(&self, clear: bool) {
            self.vm.flush_cache(clear)
        }
    }

    unsafe impl UnsafeCallAccess for CallHost {
        unsafe fn call_contract(&self, to: *const u8, data: *const u8, data_len: usize, value: *const u8, gas: u64, outs_len: &mut usize) -> u8 {
            *self.return_data.borrow_mut() = None;
            self.vm.call_contract(to, data, data_len, value, gas, outs_len)
        }
        unsafe fn delegate_call_contract(&self, to: *const u8, data: *const u8, data_len: usize, gas: u64, outs_len: &mut usize) -> u8 {
            *self.return_data.borrow_mut() = None;
            self.vm.delegate_call_contract(to, data, data_len, gas, outs_len)
        }
        unsafe fn static_call_contract(&self, to: *const u8, data: *const u8, data_len: usize, gas: u64, outs_len: &mut usize) -> u8 {
            // SAFETY: the SDK passes a 20-byte address and `data_len` bytes.
            let address = Address::from_slice(std::slice::from_raw_parts(to, 20));
            if address != ECRECOVER {
                *self.return_data.borrow_mut() = None;
                return self.vm.static_call_contract(to, data, data_len, gas, outs_len);
            }
            let output = native_ecrecover(std::slice::from_raw_parts(data, data_len));
            *outs_len = output.len();
            *self.return_data.borrow_mut() = Some(output);
            0
        }
    }

    impl BlockAccess for CallHost {
        fn block_basefee(&self) -> U256 {
            self.vm.block_basefee()
        }
        fn block_coinbase(&self) -> Address {
            self.vm.block_coinbase()
        }
        fn block_number(&self) -> u64 {
            self.vm.block_number()
        }
        fn block_timestamp(&self) -> u64 {
            self.vm.block_timestamp()
        }
        fn block_gas_limit(&self) -> u64 {
            self.vm.block_gas_limit()
        }
    }

    impl ChainAccess for CallHost {
        fn chain_id(&self) -> u64 {
            self.vm.chain_id()
        }
    }

    impl AccountAccess for CallHost {
        fn balance(&self, account: Address) -> U256 {
            self.vm.balance(account)
        }
        fn contract_address(&self) -> Address {
            self.vm.contract_address()
        }
        fn code(&self, account: Address) -> Vec<u8> {
            self.vm.code(account)
        }
        fn code_size(&self, account: Address) -> usize {
            self.vm.code_size(account)
        }
        fn code_hash(&self, account: Address) -> B256 {
            self.vm.code_hash(account)
        }
    }

    impl MemoryAccess for CallHost {
        fn pay_for_memory_grow(&self, pages: u16) {
            self.vm.pay_for_memory_grow(pages)
        }
    }

    impl MessageAccess for CallHost {
        fn msg_sender(&self) -> Address {
            self.vm.msg_sender()
        }
        fn msg_reentrant(&self) -> bool {
            self.vm.msg_reentrant()
        }
        fn msg_value(&self) -> U256 {
            self.vm.msg_value()
        }
        fn tx_origin(&self) -> Address {
            self.vm.tx_origin()
        }
    }

    impl MeteringAccess for CallHost {
        fn evm_gas_left(&self) -> u64 {
            self.vm.evm_gas_left()
        }
        fn evm_ink_left(&self) -> u64 {
            self.vm.evm_ink_left()
        }
        fn tx_gas_price(&self) -> U256 {
            self.vm.tx_gas_price()
        }
        fn tx_ink_price(&self) -> u32 {
            self.vm.tx_ink_price()
        }
    }

    impl RawLogAccess for CallHost {
        fn emit_log(&self, input: &[u8], num_topics: usize) {
            self.vm.emit_log(input, num_topics)
        }
        fn raw_log(&self, topics: &[B256], data: &[u8]) -> Result<(), &'static str> {
            self.vm.raw_log(topics, data)
        }
    }
}
