//! `/api/v0/cat`: streams a UnixFS file out of the repository block by block.
//! Local blocks only: an offline node answers "not found" at once instead of
//! waiting for a network that is not there.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::{stream, Stream, StreamExt};
use rust_ipfs::unixfs::StartingPoint;

use super::kubo::{error_chain, parse_ipfs_path, KuboError, KuboResult, Params};
use super::NodeState;

/// POST /api/v0/cat?arg=CID[&offset=N][&length=N]
pub(crate) async fn cat(
    State(node): State<Arc<NodeState>>,
    Query(params): Query<Vec<(String, String)>>,
) -> Response {
    match open(&node, &Params(params)).await {
        Ok(body) => (
            [
                (header::CONTENT_TYPE, "text/plain"),
                (header::HeaderName::from_static("x-stream-output"), "1"),
            ],
            body,
        )
            .into_response(),
        Err(e) => e.into_response(),
    }
}

/// Resolves the file and reads its first piece before answering, so a
/// missing root or a non-file CID is a proper error rather than a broken stream.
async fn open(node: &NodeState, params: &Params) -> KuboResult<Body> {
    // Kubo's `progress` only adds headers for its CLI's progress bar.
    params.output()?;
    let cid = parse_ipfs_path(params.single_arg("ipfs-path")?)?;
    let offset = params.u64("offset")?.unwrap_or(0);
    let length = params.u64("length")?;
    let root = node
        .ipfs
        .repo()
        .get_block_now(&cid)
        .await
        .map_err(|e| KuboError::new(format!("reading {cid} failed: {e:#}")))?
        .ok_or_else(|| KuboError::block_not_found(&cid))?;
    let mut file = node.ipfs.cat_unixfs(StartingPoint::Right(root)).local();
    let first = match file.next().await {
        Some(Err(e)) => return Err(KuboError::new(error_chain(&e))),
        first => first,
    };
    // A block missing mid-file ends the body with an error, which the client
    // sees as a broken transfer rather than a short file.
    let bytes = stream::iter(first)
        .chain(file)
        .map(|piece| piece.map_err(|e| std::io::Error::other(error_chain(&e))));
    Ok(Body::from_stream(window(bytes, offset, length)))
}

/// Kubo's `offset`/`length`: skips and truncates without buffering, and ends
/// the walk at the first block after `length` bytes are out.
pub fn window<E: Send + 'static>(
    pieces: impl Stream<Item = Result<Bytes, E>> + Send + 'static,
    offset: u64,
    length: Option<u64>,
) -> impl Stream<Item = Result<Bytes, E>> + Send + 'static {
    let left = length.unwrap_or(u64::MAX);
    pieces
        .scan((offset, left), |(skip, left), piece| {
            let out = match piece {
                Err(e) => Some(Err(e)),
                Ok(_) if *left == 0 => None,
                Ok(mut bytes) => {
                    let dropped = (*skip).min(bytes.len() as u64);
                    *skip -= dropped;
                    bytes = bytes.slice(dropped as usize..);
                    if bytes.len() as u64 > *left {
                        bytes.truncate(*left as usize);
                    }
                    *left -= bytes.len() as u64;
                    Some(Ok(bytes))
                }
            };
            futures::future::ready(out)
        })
        .filter(|piece| futures::future::ready(!matches!(piece, Ok(b) if b.is_empty())))
}
