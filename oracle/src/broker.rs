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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};

    use super::*;

    /// Messages published while the subscriber acknowledges none: more than
    /// the rumqttd release's window of 100, fewer than the patched 1,000.
    const UNACKED: usize = 300;

    /// The hub acknowledges only after its commit, so its ingest rate hangs
    /// on how many unacknowledged messages the broker sends it. The release
    /// of rumqttd stops at 100; the copy in vendor/rumqttd at 1,000.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_embedded_broker_sends_a_subscriber_more_than_100_unacknowledged_messages() -> Result<()> {
        let addr = start_embedded("127.0.0.1:0".parse()?)?;
        let mut opts = MqttOptions::new("window-sub", addr.ip().to_string(), addr.port());
        opts.set_manual_acks(true);
        let (sub, mut sub_loop) = AsyncClient::new(opts, 16);
        sub.subscribe("window/#", QoS::AtLeastOnce).await?;
        // The broker's thread may not be listening yet: poll through refusals.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            match tokio::time::timeout_at(deadline, sub_loop.poll()).await? {
                Ok(Event::Incoming(Packet::SubAck(_))) => break,
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
        let (publisher, mut pub_loop) = AsyncClient::new(MqttOptions::new("window-pub", addr.ip().to_string(), addr.port()), UNACKED);
        let publishing = tokio::spawn(async move {
            for i in 0..UNACKED {
                publisher.publish(format!("window/{i}"), QoS::AtLeastOnce, false, vec![0u8; 64]).await?;
            }
            anyhow::Ok(publisher)
        });
        tokio::spawn(async move {
            loop {
                if pub_loop.poll().await.is_err() {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        });
        let mut received = 0;
        // Stop at all of them, or when nothing more comes for 5 s.
        while received < UNACKED {
            match tokio::time::timeout(Duration::from_secs(5), sub_loop.poll()).await {
                Ok(Ok(Event::Incoming(Packet::Publish(_)))) => received += 1,
                Ok(Ok(_)) => {}
                Ok(Err(e)) => anyhow::bail!("subscriber lost the broker: {e}"),
                Err(_) => break,
            }
        }
        publishing.await??;
        assert_eq!(
            received, UNACKED,
            "the broker stopped sending at {received} unacknowledged messages: the workspace is not \
             building rumqttd from vendor/rumqttd (see its PATCHES.md)"
        );
        Ok(())
    }
}
