//! The embedded MQTT broker (rumqttd), the local default: one process per
//! ward hub needs no separate broker install. Production wards may point the
//! oracle at Mosquitto or EMQX instead (`mqtt.embedded = false`).
//!
//! Who may connect and what each client may do (docs/PROTOCOL.md, "Broker
//! security"): a device logs in as its serial with a password its own key
//! signs ([`device_password`]), checked against the signer registered on
//! chain; the hub logs in as [`hub_username`] with a secret; a topic ACL
//! (a small patch of the vendored rumqttd, `vendor/rumqttd/PATCHES.md`)
//! confines each device to its own topics and reserves the hub's to the hub.

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use alloy::primitives::{Address, Signature};
use alloy::signers::{local::PrivateKeySigner, SignerSync};
use anyhow::{Context, Result};
use healthsense_abi::rules::{ids, status::DeviceStatus};

use crate::chain::Chain;
use crate::devices::{Device, Registry};
use crate::protocol::{DeviceTopic, Topics, CONTRACT_TOPIC};

/// Largest MQTT payload the embedded broker forwards. Larger than the
/// oracle's own limit so that oversized readings reach the oracle and get
/// their `413` reply instead of vanishing in the broker. The Mosquitto
/// configuration `healthsense broker mosquitto-config` writes sets the same
/// `message_size_limit`.
pub const BROKER_MAX_PAYLOAD: usize = 64 * 1024;

/// Largest MQTT packet the hub's own client accepts: well above any broker
/// limit the project configures ([`BROKER_MAX_PAYLOAD`] plus topic and
/// header), so that no message a broker delivers can make the hub's client
/// drop its session (and have it redelivered, forever).
pub const HUB_MAX_PACKET: usize = 1024 * 1024;

/// The embedded broker's log of messages for subscribers, MiB, by default
/// (`mqtt.log_mib`): what a hub session that falls behind or reconnects can
/// catch up on (docs/ORACLE.md, "The embedded broker").
pub const DEFAULT_LOG_MIB: usize = 12;

/// Memory segments of that log besides the active one; the oldest goes
/// whole when the log is full.
const SEGMENTS: usize = 8;

/// The smallest `mqtt.log_mib` whose log is sure to hold `messages`
/// messages of at most `bytes` of topic and payload each. rumqttd counts a
/// message as those plus 4 bytes, and drops the oldest segment whole, so
/// only `SEGMENTS - 1` of the `SEGMENTS + 1` shares of the log are sure to
/// be there (the default, 12 MiB, holds about 16,000 vitals).
pub fn log_mib_for(messages: usize, bytes: usize) -> usize {
    let need = messages.saturating_mul(bytes + 4).saturating_mul(SEGMENTS + 1) / (SEGMENTS - 1);
    need.div_ceil(1 << 20).max(1)
}

/// How far a device's login time may be from the broker's clock (both ways).
pub const LOGIN_WINDOW_MS: u64 = 5 * 60_000;

/// Longest a device login waits for the chain (the device's record is
/// cached after that).
pub const LOGIN_CHAIN_WAIT: Duration = Duration::from_secs(5);

/// Turns Nagle's algorithm off on an MQTT client's socket. QoS 1 packets are
/// small, and with Nagle on each one waits for the ACK of the previous
/// segment, which a quiet link sends only with its next packet: measured,
/// 5-7 ms per hop on the alert path (docs/BENCHMARKS.md, "NEWS2 alerts").
/// The embedded broker sets the same on every socket it accepts
/// (`vendor/rumqttd/PATCHES.md`).
pub fn without_nagle(eventloop: &mut rumqttc::EventLoop) {
    let mut net = eventloop.network_options();
    net.set_tcp_nodelay(true);
    eventloop.set_network_options(net);
}

/// The MQTT username of hub `hub`: not a valid serial (`@`), so no device
/// can take it.
pub fn hub_username(hub: &str) -> String {
    format!("hub@{hub}")
}

