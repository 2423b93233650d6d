//! The EVM edition on a real anvil, through alloy over JSON-RPC.

use alloy::network::TransactionBuilder;
use alloy::node_bindings::{Anvil, AnvilInstance};
use alloy::primitives::{Address, Bytes};
use alloy::providers::{Provider, ProviderBuilder, RootProvider};
use alloy::rpc::types::TransactionRequest;
use anyhow::{Context, Result};
use healthsense_cli::{artifact, deploy, tools};

use crate::{Edition, Outcome};

/// anvil's chain id, which the Stylus harness copies so EIP-712 digests agree.
pub const CHAIN_ID: u64 = 31_337;

/// A fresh anvil with the EVM edition deployed on it.
pub struct EvmEdition {
    rt: tokio::runtime::Runtime,
    provider: RootProvider,
    /// The node; dropped (and killed) with the edition.
    pub anvil: AnvilInstance,
    /// Contract address.
    pub address: Address,
    /// What the constructor did (its logs), for comparison.
    pub constructor: Outcome,
    /// Timestamp of the deployment block.
    pub deployed_at: u64,
    /// Execution gas of the last state-changing call: the receipt's gas
    /// less the 21,000 intrinsic gas and the calldata's (4 a zero byte, 16
    /// any other), so it compares with the Stylus host's figures.
    pub last_gas: Option<u64>,
}

/// Intrinsic gas of a call transaction with `calldata` (no access list).
pub fn intrinsic_gas(calldata: &[u8]) -> u64 {
    21_000 + calldata.iter().map(|b| if *b == 0 { 4 } else { 16 }).sum::<u64>()
}

impl EvmEdition {
    /// Starts anvil from the project-local install and deploys the contract
    /// from dev account `admin_index`, which becomes the first admin, through
    /// the CLI's deploy path.
    pub fn start(admin_index: usize) -> Result<Self> {
        let root = tools::project_root()?;
        let anvil = Anvil::new()
            .path(tools::foundry_tool(&root, "anvil")?)
            .chain_id(CHAIN_ID)
            .try_spawn()
            .context("starting anvil")?;
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let provider = ProviderBuilder::new().disable_recommended_fillers().connect_http(anvil.endpoint_url());
        let code = artifact::load_or_build(&root)?;
        let admin = anvil.addresses()[admin_index];
        let d = rt.block_on(deploy::deploy_evm(
            &ProviderBuilder::new().connect_http(anvil.endpoint_url()),
            anvil.endpoint().as_str(),
            admin,
            admin,
            code,
        ))?;
        let (constructor, deployed_at) = rt.block_on(async {
            let receipt = provider
                .get_transaction_receipt(d.deploy_tx)
                .await?
                .context("deployment receipt")?;
            let block = provider
                .get_block_by_number(d.deploy_block.into())
                .await?
                .context("deployment block")?;
            let logs = receipt.inner.logs().iter().map(|l| (l.topics().to_vec(), l.data().data.clone())).collect();
            anyhow::Ok((Outcome { success: receipt.status(), data: Bytes::new(), logs }, block.header.timestamp))
        })?;
        Ok(Self { rt, provider, address: d.address, anvil, constructor, deployed_at, last_gas: None })
    }

    /// anvil's unlocked dev accounts.
    pub fn accounts(&self) -> &[Address] {
        self.anvil.addresses()
    }
}

impl Edition for EvmEdition {
    fn name(&self) -> &'static str {
        "evm"
    }

    fn call(&mut self, from: Address, calldata: &[u8], view: bool, time: u64) -> Outcome {
        let tx = TransactionRequest::default()
            .with_from(from)
            .with_to(self.address)
            .with_input(Bytes::copy_from_slice(calldata))
            .with_gas_limit(25_000_000);
        self.last_gas = None;
        let (rt, provider, last_gas) = (&self.rt, &self.provider, &mut self.last_gas);
        rt.block_on(async {
            // The dry run gives return or revert data; the transaction then
            // gives the logs (a reverted call has none to compare).
            let dry = provider.call(tx.clone()).await;
            let data = match dry {
                Ok(data) => data,
                Err(e) => {
                    let data = e
                        .as_error_resp()
                        .and_then(|r| r.as_revert_data())
                        .unwrap_or_else(|| panic!("anvil call failed without revert data: {e}"));
                    return Outcome { success: false, data, logs: vec![] };
                }
            };
            if view {
                return Outcome { success: true, data, logs: vec![] };
            }
            provider
                .raw_request::<_, ()>("evm_setNextBlockTimestamp".into(), (time,))
                .await
                .expect("anvil accepts the next block time");
            let nonce = provider.get_transaction_count(from).await.expect("anvil gives the nonce");
            let tx = tx
                .with_nonce(nonce)
                .with_chain_id(CHAIN_ID)
                .with_max_fee_per_gas(10_000_000_000)
                .with_max_priority_fee_per_gas(0);
            let receipt = provider
                .send_transaction(tx)
                .await
                .expect("anvil accepts the transaction")
                .get_receipt()
                .await
                .expect("anvil mines the transaction");
            assert!(receipt.status(), "transaction reverted although its dry run succeeded");
            *last_gas = Some(receipt.gas_used.saturating_sub(intrinsic_gas(calldata)));
            let logs = receipt
                .inner
                .logs()
                .iter()
                .map(|l| (l.topics().to_vec(), l.data().data.clone()))
                .collect();
            Outcome { success: true, data, logs }
        })
    }
}
