//! Errors of the Kubo RPC client, split into "try again later" and "will not
//! work until something changes".

use std::time::Duration;

/// What went wrong talking to an IPFS node. [`IpfsError::is_retryable`] tells a
/// caller (the oracle's resumable archive step) whether to keep the work and
/// try again later or to surface it to an operator.
#[derive(Debug, thiserror::Error)]
pub enum IpfsError {
    /// The API URL given to [`crate::Ipfs::new`] cannot be used.
    #[error("invalid IPFS API URL {url:?}: {reason}; expected http://HOST:PORT of a Kubo RPC API, e.g. http://127.0.0.1:5001")]
    InvalidUrl {
        /// The URL as given.
        url: String,
        /// Why it was refused.
        reason: String,
    },

    /// A CID argument is not a CID.
    #[error(
        "invalid CID {cid:?}: {reason}; pass a CID as returned by add (e.g. bafy... or bafk...)"
    )]
    InvalidCid {
        /// The string as given.
        cid: String,
        /// Why it did not parse.
        reason: String,
    },

    /// The node could not be reached, or the connection broke mid-call.
    #[error("IPFS API {url} unreachable during {op}: {detail}; check that the node (healthsense-ipfs or Kubo) is running at that URL; the call can be retried")]
    Unreachable {
        /// Base URL of the API.
        url: String,
        /// The RPC call, e.g. `add`.
        op: &'static str,
        /// The transport error.
        detail: String,
    },

    /// The node did not answer in time.
    #[error("IPFS API {url} did not complete {op} within {after:?}; the node may be overloaded or (for cat on a networked Kubo) searching the network for content it lacks; retry later or raise the timeout")]
    Timeout {
        /// Base URL of the API.
        url: String,
        /// The RPC call.
        op: &'static str,
        /// The timeout that ran out.
        after: Duration,
    },

    /// Something between the client and the node answered instead of the node
    /// (a non-JSON error page, e.g. a proxy whose backend is down).
    #[error("IPFS API {url} answered {op} with a non-Kubo error ({detail}); if a proxy or IPFS Cluster sits in front of the node, check the node behind it; the call can be retried")]
    Unavailable {
        /// Base URL of the API.
        url: String,
        /// The RPC call.
        op: &'static str,
        /// The body of the answer, shortened.
        detail: String,
    },

    /// The node does not hold the content and cannot fetch it (an offline node).
    #[error("IPFS node at {url} does not have {cid}: {message}; re-add the content or point the client at a node that holds it")]
    NotFound {
        /// Base URL of the API.
        url: String,
        /// The CID asked for.
        cid: String,
        /// The node's message.
        message: String,
    },

    /// The content is larger than this client accepts for `cat`.
    #[error("{cid} is larger than the {limit}-byte cat limit of this client; raise it with Ipfs::with_max_cat_bytes if that size is expected")]
    TooLarge {
        /// The CID asked for.
        cid: String,
        /// The limit in bytes.
        limit: usize,
    },

    /// The node refused the call with a Kubo error (`{"Message":..,"Type":"error"}`).
    #[error("IPFS node at {url} refused {op}: {message}")]
    Api {
        /// Base URL of the API.
        url: String,
        /// The RPC call.
        op: &'static str,
        /// The node's message.
        message: String,
    },

    /// The node answered with something that is not the Kubo RPC API's shape.
    #[error("IPFS API {url} gave an unexpected answer to {op}: {detail}; is the URL the Kubo RPC API (port 5001) rather than a gateway (port 8080)?")]
    Protocol {
        /// Base URL of the API.
        url: String,
        /// The RPC call.
        op: &'static str,
        /// What was wrong with the answer.
        detail: String,
    },
}

impl IpfsError {
    /// True for transport failures that may pass by themselves (node down or
    /// restarting, timeouts, a proxy without its backend): keep the work and
    /// retry later. False when retrying the same call cannot succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            IpfsError::Unreachable { .. }
                | IpfsError::Timeout { .. }
                | IpfsError::Unavailable { .. }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_transport_failures_are_retryable() {
        let url = || "http://127.0.0.1:5001".to_string();
        let retryable = [
            IpfsError::Unreachable {
                url: url(),
                op: "add",
                detail: "refused".into(),
            },
            IpfsError::Timeout {
                url: url(),
                op: "cat",
                after: Duration::from_secs(1),
            },
            IpfsError::Unavailable {
                url: url(),
                op: "add",
                detail: "502".into(),
            },
        ];
        let permanent = [
            IpfsError::InvalidUrl {
                url: url(),
                reason: "x".into(),
            },
            IpfsError::InvalidCid {
                cid: "x".into(),
                reason: "x".into(),
            },
            IpfsError::NotFound {
                url: url(),
                cid: "x".into(),
                message: "x".into(),
            },
            IpfsError::TooLarge {
                cid: "x".into(),
                limit: 1,
            },
            IpfsError::Api {
                url: url(),
                op: "add",
                message: "x".into(),
            },
            IpfsError::Protocol {
                url: url(),
                op: "add",
                detail: "x".into(),
            },
        ];
        assert!(retryable.iter().all(IpfsError::is_retryable));
        assert!(!permanent.iter().any(IpfsError::is_retryable));
    }
}
