//! The node's own helpers, tested directly: they were the lib's unit tests,
//! moved here so the lib is not compiled a second time in test mode (see
//! `[lib] test = false` in Cargo.toml). They reach the helpers through the
//! crate's hidden `internals` module.

mod add;
mod api;
mod cat;
mod kubo;

use healthsense_ipfs_node::internals::Params;

/// Query parameters as the router hands them to a handler.
fn params(pairs: &[(&str, &str)]) -> Params {
    Params(
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    )
}
