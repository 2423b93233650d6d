//! The ward hub: starts the broker (if embedded), the MQTT session, the
//! ingest threads, the NEWS2 alert scorer, the anchorer, the device-event
//! watcher, the metrics endpoint and the REST API, and stops them in an
//! order that loses nothing.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use alloy::primitives::{Address, B256};
use alloy::signers::local::PrivateKeySigner;
use anyhow::{bail, Context, Result};
use healthsense_abi::bindings::HealthSense as H;
use healthsense_abi::rules::{ids, status::DeviceStatus};
use rumqttc::{AsyncClient, Event, LastWill, MqttOptions, Packet, Publish, QoS, Transport};
use tokio::sync::{mpsc, watch, Notify};

use crate::alerts::{Engine, Live, LiveEvent};
use crate::anchor::Anchorer;
use crate::chain::{Chain, ChainError};
use crate::config::Config;
use crate::devices::{DeviceRecord, Registry};
use crate::health::Health;
use crate::ingest::{self, CommitHook, Incoming, Limits, Shared};
use crate::metrics::Metrics;
use crate::protocol::{self, Announcement, Code, DeviceTopic, Hello, Presence, StatusReply, Topics};
use crate::store::{Binding, DeviceCache, Store};

/// Extra hooks for tests and benchmarks.
#[derive(Default, Clone)]
pub struct Options {
    /// Called after each ingest commit.
    pub on_commit: Option<CommitHook>,
}

/// A running hub.
pub struct RunningHub {
    /// The hub's chain address.
    pub hub: Address,
    /// Where the broker is (host, port).
    pub mqtt: (String, u16),
    /// Where `/metrics` is served.
    pub metrics_addr: Option<SocketAddr>,
    /// The metrics.
    pub metrics: Arc<Metrics>,
    /// Where the REST API and dashboard are served (`api.enabled`).
    pub api_addr: Option<SocketAddr>,
    /// The live view: latest reading per device, and a stream of readings,
    /// alerts and device states.
    pub live: Live,
    shutdown: watch::Sender<bool>,
    drained: Arc<Notify>,
    threads: Vec<std::thread::JoinHandle<()>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl RunningHub {
    /// Stops cleanly: no new messages are taken, everything taken is
    /// committed and acknowledged, the presence turns offline.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        let threads = self.threads;
        let _ = tokio::task::spawn_blocking(move || {
            for t in threads {
                let _ = t.join();
            }
        })
        .await;
        self.drained.notify_one();
        for t in self.tasks {
            let _ = tokio::time::timeout(Duration::from_secs(10), t).await;
        }
    }
}

