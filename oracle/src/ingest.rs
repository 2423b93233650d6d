//! Vitals ingest: parse -> verify -> commit -> acknowledge, in groups.
//!
//! The MQTT event loop leaves each message at the [`Intake`], where a job on
//! the rayon pool takes every message waiting (up to `ingest.max_batch`)
//! as a group; its messages are parsed and their signatures checked in
//! parallel (up to [`GROUPS_IN_FLIGHT`] groups at once). A group is checked
//! in parts, and the thread that checks a part hands its accepted readings
//! to the alert scorer ([`crate::alerts::Scorer`]), which scores them as
//! soon as the parts before them are. The writer thread receives the
//! verified groups back in arrival order, rejects replays, commits them in
//! one SQLite transaction, and only then acknowledges each message to the
//! broker, in arrival order, and answers rejections on the device's status
//! topic.
//!
//! Nothing is acknowledged that is not committed: if the commit fails the
//! writer retries it, and a crash before the commit leaves the messages
//! unacknowledged in the broker's persistent session for the next start.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use alloy::primitives::B256;
use healthsense_abi::rules::eip712;
use rayon::prelude::*;
use rumqttc::{AsyncClient, Publish, QoS};
use tokio::runtime::Handle;
use tokio::sync::Notify;

use crate::chain::Chain;
use crate::devices::{Device, Registry};
use crate::metrics::Metrics;
use crate::protocol::{self, Clock, Code, DeviceTopic, Rejection, StatusReply, Topics};
use crate::store::{NewReading, NewRejection, Store};

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// A vitals message as it left the event loop.
pub struct Incoming {
    /// The MQTT publish (kept for its acknowledgement).
    pub publish: Publish,
    /// Its place in the acknowledgement order ([`crate::acks::AckGate`]).
    pub ticket: u64,
    /// Device serial from the topic.
    pub serial: String,
    /// Receive time.
    pub received: Instant,
}

/// Called after each commit with the committed readings and the commit time
/// (benchmarks measure publish-to-durable latency with it).
pub type CommitHook = Arc<dyn Fn(&[NewReading], Instant) + Send + Sync>;

/// Everything the ingest threads share.
#[derive(Clone)]
pub struct Shared {
    /// Hub topics.
    pub topics: Topics,
    /// Chain connection (device lookups).
    pub chain: Chain,
    /// Device cache.
    pub registry: Arc<Registry>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// MQTT client (status replies).
    pub client: AsyncClient,
    /// Acknowledgements, in arrival order.
    pub acks: Arc<crate::acks::AckGate>,
    /// Runtime handle for the async calls from the ingest threads.
    pub runtime: Handle,
    /// Readings committed since the hub started (the anchorer's count).
    pub committed: Arc<AtomicU64>,
    /// Wakes the anchorer.
    pub wake_anchor: Arc<Notify>,
    /// Commit observer.
    pub on_commit: Option<CommitHook>,
    /// Scores each verified part of a group for NEWS2 alerts
    /// ([`crate::alerts::Scorer`]), before the commit.
    pub alerts: Option<Arc<crate::alerts::Scorer>>,
    /// Readiness: told of each commit ([`crate::health`]).
    pub health: Arc<crate::health::Health>,
}

/// Limits of the ingest path.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest payload.
    pub max_payload: usize,
    /// Most messages per group.
    pub max_batch: usize,
    /// Clock window.
    pub max_future_ms: u64,
    /// Clock window.
    pub max_age_ms: u64,
}

enum Verdict {
    Accept(NewReading),
    Reject(Rejection),
}

struct Group {
    items: Vec<(Incoming, Verdict)>,
}

/// Copies of the readings whose signatures checked out.
fn accepted(verdicts: &[Verdict]) -> Vec<NewReading> {
    verdicts
        .iter()
        .filter_map(|v| match v {
            Verdict::Accept(n) => Some(n.clone()),
            Verdict::Reject(_) => None,
        })
        .collect()
}

