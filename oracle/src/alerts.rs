//! Early-warning alerts and the live view of the ward.
//!
//! The ingest writer hands every committed group of readings to one thread
//! here (after the commit and the acknowledgements are sent, so the hot path
//! pays only a channel send). For each reading it computes the NEWS2 score
//! ([`crate::news2`]), keeps the device's latest reading for the API, and
//! when the device's alert level changes (none -> low-medium -> medium ->
//! high, and back down) stores an alert in the hub store's `alerts` table,
//! publishes it on `hs/v1/{hub}/alerts` and counts it. Everything is also
//! broadcast to the dashboard's live stream.
//!
//! Alerts are level changes, not one message per abnormal reading: a
//! patient at NEWS2 7 for an hour at 1 Hz is one alert, not 3,600; the
//! dashboard shows the current level from the latest reading.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use alloy::primitives::B256;
use healthsense_abi::Reading;
use rumqttc::{AsyncClient, QoS};
use rusqlite::params;
use serde::Serialize;
use tokio::sync::broadcast;

use crate::metrics::Metrics;
use crate::news2::{self, Risk, Score};
use crate::protocol::Topics;
use crate::store::{NewReading, Store, StoreError};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS alerts (
    id INTEGER PRIMARY KEY,
    device_id BLOB NOT NULL,
    serial TEXT NOT NULL,
    seq INTEGER NOT NULL,
    ts INTEGER NOT NULL,
    score INTEGER NOT NULL,
    level TEXT NOT NULL,
    previous TEXT NOT NULL,
    parameters TEXT NOT NULL,
    at_ms INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS alerts_device ON alerts (device_id, ts);
";

/// An alert: a device's NEWS2 alert level changed with this reading.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Alert {
    /// Row id in the hub store (0 before it is stored).
    pub id: i64,
    /// The hub (topic segment).
    pub hub: String,
    /// Device serial.
    pub serial: String,
    /// Device id on chain.
    pub device_id: B256,
    /// Sequence number of the reading that changed the level.
    pub seq: u64,
    /// Its timestamp, ms since the epoch.
    pub timestamp: u64,
    /// Aggregate NEWS2 of the reading.
    pub score: u8,
    /// The new alert level: `low-medium`, `medium`, `high`, or `none` when
    /// the alert is resolved.
    pub level: Risk,
    /// The level before this reading.
    pub previous: Risk,
    /// Per-parameter scores.
    pub parameters: Score,
    /// Hub time the alert was raised, ms since the epoch.
    pub at: u64,
}

/// The latest reading of a device, as the API and the dashboard show it.
#[derive(Debug, Clone, PartialEq)]
pub struct Latest {
    /// Device serial.
    pub serial: String,
    /// The reading.
    pub reading: Reading,
    /// Its NEWS2.
    pub score: Score,
    /// Hub receive time, ms.
    pub received_ms: u64,
}

/// What the live stream carries.
#[derive(Debug, Clone)]
pub enum LiveEvent {
    /// A stored reading.
    Reading(Latest),
    /// An alert level change.
    Alert(Alert),
    /// A device reported its battery or sleep state.
    State {
        /// Device serial.
        serial: String,
        /// Battery, %.
        battery: Option<f64>,
        /// Asleep.
        asleep: Option<bool>,
    },
}

/// The hub's live view: the latest reading of every device and a broadcast
/// of everything new. Cheap to share (an `Arc` inside).
#[derive(Clone)]
pub struct Live {
    latest: Arc<RwLock<HashMap<B256, Latest>>>,
    tx: broadcast::Sender<Arc<LiveEvent>>,
}

impl Default for Live {
    fn default() -> Self {
        // Lagging subscribers (a slow browser) skip ahead rather than hold memory.
        let (tx, _) = broadcast::channel(4_096);
        Self { latest: Arc::default(), tx }
    }
}

impl Live {
    /// The latest reading of every device, by device id.
    pub fn latest(&self) -> HashMap<B256, Latest> {
        self.latest.read().map(|m| m.clone()).unwrap_or_default()
    }

    /// The latest reading of one device.
    pub fn latest_of(&self, device: &B256) -> Option<Latest> {
        self.latest.read().ok().and_then(|m| m.get(device).cloned())
    }

    /// Subscribes to new events.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<LiveEvent>> {
        self.tx.subscribe()
    }

    /// Broadcasts an event (nobody listening is fine).
    pub fn send(&self, event: LiveEvent) {
        let _ = self.tx.send(Arc::new(event));
    }

    fn set_latest(&self, l: Latest) {
        if let Ok(mut m) = self.latest.write() {
            m.insert(l.reading.deviceId, l);
        }
    }
}

