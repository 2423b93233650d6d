//! `healthsense devnet` through a hard kill (issue 17): anvil's periodic
//! state snapshots keep the chain, an operator's `oracle.toml` survives
//! `devnet up`, `--broker` runs the devnet without its own broker, and its
//! own broker takes MQTT 5 devices on `--mqtt5-port`.

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use healthsense_cli::tools;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

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
    // Past a snapshot, a hard kill of anvil and of the devnet itself.
    std::thread::sleep(Duration::from_millis(2_500));
    kill9(s["state"]["anvilPid"].as_u64().expect("the state names anvil's pid"));
    kill9(s["state"]["pid"].as_u64().unwrap());

    let s2 = ok(hs(&root, &deployment, &up1));
    assert_ne!(s2["state"]["pid"], s["state"]["pid"], "a new devnet process");
    assert_eq!(s2["state"]["contract"], contract);
    let device = String::from_utf8(hs(&root, &deployment, &["device", "show", "HS-KEEP"]).stdout).unwrap();
    assert!(device.contains("pending"), "the device provisioned before the kill is still on chain: {device}");
    assert_eq!(std::fs::read_to_string(&config).unwrap(), edited, "devnet up never overwrites oracle.toml");
    let generated = std::fs::read_to_string(dir.join("oracle.generated.toml")).unwrap();
    assert!(generated.contains("hub = \"ward-1\"") && generated.contains(&format!("port = {}", ports[1])), "{generated}");
    ok(hs(&root, &deployment, &["devnet", "down", "--dir", dir_arg]));

    // The operator's own broker: the devnet starts none and points the hub at it.
    let broker = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let theirs = broker.local_addr().unwrap().to_string();
    let s3 = ok(hs(&root, &deployment, &[&up[..], &["--broker", &theirs]].concat()));
    assert_eq!(s3["state"]["mqtt"], theirs.as_str());
    assert!(s3["state"]["mqtt5"].is_null(), "the operator's broker serves its own versions");
    assert!(std::net::TcpStream::connect(("127.0.0.1", ports[1].parse::<u16>().unwrap())).is_err(), "no broker of its own");
    let generated = std::fs::read_to_string(dir.join("oracle.generated.toml")).unwrap();
    assert!(generated.contains(&format!("port = {}", broker.local_addr().unwrap().port())), "{generated}");
    ok(hs(&root, &deployment, &["devnet", "down", "--dir", dir_arg]));
}
