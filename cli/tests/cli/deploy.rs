//! Drives the built `healthsense` binary as a user would.

use std::process::Command;

use alloy::node_bindings::Anvil;
use healthsense_cli::{deployment::Deployment, tools};

fn healthsense() -> Command {
    Command::new(env!("CARGO_BIN_EXE_healthsense"))
}

#[test]
fn deploy_writes_a_deployment_file_and_never_prints_the_key() {
    let root = tools::project_root().unwrap();
    let anvil = Anvil::new().path(tools::foundry_tool(&root, "anvil").unwrap()).spawn();
    let key = alloy::hex::encode(anvil.keys()[0].to_bytes());
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("deployment.json");
    let out = healthsense()
        .args(["deploy", "--rpc-url", anvil.endpoint().as_str(), "--deployment"])
        .arg(&file)
        .env("HEALTHSENSE_PRIVATE_KEY", &key)
        .env("HEALTHSENSE_HOME", &root)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "deploy failed: {stdout}{stderr}");
    assert!(!stdout.contains(&key) && !stderr.contains(&key), "the key was printed");
    let d = Deployment::load(&file).unwrap();
    assert_eq!(d.chain_id, anvil.chain_id());
    assert_eq!(d.admin, anvil.addresses()[0]);
    assert!(stdout.contains(&d.address.to_string()));
    assert!(d.deploy_block >= 1);

    // --json prints the same record for scripts.
    let out = healthsense()
        .args(["--json", "deploy", "--rpc-url", anvil.endpoint().as_str(), "--deployment"])
        .arg(dir.path().join("second.json"))
        .env("HEALTHSENSE_PRIVATE_KEY", &key)
        .env("HEALTHSENSE_HOME", &root)
        .output()
        .unwrap();
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("--json prints JSON");
    assert_eq!(v["chainId"], anvil.chain_id());
    assert_eq!(v["edition"], "evm");
    assert_ne!(v["address"], serde_json::json!(d.address.to_string()), "a second deploy is a new contract");
}

#[test]
fn deploy_without_a_key_or_with_a_bad_one_exits_3() {
    let out = healthsense()
        .args(["deploy", "--rpc-url", "http://127.0.0.1:9"])
        .env_remove("HEALTHSENSE_PRIVATE_KEY")
        .env_remove("HEALTHSENSE_KEYSTORE")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no signing key"));

    let secretish = "0xnot-a-key-but-do-not-echo-me";
    let out = healthsense()
        .args(["deploy", "--rpc-url", "http://127.0.0.1:9"])
        .env("HEALTHSENSE_PRIVATE_KEY", secretish)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("not a 32-byte hex private key"), "{stderr}");
    assert!(!stderr.contains(secretish));
}

#[test]
fn deploy_with_a_wrong_keystore_password_exits_3() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = rand_core_for_tests();
    let (_, name) = alloy::signers::local::PrivateKeySigner::new_keystore(dir.path(), &mut rng, "right", None).unwrap();
    let pass = dir.path().join("pass");
    std::fs::write(&pass, "wrong\n").unwrap();
    let out = healthsense()
        .args(["deploy", "--rpc-url", "http://127.0.0.1:9", "--keystore"])
        .arg(dir.path().join(name))
        .arg("--password-file")
        .arg(&pass)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stderr).contains("wrong password"));
}

#[test]
fn deploy_to_an_unreachable_node_exits_1_and_names_it() {
    let root = tools::project_root().unwrap();
    let out = healthsense()
        .args(["deploy", "--rpc-url", "http://127.0.0.1:9"])
        .env("HEALTHSENSE_PRIVATE_KEY", format!("0x{}", "11".repeat(32)))
        .env("HEALTHSENSE_HOME", &root)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("127.0.0.1:9"));
}

#[test]
fn stylus_edition_prints_the_cargo_stylus_steps() {
    let out = healthsense()
        .args(["deploy", "--edition", "stylus", "--rpc-url", "https://sepolia-rollup.arbitrum.io/rpc"])
        .env("HEALTHSENSE_PRIVATE_KEY", format!("0x{}", "22".repeat(32)))
        .output()
        .unwrap();
    assert!(out.status.success());
    let s = String::from_utf8_lossy(&out.stdout);
    assert!(s.contains("cargo stylus deploy") && s.contains("--constructor-args"), "{s}");
    // Two programs, the records program first: the main one's constructor needs its address.
    let records = s.find("healthsense_records.wasm").expect("records program step");
    let main = s.find("healthsense_main.wasm").expect("main program step");
    assert!(records < main, "{s}");
}

fn rand_core_for_tests() -> impl alloy::signers::k256::elliptic_curve::rand_core::CryptoRngCore {
    alloy::signers::k256::elliptic_curve::rand_core::OsRng
}
