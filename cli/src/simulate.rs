//! The ward simulator: bedside devices with their own keys and patients with
//! believable physiology, talking the device protocol to a hub.
//!
//! Each patient has baselines drawn around adult norms, slow random drift
//! (an Ornstein-Uhlenbeck process per vital) and a daily rhythm in heart rate
//! and temperature. Some patients deteriorate: a sepsis-like episode raises
//! heart and breathing rates and temperature, lowers SpO2 and blood pressure
//! and clouds consciousness, then resolves with treatment; the NEWS2 score
//! (Royal College of Physicians, 2017; `healthsense_oracle::news2`) of each
//! reading shows it the way a ward nurse would see it. Devices drain their battery, sleep in cycles
//! (buffering readings, sent when they wake), and report both on their state
//! topic.

use std::time::Duration;

use alloy::primitives::B256;
use alloy::signers::local::PrivateKeySigner;
use anyhow::{bail, Result};
use healthsense_abi::rules::ids;
use healthsense_abi::Reading;
use healthsense_oracle::protocol::{self, Code, DeviceTopic, StatusReply, Topics};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Normal};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};

/// The NEWS2 aggregate of a reading (the oracle's one definition).
fn news2(r: &Reading) -> u8 {
    healthsense_oracle::news2::score(r).total
}

/// A plausible reading without a patient model (load tests, benchmarks):
/// every vital in range, varying with `i`, stamped now.
pub fn steady_reading(serial: &str, seq: u64, i: u64) -> Reading {
    Reading {
        deviceId: ids::device_id(serial),
        seq,
        timestamp: healthsense_oracle::ingest::now_ms(),
        heartRate: 60 + (i % 40) as u16,
        respRate: 12 + (i % 8) as u16,
        spo2: 94 + (i % 6) as u16,
        systolic: 110 + (i % 30) as u16,
        diastolic: 70 + (i % 15) as u16,
        temperature: 3_650 + (i % 50) as u16,
        consciousness: 1,
    }
}

/// A patient's physiology.
#[derive(Debug, Clone)]
pub struct Patient {
    /// Baselines: heart rate, resp rate, SpO2, systolic, diastolic, temperature (°C).
    base: [f64; 6],
    drift: [f64; 6],
    /// Deterioration episode: (onset, duration) in simulated seconds.
    episode: Option<(f64, f64)>,
}

/// How much each vital moves at the peak of an episode.
const EPISODE_PEAK: [f64; 6] = [38.0, 11.0, -8.0, -32.0, -16.0, 2.1];
/// Drift scale (standard deviation of the stationary process) per vital.
const DRIFT_SD: [f64; 6] = [4.0, 1.5, 0.8, 6.0, 4.0, 0.15];

impl Patient {
    /// A patient drawn from `rng`; `deteriorates` schedules one episode
    /// within the first `horizon` simulated seconds.
    pub fn new(rng: &mut StdRng, deteriorates: bool, horizon: f64) -> Self {
        let mut draw = |mean: f64, sd: f64| Normal::new(mean, sd).map(|n| n.sample(rng)).unwrap_or(mean);
        let base = [draw(76.0, 9.0), draw(15.0, 1.5), draw(97.0, 0.8), draw(124.0, 12.0), draw(76.0, 7.0), draw(36.8, 0.25)];
        let episode = deteriorates.then(|| (rng.random_range(0.1..0.4) * horizon, rng.random_range(0.4..0.6) * horizon));
        Self { base, drift: [0.0; 6], episode }
    }

    /// Severity 0..1 of the episode at simulated time `t`.
    pub fn severity(&self, t: f64) -> f64 {
        let Some((onset, len)) = self.episode else { return 0.0 };
        let x = (t - onset) / len;
        if !(0.0..=1.0).contains(&x) {
            return 0.0;
        }
        // Rises over the first 40%, holds, resolves over the last 30%.
        (x / 0.4).min(1.0).min((1.0 - x) / 0.3)
    }