async fn connect_chain(cfg: &Config, key: PrivateKeySigner) -> Result<Chain> {
    let mut backoff = Duration::from_millis(500);
    let (rpc, contract) = (cfg.chain.rpc_url()?, cfg.chain.contract()?);
    loop {
        match Chain::connect(rpc, contract, key.clone(), cfg.chain.chain_id).await {
            Ok(chain) => return Ok(chain),
            Err(e @ ChainError::Transport(_)) => {
                tracing::warn!(rpc, error = %e, "chain not reachable; retrying in {backoff:?}");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
            Err(e) => return Err(e.into()),
        }
    }
}

fn mqtt_options(cfg: &Config, host: &str, port: u16, topics: &Topics, login: Option<(String, String)>) -> Result<MqttOptions> {
    let mut opts = MqttOptions::new(cfg.client_id(), host, port);
    opts.set_keep_alive(Duration::from_secs(cfg.mqtt.keep_alive_s.max(5)))
        .set_clean_session(false)
        .set_manual_acks(true)
        .set_request_channel_capacity(100_000)
        .set_inflight(1_000)
        .set_max_packet_size(crate::broker::HUB_MAX_PACKET, crate::broker::HUB_MAX_PACKET);
    let offline = serde_json::to_vec(&Presence { online: false, hub: None, ward: None })?;
    opts.set_last_will(LastWill::new(topics.online(), offline, QoS::AtLeastOnce, true));
    if let Some((user, password)) = login {
        opts.set_credentials(user, password);
    }
    if cfg.mqtt.tls {
        install_tls_provider();
        // A hospital broker's certificate comes from the hospital's CA; name
        // it explicitly rather than trusting whatever the host trusts.
        let ca = cfg.mqtt.ca_file.as_ref().context("mqtt.tls needs mqtt.ca_file (the broker's CA certificate, PEM)")?;
        let transport =
            Transport::tls(std::fs::read(ca).with_context(|| format!("reading MQTT CA {}", ca.display()))?, None, None);
        opts.set_transport(transport);
    }
    Ok(opts)
}

/// Selects rustls's crypto provider for MQTT over TLS. Two are compiled in
/// (alloy's HTTP stack brings aws-lc-rs, the IPFS node's libp2p ring), so
/// rustls cannot pick one by itself; any TLS client in the process (a test's
/// device, say) calls this first. Later calls find it installed.
pub fn install_tls_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Starts a hub with configuration `cfg` and hub key `key`.
pub async fn start(cfg: Config, key: PrivateKeySigner, options: Options) -> Result<RunningHub> {
    let topics = Topics::new(&cfg.hub).map_err(anyhow::Error::msg)?;
    let chain = connect_chain(&cfg, key).await?;
    let hub = chain.hub();
    let on_chain_domain = chain.view(H::DOMAIN_SEPARATORCall {}).await?;
    if on_chain_domain != chain.domain_separator() {
        bail!("the contract at {} does not use the HealthSense v1 EIP-712 domain; wrong address?", chain.contract());
    }
    if !chain.is_hub().await? {
        tracing::warn!(%hub, "this hub lacks HUB_ROLE: readings are stored but not anchored until an admin runs `healthsense roles grant hub {hub}`");
    }
    let binding = Binding { chain_id: chain.chain_id(), contract: chain.contract(), hub };
    let open = || Store::open(&cfg.store, binding).with_context(|| format!("opening hub store {}", cfg.store.display()));
    let (ingest_store, anchor_store, control_store, alert_store, alert_log) = (open()?, open()?, open()?, open()?, open()?);
    ingest_store.leave_checkpoints()?;
    let checkpoint_store = open()?;

    let registry = Arc::new(Registry::default());
    if !cfg.mqtt.auth {
        tracing::warn!("mqtt.auth = false: the hub does not ask its broker for authentication or topic ACLs; any client may speak for any device or the hub");
    }
    let (host, port, login) = if cfg.mqtt.embedded {
        // The hub's own login to its in-process broker: a secret of this run.
        let secret = alloy::hex::encode(rand::random::<[u8; 32]>());
        let auth = match cfg.mqtt.auth {
            true => {
                let logins = crate::broker::DeviceLogins::new(chain.clone(), Some(registry.clone()), tokio::runtime::Handle::current());
                Some(crate::broker::BrokerAuth::new(vec![(cfg.hub.clone(), secret.clone())], logins)?)
            }
            false => None,
        };
        let addr = crate::broker::start_embedded(crate::broker::Listeners { v311: cfg.mqtt.listen, v5: cfg.mqtt.listen_v5 }, auth, cfg.mqtt.log_mib)?.v311;
        (addr.ip().to_string(), addr.port(), Some((crate::broker::hub_username(&cfg.hub), secret)))
    } else {
        (cfg.mqtt.host.clone(), cfg.mqtt.port, cfg.mqtt_credentials()?)
    };
    let (client, mut eventloop) = AsyncClient::new(mqtt_options(&cfg, &host, port, &topics, login)?, 100_000);
    crate::broker::without_nagle(&mut eventloop);

    let metrics = Arc::new(Metrics::default());
    let health = Arc::new(Health::new(cfg.health.clone(), cfg.anchor.interval().as_millis() as u64, metrics.clone(), open()?, ingest::now_ms())?);
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let metrics_addr = match cfg.metrics.enabled {
        true => Some(crate::metrics::serve(cfg.metrics.listen, metrics.clone(), health.clone(), shutdown_rx.clone()).await?),
        false => None,
    };
    let live = Live::default();
    // The saved device cache is read and brought up to date while the
    // store's last readings are read: at 20,000 devices each took 20-30 ms
    // of a restart, one core each (docs/BENCHMARKS.md, "Issue 22,
    // thirteenth session").
    let restoring = tokio::spawn(restore_saved(chain.clone(), registry.clone(), open()?));
    // Each device's last stored sequence number: the writer's replay rule,
    // the alert scorer's "new reading" rule and the devices read at start.
    let last = ingest_store.last_readings()?;
    tracing::debug!(devices = last.len(), "last readings read");
    let last_seqs: HashMap<B256, u64> = last.iter().map(|(id, l)| (*id, l.seq)).collect();
    let known: Vec<B256> = last_seqs.keys().copied().collect();
    let (scorer, alert_thread) = Engine {
        store: alert_store,
        client: client.clone(),
        topics: topics.clone(),
        metrics: metrics.clone(),
        live: live.clone(),
        runtime: tokio::runtime::Handle::current(),
        policy: cfg.alerts,
    }
    .start(last_seqs.clone(), last.into_values().map(|l| l.row).collect(), alert_log)?;
    tracing::debug!("alert engine started");
    let (api_addr, api_uri) = match cfg.api.enabled {
        true => {
            let store = open()?;
            store.init_archive()?; // the API reads the job table even when archiving is off
            let serving = crate::api::serve(&cfg.api, &cfg.hub, &cfg.ward, &cfg.archive.currency, chain.clone(), store, live.clone(), shutdown_rx.clone());
            let serving = serving.await?;
            (Some(serving.addr), Some(serving.uri))
        }
        false => (None, None),
    };
    let committed = Arc::new(AtomicU64::new(0));
    let wake = Arc::new(Notify::new());
    let acks = Arc::new(crate::acks::AckGate::new(client.clone()));
    let shared = Shared {
        acks: acks.clone(),
        topics: topics.clone(),
        chain: chain.clone(),
        registry: registry.clone(),
        metrics: metrics.clone(),
        client: client.clone(),
        runtime: tokio::runtime::Handle::current(),
        committed: committed.clone(),
        wake_anchor: wake.clone(),
        on_commit: options.on_commit,
        alerts: Some(scorer),
        health: health.clone(),
    };
    let limits = Limits {
        max_payload: cfg.ingest.max_payload,
        max_batch: cfg.ingest.max_batch.max(1),
        max_future_ms: cfg.ingest.max_future_ms,
        max_age_ms: cfg.ingest.max_age_ms,
    };
    let (intake, writer) = ingest::start(shared, limits, ingest_store, last_seqs)?;
    let mut threads = vec![writer];
    // The alert logger: joined after the ingest threads, whose end drops
    // the scorer and so ends it once every alert is stored.
    threads.push(alert_thread);

    let mut tasks = Vec::new();
    let anchorer = Anchorer {
        chain: chain.clone(),
        store: anchor_store,
        metrics: metrics.clone(),
        mode: cfg.anchor.mode()?,
        per_batch: cfg.anchor.per_batch()?,
        interval: cfg.anchor.interval(),
        max_backoff: Duration::from_millis(cfg.anchor.max_backoff_ms.max(100)),
        committed,
        wake: wake.clone(),
    };
    let rx = shutdown_rx.clone();
    tasks.push(tokio::spawn(async move {
        if let Err(e) = anchorer.run(rx).await {
            tracing::error!(error = %e, "anchorer stopped");
        }
    }));
    let archive_wake = match cfg.archive.enabled {
        true => {
            let wake_archive = Arc::new(Notify::new());
            let master = cfg.archive.master_key()?;
            if master.is_none() {
                tracing::warn!("no archive master key (archive.key_file or {}): discharges are billed but not archived until one is set", crate::config::ARCHIVE_KEY_VAR);
            }
            let ipfs = healthsense_ipfs::Ipfs::new(&cfg.archive.ipfs_api)
                .with_context(|| format!("archive.ipfs_api {:?}", cfg.archive.ipfs_api))?;
            let archiver = crate::archive::job::Archiver {
                chain: chain.clone(),
                store: open()?,
                ipfs,
                master,
                dir: cfg.archive.dir_for(&cfg.store),
                settle: Duration::from_millis(cfg.archive.settle_ms),
                max_backoff: Duration::from_millis(cfg.archive.max_backoff_ms.max(100)),
                currency: cfg.archive.currency.clone(),
                hospital: cfg.archive.hospital.clone(),
                chart_every: Duration::from_secs(cfg.archive.chart_interval_s),
                ward: ids::ward_id(&cfg.ward),
                wake_anchor: wake.clone(),
                wake: wake_archive.clone(),
                metrics: metrics.clone(),
            };
            let rx = shutdown_rx.clone();
            tasks.push(tokio::spawn(async move {
                if let Err(e) = archiver.run(rx).await {
                    tracing::error!(error = format!("{e:#}"), "archiver stopped");
                }
            }));
            Some(wake_archive)
        }
        false => None,
    };
    tasks.push(tokio::spawn(checkpoints(checkpoint_store, shutdown_rx.clone())));
    let poll_ms = cfg.chain.poll_ms.unwrap_or(1_000);
    tracing::debug!("waiting for the device records");
    let (cache_store, restored) = restoring.await.context("restoring the saved device cache")?;
    let watched_from = warm_devices(&chain, &registry, restored, known).await;
    metrics.devices.set(registry.len() as i64);
    let watcher = DeviceWatcher { chain: chain.clone(), registry: registry.clone(), store: std::sync::Mutex::new(cache_store), poll_ms, health: health.clone() };
    tasks.push(tokio::spawn(watcher.run(watched_from, shutdown_rx.clone())));

    let (control_tx, control_rx) = mpsc::unbounded_channel::<(u64, Publish)>();
    let control = Control {
        acks: acks.clone(),
        chain: chain.clone(),
        client: client.clone(),
        topics: topics.clone(),
        registry,
        store: std::sync::Mutex::new(control_store),
        ward: ids::ward_id(&cfg.ward),
        max_payload: cfg.ingest.max_payload,
        archive: archive_wake,
        metrics: metrics.clone(),
        live: live.clone(),
    };
    tasks.push(tokio::spawn(control.run(control_rx)));

    let announcement = Announcement {
        chain_id: chain.chain_id(),
        address: chain.contract(),
        abi_cid: None,
        abi_url: api_uri.map(|uri| format!("{}/api/v1/abi", uri.trim_end_matches('/'))),
        abi: cfg.chain.abi.clone(),
        domain_separator: chain.domain_separator(),
    };
    let (announced, latest_announcement) = crate::announce::channel(&announcement)?;
    // The archive's IPFS node keeps the ABI too; without archiving there is none to ask.
    if cfg.archive.enabled {
        match healthsense_ipfs::Ipfs::new(&cfg.archive.ipfs_api) {
            Ok(ipfs) => tasks.push(tokio::spawn(crate::announce::pin_abi(
                ipfs,
                announcement,
                announced,
                client.clone(),
                shutdown_rx.clone(),
            ))),
            Err(e) => tracing::warn!(error = %e, "archive.ipfs_api: the ABI is not pinned"),
        }
    }
    let presence = Presence { online: true, hub: Some(hub), ward: Some(cfg.ward.clone()) };
    let drained = Arc::new(Notify::new());
    let (subscribed, mut is_subscribed) = watch::channel(false);
    let session = Session {
        subscribed,
        failures: 0,
        client,
        topics,
        announcement: latest_announcement,
        presence: serde_json::to_vec(&presence)?,
        vitals: Some(intake),
        control: control_tx,
        acks,
        health,
    };
    let (mut shutdown, done) = (shutdown_rx, drained.clone());
    tasks.push(tokio::spawn(async move {
        let mut session = session;
        loop {
            tokio::select! {
                ev = eventloop.poll() => session.on_event(ev).await,
                _ = shutdown.changed(), if session.vitals.is_some() => {
                    // Stop taking vitals; keep polling so the writer's
                    // acknowledgements still go out while it drains.
                    session.vitals = None;
                    tracing::info!("draining");
                }
                _ = done.notified() => break,
            }
        }
        let offline = serde_json::to_vec(&Presence { online: false, hub: None, ward: None }).unwrap_or_default();
        let _ = session.client.publish(session.topics.online(), QoS::AtLeastOnce, true, offline).await;
        let _ = session.client.disconnect().await;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
        while tokio::time::Instant::now() < deadline {
            match tokio::time::timeout_at(deadline, eventloop.poll()).await {
                Ok(Ok(_)) => {}
                _ => break,
            }
        }
    }));
    // Devices that publish before the hub's first subscription would find no
    // session to queue for: say "started" once the subscription stands.
    if tokio::time::timeout(Duration::from_secs(10), is_subscribed.wait_for(|s| *s)).await.is_err() {
        tracing::warn!(mqtt = %format!("{host}:{port}"), "not subscribed to the broker yet; continuing to retry");
    }
    tracing::info!(%hub, mqtt = %format!("{host}:{port}"), ward = %cfg.ward, "hub started");
    Ok(RunningHub {
        hub,
        mqtt: (host, port),
        metrics_addr,
        metrics,
        api_addr,
        live,
        shutdown: shutdown_tx,
        drained,
        threads,
        tasks,
    })
}

/// Runs a hub until Ctrl-C or SIGTERM: the service, so it also sets the
/// process's CPU priority (`[priority]`, [`crate::priority`]).
pub async fn run(cfg: Config) -> Result<()> {
    let key = cfg.hub_key()?;
    // Before `start`, so that the threads it starts take the class.
    let governor = crate::priority::raise(&cfg.priority);
    let hub = start(cfg, key, Options::default()).await?;
    if let Some(governor) = governor {
        tokio::spawn(crate::priority::govern(governor, hub.metrics.clone()));
    }
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("stopping");
    hub.shutdown().await;
    Ok(())
}

struct Session {
    client: AsyncClient,
    topics: Topics,
    /// The latest contract announcement (it gains `abiCid` once the ABI is pinned).
    announcement: watch::Receiver<Vec<u8>>,
    presence: Vec<u8>,
    vitals: Option<ingest::Intake>,
    control: mpsc::UnboundedSender<(u64, Publish)>,
    acks: Arc<crate::acks::AckGate>,
    subscribed: watch::Sender<bool>,
    failures: u32,
    health: Arc<Health>,
}

impl Session {
    async fn on_event(&mut self, ev: Result<Event, rumqttc::ConnectionError>) {
        match ev {
            Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                self.failures = 0;
                self.health.mqtt_connected(ingest::now_ms());
                tracing::info!(session_present = ack.session_present, "connected to the broker");
                let filters = [DeviceTopic::Vitals, DeviceTopic::Hello, DeviceTopic::State, DeviceTopic::Discharge]
                    .map(|k| rumqttc::SubscribeFilter::new(self.topics.device_filter(k), QoS::AtLeastOnce));
                let _ = self.client.subscribe_many(filters).await;
                let _ = self.client.publish(self.topics.online(), QoS::AtLeastOnce, true, self.presence.clone()).await;
                let announcement = self.announcement.borrow().clone();
                let _ = self.client.publish(protocol::CONTRACT_TOPIC, QoS::AtLeastOnce, true, announcement).await;
            }
            Ok(Event::Incoming(Packet::Publish(p))) => self.route(p).await,
            Ok(Event::Incoming(Packet::SubAck(_))) => {
                let _ = self.subscribed.send(true);
            }
            Ok(_) => {}
            Err(e) => {
                // Drops are counted over a window there, not reset by a reconnect.
                self.health.mqtt_error(ingest::now_ms(), &e.to_string());
                // An embedded broker may still be binding at the first try.
                self.failures += 1;
                if self.failures > 2 {
                    tracing::warn!(error = %e, "no broker connection; reconnecting");
                }
                tokio::time::sleep(Duration::from_millis(if self.failures > 2 { 1_000 } else { 100 })).await;
            }
        }
    }

    async fn route(&mut self, p: Publish) {
        match self.topics.parse(&p.topic) {
            Some((serial, DeviceTopic::Vitals)) => {
                let serial = serial.to_string();
                // While draining the message is left unacknowledged: the
                // broker keeps it for the next session.
                if let Some(intake) = &self.vitals {
                    self.health.received(1, ingest::now_ms());
                    let ticket = self.acks.ticket();
                    intake.push(Incoming { publish: p, ticket, serial, received: std::time::Instant::now() });
                }
            }
            Some((_, DeviceTopic::Status)) | None => {
                let ticket = self.acks.ticket();
                self.acks.done(ticket, p).await;
            }
            Some(_) => {
                let ticket = self.acks.ticket();
                let _ = self.control.send((ticket, p));
            }
        }
    }
}

