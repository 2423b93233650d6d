//! Early-warning alerts and the live view of the ward.
//!
//! The ingest verifier hands every verified part of a group of readings to
//! the [`Scorer`] here, numbered, as soon as its signatures check out
//! (before the commit: an alert must not wait for the disk). The scorer
//! takes the parts in arrival order, on whichever verification thread
//! completes the next one due, skips what the writer will not store as new
//! (a sequence number at or below the device's last), and for each reading
//! computes the NEWS2 score ([`crate::news2`]) and keeps the device's latest
//! reading for the API. When the device's alert level changes (none ->
//! low-medium -> medium -> high, and back down) it publishes an alert on
//! `hs/v1/{hub}/alerts`, counts it, and hands it to a logger thread that
//! stores it in the hub store's `alerts` table (so the next part's alerts
//! never wait for the write lock the ingest writer holds through its
//! commits, nor for the disk). Readings are broadcast to the dashboard's
//! live stream as they are scored, alerts once they are stored (so an alert
//! a doctor sees can be acknowledged).
//!
//! An alert is published before its reading is committed (the reading's
//! acknowledgement still waits for the commit). Its id is assigned first,
//! from a block the store has reserved durably ([`Ids`]), so an id a nurse
//! station has seen is never given to another alert, even after a crash.
//!
//! Alerts are level changes, not one message per abnormal reading: a
//! patient at NEWS2 7 for an hour at 1 Hz is one alert, not 3,600; the
//! dashboard shows the current level from the latest reading.
//!
//! The level follows the escalation policy ([`Policy`], `docs/API.md`
//! "Alert policy"): it rises at once, and steps down only after the lower
//! level has held for `alerts.hold_ms` (15 minutes) or `alerts.hold_readings`
//! readings, so a patient hovering at a threshold raises one alert, not a
//! flapping series. A DOCTOR may acknowledge the current alert through the
//! API ([`acknowledge`]); the acknowledgement is kept in the hub store's
//! `alert_acks` table and published on the alert topic as a `kind: "ack"`
//! message.

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::sync::{Arc, OnceLock, RwLock};

use alloy::primitives::{Address, B256};
use healthsense_abi::Reading;
use rumqttc::{AsyncClient, QoS};
use rusqlite::{params, OptionalExtension};
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

use crate::ingest::ArrivalOrder;
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
    /// Who acknowledged it and when (`null` until a doctor does).
    pub ack: Option<Ack>,
}

/// A doctor's acknowledgement of an alert (hub store `alert_acks`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Ack {
    /// The doctor's address (the signed-in session's).
    pub by: Address,
    /// Hub time of the acknowledgement, ms since the epoch.
    pub at: u64,
}

/// How a device's alert level moves (RCP 2017, NEWS2, "Clinical response
/// to NEWS trigger thresholds": escalate at once, de-escalate on clinical
/// review). Config section `[alerts]` (`docs/ORACLE.md`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Policy {
    /// A lower level must hold this long (reading timestamps, ms) before the
    /// alert steps down to it; 0 steps down at once.
    pub hold_ms: u64,
    /// ... or for this many consecutive lower readings, whichever comes
    /// first; 0 leaves only the time rule.
    pub hold_readings: u32,
}

impl Default for Policy {
    fn default() -> Self {
        Self { hold_ms: 15 * 60 * 1_000, hold_readings: 0 }
    }
}

/// A device's alert state under a [`Policy`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Track {
    /// The current alert level.
    pub level: Risk,
    /// Since the first reading below `level`: its timestamp, how many
    /// readings, and the highest level among them.
    lower: Option<(u64, u32, Risk)>,
}

impl Track {
    /// A device whose current alert level is `level`, no step-down pending.
    pub fn at(level: Risk) -> Self {
        Self { level, lower: None }
    }
}

impl Policy {
    /// Feeds the alert level of one reading taken at `ts` (ms); returns the
    /// new current level when it changes. A rise is immediate; a fall moves
    /// to the highest level seen while the lower level held.
    pub fn step(&self, track: &mut Track, level: Risk, ts: u64) -> Option<Risk> {
        if level >= track.level {
            track.lower = None;
            let rose = level > track.level;
            track.level = level;
            return rose.then_some(level);
        }
        let (since, count, max) = track.lower.get_or_insert((ts, 0, level));
        *count += 1;
        *max = (*max).max(level);
        let held = ts.saturating_sub(*since) >= self.hold_ms || (self.hold_readings > 0 && *count >= self.hold_readings);
        if !held {
            return None;
        }
        let to = *max;
        *track = Track::at(to);
        Some(to)
    }
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
    /// A doctor acknowledged an alert (the alert, with its `ack`).
    Ack(Alert),
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
    /// The MQTT client and alert topic, once the alert engine has started.
    alert_topic: Arc<OnceLock<(AsyncClient, String)>>,
}

