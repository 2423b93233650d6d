//! How `/api/v0/add` reads Kubo's import options (src/add.rs).

use cid::Version;
use healthsense_ipfs_node::internals::{ImportSettings, KuboResult};

use super::params;

fn settings(pairs: &[(&str, &str)]) -> KuboResult<ImportSettings> {
    ImportSettings::from_params(&params(pairs))
}

#[test]
fn defaults_are_kubos() {
    let s = settings(&[]).ok();
    assert_eq!(
        s,
        Some(ImportSettings {
            cid_version: Version::V0,
            raw_leaves: false,
            chunk_size: 262_144,
            pin: true
        })
    );
    let v1 = settings(&[("cid-version", "1")]).ok();
    assert!(v1.is_some_and(|s| s.raw_leaves && s.cid_version == Version::V1));
}

#[test]
fn what_the_client_sends_is_accepted() {
    let s = settings(&[
        ("cid-version", "1"),
        ("raw-leaves", "true"),
        ("hash", "sha2-256"),
        ("chunker", "size-262144"),
        ("pin", "true"),
    ]);
    assert!(s.is_ok_and(|s| s.chunk_size == 262_144 && s.pin));
}

#[test]
fn what_would_change_the_cid_unnoticed_is_refused() {
    for bad in [
        ("cid-version", "2"),
        ("hash", "blake2b-256"),
        ("chunker", "rabin"),
        ("chunker", "buzhash"),
        ("chunker", "size-0"),
        ("chunker", "size-4194304"),
        ("trickle", "true"),
        ("inline", "true"),
        ("wrap-with-directory", "true"),
        ("nocopy", "true"),
        ("mtime", "1700000000"),
        ("preserve-mode", "true"),
        ("max-file-links", "1024"),
        ("pin-name", "archive"),
    ] {
        assert!(settings(&[bad]).is_err(), "{bad:?}");
    }
    // Off, at this node's value, or not applicable to one file: accepted.
    assert!(settings(&[
        ("trickle", "false"),
        ("only-hash", "false"),
        ("max-file-links", "174"),
        ("max-directory-links", "5"),
        ("fast-provide-root", "true"),
        ("stream-channels", "true"),
        ("no-such-option", "1"),
    ])
    .is_ok());
}
