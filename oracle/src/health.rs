//! Readiness: whether the hub is doing its job, not only alive.
//!
//! `/healthz` answers while the process runs (liveness). `/readyz` fails,
//! naming each condition, when any of these holds (thresholds in
//! `[health]`, docs/ORACLE.md):
//!
//! - `mqtt_down`: no session with the broker;
//! - `mqtt_flapping`: the session dropped `flap_drops` times within
//!   `flap_window_s` (a reconnect does not reset the count: a message the
//!   client cannot take makes the broker drop it, redeliver it and drop it
//!   again, each reconnect looking healthy on its own);
//! - `ingest_stuck`: vitals wait and nothing was committed for `ingest_stall_s`;
//! - `chain_unreachable`: the chain did not answer for `chain_grace_s`;
//! - `anchor_late`: the oldest reading not in an anchored batch is older
//!   than `anchor.interval_ms` plus `anchor_margin_ms`;
//! - `archive_stalled`: a discharged stay's archive has waited more than
//!   `archive_max_wait_s` for its CID to reach the chain.
//!
//! Each condition is also the gauge `healthsense_oracle_not_ready{condition}`
//! (1 while it holds), refreshed at every `/metrics` and `/readyz` request.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use rusqlite::OptionalExtension;
use serde::Serialize;

use crate::config::HealthConfig;
use crate::metrics::Metrics;
use crate::store::Store;

/// Every readiness condition, as `/readyz` and the gauge label name them.
pub const CONDITIONS: [&str; 6] =
    ["mqtt_down", "mqtt_flapping", "ingest_stuck", "chain_unreachable", "anchor_late", "archive_stalled"];

/// A condition that holds, and what the operator should know about it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Failing {
    /// One of [`CONDITIONS`].
    pub condition: &'static str,
    /// What was seen, in words.
    pub detail: String,
}

/// The MQTT session as the event loop reports it.
#[derive(Default)]
struct Session {
    connected: bool,
    /// When the session last went up or down, ms.
    since_ms: u64,
    /// When each recent drop happened, ms (within the window).
    drops: VecDeque<u64>,
    last_error: String,
    /// When the flapping error was last logged, ms.
    flap_logged_ms: Option<u64>,
}

/// The hub's readiness state, fed by the event loop, the ingest writer and
/// the chain watcher, read by `/readyz` and `/metrics`.
pub struct Health {
    cfg: HealthConfig,
    anchor_interval_ms: u64,
    metrics: Arc<Metrics>,
    session: Mutex<Session>,
    received: AtomicU64,
    settled: AtomicU64,
    /// Last commit, or when a message arrived with none waiting, ms.
    progress_ms: AtomicU64,
    chain_ok: AtomicBool,
    chain_down_since_ms: AtomicU64,
    chain_error: Mutex<String>,
    /// Its own connection, for the anchoring and archive queries.
    store: Mutex<Store>,
}

impl Health {
    /// Readiness with `cfg`, for a hub whose batches are due every
    /// `anchor_interval_ms`; `store` is a connection of its own.
    pub fn new(cfg: HealthConfig, anchor_interval_ms: u64, metrics: Arc<Metrics>, store: Store, now_ms: u64) -> crate::store::Result<Self> {
        // The archive table may not exist yet when archiving and the API are off.
        store.init_archive()?;
        Ok(Self {
            cfg,
            anchor_interval_ms,
            metrics,
            session: Mutex::new(Session { since_ms: now_ms, last_error: "not connected yet".into(), ..Default::default() }),
            received: AtomicU64::new(0),
            settled: AtomicU64::new(0),
            progress_ms: AtomicU64::new(now_ms),
            // Optimistic until the watcher's first answer; start-up already reached the chain.
            chain_ok: AtomicBool::new(true),
            chain_down_since_ms: AtomicU64::new(0),
            chain_error: Mutex::new(String::new()),
            store: Mutex::new(store),
        })
    }

    fn window_ms(&self) -> u64 {
        self.cfg.flap_window_s.max(1) * 1_000
    }

    /// The broker accepted the session.
    pub fn mqtt_connected(&self, now_ms: u64) {
        self.metrics.mqtt_connected.set(1);
        if let Ok(mut s) = self.session.lock() {
            s.connected = true;
            s.since_ms = now_ms;
        }
    }

    /// The event loop failed with `error`. A failure of a connected session
    /// is a drop: counted, and logged at error level once the session flaps.
    pub fn mqtt_error(&self, now_ms: u64, error: &str) {
        self.metrics.mqtt_connected.set(0);
        let Ok(mut s) = self.session.lock() else { return };
        s.last_error = error.to_string();
        if !s.connected {
            return;
        }
        s.connected = false;
        s.since_ms = now_ms;
        self.metrics.mqtt_drops.inc();
        s.drops.push_back(now_ms);
        let window = self.window_ms();
        while s.drops.front().is_some_and(|t| now_ms.saturating_sub(*t) > window) {
            s.drops.pop_front();
        }
        let drops = s.drops.len();
        if drops >= self.cfg.flap_drops.max(1) as usize {
            if s.flap_logged_ms.is_none_or(|t| now_ms.saturating_sub(t) >= window) {
                s.flap_logged_ms = Some(now_ms);
                tracing::error!(
                    drops,
                    window_s = self.cfg.flap_window_s,
                    error,
                    "the MQTT session keeps dropping: check the broker's log and limits (packet size, inflight window) and the network; the hub is not ready"
                );
            }
        } else {
            tracing::warn!(error, "lost the broker connection; reconnecting");
        }
    }