    /// Advances `dt` simulated seconds and measures at simulated time `t`.
    pub fn measure(&mut self, rng: &mut StdRng, t: f64, dt: f64) -> [f64; 6] {
        const THETA: f64 = 1.0 / 600.0; // drift relaxes over ~10 minutes
        let noise = Normal::new(0.0, 1.0).ok();
        let sev = self.severity(t);
        let circadian = (t / 86_400.0 * std::f64::consts::TAU).sin();
        let mut out = [0.0; 6];
        for i in 0..6 {
            let n = noise.map(|n| n.sample(rng)).unwrap_or(0.0);
            let sigma = DRIFT_SD[i] * (2.0 * THETA).sqrt();
            self.drift[i] += -THETA * self.drift[i] * dt + sigma * dt.sqrt() * n;
            out[i] = self.base[i] + self.drift[i] + sev * EPISODE_PEAK[i];
        }
        out[0] += 4.0 * circadian;
        out[5] += 0.3 * circadian;
        out[2] = out[2].min(100.0);
        out
    }

    /// ACVPU at simulated time `t` (new confusion at the height of an episode).
    pub fn consciousness(&self, t: f64) -> u8 {
        if self.severity(t) > 0.85 {
            2
        } else {
            1
        }
    }
}

/// What a device sends next.
#[derive(Debug, Clone)]
pub enum Message {
    /// A reading to sign and send.
    Vitals(Reading),
    /// A state report.
    State {
        /// Battery, %.
        battery: f64,
        /// Asleep or awake.
        asleep: bool,
    },
}

/// A bedside device and its patient.
pub struct Bed {
    /// Serial.
    pub serial: String,
    /// Signing key.
    pub key: PrivateKeySigner,
    /// Last sequence number used.
    pub seq: u64,
    /// The patient.
    pub patient: Patient,
    battery: f64,
    buffer: Vec<Reading>,
    asleep: bool,
    /// Highest NEWS2 seen.
    pub max_news2: u8,
}

/// Sleep cycle: awake for this many readings, then asleep for `SLEEP`.
const AWAKE: u64 = 40;
const SLEEP: u64 = 8;

impl Bed {
    /// A bed with a fresh key.
    pub fn new(serial: String, patient: Patient, rng: &mut StdRng) -> Self {
        Self {
            serial,
            key: PrivateKeySigner::random(),
            seq: 0,
            patient,
            battery: rng.random_range(55.0..100.0),
            buffer: Vec::new(),
            asleep: false,
            max_news2: 0,
        }
    }

    /// The device's on-chain id.
    pub fn device_id(&self) -> B256 {
        ids::device_id(&self.serial)
    }

    /// One measurement tick `n` at wall time `now_ms`, simulated time `t`
    /// (seconds) advanced by `dt`: what the device publishes now.
    pub fn tick(&mut self, rng: &mut StdRng, n: u64, now_ms: u64, t: f64, dt: f64) -> Vec<Message> {
        let v = self.patient.measure(rng, t, dt);
        self.seq += 1;
        let clamp = |x: f64, lo: f64, hi: f64| x.clamp(lo, hi).round() as u16;
        let r = Reading {
            deviceId: self.device_id(),
            seq: self.seq,
            timestamp: now_ms,
            heartRate: clamp(v[0], 20.0, 300.0),
            respRate: clamp(v[1], 2.0, 80.0),
            spo2: clamp(v[2], 50.0, 100.0),
            systolic: clamp(v[3], 40.0, 300.0),
            diastolic: clamp(v[4].min(v[3] - 10.0), 20.0, 200.0),
            temperature: clamp(v[5] * 100.0, 2_500.0, 4_500.0),
            consciousness: self.patient.consciousness(t),
        };
        self.max_news2 = self.max_news2.max(news2(&r));
        self.battery = (self.battery - 0.02).max(1.0);
        let mut out = Vec::new();
        let phase = n % (AWAKE + SLEEP);
        if phase == AWAKE && !self.asleep {
            self.asleep = true;
            out.push(Message::State { battery: self.battery, asleep: true });
        }
        if self.asleep {
            self.buffer.push(r);
            if phase == AWAKE + SLEEP - 1 {
                self.asleep = false;
                out.push(Message::State { battery: self.battery, asleep: false });
                out.extend(self.buffer.drain(..).map(Message::Vitals));
            }
        } else {
            out.push(Message::Vitals(r));
        }
        out
    }

    /// Readings still buffered (a device asleep at the end of a run).
    pub fn flush(&mut self) -> Vec<Message> {
        self.asleep = false;
        self.buffer.drain(..).map(Message::Vitals).collect()
    }
}

