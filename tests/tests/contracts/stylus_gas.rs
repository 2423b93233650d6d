//! Stylus gas beside EVM gas, for docs/GAS.md and docs/BENCHMARKS.md:
//! every call runs on the three engines (so the figures are of calls that
//! agree); the Stylus column is the host's metered ink / 10,000, the EVM
//! column anvil's receipt gas less the intrinsic and calldata gas. Then the
//! Stylus gas per function over a differential-fuzzing run (typical and
//! max of successful calls).
//!
//! `cargo test --workspace --locked --test contracts -- --ignored --nocapture stylus_gas::`

use alloy::primitives::{Address, Bytes, B256};
use alloy::signers::{local::PrivateKeySigner, SignerSync};
use alloy::sol_types::SolCall;
use healthsense_abi::bindings::HealthSense as H;
use healthsense_abi::rules::{eip712, ids};
use healthsense_abi::Reading;
use healthsense_tests::evm::CHAIN_ID;
use healthsense_tests::fuzz::engines::stylus_engines;
use healthsense_tests::fuzz::{Env, Fuzzer};
use healthsense_tests::twin::Twin;
use healthsense_tests::sample_reading as reading;

/// Figures of one measured call.
struct Row {
    what: String,
    /// Stylus gas by part: instructions, hostio, EVM-side, memory.
    parts: [u64; 4],
    stylus: u64,
    evm: u64,
    per: u64,
}

struct Bench {
    t: Twin,
    rows: Vec<Row>,
}

impl Bench {
    /// Runs `call` on every engine (they must agree and succeed) and keeps
    /// its gas; `per` divides it for a per-item figure.
    fn measure<C: SolCall>(&mut self, what: &str, from: Address, call: C, per: u64) {
        self.t.ok_logs(from, call);
        let cost = self.t.wasm.last_cost().expect("the WASM engine ran the call");
        let p = cost.profile;
        let parts = [p.instructions, p.hostio, p.evm, p.memory].map(|ink| ink.div_ceil(10_000));
        let evm = self.t.evm.last_gas.unwrap_or_default();
        self.rows.push(Row { what: what.into(), parts, stylus: cost.gas, evm, per });
    }
}

