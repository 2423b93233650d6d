//! Admin, doctor and insurer commands: one contract call each, against the
//! deployment file's contract, signed with the configured key.

use alloy::network::{EthereumWallet, TransactionBuilder};
use alloy::primitives::{Address, B256};
use alloy::providers::{DynProvider, Provider, ProviderBuilder};
use alloy::rpc::types::{TransactionReceipt, TransactionRequest};
use alloy::signers::local::PrivateKeySigner;
use alloy::sol_types::{SolCall, SolInterface};
use anyhow::{bail, Context, Result};
use healthsense_abi::bindings::HealthSense::HealthSenseErrors as E;
use healthsense_abi::rules::ids;
use healthsense_abi::rules::status::{Category, DeviceStatus, PatientStatus};

use crate::deployment::Deployment;

/// The contract refused a call (a revert with a known error): exit code 4.
#[derive(Debug, thiserror::Error)]
#[error("the contract refused {call} with {error}: {reason}")]
pub struct Refused {
    /// Function signature.
    pub call: &'static str,
    /// The custom error's name (`InvalidPatientStatus`).
    pub error: String,
    /// The decoded error, with what to do about it.
    pub reason: String,
}

/// The CLI refused a command after reading the chain, before asking the
/// contract to do anything (an unknown id, a bill before discharge...):
/// exit code 4, like a contract refusal, but the message says who refused.
#[derive(Debug, thiserror::Error)]
#[error("healthsense refused `{command}` before calling the contract: {reason}")]
pub struct Declined {
    /// The command as typed (`bill`, `device show`).
    pub command: String,
    /// What is wrong, with what to do about it.
    pub reason: String,
}

/// A device status code by name (`active`), for messages.
pub fn device_status(code: u8) -> &'static str {
    DeviceStatus::from_code(code).map_or("unknown", |s| s.name())
}

/// A patient status code by name (`discharged`), for messages.
pub fn patient_status(code: u8) -> &'static str {
    PatientStatus::from_code(code).map_or("unknown", |s| s.name())
}

/// The name of a custom error (`InvalidPatientStatus`), from its debug form.
fn error_name(err: &E) -> String {
    let debug = format!("{err:?}");
    debug.split(['(', ' ', '{']).next().unwrap_or_default().to_string()
}

/// A pseudonymous patient id: `0x` + 64 hex digits as given, otherwise
/// `keccak256(label)` of an opaque stay label (never a name or MRN).
pub fn patient_id(s: &str) -> Result<B256> {
    if s.starts_with("0x") {
        return s.parse().with_context(|| format!("{s} is not a 0x-prefixed 32-byte id"));
    }
    if s.trim().is_empty() {
        bail!("empty patient id");
    }
    Ok(ids::device_id(s))
}

/// A role by name.
pub fn role(name: &str) -> Result<B256> {
    ids::ROLES
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, r)| *r)
        .with_context(|| format!("unknown role {name:?}: use admin, hub, doctor or insurer"))
}

/// Role name of an id, for display.
pub fn role_name(id: B256) -> &'static str {
    ids::ROLES.iter().find(|(_, r)| *r == id).map_or("unknown", |(n, _)| n)
}

/// Categories from a comma list of names (`bed,consultation`) or `all`.
pub fn category_mask(list: &str) -> Result<u8> {
    if list.eq_ignore_ascii_case("all") {
        return Ok(0xff);
    }
    let mut mask = 0u8;
    for name in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        let c = Category::from_name(name).with_context(|| {
            let all: Vec<_> = Category::ALL.iter().map(|c| c.name()).collect();
            format!("unknown category {name:?}: use {} or all", all.join(", "))
        })?;
        mask |= 1 << (c as u8);
    }
    Ok(mask)
}

/// What to do about each refusal.
fn explain(err: &E) -> String {
    match err {
        E::AccessControlUnauthorizedAccount(e) => format!(
            "{} lacks the {} role; an admin can grant it with `healthsense roles grant {} {}`",
            e.account,
            role_name(e.neededRole),
            role_name(e.neededRole),
            e.account
        ),
        E::EnforcedPause(_) => "the contract is paused; an admin can lift it with `healthsense unpause`".into(),
        E::UnknownDevice(e) => format!("no device {}: provision it first (`healthsense device provision`)", e.deviceId),
        E::UnknownPatient(e) => format!("no patient {}: check the id, or admit first", e.patientId),
        E::InvalidDeviceStatus(e) => format!("device {} is {}, which does not allow this", e.deviceId, device_status(e.status)),
        E::InvalidPatientStatus(e) => format!("patient {} is {}, which does not allow this", e.patientId, patient_status(e.status)),
        E::DeviceInUse(e) => format!("device {} is assigned to patient {}; discharge first", e.deviceId, e.patientId),
        E::WardHasNoTariff(e) => format!(
            "ward {} has no bed rate, so no stay can start there: an admin sets one with `healthsense tariff set WARD RATE` \
             (WARD as the device was provisioned, RATE in minor units a day), then admit again; a provisional rate may be \
             changed until discharge, which bills at the rate then in force",
            e.ward
        ),
        E::ZeroTariff(e) => format!(
            "a bed rate of 0 for ward {} is refused (it would read as no tariff): give the rate in minor units a day, e.g. 45000 for 450.00",
            e.ward
        ),
        other => format!("{other:?}"),
    }
}

/// A signing client for the deployment.
pub struct Client<P> {
    provider: P,
    /// The deployment.
    pub deployment: Deployment,
    /// The signing account.
    pub from: Address,
}

