//! EIP-712 typed data for device-signed readings, so `cast wallet sign
//! --data`, ethers or any wallet library can produce a valid reading.

use alloy_primitives::{b256, keccak256, Address, B256};

use super::reading::{encode_fields, Reading, READING_WORDS};

/// `keccak256("EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)")`.
pub const DOMAIN_TYPEHASH: B256 =
    b256!("8b73c3c69bb8fe3d512ecc4cf759cc79239f7b179b0ffacaa9a75d522b39400f");
/// `keccak256("HealthSense")`: the domain name.
pub const NAME_HASH: B256 =
    b256!("c87877a34fbd2513dcb6311c510458bc08bac217a14657a70318a48140de8ebe");
/// `keccak256("1")`: the domain version.
pub const VERSION_HASH: B256 =
    b256!("c89efdaa54c0f20c7adf612882df0950f5a951637e0307cdcb4c672f298b8bc6");
/// `keccak256("Reading(bytes32 deviceId,uint64 seq,uint64 timestamp,uint16 heartRate,uint16 respRate,uint16 spo2,uint16 systolic,uint16 diastolic,uint16 temperature,uint8 consciousness)")`.
pub const READING_TYPEHASH: B256 =
    b256!("2907a4139a4b936a8d15e2ca9ab92a57c4a1b1b71003f46b0a39d4cef442e8b3");

/// The domain name, `HealthSense`.
pub const NAME: &str = "HealthSense";
/// The domain version, `1`.
pub const VERSION: &str = "1";

/// The EIP-712 domain separator of a deployment.
pub fn domain_separator(chain_id: u64, contract: Address) -> B256 {
    let mut buf = [0u8; 160];
    buf[0..32].copy_from_slice(DOMAIN_TYPEHASH.as_slice());
    buf[32..64].copy_from_slice(NAME_HASH.as_slice());
    buf[64..96].copy_from_slice(VERSION_HASH.as_slice());
    buf[120..128].copy_from_slice(&chain_id.to_be_bytes());
    buf[140..160].copy_from_slice(contract.as_slice());
    keccak256(buf)
}

/// `hashStruct(reading)`.
pub fn reading_struct_hash(r: &Reading) -> B256 {
    let mut buf: [u8; (READING_WORDS + 1) * 32] = encode_fields(r, 1);
    buf[..32].copy_from_slice(READING_TYPEHASH.as_slice());
    keccak256(buf)
}

/// The digest a device signs: `keccak256("\x19\x01" ‖ domainSeparator ‖ hashStruct(reading))`.
pub fn reading_digest(domain_separator: B256, r: &Reading) -> B256 {
    let mut buf = [0u8; 66];
    buf[0] = 0x19;
    buf[1] = 0x01;
    buf[2..34].copy_from_slice(domain_separator.as_slice());
    buf[34..66].copy_from_slice(reading_struct_hash(r).as_slice());
    keccak256(buf)
}

/// The alloy domain of a deployment, for signing with alloy signers.
#[cfg(feature = "std")]
pub fn domain(chain_id: u64, contract: Address) -> alloy_sol_types::Eip712Domain {
    alloy_sol_types::eip712_domain! {
        name: NAME,
        version: VERSION,
        chain_id: chain_id,
        verifying_contract: contract,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloy_sol_types::SolStruct;

    fn sample() -> Reading {
        Reading {
            deviceId: keccak256("HS-0007"),
            seq: 9,
            timestamp: 1_764_000_000_000,
            heartRate: 88,
            respRate: 21,
            spo2: 93,
            systolic: 101,
            diastolic: 60,
            temperature: 3_810,
            consciousness: 1,
        }
    }

    #[test]
    fn constants_match_their_preimages() {
        assert_eq!(
            DOMAIN_TYPEHASH,
            keccak256("EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)")
        );
        assert_eq!(NAME_HASH, keccak256(NAME));
        assert_eq!(VERSION_HASH, keccak256(VERSION));
        assert_eq!(READING_TYPEHASH, keccak256(Reading::eip712_encode_type().as_bytes()));
    }

    #[test]
    fn digest_matches_alloy_eip712_signing_hash() {
        let contract = Address::repeat_byte(0x42);
        for chain_id in [1u64, 31_337, 421_614] {
            let d = domain(chain_id, contract);
            assert_eq!(domain_separator(chain_id, contract), d.hash_struct());
            let r = sample();
            assert_eq!(reading_struct_hash(&r), r.eip712_hash_struct());
            assert_eq!(
                reading_digest(domain_separator(chain_id, contract), &r),
                r.eip712_signing_hash(&d)
            );
        }
    }
}
