//! `healthsense-bench archive`: a 7-day stay at 1 Hz (604,800 readings)
//! bundled, compressed, encrypted, pinned to the embedded IPFS node and its
//! CID written on chain, timed from the discharge to the CID on chain by the
//! hub's own archiver (target <= 8 s, issue 22), then `archive verify`'s
//! path (fetch, decrypt, verify; target <= 30 s). Each figure is printed
//! with its target and a baseline of the same run: plain JSON lines of the
//! readings for the archive, the same signatures verified with plain k256
//! on every core for `archive verify`. Setup (signing, storing and
//! anchoring the readings) is not timed.

use std::sync::Arc;
use std::time::{Duration, Instant};

use alloy::primitives::{Bytes, B256};
use alloy::providers::{Provider, ProviderBuilder};
use alloy::signers::local::PrivateKeySigner;
use alloy::signers::SignerSync;
use anyhow::{ensure, Context, Result};
use healthsense_abi::bindings::HealthSense as H;
use healthsense_abi::rules::{billing, eip712, ids, status::Category};
use healthsense_cli::{archive, artifact, deploy, tools};
use healthsense_oracle::archive::job::Archiver;
use healthsense_oracle::archive::seal::{self, ArchiveScope, Secret};
use healthsense_oracle::archive::State;
use healthsense_oracle::chain::Chain;
use healthsense_oracle::store::{Binding, Mode, NewReading, Store};
use rayon::prelude::*;
use serde_json::json;

