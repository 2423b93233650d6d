//! Device registry cache and signature checks.
//!
//! Each device's on-chain record is read once and kept until a device event
//! invalidates it. A reading's signature is checked as `ecrecover` checks
//! it: the public key is recovered from the digest, `r`, `s` and the parity
//! `v`, and must be the device's. The first valid signature of a device is
//! matched against the registered signer address; its public key is then
//! cached, and later readings compare the recovered key with it (no hash).
//!
//! Recovery runs on libsecp256k1 (the `secp256k1` crate), not k256: it is
//! the hub's hot loop, and libsecp256k1's hand-tuned field arithmetic and
//! precomputed tables are the fastest well-kept secp256k1 code there is
//! (`healthsense-bench oracle` prints its rate beside k256's, "hub
//! signature check"; docs/BENCHMARKS.md, "Issue 22"). Device keys, signing
//! and the benchmark's baseline stay on k256.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};

use alloy::primitives::{Address, Signature, B256};
use healthsense_abi::bindings::IHealthSense::DeviceInfo;
use healthsense_abi::rules::status::DeviceStatus;
use secp256k1::ecdsa::{RecoverableSignature, RecoveryId};
use secp256k1::{Message, PublicKey, SECP256K1};

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
    key: OnceLock<PublicKey>,
}

impl Device {
    /// From the contract's `DeviceInfo`.
    pub fn from_info(info: &DeviceInfo) -> Self {
        Self::new(info.signer, info.ward, DeviceStatus::from_code(info.status).unwrap_or(DeviceStatus::None))
    }

    /// A record with no key cached yet.
    pub fn new(signer: Address, ward: B256, status: DeviceStatus) -> Self {
        Self { signer, ward, status, key: OnceLock::new() }
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
        let recovered =
            recover(digest, sig).ok_or_else(|| (Code::BadSignature, "the signature recovers to no key".to_string()))?;
        if self.key.get() == Some(&recovered) {
            return Ok(());
        }
        // First reading, or not the cached key: compare addresses.
        let address = address_of(&recovered);
        if address != self.signer {
            return Err((Code::WrongSigner, format!("signed by {address}, registered signer is {}", self.signer)));
        }
        let _ = self.key.set(recovered);
        Ok(())
    }
}

/// `ecrecover` on libsecp256k1: the key that signed `digest` with `sig`
/// (`r`, `s`, and `v` as the parity of `R`'s y), or `None` where
/// `ecrecover` returns nothing. High `s` is refused by the parser (EIP-2).
fn recover(digest: &B256, sig: &Signature) -> Option<PublicKey> {
    let mut compact = [0u8; 64];
    compact[..32].copy_from_slice(&sig.r().to_be_bytes::<32>());
    compact[32..].copy_from_slice(&sig.s().to_be_bytes::<32>());
    let id = RecoveryId::try_from(i32::from(sig.v())).ok()?;
    let sig = RecoverableSignature::from_compact(&compact, id).ok()?;
    SECP256K1.recover_ecdsa(Message::from_digest(digest.0), &sig).ok()
}

/// The Ethereum address of a public key.
fn address_of(key: &PublicKey) -> Address {
    Address::from_raw_public_key(&key.serialize_uncompressed()[1..])
}

/// A device's on-chain record without its key, as the store keeps it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceRecord {
    /// Device id.
    pub id: B256,
    /// Registered signer address.
    pub signer: Address,
    /// Ward id.
    pub ward: B256,
    /// Lifecycle status.
    pub status: DeviceStatus,
}

impl From<&DeviceRecord> for Device {
    fn from(r: &DeviceRecord) -> Self {
        Device::new(r.signer, r.ward, r.status)
    }
}

/// Generation counters of the registry, each shared by the devices whose
/// ids fall in its slot.
const GENERATION_SLOTS: usize = 1024;

/// The cache of device records, keyed by device id.
///
/// Every forgotten record bumps the generation of its id's slot. A record
/// read from the chain is cached only if its slot's generation did not move
/// while it was being read: else a read that began before a device event
/// and ended after the watcher forgot the device would cache the old state
/// until the next event. Slots rather than one counter, so that a burst of
/// hellos (each forgets its device) does not keep every other device's
/// lookup from being cached; a shared slot only costs a second read.
///
/// The cache also notes which devices changed since the store's copy was
/// last brought up to date ([`Registry::take_changes`]).
#[derive(Debug)]
pub struct Registry {
    map: RwLock<HashMap<B256, Arc<Device>>>,
    generations: Vec<AtomicU64>,
    changed: Mutex<HashSet<B256>>,
}

