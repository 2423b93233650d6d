//! Broker authentication and topic ACLs, and oversized messages, end to end:
//! `healthsense oracle` processes against a real anvil and a real broker
//! (its embedded rumqttd, or a Mosquitto started from the configuration
//! `healthsense broker mosquitto-config` writes), with bedside devices that
//! log in as themselves and a provisioned device that tries to speak for
//! others.

mod common;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use alloy::node_bindings::{Anvil, AnvilInstance};
use alloy::primitives::{Address, B256};
use alloy::signers::local::PrivateKeySigner;
use healthsense_abi::rules::eip712;
use healthsense_cli::simulate::{device_options, steady_reading};
use healthsense_cli::tools;
use healthsense_oracle::broker::{device_password, hub_username};
use healthsense_oracle::protocol::{self, Code, DeviceTopic, StatusReply, Topics, CONTRACT_TOPIC};
use healthsense_oracle::store::{Binding, Counts, Store};
use rumqttc::{AsyncClient, Event, EventLoop, LastWill, MqttOptions, Packet, QoS};
use tokio::sync::mpsc;

const ADMIN: usize = 0;
const HUB: usize = 1;
const WARD: &str = "ward-3";

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn now_ms() -> u64 {
    healthsense_oracle::ingest::now_ms()
}

/// anvil with the contract deployed and the hub role granted.
struct Net {
    anvil: AnvilInstance,
    root: PathBuf,
    dir: tempfile::TempDir,
    deployment: PathBuf,
    contract: Address,
    domain: B256,
}

impl Net {
    fn new() -> Self {
        let root = tools::project_root().unwrap();
        let anvil = Anvil::new().path(tools::foundry_tool(&root, "anvil").unwrap()).spawn();
        let dir = tempfile::tempdir().unwrap();
        let deployment = dir.path().join("deployment.json");
        let mut net = Net { anvil, root, dir, deployment, contract: Address::ZERO, domain: B256::ZERO };
        net.cli(&["deploy", "--rpc-url", net.anvil.endpoint().as_str()]);
        let d: serde_json::Value = serde_json::from_slice(&std::fs::read(&net.deployment).unwrap()).unwrap();
        net.contract = d["address"].as_str().unwrap().parse().unwrap();
        net.domain = eip712::domain_separator(net.anvil.chain_id(), net.contract);
        net.cli(&["roles", "grant", "hub", &net.anvil.addresses()[HUB].to_string()]);
        net
    }

    fn cli(&self, args: &[&str]) -> String {
        let out = common::healthsense(&self.anvil, ADMIN, &self.deployment, &self.root, args);
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    }

    /// Provisions a device; with `mqtt_dir`, also gets its Mosquitto password.
    fn provision(&self, serial: &str, mqtt_dir: Option<&Path>) -> (PrivateKeySigner, Option<String>) {
        let key = PrivateKeySigner::random();
        let signer = key.address().to_string();
        let mut args = vec!["--json", "device", "provision", serial, "--signer", &signer, "--ward", WARD];
        let dir = mqtt_dir.map(|d| d.to_str().unwrap().to_string());
        if let Some(d) = &dir {
            args.extend(["--mqtt-dir", d]);
        }
        let out: serde_json::Value = serde_json::from_str(&self.cli(&args)).unwrap();
        (key, out["mqttPassword"].as_str().map(String::from))
    }
}

/// A `healthsense oracle` process.
struct Hub {
    child: Child,
    log: PathBuf,
    store: PathBuf,
    binding: Binding,
}

impl Hub {
    fn start(net: &Net, mqtt: &str) -> Hub {
        let store = net.dir.path().join("hub.sqlite");
        let metrics_port = free_port();
        let config = net.dir.path().join("hub.toml");
        std::fs::write(
            &config,
            format!(
                "hub = \"{WARD}\"\nward = \"{WARD}\"\nstore = \"{}\"\n[chain]\npoll_ms = 100\n[mqtt]\n{mqtt}\n\
                 [anchor]\nbatch_size = 10\ninterval_ms = 300\n[metrics]\nlisten = \"127.0.0.1:{metrics_port}\"\n",
                store.display()
            ),
        )
        .unwrap();
        let log = net.dir.path().join("hub.log");
        let child = Command::new(env!("CARGO_BIN_EXE_healthsense"))
            .args(["oracle", "--config"])
            .arg(&config)
            .arg("--deployment")
            .arg(&net.deployment)
            .env("HEALTHSENSE_HUB_PRIVATE_KEY", alloy::hex::encode(net.anvil.keys()[HUB].to_bytes()))
            .env("HEALTHSENSE_LOG", "info,rumqttd=warn")
            .env_remove("HEALTHSENSE_MQTT_PASSWORD")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let binding = Binding { chain_id: net.anvil.chain_id(), contract: net.contract, hub: net.anvil.addresses()[HUB] };
        let mut hub = Hub { child, log, store, binding };
        let deadline = Instant::now() + Duration::from_secs(60);
        while !hub.logs().contains("hub started") {
            assert!(Instant::now() < deadline, "the hub did not start:\n{}", hub.logs());
            assert!(hub.child.try_wait().unwrap().is_none(), "the hub exited:\n{}", hub.logs());
            std::thread::sleep(Duration::from_millis(100));
        }
        hub
    }

    fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn counts(&self) -> Counts {
        Store::open(&self.store, self.binding).unwrap().counts().unwrap()
    }

    fn wait(&self, what: &str, done: impl Fn(&Counts) -> bool) -> Counts {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let c = self.counts();
            if done(&c) {
                return c;
            }
            assert!(Instant::now() < deadline, "timed out waiting for {what}: {c:?}\n{}", self.logs());
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Hub {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Connects and waits for the broker's answer: the client and its event
/// loop if admitted, `None` if refused.
async fn login(mut opts: MqttOptions) -> Option<(AsyncClient, EventLoop)> {
    opts.set_keep_alive(Duration::from_secs(5)).set_max_packet_size(1 << 20, 1 << 20);
    let (client, mut eventloop) = AsyncClient::new(opts, 100);
    loop {
        match tokio::time::timeout(Duration::from_secs(10), eventloop.poll()).await.expect("the broker neither admitted nor refused") {
            Ok(Event::Incoming(Packet::ConnAck(ack))) if ack.code == rumqttc::ConnectReturnCode::Success => {
                return Some((client, eventloop))
            }
            Ok(Event::Incoming(Packet::ConnAck(_))) | Err(_) => return None,
            Ok(_) => {}
        }
    }
}

/// Whether the broker closes the connection within 5 s (what rumqttd does
/// to a client that leaves its topics); a PUBACK or SUBACK alone is not a
/// refusal.
async fn dropped(eventloop: &mut EventLoop) -> bool {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        match tokio::time::timeout_at(deadline, eventloop.poll()).await {
            Err(_) => return false,
            Ok(Err(_)) => return true,
            Ok(Ok(_)) => {}
        }
    }
}

/// A logged-in device collecting the status replies it may read.
struct Bedside {
    serial: String,
    key: PrivateKeySigner,
    client: AsyncClient,
    replies: mpsc::UnboundedReceiver<StatusReply>,
    topics: Topics,
    seq: u64,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Bedside {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Bedside {
    /// A device that reconnects (and subscribes again) after an error:
    /// Mosquitto closes the connection of a client whose publish it refused.
    async fn connect(port: u16, serial: &str, key: &PrivateKeySigner, password: Option<&str>) -> Bedside {
        let opts = device_options("127.0.0.1", port, serial, key, password).unwrap();
        let (client, mut eventloop) = login(opts).await.unwrap_or_else(|| panic!("{serial} was refused"));
        let topics = Topics::new(WARD).unwrap();
        client.subscribe(topics.device(serial, DeviceTopic::Status), QoS::AtLeastOnce).await.unwrap();
        let (tx, replies) = mpsc::unbounded_channel();
        let (again, status) = (client.clone(), topics.device(serial, DeviceTopic::Status));
        let task = tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    // Subscribe again after a reconnection, as a device does.
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        let _ = again.subscribe(status.clone(), QoS::AtLeastOnce).await;
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        if let Ok(reply) = serde_json::from_slice(&p.payload) {
                            let _ = tx.send(reply);
                        }
                    }
                    Ok(_) => {}
                    Err(e) => {
                        eprintln!("device connection: {e}; reconnecting");
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                }
            }
        });
        Bedside { serial: serial.into(), key: key.clone(), client, replies, topics, seq: 0, task }
    }

    async fn publish(&self, kind: DeviceTopic, payload: Vec<u8>) {
        self.client.publish(self.topics.device(&self.serial, kind), QoS::AtLeastOnce, false, payload).await.unwrap();
    }

    /// Says hello until the hub answers with a final code.
    async fn hello(&mut self) -> Code {
        let body = serde_json::json!({ "signer": self.key.address() }).to_string().into_bytes();
        for _ in 0..30 {
            self.publish(DeviceTopic::Hello, body.clone()).await;
            let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
            while let Ok(Some(reply)) = tokio::time::timeout_at(deadline, self.replies.recv()).await {
                if reply.code != Code::Initialised {
                    return reply.code;
                }
            }
        }
        panic!("no hello reply for {}", self.serial);
    }