impl Default for Live {
    fn default() -> Self {
        // Lagging subscribers (a slow browser) skip ahead rather than hold memory.
        let (tx, _) = broadcast::channel(4_096);
        Self { latest: Arc::default(), tx, alert_topic: Arc::default() }
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

    /// Publishes an acknowledgement on the alert topic (`kind: "ack"`,
    /// `docs/PROTOCOL.md`) and to the live stream.
    pub async fn acknowledged(&self, alert: Alert) {
        if let Some((client, topic)) = self.alert_topic.get() {
            let body = serde_json::to_vec(&AlertMessage { kind: "ack", alert: &alert }).unwrap_or_default();
            if let Err(e) = client.publish(topic.clone(), QoS::AtLeastOnce, false, body).await {
                tracing::warn!(error = %e, "acknowledgement not published");
            }
        }
        self.send(LiveEvent::Ack(alert));
    }

    /// Sets each device's latest reading, under one lock (the ward view's
    /// load at start: 20,000 devices).
    fn set_all(&self, all: Vec<Latest>) {
        if let Ok(mut m) = self.latest.write() {
            m.reserve(all.len());
            m.extend(all.into_iter().map(|l| (l.reading.deviceId, l)));
        }
    }

    /// Makes `l` its device's latest reading unless one with a higher
    /// sequence number is there: buffered readings of a device that slept
    /// arrive late. One lookup under the lock and no copy of the old one,
    /// on the verification threads' way.
    fn offer(&self, l: &Latest) {
        let Ok(mut m) = self.latest.write() else { return };
        match m.get_mut(&l.reading.deviceId) {
            Some(old) if old.reading.seq >= l.reading.seq => {}
            Some(old) => *old = l.clone(),
            None => {
                m.insert(l.reading.deviceId, l.clone());
            }
        }
    }
}

/// An alert or an acknowledgement as the alert topic carries it.
#[derive(Serialize)]
struct AlertMessage<'a> {
    kind: &'static str,
    #[serde(flatten)]
    alert: &'a Alert,
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
        &format!("{ALERT_SELECT} WHERE (?1 IS NULL OR a.device_id = ?1) AND a.ts BETWEEN ?2 AND ?3 AND a.id < ?4 ORDER BY a.id DESC LIMIT ?5"),
    )?;
    let to_ms = to_ms.min(i64::MAX as u64);
    let rows = stmt.query_map(
        params![device.as_ref().map(|d| d.as_slice()), from_ms as i64, to_ms as i64, before.unwrap_or(i64::MAX), limit as i64],
        alert_row,
    )?;
    rows.map(|r| r?.into_alert(hub)).collect()
}

const ALERT_SELECT: &str = "SELECT a.id, a.serial, a.seq, a.ts, a.score, a.level, a.previous, a.parameters, a.at_ms, a.device_id, k.doctor, k.at_ms
     FROM alerts a LEFT JOIN alert_acks k ON k.alert_id = a.id";

/// An `alerts` row with its acknowledgement, before its text is checked.
struct AlertRow {
    id: i64,
    serial: String,
    seq: i64,
    ts: i64,
    score: u8,
    level: String,
    previous: String,
    parameters: String,
    at: i64,
    device_id: Vec<u8>,
    ack_by: Option<String>,
    ack_at: Option<i64>,
}

fn alert_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<AlertRow> {
    Ok(AlertRow {
        id: r.get(0)?,
        serial: r.get(1)?,
        seq: r.get(2)?,
        ts: r.get(3)?,
        score: r.get(4)?,
        level: r.get(5)?,
        previous: r.get(6)?,
        parameters: r.get(7)?,
        at: r.get(8)?,
        device_id: r.get(9)?,
        ack_by: r.get(10)?,
        ack_at: r.get(11)?,
    })
}

impl AlertRow {
    fn into_alert(self, hub: &str) -> Result<Alert, StoreError> {
        let risk = |s: &str| Risk::from_name(s).ok_or_else(|| StoreError::Corrupt(format!("alert level {s:?}")));
        if self.device_id.len() != 32 {
            return Err(StoreError::Corrupt("alert device id".into()));
        }
        let ack = match (self.ack_by, self.ack_at) {
            (Some(by), Some(at)) => Some(Ack {
                by: by.parse().map_err(|_| StoreError::Corrupt(format!("acknowledging address {by:?}")))?,
                at: at as u64,
            }),
            _ => None,
        };
        Ok(Alert {
            id: self.id,
            hub: hub.to_string(),
            serial: self.serial,
            device_id: B256::from_slice(&self.device_id),
            seq: self.seq as u64,
            timestamp: self.ts as u64,
            score: self.score,
            level: risk(&self.level)?,
            previous: risk(&self.previous)?,
            parameters: parse_parameters(&self.parameters),
            at: self.at as u64,
            ack,
        })
    }
}

