//! `healthsense demo`: a ward story on a throw-away local chain, using only
//! what is built so far (the contract and the shared rules). It starts anvil
//! from the project-local install, deploys the EVM edition, and plays one
//! ward: roles, devices, admissions, device-signed readings anchored as a
//! Merkle batch and proven on chain, charges, insurance, discharge and bills.

use std::time::Instant;

use alloy::node_bindings::Anvil;
use alloy::primitives::{Address, B256, U256};
use alloy::providers::{Provider, ProviderBuilder};
use alloy::signers::{local::PrivateKeySigner, SignerSync};
use alloy::sol_types::SolCall;
use anyhow::{bail, ensure, Context, Result};
use healthsense_abi::bindings::HealthSense as H;
use healthsense_abi::rules::{billing, eip712, ids, merkle, reading::reading_leaf, status::Category};
use healthsense_abi::Reading;
use serde::Serialize;

use crate::admin::Client;
use crate::{artifact, deploy, tools};

/// Figures the demo ends with (also its `--json` output).
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Summary {
    /// Contract address on the local chain.
    pub contract: Address,
    /// Signed readings verified and anchored.
    pub readings_anchored: usize,
    /// Merkle batches anchored.
    pub batches: usize,
    /// Proofs checked on chain with `verifyReading`.
    pub proofs_verified: usize,
    /// Transactions sent.
    pub transactions: usize,
    /// Gas used by all of them.
    pub gas_used: u64,
    /// One line per discharged patient.
    pub bills: Vec<BillLine>,
    /// Wall-clock seconds.
    pub seconds: f64,
}

/// A discharged patient's bill.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BillLine {
    /// Pseudonymous patient id.
    pub patient: B256,
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
}

/// The admin client plus the demo's tallies.
struct Ward<P> {
    client: Client<P>,
    txs: usize,
    gas: u64,
    quiet: bool,
}

impl<P: Provider> Ward<P> {
    async fn send<C: SolCall>(&mut self, from: Address, call: C) -> Result<()> {
        let receipt = self.client.send_from(from, call).await?;
        self.txs += 1;
        self.gas += receipt.gas_used;
        Ok(())
    }

    async fn view<C: SolCall>(&self, call: C) -> Result<C::Return> {
        self.client.view(call).await
    }

    fn step(&self, msg: &str) {
        if !self.quiet {
            eprintln!("  - {msg}");
        }
    }
}

/// Vitals of bed `bed` at second `t`: a stable baseline with a little noise,
/// and one bed whose oxygen falls and pulse rises (a deterioration episode).
fn vitals(device: B256, bed: usize, seq: u64, t0_ms: u64) -> Reading {
    let wobble = |period: u64, amp: i64| ((seq % period) as i64 - period as i64 / 2).clamp(-amp, amp);
    let worsening = bed == 2 && seq > 40;
    let drift = if worsening { (seq - 40) as i64 } else { 0 };
    Reading {
        deviceId: device,
        seq,
        timestamp: t0_ms + seq * 1_000,
        heartRate: (72 + wobble(7, 3) + drift) as u16,
        respRate: (15 + wobble(5, 1) + drift / 4) as u16,
        spo2: (97 + wobble(3, 1) - drift / 3).max(80) as u16,
        systolic: (122 + wobble(11, 4) - drift / 2) as u16,
        diastolic: (78 + wobble(9, 3)) as u16,
        temperature: (3_690 + wobble(13, 8) * 2 + drift * 3) as u16,
        consciousness: 1,
    }
}

