//! HealthSense contract, Stylus edition.
//!
//! Device registration, patient stays, Merkle-anchored (hash mode) or signed
//! on-chain (readings mode) vitals, charges, insurance policies, discharge
//! billing and archive CIDs. Semantics: `docs/CONTRACT.md`; the EVM edition
//! (`contracts/evm/HealthSense.sol`) implements the same ABI and the
//! conformance suite (`tests/`) holds the two to identical behaviour.
//!
//! Every rule shared with the oracle and CLI (role ids, batch ids, the
//! reading leaf and EIP-712 digest, Merkle verification, the billing formula)
//! comes from `healthsense_abi::rules`, compiled into this WASM.
//!
//! Stylus caps a program at 24 KiB compressed and the whole contract does not
//! fit in one, so the Stylus edition is two programs over one storage layout:
//! this main program (roles, devices, patients, charges, policies, billing,
//! Merkle batches) and the records program ([`records`]: readings mode and
//! its EIP-712 views, archive and billing-rules CIDs), which the main
//! program's fallback reaches by a delegate call. Callers see one address
//! and one ABI; the records program is built with the `records-program`
//! feature.
#![cfg_attr(not(any(test, feature = "export-abi")), no_main)]
#![cfg_attr(not(any(test, feature = "export-abi")), no_std)]
// Parameter names are camelCase because they are the published ABI's names.
#![allow(non_snake_case)]
extern crate alloc;

mod access;
pub mod errors;
pub mod events;
pub mod records;
mod state;
pub mod types;

use alloc::vec;
use alloc::vec::Vec;

use alloy_primitives::aliases::{U16, U32, U64, U8};
use alloy_primitives::{Address, B256, U256};
use healthsense_abi::rules::{billing, ids, merkle};
use healthsense_abi::rules::status::{DeviceStatus as DS, PatientStatus as PS, CATEGORY_COUNT};
use stylus_sdk::call::delegate_call;
use stylus_sdk::stylus_core::calls::errors::Error as CallError;
use stylus_sdk::ArbResult;
use stylus_sdk::prelude::*;
use stylus_sdk::storage::{
    StorageAddress, StorageB256, StorageBool, StorageMap, StorageString, StorageU256, StorageU32, StorageU64,
};

use errors::*;
use events::*;
use state::{Device, Patient};
use types::*;

pub use records::HealthSenseRecords;

/// The HealthSense contract: the main program, and the storage layout both
/// programs share.
#[storage]
#[cfg_attr(not(all(target_arch = "wasm32", feature = "records-program")), entrypoint)]
pub struct HealthSense {
    roles: StorageMap<B256, StorageMap<Address, StorageBool>>,
    admin_count: StorageU256,
    paused: StorageBool,
    devices: StorageMap<B256, Device>,
    patients: StorageMap<B256, Patient>,
    tariffs: StorageMap<B256, StorageU64>,
    /// Merkle root per batch id: the one slot an anchor writes (the rest of
    /// the batch is in its `BatchAnchored` event).
    batches: StorageMap<B256, StorageB256>,
    rules_cid: StorageString,
    rules_version: StorageU32,
    /// The records program this contract delegates to; fixed at construction.
    records_program: StorageAddress,
    // Reserved so later fields keep their slots if an upgrade adds state.
    _reserved: StorageB256,
}

// In the records program's build the main struct is not the entrypoint but
// still makes the (never reached) delegate call in `forward`.
#[cfg(all(target_arch = "wasm32", feature = "records-program"))]
// SAFETY: only ever constructed at slot 0 as the whole contract's storage.
unsafe impl stylus_sdk::stylus_core::storage::TopLevelStorage for HealthSense {}

fn u8_of(v: U8) -> u8 {
    v.to::<u8>()
}

#[public]
impl HealthSense {
    /// Deploys with `admin` as the first admin, delegating the records
    /// methods to the already deployed `recordsProgram` (the EVM edition's
    /// constructor takes only `admin`). On a Stylus chain the deployment goes
    /// through the StylusDeployer, which is then the event's `sender`.
    #[constructor]
    pub fn constructor(&mut self, admin: Address, recordsProgram: Address) -> Result<(), Error> {
        if admin.is_zero() || recordsProgram.is_zero() {
            return Err(Error::ZeroAddress(ZeroAddress {}));
        }
        self.records_program.set(recordsProgram);
        self.grant(ids::ADMIN_ROLE, admin);
        Ok(())
    }