/// One alert by row id.
pub fn alert(store: &Store, id: i64, hub: &str) -> Result<Option<Alert>, StoreError> {
    let found = store.conn().query_row(&format!("{ALERT_SELECT} WHERE a.id = ?1"), [id], alert_row).optional()?;
    found.map(|r| r.into_alert(hub)).transpose()
}

/// The current alert of each device (its latest level change), by device id.
pub fn current_alerts(store: &Store, hub: &str) -> Result<HashMap<B256, Alert>, StoreError> {
    let mut stmt = store
        .conn()
        .prepare_cached(&format!("{ALERT_SELECT} WHERE a.id IN (SELECT MAX(id) FROM alerts GROUP BY device_id)"))?;
    let rows = stmt.query_map([], alert_row)?;
    let mut out = HashMap::new();
    for r in rows {
        let a = r?.into_alert(hub)?;
        out.insert(a.device_id, a);
    }
    Ok(out)
}

/// Why an acknowledgement was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum AckRefusal {
    /// No such alert.
    Unknown,
    /// A later level change replaced it; acknowledge the current one.
    NotCurrent(i64),
    /// It resolves an alert (`level: none`): nothing to acknowledge.
    Resolved,
}

/// Records `by`'s acknowledgement of alert `id` at `now_ms`: only the
/// device's current alert, once (a second acknowledgement returns the
/// first). Returns the alert with its acknowledgement.
pub fn acknowledge(store: &Store, id: i64, by: Address, now_ms: u64, hub: &str) -> Result<Result<Alert, AckRefusal>, StoreError> {
    // IMMEDIATE: a deferred transaction that reads first and then writes
    // fails at once (SQLITE_BUSY, no busy handler) if the writer committed
    // in between, which the ingest writer does many times a second.
    let tx = rusqlite::Transaction::new_unchecked(store.conn(), rusqlite::TransactionBehavior::Immediate)?;
    let Some(a) = alert(store, id, hub)? else { return Ok(Err(AckRefusal::Unknown)) };
    let latest: i64 =
        tx.query_row("SELECT MAX(id) FROM alerts WHERE device_id = ?1", [a.device_id.as_slice()], |r| r.get(0))?;
    if latest != id {
        return Ok(Err(AckRefusal::NotCurrent(latest)));
    }
    if a.level == Risk::None {
        return Ok(Err(AckRefusal::Resolved));
    }
    tx.execute(
        "INSERT OR IGNORE INTO alert_acks (alert_id, device_id, doctor, at_ms) VALUES (?1, ?2, ?3, ?4)",
        params![id, a.device_id.as_slice(), by.to_string(), now_ms.min(i64::MAX as u64) as i64],
    )?;
    tx.commit()?;
    Ok(alert(store, id, hub)?.ok_or(AckRefusal::Unknown))
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

/// Alert ids taken from blocks reserved in the store (`meta` key
/// `alert_ids_reserved`) before any id of the block is published.
struct Ids {
    next: i64,
    reserved: i64,
}

/// Ids reserved at a time: one synchronous store write per this many alerts.
const ID_BLOCK: i64 = 1_000;

impl Ids {
    /// Starts after the highest id stored or reserved: ids reserved by a run
    /// that crashed stay unused.
    fn load(store: &Store) -> Result<Self, StoreError> {
        let stored: i64 = store.conn().query_row("SELECT COALESCE(MAX(id), 0) FROM alerts", [], |r| r.get(0))?;
        let reserved = store.meta(RESERVED_KEY)?.and_then(|v| v.parse::<i64>().ok()).unwrap_or(0);
        let last = stored.max(reserved);
        Ok(Self { next: last + 1, reserved: last })
    }

    /// The first of `n` consecutive ids, reserving a new block if needed.
    fn take(&mut self, store: &Store, n: usize) -> Result<i64, StoreError> {
        let first = self.next;
        let last = first + n as i64 - 1;
        if last > self.reserved {
            let reserved = last + ID_BLOCK;
            store.set_meta(RESERVED_KEY, &reserved.to_string())?;
            self.reserved = reserved;
        }
        self.next = last + 1;
        Ok(first)
    }
}

const RESERVED_KEY: &str = "alert_ids_reserved";

/// Everything the alert engine needs.
pub(crate) struct Engine {
    /// Its own store connection (alert levels, id blocks).
    pub store: Store,
    /// For publishing on the alert topic.
    pub client: AsyncClient,
    /// Hub topics.
    pub topics: Topics,
    /// Counters.
    pub metrics: Arc<Metrics>,
    /// The live view to update.
    pub live: Live,
    /// For an MQTT publish that must wait (the client's queue full).
    pub runtime: tokio::runtime::Handle,
    /// When an alert steps down.
    pub policy: Policy,
}

/// What scoring keeps between parts, under the [`Scorer`]'s lock.
struct State {
    order: ArrivalOrder<Vec<NewReading>>,
    /// Readings due before the ward view was loaded: scored after it.
    waiting: Option<Vec<NewReading>>,
    levels: HashMap<B256, Track>,
    last_seqs: HashMap<B256, u64>,
    ids: Ids,
    /// Where the id blocks are reserved.
    store: Store,
    /// The alerts published, for the logger thread to store.
    stored: std::sync::mpsc::Sender<Vec<Alert>>,
}

/// Scores verified readings on the thread that verified them, in arrival
/// order ([`ArrivalOrder`]): whichever verification thread completes the next
/// part due scores it, and every later part already verified, under one
/// lock, and publishes the alerts they raise. No thread wakes for it: the
/// alert thread that did the scoring before, with the verifier thread that
/// went with it, cost 12 % of the hub's CPU at 5,000 readings/s
/// (docs/BENCHMARKS.md, "Issue 22, eleventh session").
pub struct Scorer {
    client: AsyncClient,
    metrics: Arc<Metrics>,
    live: Live,
    runtime: tokio::runtime::Handle,
    policy: Policy,
    hub: String,
    topic: String,
    state: std::sync::Mutex<State>,
}

impl Engine {
    /// Loads each device's current alert level and starts the logger
    /// thread, which loads each device's latest reading for the API, then
    /// stores the published alerts, both through `log`, a store connection
    /// of its own. Returns the scorer the verifier hands its parts to, and
    /// the logger thread, which ends once the scorer is dropped and every
    /// alert is stored. `last_seqs` is each device's last stored sequence number
    /// (the store's, as ingest starts), `latest_rows` the rows of those
    /// readings ([`Store::last_readings`]).
    pub fn start(
        self,
        last_seqs: HashMap<B256, u64>,
        latest_rows: Vec<i64>,
        log: Store,
    ) -> anyhow::Result<(Arc<Scorer>, std::thread::JoinHandle<()>)> {
        init(&self.store)?;
        let _ = self.live.alert_topic.set((self.client.clone(), self.topics.alerts()));
        let (stored, stored_rx) = std::sync::mpsc::channel();
        let state = load(self.store, last_seqs, stored)?;
        let scorer = Arc::new(Scorer {
            hub: self.topics.hub().to_string(),
            topic: self.topics.alerts(),
            client: self.client,
            metrics: self.metrics,
            live: self.live.clone(),
            runtime: self.runtime,
            policy: self.policy,
            state: std::sync::Mutex::new(state),
        });
        // Kept only until the ward view is loaded: the readings verified
        // meanwhile are scored even if the hub stops at once, and then the
        // scorer's end (its sender's) ends the logger.
        let (live, warm) = (self.live, scorer.clone());
        let logger = std::thread::Builder::new().name("hs-alert-log".into()).spawn(move || {
            warm_live(&log, &live, latest_rows);
            warm.warmed();
            drop(warm);
            store_published(&log, &live, stored_rx)
        })?;
        Ok((scorer, logger))
    }
}

/// Every device's latest stored reading (in `rows`), for the API's ward
/// view. Loaded off the hub's start; readings verified meanwhile are scored
/// after it ([`Scorer::warmed`]), so a newer reading is always set after
/// the stored one.
fn warm_live(store: &Store, live: &Live, rows: Vec<i64>) {
    match crate::api::queries::latest_at(store, rows) {
        Ok(latest) => live.set_all(latest),
        Err(e) => tracing::warn!(error = %e, "the ward view's latest readings could not be loaded; each device shows again with its next reading"),
    }
}

/// Each device's current level; a step-down that was pending when the hub
/// stopped starts its hold again (the safe side).
fn load(store: Store, last_seqs: HashMap<B256, u64>, stored: std::sync::mpsc::Sender<Vec<Alert>>) -> Result<State, StoreError> {
    let levels = {
        let conn = store.conn();
        let mut levels = HashMap::new();
        let mut stmt = conn.prepare(
            "SELECT device_id, level FROM alerts WHERE id IN (SELECT MAX(id) FROM alerts GROUP BY device_id)",
        )?;
        let rows = stmt.query_map([], |r| Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, String>(1)?)))?;
        for row in rows {
            let (id, level) = row?;
            if let (true, Some(level)) = (id.len() == 32, Risk::from_name(&level)) {
                levels.insert(B256::from_slice(&id), Track::at(level));
            }
        }
        levels
    };
    let ids = Ids::load(&store)?;
    Ok(State { order: ArrivalOrder::default(), waiting: Some(Vec::new()), levels, last_seqs, ids, store, stored })
}

