//! The `healthsense` binary's integration tests, one test binary with a
//! module per area: each separate binary linked alloy, rust-ipfs and the
//! oracle again, which made linking them the larger part of a clean test
//! build (docs/BENCHMARKS.md, "Build"). Run one area or one test by path:
//! `cargo test --workspace --locked --test cli -- api::` or
//! `... --test cli -- oracle::some_test_name`.
//!
//! Each file is loaded with `#[path]` so that its own `mod common;` finds
//! `common/` beside it, and the files stay as they were when they were
//! binaries of their own.

#[path = "admin.rs"]
mod admin;
#[path = "announce.rs"]
mod announce;
#[path = "api.rs"]
mod api;
#[path = "api_auth.rs"]
mod api_auth;
#[path = "deploy.rs"]
mod deploy;
#[path = "device_auth.rs"]
mod device_auth;
#[path = "devnet.rs"]
mod devnet;
#[path = "oracle.rs"]
mod oracle;
