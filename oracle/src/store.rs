//! The hub's durable store: one SQLite file in WAL mode with
//! `synchronous=FULL`, so a commit survives a crash and a power cut.
//!
//! - `readings`: every accepted reading in arrival order; `batch_seq`,
//!   `leaf_index` and `proof` are set when its batch is cut, only on a
//!   reading without a batch, so a reading belongs to at most one batch,
//!   ever. A (device, seq) is stored at most once: the hub's single writer
//!   admits only a seq above the device's highest stored one (loaded at
//!   start). The (device, seq) index serves lookups and is filled when a
//!   batch is cut, off the ingest path: a random-order index written on
//!   every ingest commit costs a WAL page per device per commit (measured:
//!   3.2 ms instead of 0.4 ms for 100 readings from 100 devices).
//! - `batches`: the hub's batches; `cutting` while its readings are written
//!   (in short transactions, see [`Store::cut_batch`]), `pending` until the
//!   anchor transaction is mined (or found on chain after a crash), then
//!   `anchored`.
//! - `rejections`: every rejected message with its code (never its payload).
//! - `device_state`: the latest battery and sleep state per device.
//! - `device_cache`: a copy of the hub's cache of on-chain device records,
//!   with the block (number and hash) it is valid at, so a restarted hub
//!   reads only the device events since then instead of every record.
//! - `device_last`: each device's last reading (sequence number and row) as
//!   of reading row `meta.device_last_upto`, saved now and then and when the
//!   hub stops ([`Store::save_last_readings`]), so a restarted hub reads one
//!   row a device plus the readings stored since, not every reading.
//! - `meta`: the chain id, contract and hub this store belongs to; opening it
//!   for another deployment is refused instead of mixing records.

use std::collections::HashMap;
use std::path::Path;

use alloy::primitives::{Address, B256};
use healthsense_abi::rules::merkle::StandardTree;
use healthsense_abi::rules::status::DeviceStatus;
use healthsense_abi::rules::reading::reading_leaf;
use healthsense_abi::Reading;
use crate::devices::DeviceRecord;
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};

/// Store errors.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// SQLite failed (disk full, locked, corrupt...).
    #[error("hub store: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// The file belongs to another deployment or hub.
    #[error("the hub store {path} belongs to {found}, not {expected}; use another store path for this deployment")]
    WrongDeployment {
        /// Store path.
        path: String,
        /// What the store was made for.
        found: String,
        /// What the configuration says.
        expected: String,
    },
    /// A stored value does not decode (the file was edited by hand?).
    #[error("hub store: corrupt row: {0}")]
    Corrupt(String),
}

pub(crate) type Result<T> = std::result::Result<T, StoreError>;

/// What a store belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Binding {
    /// Chain id.
    pub chain_id: u64,
    /// Contract address.
    pub contract: Address,
    /// Hub address.
    pub hub: Address,
}

impl std::fmt::Display for Binding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "chain {} contract {} hub {}", self.chain_id, self.contract, self.hub)
    }
}

/// An accepted reading on its way into the store.
#[derive(Debug, Clone)]
pub struct NewReading {
    /// Device serial (topic segment).
    pub serial: String,
    /// The signed reading.
    pub reading: Reading,
    /// Its 65-byte signature.
    pub signature: [u8; 65],
    /// Hub receive time, ms since the epoch.
    pub received_ms: u64,
}

/// A rejection on its way into the store.
#[derive(Debug, Clone)]
pub struct NewRejection {
    /// Device serial, when the topic named one.
    pub serial: Option<String>,
    /// Sequence number, when it could be read.
    pub seq: Option<u64>,
    /// Status code.
    pub code: u16,
    /// Reason.
    pub reason: String,
    /// Hub time, ms.
    pub at_ms: u64,
}

/// How a batch reaches the chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// A Merkle root per batch (`anchorBatch`).
    Hash,
    /// The readings themselves (`postReadings`).
    Readings,
}

impl Mode {
    fn as_str(self) -> &'static str {
        match self {
            Mode::Hash => "hash",
            Mode::Readings => "readings",
        }
    }
}

/// A batch row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    /// The hub's batch sequence number.
    pub seq: u64,
    /// How it is anchored.
    pub mode: Mode,
    /// Merkle root (zero in readings mode).
    pub root: B256,
    /// Number of readings.
    pub leaf_count: u32,
    /// `pending`, `anchored` or `failed`.
    pub state: String,
    /// Anchor transaction, once mined.
    pub tx: Option<B256>,
}

/// A stored reading with its place in a batch.
#[derive(Debug, Clone)]
pub struct StoredReading {
    /// Device serial.
    pub serial: String,
    /// The reading.
    pub reading: Reading,
    /// Its signature.
    pub signature: Vec<u8>,
    /// Batch, once cut.
    pub batch_seq: Option<u64>,
    /// Merkle proof (hash mode).
    pub proof: Vec<B256>,
}

/// Totals for status output and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Counts {
    /// Readings stored.
    pub readings: u64,
    /// Readings in an anchored batch.
    pub anchored_readings: u64,
    /// Readings not yet in a batch.
    pub unbatched: u64,
    /// Batches anchored.
    pub batches_anchored: u64,
    /// Batches waiting for the chain.
    pub batches_pending: u64,
    /// Rejected messages.
    pub rejections: u64,
}

/// A device's last stored reading ([`Store::last_readings`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct LastReading {
    /// Its sequence number (ordered first: the higher one is the later).
    pub seq: u64,
    /// Its row in the store.
    pub row: i64,
}

/// The hub's device cache as saved in the store: every record is the
/// device's on-chain state at block `block` (whose hash is `hash`) or later.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceCache {
    /// The block the records are valid at.
    pub block: u64,
    /// That block's hash, to tell a reorganised or reset chain.
    pub hash: B256,
    /// The records.
    pub records: Vec<DeviceRecord>,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS readings (
    id INTEGER PRIMARY KEY,
    device_id BLOB NOT NULL,
    serial TEXT NOT NULL,
    seq INTEGER NOT NULL,
    ts INTEGER NOT NULL,
    heart_rate INTEGER NOT NULL, resp_rate INTEGER NOT NULL, spo2 INTEGER NOT NULL,
    systolic INTEGER NOT NULL, diastolic INTEGER NOT NULL, temperature INTEGER NOT NULL,
    consciousness INTEGER NOT NULL,
    signature BLOB NOT NULL,
    received_ms INTEGER NOT NULL,
    batch_seq INTEGER,
    leaf_index INTEGER,
    proof BLOB
);
CREATE INDEX IF NOT EXISTS readings_unbatched ON readings (id) WHERE batch_seq IS NULL;
CREATE INDEX IF NOT EXISTS readings_batch ON readings (batch_seq);
CREATE INDEX IF NOT EXISTS readings_device ON readings (device_id, seq) WHERE batch_seq IS NOT NULL;
CREATE TABLE IF NOT EXISTS batches (
    seq INTEGER PRIMARY KEY,
    mode TEXT NOT NULL,
    root BLOB NOT NULL,
    leaf_count INTEGER NOT NULL,
    state TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    tx BLOB, block INTEGER, gas_used INTEGER, anchored_ms INTEGER, error TEXT
);
CREATE TABLE IF NOT EXISTS rejections (
    id INTEGER PRIMARY KEY, serial TEXT, seq INTEGER, code INTEGER NOT NULL, reason TEXT NOT NULL, at_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS device_state (
    serial TEXT PRIMARY KEY, battery REAL, asleep INTEGER, at_ms INTEGER NOT NULL
);
-- The hub's device cache as of meta's device_cache_block (hub.rs,
-- warm_devices), brought up to date by save_device_cache.
CREATE TABLE IF NOT EXISTS device_cache (
    device_id BLOB PRIMARY KEY, signer BLOB NOT NULL, ward BLOB NOT NULL, status INTEGER NOT NULL
) WITHOUT ROWID;
-- Each device's last reading among rows up to meta's device_last_upto
-- (Store::save_last_readings).
CREATE TABLE IF NOT EXISTS device_last (
    device_id BLOB PRIMARY KEY, seq INTEGER NOT NULL, row INTEGER NOT NULL
) WITHOUT ROWID;
-- A doctor's acknowledgement of a NEWS2 alert (alerts.rs; the API's one
-- write, to this operational store only). Added by IF NOT EXISTS on open.
CREATE TABLE IF NOT EXISTS alert_acks (
    alert_id INTEGER PRIMARY KEY, device_id BLOB NOT NULL, doctor TEXT NOT NULL, at_ms INTEGER NOT NULL
);
";

