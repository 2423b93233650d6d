//! Prometheus metrics and the `/metrics`, `/healthz` (liveness) and `/readyz`
//! (readiness, [`crate::health`]) endpoint.

use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use anyhow::{Context, Result};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// Label of a rejection counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Reason {
    /// The status code's name.
    pub reason: String,
}

/// Label of a transaction failure counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Op {
    /// The contract function.
    pub op: String,
}

/// Label of an alert counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Level {
    /// The NEWS2 alert level (`none` counts resolutions).
    pub level: String,
}

/// Label of a readiness gauge.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Condition {
    /// One of [`crate::health::CONDITIONS`].
    pub condition: String,
}

/// The oracle's metrics.
#[derive(Clone, Default)]
pub struct Metrics {
    /// Vitals messages received.
    pub ingested: Counter,
    /// Messages rejected, by reason.
    pub rejected: Family<Reason, Counter>,
    /// Readings committed to the store.
    pub stored: Counter,
    /// Redeliveries of stored readings, acknowledged again.
    pub duplicates: Counter,
    /// Readings in anchored batches.
    pub anchored: Counter,
    /// Batches anchored.
    pub batches: Counter,
    /// Age of the oldest reading not yet anchored, seconds.
    pub anchor_lag_seconds: Gauge<f64, AtomicU64>,
    /// Failed chain transactions, by function.
    pub tx_failures: Family<Op, Counter>,
    /// Devices in the registry cache.
    pub devices: Gauge,
    /// Patient archives whose CID is on chain.
    pub archives_done: Counter,
    /// Archive steps retried after a transient failure.
    pub archive_retries: Counter,
    /// Discharge signals accepted from devices.
    pub discharge_signals: Counter,
    /// NEWS2 alert level changes, by new level.
    pub alerts: Family<Level, Counter>,
    /// Drops of the hub's MQTT session.
    pub mqtt_drops: Counter,
    /// 1 while the hub has an MQTT session.
    pub mqtt_connected: Gauge,
    /// 1 while a readiness condition holds, by condition.
    pub not_ready: Family<Condition, Gauge>,
    /// 1 while the hub's threads run at real-time priority ([`crate::priority`]).
    pub realtime: Gauge,
    /// Steps back to normal priority over the CPU budget.
    pub priority_steps_down: Counter,
}

impl Metrics {
    /// Counts a rejection.
    pub fn reject(&self, reason: &str) {
        self.rejected.get_or_create(&Reason { reason: reason.to_string() }).inc();
    }

    /// Counts a failed transaction.
    pub fn tx_failed(&self, op: &str) {
        self.tx_failures.get_or_create(&Op { op: op.to_string() }).inc();
    }

    /// Counts an alert level change.
    pub fn alert(&self, level: &str) {
        self.alerts.get_or_create(&Level { level: level.to_string() }).inc();
    }

    fn registry(&self) -> Registry {
        let mut r = Registry::with_prefix("healthsense_oracle");
        r.register("readings_ingested", "Vitals messages received", self.ingested.clone());
        r.register("readings_rejected", "Messages rejected, by reason", self.rejected.clone());
        r.register("readings_stored", "Readings committed to the hub store", self.stored.clone());
        r.register("readings_redelivered", "Redeliveries of stored readings", self.duplicates.clone());
        r.register("readings_anchored", "Readings in anchored batches", self.anchored.clone());
        r.register("batches_anchored", "Batches anchored on chain", self.batches.clone());
        r.register(
            "anchor_lag_seconds",
            "Age of the oldest stored reading not yet anchored",
            self.anchor_lag_seconds.clone(),
        );
        r.register("tx_failures", "Failed chain transactions, by function", self.tx_failures.clone());
        r.register("devices_cached", "Device records in the cache", self.devices.clone());
        r.register("archives", "Patient archives with their CID on chain", self.archives_done.clone());
        r.register("archive_retries", "Archive steps retried after a transient failure", self.archive_retries.clone());
        r.register("discharge_signals", "Discharge signals accepted from devices", self.discharge_signals.clone());
        r.register("alerts", "NEWS2 alert level changes, by new level", self.alerts.clone());
        r.register("mqtt_session_drops", "Drops of the hub's MQTT session", self.mqtt_drops.clone());
        r.register("mqtt_connected", "1 while the hub has an MQTT session", self.mqtt_connected.clone());
        r.register("not_ready", "1 while a readiness condition holds (see /readyz)", self.not_ready.clone());
        r.register("realtime_priority", "1 while the hub's threads run at real-time priority", self.realtime.clone());
        r.register(
            "priority_steps_down",
            "Steps back to normal priority after a second over priority.max_cpu_percent",
            self.priority_steps_down.clone(),
        );
        r
    }

    /// The text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry());
        out
    }
}

/// Resolves once `flag` turns true (or its sender is gone): the graceful
/// shutdown signal of the hub's HTTP endpoints.
pub(crate) async fn until_true(mut flag: tokio::sync::watch::Receiver<bool>) {
    while !*flag.borrow() {
        if flag.changed().await.is_err() {
            break;
        }
    }
}

/// Serves `/metrics`, `/healthz` and `/readyz` on `addr`; returns the bound address.
pub async fn serve(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    health: Arc<crate::health::Health>,
    shutdown: tokio::sync::watch::Receiver<bool>,
) -> Result<SocketAddr> {
    use axum::http::StatusCode;
    use axum::routing::get;
    let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("binding metrics on {addr}"))?;
    let bound = listener.local_addr()?;
    let h = health.clone();
    let app = axum::Router::new()
        .route(
            "/metrics",
            get(move || {
                let (m, h) = (metrics.clone(), h.clone());
                async move {
                    // Refreshes the readiness gauges (a few store queries).
                    tokio::task::block_in_place(|| h.check(crate::ingest::now_ms()));
                    ([(axum::http::header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], m.encode())
                }
            }),
        )
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/readyz",
            get(move || {
                let h = health.clone();
                async move {
                    let failing = tokio::task::block_in_place(|| h.check(crate::ingest::now_ms()));
                    let status = if failing.is_empty() { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
                    (status, axum::Json(serde_json::json!({ "ready": failing.is_empty(), "failing": failing })))
                }
            }),
        );
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).with_graceful_shutdown(until_true(shutdown)).await {
            tracing::error!(error = %e, "metrics endpoint stopped");
        }
    });
    Ok(bound)
}
