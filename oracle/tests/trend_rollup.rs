//! The trend rollup (`healthsense_oracle::trend`) against the raw
//! aggregation of the same readings, in a real SQLite hub store: readings
//! arriving out of order and hours late, batched and not yet batched, across
//! a restart, and a store from before the rollup filled when opened.

use alloy::primitives::{Address, B256};
use healthsense_abi::Reading;
use healthsense_oracle::store::{Binding, Mode, NewReading, Store, StoreError};
use healthsense_oracle::trend::{trend, Source};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

fn binding() -> Binding {
    Binding { chain_id: 31_337, contract: Address::repeat_byte(1), hub: Address::repeat_byte(2) }
}

fn reading(rng: &mut rand::rngs::StdRng, device: B256, seq: u64, ts: u64) -> NewReading {
    // Some vitals unmeasured (0) now and then, as devices send them.
    let mut v = |lo: u16, hi: u16| if rng.random_ratio(1, 20) { 0 } else { rng.random_range(lo..=hi) };
    let reading = Reading {
        deviceId: device,
        seq,
        timestamp: ts,
        heartRate: v(35, 140),
        respRate: v(6, 30),
        spo2: v(85, 100),
        systolic: v(80, 230),
        diastolic: v(40, 120),
        temperature: v(3_400, 4_100),
        consciousness: rng.random_range(1..=5),
    };
    NewReading { serial: format!("S-{device}"), reading, signature: [0; 65], received_ms: ts }
}

/// Every way the API asks (minute widths, odd widths, one bucket, ranges cut
/// mid-minute): the rollup's answer is the raw aggregation's.
fn assert_equal(store: &Store, devices: &[B256], t0: u64, span: u64, when: &str) {
    for &d in devices {
        for width in [1_000, 7_000, 60_000, 180_000, 3_600_000, 1_000_000_000_000] {
            for (from, to) in [(t0, t0 + span), (t0 + 12_345, t0 + span - 54_321), (t0 - t0 % 60_000 + 60_000, t0 - t0 % 60_000 + 180_000 - 1)] {
                let rolled = trend(store, d, from, to, width, Source::Rollup).unwrap();
                let raw = trend(store, d, from, to, width, Source::Raw).unwrap();
                assert!(!raw.is_empty(), "{when}: the comparison saw readings");
                assert_eq!(rolled, raw, "{when}: device {d}, width {width}, {from}..={to}");
            }
        }
    }
}

fn count(store: &Store, device: B256) -> u64 {
    trend(store, device, 0, u64::MAX / 2, 60_000 * 1_000_000_000, Source::Rollup).unwrap().values().map(|b| b.n).sum()
}

/// The rollup's watermark: it holds every batch up to this one.
fn watermark(path: &std::path::Path) -> u64 {
    let conn = rusqlite::Connection::open(path).unwrap();
    conn.query_row("SELECT value FROM meta WHERE key = 'trend_rolled_to'", [], |r| r.get::<_, String>(0)).unwrap().parse().unwrap()
}

#[test]
fn the_rollup_catches_up_in_writes_of_many_batches_and_trends_stay_exact_in_between() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hub.sqlite");
    let mut rng = rand::rngs::StdRng::seed_from_u64(22);
    let devices: Vec<B256> = (1..=5u8).map(B256::repeat_byte).collect();
    let t0 = 1_780_000_000_000;
    let mut store = Store::open(&path, binding()).unwrap();
    let mut seqs = vec![0u64; devices.len()];
    let mut rows = Vec::new();
    for s in 0..6_000u64 {
        for (k, &d) in devices.iter().enumerate() {
            seqs[k] += 1;
            let jitter = rng.random_range(0..1_000);
            rows.push(reading(&mut rng, d, seqs[k], t0 + s * 1_000 + jitter));
        }
    }
    rows.shuffle(&mut rng);
    store.commit(&rows, &[]).unwrap();
    let per_batch = 2_000;
    let flush_batches = (healthsense_oracle::trend::FLUSH_READINGS / per_batch) as u64;
    // The batches wait in the cutter's memory until FLUSH_READINGS.
    for seq in 1..flush_batches {
        store.cut_batch(seq, per_batch, Mode::Hash, 0).unwrap().unwrap();
    }
    assert_eq!(watermark(&path), 0, "below the flush size, the batches wait in memory");
    let span = 6_000 * 1_000;
    assert_equal(&store, &devices, t0, span, "batches beyond the watermark");
    store.cut_batch(flush_batches, per_batch, Mode::Hash, 0).unwrap().unwrap();
    assert_eq!(watermark(&path), flush_batches, "written once FLUSH_READINGS were cut");
    assert_equal(&store, &devices, t0, span, "just written");
    // A crash loses the cutter's memory: those batches are read back.
    store.cut_batch(flush_batches + 1, per_batch, Mode::Hash, 0).unwrap().unwrap();
    store.cut_batch(flush_batches + 2, per_batch, Mode::Hash, 0).unwrap().unwrap();
    drop(store);
    let mut store = Store::open(&path, binding()).unwrap();
    assert_equal(&store, &devices, t0, span, "after a crash");
    store.cut_batch(flush_batches + 3, per_batch, Mode::Hash, 0).unwrap().unwrap();
    assert_eq!(watermark(&path), flush_batches + 3, "the first cut after a crash catches up from the readings");
    // A shutdown writes what the memory holds.
    store.cut_batch(flush_batches + 4, per_batch, Mode::Hash, 0).unwrap().unwrap();
    assert_eq!(watermark(&path), flush_batches + 3);
    store.write_rollup();
    assert_eq!(watermark(&path), flush_batches + 4);
    let mut batch = flush_batches + 5;
    while store.cut_batch(batch, per_batch, Mode::Hash, 0).unwrap().is_some() {
        batch += 1;
    }
    assert_equal(&store, &devices, t0, span, "every reading batched");
    assert_eq!(devices.iter().map(|&d| count(&store, d)).collect::<Vec<_>>(), seqs, "every reading counted once");
}

