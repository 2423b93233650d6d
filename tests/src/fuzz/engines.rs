//! The engines the fuzzer compares, each able to start a sequence from a
//! fresh deployment at the shared [`Env`].

use std::collections::BTreeMap;

use alloy::primitives::{Address, B256, U256};
use alloy::providers::{Provider, ProviderBuilder, RootProvider};
use anyhow::{ensure, Context, Result};

use super::{Engine, Env};
use crate::evm::{EvmEdition, CHAIN_ID};
use crate::stylus::StylusEdition;
use crate::wasm::{self, WasmEdition};
use crate::{Edition, Outcome};

/// The Stylus edition through its router on TestVM, redeployed per
/// sequence (in-process, so a fresh deployment costs microseconds).
pub struct TestVmEngine {
    env: Env,
    edition: Option<StylusEdition>,
}

impl TestVmEngine {
    /// An engine deploying at `env`.
    pub fn new(env: &Env) -> Self {
        Self { env: env.clone(), edition: None }
    }
}

impl Engine for TestVmEngine {
    fn name(&self) -> &'static str {
        "stylus-testvm"
    }

    fn reset(&mut self) -> Outcome {
        let admin = self.env.accounts[0];
        let (edition, ctor) = StylusEdition::deploy(self.env.address, self.env.chain_id, admin, admin, self.env.t0);
        self.edition = Some(edition);
        ctor
    }

    fn call(&mut self, from: Address, calldata: &[u8], view: bool, time: u64) -> Outcome {
        self.edition.as_mut().expect("reset() deploys before the first call").call(from, calldata, view, time)
    }

    fn storage(&self) -> Option<BTreeMap<B256, B256>> {
        Some(self.edition.as_ref()?.storage())
    }
}

/// The EVM edition on one real anvil for the whole run: deployed once, then
/// rewound to that state before each sequence with `evm_snapshot` and
/// `evm_revert` (a fresh anvil per sequence would cost seconds each).
pub struct AnvilEngine {
    evm: EvmEdition,
    rt: tokio::runtime::Runtime,
    provider: RootProvider,
    snapshot: Option<U256>,
    resets: u64,
}

impl AnvilEngine {
    /// Starts anvil and deploys the EVM edition from its first account.
    pub fn start() -> Result<Self> {
        let evm = EvmEdition::start(0)?;
        let provider = ProviderBuilder::new().disable_recommended_fillers().connect_http(evm.anvil.endpoint_url());
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let me = Self { evm, rt, provider, snapshot: None, resets: 0 };
        ensure!(me.evm.accounts().len() >= 10, "anvil has fewer than ten dev accounts");
        Ok(me)
    }

    /// The deployment the other engines must copy.
    pub fn env(&self) -> Env {
        let mut accounts = [Address::ZERO; 10];
        accounts.copy_from_slice(&self.evm.accounts()[..10]);
        Env { address: self.evm.address, chain_id: CHAIN_ID, t0: self.evm.deployed_at, accounts }
    }

    fn rewind(&mut self) -> Result<()> {
        self.rt.block_on(async {
            if let Some(id) = self.snapshot.take() {
                let ok: bool = self.provider.raw_request("evm_revert".into(), (id,)).await.context("evm_revert")?;
                ensure!(ok, "anvil did not revert to snapshot {id}");
            }
            // A snapshot is used up by reverting to it: take a new one.
            let id: U256 = self.provider.raw_request("evm_snapshot".into(), ()).await.context("evm_snapshot")?;
            self.snapshot = Some(id);
            // After a revert the same call from the same nonce would have the
            // hash of a transaction mined (and rewound) before, and alloy's
            // receipt watcher answers from what it saw then. A fresh nonce
            // range per reset keeps every transaction hash new.
            self.resets += 1;
            let nonce = U256::from(self.resets * 10_000);
            for a in &self.evm.accounts()[..10] {
                let _: () = self.provider.raw_request("anvil_setNonce".into(), (*a, nonce)).await.context("anvil_setNonce")?;
            }
            Ok(())
        })
    }
}

impl Engine for AnvilEngine {
    fn name(&self) -> &'static str {
        "evm-anvil"
    }

    fn reset(&mut self) -> Outcome {
        if let Err(e) = self.rewind() {
            panic!("anvil could not rewind to the fresh deployment: {e:#}");
        }
        self.evm.constructor.clone()
    }

    fn call(&mut self, from: Address, calldata: &[u8], view: bool, time: u64) -> Outcome {
        self.evm.call(from, calldata, view, time)
    }
}

/// The Stylus edition's WASM artifacts ([`wasm::artifacts`], compiled once
/// per process) on the Stylus host, in a fresh in-memory world per
/// sequence. Reports each call's Stylus gas (ink / 10,000).
pub struct WasmEngine {
    env: Env,
    edition: Option<WasmEdition>,
}

impl WasmEngine {
    /// An engine deploying at `env`.
    pub fn new(env: &Env) -> Self {
        Self { env: env.clone(), edition: None }
    }
}

impl Engine for WasmEngine {
    fn name(&self) -> &'static str {
        "stylus-wasm"
    }

    fn reset(&mut self) -> Outcome {
        let admin = self.env.accounts[0];
        let (edition, ctor) =
            WasmEdition::deploy(wasm::artifacts(), self.env.address, self.env.chain_id, admin, admin, self.env.t0);
        self.edition = Some(edition);
        ctor
    }

    fn call(&mut self, from: Address, calldata: &[u8], view: bool, time: u64) -> Outcome {
        self.edition.as_mut().expect("reset() deploys before the first call").call(from, calldata, view, time)
    }

    fn last_gas(&self) -> Option<u64> {
        self.edition.as_ref()?.last_cost().map(|c| c.gas)
    }

    fn storage(&self) -> Option<BTreeMap<B256, B256>> {
        Some(self.edition.as_ref()?.storage())
    }
}

/// The Stylus engines at `env`: every one the fuzzer compares with no anvil
/// (the Stylus edition's source on TestVM and its WASM on the host).
pub fn stylus_engines(env: &Env) -> Vec<Box<dyn Engine>> {
    vec![Box::new(TestVmEngine::new(env)), Box::new(WasmEngine::new(env))]
}
