//! A ward's life through the `healthsense` binary against a real anvil, as
//! an admin, hub, doctor and insurer would type it, with the usual mistakes.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use alloy::node_bindings::{Anvil, AnvilInstance};
use healthsense_cli::tools;

use common::free_port;

struct Ward {
    anvil: AnvilInstance,
    root: PathBuf,
    deployment: PathBuf,
    _dir: tempfile::TempDir,
}

impl Ward {
    fn new() -> Self {
        let root = tools::project_root().unwrap();
        let anvil = Anvil::new().path(tools::foundry_tool(&root, "anvil").unwrap()).spawn();
        let dir = tempfile::tempdir().unwrap();
        let deployment = dir.path().join("deployment.json");
        let w = Ward { anvil, root, deployment, _dir: dir };
        let out = w.run(0, &["deploy", "--rpc-url", w.anvil.endpoint().as_str()]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        w
    }

    /// Runs `healthsense ARGS` as dev account `who`.
    fn run(&self, who: usize, args: &[&str]) -> Output {
        common::healthsense(&self.anvil, who, &self.deployment, &self.root, args)
    }

    fn ok(&self, who: usize, args: &[&str]) -> String {
        let out = self.run(who, args);
        assert!(out.status.success(), "{args:?}: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    }

    fn addr(&self, who: usize) -> String {
        self.anvil.addresses()[who].to_string()
    }
}

const ADMIN: usize = 0;
const HUB: usize = 1;
const DOCTOR: usize = 2;
const INSURER: usize = 3;
const STRANGER: usize = 4;

#[test]
fn a_stay_from_admission_to_bill() {
    let w = Ward::new();
    for (role, who) in [("hub", HUB), ("doctor", DOCTOR), ("insurer", INSURER)] {
        w.ok(ADMIN, &["roles", "grant", role, &w.addr(who)]);
    }
    assert!(w.ok(STRANGER, &["roles", "check", &w.addr(DOCTOR)]).contains("doctor"));
    w.ok(ADMIN, &["roles", "grant", "hub", &w.addr(STRANGER)]);
    w.ok(ADMIN, &["roles", "revoke", "hub", &w.addr(STRANGER)]);
    let list: serde_json::Value = serde_json::from_str(&w.ok(STRANGER, &["--json", "roles", "list"])).unwrap();
    let pairs: Vec<(String, String)> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|v| (v["role"].as_str().unwrap().to_string(), v["account"].as_str().unwrap().parse::<alloy::primitives::Address>().unwrap().to_string()))
        .collect();
    let want: Vec<(String, String)> = [("admin", ADMIN), ("hub", HUB), ("doctor", DOCTOR), ("insurer", INSURER)]
        .iter()
        .map(|(r, who)| (r.to_string(), w.addr(*who)))
        .collect();
    assert_eq!(pairs, want, "revoked holders drop out, the rest stay in grant order");
    w.ok(ADMIN, &["tariff", "set", "ward-7", "45000"]);
    assert!(w.ok(STRANGER, &["tariff", "show", "ward-7"]).contains("450.00"));
    w.ok(ADMIN, &["device", "provision", "HS-77", "--signer", &w.addr(9), "--ward", "ward-7"]);
    w.ok(HUB, &["device", "activate", "HS-77"]);
    w.ok(DOCTOR, &["patient", "admit", "stay-77", "--device", "HS-77"]);
    w.ok(DOCTOR, &["charge", "add", "stay-77", "--code", "99223", "--category", "consultation", "--unit-price", "21000"]);
    w.ok(DOCTOR, &["charge", "add", "stay-77", "--code", "80053", "--category", "laboratory", "--quantity", "2", "--unit-price", "4800"]);
    let list = w.ok(STRANGER, &["charge", "list", "stay-77"]);
    assert!(list.contains("99223") && list.contains("laboratory") && list.contains("48.00"), "{list}");
    w.ok(INSURER, &["policy", "set", "stay-77", "--coverage-bps", "8000", "--deductible", "10000", "--categories", "bed,consultation"]);
    let out = w.ok(DOCTOR, &["--json", "patient", "discharge", "stay-77"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["bedDays"], 1);
    // total = 450.00 bed + 210.00 + 2 x 48.00; eligible 660.00 - 100.00 deductible, 80% covered.
    assert_eq!((v["total"].as_str(), v["covered"].as_str(), v["due"].as_str()), (Some("75600"), Some("44800"), Some("30800")), "{out}");
    let bill = w.ok(STRANGER, &["bill", "stay-77"]);
    assert!(bill.contains("756.00") && bill.contains("448.00") && bill.contains("308.00"), "{bill}");
    let shown = w.ok(STRANGER, &["--json", "patient", "show", "stay-77"]);
    assert!(shown.contains("\"discharged\""), "{shown}");
}

#[test]
fn mistakes_say_what_to_do_and_exit_with_meaning() {
    let w = Ward::new();
    // Wrong role: exit 4 and the grant command to fix it.
    let out = w.run(STRANGER, &["tariff", "set", "ward-1", "1"]);
    assert_eq!(out.status.code(), Some(4));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("lacks the admin role") && err.contains("healthsense roles grant admin"), "{err}");
    // Unknown patient and device: exit 4.
    assert_eq!(w.run(STRANGER, &["patient", "show", "nobody"]).status.code(), Some(4));
    assert_eq!(w.run(STRANGER, &["device", "show", "HS-404"]).status.code(), Some(4));
    w.ok(ADMIN, &["roles", "grant", "doctor", &w.addr(DOCTOR)]);
    let out = w.run(DOCTOR, &["patient", "admit", "stay-1", "--device", "HS-404"]);
    assert_eq!(out.status.code(), Some(4));
    assert!(String::from_utf8_lossy(&out.stderr).contains("provision it first"));
    // Bad address: a usage error from the argument parser.
    assert_eq!(w.run(ADMIN, &["roles", "grant", "hub", "0x1234"]).status.code(), Some(2));
    // Unknown role and category: configuration errors, nothing sent.
    assert_eq!(w.run(ADMIN, &["roles", "grant", "nurse", &w.addr(HUB)]).status.code(), Some(3));
    // Missing deployment file: exit 3 and how to make one.
    let out = Command::new(env!("CARGO_BIN_EXE_healthsense"))
        .args(["bill", "stay-1", "--deployment"])
        .arg(Path::new("/nonexistent/deployment.json"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stderr).contains("healthsense deploy"));
}


/// `healthsense devnet up|status|down` as a new user runs them, with the
/// devnet's own keystores for the roles, and a restart that keeps the chain.
#[test]
fn devnet_up_status_down_and_up_again_keeps_the_deployment() {
    let root = tools::project_root().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("devnet");
    let deployment = dir.path().join("deployment.json");
    let ports = [free_port(), free_port(), free_port(), free_port()].map(|p| p.to_string());
    let hs = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_healthsense"))
            .args(args)
            .arg("--deployment")
            .arg(&deployment)
            .env("HEALTHSENSE_HOME", &root)
            .env_remove("HEALTHSENSE_PRIVATE_KEY")
            .output()
            .unwrap()
    };
    let dir_arg = state.to_str().unwrap();
    let out = hs(&["devnet", "status", "--dir", dir_arg]);
    assert_eq!(out.status.code(), Some(1), "status says not running");
    assert!(String::from_utf8_lossy(&out.stdout).contains("devnet up"));

    let up = ["devnet", "up", "--dir", dir_arg, "--rpc-port", &ports[0], "--mqtt-port", &ports[1], "--ipfs-port", &ports[2], "--mqtt5-port", &ports[3]];
    let out = hs(&[&["--json"], &up[..]].concat());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let s: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(s["services"].as_array().unwrap().iter().all(|x| x["up"] == true), "{s}");
    let contract = s["state"]["contract"].as_str().unwrap().to_string();

    // The doctor's keystore from the devnet signs as the doctor.
    let keys = state.join("keys");
    let password = state.join("password");
    let as_role = |role: &str, args: &[&str]| {
        let ks = keys.join(format!("{role}.json"));
        hs(&[args, &["--keystore", ks.to_str().unwrap(), "--password-file", password.to_str().unwrap()]].concat())
    };
    let roles = String::from_utf8(hs(&["roles", "list"]).stdout).unwrap();
    assert_eq!(roles.lines().count(), 4, "admin, hub, doctor, insurer: {roles}");
    let out = as_role("admin", &["device", "provision", "HS-DEV1", "--signer", s["state"]["accounts"][1][1].as_str().unwrap(), "--ward", "ward-1"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = as_role("doctor", &["device", "provision", "HS-DEV2", "--signer", &contract, "--ward", "ward-1"]);
    assert_eq!(out.status.code(), Some(4), "a doctor cannot provision");
    // The hub config it wrote parses and points at this devnet.
    let cfg = healthsense_oracle::Config::load(&state.join("oracle.toml")).unwrap();
    assert_eq!(cfg.chain.contract.unwrap(), contract.parse::<alloy::primitives::Address>().unwrap());

    // Up again while running: says so, changes nothing.
    let again: serde_json::Value = serde_json::from_slice(&hs(&[&["--json"], &up[..]].concat()).stdout).unwrap();
    assert_eq!(again["state"]["pid"], s["state"]["pid"]);

    let out = hs(&["devnet", "down", "--dir", dir_arg]);
    assert!(out.status.success() && String::from_utf8_lossy(&out.stdout).contains("stopped"));
    assert_eq!(hs(&["devnet", "status", "--dir", dir_arg]).status.code(), Some(1));
    assert!(String::from_utf8_lossy(&hs(&["devnet", "down", "--dir", dir_arg]).stdout).contains("no devnet"));

    // A restart loads anvil's state: same contract, the device is still there.
    let out = hs(&[&["--json"], &up[..]].concat());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let s2: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(s2["state"]["contract"], s["state"]["contract"]);
    assert!(String::from_utf8_lossy(&hs(&["device", "show", "HS-DEV1"]).stdout).contains("pending"));
    assert!(hs(&["devnet", "down", "--dir", dir_arg]).status.success());
}

/// Issue 20: a refusal says who refused, the contract (with its error's
/// name) or healthsense's own check of the chain, and names statuses.
#[test]
fn refusals_say_who_refused_and_name_statuses() {
    let w = Ward::new();
    for (role, who) in [("hub", HUB), ("doctor", DOCTOR)] {
        w.ok(ADMIN, &["roles", "grant", role, &w.addr(who)]);
    }
    w.ok(ADMIN, &["device", "provision", "HS-20", "--signer", &w.addr(9), "--ward", "ward-20"]);
    let stderr = |out: &Output| String::from_utf8_lossy(&out.stderr).to_string();

    // The device is pending: the contract refuses admission and names the status.
    let out = w.run(DOCTOR, &["patient", "admit", "stay-20", "--device", "HS-20"]);
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("the contract refused admitPatient(") && err.contains("with InvalidDeviceStatus"), "{err}");
    assert!(err.contains("is pending") && !err.contains("status 1"), "{err}");

    w.ok(HUB, &["device", "activate", "HS-20"]);
    // Issue 20: the ward has no bed rate, so the contract refuses the stay
    // and healthsense says how to price the ward; a zero rate is refused too.
    assert!(w.ok(STRANGER, &["tariff", "show", "ward-20"]).contains("no bed rate"));
    let out = w.run(DOCTOR, &["patient", "admit", "stay-20", "--device", "HS-20"]);
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("the contract refused admitPatient(") && err.contains("with WardHasNoTariff"), "{err}");
    assert!(err.contains("healthsense tariff set WARD RATE") && err.contains("then admit again"), "{err}");
    let out = w.run(ADMIN, &["tariff", "set", "ward-20", "0"]);
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    assert!(stderr(&out).contains("with ZeroTariff") && stderr(&out).contains("minor units a day"), "{}", stderr(&out));
    w.ok(ADMIN, &["tariff", "set", "ward-20", "30000"]);
    w.ok(DOCTOR, &["patient", "admit", "stay-20", "--device", "HS-20"]);
    // A bill before discharge: healthsense refuses, the contract was never asked.
    let out = w.run(STRANGER, &["bill", "stay-20"]);
    assert_eq!(out.status.code(), Some(4));
    let err = stderr(&out);
    assert!(err.contains("healthsense refused `bill` before calling the contract") && err.contains("is admitted"), "{err}");
    assert!(!err.contains("contract refused"), "{err}");
    let out = w.run(STRANGER, &["device", "show", "HS-404"]);
    assert!(stderr(&out).contains("healthsense refused `device show`"), "{}", stderr(&out));

    // After discharge, a charge is refused by the contract, which says "discharged".
    w.ok(DOCTOR, &["patient", "discharge", "stay-20"]);
    let out = w.run(DOCTOR, &["charge", "add", "stay-20", "--code", "99223", "--category", "consultation", "--unit-price", "1"]);
    assert_eq!(out.status.code(), Some(4));
    let err = stderr(&out);
    assert!(err.contains("the contract refused addCharge(") && err.contains("with InvalidPatientStatus"), "{err}");
    assert!(err.contains("is discharged, which does not allow this") && !err.contains("status 2"), "{err}");
    // The archive is not there yet: healthsense says so, by name.
    let out = w.run(STRANGER, &["archive", "status", "stay-20"]);
    assert_eq!(out.status.code(), Some(4));
    let err = stderr(&out);
    assert!(err.contains("healthsense refused `archive`") && err.contains("is discharged and has no archive"), "{err}");
}
