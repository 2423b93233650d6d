//! `/api/v0/add`: streams one multipart file through rust-unixfs's balanced
//! importer into the repository, so a 100 MB archive never sits in memory.

use std::sync::Arc;

use axum::extract::multipart::{Field, Multipart, MultipartRejection};
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use cid::{Cid, Version};
use rust_ipfs::unixfs::ll::file::adder::{Chunker, FileAdder, FileAdderBuilder};
use rust_ipfs::Block;

use super::kubo::{json_ok, ndjson_ok, KuboError, KuboResult, Params};
use super::{pin, NodeState};

/// Kubo's largest accepted chunk (boxo's `ChunkSizeLimit`, 2 MiB).
const MAX_CHUNK_SIZE: usize = 2 << 20;
/// Kubo's default chunker, `size-262144`.
const DEFAULT_CHUNK_SIZE: usize = 256 << 10;
/// Links per file node of rust-unixfs's balanced layout: Kubo's default
/// `Import.UnixFSFileMaxLinks`.
const MAX_FILE_LINKS: u64 = 174;

/// How one add imports its file, from Kubo's query options.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImportSettings {
    /// CID version of the DAG's nodes (`cid-version`).
    pub cid_version: Version,
    /// Leaves as raw blocks rather than UnixFS nodes (`raw-leaves`).
    pub raw_leaves: bool,
    /// Fixed chunk size in bytes (`chunker=size-N`).
    pub chunk_size: usize,
    /// Pin the root recursively after the import (`pin`).
    pub pin: bool,
}

impl ImportSettings {
    /// Kubo semantics: CIDv0 unless asked, raw leaves by default only for
    /// CIDv1, `size-262144`, pinned. Options that would change the CID or
    /// what is stored, and are not implemented here, are refused; Kubo's
    /// options that do not apply to one bare file on an offline node
    /// (directory walking, `max-directory-links`, `max-hamt-fanout`,
    /// `fast-provide-*`, `quiet`, `inline-limit` without `inline`, ...) are
    /// ignored, as Kubo ignores options it does not know.
    pub fn from_params(params: &Params) -> KuboResult<ImportSettings> {
        params.must_be_off("trickle", "only the balanced layout is implemented")?;
        params.must_be_off("only-hash", "every add is stored")?;
        params.must_be_off("wrap-with-directory", "files are added bare")?;
        params.must_be_off("inline", "identity-hashed CIDs are not produced")?;
        params.must_be_off("nocopy", "there is no filestore")?;
        let no_metadata = "UnixFS mode and mtime are not stored";
        params.must_be_off("preserve-mode", no_metadata)?;
        params.must_be_off("preserve-mtime", no_metadata)?;
        params.must_be_unset("mode", no_metadata)?;
        params.must_be_unset("mtime", no_metadata)?;
        params.must_be_unset("to-files", "there is no MFS")?;
        params.must_be_unset("pin-name", "pins are unnamed")?;
        match params.u64("max-file-links")? {
            None => {}
            Some(n) if n == MAX_FILE_LINKS => {}
            Some(n) => {
                return Err(KuboError::new(format!(
                    "max-file-links {n} is not supported by this node: its files have at most {MAX_FILE_LINKS} links per node"
                )))
            }
        }
        let cid_version = match params.one("cid-version") {
            None | Some("0") => Version::V0,
            Some("1") => Version::V1,
            Some(other) => {
                return Err(KuboError::new(format!(
                    "unknown CID version: {other}; this node supports 0 and 1"
                )))
            }
        };
        match params.one("hash") {
            None | Some("sha2-256") => {}
            Some(other) => {
                return Err(KuboError::new(format!(
                    "hash function {other:?} is not supported by this node; use sha2-256"
                )))
            }
        }
        Ok(ImportSettings {
            cid_version,
            raw_leaves: params.bool("raw-leaves", cid_version == Version::V1)?,
            chunk_size: parse_chunker(params.one("chunker"))?,
            pin: params.bool("pin", true)?,
        })
    }

    fn adder(&self) -> FileAdder {
        FileAdderBuilder::default()
            .with_chunker(Chunker::Size(self.chunk_size))
            .with_cid_version(self.cid_version)
            .with_raw_leaves(self.raw_leaves)
            .build()
    }
}

/// `size-N` only: content-defined chunkers (rabin, buzhash) are not implemented.
fn parse_chunker(chunker: Option<&str>) -> KuboResult<usize> {
    let spec = match chunker {
        None | Some("") | Some("default") => return Ok(DEFAULT_CHUNK_SIZE),
        Some(spec) => spec,
    };
    let size = spec.strip_prefix("size-").ok_or_else(|| {
        KuboError::new(format!(
            "chunker {spec:?} is not supported by this node; use size-N"
        ))
    })?;
    match size.parse::<usize>() {
        Ok(0) => Err(KuboError::new("chunker size must be greater than 0")),
        Ok(n) if n > MAX_CHUNK_SIZE => Err(KuboError::new(format!(
            "chunker parameters may not exceed the maximum chunk size of {MAX_CHUNK_SIZE}"
        ))),
        Ok(n) => Ok(n),
        Err(_) => Err(KuboError::new(format!(
            "chunker {spec:?}: {size:?} is not a size in bytes"
        ))),
    }
}

