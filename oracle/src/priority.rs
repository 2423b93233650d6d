//! The hub's CPU priority: real time while it uses little of the machine,
//! normal while it uses much (`[priority]`, docs/ORACLE.md, "Priority").
//!
//! An alert crosses about ten threads (broker, MQTT loop, verification,
//! scoring, broker again). At normal priority each wake-up queues behind
//! whatever else runs on the machine: with another program holding 70 % of
//! both cores of a 2-core hub the alert p99 was 9.4-22.7 ms, depending on
//! the hour, and no change inside the hub moved it (docs/BENCHMARKS.md,
//! issue 22). At `SCHED_RR` priority 1 a waking hub thread takes a core
//! from any normal program at once: 4.9-5.8 ms, against 9.1-12.0 ms at
//! normal priority in runs alternating with it.
//!
//! A real-time thread that keeps a core busy starves the machine, so the
//! [`Governor`] steps the hub back to normal priority while it uses more
//! than `max_cpu_percent` of all cores (catching up a backlog), and returns
//! it to real time once it uses under half of that. Work on one thread,
//! such as sealing an archive, may hold one core of two at real time.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Deserialize;

use crate::metrics::Metrics;

/// `[priority]` in the config.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PriorityConfig {
    /// Run the hub's threads at real-time priority (`SCHED_RR` 1) when the
    /// process may (root, `CAP_SYS_NICE`, or `LimitRTPRIO=1` in its unit).
    pub realtime: bool,
    /// Above this share of all cores, over a second, the hub steps back to
    /// normal priority; it returns to real time under half of it, over two
    /// seconds (1-100).
    pub max_cpu_percent: u8,
}

impl Default for PriorityConfig {
    fn default() -> Self {
        Self { realtime: true, max_cpu_percent: 60 }
    }
}

impl PriorityConfig {
    /// Checks the budget's range.
    pub fn validate(&self) -> anyhow::Result<()> {
        if !(1..=100).contains(&self.max_cpu_percent) {
            anyhow::bail!("priority.max_cpu_percent {}: use 1-100 (a share of all cores)", self.max_cpu_percent);
        }
        Ok(())
    }
}

/// A scheduling class for every thread of the process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Class {
    /// `SCHED_RR` at [`REALTIME_PRIORITY`].
    Realtime,
    /// `SCHED_OTHER`, the nice value kept.
    Normal,
}

/// The lowest real-time priority: above every normal thread, below the
/// kernel's interrupt threads (50).
pub const REALTIME_PRIORITY: i32 = 1;

/// How often the governor reads the process's CPU time.
const TICK: Duration = Duration::from_millis(250);
/// Ticks over the budget, on average, before stepping down (one second).
const DOWN_TICKS: usize = 4;
/// Ticks under half the budget, on average, before stepping up (two seconds).
const UP_TICKS: usize = 8;

/// Sets every thread of this process to `class`, and returns how many it
/// set. Threads started later take their starter's class.
pub fn set_all(class: Class) -> std::io::Result<usize> {
    set_threads("/proc/self/task", class)
}

/// Sets every thread of process `pid` to `class` (a broker on the hub's
/// machine, say), and returns how many it set.
pub fn set_process(pid: u32, class: Class) -> std::io::Result<usize> {
    set_threads(&format!("/proc/{pid}/task"), class)
}

/// Each thread of process `pid`: its name and its scheduling policy
/// (`libc::SCHED_*`; `None` for a stat line that does not parse). A thread
/// that ends while they are read is left out.
pub fn thread_policies(pid: u32) -> std::io::Result<Vec<(String, Option<i32>)>> {
    let mut threads = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        if let Ok(stat) = std::fs::read_to_string(task?.path().join("stat")) {
            threads.push(parse_stat(&stat));
        }
    }
    Ok(threads)
}

/// The name and policy in a `/proc/.../stat` line: "tid (name) state ...",
/// the policy field 41, the 39th after the name (which may hold spaces
/// and parentheses).
fn parse_stat(stat: &str) -> (String, Option<i32>) {
    let Some((head, tail)) = stat.rsplit_once(')') else { return (String::new(), None) };
    let name = head.split_once('(').map_or("", |(_, n)| n).to_string();
    (name, tail.split_whitespace().nth(38).and_then(|p| p.parse().ok()))
}

#[cfg(target_os = "linux")]
fn set_threads(tasks: &str, class: Class) -> std::io::Result<usize> {
    let (policy, priority) = match class {
        Class::Realtime => (libc::SCHED_RR, REALTIME_PRIORITY),
        Class::Normal => (libc::SCHED_OTHER, 0),
    };
    let param = libc::sched_param { sched_priority: priority };
    let mut set = 0;
    for entry in std::fs::read_dir(tasks)? {
        let Some(tid) = entry?.file_name().to_str().and_then(|s| s.parse::<libc::pid_t>().ok()) else { continue };
        // SAFETY: a plain system call on a thread id; `param` outlives it.
        if unsafe { libc::sched_setscheduler(tid, policy, &param) } == 0 {
            set += 1;
            continue;
        }
        let e = std::io::Error::last_os_error();
        // A thread that ended since the directory was read.
        if e.raw_os_error() != Some(libc::ESRCH) {
            return Err(e);
        }
    }
    Ok(set)
}

