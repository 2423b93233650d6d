//! Discharge -> bill -> archive, as a persisted, resumable state machine
//! (DESIGN.md "Reliability invariants"): each patient's job moves
//!
//! `discharging` (the hub sends `discharge`) -> `discharged` (bill read back
//! from the `PatientDischarged` event) -> `sealed` (FHIR bundle built from
//! the anchored readings, compressed, encrypted, written to disk) ->
//! `pinned` (added and pinned to IPFS) -> `archived` (`setArchive` mined),
//!
//! one step at a time, each committed before the next, so a crash or an
//! unreachable chain or IPFS node delays a job and never loses it.
//! [`fhir`] is the record format, [`seal`] the encryption, [`verify`] the
//! check against the chain used by `healthsense archive verify`.

pub mod fhir;
pub mod job;
pub mod seal;
pub mod sigs;
pub mod verify;

use alloy::primitives::{B256, U256};
use rusqlite::{params, OptionalExtension};

use crate::store::{Result, Store, StoreError};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS archives (
    patient_id BLOB PRIMARY KEY,
    device_id BLOB NOT NULL,
    state TEXT NOT NULL,
    discharge_code INTEGER NOT NULL,
    requested_ms INTEGER NOT NULL,
    discharge_tx BLOB,
    admitted_at INTEGER, discharged_at INTEGER,
    total TEXT, covered TEXT, due TEXT, bed_days INTEGER,
    blob_path TEXT, record_hash BLOB, blob_bytes INTEGER, readings INTEGER,
    cid TEXT, archive_tx BLOB,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_ms INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    updated_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS archive_keys (
    patient_id BLOB PRIMARY KEY, salt BLOB, created_ms INTEGER NOT NULL, erased_ms INTEGER
);
";

/// Where a job is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// The hub owes the `discharge` transaction.
    Discharging,
    /// Discharged on chain; the bill is stored; the archive is not built yet.
    Discharged,
    /// Sealed archive written to disk.
    Sealed,
    /// Added and pinned to IPFS.
    Pinned,
    /// CID on chain.
    Archived,
    /// Stopped on an error retrying cannot fix (see `last_error`).
    Failed,
}

impl State {
    /// The name stored in the job table and shown by the CLI and the API.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Discharging => "discharging",
            State::Discharged => "discharged",
            State::Sealed => "sealed",
            State::Pinned => "pinned",
            State::Archived => "archived",
            State::Failed => "failed",
        }
    }

    fn parse(s: &str) -> Result<Self> {
        Ok(match s {
            "discharging" => State::Discharging,
            "discharged" => State::Discharged,
            "sealed" => State::Sealed,
            "pinned" => State::Pinned,
            "archived" => State::Archived,
            "failed" => State::Failed,
            other => return Err(StoreError::Corrupt(format!("archive state {other:?}"))),
        })
    }
}

/// The bill as read back from `PatientDischarged`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct StoredBill {
    /// Admission, seconds.
    pub admitted_at: u64,
    /// Discharge, seconds.
    pub discharged_at: u64,
    /// Total, minor units.
    pub total: U256,
    /// Insurer's share.
    pub covered: U256,
    /// Patient's share.
    pub due: U256,
    /// Bed days.
    pub bed_days: u64,
}

/// One patient's archive job.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Job {
    /// Patient id.
    pub patient: B256,
    /// Their device.
    pub device: B256,
    /// Where it is.
    pub state: State,
    /// Discharge code (0: a doctor discharged).
    pub discharge_code: u16,
    /// When the hub learned of the discharge (its clock), ms.
    pub requested_ms: u64,
    /// The bill, once discharged.
    pub bill: Option<StoredBill>,
    /// The sealed file, once sealed.
    pub blob_path: Option<String>,
    /// `keccak256` of the bundle JSON.
    pub record_hash: Option<B256>,
    /// Sealed size, bytes.
    pub blob_bytes: Option<u64>,
    /// Readings in the archive.
    pub readings: Option<u64>,
    /// IPFS CID, once pinned.
    pub cid: Option<String>,
    /// `setArchive` transaction.
    pub archive_tx: Option<B256>,
    /// Failed attempts of the current step.
    pub attempts: u32,
    /// The last error, if any.
    pub last_error: Option<String>,
}

fn opt_b256(v: Option<Vec<u8>>) -> Option<B256> {
    v.filter(|v| v.len() == 32).map(|v| B256::from_slice(&v))
}

fn u256(v: Option<String>) -> Option<U256> {
    v.and_then(|s| s.parse().ok())
}

const JOB_COLUMNS: &str = "patient_id, device_id, state, discharge_code, admitted_at, discharged_at, total, covered, due, \
     bed_days, blob_path, record_hash, blob_bytes, readings, cid, archive_tx, attempts, last_error, requested_ms";

