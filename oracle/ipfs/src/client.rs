//! The Kubo RPC client the oracle archives through: one code path for the
//! embedded node, a production Kubo, or an IPFS Cluster proxy.

use std::future::Future;
use std::io::Cursor;
use std::time::Duration;

use futures::TryStreamExt;
use ipfs_api_backend_hyper::{request, Error as ApiError, IpfsApi, IpfsClient, TryFromUri};

use crate::{IpfsError, ADD_OPTIONS};

/// A handle on one Kubo RPC API (`/api/v0`). Cheap to clone; every call is
/// bounded by a timeout.
#[derive(Clone)]
pub struct Ipfs {
    client: IpfsClient,
    url: String,
    timeout: Duration,
    max_cat_bytes: usize,
}

impl std::fmt::Debug for Ipfs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ipfs")
            .field("url", &self.url)
            .field("timeout", &self.timeout)
            .field("max_cat_bytes", &self.max_cat_bytes)
            .finish()
    }
}

impl Ipfs {
    /// Default bound on one call, long enough for a 100 MB archive over a LAN.
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(120);
    /// Default largest content [`Ipfs::cat`] will hold in memory (1 GiB).
    pub const DEFAULT_MAX_CAT_BYTES: usize = 1 << 30;

    /// A client for the Kubo RPC API at `api_url` (`http://HOST:PORT`, as
    /// printed by `healthsense-ipfs` or Kubo's `API server listening on`).
    /// Only checks the URL; nothing is sent until the first call.
    pub fn new(api_url: &str) -> Result<Ipfs, IpfsError> {
        let url = normalize_api_url(api_url)?;
        let client = IpfsClient::from_str(&url).map_err(|e| IpfsError::InvalidUrl {
            url: api_url.to_string(),
            reason: e.to_string(),
        })?;
        Ok(Ipfs {
            client,
            url,
            timeout: Self::DEFAULT_TIMEOUT,
            max_cat_bytes: Self::DEFAULT_MAX_CAT_BYTES,
        })
    }

    /// Bound every call by `timeout` instead of [`Ipfs::DEFAULT_TIMEOUT`].
    pub fn with_timeout(mut self, timeout: Duration) -> Ipfs {
        self.timeout = timeout;
        self
    }

    /// Refuse [`Ipfs::cat`] content larger than `limit` bytes instead of
    /// [`Ipfs::DEFAULT_MAX_CAT_BYTES`].
    pub fn with_max_cat_bytes(mut self, limit: usize) -> Ipfs {
        self.max_cat_bytes = limit;
        self
    }

    /// The API's base URL, `http://HOST:PORT`.
    pub fn api_url(&self) -> &str {
        &self.url
    }

    /// Adds `bytes` as one UnixFS file with [`ADD_OPTIONS`] (CIDv1, raw leaves,
    /// sha2-256, 256 KiB chunks, pinned) and returns its CID.
    pub async fn add(&self, bytes: Vec<u8>) -> Result<String, IpfsError> {
        let options = request::Add {
            cid_version: Some(ADD_OPTIONS.cid_version),
            raw_leaves: Some(ADD_OPTIONS.raw_leaves),
            hash: Some(ADD_OPTIONS.hash),
            chunker: Some(ADD_OPTIONS.chunker),
            pin: Some(ADD_OPTIONS.pin),
            ..Default::default()
        };
        let reply = self
            .call(
                "add",
                None,
                self.client.add_with_options(Cursor::new(bytes), options),
            )
            .await?;
        // The CID goes on chain: make sure the node answered with one.
        cid::Cid::try_from(reply.hash.as_str()).map_err(|e| {
            self.protocol("add", format!("Hash {:?} is not a CID: {e}", reply.hash))
        })?;
        Ok(reply.hash)
    }

