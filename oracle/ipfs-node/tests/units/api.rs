//! The API's base URL as a client must use it (src/api.rs).

use std::net::SocketAddr;

use healthsense_ipfs_node::internals::api_url;

#[test]
fn api_url_names_a_reachable_address() {
    let url = |s: &str| s.parse::<SocketAddr>().map(api_url).ok();
    assert_eq!(
        url("127.0.0.1:5001").as_deref(),
        Some("http://127.0.0.1:5001")
    );
    assert_eq!(
        url("0.0.0.0:5001").as_deref(),
        Some("http://127.0.0.1:5001")
    );
    assert_eq!(url("[::]:5001").as_deref(), Some("http://[::1]:5001"));
}
