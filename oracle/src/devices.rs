//! Device registry cache and signature checks.
//!
//! Each device's on-chain record is read once and kept until a device event
//! invalidates it. The first valid signature of a device is checked by
//! recovery against the registered signer address; its public key is then
//! cached and later readings are verified against it directly. The cached
//! check also requires the recovery parity `v` to match, so a reading the hub
//! accepts is exactly one that `ecrecover` on chain accepts (readings mode).

use std::collections::HashMap;
use std::sync::{Arc, OnceLock, RwLock};

use alloy::primitives::{Address, Signature, B256};
use healthsense_abi::bindings::IHealthSense::DeviceInfo;
use healthsense_abi::rules::status::DeviceStatus;
use k256::elliptic_curve::ops::{Invert, LinearCombination, Reduce};
use k256::elliptic_curve::point::AffineCoordinates;
use k256::elliptic_curve::PrimeField;
use k256::{AffinePoint, ProjectivePoint, Scalar, U256 as KU256};

use crate::protocol::Code;

/// A device's on-chain record plus its cached public key.
#[derive(Debug)]
pub struct Device {
    /// Registered signer address.
    pub signer: Address,
    /// Ward id.
    pub ward: B256,
    /// Lifecycle status.
    pub status: DeviceStatus,
    key: OnceLock<AffinePoint>,
}

impl Device {
    /// From the contract's `DeviceInfo`.
    pub fn from_info(info: &DeviceInfo) -> Self {
        Self {
            signer: info.signer,
            ward: info.ward,
            status: DeviceStatus::from_code(info.status).unwrap_or(DeviceStatus::None),
            key: OnceLock::new(),
        }
    }

    /// Checks that `sig` over `digest` is by this device and the device may
    /// send readings now.
    pub fn check(&self, digest: &B256, sig: &Signature) -> Result<(), (Code, String)> {
        match self.status {
            DeviceStatus::None => return Err((Code::UnknownDevice, "no such device on chain".into())),
            DeviceStatus::Revoked => return Err((Code::Revoked, "the device is revoked".into())),
            DeviceStatus::Pending => {
                return Err((Code::NotRegistered, "the device is not active yet: send hello first".into()))
            }
            DeviceStatus::Active => {}
        }
        if let Some(key) = self.key.get() {
            if verify_exact(key, digest, sig) {
                return Ok(());
            }
        }
        // First reading, or a failure: recover to say which failure it is.
        let recovered = sig
            .recover_from_prehash(digest)
            .map_err(|_| (Code::BadSignature, "the signature recovers to no key".to_string()))?;
        let address = Address::from_public_key(&recovered);
        if address != self.signer {
            return Err((Code::WrongSigner, format!("signed by {address}, registered signer is {}", self.signer)));
        }
        let _ = self.key.set(*recovered.as_affine());
        Ok(())
    }
}

/// ECDSA verification with ecrecover's exact acceptance rule: low `s`
/// (checked by the parser), `r` the x of `R = u1·G + u2·Q`, and `R`'s y
/// parity equal to the signature's `v`.
fn verify_exact(key: &AffinePoint, digest: &B256, sig: &Signature) -> bool {
    let (Some(r), Some(s)) = (scalar(&sig.r().to_be_bytes::<32>()), scalar(&sig.s().to_be_bytes::<32>())) else {
        return false;
    };
    // Signatures are public: the variable-time inverse is safe and faster.
    let Some(s_inv) = Option::<Scalar>::from(Invert::invert_vartime(&s)) else { return false };
    let z = <Scalar as Reduce<KU256>>::reduce_bytes(&k256::FieldBytes::from(digest.0));
    let big_r = ProjectivePoint::lincomb(
        &ProjectivePoint::GENERATOR,
        &(z * s_inv),
        &ProjectivePoint::from(*key),
        &(r * s_inv),
    )
    .to_affine();
    if big_r == AffinePoint::IDENTITY {
        return false;
    }
    // ecrecover takes r as x itself (v only selects the parity); x mod n
    // differs from x only when x >= n, with probability about 2^-128.
    let x = <Scalar as Reduce<KU256>>::reduce_bytes(&big_r.x());
    x == r && bool::from(big_r.y_is_odd()) == sig.v()
}

fn scalar(bytes: &[u8; 32]) -> Option<Scalar> {
    Option::<Scalar>::from(Scalar::from_repr((*bytes).into())).filter(|s| !bool::from(s.is_zero()))
}

/// The cache of device records, keyed by device id.
#[derive(Debug, Default)]
pub struct Registry {
    map: RwLock<HashMap<B256, Arc<Device>>>,
}

impl Registry {
    /// A cached record.
    pub fn get(&self, id: &B256) -> Option<Arc<Device>> {
        self.map.read().ok()?.get(id).cloned()
    }

    /// Caches a record.
    pub fn insert(&self, id: B256, device: Device) -> Arc<Device> {
        let device = Arc::new(device);
        if let Ok(mut map) = self.map.write() {
            map.insert(id, device.clone());
        }
        device
    }

    /// Forgets a record (its on-chain state changed).
    pub fn invalidate(&self, id: &B256) {
        if let Ok(mut map) = self.map.write() {
            map.remove(id);
        }
    }

    /// Number of cached records.
    pub fn len(&self) -> usize {
        self.map.read().map(|m| m.len()).unwrap_or(0)
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloy::signers::{local::PrivateKeySigner, SignerSync};

    fn active(signer: Address) -> Device {
        Device { signer, ward: B256::ZERO, status: DeviceStatus::Active, key: OnceLock::new() }
    }

    #[test]
    fn exact_verification_agrees_with_recovery() {
        let key = PrivateKeySigner::random();
        let dev = active(key.address());
        for i in 0..32u8 {
            let digest = B256::repeat_byte(i);
            let sig = key.sign_hash_sync(&digest).unwrap();
            assert_eq!(dev.check(&digest, &sig), Ok(()));
            let point = *dev.key.get().unwrap();
            assert!(verify_exact(&point, &digest, &sig));
            // Flipping v makes ecrecover return another address: reject.
            let flipped = Signature::new(sig.r(), sig.s(), !sig.v());
            assert!(!verify_exact(&point, &digest, &flipped));
            assert_eq!(dev.check(&digest, &flipped).unwrap_err().0, Code::WrongSigner);
            assert!(!verify_exact(&point, &B256::repeat_byte(i.wrapping_add(1)), &sig));
        }
    }

    #[test]
    fn status_and_signer_are_enforced() {
        let key = PrivateKeySigner::random();
        let other = PrivateKeySigner::random();
        let digest = B256::repeat_byte(9);
        let sig = key.sign_hash_sync(&digest).unwrap();
        assert_eq!(active(other.address()).check(&digest, &sig).unwrap_err().0, Code::WrongSigner);
        for (status, code) in [
            (DeviceStatus::None, Code::UnknownDevice),
            (DeviceStatus::Pending, Code::NotRegistered),
            (DeviceStatus::Revoked, Code::Revoked),
        ] {
            let dev = Device { status, ..active(key.address()) };
            assert_eq!(dev.check(&digest, &sig).unwrap_err().0, code);
        }
    }
}