impl<P> Client<P> {
    /// A client over an existing provider: one whose wallet signs for
    /// `from`, or a node that signs for it (anvil's dev accounts).
    pub fn new(provider: P, deployment: Deployment, from: Address) -> Self {
        Self { provider, deployment, from }
    }

    /// The underlying provider.
    pub fn provider(&self) -> &P {
        &self.provider
    }
}

/// Connects to the deployment's RPC URL with `signer` (if any).
pub fn connect(deployment: Deployment, signer: Option<PrivateKeySigner>) -> Result<Client<DynProvider>> {
    let url: url::Url = deployment.rpc_url.parse().context("the deployment file's rpcUrl is not a URL")?;
    let from = signer.as_ref().map(|s| s.address()).unwrap_or_default();
    let wallet = signer.map(EthereumWallet::from);
    let provider = match wallet {
        Some(w) => ProviderBuilder::new().wallet(w).connect_http(url).erased(),
        None => ProviderBuilder::new().connect_http(url).erased(),
    };
    Ok(Client { provider, deployment, from })
}

impl<P: Provider> Client<P> {
    /// Reads a view.
    pub async fn view<C: SolCall>(&self, call: C) -> Result<C::Return> {
        let tx = TransactionRequest::default().with_to(self.deployment.address).with_input(call.abi_encode());
        let out = self.provider.call(tx).await.map_err(|e| self.refusal::<C>(e))?;
        Ok(C::abi_decode_returns(&out)?)
    }

    /// Sends a transaction from the client's account; a revert becomes a
    /// [`Refused`] that says why.
    pub async fn send<C: SolCall>(&self, call: C) -> Result<B256> {
        Ok(self.send_from(self.from, call).await?.transaction_hash)
    }

    /// Sends a transaction from `from` and returns its receipt.
    pub async fn send_from<C: SolCall>(&self, from: Address, call: C) -> Result<TransactionReceipt> {
        let tx = TransactionRequest::default()
            .with_from(from)
            .with_to(self.deployment.address)
            .with_input(call.abi_encode());
        // The estimate is the dry run: it turns a revert into its reason
        // (the node answers with the revert data, as to `eth_call`) before
        // gas is spent.
        let estimate = self.provider.estimate_gas(tx.clone()).await.map_err(|e| self.refusal::<C>(e))?;
        let tx = tx.with_gas_limit(healthsense_oracle::chain::gas_limit(estimate));
        let receipt = self
            .provider
            .send_transaction(tx)
            .await
            .with_context(|| format!("sending {}", C::SIGNATURE))?
            .get_receipt()
            .await
            .with_context(|| format!("waiting for the receipt of {}", C::SIGNATURE))?;
        if !receipt.status() {
            bail!("{} reverted in block {:?}", C::SIGNATURE, receipt.block_number);
        }
        Ok(receipt)
    }

    /// Current role holders, replayed from `RoleGranted`/`RoleRevoked` since
    /// the deployment block, in order of first grant.
    pub async fn role_holders(&self) -> Result<Vec<(B256, Address)>> {
        use alloy::rpc::types::Filter;
        use alloy::sol_types::SolEvent;
        use healthsense_abi::bindings::HealthSense::{RoleGranted, RoleRevoked};
        let filter = Filter::new()
            .address(self.deployment.address)
            .from_block(self.deployment.deploy_block)
            .event_signature(vec![RoleGranted::SIGNATURE_HASH, RoleRevoked::SIGNATURE_HASH]);
        let logs = self.provider.get_logs(&filter).await.context("reading role events")?;
        let mut holders: Vec<(B256, Address)> = Vec::new();
        for log in logs {
            if let Ok(g) = RoleGranted::decode_log_data(log.data()) {
                if !holders.contains(&(g.role, g.account)) {
                    holders.push((g.role, g.account));
                }
            } else if let Ok(r) = RoleRevoked::decode_log_data(log.data()) {
                holders.retain(|h| *h != (r.role, r.account));
            }
        }
        Ok(holders)
    }

    fn refusal<C: SolCall>(&self, e: alloy::transports::TransportError) -> anyhow::Error {
        match e.as_error_resp().and_then(|r| r.as_revert_data()) {
            Some(data) => match E::abi_decode(&data) {
                Ok(err) => Refused { call: C::SIGNATURE, error: error_name(&err), reason: explain(&err) }.into(),
                Err(_) => anyhow::anyhow!("{} reverted with unknown data {data}", C::SIGNATURE),
            },
            None => anyhow::Error::new(e).context(format!("calling {} at {}", C::SIGNATURE, self.deployment.rpc_url)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ids_roles_and_categories() {
        assert_eq!(patient_id("stay-1").unwrap(), ids::device_id("stay-1"));
        let hex = format!("0x{}", "ab".repeat(32));
        assert_eq!(patient_id(&hex).unwrap(), B256::repeat_byte(0xab));
        assert!(patient_id("0x12").is_err());
        assert!(patient_id(" ").is_err());
        assert_eq!(role("Doctor").unwrap(), ids::DOCTOR_ROLE);
        assert!(format!("{:#}", role("nurse").unwrap_err()).contains("admin, hub, doctor or insurer"));
        assert_eq!(category_mask("bed, laboratory").unwrap(), 0b1_0001);
        assert_eq!(category_mask("all").unwrap(), 0xff);
        assert!(format!("{:#}", category_mask("bed,spa").unwrap_err()).contains("unknown category \"spa\""));
        assert_eq!(role_name(ids::HUB_ROLE), "hub");
        assert_eq!((device_status(2), patient_status(2), patient_status(9)), ("active", "discharged", "unknown"));
    }
}
