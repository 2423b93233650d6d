//! The trend rollup: per device and minute, the count, sequence range,
//! per-vital minimum, sum and maximum and NEWS2 range of its readings, kept
//! in the hub store so a 24-hour trend reads about 1,440 rows instead of
//! 86,400 readings (issue 19).
//!
//! The rollup holds exactly the readings of the batches up to a watermark,
//! `trend_rolled_to` in `meta`: every batch with a lower or equal sequence
//! number is in it, and no other. [`trend`] reads the rollup and, raw, the
//! readings beyond the watermark (batched since, or not yet batched) in the
//! same read transaction, so a trend is always exact, whatever the rollup
//! has caught up with. Each batch enters the rollup once, as the watermark
//! passes it, however late or out of order its readings arrived (aggregates
//! merge in any order).
//!
//! The batch cutter ([`crate::store::Store::cut_batch`]) aggregates the
//! readings it stamps in memory ([`Pending`]) and writes the rollup and the
//! watermark together in one transaction every [`FLUSH_READINGS`] readings
//! or [`FLUSH_AGE`], in key order. Written per cut chunk instead, a ward
//! whose devices report every second rewrote each device's minute row once
//! per chunk (60 times a minute), and at 20,000 devices every chunk
//! inserted 100 rows at 100 random places (docs/BENCHMARKS.md, "Issue 22,
//! fifteenth session"). What a crash loses of the memory is read back from
//! the readings ([`flush`] recomputes when its memory does not start at the
//! watermark). A store from before the rollup is filled once when it is
//! opened.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use alloy::primitives::B256;
use healthsense_abi::Reading;
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};

use crate::news2;
use crate::store::{read_meta, reading_row, write_meta, Store, StoreError, READING_COLUMNS};

/// The rollup's granularity: one row per device per minute since the epoch.
pub const MINUTE_MS: u64 = 60_000;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS trend_minutes (
    device_id BLOB NOT NULL, minute INTEGER NOT NULL, agg BLOB NOT NULL,
    PRIMARY KEY (device_id, minute)
) WITHOUT ROWID;
";

/// `meta` key set once the rollup was filled from the readings stored
/// before it existed.
const FILLED: &str = "trend_rollup";

/// `meta` key of the watermark: the rollup holds the readings of every
/// batch up to this sequence number, and of no later one.
const ROLLED_TO: &str = "trend_rolled_to";

/// The cutter writes its aggregate once it holds this many readings. Bounds
/// the raw part of a trend (readings beyond the watermark, read through the
/// batch index) and how long one rollup write holds the store's write lock.
pub const FLUSH_READINGS: usize = 20_000;

/// ... or once its oldest batch is this old, so a quiet ward's rollup keeps up.
pub const FLUSH_AGE: Duration = Duration::from_secs(30);

/// Min, sum and max of one vital (0 = not measured, skipped).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Agg {
    /// Readings that measured it.
    pub n: u64,
    /// Smallest value.
    pub min: u16,
    /// Largest value.
    pub max: u16,
    /// Sum of the values.
    pub sum: u64,
}

impl Agg {
    fn add(&mut self, v: u16) {
        if v != 0 {
            self.merge(&Agg { n: 1, min: v, max: v, sum: u64::from(v) });
        }
    }

    fn merge(&mut self, o: &Agg) {
        if o.n == 0 {
            return;
        }
        (self.min, self.max) = if self.n == 0 { (o.min, o.max) } else { (self.min.min(o.min), self.max.max(o.max)) };
        self.n += o.n;
        self.sum += o.sum;
    }

    /// `(min, mean, max)`, the mean rounded half up; `None` when unmeasured.
    pub fn min_mean_max(&self) -> Option<(u64, u64, u64)> {
        (self.n > 0).then(|| (u64::from(self.min), (self.sum * 2 + self.n) / (self.n * 2), u64::from(self.max)))
    }
}

/// The aggregate of some readings of one device: a trend bucket, or one
/// minute of the rollup.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Bucket {
    /// Readings.
    pub n: u64,
    /// Lowest and highest sequence number.
    pub seq: (u64, u64),
    /// Heart rate, respiration, SpO2, systolic, diastolic, temperature (0.1 °C, as charted).
    pub vitals: [Agg; 6],
    /// Lowest and highest NEWS2 total.
    pub news2: (u8, u8),
}

/// Bytes of a [`Bucket`] in the rollup's `agg` column.
const BLOB_LEN: usize = 8 * 3 + 2 + 6 * 20;