fn job_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<(Job, String)> {
    let bill = match (r.get::<_, Option<i64>>(4)?, r.get::<_, Option<i64>>(5)?, u256(r.get(6)?), u256(r.get(7)?), u256(r.get(8)?)) {
        (Some(a), Some(d), Some(total), Some(covered), Some(due)) => Some(StoredBill {
            admitted_at: a as u64,
            discharged_at: d as u64,
            total,
            covered,
            due,
            bed_days: r.get::<_, Option<i64>>(9)?.unwrap_or_default() as u64,
        }),
        _ => None,
    };
    Ok((
        Job {
            patient: opt_b256(r.get(0)?).unwrap_or_default(),
            device: opt_b256(r.get(1)?).unwrap_or_default(),
            state: State::Failed,
            discharge_code: r.get(3)?,
            requested_ms: r.get::<_, i64>(18)? as u64,
            bill,
            blob_path: r.get(10)?,
            record_hash: opt_b256(r.get(11)?),
            blob_bytes: r.get::<_, Option<i64>>(12)?.map(|v| v as u64),
            readings: r.get::<_, Option<i64>>(13)?.map(|v| v as u64),
            cid: r.get(14)?,
            archive_tx: opt_b256(r.get(15)?),
            attempts: r.get(16)?,
            last_error: r.get(17)?,
        },
        r.get(2)?,
    ))
}

impl Store {
    /// Creates the archive tables (idempotent).
    pub fn init_archive(&self) -> Result<()> {
        Ok(self.conn().execute_batch(SCHEMA)?)
    }

    /// Records a discharge request or an observed discharge; a patient
    /// already known keeps its job (the first word wins). Returns whether a
    /// job was created.
    pub fn request_archive(&self, patient: B256, device: B256, state: State, code: u16, now_ms: u64) -> Result<bool> {
        let n = self.conn().execute(
            "INSERT OR IGNORE INTO archives (patient_id, device_id, state, discharge_code, requested_ms, updated_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?5)",
            params![patient.as_slice(), device.as_slice(), state.as_str(), code, now_ms as i64],
        )?;
        Ok(n == 1)
    }

    /// One job.
    pub fn archive_job(&self, patient: B256) -> Result<Option<Job>> {
        let row = self
            .conn()
            .query_row(&format!("SELECT {JOB_COLUMNS} FROM archives WHERE patient_id = ?1"), [patient.as_slice()], job_row)
            .optional()?;
        row.map(|(mut j, s)| {
            j.state = State::parse(&s)?;
            Ok(j)
        })
        .transpose()
    }

    /// All jobs, oldest first.
    pub fn archive_jobs(&self) -> Result<Vec<Job>> {
        let mut stmt = self.conn().prepare(&format!("SELECT {JOB_COLUMNS} FROM archives ORDER BY requested_ms"))?;
        let rows = stmt.query_map([], job_row)?;
        let mut out = Vec::new();
        for row in rows {
            let (mut j, s) = row?;
            j.state = State::parse(&s)?;
            out.push(j);
        }
        Ok(out)
    }

    /// Jobs due for their next step at `now_ms`.
    pub fn due_archive_jobs(&self, now_ms: u64) -> Result<Vec<Job>> {
        Ok(self
            .archive_jobs()?
            .into_iter()
            .filter(|j| !matches!(j.state, State::Archived | State::Failed))
            .filter(|j| self.next_attempt(j.patient).map(|t| t <= now_ms).unwrap_or(true))
            .collect())
    }

    fn next_attempt(&self, patient: B256) -> Result<u64> {
        let t: i64 = self.conn().query_row(
            "SELECT next_attempt_ms FROM archives WHERE patient_id = ?1",
            [patient.as_slice()],
            |r| r.get(0),
        )?;
        Ok(t as u64)
    }

    /// Stores the bill and moves to `discharged`.
    pub fn archive_discharged(&self, patient: B256, bill: &StoredBill, tx: Option<B256>, now_ms: u64) -> Result<()> {
        self.conn().execute(
            "UPDATE archives SET state = 'discharged', admitted_at = ?2, discharged_at = ?3, total = ?4, covered = ?5,
               due = ?6, bed_days = ?7, discharge_tx = COALESCE(?8, discharge_tx), attempts = 0, next_attempt_ms = 0,
               last_error = NULL, updated_ms = ?9
             WHERE patient_id = ?1 AND state IN ('discharging', 'discharged')",
            params![
                patient.as_slice(),
                bill.admitted_at as i64,
                bill.discharged_at as i64,
                bill.total.to_string(),
                bill.covered.to_string(),
                bill.due.to_string(),
                bill.bed_days as i64,
                tx.as_ref().map(|t| t.as_slice()),
                now_ms as i64
            ],
        )?;
        Ok(())
    }

