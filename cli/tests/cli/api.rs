//! The read side end to end: a hub with its REST API on a real anvil, its
//! embedded broker and real device signatures; doctors, an admin, an insurer
//! and patients signing in with EIP-4361; NEWS2 alerts on the alert topic;
//! and the dashboard driven in headless Chromium (playwright-core).

mod common;

use std::io::BufRead;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use alloy::node_bindings::{Anvil, AnvilInstance};
use alloy::primitives::{Address, B256};
use alloy::providers::{Provider, ProviderBuilder};
use alloy::signers::local::PrivateKeySigner;
use alloy::signers::SignerSync;
use alloy::sol_types::SolCall;
use alloy::transports::http::reqwest;
use healthsense_abi::bindings::HealthSense as H;
use healthsense_abi::rules::reading::reading_leaf;
use healthsense_abi::rules::{eip712, ids, merkle};
use healthsense_abi::Reading;
use healthsense_cli::admin::Client;
use healthsense_cli::{artifact, deploy, deployment::Deployment, tools};
use healthsense_oracle::protocol::{self, Code, DeviceTopic, StatusReply, Topics};
use healthsense_oracle::RunningHub;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde_json::{json, Value};

const ADMIN: usize = 0;
const HUB: usize = 1;
const DOCTOR: usize = 2;
const INSURER: usize = 3;
const HUB9: usize = 4;

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

fn key(anvil: &AnvilInstance, i: usize) -> PrivateKeySigner {
    PrivateKeySigner::from_signing_key(anvil.keys()[i].clone().into())
}

/// anvil, the EVM edition deployed, the roles granted; an embedded IPFS
/// node and a master key the hubs archive discharged stays with.
struct Devnet {
    anvil: AnvilInstance,
    dir: tempfile::TempDir,
    deployment: PathBuf,
    d: Deployment,
    domain: B256,
    ipfs: healthsense_ipfs_node::RunningNode,
    archive_key: PathBuf,
}

impl Devnet {
    async fn new() -> Devnet {
        Self::new_at(None).await
    }

    /// A devnet whose chain starts at `genesis` (seconds), when given.
    async fn new_at(genesis: Option<u64>) -> Devnet {
        let root = tools::project_root().unwrap();
        let mut anvil = Anvil::new().path(tools::foundry_tool(&root, "anvil").unwrap());
        if let Some(t) = genesis {
            anvil = anvil.arg("--timestamp").arg(t.to_string());
        }
        let anvil = anvil.spawn();
        let provider = ProviderBuilder::new().connect_http(anvil.endpoint_url());
        let admin = anvil.addresses()[ADMIN];
        let d = deploy::deploy_evm(&provider, anvil.endpoint().as_str(), admin, admin, artifact::load_or_build(&root).unwrap())
            .await
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let deployment = dir.path().join("deployment.json");
        d.save(&deployment).unwrap();
        let domain = eip712::domain_separator(d.chain_id, d.address);
        let ipfs = healthsense_ipfs_node::start(healthsense_ipfs_node::NodeConfig::new(dir.path().join("ipfs"), ([127, 0, 0, 1], 0).into()))
            .await
            .unwrap();
        let archive_key = dir.path().join("archive.key");
        std::fs::write(&archive_key, healthsense_oracle::archive::seal::Secret::random().to_hex()).unwrap();
        let net = Devnet { anvil, dir, deployment, d, domain, ipfs, archive_key };
        for (role, who) in [(ids::HUB_ROLE, HUB), (ids::HUB_ROLE, HUB9), (ids::DOCTOR_ROLE, DOCTOR), (ids::INSURER_ROLE, INSURER)] {
            net.send(ADMIN, H::grantRoleCall { role, account: net.addr(who) }).await;
        }
        // The contract admits no one to a ward without a bed rate.
        for ward in ["ward-3", "ward-9"] {
            net.send(ADMIN, H::setTariffCall { ward: ids::ward_id(ward), dailyRate: 50_000 }).await;
        }
        net
    }

    fn addr(&self, who: usize) -> Address {
        self.anvil.addresses()[who]
    }

    /// Sends a call from anvil dev account `who` (the node signs).
    async fn send<C: SolCall>(&self, who: usize, call: C) {
        let p = ProviderBuilder::new().connect_http(self.anvil.endpoint_url());
        Client::new(p, self.d.clone(), self.addr(who)).send_from(self.addr(who), call).await.unwrap();
    }

    async fn view<C: SolCall>(&self, call: C) -> C::Return {
        let p = ProviderBuilder::new().connect_http(self.anvil.endpoint_url());
        Client::new(p, self.d.clone(), Address::ZERO).view(call).await.unwrap()
    }

    fn cli(&self, who: usize, args: &[&str]) -> String {
        let root = tools::project_root().unwrap();
        let out = common::healthsense(&self.anvil, who, &self.deployment, &root, args);
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    }

    /// Starts an in-process hub with its API on a free port; `api` is more
    /// of its `[api]` section, `alerts` its `[alerts]` section.
    /// The config is also written to `{name}.toml` in the devnet's directory,
    /// for the CLI's `--oracle-config` (the hub store and the master key).
    async fn hub(&self, name: &str, ward: &str, who: usize, session_ttl_s: u64, api: &str, alerts: &str) -> RunningHub {
        let text = format!(
            "hub = \"{name}\"\nward = \"{ward}\"\nstore = \"{}\"\n[chain]\nrpc_url = \"{}\"\ncontract = \"{}\"\npoll_ms = 100\n\
             [mqtt]\nauth = false\nlisten = \"127.0.0.1:0\"\n[anchor]\nbatch_size = 10\ninterval_ms = 300\nmax_backoff_ms = 1000\n\
             [metrics]\nlisten = \"127.0.0.1:0\"\n[api]\nenabled = true\nlisten = \"127.0.0.1:0\"\nsession_ttl_s = {session_ttl_s}\n{api}\n\
             [alerts]\n{alerts}\n\
             [archive]\nipfs_api = \"{}\"\nkey_file = \"{}\"\nsettle_ms = 300\nmax_backoff_ms = 1000\n",
            self.dir.path().join(format!("{name}.sqlite")).display(),
            self.anvil.endpoint(),
            self.d.address,
            self.ipfs.api_url(),
            self.archive_key.display(),
        );
        std::fs::write(self.dir.path().join(format!("{name}.toml")), &text).unwrap();
        let cfg = healthsense_oracle::Config::parse(&text).unwrap();
        healthsense_oracle::start(cfg, key(&self.anvil, who), Default::default()).await.unwrap()
    }
}

/// A bedside device on the hub's broker.
struct Bed {
    serial: String,
    key: PrivateKeySigner,
    seq: u64,
}

/// Device-side MQTT: hello, vitals, state; and the hub's alert topic.
struct Beds {
    client: AsyncClient,
    topics: Topics,
    replies: tokio::sync::mpsc::UnboundedReceiver<(String, StatusReply)>,
    alerts: tokio::sync::mpsc::UnboundedReceiver<(Value, Instant)>,
}