    /// Every selector this program does not route goes to the records
    /// program, run on this contract's storage with the caller's sender; its
    /// return or revert data is passed back unchanged (an unknown selector
    /// reverts there with empty data, as on the EVM edition).
    #[fallback]
    pub fn forward(&mut self, calldata: &[u8]) -> ArbResult {
        let program = self.records_program.get();
        let context = Call::new_mutating(self);
        // SAFETY: the records program is this crate's own code over the same
        // storage layout, and its address is fixed at construction.
        unsafe { delegate_call(self.vm(), context, program, calldata) }.map_err(|e| match e {
            CallError::Revert(data) => data,
            CallError::AbiDecodingFailed(_) => Vec::new(),
        })
    }

    // ------------------------------------------------------------- roles

    /// `keccak256("ADMIN_ROLE")`.
    #[selector(name = "ADMIN_ROLE")]
    pub fn admin_role() -> B256 {
        ids::ADMIN_ROLE
    }

    /// `keccak256("HUB_ROLE")`.
    #[selector(name = "HUB_ROLE")]
    pub fn hub_role() -> B256 {
        ids::HUB_ROLE
    }

    /// `keccak256("DOCTOR_ROLE")`.
    #[selector(name = "DOCTOR_ROLE")]
    pub fn doctor_role() -> B256 {
        ids::DOCTOR_ROLE
    }

    /// `keccak256("INSURER_ROLE")`.
    #[selector(name = "INSURER_ROLE")]
    pub fn insurer_role() -> B256 {
        ids::INSURER_ROLE
    }

    /// Whether `account` holds `role`.
    pub fn has_role(&self, role: B256, account: Address) -> bool {
        self.holds(role, account)
    }

    /// Grants `role` to `account` (admins; works while paused). No-op if held.
    pub fn grant_role(&mut self, role: B256, account: Address) -> Result<(), Error> {
        self.only(ids::ADMIN_ROLE)?;
        known_role(role)?;
        if account.is_zero() {
            return Err(Error::ZeroAddress(ZeroAddress {}));
        }
        self.grant(role, account);
        Ok(())
    }

    /// Revokes `role` from `account` (admins; works while paused). No-op if not held.
    pub fn revoke_role(&mut self, role: B256, account: Address) -> Result<(), Error> {
        self.only(ids::ADMIN_ROLE)?;
        known_role(role)?;
        self.revoke(role, account)
    }

    /// The caller gives up `role`; `callerConfirmation` must be the caller.
    pub fn renounce_role(&mut self, role: B256, callerConfirmation: Address) -> Result<(), Error> {
        let sender = self.vm().msg_sender();
        if callerConfirmation != sender {
            return Err(Error::AccessControlBadConfirmation(AccessControlBadConfirmation {}));
        }
        known_role(role)?;
        self.revoke(role, sender)
    }

    /// Whether state changes are paused.
    pub fn paused(&self) -> bool {
        self.paused.get()
    }

    /// Emergency stop of every state change except role management.
    pub fn pause(&mut self) -> Result<(), Error> {
        self.only(ids::ADMIN_ROLE)?;
        self.not_paused()?;
        self.paused.set(true);
        let account = self.vm().msg_sender();
        self.vm().log(Paused { account });
        Ok(())
    }

    /// Lifts the emergency stop.
    pub fn unpause(&mut self) -> Result<(), Error> {
        self.only(ids::ADMIN_ROLE)?;
        if !self.paused.get() {
            return Err(Error::ExpectedPause(ExpectedPause {}));
        }
        self.paused.set(false);
        let account = self.vm().msg_sender();
        self.vm().log(Unpaused { account });
        Ok(())
    }

    // ----------------------------------------------------------- devices

    /// Registers a device (Pending) with its signing address and ward.
    pub fn provision_device(&mut self, deviceId: B256, signer: Address, ward: B256) -> Result<(), Error> {
        self.guard(ids::ADMIN_ROLE)?;
        if deviceId.is_zero() {
            return Err(Error::ZeroId(ZeroId {}));
        }
        if signer.is_zero() {
            return Err(Error::ZeroAddress(ZeroAddress {}));
        }
        if ward.is_zero() {
            return Err(Error::ZeroId(ZeroId {}));
        }
        let mut d = self.devices.setter(deviceId);
        if d.status.get() != U8::ZERO {
            return Err(Error::DeviceAlreadyExists(DeviceAlreadyExists { deviceId }));
        }
        d.signer.set(signer);
        d.ward.set(ward);
        d.status.set(U8::from(DS::Pending as u8));
        self.vm().log(DeviceProvisioned { deviceId, signer, ward });
        Ok(())
    }

