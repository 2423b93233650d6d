#![warn(missing_docs)]
//! HealthSense's IPFS client: discharged patient records are archived to IPFS
//! through the Kubo RPC API.
//!
//! - [`Ipfs`] is the client the oracle uses. It speaks Kubo's RPC (through
//!   `ipfs-api-backend-hyper`), so the same code points at the embedded node
//!   (the crate `healthsense-ipfs-node`, binary `healthsense-ipfs`) locally
//!   and at a real Kubo or an IPFS Cluster proxy in production.
//! - [`ADD_OPTIONS`] is the one definition of how bytes become a CID, so the
//!   CID written on chain does not depend on which node imported the record.

mod client;
mod error;
mod options;

pub use client::Ipfs;
pub use error::IpfsError;
pub use options::{AddOptions, ADD_OPTIONS};
