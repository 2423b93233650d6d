//! ABI structs: the reading parameter and the view return values.

use alloy_sol_types::sol;
use stylus_sdk::prelude::*;

sol! {
    #[derive(AbiType)]
    struct Reading {
        bytes32 deviceId;
        uint64 seq;
        uint64 timestamp;
        uint16 heartRate;
        uint16 respRate;
        uint16 spo2;
        uint16 systolic;
        uint16 diastolic;
        uint16 temperature;
        uint8 consciousness;
    }

    #[derive(AbiType)]
    struct DeviceInfo {
        address signer;
        bytes32 ward;
        uint8 status;
        bytes32 patientId;
        uint64 lastSeq;
    }

    #[derive(AbiType)]
    struct PatientInfo {
        bytes32 deviceId;
        bytes32 ward;
        uint8 status;
        uint64 admittedAt;
        uint64 dischargedAt;
        uint32 chargeCount;
    }

    #[derive(AbiType)]
    struct ChargeInfo {
        bytes32 code;
        uint8 category;
        uint32 quantity;
        uint64 unitPrice;
        address doctor;
    }

    #[derive(AbiType)]
    struct PolicyInfo {
        address insurer;
        uint16 coverageBps;
        uint64 deductible;
        uint64 cap;
        uint8 coveredCategories;
    }

    #[derive(AbiType)]
    struct BillInfo {
        uint256 total;
        uint256 covered;
        uint256 due;
        uint64 bedDays;
        uint32 rulesVersion;
    }

    #[derive(AbiType)]
    struct ArchiveInfo {
        string cid;
        bytes32 recordHash;
    }

    #[derive(AbiType)]
    struct BillingRulesInfo {
        string cid;
        uint32 version;
    }
}

impl Reading {
    /// The shared rules' form of this reading (same fields, one definition
    /// of the leaf and digest encodings).
    pub fn to_rule(&self) -> healthsense_abi::Reading {
        healthsense_abi::Reading {
            deviceId: self.deviceId,
            seq: self.seq,
            timestamp: self.timestamp,
            heartRate: self.heartRate,
            respRate: self.respRate,
            spo2: self.spo2,
            systolic: self.systolic,
            diastolic: self.diastolic,
            temperature: self.temperature,
            consciousness: self.consciousness,
        }
    }
}
