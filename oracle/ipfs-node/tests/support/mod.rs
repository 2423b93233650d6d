//! Shared by the node tests: a started node on a temporary repository, Kubo's
//! deterministic test data, and raw HTTP for what the client library hides.

pub mod unixfs;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use healthsense_ipfs::Ipfs;
use healthsense_ipfs_node::{NodeConfig, RunningNode};
use ipfs_api_backend_hyper::{IpfsClient, TryFromUri};
use rand_chacha::rand_core::{RngCore, SeedableRng};
use sha2::{Digest, Sha256};
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Every client call in the tests is bounded well below a hang.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(60);

/// A node on a temporary repository with its clients.
pub struct TestNode {
    pub repo: TempDir,
    pub node: RunningNode,
    /// The HealthSense client.
    pub ipfs: Ipfs,
}

impl TestNode {
    /// A node on a fresh repository, listening on a free loopback port.
    pub async fn start() -> TestNode {
        Self::start_with(|cfg| cfg).await
    }

    /// Like [`TestNode::start`] with the config adjusted by `adjust`.
    pub async fn start_with(adjust: impl FnOnce(NodeConfig) -> NodeConfig) -> TestNode {
        let repo = match tempfile::tempdir() {
            Ok(repo) => repo,
            Err(e) => panic!("no temporary directory: {e}"),
        };
        Self::start_on(repo, adjust).await
    }

    /// A node on an existing repository (e.g. after a restart).
    pub async fn start_on(
        repo: TempDir,
        adjust: impl FnOnce(NodeConfig) -> NodeConfig,
    ) -> TestNode {
        let cfg = adjust(NodeConfig::new(repo.path(), loopback_any_port()));
        let node = match healthsense_ipfs_node::start(cfg).await {
            Ok(node) => node,
            Err(e) => panic!("node did not start: {e:#}"),
        };
        let ipfs = match Ipfs::new(&node.api_url()) {
            Ok(ipfs) => ipfs.with_timeout(CALL_TIMEOUT),
            Err(e) => panic!("{e}"),
        };
        TestNode { repo, node, ipfs }
    }

    /// The Kubo client library itself, for options `Ipfs` does not expose.
    pub fn kubo_client(&self) -> IpfsClient {
        match IpfsClient::from_str(&self.node.api_url()) {
            Ok(client) => client,
            Err(e) => panic!("{e}"),
        }
    }

    /// Shuts the node down and hands back its repository.
    pub async fn stop(self) -> TempDir {
        self.node.shutdown().await;
        self.repo
    }
}

pub fn loopback_any_port() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

/// Kubo's deterministic test data (`test/cli/testutils/random_reader.go`):
/// the ChaCha20 keystream under key sha256(seed) and an all-zero nonce. With
/// a zero nonce and fewer than 2^32 blocks that is also the keystream of
/// rand_chacha's generator seeded with the key (counter 0, stream 0).
pub fn kubo_deterministic_bytes(len: usize, seed: &str) -> Vec<u8> {
    let key: [u8; 32] = Sha256::digest(seed.as_bytes()).into();
    let mut data = vec![0u8; len];
    rand_chacha::ChaCha20Rng::from_seed(key).fill_bytes(&mut data);
    data
}

/// Sends one raw HTTP/1.1 request and returns the status code and body.
pub async fn raw_http(addr: SocketAddr, request_head: &str) -> (u16, String) {
    let mut stream = match tokio::net::TcpStream::connect(addr).await {
        Ok(stream) => stream,
        Err(e) => panic!("connect {addr}: {e}"),
    };
    let request =
        format!("{request_head}\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
    let mut response = Vec::new();
    let io = async {
        stream.write_all(request.as_bytes()).await?;
        stream.read_to_end(&mut response).await
    };
    if let Err(e) = tokio::time::timeout(CALL_TIMEOUT, io)
        .await
        .unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into()))
    {
        panic!("raw request to {addr}: {e}");
    }
    let text = String::from_utf8_lossy(&response).to_string();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_string())
        .unwrap_or_default();
    (status, body)
}

/// Deletes the block-store files of exactly `size` bytes (a raw leaf is stored
/// as its bytes); returns how many were removed.
pub fn remove_block_files_of_size(dir: &Path, size: u64) -> std::io::Result<usize> {
    let mut removed = 0;
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            removed += remove_block_files_of_size(&path, size)?;
        } else if std::fs::metadata(&path)?.len() == size {
            std::fs::remove_file(&path)?;
            removed += 1;
        }
    }
    Ok(removed)
}