    /// The hub accepts a pending device after its hello (Active).
    pub fn activate_device(&mut self, deviceId: B256) -> Result<(), Error> {
        self.guard(ids::HUB_ROLE)?;
        let status = self.device_status(deviceId)?;
        if status != DS::Pending as u8 {
            return Err(invalid_device(deviceId, status));
        }
        self.devices.setter(deviceId).status.set(U8::from(DS::Active as u8));
        let hub = self.vm().msg_sender();
        self.vm().log(DeviceActivated { deviceId, hub });
        Ok(())
    }

    /// Withdraws a device at once, even while assigned.
    pub fn revoke_device(&mut self, deviceId: B256) -> Result<(), Error> {
        self.guard(ids::ADMIN_ROLE)?;
        let status = self.device_status(deviceId)?;
        if status == DS::Revoked as u8 {
            return Err(invalid_device(deviceId, status));
        }
        self.devices.setter(deviceId).status.set(U8::from(DS::Revoked as u8));
        self.vm().log(DeviceRevoked { deviceId });
        Ok(())
    }

    /// A device's registration; zeros if unknown.
    pub fn get_device(&self, deviceId: B256) -> DeviceInfo {
        let d = self.devices.getter(deviceId);
        DeviceInfo {
            signer: d.signer.get(),
            ward: d.ward.get(),
            status: u8_of(d.status.get()),
            patientId: d.patient.get(),
            lastSeq: d.last_seq.get().to(),
        }
    }

    // ---------------------------------------------------------- patients

    /// Admits a stay on an active, free device; the ward is the device's and
    /// must have a bed rate.
    pub fn admit_patient(&mut self, patientId: B256, deviceId: B256) -> Result<(), Error> {
        self.guard(ids::DOCTOR_ROLE)?;
        if patientId.is_zero() {
            return Err(Error::ZeroId(ZeroId {}));
        }
        if self.patients.getter(patientId).status.get() != U8::ZERO {
            return Err(Error::PatientAlreadyExists(PatientAlreadyExists { patientId }));
        }
        let status = self.device_status(deviceId)?;
        if status != DS::Active as u8 {
            return Err(invalid_device(deviceId, status));
        }
        let (ward, current) = {
            let d = self.devices.getter(deviceId);
            (d.ward.get(), d.patient.get())
        };
        if !current.is_zero() {
            return Err(Error::DeviceInUse(DeviceInUse { deviceId, patientId: current }));
        }
        // No stay starts unpriced: discharge bills bed days at the ward's rate.
        if self.tariffs.get(ward).is_zero() {
            return Err(Error::WardHasNoTariff(WardHasNoTariff { ward }));
        }
        let now = self.vm().block_timestamp();
        self.devices.setter(deviceId).patient.set(patientId);
        let mut p = self.patients.setter(patientId);
        p.device.set(deviceId);
        p.ward.set(ward);
        p.status.set(U8::from(PS::Admitted as u8));
        p.admitted_at.set(U64::from(now));
        self.vm().log(PatientAdmitted { patientId, deviceId, ward, admittedAt: now });
        Ok(())
    }

    /// A stay's record; zeros if unknown.
    pub fn get_patient(&self, patientId: B256) -> PatientInfo {
        let p = self.patients.getter(patientId);
        PatientInfo {
            deviceId: p.device.get(),
            ward: p.ward.get(),
            status: u8_of(p.status.get()),
            admittedAt: p.admitted_at.get().to(),
            dischargedAt: p.discharged_at.get().to(),
            chargeCount: p.charges.len() as u32,
        }
    }

    /// Adds a line item (minor units) while the patient is admitted.
    pub fn add_charge(
        &mut self,
        patientId: B256,
        code: B256,
        category: u8,
        quantity: u32,
        unitPrice: u64,
    ) -> Result<(), Error> {
        self.guard(ids::DOCTOR_ROLE)?;
        if category as usize >= CATEGORY_COUNT || quantity == 0 {
            return Err(Error::InvalidCharge(InvalidCharge { category, quantity }));
        }
        self.admitted(patientId)?;
        let doctor = self.vm().msg_sender();
        let mut p = self.patients.setter(patientId);
        let index = p.charges.len() as u32;
        {
            let mut c = p.charges.grow();
            c.code.set(code);
            c.category.set(U8::from(category));
            c.quantity.set(U32::from(quantity));
            c.unit_price.set(U64::from(unitPrice));
            c.doctor.set(doctor);
        }
        if let Some(mut total) = p.category_totals.setter(category as usize) {
            let t = total.get() + billing::charge_amount(quantity, unitPrice);
            total.set(t);
        }
        self.vm().log(ChargeAdded {
            patientId,
            doctor,
            index,
            code,
            category,
            quantity,
            unitPrice,
        });
        Ok(())
    }

