//! The exact data a device signed and the hub hashed into a Merkle leaf, as
//! the proof endpoint returns it beside the display values: the `Reading`
//! struct of `docs/CONTRACT.md` with its integers as they are (temperature in
//! 0.01 °C, consciousness as the ACVPU code 1-5, `0` for a vital not
//! measured), and the EIP-712 domain it was signed under. A third party
//! re-verifies a proof from these alone (`docs/API.md`, "Re-verifying a
//! proof").

use alloy::primitives::Address;
use healthsense_abi::rules::eip712;
use healthsense_abi::Reading;
use serde_json::{json, Value};

/// The signed/leaf struct, field names and order as in the ABI.
pub(crate) fn signed_json(r: &Reading) -> Value {
    json!({
        "deviceId": r.deviceId, "seq": r.seq, "timestamp": r.timestamp,
        "heartRate": r.heartRate, "respRate": r.respRate, "spo2": r.spo2,
        "systolic": r.systolic, "diastolic": r.diastolic, "temperature": r.temperature,
        "consciousness": r.consciousness,
    })
}

/// The EIP-712 domain readings are signed under.
pub(crate) fn domain_json(chain_id: u64, contract: Address) -> Value {
    json!({ "name": eip712::NAME, "version": eip712::VERSION, "chainId": chain_id, "verifyingContract": contract })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signed_json_is_the_abi_struct_with_integers() {
        let r = Reading { seq: 3, timestamp: 1_764_000_000_123, heartRate: 72, temperature: 3_705, consciousness: 3, ..Default::default() };
        let v = signed_json(&r);
        assert_eq!((v["temperature"].as_u64(), v["consciousness"].as_u64(), v["spo2"].as_u64()), (Some(3_705), Some(3), Some(0)));
        assert_eq!(v.as_object().map(|o| o.len()), Some(10));
        assert_eq!(domain_json(31337, Address::ZERO)["name"], "HealthSense");
    }
}
