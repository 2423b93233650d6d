//! The workspace-level contract tests, one test binary with a module per
//! suite: separate binaries each linked alloy, the Stylus host (Wasmer) and
//! the CLI again, which made linking them a large part of a clean test build
//! (docs/BENCHMARKS.md, "Build"). Run one suite or one test by path:
//! `cargo test --workspace --locked --test contracts -- conformance::` or
//! `... --test contracts -- fuzz::`.

mod conformance;
mod fuzz;
mod stylus_gas;
mod wasm_host;
