//! `healthsense demo`: the whole ward story on throw-away services.

use anyhow::Result;
use healthsense_cli::demo;

use super::output::money;
use super::Global;

/// Plays the demo and prints its summary.
pub async fn run(g: &Global) -> Result<()> {
    let s = demo::run(g.json).await?;
    if g.json {
        println!("{}", serde_json::to_string_pretty(&s)?);
        return Ok(());
    }
    println!("\nHealthSense demo summary");
    println!("  contract            {}", s.contract);
    println!("  readings anchored   {} in {} Merkle batch(es); {} proven again from the archives", s.readings_anchored, s.batches, s.proofs_verified);
    println!("  transactions        {} ({} gas)", s.transactions, s.gas_used);
    let urgent = if s.deteriorated.is_empty() { "none".to_string() } else { s.deteriorated.join(", ") };
    println!("  NEWS2 >= 5          {urgent}");
    println!("  bills               {:<9} {:>4} {:>10} {:>10} {:>10}  {:<8} archive", "bed", "days", "total", "covered", "due", "verified");
    for b in &s.bills {
        println!("                      {:<9} {:>4} {:>10} {:>10} {:>10}  {:<8} {}", b.bed, b.bed_days, money(b.total), money(b.covered), money(b.due),
            if b.verified { format!("{} rd", b.readings) } else { "NO".into() }, b.cid);
    }
    println!("  hub store, IPFS     {}", s.workdir);
    println!("  took                {:.1} s", s.seconds);
    println!("\nNext: docs/ARCHIVE.md (what an archive holds and how keys work), docs/ORACLE.md (running a ward hub),");
    println!("      `healthsense --help`, and scripts/test for the whole suite.");
    Ok(())
}
