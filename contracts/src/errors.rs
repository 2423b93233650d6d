//! Solidity custom errors: the same names and arguments as the EVM edition
//! (`abi/IHealthSense.sol`), so revert data is identical.

use alloy_sol_types::sol;
use stylus_sdk::prelude::*;

sol! {
    error AccessControlUnauthorizedAccount(address account, bytes32 neededRole);
    error AccessControlBadConfirmation();
    error UnknownRole(bytes32 role);
    error LastAdmin();
    error EnforcedPause();
    error ExpectedPause();
    error ZeroAddress();
    error ZeroId();
    error DeviceAlreadyExists(bytes32 deviceId);
    error UnknownDevice(bytes32 deviceId);
    error InvalidDeviceStatus(bytes32 deviceId, uint8 status);
    error DeviceInUse(bytes32 deviceId, bytes32 patientId);
    error PatientAlreadyExists(bytes32 patientId);
    error UnknownPatient(bytes32 patientId);
    error InvalidPatientStatus(bytes32 patientId, uint8 status);
    error InvalidCharge(uint8 category, uint32 quantity);
    error UnknownCharge(bytes32 patientId, uint32 index);
    error InvalidPolicy(uint16 coverageBps);
    error NotPolicyInsurer(bytes32 patientId, address insurer);
    error EmptyBatch();
    error BatchAlreadyAnchored(bytes32 batchId);
    error LengthMismatch(uint256 readings, uint256 signatures);
    error StaleSequence(bytes32 deviceId, uint64 seq, uint64 lastSeq);
    error InvalidSignature(bytes32 deviceId, uint64 seq);
    error EmptyCid();
    error WardHasNoTariff(bytes32 ward);
    error ZeroTariff(bytes32 ward);
}

/// Every way a HealthSense call can fail.
#[derive(SolidityError)]
pub enum Error {
    /// The caller lacks the role the function needs.
    AccessControlUnauthorizedAccount(AccessControlUnauthorizedAccount),
    /// `renounceRole` was not confirmed with the caller's own address.
    AccessControlBadConfirmation(AccessControlBadConfirmation),
    /// Not one of ADMIN, HUB, DOCTOR, INSURER.
    UnknownRole(UnknownRole),
    /// The change would leave the contract without an admin.
    LastAdmin(LastAdmin),
    /// State changes are paused.
    EnforcedPause(EnforcedPause),
    /// `unpause` while not paused.
    ExpectedPause(ExpectedPause),
    /// An address argument is zero.
    ZeroAddress(ZeroAddress),
    /// An id argument is zero.
    ZeroId(ZeroId),
    /// The device id is taken.
    DeviceAlreadyExists(DeviceAlreadyExists),
    /// No such device.
    UnknownDevice(UnknownDevice),
    /// The device's status does not allow this.
    InvalidDeviceStatus(InvalidDeviceStatus),
    /// The device is assigned to another patient.
    DeviceInUse(DeviceInUse),
    /// The patient id is taken.
    PatientAlreadyExists(PatientAlreadyExists),
    /// No such patient.
    UnknownPatient(UnknownPatient),
    /// The patient's status does not allow this.
    InvalidPatientStatus(InvalidPatientStatus),
    /// Category out of range or zero quantity.
    InvalidCharge(InvalidCharge),
    /// No charge at that index.
    UnknownCharge(UnknownCharge),
    /// Coverage above 10000 bps.
    InvalidPolicy(InvalidPolicy),
    /// Another insurer holds the policy.
    NotPolicyInsurer(NotPolicyInsurer),
    /// Zero root or zero leaves.
    EmptyBatch(EmptyBatch),
    /// The batch id is already anchored.
    BatchAlreadyAnchored(BatchAlreadyAnchored),
    /// Readings and signatures differ in number.
    LengthMismatch(LengthMismatch),
    /// The sequence number is not above the device's last.
    StaleSequence(StaleSequence),
    /// The signature does not recover to the device's signer.
    InvalidSignature(InvalidSignature),
    /// Empty CID.
    EmptyCid(EmptyCid),
    /// Admission to a ward whose bed rate was never set.
    WardHasNoTariff(WardHasNoTariff),
    /// A bed rate of zero (a ward has a non-zero rate or none).
    ZeroTariff(ZeroTariff),
}