/// Hello, state and discharge messages: few, and some need a transaction.
struct Control {
    chain: Chain,
    client: AsyncClient,
    topics: Topics,
    registry: Arc<Registry>,
    store: std::sync::Mutex<Store>,
    ward: B256,
    max_payload: usize,
    /// Wakes the archiver; `None` when archiving is disabled.
    archive: Option<Arc<Notify>>,
    metrics: Arc<Metrics>,
    acks: Arc<crate::acks::AckGate>,
    live: Live,
}

impl Control {
    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<(u64, Publish)>) {
        while let Some((ticket, p)) = rx.recv().await {
            if let Some((serial, kind)) = self.topics.parse(&p.topic) {
                let serial = serial.to_string();
                match kind {
                    DeviceTopic::Hello => {
                        let mut reply = self.hello(&serial, &p.payload).await;
                        reply.reason = format!("hello: {}", reply.reason);
                        tracing::info!(serial, code = reply.code as u16, reason = %reply.reason, "hello");
                        self.reply(&serial, &reply, true).await;
                    }
                    DeviceTopic::State => match protocol::parse_state(&p.payload, self.max_payload) {
                        Ok(state) => {
                            let at = crate::ingest::now_ms();
                            let stored = match self.store.lock() {
                                Ok(store) => store.set_device_state(&serial, state.battery, state.asleep, at),
                                Err(_) => Ok(()),
                            };
                            if let Err(e) = stored {
                                tracing::error!(serial, error = %e, "device state not stored");
                            }
                            self.live.send(LiveEvent::State { serial: serial.clone(), battery: state.battery, asleep: state.asleep });
                        }
                        Err(r) => self.reply(&serial, &StatusReply::new(r.code, None, r.reason), false).await,
                    },
                    DeviceTopic::Discharge => {
                        let reply = self.discharge(&serial, &p.payload).await;
                        tracing::info!(serial, code = reply.code as u16, reason = %reply.reason, "discharge signal");
                        self.reply(&serial, &reply, false).await;
                    }
                    _ => {}
                }
            }
            self.acks.done(ticket, p).await;
        }
    }

    async fn reply(&self, serial: &str, reply: &StatusReply, retain: bool) {
        let body = serde_json::to_vec(reply).unwrap_or_default();
        let topic = self.topics.device(serial, DeviceTopic::Status);
        if let Err(e) = self.client.publish(topic, QoS::AtLeastOnce, retain, body).await {
            tracing::warn!(error = %e, "status reply not sent");
        }
    }

    /// A device's signed discharge signal: checked against the chain, then
    /// handed to the archiver, which sends the `discharge` transaction.
    async fn discharge(&self, serial: &str, payload: &[u8]) -> StatusReply {
        let Some(wake) = &self.archive else {
            return StatusReply::new(Code::Unavailable, None, "this hub runs without the archiver (archive.enabled = false)");
        };
        let (signal, signer) = match protocol::parse_discharge(serial, payload, self.max_payload, self.chain.domain_separator()) {
            Ok(x) => x,
            Err(r) => return StatusReply::new(r.code, None, format!("discharge: {}", r.reason)),
        };
        let device = match self.chain.device(signal.deviceId).await {
            Ok(d) => d,
            Err(e) => return StatusReply::new(Code::Unavailable, None, format!("try again later: {e}")),
        };
        if DeviceStatus::from_code(device.status) == Some(DeviceStatus::None) || device.signer.is_zero() {
            return StatusReply::new(Code::UnknownDevice, None, "discharge: device not provisioned");
        }
        if device.ward != self.ward {
            return StatusReply::new(Code::WrongWard, None, "discharge: device belongs to another ward's hub");
        }
        if signer != device.signer {
            return StatusReply::new(Code::WrongSigner, None, "discharge: not signed by the device's registered signer");
        }
        if device.patientId.is_zero() {
            return StatusReply::new(Code::NoPatient, None, "discharge: no patient is admitted on this device");
        }
        let patient = match self.chain.view(H::getPatientCall { patientId: device.patientId }).await {
            Ok(p) => p,
            Err(e) => return StatusReply::new(Code::Unavailable, None, format!("try again later: {e}")),
        };
        if signal.timestamp / 1_000 < patient.admittedAt {
            return StatusReply::new(Code::NoPatient, None, "discharge: signal is older than the current admission");
        }
        let created = match self.store.lock() {
            Ok(store) => store.request_archive(device.patientId, signal.deviceId, crate::archive::State::Discharging, signal.code, crate::ingest::now_ms()),
            Err(_) => return StatusReply::new(Code::Unavailable, None, "hub store unavailable"),
        };
        match created {
            Ok(created) => {
                wake.notify_one();
                if created {
                    self.metrics.discharge_signals.inc();
                }
                let what = if created { "discharging" } else { "already discharging" };
                StatusReply::new(Code::Discharging, None, format!("{what} patient {}; the archive follows", device.patientId))
            }
            Err(e) => StatusReply::new(Code::Unavailable, None, format!("not recorded, send again: {e}")),
        }
    }

    async fn hello(&mut self, serial: &str, payload: &[u8]) -> StatusReply {
        let hello: Hello = match serde_json::from_slice(payload) {
            Ok(h) if payload.len() <= self.max_payload => h,
            Ok(_) => return StatusReply::new(Code::Oversized, None, "hello too large"),
            Err(e) => return StatusReply::new(Code::Malformed, None, format!("hello is not {{\"signer\": address}}: {e}")),
        };
        self.reply(serial, &StatusReply::new(Code::Initialised, None, "hello: checking the chain"), true).await;
        let id = ids::device_id(serial);
        let info = match self.chain.device(id).await {
            Ok(info) => info,
            Err(e) => return StatusReply::new(Code::Unavailable, None, format!("try again later: {e}")),
        };
        let status = DeviceStatus::from_code(info.status).unwrap_or(DeviceStatus::None);
        let mut reply = match status {
            DeviceStatus::None => StatusReply::new(Code::UnknownDevice, None, "not provisioned: ask an admin to run `healthsense device provision`"),
            DeviceStatus::Revoked => StatusReply::new(Code::Revoked, None, "this device is revoked"),
            _ if info.ward != self.ward => StatusReply::new(Code::WrongWard, None, "provisioned for another ward's hub"),
            _ if info.signer != hello.signer => StatusReply::new(
                Code::WrongSigner,
                None,
                format!("hello names signer {} but {} is provisioned", hello.signer, info.signer),
            ),
            DeviceStatus::Pending => match self.chain.activate(id).await {
                Ok(mined) => StatusReply::new(Code::Registered, None, format!("activated in block {}", mined.block)),
                Err(ChainError::Reverted { error: H::HealthSenseErrors::InvalidDeviceStatus(_), .. }) => {
                    StatusReply::new(Code::Registered, None, "already active")
                }
                Err(e) => StatusReply::new(Code::Unavailable, None, format!("activation failed, try again later: {e}")),
            },
            DeviceStatus::Active => StatusReply::new(Code::Registered, None, "active"),
        };
        self.registry.invalidate(&id);
        if reply.code == Code::Registered {
            // Where the device stands: the highest sequence number stored.
            reply.seq = self.store.lock().ok().and_then(|s| s.last_seq(id).ok().flatten());
        }
        reply
    }
}

