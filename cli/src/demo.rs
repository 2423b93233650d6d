//! `healthsense demo`: one ward's story on the embedded defaults, end to end.
//!
//! A throw-away anvil with the EVM edition, an embedded IPFS node and a ward
//! hub (the oracle, with its embedded MQTT broker) in this process; bedside
//! devices from the simulator sign vitals for admitted patients, doctors
//! charge, insurers set policies, the devices signal discharge, the contract
//! bills, the hub archives each stay to IPFS with its CID on chain, and every
//! archive is fetched, decrypted and verified against the chain.

use std::time::{Duration, Instant};

use alloy::node_bindings::Anvil;
use alloy::primitives::{Address, B256, U256};
use alloy::providers::{Provider, ProviderBuilder};
use anyhow::{bail, ensure, Context, Result};
use healthsense_abi::bindings::HealthSense as H;
use healthsense_abi::rules::{eip712, ids, status::Category};
use healthsense_oracle::archive::seal::{self, ArchiveScope, Secret};
use healthsense_oracle::protocol::{self, DeviceTopic, Topics};
use healthsense_oracle::store::Store;
use rand::SeedableRng;
use rumqttc::QoS;
use serde::Serialize;

use crate::admin::Client;
use crate::simulate::{self, Bed, Patient, Settings};
use crate::{archive, artifact, deploy, tools};

/// Figures the demo ends with (also its `--json` output).
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Summary {
    /// Contract address on the local chain.
    #[serde(serialize_with = "healthsense_oracle::protocol::eip55::serialize")]
    pub contract: Address,
    /// Signed readings the hub stored and anchored.
    pub readings_anchored: u64,
    /// Merkle batches anchored.
    pub batches: u64,
    /// Readings whose proof and signature were verified from the archives.
    pub proofs_verified: usize,
    /// Transactions mined.
    pub transactions: usize,
    /// Gas used by all of them.
    pub gas_used: u64,
    /// Beds whose NEWS2 reached 5 (urgent response) during the run.
    pub deteriorated: Vec<String>,
    /// One line per discharged patient.
    pub bills: Vec<BillLine>,
    /// Where the hub store and the IPFS repository were kept.
    pub workdir: String,
    /// Wall-clock seconds.
    pub seconds: f64,
}

/// A discharged patient's bill and archive.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BillLine {
    /// Pseudonymous patient id.
    pub patient: B256,
    /// Bed.
    pub bed: String,
    /// Bed days charged.
    pub bed_days: u64,
    /// Total, minor units (decimal string: amounts are uint256).
    #[serde(serialize_with = "decimal")]
    pub total: U256,
    /// Insurer's share.
    #[serde(serialize_with = "decimal")]
    pub covered: U256,
    /// Patient's share.
    #[serde(serialize_with = "decimal")]
    pub due: U256,
    /// Archive CID on chain.
    pub cid: String,
    /// Readings in the archive, all verified.
    pub readings: usize,
    /// Whether every item of the archive matched the chain.
    pub verified: bool,
}

/// Progress on standard error.
struct Progress {
    quiet: bool,
    step: usize,
}

impl Progress {
    const STEPS: usize = 8;

    fn step(&mut self, msg: &str) {
        self.step += 1;
        if !self.quiet {
            eprintln!("[{}/{}] {msg}", self.step, Self::STEPS);
        }
    }

    fn note(&self, msg: &str) {
        if !self.quiet {
            eprintln!("      {msg}");
        }
    }
}

const WARD: &str = "ward-1";
const BEDS: usize = 6;
const SECONDS: f64 = 24.0;

