//! `/api/v0/version` and `/api/v0/id`.

use std::sync::Arc;

use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::kubo::{json_ok, KuboError, Params};
use super::NodeState;

/// What this node calls itself in `AgentVersion`.
pub(crate) const AGENT_VERSION: &str = concat!(
    "healthsense-ipfs/",
    env!("CARGO_PKG_VERSION"),
    " (rust-ipfs 0.16)"
);

/// POST /api/v0/version
pub(crate) async fn version(Query(params): Query<Vec<(String, String)>>) -> Response {
    // Kubo's `number`, `commit`, `repo` and `all` shape only its CLI text.
    if let Err(e) = Params(params).output() {
        return e.into_response();
    }
    json_ok(json!({
        "Version": env!("CARGO_PKG_VERSION"),
        "Commit": "",
        // Kubo reports its repo format version; this node's repo is rust-ipfs's flatfs layout.
        "Repo": "rust-ipfs-flatfs",
        "System": format!("{}/{}", std::env::consts::ARCH, std::env::consts::OS),
    }))
}

/// POST /api/v0/id[?arg=PEER]
pub(crate) async fn id(
    State(node): State<Arc<NodeState>>,
    Query(params): Query<Vec<(String, String)>>,
) -> Response {
    let params = Params(params);
    // `format` shapes only Kubo's CLI text; `peerid-base` other than the
    // default would print the ID differently.
    if let Err(e) = params.output() {
        return e.into_response();
    }
    if let Some(base) = params
        .one("peerid-base")
        .filter(|b| !b.is_empty() && *b != "b58mh")
    {
        return KuboError::new(format!(
            "peerid-base {base:?} is not supported by this node; use b58mh"
        ))
        .into_response();
    }
    if let Some(peer) = params.one("arg").filter(|p| *p != node.peer_id) {
        return KuboError::new(format!(
            "peer {peer} is unknown: this node is offline and knows no other peers"
        ))
        .into_response();
    }
    json_ok(json!({
        "ID": node.peer_id,
        "PublicKey": node.public_key,
        // Offline: no swarm listeners, nothing to advertise.
        "Addresses": [],
        "AgentVersion": AGENT_VERSION,
        "ProtocolVersion": "ipfs/0.1.0",
        "Protocols": [],
    }))
}
