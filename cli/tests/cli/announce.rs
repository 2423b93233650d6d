//! The contract announcement a device can use, end to end: a `healthsense
//! oracle` process on a real anvil with its embedded broker and its API, and
//! the embedded IPFS node started only after the hub (so the hub must start
//! without it and announce the ABI's CID once it is pinned). Addresses in MQTT
//! and CLI output are EIP-55 checksummed; inputs take any case.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use alloy::node_bindings::Anvil;
use alloy::primitives::Address;
use alloy::transports::http::reqwest;
use healthsense_abi::bindings::ABI_JSON;
use healthsense_cli::tools;
use healthsense_oracle::protocol::{self, Topics};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde_json::Value;

use common::free_port;

const ADMIN: usize = 0;
const HUB: usize = 1;
const DOCTOR: usize = 2;


/// A running `healthsense oracle`, killed on drop.
struct Oracle(Child);

impl Drop for Oracle {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Retained messages on `topic`, in arrival order, as raw text.
async fn retained_watch(port: u16, id: &str, topics: &[String]) -> tokio::sync::mpsc::UnboundedReceiver<(String, String)> {
    let mut opts = MqttOptions::new(id, "127.0.0.1", port);
    opts.set_keep_alive(Duration::from_secs(5));
    let (client, mut ev) = AsyncClient::new(opts, 100);
    for t in topics {
        client.subscribe(t, QoS::AtLeastOnce).await.unwrap();
    }
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let _client = client;
        loop {
            match ev.poll().await {
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let _ = tx.send((p.topic.clone(), String::from_utf8_lossy(&p.payload).to_string()));
                }
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    });
    rx
}

/// The next message on `topic` that satisfies `want`; messages on other
/// topics are skipped (dropped).
async fn next_on(
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<(String, String)>,
    topic: &str,
    within: Duration,
    want: impl Fn(&Value) -> bool,
) -> (String, Value) {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some((t, raw))) if t == topic => {
                let v: Value = serde_json::from_str(&raw).unwrap();
                if want(&v) {
                    return (raw, v);
                }
            }
            Ok(Some(_)) => {}
            _ => panic!("no message on {topic} as wanted within {within:?}"),
        }
    }
}