/// The text a device signs (EIP-191 `personal_sign`) to log in at time
/// `time_ms`.
pub fn login_message(serial: &str, time_ms: u64) -> String {
    format!("HealthSense MQTT login\nserial: {serial}\ntime: {time_ms}")
}

/// The MQTT password of device `serial` at time `time_ms`:
/// `v1:{time_ms}:{signature}`, the device key's EIP-191 signature of
/// [`login_message`]. A new one for every connection: the broker accepts
/// each time only once per device, and only within [`LOGIN_WINDOW_MS`].
pub fn device_password(key: &PrivateKeySigner, serial: &str, time_ms: u64) -> Result<String, alloy::signers::Error> {
    let sig = key.sign_message_sync(login_message(serial, time_ms).as_bytes())?;
    Ok(format!("v1:{time_ms}:{}", alloy::hex::encode_prefixed(sig.as_bytes())))
}

/// Splits a device password into its time and the address that signed it.
fn password_signer(serial: &str, password: &str) -> Option<(u64, Address)> {
    let rest = password.strip_prefix("v1:")?;
    let (time, sig) = rest.split_once(':')?;
    let time: u64 = time.parse().ok()?;
    let raw = alloy::hex::decode(sig).ok()?;
    let sig = Signature::from_raw(&raw).ok()?;
    let signer = sig.recover_address_from_msg(login_message(serial, time).as_bytes()).ok()?;
    Some((time, signer))
}

/// Checks device logins against the chain.
pub struct DeviceLogins {
    chain: Chain,
    /// The hub's device cache (invalidated by its chain watcher); `None`
    /// asks the chain at every login.
    registry: Option<Arc<Registry>>,
    /// The runtime chain calls run on (the broker's threads have their own).
    runtime: tokio::runtime::Handle,
    /// Latest login time accepted per serial: a password works once.
    last: Mutex<HashMap<String, u64>>,
}

impl DeviceLogins {
    /// Logins checked against `chain`, cached in `registry` if given, with
    /// chain calls on `runtime`.
    pub fn new(chain: Chain, registry: Option<Arc<Registry>>, runtime: tokio::runtime::Handle) -> Self {
        Self { chain, registry, runtime, last: Mutex::default() }
    }

    async fn device(&self, serial: &str) -> Result<Arc<Device>, String> {
        let id = ids::device_id(serial);
        if let Some(d) = self.registry.as_ref().and_then(|r| r.get(&id)) {
            return Ok(d);
        }
        let generation = self.registry.as_ref().map(|r| r.generation(&id)).unwrap_or(0);
        let info = tokio::time::timeout(LOGIN_CHAIN_WAIT, self.chain.device(id))
            .await
            .map_err(|_| "the chain did not answer in time".to_string())?
            .map_err(|e| format!("chain: {e}"))?;
        let device = Device::from_info(&info);
        Ok(match &self.registry {
            Some(r) => r.insert(id, device, generation),
            None => Arc::new(device),
        })
    }

    /// Whether `password` logs device `serial` in now.
    async fn check(&self, serial: &str, password: &str) -> Result<(), String> {
        let (time, signer) = password_signer(serial, password).ok_or("the password is not a signed login (v1:time:signature)")?;
        let now = crate::ingest::now_ms();
        if time.abs_diff(now) > LOGIN_WINDOW_MS {
            return Err(format!("login time {time} is more than {} s from the broker's clock", LOGIN_WINDOW_MS / 1000));
        }
        let device = self.device(serial).await?;
        match device.status {
            DeviceStatus::None => return Err("not provisioned on chain".into()),
            DeviceStatus::Revoked => return Err("revoked on chain".into()),
            DeviceStatus::Pending | DeviceStatus::Active => {}
        }
        if signer != device.signer {
            return Err(format!("signed by {signer}, not the device's registered signer"));
        }
        let mut last = self.last.lock().map_err(|_| "poisoned")?;
        let seen = last.entry(serial.to_string()).or_insert(0);
        if time <= *seen {
            return Err("this login was used before (replay): sign a new one".into());
        }
        *seen = time;
        Ok(())
    }
}

