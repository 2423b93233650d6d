//! The embedded MQTT broker (rumqttd), the local default: one process per
//! ward hub needs no separate broker install. Production wards may point the
//! oracle at Mosquitto or EMQX instead (`mqtt.embedded = false`).

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// Largest MQTT payload the embedded broker forwards. Larger than the
/// oracle's own limit so that oversized readings reach the oracle and get
/// their `413` reply instead of vanishing in the broker.
pub const BROKER_MAX_PAYLOAD: usize = 64 * 1024;

/// Starts rumqttd on `listen` (port 0 picks a free port) in background
/// threads and returns the address it accepts connections on.
pub fn start_embedded(listen: SocketAddr) -> Result<SocketAddr> {
    let addr = if listen.port() == 0 {
        let probe = TcpListener::bind(listen).context("finding a free port for the embedded broker")?;
        probe.local_addr()?
    } else {
        listen
    };
    // QoS 1 inflight window per connection: wide enough that a hub
    // acknowledging after each group commit is never starved.
    let text = format!(
        r#"
id = 0
[router]
id = 0
max_connections = 10010
max_outgoing_packet_count = 1000
max_segment_size = 104857600
max_segment_count = 10

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
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
        if Instant::now() > deadline {
            bail!("the embedded MQTT broker did not start listening on {addr} (port in use?)");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    tracing::info!(%addr, "embedded MQTT broker listening");
    Ok(addr)
}