/// How often each device's last reading is saved for the next start
/// (`Store::save_last_readings`): after a crash, that start reads the
/// readings stored since, at most this long of them.
const LAST_SAVE_EVERY: u32 = 30;

/// Checkpoints the store's write-ahead log every second, on its own
/// connection, so the ingest writer never does (`Store::leave_checkpoints`)
/// and the log stays bounded even while nothing else writes (chain down, no
/// batches cut). Every [`LAST_SAVE_EVERY`] seconds it also saves each
/// device's last reading.
async fn checkpoints(store: Store, mut shutdown: watch::Receiver<bool>) {
    let mut ticks = 0u32;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = shutdown.changed() => if *shutdown.borrow() { return },
        }
        if let Err(e) = tokio::task::block_in_place(|| store.checkpoint()) {
            tracing::warn!(error = %e, "store checkpoint failed; retrying in a second");
        }
        ticks += 1;
        if ticks % LAST_SAVE_EVERY == 0 {
            if let Err(e) = tokio::task::block_in_place(|| store.save_last_readings()) {
                tracing::warn!(error = %e, "each device's last reading not saved; retrying at the next save");
            }
        }
    }
}

/// Device records read at once when the hub starts.
const WARM_LOOKUPS_IN_FLIGHT: usize = 64;