/// Simulation settings.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Hub name (topic segment).
    pub hub: String,
    /// Broker host and port.
    pub broker: (String, u16),
    /// Readings per bed per second (wall clock).
    pub rate: f64,
    /// Simulated seconds per wall second.
    pub speed: f64,
    /// Wall-clock length, seconds.
    pub seconds: f64,
    /// RNG seed.
    pub seed: u64,
    /// Domain separator the devices sign under.
    pub domain: B256,
    /// Static broker passwords by serial (a broker with a password file);
    /// a device without one logs in with a login signed by its key.
    pub passwords: std::collections::HashMap<String, String>,
}

/// Totals of a run.
#[derive(Debug, Clone, Default, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    /// Readings published (acknowledged by the broker, which says nothing
    /// about the hub).
    pub readings: u64,
    /// Readings the hub confirmed stored ([`confirm`]).
    pub stored: u64,
    /// Readings the hub rejected (status replies with a 4xx/5xx code).
    pub rejected: u64,
    /// State messages published.
    pub states: u64,
    /// Beds whose NEWS2 reached 5 or more (urgent response).
    pub deteriorated: Vec<String>,
    /// Highest NEWS2 per bed.
    pub max_news2: Vec<(String, u8)>,
}

/// The connected devices (one MQTT client each, logged in as itself),
/// the number of publishes the broker has acknowledged so far, and the
/// hub's status replies.
pub struct Connected {
    /// Each bed's client, by serial.
    pub clients: std::collections::HashMap<String, AsyncClient>,
    /// Broker acknowledgements (PUBACK) received.
    pub acks: std::sync::Arc<std::sync::atomic::AtomicU64>,
    replies: tokio::sync::mpsc::UnboundedReceiver<(String, StatusReply)>,
}

/// Some readings were published but not confirmed stored by the hub.
#[derive(Debug, thiserror::Error)]
#[error("{missing} of {published} published reading(s) were not confirmed stored by the hub ({rejected} rejected); see its log and /readyz")]
pub struct NotStored {
    /// Published readings not confirmed stored.
    pub missing: u64,
    /// Readings published.
    pub published: u64,
    /// Of the missing, rejected by the hub.
    pub rejected: u64,
}

impl Report {
    /// `Err` when any published reading was not confirmed stored.
    pub fn all_stored(&self) -> Result<(), NotStored> {
        match self.readings.saturating_sub(self.stored) {
            0 => Ok(()),
            missing => Err(NotStored { missing, published: self.readings, rejected: self.rejected }),
        }
    }
}

/// Asks the hub what it stored: says hello again for each bed and reads the
/// highest stored sequence number from its `200 registered` reply (the hub
/// answers a hello from the store, docs/PROTOCOL.md), for up to `wait`,
/// while late readings are still being committed. Fills `report.stored` and
/// `report.rejected`; a reading counts as stored when its sequence number is
/// at most the bed's confirmed one and the hub did not reject it.
pub async fn confirm(settings: &Settings, conn: &mut Connected, beds: &[Bed], report: &mut Report, wait: Duration) -> Result<()> {
    use std::collections::{HashMap, HashSet};
    let topics = Topics::new(&settings.hub).map_err(anyhow::Error::msg)?;
    let mut stored: HashMap<&str, u64> = HashMap::new();
    let mut rejected: HashSet<(String, u64)> = HashSet::new();
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let open: Vec<&Bed> = beds.iter().filter(|b| stored.get(b.serial.as_str()).is_none_or(|s| *s < b.seq)).collect();
        if open.is_empty() || tokio::time::Instant::now() >= deadline {
            break;
        }
        for bed in &open {
            let hello = serde_json::to_vec(&protocol::Hello { signer: bed.key.address(), firmware: Some("sim-1.0".into()) })?;
            conn.client(&bed.serial)?.publish(topics.device(&bed.serial, DeviceTopic::Hello), QoS::AtLeastOnce, false, hello).await?;
        }
        let round = (tokio::time::Instant::now() + Duration::from_secs(1)).min(deadline);
        while let Ok(Some((serial, reply))) = tokio::time::timeout_at(round, conn.replies.recv()).await {
            let Some(bed) = beds.iter().find(|b| b.serial == serial) else { continue };
            match (reply.code, reply.reason.starts_with("hello"), reply.seq) {
                (Code::Registered, true, seq) => {
                    stored.insert(bed.serial.as_str(), seq.unwrap_or(0));
                }
                (code, false, Some(seq)) if code as u16 >= 400 => {
                    rejected.insert((serial, seq));
                }
                _ => {}
            }
        }
    }
    report.rejected = rejected.len() as u64;
    report.stored = beds
        .iter()
        .map(|b| {
            let upto = stored.get(b.serial.as_str()).copied().unwrap_or(0).min(b.seq);
            (1..=upto).filter(|seq| !rejected.contains(&(b.serial.clone(), *seq))).count() as u64
        })
        .sum();
    Ok(())
}

