//! The records program: readings mode (device-signed vitals posted on chain)
//! and its EIP-712 views, and the IPFS pointers (archive and billing-rules
//! CIDs).
//!
//! The second of the Stylus edition's two programs (see the crate docs). It
//! is deployed once, before the main program, and only ever runs through the
//! main program's fallback by a delegate call: on the main contract's
//! storage, under its address (so the EIP-712 domain is the main contract's),
//! with the original sender and events. Called directly it would only see its
//! own empty storage, where no account holds a role.

use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;

use alloy_primitives::aliases::{U32, U64, U8};
use alloy_primitives::{Address, Bytes, B256, U256};
use healthsense_abi::rules::status::{DeviceStatus as DS, PatientStatus as PS};
use healthsense_abi::rules::{eip712, ids, reading};
use stylus_sdk::prelude::*;

use crate::errors::*;
use crate::events::*;
use crate::types::*;
use crate::{invalid_device, invalid_patient, HealthSense};

/// secp256k1n / 2: larger `s` values are rejected (EIP-2).
const HALF_ORDER: U256 = alloy_primitives::uint!(
    0x7fffffffffffffffffffffffffffffff5d576e7357a4501ddfe92f46681b20a0_U256
);

/// The records program. Its only field is the whole contract state at slot
/// 0, so it reads and writes exactly the main program's slots.
#[storage]
#[cfg_attr(all(target_arch = "wasm32", feature = "records-program"), entrypoint)]
pub struct HealthSenseRecords {
    state: HealthSense,
}

// Outside its own WASM build the program is routed by the conformance suite
// (as the delegate call would) and needs the top-level marker the
// entrypoint would give it.
#[cfg(not(all(target_arch = "wasm32", feature = "records-program")))]
// SAFETY: only ever constructed at slot 0 as the whole contract's storage.
unsafe impl stylus_sdk::stylus_core::storage::TopLevelStorage for HealthSenseRecords {}

#[public]
impl HealthSenseRecords {
    // ------------------------------------------- archive, billing rules

    /// The hub records the IPFS CID and hash of a discharged stay's archive.
    pub fn set_archive(&mut self, patientId: B256, cid: String, recordHash: B256) -> Result<(), Error> {
        self.state.guard(ids::HUB_ROLE)?;
        if cid.is_empty() {
            return Err(Error::EmptyCid(EmptyCid {}));
        }
        let status = self.state.patient_status(patientId)?;
        if status != PS::Discharged as u8 {
            return Err(invalid_patient(patientId, status));
        }
        let mut p = self.state.patients.setter(patientId);
        p.cid.set_str(&cid);
        p.record_hash.set(recordHash);
        p.status.set(U8::from(PS::Archived as u8));
        self.vm().log(RecordArchived { patientId, cid, recordHash });
        Ok(())
    }

    /// A stay's archive CID and record hash; empty before archiving.
    pub fn get_archive(&self, patientId: B256) -> ArchiveInfo {
        let p = self.state.patients.getter(patientId);
        ArchiveInfo { cid: p.cid.get_string(), recordHash: p.record_hash.get() }
    }

    /// Publishes the CID of the billing rules and software; bills record the version.
    pub fn set_billing_rules(&mut self, cid: String) -> Result<(), Error> {
        self.state.guard(ids::ADMIN_ROLE)?;
        if cid.is_empty() {
            return Err(Error::EmptyCid(EmptyCid {}));
        }
        self.state.rules_cid.set_str(&cid);
        let version = self.state.rules_version.get() + U32::from(1);
        self.state.rules_version.set(version);
        self.vm().log(BillingRulesSet { version: version.to(), cid });
        Ok(())
    }

    /// The current billing rules CID and version (0 before any).
    pub fn billing_rules(&self) -> BillingRulesInfo {
        BillingRulesInfo { cid: self.state.rules_cid.get_string(), version: self.state.rules_version.get().to() }
    }

    // ------------------------------------------------------- readings

    /// The StandardMerkleTree leaf of a reading.
    pub fn reading_leaf(reading: Reading) -> B256 {
        reading::reading_leaf(&reading.to_rule())
    }

    // ----------------------------------------- readings: readings mode

    /// The EIP-712 domain separator of this deployment.
    #[selector(name = "DOMAIN_SEPARATOR")]
    pub fn domain_separator(&self) -> B256 {
        eip712::domain_separator(self.vm().chain_id(), self.vm().contract_address())
    }

    /// The EIP-712 digest a device signs for `reading`.
    pub fn reading_digest(&self, reading: Reading) -> B256 {
        eip712::reading_digest(self.domain_separator(), &reading.to_rule())
    }

    /// Posts device-signed vitals on chain, each checked against its device's signer.
    pub fn post_readings(&mut self, readings: Vec<Reading>, signatures: Vec<Bytes>) -> Result<(), Error> {
        self.state.guard(ids::HUB_ROLE)?;
        if readings.len() != signatures.len() {
            return Err(Error::LengthMismatch(LengthMismatch {
                readings: U256::from(readings.len()),
                signatures: U256::from(signatures.len()),
            }));
        }
        let domain = self.domain_separator();
        for (r, sig) in readings.iter().zip(signatures.iter()) {
            let id = r.deviceId;
            let status = self.state.device_status(id)?;
            if status != DS::Active as u8 {
                return Err(invalid_device(id, status));
            }
            let (signer, last) = {
                let d = self.state.devices.getter(id);
                (d.signer.get(), d.last_seq.get().to::<u64>())
            };
            if r.seq <= last {
                return Err(Error::StaleSequence(StaleSequence { deviceId: id, seq: r.seq, lastSeq: last }));
            }
            let digest = eip712::reading_digest(domain, &r.to_rule());
            if self.recover(digest, sig) != signer {
                return Err(Error::InvalidSignature(InvalidSignature { deviceId: id, seq: r.seq }));
            }
            self.state.devices.setter(id).last_seq.set(U64::from(r.seq));
            self.vm().log(ReadingPosted {
                deviceId: id,
                seq: r.seq,
                timestamp: r.timestamp,
                heartRate: r.heartRate,
                respRate: r.respRate,
                spo2: r.spo2,
                systolic: r.systolic,
                diastolic: r.diastolic,
                temperature: r.temperature,
                consciousness: r.consciousness,
            });
        }
        Ok(())
    }
}

impl HealthSenseRecords {
    /// `ecrecover` through the precompile, with the spec's checks; zero for
    /// anything malformed (as Solidity's `ecrecover` gives).
    fn recover(&self, digest: B256, sig: &[u8]) -> Address {
        if sig.len() != 65 {
            return Address::ZERO;
        }
        let v = sig[64];
        if v != 27 && v != 28 || U256::from_be_slice(&sig[32..64]) > HALF_ORDER {
            return Address::ZERO;
        }
        let mut input = [0u8; 128];
        input[..32].copy_from_slice(digest.as_slice());
        input[63] = v;
        input[64..128].copy_from_slice(&sig[..64]);
        match static_call(self.vm(), Call::new(), Address::with_last_byte(1), &input) {
            Ok(out) if out.len() == 32 => Address::from_slice(&out[12..]),
            _ => Address::ZERO,
        }
    }
}