/// Real-time priority is Linux's; elsewhere the hub runs at normal priority.
#[cfg(not(target_os = "linux"))]
fn set_threads(_tasks: &str, _class: Class) -> std::io::Result<usize> {
    Err(std::io::Error::new(std::io::ErrorKind::Unsupported, "real-time priority is implemented for Linux only"))
}

/// CPU time of the whole process (every thread) so far.
#[cfg(target_os = "linux")]
fn process_cpu() -> Duration {
    let mut t = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: writes one timespec we own.
    if unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut t) } != 0 {
        return Duration::ZERO;
    }
    Duration::new(u64::try_from(t.tv_sec).unwrap_or(0), u32::try_from(t.tv_nsec).unwrap_or(0))
}

#[cfg(not(target_os = "linux"))]
fn process_cpu() -> Duration {
    Duration::ZERO
}

/// Decides the class from the process's CPU use, one tick at a time.
#[derive(Debug)]
pub struct Governor {
    max_share: f64,
    class: Class,
    shares: VecDeque<f64>,
}

impl Governor {
    /// A governor for a process now in `class`, with a budget of
    /// `max_cpu_percent` of all cores.
    pub fn new(max_cpu_percent: u8, class: Class) -> Self {
        Self { max_share: f64::from(max_cpu_percent) / 100.0, class, shares: VecDeque::with_capacity(UP_TICKS) }
    }

    /// The class the process should be in.
    pub fn class(&self) -> Class {
        self.class
    }

    /// Takes one tick's CPU use as a share of all cores (0.0-1.0); returns
    /// the new class when it changes.
    pub fn tick(&mut self, share: f64) -> Option<Class> {
        if self.shares.len() == UP_TICKS {
            self.shares.pop_front();
        }
        self.shares.push_back(share);
        let mean_of_last = |n: usize| {
            (self.shares.len() >= n).then(|| self.shares.iter().rev().take(n).sum::<f64>() / n as f64)
        };
        let next = match self.class {
            Class::Realtime if mean_of_last(DOWN_TICKS).is_some_and(|m| m > self.max_share) => Class::Normal,
            Class::Normal if mean_of_last(UP_TICKS).is_some_and(|m| m <= self.max_share / 2.0) => Class::Realtime,
            _ => return None,
        };
        self.class = next;
        self.shares.clear();
        Some(next)
    }
}

/// Puts the process at real-time priority if `cfg` asks and the process
/// may; returns the governor to run, or `None` when the hub stays at
/// normal priority (said in the log once).
pub fn raise(cfg: &PriorityConfig) -> Option<Governor> {
    if !cfg.realtime {
        tracing::info!("priority.realtime = false: the hub's threads run at normal priority");
        return None;
    }
    match set_all(Class::Realtime) {
        Ok(threads) => {
            tracing::info!(
                threads,
                max_cpu_percent = cfg.max_cpu_percent,
                "the hub runs at real-time priority (SCHED_RR {REALTIME_PRIORITY}) while it uses under priority.max_cpu_percent of the machine"
            );
            Some(Governor::new(cfg.max_cpu_percent, Class::Realtime))
        }
        Err(e) => {
            // Threads set before the refusal go back with the rest.
            let _ = set_all(Class::Normal);
            tracing::warn!(
                error = %e,
                "the hub runs at normal priority, so alerts wait behind other programs on a busy machine; \
                 allow real-time priority (CAP_SYS_NICE, or LimitRTPRIO=1 in the systemd unit) or set priority.realtime = false"
            );
            None
        }
    }
}