#[test]
fn the_contract_announcement_carries_a_fetchable_abi_and_checksummed_addresses() {
    let root = tools::project_root().unwrap();
    let anvil = Anvil::new().path(tools::foundry_tool(&root, "anvil").unwrap()).spawn();
    let dir = tempfile::tempdir().unwrap();
    let deployment = dir.path().join("deployment.json");
    let cli = |who: usize, args: &[&str]| {
        let out = common::healthsense(&anvil, who, &deployment, &root, args);
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    };
    cli(ADMIN, &["deploy", "--rpc-url", anvil.endpoint().as_str()]);
    let d: Value = serde_json::from_slice(&std::fs::read(&deployment).unwrap()).unwrap();
    let contract: Address = d["address"].as_str().unwrap().parse().unwrap();
    let (hub, doctor) = (anvil.addresses()[HUB], anvil.addresses()[DOCTOR]);
    let checksummed = |a: Address| a.to_checksum(None);
    // The deployment file (CLI output) is checksummed.
    assert_eq!(d["address"].as_str(), Some(checksummed(contract).as_str()));

    // Inputs take any case: a lowercase and an all-uppercase address.
    let lower = format!("{hub:#x}");
    assert_eq!(lower, lower.to_lowercase());
    cli(ADMIN, &["roles", "grant", "hub", &lower]);
    let upper = format!("0x{}", alloy::hex::encode_upper(doctor));
    cli(ADMIN, &["roles", "grant", "doctor", &upper]);
    let check: Value = serde_json::from_str(&cli(ADMIN, &["--json", "roles", "check", &upper])).unwrap();
    assert_eq!(check["address"].as_str(), Some(checksummed(doctor).as_str()), "{check}");
    assert_eq!(check["roles"], serde_json::json!(["doctor"]));
    let signer = alloy::signers::local::PrivateKeySigner::random().address();
    cli(ADMIN, &["device", "provision", "HS-CASE", "--signer", &format!("{signer:#x}"), "--ward", "ward-3"]);
    let device: Value = serde_json::from_str(&cli(ADMIN, &["--json", "device", "show", "HS-CASE"])).unwrap();
    assert_eq!(device["signer"].as_str(), Some(checksummed(signer).as_str()), "{device}");

    // The hub, with its archive's IPFS node not up yet, its API on, and the
    // contract given in lowercase in its config.
    let (ipfs_port, mqtt_port, api_port, metrics_port) = (free_port(), free_port(), free_port(), free_port());
    let config = dir.path().join("ward-3.toml");
    std::fs::write(
        &config,
        format!(
            "hub = \"ward-3\"\nward = \"ward-3\"\nstore = \"{}\"\n[chain]\ncontract = \"{contract:#x}\"\npoll_ms = 100\n\
             [mqtt]\nembedded = true\nauth = false\nlisten = \"127.0.0.1:{mqtt_port}\"\n[metrics]\nlisten = \"127.0.0.1:{metrics_port}\"\n\
             [api]\nenabled = true\nlisten = \"127.0.0.1:{api_port}\"\n[archive]\nipfs_api = \"http://127.0.0.1:{ipfs_port}\"\n",
            dir.path().join("ward-3.sqlite").display()
        ),
    )
    .unwrap();
    let log = dir.path().join("ward-3.log");
    let child = Command::new(env!("CARGO_BIN_EXE_healthsense"))
        .args(["oracle", "--config"])
        .arg(&config)
        .arg("--deployment")
        .arg(&deployment)
        .env("HEALTHSENSE_HUB_PRIVATE_KEY", alloy::hex::encode(anvil.keys()[HUB].to_bytes()))
        .env("HEALTHSENSE_LOG", "info,rumqttd=warn")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let _oracle = Oracle(child);
    let logs = || std::fs::read_to_string(&log).unwrap_or_default();
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::net::TcpStream::connect(("127.0.0.1", metrics_port)).is_err() {
        assert!(Instant::now() < deadline, "the hub did not start without IPFS:\n{}", logs());
        std::thread::sleep(Duration::from_millis(50));
    }

    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async {
        let online = Topics::new("ward-3").unwrap().online();
        let contract_topic = protocol::CONTRACT_TOPIC.to_string();
        // One watcher per topic: `next_on` skips other topics' messages,
        // and the hub may announce its presence before or after the contract.
        let mut rx = retained_watch(mqtt_port, "device", &[contract_topic.clone()]).await;
        let mut presence_rx = retained_watch(mqtt_port, "device-presence", &[online.clone()]).await;

        // Announced at once, without the CID while IPFS is down.
        let abi_url = format!("http://127.0.0.1:{api_port}/api/v1/abi");
        let (raw, first) = next_on(&mut rx, &contract_topic, Duration::from_secs(30), |_| true).await;
        assert_eq!(first["abiCid"], Value::Null, "{raw}");
        assert_eq!(first["abiUrl"].as_str(), Some(abi_url.as_str()), "{raw}");
        assert!(first.get("abi").is_none(), "no path inside the repository is announced: {raw}");
        assert_eq!(first["chainId"], anvil.chain_id());
        assert_eq!(first["address"].as_str(), Some(checksummed(contract).as_str()), "{raw}");
        assert!(!raw.contains(&format!("{contract:#x}")), "a lowercase address in {raw}");
        let (raw, presence) = next_on(&mut presence_rx, &online, Duration::from_secs(30), |v| v["online"] == true).await;
        assert_eq!(presence["hub"].as_str(), Some(checksummed(hub).as_str()), "{raw}");

        // The API serves the ABI, without signing in.
        let served = reqwest::get(&abi_url).await.unwrap();
        assert_eq!(served.status().as_u16(), 200);
        assert_eq!(served.text().await.unwrap(), ABI_JSON);

        // IPFS comes up on the configured port: the hub pins the ABI and
        // announces again with the CID, which fetches the ABI.
        let node_cfg = healthsense_ipfs_node::NodeConfig::new(dir.path().join("ipfs"), ([127, 0, 0, 1], ipfs_port).into());
        let node = healthsense_ipfs_node::start(node_cfg).await.unwrap();
        let (raw, announced) =
            next_on(&mut rx, &contract_topic, Duration::from_secs(90), |v| v["abiCid"].is_string()).await;
        let cid = announced["abiCid"].as_str().unwrap().to_string();
        let ipfs = healthsense_ipfs::Ipfs::new(&node.api_url()).unwrap();
        assert_eq!(ipfs.cat(&cid).await.unwrap(), ABI_JSON.as_bytes(), "{raw}");
        assert!(ipfs.is_pinned(&cid).await.unwrap());
        assert_eq!(announced["abiUrl"].as_str(), Some(abi_url.as_str()));
        assert_eq!(announced["address"].as_str(), Some(checksummed(contract).as_str()));
        // A device that connects later gets the announcement with the CID.
        let mut late = retained_watch(mqtt_port, "late-device", &[contract_topic.clone()]).await;
        let (_, retained) = next_on(&mut late, &contract_topic, Duration::from_secs(30), |_| true).await;
        assert_eq!(retained, announced);
        node.shutdown().await;
    });
    assert!(logs().contains("ABI pinned to IPFS"), "{}", logs());
}
