//! The read-only REST API and the dashboard, served by the oracle (axum).
//!
//! The paper's read side: "each patient or doctor can access his/her record
//! via a dashboard ... the API runs select queries only". The medical record
//! stays read-only here: admissions, charges, policies and discharges are
//! on-chain transactions signed by the doctor, admin or insurer
//! (`healthsense` CLI). The one write is a doctor's acknowledgement of a
//! NEWS2 alert, kept in the hub's operational store (`alert_acks`), never on
//! chain or in the record.
//! The endpoint list, the auth model and who sees what: `docs/API.md`; the
//! machine-readable description: `GET /api/v1/openapi.json`.
//!
//! - [`siwe`]: EIP-4361 messages; [`auth`]: challenges and sessions;
//! - [`queries`]: the select queries on the hub store;
//! - `handlers`: the endpoints; `dashboard`: the bundled page and its assets;
//! - `signed`: the exact signed reading the proof endpoint returns.

pub mod auth;
mod dashboard;
mod handlers;
pub mod queries;
mod signed;
pub mod siwe;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use alloy::primitives::B256;
use anyhow::{Context, Result};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use tokio::sync::watch;

use crate::alerts::Live;
use crate::chain::{Chain, ChainError};
use crate::config::ApiConfig;
use crate::store::{Store, StoreError};

/// Every route the API serves (method, path), as the OpenAPI document lists them.
pub const ROUTES: &[(&str, &str)] = &[
    ("get", "/api/v1/openapi.json"),
    ("get", "/api/v1/abi"),
    ("post", "/api/v1/auth/challenge"),
    ("post", "/api/v1/auth/session"),
    ("delete", "/api/v1/auth/session"),
    ("get", "/api/v1/me"),
    ("get", "/api/v1/ward"),
    ("get", "/api/v1/patients"),
    ("get", "/api/v1/patients/{id}"),
    ("get", "/api/v1/patients/{id}/vitals"),
    ("get", "/api/v1/patients/{id}/vitals/{seq}/proof"),
    ("get", "/api/v1/patients/{id}/alerts"),
    ("post", "/api/v1/patients/{id}/alerts/{alert}/ack"),
    ("get", "/api/v1/patients/{id}/trend"),
    ("get", "/api/v1/patients/{id}/charges"),
    ("get", "/api/v1/patients/{id}/bill"),
    ("get", "/api/v1/devices"),
    ("get", "/api/v1/devices/{serial}"),
    ("get", "/api/v1/batches"),
    ("get", "/api/v1/batches/{seq}"),
    ("get", "/api/v1/events"),
];

/// The session cookie's name.
pub const COOKIE: &str = "hs_session";

/// Shared by the handlers.
pub(crate) struct Ctx {
    pub auth: auth::Auth,
    pub chain: Chain,
    pub hub: String,
    pub ward: String,
    pub ward_id: B256,
    pub store: Mutex<Store>,
    pub live: Live,
    pub index: tokio::sync::Mutex<handlers::WardIndex>,
    pub secure_cookie: bool,
    /// ISO 4217 code of the contract's minor units (`archive.currency`).
    pub currency: String,
    /// A bed's last reading older than this (ms) is stale on the ward.
    pub stale_after_ms: u64,
}

impl Ctx {
    /// Runs `f` on the API's store connection.
    pub fn store<T>(&self, f: impl FnOnce(&Store) -> Result<T, StoreError>) -> Result<T, ApiError> {
        let store = self.store.lock().map_err(|_| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "hub store lock poisoned"))?;
        Ok(f(&store)?)
    }
}

/// An error answer: a status and a sentence that says what to do.
#[derive(Debug)]
pub(crate) struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self { status, message: message.into() }
    }
    pub fn bad_request(m: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, m)
    }
    pub fn unauthorized(m: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, m)
    }
    pub fn forbidden(m: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, m)
    }
    pub fn not_found(m: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, m)
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        tracing::error!(error = %e, "API query failed");
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "the hub store failed; see the oracle's log")
    }
}

impl From<ChainError> for ApiError {
    fn from(e: ChainError) -> Self {
        Self::new(StatusCode::BAD_GATEWAY, format!("the chain did not answer, try again: {e}"))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = axum::Json(serde_json::json!({ "error": self.message, "status": self.status.as_u16() }));
        let mut res = (self.status, body).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            res.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer realm=\"healthsense\""));
        }
        res
    }
}