    /// Records the sealed file and moves to `sealed`.
    pub fn archive_sealed(&self, patient: B256, path: &str, record_hash: B256, bytes: u64, readings: u64, now_ms: u64) -> Result<()> {
        self.conn().execute(
            "UPDATE archives SET state = 'sealed', blob_path = ?2, record_hash = ?3, blob_bytes = ?4, readings = ?5,
               attempts = 0, next_attempt_ms = 0, last_error = NULL, updated_ms = ?6 WHERE patient_id = ?1",
            params![patient.as_slice(), path, record_hash.as_slice(), bytes as i64, readings as i64, now_ms as i64],
        )?;
        Ok(())
    }

    /// Records the CID and moves to `pinned`.
    pub fn archive_pinned(&self, patient: B256, cid: &str, now_ms: u64) -> Result<()> {
        self.conn().execute(
            "UPDATE archives SET state = 'pinned', cid = ?2, attempts = 0, next_attempt_ms = 0, last_error = NULL,
               updated_ms = ?3 WHERE patient_id = ?1",
            params![patient.as_slice(), cid, now_ms as i64],
        )?;
        Ok(())
    }

    /// Records the `setArchive` transaction and moves to `archived`.
    pub fn archive_done(&self, patient: B256, tx: Option<B256>, now_ms: u64) -> Result<()> {
        self.conn().execute(
            "UPDATE archives SET state = 'archived', archive_tx = ?2, attempts = 0, next_attempt_ms = 0,
               last_error = NULL, updated_ms = ?3 WHERE patient_id = ?1",
            params![patient.as_slice(), tx.as_ref().map(|t| t.as_slice()), now_ms as i64],
        )?;
        Ok(())
    }

    /// Records a failed attempt: retried at `next_ms`, or never with `fail`.
    pub fn archive_error(&self, patient: B256, error: &str, next_ms: u64, fail: bool, now_ms: u64) -> Result<()> {
        self.conn().execute(
            "UPDATE archives SET attempts = attempts + 1, last_error = ?2, next_attempt_ms = ?3,
               state = CASE WHEN ?4 THEN 'failed' ELSE state END, updated_ms = ?5 WHERE patient_id = ?1",
            params![patient.as_slice(), error, next_ms as i64, fail, now_ms as i64],
        )?;
        Ok(())
    }

    /// The patient's key salt, created on first use; `None` once erased.
    pub fn archive_salt(&self, patient: B256, now_ms: u64) -> Result<Option<Vec<u8>>> {
        let mut salt = [0u8; 32];
        rand::RngCore::fill_bytes(&mut rand::rng(), &mut salt);
        self.conn().execute(
            "INSERT OR IGNORE INTO archive_keys (patient_id, salt, created_ms) VALUES (?1, ?2, ?3)",
            params![patient.as_slice(), salt.as_slice(), now_ms as i64],
        )?;
        self.existing_archive_salt(patient)
    }

    /// The patient's key salt without creating one.
    pub fn existing_archive_salt(&self, patient: B256) -> Result<Option<Vec<u8>>> {
        Ok(self
            .conn()
            .query_row("SELECT salt FROM archive_keys WHERE patient_id = ?1", [patient.as_slice()], |r| r.get::<_, Option<Vec<u8>>>(0))
            .optional()?
            .flatten())
    }

    /// Erases the patient's key salt: the archive can never be decrypted
    /// again (an erasure request). Returns whether a salt was erased.
    pub fn erase_archive_key(&self, patient: B256, now_ms: u64) -> Result<bool> {
        let n = self.conn().execute(
            "UPDATE archive_keys SET salt = NULL, erased_ms = ?2 WHERE patient_id = ?1 AND salt IS NOT NULL",
            params![patient.as_slice(), now_ms as i64],
        )?;
        Ok(n == 1)
    }

    /// The device's anchored readings in `[from_ms, to_ms]`, by sequence,
    /// and how many in that range are not anchored yet.
    pub fn stay_readings(&self, device: B256, from_ms: u64, to_ms: u64) -> Result<(Vec<crate::store::StoredReading>, u64)> {
        let waiting: i64 = self.conn().query_row(
            "SELECT COUNT(*) FROM readings r LEFT JOIN batches b ON b.seq = r.batch_seq
             WHERE r.device_id = ?1 AND r.ts BETWEEN ?2 AND ?3 AND (r.batch_seq IS NULL OR b.state != 'anchored')",
            params![device.as_slice(), from_ms as i64, to_ms as i64],
            |r| r.get(0),
        )?;
        let mut rows = self.device_readings(device)?;
        rows.retain(|r| (from_ms..=to_ms).contains(&r.reading.timestamp) && r.batch_seq.is_some());
        Ok((rows, waiting as u64))
    }
}
