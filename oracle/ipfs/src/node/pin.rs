//! `/api/v0/pin/add` and `/api/v0/pin/ls` over rust-ipfs's persistent pin store.

use std::sync::Arc;

use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use cid::Cid;
use futures::TryStreamExt;
use rust_ipfs::{PinKind, PinMode};
use serde_json::{json, Map, Value};

use super::kubo::{json_ok, parse_ipfs_path, KuboError, KuboResult, Params};
use super::NodeState;

/// POST /api/v0/pin/add?arg=CID[&recursive=true]
pub(crate) async fn add(
    State(node): State<Arc<NodeState>>,
    Query(params): Query<Vec<(String, String)>>,
) -> Response {
    reply(pin_add(&node, &Params(params)).await)
}

/// POST /api/v0/pin/ls[?arg=CID][&type=all|direct|indirect|recursive]
pub(crate) async fn ls(
    State(node): State<Arc<NodeState>>,
    Query(params): Query<Vec<(String, String)>>,
) -> Response {
    reply(pin_ls(&node, &Params(params)).await)
}

fn reply(result: KuboResult<Value>) -> Response {
    match result {
        Ok(value) => json_ok(value),
        Err(e) => e.into_response(),
    }
}

async fn pin_add(node: &NodeState, params: &Params) -> KuboResult<Value> {
    params.only("pin/add", &["arg", "recursive", "progress", "name"])?;
    if params.one("name").is_some_and(|n| !n.is_empty()) {
        return Err(KuboError::new(
            "option \"name\" is not supported by this node: pins are unnamed",
        ));
    }
    let recursive = params.bool("recursive", true)?;
    let cids = path_args(params, "ipfs-path")?;
    for cid in &cids {
        pin(node, cid, recursive).await?;
    }
    Ok(json!({ "Pins": cids.iter().map(Cid::to_string).collect::<Vec<_>>() }))
}

async fn pin_ls(node: &NodeState, params: &Params) -> KuboResult<Value> {
    params.only("pin/ls", &["arg", "type", "quiet", "stream", "names"])?;
    params.must_be_off("stream", "the listing is one JSON object")?;
    params.must_be_off("names", "pins are unnamed")?;
    let mode = match params.one("type").unwrap_or("all") {
        "all" => None,
        "direct" => Some(PinMode::Direct),
        "indirect" => Some(PinMode::Indirect),
        "recursive" => Some(PinMode::Recursive),
        other => {
            return Err(KuboError::new(format!(
                "invalid type '{other}', must be one of {{direct, indirect, recursive, all}}"
            )))
        }
    };
    let args: Vec<&str> = params.all("arg").collect();
    let mut keys = Map::new();
    if args.is_empty() {
        let mut pins = node.ipfs.list_pins(mode).await;
        while let Some((cid, pin_mode)) = pins
            .try_next()
            .await
            .map_err(|e| KuboError::new(format!("listing pins failed: {e:#}")))?
        {
            keys.insert(cid.to_string(), json!({ "Type": mode_name(pin_mode) }));
        }
    }
    for arg in args {
        let cid = parse_ipfs_path(arg)?;
        let found = node.ipfs.query_pins(vec![cid], mode).await.map_err(|e| {
            let text = format!("{e:#}");
            if text.contains("not pinned") {
                KuboError::new(format!("path '{arg}' is not pinned"))
            } else {
                KuboError::new(format!("querying the pin of {arg} failed: {text}"))
            }
        })?;
        for (cid, kind) in found {
            keys.insert(cid.to_string(), json!({ "Type": kind_name(&kind) }));
        }
    }
    Ok(json!({ "Keys": keys }))
}

/// Pins `cid`, with its whole DAG when `recursive`, from local blocks only:
/// fails if any block is missing instead of waiting for a network.
pub(crate) async fn pin(node: &NodeState, cid: &Cid, recursive: bool) -> KuboResult<()> {
    let present = node
        .ipfs
        .repo()
        .contains(cid)
        .await
        .map_err(|e| KuboError::new(format!("pin: {e:#}")))?;
    if !present {
        return Err(KuboError::new(format!(
            "pin: {}",
            KuboError::block_not_found(cid).0
        )));
    }
    let request = node.ipfs.insert_pin(cid).local().exit_on_error();
    let request = if recursive {
        request.recursive()
    } else {
        request
    };
    request
        .await
        .map_err(|e| KuboError::new(format!("pin: {cid}: {e:#}")))
}

fn path_args(params: &Params, name: &str) -> KuboResult<Vec<Cid>> {
    let cids = params
        .all("arg")
        .map(parse_ipfs_path)
        .collect::<KuboResult<Vec<_>>>()?;
    if cids.is_empty() {
        return Err(KuboError::new(format!("argument {name:?} is required")));
    }
    Ok(cids)
}

fn mode_name(mode: PinMode) -> &'static str {
    match mode {
        PinMode::Direct => "direct",
        PinMode::Indirect => "indirect",
        PinMode::Recursive => "recursive",
    }
}

/// Kubo's wording, including which root keeps an indirect pin alive.
fn kind_name(kind: &PinKind<Cid>) -> String {
    match kind {
        PinKind::Direct => "direct".into(),
        PinKind::Recursive(_) | PinKind::RecursiveIntention => "recursive".into(),
        PinKind::IndirectFrom(root) => format!("indirect through {root}"),
    }
}