impl Default for Registry {
    fn default() -> Self {
        Self { map: RwLock::default(), generations: (0..GENERATION_SLOTS).map(|_| AtomicU64::new(0)).collect(), changed: Mutex::default() }
    }
}

impl Registry {
    /// Device ids are keccak hashes, so their last bytes spread evenly.
    fn slot(&self, id: &B256) -> &AtomicU64 {
        &self.generations[usize::from(u16::from_be_bytes([id[30], id[31]])) % GENERATION_SLOTS]
    }

    /// A cached record.
    pub fn get(&self, id: &B256) -> Option<Arc<Device>> {
        self.map.read().ok()?.get(id).cloned()
    }

    /// Those of `ids` that have no cached record, under one read lock (a
    /// restarted hub asks for every device it has readings of).
    pub fn missing(&self, ids: Vec<B256>) -> Vec<B256> {
        match self.map.read() {
            Ok(map) => ids.into_iter().filter(|id| !map.contains_key(id)).collect(),
            Err(_) => ids,
        }
    }

    /// The generation to pass to [`Registry::insert`] for the record of
    /// `id` about to be read from the chain.
    pub fn generation(&self, id: &B256) -> u64 {
        self.slot(id).load(Ordering::Acquire)
    }

    /// Caches a record read from the chain since `generation` (see
    /// [`Registry::generation`]); a record that may predate an event seen
    /// meanwhile is returned without being cached.
    pub fn insert(&self, id: B256, device: Device, generation: u64) -> Arc<Device> {
        let device = Arc::new(device);
        if let Ok(mut map) = self.map.write() {
            if self.slot(&id).load(Ordering::Acquire) == generation {
                map.insert(id, device.clone());
                self.note_change(id);
            }
        }
        device
    }

    /// Caches records from the store's copy, which already holds them,
    /// under one lock (a restart restores 20,000 before the hub connects to
    /// its broker).
    pub fn restore_all(&self, records: &[DeviceRecord]) {
        if let Ok(mut map) = self.map.write() {
            map.reserve(records.len());
            map.extend(records.iter().map(|r| (r.id, Arc::new(Device::from(r)))));
        }
    }

    /// Forgets a record (its on-chain state changed).
    pub fn invalidate(&self, id: &B256) {
        if let Ok(mut map) = self.map.write() {
            self.slot(id).fetch_add(1, Ordering::AcqRel);
            map.remove(id);
            self.note_change(*id);
        }
    }

    /// Forgets every record (their state as of when they were read is not
    /// known, as when the watcher could not learn its first block).
    pub fn invalidate_all(&self) {
        if let Ok(mut map) = self.map.write() {
            for g in &self.generations {
                g.fetch_add(1, Ordering::AcqRel);
            }
            let ids: Vec<B256> = map.drain().map(|(id, _)| id).collect();
            self.put_back(ids);
        }
    }

    fn note_change(&self, id: B256) {
        if let Ok(mut changed) = self.changed.lock() {
            changed.insert(id);
        }
    }

    /// The devices cached or forgotten since the last call, each with its
    /// record now (`None`: forget it), for the store's copy
    /// ([`crate::store::Store::save_device_cache`]).
    pub fn take_changes(&self) -> Vec<(B256, Option<DeviceRecord>)> {
        let ids = match self.changed.lock() {
            Ok(mut changed) => std::mem::take(&mut *changed),
            Err(_) => return Vec::new(),
        };
        ids.into_iter()
            .map(|id| {
                let record = self.get(&id).map(|d| DeviceRecord { id, signer: d.signer, ward: d.ward, status: d.status });
                (id, record)
            })
            .collect()
    }