/// Runs the story and returns its summary.
pub async fn run(quiet: bool) -> Result<Summary> {
    let started = Instant::now();
    let root = tools::project_root()?;
    let anvil = Anvil::new()
        .path(tools::foundry_tool(&root, "anvil")?)
        .try_spawn()
        .context("starting anvil")?;
    let provider = ProviderBuilder::new().connect_http(anvil.endpoint_url());
    let acct = anvil.addresses().to_vec();
    let (admin, hub, doctor, insurer) = (acct[0], acct[1], acct[2], acct[3]);
    if !quiet {
        eprintln!("HealthSense demo: local chain at {}", anvil.endpoint());
    }
    let code = artifact::load_or_build(&root)?;
    let d = deploy::deploy_evm(&provider, anvil.endpoint().as_str(), admin, admin, code).await?;
    let mut w = Ward { client: Client::new(provider, d.clone(), admin), txs: 1, gas: 0, quiet };
    w.step(&format!("deployed the EVM edition at {}", d.address));

    for (role, who) in [(ids::HUB_ROLE, hub), (ids::DOCTOR_ROLE, doctor), (ids::INSURER_ROLE, insurer)] {
        w.send(admin, H::grantRoleCall { role, account: who }).await?;
    }
    w.step("granted HUB, DOCTOR and INSURER roles");
    let ward = ids::ward_id("ward-1");
    w.send(admin, H::setTariffCall { ward, dailyRate: 45_000 }).await?;
    w.step("ward-1 bed tariff: 450.00 a day");

    let beds = 4;
    let keys: Vec<PrivateKeySigner> = (0..beds).map(|_| PrivateKeySigner::random()).collect();
    let devices: Vec<B256> = (0..beds).map(|i| ids::device_id(&format!("HS-W1-{:02}", i + 1))).collect();
    let patients: Vec<B256> = (0..beds).map(|i| ids::device_id(&format!("demo-stay-{i}"))).collect();
    for i in 0..beds {
        w.send(admin, H::provisionDeviceCall { deviceId: devices[i], signer: keys[i].address(), ward }).await?;
        w.send(hub, H::activateDeviceCall { deviceId: devices[i] }).await?;
        w.send(doctor, H::admitPatientCall { patientId: patients[i], deviceId: devices[i] }).await?;
    }
    w.step(&format!("{beds} devices provisioned, activated by the hub, and assigned to admitted patients"));

    // Readings: each signed by its device (EIP-712), checked against the
    // registered signer the way the hub does, then anchored as one batch.
    let domain = eip712::domain_separator(d.chain_id, d.address);
    let t0_ms = 1_764_000_000_000;
    let mut leaves = Vec::new();
    for (i, key) in keys.iter().enumerate() {
        let signer = w.view(H::getDeviceCall { deviceId: devices[i] }).await?.signer;
        for seq in 1..=90u64 {
            let r = vitals(devices[i], i, seq, t0_ms);
            let digest = eip712::reading_digest(domain, &r);
            let sig = key.sign_hash_sync(&digest)?;
            if sig.recover_address_from_prehash(&digest)? != signer {
                bail!("reading {seq} of bed {i} does not verify against its device");
            }
            leaves.push(reading_leaf(&r));
        }
    }
    let tree = merkle::StandardTree::new(leaves.iter().copied())?;
    w.send(hub, H::anchorBatchCall { seq: 1, root: tree.root(), leafCount: tree.len() as u32 }).await?;
    let batch = ids::batch_id(hub, 1);
    w.step(&format!("{} signed readings anchored as batch {batch} (one transaction)", tree.len()));
    let mut proofs = 0;
    for (leaf, proof) in tree.proofs().step_by(45) {
        ensure!(w.view(H::verifyReadingCall { batchId: batch, leaf, proof }).await?, "proof of {leaf} rejected");
        proofs += 1;
    }
    w.step(&format!("{proofs} readings proven against the on-chain root"));

    let charges = [
        (0usize, "99223", Category::Consultation, 1u32, 21_000u64),
        (0, "J1100", Category::Medication, 6, 1_250),
        (1, "80053", Category::Laboratory, 2, 4_800),
        (1, "71046", Category::Imaging, 1, 16_500),
        (2, "99291", Category::Consultation, 3, 38_000),
        (2, "31500", Category::Procedure, 1, 95_000),
        (3, "99222", Category::Consultation, 1, 15_000),
    ];
    for (p, c, cat, q, price) in charges {
        let code = ids::charge_code(c).context("charge code")?;
        w.send(doctor, H::addChargeCall { patientId: patients[p], code, category: cat as u8, quantity: q, unitPrice: price })
            .await?;
    }
    let policies = [(0usize, 8_000u16, 20_000u64, 500_000u64, 0xffu8), (1, 9_000, 0, 20_000, 0b0011_0001), (2, 7_000, 50_000, 10_000_000, 0xff)];
    for (p, bps, ded, cap, cats) in policies {
        w.send(insurer, H::setPolicyCall { patientId: patients[p], coverageBps: bps, deductible: ded, cap, coveredCategories: cats })
            .await?;
    }
    w.step(&format!("{} charges by the doctor, {} insurance policies", charges.len(), policies.len()));

    let stays = [2 * billing::DAY + 3_600, billing::DAY / 2, 5 * billing::DAY, 3 * billing::DAY];
    // Discharge in time order: a chain's clock only moves forward.
    let mut order = Vec::new();
    for (i, stay) in stays.iter().enumerate() {
        let admitted = w.view(H::getPatientCall { patientId: patients[i] }).await?.admittedAt;
        order.push((admitted + stay, i));
    }
    order.sort_unstable();
    let mut bills = Vec::new();
    for (at, i) in order {
        w.client.provider().raw_request::<_, ()>("evm_setNextBlockTimestamp".into(), (at,)).await?;
        w.send(hub, H::dischargeCall { patientId: patients[i] }).await?;
        let b = w.view(H::getBillCall { patientId: patients[i] }).await?;
        bills.push(BillLine { patient: patients[i], bed_days: b.bedDays, total: b.total, covered: b.covered, due: b.due });
    }
    w.step("all four patients discharged; the contract computed each bill");
    drop(anvil);
    Ok(Summary {
        contract: d.address,
        readings_anchored: tree.len(),
        batches: 1,
        proofs_verified: proofs,
        transactions: w.txs,
        gas_used: w.gas,
        bills,
        seconds: started.elapsed().as_secs_f64(),
    })
}

fn decimal<S: serde::Serializer>(v: &U256, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&v.to_string())
}

/// Money in minor units as `1234.56`.
pub fn money(v: U256) -> String {
    let cents = v % U256::from(100);
    format!("{}.{:02}", v / U256::from(100), cents.to::<u64>())
}
