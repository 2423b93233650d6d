//! The API's read queries on the hub store (select only), kept here rather
//! than in `store.rs` so the store's write path stays small.
//!
//! History queries use a partial index on `(device_id, ts, seq)` of batched
//! readings. Like the store's own `(device_id, seq)` index it is filled when
//! a batch is cut, off the ingest path; the few readings not yet batched
//! (seconds' worth) are found through the `readings_unbatched` index.

use std::collections::HashMap;

use alloy::primitives::B256;
use healthsense_abi::Reading;
use rusqlite::{params, OptionalExtension};

use crate::alerts::Latest;
use crate::news2;
use crate::store::{b256, reading_row, Store, StoreError, READING_COLUMNS};

const INDEXES: &str = "
CREATE INDEX IF NOT EXISTS api_readings_device_ts ON readings (device_id, ts, seq) WHERE batch_seq IS NOT NULL;
";

/// Creates the API's indexes (once; a large store takes a moment).
pub(crate) fn init(store: &Store) -> Result<(), StoreError> {
    store.conn().execute_batch(INDEXES)?;
    Ok(())
}

/// The history's columns: three of its own, then the store's reading columns.
fn columns() -> String {
    format!("serial, received_ms, batch_seq, {READING_COLUMNS}")
}

/// A reading as the history shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// Device serial.
    pub serial: String,
    /// Hub receive time, ms.
    pub received_ms: u64,
    /// The batch it is anchored in, once cut.
    pub batch_seq: Option<u64>,
    /// The reading.
    pub reading: Reading,
}

fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Row> {
    Ok(Row {
        serial: r.get(0)?,
        received_ms: r.get::<_, i64>(1)? as u64,
        batch_seq: r.get::<_, Option<i64>>(2)?.map(|s| s as u64),
        reading: reading_row(r, 3)?,
    })
}

/// A page of a device's readings with timestamps in `from_ms..=to_ms`,
/// ascending by (timestamp, seq), strictly after `after` (a previous page's
/// last (timestamp, seq)), at most `limit`.
pub fn vitals(
    store: &Store,
    device: B256,
    from_ms: u64,
    to_ms: u64,
    after: Option<(u64, u64)>,
    limit: usize,
) -> Result<Vec<Row>, StoreError> {
    let (ats, aseq) = after.map_or((-1i64, -1i64), |(t, s)| (t as i64, s as i64));
    let cond = "device_id = ?1 AND ts BETWEEN ?2 AND ?3 AND (ts > ?4 OR (ts = ?4 AND seq > ?5))";
    let clamp = |v: u64| v.min(i64::MAX as u64) as i64;
    let args = params![device.as_slice(), clamp(from_ms), clamp(to_ms), ats, aseq, limit as i64];
    // One read transaction: a batch cut between the two selects would
    // otherwise move a reading from one to the other.
    let tx = store.conn().unchecked_transaction()?;
    let mut out = Vec::new();
    for part in ["batch_seq IS NOT NULL", "batch_seq IS NULL"] {
        let mut stmt =
            tx.prepare_cached(&format!("SELECT {} FROM readings WHERE {part} AND {cond} ORDER BY ts, seq LIMIT ?6", columns()))?;
        let rows = stmt.query_map(args, row)?;
        for r in rows {
            out.push(r?);
        }
    }
    tx.finish()?;
    out.sort_by_key(|r| (r.reading.timestamp, r.reading.seq));
    out.truncate(limit);
    Ok(out)
}

/// Row ids a statement asks for at once ([`latest_at`]).
const ROWS_PER_QUERY: usize = 500;

/// The readings in `rows` (each device's latest, from
/// [`Store::last_readings`]), scored, as the ward view holds them.
pub fn latest_at(store: &Store, mut rows: Vec<i64>) -> Result<Vec<Latest>, StoreError> {
    // A list of ids a statement, in row order: at 20,000 devices the join
    // this replaced took 138-199 ms of a restarting hub's CPU
    // (docs/BENCHMARKS.md, "Issue 22, thirteenth session").
    rows.sort_unstable();
    let mut out = Vec::with_capacity(rows.len());
    for chunk in rows.chunks(ROWS_PER_QUERY) {
        let marks = vec!["?"; chunk.len()].join(",");
        let mut stmt = store.conn().prepare_cached(&format!("SELECT {} FROM readings WHERE id IN ({marks})", columns()))?;
        for r in stmt.query_map(rusqlite::params_from_iter(chunk), row)? {
            let r = r?;
            out.push(Latest { score: news2::score(&r.reading), serial: r.serial, reading: r.reading, received_ms: r.received_ms });
        }
    }
    Ok(out)
}

/// Battery and sleep state of a device.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DeviceState {
    /// Battery, %.
    pub battery: Option<f64>,
    /// Asleep.
    pub asleep: Option<bool>,
    /// When it was reported (hub time), ms.
    pub at_ms: u64,
}

