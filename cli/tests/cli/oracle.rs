//! The ward-hub oracle end to end: `healthsense oracle` processes against a
//! real anvil and a real broker (the embedded rumqttd, or a Mosquitto that
//! scripts/setup installs and each test starts on a free port), with devices
//! that sign readings and talk MQTT like the bedside firmware would.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use alloy::node_bindings::{Anvil, AnvilInstance};
use alloy::primitives::{Address, B256};
use alloy::providers::{Provider, ProviderBuilder};
use alloy::rpc::types::Filter;
use alloy::signers::local::PrivateKeySigner;
use alloy::sol_types::SolEvent;
use healthsense_abi::bindings::HealthSense;
use healthsense_abi::rules::status::DeviceStatus;
use healthsense_abi::rules::{eip712, ids, reading::reading_leaf};
use healthsense_abi::Reading;
use healthsense_cli::tools;
use healthsense_oracle::protocol::{self, Code, DeviceTopic, StatusReply, Topics};
use healthsense_oracle::store::{Binding, Counts, Store};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio::sync::mpsc;

use common::free_port;

const ADMIN: usize = 0;

/// anvil with the contract deployed and hub roles granted.
struct Net {
    anvil: AnvilInstance,
    root: PathBuf,
    dir: tempfile::TempDir,
    deployment: PathBuf,
    contract: Address,
    domain: B256,
    /// Where hubs reach the chain, when not anvil directly (a proxy).
    rpc_override: Option<String>,
    /// Appended to every hub config.
    hub_extra: String,
}

impl Net {
    fn new(hubs: &[usize]) -> Self {
        let root = tools::project_root().unwrap();
        let anvil = Anvil::new().path(tools::foundry_tool(&root, "anvil").unwrap()).spawn();
        let dir = tempfile::tempdir().unwrap();
        let deployment = dir.path().join("deployment.json");
        let mut net = Net {
            anvil,
            root,
            dir,
            deployment,
            contract: Address::ZERO,
            domain: B256::ZERO,
            rpc_override: None,
            hub_extra: String::new(),
        };
        net.cli(ADMIN, &["deploy", "--rpc-url", net.anvil.endpoint().as_str()]);
        let d: serde_json::Value = serde_json::from_slice(&std::fs::read(&net.deployment).unwrap()).unwrap();
        net.contract = d["address"].as_str().unwrap().parse().unwrap();
        net.domain = eip712::domain_separator(net.anvil.chain_id(), net.contract);
        for &h in hubs {
            net.cli(ADMIN, &["roles", "grant", "hub", &net.anvil.addresses()[h].to_string()]);
        }
        net
    }

    fn cli(&self, who: usize, args: &[&str]) -> String {
        let out = common::healthsense(&self.anvil, who, &self.deployment, &self.root, args);
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    }

    /// Provisions a device for `ward` and returns its key.
    fn provision(&self, serial: &str, ward: &str) -> PrivateKeySigner {
        let key = PrivateKeySigner::random();
        self.cli(ADMIN, &["device", "provision", serial, "--signer", &key.address().to_string(), "--ward", ward]);
        key
    }

    fn hub_address(&self, who: usize) -> Address {
        self.anvil.addresses()[who]
    }

    async fn provider(&self) -> impl Provider {
        ProviderBuilder::new().connect_http(self.anvil.endpoint_url())
    }

    /// `BatchAnchored` events of `hub`: seq -> (root, leaf count), and how many there were.
    async fn anchored(&self, hub: Address) -> (BTreeMap<u64, (B256, u32)>, usize) {
        let p = self.provider().await;
        let filter = Filter::new()
            .address(self.contract)
            .from_block(0)
            .event_signature(HealthSense::BatchAnchored::SIGNATURE_HASH);
        let mut map = BTreeMap::new();
        let mut n = 0;
        for log in p.get_logs(&filter).await.unwrap() {
            let e = HealthSense::BatchAnchored::decode_log_data(log.data()).unwrap();
            if e.hub == hub {
                n += 1;
                map.insert(e.seq, (e.root, e.leafCount));
            }
        }
        (map, n)
    }
}

enum Broker {
    Embedded,
    External(u16),
    /// TLS with the given CA file, user and password.
    Tls(u16, PathBuf, &'static str, &'static str),
}

/// A `healthsense oracle` process.
struct Hub {
    name: String,
    who: usize,
    child: Option<Child>,
    config: PathBuf,
    log: PathBuf,
    store: PathBuf,
    mqtt_port: u16,
    metrics_port: u16,
    binding: Binding,
    password: &'static str,
}

impl Hub {
    fn start(net: &Net, name: &str, ward: &str, who: usize, broker: Broker, batch: usize) -> Hub {
        let anchor = format!("batch_size = {batch}\ninterval_ms = 300\nmax_backoff_ms = 1000");
        Self::start_with(net, name, ward, who, broker, &anchor)
    }

    fn start_with(net: &Net, name: &str, ward: &str, who: usize, broker: Broker, anchor: &str) -> Hub {
        let store = net.dir.path().join(format!("{name}.sqlite"));
        let metrics_port = free_port();
        let (mqtt, mqtt_port) = match broker {
            Broker::Embedded => {
                let port = free_port();
                (format!("embedded = true\nauth = false\nlisten = \"127.0.0.1:{port}\""), port)
            }
            Broker::External(port) => (format!("embedded = false\nauth = false\nhost = \"127.0.0.1\"\nport = {port}"), port),
            Broker::Tls(port, ref ca, user, _) => (
                format!(
                    "embedded = false\nhost = \"127.0.0.1\"\nport = {port}\ntls = true\nca_file = \"{}\"\nusername = \"{user}\"",
                    ca.display()
                ),
                port,
            ),
        };
        let password = match broker {
            Broker::Tls(_, _, _, password) => password,
            _ => "",
        };
        let config = net.dir.path().join(format!("{name}.toml"));
        std::fs::write(
            &config,
            format!(
                "hub = \"{name}\"\nward = \"{ward}\"\nstore = \"{}\"\n[chain]\npoll_ms = 100\n{}[mqtt]\n{mqtt}\n\
                 [anchor]\n{anchor}\n[metrics]\nlisten = \"127.0.0.1:{metrics_port}\"\n{}",
                store.display(),
                net.rpc_override.as_ref().map(|u| format!("rpc_url = \"{u}\"\n")).unwrap_or_default(),
                net.hub_extra
            ),
        )
        .unwrap();
        let binding = Binding { chain_id: net.anvil.chain_id(), contract: net.contract, hub: net.hub_address(who) };
        let log = net.dir.path().join(format!("{name}.log"));
        let mut hub =
            Hub { name: name.into(), who, child: None, config, log, store, mqtt_port, metrics_port, binding, password };
        hub.spawn(net);
        hub
    }

