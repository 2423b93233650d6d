//! The embedded node over real HTTP, driven by the Kubo RPC client: CIDs equal
//! to Kubo's, round trips, persistence, errors.

mod support;

use std::io::Cursor;
use std::time::Duration;

use futures::TryStreamExt;
use healthsense_ipfs::node::NodeConfig;
use healthsense_ipfs::{Ipfs, IpfsError, ADD_OPTIONS};
use ipfs_api_backend_hyper::{request, IpfsApi};
use support::unixfs::{file_cid, Layout};
use support::{kubo_deterministic_bytes, raw_http, TestNode};

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// Adds through the HealthSense client (so with `ADD_OPTIONS`) and checks the
/// bytes come back from cat.
async fn add_and_cat(ipfs: &Ipfs, data: &[u8]) -> Result<String, IpfsError> {
    let cid = ipfs.add(data.to_vec()).await?;
    let back = ipfs.cat(&cid).await?;
    assert!(
        back == data,
        "cat of {cid} gave {} bytes, not the {} added",
        back.len(),
        data.len()
    );
    Ok(cid)
}

#[tokio::test]
async fn small_files_get_the_cids_kubo_gives_them() -> TestResult {
    let t = TestNode::start().await;
    // ipfs add --cid-version=1 (the client's ADD_OPTIONS), CIDs published by Kubo:
    for (data, kubo) in [
        // kubo test/cli/add_test.go, shortStringCidV1
        (
            &b"hello world"[..],
            "bafkreifzjut3te2nhyekklss27nh3k72ysco7y32koao5eei66wof36n5e",
        ),
        // kubo test/sharness/t0040-add-and-cat.sh, MARS with --cid-version=1
        (
            b"Hello Mars!\n",
            "bafkreibmlvvgdyihetgocpof6xk64kjjzdeq2e4c7hqs3krdheosk4tgj4",
        ),
        // kubo test/sharness/t0114-gateway-subdomains/README.md, CIDv1 of "hello\n"
        (
            b"hello\n",
            "bafkreicysg23kiwv34eg2d7qweipxwosdo2py4ldv42nbauguluen5v6am",
        ),
        // kubo test/sharness/t0040-add-and-cat.sh, zero length file with raw leaves
        (
            b"",
            "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku",
        ),
    ] {
        assert_eq!(add_and_cat(&t.ipfs, data).await?, kubo);
    }
    // Kubo's defaults for other clients: CIDv0 without an option, and CIDv1
    // without raw leaves (kubo test/cli/add_test.go, t0040-add-and-cat.sh).
    let v1_no_raw = request::Add {
        cid_version: Some(1),
        raw_leaves: Some(false),
        ..Default::default()
    };
    for (data, options, kubo) in [
        (
            &b"hello world"[..],
            request::Add::default(),
            "Qmf412jQZiuVUtdgnB36FXFX7xg5V6KEbSJ4dpQuhkLyfD",
        ),
        (
            b"Hello Worlds!\n",
            request::Add::default(),
            "QmVr26fY1tKyspEJBniVhqxQeEjhF78XerGiqWAwraVLQH",
        ),
        (
            b"hello world",
            v1_no_raw,
            "bafybeihykld7uyxzogax6vgyvag42y7464eywpf55gxi5qpoisibh3c5wa",
        ),
    ] {
        let reply = t
            .kubo_client()
            .add_with_options(Cursor::new(data.to_vec()), options)
            .await?;
        assert_eq!(reply.hash, kubo);
        assert_eq!(t.ipfs.cat(kubo).await?, data);
    }
    t.stop().await;
    Ok(())
}

#[tokio::test]
async fn balanced_dags_at_and_past_174_links_match_kubo() -> TestResult {
    // Kubo's `test-cid-v1` profile (CIDv1, raw leaves, sha2-256, size-1048576,
    // 174 links) on its deterministic data, seed "v1-seed": 174 MiB fills one
    // root, 175 MiB forces the second level. Kubo test/cli/add_test.go,
    // "ipfs init --profile=test-cid-v1 applies UnixFSChunker=size-1048576".
    let t = TestNode::start_with(|cfg| NodeConfig {
        max_add_bytes: 200 << 20,
        ..cfg
    })
    .await;
    for (mebibytes, kubo) in [
        (
            174,
            "bafybeigwduxcf2aawppv3isnfeshnimkyplvw3hthxjhr2bdeje4tdaicu",
        ),
        (
            175,
            "bafybeidhd7lo2n2v7lta5yamob3xwhbxcczmmtmhquwhjesi35jntf7mpu",
        ),
    ] {
        let data = kubo_deterministic_bytes(mebibytes << 20, "v1-seed");
        // The independent encoder agrees with Kubo, which vouches for it below.
        assert_eq!(
            file_cid(&data, Layout::cid_v1(1 << 20)),
            kubo,
            "test encoder, {mebibytes} MiB"
        );
        let options = request::Add {
            cid_version: Some(1),
            raw_leaves: Some(true),
            chunker: Some("size-1048576"),
            ..Default::default()
        };
        let reply = t
            .kubo_client()
            .add_with_options(Cursor::new(data), options)
            .await?;
        assert_eq!(reply.hash, kubo, "node, {mebibytes} MiB");
    }
    t.stop().await;
    Ok(())
}

