//! The Stylus host's integration tests, one test binary (each binary links
//! Wasmer again): `cargo test --workspace --locked --test host -- artifacts::`
//! or `... -- hostios::`.

mod artifacts;
mod hostios;
