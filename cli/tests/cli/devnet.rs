//! `healthsense devnet` through a hard kill (issue 17): anvil's periodic
//! state snapshots keep the chain, an operator's `oracle.toml` survives
//! `devnet up`, `--broker` runs the devnet without its own broker, and its
//! own broker takes MQTT 5 devices on `--mqtt5-port`.

#[allow(dead_code)] // the devnet tests use only free_port
mod common;

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use healthsense_cli::tools;

use common::free_port;

/// `healthsense ARGS --deployment FILE` as anvil's first dev account (the devnet's admin).
fn hs(root: &Path, deployment: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_healthsense"))
        .args(args)
        .arg("--deployment")
        .arg(deployment)
        .env("HEALTHSENSE_HOME", root)
        .env("HEALTHSENSE_PRIVATE_KEY", "ac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80")
        .output()
        .unwrap()
}

fn ok(out: Output) -> serde_json::Value {
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null)
}

fn kill9(pid: u64) {
    assert!(Command::new("kill").args(["-KILL", &pid.to_string()]).status().unwrap().success(), "kill -9 {pid}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| !s.contains(") Z ")) {
        assert!(Instant::now() < deadline, "{pid} did not die");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits until `path` was modified after `after`; returns that time.
fn wait_for_mtime_after(path: &Path, after: std::time::SystemTime) -> std::time::SystemTime {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(m) = std::fs::metadata(path).and_then(|m| m.modified()).ok().filter(|m| *m > after) {
            return m;
        }
        assert!(Instant::now() < deadline, "{} was not written within 30 s", path.display());
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn the_devnet_keeps_its_chain_through_a_hard_kill_and_the_operators_config() {
    let root = tools::project_root().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let (dir, deployment) = (tmp.path().join("devnet"), tmp.path().join("deployment.json"));
    let dir_arg = dir.to_str().unwrap();
    let ports = [free_port(), free_port(), free_port(), free_port()].map(|p| p.to_string());
    let up = ["--json", "devnet", "up", "--dir", dir_arg, "--rpc-port", &ports[0], "--mqtt-port", &ports[1], "--ipfs-port", &ports[2], "--mqtt5-port", &ports[3]];
    let up1 = [&up[..], &["--state-interval", "1"]].concat();
    let s = ok(hs(&root, &deployment, &up1));
    let contract = s["state"]["contract"].clone();
    // MQTT 5 devices have a port of their own, named in the state, the
    // status and the hub config.
    let mqtt5 = format!("127.0.0.1:{}", ports[3]);
    assert_eq!(s["state"]["mqtt5"], mqtt5.as_str());
    assert!(s["services"].as_array().unwrap().iter().any(|r| r["service"] == "mqtt5" && r["address"] == mqtt5.as_str() && r["up"] == true), "{s}");
    assert!(std::fs::read_to_string(dir.join("oracle.generated.toml")).unwrap().contains(&format!("MQTT 5 at {mqtt5}")));
    ok(hs(&root, &deployment, &["device", "provision", "HS-KEEP", "--signer", &contract.as_str().unwrap().to_string(), "--ward", "ward-1"]));
    // The operator edits the hub config.
    let config = dir.join("oracle.toml");
    let edited = std::fs::read_to_string(&config).unwrap().replace("hub = \"ward-1\"", "hub = \"ward-1-east\"");
    std::fs::write(&config, &edited).unwrap();
    // Past a snapshot that holds the device and its copy by the devnet, a
    // hard kill of anvil and of the devnet itself.
    let (kept, dump) = (dir.join("anvil-state.json"), dir.join("anvil-state.dump.json"));
    let provisioned = std::time::SystemTime::now();
    // The second dump after it was begun after the first one was written.
    let dumped = wait_for_mtime_after(&dump, wait_for_mtime_after(&dump, provisioned));
    wait_for_mtime_after(&kept, dumped);
    kill9(s["state"]["anvilPid"].as_u64().expect("the state names anvil's pid"));
    kill9(s["state"]["pid"].as_u64().unwrap());
    // As if anvil had died in the middle of its next snapshot: anvil rewrites
    // the file in place and would refuse to start from what is left.
    std::fs::write(&dump, b"{\"block\":{\"number\":\"0x").unwrap();

    let s2 = ok(hs(&root, &deployment, &up1));
    assert_ne!(s2["state"]["pid"], s["state"]["pid"], "a new devnet process");
    assert!(std::fs::read(dir.join("anvil-state.dump.torn.json")).unwrap().starts_with(b"{\"block\""), "the torn snapshot is set aside");
    assert_eq!(s2["state"]["contract"], contract);
    let device = String::from_utf8(hs(&root, &deployment, &["device", "show", "HS-KEEP"]).stdout).unwrap();
    assert!(device.contains("pending"), "the device provisioned before the kill is still on chain: {device}");
    assert_eq!(std::fs::read_to_string(&config).unwrap(), edited, "devnet up never overwrites oracle.toml");
    let generated = std::fs::read_to_string(dir.join("oracle.generated.toml")).unwrap();
    assert!(generated.contains("hub = \"ward-1\"") && generated.contains(&format!("port = {}", ports[1])), "{generated}");
    ok(hs(&root, &deployment, &["devnet", "down", "--dir", dir_arg]));
    // On a clean stop anvil dumps once more, and that dump is kept at once.
    assert_eq!(std::fs::read(&kept).unwrap(), std::fs::read(&dump).unwrap(), "the exit dump is the kept snapshot");

    // The operator's own broker: the devnet starts none and points the hub at it.
    let broker = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let theirs = broker.local_addr().unwrap().to_string();
    let s3 = ok(hs(&root, &deployment, &[&up[..], &["--broker", &theirs]].concat()));
    assert_eq!(s3["state"]["mqtt"], theirs.as_str());
    assert_eq!(s3["state"]["contract"], contract, "the chain survives a clean stop as well");
    assert!(s3["state"]["mqtt5"].is_null(), "the operator's broker serves its own versions");
    assert!(std::net::TcpStream::connect(("127.0.0.1", ports[1].parse::<u16>().unwrap())).is_err(), "no broker of its own");
    let generated = std::fs::read_to_string(dir.join("oracle.generated.toml")).unwrap();
    assert!(generated.contains(&format!("port = {}", broker.local_addr().unwrap().port())), "{generated}");
    ok(hs(&root, &deployment, &["devnet", "down", "--dir", dir_arg]));
}

/// Issue 20: `devnet up --dir D` keeps its deployment file in D (not in the
/// working directory), `devnet env --dir D` prints the exports that point
/// the other commands at it, and with them `simulate --admit` provisions
/// as the devnet's admin and admits as its doctor, two separate keys.
#[test]
fn devnet_env_points_the_other_commands_at_its_folder_and_simulate_admits_as_its_doctor() {
    let root = tools::project_root().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let (cwd, elsewhere, dir) = (tmp.path().join("cwd"), tmp.path().join("elsewhere"), tmp.path().join("devnet"));
    std::fs::create_dir_all(&cwd).unwrap();
    std::fs::create_dir_all(&elsewhere).unwrap();
    // No HEALTHSENSE_* from the test's own environment.
    let bare = |cwd: &Path, args: &[&str]| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_healthsense"));
        c.args(args).current_dir(cwd).env("HEALTHSENSE_HOME", &root);
        for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("HEALTHSENSE_") && k != "HEALTHSENSE_HOME") {
            c.env_remove(k);
        }
        c
    };
    let ports = [free_port(), free_port(), free_port()].map(|p| p.to_string());
    let dir_arg = dir.to_str().unwrap();
    let up = ["--json", "devnet", "up", "--dir", dir_arg, "--rpc-port", &ports[0], "--mqtt-port", &ports[1], "--ipfs-port", &ports[2]];
    let s = ok(bare(&cwd, &up).output().unwrap());
    struct Down<'a>(Box<dyn Fn() + 'a>);
    impl Drop for Down<'_> {
        fn drop(&mut self) {
            (self.0)()
        }
    }
    let _down = Down(Box::new(|| {
        let _ = bare(&cwd, &["devnet", "down", "--dir", dir_arg]).output();
    }));
    assert!(dir.join("deployment.json").is_file(), "the deployment file is in the devnet's folder");
    assert!(!cwd.join(".healthsense").exists(), "nothing is written to the working directory");
    assert_eq!(s["state"]["deployment"], dir.join("deployment.json").to_str().unwrap());

    // The exports, as a shell would eval them.
    let out = bare(&elsewhere, &["devnet", "env", "--dir", dir_arg]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    let vars: Vec<(String, String)> = text
        .lines()
        .map(|l| {
            let (name, value) = l.strip_prefix("export ").and_then(|l| l.split_once('=')).unwrap_or_else(|| panic!("not an export line: {l}"));
            (name.to_string(), value.trim_matches('\'').to_string())
        })
        .collect();
    let var = |name: &str| vars.iter().find(|(n, _)| n == name).map(|(_, v)| v.clone()).unwrap_or_else(|| panic!("{name} missing:\n{text}"));
    assert_eq!(var("HEALTHSENSE_DEPLOYMENT"), dir.join("deployment.json").to_str().unwrap());
    assert_eq!(var("HEALTHSENSE_KEYSTORE"), dir.join("keys/admin.json").to_str().unwrap());
    assert_eq!(var("HEALTHSENSE_BROKER"), format!("127.0.0.1:{}", ports[1]));
    let with_env = |args: &[&str]| {
        let mut c = bare(&elsewhere, args);
        c.envs(vars.iter().cloned());
        c
    };
    let roles = with_env(&["roles", "list"]).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&roles.stdout).lines().count(), 4, "{}", String::from_utf8_lossy(&roles.stderr));
    let env_json = ok(bare(&elsewhere, &["--json", "devnet", "env", "--dir", dir_arg]).output().unwrap());
    assert_eq!(env_json["HEALTHSENSE_DEPLOYMENT"], var("HEALTHSENSE_DEPLOYMENT").as_str());

    // The admin key alone cannot admit: healthsense says so before provisioning anything.
    let sim = ["--json", "simulate", "--admit", "--beds", "2", "--rate", "2", "--seconds", "2", "--speed", "100"];
    let out = with_env(&sim).env_remove("HEALTHSENSE_DOCTOR_KEYSTORE").output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "{err}");
    assert!(err.contains("healthsense refused `simulate --admit`") && err.contains("--doctor-keystore"), "{err}");

    // The devnet's hub, then the simulator: admin provisions, doctor admits.
    let mut hub = with_env(&["oracle"]).stdout(std::process::Stdio::null()).stderr(std::fs::File::create(tmp.path().join("hub.log")).unwrap()).spawn().unwrap();
    let out = with_env(&sim).output().unwrap();
    let _ = hub.kill();
    let _ = hub.wait();
    let log = std::fs::read_to_string(tmp.path().join("hub.log")).unwrap_or_default();
    assert!(out.status.success(), "{}\nhub log:\n{log}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["stored"], report["readings"], "{report}");
    let beds = report["maxNews2"].as_array().unwrap_or_else(|| panic!("camelCase maxNews2: {report}"));
    assert_eq!(beds.len(), 2, "{report}");
    for bed in beds {
        let serial = bed[0].as_str().unwrap();
        let shown = ok(with_env(&["--json", "patient", "show", &format!("sim-{serial}")]).output().unwrap());
        assert_eq!(shown["status"], "admitted", "{shown}");
        let device = ok(with_env(&["--json", "device", "show", serial]).output().unwrap());
        assert_eq!(device["status"], "active");
    }
}