#[test]
#[ignore = "benchmark: prints the Stylus and EVM gas figures of docs/GAS.md"]
fn stylus_gas_figures() {
    let t = Twin::new();
    let w = t.who;
    let mut b = Bench { t, rows: Vec::new() };
    b.measure("grantRole (first hub)", w.admin, H::grantRoleCall { role: ids::HUB_ROLE, account: w.hub }, 1);
    b.t.ok(w.admin, H::grantRoleCall { role: ids::DOCTOR_ROLE, account: w.doctor });
    b.t.ok(w.admin, H::grantRoleCall { role: ids::INSURER_ROLE, account: w.insurer });
    b.measure("revokeRole", w.admin, H::revokeRoleCall { role: ids::DOCTOR_ROLE, account: w.doctor }, 1);
    b.t.ok(w.admin, H::grantRoleCall { role: ids::DOCTOR_ROLE, account: w.doctor });
    let ward = ids::ward_id("gas");
    b.measure("setTariff", w.admin, H::setTariffCall { ward, dailyRate: 250_00 }, 1);
    b.measure("setBillingRules", w.admin, H::setBillingRulesCall { cid: "bafkreigh2akiscaildcqabsyg3dfr6chu3fgpregiymsck7e7aqa4s52zy".into() }, 1);

    let key = PrivateKeySigner::from_bytes(&B256::repeat_byte(0x42)).expect("a valid key");
    let dev = ids::device_id("GAS-1");
    b.measure("provisionDevice (register)", w.admin, H::provisionDeviceCall { deviceId: dev, signer: key.address(), ward }, 1);
    b.measure("activateDevice", w.hub, H::activateDeviceCall { deviceId: dev }, 1);

    let domain = eip712::domain_separator(CHAIN_ID, b.t.evm.address);
    let mut seq = 0;
    for n in [1u64, 2, 10, 50] {
        let batch: Vec<Reading> = (seq + 1..=seq + n).map(|s| reading(dev, s)).collect();
        seq += n;
        let sigs: Vec<Bytes> = batch
            .iter()
            .map(|r| {
                let sig = key.sign_hash_sync(&eip712::reading_digest(domain, r)).expect("signing works");
                Bytes::from(sig.as_bytes().to_vec())
            })
            .collect();
        let call = H::postReadingsCall { readings: batch.into_iter().map(Into::into).collect(), signatures: sigs };
        b.measure(&format!("postReadings, {n} reading(s)"), w.hub, call, n);
    }
    let anchor = H::anchorBatchCall { seq: 1, root: B256::repeat_byte(7), leafCount: 2_000 };
    let intrinsic = healthsense_tests::evm::intrinsic_gas(&anchor.abi_encode());
    b.measure("anchorBatch (2,000 leaves)", w.hub, anchor, 1);
    let anchored = b.rows.last().map(|r| (r.stylus + intrinsic, r.evm + intrinsic)).unwrap_or_default();

    let p = B256::repeat_byte(0x99);
    b.measure("admitPatient", w.doctor, H::admitPatientCall { patientId: p, deviceId: dev }, 1);
    let code = ids::charge_code("LAB-CBC").expect("short code");
    b.measure("addCharge (first of a category)", w.doctor, H::addChargeCall { patientId: p, code, category: 2, quantity: 1, unitPrice: 45_00 }, 1);
    b.measure("addCharge (same category)", w.doctor, H::addChargeCall { patientId: p, code, category: 2, quantity: 2, unitPrice: 45_00 }, 1);
    b.measure("setPolicy", w.insurer, H::setPolicyCall { patientId: p, coverageBps: 8_000, deductible: 100_00, cap: 10_000_00, coveredCategories: 0xff }, 1);
    b.t.advance(3 * 86_400);
    b.measure("discharge", w.doctor, H::dischargeCall { patientId: p }, 1);
    b.measure("setArchive", w.hub, H::setArchiveCall { patientId: p, cid: "bafkreigh2akiscaildcqabsyg3dfr6chu3fgpregiymsck7e7aqa4s52zy".into(), recordHash: B256::repeat_byte(5) }, 1);
    b.measure("revokeDevice", w.admin, H::revokeDeviceCall { deviceId: dev }, 1);
    b.measure("pause", w.admin, H::pauseCall {}, 1);
    b.measure("unpause", w.admin, H::unpauseCall {}, 1);
    b.measure("renounceRole", w.insurer, H::renounceRoleCall { role: ids::INSURER_ROLE, callerConfirmation: w.insurer }, 1);

    println!("| call | Stylus gas (WASM on the host) | EVM gas (anvil) | Stylus / EVM | Stylus per reading | EVM per reading | Stylus: instructions / hostio / EVM-side / memory |");
    println!("| --- | ---: | ---: | ---: | ---: | ---: | --- |");
    for r in &b.rows {
        let ratio = if r.evm == 0 { 0.0 } else { r.stylus as f64 / r.evm as f64 };
        let per = if r.per > 1 || r.what.starts_with("postReadings") {
            format!("{} | {}", r.stylus / r.per, r.evm / r.per)
        } else {
            " | ".into()
        };
        let [i, h, e, m] = r.parts;
        println!("| {} | {} | {} | {ratio:.2} | {per} | {i} / {h} / {e} / {m} |", r.what, r.stylus, r.evm);
    }

    println!(
        "\nanchorBatch of 2,000 leaves with the transaction's intrinsic and calldata gas ({intrinsic}): \
         Stylus {} = {:.1} gas a reading, EVM (anvil receipt) {} = {:.1} gas a reading",
        anchored.0,
        anchored.0 as f64 / 2_000.0,
        anchored.1,
        anchored.1 as f64 / 2_000.0
    );

    // Typical and max over a differential-fuzzing run on the Stylus engines.
    let sequences = 200;
    let env = Env::offline();
    let engines = stylus_engines(&env);
    let mut f = Fuzzer::new(env, engines);
    for s in 0..sequences {
        if let Err(d) = f.run(1_000 + s, 30) {
            panic!("{}", f.report(1_000 + s, d));
        }
    }
    println!("\nStylus gas over {sequences} fuzzed sequences of 30 calls (seeds 1000..), successful calls:");
    println!("| function | calls | typical (median) | max |");
    println!("| --- | ---: | ---: | ---: |");
    let mut names: Vec<&str> = f.coverage.by_function.keys().copied().collect();
    names.sort_unstable();
    for name in names {
        if let Some(g) = f.gas.figures("stylus-wasm", name) {
            println!("| {name} | {} | {} | {} |", g.count, g.median, g.max);
        }
    }
}
