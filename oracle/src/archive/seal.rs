//! Sealing an archive: zstd compression, then ChaCha20-Poly1305 under a
//! per-patient key derived from the hospital master key.
//!
//! Key handling (docs/ARCHIVE.md): `key = HKDF-SHA256(ikm = master key,
//! salt = the patient's random key salt, info = "healthsense.archive.v1" ‖
//! chain id ‖ contract ‖ patient id)`. The salt lives only in the hub store,
//! never in the archive, so erasing it (`archive_keys.salt`) makes the
//! archive undecryptable for good while the master key stays in service.
//! The associated data binds a sealed archive to its deployment and patient:
//! an archive swapped onto another patient fails to open.

use std::fmt;
use std::io::{Read, Write};

use alloy::primitives::{Address, B256};
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use hkdf::Hkdf;
use rand::RngCore;
use sha2::Sha256;

/// The first bytes of every sealed archive (format version 1).
pub const MAGIC: &[u8; 8] = b"HSARCH1\0";
const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;
/// zstd level: level 3 is zstd's default; archives are written once and the
/// 7-day benchmark (DESIGN.md: <= 30 s) needs speed more than the last percent.
const ZSTD_LEVEL: i32 = 3;
/// Longest decompressed bundle accepted (a 7-day stay at 1 Hz is ~1.3 GB of JSON).
pub const MAX_BUNDLE_BYTES: u64 = 8 << 30;

/// Why an archive could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    /// The bytes do not start with the archive magic.
    #[error("not a HealthSense archive (no HSARCH1 header): wrong CID or file?")]
    NotAnArchive,
    /// Too short to hold a nonce and a tag.
    #[error("archive truncated: {0} bytes is shorter than its header and tag")]
    Truncated(usize),
    /// Authentication failed: wrong key, wrong patient, or altered bytes.
    #[error("archive does not decrypt: wrong key, another patient's archive, or corrupted bytes")]
    Authentication,
    /// The compressed bundle inside is broken.
    #[error("archive decrypts but does not decompress: {0}")]
    Decompress(String),
    /// A key is not 32 bytes of hex.
    #[error("{0}")]
    BadKey(String),
}

/// A 32-byte secret (master or patient key). Never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret([u8; 32]);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl Secret {
    /// A fresh random secret.
    pub fn random() -> Self {
        let mut k = [0u8; 32];
        rand::rng().fill_bytes(&mut k);
        Self(k)
    }

    /// From 64 hex digits (an optional `0x` and surrounding whitespace allowed).
    /// The error never echoes the input.
    pub fn from_hex(text: &str, what: &str) -> Result<Self, SealError> {
        let t = text.trim();
        let t = t.strip_prefix("0x").unwrap_or(t);
        let mut k = [0u8; 32];
        alloy::hex::decode_to_slice(t, &mut k)
            .map_err(|_| SealError::BadKey(format!("{what} is not 32 bytes of hex (64 hex digits)")))?;
        Ok(Self(k))
    }

    /// Hex, for writing a key file (0600) handed to a patient or doctor.
    pub fn to_hex(&self) -> String {
        alloy::hex::encode(self.0)
    }

    /// The raw bytes.
    pub fn bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

/// What an archive is bound to: the deployment and the patient.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ArchiveScope {
    /// Chain id of the deployment.
    pub chain_id: u64,
    /// Contract address.
    pub contract: Address,
    /// Pseudonymous patient id.
    pub patient: B256,
}

impl ArchiveScope {
    fn info(&self) -> Vec<u8> {
        let mut info = b"healthsense.archive.v1".to_vec();
        info.extend_from_slice(&self.chain_id.to_be_bytes());
        info.extend_from_slice(self.contract.as_slice());
        info.extend_from_slice(self.patient.as_slice());
        info
    }
}

/// The patient key: HKDF-SHA256 of the master key, the patient's salt and the scope.
pub fn patient_key(master: &Secret, salt: &[u8], scope: &ArchiveScope) -> Secret {
    let hk = Hkdf::<Sha256>::new(Some(salt), master.bytes());
    let mut out = [0u8; 32];
    // 32 bytes is far below HKDF-SHA256's 8160-byte limit: expand cannot fail.
    let _ = hk.expand(&scope.info(), &mut out);
    Secret(out)
}

/// Compresses `bundle` (the FHIR JSON), using both cores for large bundles.
pub fn compressor<W: Write>(out: W) -> std::io::Result<zstd::Encoder<'static, W>> {
    let mut enc = zstd::Encoder::new(out, ZSTD_LEVEL)?;
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get()) as u32;
    if workers > 1 {
        enc.multithread(workers)?;
    }
    // Neighbouring observations repeat proof hashes of their batch; a long
    // window lets zstd find them across a whole 2,000-reading batch.
    enc.long_distance_matching(true)?;
    enc.window_log(24)?;
    Ok(enc)
}