/// Authentication and topic ACLs of the embedded broker.
#[derive(Clone)]
pub struct BrokerAuth {
    /// Hub username -> (hub name, password).
    hubs: Arc<HashMap<String, (String, String)>>,
    devices: Arc<DeviceLogins>,
}

impl BrokerAuth {
    /// Hubs `(name, password)` and devices checked by `devices`.
    pub fn new(hubs: Vec<(String, String)>, devices: DeviceLogins) -> Result<Self> {
        let mut map = HashMap::new();
        for (hub, password) in hubs {
            Topics::new(&hub).map_err(anyhow::Error::msg)?;
            map.insert(hub_username(&hub), (hub, password));
        }
        Ok(Self { hubs: Arc::new(map), devices: Arc::new(devices) })
    }

    async fn login(&self, client_id: String, user: String, password: String) -> bool {
        let verdict = if let Some((_, secret)) = self.hubs.get(&user) {
            // Constant time: the hub's secret must not leak by timing.
            let same = secret.len() == password.len()
                && secret.bytes().zip(password.bytes()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0;
            if same { Ok(()) } else { Err("wrong hub password".to_string()) }
        } else if Topics::new(&user).is_err() {
            Err("the username is not a device serial".into())
        } else if client_id != user {
            // One session per device, and none can take the hub's.
            Err("a device's client id must be its serial".into())
        } else {
            let devices = self.devices.clone();
            let serial = user.clone();
            match self.devices.runtime.spawn(async move { devices.check(&serial, &password).await }).await {
                Ok(v) => v,
                Err(e) => Err(format!("login check failed: {e}")),
            }
        };
        match verdict {
            Ok(()) => true,
            Err(reason) => {
                tracing::warn!(client_id = %client_id, user = %user, reason = %reason, "MQTT login refused");
                false
            }
        }
    }

    fn allows(&self, client_id: &str, user: &str, access: rumqttd::Access, topic: &str) -> bool {
        if self.hubs.contains_key(user) {
            return true;
        }
        let ok = match access {
            rumqttd::Access::Publish => self.hubs.values().any(|(hub, _)| {
                Topics::new(hub).ok().and_then(|t| t.parse(topic).map(|(s, k)| s == user && k != DeviceTopic::Status)).unwrap_or(false)
            }),
            rumqttd::Access::Subscribe => {
                topic == CONTRACT_TOPIC
                    || self.hubs.values().any(|(hub, _)| {
                        Topics::new(hub).is_ok_and(|t| t.online() == topic || t.device(user, DeviceTopic::Status) == topic)
                    })
            }
        };
        if !ok {
            tracing::warn!(client_id, user, ?access, topic, "MQTT client refused: topic not allowed; disconnected");
        }
        ok
    }
}

/// Where the embedded broker listens: MQTT 3.1.1 on `v311`, and MQTT 5 on
/// `v5` if set. rumqttd speaks one protocol version per listener, so the
/// two need two ports (docs/PROTOCOL.md, "MQTT versions").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Listeners {
    /// MQTT 3.1.1 (`mqtt.listen`).
    pub v311: SocketAddr,
    /// MQTT 5 (`mqtt.listen_v5`), if any.
    pub v5: Option<SocketAddr>,
}

impl Listeners {
    /// MQTT 3.1.1 only.
    pub fn v311(addr: SocketAddr) -> Self {
        Self { v311: addr, v5: None }
    }
}

/// Binds `addr` to check it is free (a port in use is a clear error now
/// rather than a log line from the broker's thread later) and to resolve
/// port 0; the broker binds it again once this probe is dropped.
fn probe(addr: SocketAddr) -> Result<(TcpListener, SocketAddr)> {
    let probe = TcpListener::bind(addr).with_context(|| format!("the embedded MQTT broker cannot listen on {addr}"))?;
    let addr = probe.local_addr()?;
    Ok((probe, addr))
}

/// Connections the embedded broker admits: 20,000 devices (the largest
/// ward the benchmarks scale to, docs/BENCHMARKS.md) plus the hub and
/// tools. rumqttd reserves its connection tables for this many up front,
/// as address space that stays unused (not resident) until filled.
const MAX_CONNECTIONS: usize = 20_010;