impl Scorer {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // Nothing under the lock unwraps outside input; a poisoned lock
        // still holds consistent state.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The ward view is loaded ([`warm_live`]): scores the readings that
    /// came meanwhile, and from now on each part as it is due.
    fn warmed(&self) {
        let mut state = self.lock();
        if let Some(waiting) = state.waiting.take() {
            self.score(&mut state, waiting);
        }
    }

    /// Part `part` of group `group` is verified (`last`: the group's last
    /// part), with these accepted readings: scores it now if it is due,
    /// with every later part that is waiting, and publishes their alerts.
    pub fn verified(&self, group: u64, part: usize, last: bool, readings: Vec<NewReading>) {
        let mut state = self.lock();
        let mut due: Vec<Vec<NewReading>> = Vec::new();
        state.order.arrived(group, part, last, readings, &mut due);
        let due: Vec<NewReading> = due.into_iter().flatten().collect();
        match &mut state.waiting {
            Some(waiting) => waiting.extend(due),
            None if !due.is_empty() => self.score(&mut state, due),
            None => {}
        }
    }

    fn score(&self, state: &mut State, readings: Vec<NewReading>) {
        let now = crate::ingest::now_ms();
        let mut raised = Vec::new();
        for n in readings {
            // What the writer will store: a sequence number after the
            // device's last (a redelivery or a replay is not a reading).
            // One lookup: at 20,000 devices each is a cache miss.
            match state.last_seqs.entry(n.reading.deviceId) {
                Entry::Occupied(last) if !crate::ingest::is_new(n.reading.seq, Some(*last.get())) => continue,
                Entry::Occupied(mut last) => {
                    last.insert(n.reading.seq);
                }
                Entry::Vacant(none) => {
                    none.insert(n.reading.seq);
                }
            }
            let score = news2::score(&n.reading);
            let track = state.levels.entry(n.reading.deviceId).or_insert(Track::at(Risk::None));
            let previous = track.level;
            if let Some(level) = self.policy.step(track, alert_level(&score), n.reading.timestamp) {
                raised.push(Alert {
                    id: 0,
                    hub: self.hub.clone(),
                    serial: n.serial.clone(),
                    device_id: n.reading.deviceId,
                    seq: n.reading.seq,
                    timestamp: n.reading.timestamp,
                    score: score.total,
                    level,
                    previous,
                    parameters: score,
                    at: now,
                    ack: None,
                });
            }
            let latest = Latest { serial: n.serial, reading: n.reading, score, received_ms: n.received_ms };
            self.live.offer(&latest);
            self.live.send(LiveEvent::Reading(latest));
        }
        if raised.is_empty() {
            return;
        }
        match state.ids.take(&state.store, raised.len()) {
            Ok(first) => raised.iter_mut().zip(first..).for_each(|(a, id)| a.id = id),
            // Published without ids rather than late; not stored.
            Err(e) => tracing::error!(error = %e, alerts = raised.len(), "no alert ids reserved"),
        }
        // Published first: the nurse station should not wait for the disk.
        for a in &raised {
            self.metrics.alert(a.level.name());
            let body = serde_json::to_vec(&AlertMessage { kind: "alert", alert: a }).unwrap_or_default();
            let sent = match self.client.try_publish(self.topic.clone(), QoS::AtLeastOnce, false, body) {
                // The client's queue is full (the broker is away): wait, as
                // every later alert would.
                Err(rumqttc::ClientError::TryRequest(rumqttc::Request::Publish(p))) => {
                    self.runtime.block_on(self.client.publish(self.topic.clone(), QoS::AtLeastOnce, false, p.payload))
                }
                other => other,
            };
            if let Err(e) = sent {
                tracing::warn!(error = %e, "alert not published");
            }
        }
        let _ = state.stored.send(raised);
    }
}

