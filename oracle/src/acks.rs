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
