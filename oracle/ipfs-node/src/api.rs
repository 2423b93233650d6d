//! The RPC routes: exactly the Kubo subset the oracle uses, POST only as in Kubo.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, Request};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::post;
use axum::Router;

use super::kubo::KuboError;
use super::{add, cat, info, pin, NodeState};

/// Room for the multipart framing around the largest accepted file.
const MULTIPART_OVERHEAD: usize = 1 << 20;

pub(crate) fn router(state: NodeState) -> Router {
    let add_limit = state.max_add_bytes.saturating_add(MULTIPART_OVERHEAD);
    Router::new()
        .route(
            "/api/v0/add",
            post(add::add).layer(DefaultBodyLimit::max(add_limit)),
        )
        .route("/api/v0/cat", post(cat::cat))
        .route("/api/v0/pin/add", post(pin::add))
        .route("/api/v0/pin/rm", post(pin::rm))
        .route("/api/v0/pin/ls", post(pin::ls))
        .route("/api/v0/version", post(info::version))
        .route("/api/v0/id", post(info::id))
        .fallback(unknown_command)
        .layer(middleware::from_fn(refuse_browsers))
        .with_state(Arc::new(state))
}

async fn unknown_command() -> Response {
    KuboError::new(
        "command not found: this node serves add, cat, pin/add, pin/rm, pin/ls, version and id",
    )
    .with_status(StatusCode::NOT_FOUND)
}

/// The API has no authentication; like Kubo, refuse requests a web page sends
/// (they carry an Origin) so a browser on the hub cannot add or pin content.
async fn refuse_browsers(request: Request, next: Next) -> Response {
    if request.headers().contains_key(header::ORIGIN) {
        return KuboError::new("requests from web pages (with an Origin header) are not allowed")
            .with_status(StatusCode::FORBIDDEN);
    }
    next.run(request).await
}

/// The base URL a client reaches the API at when it is bound to `addr`:
/// loopback in place of an unspecified (all-interfaces) address.
pub fn api_url(addr: SocketAddr) -> String {
    let ip = match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    format!("http://{}", SocketAddr::new(ip, addr.port()))
}