    /// `n` vitals messages were handed to ingest.
    pub fn received(&self, n: u64, now_ms: u64) {
        let before = self.received.fetch_add(n, Ordering::Relaxed);
        if before == self.settled.load(Ordering::Relaxed) {
            // None was waiting: the stall clock starts now.
            self.progress_ms.store(now_ms, Ordering::Relaxed);
        }
    }

    /// `n` messages were committed (or rejected) and acknowledged.
    pub fn committed(&self, n: u64, now_ms: u64) {
        self.settled.fetch_add(n, Ordering::Relaxed);
        self.progress_ms.store(now_ms, Ordering::Relaxed);
    }

    /// The chain answered.
    pub fn chain_answered(&self) {
        self.chain_ok.store(true, Ordering::Relaxed);
        self.chain_down_since_ms.store(0, Ordering::Relaxed);
    }

    /// The chain did not answer.
    pub fn chain_failed(&self, now_ms: u64, error: &str) {
        if self.chain_ok.swap(false, Ordering::Relaxed) || self.chain_down_since_ms.load(Ordering::Relaxed) == 0 {
            self.chain_down_since_ms.store(now_ms, Ordering::Relaxed);
        }
        if let Ok(mut e) = self.chain_error.lock() {
            *e = error.to_string();
        }
    }

    /// The conditions that hold at `now_ms` (empty: ready); also sets the gauges.
    pub fn check(&self, now_ms: u64) -> Vec<Failing> {
        let mut failing = Vec::new();
        let mut fail = |condition: &'static str, detail: String| failing.push(Failing { condition, detail });
        let secs = |since: u64| now_ms.saturating_sub(since) / 1_000;
        if let Ok(mut s) = self.session.lock() {
            if !s.connected {
                fail("mqtt_down", format!("no broker session for {} s: {}", secs(s.since_ms), s.last_error));
            }
            let window = self.window_ms();
            while s.drops.front().is_some_and(|t| now_ms.saturating_sub(*t) > window) {
                s.drops.pop_front();
            }
            if s.drops.len() >= self.cfg.flap_drops.max(1) as usize {
                let detail = format!("{} session drops in {} s; last: {}", s.drops.len(), self.cfg.flap_window_s, s.last_error);
                fail("mqtt_flapping", detail);
            }
        }
        let waiting = self.received.load(Ordering::Relaxed).saturating_sub(self.settled.load(Ordering::Relaxed));
        let progress = self.progress_ms.load(Ordering::Relaxed);
        if waiting > 0 && now_ms.saturating_sub(progress) > self.cfg.ingest_stall_s * 1_000 {
            fail("ingest_stuck", format!("{waiting} message(s) waiting, nothing committed for {} s", secs(progress)));
        }
        let down = self.chain_down_since_ms.load(Ordering::Relaxed);
        if !self.chain_ok.load(Ordering::Relaxed) && down > 0 && now_ms.saturating_sub(down) > self.cfg.chain_grace_s * 1_000 {
            let error = self.chain_error.lock().map(|e| e.clone()).unwrap_or_default();
            fail("chain_unreachable", format!("no answer from the chain for {} s: {error}", secs(down)));
        }
        match self.oldest() {
            Ok((unanchored, archive)) => {
                let limit = self.anchor_interval_ms + self.cfg.anchor_margin_ms;
                if let Some(t) = unanchored.filter(|t| now_ms.saturating_sub(*t) > limit) {
                    fail("anchor_late", format!("a reading received {} s ago is not anchored yet (limit {} ms)", secs(t), limit));
                }
                if let Some(t) = archive.filter(|t| now_ms.saturating_sub(*t) > self.cfg.archive_max_wait_s * 1_000) {
                    fail("archive_stalled", format!("a discharged stay's archive has waited {} s (see `healthsense archive status`)", secs(t)));
                }
            }
            Err(e) => fail("anchor_late", format!("the hub store did not answer: {e}")),
        }
        for c in CONDITIONS {
            let holds = failing.iter().any(|f| f.condition == c);
            self.metrics.not_ready.get_or_create(&crate::metrics::Condition { condition: c.to_string() }).set(holds as i64);
        }
        failing
    }