/// Most messages in a part of a group: small enough that a part is checked
/// in well under a millisecond (an alerting reading waits for its part's
/// checks, not its group's: at 5,000 readings/s a group of 50 took 2.5 ms of
/// both cores), large enough that handing it over costs nothing next to its
/// checks.
const PART: usize = 8;

/// Parts of a group of more than `PART * PARTS_OF_LARGE` messages: a
/// backlog gains nothing from finer parts (parts of 8 at every size looked
/// to cost the queued phase 12 % in two rounds; docs/BENCHMARKS.md).
const PARTS_OF_LARGE: usize = 16;

/// Starts the writer thread and returns the [`Intake`] the MQTT event loop
/// hands vitals messages to. The writer stops once the intake is dropped
/// and every group taken is committed. `last_seqs` is each device's last
/// stored sequence number (from [`Store::last_readings`]).
pub fn start(
    shared: Shared,
    limits: Limits,
    store: Store,
    last_seqs: HashMap<B256, u64>,
) -> anyhow::Result<(Intake, std::thread::JoinHandle<()>)> {
    // Unbounded, as a bounded one could fill with later groups while the
    // next one due waits to be sent. What it holds is bounded all the same:
    // every message in it is unacknowledged, and the broker sends no more
    // than its QoS 1 window of those.
    let (group_tx, group_rx) = std::sync::mpsc::channel::<(u64, Group)>();
    // Named for `top -H` and `perf`; unnamed they take the name of the
    // thread that first used the pool. Fails harmlessly if it is running.
    let _ = rayon::ThreadPoolBuilder::new().thread_name(|i| format!("hs-verify-{i}")).build_global();
    let intake = Intake(Arc::new(Taker {
        domain: shared.chain.domain_separator(),
        shared: shared.clone(),
        limits,
        waiting: Default::default(),
        out: group_tx,
    }));
    let writer = std::thread::Builder::new()
        .name("hs-write".into())
        .spawn(move || writer(shared, store, last_seqs, InOrder::new(group_rx)))?;
    Ok((intake, writer))
}

/// Groups being verified at once. Each group's checks already run in
/// parallel; overlapping groups keeps both cores busy when messages arrive
/// in small groups (as acknowledgements free the broker's window), where
/// verifying one group at a time left a core idle.
const GROUPS_IN_FLIGHT: usize = 4;

/// Where the MQTT event loop leaves vitals messages. A message that finds
/// fewer than [`GROUPS_IN_FLIGHT`] groups in flight starts a job on the
/// rayon pool, which takes every message waiting (up to `max_batch`) as a
/// group, verifies it, and takes the next while any wait. Groups are
/// numbered as taken, so the writer gets them back in arrival order
/// ([`InOrder`]). No thread of its own stands between the event loop and
/// the pool: one that woke for each group only to hand it on cost, with the
/// alert thread that went with it, 12 % of the hub's CPU at 5,000
/// readings/s (docs/BENCHMARKS.md, "Issue 22, eleventh session").
pub struct Intake(Arc<Taker>);

struct Taker {
    shared: Shared,
    limits: Limits,
    domain: B256,
    waiting: std::sync::Mutex<Waiting<Incoming>>,
    out: std::sync::mpsc::Sender<(u64, Group)>,
}

/// Messages waiting at the [`Intake`], and the jobs that take them.
struct Waiting<T> {
    msgs: std::collections::VecDeque<T>,
    /// Jobs running or queued on the pool.
    jobs: usize,
    /// The next group's number.
    number: u64,
}

impl<T> Default for Waiting<T> {
    fn default() -> Self {
        Self { msgs: Default::default(), jobs: 0, number: 0 }
    }
}

impl<T> Waiting<T> {
    /// Adds a message; true if a job is to be started for it.
    fn push(&mut self, msg: T) -> bool {
        self.msgs.push_back(msg);
        let start = self.jobs < GROUPS_IN_FLIGHT;
        self.jobs += usize::from(start);
        start
    }

