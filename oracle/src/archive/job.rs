//! The archiver: drives every patient's job one step at a time (see the
//! module docs of [`crate::archive`]), with backoff on anything transient.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use alloy::primitives::B256;
use anyhow::{Context, Result};
use healthsense_abi::bindings::HealthSense as H;
use healthsense_abi::bindings::HealthSense::HealthSenseErrors as E;
use healthsense_abi::rules::status::PatientStatus;
use healthsense_ipfs::Ipfs;
use tokio::sync::{watch, Notify};

use super::fhir::{self, ArchivedReading, Stay};
use super::seal::{self, ArchiveScope, Secret};
use super::{Job, State, StoredBill};
use crate::chain::{Chain, ChainError};
use crate::ingest::now_ms;
use crate::metrics::Metrics;
use crate::store::Store;

/// How a step ended.
enum Step {
    /// Moved on; run the next step now.
    Advanced,
    /// Nothing to do yet (readings still being anchored); look again soon.
    Waiting(String),
    /// Try again after a backoff.
    Retry(String),
    /// Give up: retrying cannot fix it.
    Fail(String),
}

fn chain_step(e: ChainError) -> Step {
    match e.is_transient() {
        true => Step::Retry(e.to_string()),
        false => Step::Fail(e.to_string()),
    }
}

/// The archiver task.
pub struct Archiver {
    /// The contract, as the hub.
    pub chain: Chain,
    /// Its own store connection.
    pub store: Store,
    /// The Kubo RPC endpoint (embedded node, Kubo or IPFS Cluster).
    pub ipfs: Ipfs,
    /// The hospital master key; without it jobs wait in `discharged`.
    pub master: Option<Secret>,
    /// Where sealed archives wait for IPFS.
    pub dir: PathBuf,
    /// How long after discharge late (buffered) readings may still arrive.
    pub settle: Duration,
    /// Longest pause between retries.
    pub max_backoff: Duration,
    /// Display currency of the minor units.
    pub currency: String,
    /// The hospital's name (the Claim's provider).
    pub hospital: String,
    /// Clinical charting interval of the vital signs.
    pub chart_every: Duration,
    /// The hub's ward.
    pub ward: B256,
    /// Wakes the anchorer when a stay waits for its last batch.
    pub wake_anchor: Arc<Notify>,
    /// Wakes the archiver (a discharge arrived).
    pub wake: Arc<Notify>,
    /// Counters.
    pub metrics: Arc<Metrics>,
}