/// The longest the hub spends reading device records at start; a chain that
/// slows down meanwhile does not hold the hub back (the rest are looked up
/// as their readings come).
const WARM_LIMIT: Duration = Duration::from_secs(30);

/// The oldest saved device cache a starting hub brings up to date from the
/// device events since; an older one is dropped and the records read again.
/// About seven hours of Arbitrum One's blocks, 100,000 on a devnet.
const CACHE_MAX_AGE_BLOCKS: u64 = 100_000;

/// Blocks per `eth_getLogs` request when replaying device events: public
/// RPC endpoints refuse wide ranges (10,000 is a common limit).
const LOG_SPAN_BLOCKS: u64 = 10_000;

/// How often the device watcher saves the cache's block when no record
/// changed (changes are saved at the next poll).
const CACHE_SAVE_EVERY: Duration = Duration::from_secs(60);

/// What [`restore_saved`] brought back of the saved device cache.
struct Restored {
    /// The chain's block as it began (`None`: the chain did not answer).
    block: Option<u64>,
    /// Records restored.
    restored: usize,
    /// When it began.
    started: std::time::Instant,
}

/// Reads the device cache the hub saved in `store` and puts the records
/// still current into `registry`: every record but those of devices with an
/// event since the cache's block, found with `eth_getLogs` (if that block
/// is still on the chain). Returns `store` for the device watcher.
async fn restore_saved(chain: Chain, registry: Arc<Registry>, store: Store) -> (Store, Restored) {
    let started = std::time::Instant::now();
    let saved = tokio::task::block_in_place(|| store.device_cache()).unwrap_or_else(|e| {
        tracing::warn!(error = %e, "the saved device cache is unreadable; reading device records from the chain");
        None
    });
    // A saved copy that is not restored must not survive the watcher's
    // first save under a newer block: marking its devices changed makes
    // that save write each one as the cache has it then (or drop it).
    let saved_ids: Vec<B256> = saved.iter().flat_map(|c| c.records.iter().map(|r| r.id)).collect();
    tracing::debug!(records = saved_ids.len(), us = started.elapsed().as_micros() as u64, "saved device cache read");
    let Ok(block) = chain.block_number().await else {
        registry.put_back(saved_ids);
        return (store, Restored { block: None, restored: 0, started });
    };
    let restored = match saved {
        Some(saved) => match restore_devices(&chain, &registry, saved, block).await {
            Ok(n) => n,
            Err(why) => {
                tracing::warn!(%why, "saved device cache not used; reading device records from the chain");
                registry.put_back(saved_ids);
                0
            }
        },
        None => 0,
    };
    (store, Restored { block: Some(block), restored, started })
}