/// Runs `governor` for the life of the process: reads the process's CPU
/// time every quarter second and steps its threads between real-time and
/// normal priority.
pub async fn govern(mut governor: Governor, metrics: Arc<Metrics>) {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    metrics.realtime.set(1);
    let mut ticks = tokio::time::interval(TICK);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let (mut last_at, mut last_cpu) = (Instant::now(), process_cpu());
    loop {
        ticks.tick().await;
        let (now, cpu) = (Instant::now(), process_cpu());
        let wall = now.duration_since(last_at).as_secs_f64();
        let share = if wall > 0.0 { cpu.saturating_sub(last_cpu).as_secs_f64() / (wall * cores) } else { 0.0 };
        (last_at, last_cpu) = (now, cpu);
        let Some(class) = governor.tick(share) else { continue };
        let budget = governor.max_share * 100.0;
        match set_all(class) {
            Ok(_) if class == Class::Normal => {
                metrics.realtime.set(0);
                metrics.priority_steps_down.inc();
                tracing::warn!(
                    budget_percent = budget,
                    "the hub used more than priority.max_cpu_percent of the machine for a second: normal priority until it uses under half of that"
                );
            }
            Ok(_) => {
                metrics.realtime.set(1);
                tracing::info!("the hub is back at real-time priority");
            }
            Err(e) => {
                // Leave every thread at normal priority, and stop governing.
                let _ = set_all(Class::Normal);
                metrics.realtime.set(0);
                tracing::warn!(error = %e, "changing the hub's priority failed: normal priority from now on");
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(governor: &mut Governor, shares: &[f64]) -> Vec<Option<Class>> {
        shares.iter().map(|&s| governor.tick(s)).collect()
    }

    #[test]
    fn a_second_over_the_budget_steps_down_and_a_shorter_burst_does_not() {
        let mut g = Governor::new(60, Class::Realtime);
        // Three quarters of a second at full use, then quiet: the mean of
        // the last four ticks stays under 60 %.
        assert!(run(&mut g, &[1.0, 1.0, 0.3, 0.0, 0.0, 0.0, 0.0]).iter().all(Option::is_none));
        assert_eq!(g.class(), Class::Realtime);
        // 70 % for a second: down on the fourth tick, not before.
        assert_eq!(run(&mut g, &[0.7; DOWN_TICKS]), vec![None, None, None, Some(Class::Normal)]);
        assert_eq!(g.class(), Class::Normal);
    }

    #[test]
    fn between_half_the_budget_and_the_budget_the_class_stays_as_it_is() {
        let mut normal = Governor::new(60, Class::Normal);
        let mut realtime = Governor::new(60, Class::Realtime);
        assert!(run(&mut normal, &[0.45; 20]).iter().all(Option::is_none));
        assert!(run(&mut realtime, &[0.45; 20]).iter().all(Option::is_none));
    }

    #[test]
    fn back_to_real_time_after_two_seconds_under_half_the_budget() {
        let mut g = Governor::new(60, Class::Normal);
        let mut shares = vec![0.2; UP_TICKS];
        let last = shares.len() - 1;
        shares[last] = 0.3;
        let mut expected = vec![None; UP_TICKS];
        expected[last] = Some(Class::Realtime);
        assert_eq!(run(&mut g, &shares), expected);
        // The window starts afresh: three busy ticks are not a second.
        assert!(run(&mut g, &[1.0; DOWN_TICKS - 1]).iter().all(Option::is_none));
        assert_eq!(g.tick(1.0), Some(Class::Normal));
    }

    #[cfg(target_os = "linux")]
    fn policy_of_this_thread() -> i32 {
        // SAFETY: reads the calling thread's policy.
        unsafe { libc::sched_getscheduler(0) }
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn every_thread_changes_class_and_threads_started_later_take_their_starters() {
        // The class is set on every thread of the process, the test
        // harness's too: the check runs in a fresh copy of the test binary.
        if !crate::in_a_fresh_test_process(
            "priority::tests::every_thread_changes_class_and_threads_started_later_take_their_starters",
        ) {
            return;
        }
        let (to_waiting, waiting) = std::sync::mpsc::channel::<()>();
        let older = std::thread::spawn(move || {
            let _ = waiting.recv();
            policy_of_this_thread()
        });
        match set_all(Class::Realtime) {
            Ok(n) => {
                assert!(n >= 2, "set {n} threads");
                assert_eq!(policy_of_this_thread(), libc::SCHED_RR);
                assert_eq!(std::thread::spawn(policy_of_this_thread).join().unwrap(), libc::SCHED_RR);
                to_waiting.send(()).unwrap();
                assert_eq!(older.join().unwrap(), libc::SCHED_RR);
                set_all(Class::Normal).unwrap();
                assert_eq!(policy_of_this_thread(), libc::SCHED_OTHER);
                assert_eq!(std::thread::spawn(policy_of_this_thread).join().unwrap(), libc::SCHED_OTHER);
            }
            // Without CAP_SYS_NICE or RLIMIT_RTPRIO: refused, nothing changed.
            Err(e) => {
                assert_eq!(e.kind(), std::io::ErrorKind::PermissionDenied, "{e}");
                to_waiting.send(()).unwrap();
                assert_eq!(older.join().unwrap(), libc::SCHED_OTHER);
            }
        }
    }

    #[test]
    fn a_threads_name_and_policy_are_read_from_its_stat_line() {
        // A thread name with a space and a parenthesis, policy 2 (SCHED_RR).
        let rr = "4242 (tokio rt) worker) S 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 21 22 23 24 25 26 27 28 29 30 31 32 33 34 35 36 1 2 0 0";
        assert_eq!(parse_stat(rr), ("tokio rt) worker".to_string(), Some(libc::SCHED_RR)));
        assert_eq!(parse_stat("4242 (cut) S 1 2").1, None);
        assert_eq!(parse_stat(""), (String::new(), None));
        // This process's own threads, one of them this one.
        let own = thread_policies(std::process::id()).unwrap();
        assert!(own.iter().any(|(_, p)| p.is_some()), "{own:?}");
        // A process that is gone.
        assert!(thread_policies(u32::MAX).is_err());
    }

    #[test]
    fn the_budget_must_be_a_share_of_the_cores() {
        assert!(PriorityConfig { realtime: true, max_cpu_percent: 0 }.validate().is_err());
        assert!(PriorityConfig { realtime: true, max_cpu_percent: 101 }.validate().is_err());
        assert!(PriorityConfig::default().validate().is_ok());
    }
}