/// Encrypts a compressed bundle: `MAGIC ‖ nonce ‖ ciphertext ‖ tag`.
pub fn seal(key: &Secret, scope: &ArchiveScope, compressed: &[u8]) -> Vec<u8> {
    let mut nonce = [0u8; NONCE_LEN];
    rand::rng().fill_bytes(&mut nonce);
    let cipher = ChaCha20Poly1305::new(&Key::from(*key.bytes()));
    let aad = scope.info();
    // Encryption of an in-memory buffer only fails above ChaCha20's 256 GiB limit.
    let ct = cipher.encrypt(&Nonce::from(nonce), Payload { msg: compressed, aad: &aad }).unwrap_or_default();
    let mut out = Vec::with_capacity(MAGIC.len() + NONCE_LEN + ct.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&ct);
    out
}

/// Decrypts a sealed archive to the compressed bundle.
pub fn open(key: &Secret, scope: &ArchiveScope, sealed: &[u8]) -> Result<Vec<u8>, SealError> {
    if sealed.len() < MAGIC.len() || &sealed[..MAGIC.len()] != MAGIC {
        return Err(if MAGIC.starts_with(sealed) { SealError::Truncated(sealed.len()) } else { SealError::NotAnArchive });
    }
    if sealed.len() < MAGIC.len() + NONCE_LEN + TAG_LEN {
        return Err(SealError::Truncated(sealed.len()));
    }
    let (nonce, ct) = sealed[MAGIC.len()..].split_at(NONCE_LEN);
    let nonce: [u8; NONCE_LEN] = nonce.try_into().map_err(|_| SealError::Truncated(sealed.len()))?;
    let cipher = ChaCha20Poly1305::new(&Key::from(*key.bytes()));
    let aad = scope.info();
    cipher.decrypt(&Nonce::from(nonce), Payload { msg: ct, aad: &aad }).map_err(|_| SealError::Authentication)
}

/// Decompresses a bundle, refusing more than [`MAX_BUNDLE_BYTES`].
pub fn decompress(compressed: &[u8]) -> Result<Vec<u8>, SealError> {
    let dec = zstd::Decoder::new(compressed).map_err(|e| SealError::Decompress(e.to_string()))?;
    let mut out = Vec::new();
    dec.take(MAX_BUNDLE_BYTES + 1).read_to_end(&mut out).map_err(|e| SealError::Decompress(e.to_string()))?;
    if out.len() as u64 > MAX_BUNDLE_BYTES {
        return Err(SealError::Decompress(format!("bundle larger than {MAX_BUNDLE_BYTES} bytes")));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scope(patient: u8) -> ArchiveScope {
        ArchiveScope { chain_id: 31337, contract: Address::repeat_byte(7), patient: B256::repeat_byte(patient) }
    }

    fn compress(bytes: &[u8]) -> Vec<u8> {
        let mut enc = compressor(Vec::new()).unwrap();
        enc.write_all(bytes).unwrap();
        enc.finish().unwrap()
    }

    #[test]
    fn sealed_archives_open_only_with_their_key_and_scope() {
        let master = Secret::random();
        let salt = [5u8; 32];
        let key = patient_key(&master, &salt, &scope(1));
        let bundle = br#"{"resourceType":"Bundle"}"#.repeat(1000);
        let sealed = seal(&key, &scope(1), &compress(&bundle));
        assert_eq!(&sealed[..8], MAGIC);
        assert_eq!(decompress(&open(&key, &scope(1), &sealed).unwrap()).unwrap(), bundle);

        // Another salt (an erased and re-made key), another patient, another master: no.
        assert!(matches!(open(&patient_key(&master, &[6u8; 32], &scope(1)), &scope(1), &sealed), Err(SealError::Authentication)));
        assert!(matches!(open(&key, &scope(2), &sealed), Err(SealError::Authentication)));
        let other = patient_key(&Secret::random(), &salt, &scope(1));
        assert!(matches!(open(&other, &scope(1), &sealed), Err(SealError::Authentication)));

        let mut flipped = sealed.clone();
        let last = flipped.len() - 20;
        flipped[last] ^= 1;
        assert!(matches!(open(&key, &scope(1), &flipped), Err(SealError::Authentication)));
        assert!(matches!(open(&key, &scope(1), &sealed[..30]), Err(SealError::Truncated(30))));
        assert!(matches!(open(&key, &scope(1), &sealed[..5]), Err(SealError::Truncated(5))));
        assert!(matches!(open(&key, &scope(1), b"{\"not\": \"an archive\"}"), Err(SealError::NotAnArchive)));
    }

    #[test]
    fn keys_parse_from_hex_without_echoing_them() {
        let k = Secret::random();
        assert_eq!(Secret::from_hex(&format!("0x{}\n", k.to_hex()), "key").unwrap(), k);
        let err = Secret::from_hex("deadbeef-secret", "HEALTHSENSE_ARCHIVE_KEY").unwrap_err().to_string();
        assert!(err.contains("HEALTHSENSE_ARCHIVE_KEY") && !err.contains("deadbeef"), "{err}");
        assert_eq!(format!("{k:?}"), "Secret(<redacted>)");
    }
}