/// One connection to the hub store.
pub struct Store {
    conn: Connection,
    /// The batch cutter's aggregate of the batches it cut since the trend
    /// rollup's watermark (`crate::trend`); `None` until its first cut, and
    /// after anything it does not cover (then read back from the readings).
    rollup: Option<crate::trend::Pending>,
}

/// A 32-byte column as a hash; anything else means the store is corrupt.
pub(crate) fn b256(v: Vec<u8>) -> Result<B256> {
    (v.len() == 32).then(|| B256::from_slice(&v)).ok_or_else(|| StoreError::Corrupt(format!("{}-byte hash", v.len())))
}

/// `meta` key: the last reading row `device_last` covers. Readings are
/// never deleted, so a new reading's row id is always above every earlier
/// one: a row after the mark is a reading stored after the save.
const LAST_UPTO: &str = "device_last_upto";

/// The last reading row `device_last` covers; `None` before the first save.
fn last_upto(conn: &Connection) -> Result<Option<i64>> {
    read_meta(conn, LAST_UPTO)?
        .map(|upto| upto.parse().map_err(|_| StoreError::Corrupt(format!("{LAST_UPTO} {upto:?}"))))
        .transpose()
}

/// Each device's last reading among the rows after a mark (`?1`).
const LAST_AFTER_MARK: &str = "SELECT device_id, MAX(seq), id FROM readings WHERE id > ?1 GROUP BY device_id";

/// Devices a `device_last` write transaction holds: an ingest commit waits
/// for at most one (a few milliseconds).
const LAST_SAVE_CHUNK: usize = 1_000;

/// Adds the rows of `sql` (device id, sequence number, row) to `out`,
/// keeping each device's highest.
fn collect_last(conn: &Connection, sql: &str, args: impl rusqlite::Params, out: &mut HashMap<B256, LastReading>) -> Result<()> {
    let mut stmt = conn.prepare(sql)?;
    let mut rows = stmt.query(args)?;
    while let Some(r) = rows.next()? {
        let id = match r.get_ref(0)? {
            rusqlite::types::ValueRef::Blob(id) if id.len() == 32 => B256::from_slice(id),
            other => return Err(StoreError::Corrupt(format!("device id {other:?} in {sql}"))),
        };
        let last = LastReading { seq: r.get::<_, i64>(1)? as u64, row: r.get(2)? };
        out.entry(id).and_modify(|l| *l = (*l).max(last)).or_insert(last);
    }
    Ok(())
}

/// Each device's last reading from every stored reading: the batched half
/// walks the partial `(device_id, seq)` index rather than every (wide) row
/// and a sort, and with one MAX() SQLite takes the bare `id` from the
/// index entry that has it.
fn scan_last(conn: &Connection) -> Result<HashMap<B256, LastReading>> {
    let mut out = HashMap::new();
    collect_last(
        conn,
        "SELECT device_id, MAX(seq), id FROM readings WHERE batch_seq IS NOT NULL GROUP BY device_id
         UNION ALL
         SELECT device_id, MAX(seq), id FROM readings WHERE batch_seq IS NULL GROUP BY device_id",
        [],
        &mut out,
    )?;
    Ok(out)
}

/// A `meta` value, on a connection or inside a transaction.
pub(crate) fn read_meta(conn: &Connection, key: &str) -> rusqlite::Result<Option<String>> {
    conn.query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0)).optional()
}

/// Sets a `meta` value, on a connection or inside a transaction.
pub(crate) fn write_meta(conn: &Connection, key: &str, value: &str) -> rusqlite::Result<()> {
    conn.execute("INSERT INTO meta (key, value) VALUES (?1, ?2) ON CONFLICT (key) DO UPDATE SET value = excluded.value", [key, value])
        .map(drop)
}

/// How long a connection waits for another's write lock before failing.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// Busy handler: retries every millisecond, up to [`LOCK_WAIT`]. SQLite's own
/// (`busy_timeout`) backs off to sleeps of up to 100 ms, so a writer that met
/// the anchorer's batch cut slept well past its end, once a second at 2,000
/// readings/s (docs/BENCHMARKS.md).
fn wait_for_lock(attempt: i32) -> bool {
    std::thread::sleep(std::time::Duration::from_millis(1));
    u128::try_from(attempt).unwrap_or(0) < LOCK_WAIT.as_millis()
}

impl Store {
    /// The connection, for the read queries and state tables that other
    /// modules (archive, API) keep next to their own code.
    pub(crate) fn conn(&self) -> &Connection {
        &self.conn
    }