/// Runs the story and returns its summary.
pub async fn run(quiet: bool) -> Result<Summary> {
    let started = Instant::now();
    let mut p = Progress { quiet, step: 0 };
    let root = tools::project_root()?;
    let work = tempfile::Builder::new().prefix("healthsense-demo-").tempdir().context("creating a work folder")?;
    let anvil = Anvil::new().path(tools::foundry_tool(&root, "anvil")?).try_spawn().context("starting anvil")?;
    let provider = ProviderBuilder::new().connect_http(anvil.endpoint_url());
    let acct = anvil.addresses().to_vec();
    let (admin, hub, doctor, insurer) = (acct[0], acct[1], acct[2], acct[3]);
    let code = artifact::load_or_build(&root)?;
    let d = deploy::deploy_evm(&provider, anvil.endpoint().as_str(), admin, admin, code).await?;
    let c = Client::new(provider.clone(), d.clone(), admin);
    p.step(&format!("local chain {} (id {}): HealthSense EVM edition at {}", anvil.endpoint(), d.chain_id, d.address));

    for (role, who) in [(ids::HUB_ROLE, hub), (ids::DOCTOR_ROLE, doctor), (ids::INSURER_ROLE, insurer)] {
        c.send_from(admin, H::grantRoleCall { role, account: who }).await?;
    }
    let ward = ids::ward_id(WARD);
    c.send_from(admin, H::setTariffCall { ward, dailyRate: 45_000 }).await?;
    let ipfs = healthsense_ipfs_node::start(healthsense_ipfs_node::NodeConfig::new(work.path().join("ipfs"), ([127, 0, 0, 1], 0).into()))
    .await
    .context("starting the embedded IPFS node")?;
    let rules_file = root.join("docs/CONTRACT.md");
    let rules_cid = archive::publish_rules(&ipfs.api_url(), &rules_file).await?;
    c.send_from(admin, H::setBillingRulesCall { cid: rules_cid.clone() }).await?;
    p.step(&format!("roles: hub {hub}, doctor {doctor}, insurer {insurer}; {WARD} bed rate 450.00/day; billing rules (docs/CONTRACT.md) pinned as {rules_cid}"));

    let key_file = work.path().join("archive.key");
    archive::write_private(&key_file, Secret::random().to_hex().as_bytes())?;
    let store_path = work.path().join("hub.sqlite");
    let cfg = healthsense_oracle::Config::parse(&format!(
        "hub = \"{WARD}\"\nward = \"{WARD}\"\nstore = \"{}\"\n\
         [chain]\nrpc_url = \"{}\"\ncontract = \"{}\"\npoll_ms = 200\n\
         [mqtt]\nlisten = \"127.0.0.1:0\"\n[anchor]\nbatch_size = 250\ninterval_ms = 1000\n\
         [metrics]\nenabled = false\n\
         [archive]\nipfs_api = \"{}\"\nkey_file = \"{}\"\nsettle_ms = 1500\nmax_backoff_ms = 2000\n",
        store_path.display(),
        anvil.endpoint(),
        d.address,
        ipfs.api_url(),
        key_file.display()
    ))?;
    let hub_key = anvil.keys()[1].clone().into();
    let running = healthsense_oracle::start(cfg, hub_key, Default::default()).await?;
    let (mqtt_host, mqtt_port) = running.mqtt.clone();
    p.step(&format!("ward hub {hub}: MQTT on {mqtt_host}:{mqtt_port} (embedded), IPFS RPC at {}", ipfs.api_url()));

    let mut rng = rand::rngs::StdRng::seed_from_u64(2026);
    let speed = 6.0 * 3_600.0 / SECONDS; // six hours of ward time
    let mut beds: Vec<Bed> = (0..BEDS)
        .map(|i| Bed::new(format!("HS-W1-{:02}", i + 1), Patient::new(&mut rng, i % 3 == 0, SECONDS * speed), &mut rng))
        .collect();
    let patients: Vec<B256> = (0..BEDS).map(|i| crate::admin::patient_id(&format!("demo-stay-{}-{i}", d.address)).unwrap_or_default()).collect();
    for b in &beds {
        c.send_from(admin, H::provisionDeviceCall { deviceId: b.device_id(), signer: b.key.address(), ward }).await?;
    }
    let domain = eip712::domain_separator(d.chain_id, d.address);
    let settings = Settings { hub: WARD.into(), broker: (mqtt_host, mqtt_port), rate: 2.0, speed, seconds: SECONDS, seed: 2026, domain, passwords: Default::default() };
    let conn = simulate::connect(&settings, &beds).await?;
    for (b, patient) in beds.iter().zip(&patients) {
        c.send_from(doctor, H::admitPatientCall { patientId: *patient, deviceId: b.device_id() }).await?;
    }
    p.step(&format!("{BEDS} bedside devices provisioned, registered by the hub over MQTT, and {BEDS} patients admitted"));

    // Doctors and insurers work while the ward runs.
    let charges = [
        (0usize, "99223", Category::Consultation, 1u32, 21_000u64),
        (0, "J1100", Category::Medication, 6, 1_250),
        (1, "80053", Category::Laboratory, 2, 4_800),
        (1, "71046", Category::Imaging, 1, 16_500),
        (2, "99291", Category::Consultation, 3, 38_000),
        (3, "31500", Category::Procedure, 1, 95_000),
        (4, "99222", Category::Consultation, 1, 15_000),
        (5, "94760", Category::Other, 4, 900),
    ];
    for (i, code, cat, q, price) in charges {
        let code = ids::charge_code(code).context("charge code")?;
        c.send_from(doctor, H::addChargeCall { patientId: patients[i], code, category: cat as u8, quantity: q, unitPrice: price }).await?;
    }
    let policies = [(0usize, 8_000u16, 20_000u64, 500_000u64, 0xffu8), (1, 9_000, 0, 20_000, 0b0011_0001), (3, 7_000, 50_000, 10_000_000, 0xff), (4, 10_000, 0, u64::MAX, 0xff)];
    for (i, bps, ded, cap, cats) in policies {
        c.send_from(insurer, H::setPolicyCall { patientId: patients[i], coverageBps: bps, deductible: ded, cap, coveredCategories: cats }).await?;
    }
    p.step(&format!("{} charges by the doctor, {} insurance policies; simulating six hours of ward time in {SECONDS} s", charges.len(), policies.len()));
    let report = simulate::run(&settings, &mut beds, &conn, |r| {
        if !quiet {
            eprint!("\r      {} signed readings sent", r.readings);
        }
    })
    .await?;
    if !quiet {
        eprintln!();
    }
    ensure!(conn.flushed(report.readings + report.states).await, "the broker did not acknowledge every reading");
    p.note(&format!("NEWS2 reached 5+ (urgent) for: {}", if report.deteriorated.is_empty() { "nobody".into() } else { report.deteriorated.join(", ") }));

    // The bedside discharge: each device signs it; the hub bills and archives.
    let topics = Topics::new(WARD).map_err(anyhow::Error::msg)?;
    for (i, b) in beds.iter().enumerate() {
        let code = if i == 2 { 2 } else { 1 }; // one transfer, the rest home
        let payload = protocol::sign_discharge(&b.key, domain, &b.serial, code, healthsense_oracle::ingest::now_ms())?;
        conn.client(&b.serial)?.publish(topics.device(&b.serial, DeviceTopic::Discharge), QoS::AtLeastOnce, false, payload).await?;
    }
    p.step(&format!("{BEDS} discharge signals from the bedside; waiting for bills and archives"));
    let h = H::new(d.address, &provider);
    let deadline = Instant::now() + Duration::from_secs(180);
    let mut cids = vec![String::new(); BEDS];
    while cids.iter().any(String::is_empty) {
        for (i, patient) in patients.iter().enumerate() {
            if cids[i].is_empty() {
                cids[i] = h.getArchive(*patient).call().await?.cid;
            }
        }
        if Instant::now() > deadline {
            bail!("archives not on chain after 3 minutes ({} of {BEDS}); see the hub's log lines above", cids.iter().filter(|c| !c.is_empty()).count());
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    p.note(&format!("{BEDS} archives pinned to IPFS with their CIDs on chain"));

    p.step("fetching, decrypting and verifying every archive against the chain");
    let store = Store::open_existing(&store_path, d.chain_id, d.address)?;
    let master = Secret::from_hex(&std::fs::read_to_string(&key_file)?, "demo key")?;
    let mut bills = Vec::new();
    let mut proofs = 0;
    for (i, patient) in patients.iter().enumerate() {
        let scope = ArchiveScope { chain_id: d.chain_id, contract: d.address, patient: *patient };
        let salt = store.existing_archive_salt(*patient)?.context("no archive key in the hub store")?;
        let key = seal::patient_key(&master, &salt, &scope);
        let sealed = archive::fetch_sealed(&ipfs.api_url(), &cids[i]).await?;
        let bundle = archive::open_sealed(&key, &scope, &sealed)?;
        let r = archive::verify_bundle(&provider, d.address, *patient, &bundle).await?;
        ensure!(r.verified(), "archive of {} does not verify: {:?}", beds[i].serial, r.tampered);
        ensure!(r.readings > 0, "archive of {} holds no readings", beds[i].serial);
        proofs += r.readings_verified;
        let b = h.getBill(*patient).call().await?;
        bills.push(BillLine {
            patient: *patient,
            bed: beds[i].serial.clone(),
            bed_days: b.bedDays,
            total: b.total,
            covered: b.covered,
            due: b.due,
            cid: cids[i].clone(),
            readings: r.readings,
            verified: r.verified(),
        });
    }
    let counts = store.counts()?;
    running.shutdown().await;
    ipfs.shutdown().await;
    let (transactions, gas_used) = chain_totals(&provider).await?;
    let workdir = work.keep();
    Ok(Summary {
        contract: d.address,
        readings_anchored: counts.anchored_readings,
        batches: counts.batches_anchored,
        proofs_verified: proofs,
        transactions,
        gas_used,
        deteriorated: report.deteriorated,
        bills,
        workdir: workdir.display().to_string(),
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// Transactions and gas of every block of the throw-away chain.
async fn chain_totals<P: Provider>(provider: &P) -> Result<(usize, u64)> {
    let latest = provider.get_block_number().await?;
    let (mut txs, mut gas) = (0, 0);
    for n in 0..=latest {
        if let Some(b) = provider.get_block_by_number(n.into()).await? {
            txs += b.transactions.len();
            gas += b.header.gas_used;
        }
    }
    Ok((txs, gas))
}

fn decimal<S: serde::Serializer>(v: &U256, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&v.to_string())
}

/// Money in minor units as `1234.56`.
pub fn money(v: U256) -> String {
    let cents = v % U256::from(100);
    format!("{}.{:02}", v / U256::from(100), cents.to::<u64>())
}
