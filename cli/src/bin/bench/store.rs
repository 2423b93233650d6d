//! `store`: what the anchorer's batch cut costs the ingest writer, on the hub
//! store alone (no broker, no chain, no signatures).
//!
//! A store of `--readings` readings from `--beds` devices, all batched; then
//! two phases of `--latency-seconds` each, ingest committing `--rate`
//! readings/s in groups every 10 ms on its own connection (checkpoints left
//! to another connection, as in the hub): the baseline with no cut, then the
//! same with a `--beds`-reading batch cut every second by a second
//! connection (`Store::cut_batch`). Reported: commit time p50/p99/max of
//! each phase, the cut's own median length, and the cutter's CPU time per
//! 1,000 readings cut (trend rollup writes included, which come every
//! `trend::FLUSH_READINGS` readings, not every cut).
//!
//! Before the phases, what a restarted hub reads first: each device's last
//! reading (`Store::last_readings`), walking every stored reading (the
//! baseline: a store never saved) and from the saved rows after
//! `Store::save_last_readings`, with that save's own time; after the
//! phases, the time of a save of the readings they stored (the hub's
//! periodic save, in write transactions of at most 1,000 devices).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use alloy::primitives::Address;
use anyhow::{Context, Result};
use healthsense_oracle::store::{Binding, Mode, NewReading, Store};
use serde_json::json;

/// Settings of the store benchmark.
pub struct Settings {
    /// Readings in the store before the phases.
    pub readings: usize,
    /// Devices the readings come from; also the batch size.
    pub beds: usize,
    /// Ingest rate, readings/s.
    pub rate: usize,
    /// Length of each phase.
    pub seconds: u64,
}

/// Readings for `beds` devices, one after another, round robin.
struct Feed {
    serials: Vec<String>,
    next: u64,
}

impl Feed {
    fn take(&mut self, n: usize) -> Vec<NewReading> {
        (0..n)
            .map(|_| {
                let beds = self.serials.len() as u64;
                let (bed, seq) = ((self.next % beds) as usize, self.next / beds + 1);
                self.next += 1;
                let serial = &self.serials[bed];
                NewReading {
                    serial: serial.clone(),
                    reading: crate::reading(serial, seq, self.next),
                    signature: [7; 65],
                    received_ms: healthsense_oracle::ingest::now_ms(),
                }
            })
            .collect()
    }
}

/// CPU time this thread has used, ms.
fn thread_cpu_ms() -> f64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes only to the timespec it is given.
    if unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) } != 0 {
        return f64::NAN;
    }
    ts.tv_sec as f64 * 1e3 + ts.tv_nsec as f64 / 1e6
}

/// Commit times (ms, sorted) of one phase of ingest at `rate` readings/s.
fn ingest(store: &mut Store, feed: &mut Feed, rate: usize, seconds: u64) -> Result<Vec<f64>> {
    let per_tick = (rate / 100).max(1);
    let start = Instant::now();
    let mut times = Vec::new();
    for tick in 1.. {
        if start.elapsed() >= Duration::from_secs(seconds) {
            break;
        }
        let group = feed.take(per_tick);
        let t = Instant::now();
        store.commit(&group, &[])?;
        times.push(t.elapsed().as_secs_f64() * 1e3);
        if let Some(wait) = (start + Duration::from_millis(tick * 10)).checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
    }
    times.sort_by(f64::total_cmp);
    Ok(times)
}