    /// A job's next group, numbered, of at most `max` messages; `None` (and
    /// the job ends) when none wait. A job ends only with no message
    /// waiting, so none is left without a job to take it.
    fn take(&mut self, max: usize) -> Option<(u64, Vec<T>)> {
        if self.msgs.is_empty() {
            self.jobs -= 1;
            return None;
        }
        let take = self.msgs.len().min(max.max(1));
        let n = self.number;
        self.number += 1;
        Some((n, self.msgs.drain(..take).collect()))
    }
}

impl Intake {
    /// Takes a vitals message for verification.
    pub fn push(&self, msg: Incoming) {
        if self.0.lock().push(msg) {
            let taker = self.0.clone();
            rayon::spawn(move || taker.run());
        }
    }
}

impl Taker {
    fn lock(&self) -> std::sync::MutexGuard<'_, Waiting<Incoming>> {
        // Nothing under the lock panics; a poisoned lock still holds whole messages.
        self.waiting.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Verifies groups while messages wait.
    fn run(&self) {
        loop {
            // Its own statement: the lock must not be held through the checks.
            let taken = self.lock().take(self.limits.max_batch);
            let Some((n, msgs)) = taken else { return };
            self.shared.metrics.ingested.inc_by(msgs.len() as u64);
            let group = check(&self.shared, self.limits, self.domain, n, msgs);
            let _ = self.out.send((n, group));
        }
    }
}

/// Parses and verifies group `n`, handing its accepted readings to the
/// alert scorer part by part as each is verified.
fn check(s: &Shared, limits: Limits, domain: B256, n: u64, msgs: Vec<Incoming>) -> Group {
    let started = Instant::now();
    let clock = Clock { now_ms: now_ms(), max_future_ms: limits.max_future_ms, max_age_ms: limits.max_age_ms };
    let parsed: Vec<_> = msgs
        .par_iter()
        .map(|m| protocol::parse_vitals(&m.serial, &m.publish.payload, limits.max_payload, clock))
        .collect();
    let devices = resolve(s, &parsed);
    let verdict = |p: Result<protocol::SignedReading, Rejection>, m: &Incoming| {
        let signed = match p {
            Ok(signed) => signed,
            Err(rej) => return Verdict::Reject(rej),
        };
        let r = signed.reading;
        let Some(device) = devices.get(&r.deviceId) else {
            return Verdict::Reject(Rejection { code: Code::Unavailable, reason: "chain unreachable".into(), seq: Some(r.seq) });
        };
        let digest = eip712::reading_digest(domain, &r);
        match device.check(&digest, &signed.signature) {
            Ok(()) => Verdict::Accept(NewReading {
                serial: m.serial.clone(),
                signature: signed.signature.as_bytes(),
                received_ms: now_ms(),
                reading: r,
            }),
            Err((code, reason)) => Verdict::Reject(Rejection { code, reason, seq: Some(r.seq) }),
        }
    };
    // Parts small enough that a small group still spreads over the pool;
    // a large group (a backlog, where throughput matters more than the
    // first alert) in 16 parts.
    let size = (msgs.len() / PARTS_OF_LARGE).max((msgs.len() / rayon::current_num_threads().max(1)).clamp(1, PART));
    let mut pairs = parsed.into_iter().zip(msgs.iter());
    let parts: Vec<Vec<_>> = std::iter::from_fn(|| {
        let part: Vec<_> = pairs.by_ref().take(size).collect();
        (!part.is_empty()).then_some(part)
    })
    .collect();
    // A group holds at least one message ([`Waiting::take`]), so it has a
    // last part: the scorer, which takes the groups in order, gets it.
    let count = parts.len();
    let verdicts: Vec<Vec<Verdict>> = parts
        .into_par_iter()
        .enumerate()
        .map(|(i, part)| {
            let verdicts: Vec<Verdict> = part.into_iter().map(|(p, m)| verdict(p, m)).collect();
            if let Some(scorer) = &s.alerts {
                scorer.verified(n, i, i + 1 == count, accepted(&verdicts));
            }
            verdicts
        })
        .collect();
    let verdicts: Vec<Verdict> = verdicts.into_iter().flatten().collect();
    tracing::debug!(messages = msgs.len(), us = started.elapsed().as_micros() as u64, "group verified");
    Group { items: msgs.into_iter().zip(verdicts).collect() }
}

