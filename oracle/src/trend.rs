//! The trend rollup: per device and minute, the count, sequence range,
//! per-vital minimum, sum and maximum and NEWS2 range of its readings, kept
//! in the hub store so a 24-hour trend reads about 1,440 rows instead of
//! 86,400 readings (issue 19).
//!
//! A reading enters the rollup in the transaction that stamps it into its
//! batch ([`crate::store::Store::cut_batch`]), so rollup and readings can
//! never disagree, and each reading, anchored exactly once, is counted
//! exactly once, however late or out of order it arrived (aggregates merge
//! in any order). The ingest commit itself stays as it was: the readings not
//! yet batched (seconds' worth) are read raw by [`trend`], in the same read
//! transaction as the rollup. A store from before the rollup is filled once
//! when it is opened.

use std::collections::BTreeMap;

use alloy::primitives::B256;
use healthsense_abi::Reading;
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};

use crate::news2;
use crate::store::{reading_row, Store, StoreError, READING_COLUMNS};

/// The rollup's granularity: one row per device per minute since the epoch.
pub const MINUTE_MS: u64 = 60_000;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS trend_minutes (
    device_id BLOB NOT NULL, minute INTEGER NOT NULL, agg BLOB NOT NULL,
    PRIMARY KEY (device_id, minute)
) WITHOUT ROWID;
";

/// `meta` key set once the rollup holds every batched reading.
const FILLED: &str = "trend_rollup";

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
/// the next open).
pub(crate) fn init(conn: &Connection) -> Result<(), StoreError> {
    fn filled(c: &Connection) -> rusqlite::Result<bool> {
        c.query_row("SELECT EXISTS (SELECT 1 FROM meta WHERE key = ?1)", [FILLED], |r| r.get(0))
    }
    conn.execute_batch(SCHEMA)?;
    if filled(conn)? {
        return Ok(());
    }
    let tx = rusqlite::Transaction::new_unchecked(conn, TransactionBehavior::Immediate)?;
    if !filled(&tx)? {
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
        tx.execute("INSERT INTO meta (key, value) VALUES (?1, '1')", [FILLED])?;
    }
    tx.commit()?;
    Ok(())
}

/// Adds readings to the rollup, in the caller's transaction (the one that
/// stamps them into a batch).
pub(crate) fn add<'a>(conn: &Connection, readings: impl Iterator<Item = &'a Reading>) -> Result<(), StoreError> {
    let mut minutes: BTreeMap<(B256, u64), Bucket> = BTreeMap::new();
    for r in readings {
        minutes.entry((r.deviceId, r.timestamp / MINUTE_MS)).or_default().add(r);
    }
    let mut get = conn.prepare_cached("SELECT agg FROM trend_minutes WHERE device_id = ?1 AND minute = ?2")?;
    let mut put = conn.prepare_cached("INSERT OR REPLACE INTO trend_minutes (device_id, minute, agg) VALUES (?1, ?2, ?3)")?;
    for ((device, minute), mut b) in minutes {
        let key = params![device.as_slice(), minute as i64];
        if let Some(old) = get.query_row(key, |r| r.get::<_, Vec<u8>>(0)).optional()? {
            b.merge(&Bucket::from_blob(&old)?);
        }
        put.execute(params![device.as_slice(), minute as i64, b.to_blob()])?;
    }
    Ok(())
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
