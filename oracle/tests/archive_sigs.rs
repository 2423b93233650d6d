//! `archive verify`'s batched signature check
//! (`healthsense_oracle::archive::sigs`) against one check per signature:
//! a chunk of good signatures passes by its weighted sum alone, and any bad
//! signature (another parity, another message, another key, malformed)
//! sends its chunk to the single checks, which find exactly it.

use alloy::primitives::{keccak256, B256};
use alloy::signers::local::PrivateKeySigner;
use alloy::signers::SignerSync;
use healthsense_oracle::archive::sigs::verify_all;

fn signed(key: &PrivateKeySigner, n: u64) -> Vec<(B256, Vec<u8>)> {
    (0..n)
        .map(|i| {
            let digest = keccak256(i.to_be_bytes());
            (digest, key.sign_hash_sync(&digest).unwrap().as_bytes().to_vec())
        })
        .collect()
}

fn check(key: &PrivateKeySigner, items: &[(B256, Vec<u8>)], single: impl Fn(&B256, &[u8]) -> bool + Sync) -> Vec<bool> {
    let view: Vec<(B256, &[u8])> = items.iter().map(|(d, s)| (*d, s.as_slice())).collect();
    verify_all(key.credential().verifying_key().as_affine(), &view, single)
}

/// The reference: recovery to the key's address, as ecrecover does it.
fn recovers_to(key: &PrivateKeySigner) -> impl Fn(&B256, &[u8]) -> bool + Sync + '_ {
    move |d, s| alloy::primitives::Signature::from_raw(s).ok().and_then(|s| s.recover_address_from_prehash(d).ok()) == Some(key.address())
}

#[test]
fn weighted_sums_pass_good_signatures_and_the_single_checks_name_each_bad_one() {
    let key = PrivateKeySigner::random();
    // More than one chunk (2,048), the last one partial.
    let good = signed(&key, 5_000);
    // Good chunks never reach the single check.
    assert!(check(&key, &good, |_, _| false).into_iter().all(|ok| ok));

    let mut bad = good.clone();
    bad[17].1[64] ^= 1; // the other parity: ecrecover gives another signer
    bad[2_100].0 = B256::repeat_byte(1); // signed something else
    bad[4_999].1[40] ^= 0x80; // s altered
    bad[3_000].1.truncate(64); // malformed
    let stranger = PrivateKeySigner::random();
    bad[3_500] = signed(&stranger, 3_501).pop().unwrap(); // another key's
    let want: Vec<bool> = (0..5_000).map(|i| ![17, 2_100, 3_000, 3_500, 4_999].contains(&i)).collect();
    assert_eq!(check(&key, &bad, recovers_to(&key)), want, "exactly the bad ones, by the single check");
    // Without the single check a chunk holding a bad one fails whole, the
    // others pass: the sums themselves caught every kind.
    assert!(check(&key, &bad, |_, _| false).into_iter().all(|ok| !ok), "every chunk holds a bad one");
    let mut one = good.clone();
    one[4_500].1[64] ^= 1;
    let sums = check(&key, &one, |_, _| false);
    assert!(sums[..4_096].iter().all(|ok| *ok) && sums[4_096..].iter().all(|ok| !ok));
}