#[tokio::test]
async fn multi_chunk_layouts_match_the_independent_encoder() -> TestResult {
    let t = TestNode::start().await;
    let chunk = ADD_OPTIONS.chunk_size;
    for len in [
        chunk,           // exactly one chunk: a bare raw leaf
        chunk + 1,       // two leaves under one root
        1_000_000,       // 1 MB, four leaves
        174 * chunk,     // a full root: 174 links
        174 * chunk + 1, // 175 leaves: the second level appears
    ] {
        let data = kubo_deterministic_bytes(len, "healthsense");
        let cid = add_and_cat(&t.ipfs, &data).await?;
        assert_eq!(cid, file_cid(&data, Layout::cid_v1(chunk)), "{len} bytes");
        assert!(
            t.ipfs.is_pinned(&cid).await?,
            "{len} bytes not pinned by add"
        );
    }
    t.stop().await;
    Ok(())
}

#[tokio::test]
async fn blocks_and_pins_survive_a_restart() -> TestResult {
    let data = kubo_deterministic_bytes(700_000, "restart");
    let t = TestNode::start().await;
    let cid = t.ipfs.add(data.clone()).await?;
    let peer = t.ipfs.id().await?;
    let repo = t.stop().await;

    let t = TestNode::start_on(repo, |cfg| cfg).await;
    assert_eq!(t.ipfs.cat(&cid).await?, data);
    assert!(t.ipfs.is_pinned(&cid).await?);
    assert_eq!(
        t.ipfs.id().await?,
        peer,
        "the peer ID is kept in the repository"
    );
    t.stop().await;
    Ok(())
}

#[tokio::test]
async fn a_second_node_on_a_running_repository_is_refused() -> TestResult {
    let t = TestNode::start().await;
    let cfg = NodeConfig::new(t.repo.path(), support::loopback_any_port());
    match healthsense_ipfs::node::start(cfg).await {
        Ok(second) => {
            second.shutdown().await;
            panic!("a second node started on a repository in use");
        }
        Err(e) => assert!(
            format!("{e:#}").contains("in use by another running node"),
            "{e:#}"
        ),
    }
    t.stop().await;
    Ok(())
}

#[tokio::test]
async fn pins_are_explicit_and_listed() -> TestResult {
    let t = TestNode::start().await;
    let unpinned = request::Add {
        cid_version: Some(1),
        pin: Some(false),
        ..Default::default()
    };
    let data = Cursor::new(kubo_deterministic_bytes(600_000, "pins"));
    let cid = t.kubo_client().add_with_options(data, unpinned).await?.hash;
    assert!(!t.ipfs.is_pinned(&cid).await?);
    t.ipfs.pin_add(&cid).await?;
    assert!(t.ipfs.is_pinned(&cid).await?);
    let all = t.kubo_client().pin_ls(None, None).await?;
    assert_eq!(
        all.keys.get(&cid).map(|t| t.typ.as_str()),
        Some("recursive")
    );
    // The leaves are kept through the root: Kubo calls that indirect.
    assert!(all.keys.values().any(|t| t.typ == "indirect"));
    t.stop().await;
    Ok(())
}

#[tokio::test]
async fn unknown_content_is_not_found_without_waiting() -> TestResult {
    let t = TestNode::start().await;
    // Bounded: a node that went looking on a network would time out instead.
    let ipfs = t.ipfs.clone().with_timeout(Duration::from_secs(10));
    let absent = file_cid(b"never added", Layout::cid_v1(ADD_OPTIONS.chunk_size));
    for result in [
        ipfs.cat(&absent).await.map(|_| ()),
        ipfs.pin_add(&absent).await,
    ] {
        match result {
            Err(e @ IpfsError::NotFound { .. }) => assert!(!e.is_retryable()),
            other => panic!("expected NotFound, got {other:?}"),
        }
    }
    t.stop().await;
    Ok(())
}

