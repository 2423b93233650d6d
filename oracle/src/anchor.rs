//! Anchoring: cut committed readings into batches and put each batch on
//! chain exactly once.
//!
//! A batch is cut (tree, proofs, batch row) into the store before anything is
//! sent, so after a crash the same batch, with the same root and the same
//! deterministic on-chain id `keccak256(abi.encode(hub, seq))`, is resumed; a
//! cut the crash interrupted is finished first, with the root it was cut with
//! (`Store::finish_cuts`). Before every send the anchorer asks the chain
//! whether the batch is already there (a receipt lost in a crash), and the
//! contract itself refuses a second anchor of the same id: a restart never
//! anchors twice.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use alloy::primitives::{Bytes, B256};
use anyhow::Result;
use healthsense_abi::bindings::HealthSense::HealthSenseErrors as E;
use tokio::sync::{watch, Notify};
use tokio::task::block_in_place;

use crate::chain::{Chain, ChainError};
use crate::ingest::now_ms;
use crate::metrics::Metrics;
use crate::store::{Batch, Mode, Store};

/// The unbatched readings as the anchorer last saw them in the store, and
/// the writer's commit count then. The writer wakes the anchorer after every
/// commit; asking the store each time (`COUNT(*), MIN(received_ms)` over up
/// to a batch of rows, on a tokio worker) took about 5 % of the hub's CPU
/// samples at 5,000 readings/s (docs/BENCHMARKS.md, "Issue 22, twelfth
/// session"). Between looks the count grows by the commits since, and the
/// oldest reading stays the oldest until a cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Unbatched {
    count: u64,
    /// The oldest one's `received_ms`; `None` when there were none.
    oldest: Option<u64>,
    /// [`Anchorer::committed`] just before the look.
    committed: u64,
}

impl Unbatched {
    /// (count, oldest, exact) once the writer's commit count is `committed`;
    /// `None` when the store must be asked again: none were unbatched and
    /// some were committed since (the oldest is not known). The count is
    /// exact only with no commit since: a commit between reading the
    /// counter and the look is in both, so an estimate that makes a batch
    /// due is checked with the store before the cut.
    fn after(self, committed: u64) -> Option<(u64, Option<u64>, bool)> {
        let since = committed.saturating_sub(self.committed);
        match (self.oldest, since) {
            (None, 0) => Some((self.count, None, true)),
            (None, _) => None,
            (Some(oldest), since) => Some((self.count + since, Some(oldest), since == 0)),
        }
    }
}

/// The anchoring task's settings and state.
pub struct Anchorer {
    /// Chain connection.
    pub chain: Chain,
    /// Its own store connection.
    pub store: Store,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Hash or readings mode.
    pub mode: Mode,
    /// Readings per batch.
    pub per_batch: usize,
    /// Longest wait for a batch to fill.
    pub interval: Duration,
    /// Longest pause between retries.
    pub max_backoff: Duration,
    /// Readings the writer has committed since the hub started: what the
    /// anchorer adds to its last look at the store ([`Unbatched`]).
    pub committed: Arc<AtomicU64>,
    /// Woken by the writer after each commit.
    pub wake: Arc<Notify>,
}

enum Outcome {
    Anchored,
    Failed,
}

enum OnChain {
    Absent,
    Present,
    Conflict,
}