/// Creates the `alerts` table if needed.
pub(crate) fn init(store: &Store) -> Result<(), StoreError> {
    store.conn().execute_batch(SCHEMA)?;
    Ok(())
}

/// Alerts (of one device, or of all) with reading timestamps in
/// `from_ms..=to_ms`, newest first, at most `limit`, before row id `before`
/// when given.
pub fn device_alerts(
    store: &Store,
    device: Option<B256>,
    from_ms: u64,
    to_ms: u64,
    before: Option<i64>,
    limit: usize,
    hub: &str,
) -> Result<Vec<Alert>, StoreError> {
    let mut stmt = store.conn().prepare_cached(
        "SELECT id, serial, seq, ts, score, level, previous, parameters, at_ms, device_id FROM alerts
         WHERE (?1 IS NULL OR device_id = ?1) AND ts BETWEEN ?2 AND ?3 AND id < ?4 ORDER BY id DESC LIMIT ?5",
    )?;
    let to_ms = to_ms.min(i64::MAX as u64);
    let rows = stmt.query_map(
        params![device.as_ref().map(|d| d.as_slice()), from_ms as i64, to_ms as i64, before.unwrap_or(i64::MAX), limit as i64],
        |r| {
            Ok((
                (r.get::<_, i64>(0)?, r.get::<_, String>(1)?, r.get::<_, i64>(2)?, r.get::<_, i64>(3)?, r.get::<_, u8>(4)?),
                (r.get::<_, String>(5)?, r.get::<_, String>(6)?, r.get::<_, String>(7)?, r.get::<_, i64>(8)?, r.get::<_, Vec<u8>>(9)?),
            ))
        },
    )?;
    let mut out = Vec::new();
    for row in rows {
        let ((id, serial, seq, ts, score), (level, previous, parameters, at, device_id)) = row?;
        let risk = |s: &str| Risk::from_name(s).ok_or_else(|| StoreError::Corrupt(format!("alert level {s:?}")));
        if device_id.len() != 32 {
            return Err(StoreError::Corrupt("alert device id".into()));
        }
        out.push(Alert {
            id,
            hub: hub.to_string(),
            serial,
            device_id: B256::from_slice(&device_id),
            seq: seq as u64,
            timestamp: ts as u64,
            score,
            level: risk(&level)?,
            previous: risk(&previous)?,
            parameters: parse_parameters(&parameters),
            at: at as u64,
        });
    }
    Ok(out)
}

/// Per-parameter scores are stored as six digits (resp, spo2, systolic,
/// pulse, consciousness, temperature), compact and schema-free.
fn encode_parameters(s: &Score) -> String {
    [s.resp_rate, s.spo2, s.systolic, s.heart_rate, s.consciousness, s.temperature].iter().map(|d| d.to_string()).collect()
}

fn parse_parameters(text: &str) -> Score {
    let d: Vec<u8> = text.bytes().map(|b| b.saturating_sub(b'0')).collect();
    let at = |i: usize| d.get(i).copied().unwrap_or(0);
    let mut s = Score {
        resp_rate: at(0),
        spo2: at(1),
        systolic: at(2),
        heart_rate: at(3),
        consciousness: at(4),
        temperature: at(5),
        total: 0,
    };
    s.total = s.resp_rate + s.spo2 + s.systolic + s.heart_rate + s.consciousness + s.temperature;
    s
}

/// The alert level a score raises (below low-medium: none); the archive
/// charts every reading where it changes.
pub(crate) fn alert_level(score: &Score) -> Risk {
    let risk = score.risk();
    if risk.alerts() {
        risk
    } else {
        Risk::None
    }
}

/// Everything the alert thread needs.
pub(crate) struct Engine {
    /// Its own store connection.
    pub store: Store,
    /// For publishing on the alert topic.
    pub client: AsyncClient,
    /// Hub topics.
    pub topics: Topics,
    /// Counters.
    pub metrics: Arc<Metrics>,
    /// The live view to update.
    pub live: Live,
    /// For the MQTT publishes from this thread.
    pub runtime: tokio::runtime::Handle,
}

impl Engine {
    /// Loads each device's latest reading and current alert level, then
    /// starts the thread; it stops when every sender of `rx` is gone.
    pub fn start(self, rx: std::sync::mpsc::Receiver<Vec<NewReading>>) -> anyhow::Result<std::thread::JoinHandle<()>> {
        init(&self.store)?;
        let levels = self.load()?;
        Ok(std::thread::Builder::new().name("hs-alerts".into()).spawn(move || self.run(levels, rx))?)
    }