    /// Marks devices as changed again (their changes were not saved).
    pub fn put_back(&self, ids: impl IntoIterator<Item = B256>) {
        if let Ok(mut changed) = self.changed.lock() {
            changed.extend(ids);
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
        Device::new(signer, B256::ZERO, DeviceStatus::Active)
    }

    #[test]
    fn recovery_agrees_with_k256_and_the_cached_key_is_exact() {
        let key = PrivateKeySigner::random();
        let dev = active(key.address());
        for i in 0..32u8 {
            let digest = B256::repeat_byte(i);
            let sig = key.sign_hash_sync(&digest).unwrap();
            assert_eq!(address_of(&recover(&digest, &sig).unwrap()), sig.recover_address_from_prehash(&digest).unwrap());
            assert_eq!(dev.check(&digest, &sig), Ok(()));
            assert!(dev.key.get().is_some());
            // Flipping v makes ecrecover return another address: reject,
            // cached key or not, and agree with k256 on which address.
            let flipped = Signature::new(sig.r(), sig.s(), !sig.v());
            let other = sig_address(&digest, &flipped);
            assert_eq!(address_of(&recover(&digest, &flipped).unwrap()), other);
            assert_ne!(other, key.address());
            assert_eq!(dev.check(&digest, &flipped).unwrap_err().0, Code::WrongSigner);
            // Another digest recovers to another key.
            let next = B256::repeat_byte(i.wrapping_add(1));
            assert_eq!(dev.check(&next, &sig).unwrap_err().0, Code::WrongSigner);
        }
        // r = 0 or s = 0 recover to nothing, as ecrecover's do.
        let digest = B256::repeat_byte(1);
        let sig = key.sign_hash_sync(&digest).unwrap();
        for bad in [Signature::new(sig.r(), alloy::primitives::U256::ZERO, sig.v()), Signature::new(alloy::primitives::U256::ZERO, sig.s(), sig.v())] {
            assert!(recover(&digest, &bad).is_none());
            assert_eq!(dev.check(&digest, &bad).unwrap_err().0, Code::BadSignature);
        }
    }

    fn sig_address(digest: &B256, sig: &Signature) -> Address {
        sig.recover_address_from_prehash(digest).unwrap()
    }

    #[test]
    fn a_record_read_across_an_event_is_not_cached_and_changes_are_taken_once() {
        let r = Registry::default();
        let (a, b) = (B256::repeat_byte(1), B256::repeat_byte(2));
        let signer = Address::repeat_byte(7);
        r.insert(a, active(signer), r.generation(&a));
        assert!(r.get(&a).is_some());
        // A read of a began, then an event made the watcher forget a.
        let before = r.generation(&a);
        r.invalidate(&a);
        let returned = r.insert(a, active(signer), before);
        assert_eq!(returned.signer, signer, "the caller still gets the record it read");
        assert!(r.get(&a).is_none(), "a read that began before its device's event is not cached");
        // Another device's event does not hold b's read back.
        let before_b = r.generation(&b);
        r.invalidate(&B256::repeat_byte(3));
        r.insert(b, active(signer), before_b);
        assert!(r.get(&b).is_some());
        let mut changes = r.take_changes();
        changes.sort_by_key(|(id, _)| *id);
        assert_eq!(changes.len(), 3);
        assert_eq!(changes[0], (a, None), "a was forgotten");
        assert_eq!(changes[1].1.map(|d| (d.id, d.status)), Some((b, DeviceStatus::Active)));
        assert_eq!(changes[2], (B256::repeat_byte(3), None));
        assert!(r.take_changes().is_empty());
        // Restored records are already in the store: no change to save.
        r.restore_all(&[DeviceRecord { id: a, signer, ward: B256::ZERO, status: DeviceStatus::Revoked }]);
        assert_eq!(r.get(&a).map(|d| d.status), Some(DeviceStatus::Revoked));
        assert!(r.take_changes().is_empty());
        r.put_back([a]);
        assert_eq!(r.take_changes().len(), 1);
        // Forgetting everything also refuses reads begun before it.
        let before = r.generation(&b);
        r.invalidate_all();
        assert!(r.is_empty());
        let mut forgotten: Vec<_> = r.take_changes().into_iter().map(|(id, d)| (id, d.is_none())).collect();
        forgotten.sort();
        assert_eq!(forgotten, vec![(a, true), (b, true)]);
        r.insert(b, active(signer), before);
        assert!(r.is_empty());
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
