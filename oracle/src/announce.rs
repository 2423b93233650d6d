//! The retained contract announcement on `hs/v1/contract`.
//!
//! The hub announces at once what it knows at start (chain id, address,
//! domain separator, the API's URL of the ABI) and pins the JSON ABI to its
//! IPFS node in the background. An IPFS node that is down does not hold the
//! hub back: the ABI is added again with a growing pause (up to 30 s) until
//! it is pinned, then the announcement is published again with `abiCid`.

use std::time::Duration;

use healthsense_abi::bindings::ABI_JSON;
use healthsense_ipfs::Ipfs;
use rumqttc::{AsyncClient, QoS};
use tokio::sync::watch;

use crate::protocol::{Announcement, CONTRACT_TOPIC};

/// Longest pause between two tries to pin the ABI.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// The announcement to publish: the session publishes the latest one on
/// every connection, [`pin_abi`] replaces it once the CID is known.
pub(crate) fn channel(first: &Announcement) -> serde_json::Result<(watch::Sender<Vec<u8>>, watch::Receiver<Vec<u8>>)> {
    Ok(watch::channel(serde_json::to_vec(first)?))
}

/// Adds the ABI to `ipfs` (pinned, with the archive's CID options) until it
/// succeeds or `shutdown` turns true, then announces it with its CID.
pub(crate) async fn pin_abi(
    ipfs: Ipfs,
    mut announcement: Announcement,
    latest: watch::Sender<Vec<u8>>,
    client: AsyncClient,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut backoff = Duration::from_millis(500);
    let mut failures = 0u32;
    let cid = loop {
        let added = tokio::select! {
            added = ipfs.add(ABI_JSON.as_bytes().to_vec()) => added,
            _ = shutdown.wait_for(|stop| *stop) => return,
        };
        match added {
            Ok(cid) => break cid,
            Err(e) if e.is_retryable() => {
                failures += 1;
                // Say it once, then now and then: the hub works without it.
                if failures == 1 || failures % 20 == 0 {
                    tracing::warn!(error = %e, "cannot pin the ABI to IPFS yet; announcing the contract without abiCid and retrying");
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "IPFS refused the ABI; the contract is announced without abiCid");
                return;
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = shutdown.wait_for(|stop| *stop) => return,
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    };
    announcement.abi_cid = Some(cid.clone());
    let payload = match serde_json::to_vec(&announcement) {
        Ok(payload) => payload,
        Err(e) => {
            tracing::error!(error = %e, "cannot encode the announcement");
            return;
        }
    };
    latest.send_replace(payload.clone());
    // Queued by the client while disconnected; the session also publishes
    // the latest announcement on every connection.
    if let Err(e) = client.publish(CONTRACT_TOPIC, QoS::AtLeastOnce, true, payload).await {
        tracing::warn!(error = %e, "cannot publish the announcement now; it goes out on the next connection");
    }
    tracing::info!(abi_cid = %cid, "ABI pinned to IPFS and announced on {CONTRACT_TOPIC}");
}
