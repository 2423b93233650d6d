//! The embedded node over real HTTP, driven by the Kubo RPC client: CIDs equal
//! to Kubo's, round trips, persistence, errors; and, in `units`, the node's
//! request-parsing helpers on their own. The crate's one test binary: each
//! more would link libp2p again.

mod support;
mod units;

use std::io::Cursor;
use std::time::Duration;

use futures::TryStreamExt;
use healthsense_ipfs::{Ipfs, IpfsError, ADD_OPTIONS};
use healthsense_ipfs_node::NodeConfig;
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
    match healthsense_ipfs_node::start(cfg).await {
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

/// Splits a streamed answer into its JSON lines.
fn json_lines(body: &str) -> Result<Vec<serde_json::Value>, serde_json::Error> {
    body.lines().map(serde_json::from_str).collect()
}

#[tokio::test]
async fn pins_stream_and_unpin_as_kubo_answers_the_official_client() -> TestResult {
    let t = TestNode::start().await;
    let addr = t.node.addr();
    let leaf = t.ipfs.add(b"one block".to_vec()).await?;
    let file = t
        .ipfs
        .add(kubo_deterministic_bytes(
            3 * ADD_OPTIONS.chunk_size,
            "unpin",
        ))
        .await?;
    let post = |query: String| async move {
        raw_http(addr, &format!("POST /api/v0/{query} HTTP/1.1")).await
    };

    // kubo-rpc-client's pin.ls({paths}): `stream=true`, its own `paths`
    // (Kubo ignores options it does not define) and `names=false`.
    let (status, body) = post(format!(
        "pin/ls?paths={leaf}&names=false&stream=true&arg={leaf}"
    ))
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        json_lines(&body)?,
        vec![serde_json::json!({ "Cid": leaf, "Type": "recursive" })]
    );
    // Every pin, one per line: both roots recursive, the file's leaves indirect.
    let (status, body) = post("pin/ls?stream=true".into()).await;
    assert_eq!(status, 200, "{body}");
    let listed = json_lines(&body)?;
    let typ = |cid: &str| {
        listed
            .iter()
            .find(|l| l["Cid"] == cid)
            .and_then(|l| l["Type"].as_str())
            .map(str::to_string)
    };
    assert_eq!(typ(&leaf).as_deref(), Some("recursive"));
    assert_eq!(typ(&file).as_deref(), Some("recursive"));
    assert_eq!(listed.iter().filter(|l| l["Type"] == "indirect").count(), 3);
    // Without `stream`, one object, with Kubo's (empty) names.
    let (_, body) = post(format!("pin/ls?arg={leaf}")).await;
    let keys: serde_json::Value = serde_json::from_str(&body)?;
    assert_eq!(
        keys["Keys"][&leaf],
        serde_json::json!({ "Type": "recursive", "Name": "" })
    );

    // kubo-rpc-client's pin.add: `stream=true` too.
    let (status, body) = post(format!("pin/add?arg={file}&recursive=true&stream=true")).await;
    assert_eq!(
        (status, serde_json::from_str::<serde_json::Value>(&body)?),
        (200, serde_json::json!({ "Pins": [file] }))
    );

    // pin rm: a recursive pin cannot go as a direct one; recursively it goes,
    // with the indirect pins of its leaves; a second rm is Kubo's error.
    let (status, body) = post(format!("pin/rm?arg={file}&recursive=false")).await;
    assert_eq!(status, 500);
    assert!(
        body.contains(&format!("{file} is pinned recursively")),
        "{body}"
    );
    let (status, body) = post(format!("pin/rm?arg={file}")).await;
    assert_eq!(
        (status, serde_json::from_str::<serde_json::Value>(&body)?),
        (200, serde_json::json!({ "Pins": [file] }))
    );
    assert!(!t.ipfs.is_pinned(&file).await?);
    let (_, body) = post("pin/ls?stream=true&type=indirect".into()).await;
    assert_eq!(json_lines(&body)?.len(), 0, "{body}");
    let (status, body) = post(format!("pin/rm?arg={file}")).await;
    assert_eq!(status, 500);
    assert!(body.contains("not pinned or pinned indirectly"), "{body}");
    // The blocks stay (nothing is garbage collected): it can be pinned again.
    t.ipfs.pin_add(&file).await?;
    assert!(t.ipfs.is_pinned(&file).await?);

    // Output options every command shares, as Kubo treats them.
    let (_, body) = post(format!("pin/ls?arg={leaf}&stream=true&cid-base=base36")).await;
    let base36 = json_lines(&body)?;
    assert!(
        base36[0]["Cid"]
            .as_str()
            .is_some_and(|c| c.starts_with('k')),
        "{body}"
    );
    let (status, body) = post("version?encoding=text".into()).await;
    assert_eq!((status, body.contains("use json")), (500, true), "{body}");
    t.stop().await;
    Ok(())
}