    /// Opens an existing store for a tool on the hub machine (`healthsense
    /// archive key|erase`), checking only that it belongs to `chain_id` and
    /// `contract`.
    pub fn open_existing(path: &Path, chain_id: u64, contract: Address) -> Result<Self> {
        let conn = Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE)?;
        conn.busy_handler(Some(wait_for_lock))?;
        let found: Option<String> =
            conn.query_row("SELECT value FROM meta WHERE key = 'binding'", [], |r| r.get(0)).optional()?;
        let prefix = format!("chain {chain_id} contract {contract} ");
        match found {
            Some(found) if found.starts_with(&prefix) => Ok(Self { conn, rollup: None }),
            found => Err(StoreError::WrongDeployment {
                path: path.display().to_string(),
                found: found.unwrap_or_else(|| "nothing (not a hub store)".into()),
                expected: prefix.trim_end().to_string(),
            }),
        }
    }

    /// Opens (creating if needed) the store at `path` for `binding`.
    pub fn open(path: &Path, binding: Binding) -> Result<Self> {
        let conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.busy_handler(Some(wait_for_lock))?;
        conn.execute_batch(SCHEMA)?;
        crate::trend::init(&conn)?;
        let expected = binding.to_string();
        let found: Option<String> =
            conn.query_row("SELECT value FROM meta WHERE key = 'binding'", [], |r| r.get(0)).optional()?;
        match found {
            None => {
                conn.execute("INSERT INTO meta (key, value) VALUES ('binding', ?1)", [&expected])?;
            }
            Some(found) if found != expected => {
                return Err(StoreError::WrongDeployment { path: path.display().to_string(), found, expected })
            }
            Some(_) => {}
        }
        Ok(Self { conn, rollup: None })
    }

    /// Leaves WAL checkpoints to other connections: this one's commits never
    /// copy the log back into the database. For the ingest writer, whose
    /// commit otherwise pays for a checkpoint whenever the log passes 1,000
    /// pages (a batch cut writes about that much), while its group waits
    /// for acknowledgement. The hub runs [`Store::checkpoint`] on a
    /// connection of its own instead.
    pub fn leave_checkpoints(&self) -> Result<()> {
        self.conn.pragma_update(None, "wal_autocheckpoint", 0)?;
        Ok(())
    }

    /// Copies what it can of the log back into the database without waiting
    /// for readers or blocking writers (a passive checkpoint).
    pub fn checkpoint(&self) -> Result<()> {
        self.conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))?;
        Ok(())
    }

    /// The hub this store belongs to (from its binding).
    pub fn hub(&self) -> Result<Option<Address>> {
        let binding = self.meta("binding")?.unwrap_or_default();
        Ok(binding.rsplit(' ').next().and_then(|a| a.parse().ok()))
    }

    /// A `meta` value.
    pub fn meta(&self, key: &str) -> Result<Option<String>> {
        Ok(read_meta(&self.conn, key)?)
    }

    /// Sets a `meta` value.
    pub fn set_meta(&self, key: &str, value: &str) -> Result<()> {
        Ok(write_meta(&self.conn, key, value)?)
    }

    /// The serial a device's readings arrived under, if any arrived.
    pub fn serial_of(&self, device_id: B256) -> Result<Option<String>> {
        Ok(self
            .conn
            .query_row("SELECT serial FROM readings WHERE device_id = ?1 LIMIT 1", [device_id.as_slice()], |r| r.get(0))
            .optional()?)
    }

    /// The device records saved by [`Store::save_device_cache`], with the
    /// block they are valid at; `None` if none were saved.
    pub fn device_cache(&self) -> Result<Option<DeviceCache>> {
        let (Some(block), Some(hash)) = (self.meta("device_cache_block")?, self.meta("device_cache_hash")?) else {
            return Ok(None);
        };
        let block = block.parse().map_err(|_| StoreError::Corrupt(format!("device_cache_block {block:?}")))?;
        let hash = hash.parse().map_err(|_| StoreError::Corrupt(format!("device_cache_hash {hash:?}")))?;
        let mut stmt = self.conn.prepare("SELECT device_id, signer, ward, status FROM device_cache")?;
        let mut rows = stmt.query([])?;
        // Read in place, not copied out per column: a restart reads 20,000
        // of these before the hub connects to its broker.
        let mut records = Vec::new();
        while let Some(r) = rows.next()? {
            let blob = |i: usize, len: usize, what: &str| -> Result<&[u8]> {
                let v = r.get_ref(i)?.as_blob().map_err(|_| StoreError::Corrupt(format!("{what} in device_cache is not a blob")))?;
                (v.len() == len).then_some(v).ok_or_else(|| StoreError::Corrupt(format!("{}-byte {what} in device_cache", v.len())))
            };
            let status: i64 = r.get(3)?;
            let status = u8::try_from(status)
                .ok()
                .and_then(DeviceStatus::from_code)
                .ok_or_else(|| StoreError::Corrupt(format!("device status {status} in device_cache")))?;
            records.push(DeviceRecord {
                id: B256::from_slice(blob(0, 32, "device id")?),
                signer: Address::from_slice(blob(1, 20, "signer")?),
                ward: B256::from_slice(blob(2, 32, "ward")?),
                status,
            });
        }
        Ok(Some(DeviceCache { block, hash, records }))
    }

    /// Brings the saved device cache up to block `block` (hash `hash`):
    /// each of `changes` is a device's record now, or `None` to forget it.
    /// One transaction, so the records and their block never disagree.
    pub fn save_device_cache(&mut self, block: u64, hash: B256, changes: &[(B256, Option<DeviceRecord>)]) -> Result<()> {
        let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        {
            let mut upsert = tx.prepare(
                "INSERT INTO device_cache (device_id, signer, ward, status) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (device_id) DO UPDATE SET signer = excluded.signer, ward = excluded.ward, status = excluded.status",
            )?;
            let mut delete = tx.prepare("DELETE FROM device_cache WHERE device_id = ?1")?;
            for (id, record) in changes {
                match record {
                    Some(d) => upsert.execute(params![id.as_slice(), d.signer.as_slice(), d.ward.as_slice(), d.status as u8])?,
                    None => delete.execute([id.as_slice()])?,
                };
            }
        }
        for (key, value) in [("device_cache_block", block.to_string()), ("device_cache_hash", hash.to_string())] {
            write_meta(&tx, key, &value)?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Every device's reading with the highest stored sequence number: its
    /// number and its row, for [`crate::api::queries::latest_at`].
    ///
    /// From the saved `device_last` and the readings stored after the row it
    /// covers, in one read transaction: one row a device plus the readings
    /// since the last save (the hub saves every 30 s). Walking every stored reading instead took 38 ms
    /// of a restart at 20,000 devices in the scaling bench, and grows by
    /// about 0.1 µs with each reading the hub ever stored (docs/BENCHMARKS.md,
    /// "Issue 22, eighteenth session"). A store never saved is read whole.
    pub fn last_readings(&self) -> Result<HashMap<B256, LastReading>> {
        let tx = self.conn.unchecked_transaction()?;
        let out = match last_upto(&tx)? {
            Some(upto) => {
                let mut out = HashMap::new();
                collect_last(&tx, "SELECT device_id, seq, row FROM device_last", [], &mut out)?;
                collect_last(&tx, LAST_AFTER_MARK, [upto], &mut out)?;
                out
            }
            None => scan_last(&tx)?,
        };
        tx.finish()?;
        Ok(out)
    }

    /// Saves each device's last reading into `device_last` and moves its
    /// mark to the last stored row, reading only the readings stored since
    /// the mark (every reading the first time). The readings are read
    /// without the write lock; the rows are written in transactions of
    /// [`LAST_SAVE_CHUNK`] so ingest commits wait at most one of them, and
    /// the mark moves in the last, never back. Safe to run from two
    /// connections at once. Returns the devices written.
    pub fn save_last_readings(&self) -> Result<usize> {
        let (found, latest) = {
            let tx = self.conn.unchecked_transaction()?;
            let upto = last_upto(&tx)?;
            let latest: i64 = tx.query_row("SELECT IFNULL(MAX(id), 0) FROM readings", [], |r| r.get(0))?;
            if upto.is_some_and(|u| u >= latest) {
                return Ok(0);
            }
            // One read transaction: the rows read are exactly those up to `latest`.
            let found = match upto {
                Some(u) => {
                    let mut found = HashMap::new();
                    collect_last(&tx, LAST_AFTER_MARK, [u], &mut found)?;
                    found
                }
                None => scan_last(&tx)?,
            };
            tx.finish()?;
            (found.into_iter().collect::<Vec<_>>(), latest)
        };
        let chunks: Vec<&[(B256, LastReading)]> = if found.is_empty() { vec![&[]] } else { found.chunks(LAST_SAVE_CHUNK).collect() };
        let last_chunk = chunks.len() - 1;
        for (i, chunk) in chunks.into_iter().enumerate() {
            let tx = rusqlite::Transaction::new_unchecked(&self.conn, TransactionBehavior::Immediate)?;
            {
                let mut upsert = tx.prepare_cached(
                    "INSERT INTO device_last (device_id, seq, row) VALUES (?1, ?2, ?3)
                     ON CONFLICT (device_id) DO UPDATE SET seq = excluded.seq, row = excluded.row
                     WHERE (excluded.seq, excluded.row) > (device_last.seq, device_last.row)",
                )?;
                for (id, last) in chunk {
                    upsert.execute(params![id.as_slice(), last.seq as i64, last.row])?;
                }
            }
            if i == last_chunk {
                if last_upto(&tx)?.is_none_or(|n| n < latest) {
                    write_meta(&tx, LAST_UPTO, &latest.to_string())?;
                }
            }
            tx.commit()?;
        }
        Ok(found.len())
    }

    /// The highest stored sequence number of one device, if any.
    pub fn last_seq(&self, device_id: B256) -> Result<Option<u64>> {
        // Two halves so that each uses its partial index.
        let seq: Option<i64> = self.conn.query_row(
            "SELECT MAX(m) FROM (
                SELECT MAX(seq) AS m FROM readings WHERE device_id = ?1 AND batch_seq IS NOT NULL
                UNION ALL
                SELECT MAX(seq) FROM readings WHERE batch_seq IS NULL AND device_id = ?1)",
            [device_id.as_slice()],
            |r| r.get(0),
        )?;
        Ok(seq.map(|s| s as u64))
    }

    /// Commits accepted readings and rejections in one transaction.
    pub fn commit(&mut self, readings: &[NewReading], rejections: &[NewRejection]) -> Result<()> {
        let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        {
            let mut ins = tx.prepare_cached(
                "INSERT INTO readings (device_id, serial, seq, ts, heart_rate, resp_rate, spo2, systolic, diastolic,
                 temperature, consciousness, signature, received_ms) VALUES (?1,?2,?3,?4,?5,?6,?7,?8,?9,?10,?11,?12,?13)",
            )?;
            for n in readings {
                let r = &n.reading;
                ins.execute(params![
                    r.deviceId.as_slice(),
                    n.serial,
                    r.seq as i64,
                    r.timestamp as i64,
                    r.heartRate,
                    r.respRate,
                    r.spo2,
                    r.systolic,
                    r.diastolic,
                    r.temperature,
                    r.consciousness,
                    &n.signature[..],
                    n.received_ms as i64
                ])?;
            }
            let mut rej = tx.prepare_cached(
                "INSERT INTO rejections (serial, seq, code, reason, at_ms) VALUES (?1, ?2, ?3, ?4, ?5)",
            )?;
            for r in rejections {
                rej.execute(params![r.serial, r.seq.map(|s| s as i64), r.code, r.reason, r.at_ms as i64])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Records a device's latest state.
    pub fn set_device_state(&self, serial: &str, battery: Option<f64>, asleep: Option<bool>, at_ms: u64) -> Result<()> {
        self.conn.execute(
            "INSERT INTO device_state (serial, battery, asleep, at_ms) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (serial) DO UPDATE SET battery = COALESCE(?2, battery), asleep = COALESCE(?3, asleep), at_ms = ?4",
            params![serial, battery, asleep, at_ms as i64],
        )?;
        Ok(())
    }

    /// Readings not yet in a batch, and the receive time of the oldest.
    pub fn unbatched(&self) -> Result<(u64, Option<u64>)> {
        Ok(self.conn.query_row(
            "SELECT COUNT(*), MIN(received_ms) FROM readings WHERE batch_seq IS NULL",
            [],
            |r| Ok((r.get::<_, i64>(0)? as u64, r.get::<_, Option<i64>>(1)?.map(|v| v as u64))),
        )?)
    }

    /// The next batch sequence number (the highest used plus one, or 1).
    pub fn next_batch_seq(&self) -> Result<u64> {
        let max: Option<i64> = self.conn.query_row("SELECT MAX(seq) FROM batches", [], |r| r.get(0))?;
        Ok(max.map_or(1, |m| m as u64 + 1))
    }

    /// Whether any batch was ever cut.
    pub fn has_batches(&self) -> Result<bool> {
        Ok(self.conn.query_row("SELECT EXISTS (SELECT 1 FROM batches)", [], |r| r.get(0))?)
    }

    /// Cuts the oldest `max` unbatched readings into batch `seq`: builds the
    /// tree (hash mode) and stores the batch, each reading's place and proof.
    /// `None` when nothing waits.
    ///
    /// The rows are written [`CUT_CHUNK`] at a time, each chunk its own
    /// transaction, so the ingest writer never waits for more than one chunk.
    /// One transaction for a 2,000-reading batch held the write lock for
    /// 20-40 ms (longer as the (device, seq) index grows); ingest commits at
    /// 2,000 readings/s waited up to 25 ms behind it, 8 ms behind chunks
    /// (docs/BENCHMARKS.md). The batch row goes in with the first chunk as
    /// `cutting` (never anchored in that state) and turns `pending` with the
    /// last; a cut a crash interrupted is finished by [`Store::finish_cuts`].
    pub fn cut_batch(&mut self, seq: u64, max: usize, mode: Mode, now_ms: u64) -> Result<Option<Batch>> {
        self.cut(seq, max, mode, now_ms, usize::MAX)
    }

    /// [`Store::cut_batch`], stopping after `chunks` transactions (tests
    /// interrupt a cut with it).
    fn cut(&mut self, seq: u64, max: usize, mode: Mode, now_ms: u64, chunks: usize) -> Result<Option<Batch>> {
        // Read and hash outside the write lock, so ingest commits go on while
        // the tree is built; only this connection ever batches readings, so
        // the rows cannot change in between (checked row by row all the same).
        let rows = self.select_for_cut("batch_seq IS NULL", [max as i64])?;
        if rows.is_empty() {
            return Ok(None);
        }
        let (root, proofs) = batch_tree(&rows, mode)?;
        let count = rows.len() as u32;
        let insert = |tx: &rusqlite::Transaction<'_>| {
            tx.execute(
                "INSERT INTO batches (seq, mode, root, leaf_count, state, created_ms)
                 VALUES (?1, ?2, ?3, ?4, 'cutting', ?5)",
                params![seq as i64, mode.as_str(), root.as_slice(), count, now_ms as i64],
            )
            .map(drop)
        };
        let pending = self.rollup.take();
        let stamped = self.stamp(seq, &rows, &proofs, insert, chunks)?;
        if rows.len().div_ceil(CUT_CHUNK) <= chunks {
            self.roll_up(seq, pending, &stamped);
        }
        Ok(Some(Batch { seq, mode, root, leaf_count: count, state: "pending".into(), tx: None }))
    }

    /// Adds cut batch `seq` (`stamped`, all its readings) to the trend
    /// rollup's aggregate, writing it when due (`crate::trend`). A rollup
    /// that cannot be written now is not an error of the cut: the readings
    /// stay in the store, trends read them raw, and the next cut catches up
    /// from them.
    fn roll_up(&mut self, seq: u64, pending: Option<crate::trend::Pending>, stamped: &[Reading]) {
        // Its first cut: from the watermark, if that is the batch before.
        let pending = pending.or_else(|| crate::trend::rolled_to(&self.conn).ok().map(crate::trend::Pending::at));
        let pending = match pending {
            Some(mut p) if p.to() + 1 == seq => {
                p.add_batch(seq, stamped.iter());
                p
            }
            // After a crash or a failed write: rebuilt from the readings.
            _ => crate::trend::Pending::at(0),
        };
        if pending.to() == seq && !pending.due() {
            self.rollup = Some(pending);
            return;
        }
        self.rollup = Some(pending);
        self.write_rollup_to(seq);
    }

    /// Writes what the batch cutter holds of the trend rollup now, instead
    /// of when due (the hub's shutdown: the next start need not read those
    /// batches back). Failures are logged; the readings stay in the store.
    pub fn write_rollup(&mut self) {
        if let Some(to) = self.rollup.as_ref().map(|p| p.to()) {
            self.write_rollup_to(to);
        }
    }

    fn write_rollup_to(&mut self, seq: u64) {
        let pending = self.rollup.take();
        let valid = pending.as_ref().filter(|p| p.to() == seq);
        self.rollup = match crate::trend::flush(&mut self.conn, valid, seq) {
            Ok(watermark) => Some(crate::trend::Pending::at(watermark)),
            Err(e) => {
                tracing::warn!(error = %e, batch = seq, "trend rollup not written; the next batch cut catches up");
                None
            }
        };
    }

    /// Finishes every cut a crash interrupted (batches left `cutting`), so
    /// they can be anchored; returns them. A `cutting` batch's readings are
    /// the ones already stamped with it followed by the oldest unbatched ones
    /// (a cut takes the oldest, in id order, and ingest only appends), up to
    /// its leaf count; the rebuilt tree must give the root stored at the cut.
    pub fn finish_cuts(&mut self) -> Result<Vec<Batch>> {
        let mut done = Vec::new();
        for b in self.batches_where("state = 'cutting'")? {
            let rows = self.select_for_cut(
                "batch_seq = ?2 OR batch_seq IS NULL",
                [i64::from(b.leaf_count), b.seq as i64],
            )?;
            let changed = |now: String| {
                StoreError::Corrupt(format!("batch {} was cut from {} readings, root {}; now {now}", b.seq, b.leaf_count, b.root))
            };
            if rows.len() != b.leaf_count as usize {
                return Err(changed(format!("{} readings", rows.len())));
            }
            let (root, proofs) = batch_tree(&rows, b.mode)?;
            if root != b.root {
                return Err(changed(format!("root {root}")));
            }
            self.stamp(b.seq, &rows, &proofs, |_| Ok(()), usize::MAX)?;
            // The batch's readings stamped before the crash are not in this
            // cutter's memory: the next cut reads the rollup's part back.
            self.rollup = None;
            done.push(Batch { state: "pending".into(), ..b });
        }
        Ok(done)
    }

    /// The oldest readings matching `cond` (`?1` is the limit), in id order.
    fn select_for_cut<P: rusqlite::Params>(&self, cond: &str, args: P) -> Result<Vec<(i64, Reading)>> {
        let mut stmt = self
            .conn
            .prepare_cached(&format!("SELECT id, {READING_COLUMNS} FROM readings WHERE {cond} ORDER BY id LIMIT ?1"))?;
        let rows = stmt.query_map(args, |r| Ok((r.get(0)?, reading_row(r, 1)?)))?;
        Ok(rows.collect::<std::result::Result<_, _>>()?)
    }

    /// Writes batch `seq` onto `rows` [`CUT_CHUNK`] at a time: `first` runs
    /// in the first chunk's transaction, the last one marks the batch
    /// `pending`. Stops after `chunks` transactions. Returns the readings
    /// it stamped (not those a crash left stamped) that the trend rollup's
    /// watermark has not passed; those it has go into the rollup with
    /// their chunk.
    fn stamp(
        &mut self,
        seq: u64,
        rows: &[(i64, Reading)],
        proofs: &[Vec<u8>],
        first: impl FnOnce(&rusqlite::Transaction<'_>) -> rusqlite::Result<()>,
        chunks: usize,
    ) -> Result<Vec<Reading>> {
        let stamped = self.stamp_chunks(seq, rows, proofs, first, chunks);
        // FULL again also after an error part-way, for every later commit.
        let restored = self.conn.pragma_update(None, "synchronous", "FULL");
        let stamped = stamped?;
        restored?;
        Ok(stamped)
    }

    fn stamp_chunks(
        &mut self,
        seq: u64,
        rows: &[(i64, Reading)],
        proofs: &[Vec<u8>],
        first: impl FnOnce(&rusqlite::Transaction<'_>) -> rusqlite::Result<()>,
        chunks: usize,
    ) -> Result<Vec<Reading>> {
        let mut first = Some(first);
        let total = rows.len().div_ceil(CUT_CHUNK);
        // Only a store whose rollup was written per chunk, before the
        // watermark (crate::trend::init), has a batch the watermark passed
        // still being cut.
        let rolled = crate::trend::rolled_to(&self.conn)? >= seq;
        let mut out = Vec::with_capacity(if rolled { 0 } else { rows.len() });
        // Every chunk but the last commits without an fsync (WAL with
        // synchronous=NORMAL keeps the order of commits, never their
        // durability): the last one, FULL again, syncs the log and with it
        // every chunk before it, before the batch can be anchored. A power
        // cut loses at most a tail of a `cutting` batch, which
        // `finish_cuts` redoes. Each fsync was taken with the write lock
        // held, so ingest commits waited behind twenty of them per batch.
        for (k, (chunk, chunk_proofs)) in rows.chunks(CUT_CHUNK).zip(proofs.chunks(CUT_CHUNK)).enumerate().take(chunks) {
            let last = k + 1 == total;
            self.conn.pragma_update(None, "synchronous", if last { "FULL" } else { "NORMAL" })?;
            let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            if let Some(first) = first.take() {
                first(&tx)?;
            }
            {
                let mut upd = tx.prepare_cached(
                    "UPDATE readings SET batch_seq = ?1, leaf_index = ?2, proof = ?3 WHERE id = ?4 AND batch_seq IS NULL",
                )?;
                let mut stamped = tx.prepare_cached("SELECT batch_seq FROM readings WHERE id = ?1")?;
                // Each reading counts once in the trend rollup, as it is
                // batched once: one this batch already holds (a cut a crash
                // interrupted) is in the rollup or in the batch's readings.
                let mut newly = Vec::with_capacity(chunk.len());
                for (i, ((id, r), proof)) in chunk.iter().zip(chunk_proofs).enumerate() {
                    let proof = (!proof.is_empty()).then_some(proof.as_slice());
                    if upd.execute(params![seq as i64, (k * CUT_CHUNK + i) as i64, proof, id])? == 1 {
                        newly.push(r);
                    } else if stamped.query_row([id], |r| r.get::<_, Option<i64>>(0)).optional()? != Some(Some(seq as i64)) {
                        return Err(StoreError::Corrupt(format!("reading {id} changed while batch {seq} was cut")));
                    }
                }
                if rolled {
                    crate::trend::add(&tx, newly.into_iter())?;
                } else {
                    // Kept only if this chunk commits: an error below ends the cut.
                    out.extend(newly.into_iter().cloned());
                }
            }
            if last {
                tx.execute("UPDATE batches SET state = 'pending' WHERE seq = ?1", [seq as i64])?;
            }
            tx.commit()?;
            if !last {
                // A writer waiting for the lock retries every millisecond
                // (wait_for_lock); without a gap this loop takes it back first.
                std::thread::sleep(CUT_GAP);
            }
        }
        Ok(out)
    }

    /// Batches still waiting for the chain, oldest first.
    pub fn pending_batches(&self) -> Result<Vec<Batch>> {
        self.batches_where("state = 'pending'")
    }

    /// Every batch, oldest first.
    pub fn batches(&self) -> Result<Vec<Batch>> {
        self.batches_where("1")
    }

    fn batches_where(&self, cond: &str) -> Result<Vec<Batch>> {
        let mut stmt = self
            .conn
            .prepare(&format!("SELECT seq, mode, root, leaf_count, state, tx FROM batches WHERE {cond} ORDER BY seq"))?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, Vec<u8>>(2)?,
                r.get::<_, u32>(3)?,
                r.get::<_, String>(4)?,
                r.get::<_, Option<Vec<u8>>>(5)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (seq, mode, root, leaf_count, state, tx) = row?;
            out.push(Batch {
                seq: seq as u64,
                mode: if mode == "readings" { Mode::Readings } else { Mode::Hash },
                root: b256(root)?,
                leaf_count,
                state,
                tx: tx.map(b256).transpose()?,
            });
        }
        Ok(out)
    }

    /// Marks a batch anchored.
    pub fn mark_anchored(&self, seq: u64, tx: Option<B256>, block: u64, gas_used: u64, now_ms: u64) -> Result<()> {
        self.conn.execute(
            "UPDATE batches SET state = 'anchored', tx = ?2, block = ?3, gas_used = ?4, anchored_ms = ?5, error = NULL
             WHERE seq = ?1",
            params![seq as i64, tx.map(|t| t.to_vec()), block as i64, gas_used as i64, now_ms as i64],
        )?;
        Ok(())
    }

    /// Marks a batch failed for good, with the reason.
    pub fn mark_failed(&self, seq: u64, error: &str) -> Result<()> {
        self.conn.execute("UPDATE batches SET state = 'failed', error = ?2 WHERE seq = ?1", params![seq as i64, error])?;
        Ok(())
    }

    /// The readings of a batch with their signatures, in batch order.
    pub fn batch_readings(&self, seq: u64) -> Result<Vec<StoredReading>> {
        self.readings_where("batch_seq = ?1 ORDER BY leaf_index", params![seq as i64])
    }

    /// One reading by device and sequence number.
    pub fn reading(&self, device_id: B256, seq: u64) -> Result<Option<StoredReading>> {
        let args = params![device_id.as_slice(), seq as i64];
        let mut found = self.readings_where("batch_seq IS NOT NULL AND device_id = ?1 AND seq = ?2", args)?;
        if found.is_empty() {
            found = self.readings_where("batch_seq IS NULL AND device_id = ?1 AND seq = ?2", args)?;
        }
        Ok(found.pop())
    }

    /// Readings of a device, by sequence number.
    pub fn device_readings(&self, device_id: B256) -> Result<Vec<StoredReading>> {
        let args = params![device_id.as_slice()];
        let mut rows = self.readings_where("batch_seq IS NOT NULL AND device_id = ?1", args)?;
        rows.extend(self.readings_where("batch_seq IS NULL AND device_id = ?1", args)?);
        rows.sort_by_key(|r| r.reading.seq);
        Ok(rows)
    }

    fn readings_where(&self, cond: &str, args: &[&dyn rusqlite::ToSql]) -> Result<Vec<StoredReading>> {
        let mut stmt = self
            .conn
            .prepare(&format!("SELECT serial, signature, batch_seq, proof, {READING_COLUMNS} FROM readings WHERE {cond}"))?;
        let rows = stmt.query_map(args, |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, Vec<u8>>(1)?,
                r.get::<_, Option<i64>>(2)?,
                r.get::<_, Option<Vec<u8>>>(3)?,
                reading_row(r, 4)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (serial, signature, batch_seq, proof, reading) = row?;
            let proof = proof.unwrap_or_default();
            if proof.len() % 32 != 0 {
                return Err(StoreError::Corrupt(format!("proof of {} bytes", proof.len())));
            }
            out.push(StoredReading {
                serial,
                reading,
                signature,
                batch_seq: batch_seq.map(|s| s as u64),
                proof: proof.chunks(32).map(B256::from_slice).collect(),
            });
        }
        Ok(out)
    }

    /// Totals.
    pub fn counts(&self) -> Result<Counts> {
        Ok(self.conn.query_row(
            "SELECT
               (SELECT COUNT(*) FROM readings),
               (SELECT COALESCE(SUM(leaf_count), 0) FROM batches WHERE state = 'anchored'),
               (SELECT COUNT(*) FROM readings WHERE batch_seq IS NULL),
               (SELECT COUNT(*) FROM batches WHERE state = 'anchored'),
               (SELECT COUNT(*) FROM batches WHERE state = 'pending'),
               (SELECT COUNT(*) FROM rejections)",
            [],
            |r| {
                Ok(Counts {
                    readings: r.get::<_, i64>(0)? as u64,
                    anchored_readings: r.get::<_, i64>(1)? as u64,
                    unbatched: r.get::<_, i64>(2)? as u64,
                    batches_anchored: r.get::<_, i64>(3)? as u64,
                    batches_pending: r.get::<_, i64>(4)? as u64,
                    rejections: r.get::<_, i64>(5)? as u64,
                })
            },
        )?)
    }

    /// Rejections per code.
    pub fn rejection_codes(&self) -> Result<Vec<(u16, u64)>> {
        let mut stmt = self.conn.prepare("SELECT code, COUNT(*) FROM rejections GROUP BY code ORDER BY code")?;
        let rows = stmt.query_map([], |r| Ok((r.get::<_, u16>(0)?, r.get::<_, i64>(1)? as u64)))?;
        Ok(rows.collect::<std::result::Result<_, _>>()?)
    }
}

/// Readings per transaction when a batch is cut (see [`Store::cut_batch`]):
/// about 2 ms of write lock here.
const CUT_CHUNK: usize = 100;

/// Pause between a cut's transactions, so waiting writers get the lock.
const CUT_GAP: std::time::Duration = std::time::Duration::from_millis(2);

/// A batch's root and each reading's proof, in `rows` order (readings mode:
/// no tree, a zero root and no proofs).
fn batch_tree(rows: &[(i64, Reading)], mode: Mode) -> Result<(B256, Vec<Vec<u8>>)> {
    Ok(match mode {
        Mode::Hash => {
            let leaves: Vec<B256> = rows.iter().map(|(_, r)| reading_leaf(r)).collect();
            let tree = StandardTree::new(leaves.iter().copied()).map_err(|e| StoreError::Corrupt(e.to_string()))?;
            let mut by_leaf: HashMap<B256, Vec<B256>> = tree.proofs().collect();
            let proofs = leaves.iter().map(|l| by_leaf.remove(l).map(|p| p.concat()).unwrap_or_default()).collect();
            (tree.root(), proofs)
        }
        Mode::Readings => (B256::ZERO, vec![Vec::new(); rows.len()]),
    })
}

/// The columns [`reading_row`] decodes, in its order.
pub(crate) const READING_COLUMNS: &str =
    "device_id, seq, ts, heart_rate, resp_rate, spo2, systolic, diastolic, temperature, consciousness";

/// Decodes [`READING_COLUMNS`] starting at column `at`.
pub(crate) fn reading_row(r: &rusqlite::Row<'_>, at: usize) -> rusqlite::Result<Reading> {
    let id: Vec<u8> = r.get(at)?;
    if id.len() != 32 {
        return Err(rusqlite::Error::InvalidColumnType(at, "device_id".into(), rusqlite::types::Type::Blob));
    }
    Ok(Reading {
        deviceId: B256::from_slice(&id),
        seq: r.get::<_, i64>(at + 1)? as u64,
        timestamp: r.get::<_, i64>(at + 2)? as u64,
        heartRate: r.get(at + 3)?,
        respRate: r.get(at + 4)?,
        spo2: r.get(at + 5)?,
        systolic: r.get(at + 6)?,
        diastolic: r.get(at + 7)?,
        temperature: r.get(at + 8)?,
        consciousness: r.get(at + 9)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use healthsense_abi::rules::{ids, merkle};

    fn binding() -> Binding {
        Binding { chain_id: 31_337, contract: Address::repeat_byte(1), hub: Address::repeat_byte(2) }
    }

    fn reading(serial: &str, seq: u64) -> NewReading {
        NewReading {
            serial: serial.into(),
            reading: Reading {
                deviceId: ids::device_id(serial),
                seq,
                timestamp: 1_000 + seq,
                heartRate: 70 + seq as u16 % 10,
                ..Default::default()
            },
            signature: [7u8; 65],
            received_ms: 5_000 + seq,
        }
    }

    #[test]
    fn the_device_cache_is_saved_by_changes_and_read_back_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hub.sqlite");
        let mut store = Store::open(&path, binding()).unwrap();
        assert_eq!(store.device_cache().unwrap(), None, "nothing saved yet");
        let record = |b: u8, status| DeviceRecord { id: B256::repeat_byte(b), signer: Address::repeat_byte(b), ward: B256::repeat_byte(9), status };
        let (a, b) = (record(1, DeviceStatus::Active), record(2, DeviceStatus::Pending));
        store.save_device_cache(10, B256::repeat_byte(0xa), &[(a.id, Some(a)), (b.id, Some(b))]).unwrap();
        // b was activated, a forgotten, c added.
        let b2 = DeviceRecord { status: DeviceStatus::Active, ..b };
        let c = record(3, DeviceStatus::Revoked);
        store.save_device_cache(12, B256::repeat_byte(0xc), &[(a.id, None), (b.id, Some(b2)), (c.id, Some(c))]).unwrap();
        drop(store);
        let mut saved = Store::open(&path, binding()).unwrap().device_cache().unwrap().unwrap();
        saved.records.sort_by_key(|r| r.id);
        assert_eq!(saved, DeviceCache { block: 12, hash: B256::repeat_byte(0xc), records: vec![b2, c] });
        // A status the contract has no name for is corruption, not a device.
        let mut store = Store::open(&path, binding()).unwrap();
        store.conn.execute("UPDATE device_cache SET status = 9", []).unwrap();
        assert!(matches!(store.device_cache(), Err(StoreError::Corrupt(_))));
        // So is a key of the wrong length or type, whichever column holds it.
        for (column, value) in [("signer", "x'0102'"), ("ward", "'ward'"), ("device_id", "x'01'")] {
            store.conn.execute("UPDATE device_cache SET status = 1", []).unwrap();
            store.conn.execute(&format!("UPDATE device_cache SET {column} = {value} WHERE device_id = ?1"), [c.id.as_slice()]).unwrap();
            let read = store.device_cache();
            assert!(matches!(&read, Err(StoreError::Corrupt(why)) if why.contains(column.replace('_', " ").as_str())), "{column}: {read:?}");
            store.save_device_cache(12, B256::repeat_byte(0xc), &[(c.id, Some(c))]).unwrap();
            store.conn.execute("DELETE FROM device_cache WHERE length(device_id) != 32", []).unwrap();
        }
    }

    /// The start's read of each device's last reading, from the saved rows
    /// and the readings after their mark, against a walk of every reading:
    /// before any save, after one, with readings since (a crash before the
    /// next save), in more devices than one write transaction holds.
    #[test]
    fn each_devices_last_reading_from_the_saved_rows_and_those_after_matches_a_full_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hub.sqlite");
        let mut store = Store::open(&path, binding()).unwrap();
        let full = |s: &Store| scan_last(&s.conn).unwrap();
        let mark = |s: &Store| s.meta(LAST_UPTO).unwrap();
        assert!(store.last_readings().unwrap().is_empty());
        assert_eq!(store.save_last_readings().unwrap(), 0, "an empty store");
        assert_eq!(mark(&store).as_deref(), Some("0"));
        // More devices than one save transaction; some batched, some not.
        let devices = LAST_SAVE_CHUNK + 3;
        let serial = |d: usize| format!("HS-{d}");
        let first: Vec<_> = (1..=2).flat_map(|seq| (0..devices).map(move |d| reading(&serial(d), seq))).collect();
        store.commit(&first, &[]).unwrap();
        store.cut_batch(1, devices, Mode::Hash, 0).unwrap().unwrap();
        let before = store.last_readings().unwrap();
        assert_eq!(before.len(), devices);
        assert_eq!(before, full(&store));
        assert_eq!(store.save_last_readings().unwrap(), devices);
        let rows: i64 = store.conn.query_row("SELECT MAX(id) FROM readings", [], |r| r.get(0)).unwrap();
        assert_eq!(mark(&store), Some(rows.to_string()), "the mark is the last row read");
        assert_eq!(store.save_last_readings().unwrap(), 0, "nothing stored since");
        assert_eq!(store.last_readings().unwrap(), before, "from the saved rows alone");
        // Readings after the mark: a device's next, a new device, and a lower
        // number stored last under a higher row (the higher number still wins).
        store.commit(&[reading("HS-3", 3), reading("HS-NEW", 1)], &[]).unwrap();
        store.commit(&[NewReading { signature: [8; 65], ..reading("HS-5", 1) }], &[]).unwrap();
        drop(store);
        let store = Store::open(&path, binding()).unwrap();
        let after = store.last_readings().unwrap();
        assert_eq!(after, full(&store));
        assert_eq!(after.len(), devices + 1);
        assert_eq!(after[&ids::device_id("HS-3")].seq, 3);
        assert_eq!(after[&ids::device_id("HS-5")].seq, 2);
        assert_eq!(mark(&store), Some(rows.to_string()), "read from the rows after the mark, not saved");
        // A second connection saving too: each device once, the mark at the end.
        let other = Store::open(&path, binding()).unwrap();
        assert_eq!(other.save_last_readings().unwrap(), 3);
        assert_eq!(store.save_last_readings().unwrap(), 0);
        let saved: i64 = store.conn.query_row("SELECT COUNT(*) FROM device_last", [], |r| r.get(0)).unwrap();
        assert_eq!(saved as usize, devices + 1);
        assert_eq!(store.last_readings().unwrap(), after);
        store.set_meta(LAST_UPTO, "later").unwrap();
        assert!(matches!(store.last_readings(), Err(StoreError::Corrupt(_))));
        assert!(matches!(store.save_last_readings(), Err(StoreError::Corrupt(_))), "never guessed over");
    }

    #[test]
    fn batches_cover_each_reading_once_with_valid_proofs() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hub.sqlite");
        let mut store = Store::open(&path, binding()).unwrap();
        let batch: Vec<_> = (1..=10).map(|s| reading("HS-1", s)).chain((1..=5).map(|s| reading("HS-2", s))).collect();
        store.commit(&batch, &[]).unwrap();
        let last_seqs = |s: &Store| -> HashMap<B256, u64> { s.last_readings().unwrap().into_iter().map(|(id, l)| (id, l.seq)).collect() };
        assert_eq!(last_seqs(&store)[&ids::device_id("HS-1")], 10);
        let id = ids::device_id("HS-2");
        assert_eq!(store.reading(id, 4).unwrap().unwrap().reading.seq, 4, "found before its batch is cut");
        let b1 = store.cut_batch(1, 8, Mode::Hash, 0).unwrap().unwrap();
        // HS-1's readings 1-8 are batched, 9 and 10 not: both halves count.
        let expect = HashMap::from([(ids::device_id("HS-1"), 10), (id, 5)]);
        assert_eq!(last_seqs(&store), expect);
        let b2 = store.cut_batch(2, 8, Mode::Hash, 0).unwrap().unwrap();
        assert_eq!(last_seqs(&store), expect, "all batched");
        assert_eq!((b1.leaf_count, b2.leaf_count), (8, 7));
        assert!(store.cut_batch(3, 8, Mode::Hash, 0).unwrap().is_none());
        for b in [&b1, &b2] {
            let rows = store.batch_readings(b.seq).unwrap();
            assert_eq!(rows.len(), b.leaf_count as usize);
            for row in rows {
                assert!(merkle::verify(&row.proof, b.root, reading_leaf(&row.reading)));
            }
        }
        assert_eq!(store.reading(id, 4).unwrap().unwrap().batch_seq, Some(2), "and after");
        assert_eq!(store.device_readings(id).unwrap().iter().map(|r| r.reading.seq).collect::<Vec<_>>(), [1, 2, 3, 4, 5]);
        store.mark_anchored(1, Some(B256::repeat_byte(3)), 9, 100, 1).unwrap();
        let c = store.counts().unwrap();
        assert_eq!((c.readings, c.anchored_readings, c.unbatched, c.batches_anchored, c.batches_pending), (15, 8, 0, 1, 1));
        drop(store);
        // Reopening for another hub is refused.
        let other = Binding { hub: Address::repeat_byte(9), ..binding() };
        assert!(matches!(Store::open(&path, other), Err(StoreError::WrongDeployment { .. })));
        let store = Store::open(&path, binding()).unwrap();
        assert_eq!(store.pending_batches().unwrap(), vec![b2]);
        assert_eq!(store.next_batch_seq().unwrap(), 3);
    }

    #[test]
    fn a_cut_interrupted_by_a_crash_is_finished_with_its_root() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hub.sqlite");
        let mut store = Store::open(&path, binding()).unwrap();
        let n = 2 * CUT_CHUNK as u64 + 7;
        let first: Vec<_> = (1..=n).map(|s| reading("HS-1", s)).collect();
        store.commit(&first, &[]).unwrap();
        // The crash: one chunk of three written.
        let cut = store.cut(1, n as usize, Mode::Hash, 0, 1).unwrap().unwrap();
        // Chunks before the last commit without an fsync; every commit after
        // the cut, stopped part-way or not, is durable again.
        let sync = |s: &Store| s.conn.query_row("PRAGMA synchronous", [], |r| r.get::<_, i64>(0)).unwrap();
        assert_eq!(sync(&store), 2, "synchronous=FULL after an interrupted cut");
        drop(store);
        let mut store = Store::open(&path, binding()).unwrap();
        let c = store.counts().unwrap();
        assert_eq!((c.unbatched, c.batches_pending), (n - CUT_CHUNK as u64, 0), "half cut, not anchorable");
        assert_eq!(store.batches().unwrap()[0].state, "cutting");
        // Readings that arrived after the crash stay out of it.
        store.commit(&[reading("HS-2", 1), reading("HS-2", 2)], &[]).unwrap();
        let finished = store.finish_cuts().unwrap();
        assert_eq!(finished, vec![Batch { state: "pending".into(), ..cut.clone() }]);
        assert_eq!(store.pending_batches().unwrap(), finished);
        let rows = store.batch_readings(1).unwrap();
        assert_eq!(rows.len() as u64, n);
        assert!(rows.iter().all(|r| r.serial == "HS-1" && merkle::verify(&r.proof, cut.root, reading_leaf(&r.reading))));
        assert_eq!(store.counts().unwrap().unbatched, 2);
        assert!(store.finish_cuts().unwrap().is_empty());
        let next = store.cut_batch(2, 100, Mode::Hash, 0).unwrap().unwrap();
        assert_eq!(next.leaf_count, 2);
        assert_eq!(sync(&store), 2, "synchronous=FULL after a whole cut");
    }

    #[test]
    fn a_cut_interrupted_in_a_store_rolled_up_per_chunk_counts_each_reading_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hub.sqlite");
        let mut store = Store::open(&path, binding()).unwrap();
        let n = 2 * CUT_CHUNK as u64 + 7;
        store.commit(&(1..=n).map(|s| reading("HS-1", s)).collect::<Vec<_>>(), &[]).unwrap();
        store.cut(1, n as usize, Mode::Hash, 0, 1).unwrap().unwrap();
        // A store from before the watermark: its first chunk went into the
        // rollup with the chunk, and the watermark starts at the cut batch.
        store.conn.execute("DELETE FROM meta WHERE key IN ('trend_rollup', 'trend_rolled_to')", []).unwrap();
        drop(store);
        let mut store = Store::open(&path, binding()).unwrap();
        assert_eq!(crate::trend::rolled_to(&store.conn).unwrap(), 1);
        let total = |s: &Store| {
            crate::trend::trend(s, ids::device_id("HS-1"), 0, u64::MAX / 2, u64::MAX / 4, crate::trend::Source::Rollup)
                .unwrap()
                .values()
                .map(|b| b.n)
                .sum::<u64>()
        };
        assert_eq!(total(&store), n, "stamped readings from the rollup, the rest raw");
        store.finish_cuts().unwrap();
        assert_eq!(total(&store), n, "the rest of the batch into the rollup as it is stamped, once");
        store.commit(&[reading("HS-1", n + 1), reading("HS-1", n + 2)], &[]).unwrap();
        store.cut_batch(2, 100, Mode::Hash, 0).unwrap().unwrap();
        assert_eq!(crate::trend::rolled_to(&store.conn).unwrap(), 1, "the next batch waits in memory");
        assert_eq!(total(&store), n + 2);
        store.write_rollup();
        assert_eq!(crate::trend::rolled_to(&store.conn).unwrap(), 2);
        assert_eq!(total(&store), n + 2);
    }

    #[test]
    fn an_interrupted_cut_whose_readings_changed_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(&dir.path().join("hub.sqlite"), binding()).unwrap();
        let n = CUT_CHUNK as u64 + 1;
        store.commit(&(1..=n).map(|s| reading("HS-1", s)).collect::<Vec<_>>(), &[]).unwrap();
        store.cut(1, n as usize, Mode::Hash, 0, 1).unwrap();
        store.conn.execute("UPDATE readings SET heart_rate = 200 WHERE seq = ?1", [n as i64]).unwrap();
        let err = store.finish_cuts().unwrap_err().to_string();
        assert!(err.contains("batch 1 was cut from"), "{err}");
        assert_eq!(store.pending_batches().unwrap(), vec![], "never anchorable");
    }
}

