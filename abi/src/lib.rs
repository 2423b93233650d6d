//! The HealthSense published interface.
//!
//! - [`rules`]: the one definition of every encoding rule that the contract,
//!   the oracle and the CLI share: ids, the Merkle leaf of a reading and its
//!   proofs, the EIP-712 reading signature, and the billing formula. It is
//!   `no_std` so the Stylus edition compiles the very same code to WASM.
//! - [`bindings`] (feature `bindings`): alloy bindings generated from
//!   `HealthSense.json`, the ABI exported from the Stylus edition.
//!
//! Semantics: `docs/CONTRACT.md` at the repository root.
#![cfg_attr(not(feature = "std"), no_std)]
#![warn(missing_docs)]

extern crate alloc;

pub mod rules;

#[cfg(feature = "bindings")]
pub mod bindings;

pub use alloy_primitives::{Address, B256, U256};
pub use rules::reading::Reading;