/// The QoS 1 messages a broker sends the hub's session before it waits for
/// acknowledgements. The hub acknowledges a reading only after its commit,
/// so the window must hold what arrives while a group is verified and
/// committed: 1,000 left the verification threads idle 8-13 % of a backlog,
/// and 4,000 took queued ingest from 117-124 % to 132-139 % of raw at 200
/// devices (docs/BENCHMARKS.md, "Issue 22, twentieth session"). The embedded
/// rumqttd's is a constant of its copy (`MAX_INFLIGHT`,
/// vendor/rumqttd/PATCHES.md; a test below holds them equal); Mosquitto's
/// is `max_inflight_messages` in the configuration
/// `healthsense broker mosquitto-config` writes.
pub const HUB_WINDOW: usize = 4_000;

/// The settings of one embedded broker listener: the same for both
/// protocol versions, so the message-size limit and timeouts match.
fn listener_toml(section: &str, name: &str, addr: SocketAddr) -> String {
    format!(
        r#"
[{section}.1]
name = "{name}"
listen = "{addr}"
next_connection_delay_ms = 0
[{section}.1.connections]
connection_timeout_ms = 60000
max_payload_size = {BROKER_MAX_PAYLOAD}
max_inflight_count = 5000
dynamic_filters = true
"#
    )
}

