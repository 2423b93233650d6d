//! The hub's view of the contract: reads, and transactions sent with a dry
//! run first (a revert is decoded before gas is spent), gas estimation and
//! nonces from alloy's fillers, and receipts awaited with a timeout.

use std::time::Duration;

use alloy::network::{EthereumWallet, TransactionBuilder};
use alloy::primitives::{Address, Bytes, B256};
use alloy::providers::{DynProvider, Provider, ProviderBuilder};
use alloy::rpc::types::{Filter, TransactionReceipt, TransactionRequest};
use alloy::signers::local::PrivateKeySigner;
use alloy::sol_types::{SolCall, SolEvent, SolInterface};
use healthsense_abi::bindings::HealthSense::{self as H, HealthSenseErrors};
use healthsense_abi::bindings::IHealthSense::DeviceInfo;
use healthsense_abi::rules::{eip712, ids};
use healthsense_abi::Reading;

/// Why a chain operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ChainError {
    /// The node could not be reached or answered with an error: retry later.
    #[error("chain unreachable or erroring ({0}); will retry")]
    Transport(String),
    /// The contract refused the call: retrying the same call will not help.
    #[error("the contract refused {call}: {error:?}")]
    Reverted {
        /// Function signature.
        call: &'static str,
        /// The decoded error.
        error: HealthSenseErrors,
    },
    /// The transaction was mined but failed, or the node returned nonsense.
    #[error("{0}")]
    Failed(String),
}

impl ChainError {
    /// Whether a retry of the same operation may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, ChainError::Transport(_))
    }
}

/// The outcome of a mined transaction.
#[derive(Debug, Clone, Copy)]
pub struct Mined {
    /// Transaction hash.
    pub tx: B256,
    /// Block number.
    pub block: u64,
    /// Gas used.
    pub gas_used: u64,
}

/// The gas limit of a transaction whose estimate is `estimate`: 20 % over.
///
/// The estimate is taken against the latest block and the transaction runs
/// in a later one, where a call can cost a little more: `discharge` costs
/// 233 gas more once the block's time has moved past the admission's
/// second, and a limit at a close estimate then reverts out of gas (as a
/// CLI test once did). Unused gas is not paid for.
pub fn gas_limit(estimate: u64) -> u64 {
    estimate.saturating_add(estimate / 5)
}

/// A connection to the contract, signing as the hub.
#[derive(Clone)]
pub struct Chain {
    provider: DynProvider,
    contract: Address,
    hub: Address,
    chain_id: u64,
    receipt_timeout: Duration,
}

fn transport(e: impl std::fmt::Display) -> ChainError {
    ChainError::Transport(e.to_string())
}

impl Chain {
    /// Connects to `rpc_url`, checks there is code at `contract` and (when
    /// given) that the node's chain id is `expected_chain_id`.
    pub async fn connect(
        rpc_url: &str,
        contract: Address,
        hub_key: PrivateKeySigner,
        expected_chain_id: Option<u64>,
    ) -> Result<Self, ChainError> {
        let url: url::Url =
            rpc_url.parse().map_err(|e| ChainError::Failed(format!("rpc url {rpc_url:?} is not a URL: {e}")))?;
        let hub = hub_key.address();
        let provider = ProviderBuilder::new().wallet(EthereumWallet::from(hub_key)).connect_http(url).erased();
        let chain_id = provider.get_chain_id().await.map_err(transport)?;
        if let Some(expected) = expected_chain_id {
            if expected != chain_id {
                return Err(ChainError::Failed(format!(
                    "the node at {rpc_url} is chain {chain_id}, the configuration says {expected}"
                )));
            }
        }
        let code = provider.get_code_at(contract).await.map_err(transport)?;
        if code.is_empty() {
            return Err(ChainError::Failed(format!(
                "no contract at {contract} on chain {chain_id}: deploy first (`healthsense deploy`) or fix the address"
            )));
        }
        Ok(Self { provider, contract, hub, chain_id, receipt_timeout: Duration::from_secs(60) })
    }

    /// The hub's address.
    pub fn hub(&self) -> Address {
        self.hub
    }

    /// The contract's address.
    pub fn contract(&self) -> Address {
        self.contract
    }

    /// The chain id.
    pub fn chain_id(&self) -> u64 {
        self.chain_id
    }

    /// The EIP-712 domain separator devices sign under (the shared rule).
    pub fn domain_separator(&self) -> B256 {
        eip712::domain_separator(self.chain_id, self.contract)
    }

    /// The underlying provider.
    pub fn provider(&self) -> &DynProvider {
        &self.provider
    }

    fn request<C: SolCall>(&self, call: &C) -> TransactionRequest {
        TransactionRequest::default().with_from(self.hub).with_to(self.contract).with_input(call.abi_encode())
    }

    fn decode(call: &'static str, e: alloy::transports::TransportError) -> ChainError {
        match e.as_error_resp().and_then(|r| r.as_revert_data()) {
            Some(data) => match HealthSenseErrors::abi_decode(&data) {
                Ok(error) => ChainError::Reverted { call, error },
                Err(_) => ChainError::Failed(format!("{call} reverted with unknown data {data}")),
            },
            None => transport(e),
        }
    }

    /// Calls a view.
    pub async fn view<C: SolCall>(&self, call: C) -> Result<C::Return, ChainError> {
        let out = self.provider.call(self.request(&call)).await.map_err(|e| Self::decode(C::SIGNATURE, e))?;
        C::abi_decode_returns(&out).map_err(|e| ChainError::Failed(format!("bad return of {}: {e}", C::SIGNATURE)))
    }

