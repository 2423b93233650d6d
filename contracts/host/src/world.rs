//! The in-memory chain state the programs run against.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use alloy_primitives::{Address, B256, U256};

use crate::Program;

/// Gas limit of a transaction unless told otherwise (Arbitrum's block gas
/// limit is far higher; this is ample for one HealthSense call).
pub const DEFAULT_GAS_LIMIT: u64 = 30_000_000;

/// One transaction (or `eth_call`).
#[derive(Debug, Clone)]
pub struct Tx {
    /// `msg.sender` of the outer call (and `tx.origin`).
    pub from: Address,
    /// The called address.
    pub to: Address,
    /// Calldata.
    pub input: Vec<u8>,
    /// `msg.value` (balances are not modelled: the value is only reported).
    pub value: U256,
    /// Block timestamp.
    pub timestamp: u64,
    /// Gas limit; execution gets `gas_limit * 10,000` ink.
    pub gas_limit: u64,
}

impl Tx {
    /// A call from `from` to `to` with `input` at block time `timestamp`.
    pub fn new(from: Address, to: Address, input: Vec<u8>, timestamp: u64) -> Self {
        Self { from, to, input, value: U256::ZERO, timestamp, gas_limit: DEFAULT_GAS_LIMIT }
    }
}

/// An emitted log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Log {
    /// The emitting (acting) address: for a delegate call, the caller's.
    pub address: Address,
    /// Up to four topics.
    pub topics: Vec<B256>,
    /// Data.
    pub data: Vec<u8>,
}

/// What a transaction did.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// Returned (true) or reverted (false).
    pub success: bool,
    /// Return data, or revert data (empty after a trap).
    pub data: Vec<u8>,
    /// Logs of a successful transaction, in order.
    pub logs: Vec<Log>,
    /// Ink the execution used: every program frame's metered instructions,
    /// hostio ink, and the EVM-side gas (storage, logs, account access,
    /// memory, precompiles) converted to ink. Excludes the intrinsic
    /// transaction cost (21,000 gas plus calldata) and the program's
    /// per-call init cost, which depend on the chain's parameters.
    pub ink_used: u64,
    /// Why the outermost program trapped, when it did (for diagnostics; a
    /// trap is an ordinary revert with empty data to the caller).
    pub trap: Option<String>,
    /// Where `ink_used` went.
    pub profile: InkProfile,
}

/// A transaction's ink by what paid for it (every frame, nested ones
/// included). Approximate where a frame ran out of ink: the hostio that
/// could not be paid is counted whole.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct InkProfile {
    /// Metered WebAssembly instructions (the rest of `ink_used`).
    pub instructions: u64,
    /// Hostio ink: base costs and the bytes read, written and hashed.
    pub hostio: u64,
    /// EVM-side gas, as ink: storage reads and flushed writes, logs,
    /// account access, precompiles.
    pub evm: u64,
    /// Nitro's memory model: the programs' footprints on entry and pages
    /// grown.
    pub memory: u64,
}

impl Outcome {
    /// Gas at the default ink price (10,000 ink per gas), rounded up.
    pub fn gas_used(&self) -> u64 {
        self.ink_used.div_ceil(crate::pricing::INK_PER_GAS)
    }
}

/// A contract implemented in Rust (a precompile, or a test's stand-in for
/// an external contract); it may call back into the world.
pub trait Native: Send + Sync {
    /// Answers a call with `input`; returns (success, return or revert data).
    fn call(&self, ctx: &mut NativeCtx<'_, '_>, input: &[u8]) -> (bool, Vec<u8>);
}

/// What a [`Native`] sees of its call, and its way back into the world.
pub struct NativeCtx<'a, 's> {
    pub(crate) store: &'a mut wasmer::StoreMut<'s>,
    pub(crate) env: &'a wasmer::FunctionEnv<crate::exec::Env>,
    pub(crate) address: Address,
    pub(crate) sender: Address,
    pub(crate) is_static: bool,
    pub(crate) ink: u64,
}

impl NativeCtx<'_, '_> {
    /// This contract's address.
    pub fn address(&self) -> Address {
        self.address
    }

    /// Its caller.
    pub fn sender(&self) -> Address {
        self.sender
    }

    /// Calls `to` with `input` from this contract (a plain call, static if
    /// this one is); returns (success, data).
    pub fn call(&mut self, to: Address, input: &[u8]) -> (bool, Vec<u8>) {
        let spec = crate::exec::CallSpec {
            kind: crate::exec::Kind::Call,
            code: to,
            acting: to,
            sender: self.address,
            value: U256::ZERO,
            input: input.to_vec(),
            is_static: self.is_static,
            ink: self.ink,
        };
        let result = crate::exec::run_call(self.store, self.env, spec);
        self.ink = self.ink.saturating_sub(result.ink);
        (result.success, result.data)
    }
}

#[derive(Clone, Default)]
pub(crate) enum Code {
    #[default]
    None,
    Program(Arc<Program>),
    Native(Arc<dyn Native>),
}

#[derive(Clone, Default)]
pub(crate) struct Account {
    pub(crate) storage: BTreeMap<B256, B256>,
    pub(crate) code: Code,
}

/// Accounts with storage and code, and the chain's constants.
#[derive(Clone, Default)]
pub struct World {
    /// `chainid`.
    pub chain_id: u64,
    pub(crate) accounts: HashMap<Address, Account>,
}

impl World {
    /// An empty chain with id `chain_id`.
    pub fn new(chain_id: u64) -> Self {
        Self { chain_id, accounts: HashMap::new() }
    }

    /// Deploys `program` at `at` (its storage is kept).
    pub fn deploy(&mut self, at: Address, program: Arc<Program>) {
        self.accounts.entry(at).or_default().code = Code::Program(program);
    }

    /// Deploys a native contract at `at`; at address 1 it replaces the
    /// built-in `ecrecover`.
    pub fn deploy_native(&mut self, at: Address, native: Arc<dyn Native>) {
        self.accounts.entry(at).or_default().code = Code::Native(native);
    }

    /// The non-zero storage slots of `at`.
    pub fn storage(&self, at: Address) -> BTreeMap<B256, B256> {
        self.accounts.get(&at).map(|a| a.storage.clone()).unwrap_or_default()
    }

    /// One slot of `at` (zero when never written).
    pub fn slot(&self, at: Address, key: B256) -> B256 {
        self.accounts.get(&at).and_then(|a| a.storage.get(&key).copied()).unwrap_or_default()
    }

    /// Runs `tx` and keeps its effects if it succeeds.
    pub fn transact(&mut self, tx: &Tx) -> Outcome {
        crate::exec::run_tx(self, tx, false)
    }

    /// Runs `tx` as `eth_call` does: same execution, effects discarded.
    pub fn simulate(&mut self, tx: &Tx) -> Outcome {
        crate::exec::run_tx(self, tx, true)
    }

    pub(crate) fn set_slot(&mut self, at: Address, key: B256, value: B256) -> Option<B256> {
        let storage = &mut self.accounts.entry(at).or_default().storage;
        if value.is_zero() {
            storage.remove(&key)
        } else {
            storage.insert(key, value)
        }
    }
}
