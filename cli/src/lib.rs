//! Library side of the `healthsense` command, shared with the workspace
//! tests so they deploy and drive the contract through the same code paths a
//! user does.
//!
//! Modules follow the admin's path: find the project-local [`tools`], load the
//! compiled [`artifact`], obtain a [`keys`] signer, [`deploy`] and record the
//! [`deployment`].

pub mod admin;
pub mod archive;
pub mod artifact;
pub mod broker;
pub mod demo;
pub mod deploy;
pub mod deployment;
pub mod devnet;
pub mod keys;
pub mod simulate;
pub mod tools;
