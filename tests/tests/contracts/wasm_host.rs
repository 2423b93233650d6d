//! The Stylus host on its own: the artifacts are current, a damaged file is
//! a clear error naming it, `msg_reentrant` is reported as Nitro reports it,
//! and (ignored, run by hand) the host-call timing figures of
//! docs/BENCHMARKS.md.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use alloy::primitives::{Address, Bytes, B256};
use alloy::signers::{local::PrivateKeySigner, SignerSync};
use alloy::sol_types::{SolCall, SolError, SolValue};
use healthsense_abi::bindings::HealthSense as H;
use healthsense_abi::rules::{eip712, ids};
use healthsense_abi::Reading;
use healthsense_stylus_host::{self as host, HostError, Program, Tx, World, MAIN_FILE, RECORDS_FILE};
use healthsense_tests::stylus::{StylusEdition, RECORDS_PROGRAM};
use healthsense_tests::wasm::{artifacts, native_ecrecover, Native, NativeCtx, WasmEdition};
use healthsense_tests::Edition;
use stylus_sdk::abi::CONSTRUCTOR_SELECTOR;

const CHAIN: u64 = 31_337;
const T0: u64 = 1_764_000_000;

fn addr(n: u8) -> Address {
    Address::with_last_byte(n)
}

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Keeps in `acc` the newest modification time under `path`.
fn newest(path: &Path, acc: &mut (SystemTime, PathBuf)) {
    let Ok(meta) = std::fs::metadata(path) else { return };
    if meta.is_dir() {
        for entry in std::fs::read_dir(path).into_iter().flatten().flatten() {
            newest(&entry.path(), acc);
        }
    } else if let Ok(m) = meta.modified() {
        if m > acc.0 {
            *acc = (m, path.to_path_buf());
        }
    }
}

/// `scripts/test` builds the WASM before the cargo tests; this fails when
/// a source of the programs changed after the artifacts the host runs.
#[test]
fn test_artifacts_are_newer_than_their_sources() {
    let dir = host::stylus_dir();
    let root = workspace();
    let mut src = (SystemTime::UNIX_EPOCH, PathBuf::new());
    for p in ["contracts/src", "contracts/Cargo.toml", "abi/src", "abi/Cargo.toml", "scripts/build-wasm"] {
        newest(&root.join(p), &mut src);
    }
    for file in [MAIN_FILE, RECORDS_FILE] {
        let path = dir.join(file);
        let built = std::fs::metadata(&path)
            .and_then(|m| m.modified())
            .unwrap_or_else(|e| panic!("{}: {e}; run scripts/build-wasm", path.display()));
        assert!(
            built >= src.0,
            "{} is older than {}: run scripts/build-wasm (the host would test a stale program)",
            path.display(),
            src.1.display()
        );
    }
}

fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("hs-wasm-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

#[test]
fn test_a_truncated_or_altered_program_is_an_error_naming_the_file() {
    let dir = temp_dir("damaged");
    let bytes = std::fs::read(host::stylus_dir().join(MAIN_FILE)).expect("run scripts/build-wasm");

    let truncated = dir.join("truncated.wasm");
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    let err = Program::load(&truncated).unwrap_err();
    assert!(matches!(err, HostError::Rejected { .. }), "{err}");
    assert!(err.to_string().contains("truncated.wasm"), "{err}");

    // One import renamed to something no Nitro node (and no host) provides.
    let at = bytes.windows(13).position(|w| w == b"msg_reentrant").expect("the program imports msg_reentrant");
    let mut altered = bytes.clone();
    altered[at + 12] = b'x';
    let path = dir.join("altered.wasm");
    std::fs::write(&path, &altered).unwrap();
    let err = Program::load(&path).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, HostError::UnknownImport { .. }), "{msg}");
    assert!(msg.contains("altered.wasm") && msg.contains("vm_hooks::msg_reentranx"), "{msg}");

    let missing = Program::load(&dir.join("absent.wasm")).unwrap_err();
    assert!(missing.to_string().contains("absent.wasm") && missing.to_string().contains("scripts/build-wasm"));
    let _ = std::fs::remove_dir_all(dir);
}