/// Parts of the verified groups in arrival order, whatever order their
/// checks finished in: groups are numbered 0, 1, 2, ... as they are taken
/// ([`Intake`]), and a group's parts 0, 1, 2, ..., the last one marked. The
/// writer's replay rule, the acknowledgement order and the alert policy
/// depend on it; the writer takes whole groups (each its own last part).
pub(crate) struct ArrivalOrder<T> {
    /// The next part due: (group, part).
    next: (u64, usize),
    /// Parts after it, and whether each is its group's last.
    early: std::collections::BTreeMap<(u64, usize), (T, bool)>,
}

impl<T> Default for ArrivalOrder<T> {
    fn default() -> Self {
        Self { next: (0, 0), early: Default::default() }
    }
}

impl<T> ArrivalOrder<T> {
    /// Part `part` of group `group` (`last` if it is the group's last) is
    /// verified: appends it, and every part after it that has come, to
    /// `due`, up to the first that has not.
    pub(crate) fn arrived(&mut self, group: u64, part: usize, last: bool, item: T, due: &mut impl Extend<T>) {
        self.early.insert((group, part), (item, last));
        while let Some((item, last)) = self.early.remove(&self.next) {
            due.extend([item]);
            self.next = if last { (self.next.0 + 1, 0) } else { (self.next.0, self.next.1 + 1) };
        }
    }
}

/// Verified groups in the order they were taken ([`ArrivalOrder`]), as the
/// jobs that verified them send them.
pub(crate) struct InOrder<T> {
    rx: std::sync::mpsc::Receiver<(u64, T)>,
    order: ArrivalOrder<T>,
    due: std::collections::VecDeque<T>,
}

impl<T> InOrder<T> {
    pub(crate) fn new(rx: std::sync::mpsc::Receiver<(u64, T)>) -> Self {
        Self { rx, order: ArrivalOrder::default(), due: Default::default() }
    }

    /// The next group, waiting for it if `wait`; `None` when it is not
    /// verified yet (without `wait`) or once the verifier has stopped and
    /// every group is handed over.
    pub(crate) fn next(&mut self, wait: bool) -> Option<T> {
        loop {
            if let Some(group) = self.due.pop_front() {
                return Some(group);
            }
            let (n, group) = if wait { self.rx.recv().ok()? } else { self.rx.try_recv().ok()? };
            self.order.arrived(n, 0, true, group, &mut self.due);
        }
    }
}

/// Most device lookups in flight at once. A hub that restarts with a backlog
/// meets hundreds of devices its cache does not hold yet; one round trip
/// after another would stall the verifier for as many round trips.
const LOOKUPS_IN_FLIGHT: usize = 32;

/// The device records a group needs, from the cache or the chain (those not
/// cached are looked up concurrently). An unreachable chain is retried until
/// it answers: the messages wait, unacknowledged, rather than being rejected
/// for the hub's own trouble.
fn resolve(s: &Shared, parsed: &[Result<protocol::SignedReading, Rejection>]) -> HashMap<B256, Arc<Device>> {
    let mut out = HashMap::new();
    let mut missing = HashSet::new();
    for p in parsed.iter().flatten() {
        let id = p.reading.deviceId;
        if out.contains_key(&id) || missing.contains(&id) {
            continue;
        }
        match s.registry.get(&id) {
            Some(d) => {
                out.insert(id, d);
            }
            None => {
                missing.insert(id);
            }
        }
    }
    if missing.is_empty() {
        return out;
    }
    let missing: Vec<B256> = missing.into_iter().collect();
    for chunk in missing.chunks(LOOKUPS_IN_FLIGHT) {
        let generations: Vec<u64> = chunk.iter().map(|id| s.registry.generation(id)).collect();
        let infos = s.runtime.block_on(futures_util::future::join_all(chunk.iter().map(|&id| lookup(&s.chain, id))));
        for ((&id, info), generation) in chunk.iter().zip(infos).zip(generations) {
            out.insert(id, s.registry.insert(id, Device::from_info(&info), generation));
        }
    }
    s.metrics.devices.set(s.registry.len() as i64);
    out
}

