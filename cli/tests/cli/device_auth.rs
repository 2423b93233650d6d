//! Broker authentication and topic ACLs, MQTT 3.1.1 and 5 devices, and
//! oversized messages, end to end: `healthsense oracle` processes against a
//! real anvil and a real broker
//! (its embedded rumqttd, or a Mosquitto started from the configuration
//! `healthsense broker mosquitto-config` writes), with bedside devices that
//! log in as themselves and a provisioned device that tries to speak for
//! others.

mod common;

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

use common::free_port;

const ADMIN: usize = 0;
const HUB: usize = 1;
const WARD: &str = "ward-3";


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

/// A mosquitto client (Debian's mosquitto-clients, `scripts/setup`) logged
/// in as device `serial` with a fresh signed password, speaking `version`
/// (`mqttv5`, `mqttv311`, `mqttv31`).
fn mosquitto(tool: &str, version: &str, port: u16, serial: &str, key: &PrivateKeySigner) -> Command {
    // Each login must be later than the last (to the millisecond).
    std::thread::sleep(Duration::from_millis(2));
    let password = device_password(key, serial, now_ms()).unwrap();
    let mut cmd = Command::new(tool);
    cmd.args(["-V", version, "-h", "127.0.0.1", "-p", &port.to_string(), "-i", serial, "-u", serial, "-P", &password, "-q", "1"]);
    cmd
}