/// Fills the device cache before the hub takes messages, and returns the
/// block its records are at least as new as (`None` if the chain did not
/// answer; devices are then looked up as their readings come).
///
/// First what [`restore_saved`] restored from the cache the hub saved in
/// its store. Then the records of `known` (the devices the store has
/// readings of) that are still missing, from the chain, many at once,
/// within [`WARM_LIMIT`]. A restarted hub with a backlog in its broker
/// otherwise looked each device up as its first reading came, its
/// verification threads waiting on each group's lookups; reading 20,000
/// records took about 3 s on anvil (docs/BENCHMARKS.md, "Scaling").
async fn warm_devices(chain: &Chain, registry: &Registry, restored: Restored, known: Vec<B256>) -> Option<u64> {
    use futures_util::StreamExt;
    let block = restored.block?;
    let missing = registry.missing(known);
    tracing::debug!(missing = missing.len(), us = restored.started.elapsed().as_micros() as u64, "records still missing found");
    let mut records = futures_util::stream::iter(missing)
        .map(|id| async move { (id, registry.generation(&id), chain.device(id).await) })
        .buffer_unordered(WARM_LOOKUPS_IN_FLIGHT);
    let (mut read, mut failed) = (0usize, 0usize);
    let deadline = tokio::time::Instant::now() + WARM_LIMIT;
    while let Ok(Some((id, generation, record))) = tokio::time::timeout_at(deadline, records.next()).await {
        match record {
            Ok(info) => {
                registry.insert(id, crate::devices::Device::from_info(&info), generation);
                read += 1;
            }
            Err(_) => failed += 1,
        }
    }
    let ms = restored.started.elapsed().as_millis() as u64;
    tracing::info!(restored = restored.restored, read, failed, ms, "device records ready");
    Some(block)
}

