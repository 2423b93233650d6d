//! `healthsense-bench chain`: what a block costs the bench's chain node as
//! devices are registered on it.
//!
//! Anvil (1.7.1, the release npm installs) rebuilds its whole state trie
//! for every block it mines, so a block's time grows with everything stored
//! on chain, whoever sent the block's transactions. The scaling runs share
//! two cores between the hub and anvil, so a chain that grows with the
//! hub's device count slows the hub as well; this measures by how much.
//! Each step registers and activates more devices (as `oracle` does), then
//! times empty blocks (`evm_mine`) against the fresh deployment's.

use std::time::Instant;

use alloy::providers::{Provider, ProviderBuilder};
use alloy::sol_types::SolCall;
use anyhow::Result;
use healthsense_abi::bindings::HealthSense as H;
use healthsense_abi::rules::ids;
use healthsense_cli::{artifact, deploy, tools};
use serde_json::json;

use crate::figures::{self, Figure};

/// Devices on chain at each step (the scaling runs' device counts).
const STEPS: [usize; 4] = [0, 200, 2_000, 20_000];

/// Blocks timed at each step, after three untimed ones.
const BLOCKS: u32 = 20;

/// Runs the measurement and prints it (`--json`: as figures).
pub async fn run(json: bool) -> Result<()> {
    let root = tools::project_root()?;
    let anvil = super::start_anvil(&root)?;
    let provider = ProviderBuilder::new().connect_http(anvil.endpoint_url());
    let (admin, hub) = (anvil.addresses()[0], anvil.addresses()[1]);
    let d = deploy::deploy_evm(&provider, anvil.endpoint().as_str(), admin, admin, artifact::load_or_build(&root)?).await?;
    let grant = H::grantRoleCall { role: ids::HUB_ROLE, account: hub }.abi_encode();
    super::send_in_bulk(&provider, d.address, &[(admin, grant)]).await?;

    let mut rows: Vec<(usize, f64)> = Vec::new();
    for &n in &STEPS {
        let have = rows.last().map_or(0, |r| r.0);
        if n > have {
            eprintln!("registering devices {have}..{n} ...");
            super::send_in_bulk(&provider, d.address, &super::other_ward_devices(admin, hub, have..n)).await?;
        }
        rows.push((n, block_ms(&provider).await?));
    }

    let base = rows[0].1;
    if json {
        let figs: Vec<Figure> = rows[1..]
            .iter()
            .map(|&(n, ms)| {
                Figure::new(format!("anvil_block_ms_at_{n}_devices"), ms, "ms")
                    .baseline("anvil_block_ms_no_devices", base)
                    .with("vs_no_devices", figures::round(ms / base))
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&figures::report("chain", &figs, json!({ "blocks": BLOCKS })))?);
        return Ok(());
    }
    println!("HealthSense chain-node benchmark: an empty block's time on anvil, by devices on chain");
    for (n, ms) in rows {
        println!("  {n:>6} devices  {ms:>7.2} ms a block  = {:.1}x the deployment's without devices", ms / base);
    }
    Ok(())
}

/// Mean time of an empty block, ms.
async fn block_ms(p: &impl Provider) -> Result<f64> {
    let mine = || p.raw_request::<_, serde_json::Value>("evm_mine".into(), ());
    for _ in 0..3 {
        mine().await?;
    }
    let t = Instant::now();
    for _ in 0..BLOCKS {
        mine().await?;
    }
    Ok(t.elapsed().as_secs_f64() * 1e3 / f64::from(BLOCKS))
}
