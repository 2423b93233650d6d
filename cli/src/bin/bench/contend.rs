//! `--contend`: another load on the machine's cores while the bench runs.
//!
//! A shared VM has slow hours: other guests take the cores (steal), and
//! every latency tail the bench measures grows with them. That made A/B
//! comparisons hostage to the hour. This stands in for it on demand: one
//! process per core, each in a session of its own (so the kernel's
//! autogroups weigh each as one more user of the machine, as they would a
//! vCPU of another guest, not as a thread of the bench), keeps a core busy
//! a given share of the time, in bursts of about 3 ms at random phases
//! (`--contend-burst-us` sets their length). The load takes the bench's own
//! autogroup nice value, so it weighs as much as the bench's session
//! whatever the shell set.

use std::sync::atomic::{AtomicU32, AtomicU8, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use rand::Rng;

use super::KillOnDrop;

/// Set in the child: the share of each core it burns, in percent.
const CHILD_VAR: &str = "HEALTHSENSE_BENCH_CONTEND_CHILD";

/// Set in the child: the mean length of one busy burst, µs.
const BURST_VAR: &str = "HEALTHSENSE_BENCH_CONTEND_BURST_US";

/// Set in the child: the bench's autogroup nice value, which it takes.
const NICE_VAR: &str = "HEALTHSENSE_BENCH_CONTEND_NICE";

/// The share in force, for the reports.
static PERCENT: AtomicU8 = AtomicU8::new(0);

/// The burst length in force, µs, for the reports.
static BURST_US: AtomicU32 = AtomicU32::new(0);

/// The share of each core the other load takes (0: none), for the reports.
pub fn percent() -> u8 {
    PERCENT.load(Ordering::Relaxed)
}

/// The mean length of its bursts, µs (0: no other load), for the reports.
pub fn burst_us() -> u32 {
    BURST_US.load(Ordering::Relaxed)
}

/// Starts the other load (`percent` of each core in bursts of about
/// `burst_us`; none for 0). It ends when the returned guards are dropped,
/// or with the bench if the bench dies.
pub fn start(percent: u8, burst_us: u32) -> Result<Vec<KillOnDrop>> {
    if percent == 0 {
        return Ok(Vec::new());
    }
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let children = (0..cores).map(|_| spawn(percent, burst_us)).collect::<Result<Vec<_>>>()?;
    PERCENT.store(percent, Ordering::Relaxed);
    BURST_US.store(burst_us, Ordering::Relaxed);
    Ok(children)
}

/// The nice value of this process's autogroup (`/proc/self/autogroup`
/// reads `/autogroup-N nice V`); `None` where the kernel has none.
pub fn autogroup_nice() -> Option<i32> {
    parse_autogroup(&std::fs::read_to_string("/proc/self/autogroup").ok()?)
}

fn parse_autogroup(line: &str) -> Option<i32> {
    line.split_whitespace().skip_while(|w| *w != "nice").nth(1)?.parse().ok()
}

fn spawn(percent: u8, burst_us: u32) -> Result<KillOnDrop> {
    use std::os::unix::process::CommandExt;
    let mut cmd = std::process::Command::new(std::env::current_exe()?);
    cmd.env(CHILD_VAR, percent.to_string())
        .env(BURST_VAR, burst_us.to_string())
        // The load weighs as much as the bench's own session, whatever the
        // shell set: a bench at autogroup nice 19 (a build's setting left
        // in the shell) against a load at 0 measured the weights, not the hub.
        .env(NICE_VAR, autogroup_nice().unwrap_or(0).to_string())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null());
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() < 0 || libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    Ok(KillOnDrop(cmd.spawn().context("starting the --contend load")?))
}

/// In a child: burns `percent` of a core until killed. `None` when this
/// process is not one.
pub fn child() -> Option<std::convert::Infallible> {
    let percent: f64 = std::env::var(CHILD_VAR).ok()?.parse().ok()?;
    let burst_us: f64 = std::env::var(BURST_VAR).ok().and_then(|v| v.parse().ok()).unwrap_or(3_000.0);
    let idle_us = burst_us * (100.0 - percent) / percent;
    if let Some(nice) = std::env::var(NICE_VAR).ok().and_then(|v| v.parse::<i32>().ok()).filter(|n| *n != 0) {
        // A new session starts at 0; raising the value needs no privilege.
        if let Err(e) = std::fs::write("/proc/self/autogroup", nice.to_string()) {
            eprintln!("--contend: cannot set the load's autogroup nice to {nice}: {e}");
        }
    }
    let mut rng = rand::rng();
    loop {
        let until = Instant::now() + Duration::from_micros((burst_us * rng.random_range(0.5..1.5)) as u64);
        while Instant::now() < until {
            std::hint::spin_loop();
        }
        std::thread::sleep(Duration::from_micros((idle_us * rng.random_range(0.5..1.5)) as u64));
    }
}

#[cfg(test)]
mod tests {
    use super::parse_autogroup;

    #[test]
    fn the_autogroup_nice_value_is_read_from_the_procfs_line() {
        assert_eq!(parse_autogroup("/autogroup-1 nice 0\n"), Some(0));
        assert_eq!(parse_autogroup("/autogroup-106 nice -5\n"), Some(-5));
        assert_eq!(parse_autogroup("/autogroup-7 nice 19"), Some(19));
        assert_eq!(parse_autogroup("/autogroup-7"), None);
        assert_eq!(parse_autogroup(""), None);
    }
}