/// The logger thread: stores the alerts the scorer has published, all
/// that are waiting in one transaction, then logs them and shows them on the
/// live stream. Alerts published without an id (no block could be
/// reserved) are shown but not stored.
fn store_published(store: &Store, live: &Live, rx: std::sync::mpsc::Receiver<Vec<Alert>>) {
    while let Ok(mut alerts) = rx.recv() {
        while let Ok(more) = rx.try_recv() {
            alerts.extend(more);
        }
        let with_id: Vec<&Alert> = alerts.iter().filter(|a| a.id > 0).collect();
        if !with_id.is_empty() {
            if let Err(e) = store_alerts(store, &with_id) {
                tracing::error!(error = %e, alerts = with_id.len(), "alerts not stored (published)");
            }
        }
        for a in alerts {
            tracing::info!(serial = %a.serial, seq = a.seq, score = a.score, level = a.level.name(), "NEWS2 alert");
            live.send(LiveEvent::Alert(a));
        }
    }
}

/// One transaction for all of `alerts`.
fn store_alerts(store: &Store, alerts: &[&Alert]) -> Result<(), StoreError> {
    let conn = store.conn();
    let tx = conn.unchecked_transaction()?;
    {
        let mut ins = tx.prepare_cached(
            "INSERT INTO alerts (id, device_id, serial, seq, ts, score, level, previous, parameters, at_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
        )?;
        for a in alerts {
            ins.execute(params![
                a.id,
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
        }
    }
    tx.commit()?;
    Ok(())
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

    /// Feeds (level, ts) pairs; returns the changes the policy reports.
    fn run(policy: Policy, from: Risk, readings: &[(Risk, u64)]) -> Vec<(u64, Risk)> {
        let mut t = Track::at(from);
        readings.iter().filter_map(|&(l, ts)| policy.step(&mut t, l, ts).map(|to| (ts, to))).collect()
    }

    const HOLD: Policy = Policy { hold_ms: 10_000, hold_readings: 0 };
    const NO_CHANGE: [(u64, Risk); 0] = [];
    use Risk::{High, LowMedium, Medium, None as Off};

    #[test]
    fn rises_at_once_and_steps_down_only_after_the_hold_time() {
        // A rise is immediate, at every level.
        assert_eq!(run(HOLD, Off, &[(LowMedium, 0), (Medium, 1), (High, 2)]), [(0, LowMedium), (1, Medium), (2, High)]);
        // Lower for 9,999 ms: no change; at exactly 10,000 ms: the step down.
        assert_eq!(run(HOLD, High, &[(Medium, 1_000), (Medium, 10_999)]), NO_CHANGE);
        assert_eq!(run(HOLD, High, &[(Medium, 1_000), (Medium, 11_000)]), [(11_000, Medium)]);
        // The hold is of consecutive lower readings: one at the current level restarts it.
        assert_eq!(run(HOLD, High, &[(Medium, 0), (High, 9_000), (Medium, 10_000), (Medium, 19_999)]), NO_CHANGE);
        assert_eq!(run(HOLD, High, &[(Medium, 0), (High, 9_000), (Medium, 10_000), (Medium, 20_000)]), [(20_000, Medium)]);
        // It steps down to the highest level seen during the hold, then holds again from there.
        assert_eq!(
            run(HOLD, High, &[(Off, 0), (Medium, 5_000), (Off, 10_000), (Off, 20_000), (Off, 29_999), (Off, 30_000)]),
            [(10_000, Medium), (30_000, Off)]
        );
        // hold 0: every fall is immediate (the policy before issue 19).
        let now = Policy { hold_ms: 0, hold_readings: 0 };
        assert_eq!(run(now, High, &[(Medium, 5), (Off, 6)]), [(5, Medium), (6, Off)]);
    }

    #[test]
    fn a_flapping_series_is_one_alert() {
        // HIGH, MEDIUM, HIGH, ... at 1 Hz for a minute, then normal: one
        // raise, and no step down until a hold after the last HIGH reading
        // (58 s): to MEDIUM (seen at 59 s), then after another hold to none.
        let mut readings: Vec<(Risk, u64)> = (0..60).map(|i| (if i % 2 == 0 { High } else { Medium }, i * 1_000)).collect();
        readings.extend((60..90).map(|i| (Off, i * 1_000)));
        assert_eq!(run(HOLD, Off, &readings), [(0, High), (69_000, Medium), (80_000, Off)]);
        // Ending on a HIGH reading, the step is straight to none.
        readings.truncate(59);
        readings.extend((59..90).map(|i| (Off, i * 1_000)));
        assert_eq!(run(HOLD, Off, &readings), [(0, High), (69_000, Off)]);
    }

    #[test]
    fn hold_readings_steps_down_on_whichever_comes_first() {
        let p = Policy { hold_ms: 10_000, hold_readings: 3 };
        assert_eq!(run(p, High, &[(Off, 0), (Off, 1)]), NO_CHANGE);
        assert_eq!(run(p, High, &[(Off, 0), (Off, 1), (Off, 2)]), [(2, Off)]);
        assert_eq!(run(p, High, &[(Off, 0), (Off, 10_000)]), [(10_000, Off)], "the time rule still applies");
        let count_only = Policy { hold_ms: u64::MAX, hold_readings: 2 };
        assert_eq!(run(count_only, Medium, &[(Off, 0), (Medium, 1), (Off, 2), (Off, 3)]), [(3, Off)]);
        // Late (buffered) readings older than the hold's start do not count as time held.
        assert_eq!(run(HOLD, High, &[(Off, 50_000), (Off, 1_000)]), NO_CHANGE);
    }

    fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let binding = crate::store::Binding { chain_id: 1, contract: Address::repeat_byte(1), hub: Address::repeat_byte(2) };
        let store = Store::open(&dir.path().join("s.sqlite"), binding).unwrap();
        init(&store).unwrap();
        (dir, store)
    }

    #[test]
    fn alert_ids_are_reserved_before_use_and_never_handed_out_twice() {
        let (_dir, store) = store();
        let mut ids = Ids::load(&store).unwrap();
        assert_eq!(ids.take(&store, 3).unwrap(), 1);
        assert_eq!(ids.take(&store, 2).unwrap(), 4);
        // The block is in the store before any of its ids is published.
        assert_eq!(store.meta(RESERVED_KEY).unwrap().as_deref(), Some("1003"));
        // A crash now (ids 1-5 published, none stored): the next run starts
        // after the reserved block, not at MAX(id) + 1.
        let mut again = Ids::load(&store).unwrap();
        assert_eq!(again.take(&store, 1).unwrap(), 1_004);
        // A run that takes more than a block at once reserves past it.
        assert_eq!(again.take(&store, 2_500).unwrap(), 1_005);
        assert_eq!(Ids::load(&store).unwrap().next, 1_005 + 2_500 + ID_BLOCK);
        // Stored ids above the reservation (a store from before reservations) count too.
        store
            .conn()
            .execute(
                "INSERT INTO alerts (id, device_id, serial, seq, ts, score, level, previous, parameters, at_ms) VALUES (9000, ?1, 'HS-1', 1, 1, 7, 'high', 'none', '000000', 0)",
                [B256::repeat_byte(5).as_slice()],
            )
            .unwrap();
        store.set_meta(RESERVED_KEY, "10").unwrap();
        assert_eq!(Ids::load(&store).unwrap().take(&store, 1).unwrap(), 9_001);
    }

    fn reading(serial: &str, seq: u64) -> NewReading {
        NewReading { serial: serial.into(), reading: Reading { seq, ..Default::default() }, signature: [0; 65], received_ms: 0 }
    }

    fn high(serial: &str, seq: u64) -> NewReading {
        let mut n = reading(serial, seq);
        n.reading = Reading { seq, heartRate: 118, respRate: 22, spo2: 93, systolic: 98, temperature: 3_860, consciousness: 2, ..Default::default() };
        n
    }

    #[test]
    fn the_ward_view_keeps_each_devices_highest_sequence_number() {
        let live = Live::default();
        let latest = |serial: &str, seq: u64| {
            let n = reading(serial, seq);
            Latest { serial: n.serial, score: news2::score(&n.reading), reading: n.reading, received_ms: seq }
        };
        let mut other = latest("HS-2", 7);
        other.reading.deviceId = B256::repeat_byte(2);
        live.set_all(vec![latest("HS-1", 5), other]);
        live.offer(&latest("HS-1", 4));
        assert_eq!(live.latest_of(&B256::ZERO).map(|l| l.received_ms), Some(5), "a lower number does not replace");
        live.offer(&latest("HS-1", 6));
        assert_eq!(live.latest_of(&B256::ZERO).map(|l| l.received_ms), Some(6));
        let mut third = latest("HS-3", 1);
        third.reading.deviceId = B256::repeat_byte(3);
        live.offer(&third);
        assert_eq!(live.latest().len(), 3);
        assert_eq!(live.latest_of(&B256::repeat_byte(2)).map(|l| l.reading.seq), Some(7));
    }

    #[test]
    fn the_verifying_thread_scores_in_arrival_order_and_the_logger_ends_with_the_scorer() {
        let (dir, store) = store();
        let log = Store::open_existing(&dir.path().join("s.sqlite"), 1, Address::repeat_byte(1)).unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
        // Never polled: publishes wait in the client's queue.
        let (client, _eventloop) = AsyncClient::new(rumqttc::MqttOptions::new("t", "localhost", 1883), 100);
        let live = Live::default();
        let mut events = live.subscribe();
        let engine = Engine {
            store,
            client,
            topics: Topics::new("h").unwrap(),
            metrics: Arc::default(),
            live: live.clone(),
            runtime: runtime.handle().clone(),
            policy: Policy { hold_ms: 0, hold_readings: 0 },
        };
        let (scorer, logger) = engine.start(HashMap::new(), Vec::new(), log).unwrap();
        // Group 1 (a high reading) is verified before group 0.
        scorer.verified(1, 0, true, vec![high("HS-1", 2)]);
        scorer.verified(0, 0, true, vec![reading("HS-1", 1)]);
        // A replayed number is not scored; the normal reading after it steps the alert down.
        scorer.verified(2, 0, true, vec![high("HS-1", 2), reading("HS-1", 3)]);
        drop(scorer);
        logger.join().unwrap();
        let mut seen = Vec::new();
        while let Ok(event) = events.try_recv() {
            seen.push(match &*event {
                LiveEvent::Reading(l) => format!("reading {}", l.reading.seq),
                LiveEvent::Alert(a) => format!("alert {} {} id {}", a.seq, a.level.name(), a.id),
                _ => "other".into(),
            });
        }
        // Readings are shown as scored; alerts once stored, which the logger did before it ended.
        let readings: Vec<&String> = seen.iter().filter(|e| e.starts_with("reading")).collect();
        assert_eq!(readings, ["reading 1", "reading 2", "reading 3"]);
        let alerts: Vec<&String> = seen.iter().filter(|e| e.starts_with("alert")).collect();
        assert_eq!(alerts, ["alert 2 high id 1", "alert 3 none id 2"]);
        let reader = Store::open_existing(&dir.path().join("s.sqlite"), 1, Address::repeat_byte(1)).unwrap();
        assert!(alert_stored(&reader, 1) && alert_stored(&reader, 2));
        assert_eq!(live.latest_of(&B256::ZERO).map(|l| l.reading.seq), Some(3));
    }

    #[test]
    fn the_logger_stores_published_alerts_before_the_live_stream_shows_them() {
        let (dir, store) = store();
        let live = Live::default();
        let mut events = live.subscribe();
        let alert = |id: i64, seq: u64| Alert {
            id,
            hub: "h".into(),
            serial: "HS-1".into(),
            device_id: B256::repeat_byte(5),
            seq,
            timestamp: seq,
            score: 7,
            level: Risk::High,
            previous: Risk::None,
            parameters: Score::default(),
            at: 0,
            ack: None,
        };
        let (tx, rx) = std::sync::mpsc::channel();
        // Two groups' alerts, and one published without an id (no block reserved).
        tx.send(vec![alert(1, 1)]).unwrap();
        tx.send(vec![alert(2, 2), alert(0, 3)]).unwrap();
        drop(tx);
        let reader = Store::open_existing(&dir.path().join("s.sqlite"), 1, Address::repeat_byte(1)).unwrap();
        let logger = std::thread::spawn(move || store_published(&store, &live, rx));
        let mut shown = Vec::new();
        while shown.len() < 3 {
            if let LiveEvent::Alert(a) = &*events.blocking_recv().unwrap() {
                // Shown only once stored: a doctor can acknowledge what the dashboard shows.
                if a.id > 0 {
                    assert!(alert_stored(&reader, a.id), "alert {} shown before it was stored", a.id);
                }
                shown.push((a.id, a.seq));
            }
        }
        logger.join().unwrap();
        assert_eq!(shown, [(1, 1), (2, 2), (0, 3)]);
        let stored: Vec<i64> =
            reader.conn().prepare("SELECT id FROM alerts ORDER BY id").unwrap().query_map([], |r| r.get(0)).unwrap().map(|r| r.unwrap()).collect();
        assert_eq!(stored, [1, 2], "an alert without an id is not stored");
    }

    fn alert_stored(store: &Store, id: i64) -> bool {
        alert(store, id, "h").unwrap().is_some()
    }

    #[test]
    fn acknowledges_only_the_current_alert_once() {
        let (_dir, store) = store();
        let device = B256::repeat_byte(5);
        for (i, (level, previous)) in [("high", "none"), ("medium", "high"), ("none", "medium")].iter().enumerate() {
            store
                .conn()
                .execute(
                    "INSERT INTO alerts (device_id, serial, seq, ts, score, level, previous, parameters, at_ms) VALUES (?1, 'HS-1', ?2, ?2, 7, ?3, ?4, '000000', 0)",
                    params![device.as_slice(), i as i64, level, previous],
                )
                .unwrap();
        }
        let doctor = Address::repeat_byte(9);
        assert_eq!(acknowledge(&store, 1, doctor, 5, "h").unwrap(), Err(AckRefusal::NotCurrent(3)));
        assert_eq!(acknowledge(&store, 3, doctor, 5, "h").unwrap(), Err(AckRefusal::Resolved));
        assert_eq!(acknowledge(&store, 99, doctor, 5, "h").unwrap(), Err(AckRefusal::Unknown));
        store.conn().execute("DELETE FROM alerts WHERE id = 3", []).unwrap();
        let a = acknowledge(&store, 2, doctor, 5, "h").unwrap().unwrap();
        assert_eq!(a.ack, Some(Ack { by: doctor, at: 5 }));
        // A second acknowledgement keeps the first.
        let again = acknowledge(&store, 2, Address::repeat_byte(8), 6, "h").unwrap().unwrap();
        assert_eq!(again.ack, Some(Ack { by: doctor, at: 5 }));
        assert_eq!(current_alerts(&store, "h").unwrap()[&device].ack.as_ref().map(|k| k.by), Some(doctor));
        assert_eq!(device_alerts(&store, Some(device), 0, u64::MAX, None, 10, "h").unwrap()[1].ack, None);
    }
}
