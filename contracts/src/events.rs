//! Events: the same signatures as the EVM edition.

use alloy_sol_types::sol;

sol! {
    event RoleGranted(bytes32 indexed role, address indexed account, address indexed sender);
    event RoleRevoked(bytes32 indexed role, address indexed account, address indexed sender);
    event Paused(address account);
    event Unpaused(address account);
    event DeviceProvisioned(bytes32 indexed deviceId, address indexed signer, bytes32 indexed ward);
    event DeviceActivated(bytes32 indexed deviceId, address indexed hub);
    event DeviceRevoked(bytes32 indexed deviceId);
    event PatientAdmitted(bytes32 indexed patientId, bytes32 indexed deviceId, bytes32 indexed ward, uint64 admittedAt);
    event ChargeAdded(bytes32 indexed patientId, address indexed doctor, uint32 index, bytes32 code, uint8 category, uint32 quantity, uint64 unitPrice);
    event TariffSet(bytes32 indexed ward, uint64 dailyRate);
    event PolicySet(bytes32 indexed patientId, address indexed insurer, uint16 coverageBps, uint64 deductible, uint64 cap, uint8 coveredCategories);
    event PatientDischarged(bytes32 indexed patientId, bytes32 indexed deviceId, uint64 dischargedAt, uint64 bedDays, uint256 total, uint256 covered, uint256 due);
    event RecordArchived(bytes32 indexed patientId, string cid, bytes32 recordHash);
    event BillingRulesSet(uint32 indexed version, string cid);
    event BatchAnchored(bytes32 indexed batchId, address indexed hub, uint64 seq, bytes32 root, uint32 leafCount, uint64 anchoredAt);
    event ReadingPosted(bytes32 indexed deviceId, uint64 indexed seq, uint64 timestamp, uint16 heartRate, uint16 respRate, uint16 spo2, uint16 systolic, uint16 diastolic, uint16 temperature, uint8 consciousness);
}
