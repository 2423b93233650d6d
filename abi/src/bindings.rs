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

/// The JSON ABI itself (`abi/HealthSense.json`), the bytes a hub pins to IPFS
/// and serves, so devices fetch exactly what the bindings were made from.
pub const ABI_JSON: &str = include_str!("../HealthSense.json");

/// The bindings' `Reading` and the rules' `Reading` are the same struct
/// generated twice (from the JSON ABI and from `sol!`); convert field by field.
macro_rules! same_fields {
    ($from:ty => $to:ty) => {
        impl From<$from> for $to {
            fn from(r: $from) -> Self {
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
    };
}

same_fields!(crate::Reading => IHealthSense::Reading);
same_fields!(IHealthSense::Reading => crate::Reading);