    /// The bytes of the UnixFS file `cid`, at most the cat limit.
    pub async fn cat(&self, cid: &str) -> Result<Vec<u8>, IpfsError> {
        check_cid(cid)?;
        let limit = self.max_cat_bytes;
        let collect = async {
            let mut stream = self.client.cat(cid);
            let mut out = Vec::new();
            while let Some(chunk) = stream.try_next().await? {
                if out.len() + chunk.len() > limit {
                    return Ok(None);
                }
                out.extend_from_slice(&chunk);
            }
            Ok(Some(out))
        };
        match self.call("cat", Some(cid), collect).await? {
            Some(bytes) => Ok(bytes),
            None => Err(IpfsError::TooLarge {
                cid: cid.to_string(),
                limit,
            }),
        }
    }

    /// Pins `cid` recursively (the whole DAG is kept).
    pub async fn pin_add(&self, cid: &str) -> Result<(), IpfsError> {
        check_cid(cid)?;
        self.call("pin/add", Some(cid), self.client.pin_add(cid, true))
            .await?;
        Ok(())
    }

    /// Whether `cid` is pinned recursively, i.e. its whole DAG is kept.
    pub async fn is_pinned(&self, cid: &str) -> Result<bool, IpfsError> {
        let wanted = check_cid(cid)?;
        let listing = self.client.pin_ls(Some(cid), Some("recursive"));
        match self.call("pin/ls", Some(cid), listing).await {
            Ok(reply) => Ok(reply.keys.keys().any(|key| {
                cid::Cid::try_from(key.as_str()).is_ok_and(|k| same_content(&k, &wanted))
            })),
            // Kubo answers a listing of an unpinned CID with an error.
            Err(IpfsError::Api { message, .. }) if message.contains("not pinned") => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// The node's version string (Kubo's `Version`).
    pub async fn version(&self) -> Result<String, IpfsError> {
        Ok(self
            .call("version", None, self.client.version())
            .await?
            .version)
    }

    /// The node's peer ID.
    pub async fn id(&self) -> Result<String, IpfsError> {
        Ok(self.call("id", None, self.client.id(None)).await?.id)
    }

    /// Runs one RPC under the timeout and maps the library's errors.
    async fn call<T>(
        &self,
        op: &'static str,
        cid: Option<&str>,
        rpc: impl Future<Output = Result<T, ApiError>>,
    ) -> Result<T, IpfsError> {
        match tokio::time::timeout(self.timeout, rpc).await {
            Err(_) => Err(IpfsError::Timeout {
                url: self.url.clone(),
                op,
                after: self.timeout,
            }),
            Ok(result) => result.map_err(|e| self.classify(op, cid, e)),
        }
    }

    fn classify(&self, op: &'static str, cid: Option<&str>, err: ApiError) -> IpfsError {
        use ipfs_api_prelude::Error as prelude;
        let url = self.url.clone();
        match err {
            ApiError::Client(e) => IpfsError::Unreachable {
                url,
                op,
                detail: e.to_string(),
            },
            ApiError::Api(api) => classify_api_message(url, op, cid, api.message),
            ApiError::IpfsClientError(prelude::Io(e)) => IpfsError::Unreachable {
                url,
                op,
                detail: e.to_string(),
            },
            ApiError::IpfsClientError(prelude::StreamError(message)) => {
                classify_api_message(url, op, cid, message)
            }
            ApiError::IpfsClientError(prelude::UnrecognizedApiError(body)) => {
                IpfsError::Unavailable {
                    url,
                    op,
                    detail: shorten(&body),
                }
            }
            other => IpfsError::Protocol {
                url,
                op,
                detail: other.to_string(),
            },
        }
    }

    fn protocol(&self, op: &'static str, detail: String) -> IpfsError {
        IpfsError::Protocol {
            url: self.url.clone(),
            op,
            detail,
        }
    }
}

/// Kubo says "not found" in words only; these are the phrasings of an offline
/// Kubo and of the embedded node.
fn classify_api_message(
    url: String,
    op: &'static str,
    cid: Option<&str>,
    message: String,
) -> IpfsError {
    let lower = message.to_ascii_lowercase();
    match cid {
        Some(cid) if lower.contains("not found") || lower.contains("could not find") => {
            IpfsError::NotFound {
                url,
                cid: cid.to_string(),
                message,
            }
        }
        _ => IpfsError::Api { url, op, message },
    }
}

/// Parses a CID argument before anything is sent, so a typo is a clear local
/// error rather than whatever a given node version says about it.
fn check_cid(cid: &str) -> Result<cid::Cid, IpfsError> {
    cid::Cid::try_from(cid).map_err(|e| IpfsError::InvalidCid {
        cid: cid.to_string(),
        reason: e.to_string(),
    })
}

/// A node may print a CIDv0 we asked about in another form; compare content.
fn same_content(a: &cid::Cid, b: &cid::Cid) -> bool {
    a.codec() == b.codec() && a.hash() == b.hash()
}

/// Checks an API URL and reduces it to `http://HOST:PORT`.
fn normalize_api_url(api_url: &str) -> Result<String, IpfsError> {
    let invalid = |reason: &str| IpfsError::InvalidUrl {
        url: api_url.to_string(),
        reason: reason.to_string(),
    };
    let parsed = url::Url::parse(api_url).map_err(|e| invalid(&e.to_string()))?;
    match parsed.scheme() {
        "http" => {}
        "https" => {
            return Err(invalid(
                "https is not supported by this client (built without TLS); reach the node over http on a private network or through a local TLS-terminating proxy",
            ))
        }
        other => return Err(invalid(&format!("scheme {other:?} is not http"))),
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(invalid("credentials in the URL are not supported"));
    }
    if parsed.query().is_some() || parsed.fragment().is_some() {
        return Err(invalid(
            "a query or fragment has no meaning for the RPC API base",
        ));
    }
    if !matches!(parsed.path(), "" | "/" | "/api/v0" | "/api/v0/") {
        return Err(invalid("the path must be empty or /api/v0"));
    }
    let host = parsed.host_str().ok_or_else(|| invalid("no host"))?;
    let port = parsed
        .port_or_known_default()
        .ok_or_else(|| invalid("no port"))?;
    Ok(format!("http://{host}:{port}"))
}

fn shorten(text: &str) -> String {
    const MAX: usize = 200;
    let text = text.trim();
    match text.char_indices().nth(MAX) {
        Some((cut, _)) => format!("{}...", &text[..cut]),
        None => text.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_urls_are_normalized() {
        for (given, expected) in [
            ("http://127.0.0.1:5001", "http://127.0.0.1:5001"),
            ("http://127.0.0.1:5001/", "http://127.0.0.1:5001"),
            ("http://localhost:5001/api/v0", "http://localhost:5001"),
            ("http://[::1]:5001", "http://[::1]:5001"),
            ("http://ipfs.ward.local", "http://ipfs.ward.local:80"),
        ] {
            assert_eq!(
                normalize_api_url(given).ok().as_deref(),
                Some(expected),
                "{given}"
            );
        }
    }

    #[test]
    fn bad_api_urls_are_refused_with_a_reason() {
        for bad in [
            "",
            "127.0.0.1:5001",
            "localhost:5001",
            "https://127.0.0.1:5001",
            "ftp://127.0.0.1",
            "http://user:pw@127.0.0.1:5001",
            "http://127.0.0.1:5001/ipfs",
            "http://127.0.0.1:5001/?x=1",
            "http://",
        ] {
            let err = Ipfs::new(bad).err();
            assert!(
                matches!(err, Some(IpfsError::InvalidUrl { .. })),
                "{bad}: {err:?}"
            );
        }
    }

    #[test]
    fn not_found_messages_are_classified() {
        let offline_kubo = "block was not found locally (offline): ipld: could not find bafk";
        let e = classify_api_message("u".into(), "cat", Some("bafk"), offline_kubo.into());
        assert!(matches!(e, IpfsError::NotFound { .. }));
        let e = classify_api_message("u".into(), "add", None, "file is too large".into());
        assert!(matches!(e, IpfsError::Api { .. }));
    }

    #[test]
    fn long_bodies_are_shortened() {
        assert_eq!(shorten(" ok "), "ok");
        assert!(shorten(&"x".repeat(1000)).len() < 210);
    }
}