#[tokio::test]
async fn add_ignores_what_does_not_apply_and_refuses_what_would_change_the_cid() -> TestResult {
    let t = TestNode::start().await;
    let addr = t.node.addr();
    // Options Kubo defines that do not apply to one file on an offline node,
    // and one it does not define: the CID is the one Kubo gives.
    let ignored = "stream-channels=true&progress=false&fast-provide-root=true&max-directory-links=8&max-file-links=174&quiet=true&recursive=false&shard-split-threshold=1000";
    let reply = multipart_add(addr, &format!("cid-version=1&{ignored}"), b"hello world").await;
    assert_eq!(
        reply.map(|(status, body)| (
            status,
            body.contains("bafkreifzjut3te2nhyekklss27nh3k72ysco7y32koao5eei66wof36n5e")
        )),
        Some((200, true))
    );
    // `progress`: a progress line, then the result, as Kubo streams them.
    let (status, body) = multipart_add(addr, "progress=true", b"hello world")
        .await
        .unwrap_or_default();
    let lines = json_lines(&body)?;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        lines.first().map(|l| &l["Bytes"]),
        Some(&serde_json::json!(11))
    );
    assert_eq!(
        lines.last().map(|l| &l["Hash"]),
        Some(&serde_json::json!(
            "Qmf412jQZiuVUtdgnB36FXFX7xg5V6KEbSJ4dpQuhkLyfD"
        ))
    );
    for refused in [
        "max-file-links=1024",
        "mtime=1700000000",
        "nocopy=true",
        "to-files=/archive",
        "pin-name=x",
    ] {
        let (status, body) = multipart_add(addr, refused, b"hello world")
            .await
            .unwrap_or_default();
        let error: serde_json::Value = serde_json::from_str(&body)?;
        assert_eq!(
            (status, &error["Type"]),
            (500, &"error".into()),
            "{refused}: {body}"
        );
    }
    t.stop().await;
    Ok(())
}

/// `POST /api/v0/add?QUERY` with one multipart file, over raw HTTP.
async fn multipart_add(
    addr: std::net::SocketAddr,
    query: &str,
    data: &[u8],
) -> Option<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let boundary = "healthsense-test-boundary";
    let mut body = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"\"\r\nContent-Type: application/octet-stream\r\n\r\n"
    )
    .into_bytes();
    body.extend_from_slice(data);
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    let head = format!(
        "POST /api/v0/add?{query} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: multipart/form-data; boundary={boundary}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
    stream.write_all(head.as_bytes()).await.ok()?;
    stream.write_all(&body).await.ok()?;
    let mut response = Vec::new();
    tokio::time::timeout(support::CALL_TIMEOUT, stream.read_to_end(&mut response))
        .await
        .ok()?
        .ok()?;
    let text = String::from_utf8_lossy(&response).to_string();
    let status = text.split(' ').nth(1)?.parse().ok()?;
    let (_, body) = text.split_once("\r\n\r\n")?;
    Some((status, body.to_string()))
}