    fn load(&self) -> Result<HashMap<B256, Risk>, StoreError> {
        let conn = self.store.conn();
        let mut levels = HashMap::new();
        let mut stmt = conn.prepare(
            "SELECT device_id, level FROM alerts WHERE id IN (SELECT MAX(id) FROM alerts GROUP BY device_id)",
        )?;
        let rows = stmt.query_map([], |r| Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, String>(1)?)))?;
        for row in rows {
            let (id, level) = row?;
            if let (true, Some(level)) = (id.len() == 32, Risk::from_name(&level)) {
                levels.insert(B256::from_slice(&id), level);
            }
        }
        for l in crate::api::queries::latest_readings(&self.store)? {
            self.live.set_latest(l);
        }
        Ok(levels)
    }

    fn run(self, mut levels: HashMap<B256, Risk>, rx: std::sync::mpsc::Receiver<Vec<NewReading>>) {
        let hub = self.topics.hub().to_string();
        let topic = self.topics.alerts();
        while let Ok(mut group) = rx.recv() {
            // Take everything waiting: one store transaction for all of it.
            while let Ok(more) = rx.try_recv() {
                group.extend(more);
            }
            let now = crate::ingest::now_ms();
            let mut raised = Vec::new();
            for n in group {
                let score = news2::score(&n.reading);
                let level = alert_level(&score);
                let previous = levels.get(&n.reading.deviceId).copied().unwrap_or(Risk::None);
                if level != previous {
                    levels.insert(n.reading.deviceId, level);
                    raised.push(Alert {
                        id: 0,
                        hub: hub.clone(),
                        serial: n.serial.clone(),
                        device_id: n.reading.deviceId,
                        seq: n.reading.seq,
                        timestamp: n.reading.timestamp,
                        score: score.total,
                        level,
                        previous,
                        parameters: score,
                        at: now,
                    });
                }
                let latest = Latest { serial: n.serial, reading: n.reading, score, received_ms: n.received_ms };
                // Buffered readings of a device that slept arrive late: the
                // latest stays the one with the highest sequence number.
                let newer = self.live.latest_of(&latest.reading.deviceId).is_none_or(|l| l.reading.seq < latest.reading.seq);
                if newer {
                    self.live.set_latest(latest.clone());
                }
                self.live.send(LiveEvent::Reading(latest));
            }
            if raised.is_empty() {
                continue;
            }
            if let Err(e) = self.store_alerts(&mut raised) {
                tracing::error!(error = %e, alerts = raised.len(), "alerts not stored (still published)");
            }
            self.runtime.block_on(async {
                for a in &raised {
                    self.metrics.alert(a.level.name());
                    tracing::info!(serial = %a.serial, seq = a.seq, score = a.score, level = a.level.name(), "NEWS2 alert");
                    let body = serde_json::to_vec(a).unwrap_or_default();
                    if let Err(e) = self.client.publish(topic.clone(), QoS::AtLeastOnce, false, body).await {
                        tracing::warn!(error = %e, "alert not published");
                    }
                }
            });
            for a in raised {
                self.live.send(LiveEvent::Alert(a));
            }
        }
    }

    fn store_alerts(&self, alerts: &mut [Alert]) -> Result<(), StoreError> {
        let conn = self.store.conn();
        let tx = conn.unchecked_transaction()?;
        {
            let mut ins = tx.prepare_cached(
                "INSERT INTO alerts (device_id, serial, seq, ts, score, level, previous, parameters, at_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            )?;
            for a in alerts.iter_mut() {
                ins.execute(params![
                    a.device_id.as_slice(),
                    a.serial,
                    a.seq as i64,
                    a.timestamp as i64,
                    a.score,
                    a.level.name(),
                    a.previous.name(),
                    encode_parameters(&a.parameters),
                    a.at as i64
                ])?;
                a.id = tx.last_insert_rowid();
            }
        }
        tx.commit()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters_round_trip_and_levels_start_at_low_medium() {
        let r = Reading { heartRate: 118, respRate: 22, spo2: 93, systolic: 98, temperature: 3_860, consciousness: 2, ..Default::default() };
        let s = news2::score(&r);
        assert_eq!(parse_parameters(&encode_parameters(&s)), s);
        assert_eq!(alert_level(&s), Risk::High);
        let low = news2::score(&Reading { heartRate: 95, respRate: 16, ..Default::default() });
        assert_eq!((low.risk(), alert_level(&low)), (Risk::Low, Risk::None));
    }
}