impl Anchorer {
    /// Runs until `shutdown` turns true: finishes interrupted cuts, resumes
    /// pending batches, then cuts and anchors new ones.
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) -> Result<()> {
        for batch in block_in_place(|| self.store.finish_cuts())? {
            tracing::info!(seq = batch.seq, leaves = batch.leaf_count, "finished a batch cut the last run left unfinished");
        }
        for batch in block_in_place(|| self.store.pending_batches())? {
            tracing::info!(seq = batch.seq, leaves = batch.leaf_count, "resuming pending batch");
            self.settle(&batch, &mut shutdown).await;
        }
        let mut next = self.first_seq().await?;
        let mut looked: Option<Unbatched> = None;
        loop {
            if *shutdown.borrow() {
                // What the cutter holds of the trend rollup, so the next
                // start need not read those batches back.
                block_in_place(|| self.store.write_rollup());
                return Ok(());
            }
            let committed = self.committed.load(Ordering::Acquire);
            let (count, oldest, exact) = match looked.and_then(|l| l.after(committed)) {
                Some(view) => view,
                None => {
                    let (count, oldest) = block_in_place(|| self.store.unbatched())?;
                    looked = Some(Unbatched { count, oldest, committed });
                    (count, oldest, true)
                }
            };
            let now = now_ms();
            let age = oldest.map(|t| Duration::from_millis(now.saturating_sub(t)));
            self.metrics.anchor_lag_seconds.set(age.map_or(0.0, |a| a.as_secs_f64()));
            let due = count as usize >= self.per_batch || age.is_some_and(|a| a >= self.interval);
            if due && !exact {
                // The count may hold a commit twice: the store decides.
                looked = None;
                continue;
            }
            if due {
                let cut = block_in_place(|| self.store.cut_batch(next, self.per_batch, self.mode, now))?;
                looked = None;
                if let Some(batch) = cut {
                    tracing::debug!(seq = batch.seq, leaves = batch.leaf_count, root = %batch.root, "batch cut");
                    next += 1;
                    self.settle(&batch, &mut shutdown).await;
                }
                continue;
            }
            let wait = match age {
                Some(a) => self.interval.saturating_sub(a).max(Duration::from_millis(5)),
                None => self.interval,
            };
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(wait) => {}
                _ = shutdown.changed() => {}
            }
        }
    }

    /// The first batch number to use: after the store's last, or, for a new
    /// store of a hub that already anchored (a replaced hub machine), after
    /// the last one on chain.
    async fn first_seq(&mut self) -> Result<u64> {
        if block_in_place(|| self.store.has_batches())? {
            return Ok(block_in_place(|| self.store.next_batch_seq())?);
        }
        let taken = |seq: u64| {
            let chain = self.chain.clone();
            async move { chain.batch_root(seq).await.map(|root| root != B256::ZERO) }
        };
        if !taken(1).await? {
            return Ok(1);
        }
        let (mut lo, mut hi) = (1u64, 2u64);
        while taken(hi).await? {
            lo = hi;
            hi *= 2;
        }
        while hi - lo > 1 {
            let mid = lo + (hi - lo) / 2;
            if taken(mid).await? {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        tracing::warn!(last = lo, "the hub store has no batches but this hub anchored before; continuing after them");
        Ok(hi)
    }

    async fn settle(&mut self, batch: &Batch, shutdown: &mut watch::Receiver<bool>) {
        let mut backoff = Duration::from_millis(250);
        loop {
            match self.attempt(batch).await {
                Ok(Outcome::Anchored) | Ok(Outcome::Failed) => return,
                Err(e) => {
                    self.metrics.tx_failed(self.op());
                    let hint = match &e {
                        ChainError::Reverted { error: E::AccessControlUnauthorizedAccount(_), .. } => {
                            " (grant it: `healthsense roles grant hub <hub address>`)"
                        }
                        ChainError::Reverted { error: E::EnforcedPause(_), .. } => " (the contract is paused)",
                        _ => "",
                    };
                    tracing::warn!(seq = batch.seq, error = %e, "anchoring failed; retrying in {backoff:?}{hint}");
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = shutdown.changed() => if *shutdown.borrow() { return },
            }
            backoff = (backoff * 2).min(self.max_backoff);
        }
    }

    fn op(&self) -> &'static str {
        match self.mode {
            Mode::Hash => "anchorBatch",
            Mode::Readings => "postReadings",
        }
    }

    /// One try: check the chain, send if absent, record the result.
    async fn attempt(&mut self, batch: &Batch) -> Result<Outcome, ChainError> {
        match self.on_chain(batch).await? {
            OnChain::Present => {
                self.record(batch, None);
                return Ok(Outcome::Anchored);
            }
            OnChain::Conflict => return Ok(Outcome::Failed),
            OnChain::Absent => {}
        }
        let sent = match batch.mode {
            Mode::Hash => self.chain.anchor(batch.seq, batch.root, batch.leaf_count).await,
            Mode::Readings => {
                let rows = block_in_place(|| self.store.batch_readings(batch.seq))
                    .map_err(|e| ChainError::Failed(e.to_string()))?;
                let sigs = rows.iter().map(|r| Bytes::copy_from_slice(&r.signature)).collect();
                self.chain.post_readings(rows.into_iter().map(|r| r.reading).collect(), sigs).await
            }
        };
        match sent {
            Ok(mined) => {
                self.record(batch, Some(mined));
                Ok(Outcome::Anchored)
            }
            // Lost a race with our own earlier transaction: the next check settles it.
            Err(ChainError::Reverted { error: E::BatchAlreadyAnchored(_), .. }) => Err(ChainError::Transport(
                "batch already anchored; checking the chain".into(),
            )),
            Err(e @ ChainError::Reverted { .. }) if !matches!(
                &e,
                ChainError::Reverted { error: E::AccessControlUnauthorizedAccount(_) | E::EnforcedPause(_), .. }
            ) =>
            {
                // The contract refuses this batch for good (e.g. a device was
                // revoked before its readings were posted): keep the readings,
                // mark the batch, move on.
                tracing::error!(seq = batch.seq, error = %e, "batch refused by the contract; marked failed");
                let _ = block_in_place(|| self.store.mark_failed(batch.seq, &e.to_string()));
                Ok(Outcome::Failed)
            }
            Err(e) => Err(e),
        }
    }

    /// Whether this batch is already on chain; a different root under our
    /// id means the store and the chain disagree, which is never papered over.
    async fn on_chain(&mut self, batch: &Batch) -> Result<OnChain, ChainError> {
        match batch.mode {
            Mode::Hash => {
                // The chain keeps only the root; it fixes the leaves, and so their count.
                let root = self.chain.batch_root(batch.seq).await?;
                if root == B256::ZERO {
                    return Ok(OnChain::Absent);
                }
                if root != batch.root {
                    let msg = format!(
                        "batch {} is anchored on chain with root {} but the store has {} ({} leaves): \
                         this hub key is used by another store",
                        batch.seq, root, batch.root, batch.leaf_count
                    );
                    tracing::error!("{msg}");
                    let _ = block_in_place(|| self.store.mark_failed(batch.seq, &msg));
                    return Ok(OnChain::Conflict);
                }
                Ok(OnChain::Present)
            }
            Mode::Readings => {
                let rows = block_in_place(|| self.store.batch_readings(batch.seq))
                    .map_err(|e| ChainError::Failed(e.to_string()))?;
                let Some(first) = rows.first() else { return Ok(OnChain::Present) };
                let device = self.chain.device(first.reading.deviceId).await?;
                Ok(if device.lastSeq >= first.reading.seq { OnChain::Present } else { OnChain::Absent })
            }
        }
    }

    fn record(&mut self, batch: &Batch, mined: Option<crate::chain::Mined>) {
        let (tx, block, gas) = mined.map_or((None, 0, 0), |m| (Some(m.tx), m.block, m.gas_used));
        if let Err(e) = block_in_place(|| self.store.mark_anchored(batch.seq, tx, block, gas, now_ms())) {
            // The chain has it; the next start finds it there and records it.
            tracing::error!(seq = batch.seq, error = %e, "batch anchored but not recorded");
        }
        self.metrics.batches.inc();
        self.metrics.anchored.inc_by(batch.leaf_count as u64);
        tracing::info!(seq = batch.seq, leaves = batch.leaf_count, tx = ?tx, gas, "batch anchored");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn between_looks_the_count_grows_by_the_commits_and_only_an_unchanged_one_is_exact() {
        let some = Unbatched { count: 1_500, oldest: Some(7), committed: 40 };
        assert_eq!(some.after(40), Some((1_500, Some(7), true)), "nothing committed since: the look stands");
        assert_eq!(some.after(540), Some((2_000, Some(7), false)), "500 committed: counted, the oldest unchanged, to be checked");
        let none = Unbatched { count: 0, oldest: None, committed: 40 };
        assert_eq!(none.after(40), Some((0, None, true)));
        assert_eq!(none.after(41), None, "the first reading after none: its time is the store's to tell");
        // A counter behind the look (never, but not an underflow).
        assert_eq!(some.after(39), Some((1_500, Some(7), true)));
    }
}