impl Beds {
    async fn connect(hub: &RunningHub, name: &str) -> Beds {
        let mut opts = MqttOptions::new(format!("beds-{name}"), hub.mqtt.0.clone(), hub.mqtt.1);
        opts.set_keep_alive(Duration::from_secs(5)).set_inflight(500);
        let (client, mut ev) = AsyncClient::new(opts, 10_000);
        let topics = Topics::new(name).unwrap();
        client.subscribe(topics.device_filter(DeviceTopic::Status), QoS::AtLeastOnce).await.unwrap();
        client.subscribe(topics.alerts(), QoS::AtLeastOnce).await.unwrap();
        let (tx, replies) = tokio::sync::mpsc::unbounded_channel();
        let (atx, alerts) = tokio::sync::mpsc::unbounded_channel();
        let t = topics.clone();
        tokio::spawn(async move {
            loop {
                match ev.poll().await {
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        if p.topic == t.alerts() {
                            let _ = atx.send((serde_json::from_slice(&p.payload).unwrap_or(Value::Null), Instant::now()));
                        } else if let (Some((serial, _)), Ok(r)) = (t.parse(&p.topic), serde_json::from_slice(&p.payload)) {
                            let _ = tx.send((serial.to_string(), r));
                        }
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        });
        Beds { client, topics, replies, alerts }
    }

    async fn hello(&mut self, b: &Bed) {
        let body = serde_json::to_vec(&protocol::Hello { signer: b.key.address(), firmware: None }).unwrap();
        for _ in 0..30 {
            self.client.publish(self.topics.device(&b.serial, DeviceTopic::Hello), QoS::AtLeastOnce, false, body.clone()).await.unwrap();
            let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
            while let Ok(Some((s, r))) = tokio::time::timeout_at(deadline, self.replies.recv()).await {
                if s == b.serial && r.code == Code::Registered {
                    return;
                }
            }
        }
        panic!("{} not registered", b.serial);
    }

    async fn vitals(&self, domain: B256, b: &mut Bed, f: impl Fn(&mut Reading)) -> Reading {
        b.seq += 1;
        let mut r = healthsense_cli::simulate::steady_reading(&b.serial, b.seq, b.seq);
        f(&mut r);
        let payload = protocol::sign_vitals(&b.key, domain, &b.serial, &r).unwrap();
        self.client.publish(self.topics.device(&b.serial, DeviceTopic::Vitals), QoS::AtLeastOnce, false, payload).await.unwrap();
        r
    }

    async fn state(&self, b: &Bed, battery: f64) {
        let payload = protocol::state_pack(&b.serial, battery, false);
        self.client.publish(self.topics.device(&b.serial, DeviceTopic::State), QoS::AtLeastOnce, false, payload).await.unwrap();
    }
}

/// Sepsis-like vitals: RR 26 (3), SpO2 90 (3), SBP 95 (2), HR 125 (2), 38.7 °C (1): NEWS2 11, high.
fn deteriorated(r: &mut Reading) {
    (r.respRate, r.spo2, r.systolic, r.diastolic, r.heartRate, r.temperature) = (26, 90, 95, 60, 125, 3_870);
}

/// Provisions `serial` for `ward` and returns the bed.
async fn provision(net: &Devnet, serial: &str, ward: &str) -> Bed {
    let key = PrivateKeySigner::random();
    net.send(ADMIN, H::provisionDeviceCall { deviceId: ids::device_id(serial), signer: key.address(), ward: ids::ward_id(ward) }).await;
    Bed { serial: serial.into(), key, seq: 0 }
}

/// The API as a client sees it.
struct Api {
    base: String,
    http: reqwest::Client,
}

impl Api {
    fn new(hub: &RunningHub) -> Api {
        Api { base: format!("http://{}", hub.api_addr.expect("api enabled")), http: reqwest::Client::new() }
    }

    async fn call(&self, method: reqwest::Method, path: &str, token: Option<&str>, body: Option<Value>) -> (u16, Value) {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.header("content-type", "application/json").body(b.to_string());
        }
        let res = req.send().await.unwrap();
        let status = res.status().as_u16();
        let text = res.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    /// GET, asserting the status; returns the body.
    async fn get(&self, path: &str, token: Option<&str>, want: u16) -> Value {
        let (status, body) = self.call(reqwest::Method::GET, path, token, None).await;
        assert_eq!(status, want, "GET {path}: {body}");
        if want >= 400 {
            assert!(body["error"].as_str().is_some_and(|e| !e.is_empty()), "GET {path}: errors say why: {body}");
        }
        body
    }

    async fn challenge(&self, address: Address, stay: Option<u64>) -> String {
        let (s, b) = self.call(reqwest::Method::POST, "/api/v1/auth/challenge", None, Some(json!({ "address": address, "stay": stay }))).await;
        assert_eq!(s, 200, "{b}");
        b["message"].as_str().unwrap().to_string()
    }

    async fn session(&self, message: &str, signature: &str) -> (u16, Value) {
        self.call(reqwest::Method::POST, "/api/v1/auth/session", None, Some(json!({ "message": message, "signature": signature }))).await
    }

    /// `POST …/ack` with `token`, the dashboard's CSRF header when `csrf`,
    /// and an `Origin` when given.
    async fn ack(&self, path: &str, token: Option<&str>, csrf: bool, origin: Option<&str>) -> (u16, Value) {
        let mut req = self.http.post(format!("{}{path}", self.base));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if csrf {
            req = req.header("x-healthsense-csrf", "1");
        }
        if let Some(o) = origin {
            req = req.header("origin", o);
        }
        let res = req.send().await.unwrap();
        let status = res.status().as_u16();
        (status, serde_json::from_str(&res.text().await.unwrap()).unwrap_or(Value::Null))
    }

    /// Signs in with `key` (a patient names `stay`); returns the token.
    async fn sign_in(&self, key: &PrivateKeySigner, stay: Option<u64>) -> String {
        let message = self.challenge(key.address(), stay).await;
        let (s, b) = self.session(&message, &sig(key, &message)).await;
        assert_eq!(s, 200, "{b}");
        b["token"].as_str().unwrap().to_string()
    }
}

fn sig(key: &PrivateKeySigner, message: &str) -> String {
    alloy::hex::encode_prefixed(key.sign_message_sync(message.as_bytes()).unwrap().as_bytes())
}

async fn wait_for<T>(what: &str, mut f: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[test]
fn rest_api_serves_each_role_its_records_and_nothing_else() {
    rt().block_on(async {
        let net = Devnet::new().await;
        let (alice, bob, carol) = (PrivateKeySigner::random(), PrivateKeySigner::random(), PrivateKeySigner::random());
        let mut a_bed = provision(&net, "HS-A", "ward-3").await;
        let mut b_bed = provision(&net, "HS-B", "ward-3").await;
        let c_bed = provision(&net, "HS-C", "ward-9").await;
        // Two lower readings step an alert down (the default is 15 minutes).
        let hub = net.hub("ward-3", "ward-3", HUB, 600, "", "hold_readings = 2").await;
        let hub9 = net.hub("ward-9", "ward-9", HUB9, 2, "", "").await;
        let mut beds = Beds::connect(&hub, "ward-3").await;
        beds.hello(&a_bed).await;
        beds.hello(&b_bed).await;
        let mut beds9 = Beds::connect(&hub9, "ward-9").await;
        beds9.hello(&c_bed).await;

        // Admissions: Alice through the CLI's --wallet, the others directly.
        let out = net.cli(DOCTOR, &["patient", "admit", "--wallet", &alice.address().to_string(), "--stay", "1", "--device", "HS-A"]);
        let pa = ids::patient_id(alice.address(), 1);
        assert!(out.contains(&pa.to_string()) && out.contains("signs in with"), "{out}");
        let pb = ids::patient_id(bob.address(), 1);
        let pc = ids::patient_id(carol.address(), 2);
        net.send(DOCTOR, H::admitPatientCall { patientId: pb, deviceId: ids::device_id("HS-B") }).await;
        net.send(DOCTOR, H::admitPatientCall { patientId: pc, deviceId: ids::device_id("HS-C") }).await;
        net.send(DOCTOR, H::addChargeCall { patientId: pa, code: ids::charge_code("99213").unwrap(), category: 1, quantity: 2, unitPrice: 12_500 }).await;
        net.send(INSURER, H::setPolicyCall { patientId: pa, coverageBps: 8_000, deductible: 0, cap: u64::MAX, coveredCategories: 0xff }).await;

        // Readings: steady ones, then Alice deteriorates.
        for _ in 0..25 {
            beds.vitals(net.domain, &mut a_bed, |_| {}).await;
            beds.vitals(net.domain, &mut b_bed, |_| {}).await;
        }
        beds.state(&a_bed, 81.5).await;
        let published = Instant::now();
        let bad = beds.vitals(net.domain, &mut a_bed, deteriorated).await;
        let (alert, at) = tokio::time::timeout(Duration::from_secs(30), beds.alerts.recv()).await.expect("an alert").unwrap();
        assert_eq!((alert["serial"].as_str(), alert["seq"].as_u64()), (Some("HS-A"), Some(bad.seq)), "{alert}");
        assert_eq!((alert["level"].as_str(), alert["previous"].as_str(), alert["score"].as_u64()), (Some("high"), Some("none"), Some(11)));
        assert_eq!(alert["parameters"]["respRate"], 3);
        eprintln!("publish -> alert: {:?}", at - published);
        for _ in 0..3 {
            beds.vitals(net.domain, &mut a_bed, deteriorated).await;
        }


        let api = Api::new(&hub);
        let t = |s: &str| s.to_string();
        // --- sign-in
        assert_eq!(api.get("/api/v1/openapi.json", None, 200).await["openapi"], "3.1.0");
        let doctor = api.sign_in(&key(&net.anvil, DOCTOR), None).await;
        let admin = api.sign_in(&key(&net.anvil, ADMIN), None).await;
        let insurer = api.sign_in(&key(&net.anvil, INSURER), None).await;
        let alice_t = api.sign_in(&alice, Some(1)).await;
        let bob_t = api.sign_in(&bob, Some(1)).await;
        {
            let m = api.challenge(alice.address(), Some(1)).await;
            let s = sig(&alice, &m);
            let (code, _) = api.session(&m, &s).await;
            assert_eq!(code, 200);
            let (code, body) = api.session(&m, &s).await;
            assert_eq!(code, 401, "a replayed nonce is refused: {body}");
            assert!(body["error"].as_str().unwrap().contains("nonce"));
            let m = api.challenge(alice.address(), None).await;
            let other_domain = m.replacen(&format!("{}", hub.api_addr.unwrap()), "evil.example:8080", 1);
            let (code, body) = api.session(&other_domain, &sig(&alice, &other_domain)).await;
            assert_eq!(code, 401, "a message for another domain is refused: {body}");
            let m = api.challenge(alice.address(), None).await;
            let (code, _) = api.session(&m, &sig(&bob, &m)).await;
            assert_eq!(code, 401, "a signature by someone else");
            let (code, _) = api.session(&m, "0x00").await;
            assert_eq!(code, 401, "garbage signature");
            let m = api.challenge(alice.address(), None).await;
            let (code, body) = api.session(&m, &sig(&alice, &m)).await;
            assert_eq!(code, 403, "no role and no stay: {body}");
            let m = api.challenge(alice.address(), Some(7)).await;
            let (code, body) = api.session(&m, &sig(&alice, &m)).await;
            assert_eq!(code, 403, "a stay that was never admitted: {body}");
            let (code, _) = api.call(reqwest::Method::POST, "/api/v1/auth/challenge", None, Some(json!({ "address": "nope" }))).await;
            assert_eq!(code, 400);
            let (code, _) = api.call(reqwest::Method::POST, "/api/v1/auth/session", None, Some(json!({}))).await;
            assert_eq!(code, 400);
        }
        // --- the alert policy: one lower reading does not step the alert down
        // (hold_readings = 2); a doctor acknowledges it meanwhile.
        let ua = format!("/api/v1/patients/{pa}");
        let calm = beds.vitals(net.domain, &mut a_bed, |_| {}).await;
        wait_for("the first calm reading stored", async || {
            (api.get(&ua, Some(&doctor), 200).await["latest"]["seq"].as_u64() == Some(calm.seq)).then_some(())
        })
        .await;
        // `latest` shows a reading once it is scored, and the hub stores an
        // alert after it publishes it (docs/ORACLE.md, "NEWS2 alerts"): on a
        // loaded CI machine the HIGH alert's row came after the calm reading
        // showed, so wait for that row before counting.
        let al = wait_for("the HIGH alert stored", async || {
            let al = api.get(&format!("{ua}/alerts"), Some(&doctor), 200).await;
            (al["items"][0]["id"] == alert["id"]).then_some(al)
        })
        .await;
        assert_eq!(al["items"].as_array().unwrap().len(), 1, "still the one HIGH alert: {al}");
        let high = al["items"][0].clone();
        assert_eq!((high["level"].as_str(), high["ack"].clone()), (Some("high"), Value::Null));
        let ack_path = format!("{ua}/alerts/{}/ack", high["id"]);
        // Refused: no session, no CSRF header, another origin, every role but the doctor.
        assert_eq!(api.ack(&ack_path, None, true, None).await.0, 401);
        assert_eq!(api.ack(&ack_path, Some(&doctor), false, None).await.0, 403, "no CSRF header");
        assert_eq!(api.ack(&ack_path, Some(&doctor), true, Some("http://evil.example")).await.0, 403, "cross-site");
        for tok in [&alice_t, &bob_t, &insurer, &admin] {
            let (code, body) = api.ack(&ack_path, Some(tok), true, None).await;
            assert_eq!(code, 403, "{body}");
            assert!(body["error"].as_str().is_some_and(|e| !e.is_empty()));
        }
        assert_eq!(api.ack(&format!("{ua}/alerts/x/ack"), Some(&doctor), true, None).await.0, 400);
        assert_eq!(api.ack(&format!("{ua}/alerts/99999/ack"), Some(&doctor), true, None).await.0, 404);
        assert_eq!(api.get(&format!("{ua}/alerts"), Some(&doctor), 200).await["items"][0]["ack"], Value::Null, "refusals wrote nothing");
        let origin = format!("http://{}", hub.api_addr.unwrap());
        let (code, acked) = api.ack(&ack_path, Some(&doctor), true, Some(&origin)).await;
        assert_eq!(code, 200, "{acked}");
        assert_eq!((acked["id"].clone(), acked["ack"]["by"].clone()), (high["id"].clone(), json!(net.addr(DOCTOR))));
        let (on_topic, _) = tokio::time::timeout(Duration::from_secs(30), beds.alerts.recv()).await.expect("the ack on the topic").unwrap();
        assert_eq!((on_topic["kind"].as_str(), on_topic["id"].clone(), on_topic["ack"]["by"].clone()), (Some("ack"), high["id"].clone(), json!(net.addr(DOCTOR))));
        let (code, again) = api.ack(&ack_path, Some(&doctor), true, None).await;
        assert_eq!((code, again["ack"].clone()), (200, acked["ack"].clone()), "a second acknowledgement answers the first");
        let ward = api.get("/api/v1/ward", Some(&doctor), 200).await;
        let bed = ward["beds"].as_array().unwrap().iter().find(|b| b["serial"] == "HS-A").unwrap().clone();
        assert_eq!((bed["alert"]["level"].as_str(), bed["alert"]["ack"]["by"].clone()), (Some("high"), json!(net.addr(DOCTOR))));
        assert_eq!(ward["alerts"][0]["id"], high["id"], "the ward's open alerts");
        // The second calm reading steps it down.
        beds.vitals(net.domain, &mut a_bed, |_| {}).await;
        let (resolved, _) = tokio::time::timeout(Duration::from_secs(30), beds.alerts.recv()).await.expect("a resolution").unwrap();
        assert_eq!((resolved["kind"].as_str(), resolved["level"].as_str(), resolved["previous"].as_str()), (Some("alert"), Some("none"), Some("high")));
        // The hub publishes an alert, then stores it (docs/ORACLE.md, "NEWS2
        // alerts"): the acknowledgement is refused once the resolution is stored.
        wait_for("the resolution stored", async || {
            (api.get(&format!("{ua}/alerts"), Some(&doctor), 200).await["items"][0]["id"] == resolved["id"]).then_some(())
        })
        .await;
        let (code, body) = api.ack(&ack_path, Some(&doctor), true, None).await;
        assert_eq!(code, 409, "no longer the current alert: {body}");
        let (code, body) = api.ack(&format!("{ua}/alerts/{}/ack", resolved["id"]), Some(&doctor), true, None).await;
        assert_eq!(code, 409, "a resolution: {body}");
        let total_a = a_bed.seq;

        // --- me
        let me = api.get("/api/v1/me", Some(&doctor), 200).await;
        assert_eq!((me["role"].as_str(), me["ward"].as_str()), (Some("doctor"), Some("ward-3")));
        // Addresses are EIP-55 checksummed.
        let eip55 = |a: Address| Some(a.to_checksum(None));
        assert_eq!(me["who"]["address"].as_str().map(str::to_string), eip55(net.addr(DOCTOR)), "{me}");
        assert_eq!(me["contract"].as_str().map(str::to_string), eip55(net.d.address), "{me}");
        assert_eq!(api.get("/api/v1/me", Some(&alice_t), 200).await["who"]["patient"], json!(pa));
        api.get("/api/v1/me", None, 401).await;
        api.get("/api/v1/me", Some("not-a-token"), 401).await;

        // --- ward
        let ward = api.get("/api/v1/ward", Some(&doctor), 200).await;
        let bed_a = ward["beds"].as_array().unwrap().iter().find(|b| b["serial"] == "HS-A").unwrap().clone();
        assert_eq!((bed_a["patient"].clone(), bed_a["battery"].as_f64(), bed_a["online"].as_bool()), (json!(pa), Some(81.5), Some(true)));
        assert_eq!(bed_a["latest"]["seq"].as_u64(), Some(total_a));
        assert!(ward["alerts"].as_array().unwrap().is_empty(), "no open alert once resolved: {ward}");
        assert!(ward["beds"].as_array().unwrap().iter().all(|b| b["serial"] != "HS-C"), "another ward's bed");
        assert_eq!((ward["currency"].as_str(), bed_a["stale"].as_bool()), (Some("EUR"), Some(false)));
        assert!(bed_a["ageMs"].as_u64().is_some_and(|a| a < 60_000), "{bed_a}");
        let order: Vec<(i64, u64)> = ward["beds"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| (b["latest"]["news2"].as_i64().unwrap_or(-1), b["ageMs"].as_u64().unwrap_or(u64::MAX)))
            .collect();
        assert!(order.windows(2).all(|w| w[0].0 > w[1].0 || (w[0].0 == w[1].0 && w[0].1 >= w[1].1)), "by NEWS2, then age: {order:?}");
        for tok in [&alice_t, &insurer, &admin] {
            api.get("/api/v1/ward", Some(tok), 403).await;
        }
        api.get("/api/v1/ward", None, 401).await;

        // --- patients
        let list = api.get("/api/v1/patients", Some(&doctor), 200).await;
        let ids_listed: Vec<Value> = list["items"].as_array().unwrap().iter().map(|p| p["id"].clone()).collect();
        assert_eq!(ids_listed, vec![json!(pb), json!(pa)], "the ward's stays, newest first; not ward-9's");
        let own = api.get("/api/v1/patients", Some(&alice_t), 200).await;
        assert_eq!(own["items"].as_array().unwrap().len(), 1);
        api.get("/api/v1/patients", Some(&insurer), 403).await;
        api.get("/api/v1/patients", None, 401).await;

        // --- one patient
        let (ub, uc) = (format!("/api/v1/patients/{pb}"), format!("/api/v1/patients/{pc}"));
        let rec = api.get(&ua, Some(&doctor), 200).await;
        assert_eq!((rec["status"].as_str(), rec["serial"].as_str()), (Some("admitted"), Some("HS-A")));
        assert_eq!(rec["archive"]["state"], "not-discharged");
        assert_eq!(api.get(&ua, Some(&alice_t), 200).await["latest"]["seq"].as_u64(), Some(total_a));
        api.get(&ub, Some(&alice_t), 403).await;
        api.get(&uc, Some(&doctor), 403).await;
        api.get(&ua, Some(&admin), 403).await;
        api.get(&ua, Some(&insurer), 403).await;
        api.get(&format!("/api/v1/patients/{}", B256::repeat_byte(9)), Some(&doctor), 404).await;
        api.get("/api/v1/patients/0x1234", Some(&doctor), 400).await;
        api.get(&ua, None, 401).await;

        // --- vitals, paged
        let mut seqs = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let q = cursor.as_ref().map(|c| format!("&cursor={c}")).unwrap_or_default();
            let page = api.get(&format!("{ua}/vitals?limit=7{q}"), Some(&doctor), 200).await;
            seqs.extend(page["items"].as_array().unwrap().iter().map(|r| r["seq"].as_u64().unwrap()));
            match page["next"].as_str() {
                Some(n) => cursor = Some(t(n)),
                None => break,
            }
        }
        assert_eq!(seqs, (1..=total_a).collect::<Vec<_>>(), "every reading once, in order, across pages");
        let all = api.get(&format!("{ua}/vitals?limit=1000"), Some(&alice_t), 200).await;
        let items = all["items"].as_array().unwrap();
        let (t5, t9) = (items[4]["timestamp"].as_u64().unwrap(), items[8]["timestamp"].as_u64().unwrap());
        let range = api.get(&format!("{ua}/vitals?from={t5}&to={t9}"), Some(&doctor), 200).await;
        assert!(range["items"].as_array().unwrap().iter().all(|r| (t5..=t9).contains(&r["timestamp"].as_u64().unwrap())));
        assert!(!range["items"].as_array().unwrap().is_empty());
        assert_eq!(items[25]["risk"], "high");
        for bad in ["limit=0", "limit=1001", "limit=x", "from=9&to=1", "cursor=zz", "from=-1"] {
            api.get(&format!("{ua}/vitals?{bad}"), Some(&doctor), 400).await;
        }
        api.get(&format!("{ub}/vitals"), Some(&alice_t), 403).await;
        api.get(&format!("{ua}/vitals"), Some(&insurer), 403).await;
        api.get(&format!("{ua}/vitals"), None, 401).await;
        api.get(&format!("/api/v1/patients/{}/vitals", B256::repeat_byte(9)), Some(&doctor), 404).await;

        // --- trend: buckets of the stay covering every reading once, paged.
        let one = api.get(&format!("{ua}/trend?bucket=1000000000000"), Some(&doctor), 200).await;
        assert_eq!(one["items"].as_array().unwrap().len(), 1, "{one}");
        assert_eq!((one["items"][0]["n"].as_u64(), one["items"][0]["seq"].clone()), (Some(total_a), json!([1, total_a])));
        assert_eq!(one["items"][0]["news2"][1], 11, "the deterioration's NEWS2 is the bucket's highest");
        let hr = one["items"][0]["heartRate"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap()).collect::<Vec<_>>();
        assert!(hr[0] <= hr[1] && hr[1] <= hr[2] && hr[2] == 125, "min <= mean <= max, the spike kept: {hr:?}");
        let (mut n, mut pages, mut cursor) = (0, 0, String::new());
        loop {
            let page = api.get(&format!("{ua}/trend?bucket=50&limit=2{cursor}"), Some(&doctor), 200).await;
            n += page["items"].as_array().unwrap().iter().map(|b| b["n"].as_u64().unwrap()).sum::<u64>();
            pages += 1;
            match page["next"].as_u64() {
                Some(c) => cursor = format!("&cursor={c}"),
                None => break,
            }
        }
        assert_eq!(n, total_a, "pages of buckets cover every reading once ({pages} pages)");
        for bad in ["bucket=0", "cursor=7", "limit=0", "from=x"] {
            api.get(&format!("{ua}/trend?{bad}"), Some(&doctor), 400).await;
        }
        api.get(&format!("{ua}/trend"), Some(&insurer), 403).await;
        api.get(&format!("{ub}/trend"), Some(&alice_t), 403).await;
        api.get(&format!("{ua}/trend"), None, 401).await;

        // --- proofs: once anchored, the proof verifies on chain.
        let proof = wait_for("reading 3 anchored", async || {
            let p = api.get(&format!("{ua}/vitals/3/proof"), Some(&alice_t), 200).await;
            (p["batch"]["state"] == "anchored").then_some(p)
        })
        .await;
        let batch_id: B256 = serde_json::from_value(proof["batch"]["batchId"].clone()).unwrap();
        let leaf: B256 = serde_json::from_value(proof["leaf"].clone()).unwrap();
        let path: Vec<B256> = serde_json::from_value(proof["proof"].clone()).unwrap();
        assert!(net.view(H::verifyReadingCall { batchId: batch_id, leaf, proof: path.clone() }).await, "{proof}");
        // Re-verified from the answer alone, with the OpenAPI document and
        // abi/: the signed struct's integers (as the schema types them) give
        // the leaf, the proof leads to the chain's root for the batch, and
        // the signature under the given EIP-712 domain is the device's.
        let doc = api.get("/api/v1/openapi.json", None, 200).await;
        let schema = &doc["components"]["schemas"]["SignedReading"];
        let signed = proof["signed"].as_object().unwrap();
        for (k, v) in signed {
            let t = schema["properties"][k]["type"].as_str().unwrap_or_else(|| panic!("{k} is not in the SignedReading schema"));
            assert!(if t == "integer" { v.is_u64() } else { t == "string" && v.is_string() }, "{k}: {v} is not {t}");
        }
        assert_eq!(schema["required"].as_array().map(Vec::len), Some(signed.len()));
        let n = |k: &str| signed[k].as_u64().unwrap();
        let r = Reading {
            deviceId: serde_json::from_value(signed["deviceId"].clone()).unwrap(),
            seq: n("seq"),
            timestamp: n("timestamp"),
            heartRate: n("heartRate") as u16,
            respRate: n("respRate") as u16,
            spo2: n("spo2") as u16,
            systolic: n("systolic") as u16,
            diastolic: n("diastolic") as u16,
            temperature: n("temperature") as u16,
            consciousness: n("consciousness") as u8,
        };
        assert_eq!(reading_leaf(&r), leaf);
        assert!(merkle::verify(&path, net.view(H::batchRootCall { batchId: batch_id }).await, leaf));
        let domain = eip712::domain_separator(
            proof["domain"]["chainId"].as_u64().unwrap(),
            serde_json::from_value(proof["domain"]["verifyingContract"].clone()).unwrap(),
        );
        let sig = alloy::primitives::Signature::from_raw(&alloy::hex::decode(proof["signature"].as_str().unwrap()).unwrap()).unwrap();
        let signer = sig.recover_address_from_prehash(&eip712::reading_digest(domain, &r)).unwrap();
        assert_eq!(signer, net.view(H::getDeviceCall { deviceId: r.deviceId }).await.signer);
        assert_eq!(proof["reading"]["temperature"].as_f64(), Some(f64::from(r.temperature) / 100.0), "display units beside the signed ones");
        api.get(&format!("{ua}/vitals/999/proof"), Some(&doctor), 404).await;
        api.get(&format!("{ua}/vitals/x/proof"), Some(&doctor), 400).await;
        api.get(&format!("{ub}/vitals/1/proof"), Some(&alice_t), 403).await;
        api.get(&format!("{ua}/vitals/3/proof"), None, 401).await;

        // --- alerts
        let al = api.get(&format!("{ua}/alerts"), Some(&alice_t), 200).await;
        let levels: Vec<&str> = al["items"].as_array().unwrap().iter().map(|a| a["level"].as_str().unwrap()).collect();
        assert_eq!(levels, ["none", "high"], "newest first: raised, then resolved");
        assert_eq!(api.get(&format!("{ua}/alerts?limit=1"), Some(&doctor), 200).await["items"].as_array().unwrap().len(), 1);
        api.get(&format!("{ua}/alerts?limit=0"), Some(&doctor), 400).await;
        api.get(&format!("{ub}/alerts"), Some(&alice_t), 403).await;
        api.get(&format!("{ua}/alerts"), None, 401).await;

        // --- charges and bill: the doctor, the patient, and the stay's insurer.
        for tok in [&doctor, &alice_t, &insurer] {
            let c = api.get(&format!("{ua}/charges"), Some(tok), 200).await;
            assert_eq!((c["items"][0]["code"].as_str(), c["items"][0]["amount"].as_str()), (Some("99213"), Some("25000")));
            assert_eq!(c["items"][0]["doctor"].as_str().map(str::to_string), eip55(net.addr(DOCTOR)), "{c}");
            let b = api.get(&format!("{ua}/bill"), Some(tok), 200).await;
            // One bed day (50,000) + 25,000 = 75,000; 80 % covered.
            assert_eq!((b["final"].as_bool(), b["total"].as_str(), b["covered"].as_str(), b["due"].as_str()), (Some(false), Some("75000"), Some("60000"), Some("15000")), "{b}");
            assert_eq!(b["policy"]["insurer"].as_str().map(str::to_string), eip55(net.addr(INSURER)), "{b}");
        }
        // The estimate runs on the chain's clock: two days and an hour later on chain, three bed days.
        let p = ProviderBuilder::new().connect_http(net.anvil.endpoint_url());
        let _: Value = p.raw_request("evm_increaseTime".into(), (2 * 86_400u64 + 3_600,)).await.unwrap();
        let _: Value = p.raw_request("evm_mine".into(), ()).await.unwrap();
        let b = api.get(&format!("{ua}/bill"), Some(&doctor), 200).await;
        assert_eq!((b["bedDays"].as_u64(), b["total"].as_str(), b["currency"].as_str()), (Some(3), Some("175000"), Some("EUR")), "{b}");
        api.get(&format!("{ub}/charges"), Some(&insurer), 403).await;
        api.get(&format!("{ub}/bill"), Some(&insurer), 403).await;
        api.get(&format!("{ub}/bill"), Some(&alice_t), 403).await;
        api.get(&format!("{ua}/bill"), Some(&admin), 403).await;
        api.get(&format!("{ua}/charges"), None, 401).await;
        api.get(&format!("{ua}/bill"), None, 401).await;
        // After discharge the bill is the contract's and the archive is pending.
        net.cli(DOCTOR, &["patient", "discharge", &pb.to_string()]);
        let b = api.get(&format!("{ub}/bill"), Some(&bob_t), 200).await;
        // Discharged after the chain's clock moved two days: three bed days.
        assert_eq!((b["final"].as_bool(), b["total"].as_str()), (Some(true), Some("150000")));
        let state = api.get(&ub, Some(&bob_t), 200).await["archive"]["state"].clone();
        assert!(state == "pending" || state == "in-progress", "{state}");
        let ward = api.get("/api/v1/ward", Some(&doctor), 200).await;
        assert!(ward["beds"].as_array().unwrap().iter().all(|b| b["serial"] != "HS-B"), "a discharged stay leaves the ward: {ward}");
        // The hub archives the stay to IPFS; the API shows the chain's CID
        // once it matches what this hub sealed and pinned.
        let deadline = Instant::now() + Duration::from_secs(60);
        let archive = loop {
            let a = api.get(&ub, Some(&bob_t), 200).await["archive"].clone();
            // The job stores `archived` just after the chain has the CID.
            if (a["state"] == "verified" && a["step"] == "archived") || Instant::now() > deadline {
                break a;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        assert_eq!(archive["state"], "verified", "{archive}");
        let on_chain = net.view(H::getArchiveCall { patientId: pb }).await;
        assert_eq!((archive["cid"].as_str(), archive["step"].as_str()), (Some(on_chain.cid.as_str()), Some("archived")));
        assert_eq!(archive["recordHash"], json!(on_chain.recordHash));
        // One stay window: the API's history holds what the archive holds.
        let history = api.get(&format!("{ub}/vitals?limit=1000"), Some(&bob_t), 200).await;
        assert_eq!(archive["readings"].as_u64(), Some(history["items"].as_array().unwrap().len() as u64), "{archive}");

        // --- devices
        for tok in [&doctor, &admin] {
            let d = api.get("/api/v1/devices", Some(tok), 200).await;
            assert!(d["items"].as_array().unwrap().iter().any(|d| d["serial"] == "HS-A" && d["status"] == "active"));
            assert!(d["items"][0].get("latest").is_none(), "no vitals in the device list");
            assert_eq!(api.get("/api/v1/devices/HS-A", Some(tok), 200).await["battery"].as_f64(), Some(81.5));
        }
        api.get("/api/v1/devices/HS-NONE", Some(&admin), 404).await;
        for tok in [&alice_t, &insurer] {
            api.get("/api/v1/devices", Some(tok), 403).await;
            api.get("/api/v1/devices/HS-A", Some(tok), 403).await;
        }
        api.get("/api/v1/devices", None, 401).await;
        api.get("/api/v1/devices/HS-A", None, 401).await;

        // --- batches: open to every signed-in role.
        for tok in [&doctor, &admin, &insurer, &alice_t] {
            let b = api.get("/api/v1/batches?limit=2", Some(tok), 200).await;
            assert!(!b["items"].as_array().unwrap().is_empty());
            assert_eq!(b["hub"].as_str().map(str::to_string), eip55(net.addr(HUB)), "{b}");
        }
        let first = api.get("/api/v1/batches/1", Some(&alice_t), 200).await;
        assert_eq!(first["seq"], 1);
        assert_eq!(first["batchId"], json!(ids::batch_id(net.addr(HUB), 1)));
        api.get("/api/v1/batches/99999", Some(&doctor), 404).await;
        api.get("/api/v1/batches/x", Some(&doctor), 400).await;
        api.get("/api/v1/batches?limit=0", Some(&doctor), 400).await;
        api.get("/api/v1/batches", None, 401).await;
        api.get("/api/v1/batches/1", None, 401).await;

        // --- live events: the doctor sees the ward's readings as they come.
        let res = api.http.get(format!("{}/api/v1/events", api.base)).bearer_auth(&doctor).send().await.unwrap();
        assert_eq!(res.status().as_u16(), 200);
        let mut res = res;
        let mut seen = String::new();
        let deadline = Instant::now() + Duration::from_secs(20);
        while !seen.contains("event: reading") && Instant::now() < deadline {
            beds.vitals(net.domain, &mut b_bed, |_| {}).await;
            if let Ok(Ok(Some(chunk))) = tokio::time::timeout(Duration::from_millis(500), res.chunk()).await {
                seen.push_str(&String::from_utf8_lossy(&chunk));
            }
        }
        assert!(seen.contains("event: hello") && seen.contains("event: reading") && seen.contains("HS-B"), "{seen}");
        api.get("/api/v1/events", Some(&insurer), 403).await;
        api.get("/api/v1/events", None, 401).await;

        // --- sign out
        let (code, _) = api.call(reqwest::Method::DELETE, "/api/v1/auth/session", Some(&bob_t), None).await;
        assert_eq!(code, 204);
        api.get("/api/v1/me", Some(&bob_t), 401).await;
        let (code, _) = api.call(reqwest::Method::DELETE, "/api/v1/auth/session", None, None).await;
        assert_eq!(code, 401);

        // --- the other ward's hub: its doctor view, and an expired session.
        let api9 = Api::new(&hub9);
        let doc9 = api9.sign_in(&key(&net.anvil, DOCTOR), None).await;
        api9.get(&uc, Some(&doc9), 200).await;
        api9.get(&ua, Some(&doc9), 403).await;
        tokio::time::sleep(Duration::from_millis(2_200)).await;
        let body = api9.get("/api/v1/me", Some(&doc9), 401).await;
        assert!(body["error"].as_str().unwrap().contains("expired"), "{body}");

        let metrics = hub.metrics.encode();
        assert!(metrics.contains("healthsense_oracle_alerts_total{level=\"high\"} 1"), "{metrics}");
        hub.shutdown().await;
        hub9.shutdown().await;
    });
}

/// What the simulated bed 0 does, set by the browser script's steps.
#[derive(Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum Phase {
    /// NEWS2 0.
    Calm,
    /// HIGH, MEDIUM, HIGH, …: a patient at a threshold.
    Flap,
    /// Sepsis-like, NEWS2 14.
    Septic,
}

/// One stay window (issue 18, item 4; `stay_window_ms` in
/// `abi/src/rules/reading.rs`): readings stamped in the discharge second, up
/// to `dischargedAt * 1000 + 999`, belong to the stay and the next second's
/// do not. The API's history, the archive (as the hub reports it and as
/// `archive verify` counts it) and the hub store hold the same readings.
#[test]
fn api_archive_and_store_agree_on_the_readings_of_the_discharge_second() {
    rt().block_on(async {
        let net = Devnet::new().await;
        let mut bed = provision(&net, "HS-W", "ward-3").await;
        let hub = net.hub("ward-3", "ward-3", HUB, 600, "", "").await;
        let api = Api::new(&hub);
        let doctor = api.sign_in(&key(&net.anvil, DOCTOR), None).await;
        let mut beds = Beds::connect(&hub, "ward-3").await;
        beds.hello(&bed).await;
        let patient = ids::patient_id(PrivateKeySigner::random().address(), 1);
        net.send(DOCTOR, H::admitPatientCall { patientId: patient, deviceId: ids::device_id("HS-W") }).await;
        let admitted = net.view(H::getPatientCall { patientId: patient }).await.admittedAt;
        // The discharge block is mined at `discharge` (seconds), a few seconds
        // ahead, so every reading below is stamped before it is mined.
        let p = ProviderBuilder::new().connect_http(net.anvil.endpoint_url());
        let latest: Value = p.raw_request("eth_getBlockByNumber".into(), ("latest", false)).await.unwrap();
        let latest = u64::from_str_radix(latest["timestamp"].as_str().unwrap().trim_start_matches("0x"), 16).unwrap();
        let discharge = admitted.max(latest).max(healthsense_oracle::ingest::now_ms() / 1_000) + 5;
        let (a, d) = (admitted * 1_000, discharge * 1_000);
        let inside: Vec<u64> = (0..10).map(|k| a + 300 * k).chain([d - 1, d, d + 500, d + 999]).collect();
        let outside = [a - 1, d + 1_000, d + 1_500];
        let mut stamps: Vec<u64> = inside.iter().chain(&outside).copied().collect();
        stamps.sort_unstable();
        for &t in &stamps {
            beds.vitals(net.domain, &mut bed, |r| r.timestamp = t).await;
        }
        let path = net.dir.path().join("ward-3.sqlite");
        let binding = healthsense_oracle::store::Binding { chain_id: net.d.chain_id, contract: net.d.address, hub: net.addr(HUB) };
        let store = healthsense_oracle::store::Store::open(&path, binding).unwrap();
        let n = stamps.len() as u64;
        wait_for("every reading stored and anchored", async || {
            let c = store.counts().unwrap();
            (c.readings == n && c.anchored_readings == n).then_some(())
        })
        .await;

        let _: Value = p.raw_request("evm_setNextBlockTimestamp".into(), (discharge,)).await.unwrap();
        net.send(DOCTOR, H::dischargeCall { patientId: patient }).await;
        assert_eq!(net.view(H::getPatientCall { patientId: patient }).await.dischargedAt, discharge, "discharged in the chosen second");
        let up = format!("/api/v1/patients/{patient}");
        let archive = wait_for("the stay archived", async || {
            let a = api.get(&up, Some(&doctor), 200).await["archive"].clone();
            (a["state"] == "verified" && a["step"] == "archived").then_some(a)
        })
        .await;

        // The hub store: the device's readings stamped from the admission
        // second to the end of the discharge second.
        let stored = store.device_readings(ids::device_id("HS-W")).unwrap();
        assert_eq!(stored.len(), stamps.len(), "the store keeps every reading of the device");
        let in_stay = stored.iter().filter(|r| r.reading.timestamp >= a && r.reading.timestamp <= d + 999).count();
        assert_eq!(in_stay, inside.len());
        // The API's history of the stay.
        let history = api.get(&format!("{up}/vitals?limit=1000"), Some(&doctor), 200).await;
        let items = history["items"].as_array().unwrap();
        assert_eq!(items.len(), inside.len(), "the API's window: {history}");
        // The archive, as the hub reports it and as a verifier counts it.
        assert_eq!(archive["readings"].as_u64(), Some(inside.len() as u64), "{archive}");
        let config = net.dir.path().join("ward-3.toml");
        let out = net.cli(
            ADMIN,
            &["--json", "--ipfs-api", &net.ipfs.api_url(), "archive", "verify", &patient.to_string(), "--oracle-config", config.to_str().unwrap()],
        );
        let report: Value = serde_json::from_str(&out).unwrap();
        assert_eq!((report["readings"].as_u64(), report["readingsVerified"].as_u64()), (Some(inside.len() as u64), Some(inside.len() as u64)), "{report}");
        hub.shutdown().await;
    });
}

/// Normal vitals: NEWS2 0.
fn calm(r: &mut Reading) {
    (r.respRate, r.spo2, r.systolic, r.diastolic, r.heartRate, r.temperature, r.consciousness) = (14, 97, 122, 78, 72, 3_680, 1);
}

/// NEWS2 5 with no single 3 (medium): RR 22 (2), SpO2 94 (1), HR 105 (1), 38.5 °C (1).
fn medium(r: &mut Reading) {
    (r.respRate, r.spo2, r.systolic, r.diastolic, r.heartRate, r.temperature, r.consciousness) = (22, 94, 122, 78, 105, 3_850, 1);
}

/// Headless Chromium against a devnet, a hub and simulated beds, as a ward
/// doctor uses the dashboard (`cli/tests/browser/dashboard.mjs`): the ward
/// sorted by risk with units, a stale bed and a discharge; a patient's
/// trends (axes, units, bands, the full history with the history request
/// delayed); a flapping series that is one alert stepping down after the
/// hold; acknowledgement (and its refusal for a patient and an insurer);
/// axe-core; screenshots at desktop and tablet width under
/// target/test-output/.
#[test]
fn dashboard_in_headless_chromium() {
    let root = tools::project_root().unwrap();
    let playwright = root.join(".tools/node_modules/playwright-core");
    let axe = root.join(".tools/node_modules/axe-core/axe.min.js");
    let chromium = ["/usr/bin/chromium", "/usr/bin/chromium-browser"].into_iter().map(PathBuf::from).find(|p| p.exists());
    assert!(playwright.is_dir() && axe.is_file() && chromium.is_some(), "the browser test needs Chromium, playwright-core and axe-core: run scripts/setup");
    let out_dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("../test-output");
    std::fs::create_dir_all(&out_dir).unwrap();
    let out_dir = out_dir.canonicalize().unwrap();
    rt().block_on(async {
        let net = Devnet::new().await;
        // Short hold and stale age, so the browser sees both in seconds.
        let hub = net.hub("ward-3", "ward-3", HUB, 600, "stale_after_ms = 3000", "hold_ms = 4000").await;
        let mut beds_mqtt = Beds::connect(&hub, "ward-3").await;
        let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(11);
        let mut beds: Vec<healthsense_cli::simulate::Bed> = (0..4)
            .map(|i| {
                let patient = healthsense_cli::simulate::Patient::new(&mut rng, false, 3_600.0);
                healthsense_cli::simulate::Bed::new(format!("SIM-{i}"), patient, &mut rng)
            })
            .collect();
        let mut patients = Vec::new();
        let mut wallets = Vec::new();
        for (i, b) in beds.iter().enumerate() {
            net.send(ADMIN, H::provisionDeviceCall { deviceId: b.device_id(), signer: b.key.address(), ward: ids::ward_id("ward-3") }).await;
            beds_mqtt.hello(&Bed { serial: b.serial.clone(), key: b.key.clone(), seq: 0 }).await;
            let wallet = PrivateKeySigner::random();
            let id = ids::patient_id(wallet.address(), 1);
            net.send(DOCTOR, H::admitPatientCall { patientId: id, deviceId: b.device_id() }).await;
            patients.push((i, id));
            wallets.push(wallet);
        }
        net.send(INSURER, H::setPolicyCall { patientId: patients[0].1, coverageBps: 7_000, deductible: 0, cap: u64::MAX, coveredCategories: 0xff }).await;
        net.send(DOCTOR, H::addChargeCall { patientId: patients[0].1, code: ids::charge_code("LAB-CBC").unwrap(), category: 4, quantity: 1, unitPrice: 4_200 }).await;
        let api = Api::new(&hub);
        let patient_token = api.sign_in(&wallets[0], Some(1)).await;
        let insurer_token = api.sign_in(&key(&net.anvil, INSURER), None).await;

        // The simulator publishes every 300 ms; bed 0 follows the script's
        // phase, bed 3 sends one reading and falls silent (stale).
        let phase = std::sync::Arc::new(std::sync::atomic::AtomicU8::new(Phase::Calm as u8));
        let flag = phase.clone();
        let (client, topics, domain) = (beds_mqtt.client.clone(), beds_mqtt.topics.clone(), net.domain);
        let sim = tokio::spawn(async move {
            let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(12);
            let mut last_medium = false;
            for n in 0u64.. {
                for (i, bed) in beds.iter_mut().enumerate() {
                    if i == 3 && n > 0 {
                        continue;
                    }
                    let now = healthsense_oracle::ingest::now_ms();
                    for m in bed.tick(&mut rng, n % 40, now, n as f64 * 10.0, 10.0) {
                        let healthsense_cli::simulate::Message::Vitals(mut r) = m else { continue };
                        if i == 0 {
                            let p = flag.load(std::sync::atomic::Ordering::SeqCst);
                            let flap = p == Phase::Flap as u8;
                            if flap || last_medium {
                                // Alternate; a flap ends on a HIGH reading, so the step down is straight to none.
                                let high = !flap || !last_medium;
                                if high { deteriorated(&mut r) } else { medium(&mut r) }
                                last_medium = !high;
                            } else if p == Phase::Septic as u8 {
                                deteriorated(&mut r);
                                r.consciousness = 3;
                            } else {
                                calm(&mut r);
                            }
                        }
                        let payload = protocol::sign_vitals(&bed.key, domain, &bed.serial, &r).unwrap();
                        let _ = client.publish(topics.device(&bed.serial, DeviceTopic::Vitals), QoS::AtLeastOnce, false, payload).await;
                    }
                    let _ = client.publish(topics.device(&bed.serial, DeviceTopic::State), QoS::AtLeastOnce, false,
                        protocol::state_pack(&bed.serial, 90.0 - n as f64 * 0.1, false)).await;
                }
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        });

        let doctor = key(&net.anvil, DOCTOR);
        let cast = tools::foundry_tool(&root, "cast").unwrap();
        let mut node = std::process::Command::new("node")
            .arg(root.join("cli/tests/browser/dashboard.mjs"))
            .env("HS_URL", format!("http://{}/", hub.api_addr.unwrap()))
            .env("HS_PLAYWRIGHT", &playwright)
            .env("HS_AXE", &axe)
            .env("HS_CHROMIUM", chromium.unwrap())
            .env("HS_CAST", cast)
            .env("HS_KEY", alloy::hex::encode_prefixed(doctor.to_bytes()))
            .env("HS_ADDRESS", doctor.address().to_string())
            .env("HS_PATIENT", patients[0].1.to_string())
            .env("HS_PATIENT_TOKEN", &patient_token)
            .env("HS_INSURER_TOKEN", &insurer_token)
            .env("HS_HOLD_MS", "4000")
            .env("HS_OUT", &out_dir)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::inherit())
            .spawn()
            .expect("node (Node.js) runs the browser script");
        let stdout = node.stdout.take().unwrap();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
        let reader = tokio::task::spawn_blocking(move || {
            for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
                eprintln!("browser: {line}");
                let _ = tx.send(line);
            }
        });
        let mut lines = Vec::new();
        while let Some(line) = rx.recv().await {
            let set = |p: Phase| phase.store(p as u8, std::sync::atomic::Ordering::SeqCst);
            match line.split_whitespace().next() {
                Some("FLAP") => set(Phase::Flap),
                Some("CALM") => set(Phase::Calm),
                Some("DETERIORATE") => set(Phase::Septic),
                Some("DISCHARGE") => net.send(DOCTOR, H::dischargeCall { patientId: patients[2].1 }).await,
                _ => {}
            }
            lines.push(line);
        }
        reader.await.unwrap();
        let status = tokio::task::spawn_blocking(move || node.wait()).await.unwrap().unwrap();
        sim.abort();
        assert!(status.success(), "the browser script failed: {lines:?}");
        for step in ["SIGNED-IN", "WARD-UPDATES", "WARD-ORDER", "STALE", "AXE-WARD", "DISCHARGED", "HISTORY", "AXES", "RANGE", "BILL",
            "ONE-ALERT", "ACK-REFUSED", "ACKNOWLEDGED", "STEPPED-DOWN", "ESCALATED", "AXE-PATIENT", "TABLET", "SCREENSHOTS"] {
            assert!(lines.iter().any(|l| l.starts_with(step)), "step {step} missing: {lines:?}");
        }
        for shot in ["dashboard-ward.png", "dashboard-patient.png", "dashboard-ward-tablet.png", "dashboard-patient-tablet.png"] {
            assert!(out_dir.join(shot).is_file(), "{shot}");
        }
        println!("dashboard screenshots: {}", out_dir.display());
        hub.shutdown().await;
    });
}

/// Benchmark, not a test (`--ignored`; figures in docs/BENCHMARKS.md): the
/// dashboard's first render of a 24-hour trend at 1 reading/s. A stay
/// admitted 25 hours ago on chain, 86,400 readings in the hub store (written
/// directly, batched and anchored), the API served by the hub, and
/// `cli/tests/browser/trend-bench.mjs` opening the patient at 24 h in
/// headless Chromium: time to the drawn charts and JSON bytes, against the
/// same history fetched raw from `/vitals` in the same run.
#[test]
#[ignore = "benchmark: cargo test --workspace --locked --test cli -- --ignored api::trend_24h_first_render --nocapture"]
fn trend_24h_first_render() {
    const READINGS: u64 = 86_400;
    let root = tools::project_root().unwrap();
    let chromium = ["/usr/bin/chromium", "/usr/bin/chromium-browser"].into_iter().map(PathBuf::from).find(|p| p.exists()).expect("chromium");
    rt().block_on(async {
        let now_s = healthsense_oracle::ingest::now_ms() / 1_000;
        let net = Devnet::new_at(Some(now_s - 25 * 3_600)).await;
        let bed = provision(&net, "HS-24H", "ward-3").await;
        // Active, as its hub would have made it at its first hello.
        net.send(HUB, H::activateDeviceCall { deviceId: ids::device_id(&bed.serial) }).await;
        let wallet = PrivateKeySigner::random();
        let patient = ids::patient_id(wallet.address(), 1);
        net.send(DOCTOR, H::admitPatientCall { patientId: patient, deviceId: ids::device_id(&bed.serial) }).await;
        let admitted = net.view(H::getPatientCall { patientId: patient }).await.admittedAt;
        // 86,400 readings at 1 Hz ending now, in the store the hub will open.
        let path = net.dir.path().join("ward-3.sqlite");
        let binding = healthsense_oracle::store::Binding { chain_id: net.d.chain_id, contract: net.d.address, hub: net.addr(HUB) };
        let mut store = healthsense_oracle::store::Store::open(&path, binding).unwrap();
        let start_ms = healthsense_oracle::ingest::now_ms() - READINGS * 1_000;
        assert!(start_ms / 1_000 >= admitted, "readings inside the stay");
        let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(24);
        let patient_model = healthsense_cli::simulate::Patient::new(&mut rng, true, READINGS as f64);
        let mut sim = healthsense_cli::simulate::Bed::new(bed.serial.clone(), patient_model, &mut rng);
        for chunk in (1..=READINGS).collect::<Vec<_>>().chunks(5_000) {
            let rows: Vec<_> = chunk
                .iter()
                .flat_map(|&seq| {
                    let at = start_ms + (seq - 1) * 1_000;
                    // Never asleep (n below its sleep phase): one reading per tick.
                    sim.tick(&mut rng, 0, at, (seq - 1) as f64, 1.0)
                })
                .filter_map(|m| match m {
                    healthsense_cli::simulate::Message::Vitals(reading) => Some(healthsense_oracle::store::NewReading {
                        serial: bed.serial.clone(),
                        signature: [0; 65],
                        received_ms: reading.timestamp,
                        reading,
                    }),
                    _ => None,
                })
                .collect();
            store.commit(&rows, &[]).unwrap();
        }
        let mut batches = 0;
        while store.cut_batch(batches + 1, 2_000, healthsense_oracle::store::Mode::Hash, 0).unwrap().is_some() {
            batches += 1;
        }
        drop(store);
        let hub = net.hub("ward-3", "ward-3", HUB, 3_600, "", "").await;
        let api = Api::new(&hub);
        let doctor = api.sign_in(&key(&net.anvil, DOCTOR), None).await;
        wait_for("every batch anchored", async || {
            (api.get(&format!("/api/v1/batches/{batches}"), Some(&doctor), 200).await["state"] == "anchored").then_some(())
        })
        .await;
        let out = std::process::Command::new("node")
            .arg(root.join("cli/tests/browser/trend-bench.mjs"))
            .env("HS_URL", format!("http://{}/", hub.api_addr.unwrap()))
            .env("HS_PLAYWRIGHT", root.join(".tools/node_modules/playwright-core"))
            .env("HS_CHROMIUM", chromium)
            .env("HS_TOKEN", &doctor)
            .env("HS_PATIENT", patient.to_string())
            .env("HS_READINGS", READINGS.to_string())
            .stderr(std::process::Stdio::inherit())
            .output()
            .expect("node runs the benchmark script");
        let text = String::from_utf8_lossy(&out.stdout);
        print!("{text}");
        assert!(out.status.success(), "the benchmark script failed");
        hub.shutdown().await;
    });
}