impl Bucket {
    /// Adds one reading (NEWS2 scored by the shared chart, temperature
    /// rounded as charted).
    pub fn add(&mut self, r: &Reading) {
        let score = news2::score(r).total;
        let temp = if r.temperature == 0 { 0 } else { news2::temperature_tenths(r.temperature) };
        let mut one = Bucket { n: 1, seq: (r.seq, r.seq), news2: (score, score), ..Default::default() };
        for (agg, v) in one.vitals.iter_mut().zip([r.heartRate, r.respRate, r.spo2, r.systolic, r.diastolic, temp]) {
            agg.add(v);
        }
        self.merge(&one);
    }

    /// Adds another aggregate of the same device.
    pub fn merge(&mut self, o: &Bucket) {
        if o.n == 0 {
            return;
        }
        (self.seq, self.news2) = if self.n == 0 {
            (o.seq, o.news2)
        } else {
            ((self.seq.0.min(o.seq.0), self.seq.1.max(o.seq.1)), (self.news2.0.min(o.news2.0), self.news2.1.max(o.news2.1)))
        };
        self.n += o.n;
        for (a, b) in self.vitals.iter_mut().zip(&o.vitals) {
            a.merge(b);
        }
    }

    fn to_blob(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(BLOB_LEN);
        for v in [self.n, self.seq.0, self.seq.1] {
            b.extend_from_slice(&v.to_le_bytes());
        }
        b.extend_from_slice(&[self.news2.0, self.news2.1]);
        for a in &self.vitals {
            b.extend_from_slice(&a.n.to_le_bytes());
            b.extend_from_slice(&a.min.to_le_bytes());
            b.extend_from_slice(&a.max.to_le_bytes());
            b.extend_from_slice(&a.sum.to_le_bytes());
        }
        b
    }

    fn from_blob(b: &[u8]) -> Result<Self, StoreError> {
        if b.len() != BLOB_LEN {
            return Err(StoreError::Corrupt(format!("a trend rollup row of {} bytes, not {BLOB_LEN}", b.len())));
        }
        let u64_at = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().unwrap_or_default());
        let u16_at = |i: usize| u16::from_le_bytes(b[i..i + 2].try_into().unwrap_or_default());
        let mut out = Bucket { n: u64_at(0), seq: (u64_at(8), u64_at(16)), news2: (b[24], b[25]), ..Default::default() };
        for (k, a) in out.vitals.iter_mut().enumerate() {
            let at = 26 + k * 20;
            *a = Agg { n: u64_at(at), min: u16_at(at + 8), max: u16_at(at + 10), sum: u64_at(at + 12) };
        }
        Ok(out)
    }
}

/// Creates the rollup table and, for a store from before it, fills it from
/// the batched readings (once; in one transaction, so a crash leaves it to
/// the next open). A store whose rollup was written per cut chunk (before
/// the watermark) holds every batched reading: its watermark starts at the
/// last batch.
pub(crate) fn init(conn: &Connection) -> Result<(), StoreError> {
    let has = |c: &Connection, key: &str| read_meta(c, key).map(|v| v.is_some());
    conn.execute_batch(SCHEMA)?;
    if has(conn, FILLED)? && has(conn, ROLLED_TO)? {
        return Ok(());
    }
    let tx = rusqlite::Transaction::new_unchecked(conn, TransactionBehavior::Immediate)?;
    let last_batch = |tx: &Connection| tx.query_row("SELECT COALESCE(MAX(seq), 0) FROM batches", [], |r| r.get::<_, i64>(0));
    if !has(&tx, FILLED)? {
        tx.execute("DELETE FROM trend_minutes", [])?;
        let mut stmt = tx.prepare(&format!("SELECT {READING_COLUMNS} FROM readings WHERE batch_seq IS NOT NULL"))?;
        let mut rows = stmt.query([])?;
        let mut chunk = Vec::with_capacity(100_000);
        loop {
            let row = rows.next()?;
            if let Some(r) = row {
                chunk.push(reading_row(r, 0)?);
            }
            if chunk.len() == chunk.capacity() || (row.is_none() && !chunk.is_empty()) {
                add(&tx, chunk.iter())?;
                chunk.clear();
            }
            if row.is_none() {
                break;
            }
        }
        drop(rows);
        drop(stmt);
        write_meta(&tx, FILLED, "1")?;
        tx.execute("DELETE FROM meta WHERE key = ?1", [ROLLED_TO])?;
    }
    if !has(&tx, ROLLED_TO)? {
        // Every batched reading is in the rollup now, those of a batch whose
        // cut a crash interrupted too: the rest of that batch goes in as it
        // is stamped (`rolled_to` >= its seq, see `Store::stamp`).
        write_meta(&tx, ROLLED_TO, &last_batch(&tx)?.to_string())?;
    }
    tx.commit()?;
    Ok(())
}