    /// Sends a transaction as the hub after a dry run (the gas estimate),
    /// with [`gas_limit`]'s headroom on the estimate, and waits for its
    /// receipt.
    pub async fn send<C: SolCall>(&self, call: C) -> Result<Mined, ChainError> {
        Ok(self.send_receipt(call).await?.0)
    }

    /// [`Chain::send`], also returning the receipt (for its events).
    pub async fn send_receipt<C: SolCall>(&self, call: C) -> Result<(Mined, TransactionReceipt), ChainError> {
        let tx = self.request(&call);
        // The estimate is the dry run: a revert comes back with its data,
        // as from `eth_call`, before any gas is spent.
        let estimate = self.provider.estimate_gas(tx.clone()).await.map_err(|e| Self::decode(C::SIGNATURE, e))?;
        let tx = tx.with_gas_limit(gas_limit(estimate));
        let pending = self.provider.send_transaction(tx).await.map_err(|e| Self::decode(C::SIGNATURE, e))?;
        let receipt =
            pending.with_timeout(Some(self.receipt_timeout)).get_receipt().await.map_err(transport)?;
        if !receipt.status() {
            return Err(ChainError::Failed(format!(
                "{} reverted on chain in block {:?} (tx {})",
                C::SIGNATURE,
                receipt.block_number,
                receipt.transaction_hash
            )));
        }
        let mined = Mined {
            tx: receipt.transaction_hash,
            block: receipt.block_number.unwrap_or_default(),
            gas_used: receipt.gas_used,
        };
        Ok((mined, receipt))
    }

    /// A device's record.
    pub async fn device(&self, id: B256) -> Result<DeviceInfo, ChainError> {
        self.view(H::getDeviceCall { deviceId: id }).await
    }

    /// The root this hub anchored as batch `seq` (zero when not anchored);
    /// the rest of the batch is in its `BatchAnchored` event.
    pub async fn batch_root(&self, seq: u64) -> Result<B256, ChainError> {
        self.view(H::batchRootCall { batchId: ids::batch_id(self.hub, seq) }).await
    }

    /// Whether the hub holds HUB_ROLE.
    pub async fn is_hub(&self) -> Result<bool, ChainError> {
        self.view(H::hasRoleCall { role: ids::HUB_ROLE, account: self.hub }).await
    }

    /// Activates a pending device.
    pub async fn activate(&self, id: B256) -> Result<Mined, ChainError> {
        self.send(H::activateDeviceCall { deviceId: id }).await
    }

    /// Anchors a batch root under the hub's `seq`.
    pub async fn anchor(&self, seq: u64, root: B256, leaf_count: u32) -> Result<Mined, ChainError> {
        self.send(H::anchorBatchCall { seq, root, leafCount: leaf_count }).await
    }

    /// Posts readings with their signatures (readings mode).
    pub async fn post_readings(&self, readings: Vec<Reading>, signatures: Vec<Bytes>) -> Result<Mined, ChainError> {
        let readings = readings.into_iter().map(Into::into).collect();
        self.send(H::postReadingsCall { readings, signatures }).await
    }

    /// The latest block number.
    pub async fn block_number(&self) -> Result<u64, ChainError> {
        self.provider.get_block_number().await.map_err(transport)
    }

    /// The hash of block `number`, or `None` if the chain has no such block
    /// (it was reset, or is behind).
    pub async fn block_hash(&self, number: u64) -> Result<Option<B256>, ChainError> {
        let block = self.provider.get_block_by_number(number.into()).await.map_err(transport)?;
        Ok(block.map(|b| b.header.hash))
    }

    /// Discharges a patient as the hub; returns the bill event.
    pub async fn discharge(&self, patient: B256) -> Result<(Mined, Option<H::PatientDischarged>), ChainError> {
        let (mined, receipt) = self.send_receipt(H::dischargeCall { patientId: patient }).await?;
        let event = receipt.inner.logs().iter().find_map(|l| H::PatientDischarged::decode_log_data(l.data()).ok());
        Ok((mined, event))
    }

    /// `PatientDischarged` events in blocks `from..=to` (of one patient when given).
    pub async fn discharges(&self, from: u64, to: u64, patient: Option<B256>) -> Result<Vec<H::PatientDischarged>, ChainError> {
        let mut filter = Filter::new()
            .address(self.contract)
            .from_block(from)
            .to_block(to)
            .event_signature(H::PatientDischarged::SIGNATURE_HASH);
        if let Some(p) = patient {
            filter = filter.topic1(p);
        }
        let logs = self.provider.get_logs(&filter).await.map_err(transport)?;
        Ok(logs.iter().filter_map(|l| H::PatientDischarged::decode_log_data(l.data()).ok()).collect())
    }

    /// Devices whose on-chain record changed in blocks `from..=to`.
    pub async fn device_changes(&self, from: u64, to: u64) -> Result<Vec<B256>, ChainError> {
        let filter = Filter::new().address(self.contract).from_block(from).to_block(to).event_signature(vec![
            H::DeviceProvisioned::SIGNATURE_HASH,
            H::DeviceActivated::SIGNATURE_HASH,
            H::DeviceRevoked::SIGNATURE_HASH,
        ]);
        let logs = self.provider.get_logs(&filter).await.map_err(transport)?;
        let mut out = Vec::new();
        for log in logs {
            let data = log.data();
            let id = if let Ok(e) = H::DeviceProvisioned::decode_log_data(data) {
                e.deviceId
            } else if let Ok(e) = H::DeviceActivated::decode_log_data(data) {
                e.deviceId
            } else if let Ok(e) = H::DeviceRevoked::decode_log_data(data) {
                e.deviceId
            } else {
                continue;
            };
            out.push(id);
        }
        Ok(out)
    }
}