#[tokio::test]
async fn bad_cids_are_clear_errors() -> TestResult {
    let t = TestNode::start().await;
    match t.ipfs.cat("not-a-cid").await {
        Err(e @ IpfsError::InvalidCid { .. }) => {
            assert!(!e.is_retryable() && e.to_string().contains("not-a-cid"))
        }
        other => panic!("expected InvalidCid, got {other:?}"),
    }
    // Other clients get Kubo's error from the node itself.
    let result: Result<Vec<_>, _> = t.kubo_client().cat("not-a-cid").try_collect().await;
    let message = result.err().map(|e| e.to_string()).unwrap_or_default();
    assert!(message.contains("invalid path"), "{message}");
    t.stop().await;
    Ok(())
}

#[tokio::test]
async fn an_unreachable_api_is_a_retryable_error() -> TestResult {
    // A port that was just free: nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let ipfs =
        Ipfs::new(&format!("http://127.0.0.1:{port}"))?.with_timeout(Duration::from_secs(10));
    for result in [ipfs.version().await, ipfs.add(b"x".to_vec()).await] {
        match result {
            Err(e @ IpfsError::Unreachable { .. }) => assert!(e.is_retryable()),
            other => panic!("expected Unreachable, got {other:?}"),
        }
    }
    Ok(())
}

#[tokio::test]
async fn version_and_id_parse() -> TestResult {
    let t = TestNode::start().await;
    assert_eq!(t.ipfs.version().await?, env!("CARGO_PKG_VERSION"));
    // Ed25519 peer IDs print as 12D3KooW...
    assert!(t.ipfs.id().await?.starts_with("12D3KooW"));
    t.stop().await;
    Ok(())
}

#[tokio::test]
async fn refusals_use_kubos_error_shape() -> TestResult {
    let t = TestNode::start_with(|cfg| NodeConfig {
        max_add_bytes: 1000,
        ..cfg
    })
    .await;
    let too_big = t
        .kubo_client()
        .add(Cursor::new(vec![7u8; 2000]))
        .await
        .err()
        .map(|e| e.to_string());
    assert!(
        too_big
            .as_deref()
            .is_some_and(|m| m.contains("limit of 1000 bytes")),
        "{too_big:?}"
    );
    let trickle = request::Add {
        trickle: Some(true),
        ..Default::default()
    };
    let refused = t
        .kubo_client()
        .add_with_options(Cursor::new(b"x".to_vec()), trickle)
        .await;
    assert!(refused
        .err()
        .is_some_and(|e| e.to_string().contains("trickle")));

    let addr = t.node.addr();
    let (status, body) = raw_http(addr, "POST /api/v0/cat?arg=nonsense HTTP/1.1").await;
    assert_eq!(status, 500);
    let error: serde_json::Value = serde_json::from_str(&body)?;
    assert_eq!(
        (&error["Type"], &error["Code"]),
        (&"error".into(), &0.into())
    );
    assert!(error["Message"]
        .as_str()
        .is_some_and(|m| m.starts_with("invalid path")));
    // Kubo's RPC is POST only; unknown commands are 404; web pages are refused.
    assert_eq!(raw_http(addr, "GET /api/v0/version HTTP/1.1").await.0, 405);
    let (status, body) = raw_http(addr, "POST /api/v0/block/get HTTP/1.1").await;
    assert_eq!((status, body.contains("command not found")), (404, true));
    let from_page = "POST /api/v0/version HTTP/1.1\r\nOrigin: http://page.example";
    assert_eq!(raw_http(addr, from_page).await.0, 403);
    t.stop().await;
    Ok(())
}

#[tokio::test]
async fn a_block_lost_mid_file_fails_the_cat_instead_of_shortening_it() -> TestResult {
    let t = TestNode::start().await;
    // Three full leaves and a last one of a size no other block has.
    let last_leaf = 213_568;
    let data = kubo_deterministic_bytes(3 * ADD_OPTIONS.chunk_size + last_leaf, "damage");
    let cid = t.ipfs.add(data).await?;
    let blockstore = t.repo.path().join("blockstore");
    assert_eq!(
        support::remove_block_files_of_size(&blockstore, last_leaf as u64)?,
        1
    );
    // The body ends without its final chunk: a broken transfer, as for a node
    // that died mid-answer.
    match t.ipfs.cat(&cid).await {
        Err(e) => assert!(e.is_retryable(), "{e}"),
        Ok(bytes) => panic!("cat of a damaged file returned {} bytes", bytes.len()),
    }
    t.stop().await;
    Ok(())
}