    /// Charge `index` of a stay.
    pub fn get_charge(&self, patientId: B256, index: u32) -> Result<ChargeInfo, Error> {
        let p = self.patients.getter(patientId);
        let Some(c) = p.charges.get(index as usize) else {
            return Err(Error::UnknownCharge(UnknownCharge { patientId, index }));
        };
        Ok(ChargeInfo {
            code: c.code.get(),
            category: u8_of(c.category.get()),
            quantity: c.quantity.get().to(),
            unitPrice: c.unit_price.get().to(),
            doctor: c.doctor.get(),
        })
    }

    /// Sets a ward's bed rate per day (minor units, non-zero).
    pub fn set_tariff(&mut self, ward: B256, dailyRate: u64) -> Result<(), Error> {
        self.guard(ids::ADMIN_ROLE)?;
        if ward.is_zero() {
            return Err(Error::ZeroId(ZeroId {}));
        }
        // Zero is how storage says "no tariff"; a set rate never reads as unset.
        if dailyRate == 0 {
            return Err(Error::ZeroTariff(ZeroTariff { ward }));
        }
        self.tariffs.setter(ward).set(U64::from(dailyRate));
        self.vm().log(TariffSet { ward, dailyRate });
        Ok(())
    }

    /// A ward's bed rate per day; zero if it has none.
    pub fn tariff(&self, ward: B256) -> u64 {
        self.tariffs.get(ward).to()
    }

    /// The calling insurer sets (or updates its own) policy for an admitted patient.
    pub fn set_policy(
        &mut self,
        patientId: B256,
        coverageBps: u16,
        deductible: u64,
        cap: u64,
        coveredCategories: u8,
    ) -> Result<(), Error> {
        self.guard(ids::INSURER_ROLE)?;
        if coverageBps > billing::BPS {
            return Err(Error::InvalidPolicy(InvalidPolicy { coverageBps }));
        }
        self.admitted(patientId)?;
        let insurer = self.vm().msg_sender();
        let mut p = self.patients.setter(patientId);
        let holder = p.policy.insurer.get();
        if !holder.is_zero() && holder != insurer {
            return Err(Error::NotPolicyInsurer(NotPolicyInsurer { patientId, insurer: holder }));
        }
        p.policy.insurer.set(insurer);
        p.policy.coverage_bps.set(U16::from(coverageBps));
        p.policy.deductible.set(U64::from(deductible));
        p.policy.cap.set(U64::from(cap));
        p.policy.covered.set(U8::from(coveredCategories));
        self.vm().log(PolicySet {
            patientId,
            insurer,
            coverageBps,
            deductible,
            cap,
            coveredCategories,
        });
        Ok(())
    }

    /// A stay's policy; zeros if none.
    pub fn get_policy(&self, patientId: B256) -> PolicyInfo {
        let p = self.patients.getter(patientId);
        PolicyInfo {
            insurer: p.policy.insurer.get(),
            coverageBps: p.policy.coverage_bps.get().to(),
            deductible: p.policy.deductible.get().to(),
            cap: p.policy.cap.get().to(),
            coveredCategories: u8_of(p.policy.covered.get()),
        }
    }

    /// Discharges a stay (hub or doctor): computes, stores and emits the
    /// bill, and frees the device.
    pub fn discharge(&mut self, patientId: B256) -> Result<(), Error> {
        let sender = self.vm().msg_sender();
        if !self.holds(ids::HUB_ROLE, sender) && !self.holds(ids::DOCTOR_ROLE, sender) {
            return Err(unauthorized(sender, ids::DOCTOR_ROLE));
        }
        self.not_paused()?;
        self.admitted(patientId)?;
        let now = self.vm().block_timestamp();
        let rules_version = self.rules_version.get();
        let (device, input) = {
            let p = self.patients.getter(patientId);
            let insurer = p.policy.insurer.get();
            let mut totals = [U256::ZERO; CATEGORY_COUNT];
            for (i, t) in totals.iter_mut().enumerate() {
                *t = p.category_totals.get(i).unwrap_or_default();
            }
            let input = billing::BillInput {
                admitted_at: p.admitted_at.get().to(),
                discharged_at: now,
                daily_rate: self.tariffs.get(p.ward.get()).to(),
                category_totals: totals,
                policy: (!insurer.is_zero()).then(|| billing::Policy {
                    coverage_bps: p.policy.coverage_bps.get().to(),
                    deductible: p.policy.deductible.get().to(),
                    cap: p.policy.cap.get().to(),
                    covered_categories: u8_of(p.policy.covered.get()),
                }),
            };
            (p.device.get(), input)
        };
        let bill = billing::compute_bill(&input);
        {
            let mut p = self.patients.setter(patientId);
            p.bill.total.set(bill.total);
            p.bill.covered.set(bill.covered);
            p.bill.due.set(bill.due);
            p.bill.bed_days.set(U64::from(bill.bed_days));
            p.bill.rules_version.set(rules_version);
            p.status.set(U8::from(PS::Discharged as u8));
            p.discharged_at.set(U64::from(now));
        }
        self.devices.setter(device).patient.set(B256::ZERO);
        self.vm().log(PatientDischarged {
            patientId,
            deviceId: device,
            dischargedAt: now,
            bedDays: bill.bed_days,
            total: bill.total,
            covered: bill.covered,
            due: bill.due,
        });
        Ok(())
    }

