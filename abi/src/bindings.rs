//! alloy bindings generated from `abi/HealthSense.json` (exported from the
//! Stylus edition by `scripts/export-abi`; never edited by hand).

alloy::sol!(
    #[sol(rpc, abi)]
    #[derive(Debug, PartialEq, Eq)]
    #[allow(missing_docs)]
    HealthSense,
    "HealthSense.json"
);

pub use IHealthSense::Reading as AbiReading;

impl From<crate::Reading> for IHealthSense::Reading {
    fn from(r: crate::Reading) -> Self {
        Self {
            deviceId: r.deviceId,
            seq: r.seq,
            timestamp: r.timestamp,
            heartRate: r.heartRate,
            respRate: r.respRate,
            spo2: r.spo2,
            systolic: r.systolic,
            diastolic: r.diastolic,
            temperature: r.temperature,
            consciousness: r.consciousness,
        }
    }
}

impl From<IHealthSense::Reading> for crate::Reading {
    fn from(r: IHealthSense::Reading) -> Self {
        Self {
            deviceId: r.deviceId,
            seq: r.seq,
            timestamp: r.timestamp,
            heartRate: r.heartRate,
            respRate: r.respRate,
            spo2: r.spo2,
            systolic: r.systolic,
            diastolic: r.diastolic,
            temperature: r.temperature,
            consciousness: r.consciousness,
        }
    }
}
