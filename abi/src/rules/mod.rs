//! Encoding rules shared by the contract (both editions), the oracle and the
//! CLI. Each rule is defined here once; `docs/CONTRACT.md` states them in
//! prose and the conformance suite checks both editions against them.

pub mod billing;
pub mod eip712;
pub mod ids;
pub mod merkle;
pub mod reading;
pub mod status;
