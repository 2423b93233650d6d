//! The Stylus edition as shipped: the two WASM programs `scripts/build-wasm`
//! writes, executed by the Stylus host (`healthsense-stylus-host`, Wasmer)
//! in an in-memory world: the main program at the contract's address, the
//! records program at [`RECORDS_PROGRAM`], the `ecrecover` precompile
//! answered natively. Nothing of the contract's behaviour is supplied by
//! the harness: the delegate call, storage cache and flush, encoders,
//! allocator and `panic=immediate-abort` standard library are the WASM's.
//!
//! Each call's ink is kept ([`WasmEdition::last_ink`]) but is not part of
//! the [`Outcome`] the editions are compared on.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use alloy::primitives::{Address, Bytes, B256};
use alloy::sol_types::SolValue;
use healthsense_stylus_host::{self as host, Artifacts, Tx, World};
use stylus_sdk::abi::CONSTRUCTOR_SELECTOR;

use crate::stylus::RECORDS_PROGRAM;
use crate::{Edition, Outcome};

/// The artifacts of [`host::stylus_dir`] (`target/stylus/` or
/// `HEALTHSENSE_STYLUS_DIR`), loaded and compiled once per test process.
/// Panics with what to do when they are missing or do not load.
pub fn artifacts() -> &'static Artifacts {
    static ARTIFACTS: OnceLock<Result<Artifacts, String>> = OnceLock::new();
    match ARTIFACTS.get_or_init(|| Artifacts::load_default().map_err(|e| e.to_string())) {
        Ok(a) => a,
        Err(e) => panic!("{e}"),
    }
}

/// Ink and gas of one call, kept apart from the compared outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cost {
    /// Ink used by the execution (see `healthsense_stylus_host::Outcome::ink_used`).
    pub ink: u64,
    /// `ink / 10,000`, rounded up.
    pub gas: u64,
    /// Where the ink went.
    pub profile: host::InkProfile,
}

/// The Stylus edition's WASM on the Stylus host.
pub struct WasmEdition {
    world: World,
    address: Address,
    last: Option<Cost>,
    last_trap: Option<String>,
}

impl WasmEdition {
    /// Deploys the main program of `artifacts` at `address` and the records
    /// program at [`RECORDS_PROGRAM`] on chain `chain_id`, and runs the
    /// constructor from `deployer` with `(admin, RECORDS_PROGRAM)` at block
    /// time `time`.
    pub fn deploy(
        artifacts: &Artifacts,
        address: Address,
        chain_id: u64,
        deployer: Address,
        admin: Address,
        time: u64,
    ) -> (Self, Outcome) {
        let mut world = World::new(chain_id);
        world.deploy(address, artifacts.main.clone());
        world.deploy(RECORDS_PROGRAM, artifacts.records.clone());
        let mut me = Self { world, address, last: None, last_trap: None };
        let mut calldata = CONSTRUCTOR_SELECTOR.to_be_bytes().to_vec();
        calldata.extend((admin, RECORDS_PROGRAM).abi_encode_params());
        let out = me.call(deployer, &calldata, false, time);
        (me, out)
    }

    /// The contract's address.
    pub fn address(&self) -> Address {
        self.address
    }

    /// Ink and gas of the last call.
    pub fn last_cost(&self) -> Option<Cost> {
        self.last
    }

    /// Ink of the last call.
    pub fn last_ink(&self) -> Option<u64> {
        self.last.map(|c| c.ink)
    }

    /// Why the last call trapped, if it did.
    pub fn last_trap(&self) -> Option<&str> {
        self.last_trap.as_deref()
    }

    /// The contract's non-zero storage slots.
    pub fn storage(&self) -> BTreeMap<B256, B256> {
        self.world.storage(self.address)
    }

    /// The world, for cases beyond the shared ABI (calling the records
    /// program at its own address, native contracts).
    pub fn world_mut(&mut self) -> &mut World {
        &mut self.world
    }

    /// Runs `calldata` from `from` against any address of this world.
    pub fn call_at(&mut self, to: Address, from: Address, calldata: &[u8], view: bool, time: u64) -> Outcome {
        let tx = Tx::new(from, to, calldata.to_vec(), time);
        let out = if view { self.world.simulate(&tx) } else { self.world.transact(&tx) };
        self.last = Some(Cost { ink: out.ink_used, gas: out.gas_used(), profile: out.profile });
        self.last_trap = out.trap.clone();
        for log in &out.logs {
            assert_eq!(log.address, to, "a log was emitted from {} during a call to {to}", log.address);
        }
        Outcome {
            success: out.success,
            data: out.data.into(),
            logs: out.logs.into_iter().map(|l| (l.topics, Bytes::from(l.data))).collect(),
        }
    }
}

impl Edition for WasmEdition {
    fn name(&self) -> &'static str {
        "wasm"
    }

    fn call(&mut self, from: Address, calldata: &[u8], view: bool, time: u64) -> Outcome {
        self.call_at(self.address, from, calldata, view, time)
    }
}

/// Re-exported for tests that build worlds of their own.
pub use host::{native_ecrecover, Native, NativeCtx};
