//! Harness for the workspace-level tests.
//!
//! [`twin::Twin`] runs every contract call on three engines and fails on
//! any difference in success, return data, revert data or logs: the Stylus
//! edition's Rust source in-process through its router on `TestVM`
//! ([`stylus::StylusEdition`]), the Stylus edition's WASM artifacts on the
//! Stylus host ([`wasm::WasmEdition`]), and the EVM edition on a real anvil
//! over JSON-RPC ([`evm::EvmEdition`]). The two Stylus engines' storage is
//! also compared slot by slot.

pub mod evm;
pub mod fuzz;
pub mod stylus;
pub mod twin;
pub mod wasm;

use alloy::primitives::{Address, Bytes, B256};
use healthsense_abi::Reading;

/// A plausible reading of device `device_id` with sequence number `seq`,
/// one second after the previous one: the fixture the conformance suite and
/// the gas figures share.
pub fn sample_reading(device_id: B256, seq: u64) -> Reading {
    Reading {
        deviceId: device_id,
        seq,
        timestamp: 1_764_000_000_000 + seq * 1_000,
        heartRate: 60 + (seq % 40) as u16,
        respRate: 14 + (seq % 6) as u16,
        spo2: 95 + (seq % 4) as u16,
        systolic: 118,
        diastolic: 76,
        temperature: 3_690 + (seq % 30) as u16,
        consciousness: 1,
    }
}

/// What one call did, in the terms both editions share.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// Returned (true) or reverted (false).
    pub success: bool,
    /// Return data, or revert data.
    pub data: Bytes,
    /// Logs of a successful state-changing call: topics and data.
    pub logs: Vec<(Vec<B256>, Bytes)>,
}

/// A contract edition the conformance suite can drive.
pub trait Edition {
    /// Short name for failure messages.
    fn name(&self) -> &'static str;
    /// Calls the contract from `from` with `calldata`; a state-changing call
    /// is executed in a block with timestamp `time`, a view is only read.
    fn call(&mut self, from: Address, calldata: &[u8], view: bool, time: u64) -> Outcome;
}
