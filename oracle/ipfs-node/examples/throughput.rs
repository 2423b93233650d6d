//! Add/cat throughput of the embedded node through the Kubo RPC client.
//!
//! `cargo run -p healthsense-ipfs-node --release --example throughput [-- MEGABYTES]`
//! (default 20 MB). Prints timings; asserts only that the bytes round-trip.

use std::time::Instant;

use healthsense_ipfs::Ipfs;
use healthsense_ipfs_node::NodeConfig;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let megabytes: usize = std::env::args()
        .nth(1)
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(20);
    let size = megabytes * 1_000_000;
    // Pseudo-random bytes (xorshift) so nothing compresses or deduplicates.
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let blob: Vec<u8> = (0..size)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect();

    let repo = tempfile::tempdir()?;
    let node =
        healthsense_ipfs_node::start(NodeConfig::new(repo.path(), "127.0.0.1:0".parse()?)).await?;
    let ipfs = Ipfs::new(&node.api_url())?;

    let started = Instant::now();
    let cid = ipfs.add(blob.clone()).await?;
    let add = started.elapsed();

    let started = Instant::now();
    let back = ipfs.cat(&cid).await?;
    let cat = started.elapsed();
    anyhow::ensure!(back == blob, "cat returned different bytes");

    let mb = size as f64 / 1e6;
    println!("blob: {mb:.0} MB, CID {cid}");
    println!(
        "add (import + store + recursive pin): {:.2} s, {:.1} MB/s",
        add.as_secs_f64(),
        mb / add.as_secs_f64()
    );
    println!(
        "cat (walk + stream):                  {:.2} s, {:.1} MB/s",
        cat.as_secs_f64(),
        mb / cat.as_secs_f64()
    );
    node.shutdown().await;
    Ok(())
}