/// POST /api/v0/add
pub(crate) async fn add(
    State(node): State<Arc<NodeState>>,
    Query(params): Query<Vec<(String, String)>>,
    multipart: Result<Multipart, MultipartRejection>,
) -> Response {
    match add_file(&node, &Params(params), multipart).await {
        Ok(mut lines) if lines.len() == 1 => json_ok(lines.remove(0)),
        Ok(lines) => ndjson_ok(lines),
        Err(e) => e.into_response(),
    }
}

/// The answer's lines: the result `{"Name","Hash","Size"}`, after one
/// progress line `{"Name","Bytes"}` with `progress`; none with `silent`.
async fn add_file(
    node: &NodeState,
    params: &Params,
    multipart: Result<Multipart, MultipartRejection>,
) -> KuboResult<Vec<serde_json::Value>> {
    let encoder = params.output()?;
    let settings = ImportSettings::from_params(params)?;
    let (progress, silent) = (
        params.bool("progress", false)?,
        params.bool("silent", false)?,
    );
    let mut multipart = multipart
        .map_err(|e| KuboError::new(format!("add expects a multipart/form-data file: {e}")))?;
    let field = multipart
        .next_field()
        .await
        .map_err(|e| KuboError::new(format!("reading the upload failed: {e}")))?
        .ok_or_else(|| KuboError::new("file argument 'path' is required"))?;
    if field.content_type() == Some("application/x-directory") {
        return Err(KuboError::new(
            "directories are not supported by this node; add one file per request",
        ));
    }
    let name = field.file_name().map(str::to_string);
    let imported = import(node, settings, field).await?;
    if multipart.next_field().await.ok().flatten().is_some() {
        // The first file is stored already (not pinned); say so plainly.
        return Err(KuboError::new(format!(
            "this node adds one file per request; only the first was stored, as {}, and not pinned",
            imported.root
        )));
    }
    if settings.pin {
        pin::pin(node, &imported.root, true).await?;
    }
    let root = encoder.encode(&imported.root);
    let name = name
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| root.clone());
    let mut lines = Vec::new();
    if silent {
        return Ok(lines);
    }
    if progress {
        lines.push(serde_json::json!({ "Name": name, "Bytes": imported.file_size }));
    }
    lines.push(serde_json::json!({
        "Name": name,
        "Hash": root,
        "Size": imported.dag_size.to_string(),
    }));
    Ok(lines)
}

struct Imported {
    root: Cid,
    /// The file's own bytes.
    file_size: u64,
    /// Kubo's `Size`: every block's bytes, counted once per link (cumulative DAG size).
    dag_size: u64,
}

/// Feeds the upload through the adder, storing each block as it is made.
async fn import(
    node: &NodeState,
    settings: ImportSettings,
    mut field: Field<'_>,
) -> KuboResult<Imported> {
    let mut adder = settings.adder();
    let mut received: usize = 0;
    let mut dag_size: u64 = 0;
    // The root is the last block made; for a file of exactly one chunk that
    // block comes out of push, and finish adds nothing.
    let mut root = None;
    while let Some(chunk) = field
        .chunk()
        .await
        .map_err(|e| KuboError::new(format!("reading the upload failed: {e}")))?
    {
        received = received.saturating_add(chunk.len());
        if received > node.max_add_bytes {
            return Err(KuboError::new(format!(
                "file is larger than this node's limit of {} bytes (--max-add-bytes)",
                node.max_add_bytes
            )));
        }
        let mut rest: &[u8] = &chunk;
        while !rest.is_empty() {
            let (blocks, consumed) = adder.push(rest);
            let (last, size) = store(node, blocks).await?;
            root = last.or(root);
            dag_size += size;
            rest = &rest[consumed..];
        }
    }
    let (last, size) = store(node, adder.finish()).await?;
    let root = last
        .or(root)
        .ok_or_else(|| KuboError::new("the importer produced no root block"))?;
    Ok(Imported {
        root,
        file_size: received as u64,
        dag_size: dag_size + size,
    })
}

/// Stores blocks fresh from the adder; returns the last CID and the byte count.
async fn store(
    node: &NodeState,
    blocks: impl Iterator<Item = (Cid, Vec<u8>)>,
) -> KuboResult<(Option<Cid>, u64)> {
    let mut last = None;
    let mut bytes = 0u64;
    // The adder has just hashed each block into its CID: no need to verify again.
    let blocks: Vec<Block> = blocks
        .map(|(cid, data)| {
            last = Some(cid);
            bytes += data.len() as u64;
            Block::new_unchecked(cid, data)
        })
        .collect();
    if !blocks.is_empty() {
        node.ipfs
            .repo()
            .put_blocks(blocks)
            .await
            .map_err(|e| KuboError::new(format!("storing a block failed: {e:#}")))?;
    }
    Ok((last, bytes))
}