/// Starts rumqttd on `listen` (port 0 picks a free port) in background
/// threads and returns the addresses it listens on. With `auth`, every
/// client of either version must log in and stays within its topics;
/// without, anyone may do anything (a warning says so). Clients connect
/// with retries (the oracle's session reconnects on its own), so no
/// readiness probe is made: rumqttd logs every probe connection as an error.
pub fn start_embedded(listen: Listeners, auth: Option<BrokerAuth>, log_mib: usize) -> Result<Listeners> {
    // Both probes held at once: two port-0 listeners get different ports.
    let (probe_v311, addr) = probe(listen.v311)?;
    let probe_v5 = listen.v5.map(probe).transpose()?;
    let addr_v5 = probe_v5.as_ref().map(|(_, a)| *a);
    drop((probe_v311, probe_v5));
    // rumqttd keeps each subscription filter's messages in memory segments,
    // dropping the oldest beyond the count, whether read or not: the log
    // stays full, so its size is the broker's memory (the hub's RSS target)
    // as well as how far a hub session may lag. 12 MiB holds about 16,000
    // vitals, 8 s at 2,000 beds. The publisher-side window
    // (max_inflight_count) is wide enough that devices are never starved by
    // a hub mid-commit; the hub-side one is a rumqttd constant, HUB_WINDOW
    // in the copy we build (vendor/rumqttd/PATCHES.md).
    let segment_bytes = (log_mib.max(1) << 20) / (SEGMENTS + 1);
    let mut text = format!(
        r#"
id = 0
[router]
id = 0
max_connections = {MAX_CONNECTIONS}
max_outgoing_packet_count = 1000
max_segment_size = {segment_bytes}
max_segment_count = {SEGMENTS}
"#
    );
    text += &listener_toml("v4", "hs-v4", addr);
    if let Some(v5) = addr_v5 {
        text += &listener_toml("v5", "hs-v5", v5);
    }
    let mut config: rumqttd::Config = toml::from_str(&text).context("embedded broker configuration")?;
    match auth {
        Some(auth) => {
            // The same login and ACL on every listener, whatever its version.
            for server in config.v4.iter_mut().chain(config.v5.iter_mut()).flat_map(|v| v.values_mut()) {
                let login = auth.clone();
                server.set_auth_handler(move |client_id, user, password| {
                    let login = login.clone();
                    async move { login.login(client_id, user, password).await }
                });
                let acl = auth.clone();
                server.connections.acl =
                    Some(Arc::new(move |client_id: &str, user: &str, access: rumqttd::Access, topic: &str| acl.allows(client_id, user, access, topic)));
            }
        }
        None => tracing::warn!(
            %addr,
            "MQTT authentication is OFF (mqtt.auth = false): any client on the network may publish as any device or as the hub"
        ),
    }
    let mut broker = rumqttd::Broker::new(config);
    std::thread::Builder::new().name("rumqttd".into()).spawn(move || {
        if let Err(e) = broker.start() {
            tracing::error!(error = %e, "embedded MQTT broker stopped");
        }
    })?;
    match addr_v5 {
        Some(v5) => tracing::info!(%addr, mqtt5 = %v5, "embedded MQTT broker listening (MQTT 3.1.1 and MQTT 5)"),
        None => tracing::info!(%addr, "embedded MQTT broker listening (MQTT 3.1.1)"),
    }
    Ok(Listeners { v311: addr, v5: addr_v5 })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};

    use super::*;

    /// Small QoS 1 packets must not wait for Nagle's algorithm: with it on,
    /// each alert waited 5-7 ms for an ACK (docs/BENCHMARKS.md). The broker
    /// runs in this process, so its end of a connection is one of our own
    /// descriptors.
    #[test]
    fn the_embedded_broker_turns_nagle_off_on_the_sockets_it_accepts() -> Result<()> {
        use std::os::fd::BorrowedFd;
        let addr = start_embedded(Listeners::v311("127.0.0.1:0".parse()?), None, DEFAULT_LOG_MIB)?.v311;
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        let client = loop {
            match std::net::TcpStream::connect(addr) {
                Ok(c) => break c,
                Err(e) if std::time::Instant::now() > deadline => return Err(e.into()),
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        };
        let ours = client.local_addr()?;
        let brokers_end = || -> Result<Option<bool>> {
            for entry in std::fs::read_dir("/proc/self/fd")? {
                let Some(fd) = entry?.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else { continue };
                // SAFETY: a descriptor closed meanwhile only makes the calls fail.
                let fd = unsafe { BorrowedFd::borrow_raw(fd) };
                let socket = socket2::SockRef::from(&fd);
                if socket.peer_addr().ok().and_then(|a| a.as_socket()) == Some(ours) {
                    return Ok(Some(socket.tcp_nodelay()?));
                }
            }
            Ok(None)
        };
        loop {
            match brokers_end()? {
                Some(nodelay) => {
                    assert!(nodelay, "the broker's socket has Nagle's algorithm on");
                    return Ok(());
                }
                None if std::time::Instant::now() > deadline => anyhow::bail!("the broker never accepted the connection"),
                None => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    }

    /// A client of `opts` subscribed to `filter` at QoS 1, once the broker
    /// (whose thread may not be listening yet) has acknowledged it.
    async fn subscribed(opts: MqttOptions, filter: &str) -> Result<(AsyncClient, rumqttc::EventLoop)> {
        let (sub, mut sub_loop) = AsyncClient::new(opts, 16);
        sub.subscribe(filter, QoS::AtLeastOnce).await?;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            match tokio::time::timeout_at(deadline, sub_loop.poll()).await? {
                Ok(Event::Incoming(Packet::SubAck(_))) => return Ok((sub, sub_loop)),
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }

    /// Messages of 1,000 bytes published while a persistent session is
    /// away: several MiB of log.
    const BACKLOG: usize = 3_000;

    /// How many of [`BACKLOG`] messages published while a persistent
    /// subscriber was away reach it when it comes back, on an embedded
    /// broker with a log of `log_mib` (a hub restarting behind a burst).
    async fn backlog_delivered(log_mib: usize) -> Result<usize> {
        let addr = start_embedded(Listeners::v311("127.0.0.1:0".parse()?), None, log_mib)?.v311;
        let session = || {
            let mut opts = MqttOptions::new("backlog-sub", addr.ip().to_string(), addr.port());
            opts.set_clean_session(false);
            opts
        };
        drop(subscribed(session(), "backlog/#").await?);
        // As a hub's restart: the broker has seen the session go before
        // the backlog comes (else some of it is in flight to a dead link).
        tokio::time::sleep(Duration::from_millis(300)).await;
        let (publisher, mut pub_loop) = AsyncClient::new(MqttOptions::new("backlog-pub", addr.ip().to_string(), addr.port()), 64);
        tokio::spawn(async move {
            for i in 0..BACKLOG {
                publisher.publish(format!("backlog/{i}"), QoS::AtLeastOnce, false, vec![7u8; 1000]).await?;
            }
            anyhow::Ok(())
        });
        let mut acked = 0;
        while acked < BACKLOG {
            if let Event::Incoming(Packet::PubAck(_)) = tokio::time::timeout(Duration::from_secs(20), pub_loop.poll()).await?? {
                acked += 1;
            }
        }
        let (_sub, mut sub_loop) = AsyncClient::new(session(), 16);
        let mut received = std::collections::HashSet::new();
        // Until nothing more comes for 3 s.
        while let Ok(event) = tokio::time::timeout(Duration::from_secs(3), sub_loop.poll()).await {
            if let Event::Incoming(Packet::Publish(p)) = event? {
                received.insert(p.topic);
            }
        }
        Ok(received.len())
    }

    /// `log_mib_for` sizes the log for a backlog: all of it reaches the
    /// returning session, and a log half that size loses the oldest part.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_log_sized_by_log_mib_for_keeps_the_whole_backlog() -> Result<()> {
        let mib = log_mib_for(BACKLOG, "backlog/9999".len() + 1000);
        assert!(mib >= 2, "the backlog should need several MiB, not {mib}");
        assert_eq!(backlog_delivered(mib).await?, BACKLOG, "a {mib} MiB log lost part of the backlog");
        let half = backlog_delivered(mib / 2).await?;
        assert!(half < BACKLOG, "a {} MiB log kept all {BACKLOG} messages: the broker kept more than its log holds", mib / 2);
        Ok(())
    }

    /// Messages published while the subscriber acknowledges none: more than
    /// the window, so the test sees where the broker stops.
    const UNACKED: usize = HUB_WINDOW + 200;

    /// The hub acknowledges only after its commit, so its ingest rate hangs
    /// on how many unacknowledged messages the broker sends it. The release
    /// of rumqttd stops at 100; the copy in vendor/rumqttd at [`HUB_WINDOW`],
    /// and no further.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_embedded_broker_sends_a_subscriber_exactly_the_hub_window_unacknowledged() -> Result<()> {
        let addr = start_embedded(Listeners::v311("127.0.0.1:0".parse()?), None, DEFAULT_LOG_MIB)?.v311;
        let mut opts = MqttOptions::new("window-sub", addr.ip().to_string(), addr.port());
        opts.set_manual_acks(true);
        let (_sub, mut sub_loop) = subscribed(opts, "window/#").await?;
        let (publisher, mut pub_loop) = AsyncClient::new(MqttOptions::new("window-pub", addr.ip().to_string(), addr.port()), UNACKED);
        let publishing = tokio::spawn(async move {
            for i in 0..UNACKED {
                publisher.publish(format!("window/{i}"), QoS::AtLeastOnce, false, vec![0u8; 64]).await?;
            }
            anyhow::Ok(publisher)
        });
        tokio::spawn(async move {
            loop {
                if pub_loop.poll().await.is_err() {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        });
        let mut received = 0;
        // Stop at all of them, or when nothing more comes for 3 s.
        while received < UNACKED {
            match tokio::time::timeout(Duration::from_secs(3), sub_loop.poll()).await {
                Ok(Ok(Event::Incoming(Packet::Publish(_)))) => received += 1,
                Ok(Ok(_)) => {}
                Ok(Err(e)) => anyhow::bail!("subscriber lost the broker: {e}"),
                Err(_) => break,
            }
        }
        publishing.await??;
        assert_eq!(
            received, HUB_WINDOW,
            "the broker stopped sending at {received} unacknowledged messages, not at HUB_WINDOW: the \
             workspace is not building rumqttd from vendor/rumqttd, or its MAX_INFLIGHT is not \
             HUB_WINDOW (see its PATCHES.md)"
        );
        Ok(())
    }
}
