#![warn(missing_docs)]
//! HealthSense's embedded IPFS node: a rust-ipfs node with a persistent
//! repository, serving on a local socket the Kubo RPC subset the oracle
//! archives through (with the client in the crate `healthsense-ipfs`).
//! [`start`] runs it in a Tokio runtime; the binary `healthsense-ipfs` runs
//! it as a process.
//!
//! The node is offline by construction: no libp2p transport is enabled (the
//! swarm gets rust-ipfs's dummy transport, which can neither dial nor listen),
//! no bootstrap peers, no DHT, no bitswap, no mDNS. It stores, pins and serves
//! what is added to it, and answers "not found" at once for anything else.

mod add;
mod api;
mod cat;
mod identity;
mod info;
mod kubo;
mod pin;

/// Not part of the node's API: the request-parsing helpers the crate's tests
/// check directly. The lib has no test harness (`test = false`: a test-mode
/// build would compile libp2p's swarm a second time), so its tests run in the
/// integration binary `tests/node.rs` and reach these helpers from here.
#[doc(hidden)]
pub mod internals {
    pub use crate::add::ImportSettings;
    pub use crate::api::api_url;
    pub use crate::cat::window;
    pub use crate::kubo::{parse_ipfs_path, CidEncoder, KuboError, KuboResult, Params};
}

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use base64::Engine;
use rust_ipfs::builder::DefaultIpfsBuilder;
use rust_ipfs::repo::LockError;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// How to run the node.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// Repository directory (created if missing): blocks, pins, the node's
    /// identity and the lock that keeps a second node off it.
    pub repo: PathBuf,
    /// Where the RPC API listens, e.g. `127.0.0.1:5001`; port 0 picks a free one.
    pub listen: SocketAddr,
    /// Largest file `/api/v0/add` accepts, in bytes.
    pub max_add_bytes: usize,
}

impl NodeConfig {
    /// Default [`NodeConfig::max_add_bytes`]: 512 MiB.
    pub const DEFAULT_MAX_ADD_BYTES: usize = 512 << 20;

    /// A config for `repo` listening on `listen`, with the default add limit.
    pub fn new(repo: impl Into<PathBuf>, listen: SocketAddr) -> NodeConfig {
        NodeConfig {
            repo: repo.into(),
            listen,
            max_add_bytes: Self::DEFAULT_MAX_ADD_BYTES,
        }
    }
}

/// What the RPC handlers share.
pub(crate) struct NodeState {
    pub(crate) ipfs: rust_ipfs::Ipfs,
    pub(crate) max_add_bytes: usize,
    pub(crate) peer_id: String,
    /// Base64 of the protobuf-encoded public key, as Kubo's `id` prints it.
    pub(crate) public_key: String,
}

/// A started node. Stop it with [`RunningNode::shutdown`]; dropping it leaves
/// the server running until the Tokio runtime ends.
pub struct RunningNode {
    addr: SocketAddr,
    ipfs: rust_ipfs::Ipfs,
    stop: oneshot::Sender<()>,
    server: JoinHandle<std::io::Result<()>>,
}

/// How long in-flight requests may finish after a shutdown was asked for.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Opens (or creates) the repository, starts the offline rust-ipfs node and
/// serves the RPC API on `cfg.listen`. Fails if another node holds the
/// repository, or the address cannot be bound.
pub async fn start(cfg: NodeConfig) -> anyhow::Result<RunningNode> {
    std::fs::create_dir_all(&cfg.repo)
        .with_context(|| format!("cannot create the IPFS repository {}", cfg.repo.display()))?;
    let keypair = identity::load_or_create(&cfg.repo)?;
    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .with_context(|| format!("cannot listen on {} for the IPFS RPC API", cfg.listen))?;
    let addr = listener
        .local_addr()
        .context("the RPC listener has no local address")?;
    // No transports, listeners, bootstrap peers or network behaviours: offline.
    let ipfs = DefaultIpfsBuilder::with_keypair(&keypair)
        .context("cannot use the node identity")?
        .set_path(&cfg.repo)
        .start()
        .await
        .map_err(|e| explain_start_error(e, &cfg))?;
    let public = keypair.public();
    let state = NodeState {
        ipfs: ipfs.clone(),
        max_add_bytes: cfg.max_add_bytes,
        peer_id: public.to_peer_id().to_string(),
        public_key: base64::engine::general_purpose::STANDARD.encode(public.encode_protobuf()),
    };
    let (stop, stopped) = oneshot::channel::<()>();
    let app = api::router(state);
    let server = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = stopped.await;
            })
            .await
    });
    tracing::info!(api = %api::api_url(addr), repo = %cfg.repo.display(), "IPFS node up (offline)");
    Ok(RunningNode {
        addr,
        ipfs,
        stop,
        server,
    })
}

fn explain_start_error(err: anyhow::Error, cfg: &NodeConfig) -> anyhow::Error {
    match err.downcast_ref::<LockError>() {
        Some(LockError::RepoInUse) => anyhow::anyhow!(
            "the IPFS repository {} is in use by another running node (its lock {} is held); stop that node or use another --repo",
            cfg.repo.display(),
            cfg.repo.join("repo_lock").display()
        ),
        _ => err.context(format!("cannot start the IPFS node on {}", cfg.repo.display())),
    }
}

impl RunningNode {
    /// The address the RPC API is bound to (the real port when port 0 was asked for).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The RPC API's base URL for `healthsense_ipfs::Ipfs::new`, e.g. `http://127.0.0.1:5001`
    /// (a loopback address when bound to all interfaces).
    pub fn api_url(&self) -> String {
        api::api_url(self.addr)
    }

    /// Stops accepting requests, lets in-flight ones finish (up to 10 s), then
    /// stops the node and releases the repository.
    pub async fn shutdown(self) {
        let RunningNode {
            ipfs,
            stop,
            mut server,
            ..
        } = self;
        let _ = stop.send(());
        match tokio::time::timeout(SHUTDOWN_GRACE, &mut server).await {
            Ok(Ok(Err(e))) => tracing::warn!(error = %e, "IPFS RPC server ended with an error"),
            Ok(Err(e)) => tracing::warn!(error = %e, "IPFS RPC server task failed"),
            Ok(Ok(Ok(()))) => {}
            Err(_) => {
                tracing::warn!(
                    "IPFS RPC requests still running after {SHUTDOWN_GRACE:?}; cutting them off"
                );
                server.abort();
                let _ = server.await;
            }
        }
        ipfs.exit_daemon().await;
        tracing::info!("IPFS node stopped");
    }
}