/// Stands in for an external contract at the `ecrecover` address: before
/// answering, it calls back into the HealthSense contract (a reentrant,
/// non-delegate call) and keeps what that call returned.
struct Reenter {
    target: Address,
    seen: Mutex<Vec<(bool, Vec<u8>)>>,
}

impl Native for Reenter {
    fn call(&self, ctx: &mut NativeCtx<'_, '_>, input: &[u8]) -> (bool, Vec<u8>) {
        let probe = H::hasRoleCall { role: ids::ADMIN_ROLE, account: addr(0xad) }.abi_encode();
        let seen = ctx.call(self.target, &probe);
        self.seen.lock().unwrap().push(seen);
        (true, native_ecrecover(input))
    }
}

fn deploy(world: &mut World, main: Address) -> healthsense_stylus_host::Outcome {
    let a = artifacts();
    world.deploy(main, a.main.clone());
    world.deploy(RECORDS_PROGRAM, a.records.clone());
    let mut ctor = CONSTRUCTOR_SELECTOR.to_be_bytes().to_vec();
    ctor.extend((addr(0xad), RECORDS_PROGRAM).abi_encode_params());
    world.transact(&Tx::new(addr(0xad), main, ctor, T0))
}

/// Nitro's rule: a program is reentrant when its address already has an
/// open non-delegate frame. The main program's delegate call into the
/// records program is not reentrant (else every records method would
/// revert under the SDK's guard); a call back into the contract from a
/// contract it called is, and the SDK's entrypoint guard reverts it with
/// empty data.
#[test]
fn test_msg_reentrant_is_reported_as_nitro_does() {
    let main = addr(0xc0);
    let mut world = World::new(CHAIN);
    assert!(deploy(&mut world, main).success);
    let reenter = Arc::new(Reenter { target: main, seen: Mutex::new(Vec::new()) });
    world.deploy_native(Address::with_last_byte(1), reenter.clone());
    let send = |world: &mut World, from: Address, call: Vec<u8>, t: u64| world.transact(&Tx::new(from, main, call, t));

    let (hub, admin) = (addr(0x40), addr(0xad));
    assert!(send(&mut world, admin, H::grantRoleCall { role: ids::HUB_ROLE, account: hub }.abi_encode(), T0 + 1).success);
    let key = PrivateKeySigner::random();
    let device = ids::device_id("RE-1");
    let provision = H::provisionDeviceCall { deviceId: device, signer: key.address(), ward: ids::ward_id("w") };
    assert!(send(&mut world, admin, provision.abi_encode(), T0 + 2).success);
    assert!(send(&mut world, hub, H::activateDeviceCall { deviceId: device }.abi_encode(), T0 + 3).success);
    let reading = Reading { deviceId: device, seq: 1, timestamp: 1, heartRate: 70, respRate: 14, spo2: 97, systolic: 120, diastolic: 80, temperature: 3_700, consciousness: 1 };
    let digest = eip712::reading_digest(eip712::domain_separator(CHAIN, main), &reading);
    let sig = Bytes::from(key.sign_hash_sync(&digest).unwrap().as_bytes().to_vec());
    let post = H::postReadingsCall { readings: vec![reading.into()], signatures: vec![sig] };
    let out = send(&mut world, hub, post.abi_encode(), T0 + 4);

    // The records program ran by delegate call and accepted the reading.
    assert!(out.success, "postReadings reverted: 0x{} (trap {:?})", alloy::hex::encode(&out.data), out.trap);
    assert_eq!(out.logs.len(), 1);
    // The call back into the contract was reentrant and the guard refused it.
    let seen = reenter.seen.lock().unwrap().clone();
    assert_eq!(seen, vec![(false, Vec::new())]);
    // The same call from outside is not reentrant.
    let probe = H::hasRoleCall { role: ids::ADMIN_ROLE, account: admin }.abi_encode();
    let out = world.simulate(&Tx::new(addr(0x99), main, probe, T0 + 5));
    assert!(out.success && out.data[31] == 1);
}