/// One device record from the chain, retried with backoff until it answers.
async fn lookup(chain: &Chain, id: B256) -> healthsense_abi::bindings::IHealthSense::DeviceInfo {
    let mut backoff = Duration::from_millis(200);
    loop {
        match chain.device(id).await {
            Ok(info) => return info,
            Err(e) => {
                tracing::warn!(device = %id, error = %e, "device lookup failed; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(10));
            }
        }
    }
}

/// Most messages committed in one transaction.
const MAX_COMMIT: usize = 8_192;

#[derive(Debug, PartialEq, Eq)]
enum Sequence {
    /// After the device's last stored sequence number: store it.
    Fresh,
    /// The very message already stored (its acknowledgement was lost in a
    /// crash, so the broker sent it again): acknowledge again, silently.
    Redelivery,
    /// An old sequence number with other content: reject.
    Replay(u64),
}

/// Whether sequence number `seq` is new for a device whose last stored one
/// is `last`: the writer stores it, and the alert scorer scores it.
pub(crate) fn is_new(seq: u64, last: Option<u64>) -> bool {
    last.is_none_or(|last| seq > last)
}

/// Classifies a verified reading against the device's last sequence number,
/// the readings accepted earlier in the same group, and (only for an old
/// number) the signature stored under the same number.
fn sequence(
    n: &NewReading,
    last: Option<u64>,
    accepted: &[NewReading],
    stored_signature: impl FnOnce() -> Option<Vec<u8>>,
) -> Sequence {
    let Some(last) = last.filter(|_| !is_new(n.reading.seq, last)) else { return Sequence::Fresh };
    let (id, seq) = (n.reading.deviceId, n.reading.seq);
    let in_group = accepted.iter().any(|a| a.reading.deviceId == id && a.reading.seq == seq && a.signature == n.signature);
    if in_group || stored_signature().is_some_and(|sig| sig == n.signature) {
        Sequence::Redelivery
    } else {
        Sequence::Replay(last)
    }
}

fn writer(
    s: Shared,
    mut store: Store,
    mut last_seqs: HashMap<B256, u64>,
    mut rx: InOrder<Group>,
) {
    while let Some(mut group) = rx.next(true) {
        while group.items.len() < MAX_COMMIT {
            match rx.next(false) {
                Some(more) => group.items.extend(more.items),
                None => break,
            }
        }
        let handled = group.items.len() as u64;
        let mut accepted = Vec::with_capacity(group.items.len());
        let mut acks = Vec::with_capacity(group.items.len());
        let mut rejected = Vec::new();
        let mut replies = Vec::new();
        let mut tentative: HashMap<B256, u64> = HashMap::new();
        let at_ms = now_ms();
        for (msg, verdict) in group.items {
            acks.push((msg.ticket, msg.publish));
            let rejection = match verdict {
                Verdict::Accept(n) => {
                    let id = n.reading.deviceId;
                    let last = tentative.get(&id).or_else(|| last_seqs.get(&id)).copied();
                    let stored = || store.reading(id, n.reading.seq).ok().flatten().map(|r| r.signature);
                    match sequence(&n, last, &accepted, stored) {
                        Sequence::Fresh => {
                            tentative.insert(id, n.reading.seq);
                            accepted.push(n);
                            continue;
                        }
                        Sequence::Redelivery => {
                            s.metrics.duplicates.inc();
                            continue;
                        }
                        Sequence::Replay(last) => Rejection {
                            code: Code::Replayed,
                            reason: format!("seq {} is not after the last stored {last}", n.reading.seq),
                            seq: Some(n.reading.seq),
                        },
                    }
                }
                Verdict::Reject(r) => r,
            };
            s.metrics.reject(rejection.code.name());
            rejected.push(NewRejection {
                serial: Some(msg.serial.clone()),
                seq: rejection.seq,
                code: rejection.code as u16,
                reason: rejection.reason.clone(),
                at_ms,
            });
            replies.push((msg.serial.clone(), StatusReply::new(rejection.code, rejection.seq, rejection.reason)));
        }
        let started = Instant::now();
        // Durable first. A failed commit (disk full, I/O error) is retried:
        // the messages stay unacknowledged until it succeeds.
        let mut backoff = Duration::from_millis(100);
        while let Err(e) = store.commit(&accepted, &rejected) {
            tracing::error!(error = %e, readings = accepted.len(), "commit failed; retrying");
            std::thread::sleep(backoff);
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
        let committed = Instant::now();
        let commit_us = committed.duration_since(started).as_micros() as u64;
        last_seqs.extend(tentative);
        s.metrics.stored.inc_by(accepted.len() as u64);
        if !accepted.is_empty() {
            s.committed.fetch_add(accepted.len() as u64, Ordering::Release);
            s.wake_anchor.notify_one();
        }
        if let Some(hook) = &s.on_commit {
            hook(&accepted, committed);
        }
        s.runtime.block_on(async {
            s.acks.done_many(acks).await;
            for (serial, reply) in replies {
                tracing::debug!(serial, code = reply.code as u16, reason = %reply.reason, "rejected");
                let topic = s.topics.device(&serial, DeviceTopic::Status);
                let body = serde_json::to_vec(&reply).unwrap_or_default();
                if let Err(e) = s.client.publish(topic, QoS::AtLeastOnce, false, body).await {
                    tracing::warn!(error = %e, "status reply not sent");
                }
            }
        });
        s.health.committed(handled, now_ms());
        tracing::debug!(
            readings = accepted.len(),
            commit_us,
            ack_us = committed.elapsed().as_micros() as u64,
            "group committed"
        );
    }
    // After the last commit: the next start reads one row a device and
    // nothing after it.
    if let Err(e) = store.save_last_readings() {
        tracing::warn!(error = %e, "each device's last reading not saved; the next start reads the readings since the last save");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use healthsense_abi::Reading;

    fn reading(seq: u64, sig: u8) -> NewReading {
        NewReading {
            serial: "HS-1".into(),
            reading: Reading { deviceId: B256::repeat_byte(1), seq, ..Default::default() },
            signature: [sig; 65],
            received_ms: 0,
        }
    }

    #[test]
    fn the_intake_numbers_groups_in_arrival_order_and_leaves_no_message_without_a_job() {
        let mut w = Waiting::default();
        // The first GROUPS_IN_FLIGHT messages each start a job; later ones wait for those.
        let started: Vec<bool> = (0..6).map(|m| w.push(m)).collect();
        assert_eq!(started, [true, true, true, true, false, false]);
        // A job takes everything waiting, up to the batch limit, numbered as taken.
        assert_eq!(w.take(4), Some((0, vec![0, 1, 2, 3])));
        assert_eq!(w.take(4), Some((1, vec![4, 5])));
        // Jobs that find nothing end; the last running ones still count.
        assert_eq!((w.take(4), w.take(4), w.jobs), (None, None, 2));
        // A message while jobs run and fewer than the limit: a new job starts.
        assert!(w.push(6));
        assert_eq!(w.take(4), Some((2, vec![6])));
        assert_eq!((w.take(4), w.take(4), w.take(4)), (None, None, None));
        assert_eq!(w.jobs, 0, "every job ended, no message waits");
        assert!(w.push(7), "an idle intake starts a job for the next message");
    }

    /// Feeds parts (group, part, last, seqs) to an [`ArrivalOrder`]; returns the
    /// sequence numbers due after each.
    fn due(order: &mut ArrivalOrder<Vec<u64>>, parts: &[(u64, usize, bool, &[u64])]) -> Vec<Vec<u64>> {
        parts
            .iter()
            .map(|&(group, part, last, seqs)| {
                let mut due: Vec<Vec<u64>> = Vec::new();
                order.arrived(group, part, last, seqs.to_vec(), &mut due);
                due.concat()
            })
            .collect()
    }

    #[test]
    fn groups_verified_out_of_order_are_due_in_arrival_order() {
        let mut order = ArrivalOrder::default();
        // Groups 2 and 1 first: nothing is due without group 0.
        let got = due(&mut order, &[(2, 0, true, &[3]), (1, 0, true, &[2]), (0, 0, true, &[1])]);
        assert_eq!(got, [vec![], vec![], vec![1, 2, 3]]);
        // An empty group (every message rejected) still counts.
        assert_eq!(due(&mut order, &[(4, 0, true, &[4]), (3, 0, true, &[])]), [vec![], vec![4]]);
    }

    #[test]
    fn a_groups_first_part_is_due_at_once_but_never_before_an_earlier_groups_last() {
        let mut order = ArrivalOrder::default();
        assert_eq!(due(&mut order, &[(0, 0, false, &[1])]), [vec![1]], "group 0's first part waits for nothing");
        // Group 1 is complete, group 0 is not: only group 0's parts are due.
        let got = due(&mut order, &[(1, 0, true, &[11, 3]), (0, 2, false, &[5]), (0, 1, false, &[2])]);
        assert_eq!(got, [vec![], vec![], vec![2, 5]]);
        assert_eq!(due(&mut order, &[(0, 3, true, &[])]), [vec![11, 3]], "group 1 follows group 0's last part");
    }

    #[test]
    fn sequence_tells_fresh_redelivered_and_replayed_apart() {
        let none = || None;
        assert_eq!(sequence(&reading(1, 1), None, &[], none), Sequence::Fresh);
        assert_eq!(sequence(&reading(5, 1), Some(4), &[], none), Sequence::Fresh);
        // Same number earlier in the group: identical is a redelivery, different a replay.
        let group = [reading(5, 1)];
        assert_eq!(sequence(&reading(5, 1), Some(5), &group, none), Sequence::Redelivery);
        assert_eq!(sequence(&reading(5, 2), Some(5), &group, none), Sequence::Replay(5));
        // Already stored: compare with the stored signature.
        assert_eq!(sequence(&reading(3, 7), Some(9), &[], || Some(vec![7; 65])), Sequence::Redelivery);
        assert_eq!(sequence(&reading(3, 8), Some(9), &[], || Some(vec![7; 65])), Sequence::Replay(9));
        assert_eq!(sequence(&reading(3, 8), Some(9), &[], none), Sequence::Replay(9));
    }

    fn group(ticket: u64) -> Group {
        let incoming = Incoming {
            publish: Publish::new("t", QoS::AtLeastOnce, vec![]),
            ticket,
            serial: "HS-1".into(),
            received: Instant::now(),
        };
        let rejection = Rejection { code: Code::Malformed, reason: String::new(), seq: None };
        Group { items: vec![(incoming, Verdict::Reject(rejection))] }
    }

    fn tickets(g: Option<Group>) -> Option<u64> {
        g.map(|g| g.items[0].0.ticket)
    }

    #[test]
    fn groups_verified_out_of_order_reach_the_writer_in_arrival_order() {
        let (tx, rx) = std::sync::mpsc::channel();
        let mut ordered = InOrder::new(rx);
        // Group 1 finishes first: nothing is due until group 0 arrives.
        tx.send((1, group(11))).unwrap();
        tx.send((2, group(12))).unwrap();
        assert_eq!(tickets(ordered.next(false)), None);
        tx.send((0, group(10))).unwrap();
        assert_eq!(tickets(ordered.next(false)), Some(10));
        assert_eq!(tickets(ordered.next(false)), Some(11));
        assert_eq!(tickets(ordered.next(true)), Some(12));
        // Closed and drained: the writer stops.
        tx.send((3, group(13))).unwrap();
        drop(tx);
        assert_eq!(tickets(ordered.next(true)), Some(13));
        assert_eq!(tickets(ordered.next(true)), None);
    }
}