    /// Receive time of the oldest reading not in an anchored batch (failed
    /// batches excepted: they are reported in the store), and request time
    /// of the oldest unfinished archive job, ms.
    fn oldest(&self) -> crate::store::Result<(Option<u64>, Option<u64>)> {
        let store = self.store.lock().map_err(|_| crate::store::StoreError::Corrupt("health store lock poisoned".into()))?;
        let conn = store.conn();
        let unanchored: Option<i64> = conn.query_row(
            "SELECT MIN(t) FROM (
                SELECT MIN(received_ms) AS t FROM readings WHERE batch_seq IS NULL
                UNION ALL
                SELECT MIN(r.received_ms) FROM batches b JOIN readings r ON r.batch_seq = b.seq
                 WHERE b.state IN ('cutting', 'pending'))",
            [],
            |r| r.get(0),
        )?;
        let archive: Option<i64> = conn
            .query_row("SELECT MIN(requested_ms) FROM archives WHERE state NOT IN ('archived', 'failed')", [], |r| r.get(0))
            .optional()?
            .flatten();
        Ok((unanchored.map(|t| t as u64), archive.map(|t| t as u64)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Binding, NewReading};
    use alloy::primitives::{Address, B256};

    fn health(dir: &std::path::Path) -> (Health, Store) {
        let binding = Binding { chain_id: 1, contract: Address::repeat_byte(1), hub: Address::repeat_byte(2) };
        let path = dir.join("hub.sqlite");
        let cfg = HealthConfig { flap_window_s: 10, flap_drops: 3, ingest_stall_s: 2, chain_grace_s: 5, anchor_margin_ms: 1_000, archive_max_wait_s: 60 };
        let h = Health::new(cfg, 500, Arc::new(Metrics::default()), Store::open(&path, binding).unwrap(), 0).unwrap();
        (h, Store::open(&path, binding).unwrap())
    }

    fn names(f: Vec<Failing>) -> Vec<&'static str> {
        f.into_iter().map(|f| f.condition).collect()
    }

    #[test]
    fn session_drops_count_over_a_window_not_since_the_last_reconnect() {
        let dir = tempfile::tempdir().unwrap();
        let (h, _) = health(dir.path());
        assert_eq!(names(h.check(0)), ["mqtt_down"], "not connected yet");
        // A broker that cannot reach us at all is down, but not flapping: no drops.
        for t in 0..10 {
            h.mqtt_error(t * 100, "refused");
        }
        assert_eq!(names(h.check(1_000)), ["mqtt_down"]);
        // Three drops, each after a successful reconnect, within 10 s.
        for t in [1_000, 2_000, 3_000] {
            h.mqtt_connected(t);
            h.mqtt_error(t + 10, "packet too large");
        }
        h.mqtt_connected(4_000);
        assert_eq!(names(h.check(4_000)), ["mqtt_flapping"]);
        assert_eq!(h.metrics.mqtt_drops.get(), 3);
        // Once the oldest leaves the window, it is only two.
        assert!(names(h.check(11_100)).is_empty());
    }

    #[test]
    fn ingest_chain_anchor_and_archive_conditions() {
        let dir = tempfile::tempdir().unwrap();
        let (h, mut store) = health(dir.path());
        h.mqtt_connected(0);
        // Waiting messages with no commit for over 2 s; a commit clears it.
        h.received(3, 1_000);
        assert!(names(h.check(2_900)).is_empty());
        assert_eq!(names(h.check(3_100)), ["ingest_stuck"]);
        h.committed(3, 3_200);
        assert!(names(h.check(9_000)).is_empty(), "nothing waits");
        // The chain: failing past its 5 s grace.
        h.chain_failed(10_000, "connection refused");
        h.chain_failed(12_000, "connection refused");
        assert!(names(h.check(14_000)).is_empty());
        assert_eq!(names(h.check(15_100)), ["chain_unreachable"]);
        h.chain_answered();
        assert!(names(h.check(15_200)).is_empty());
        // A reading not anchored 500 ms + 1 s after it came.
        let reading = healthsense_abi::Reading { deviceId: B256::repeat_byte(3), seq: 1, ..Default::default() };
        let n = NewReading { serial: "HS-1".into(), reading, signature: [1; 65], received_ms: 20_000 };
        store.commit(&[n], &[]).unwrap();
        assert!(names(h.check(21_400)).is_empty());
        assert_eq!(names(h.check(21_600)), ["anchor_late"]);
        // An archive job waiting over 60 s.
        store.init_archive().unwrap();
        store.request_archive(B256::repeat_byte(4), B256::repeat_byte(3), crate::archive::State::Discharged, 1, 30_000).unwrap();
        assert_eq!(names(h.check(89_000)), ["anchor_late"]);
        assert_eq!(names(h.check(90_100)), ["anchor_late", "archive_stalled"]);
        let text = h.metrics.encode();
        assert!(text.contains("healthsense_oracle_not_ready{condition=\"archive_stalled\"} 1"), "{text}");
        assert!(text.contains("healthsense_oracle_not_ready{condition=\"ingest_stuck\"} 0"), "{text}");
    }
}
