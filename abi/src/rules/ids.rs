//! Identifiers: roles, devices, wards, charge codes and anchoring batches.

use alloy_primitives::{b256, keccak256, Address, B256};

/// `keccak256("ADMIN_ROLE")`: manages roles, devices, tariffs, billing rules, pause.
pub const ADMIN_ROLE: B256 =
    b256!("a49807205ce4d355092ef5a8a18f56e8913cf4a201fbe287825b095693c21775");
/// `keccak256("HUB_ROLE")`: a ward oracle account; activates devices, anchors, discharges, archives.
pub const HUB_ROLE: B256 =
    b256!("4761169e40d0efb53bf684d47e54c803c1511483244b1a2fca6dbbd91b4508d5");
/// `keccak256("DOCTOR_ROLE")`: admits, charges and discharges patients.
pub const DOCTOR_ROLE: B256 =
    b256!("0af1dac7dea2fd7f7738119cec7df099dfad49aa9d2e7d17ba6b60f63ae7411f");
/// `keccak256("INSURER_ROLE")`: sets insurance policies.
pub const INSURER_ROLE: B256 =
    b256!("eb0a07781e3ee843c0d85f7381c2e1a1e1a6ea86bcdcd944ef649d46e7dcd972");

/// The four roles, in the order the CLI and docs list them.
pub const ROLES: [(&str, B256); 4] = [
    ("admin", ADMIN_ROLE),
    ("hub", HUB_ROLE),
    ("doctor", DOCTOR_ROLE),
    ("insurer", INSURER_ROLE),
];

/// Whether `role` is one of the four HealthSense roles.
pub fn is_known_role(role: B256) -> bool {
    ROLES.iter().any(|(_, r)| *r == role)
}

/// Device id: `keccak256(serial)`, so the serial itself never goes on chain.
pub fn device_id(serial: &str) -> B256 {
    keccak256(serial.as_bytes())
}

/// Ward id: `keccak256(name)`.
pub fn ward_id(name: &str) -> B256 {
    keccak256(name.as_bytes())
}

/// A charge code as `bytes32`: the code's UTF-8 bytes, right-padded with
/// zeros. `None` if the code is empty or longer than 32 bytes.
pub fn charge_code(code: &str) -> Option<B256> {
    let bytes = code.as_bytes();
    if bytes.is_empty() || bytes.len() > 32 {
        return None;
    }
    let mut out = [0u8; 32];
    out[..bytes.len()].copy_from_slice(bytes);
    Some(B256::from(out))
}

/// The charge code back as text, trailing zero padding removed; `None` if
/// it is not UTF-8.
pub fn charge_code_text(code: &B256) -> Option<&str> {
    let end = code.iter().rposition(|b| *b != 0).map_or(0, |i| i + 1);
    core::str::from_utf8(&code[..end]).ok()
}

/// `keccak256("healthsense.patient.v1")`: the domain tag of [`patient_id`].
pub const PATIENT_ID_TAG: B256 =
    b256!("f89f05fa8ebbbf1cfb7a3b14049d2449322e54722151dc0339d0f02b18970cae");

/// A patient id the patient can sign in with: `keccak256(abi.encode(
/// PATIENT_ID_TAG, wallet, uint64 stay))`. The hospital admits the stay
/// under this id (`healthsense patient admit --wallet W --stay N`); the
/// patient proves the id is theirs by signing in with `wallet` and naming
/// `stay`, and the API recomputes it. Still pseudonymous (no name or MRN);
/// stays of one wallet are linkable by whoever knows the wallet, so a
/// patient who wants unlinkable stays uses a fresh wallet per stay.
pub fn patient_id(wallet: Address, stay: u64) -> B256 {
    let mut buf = [0u8; 96];
    buf[..32].copy_from_slice(PATIENT_ID_TAG.as_slice());
    buf[44..64].copy_from_slice(wallet.as_slice());
    buf[88..96].copy_from_slice(&stay.to_be_bytes());
    keccak256(buf)
}

/// Batch id: `keccak256(abi.encode(hub, seq))`. The hub's own batch counter
/// makes ids deterministic (a restarted hub recomputes the same id for a
/// pending batch) and unique (another hub cannot take them).
pub fn batch_id(hub: Address, seq: u64) -> B256 {
    let mut buf = [0u8; 64];
    buf[12..32].copy_from_slice(hub.as_slice());
    buf[56..64].copy_from_slice(&seq.to_be_bytes());
    keccak256(buf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloy_sol_types::SolValue;

    #[test]
    fn role_ids_are_keccak_of_their_names() {
        assert_eq!(ADMIN_ROLE, keccak256("ADMIN_ROLE"));
        assert_eq!(HUB_ROLE, keccak256("HUB_ROLE"));
        assert_eq!(DOCTOR_ROLE, keccak256("DOCTOR_ROLE"));
        assert_eq!(INSURER_ROLE, keccak256("INSURER_ROLE"));
    }

    #[test]
    fn batch_id_is_abi_encode_of_hub_and_seq() {
        let hub = Address::repeat_byte(0xab);
        for seq in [0u64, 1, 7, u64::MAX] {
            assert_eq!(batch_id(hub, seq), keccak256((hub, seq).abi_encode()));
        }
        assert_ne!(batch_id(hub, 1), batch_id(Address::repeat_byte(0xac), 1));
    }

    #[test]
    fn patient_id_is_abi_encode_of_tag_wallet_and_stay() {
        assert_eq!(PATIENT_ID_TAG, keccak256("healthsense.patient.v1"));
        let w = Address::repeat_byte(0x42);
        for stay in [0u64, 1, 9, u64::MAX] {
            assert_eq!(patient_id(w, stay), keccak256((PATIENT_ID_TAG, w, stay).abi_encode()));
        }
        assert_ne!(patient_id(w, 1), patient_id(w, 2));
        assert_ne!(patient_id(w, 1), patient_id(Address::repeat_byte(0x43), 1));
    }

    #[test]
    fn charge_codes_round_trip_and_reject_bad_lengths() {
        let c = charge_code("99213").unwrap();
        assert_eq!(&c[..5], b"99213");
        assert!(c[5..].iter().all(|b| *b == 0));
        assert_eq!(charge_code_text(&c), Some("99213"));
        assert_eq!(charge_code(""), None);
        assert!(charge_code(&"x".repeat(32)).is_some());
        assert_eq!(charge_code(&"x".repeat(33)), None);
    }

    #[test]
    fn device_and_ward_ids_hash_their_text() {
        assert_eq!(device_id("HS-0001"), keccak256("HS-0001"));
        assert_ne!(device_id("HS-0001"), device_id("HS-0002"));
        assert_eq!(ward_id("ward-3"), keccak256("ward-3"));
    }
}
