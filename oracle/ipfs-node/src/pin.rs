//! `/api/v0/pin/add`, `/api/v0/pin/rm` and `/api/v0/pin/ls` over rust-ipfs's
//! persistent pin store, answered as Kubo answers them.

use std::sync::Arc;

use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use cid::Cid;
use futures::TryStreamExt;
use rust_ipfs::{PinKind, PinMode};
use serde_json::{json, Map, Value};

use super::kubo::{json_ok, ndjson_ok, parse_ipfs_path, CidEncoder, KuboError, KuboResult, Params};
use super::NodeState;

/// POST /api/v0/pin/add?arg=CID[&recursive=true]
pub(crate) async fn add(
    State(node): State<Arc<NodeState>>,
    Query(params): Query<Vec<(String, String)>>,
) -> Response {
    reply(pin_add(&node, &Params(params)).await)
}

/// POST /api/v0/pin/rm?arg=CID[&recursive=true]
pub(crate) async fn rm(
    State(node): State<Arc<NodeState>>,
    Query(params): Query<Vec<(String, String)>>,
) -> Response {
    reply(pin_rm(&node, &Params(params)).await)
}

/// POST /api/v0/pin/ls[?arg=CID][&type=all|direct|indirect|recursive][&stream=true]
pub(crate) async fn ls(
    State(node): State<Arc<NodeState>>,
    Query(params): Query<Vec<(String, String)>>,
) -> Response {
    let params = Params(params);
    let stream = match params.bool("stream", false) {
        Ok(stream) => stream,
        Err(e) => return e.into_response(),
    };
    match pin_ls(&node, &params).await {
        // Kubo's `--stream`: one `{"Cid","Type"}` per line (`Name` is
        // omitted when empty, and pins here are unnamed).
        Ok(pins) if stream => ndjson_ok(
            pins.into_iter()
                .map(|(cid, typ)| json!({ "Cid": cid, "Type": typ })),
        ),
        Ok(pins) => {
            let keys: Map<String, Value> = pins
                .into_iter()
                .map(|(cid, typ)| (cid, json!({ "Type": typ, "Name": "" })))
                .collect();
            json_ok(json!({ "Keys": keys }))
        }
        Err(e) => e.into_response(),
    }
}

fn reply(result: KuboResult<Value>) -> Response {
    match result {
        Ok(value) => json_ok(value),
        Err(e) => e.into_response(),
    }
}

/// Kubo's options: `recursive` (default true); `name` only empty (pins are
/// unnamed here, so `pin ls --names` could not give it back); `progress`
/// and the `fast-provide-*` flags change nothing on an offline node that
/// has every block at hand.
async fn pin_add(node: &NodeState, params: &Params) -> KuboResult<Value> {
    let encoder = params.output()?;
    params.must_be_unset("name", "pins are unnamed")?;
    let recursive = params.bool("recursive", true)?;
    let cids = path_args(params, "ipfs-path")?;
    for cid in &cids {
        pin(node, cid, recursive).await?;
    }
    Ok(json!({ "Pins": encoded(&encoder, &cids) }))
}

/// Kubo's `pin rm`: `recursive` (default true) removes a recursive pin (and
/// a direct one); `recursive=false` only a direct pin. Indirect pins go with
/// their root.
async fn pin_rm(node: &NodeState, params: &Params) -> KuboResult<Value> {
    let encoder = params.output()?;
    let recursive = params.bool("recursive", true)?;
    let cids = path_args(params, "ipfs-path")?;
    for cid in &cids {
        let request = node.ipfs.remove_pin(cid);
        let request = if recursive {
            request.recursive()
        } else {
            request
        };
        request.await.map_err(|e| {
            let text = format!("{e:#}");
            if text.contains("is pinned recursively") {
                KuboError::new(format!("{} is pinned recursively", encoder.encode(cid)))
            } else if text.contains("not pinned") || text.contains("pinned root not found") {
                KuboError::new("not pinned or pinned indirectly")
            } else {
                KuboError::new(format!("unpinning {cid} failed: {text}"))
            }
        })?;
    }
    Ok(json!({ "Pins": encoded(&encoder, &cids) }))
}

/// The pins as (CID, Kubo's type text), in the store's order. Kubo's `quiet`
/// and `names` only shape its CLI text or add the (always empty) names; a
/// `name` filter matches no unnamed pin.
async fn pin_ls(node: &NodeState, params: &Params) -> KuboResult<Vec<(String, String)>> {
    let encoder = params.output()?;
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
    let name_filter = params.one("name").is_some_and(|n| !n.is_empty());
    let args: Vec<&str> = params.all("arg").collect();
    let mut pins = Vec::new();
    if args.is_empty() && !name_filter {
        let mut listing = node.ipfs.list_pins(mode).await;
        while let Some((cid, pin_mode)) = listing
            .try_next()
            .await
            .map_err(|e| KuboError::new(format!("listing pins failed: {e:#}")))?
        {
            pins.push((encoder.encode(&cid), mode_name(pin_mode).to_string()));
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
            pins.push((encoder.encode(&cid), kind_name(&encoder, &kind)));
        }
    }
    Ok(pins)
}

fn encoded(encoder: &CidEncoder, cids: &[Cid]) -> Vec<String> {
    cids.iter().map(|cid| encoder.encode(cid)).collect()
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
fn kind_name(encoder: &CidEncoder, kind: &PinKind<Cid>) -> String {
    match kind {
        PinKind::Direct => "direct".into(),
        PinKind::Recursive(_) | PinKind::RecursiveIntention => "recursive".into(),
        PinKind::IndirectFrom(root) => format!("indirect through {}", encoder.encode(root)),
    }
}