    async fn vitals(&mut self, domain: B256, n: u64) {
        for i in 0..n {
            self.seq += 1;
            let r = steady_reading(&self.serial, self.seq, i);
            self.publish(DeviceTopic::Vitals, protocol::sign_vitals(&self.key, domain, &self.serial, &r).unwrap()).await;
        }
    }

    /// The next status reply other than a hello's, or `None` within `wait`.
    async fn next_reply(&mut self, wait: Duration) -> Option<StatusReply> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            match tokio::time::timeout_at(deadline, self.replies.recv()).await {
                Ok(Some(r)) if r.reason.starts_with("hello") => continue,
                Ok(Some(r)) => return Some(r),
                _ => return None,
            }
        }
    }
}

/// The retained contract announcement, read by a device allowed to read it.
async fn retained_contract(opts: MqttOptions) -> protocol::Announcement {
    let (client, mut ev) = login(opts).await.expect("a device may read the announcement");
    client.subscribe(CONTRACT_TOPIC, QoS::AtLeastOnce).await.unwrap();
    loop {
        let e = tokio::time::timeout(Duration::from_secs(10), ev.poll()).await.expect("no retained announcement").unwrap();
        if let Event::Incoming(Packet::Publish(p)) = e {
            return serde_json::from_slice(&p.payload).expect("the retained announcement is the hub's");
        }
    }
}