/// Puts the records of `saved` that are still current at block `now` into
/// the cache, and returns how many; `Err` says why the saved cache cannot be
/// trusted (the chain was reset or reorganised past it, or it is too old).
async fn restore_devices(chain: &Chain, registry: &Registry, saved: DeviceCache, now: u64) -> Result<usize, String> {
    if saved.block > now {
        return Err(format!("it is of block {}, the chain is at {now} (was the chain reset?)", saved.block));
    }
    if now - saved.block > CACHE_MAX_AGE_BLOCKS {
        return Err(format!("it is {} blocks old (at most {CACHE_MAX_AGE_BLOCKS} are replayed)", now - saved.block));
    }
    match chain.block_hash(saved.block).await {
        Ok(Some(hash)) if hash == saved.hash => {}
        Ok(_) => return Err(format!("block {} is no longer the one it was saved at (the chain was reset or reorganised)", saved.block)),
        Err(e) => return Err(format!("block {} could not be read: {e}", saved.block)),
    }
    let started = std::time::Instant::now();
    let mut changed = std::collections::HashSet::new();
    let mut from = saved.block + 1;
    while from <= now {
        let to = now.min(from + LOG_SPAN_BLOCKS - 1);
        let ids = chain.device_changes(from, to).await.map_err(|e| format!("device events since block {} not read: {e}", saved.block))?;
        changed.extend(ids);
        from = to + 1;
    }
    tracing::debug!(blocks = now - saved.block, us = started.elapsed().as_micros() as u64, "device events since the saved cache read");
    let (stale, current): (Vec<DeviceRecord>, Vec<DeviceRecord>) =
        saved.records.into_iter().partition(|r| changed.contains(&r.id));
    // Dropped from the store's copy at its next save.
    stale.iter().for_each(|r| registry.invalidate(&r.id));
    registry.restore_all(&current);
    Ok(current.len())
}