    /// The bill computed at discharge; zeros before.
    pub fn get_bill(&self, patientId: B256) -> BillInfo {
        let p = self.patients.getter(patientId);
        BillInfo {
            total: p.bill.total.get(),
            covered: p.bill.covered.get(),
            due: p.bill.due.get(),
            bedDays: p.bill.bed_days.get().to(),
            rulesVersion: p.bill.rules_version.get().to(),
        }
    }

    // --------------------------------------------- hash-mode anchoring

    /// Anchors a Merkle root of readings as the calling hub's batch `seq`.
    /// Stores the root alone (one slot, keyed by the batch id, which already
    /// encodes hub and seq); hub, seq, leaf count and time go in the event.
    pub fn anchor_batch(&mut self, seq: u64, root: B256, leafCount: u32) -> Result<B256, Error> {
        self.guard(ids::HUB_ROLE)?;
        if root.is_zero() || leafCount == 0 {
            return Err(Error::EmptyBatch(EmptyBatch {}));
        }
        let hub = self.vm().msg_sender();
        let anchoredAt = self.vm().block_timestamp();
        let batchId = ids::batch_id(hub, seq);
        let mut slot = self.batches.setter(batchId);
        if !slot.get().is_zero() {
            return Err(Error::BatchAlreadyAnchored(BatchAlreadyAnchored { batchId }));
        }
        slot.set(root);
        self.vm().log(BatchAnchored { batchId, hub, seq, root, leafCount, anchoredAt });
        Ok(batchId)
    }

    /// The Merkle root anchored as `batchId`; zero if none.
    pub fn batch_root(&self, batchId: B256) -> B256 {
        self.batches.get(batchId)
    }

    /// `keccak256(abi.encode(hub, seq))`.
    pub fn batch_id_of(hub: Address, seq: u64) -> B256 {
        ids::batch_id(hub, seq)
    }

    /// Whether `leaf` with `proof` is in the batch (OpenZeppelin sorted-pair proofs).
    pub fn verify_reading(&self, batchId: B256, leaf: B256, proof: Vec<B256>) -> bool {
        let root = self.batches.get(batchId);
        !root.is_zero() && merkle::verify(&proof, root, leaf)
    }
}

// ------------------------------------------------------------ internals

fn unauthorized(account: Address, role: B256) -> Error {
    Error::AccessControlUnauthorizedAccount(AccessControlUnauthorizedAccount { account, neededRole: role })
}

fn known_role(role: B256) -> Result<(), Error> {
    if ids::is_known_role(role) {
        Ok(())
    } else {
        Err(Error::UnknownRole(UnknownRole { role }))
    }
}

fn invalid_device(device_id: B256, status: u8) -> Error {
    Error::InvalidDeviceStatus(InvalidDeviceStatus { deviceId: device_id, status })
}

fn invalid_patient(patient_id: B256, status: u8) -> Error {
    Error::InvalidPatientStatus(InvalidPatientStatus { patientId: patient_id, status })
}

impl HealthSense {
    /// A device's status, or `UnknownDevice`.
    fn device_status(&self, deviceId: B256) -> Result<u8, Error> {
        match u8_of(self.devices.getter(deviceId).status.get()) {
            0 => Err(Error::UnknownDevice(UnknownDevice { deviceId })),
            s => Ok(s),
        }
    }

    /// A patient's status, or `UnknownPatient`.
    fn patient_status(&self, patientId: B256) -> Result<u8, Error> {
        match u8_of(self.patients.getter(patientId).status.get()) {
            0 => Err(Error::UnknownPatient(UnknownPatient { patientId })),
            s => Ok(s),
        }
    }

    /// `UnknownPatient` or `InvalidPatientStatus` unless Admitted.
    fn admitted(&self, patientId: B256) -> Result<(), Error> {
        let status = self.patient_status(patientId)?;
        if status != PS::Admitted as u8 {
            return Err(invalid_patient(patientId, status));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
