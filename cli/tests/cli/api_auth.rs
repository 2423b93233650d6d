//! Sign-in under a flood (issue 17): a hub with its REST API on a real
//! anvil, flooded with anonymous `POST /auth/challenge` requests over real
//! HTTP from many loopback addresses (Linux routes all of 127.0.0.0/8 to
//! the loopback interface, so each source address is a client of its own to
//! the per-client limiter), while and after which a doctor signs in.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use alloy::node_bindings::Anvil;
use alloy::primitives::Address;
use alloy::providers::ProviderBuilder;
use alloy::signers::local::PrivateKeySigner;
use alloy::signers::SignerSync;
use alloy::transports::http::reqwest;
use healthsense_abi::bindings::HealthSense as H;
use healthsense_abi::rules::ids;
use healthsense_cli::admin::Client;
use healthsense_cli::{artifact, deploy, tools};
use serde_json::{json, Value};

const ADMIN: usize = 0;
const HUB: usize = 1;
const DOCTOR: usize = 2;
/// Anonymous challenges in the flood: twice the old table of pending nonces.
const FLOOD: u64 = 20_000;
/// Source addresses the flood comes from, and requests from each.
const FLOODERS: u64 = 250;

/// POSTs `body` to `url` from `http`; the status, the body and `Retry-After`.
async fn post(http: &reqwest::Client, url: &str, body: Value) -> (u16, Value, Option<String>) {
    let res = http.post(url).header("content-type", "application/json").body(body.to_string()).send().await.unwrap();
    let status = res.status().as_u16();
    let retry = res.headers().get("retry-after").and_then(|v| v.to_str().ok()).map(str::to_string);
    (status, serde_json::from_str(&res.text().await.unwrap()).unwrap_or(Value::Null), retry)
}

/// A client whose connections leave from `ip`.
fn client_from(ip: &str) -> reqwest::Client {
    reqwest::Client::builder().local_address(ip.parse::<IpAddr>().unwrap()).build().unwrap()
}

/// The doctor signs in from 127.0.0.1 and reads `/me`; the role it got.
async fn doctor_signs_in(base: &str, doctor: &PrivateKeySigner) -> String {
    let http = client_from("127.0.0.1");
    let (s, ch, _) = post(&http, &format!("{base}/api/v1/auth/challenge"), json!({ "address": doctor.address() })).await;
    assert_eq!(s, 200, "the doctor gets a challenge: {ch}");
    let message = ch["message"].as_str().unwrap();
    let signature = alloy::hex::encode_prefixed(doctor.sign_message_sync(message.as_bytes()).unwrap().as_bytes());
    let (s, session, _) =
        post(&http, &format!("{base}/api/v1/auth/session"), json!({ "message": message, "signature": signature })).await;
    assert_eq!(s, 200, "the doctor signs in: {session}");
    let me: Value = http
        .get(format!("{base}/api/v1/me"))
        .bearer_auth(session["token"].as_str().unwrap())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    me["role"].as_str().unwrap_or_default().to_string()
}

