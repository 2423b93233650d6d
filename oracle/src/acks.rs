//! Acknowledgements in arrival order. MQTT 3.1.1 (section 4.6) has a
//! receiver send its PUBACKs in the order the PUBLISHes arrived, and rumqttd
//! disconnects a client that does not. Vitals are acknowledged by the writer
//! after their commit and device control messages by the control task after
//! theirs, so both hand their messages here, and the gate releases the
//! acknowledgements in arrival order.

use std::collections::BTreeMap;

use rumqttc::{AsyncClient, Publish};
use tokio::sync::Mutex;

/// Releases acknowledgements in the order [`AckGate::ticket`] handed out.
pub struct AckGate {
    client: AsyncClient,
    state: Mutex<Gate>,
    tickets: std::sync::atomic::AtomicU64,
}

#[derive(Default)]
struct Gate {
    next: u64,
    done: BTreeMap<u64, Publish>,
}

impl AckGate {
    /// A gate acknowledging through `client`.
    pub fn new(client: AsyncClient) -> Self {
        Self { client, state: Mutex::new(Gate::default()), tickets: Default::default() }
    }

    /// The next ticket; call in arrival order (the event loop's task).
    pub fn ticket(&self) -> u64 {
        self.tickets.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    }

    /// Marks `ticket` handled and sends every acknowledgement now due. The
    /// lock is held while sending, so two callers cannot interleave.
    pub async fn done(&self, ticket: u64, publish: Publish) {
        self.done_many([(ticket, publish)]).await;
    }

    /// Marks a group of tickets handled (the writer's committed group) under
    /// one lock, and sends every acknowledgement now due.
    pub async fn done_many(&self, handled: impl IntoIterator<Item = (u64, Publish)>) {
        let mut gate = self.state.lock().await;
        for (ticket, publish) in handled {
            // In order and nothing held back: send it without parking it.
            if ticket == gate.next && gate.done.is_empty() {
                gate.next += 1;
                self.ack(&publish).await;
            } else {
                gate.done.insert(ticket, publish);
            }
        }
        loop {
            let next = gate.next;
            let Some(p) = gate.done.remove(&next) else { break };
            gate.next += 1;
            self.ack(&p).await;
        }
    }

    async fn ack(&self, publish: &Publish) {
        if let Err(e) = self.client.ack(publish).await {
            tracing::warn!(error = %e, "acknowledgement not sent (the broker will redeliver)");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::time::Duration;

    use rumqttc::{AsyncClient, Event, MqttOptions, Outgoing, Packet, Publish, QoS};

    use super::AckGate;

    /// Write system calls this thread has made (`syscw`, Linux task I/O
    /// accounting).
    fn writes() -> u64 {
        let io = std::fs::read_to_string("/proc/thread-self/io").expect("/proc/thread-self/io (Linux task I/O accounting)");
        io.lines().find_map(|l| l.strip_prefix("syscw:")).and_then(|v| v.trim().parse().ok()).expect("syscw in /proc/thread-self/io")
    }

    /// A committed group's acknowledgements leave in one write, not one
    /// system call each: the vendored rumqttc's patch
    /// (vendor/rumqttc/PATCHES.md). The release makes 50 writes here.
    #[test]
    fn a_group_of_acknowledgements_leaves_in_one_write() {
        const N: usize = 50;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("address").port();
        // The least of a broker: CONNACK, N QoS 1 readings, then the bytes
        // of the acknowledgements (4 each) until the hub closes.
        let broker = std::thread::spawn(move || -> std::io::Result<usize> {
            let (mut socket, _) = listener.accept()?;
            let mut buf = [0u8; 4096];
            let _connect = socket.read(&mut buf)?;
            let mut out = bytes::BytesMut::from(&[0x20u8, 2, 0, 0][..]);
            for pkid in 1..=N as u16 {
                let mut publish = Publish::new("hs/v1/ward-hub/device/bed-1/vitals", QoS::AtLeastOnce, vec![7u8; 64]);
                publish.pkid = pkid;
                publish.write(&mut out).map_err(|e| std::io::Error::other(e.to_string()))?;
            }
            socket.write_all(&out)?;
            let mut acked = 0;
            loop {
                match socket.read(&mut buf)? {
                    0 => return Ok(acked),
                    n => acked += n,
                }
            }
        });
        // One thread runs the client's loop, so its write count is the loop's.
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        let writes = runtime.block_on(async {
            let mut opts = MqttOptions::new("hub", "127.0.0.1", port);
            opts.set_manual_acks(true);
            let (client, mut eventloop) = AsyncClient::new(opts, 2 * N);
            let gate = AckGate::new(client.clone());
            let mut received = Vec::new();
            while received.len() < N {
                let event = tokio::time::timeout(Duration::from_secs(10), eventloop.poll()).await.expect("no reading from the broker");
                if let Event::Incoming(Packet::Publish(p)) = event.expect("connection") {
                    received.push((gate.ticket(), p));
                }
            }
            let before = writes();
            gate.done_many(received).await;
            let mut acked = 0;
            while acked < N {
                let event = tokio::time::timeout(Duration::from_secs(10), eventloop.poll()).await.expect("acknowledgements not sent");
                if let Event::Outgoing(Outgoing::PubAck(_)) = event.expect("connection") {
                    acked += 1;
                }
            }
            let writes = writes() - before;
            client.disconnect().await.expect("disconnect");
            while !matches!(eventloop.poll().await, Ok(Event::Outgoing(Outgoing::Disconnect)) | Err(_)) {}
            writes
        });
        drop(runtime);
        // Every acknowledgement arrived, then the DISCONNECT (2 bytes).
        assert_eq!(broker.join().expect("broker thread").expect("broker socket"), 4 * N + 2);
        assert!(writes <= 2, "{N} acknowledgements took {writes} write system calls; the vendored rumqttc writes the requests waiting together");
    }
}