/// The session token of a request: `Authorization: Bearer …` or the cookie.
pub(crate) fn token(headers: &HeaderMap) -> Option<String> {
    if let Some(v) = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()) {
        return v.strip_prefix("Bearer ").map(|t| t.trim().to_string());
    }
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .map(|(_, v)| v.to_string())
}

/// Where the API is served.
pub struct Serving {
    /// The bound address.
    pub addr: SocketAddr,
    /// The SIWE domain sign-in messages must name.
    pub domain: String,
    /// The base URL users and devices reach the API at (`api.uri`, or
    /// `http://{domain}`), e.g. for the ABI's URL in the contract announcement.
    pub uri: String,
}

/// Starts the API and dashboard on `cfg.listen`; stops when `shutdown` turns true.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn serve(
    cfg: &ApiConfig,
    hub: &str,
    ward: &str,
    currency: &str,
    chain: Chain,
    store: Store,
    live: Live,
    shutdown: watch::Receiver<bool>,
) -> Result<Serving> {
    queries::init(&store)?;
    crate::alerts::init(&store)?;
    let listener =
        tokio::net::TcpListener::bind(cfg.listen).await.with_context(|| format!("binding the API on {}", cfg.listen))?;
    let addr = listener.local_addr()?;
    let domain = cfg.domain.clone().unwrap_or_else(|| addr.to_string());
    let uri = cfg.uri.clone().unwrap_or_else(|| format!("http://{domain}"));
    let settings = auth::Settings {
        domain: domain.clone(),
        uri: uri.clone(),
        chain_id: chain.chain_id(),
        session_ttl_ms: cfg.session_ttl_s.max(1) * 1_000,
        nonce_ttl_ms: cfg.nonce_ttl_s.max(1) * 1_000,
        statement: format!("Sign in to the HealthSense dashboard of {ward} (read-only)."),
        rate_per_s: cfg.auth_rate_per_s,
        rate_burst: cfg.auth_burst,
    };
    let ctx = Arc::new(Ctx {
        auth: auth::Auth::new(settings),
        chain,
        hub: hub.to_string(),
        ward: ward.to_string(),
        ward_id: healthsense_abi::rules::ids::ward_id(ward),
        store: Mutex::new(store),
        live,
        index: tokio::sync::Mutex::new(handlers::WardIndex::new(cfg.from_block)),
        secure_cookie: cfg.secure_cookie,
        currency: currency.to_string(),
        stale_after_ms: cfg.stale_after_ms,
    });
    let app = handlers::router(ctx).merge(dashboard::router()).merge(abi_router());
    tokio::spawn(async move {
        // The peer address keys the sign-in rate limit.
        let app = app.into_make_service_with_connect_info::<SocketAddr>();
        if let Err(e) = axum::serve(listener, app).with_graceful_shutdown(crate::metrics::until_true(shutdown)).await {
            tracing::error!(error = %e, "API stopped");
        }
    });
    tracing::info!(%addr, %domain, "API and dashboard serving");
    Ok(Serving { addr, domain, uri })
}

/// `GET /api/v1/abi`, public: the contract's JSON ABI, the same bytes the
/// hub pins to IPFS and announces on `hs/v1/contract`.
fn abi_router() -> axum::Router {
    let abi = || async { ([(header::CONTENT_TYPE, "application/json")], healthsense_abi::bindings::ABI_JSON) };
    axum::Router::new().route("/api/v1/abi", axum::routing::get(abi))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openapi_lists_exactly_the_routes() {
        let doc: serde_json::Value = serde_json::from_str(handlers::OPENAPI).expect("openapi.json is JSON");
        let paths = doc["paths"].as_object().expect("paths");
        let mut listed: Vec<(String, String)> = paths
            .iter()
            .flat_map(|(p, ops)| ops.as_object().into_iter().flatten().map(move |(m, _)| (m.clone(), p.clone())))
            .filter(|(m, _)| m != "parameters")
            .collect();
        listed.sort();
        let mut routes: Vec<(String, String)> = ROUTES.iter().map(|(m, p)| (m.to_string(), p.to_string())).collect();
        routes.sort();
        assert_eq!(listed, routes);
    }

    #[test]
    fn token_from_bearer_or_cookie() {
        let mut h = HeaderMap::new();
        assert_eq!(token(&h), None);
        h.insert(header::COOKIE, HeaderValue::from_static("a=1; hs_session=tok; b=2"));
        assert_eq!(token(&h).as_deref(), Some("tok"));
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer abc"));
        assert_eq!(token(&h).as_deref(), Some("abc"));
    }
}
