//! `--contend`: another load on the machine's cores while the bench runs.
//!
//! A shared VM has slow hours: other guests take the cores (steal), and
//! every latency tail the bench measures grows with them. That made A/B
//! comparisons hostage to the hour. This stands in for it on demand: one
//! process per core, each in a session of its own (so the kernel's
//! autogroups weigh each as one more user of the machine, as they would a
//! vCPU of another guest, not as a thread of the bench), keeps a core busy
//! a given share of the time, in bursts of about 3 ms at random phases.

use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use rand::Rng;

use super::KillOnDrop;

/// Set in the child: the share of each core it burns, in percent.
const CHILD_VAR: &str = "HEALTHSENSE_BENCH_CONTEND_CHILD";

/// The share in force, for the reports.
static PERCENT: AtomicU8 = AtomicU8::new(0);

/// Mean length of one busy burst.
const BURST_US: f64 = 3_000.0;

/// The share of each core the other load takes (0: none), for the reports.
pub fn percent() -> u8 {
    PERCENT.load(Ordering::Relaxed)
}

/// Starts the other load (`percent` of each core; none for 0). It ends when
/// the returned guards are dropped, or with the bench if the bench dies.
pub fn start(percent: u8) -> Result<Vec<KillOnDrop>> {
    if percent == 0 {
        return Ok(Vec::new());
    }
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let children = (0..cores).map(|_| spawn(percent)).collect::<Result<Vec<_>>>()?;
    PERCENT.store(percent, Ordering::Relaxed);
    Ok(children)
}

fn spawn(percent: u8) -> Result<KillOnDrop> {
    use std::os::unix::process::CommandExt;
    let mut cmd = std::process::Command::new(std::env::current_exe()?);
    cmd.env(CHILD_VAR, percent.to_string())
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
    let idle_us = BURST_US * (100.0 - percent) / percent;
    let mut rng = rand::rng();
    loop {
        let until = Instant::now() + Duration::from_micros((BURST_US * rng.random_range(0.5..1.5)) as u64);
        while Instant::now() < until {
            std::hint::spin_loop();
        }
        std::thread::sleep(Duration::from_micros((idle_us * rng.random_range(0.5..1.5)) as u64));
    }
}
