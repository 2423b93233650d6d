//! The `--json` report: every figure with its target, whether it is met,
//! and the baseline of the same run it should be read against.
//!
//! ```json
//! {"mode":"oracle","figures":[{"metric":"ingest_queued_ratio","value":0.83,"unit":"ratio",
//!   "target":">= 0.80","met":true,"baseline":{"metric":"raw_k256_verify_per_s","value":15000}}],
//!  "machine":{...}}
//! ```

use serde_json::{json, Map, Value};

/// One measured figure.
#[derive(Clone)]
pub struct Figure {
    metric: String,
    value: f64,
    unit: &'static str,
    target: Option<(&'static str, f64)>,
    baseline: Option<(&'static str, f64)>,
    extra: Map<String, Value>,
}

impl Figure {
    /// A figure without a target of its own (context for the others).
    pub fn new(metric: impl Into<String>, value: f64, unit: &'static str) -> Self {
        Self { metric: metric.into(), value, unit, target: None, baseline: None, extra: Map::new() }
    }

    /// Met when `value >= min`.
    pub fn at_least(mut self, min: f64) -> Self {
        self.target = Some((">=", min));
        self
    }

    /// Met when `value <= max`.
    pub fn at_most(mut self, max: f64) -> Self {
        self.target = Some(("<=", max));
        self
    }

    /// The baseline measured in the same run.
    pub fn baseline(mut self, metric: &'static str, value: f64) -> Self {
        self.baseline = Some((metric, value));
        self
    }

    /// A further field (the rate, the broker, a series).
    pub fn with(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.extra.insert(key.into(), value.into());
        self
    }

    /// Whether the target is met (`None` without a target or a value).
    pub fn met(&self) -> Option<bool> {
        let (op, bound) = self.target?;
        if !self.value.is_finite() {
            return Some(false);
        }
        Some(if op == ">=" { self.value >= bound } else { self.value <= bound })
    }

    /// The figure as JSON.
    pub fn to_json(&self) -> Value {
        let mut o = Map::new();
        o.insert("metric".into(), self.metric.clone().into());
        o.insert("value".into(), round(self.value));
        o.insert("unit".into(), self.unit.into());
        if let Some((op, bound)) = self.target {
            o.insert("target".into(), format!("{op} {bound:.2}").into());
            o.insert("met".into(), self.met().into());
        }
        if let Some((metric, value)) = self.baseline {
            o.insert("baseline".into(), json!({ "metric": metric, "value": round(value) }));
        }
        o.extend(self.extra.clone());
        Value::Object(o)
    }
}

/// Four significant decimals at most: ratios stay readable, rates whole.
pub fn round(v: f64) -> Value {
    if !v.is_finite() {
        return Value::Null;
    }
    let r = if v.abs() >= 100.0 { v.round() } else { (v * 10_000.0).round() / 10_000.0 };
    json!(r)
}

/// The machine the figures come from: cores, load average (the machine is
/// shared; the load says how busy it was), CPU model and memory.
pub fn machine() -> Value {
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    let cpu = read("/proc/cpuinfo").lines().find_map(|l| l.strip_prefix("model name").map(|v| v.trim_start_matches([' ', '\t', ':']).to_string()));
    let mem_kib = read("/proc/meminfo")
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:").and_then(|v| v.trim().trim_end_matches(" kB").trim().parse::<u64>().ok()));
    json!({
        "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "cpu": cpu,
        "memory_gib": mem_kib.map(|k| round(k as f64 / 1_048_576.0)),
        // Another load (`--contend`, a build) weighs against the bench's
        // session by this value; 0 as a CI job's.
        "autogroup_nice": super::contend::autogroup_nice(),
        "load_average": read("/proc/loadavg").split_whitespace().take(3).map(|s| s.parse::<f64>().unwrap_or(f64::NAN)).map(round).collect::<Vec<_>>(),
    })
}

/// The whole report of one mode.
pub fn report(mode: &str, figures: &[Figure], extra: Value) -> Value {
    let mut o = Map::new();
    o.insert("mode".into(), mode.into());
    o.insert("figures".into(), figures.iter().map(Figure::to_json).collect());
    o.insert("machine".into(), machine());
    o.insert("contend_percent".into(), super::contend::percent().into());
    o.insert("contend_burst_us".into(), super::contend::burst_us().into());
    if let Value::Object(extra) = extra {
        o.extend(extra);
    }
    Value::Object(o)
}

/// Least-squares slope of `(x, y)` points (y per unit of x); `NaN` with
/// fewer than two distinct x.
pub fn slope(points: &[(f64, f64)]) -> f64 {
    let n = points.len() as f64;
    if points.len() < 2 {
        return f64::NAN;
    }
    let (mx, my) = (points.iter().map(|p| p.0).sum::<f64>() / n, points.iter().map(|p| p.1).sum::<f64>() / n);
    let sxx: f64 = points.iter().map(|p| (p.0 - mx).powi(2)).sum();
    let sxy: f64 = points.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    if sxx == 0.0 {
        f64::NAN
    } else {
        sxy / sxx
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_and_slopes() {
        let f = Figure::new("ingest_queued_ratio", 0.83, "ratio").at_least(0.8).baseline("raw_k256_verify_per_s", 15_000.4);
        let j = f.to_json();
        assert_eq!(j["target"], ">= 0.80");
        assert_eq!(j["met"], true);
        assert_eq!(j["baseline"]["value"], 15_000.0);
        assert_eq!(Figure::new("p99", 12.0, "ms").at_most(10.0).met(), Some(false));
        assert_eq!(Figure::new("p99", f64::NAN, "ms").at_most(10.0).met(), Some(false));
        assert!((slope(&[(0.0, 1.0), (1.0, 3.0), (2.0, 5.0)]) - 2.0).abs() < 1e-12);
        assert!(slope(&[(1.0, 1.0)]).is_nan());
    }
}
