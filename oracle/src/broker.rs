//! The embedded MQTT broker (rumqttd), the local default: one process per
//! ward hub needs no separate broker install. Production wards may point the
//! oracle at Mosquitto or EMQX instead (`mqtt.embedded = false`).

use std::net::{SocketAddr, TcpListener};

use anyhow::{Context, Result};

/// Largest MQTT payload the embedded broker forwards. Larger than the
/// oracle's own limit so that oversized readings reach the oracle and get
/// their `413` reply instead of vanishing in the broker.
pub const BROKER_MAX_PAYLOAD: usize = 64 * 1024;

/// Bytes of messages per memory segment of the embedded broker's log.
pub const SEGMENT_BYTES: usize = 4 * 1024 * 1024;

/// Memory segments kept besides the active one.
pub const SEGMENTS: usize = 8;

/// Starts rumqttd on `listen` (port 0 picks a free port) in background
/// threads and returns its address. Clients connect with retries (the
/// oracle's session reconnects on its own), so no readiness probe is made:
/// rumqttd logs every probe connection as an error.
pub fn start_embedded(listen: SocketAddr) -> Result<SocketAddr> {
    // Bind here first: a port in use is a clear error now rather than a log
    // line from the broker's thread later.
    let probe = TcpListener::bind(listen).with_context(|| format!("the embedded MQTT broker cannot listen on {listen}"))?;
    let addr = probe.local_addr()?;
    drop(probe);
    // rumqttd keeps each subscription filter's messages in memory segments,
    // dropping the oldest beyond the count: a bound on the broker's memory
    // (the hub's RSS target) and on how far a reconnecting hub session may
    // lag. 4 MiB x (8 + the active one) holds about 50,000 vitals, 25 s at
    // 2,000 beds. The publisher-side window (max_inflight_count) is wide
    // enough that devices are never starved by a hub mid-commit; the
    // hub-side one is a rumqttd constant, 1,000 in the copy we build
    // (vendor/rumqttd/PATCHES.md).
    let text = format!(
        r#"
id = 0
[router]
id = 0
max_connections = 10010
max_outgoing_packet_count = 1000
max_segment_size = {SEGMENT_BYTES}
max_segment_count = {SEGMENTS}

[v4.1]
name = "hs-v4"
listen = "{addr}"
next_connection_delay_ms = 0
[v4.1.connections]
connection_timeout_ms = 60000
max_payload_size = {BROKER_MAX_PAYLOAD}
max_inflight_count = 5000
dynamic_filters = true
"#
    );
    let config: rumqttd::Config = toml::from_str(&text).context("embedded broker configuration")?;
    let mut broker = rumqttd::Broker::new(config);
    std::thread::Builder::new().name("rumqttd".into()).spawn(move || {
        if let Err(e) = broker.start() {
            tracing::error!(error = %e, "embedded MQTT broker stopped");
        }
    })?;
    tracing::info!(%addr, "embedded MQTT broker listening");
    Ok(addr)
}