/// A cached storage write that is never flushed because the call reverts
/// leaves nothing behind; a view (`simulate`) never changes storage.
#[test]
fn test_reverted_and_simulated_calls_leave_storage_alone() {
    let main = addr(0xc1);
    let mut world = World::new(CHAIN);
    assert!(deploy(&mut world, main).success);
    let before = world.storage(main);
    let admin = addr(0xad);
    // Reverts after the role check passed, in the argument check.
    let bad = H::provisionDeviceCall { deviceId: B256::repeat_byte(1), signer: Address::ZERO, ward: B256::repeat_byte(2) };
    let out = world.transact(&Tx::new(admin, main, bad.abi_encode(), T0 + 1));
    assert!(!out.success);
    assert_eq!(out.data, SolError::abi_encode(&H::ZeroAddress {}));
    let good = H::setTariffCall { ward: B256::repeat_byte(3), dailyRate: 7 }.abi_encode();
    let sim = world.simulate(&Tx::new(admin, main, good.clone(), T0 + 2));
    assert!(sim.success && sim.ink_used > 0);
    assert_eq!(world.storage(main), before);
    let real = world.transact(&Tx::new(admin, main, good, T0 + 3));
    assert!(real.success);
    assert_eq!(real.ink_used, sim.ink_used, "the same call costs the same ink");
    assert_ne!(world.storage(main), before);
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(|a, b| a.partial_cmp(b).unwrap());
    xs[xs.len() / 2]
}

/// Host-call timing for docs/BENCHMARKS.md (module compiled once per
/// process; a fresh store and instance per call), against the TestVM
/// engine in the same run:
/// `cargo test --workspace --locked --test contracts -- --ignored --nocapture wasm_host::`.
#[test]
#[ignore = "benchmark: prints figures"]
fn bench_host_call() {
    let (admin, main) = (addr(0xad), addr(0xc2));
    let started = Instant::now();
    let a = artifacts();
    let load = started.elapsed();
    let (mut wasm, out) = WasmEdition::deploy(a, main, CHAIN, admin, admin, T0);
    assert!(out.success);
    let (mut testvm, out) = StylusEdition::deploy(main, CHAIN, admin, admin, T0);
    assert!(out.success);
    let calls: Vec<(&str, Vec<u8>, bool)> = vec![
        ("hasRole (view, main program)", H::hasRoleCall { role: ids::ADMIN_ROLE, account: admin }.abi_encode(), true),
        ("billingRules (view, delegate call to records)", H::billingRulesCall {}.abi_encode(), true),
        ("setTariff (write, main program)", H::setTariffCall { ward: B256::repeat_byte(3), dailyRate: 7 }.abi_encode(), false),
        ("setBillingRules (write, delegate call)", H::setBillingRulesCall { cid: "bafkrules".into() }.abi_encode(), false),
    ];
    println!("artifacts loaded and compiled in {:.1} ms", load.as_secs_f64() * 1e3);
    println!("| call | wasm median µs | TestVM median µs | ink | gas |");
    println!("|---|---|---|---|---|");
    for (name, data, view) in calls {
        let mut w = Vec::new();
        let mut s = Vec::new();
        for i in 0..300 {
            let t = Instant::now();
            let o = wasm.call(admin, &data, view, T0 + 1 + i);
            w.push(t.elapsed().as_secs_f64() * 1e6);
            assert!(o.success, "{name}");
            let t = Instant::now();
            testvm.call(admin, &data, view, T0 + 1 + i);
            s.push(t.elapsed().as_secs_f64() * 1e6);
        }
        let cost = wasm.last_cost().unwrap();
        println!("| {name} | {:.0} | {:.0} | {} | {} |", median(w), median(s), cost.ink, cost.gas);
    }
}