/// Runs the store benchmark.
pub fn run(s: &Settings, json_out: bool) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("hub.sqlite");
    let binding = Binding { chain_id: 31_337, contract: Address::repeat_byte(1), hub: Address::repeat_byte(2) };
    let open = || Store::open(&path, binding).with_context(|| format!("opening {}", path.display()));
    let (mut writer, mut cutter, checkpointer) = (open()?, open()?, open()?);
    writer.leave_checkpoints()?;
    let beds = s.beds.max(1);
    let mut feed = Feed { serials: (0..beds).map(|i| format!("HS-S{i:05}")).collect(), next: 0 };
    let mut batch = 1;
    for _ in 0..s.readings.div_ceil(1_000) {
        writer.commit(&feed.take(1_000), &[])?;
    }
    while cutter.cut_batch(batch, beds, Mode::Hash, 0)?.is_some() {
        batch += 1;
    }
    checkpointer.checkpoint()?;
    let prefilled = s.readings.div_ceil(1_000) * 1_000;
    let start_read = |store: &Store| -> Result<f64> {
        let mut times = (0..3)
            .map(|_| {
                let t = Instant::now();
                let n = store.last_readings()?.len();
                anyhow::ensure!(n == beds.min(prefilled), "{n} devices' last readings, expected {}", beds.min(prefilled));
                Ok(t.elapsed().as_secs_f64() * 1e3)
            })
            .collect::<Result<Vec<f64>>>()?;
        times.sort_by(f64::total_cmp);
        Ok(times[1])
    };
    let walk_ms = start_read(&writer)?;
    let t = Instant::now();
    writer.save_last_readings()?;
    let save_ms = t.elapsed().as_secs_f64() * 1e3;
    let saved_ms = start_read(&writer)?;

    let stop = Arc::new(AtomicBool::new(false));
    let checkpoints = {
        let stop = stop.clone();
        std::thread::spawn(move || -> Result<()> {
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_secs(1));
                checkpointer.checkpoint()?;
            }
            Ok(())
        })
    };
    let base = ingest(&mut writer, &mut feed, s.rate, s.seconds)?;

    let cutting = Arc::new(AtomicBool::new(true));
    let cuts = {
        let cutting = cutting.clone();
        std::thread::spawn(move || -> Result<(Vec<f64>, f64, u64)> {
            let (mut cuts, mut cpu, mut readings) = (Vec::new(), 0.0, 0);
            while cutting.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_secs(1));
                let (t, c) = (Instant::now(), thread_cpu_ms());
                if let Some(b) = cutter.cut_batch(batch, beds, Mode::Hash, 0)? {
                    batch += 1;
                    cuts.push(t.elapsed().as_secs_f64() * 1e3);
                    cpu += thread_cpu_ms() - c;
                    readings += u64::from(b.leaf_count);
                }
            }
            cuts.sort_by(f64::total_cmp);
            Ok((cuts, cpu, readings))
        })
    };
    let with_cuts = ingest(&mut writer, &mut feed, s.rate, s.seconds)?;
    cutting.store(false, Ordering::Relaxed);
    stop.store(true, Ordering::Relaxed);
    let (cuts, cut_cpu, cut_readings) = cuts.join().map_err(|_| anyhow::anyhow!("the cutting thread panicked"))??;
    let cpu_per_1000 = cut_cpu * 1_000.0 / cut_readings.max(1) as f64;
    checkpoints.join().map_err(|_| anyhow::anyhow!("the checkpoint thread panicked"))??;
    let t = Instant::now();
    let resaved = writer.save_last_readings()?;
    let resave_ms = t.elapsed().as_secs_f64() * 1e3;
    let phase_readings = (base.len() + with_cuts.len()) * (s.rate / 100).max(1);

    let stats = |t: &[f64]| (crate::percentile(t, 0.5), crate::percentile(t, 0.99), t.last().copied().unwrap_or(f64::NAN));
    let ((b50, b99, bmax), (c50, c99, cmax)) = (stats(&base), stats(&with_cuts));
    let cut_median = crate::percentile(&cuts, 0.5);
    if json_out {
        let phase = |(p50, p99, max): (f64, f64, f64), n: usize| json!({ "p50": p50, "p99": p99, "max": max, "commits": n });
        println!(
            "{}",
            json!({
                "rate_per_s": s.rate, "beds": beds, "prefilled": s.readings, "seconds": s.seconds,
                "commit_ms_without_cuts": phase((b50, b99, bmax), base.len()),
                "commit_ms_with_cuts": phase((c50, c99, cmax), with_cuts.len()),
                "cuts": cuts.len(), "cut_median_ms": cut_median, "cut_cpu_ms_per_1000_readings": cpu_per_1000,
                "start_last_readings_ms": { "saved": saved_ms, "walk_baseline": walk_ms, "first_save": save_ms },
                "save_after_phases": { "ms": resave_ms, "devices": resaved, "readings": phase_readings },
            })
        );
    } else {
        println!("HealthSense hub store: ingest commits at {} readings/s, {} devices, {} readings stored first", s.rate, beds, s.readings);
        println!("  without batch cuts      p50 {b50:.2} ms, p99 {b99:.2} ms, max {bmax:.2} ms  ({} commits, baseline)", base.len());
        println!(
            "  with a cut every second p50 {c50:.2} ms, p99 {c99:.2} ms, max {cmax:.2} ms  ({} commits; p99 {:.1}x, max {:.1}x the baseline)",
            with_cuts.len(),
            c99 / b99,
            cmax / bmax
        );
        println!("  batch cut ({beds} readings)  median {cut_median:.1} ms over {} cuts", cuts.len());
        println!("  the cutter's CPU          {cpu_per_1000:.2} ms per 1,000 readings cut (trend rollup writes included)");
        println!(
            "  start: last readings     {saved_ms:.1} ms from the saved rows vs {walk_ms:.1} ms walking all {prefilled} readings (baseline) = {:.2}x; first save {save_ms:.1} ms",
            saved_ms / walk_ms
        );
        println!(
            "  periodic save            {resave_ms:.1} ms for the phases' {phase_readings} readings from {resaved} devices"
        );
    }
    Ok(())
}