#[test]
fn a_doctor_signs_in_during_and_after_a_flood_of_anonymous_challenges() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async {
        let root = tools::project_root().unwrap();
        let anvil = Anvil::new().path(tools::foundry_tool(&root, "anvil").unwrap()).spawn();
        let provider = ProviderBuilder::new().connect_http(anvil.endpoint_url());
        let admin = anvil.addresses()[ADMIN];
        let d = deploy::deploy_evm(&provider, anvil.endpoint().as_str(), admin, admin, artifact::load_or_build(&root).unwrap())
            .await
            .unwrap();
        let c = Client::new(provider.clone(), d.clone(), admin);
        for (role, who) in [(ids::HUB_ROLE, HUB), (ids::DOCTOR_ROLE, DOCTOR)] {
            c.send_from(admin, H::grantRoleCall { role, account: anvil.addresses()[who] }).await.unwrap();
        }
        let dir = tempfile::tempdir().unwrap();
        // A budget per client large enough that the spread-out flood is served
        // in full (the point: challenges cost no state), small enough that one
        // client past it is refused.
        let cfg = healthsense_oracle::Config::parse(&format!(
            "hub = \"ward-1\"\nward = \"ward-1\"\nstore = \"{}\"\n[chain]\nrpc_url = \"{}\"\ncontract = \"{}\"\n\
             [mqtt]\nlisten = \"127.0.0.1:0\"\n[metrics]\nlisten = \"127.0.0.1:0\"\n[archive]\nenabled = false\n\
             [api]\nenabled = true\nlisten = \"127.0.0.1:0\"\nauth_burst = {}\nauth_rate_per_s = 1.0\n",
            dir.path().join("hub.sqlite").display(),
            anvil.endpoint(),
            d.address,
            FLOOD / FLOODERS + 20,
        ))
        .unwrap();
        let key = |i: usize| PrivateKeySigner::from_signing_key(anvil.keys()[i].clone().into());
        let hub = healthsense_oracle::start(cfg, key(HUB), Default::default()).await.unwrap();
        let port = hub.api_addr.unwrap().port();
        // The SIWE domain is the bound address; every client reaches it at 127.0.0.1.
        let base = format!("http://127.0.0.1:{port}");
        let doctor = key(DOCTOR);

        // One client past its budget gets 429 with Retry-After; another does not notice.
        let greedy = client_from("127.0.0.250");
        let mut limited = None;
        for _ in 0..(FLOOD / FLOODERS + 40) {
            let (s, body, retry) = post(&greedy, &format!("{base}/api/v1/auth/challenge"), json!({ "address": Address::new(rand::random()) })).await;
            if s == 429 {
                limited = Some((body, retry));
                break;
            }
            assert_eq!(s, 200, "{body}");
        }
        let (body, retry) = limited.expect("one client cannot ask for challenges without limit");
        assert!(retry.and_then(|r| r.parse::<u64>().ok()).is_some_and(|r| r >= 1), "429 says when to retry");
        assert!(body["error"].as_str().unwrap().contains("too many sign-in requests"), "{body}");
        assert_eq!(doctor_signs_in(&base, &doctor).await, "doctor");

        // The flood: FLOOD anonymous challenges for random addresses from FLOODERS clients.
        let issued = Arc::new(AtomicU64::new(0));
        let mut flood = tokio::task::JoinSet::new();
        for i in 0..FLOODERS {
            let (base, issued) = (base.clone(), issued.clone());
            flood.spawn(async move {
                let http = client_from(&format!("127.0.{}.{}", 1 + i / 200, 1 + i % 200));
                let mut refused = Vec::new();
                for _ in 0..FLOOD / FLOODERS {
                    let (s, body, _) = post(&http, &format!("{base}/api/v1/auth/challenge"), json!({ "address": Address::new(rand::random()) })).await;
                    match s {
                        200 => {
                            issued.fetch_add(1, Ordering::Relaxed);
                        }
                        _ => refused.push((s, body)),
                    }
                }
                refused
            });
        }
        // During: once more challenges are out than the old table held.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(300);
        while issued.load(Ordering::Relaxed) < 10_500 {
            assert!(tokio::time::Instant::now() < deadline, "the flood stalled at {}", issued.load(Ordering::Relaxed));
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(doctor_signs_in(&base, &doctor).await, "doctor", "signing in during the flood");
        let mut refused = Vec::new();
        while let Some(r) = flood.join_next().await {
            refused.extend(r.unwrap());
        }
        assert!(refused.is_empty(), "every challenge of the flood was issued: {:?}", &refused[..refused.len().min(3)]);
        assert_eq!(issued.load(Ordering::Relaxed), FLOOD);
        // After: still signing in.
        assert_eq!(doctor_signs_in(&base, &doctor).await, "doctor", "signing in after the flood");
        hub.shutdown().await;
    });
}