impl Archiver {
    /// Runs until shutdown, resuming whatever the store holds.
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) -> Result<()> {
        self.store.init_archive()?;
        std::fs::create_dir_all(&self.dir).with_context(|| format!("creating archive directory {}", self.dir.display()))?;
        let mut cursor = self.first_block(&mut shutdown).await;
        loop {
            if *shutdown.borrow() {
                return Ok(());
            }
            if let Some(from) = cursor {
                cursor = Some(self.observe_discharges(from).await);
            } else {
                cursor = self.chain.block_number().await.ok().map(|b| b + 1);
            }
            for job in self.store.due_archive_jobs(now_ms())? {
                self.advance(job).await?;
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                _ = self.wake.notified() => {}
                _ = shutdown.changed() => {}
            }
        }
    }

    async fn first_block(&mut self, shutdown: &mut watch::Receiver<bool>) -> Option<u64> {
        // Resume the scan for doctors' discharges where the last run stopped.
        if let Ok(Some(b)) = self.store.meta("archive_scan_block") {
            return b.parse().ok();
        }
        tokio::select! {
            b = self.chain.block_number() => b.ok().map(|b| b + 1),
            _ = shutdown.changed() => None,
        }
    }

    /// Discharges made by doctors (or by the hub) for this ward's patients
    /// become jobs; returns the next block to scan.
    async fn observe_discharges(&mut self, from: u64) -> u64 {
        let Ok(to) = self.chain.block_number().await else { return from };
        if to < from {
            return from;
        }
        let events = match self.chain.discharges(from, to, None).await {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(error = %e, "discharge events not read; retrying");
                return from;
            }
        };
        for ev in events {
            match self.chain.view(H::getPatientCall { patientId: ev.patientId }).await {
                Ok(p) if p.ward == self.ward => {
                    if let Err(e) = self.store.request_archive(ev.patientId, ev.deviceId, State::Discharged, 0, now_ms()) {
                        tracing::error!(error = %e, "discharge not recorded");
                        return from;
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "patient not read; retrying");
                    return from;
                }
            }
        }
        if let Err(e) = self.store.set_meta("archive_scan_block", &(to + 1).to_string()) {
            tracing::error!(error = %e, "scan position not stored");
        }
        to + 1
    }

    async fn advance(&mut self, mut job: Job) -> Result<()> {
        loop {
            let step = match job.state {
                State::Discharging => self.discharge(&job).await,
                State::Discharged => self.seal(&job).await,
                State::Sealed => self.pin(&job).await,
                State::Pinned => self.write_cid(&job).await,
                State::Archived | State::Failed => return Ok(()),
            };
            let now = now_ms();
            match step {
                Step::Advanced => {
                    let Some(next) = self.store.archive_job(job.patient)? else { return Ok(()) };
                    tracing::info!(patient = %job.patient, state = ?next.state, "archive step done");
                    if next.state == State::Archived {
                        self.metrics.archives_done.inc();
                        if let Some(path) = &next.blob_path {
                            let _ = std::fs::remove_file(path);
                        }
                    }
                    job = next;
                }
                Step::Waiting(why) => {
                    tracing::debug!(patient = %job.patient, why, "archive waiting");
                    self.store.archive_error(job.patient, &why, now + 1_000, false, now)?;
                    // Waiting is not a failure: keep the attempt count.
                    return Ok(());
                }
                Step::Retry(why) => {
                    let backoff = Duration::from_millis(500 * 2u64.saturating_pow(job.attempts.min(16))).min(self.max_backoff);
                    tracing::warn!(patient = %job.patient, state = ?job.state, error = %why, "archive step failed; retrying in {backoff:?}");
                    self.metrics.archive_retries.inc();
                    self.store.archive_error(job.patient, &why, now + backoff.as_millis() as u64, false, now)?;
                    return Ok(());
                }
                Step::Fail(why) => {
                    tracing::error!(patient = %job.patient, state = ?job.state, error = %why, "archive job failed");
                    self.store.archive_error(job.patient, &why, u64::MAX >> 1, true, now)?;
                    return Ok(());
                }
            }
        }
    }

    async fn discharge(&mut self, job: &Job) -> Step {
        let (tx, event) = match self.chain.discharge(job.patient).await {
            Ok((mined, event)) => (Some(mined.tx), event),
            // Already discharged (a doctor was quicker, or the hub crashed
            // after mining): the event is on chain either way.
            Err(ChainError::Reverted { error: E::InvalidPatientStatus(s), .. })
                if s.status == PatientStatus::Discharged as u8 || s.status == PatientStatus::Archived as u8 =>
            {
                match self.chain.block_number().await {
                    Ok(to) => match self.chain.discharges(0, to, Some(job.patient)).await {
                        Ok(mut evs) => (None, evs.pop()),
                        Err(e) => return chain_step(e),
                    },
                    Err(e) => return chain_step(e),
                }
            }
            Err(e) => return chain_step(e),
        };
        let Some(ev) = event else { return Step::Fail("discharge mined without a PatientDischarged event".into()) };
        self.record_bill(job, &ev, tx).await
    }

    async fn record_bill(&mut self, job: &Job, ev: &H::PatientDischarged, tx: Option<B256>) -> Step {
        let patient = match self.chain.view(H::getPatientCall { patientId: job.patient }).await {
            Ok(p) => p,
            Err(e) => return chain_step(e),
        };
        let bill = StoredBill {
            admitted_at: patient.admittedAt,
            discharged_at: ev.dischargedAt,
            total: ev.total,
            covered: ev.covered,
            due: ev.due,
            bed_days: ev.bedDays,
        };
        match self.store.archive_discharged(job.patient, &bill, tx, now_ms()) {
            Ok(()) => {
                tracing::info!(patient = %job.patient, total = %bill.total, covered = %bill.covered, due = %bill.due, "discharged; bill stored");
                Step::Advanced
            }
            Err(e) => Step::Retry(e.to_string()),
        }
    }

    async fn seal(&mut self, job: &Job) -> Step {
        let Some(bill) = job.bill else {
            // Observed from an event: read the bill back first.
            return match self.chain.block_number().await {
                Ok(to) => match self.chain.discharges(0, to, Some(job.patient)).await {
                    Ok(mut evs) => match evs.pop() {
                        Some(ev) => self.record_bill(job, &ev, None).await,
                        None => Step::Retry("PatientDischarged not found yet".into()),
                    },
                    Err(e) => chain_step(e),
                },
                Err(e) => chain_step(e),
            };
        };
        let Some(master) = self.master.clone() else {
            return Step::Waiting("no archive master key configured (archive.key_file or HEALTHSENSE_ARCHIVE_KEY)".into());
        };
        // Settle on the hub's clock: the chain's may run ahead (a dev chain
        // whose time was moved) and must not stall the archive.
        if now_ms() < job.requested_ms + self.settle.as_millis() as u64 {
            return Step::Waiting("letting late readings arrive".into());
        }
        let window = healthsense_abi::rules::reading::stay_window_ms(bill.admitted_at, bill.discharged_at);
        let (readings, waiting) = match self.store.stay_readings(job.device, *window.start(), *window.end()) {
            Ok(r) => r,
            Err(e) => return Step::Retry(e.to_string()),
        };
        if waiting > 0 {
            self.wake_anchor.notify_one();
            return Step::Waiting(format!("{waiting} readings of the stay are not anchored yet"));
        }
        tracing::info!(patient = %job.patient, readings = readings.len(), "sealing the stay");
        let stay = match self.stay(job, &bill).await {
            Ok(s) => s,
            Err(e) => return chain_step(e),
        };
        let salt = match self.store.archive_salt(job.patient, now_ms()) {
            Ok(Some(s)) => s,
            Ok(None) => return Step::Fail("the patient's archive key was erased".into()),
            Err(e) => return Step::Retry(e.to_string()),
        };
        let scope = ArchiveScope { chain_id: self.chain.chain_id(), contract: self.chain.contract(), patient: job.patient };
        let key = seal::patient_key(&master, &salt, &scope);
        let path = self.dir.join(format!("{}.hsa", alloy::hex::encode(job.patient)));
        let hub = self.chain.hub();
        let count = readings.len() as u64;
        let sealed = tokio::task::spawn_blocking(move || build(&stay, readings, hub, &key, &scope, &path).map(|(h, n)| (h, n, path)))
            .await
            .map_err(anyhow::Error::from)
            .and_then(|r| r);
        match sealed {
            Ok((hash, bytes, path)) => {
                match self.store.archive_sealed(job.patient, &path.display().to_string(), hash, bytes, count, now_ms()) {
                    Ok(()) => Step::Advanced,
                    Err(e) => Step::Retry(e.to_string()),
                }
            }
            Err(e) => Step::Retry(format!("{e:#}")),
        }
    }

    async fn stay(&mut self, job: &Job, bill: &StoredBill) -> Result<Stay, ChainError> {
        let p = self.chain.view(H::getPatientCall { patientId: job.patient }).await?;
        let mut charges = Vec::with_capacity(p.chargeCount as usize);
        for index in 0..p.chargeCount {
            charges.push(self.chain.view(H::getChargeCall { patientId: job.patient, index }).await?);
        }
        let policy = self.chain.view(H::getPolicyCall { patientId: job.patient }).await?;
        let on_chain_bill = self.chain.view(H::getBillCall { patientId: job.patient }).await?;
        let rules = self.chain.view(H::billingRulesCall {}).await?;
        let device = self.chain.device(job.device).await?;
        let serial = self.store.serial_of(job.device).ok().flatten();
        Ok(Stay {
            chain_id: self.chain.chain_id(),
            contract: self.chain.contract(),
            hub: self.chain.hub(),
            patient: job.patient,
            ward: p.ward,
            device: job.device,
            serial,
            signer: device.signer,
            admitted_at: bill.admitted_at,
            discharged_at: bill.discharged_at,
            discharge_code: job.discharge_code,
            charges,
            policy: (!policy.insurer.is_zero()).then_some(policy),
            bill: on_chain_bill,
            rules,
            currency: self.currency.clone(),
            hospital: self.hospital.clone(),
            chart_every_ms: self.chart_every.as_millis() as u64,
            created_ms: now_ms(),
        })
    }

    async fn pin(&mut self, job: &Job) -> Step {
        let Some(path) = &job.blob_path else { return Step::Fail("sealed without a file".into()) };
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) => return Step::Fail(format!("sealed archive {path} unreadable: {e}")),
        };
        match self.ipfs.add(bytes).await {
            Ok(cid) => match self.store.archive_pinned(job.patient, &cid, now_ms()) {
                Ok(()) => {
                    tracing::info!(patient = %job.patient, cid, "archive pinned");
                    Step::Advanced
                }
                Err(e) => Step::Retry(e.to_string()),
            },
            Err(e) if e.is_retryable() => Step::Retry(e.to_string()),
            Err(e) => Step::Fail(e.to_string()),
        }
    }

    async fn write_cid(&mut self, job: &Job) -> Step {
        let (Some(cid), Some(hash)) = (job.cid.clone(), job.record_hash) else {
            return Step::Fail("pinned without a CID".into());
        };
        let tx = match self.chain.send(H::setArchiveCall { patientId: job.patient, cid: cid.clone(), recordHash: hash }).await {
            Ok(m) => Some(m.tx),
            // A restart after the transaction was mined: the chain has it.
            Err(ChainError::Reverted { error: E::InvalidPatientStatus(s), .. }) if s.status == PatientStatus::Archived as u8 => {
                match self.chain.view(H::getArchiveCall { patientId: job.patient }).await {
                    Ok(a) if a.cid == cid => None,
                    Ok(a) => return Step::Fail(format!("the chain holds another archive for this patient: {}", a.cid)),
                    Err(e) => return chain_step(e),
                }
            }
            Err(e) => return chain_step(e),
        };
        match self.store.archive_done(job.patient, tx, now_ms()) {
            Ok(()) => {
                tracing::info!(patient = %job.patient, cid, "archive CID on chain");
                Step::Advanced
            }
            Err(e) => Step::Retry(e.to_string()),
        }
    }
}