/// Runs a client to its end, killed after `wait`: its exit status (`None`
/// if killed) and output.
fn run(cmd: &mut Command, stdin: &[u8], wait: Duration) -> (Option<std::process::ExitStatus>, String) {
    let mut child = cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("mosquitto-clients are not installed: run scripts/setup");
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), stdin).unwrap();
    let deadline = Instant::now() + wait;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break Some(s);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let out = child.wait_with_output().unwrap();
    (status, format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

/// The status replies device `serial` reads with `mosquitto_sub` until one
/// has `code` (the retained lifecycle reply, or a live one).
fn await_status(version: &str, port: u16, serial: &str, key: &PrivateKeySigner, code: Code) -> Vec<StatusReply> {
    let mut sub = mosquitto("mosquitto_sub", version, port, serial, key);
    sub.args(["-t", &format!("hs/v1/{WARD}/dev/{serial}/status"), "-W", "30"]);
    let mut child = sub.stdout(Stdio::piped()).stderr(Stdio::null()).spawn().expect("mosquitto-clients are not installed: run scripts/setup");
    let mut replies = Vec::new();
    for line in std::io::BufRead::lines(std::io::BufReader::new(child.stdout.take().unwrap())) {
        let reply: StatusReply = serde_json::from_str(&line.unwrap()).expect("a status reply");
        let done = reply.code == code;
        replies.push(reply);
        if done {
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(replies.last().map(|r| r.code), Some(code), "{serial} ({version}) read {replies:?}");
    replies
}

/// MQTT 3.1.1 devices on `mqtt.listen`, MQTT 5 devices on `mqtt.listen_v5`,
/// both through the stock mosquitto clients: the same login, the same
/// topics, the same limits. MQTT 3.1 is refused.
#[test]
fn mosquitto_clients_speak_to_the_embedded_broker_in_mqtt_3_1_1_and_5() {
    let net = Net::new();
    let devices = [("mqttv311", "HS-V311"), ("mqttv5", "HS-V5")].map(|(v, serial)| (v, serial, net.provision(serial, None).0));
    let (port, port5) = (free_port(), free_port());
    let hub = Hub::start(&net, &format!("listen = \"127.0.0.1:{port}\"\nlisten_v5 = \"127.0.0.1:{port5}\""));
    let mut stored = 0;
    for (version, serial, key) in &devices {
        let port = if *version == "mqttv5" { port5 } else { port };
        let hello = serde_json::json!({ "signer": key.address() }).to_string();
        let (status, out) = run(mosquitto("mosquitto_pub", version, port, serial, key).args(["-t", &format!("hs/v1/{WARD}/dev/{serial}/hello"), "-m", &hello]), b"", Duration::from_secs(30));
        assert!(status.is_some_and(|s| s.success()), "{serial} ({version}) hello: {out}");
        await_status(version, port, serial, key, Code::Registered);

        // Signed readings, one per line, on one connection.
        let lines: Vec<u8> = (1..=5u64)
            .flat_map(|seq| {
                let mut line = protocol::sign_vitals(key, net.domain, serial, &steady_reading(serial, seq, seq)).unwrap();
                line.push(b'\n');
                line
            })
            .collect();
        let mut publish = mosquitto("mosquitto_pub", version, port, serial, key);
        publish.args(["-t", &format!("hs/v1/{WARD}/dev/{serial}/vitals"), "-l"]);
        if *version == "mqttv5" {
            // Properties the hub's MQTT 3.1.1 session cannot carry: the
            // broker forwards the readings without them.
            publish.args(["-D", "publish", "message-expiry-interval", "600", "-D", "publish", "user-property", "site", "icu"]);
        }
        let (status, out) = run(&mut publish, &lines, Duration::from_secs(30));
        assert!(status.is_some_and(|s| s.success()), "{serial} ({version}) vitals: {out}");
        stored += 5;
        hub.wait(&format!("{serial}'s readings"), |c| c.readings == stored);
    }
    let counts = hub.counts();
    assert_eq!(counts.rejections, 0, "{counts:?}");

    let (_, v5_serial, v5_key) = &devices[1];
    let v5 = |tool| mosquitto(tool, "mqttv5", port5, v5_serial, v5_key);
    // An MQTT 5 device on another device's vitals, on its own status, and
    // reading every topic: refused by the same ACL as MQTT 3.1.1 (the broker
    // closes the connection, which mosquitto_pub reports, or retries until killed).
    let other_vitals = {
        let r = steady_reading("HS-V311", 1_000, 1);
        protocol::sign_vitals(v5_key, net.domain, "HS-V311", &r).unwrap()
    };
    for (topic, payload) in [
        (format!("hs/v1/{WARD}/dev/HS-V311/vitals"), other_vitals),
        (format!("hs/v1/{WARD}/dev/{v5_serial}/status"), forged_status(200)),
    ] {
        let (status, out) = run(v5("mosquitto_pub").args(["-t", &topic, "-s"]), &payload, Duration::from_secs(5));
        assert!(!status.is_some_and(|s| s.success()), "publishing on {topic} over MQTT 5 was accepted: {out}");
    }
    // -E: exit (0) once the broker acknowledges the subscription.
    let (status, out) = run(v5("mosquitto_sub").args(["-t", "#", "-E", "-W", "5"]), b"", Duration::from_secs(10));
    assert!(!status.is_some_and(|s| s.success()), "subscribing to # over MQTT 5 was not refused: {out}");
    let (status, out) = run(v5("mosquitto_sub").args(["-t", &format!("hs/v1/{WARD}/dev/{v5_serial}/status"), "-E", "-W", "5"]), b"", Duration::from_secs(10));
    assert!(status.is_some_and(|s| s.success()), "its own status is readable over MQTT 5: {out}");

    // The message-size limits hold for MQTT 5: 10 KiB passes the broker and
    // the hub rejects it (413); 200 KiB is over the broker's limit and never
    // reaches the hub.
    let (status, out) = run(v5("mosquitto_pub").args(["-t", &format!("hs/v1/{WARD}/dev/{v5_serial}/vitals"), "-s"]), &vec![b' '; 10 * 1024], Duration::from_secs(30));
    assert!(status.is_some_and(|s| s.success()), "10 KiB over MQTT 5: {out}");
    hub.wait("the 413", |c| c.rejections == 1);
    let (status, out) = run(v5("mosquitto_pub").args(["-t", &format!("hs/v1/{WARD}/dev/{v5_serial}/vitals"), "-s"]), &vec![b' '; 200 * 1024], Duration::from_secs(5));
    assert!(!status.is_some_and(|s| s.success()), "200 KiB over MQTT 5 was accepted: {out}");

    // MQTT 3.1 (protocol level 3) has no codec in rumqttd, and each port
    // decodes one version: the client is told its version is not spoken
    // here (CONNACK 0x01 "unacceptable protocol version", or 0x84 for MQTT 5)
    // and disconnected.
    let (_, v311_serial, v311_key) = &devices[0];
    for (version, p) in [("mqttv31", port), ("mqttv31", port5), ("mqttv5", port), ("mqttv311", port5)] {
        let hello = format!("hs/v1/{WARD}/dev/{v311_serial}/hello");
        let (status, out) = run(mosquitto("mosquitto_pub", version, p, v311_serial, v311_key).args(["-t", &hello, "-m", "{}"]), b"", Duration::from_secs(10));
        assert!(!status.is_some_and(|s| s.success()), "{version} was accepted on {p}: {out}");
        assert!(out.to_lowercase().contains("protocol version"), "{version} on {p}: {out}");
    }

    // Nothing refused reached the hub; readings still flow over MQTT 5.
    let lines = protocol::sign_vitals(v5_key, net.domain, v5_serial, &steady_reading(v5_serial, 6, 6)).unwrap();
    let (status, out) = run(v5("mosquitto_pub").args(["-t", &format!("hs/v1/{WARD}/dev/{v5_serial}/vitals"), "-s"]), &lines, Duration::from_secs(30));
    assert!(status.is_some_and(|s| s.success()), "{out}");
    let c = hub.wait("the last reading", |c| c.readings == stored + 1);
    assert_eq!(c.rejections, 1, "only the 10 KiB message is rejected by the hub: {c:?}");

    // MQTT 5 topic aliases (rumqttc's v5 client; the mosquitto clients always
    // send the topic): a PUBLISH naming only an alias is checked against the
    // topic the alias stands for. One connection also reads the live
    // (unretained) status reply to its own message.
    rt().block_on(async {
        use rumqttc::v5::mqttbytes::v5::{Packet as P5, PublishProperties};
        use rumqttc::v5::mqttbytes::QoS as Q5;
        let connect = || {
            std::thread::sleep(Duration::from_millis(2));
            let mut o = rumqttc::v5::MqttOptions::new(*v5_serial, "127.0.0.1", port5);
            o.set_credentials(*v5_serial, device_password(v5_key, v5_serial, now_ms()).unwrap()).set_keep_alive(Duration::from_secs(5));
            rumqttc::v5::AsyncClient::new(o, 100)
        };
        let aliased = |alias| PublishProperties { topic_alias: Some(alias), ..Default::default() };
        let vitals = format!("hs/v1/{WARD}/dev/{v5_serial}/vitals");
        let (client, mut ev) = connect();
        client.subscribe(format!("hs/v1/{WARD}/dev/{v5_serial}/status"), Q5::AtLeastOnce).await.unwrap();
        let reading = |seq, i| protocol::sign_vitals(v5_key, net.domain, v5_serial, &steady_reading(v5_serial, seq, i)).unwrap();
        client.publish_with_properties(vitals.clone(), Q5::AtLeastOnce, false, reading(7, 7), aliased(1)).await.unwrap();
        client.publish_with_properties("", Q5::AtLeastOnce, false, reading(8, 8), aliased(1)).await.unwrap();
        // Another reading under sequence 8 (not a redelivery, which the hub
        // drops silently), by alias: the hub's 409 comes back on this connection.
        client.publish_with_properties("", Q5::AtLeastOnce, false, reading(8, 9), aliased(1)).await.unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        let reply = loop {
            match tokio::time::timeout_at(deadline, ev.poll()).await.unwrap_or_else(|_| panic!("no status reply over MQTT 5:\n{}", hub.logs())) {
                Ok(rumqttc::v5::Event::Incoming(P5::Publish(p))) => match serde_json::from_slice::<StatusReply>(&p.payload) {
                    Ok(r) if r.code != Code::Registered => break r,
                    _ => {}
                },
                Ok(_) => {}
                Err(e) => panic!("the MQTT 5 device lost its connection: {e}"),
            }
        };
        assert_eq!((reply.code, reply.seq), (Code::Replayed, Some(8)), "{}", reply.reason);

        // An alias never set, and an alias set to another device's topic: refused.
        for (topic, alias) in [(String::new(), 9), (format!("hs/v1/{WARD}/dev/HS-V311/vitals"), 2)] {
            let (client, mut ev) = connect();
            client.publish_with_properties(topic, Q5::AtLeastOnce, false, reading(100, 100), aliased(alias)).await.unwrap();
            let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
            let dropped = loop {
                match tokio::time::timeout_at(deadline, ev.poll()).await {
                    Err(_) => break false,
                    Ok(Err(_)) => break true,
                    Ok(Ok(_)) => {}
                }
            };
            assert!(dropped, "alias {alias} was not refused");
        }
    });
    let c = hub.wait("the aliased readings", |c| c.readings == stored + 3);
    assert_eq!(c.rejections, 2, "the 10 KiB message and the replay: {c:?}");
    assert_eq!(hub.logs().matches("connected to the broker").count(), 1, "the hub's session never dropped:\n{}", hub.logs());
    let logs = hub.logs();
    for topic in ["hs/v1/ward-3/dev/HS-V311/vitals", "hs/v1/ward-3/dev/HS-V5/status", "#"] {
        let quoted = format!("\"{topic}\"");
        assert!(logs.lines().any(|l| l.contains("topic not allowed") && l.contains("HS-V5") && l.contains(&quoted)), "no refusal of {topic}:\n{logs}");
    }
}
