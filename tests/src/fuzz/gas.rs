//! Gas per engine and function over the fuzzing runs, for `docs/GAS.md`.

use std::collections::BTreeMap;

/// Gas of successful state-changing calls, by engine and function.
#[derive(Debug, Default, Clone)]
pub struct GasBook {
    samples: BTreeMap<(&'static str, &'static str), Vec<u64>>,
}

/// Summary of one function's gas on one engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GasFigures {
    /// Successful calls measured.
    pub count: usize,
    /// Median (the typical call).
    pub median: u64,
    /// Largest seen.
    pub max: u64,
}

impl GasBook {
    /// Records one call.
    pub fn record(&mut self, engine: &'static str, function: &'static str, gas: u64) {
        self.samples.entry((engine, function)).or_default().push(gas);
    }

    /// Adds another book's samples.
    pub fn merge(&mut self, other: GasBook) {
        for (k, mut v) in other.samples {
            self.samples.entry(k).or_default().append(&mut v);
        }
    }

    /// Median and max of `function` on `engine`, if any call succeeded.
    pub fn figures(&self, engine: &str, function: &str) -> Option<GasFigures> {
        let (_, v) = self.samples.iter().find(|((e, f), _)| *e == engine && *f == function)?;
        let mut v = v.clone();
        v.sort_unstable();
        Some(GasFigures { count: v.len(), median: v[v.len() / 2], max: v[v.len() - 1] })
    }

    /// Engines with samples.
    pub fn engines(&self) -> Vec<&'static str> {
        let mut e: Vec<&'static str> = self.samples.keys().map(|(e, _)| *e).collect();
        e.dedup();
        e
    }
}
