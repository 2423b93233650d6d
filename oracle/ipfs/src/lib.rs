#![warn(missing_docs)]
//! HealthSense's IPFS layer: discharged patient records are archived to IPFS
//! through the Kubo RPC API, and this crate holds both ends of that API.
//!
//! - [`Ipfs`] is the client the oracle uses. It speaks Kubo's RPC (through
//!   `ipfs-api-backend-hyper`), so the same code points at the embedded node
//!   locally and at a real Kubo or an IPFS Cluster proxy in production.
//! - [`node`] (feature `node`, on by default) is the local default: an
//!   embedded, offline rust-ipfs node with a persistent repository that serves
//!   the Kubo RPC subset the client needs.
//! - [`ADD_OPTIONS`] is the one definition of how bytes become a CID, so the
//!   CID written on chain does not depend on which node imported the record.

mod client;
mod error;
#[cfg(feature = "node")]
pub mod node;
mod options;

pub use client::Ipfs;
pub use error::IpfsError;
pub use options::{AddOptions, ADD_OPTIONS};