/// Forgets cached device records when their on-chain state changes, and
/// keeps the store's copy of the cache up to date for the next start (its
/// changes at the next poll, its block every [`CACHE_SAVE_EVERY`] and at
/// shutdown). Its block-number polls also tell [`Health`] whether the chain
/// answers.
struct DeviceWatcher {
    chain: Chain,
    registry: Arc<Registry>,
    store: std::sync::Mutex<Store>,
    poll_ms: u64,
    health: Arc<Health>,
}

impl DeviceWatcher {
    /// Watches from after block `from` when given (the block the cache was
    /// warmed at), else from after the chain's current block.
    async fn run(self, from: Option<u64>, mut shutdown: watch::Receiver<bool>) {
        // The last block whose device events the cache reflects.
        let mut seen = from;
        let mut from = match from {
            Some(b) => b + 1,
            None => loop {
                match self.block_number().await {
                    Ok(b) => {
                        // Records read before now may predate events up to
                        // `b`, which this watcher will never see.
                        self.registry.invalidate_all();
                        break b + 1;
                    }
                    Err(_) => tokio::time::sleep(Duration::from_secs(1)).await,
                }
            },
        };
        let mut saved_at: Option<tokio::time::Instant> = None;
        let every = Duration::from_millis(self.poll_ms.max(50));
        loop {
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = shutdown.changed() => if *shutdown.borrow() {
                    if let Some(block) = seen {
                        self.save(block, true).await;
                    }
                    return;
                },
            }
            let Ok(to) = self.block_number().await else { continue };
            if to >= from {
                match self.chain.device_changes(from, to).await {
                    Ok(ids) => {
                        for id in ids {
                            self.registry.invalidate(&id);
                        }
                        from = to + 1;
                        seen = Some(to);
                    }
                    Err(e) => tracing::warn!(error = %e, "device events not read; retrying"),
                }
            }
            if let Some(block) = seen {
                // Changes at once; the block alone now and then, so that a
                // restart replays few blocks.
                let due = saved_at.is_none_or(|at| at.elapsed() >= CACHE_SAVE_EVERY);
                if self.save(block, due).await {
                    saved_at = Some(tokio::time::Instant::now());
                }
            }
        }
    }

    async fn block_number(&self) -> Result<u64, ChainError> {
        let answer = self.chain.block_number().await;
        match &answer {
            Ok(_) => self.health.chain_answered(),
            Err(e) => self.health.chain_failed(ingest::now_ms(), &e.to_string()),
        }
        answer
    }

    /// Brings the store's copy of the cache up to `block`, if anything
    /// changed since the last save or `even_unchanged`; whether it wrote.
    async fn save(&self, block: u64, even_unchanged: bool) -> bool {
        let changes = self.registry.take_changes();
        if changes.is_empty() && !even_unchanged {
            return false;
        }
        let hash = match self.chain.block_hash(block).await {
            Ok(Some(hash)) => Ok(hash),
            Ok(None) => Err(format!("the chain has no block {block}")),
            Err(e) => Err(e.to_string()),
        };
        let written = match hash {
            Ok(hash) => tokio::task::block_in_place(|| match self.store.lock() {
                Ok(mut store) => store.save_device_cache(block, hash, &changes).map_err(|e| e.to_string()),
                Err(_) => Err("the store's lock was poisoned".to_string()),
            }),
            Err(e) => Err(e),
        };
        match written {
            Ok(()) => {
                tracing::debug!(block, changes = changes.len(), "device cache saved");
                true
            }
            Err(error) => {
                tracing::warn!(%error, "device cache not saved; retrying at the next poll");
                self.registry.put_back(changes.into_iter().map(|(id, _)| id));
                false
            }
        }
    }
}