/// Runs the archive benchmark with `readings` readings at 1 Hz.
pub async fn run(readings: u64, json_out: bool) -> Result<()> {
    let root = tools::project_root()?;
    let work = tempfile::tempdir()?;
    let anvil = crate::start_anvil(&root)?;
    let provider = ProviderBuilder::new().connect_http(anvil.endpoint_url());
    let acct = anvil.addresses().to_vec();
    let (admin, hub, doctor) = (acct[0], acct[1], acct[2]);
    let d = deploy::deploy_evm(&provider, anvil.endpoint().as_str(), admin, admin, artifact::load_or_build(&root)?).await?;
    let c = healthsense_cli::admin::Client::new(provider.clone(), d.clone(), admin);
    c.send_from(admin, H::grantRoleCall { role: ids::HUB_ROLE, account: hub }).await?;
    c.send_from(admin, H::grantRoleCall { role: ids::DOCTOR_ROLE, account: doctor }).await?;
    let ward = ids::ward_id("bench");
    c.send_from(admin, H::setTariffCall { ward, dailyRate: 45_000 }).await?;
    let device_key = PrivateKeySigner::random();
    let serial = "BENCH-STAY-7D";
    let device = ids::device_id(serial);
    let patient = ids::device_id("bench-stay-7d");
    c.send_from(admin, H::provisionDeviceCall { deviceId: device, signer: device_key.address(), ward }).await?;
    c.send_from(hub, H::activateDeviceCall { deviceId: device }).await?;
    c.send_from(doctor, H::admitPatientCall { patientId: patient, deviceId: device }).await?;
    for (code, cat, q, price) in [("99223", Category::Consultation, 7u32, 21_000u64), ("J1100", Category::Medication, 42, 1_250), ("80053", Category::Laboratory, 7, 4_800)] {
        c.send_from(doctor, H::addChargeCall { patientId: patient, code: ids::charge_code(code).unwrap_or_default(), category: cat as u8, quantity: q, unitPrice: price }).await?;
    }
    let admitted = c.view(H::getPatientCall { patientId: patient }).await?.admittedAt;

    eprintln!("signing {readings} readings (one per second over {:.1} days) ...", readings as f64 / 86_400.0);
    let domain = eip712::domain_separator(d.chain_id, d.address);
    let rows: Vec<NewReading> = (0..readings)
        .into_par_iter()
        .map(|i| {
            let mut r = healthsense_cli::simulate::steady_reading(serial, i + 1, i);
            r.timestamp = admitted * 1_000 + i * 1_000;
            let sig = device_key.sign_hash_sync(&eip712::reading_digest(domain, &r)).map(|s| s.as_bytes()).unwrap_or([0; 65]);
            NewReading { serial: serial.into(), reading: r, signature: sig, received_ms: admitted * 1_000 + i * 1_000 }
        })
        .collect();
    let binding = Binding { chain_id: d.chain_id, contract: d.address, hub };
    let store_path = work.path().join("hub.sqlite");
    let mut store = Store::open(&store_path, binding)?;
    for chunk in rows.chunks(50_000) {
        store.commit(chunk, &[])?;
    }
    drop(rows);
    eprintln!("anchoring them in batches of 2,000 ...");
    let hub_key: PrivateKeySigner = anvil.keys()[1].clone().into();
    let chain = Chain::connect(anvil.endpoint().as_str(), d.address, hub_key, Some(d.chain_id)).await?;
    let mut seq = store.next_batch_seq()?;
    while let Some(batch) = store.cut_batch(seq, 2_000, Mode::Hash, 0)? {
        let mined = chain.anchor(batch.seq, batch.root, batch.leaf_count).await?;
        store.mark_anchored(batch.seq, Some(mined.tx), mined.block, mined.gas_used, 0)?;
        seq += 1;
    }
    // The stay ends seven days (of readings) after admission.
    provider.raw_request::<_, ()>("evm_setNextBlockTimestamp".into(), (admitted + readings.max(1) - 1 + billing::DAY / 24,)).await?;

    let ipfs = healthsense_ipfs_node::start(healthsense_ipfs_node::NodeConfig::new(work.path().join("ipfs"), ([127, 0, 0, 1], 0).into()))
    .await?;
    let master = Secret::random();
    let archiver = Archiver {
        chain: chain.clone(),
        store: Store::open(&store_path, binding)?,
        ipfs: healthsense_ipfs::Ipfs::new(&ipfs.api_url())?,
        master: Some(master.clone()),
        dir: work.path().join("archives"),
        settle: Duration::ZERO,
        max_backoff: Duration::from_secs(1),
        currency: "EUR".into(),
        hospital: "Bench hospital".into(),
        chart_every: Duration::from_millis(healthsense_oracle::archive::fhir::DEFAULT_CHART_MS),
        ward,
        wake_anchor: Arc::new(tokio::sync::Notify::new()),
        wake: Arc::new(tokio::sync::Notify::new()),
        metrics: Default::default(),
    };
    let wake = archiver.wake.clone();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(archiver.run(stop_rx));

    eprintln!("discharging and archiving ...");
    let started = Instant::now();
    store.init_archive()?;
    store.request_archive(patient, device, State::Discharging, 1, healthsense_oracle::ingest::now_ms())?;
    wake.notify_one();
    // When each state was first seen (polled every 20 ms): where the time goes.
    let mut seen: Vec<(State, f64)> = Vec::new();
    let job = loop {
        let job = store.archive_job(patient)?.context("job vanished")?;
        ensure!(job.state != State::Failed, "archive failed: {:?}", job.last_error);
        if seen.last().is_none_or(|(s, _)| *s != job.state) {
            seen.push((job.state, started.elapsed().as_secs_f64()));
        }
        if job.state == State::Archived {
            break job;
        }
        ensure!(started.elapsed() < Duration::from_secs(600), "no archive after 10 minutes: {:?}", job);
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let total = started.elapsed().as_secs_f64();
    let _ = stop_tx.send(true);
    let _ = task.await;
    let archive_info = c.view(H::getArchiveCall { patientId: patient }).await?;
    ensure!(Some(archive_info.cid.clone()) == job.cid, "the chain holds another CID");

    // Phase split and the read side, measured again on the same data.
    let scope = ArchiveScope { chain_id: d.chain_id, contract: d.address, patient };
    let salt = store.existing_archive_salt(patient)?.context("no salt")?;
    let key = seal::patient_key(&master, &salt, &scope);
    let t = Instant::now();
    let sealed = archive::fetch_sealed(&ipfs.api_url(), &archive_info.cid).await?;
    let fetch = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let bundle = archive::open_sealed(&key, &scope, &sealed)?;
    let open = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let report = archive::verify_bundle(&provider, d.address, patient, &bundle).await?;
    let verify = t.elapsed().as_secs_f64();
    ensure!(report.verified() && report.readings as u64 == readings, "verification: {:?}", &report.tampered[..report.tampered.len().min(3)]);
    // Baseline in the same run: the bare serialisation of the same readings
    // as compact JSON lines (no FHIR, no compression, no encryption).
    let all = store.device_readings(device)?;
    let t = Instant::now();
    let mut plain = Vec::with_capacity(bundle.len() / 4);
    for r in &all {
        serde_json::to_writer(&mut plain, &json!([r.reading.seq, r.reading.timestamp, r.reading.heartRate, r.reading.respRate, r.reading.spo2,
            r.reading.systolic, r.reading.diastolic, r.reading.temperature, r.reading.consciousness, Bytes::from(r.signature.clone()), r.proof]))?;
        plain.push(b'\n');
    }
    let baseline = t.elapsed().as_secs_f64();
    // Baseline for `archive verify`, same run: the same signatures verified
    // with plain k256 (`verify_prehash`, no recovery) on every core.
    let vk = *device_key.credential().verifying_key();
    let t = Instant::now();
    let raw_ok = all
        .par_iter()
        .filter(|r| {
            let digest = eip712::reading_digest(domain, &r.reading);
            k256::ecdsa::Signature::from_slice(&r.signature[..64.min(r.signature.len())])
                .is_ok_and(|sig| k256::ecdsa::signature::hazmat::PrehashVerifier::verify_prehash(&vk, digest.as_slice(), &sig).is_ok())
        })
        .count();
    let raw_verify = t.elapsed().as_secs_f64();
    ensure!(raw_ok == all.len(), "the raw baseline rejected {} signatures", all.len() - raw_ok);
    ipfs.shutdown().await;
    let archive_verify = fetch + open + verify;
    let sealed_mb = job.blob_bytes.unwrap_or_default() as f64 / 1e6;
    let phase = |to: State| seen.iter().find(|(s, _)| *s == to).map(|(_, at)| *at);
    let phases: Vec<serde_json::Value> = seen
        .windows(2)
        .map(|w| json!({ "from": w[0].0.as_str(), "to": w[1].0.as_str(), "s": w[1].1 - w[0].1 }))
        .collect();
    let figure = |metric: &str, value: f64, unit: &str, target: f64, baseline: (&str, f64)| {
        json!({ "metric": metric, "value": value, "unit": unit, "target": format!("<= {target}"), "met": value <= target,
            "baseline": { "metric": baseline.0, "value": baseline.1 } })
    };
    let figures = json!({
        "mode": "archive",
        "readings": readings,
        "cid": archive_info.cid,
        "record_hash": B256::from(archive_info.recordHash),
        "figures": [
            figure("discharge_to_cid_on_chain_s", total, "s", 8.0, ("plain_json_lines_s", baseline)),
            figure("archive_verify_s", archive_verify, "s", 30.0, ("raw_k256_verify_s_all_cores", raw_verify)),
            figure("sealed_archive_mb", sealed_mb, "MB", 150.0, ("fhir_bundle_mb", bundle.len() as f64 / 1e6)),
        ],
        "phases": {
            "discharge_to_cid": phases,
            "fetch_s": fetch,
            "decrypt_decompress_s": open,
            "verify_s": verify,
            "plain_json_lines_bytes": plain.len(),
        },
    });
    if json_out {
        println!("{figures:#}");
    } else {
        println!("archive of a {:.1}-day stay at 1 Hz ({readings} readings)", readings as f64 / 86_400.0);
        println!("  discharge -> CID on chain   {total:.1} s   (target <= 8 s)");
        let at = |s| phase(s).map_or("-".to_string(), |v| format!("{v:.1}"));
        println!("    discharged at {} s, sealed at {} s, pinned at {} s, CID on chain at {total:.1} s",
            at(State::Discharged), at(State::Sealed), at(State::Pinned));
        println!("  FHIR bundle                 {:.0} MB JSON -> {sealed_mb:.1} MB sealed ({:.0}x; sealed target <= 150 MB)", bundle.len() as f64 / 1e6,
            bundle.len() as f64 / job.blob_bytes.unwrap_or(1) as f64);
        println!("  baseline (plain JSON lines) {baseline:.1} s for {:.0} MB; archive/baseline {:.1}x", plain.len() as f64 / 1e6, total / baseline);
        println!("  fetch {fetch:.1} s, decrypt+decompress {open:.1} s, verify every proof and signature {verify:.1} s");
        println!("  archive verify of the whole stay (fetch + decrypt + verify) {archive_verify:.1} s   (target <= 30 s)");
        println!("  baseline: the same {} signatures verified with plain k256 on all cores {raw_verify:.1} s; archive verify/baseline {:.2}x",
            all.len(), archive_verify / raw_verify);
        println!("  CID {}", archive_info.cid);
    }
    Ok(())
}
