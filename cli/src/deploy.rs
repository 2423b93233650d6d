//! Deploying the EVM edition.

use alloy::network::TransactionBuilder;
use alloy::primitives::{Address, Bytes};
use alloy::providers::Provider;
use alloy::rpc::types::TransactionRequest;
use alloy::sol_types::SolValue;
use anyhow::{bail, Context, Result};

use crate::deployment::{Deployment, Edition};

/// Deploys the EVM edition from `from` with `admin` as the first admin, waits
/// for the receipt and returns the deployment record. `from` must be the
/// provider's wallet account, or an account the node signs for (anvil's).
pub async fn deploy_evm<P: Provider>(
    provider: &P,
    rpc_url: &str,
    from: Address,
    admin: Address,
    creation_code: Bytes,
) -> Result<Deployment> {
    let chain_id = provider.get_chain_id().await.context("asking the node for its chain id")?;
    let mut input = creation_code.to_vec();
    // constructor(address admin); interfaces carry no constructor, so it is
    // encoded here rather than taken from the bindings.
    input.extend((admin,).abi_encode_params());
    let tx = TransactionRequest::default().with_from(from).with_deploy_code(input);
    let receipt = provider
        .send_transaction(tx)
        .await
        .context("sending the deployment transaction")?
        .get_receipt()
        .await
        .context("waiting for the deployment receipt")?;
    if !receipt.status() {
        bail!("the deployment transaction {} reverted", receipt.transaction_hash);
    }
    let address = receipt.contract_address.context("the deployment receipt has no contract address")?;
    Ok(Deployment {
        edition: Edition::Evm,
        chain_id,
        address,
        deploy_block: receipt.block_number.unwrap_or_default(),
        deploy_tx: receipt.transaction_hash,
        admin,
        rpc_url: rpc_url.to_string(),
        abi: "abi/HealthSense.json".into(),
        ipfs_api: None,
    })
}

/// The steps that deploy the Stylus edition: it needs an Arbitrum node and
/// cargo-stylus, so the CLI explains rather than pretends. The edition is two
/// programs (contracts/README.md): the records program first, then the main
/// program, whose constructor is given the records program's address.
pub fn stylus_steps(rpc_url: &str, admin: Address) -> String {
    format!(
        "The Stylus edition deploys with cargo-stylus to an Arbitrum chain (anvil cannot run Stylus WASM).\n\
         It is two programs behind one address; build both, deploy the records program, then the main one:\n\
         \n  cargo install --locked cargo-stylus\n\
         \x20 scripts/build-wasm\n\
         \x20 cd contracts\n\
         \x20 cargo stylus deploy --endpoint {rpc_url} --private-key-path KEYFILE --wasm-file ../target/stylus/healthsense_records.wasm\n\
         \x20 cargo stylus deploy --endpoint {rpc_url} --private-key-path KEYFILE --wasm-file ../target/stylus/healthsense_main.wasm \\\n\
         \x20     --constructor-args {admin} RECORDS_PROGRAM_ADDRESS\n\
         \nThen write the main program's address into a deployment file with edition \"stylus\" (see contracts/README.md)."
    )
}