/// Hashes what passes through (the bundle's record hash) on its way to zstd.
struct Tee<W> {
    hasher: alloy::primitives::Keccak256,
    inner: W,
}

impl<W: Write> Write for Tee<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Bundles, compresses, encrypts and durably writes one archive; returns
/// the record hash and the sealed size.
pub fn build(
    stay: &Stay,
    readings: Vec<crate::store::StoredReading>,
    hub: alloy::primitives::Address,
    key: &Secret,
    scope: &ArchiveScope,
    path: &Path,
) -> Result<(B256, u64)> {
    let archived = readings.into_iter().filter_map(|r| {
        let batch_seq = r.batch_seq?;
        Some(ArchivedReading {
            batch_id: healthsense_abi::rules::ids::batch_id(hub, batch_seq),
            reading: r.reading,
            signature: r.signature,
            batch_seq,
            proof: r.proof,
        })
    });
    // Buffered in front of the tee: the bundle arrives in small pieces (one
    // Observation, or serde tokens for the few other resources), and the
    // hasher and zstd both run faster on large chunks.
    let tee = Tee { hasher: alloy::primitives::Keccak256::new(), inner: seal::compressor(Vec::new())? };
    let mut out = std::io::BufWriter::with_capacity(1 << 20, tee);
    fhir::write_bundle(&mut out, stay, archived)?;
    let tee = out.into_inner().map_err(|e| e.into_error())?;
    let hash = tee.hasher.finalize();
    let compressed = tee.inner.finish()?;
    let sealed = seal::seal(key, scope, &compressed);
    write_durably(path, &sealed)?;
    Ok((hash, sealed.len() as u64))
}

fn write_durably(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}
