//! Checking the many signatures of one device at once (`archive verify`).
//!
//! A signature `(r, s, v)` over `z` passes the hub's check (the cached-key
//! path of [`crate::devices::Device::check`], ecrecover's rule) when
//! `R = u1·G + u2·Q` with `u1 = z/s`, `u2 = r/s` has x-coordinate `r` and y
//! parity `v`, that is when `R` is the curve point with x = `r` and parity
//! `v`. For a chunk of signatures by the same key `Q` the check is batched:
//! with random 128-bit weights `w_i`,
//! `(Σ w_i·u1_i)·G + (Σ w_i·u2_i)·Q = Σ w_i·R_i`, one two-point product and
//! one multi-scalar product of 128-bit weights (Pippenger's buckets) instead
//! of one full double-scalar product per signature. If every signature
//! passes, so does the sum; if any fails, the sum fails but with probability
//! 2^-128, and then each signature of the chunk is checked alone, so the
//! findings are exactly those of one check per signature and name each bad
//! one. k256 has no batch ECDSA verification; this is written on its
//! arithmetic (points, scalars, decompression) only.

use alloy::primitives::{Signature, B256};
use k256::elliptic_curve::ops::{Invert, LinearCombination, Reduce};
use k256::elliptic_curve::point::DecompressPoint;
use k256::elliptic_curve::subtle::Choice;
use k256::elliptic_curve::PrimeField;
use k256::{AffinePoint, ProjectivePoint, Scalar, U256 as KU256};
use rand::Rng;
use rayon::prelude::*;

/// Signatures summed in one check: larger chunks amortise Pippenger's
/// bucket sums better; a failed chunk costs its size in single checks.
const CHUNK: usize = 2_048;
/// Bits of a weight per Pippenger window.
const WINDOW: u32 = 8;

/// One signature made ready for the sum: `R`, `u1`, `u2`.
struct Prepared {
    big_r: AffinePoint,
    u1: Scalar,
    u2: Scalar,
}

fn scalar(bytes: [u8; 32]) -> Option<Scalar> {
    Option::<Scalar>::from(Scalar::from_repr(bytes.into())).filter(|s| !bool::from(s.is_zero()))
}

/// `R`, `z` and `s` of a signature, or `None` when it cannot pass (the
/// single check then says why).
fn parts(digest: &B256, sig: &[u8]) -> Option<(AffinePoint, Scalar, Scalar, Scalar)> {
    let sig = Signature::from_raw(sig).ok()?;
    let (r_bytes, s_bytes) = (sig.r().to_be_bytes::<32>(), sig.s().to_be_bytes::<32>());
    let (r, s) = (scalar(r_bytes)?, scalar(s_bytes)?);
    let big_r = Option::<AffinePoint>::from(AffinePoint::decompress(&r_bytes.into(), Choice::from(u8::from(sig.v()))))?;
    let z = <Scalar as Reduce<KU256>>::reduce_bytes(&k256::FieldBytes::from(digest.0));
    Some((big_r, z, r, s))
}

/// Whether every signature of `chunk` (digest, 65-byte signature) is by
/// `key`, by one weighted sum.
fn chunk_passes(key: &AffinePoint, chunk: &[(B256, &[u8])]) -> bool {
    let mut raw = Vec::with_capacity(chunk.len());
    for (digest, sig) in chunk {
        match parts(digest, sig) {
            Some(p) => raw.push(p),
            None => return false,
        }
    }
    // Montgomery's trick: one inversion for every s of the chunk.
    let mut prefix = Vec::with_capacity(raw.len());
    let mut acc = Scalar::ONE;
    for (_, _, _, s) in &raw {
        prefix.push(acc);
        acc *= s;
    }
    let Some(mut inv) = Option::<Scalar>::from(Invert::invert_vartime(&acc)) else { return false };
    let mut prepared = Vec::with_capacity(raw.len());
    for ((big_r, z, r, s), before) in raw.iter().zip(prefix).rev() {
        let s_inv = inv * before;
        inv *= s;
        prepared.push(Prepared { big_r: *big_r, u1: *z * s_inv, u2: *r * s_inv });
    }
    let mut rng = rand::rng();
    let weights: Vec<u128> = prepared.iter().map(|_| rng.random::<u128>() | 1).collect();
    let (mut a, mut b) = (Scalar::ZERO, Scalar::ZERO);
    for (p, w) in prepared.iter().zip(&weights) {
        let w = Scalar::from(*w);
        a += w * p.u1;
        b += w * p.u2;
    }
    let left = ProjectivePoint::lincomb(&ProjectivePoint::GENERATOR, &a, &ProjectivePoint::from(*key), &b);
    left == weighted_sum(&prepared, &weights)
}

/// `Σ w_i·R_i` by Pippenger's buckets over [`WINDOW`]-bit digits.
fn weighted_sum(points: &[Prepared], weights: &[u128]) -> ProjectivePoint {
    let mask = (1u128 << WINDOW) - 1;
    let mut acc = ProjectivePoint::IDENTITY;
    for j in (0..128u32.div_ceil(WINDOW)).rev() {
        for _ in 0..WINDOW {
            acc = acc.double();
        }
        let mut buckets = vec![ProjectivePoint::IDENTITY; mask as usize];
        for (p, w) in points.iter().zip(weights) {
            let digit = ((w >> (j * WINDOW)) & mask) as usize;
            if digit != 0 {
                buckets[digit - 1] += &p.big_r;
            }
        }
        let (mut running, mut sum) = (ProjectivePoint::IDENTITY, ProjectivePoint::IDENTITY);
        for bucket in buckets.iter().rev() {
            running += bucket;
            sum += running;
        }
        acc += sum;
    }
    acc
}

/// For each `(digest, signature)`, whether `single` accepts it, computed by
/// weighted sums over `key` on every core; `single` (the hub's own check)
/// runs only on the signatures of a chunk whose sum failed.
pub fn verify_all(key: &AffinePoint, items: &[(B256, &[u8])], single: impl Fn(&B256, &[u8]) -> bool + Sync) -> Vec<bool> {
    let single = &single;
    items
        .par_chunks(CHUNK)
        .flat_map_iter(|chunk| {
            let all = chunk_passes(key, chunk);
            chunk.iter().map(move |(d, s)| all || single(d, *s)).collect::<Vec<_>>()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloy::signers::local::PrivateKeySigner;
    use alloy::signers::SignerSync;

    #[test]
    fn a_sum_passes_valid_signatures_and_fails_any_bad_one() {
        let key = PrivateKeySigner::random();
        let public = *key.credential().verifying_key().as_affine();
        let items: Vec<(B256, Vec<u8>)> = (0..300u64)
            .map(|i| {
                let digest = alloy::primitives::keccak256(i.to_be_bytes());
                (digest, key.sign_hash_sync(&digest).unwrap().as_bytes().to_vec())
            })
            .collect();
        fn view(v: &[(B256, Vec<u8>)]) -> Vec<(B256, &[u8])> {
            v.iter().map(|(d, s)| (*d, s.as_slice())).collect()
        }
        assert!(chunk_passes(&public, &view(&items)));
        let mut flipped = items.clone();
        flipped[17].1[64] ^= 1; // the other parity: ecrecover gives another signer
        assert!(!chunk_passes(&public, &view(&flipped)));
        let mut other = items.clone();
        other[299].0 = B256::repeat_byte(1); // signed something else
        assert!(!chunk_passes(&public, &view(&other)));
        let stranger = PrivateKeySigner::random();
        assert!(!chunk_passes(stranger.credential().verifying_key().as_affine(), &view(&items)));
    }
}
