//! Storage layout: small structs, one per record kind.

use alloc::vec;
use alloc::vec::Vec;
use stylus_sdk::prelude::*;
use stylus_sdk::storage::{
    StorageAddress, StorageArray, StorageB256, StorageU16, StorageU256, StorageU32, StorageU64, StorageU8,
    StorageString, StorageVec,
};

/// A registered bedside device.
#[storage]
pub struct Device {
    /// Address of the device's secp256k1 signing key.
    pub signer: StorageAddress,
    /// Ward id.
    pub ward: StorageB256,
    /// `DeviceStatus` code.
    pub status: StorageU8,
    /// Patient currently assigned (zero if free).
    pub patient: StorageB256,
    /// Highest sequence number posted in readings mode.
    pub last_seq: StorageU64,
}

/// One charge line.
#[storage]
pub struct Charge {
    /// Tariff code, right-padded.
    pub code: StorageB256,
    /// Category code (< 8).
    pub category: StorageU8,
    /// Quantity (> 0).
    pub quantity: StorageU32,
    /// Unit price, minor units.
    pub unit_price: StorageU64,
    /// Doctor who added it.
    pub doctor: StorageAddress,
}

/// A patient's insurance policy.
#[storage]
pub struct Policy {
    /// Insurer that set it (zero: no policy).
    pub insurer: StorageAddress,
    /// Coverage in basis points.
    pub coverage_bps: StorageU16,
    /// Deductible, minor units.
    pub deductible: StorageU64,
    /// Cap, minor units.
    pub cap: StorageU64,
    /// Covered category bitmask.
    pub covered: StorageU8,
}

/// The bill computed at discharge.
#[storage]
pub struct Bill {
    /// Total.
    pub total: StorageU256,
    /// Insurer's share.
    pub covered: StorageU256,
    /// Patient's share.
    pub due: StorageU256,
    /// Bed days charged.
    pub bed_days: StorageU64,
    /// Billing rules version in force.
    pub rules_version: StorageU32,
}

/// A stay.
#[storage]
pub struct Patient {
    /// Assigned device.
    pub device: StorageB256,
    /// Ward (the device's at admission).
    pub ward: StorageB256,
    /// `PatientStatus` code.
    pub status: StorageU8,
    /// Admission time, seconds.
    pub admitted_at: StorageU64,
    /// Discharge time, seconds.
    pub discharged_at: StorageU64,
    /// Charge lines.
    pub charges: StorageVec<Charge>,
    /// Σ quantity × unit price per category, so discharge is O(1).
    pub category_totals: StorageArray<StorageU256, 8>,
    /// Insurance policy.
    pub policy: Policy,
    /// Bill.
    pub bill: Bill,
    /// Archive CID.
    pub cid: StorageString,
    /// Archive record hash.
    pub record_hash: StorageB256,
}
