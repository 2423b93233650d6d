//! A bedside reading: the one struct that is signed by the device (EIP-712),
//! hashed into a Merkle leaf (hash mode) or posted on chain (readings mode).

use alloy_primitives::{keccak256, B256};

alloy_sol_types::sol! {
    /// Compact vitals of one reading. Units: `timestamp` ms since the Unix
    /// epoch; `heartRate` /min; `respRate` /min; `spo2` %; `systolic` and
    /// `diastolic` mmHg; `temperature` 0.01 °C; `consciousness` ACVPU code
    /// (1 Alert, 2 new Confusion, 3 Voice, 4 Pain, 5 Unresponsive).
    /// `0` in a vital means "not measured".
    #[derive(Debug, Default, PartialEq, Eq, Hash)]
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
}

/// Number of ABI words in an encoded [`Reading`] (all fields are static).
pub const READING_WORDS: usize = 10;

/// Word `i` of a right-aligned unsigned integer.
fn put_uint(buf: &mut [u8], word: usize, be: &[u8]) {
    let end = (word + 1) * 32;
    buf[end - be.len()..end].copy_from_slice(be);
}

/// `abi.encode(deviceId, seq, timestamp, heartRate, ...)`, written out by
/// hand so the Stylus WASM does not carry the generic encoder (the unit test
/// checks it against alloy's encoder). `prefix` words are left zero before
/// the fields for the caller to fill (the EIP-712 type hash uses one).
pub fn encode_fields<const N: usize>(r: &Reading, prefix: usize) -> [u8; N] {
    let mut buf = [0u8; N];
    buf[prefix * 32..prefix * 32 + 32].copy_from_slice(r.deviceId.as_slice());
    let p = prefix;
    put_uint(&mut buf, p + 1, &r.seq.to_be_bytes());
    put_uint(&mut buf, p + 2, &r.timestamp.to_be_bytes());
    put_uint(&mut buf, p + 3, &r.heartRate.to_be_bytes());
    put_uint(&mut buf, p + 4, &r.respRate.to_be_bytes());
    put_uint(&mut buf, p + 5, &r.spo2.to_be_bytes());
    put_uint(&mut buf, p + 6, &r.systolic.to_be_bytes());
    put_uint(&mut buf, p + 7, &r.diastolic.to_be_bytes());
    put_uint(&mut buf, p + 8, &r.temperature.to_be_bytes());
    put_uint(&mut buf, p + 9, &[r.consciousness]);
    buf
}

/// The OpenZeppelin StandardMerkleTree leaf of a reading:
/// `keccak256(bytes.concat(keccak256(abi.encode(fields...))))`, leaf encoding
/// `["bytes32","uint64","uint64","uint16","uint16","uint16","uint16","uint16","uint16","uint8"]`.
pub fn reading_leaf(r: &Reading) -> B256 {
    let enc: [u8; READING_WORDS * 32] = encode_fields(r, 0);
    keccak256(keccak256(enc))
}

/// The readings of a stay: those its device stamped from admission to the
/// end of the discharge second, in ms, both ends included. Admission and
/// discharge are block times (whole seconds); a reading stamped within the
/// discharge second (`dischargedAt * 1000 + 999` at most) was taken before
/// the discharge block closed and belongs to the stay. `discharged_at == 0`
/// (still admitted) leaves the window open. One definition for the archive,
/// the API, the dashboard and `archive verify`.
pub fn stay_window_ms(admitted_at: u64, discharged_at: u64) -> core::ops::RangeInclusive<u64> {
    let to = match discharged_at {
        0 => u64::MAX,
        d => d.saturating_mul(1_000).saturating_add(999),
    };
    admitted_at.saturating_mul(1_000)..=to
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloy_sol_types::SolValue;

    fn sample() -> Reading {
        Reading {
            deviceId: keccak256("HS-0001"),
            seq: 42,
            timestamp: 1_764_000_000_123,
            heartRate: 72,
            respRate: 16,
            spo2: 97,
            systolic: 121,
            diastolic: 79,
            temperature: 3_705,
            consciousness: 1,
        }
    }

    #[test]
    fn hand_encoding_matches_alloy_abi_encode() {
        let r = sample();
        let ours: [u8; 320] = encode_fields(&r, 0);
        assert_eq!(ours.as_slice(), r.abi_encode().as_slice());
        let max = Reading {
            deviceId: B256::repeat_byte(0xff),
            seq: u64::MAX,
            timestamp: u64::MAX,
            heartRate: u16::MAX,
            respRate: u16::MAX,
            spo2: u16::MAX,
            systolic: u16::MAX,
            diastolic: u16::MAX,
            temperature: u16::MAX,
            consciousness: u8::MAX,
        };
        let ours: [u8; 320] = encode_fields(&max, 0);
        assert_eq!(ours.as_slice(), max.abi_encode().as_slice());
    }

    #[test]
    fn stay_window_runs_to_the_end_of_the_discharge_second() {
        let w = stay_window_ms(100, 200);
        assert_eq!((*w.start(), *w.end()), (100_000, 200_999));
        assert!(w.contains(&200_999) && !w.contains(&201_000) && !w.contains(&99_999));
        assert_eq!(*stay_window_ms(100, 0).end(), u64::MAX);
    }

    #[test]
    fn leaf_is_double_keccak_of_encoding_and_field_sensitive() {
        let r = sample();
        assert_eq!(reading_leaf(&r), keccak256(keccak256(r.abi_encode())));
        let mut other = r.clone();
        other.spo2 = 96;
        assert_ne!(reading_leaf(&r), reading_leaf(&other));
    }
}