#[test]
fn the_rollup_equals_the_raw_aggregation_across_late_readings_and_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hub.sqlite");
    let mut rng = rand::rngs::StdRng::seed_from_u64(19);
    let devices = [B256::repeat_byte(0xa), B256::repeat_byte(0xb)];
    let t0 = 1_780_000_000_123; // not on a minute: ranges cut minutes
    let span = 3 * 3_600_000;
    let mut store = Store::open(&path, binding()).unwrap();
    // Two devices at about 1 Hz, each minute's readings stored in a shuffled
    // order; a tenth held back to arrive hours late.
    let (mut late, mut seqs, mut batch) = (Vec::new(), [0u64; 2], 1);
    for minute in 0..span / 60_000 {
        let mut rows = Vec::new();
        for (k, &d) in devices.iter().enumerate() {
            for s in 0..60 {
                seqs[k] += 1;
                let jitter = rng.random_range(0..1_000);
                let r = reading(&mut rng, d, seqs[k], t0 + minute * 60_000 + s * 1_000 + jitter);
                if rng.random_ratio(1, 10) {
                    late.push(r)
                } else {
                    rows.push(r)
                }
            }
        }
        rows.shuffle(&mut rng);
        store.commit(&rows, &[]).unwrap();
        if minute % 20 == 10 {
            while store.cut_batch(batch, 500, Mode::Hash, 0).unwrap().is_some() {
                batch += 1;
            }
        }
    }
    assert!(store.unbatched().unwrap().0 > 0, "some readings not batched yet: read raw next to the rollup");
    assert_equal(&store, &devices, t0, span, "batched and unbatched");
    drop(store);

    // A restart, then the late readings and their batches.
    let mut store = Store::open(&path, binding()).unwrap();
    assert_equal(&store, &devices, t0, span, "after a restart");
    late.shuffle(&mut rng);
    store.commit(&late, &[]).unwrap();
    while store.cut_batch(batch, 700, Mode::Hash, 0).unwrap().is_some() {
        batch += 1;
    }
    assert_eq!(store.unbatched().unwrap().0, 0);
    assert_equal(&store, &devices, t0, span, "late readings batched");
    assert_eq!(devices.map(|d| count(&store, d)), seqs, "every reading counted once");
    drop(store);

    // A store from before the rollup: filled when opened.
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute_batch("DROP TABLE trend_minutes; DELETE FROM meta WHERE key = 'trend_rollup';").unwrap();
    drop(conn);
    let store = Store::open(&path, binding()).unwrap();
    assert_equal(&store, &devices, t0, span, "a store filled at open");
    assert_eq!(devices.map(|d| count(&store, d)), seqs);
    drop(store);

    // A damaged rollup row is an error, not a wrong trend.
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute("UPDATE trend_minutes SET agg = x'00'", []).unwrap();
    drop(conn);
    let store = Store::open(&path, binding()).unwrap();
    let found = trend(&store, devices[0], t0, t0 + span, 60_000, Source::Rollup);
    assert!(matches!(found, Err(StoreError::Corrupt(_))), "{found:?}");
}