impl Connected {
    /// The client of bed `serial`.
    pub fn client(&self, serial: &str) -> Result<&AsyncClient> {
        self.clients.get(serial).ok_or_else(|| anyhow::anyhow!("no MQTT connection for {serial}"))
    }

    /// Waits until the broker has acknowledged `n` publishes (or 30 s pass).
    pub async fn flushed(&self, n: u64) -> bool {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while self.acks.load(std::sync::atomic::Ordering::SeqCst) < n {
            if tokio::time::Instant::now() > deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        true
    }
}

/// How a device logs in to the broker: its client id and username are its
/// serial; the password is `password` (a broker that keeps a password file,
/// e.g. the generated Mosquitto configuration) or else a fresh login signed
/// by its key (the embedded broker), renewed at every reconnection.
pub fn device_options(host: &str, port: u16, serial: &str, key: &PrivateKeySigner, password: Option<&str>) -> Result<MqttOptions> {
    let mut opts = MqttOptions::new(serial, host, port);
    let password = match password {
        Some(p) => p.to_string(),
        None => healthsense_oracle::broker::device_password(key, serial, healthsense_oracle::ingest::now_ms())?,
    };
    opts.set_credentials(serial, password);
    Ok(opts)
}

/// Polls a device's event loop on `runtime`, reconnecting after an error
/// and renewing its signed login before each reconnection (the broker takes
/// each login once); `on_event` sees every event. The task ends once the
/// client has sent DISCONNECT (dropping the client does not end it: the
/// event loop holds a sender of its own requests).
pub fn drive(
    runtime: &tokio::runtime::Handle,
    mut eventloop: rumqttc::EventLoop,
    serial: String,
    key: Option<PrivateKeySigner>,
    mut on_event: impl FnMut(Event) + Send + 'static,
) -> tokio::task::JoinHandle<()> {
    healthsense_oracle::broker::without_nagle(&mut eventloop);
    runtime.spawn(async move {
        loop {
            match eventloop.poll().await {
                // The client asked to disconnect: the connection is done.
                Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) => {
                    on_event(Event::Outgoing(rumqttc::Outgoing::Disconnect));
                    return;
                }
                Ok(ev) => on_event(ev),
                Err(e) => {
                    // Says why a bench device reconnected (docs/BENCHMARKS.md, "Issue 22, thirteenth session").
                    tracing::debug!(client = %serial, error = %e, "device connection lost; reconnecting in 200 ms");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    if let Some(key) = &key {
                        // Strictly later than the refused or used one.
                        let now = healthsense_oracle::ingest::now_ms();
                        if let Ok(p) = healthsense_oracle::broker::device_password(key, &serial, now) {
                            eventloop.mqtt_options.set_credentials(serial.clone(), p);
                        }
                    }
                }
            }
        }
    })
}