    fn spawn(&mut self, net: &Net) {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_healthsense"))
            .args(["oracle", "--config"])
            .arg(&self.config)
            .arg("--deployment")
            .arg(&net.deployment)
            .env("HEALTHSENSE_HUB_PRIVATE_KEY", alloy::hex::encode(net.anvil.keys()[self.who].to_bytes()))
            .env("HEALTHSENSE_LOG", "info,rumqttd=warn")
            .env("HEALTHSENSE_MQTT_PASSWORD", self.password)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", self.metrics_port)).is_err() {
            assert!(Instant::now() < deadline, "hub {} did not start:\n{}", self.name, self.logs());
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                panic!("hub {} exited with {status}:\n{}", self.name, self.logs());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Stops the hub as its service manager does (SIGTERM): it drains, saves
    /// and exits 0.
    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let pid = i32::try_from(c.id()).unwrap();
            // SAFETY: kill(2) on our own child, which has not been waited for.
            assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
            let status = c.wait().unwrap();
            assert!(status.success(), "hub {} exited with {status} on SIGTERM:\n{}", self.name, self.logs());
        }
    }

    fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Each thread's name and scheduling policy.
    fn thread_policies(&self) -> Vec<(String, Option<i32>)> {
        healthsense_oracle::priority::thread_policies(self.child.as_ref().unwrap().id()).unwrap()
    }

    fn counts(&self) -> Counts {
        Store::open(&self.store, self.binding).unwrap().counts().unwrap()
    }

    fn metrics(&self) -> String {
        self.get("/metrics").1
    }

    /// Waits until `done(counts)` holds.
    fn wait(&self, what: &str, done: impl Fn(&Counts) -> bool) -> Counts {
        self.poll(what, || self.counts(), done)
    }

    /// Reads `read()` until `done` holds of it (90 s at most).
    fn poll<T: std::fmt::Debug>(&self, what: &str, read: impl Fn() -> T, done: impl Fn(&T) -> bool) -> T {
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let c = read();
            if done(&c) {
                return c;
            }
            assert!(Instant::now() < deadline, "hub {}: timed out waiting for {what}: {c:?}\n{}", self.name, self.logs());
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Hub {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A real Mosquitto on a free port, queueing for offline persistent sessions.
struct Mosquitto {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
    _tls: Option<tempfile::TempDir>,
}

impl Mosquitto {
    fn start() -> Mosquitto {
        Self::with("")
    }

    /// A TLS listener with a CA and server certificate made for the test,
    /// and one user; returns the broker and the CA file.
    fn tls(user: &str, password: &str) -> (Mosquitto, PathBuf) {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, SanType};
        let dir = tempfile::tempdir().unwrap();
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.distinguished_name.push(DnType::CommonName, "HealthSense test CA");
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        params.subject_alt_names.push(SanType::IpAddress("127.0.0.1".parse().unwrap()));
        let cert = params.signed_by(&key, &ca, &ca_key).unwrap();
        let path = |f: &str| dir.path().join(f);
        std::fs::write(path("ca.pem"), ca.pem()).unwrap();
        std::fs::write(path("server.pem"), cert.pem()).unwrap();
        std::fs::write(path("server.key"), key.serialize_pem()).unwrap();
        let status = Command::new("mosquitto_passwd")
            .args(["-b", "-c"])
            .arg(path("passwd"))
            .args([user, password])
            .status()
            .expect("mosquitto_passwd (package mosquitto)");
        assert!(status.success());
        let extra = format!(
            "cafile {}\ncertfile {}\nkeyfile {}\npassword_file {}\n",
            path("ca.pem").display(),
            path("server.pem").display(),
            path("server.key").display(),
            path("passwd").display()
        );
        let ca_file = path("ca.pem");
        let mut broker = Self::with(&extra);
        broker._tls = Some(dir);
        (broker, ca_file)
    }

    fn with(extra: &str) -> Mosquitto {
        let bin = ["/usr/sbin/mosquitto", "/usr/bin/mosquitto"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .expect("mosquitto is not installed: run scripts/setup (apt-get install mosquitto)");
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let conf = dir.path().join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!(
                "listener {port} 127.0.0.1\n{}persistence false\nmax_queued_messages 0\n\
                 max_inflight_messages {}\nuser root\nlog_dest stderr\n{extra}",
                if extra.is_empty() { "allow_anonymous true\n" } else { "allow_anonymous false\n" },
                healthsense_oracle::broker::HUB_WINDOW
            ),
        )
        .unwrap();
        let child = Command::new(bin).arg("-c").arg(&conf).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "mosquitto did not start on {port}");
            std::thread::sleep(Duration::from_millis(20));
        }
        Mosquitto { child, port, _dir: dir, _tls: None }
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A bedside device (or an attacker) on the broker.
struct Device {
    serial: String,
    key: PrivateKeySigner,
    seq: u64,
}

impl Device {
    fn new(serial: &str, key: PrivateKeySigner) -> Self {
        Device { serial: serial.into(), key, seq: 0 }
    }

    fn next(&mut self, i: u64) -> Reading {
        self.seq += 1;
        healthsense_cli::simulate::steady_reading(&self.serial, self.seq, i)
    }
}

/// An MQTT client that collects the hub's status replies.
struct Mqtt {
    client: AsyncClient,
    replies: mpsc::UnboundedReceiver<(String, StatusReply, bool)>,
    topics: Topics,
}

impl Mqtt {
    async fn connect(port: u16, id: &str, hub: &str) -> Mqtt {
        Self::connect_with(MqttOptions::new(id, "127.0.0.1", port), hub).await
    }

    async fn connect_with(mut opts: MqttOptions, hub: &str) -> Mqtt {
        opts.set_keep_alive(Duration::from_secs(5)).set_inflight(500).set_max_packet_size(1 << 20, 1 << 20);
        let (client, mut eventloop) = AsyncClient::new(opts, 10_000);
        let topics = Topics::new(hub).unwrap();
        client.subscribe(topics.device_filter(DeviceTopic::Status), QoS::AtLeastOnce).await.unwrap();
        let (tx, replies) = mpsc::unbounded_channel();
        let t = topics.clone();
        tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        if let (Some((serial, _)), Ok(reply)) = (t.parse(&p.topic), serde_json::from_slice(&p.payload)) {
                            let _ = tx.send((serial.to_string(), reply, p.retain));
                        }
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        });
        Mqtt { client, replies, topics }
    }

    async fn publish(&self, serial: &str, kind: DeviceTopic, payload: Vec<u8>) {
        self.client.publish(self.topics.device(serial, kind), QoS::AtLeastOnce, false, payload).await.unwrap();
    }

    /// Says hello until the hub answers with a final code.
    async fn hello(&mut self, d: &Device) -> Code {
        let body = serde_json::json!({ "signer": d.key.address() }).to_string().into_bytes();
        for _ in 0..60 {
            self.publish(&d.serial, DeviceTopic::Hello, body.clone()).await;
            let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
            while let Ok(Some((serial, reply, _))) = tokio::time::timeout_at(deadline, self.replies.recv()).await {
                if serial == d.serial && reply.code != Code::Initialised {
                    return reply.code;
                }
            }
        }
        panic!("no hello reply for {}", d.serial);
    }

    async fn vitals(&self, net: &Net, d: &Device, r: &Reading) {
        let payload = protocol::sign_vitals(&d.key, net.domain, &d.serial, r).unwrap();
        self.publish(&d.serial, DeviceTopic::Vitals, payload).await;
    }

    /// The next reading rejection for `serial` (hello replies, which a
    /// repeated hello may leave behind, are skipped).
    async fn rejection(&mut self, serial: &str, hub: &Hub) -> StatusReply {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            match tokio::time::timeout_at(deadline, self.replies.recv()).await {
                Ok(Some((s, reply, _))) if s == serial && !reply.reason.starts_with("hello") => return reply,
                Ok(Some(_)) => continue,
                _ => panic!("no status reply for {serial}:\n{}", hub.logs()),
            }
        }
    }
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

/// Every stored reading of `hub` verifies on chain with its stored proof.
async fn verify_all_on_chain(net: &Net, hub: &Hub, devices: &[&Device]) -> usize {
    let p = net.provider().await;
    let contract = HealthSense::new(net.contract, &p);
    let store = Store::open(&hub.store, hub.binding).unwrap();
    let mut n = 0;
    for d in devices {
        let rows = store.device_readings(ids::device_id(&d.serial)).unwrap();
        assert_eq!(rows.len() as u64, d.seq, "{}: every sent reading stored once", d.serial);
        for (i, row) in rows.iter().enumerate() {
            assert_eq!(row.reading.seq, i as u64 + 1);
            let batch = ids::batch_id(hub.binding.hub, row.batch_seq.expect("batched"));
            let ok = contract.verifyReading(batch, reading_leaf(&row.reading), row.proof.clone()).call().await.unwrap();
            assert!(ok, "{} seq {} does not verify on chain", d.serial, row.reading.seq);
            n += 1;
        }
    }
    n
}

#[test]
fn hub_stores_anchors_and_proves_every_reading() {
    let net = Net::new(&[1]);
    let mut devices: Vec<Device> =
        (1..=3).map(|i| format!("HS-A{i}")).map(|s| Device::new(&s, net.provision(&s, "ward-3"))).collect();
    let hub = Hub::start(&net, "ward-3", "ward-3", 1, Broker::Embedded, 40);
    rt().block_on(async {
        let mut mqtt = Mqtt::connect(hub.mqtt_port, "bedside", "ward-3").await;
        for d in &devices {
            assert_eq!(mqtt.hello(d).await, Code::Registered);
        }
        // The hello activated each device on chain.
        assert!(net.cli(ADMIN, &["device", "show", "HS-A1"]).contains("active"));
        for i in 0..50u64 {
            for d in devices.iter_mut() {
                let r = d.next(i);
                mqtt.vitals(&net, d, &r).await;
            }
        }
        let c = hub.wait("150 anchored readings", |c| c.anchored_readings == 150);
        assert_eq!((c.readings, c.unbatched, c.batches_pending, c.rejections), (150, 0, 0, 0));
        let refs: Vec<&Device> = devices.iter().collect();
        assert_eq!(verify_all_on_chain(&net, &hub, &refs).await, 150);
        let (on_chain, events) = net.anchored(hub.binding.hub).await;
        assert_eq!(on_chain.values().map(|(_, n)| *n as u64).sum::<u64>(), 150);
        assert_eq!(events as u64, c.batches_anchored);

        // A late subscriber learns the deployment and the hub's presence from retained messages.
        let opts = MqttOptions::new("late", "127.0.0.1", hub.mqtt_port);
        let (late, mut ev) = AsyncClient::new(opts, 10);
        late.subscribe(protocol::CONTRACT_TOPIC, QoS::AtLeastOnce).await.unwrap();
        let announcement = loop {
            if let Event::Incoming(Packet::Publish(p)) = ev.poll().await.unwrap() {
                break serde_json::from_slice::<protocol::Announcement>(&p.payload).unwrap();
            }
        };
        assert_eq!((announcement.address, announcement.chain_id), (net.contract, net.anvil.chain_id()));
        assert_eq!(announcement.domain_separator, net.domain);
    });
    let metrics = hub.metrics();
    assert!(metrics.contains("healthsense_oracle_readings_stored_total 150"), "{metrics}");
    assert!(metrics.contains("healthsense_oracle_readings_anchored_total 150"), "{metrics}");

    // Its threads run at real-time priority where this machine allows it
    // (CI runs as root), and at normal priority, said in its log, where not.
    let policies = hub.thread_policies();
    assert!(policies.len() > 5, "{policies:?}");
    if realtime_allowed() {
        assert!(policies.iter().all(|(_, p)| *p == Some(libc::SCHED_RR)), "{policies:?}");
        assert!(metrics.contains("healthsense_oracle_realtime_priority 1"), "{metrics}");
        assert!(hub.logs().contains("the hub runs at real-time priority"), "{}", hub.logs());
    } else {
        assert!(policies.iter().all(|(_, p)| *p == Some(libc::SCHED_OTHER)), "{policies:?}");
        assert!(metrics.contains("healthsense_oracle_realtime_priority 0"), "{metrics}");
        assert!(hub.logs().contains("the hub runs at normal priority"), "{}", hub.logs());
    }
}

/// A metric's value in an OpenMetrics text (0 when absent).
fn metric(text: &str, name: &str) -> f64 {
    text.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok()).unwrap_or(0.0)
}