/// The watermark: the rollup holds every batch up to this one.
pub(crate) fn rolled_to(conn: &Connection) -> Result<u64, StoreError> {
    read_meta(conn, ROLLED_TO)?.map_or(Ok(0), |v| v.parse().map_err(|_| StoreError::Corrupt(format!("trend watermark {v:?}"))))
}

/// Per device and minute, the aggregate of some readings.
type Minutes = BTreeMap<(B256, u64), Bucket>;

/// Adds `readings` to `minutes`; how many there were.
fn aggregate<'a>(minutes: &mut Minutes, readings: impl Iterator<Item = &'a Reading>) -> usize {
    let mut n = 0;
    for r in readings {
        minutes.entry((r.deviceId, r.timestamp / MINUTE_MS)).or_default().add(r);
        n += 1;
    }
    n
}

/// Merges `minutes` into the rollup, in key order.
fn write(conn: &Connection, minutes: &Minutes) -> Result<(), StoreError> {
    let mut get = conn.prepare_cached("SELECT agg FROM trend_minutes WHERE device_id = ?1 AND minute = ?2")?;
    let mut put = conn.prepare_cached("INSERT OR REPLACE INTO trend_minutes (device_id, minute, agg) VALUES (?1, ?2, ?3)")?;
    for ((device, minute), b) in minutes {
        let key = params![device.as_slice(), *minute as i64];
        let blob = match get.query_row(key, |r| r.get::<_, Vec<u8>>(0)).optional()? {
            Some(old) => {
                let mut merged = Bucket::from_blob(&old)?;
                merged.merge(b);
                merged.to_blob()
            }
            None => b.to_blob(),
        };
        put.execute(params![device.as_slice(), *minute as i64, blob])?;
    }
    Ok(())
}

/// Adds readings to the rollup directly, in the caller's transaction: the
/// fill at open, and readings stamped into a batch the watermark already
/// passed.
pub(crate) fn add<'a>(conn: &Connection, readings: impl Iterator<Item = &'a Reading>) -> Result<(), StoreError> {
    let mut minutes = Minutes::new();
    aggregate(&mut minutes, readings);
    write(conn, &minutes)
}

/// What the batch cutter aggregated of the batches after watermark `from`,
/// up to batch `to`, not yet in the rollup.
#[derive(Debug)]
pub(crate) struct Pending {
    from: u64,
    to: u64,
    minutes: Minutes,
    readings: usize,
    since: Option<Instant>,
}

impl Pending {
    /// Nothing aggregated yet, the rollup at `watermark`.
    pub(crate) fn at(watermark: u64) -> Self {
        Self { from: watermark, to: watermark, minutes: Minutes::new(), readings: 0, since: None }
    }

    /// The last batch it covers.
    pub(crate) fn to(&self) -> u64 {
        self.to
    }

    /// Adds batch `seq`'s readings (all of them, stamped by this cutter).
    pub(crate) fn add_batch<'a>(&mut self, seq: u64, readings: impl Iterator<Item = &'a Reading>) {
        self.readings += aggregate(&mut self.minutes, readings);
        self.to = seq;
        self.since.get_or_insert_with(Instant::now);
    }

    /// Whether it is time to write it.
    pub(crate) fn due(&self) -> bool {
        self.readings >= FLUSH_READINGS || self.since.is_some_and(|t| t.elapsed() >= FLUSH_AGE)
    }
}

/// Brings the rollup up to batch `to`, in one transaction: from `pending`
/// when it starts at the watermark, else (a restart, an interrupted cut) from
/// the readings of the batches in between. Returns the new watermark.
pub(crate) fn flush(conn: &mut Connection, pending: Option<&Pending>, to: u64) -> Result<u64, StoreError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let from = rolled_to(&tx)?;
    if from >= to {
        return Ok(from);
    }
    match pending {
        Some(p) if p.from == from && p.to == to => write(&tx, &p.minutes)?,
        _ => {
            let mut minutes = Minutes::new();
            {
                let mut stmt = tx.prepare_cached(&format!(
                    "SELECT {READING_COLUMNS} FROM readings INDEXED BY readings_batch WHERE batch_seq > ?1 AND batch_seq <= ?2"
                ))?;
                let mut rows = stmt.query(params![from as i64, to as i64])?;
                while let Some(r) = rows.next()? {
                    aggregate(&mut minutes, std::iter::once(&reading_row(r, 0)?));
                }
            }
            write(&tx, &minutes)?;
        }
    }
    // An upsert: an UPDATE of a missing row would write the rollup and
    // leave the watermark behind it, counting those batches twice.
    write_meta(&tx, ROLLED_TO, &to.to_string())?;
    tx.commit()?;
    Ok(to)
}

/// How a trend is read: from the rollup where it can be, or every reading
/// raw (the reference the rollup is tested against).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// Whole minutes inside one bucket from the rollup, the rest raw.
    Rollup,
    /// Every reading.
    Raw,
}