/// Connects every bed to the broker as itself and says hello for each until
/// each is registered.
pub async fn connect(settings: &Settings, beds: &[Bed]) -> Result<Connected> {
    let topics = Topics::new(&settings.hub).map_err(anyhow::Error::msg)?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(String, StatusReply)>();
    let acks = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut clients = std::collections::HashMap::new();
    for bed in beds {
        let password = settings.passwords.get(&bed.serial).map(String::as_str);
        let mut opts = device_options(&settings.broker.0, settings.broker.1, &bed.serial, &bed.key, password)?;
        opts.set_keep_alive(Duration::from_secs(15)).set_inflight(1_000).set_max_packet_size(1 << 20, 1 << 20);
        let (client, eventloop) = AsyncClient::new(opts, 10_000);
        client.subscribe(topics.device(&bed.serial, DeviceTopic::Status), QoS::AtLeastOnce).await?;
        let (t, tx, counter) = (topics.clone(), tx.clone(), acks.clone());
        drive(&tokio::runtime::Handle::current(), eventloop, bed.serial.clone(), password.is_none().then(|| bed.key.clone()), move |ev| match ev {
            Event::Incoming(Packet::PubAck(_)) => {
                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
            Event::Incoming(Packet::Publish(p)) => {
                if let (Some((serial, _)), Ok(reply)) = (t.parse(&p.topic), serde_json::from_slice::<StatusReply>(&p.payload)) {
                    let _ = tx.send((serial.to_string(), reply));
                }
            }
            _ => {}
        });
        clients.insert(bed.serial.clone(), client);
    }
    let mut waiting: std::collections::HashMap<String, &Bed> = beds.iter().map(|b| (b.serial.clone(), b)).collect();
    let mut hellos = 0u64;
    for attempt in 0..30 {
        for bed in waiting.values() {
            let hello = serde_json::to_vec(&protocol::Hello { signer: bed.key.address(), firmware: Some("sim-1.0".into()) })?;
            let client = &clients[&bed.serial];
            client.publish(topics.device(&bed.serial, DeviceTopic::Hello), QoS::AtLeastOnce, false, hello).await?;
            hellos += 1;
        }
        let deadline = tokio::time::Instant::now() + Duration::from_millis(if attempt == 0 { 3_000 } else { 1_000 });
        while let Ok(Some((serial, reply))) = tokio::time::timeout_at(deadline, rx.recv()).await {
            match reply.code {
                Code::Registered => {
                    waiting.remove(&serial);
                }
                Code::Initialised => {}
                code if waiting.contains_key(&serial) && code != Code::Unavailable => {
                    bail!("the hub refused {serial}: {} {}", code as u16, reply.reason)
                }
                _ => {}
            }
            if waiting.is_empty() {
                // Count the hellos as acknowledged from here on.
                let c = Connected { clients, acks, replies: rx };
                c.flushed(hellos).await;
                c.acks.fetch_sub(hellos.min(c.acks.load(std::sync::atomic::Ordering::SeqCst)), std::sync::atomic::Ordering::SeqCst);
                return Ok(c);
            }
        }
    }
    bail!(
        "no hub answered hello for {} device(s) on {}:{} (a broker with authentication refuses devices not provisioned on chain; its log says why)",
        waiting.len(),
        settings.broker.0,
        settings.broker.1
    )
}

/// Runs the ward for `settings.seconds`, publishing through `client`.
pub async fn run(settings: &Settings, beds: &mut [Bed], conn: &Connected, mut progress: impl FnMut(&Report)) -> Result<Report> {
    let topics = Topics::new(&settings.hub).map_err(anyhow::Error::msg)?;
    let mut rng = StdRng::seed_from_u64(settings.seed ^ 0x5eed);
    let period = Duration::from_secs_f64(1.0 / settings.rate.max(0.01));
    let ticks = (settings.seconds * settings.rate).ceil() as u64;
    let dt = settings.speed / settings.rate.max(0.01);
    let mut report = Report::default();
    let mut interval = tokio::time::interval(period);
    for n in 0..ticks {
        interval.tick().await;
        let now = healthsense_oracle::ingest::now_ms();
        let t = n as f64 * dt;
        for bed in beds.iter_mut() {
            let msgs = bed.tick(&mut rng, n, now, t, dt);
            publish(settings, &topics, conn.client(&bed.serial)?, bed, msgs, &mut report).await?;
        }
        if n % settings.rate.ceil().max(1.0) as u64 == 0 {
            progress(&report);
        }
    }
    for bed in beds.iter_mut() {
        let msgs = bed.flush();
        publish(settings, &topics, conn.client(&bed.serial)?, bed, msgs, &mut report).await?;
    }
    for bed in beds.iter() {
        report.max_news2.push((bed.serial.clone(), bed.max_news2));
        if bed.max_news2 >= 5 {
            report.deteriorated.push(bed.serial.clone());
        }
    }
    Ok(report)
}

async fn publish(
    settings: &Settings,
    topics: &Topics,
    client: &AsyncClient,
    bed: &Bed,
    msgs: Vec<Message>,
    report: &mut Report,
) -> Result<()> {
    for m in msgs {
        match m {
            Message::Vitals(r) => {
                let payload = protocol::sign_vitals(&bed.key, settings.domain, &bed.serial, &r)?;
                client.publish(topics.device(&bed.serial, DeviceTopic::Vitals), QoS::AtLeastOnce, false, payload).await?;
                report.readings += 1;
            }
            Message::State { battery, asleep } => {
                let payload = protocol::state_pack(&bed.serial, (battery * 10.0).round() / 10.0, asleep);
                client.publish(topics.device(&bed.serial, DeviceTopic::State), QoS::AtLeastOnce, false, payload).await?;
                report.states += 1;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reading(hr: u16, rr: u16, spo2: u16, sys: u16, temp: u16, avpu: u8) -> Reading {
        Reading { heartRate: hr, respRate: rr, spo2, systolic: sys, diastolic: 60, temperature: temp, consciousness: avpu, ..Default::default() }
    }

    #[test]
    fn episodes_deteriorate_and_recover_and_readings_stay_valid() {
        let mut rng = StdRng::seed_from_u64(7);
        let horizon = 6.0 * 3600.0;
        let mut bed = Bed::new("SIM-1".into(), Patient::new(&mut rng, true, horizon), &mut rng);
        let (mut peak, mut last, mut sent, mut states) = (0u8, 0u8, 0u64, 0u64);
        let dt = 30.0;
        let ticks = (horizon / dt) as u64;
        for n in 0..ticks {
            for m in bed.tick(&mut rng, n, 1_000 + n, n as f64 * dt, dt) {
                match m {
                    Message::Vitals(r) => {
                        let payload = protocol::sign_vitals(&bed.key, B256::ZERO, "SIM-1", &r).unwrap();
                        let clock = protocol::Clock { now_ms: 1_000 + n, max_future_ms: 300_000, max_age_ms: 86_400_000 };
                        protocol::parse_vitals("SIM-1", &payload, 2048, clock).expect("a simulated reading is valid");
                        last = news2(&r);
                        peak = peak.max(last);
                        sent += 1;
                    }
                    Message::State { .. } => states += 1,
                }
            }
        }
        sent += bed.flush().len() as u64;
        assert_eq!(sent, ticks, "every measurement is sent, buffered or not");
        assert!(states >= 2, "sleep cycles are reported");
        assert!(peak >= 5, "the episode reaches an urgent NEWS2, got {peak}");
        assert!(last <= 3, "and resolves, got {last}");
        let mut calm = Patient::new(&mut rng, false, horizon);
        assert!((0..ticks).all(|n| news2_of(&mut calm, &mut rng, n as f64 * dt, dt) < 5));
    }

    /// A driven client that disconnects ends its task rather than
    /// reconnecting every 200 ms for good.
    #[tokio::test]
    async fn a_driven_client_ends_once_it_disconnects() {
        let listeners = healthsense_oracle::broker::start_embedded(
            healthsense_oracle::broker::Listeners::v311("127.0.0.1:0".parse().unwrap()),
            None,
            1,
        )
        .unwrap();
        let port = listeners.v311.port();
        let runtime = tokio::runtime::Handle::current();
        let (client, eventloop) = AsyncClient::new(MqttOptions::new("drive", "127.0.0.1", port), 10);
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let task = drive(&runtime, eventloop, "drive".into(), None, move |ev| {
            if let Event::Incoming(Packet::ConnAck(_)) = ev {
                let _ = tx.send(());
            }
        });
        tokio::time::timeout(Duration::from_secs(30), rx.recv()).await.expect("connected").expect("a CONNACK");
        assert!(!task.is_finished(), "a connected client's task runs");
        client.disconnect().await.unwrap();
        tokio::time::timeout(Duration::from_secs(30), task).await.expect("the task ends after DISCONNECT").unwrap();
    }

    fn news2_of(p: &mut Patient, rng: &mut StdRng, t: f64, dt: f64) -> u8 {
        let v = p.measure(rng, t, dt);
        news2(&reading(v[0] as u16, v[1] as u16, v[2] as u16, v[3] as u16, (v[5] * 100.0) as u16, p.consciousness(t)))
    }
}