#[test]
fn a_busy_hub_steps_down_to_normal_priority_and_returns_to_real_time_when_idle() {
    // Where real-time priority is refused, the first test above checks the
    // hub says so; there is no class to step between.
    if !realtime_allowed() {
        eprintln!("skipped: this process may not use real-time priority");
        return;
    }
    let mut net = Net::new(&[1]);
    // A budget small enough that verifying readings at a modest pace is
    // over it for a second, and an idle hub under half of it.
    net.hub_extra = "[priority]\nmax_cpu_percent = 8\n".into();
    let mut devices: Vec<Device> =
        (1..=4).map(|i| format!("HS-P{i}")).map(|s| Device::new(&s, net.provision(&s, "ward-3"))).collect();
    let hub = Hub::start(&net, "ward-3", "ward-3", 1, Broker::Embedded, 2_000);
    let down = "healthsense_oracle_priority_steps_down_total";
    let realtime = "healthsense_oracle_realtime_priority";
    // The gauge is set once the hub has started, just after its metrics.
    hub.poll("real-time priority", || hub.metrics(), |m| metric(m, realtime) == 1.0);
    let sent = rt().block_on(async {
        let mut mqtt = Mqtt::connect(hub.mqtt_port, "bedside", "ward-3").await;
        for d in &devices {
            assert_eq!(mqtt.hello(d).await, Code::Registered);
        }
        // About 2,000 readings a second until the hub has stepped down.
        let (mut sent, deadline) = (0u64, Instant::now() + Duration::from_secs(60));
        while metric(&hub.metrics(), down) < 1.0 {
            assert!(Instant::now() < deadline, "no step down after {sent} readings:\n{}", hub.logs());
            for _ in 0..50 {
                for d in devices.iter_mut() {
                    let r = d.next(sent);
                    mqtt.vitals(&net, d, &r).await;
                    sent += 1;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        sent
    });
    assert!(hub.logs().contains("normal priority until it uses under half of that"), "{}", hub.logs());
    // Every reading is still stored, whatever the class.
    hub.wait("every reading stored", |c| c.readings == sent);
    let m = hub.poll("real time again", || hub.metrics(), |m| metric(m, realtime) == 1.0);
    assert!(metric(&m, down) >= 1.0, "{m}");
    assert!(hub.logs().contains("the hub is back at real-time priority"), "{}", hub.logs());
    let policies = hub.thread_policies();
    assert!(policies.iter().all(|(_, p)| *p == Some(libc::SCHED_RR)), "{policies:?}");
}

/// Whether this process may give a thread real-time priority (tried on a
/// thread of its own, which then ends).
fn realtime_allowed() -> bool {
    std::thread::spawn(|| {
        let param = libc::sched_param { sched_priority: healthsense_oracle::priority::REALTIME_PRIORITY };
        // SAFETY: sets the calling thread's own policy.
        unsafe { libc::sched_setscheduler(0, libc::SCHED_RR, &param) == 0 }
    })
    .join()
    .unwrap()
}

#[test]
fn bad_input_is_rejected_with_its_code_and_never_reaches_the_chain() {
    let broker = Mosquitto::start();
    let net = Net::new(&[1]);
    let mut good = Device::new("HS-OK", net.provision("HS-OK", "ward-3"));
    let revoked = Device::new("HS-REV", net.provision("HS-REV", "ward-3"));
    let pending = Device::new("HS-PEND", net.provision("HS-PEND", "ward-3"));
    let foreign = Device::new("HS-FOREIGN", net.provision("HS-FOREIGN", "ward-9"));
    let hub = Hub::start(&net, "ward-3", "ward-3", 1, Broker::External(broker.port), 10);
    rt().block_on(async {
        let mut mqtt = Mqtt::connect(broker.port, "attacker", "ward-3").await;
        assert_eq!(mqtt.hello(&good).await, Code::Registered);
        assert_eq!(mqtt.hello(&revoked).await, Code::Registered);
        assert_eq!(mqtt.hello(&foreign).await, Code::WrongWard);
        let stranger = Device::new("HS-NOBODY", PrivateKeySigner::random());
        assert_eq!(mqtt.hello(&stranger).await, Code::UnknownDevice);
        let impostor = Device::new("HS-OK", PrivateKeySigner::random());
        assert_eq!(mqtt.hello(&impostor).await, Code::WrongSigner);
        net.cli(ADMIN, &["device", "revoke", "HS-REV"]);
        // The hub learns of the revocation from the chain's events.
        tokio::time::sleep(Duration::from_millis(600)).await;

        let r = good.next(1);
        let signed = protocol::sign_vitals(&good.key, net.domain, "HS-OK", &r).unwrap();
        let mutate = |f: &dyn Fn(&mut serde_json::Value)| {
            let mut v: serde_json::Value = serde_json::from_slice(&signed).unwrap();
            f(&mut v);
            serde_json::to_vec(&v).unwrap()
        };
        // High-s twin of a valid signature: ecrecover-valid math, refused by EIP-2.
        let high_s = {
            let sig = alloy::primitives::Signature::from_raw(
                &alloy::hex::decode(serde_json::from_slice::<serde_json::Value>(&signed).unwrap()["sig"].as_str().unwrap())
                    .unwrap(),
            )
            .unwrap();
            let n = alloy::primitives::uint!(0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141_U256);
            let twin = alloy::primitives::Signature::new(sig.r(), n - sig.s(), !sig.v());
            mutate(&|v| v["sig"] = alloy::hex::encode_prefixed(twin.as_bytes()).into())
        };
        let other_key = PrivateKeySigner::random();
        let cases: Vec<(&str, &str, Vec<u8>, Code)> = vec![
            ("malformed JSON", "HS-OK", b"{\"seq\": 1, \"sig\": ".to_vec(), Code::Malformed),
            ("missing fields", "HS-OK", mutate(&|v| { v.as_object_mut().unwrap().remove("sig"); }), Code::MissingField),
            ("bad signature", "HS-OK", high_s, Code::BadSignature),
            ("wrong signer", "HS-OK", protocol::sign_vitals(&other_key, net.domain, "HS-OK", &r).unwrap(), Code::WrongSigner),
            ("tampered value", "HS-OK", mutate(&|v| v["senml"][0]["v"] = 75.0.into()), Code::WrongSigner),
            ("unknown device", "HS-NOBODY", protocol::sign_vitals(&stranger.key, net.domain, "HS-NOBODY", &Reading { deviceId: ids::device_id("HS-NOBODY"), ..r.clone() }).unwrap(), Code::UnknownDevice),
            ("revoked device", "HS-REV", protocol::sign_vitals(&revoked.key, net.domain, "HS-REV", &Reading { deviceId: ids::device_id("HS-REV"), ..r.clone() }).unwrap(), Code::Revoked),
            ("never said hello", "HS-PEND", protocol::sign_vitals(&pending.key, net.domain, "HS-PEND", &Reading { deviceId: ids::device_id("HS-PEND"), ..r.clone() }).unwrap(), Code::NotRegistered),
            ("out of range", "HS-OK", protocol::sign_vitals(&good.key, net.domain, "HS-OK", &Reading { spo2: 30, ..r.clone() }).unwrap(), Code::OutOfRange),
            ("oversized", "HS-OK", mutate(&|v| v["pad"] = "x".repeat(4096).into()), Code::Oversized),
        ];
        for (what, serial, payload, code) in &cases {
            mqtt.publish(serial, DeviceTopic::Vitals, payload.clone()).await;
            let reply = mqtt.rejection(serial, &hub).await;
            assert_eq!(reply.code, *code, "{what}: {}", reply.reason);
        }
        // The good reading goes through; a replay of its sequence number
        // with other values is refused, an exact redelivery is absorbed.
        mqtt.publish("HS-OK", DeviceTopic::Vitals, signed.clone()).await;
        let replay = protocol::sign_vitals(&good.key, net.domain, "HS-OK", &Reading { heartRate: 99, ..r.clone() }).unwrap();
        mqtt.publish("HS-OK", DeviceTopic::Vitals, replay).await;
        assert_eq!(mqtt.rejection("HS-OK", &hub).await.code, Code::Replayed);
        mqtt.publish("HS-OK", DeviceTopic::Vitals, signed.clone()).await;
        let c = hub.wait("the good reading anchored", |c| c.anchored_readings == 1);
        assert_eq!((c.readings, c.rejections), (1, cases.len() as u64 + 1));
        let (on_chain, _) = net.anchored(hub.binding.hub).await;
        assert_eq!(on_chain.values().map(|(_, n)| *n).sum::<u32>(), 1, "only the good reading reached the chain");
        let refs = [&good];
        assert_eq!(verify_all_on_chain(&net, &hub, &refs).await, 1);
    });
    let metrics = hub.metrics();
    for (reason, n) in [("wrong_signer", 2), ("replayed", 1), ("oversized", 1), ("malformed", 1)] {
        let line = format!("healthsense_oracle_readings_rejected_total{{reason=\"{reason}\"}} {n}");
        assert!(metrics.contains(&line), "{line} missing:\n{metrics}");
    }
    assert!(metrics.contains("healthsense_oracle_readings_redelivered_total 1"), "{metrics}");
}

#[test]
fn two_hubs_anchor_their_own_batches_on_one_contract() {
    let broker = Mosquitto::start();
    let net = Net::new(&[1, 2]);
    let mut a: Vec<Device> = (1..=2).map(|i| format!("HS-W1-{i}")).map(|s| Device::new(&s, net.provision(&s, "ward-1"))).collect();
    let mut b: Vec<Device> = (1..=2).map(|i| format!("HS-W2-{i}")).map(|s| Device::new(&s, net.provision(&s, "ward-2"))).collect();
    let hub_a = Hub::start(&net, "ward-1", "ward-1", 1, Broker::External(broker.port), 25);
    let hub_b = Hub::start(&net, "ward-2", "ward-2", 2, Broker::External(broker.port), 25);
    rt().block_on(async {
        let mut ma = Mqtt::connect(broker.port, "beds-1", "ward-1").await;
        let mut mb = Mqtt::connect(broker.port, "beds-2", "ward-2").await;
        for d in &a {
            assert_eq!(ma.hello(d).await, Code::Registered);
        }
        for d in &b {
            assert_eq!(mb.hello(d).await, Code::Registered);
        }
        for i in 0..60u64 {
            for d in a.iter_mut() {
                let r = d.next(i);
                ma.vitals(&net, d, &r).await;
            }
            for d in b.iter_mut() {
                let r = d.next(i);
                mb.vitals(&net, d, &r).await;
            }
        }
        hub_a.wait("hub A anchored", |c| c.anchored_readings == 120);
        hub_b.wait("hub B anchored", |c| c.anchored_readings == 120);
        let (ea, na) = net.anchored(hub_a.binding.hub).await;
        let (eb, nb) = net.anchored(hub_b.binding.hub).await;
        // Each hub numbers its own batches from 1; the ids differ by hub.
        assert_eq!(ea.keys().next(), Some(&1));
        assert_eq!(eb.keys().next(), Some(&1));
        assert_eq!((na, nb), (ea.len(), eb.len()));
        assert_eq!(ea.values().map(|(_, n)| *n).sum::<u32>(), 120);
        assert_eq!(eb.values().map(|(_, n)| *n).sum::<u32>(), 120);
        let ra: Vec<&Device> = a.iter().collect();
        let rb: Vec<&Device> = b.iter().collect();
        assert_eq!(verify_all_on_chain(&net, &hub_a, &ra).await, 120);
        assert_eq!(verify_all_on_chain(&net, &hub_b, &rb).await, 120);
        assert_eq!(hub_a.counts().rejections + hub_b.counts().rejections, 0);
    });
}

#[test]
fn a_killed_hub_loses_nothing_and_never_anchors_twice() {
    let broker = Mosquitto::start();
    let net = Net::new(&[1]);
    let mut devices: Vec<Device> =
        (1..=5).map(|i| format!("HS-C{i}")).map(|s| Device::new(&s, net.provision(&s, "ward-5"))).collect();
    let mut hub = Hub::start(&net, "ward-5", "ward-5", 1, Broker::External(broker.port), 100);
    let per_device = 600u64;
    rt().block_on(async {
        let mut mqtt = Mqtt::connect(broker.port, "beds", "ward-5").await;
        for d in &devices {
            assert_eq!(mqtt.hello(d).await, Code::Registered);
        }
        let mut kills = 0;
        for i in 0..per_device {
            for d in devices.iter_mut() {
                let r = d.next(i);
                mqtt.vitals(&net, d, &r).await;
            }
            // Kill -9 twice mid-stream: once early, once later; restart at once
            // the first time and after a pause (messages queue in the broker)
            // the second.
            if i == per_device / 3 || i == 2 * per_device / 3 {
                // Let the hub take part of the stream, then kill it mid-flow.
                let before = hub.counts().readings;
                let deadline = Instant::now() + Duration::from_secs(20);
                while hub.counts().readings == before && Instant::now() < deadline {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                hub.kill();
                kills += 1;
                if kills == 2 {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                hub.spawn(&net);
            }
            if i % 10 == 0 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        let total = per_device * devices.len() as u64;
        let c = hub.wait("every reading anchored after two crashes", |c| c.anchored_readings == total);
        assert_eq!((c.readings, c.unbatched, c.batches_pending, c.rejections), (total, 0, 0, 0));
        let (on_chain, events) = net.anchored(hub.binding.hub).await;
        assert_eq!(events, on_chain.len(), "a batch id was anchored twice");
        assert_eq!(on_chain.values().map(|(_, n)| *n as u64).sum::<u64>(), total);
        let store = Store::open(&hub.store, hub.binding).unwrap();
        let batches = store.batches().unwrap();
        assert_eq!(batches.len(), on_chain.len());
        for b in &batches {
            assert_eq!(on_chain.get(&b.seq), Some(&(b.root, b.leaf_count)), "batch {} differs on chain", b.seq);
        }
        let refs: Vec<&Device> = devices.iter().collect();
        assert_eq!(verify_all_on_chain(&net, &hub, &refs).await as u64, total);
        let seqs: HashSet<u64> = batches.iter().map(|b| b.seq).collect();
        assert_eq!(seqs.len(), batches.len());
    });
    assert_eq!(hub.logs().matches("hub started").count(), 3, "two crashes, two restarts");
    // Each restart had the five devices' records (from the store's copy of
    // its cache, or the chain) before taking messages.
    let ready = devices_ready(&hub.logs());
    assert_eq!(ready.len(), 3, "{}", hub.logs());
    for (restored, read, failed) in &ready[1..] {
        assert_eq!((restored + read, *failed), (5, 0), "{}", hub.logs());
    }
}

/// A hub stopped with SIGTERM saves each device's last reading after its
/// last commit; the next one starts from those rows (not a walk of every
/// reading) and still refuses a replayed sequence number.
#[test]
fn a_stopped_hub_saves_each_devices_last_reading_and_the_next_refuses_replays() {
    let broker = Mosquitto::start();
    let net = Net::new(&[1]);
    let mut dev = Device::new("HS-L1", net.provision("HS-L1", "ward-7"));
    let mut hub = Hub::start(&net, "ward-7", "ward-7", 1, Broker::External(broker.port), 100);
    let rt = rt();
    let mut mqtt = rt.block_on(Mqtt::connect(broker.port, "beds", "ward-7"));
    let readings: Vec<Reading> = (0..5).map(|i| dev.next(i)).collect();
    rt.block_on(async {
        assert_eq!(mqtt.hello(&dev).await, Code::Registered);
        for r in &readings {
            mqtt.vitals(&net, &dev, r).await;
        }
    });
    hub.wait("five readings stored", |c| c.readings == 5);
    hub.stop();
    let store = Store::open(&hub.store, hub.binding).unwrap();
    assert_eq!(store.meta("device_last_upto").unwrap().as_deref(), Some("5"), "saved up to the last row at the stop");
    assert_eq!(store.last_readings().unwrap()[&ids::device_id("HS-L1")].seq, 5);
    drop(store);
    hub.spawn(&net);
    rt.block_on(async {
        let replay = Reading { heartRate: readings[2].heartRate + 1, ..readings[2].clone() };
        mqtt.vitals(&net, &dev, &replay).await;
        let reply = mqtt.rejection("HS-L1", &hub).await;
        assert_eq!((reply.code, reply.seq), (Code::Replayed, Some(3)), "{}", reply.reason);
        let next = dev.next(5);
        mqtt.vitals(&net, &dev, &next).await;
    });
    let c = hub.wait("the sixth reading stored", |c| c.readings == 6);
    assert_eq!(c.rejections, 1);
}

/// The (restored, read, failed) counts of each "device records ready" line.
fn devices_ready(log: &str) -> Vec<(usize, usize, usize)> {
    let field = |line: &str, name: &str| -> usize {
        let at = line.find(&format!(" {name}=")).unwrap_or_else(|| panic!("no {name}= in {line}")) + name.len() + 2;
        line[at..].split(|c: char| !c.is_ascii_digit()).next().unwrap().parse().unwrap()
    };
    without_ansi(log)
        .lines()
        .filter(|l| l.contains("device records ready"))
        .map(|l| (field(l, "restored"), field(l, "read"), field(l, "failed")))
        .collect()
}

/// The device cache a hub saved in its store, as (serial, status) by serial.
fn saved_devices(hub: &Hub, serials: &[&str]) -> Vec<(String, u8)> {
    let Some(cache) = Store::open(&hub.store, hub.binding).unwrap().device_cache().unwrap() else { return Vec::new() };
    let mut out: Vec<(String, u8)> = cache
        .records
        .iter()
        .filter_map(|r| serials.iter().find(|s| ids::device_id(s) == r.id).map(|s| (s.to_string(), r.status as u8)))
        .collect();
    out.sort();
    out
}

#[test]
fn a_restarted_hub_takes_its_devices_from_its_store_and_rereads_those_changed_meanwhile() {
    let broker = Mosquitto::start();
    let net = Net::new(&[1]);
    let serials = ["HS-K1", "HS-K2", "HS-K3"];
    let mut devices: Vec<Device> = serials.iter().map(|s| Device::new(s, net.provision(s, "ward-6"))).collect();
    let mut hub = Hub::start(&net, "ward-6", "ward-6", 1, Broker::External(broker.port), 100);
    let (active, revoked) = (DeviceStatus::Active as u8, DeviceStatus::Revoked as u8);
    rt().block_on(async {
        let mut mqtt = Mqtt::connect(broker.port, "beds", "ward-6").await;
        for d in &devices {
            assert_eq!(mqtt.hello(d).await, Code::Registered);
        }
        // A device's record is cached when its readings come, and forgotten
        // when the watcher sees its activation event (which may come after
        // the first reading); the watcher saves the cache's changes at its
        // next poll. So readings until all three are saved.
        let all_active: Vec<(String, u8)> = serials.iter().map(|s| (s.to_string(), active)).collect();
        let deadline = Instant::now() + Duration::from_secs(60);
        while saved_devices(&hub, &serials) != all_active {
            assert!(Instant::now() < deadline, "the cache was not saved: {:?}\n{}", saved_devices(&hub, &serials), hub.logs());
            for d in devices.iter_mut() {
                let r = d.next(1);
                mqtt.vitals(&net, d, &r).await;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        let sent = devices.iter().map(|d| d.seq).sum::<u64>();
        hub.wait("every reading stored", |c| c.readings == sent);

        // Killed, and a device revoked while the hub is down.
        hub.kill();
        net.cli(ADMIN, &["device", "revoke", "HS-K3"]);
        hub.spawn(&net);
        let ready = hub.poll("the devices ready", || devices_ready(&hub.logs()), |r| r.len() == 2);
        assert_eq!(ready[1], (2, 1, 0), "two records from the store, the revoked one from the chain:\n{}", hub.logs());
        for d in devices.iter_mut() {
            let r = d.next(2);
            mqtt.vitals(&net, d, &r).await;
        }
        assert_eq!(mqtt.rejection("HS-K3", &hub).await.code, Code::Revoked, "the revocation is not missed");
        hub.wait("the two active devices' readings", |c| c.readings == sent + 2 && c.rejections == 1);
        let expected = vec![("HS-K1".to_string(), active), ("HS-K2".to_string(), active), ("HS-K3".to_string(), revoked)];
        hub.poll("the revocation saved", || saved_devices(&hub, &serials), |v| *v == expected);

        // A saved cache whose block is not on the chain any more (a reset
        // or reorganised chain) is not used, and is rewritten whole.
        hub.kill();
        let store = Store::open(&hub.store, hub.binding).unwrap();
        store.set_meta("device_cache_hash", &B256::repeat_byte(0xee).to_string()).unwrap();
        drop(store);
        hub.spawn(&net);
        let ready = hub.poll("the devices ready", || devices_ready(&hub.logs()), |r| r.len() == 3);
        assert_eq!(ready[2], (0, 3, 0), "{}", hub.logs());
        assert!(without_ansi(&hub.logs()).contains("saved device cache not used"), "{}", hub.logs());
        let rewritten = || Store::open(&hub.store, hub.binding).unwrap().device_cache().unwrap().map(|c| c.hash);
        hub.poll("the cache saved again", rewritten, |h| h.is_some_and(|h| h != B256::repeat_byte(0xee)));
        assert_eq!(saved_devices(&hub, &serials), expected);
    });
}

/// Log text without its colour codes.
fn without_ansi(log: &str) -> String {
    let mut out = String::with_capacity(log.len());
    let mut chars = log.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            chars.by_ref().find(|&c| c == 'm');
        } else {
            out.push(c);
        }
    }
    out
}

#[test]
fn hub_uses_tls_and_credentials_on_an_external_broker() {
    healthsense_oracle::hub::install_tls_provider();
    let (broker, ca) = Mosquitto::tls("ward-4-hub", "s3cret-hub");
    let net = Net::new(&[1]);
    let mut dev = Device::new("HS-TLS", net.provision("HS-TLS", "ward-4"));
    let hub = Hub::start(&net, "ward-4", "ward-4", 1, Broker::Tls(broker.port, ca.clone(), "ward-4-hub", "s3cret-hub"), 5);
    rt().block_on(async {
        let mut opts = MqttOptions::new("bed-tls", "127.0.0.1", broker.port);
        opts.set_transport(rumqttc::Transport::tls(std::fs::read(&ca).unwrap(), None, None));
        opts.set_credentials("ward-4-hub", "s3cret-hub");
        let mut mqtt = Mqtt::connect_with(opts, "ward-4").await;
        assert_eq!(mqtt.hello(&dev).await, Code::Registered);
        for i in 0..5 {
            let r = dev.next(i);
            mqtt.vitals(&net, &dev, &r).await;
        }
        hub.wait("5 readings anchored over TLS", |c| c.anchored_readings == 5);
        assert_eq!(verify_all_on_chain(&net, &hub, &[&dev]).await, 5);
    });
    // A hub with the wrong password is refused by the broker, says so, and
    // the password never appears in its log.
    let wrong = Hub::start(&net, "ward-4b", "ward-4", 1, Broker::Tls(broker.port, ca, "ward-4-hub", "wrong-pass"), 5);
    let deadline = Instant::now() + Duration::from_secs(20);
    while !wrong.logs().contains("no broker connection") {
        assert!(Instant::now() < deadline, "no connection warning:\n{}", wrong.logs());
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(!wrong.logs().contains("wrong-pass") && !hub.logs().contains("s3cret-hub"));
}

#[test]
fn readings_mode_posts_the_signed_readings_themselves() {
    let net = Net::new(&[1]);
    let mut devices: Vec<Device> =
        (1..=2).map(|i| format!("HS-R{i}")).map(|s| Device::new(&s, net.provision(&s, "ward-6"))).collect();
    let anchor = "mode = \"readings\"\nreadings_per_tx = 25\ninterval_ms = 300";
    let hub = Hub::start_with(&net, "ward-6", "ward-6", 1, Broker::Embedded, anchor);
    rt().block_on(async {
        let mut mqtt = Mqtt::connect(hub.mqtt_port, "beds", "ward-6").await;
        for d in &devices {
            assert_eq!(mqtt.hello(d).await, Code::Registered);
        }
        for i in 0..30u64 {
            for d in devices.iter_mut() {
                let r = d.next(i);
                mqtt.vitals(&net, d, &r).await;
            }
        }
        let c = hub.wait("60 readings posted", |c| c.anchored_readings == 60);
        assert_eq!(c.batches_anchored, 3, "25 + 25 + 10 readings per transaction");
        let p = net.provider().await;
        let filter = Filter::new()
            .address(net.contract)
            .from_block(0)
            .event_signature(HealthSense::ReadingPosted::SIGNATURE_HASH);
        let posted: Vec<Reading> = p
            .get_logs(&filter)
            .await
            .unwrap()
            .iter()
            .map(|l| {
                let e = HealthSense::ReadingPosted::decode_log_data(l.data()).unwrap();
                Reading { deviceId: e.deviceId, seq: e.seq, timestamp: e.timestamp, heartRate: e.heartRate, respRate: e.respRate,
                    spo2: e.spo2, systolic: e.systolic, diastolic: e.diastolic, temperature: e.temperature, consciousness: e.consciousness }
            })
            .collect();
        assert_eq!(posted.len(), 60);
        let store = Store::open(&hub.store, hub.binding).unwrap();
        for d in &devices {
            let stored: Vec<Reading> = store.device_readings(ids::device_id(&d.serial)).unwrap().into_iter().map(|r| r.reading).collect();
            let on_chain: Vec<Reading> = posted.iter().filter(|r| r.deviceId == ids::device_id(&d.serial)).cloned().collect();
            assert_eq!(stored, on_chain, "{}: the chain holds exactly the stored readings, in order", d.serial);
            let info = HealthSense::new(net.contract, &p).getDevice(ids::device_id(&d.serial)).call().await.unwrap();
            assert_eq!(info.lastSeq, 30);
        }
    });
}

#[test]
fn a_simulated_ward_is_ingested_and_anchored() {
    let net = Net::new(&[1]);
    let hub = Hub::start(&net, "ward-7", "ward-7", 1, Broker::Embedded, 50);
    let broker = format!("127.0.0.1:{}", hub.mqtt_port);
    let args = ["--json", "simulate", "--hub", "ward-7", "--ward", "ward-7", "--broker", &broker, "--beds", "3", "--rate", "10"];
    let out = net.cli(ADMIN, &[&args[..], &["--seconds", "6", "--speed", "3000"]].concat());
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["readings"], 180, "3 beds x 10/s x 6 s, sleep-buffered ones included");
    assert_eq!(report["states"], 6, "each bed fell asleep and woke once");
    let c = hub.wait("every simulated reading anchored", |c| c.anchored_readings == 180);
    assert_eq!(c.rejections, 0, "simulated readings are valid readings");
    // Every third patient deteriorates; the simulator scores it as a nurse would.
    assert!(!report["deteriorated"].as_array().unwrap().is_empty(), "{report}");
}

// ---- Discharge, bill and the encrypted IPFS archive ---------------------

const DOCTOR: usize = 2;
const INSURER: usize = 3;

/// A TCP forwarder standing between the hubs and anvil, to cut the chain
/// off and bring it back without losing its state.
///
/// It holds its port from [`Proxy::new`] to the end of the test: while down
/// it accepts and closes every connection at once, so no other test's
/// server or outgoing connection can take the port in the meantime (a
/// re-bind of the same port once failed with `AddrInUse` that way).
struct Proxy {
    port: u16,
    target: u16,
    listener: Option<std::net::TcpListener>,
    control: Option<mpsc::UnboundedSender<(bool, tokio::sync::oneshot::Sender<()>)>>,
}

impl Proxy {
    fn new(target: u16) -> Proxy {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        Proxy { port, target, listener: Some(listener), control: None }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Forwards every new connection to the target (the forwarder starts on
    /// the first call, inside the test's runtime).
    async fn up(&mut self) {
        if let Some(listener) = self.listener.take() {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            let (tx, rx) = mpsc::unbounded_channel();
            tokio::spawn(Self::serve(listener, self.target, rx));
            self.control = Some(tx);
        }
        self.switch(true).await;
    }

    /// Closes every open connection and refuses new ones (accepted and closed
    /// at once) until the next [`Proxy::up`].
    async fn down(&mut self) {
        self.switch(false).await;
    }

    async fn switch(&self, up: bool) {
        let (done, applied) = tokio::sync::oneshot::channel();
        self.control.as_ref().expect("the proxy was never brought up").send((up, done)).unwrap();
        applied.await.unwrap();
    }

    async fn serve(
        listener: tokio::net::TcpListener,
        target: u16,
        mut control: mpsc::UnboundedReceiver<(bool, tokio::sync::oneshot::Sender<()>)>,
    ) {
        let mut up = false;
        let mut conns = tokio::task::JoinSet::new();
        loop {
            tokio::select! {
                command = control.recv() => {
                    let Some((next, done)) = command else { return };
                    if !next {
                        conns.abort_all(); // dropping the streams closes them
                        while conns.join_next().await.is_some() {}
                    }
                    up = next;
                    let _ = done.send(());
                }
                accepted = listener.accept() => {
                    let Ok((mut inbound, _)) = accepted else { continue };
                    if !up {
                        continue; // dropped: the client sees its connection closed
                    }
                    conns.spawn(async move {
                        if let Ok(mut outbound) = tokio::net::TcpStream::connect(("127.0.0.1", target)).await {
                            let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                        }
                    });
                }
                Some(_) = conns.join_next(), if !conns.is_empty() => {}
            }
        }
    }
}

/// An embedded IPFS node with its repository in the test's folder.
struct Ipfs {
    repo: PathBuf,
    port: u16,
    node: Option<healthsense_ipfs_node::RunningNode>,
}

impl Ipfs {
    async fn start(dir: &Path) -> Ipfs {
        // A free port can be taken by a parallel test before the node binds
        // it: try a few.
        let mut last = None;
        for _ in 0..5 {
            let port = free_port();
            let cfg = healthsense_ipfs_node::NodeConfig::new(dir.join("ipfs"), ([127, 0, 0, 1], port).into());
            match healthsense_ipfs_node::start(cfg).await {
                Ok(node) => return Ipfs { repo: dir.join("ipfs"), port, node: Some(node) },
                Err(e) => last = Some(e),
            }
        }
        panic!("the IPFS node did not start on any of 5 free ports: {last:?}");
    }

    fn api(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    async fn up(&mut self) {
        let cfg = healthsense_ipfs_node::NodeConfig::new(self.repo.clone(), ([127, 0, 0, 1], self.port).into());
        self.node = Some(healthsense_ipfs_node::start(cfg).await.unwrap());
    }

    async fn down(&mut self) {
        if let Some(n) = self.node.take() {
            n.shutdown().await;
        }
    }
}

/// Net with doctor and insurer roles, a tariff, published billing rules
/// and hubs configured to archive to `ipfs` under a fresh master key.
fn archiving_net(ipfs_api: &str, hubs: &[usize]) -> (Net, PathBuf) {
    let mut net = Net::new(hubs);
    net.cli(ADMIN, &["roles", "grant", "doctor", &net.anvil.addresses()[DOCTOR].to_string()]);
    net.cli(ADMIN, &["roles", "grant", "insurer", &net.anvil.addresses()[INSURER].to_string()]);
    net.cli(ADMIN, &["tariff", "set", "ward-3", "45000"]);
    let key_file = net.dir.path().join("archive.key");
    std::fs::write(&key_file, healthsense_oracle::archive::seal::Secret::random().to_hex()).unwrap();
    let rules = net.dir.path().join("billing-rules.md");
    std::fs::write(&rules, "# Ward tariffs 2026\nBed days are started days; see docs/CONTRACT.md.\n").unwrap();
    let out = net.cli(ADMIN, &["--json", "--ipfs-api", ipfs_api, "billing", "publish", rules.to_str().unwrap()]);
    let published: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(published["cid"].as_str().unwrap().starts_with("bafk"), "{published}");
    net.hub_extra = format!(
        "[archive]\nipfs_api = \"{ipfs_api}\"\nkey_file = \"{}\"\nsettle_ms = 300\nmax_backoff_ms = 1000\n",
        key_file.display()
    );
    (net, key_file)
}

/// Admits `patient` on `serial`, with two charges and an 80% policy.
fn admit_with_charges(net: &Net, patient: &str, serial: &str) {
    net.cli(DOCTOR, &["patient", "admit", patient, "--device", serial]);
    net.cli(DOCTOR, &["charge", "add", patient, "--code", "99223", "--category", "consultation", "--unit-price", "25000"]);
    net.cli(DOCTOR, &["charge", "add", patient, "--code", "LAB-CBC", "--category", "laboratory", "--quantity", "3", "--unit-price", "1999"]);
    net.cli(INSURER, &["policy", "set", patient, "--coverage-bps", "8000", "--deductible", "5000"]);
}

fn patient_id(label: &str) -> B256 {
    alloy::primitives::keccak256(label)
}

/// Waits until the chain holds the patient's archive CID.
async fn archived_cid(net: &Net, hub: &Hub, patient: B256) -> String {
    let p = net.provider().await;
    let contract = HealthSense::new(net.contract, &p);
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let a = contract.getArchive(patient).call().await.unwrap();
        if !a.cid.is_empty() {
            return a.cid;
        }
        assert!(Instant::now() < deadline, "no archive CID on chain for {patient}:\n{}", hub.logs());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn cli_output(net: &Net, who: usize, args: &[&str]) -> std::process::Output {
    common::healthsense(&net.anvil, who, &net.deployment, &net.root, args)
}

/// Decrypts a sealed archive with `key`, lets `edit` change the bundle
/// text, and seals it again under the same key (a forger who holds the key).
fn reseal(net: &Net, patient: B256, key_file: &Path, sealed: &[u8], edit: impl Fn(String) -> String) -> Vec<u8> {
    use healthsense_oracle::archive::seal::{self, ArchiveScope, Secret};
    use std::io::Write;
    let scope = ArchiveScope { chain_id: net.anvil.chain_id(), contract: net.contract, patient };
    let key = Secret::from_hex(&std::fs::read_to_string(key_file).unwrap(), "key").unwrap();
    let json = String::from_utf8(seal::decompress(&seal::open(&key, &scope, sealed).unwrap()).unwrap()).unwrap();
    let edited = edit(json.clone());
    assert_ne!(edited, json, "the edit changed nothing");
    let mut enc = seal::compressor(Vec::new()).unwrap();
    enc.write_all(edited.as_bytes()).unwrap();
    seal::seal(&key, &scope, &enc.finish().unwrap())
}

#[test]
fn a_discharge_signal_bills_archives_and_every_archive_verifies() {
    let rt = rt();
    let tmp = tempfile::tempdir().unwrap();
    let ipfs = rt.block_on(Ipfs::start(tmp.path()));
    let (net, _) = archiving_net(&ipfs.api(), &[1]);
    let mut bed = Device::new("HS-D1", net.provision("HS-D1", "ward-3"));
    let hub = Hub::start(&net, "ward-3", "ward-3", 1, Broker::Embedded, 20);
    let config = hub.config.to_str().unwrap().to_string();
    let patient = patient_id("stay-d1");
    let cid = rt.block_on(async {
        let mut mqtt = Mqtt::connect(hub.mqtt_port, "bedside", "ward-3").await;
        assert_eq!(mqtt.hello(&bed).await, Code::Registered);
        admit_with_charges(&net, "stay-d1", "HS-D1");
        for i in 0..45u64 {
            let r = bed.next(i);
            mqtt.vitals(&net, &bed, &r).await;
        }
        hub.wait("45 readings stored", |c| c.readings == 45);

        // A forged signal (another key) and a bad code are refused with their codes.
        let forged = protocol::sign_discharge(&PrivateKeySigner::random(), net.domain, "HS-D1", 1, protocol_now()).unwrap();
        mqtt.publish("HS-D1", DeviceTopic::Discharge, forged).await;
        assert_eq!(mqtt.rejection("HS-D1", &hub).await.code, Code::WrongSigner);
        mqtt.publish("HS-D1", DeviceTopic::Discharge, b"{\"code\":1}".to_vec()).await;
        assert_eq!(mqtt.rejection("HS-D1", &hub).await.code, Code::Malformed);

        let signal = protocol::sign_discharge(&bed.key, net.domain, "HS-D1", 1, protocol_now()).unwrap();
        mqtt.publish("HS-D1", DeviceTopic::Discharge, signal.clone()).await;
        assert_eq!(mqtt.rejection("HS-D1", &hub).await.code, Code::Discharging);
        let cid = archived_cid(&net, &hub, patient).await;
        assert!(cid.starts_with("bafybei") || cid.starts_with("bafkrei"), "a CIDv1: {cid}");
        // The same signal again finds no admitted patient on the device.
        mqtt.publish("HS-D1", DeviceTopic::Discharge, signal).await;
        assert_eq!(mqtt.rejection("HS-D1", &hub).await.code, Code::NoPatient);
        cid
    });

    // The bill came from the contract: 1 bed day at ward-3's 45000 + 25000 + 3 x 1999.
    let bill: serde_json::Value = serde_json::from_str(&net.cli(ADMIN, &["--json", "bill", "stay-d1"])).unwrap();
    assert_eq!(bill["total"], "75997");
    // Covered: 80% of what is above the 5000 deductible, rounded down.
    assert_eq!((bill["covered"].as_str(), bill["due"].as_str()), (Some("56797"), Some("19200")));

    let verify = net.cli(ADMIN, &["--ipfs-api", &ipfs.api(), "archive", "verify", "stay-d1", "--oracle-config", &config]);
    assert!(verify.contains("45/45") && verify.trim_end().ends_with("verified"), "{verify}\n{}", hub.logs());
    // Issue 20: camelCase JSON, as the API's.
    let report: serde_json::Value =
        serde_json::from_str(&net.cli(ADMIN, &["--json", "--ipfs-api", &ipfs.api(), "archive", "verify", "stay-d1", "--oracle-config", &config])).unwrap();
    assert_eq!((report["readingsVerified"].as_u64(), report["billVerified"].as_bool(), report["recordHashVerified"].as_bool()), (Some(45), Some(true), Some(true)), "{report}");
    assert_camel_case(&report);

    let bundle_path = tmp.path().join("bundle.json");
    net.cli(ADMIN, &["--ipfs-api", &ipfs.api(), "archive", "fetch", "stay-d1", "--oracle-config", &config, "-o", bundle_path.to_str().unwrap()]);
    let bundle: serde_json::Value = serde_json::from_slice(&std::fs::read(&bundle_path).unwrap()).unwrap();
    let kinds: Vec<&str> = bundle["entry"].as_array().unwrap().iter().map(|e| e["resource"]["resourceType"].as_str().unwrap()).collect();
    // 45 s of readings: one clinical interval, so the first reading is charted
    // (a panel and its members); the full series holds all 45.
    let panels = bundle["entry"].as_array().unwrap().iter().filter(|e| e["resource"]["code"]["coding"][0]["code"] == "85353-1").count();
    assert_eq!(panels, 1, "{kinds:?}");
    assert_eq!(kinds.iter().filter(|k| **k == "Binary").count(), 1);
    assert_eq!(kinds.iter().filter(|k| **k == "ChargeItem").count(), 2);
    for k in ["Organization", "Patient", "Encounter", "Device", "Coverage", "Claim", "ExplanationOfBenefit"] {
        assert!(kinds.contains(&k), "{k} missing: {kinds:?}");
    }
    let text = String::from_utf8(std::fs::read(&bundle_path).unwrap()).unwrap();
    assert!(!text.contains("stay-d1"), "the stay label never leaves the hospital: only its hash is the patient id");

    // One reading with its proof, from the hub store, then altered.
    let out = net.cli(ADMIN, &["--json", "reading", "verify", "HS-D1", "7", "--oracle-config", &config]);
    let proven: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(proven["verified"], true, "{proven}");
    assert_camel_case(&proven);
    let mut altered = proven["reading"].clone();
    altered["reading"]["heartRate"] = (altered["reading"]["heartRate"].as_u64().unwrap() + 1).into();
    let file = tmp.path().join("reading.json");
    std::fs::write(&file, altered.to_string()).unwrap();
    let out = cli_output(&net, ADMIN, &["reading", "verify", "--file", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(5), "{}", String::from_utf8_lossy(&out.stdout));

    // The patient's own key works without the hub's master key.
    let patient_key = tmp.path().join("patient.key");
    net.cli(ADMIN, &["archive", "key", "stay-d1", "--oracle-config", &config, "-o", patient_key.to_str().unwrap()]);
    let verify = net.cli(ADMIN, &["--ipfs-api", &ipfs.api(), "archive", "verify", "stay-d1", "--key-file", patient_key.to_str().unwrap()]);
    assert!(verify.contains("45/45"), "{verify}");

    // A checker the project did not write (tests/fhir/check_archive.py, no
    // project crate): decrypts with the patient key, validates with
    // fhir.resources (R4) and HL7's FHIR R4 JSON schema, and re-checks one
    // reading's proof against the chain.
    let python = net.root.join(".tools/venv/bin/python");
    assert!(python.exists(), "{} is missing: run scripts/setup (it installs the archive's third-party checkers)", python.display());
    let out = std::process::Command::new(&python)
        .arg(net.root.join("tests/fhir/check_archive.py"))
        .args(["sealed", "--key-file", patient_key.to_str().unwrap(), "--chain-id", &net.anvil.chain_id().to_string()])
        .args(["--contract", &net.contract.to_string(), "--patient", &patient.to_string(), "--rpc", net.anvil.endpoint().as_str()])
        .args(["--cid", &cid, "--ipfs", &ipfs.api()])
        .output()
        .unwrap();
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && said.contains("verifyReading on chain returned true"), "{said}");

    // Tampering: a reading of the full series, a charted value, a charge, the bill, in turn.
    let sealed_path = tmp.path().join("sealed.hsa");
    net.cli(ADMIN, &["--ipfs-api", &ipfs.api(), "archive", "fetch", "stay-d1", "--sealed", "-o", sealed_path.to_str().unwrap()]);
    let sealed = std::fs::read(&sealed_path).unwrap();
    let cases: [(&str, Box<dyn Fn(String) -> String>); 5] = [
        ("reading 1: signature is not the device's", Box::new(|j: String| {
            // Characters 100-103 hold row bytes 75-77: reading 1's signature.
            let at = j.find("\"data\":\"").unwrap() + "\"data\":\"".len() + 100;
            let c = if &j[at..at + 1] == "A" { "B" } else { "A" };
            format!("{}{c}{}", &j[..at], &j[at + 1..])
        })),
        ("reading 1", Box::new(|j: String| {
            // Base64 characters 20-23 of the series hold row bytes 15-17: the
            // last one's low bits are reading 1's heart rate (docs/ARCHIVE.md).
            let at = j.find("\"data\":\"").unwrap() + "\"data\":\"".len() + 23;
            let c = if &j[at..at + 1] == "A" { "B" } else { "A" };
            format!("{}{c}{}", &j[..at], &j[at + 1..])
        })),
        ("Observation/hr-1", Box::new(|j: String| {
            let at = j.find("\"id\":\"hr-1\"").unwrap();
            // Keys are written sorted: the quantity's `value` comes last.
            let q = at + j[at..].find("\"valueQuantity\":").unwrap();
            let hr = q + j[q..].find("\"value\":").unwrap() + "\"value\":".len();
            let end = hr + j[hr..].find('}').unwrap();
            let v: u64 = j[hr..end].parse().unwrap();
            format!("{}{}{}", &j[..hr], v + 1, &j[end..])
        })),
        ("charge 1", Box::new(|j: String| j.replacen("{\"url\":\"unitPrice\",\"valueString\":\"1999\"}", "{\"url\":\"unitPrice\",\"valueString\":\"1899\"}", 1))),
        ("bill", Box::new(|j: String| j.replacen("{\"url\":\"total\",\"valueString\":\"75997\"}", "{\"url\":\"total\",\"valueString\":\"75897\"}", 1))),
    ];
    for (item, edit) in cases {
        let forged = tmp.path().join("forged.hsa");
        std::fs::write(&forged, reseal(&net, patient, &patient_key, &sealed, edit)).unwrap();
        let out = cli_output(&net, ADMIN, &["archive", "verify", "stay-d1", "--file", forged.to_str().unwrap(), "--key-file", patient_key.to_str().unwrap()]);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(5), "{item}: {stdout}\n{}", String::from_utf8_lossy(&out.stderr));
        assert!(stdout.contains(&format!("TAMPERED     {item}")), "{item} not reported: {stdout}");
        assert!(stdout.contains("record hash  DOES NOT match"), "{stdout}");
    }

    // Wrong key, truncated and corrupt archives, unknown patient: clear errors.
    let wrong = tmp.path().join("wrong.key");
    std::fs::write(&wrong, healthsense_oracle::archive::seal::Secret::random().to_hex()).unwrap();
    let truncated = tmp.path().join("truncated.hsa");
    std::fs::write(&truncated, &sealed[..sealed.len() / 2]).unwrap();
    let short = tmp.path().join("short.hsa");
    std::fs::write(&short, &sealed[..10]).unwrap();
    let junk = tmp.path().join("junk.hsa");
    std::fs::write(&junk, b"<html>gateway timeout</html>").unwrap();
    let key = patient_key.to_str().unwrap();
    for (args, code, says) in [
        (vec!["--ipfs-api", &ipfs.api(), "archive", "verify", "stay-d1", "--key-file", wrong.to_str().unwrap()], 1, "wrong key"),
        (vec!["archive", "verify", "stay-d1", "--file", truncated.to_str().unwrap(), "--key-file", key], 1, "does not decrypt"),
        (vec!["archive", "verify", "stay-d1", "--file", short.to_str().unwrap(), "--key-file", key], 1, "truncated"),
        (vec!["archive", "verify", "stay-d1", "--file", junk.to_str().unwrap(), "--key-file", key], 1, "not a HealthSense archive"),
        (vec!["archive", "verify", "stay-unknown", "--key-file", key], 4, "no patient"),
        (vec!["archive", "verify", "stay-d1"], 3, "--key-file"),
    ] {
        let out = cli_output(&net, ADMIN, &args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "{args:?}: {stderr}");
        assert!(stderr.contains(says), "{args:?} should say {says:?}: {stderr}");
    }

    // Erasure: once the key salt is gone the hub cannot derive the key again.
    let out = cli_output(&net, ADMIN, &["archive", "erase", "stay-d1", "--oracle-config", &config]);
    assert_eq!(out.status.code(), Some(3), "erasure needs --yes");
    net.cli(ADMIN, &["archive", "erase", "stay-d1", "--oracle-config", &config, "--yes"]);
    let out = cli_output(&net, ADMIN, &["--ipfs-api", &ipfs.api(), "archive", "verify", "stay-d1", "--oracle-config", &config]);
    assert_eq!(out.status.code(), Some(3), "{}", String::from_utf8_lossy(&out.stderr));
    rt.block_on(async { drop(ipfs) });
}

/// Every key of a JSON value, at any depth, is camelCase (issue 20).
fn assert_camel_case(v: &serde_json::Value) {
    match v {
        serde_json::Value::Object(map) => {
            for (k, v) in map {
                assert!(!k.contains('_') && !k.starts_with(|c: char| c.is_ascii_uppercase()), "{k:?} is not camelCase in {map:?}");
                assert_camel_case(v);
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(assert_camel_case),
        _ => {}
    }
}

fn protocol_now() -> u64 {
    healthsense_oracle::ingest::now_ms()
}

#[test]
fn outages_of_ipfs_and_the_chain_delay_the_archive_and_lose_nothing() {
    let rt = rt();
    let tmp = tempfile::tempdir().unwrap();
    let mut ipfs = rt.block_on(Ipfs::start(tmp.path()));
    let (mut net, _) = archiving_net(&ipfs.api(), &[1]);
    let mut proxy = Proxy::new(net.anvil.port());
    rt.block_on(proxy.up());
    net.rpc_override = Some(proxy.url());
    let mut bed = Device::new("HS-F1", net.provision("HS-F1", "ward-3"));
    let hub = Hub::start(&net, "ward-3", "ward-3", 1, Broker::Embedded, 10);
    let config = hub.config.to_str().unwrap().to_string();
    let patient = patient_id("stay-f1");
    let job_state = || {
        let store = Store::open(&hub.store, hub.binding).unwrap();
        store.init_archive().unwrap();
        store.archive_job(patient).unwrap().map(|j| (j.state, j.last_error.unwrap_or_default()))
    };
    let wait_state = |want: healthsense_oracle::archive::State, error_too: bool| {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some((state, error)) = job_state() {
                if state == want && (!error_too || !error.is_empty()) {
                    return error;
                }
            }
            assert!(Instant::now() < deadline, "job never reached {want:?} ({:?}):\n{}", job_state(), hub.logs());
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    rt.block_on(async {
        let mut mqtt = Mqtt::connect(hub.mqtt_port, "bedside", "ward-3").await;
        assert_eq!(mqtt.hello(&bed).await, Code::Registered);
        admit_with_charges(&net, "stay-f1", "HS-F1");
        for i in 0..30u64 {
            let r = bed.next(i);
            mqtt.vitals(&net, &bed, &r).await;
        }
        hub.wait("30 readings anchored", |c| c.anchored_readings == 30);
        ipfs.down().await;
    });
    // A doctor discharges from the CLI (straight to anvil) while IPFS is down.
    net.cli(DOCTOR, &["patient", "discharge", "stay-f1"]);
    let error = wait_state(healthsense_oracle::archive::State::Sealed, true);
    assert!(!error.is_empty(), "the failed IPFS add is recorded");
    rt.block_on(async {
        proxy.down().await; // the chain goes away too
        ipfs.up().await; // IPFS comes back: the archive is pinned...
    });
    let error = wait_state(healthsense_oracle::archive::State::Pinned, true);
    assert!(error.contains("chain"), "...but setArchive waits for the chain: {error}");
    rt.block_on(async {
        proxy.up().await;
        let cid = archived_cid(&net, &hub, patient).await;
        assert!(cid.starts_with("baf"), "{cid}");
    });
    let verify = net.cli(ADMIN, &["--ipfs-api", &ipfs.api(), "archive", "verify", "stay-f1", "--oracle-config", &config]);
    assert!(verify.contains("30/30"), "every reading of the stay is in the archive: {verify}");
    // Counted once the hub has the receipt and its job row is updated,
    // which may be just after the CID is readable on chain.
    hub.poll("the archive counted", || hub.metrics(), |m| m.contains("healthsense_oracle_archives_total 1"));
    rt.block_on(async { ipfs.down().await });
}

// ---- Issue 17: readiness, session drops, strict parsing, honest simulator --

fn mosquitto_bin() -> &'static str {
    ["/usr/sbin/mosquitto", "/usr/bin/mosquitto"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("mosquitto is not installed: run scripts/setup (apt-get install mosquitto)")
}

impl Mosquitto {
    /// Stops the broker (its port and configuration are kept for [`Mosquitto::restart`]).
    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts the broker again on its port.
    fn restart(&mut self) {
        self.stop();
        let conf = self._dir.path().join("mosquitto.conf");
        self.child = Command::new(mosquitto_bin()).arg("-c").arg(&conf).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "mosquitto did not restart on {}", self.port);
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Hub {
    /// `GET path` on the metrics listener: status and body.
    fn get(&self, path: &str) -> (u16, String) {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", self.metrics_port)).unwrap();
        write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        let status = out.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
        (status, out.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default())
    }

    /// The readiness conditions that hold (`/readyz`), checked against its status code.
    fn failing(&self) -> Vec<String> {
        let (status, body) = self.get("/readyz");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("/readyz {status}: {e}: {body}"));
        let failing: Vec<String> =
            v["failing"].as_array().unwrap().iter().map(|f| f["condition"].as_str().unwrap().to_string()).collect();
        assert_eq!(status, if failing.is_empty() { 200 } else { 503 }, "{body}");
        assert_eq!(v["ready"], failing.is_empty());
        failing
    }

    /// Waits until the failing conditions satisfy `done`.
    fn wait_readiness(&self, what: &str, done: impl Fn(&[String]) -> bool) -> Vec<String> {
        self.poll(what, || self.failing(), |f| done(f))
    }
}

fn has(failing: &[String], condition: &str) -> bool {
    failing.iter().any(|f| f == condition)
}

#[test]
fn readiness_names_what_is_wrong_and_counts_session_drops() {
    let rt = rt();
    let mut broker = Mosquitto::start();
    let mut net = Net::new(&[1]);
    let mut proxy = Proxy::new(net.anvil.port());
    rt.block_on(proxy.up());
    net.rpc_override = Some(proxy.url());
    net.hub_extra =
        "[health]\nflap_window_s = 300\nflap_drops = 3\ningest_stall_s = 2\nchain_grace_s = 1\nanchor_margin_ms = 1000\n".into();
    let mut dev = Device::new("HS-H1", net.provision("HS-H1", "ward-8"));
    let hub = Hub::start(&net, "ward-8", "ward-8", 1, Broker::External(broker.port), 5);
    hub.wait_readiness("ready", |f| f.is_empty());

    // The broker goes away: not ready, and /readyz says why; alive all the same.
    broker.stop();
    hub.wait_readiness("mqtt_down", |f| has(f, "mqtt_down"));
    assert_eq!(hub.get("/healthz"), (200, "ok\n".to_string()));
    broker.restart();
    hub.wait_readiness("ready again", |f| f.is_empty());
    // Two more drops: three in the window is a flapping session, though
    // each reconnect succeeds. Logged at error level and counted.
    for _ in 0..2 {
        broker.stop();
        hub.wait_readiness("mqtt_down", |f| has(f, "mqtt_down"));
        broker.restart();
        hub.wait_readiness("reconnected", |f| !has(f, "mqtt_down"));
    }
    let failing = hub.wait_readiness("mqtt_flapping", |f| has(f, "mqtt_flapping"));
    assert_eq!(failing, ["mqtt_flapping"]);
    let logs = hub.logs();
    assert!(logs.lines().any(|l| l.contains("ERROR") && l.contains("the MQTT session keeps dropping")), "{logs}");
    let metrics = hub.metrics();
    for line in [
        "healthsense_oracle_mqtt_session_drops_total 3",
        "healthsense_oracle_mqtt_connected 1",
        "healthsense_oracle_not_ready{condition=\"mqtt_flapping\"} 1",
        "healthsense_oracle_not_ready{condition=\"mqtt_down\"} 0",
    ] {
        assert!(metrics.contains(line), "{line} missing:\n{metrics}");
    }

    rt.block_on(async {
        let mut mqtt = Mqtt::connect(broker.port, "beds-h", "ward-8").await;
        assert_eq!(mqtt.hello(&dev).await, Code::Registered);
        for i in 0..5 {
            let r = dev.next(i);
            mqtt.vitals(&net, &dev, &r).await;
        }
        hub.wait("5 readings anchored", |c| c.anchored_readings == 5);
        // The hub forgets a device's record when it sees the device's events
        // (the activation) on chain: past that, one more reading caches it again.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let r = dev.next(5);
        mqtt.vitals(&net, &dev, &r).await;
        hub.wait("6 readings stored", |c| c.readings == 6);
        // The chain goes away: readings of a known device are still stored,
        // but not anchored; a device the hub has not looked up yet waits.
        proxy.down().await;
        for i in 6..10 {
            let r = dev.next(i);
            mqtt.vitals(&net, &dev, &r).await;
        }
        hub.wait("10 readings stored", |c| c.readings == 10);
        let stranger = Device::new("HS-H-NOBODY", PrivateKeySigner::random());
        let r = Reading { deviceId: ids::device_id(&stranger.serial), ..dev.next(10) };
        mqtt.vitals(&net, &stranger, &r).await;
        let failing = hub.wait_readiness("chain, anchoring and ingest conditions", |f| {
            ["chain_unreachable", "anchor_late", "ingest_stuck"].iter().all(|c| has(f, c))
        });
        assert!(!has(&failing, "mqtt_down"), "{failing:?}");
        // Back: every condition but the flapping window clears.
        proxy.up().await;
        hub.wait_readiness("the chain conditions clear", |f| f == ["mqtt_flapping"]);
        assert_eq!(mqtt.rejection("HS-H-NOBODY", &hub).await.code, Code::UnknownDevice);
        hub.wait("10 readings anchored", |c| c.anchored_readings == 10);
    });
    let metrics = hub.metrics();
    assert!(metrics.contains("healthsense_oracle_not_ready{condition=\"chain_unreachable\"} 0"), "{metrics}");
}

#[test]
fn signed_payloads_are_parsed_strictly_and_path_like_serials_get_no_answer() {
    let net = Net::new(&[1]);
    let mut dev = Device::new("HS-S1", net.provision("HS-S1", "ward-2"));
    let hub = Hub::start(&net, "ward-2", "ward-2", 1, Broker::Embedded, 5);
    rt().block_on(async {
        let mut mqtt = Mqtt::connect(hub.mqtt_port, "beds-s", "ward-2").await;
        assert_eq!(mqtt.hello(&dev).await, Code::Registered);
        let r = dev.next(1);
        let signed = String::from_utf8(protocol::sign_vitals(&dev.key, net.domain, "HS-S1", &r).unwrap()).unwrap();
        let cases = [
            ("a key twice, same value", signed.replacen("{\"seq\":1,", "{\"seq\":1,\"seq\":1,", 1)),
            ("a key twice, another value", signed.replacen("{\"seq\":1,", "{\"seq\":2,\"seq\":1,", 1)),
            ("a record key twice", signed.replacen("\"n\":\"heartRate\"", "\"n\":\"heartRate\",\"n\":\"heartRate\"", 1)),
            ("an unknown top-level field", signed.replacen("{\"seq\":1,", "{\"seq\":1,\"note\":\"x\",", 1)),
        ];
        for (what, payload) in &cases {
            assert_ne!(payload, &signed, "{what}: the edit applies");
            mqtt.publish("HS-S1", DeviceTopic::Vitals, payload.clone().into_bytes()).await;
            let reply = mqtt.rejection("HS-S1", &hub).await;
            assert_eq!(reply.code, Code::Malformed, "{what}: {}", reply.reason);
        }
        mqtt.publish("HS-S1", DeviceTopic::Vitals, signed.into_bytes()).await;
        let c = hub.wait("the well-formed reading stored", |c| c.readings == 1);
        assert_eq!(c.rejections, cases.len() as u64);

        // Hellos on path-like serials get no answer; the marker hello after
        // them does (the hub answers hellos in order).
        let (raw, mut ev) = AsyncClient::new(MqttOptions::new("raw-s", "127.0.0.1", hub.mqtt_port), 100);
        raw.subscribe("hs/v1/ward-2/dev/+/status", QoS::AtLeastOnce).await.unwrap();
        let (tx, mut topics) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok(e) = ev.poll().await {
                if let Event::Incoming(Packet::Publish(p)) = e {
                    let _ = tx.send(p.topic);
                }
            }
        });
        let hello = serde_json::json!({ "signer": dev.key.address() }).to_string();
        for serial in ["..", ".", "-", "HS-S-MARK"] {
            raw.publish(format!("hs/v1/ward-2/dev/{serial}/hello"), QoS::AtLeastOnce, false, hello.clone()).await.unwrap();
        }
        loop {
            let topic = tokio::time::timeout(Duration::from_secs(20), topics.recv()).await.expect("the marker is answered").unwrap();
            assert!(!["..", ".", "-"].iter().any(|s| topic == format!("hs/v1/ward-2/dev/{s}/status")), "answered on {topic}");
            if topic == "hs/v1/ward-2/dev/HS-S-MARK/status" {
                break;
            }
        }
    });
}

#[test]
fn simulate_reports_what_the_hub_stored_and_fails_when_it_did_not() {
    let broker = Mosquitto::start();
    let net = Net::new(&[1]);
    let mut hub = Hub::start(&net, "ward-9", "ward-9", 1, Broker::External(broker.port), 50);
    let address = format!("127.0.0.1:{}", broker.port);
    let simulate = |seconds: &str| {
        Command::new(env!("CARGO_BIN_EXE_healthsense"))
            .args(["--json", "simulate", "--hub", "ward-9", "--ward", "ward-9", "--broker", &address, "--beds", "2", "--rate", "5"])
            .args(["--speed", "100", "--wait", "3", "--seconds", seconds, "--deployment"])
            .arg(&net.deployment)
            .env("HEALTHSENSE_PRIVATE_KEY", alloy::hex::encode(net.anvil.keys()[ADMIN].to_bytes()))
            .env("HEALTHSENSE_HOME", &net.root)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    // The hub stops mid-run: the broker still acknowledges every reading.
    let run = simulate("8");
    hub.wait("readings flowing", |c| c.readings >= 5);
    hub.kill();
    let out = run.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(6), "readings the hub did not store fail the run: {stderr}");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["readings"], 80, "2 beds x 5/s x 8 s published: {report}");
    assert!(report["stored"].as_u64().unwrap() < 80, "{report}");
    assert!(stderr.contains("not confirmed stored"), "{stderr}");

    // With the hub running to the end, every reading is confirmed stored.
    hub.spawn(&net);
    let out = simulate("2").wait_with_output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!((report["readings"].as_u64(), report["stored"].as_u64(), report["rejected"].as_u64()), (Some(20), Some(20), Some(0)), "{report}");
}