/// Every device's last reported state, by serial.
pub fn device_states(store: &Store) -> Result<HashMap<String, DeviceState>, StoreError> {
    let mut stmt = store.conn().prepare_cached("SELECT serial, battery, asleep, at_ms FROM device_state")?;
    let rows = stmt.query_map([], |r| {
        Ok((
            r.get::<_, String>(0)?,
            DeviceState { battery: r.get(1)?, asleep: r.get(2)?, at_ms: r.get::<_, i64>(3)? as u64 },
        ))
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// A batch as the API shows it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BatchRow {
    /// The hub's batch number.
    pub seq: u64,
    /// `hash` or `readings`.
    pub mode: String,
    /// Merkle root (zero in readings mode).
    pub root: B256,
    /// Readings in it.
    pub leaf_count: u32,
    /// `pending`, `anchored` or `failed`.
    pub state: String,
    /// When it was cut, ms.
    pub created_ms: u64,
    /// Anchor transaction.
    pub tx: Option<B256>,
    /// Its block.
    pub block: Option<u64>,
    /// Gas it used.
    pub gas_used: Option<u64>,
    /// When it was anchored, ms.
    pub anchored_ms: Option<u64>,
    /// Why it failed, if it did.
    pub error: Option<String>,
}

fn batch_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<(BatchRow, Vec<u8>, Option<Vec<u8>>)> {
    Ok((
        BatchRow {
            seq: r.get::<_, i64>(0)? as u64,
            mode: r.get(1)?,
            root: B256::ZERO,
            leaf_count: r.get(3)?,
            state: r.get(4)?,
            created_ms: r.get::<_, i64>(5)? as u64,
            tx: None,
            block: r.get::<_, Option<i64>>(7)?.map(|v| v as u64),
            gas_used: r.get::<_, Option<i64>>(8)?.map(|v| v as u64),
            anchored_ms: r.get::<_, Option<i64>>(9)?.map(|v| v as u64),
            error: r.get(10)?,
        },
        r.get(2)?,
        r.get(6)?,
    ))
}

const BATCH_COLUMNS: &str = "seq, mode, root, leaf_count, state, created_ms, tx, block, gas_used, anchored_ms, error";

/// Batches newest first, with `seq` below `before` when given.
pub fn batches(store: &Store, before: Option<u64>, limit: usize) -> Result<Vec<BatchRow>, StoreError> {
    let mut stmt = store
        .conn()
        .prepare_cached(&format!("SELECT {BATCH_COLUMNS} FROM batches WHERE seq < ?1 ORDER BY seq DESC LIMIT ?2"))?;
    let before = before.map_or(i64::MAX, |b| b.min(i64::MAX as u64) as i64);
    let rows = stmt.query_map(params![before, limit as i64], batch_row)?;
    let mut out = Vec::new();
    for r in rows {
        let (mut b, root, tx) = r?;
        b.root = b256(root)?;
        b.tx = tx.map(b256).transpose()?;
        out.push(b);
    }
    Ok(out)
}

/// One batch.
pub fn batch(store: &Store, seq: u64) -> Result<Option<BatchRow>, StoreError> {
    let found = store
        .conn()
        .query_row(&format!("SELECT {BATCH_COLUMNS} FROM batches WHERE seq = ?1"), [seq.min(i64::MAX as u64) as i64], batch_row)
        .optional()?;
    match found {
        None => Ok(None),
        Some((mut b, root, tx)) => {
            b.root = b256(root)?;
            b.tx = tx.map(b256).transpose()?;
            Ok(Some(b))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Binding, Mode, NewReading};
    use alloy::primitives::Address;
    use healthsense_abi::rules::ids;

    /// A hub store with the API's indexes, in a directory that lives as long as the first.
    fn test_store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let binding = Binding { chain_id: 1, contract: Address::repeat_byte(1), hub: Address::repeat_byte(2) };
        let store = Store::open(&dir.path().join("s.sqlite"), binding).unwrap();
        init(&store).unwrap();
        (dir, store)
    }

    /// Every device's latest reading, as the hub's start finds them.
    fn latest_readings(store: &Store) -> Vec<Latest> {
        latest_at(store, store.last_readings().unwrap().into_values().map(|last| last.row).collect()).unwrap()
    }

    /// The ward view's warm-up: more devices than one statement asks for,
    /// each device's highest number whether it is batched or not, and not
    /// the row stored last when that one is lower.
    #[test]
    fn each_devices_latest_reading_is_found_batched_or_not_across_statements() {
        let (_dir, mut store) = test_store();
        let devices = ROWS_PER_QUERY + 7;
        let new = |d: usize, seq: u64| NewReading {
            serial: format!("HS-{d}"),
            reading: Reading { deviceId: ids::device_id(&format!("HS-{d}")), seq, timestamp: seq * 1_000, heartRate: 60 + seq as u16, ..Default::default() },
            signature: [1; 65],
            received_ms: seq,
        };
        // Readings 1-3 of every device, batched; then 4 for the even ones, left unbatched.
        let first: Vec<_> = (1..=3).flat_map(|seq| (0..devices).map(move |d| new(d, seq))).collect();
        store.commit(&first, &[]).unwrap();
        let mut batch = 0;
        while store.cut_batch({ batch += 1; batch }, 1_000, Mode::Hash, 0).unwrap().is_some() {}
        store.commit(&(0..devices).step_by(2).map(|d| new(d, 4)).collect::<Vec<_>>(), &[]).unwrap();
        // Device 1's reading 2 is stored again last, under a row id above its 3.
        store.commit(&[NewReading { signature: [2; 65], ..new(1, 2) }], &[]).unwrap();
        let mut latest: Vec<(String, u64, u16)> =
            latest_readings(&store).into_iter().map(|l| (l.serial, l.reading.seq, l.reading.heartRate)).collect();
        latest.sort();
        let mut want: Vec<(String, u64, u16)> = (0..devices).map(|d| {
            let seq = if d % 2 == 0 { 4 } else { 3 };
            (format!("HS-{d}"), seq, 60 + seq as u16)
        }).collect();
        want.sort();
        assert_eq!(latest, want);
        let last = store.last_readings().unwrap();
        assert_eq!(last.len(), devices);
        assert_eq!(last[&ids::device_id("HS-1")].seq, 3);
    }

    /// One stay window (`abi/src/rules/reading.rs`) for the API's history,
    /// the archive's selection and the store: readings stamped within the
    /// discharge second are in all three, the one a millisecond later in none.
    #[test]
    fn api_archive_and_store_count_the_same_stay_readings() {
        let (_dir, mut store) = test_store();
        let id = ids::device_id("HS-1");
        let (admitted, discharged) = (1_764_000_000u64, 1_764_000_060u64);
        let stamps = [admitted * 1_000 - 1, admitted * 1_000, admitted * 1_000 + 30_500, discharged * 1_000, discharged * 1_000 + 500, discharged * 1_000 + 999, discharged * 1_000 + 1_000];
        let new = |(i, ts): (usize, &u64)| NewReading {
            serial: "HS-1".into(),
            reading: Reading { deviceId: id, seq: i as u64 + 1, timestamp: *ts, heartRate: 70, ..Default::default() },
            signature: [1; 65],
            received_ms: *ts,
        };
        store.commit(&stamps.iter().enumerate().map(new).collect::<Vec<_>>(), &[]).unwrap();
        let batch = store.cut_batch(1, 100, Mode::Hash, 0).unwrap().unwrap();
        store.mark_anchored(batch.seq, None, 1, 1, 0).unwrap();
        let window = healthsense_abi::rules::reading::stay_window_ms(admitted, discharged);
        let api = vitals(&store, id, *window.start(), *window.end(), None, 1_000).unwrap().len();
        let (archived, waiting) = store.stay_readings(id, *window.start(), *window.end()).unwrap();
        let stored: i64 = store
            .conn()
            .query_row(
                "SELECT COUNT(*) FROM readings WHERE device_id = ?1 AND ts BETWEEN ?2 AND ?3",
                params![id.as_slice(), *window.start() as i64, *window.end() as i64],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!((api, archived.len(), stored, waiting), (5, 5, 5, 0));
    }

    #[test]
    fn pages_cover_batched_and_unbatched_readings_once() {
        let (_dir, mut store) = test_store();
        let id = ids::device_id("HS-1");
        let new = |seq: u64| NewReading {
            serial: "HS-1".into(),
            reading: Reading { deviceId: id, seq, timestamp: 1_000 * seq, heartRate: 70, ..Default::default() },
            signature: [1; 65],
            received_ms: 1_000 * seq,
        };
        store.commit(&(1..=10).map(new).collect::<Vec<_>>(), &[]).unwrap();
        store.cut_batch(1, 6, Mode::Hash, 0).unwrap();
        let mut seen = Vec::new();
        let mut after = None;
        loop {
            let page = vitals(&store, id, 0, u64::MAX, after, 4).unwrap();
            if page.is_empty() {
                break;
            }
            after = page.last().map(|r| (r.reading.timestamp, r.reading.seq));
            seen.extend(page.iter().map(|r| (r.reading.seq, r.batch_seq)));
        }
        let want: Vec<_> = (1..=10).map(|s| (s, (s <= 6).then_some(1))).collect();
        assert_eq!(seen, want);
        let range = vitals(&store, id, 3_000, 7_000, None, 100).unwrap();
        assert_eq!(range.iter().map(|r| r.reading.seq).collect::<Vec<_>>(), [3, 4, 5, 6, 7]);
        let latest = latest_readings(&store);
        assert_eq!((latest.len(), latest[0].reading.seq), (1, 10));
        assert_eq!(batches(&store, None, 10).unwrap()[0].leaf_count, 6);
        assert_eq!(batch(&store, 1).unwrap().unwrap().state, "pending");
        assert!(batch(&store, 2).unwrap().is_none());
    }
}