/// The readings of `device` with timestamps in `from..=to` in buckets of
/// `width` ms aligned to multiples of `width` since the epoch, keyed by the
/// bucket's start. When `width` is a multiple of [`MINUTE_MS`] the whole
/// minutes come from the rollup and only the minutes cut by `from` and `to`
/// are read raw, plus the readings not yet batched; any other width reads
/// every reading.
pub fn trend(store: &Store, device: B256, from: u64, to: u64, width: u64, source: Source) -> Result<BTreeMap<u64, Bucket>, StoreError> {
    let width = width.max(1);
    let bucket_of = |t: u64| t - t % width;
    let mut out: BTreeMap<u64, Bucket> = BTreeMap::new();
    if from > to {
        return Ok(out);
    }
    let clamp = |v: u64| v.min(i64::MAX as u64) as i64;
    let rollup = source == Source::Rollup && width % MINUTE_MS == 0;
    // Minutes wholly inside the range (each inside one bucket, as the width
    // is whole minutes) come from the rollup; the batched readings of the
    // cut minutes at either end are read raw.
    let whole = |m: u64| rollup && m.saturating_mul(MINUTE_MS) >= from && m.saturating_mul(MINUTE_MS).saturating_add(MINUTE_MS - 1) <= to;
    let raw: Vec<(u64, u64)> = if !rollup {
        vec![(from, to)]
    } else {
        let (m0, m1) = (from / MINUTE_MS, to / MINUTE_MS);
        let mut edges = Vec::new();
        if !whole(m0) {
            edges.push((from, (m0 * MINUTE_MS + MINUTE_MS - 1).min(to)));
        }
        if m1 != m0 && !whole(m1) {
            edges.push((m1 * MINUTE_MS, to));
        }
        edges
    };
    let tx = store.conn().unchecked_transaction()?;
    {
        if rollup {
            let mut stmt = tx.prepare_cached("SELECT minute, agg FROM trend_minutes WHERE device_id = ?1 AND minute BETWEEN ?2 AND ?3")?;
            let mut rows = stmt.query(params![device.as_slice(), clamp(from / MINUTE_MS), clamp(to / MINUTE_MS)])?;
            while let Some(r) = rows.next()? {
                let m = r.get::<_, i64>(0)? as u64;
                if whole(m) {
                    out.entry(bucket_of(m * MINUTE_MS)).or_default().merge(&Bucket::from_blob(&r.get::<_, Vec<u8>>(1)?)?);
                }
            }
        }
        let mut add_raw = |part: &str, lo: u64, hi: u64| -> Result<(), StoreError> {
            let mut stmt = tx.prepare_cached(&format!(
                "SELECT {READING_COLUMNS} FROM readings WHERE {part} AND device_id = ?1 AND ts BETWEEN ?2 AND ?3"
            ))?;
            let mut rows = stmt.query(params![device.as_slice(), clamp(lo), clamp(hi)])?;
            while let Some(r) = rows.next()? {
                let r = reading_row(r, 0)?;
                out.entry(bucket_of(r.timestamp)).or_default().add(&r);
            }
            Ok(())
        };
        for (lo, hi) in raw {
            add_raw("batch_seq IS NOT NULL", lo, hi)?;
        }
        add_raw("batch_seq IS NULL", from, to)?;
        if rollup {
            // Whole minutes of batches beyond the watermark (the cut minutes
            // above took every batched reading), found through the batch
            // index: at most about FLUSH_READINGS readings, where the device
            // index would walk the device's whole history.
            let mut stmt = tx.prepare_cached(&format!(
                "SELECT {READING_COLUMNS} FROM readings INDEXED BY readings_batch
                 WHERE batch_seq > ?4 AND device_id = ?1 AND ts BETWEEN ?2 AND ?3"
            ))?;
            let mut rows = stmt.query(params![device.as_slice(), clamp(from), clamp(to), clamp(rolled_to(&tx)?)])?;
            while let Some(r) = rows.next()? {
                let r = reading_row(r, 0)?;
                if whole(r.timestamp / MINUTE_MS) {
                    out.entry(bucket_of(r.timestamp)).or_default().add(&r);
                }
            }
        }
    }
    tx.finish()?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rollup_row_round_trips() {
        let mut b = Bucket::default();
        for seq in 1..50u16 {
            b.add(&Reading { seq: u64::from(seq), heartRate: 60 + seq, spo2: 100 - seq % 7, temperature: 3_650 + seq, ..Default::default() });
        }
        assert_eq!(Bucket::from_blob(&b.to_blob()).unwrap(), b);
        assert!(matches!(Bucket::from_blob(&[0; 3]), Err(StoreError::Corrupt(_))));
    }
}