fn forged_status(code: u16) -> Vec<u8> {
    format!("{{\"code\":{code},\"status\":\"registered\",\"reason\":\"forged\"}}").into_bytes()
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

#[test]
fn the_embedded_broker_admits_devices_by_their_chain_key_and_keeps_each_to_its_own_topics() {
    let net = Net::new();
    let (good_key, _) = net.provision("HS-GOOD", None);
    let (evil_key, _) = net.provision("HS-EVIL", None);
    let port = free_port();
    let hub = Hub::start(&net, &format!("listen = \"127.0.0.1:{port}\""));
    rt().block_on(async {
        let mut good = Bedside::connect(port, "HS-GOOD", &good_key, None).await;
        assert_eq!(good.hello().await, Code::Registered);

        // Logins that must fail: none, another key, a used one, a stale one,
        // an unknown device, a client id that is not the serial, the hub's name.
        let opts = |id: &str, user: &str, password: String| {
            let mut o = MqttOptions::new(id, "127.0.0.1", port);
            o.set_credentials(user, password);
            o
        };
        assert!(login(MqttOptions::new("HS-GOOD", "127.0.0.1", port)).await.is_none(), "anonymous");
        let other = PrivateKeySigner::random();
        assert!(login(opts("HS-GOOD", "HS-GOOD", device_password(&other, "HS-GOOD", now_ms()).unwrap())).await.is_none(), "another key");
        let used = device_password(&evil_key, "HS-EVIL", now_ms()).unwrap();
        let (_evil, _ev) = login(opts("HS-EVIL", "HS-EVIL", used.clone())).await.expect("a fresh login of a provisioned device");
        assert!(login(opts("HS-EVIL", "HS-EVIL", used)).await.is_none(), "a replayed login");
        let stale = device_password(&evil_key, "HS-EVIL", now_ms() - 10 * 60_000).unwrap();
        assert!(login(opts("HS-EVIL", "HS-EVIL", stale)).await.is_none(), "a stale login");
        assert!(login(opts("HS-NOBODY", "HS-NOBODY", device_password(&other, "HS-NOBODY", now_ms()).unwrap())).await.is_none(), "unknown device");
        assert!(login(opts("hs-oracle-ward-3", "HS-EVIL", device_password(&evil_key, "HS-EVIL", now_ms()).unwrap())).await.is_none(), "client id of another");
        assert!(login(opts("x", &hub_username(WARD), "guess".into())).await.is_none(), "the hub's username");
        let mut will = device_options("127.0.0.1", port, "HS-EVIL", &evil_key, None).unwrap();
        will.set_last_will(LastWill::new(good.topics.device("HS-GOOD", DeviceTopic::Status), forged_status(200), QoS::AtLeastOnce, true));
        assert!(login(will).await.is_none(), "a Last Will on another device's status");

        // A logged-in device that leaves its own topics is disconnected, and nothing it sent arrives.
        let evil_opts = || {
            // Each login must be later than the last (to the millisecond).
            std::thread::sleep(Duration::from_millis(2));
            device_options("127.0.0.1", port, "HS-EVIL", &evil_key, None).unwrap()
        };
        let forged_vitals = {
            let r = steady_reading("HS-GOOD", 1_000, 1);
            protocol::sign_vitals(&evil_key, net.domain, "HS-GOOD", &r).unwrap()
        };
        let attempts: Vec<(&str, String, Vec<u8>)> = vec![
            ("a fake 200 on another device's status", good.topics.device("HS-GOOD", DeviceTopic::Status), forged_status(200)),
            ("its own status", good.topics.device("HS-EVIL", DeviceTopic::Status), forged_status(200)),
            ("the contract announcement", CONTRACT_TOPIC.into(), b"{\"chainId\":1}".to_vec()),
            ("the hub's presence", good.topics.online(), b"{\"online\":false}".to_vec()),
            ("alerts", good.topics.alerts(), b"{}".to_vec()),
            ("another device's vitals", good.topics.device("HS-GOOD", DeviceTopic::Vitals), forged_vitals),
        ];
        for (what, topic, payload) in attempts {
            let (client, mut ev) = login(evil_opts()).await.expect("HS-EVIL logs in");
            client.publish(topic, QoS::AtLeastOnce, true, payload).await.unwrap();
            assert!(dropped(&mut ev).await, "publishing on {what} was not refused");
        }
        for filter in ["#", "hs/v1/ward-3/dev/+/status", "hs/v1/ward-3/dev/HS-GOOD/status"] {
            let (client, mut ev) = login(evil_opts()).await.expect("HS-EVIL logs in");
            client.subscribe(filter, QoS::AtLeastOnce).await.unwrap();
            assert!(dropped(&mut ev).await, "subscribing to {filter} was not refused");
        }
        assert_eq!(good.next_reply(Duration::from_secs(1)).await, None, "HS-GOOD received a forged status");
        drop(good);
        let announced = retained_contract(device_options("127.0.0.1", port, "HS-GOOD", &good_key, None).unwrap()).await;
        assert_eq!((announced.address, announced.domain_separator), (net.contract, net.domain));

        // The device's own topics work; a message between the ingest limit
        // and the broker's gets 413 and is recorded; readings keep flowing.
        let mut good = Bedside::connect(port, "HS-GOOD", &good_key, None).await;
        good.publish(DeviceTopic::Vitals, vec![b' '; 10 * 1024]).await;
        let reply = good.next_reply(Duration::from_secs(20)).await.unwrap_or_else(|| panic!("no 413 reply:\n{}", hub.logs()));
        assert_eq!(reply.code, Code::Oversized, "{}", reply.reason);
        good.vitals(net.domain, 20).await;
        let c = hub.wait("20 readings", |c| c.readings == 20);
        assert_eq!(c.rejections, 1, "only the oversized message is rejected: forged vitals never reached the hub");
    });
    let logs = hub.logs();
    assert!(logs.contains("MQTT login refused") && logs.contains("topic not allowed"), "refusals are logged:\n{logs}");
    assert!(!logs.contains("authentication is OFF"), "{logs}");
}

/// Mosquitto started (as root, dropping to its own user) from a configuration
/// `healthsense broker mosquitto-config` wrote.
struct Mosquitto {
    child: Child,
}

impl Mosquitto {
    fn configure(net: &Net, port: u16) -> PathBuf {
        // Mosquitto drops to its own user: it must reach the folder.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(net.dir.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
        let dir = net.dir.path().join("mosquitto");
        let out = net.cli(&["--json", "broker", "mosquitto-config", "--dir", dir.to_str().unwrap(), "--hub", WARD, "--port", &port.to_string()]);
        let g: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(g["hubs"][0][0], hub_username(WARD));
        dir
    }

    fn start(dir: &Path, port: u16) -> Mosquitto {
        let bin = ["/usr/sbin/mosquitto", "/usr/bin/mosquitto"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .expect("mosquitto is not installed: run scripts/setup (apt-get install mosquitto)");
        let log = std::fs::File::create(dir.with_extension("log")).unwrap();
        let conf = dir.join("mosquitto.conf");
        let text = std::fs::read_to_string(&conf).unwrap();
        std::fs::write(&conf, text + "log_type all\n").unwrap();
        let child = Command::new(bin).arg("-c").arg(dir.join("mosquitto.conf")).stdout(Stdio::null()).stderr(log).spawn().unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "mosquitto did not start on {port}");
            std::thread::sleep(Duration::from_millis(20));
        }
        Mosquitto { child }
    }

}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn mosquitto_from_the_generated_config_refuses_spoofers_and_a_200_kib_message_wedges_nothing() {
    let net = Net::new();
    let port = free_port();
    let dir = Mosquitto::configure(&net, port);
    let (good_key, good_pw) = net.provision("HS-GOOD", Some(&dir));
    let (evil_key, evil_pw) = net.provision("HS-EVIL", Some(&dir));
    let (good_pw, evil_pw) = (good_pw.expect("a password for HS-GOOD"), evil_pw.expect("a password for HS-EVIL"));
    let broker = Mosquitto::start(&dir, port);
    let hub = Hub::start(
        &net,
        &format!(
            "embedded = false\nport = {port}\nusername = \"{}\"\npassword_file = \"{}\"",
            hub_username(WARD),
            dir.join(format!("hub-{WARD}.password")).display()
        ),
    );
    rt().block_on(async {
        let mut good = Bedside::connect(port, "HS-GOOD", &good_key, Some(&good_pw)).await;
        assert_eq!(good.hello().await, Code::Registered, "{}", hub.logs());

        let opts = |user: &str, password: &str| {
            let mut o = MqttOptions::new(user, "127.0.0.1", port);
            o.set_credentials(user, password);
            o
        };
        assert!(login(MqttOptions::new("HS-GOOD", "127.0.0.1", port)).await.is_none(), "anonymous");
        assert!(login(opts("HS-GOOD", &evil_pw)).await.is_none(), "another device's password");
        assert!(login(opts(&hub_username(WARD), &evil_pw)).await.is_none(), "the hub's username");

        // Mosquitto drops what a client may not publish and never sends what
        // it may not read.
        let (evil, mut ev) = login(opts("HS-EVIL", &evil_pw)).await.expect("HS-EVIL logs in");
        let seen = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        evil.subscribe("#", QoS::AtLeastOnce).await.unwrap();
        let evil_seen = seen.clone();
        tokio::spawn(async move {
            loop {
                match ev.poll().await {
                    Ok(Event::Incoming(Packet::Publish(p))) if p.topic.contains("HS-GOOD") => {
                        evil_seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    }
                    Ok(_) => {}
                    Err(e) => {
                        eprintln!("HS-EVIL's connection: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        });
        let forged_vitals = protocol::sign_vitals(&evil_key, net.domain, "HS-GOOD", &steady_reading("HS-GOOD", 1_000, 1)).unwrap();
        for (topic, payload) in [
            (good.topics.device("HS-GOOD", DeviceTopic::Status), forged_status(200)),
            (CONTRACT_TOPIC.to_string(), b"{\"chainId\":1}".to_vec()),
            (good.topics.online(), b"{\"online\":false}".to_vec()),
            (good.topics.device("HS-GOOD", DeviceTopic::Vitals), forged_vitals),
        ] {
            evil.publish(topic, QoS::AtLeastOnce, true, payload).await.unwrap();
        }
        assert_eq!(good.next_reply(Duration::from_secs(2)).await, None, "HS-GOOD received a forged status");
        drop(good);
        let announced = retained_contract(opts("HS-GOOD", &good_pw)).await;
        assert_eq!((announced.address, announced.domain_separator), (net.contract, net.domain));

        // A 200 KiB message is dropped by the broker; one between the ingest
        // limit and the broker's gets 413; readings keep being stored.
        let mut good = Bedside::connect(port, "HS-GOOD", &good_key, Some(&good_pw)).await;
        good.publish(DeviceTopic::Vitals, vec![b' '; 200 * 1024]).await;
        // Mosquitto acknowledges, drops it and closes the device's
        // connection; the device reconnects.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        good.publish(DeviceTopic::Vitals, vec![b' '; 10 * 1024]).await;
        let reply = good.next_reply(Duration::from_secs(20)).await.unwrap_or_else(|| panic!("no 413 reply:\n{}\n{}", hub.logs(), std::fs::read_to_string(dir.with_extension("log")).unwrap_or_default()));
        assert_eq!(reply.code, Code::Oversized, "{}", reply.reason);
        good.vitals(net.domain, 20).await;
        let c = hub.wait("20 readings after the oversized ones", |c| c.readings == 20);
        assert_eq!(c.rejections, 1, "the 413 only: forged vitals never reached the hub");
        assert_eq!(seen.load(std::sync::atomic::Ordering::SeqCst), 0, "HS-EVIL read another device's or the hub's messages");
    });
    assert_eq!(hub.logs().matches("connected to the broker").count(), 1, "the hub's session never dropped:\n{}", hub.logs());
    drop(broker);
}
