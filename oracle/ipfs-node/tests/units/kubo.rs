//! Kubo's RPC conventions: Go booleans, output options, `/ipfs/` paths,
//! single arguments (src/kubo.rs).

use cid::Cid;
use healthsense_ipfs_node::internals::parse_ipfs_path;

use super::params;

#[test]
fn booleans_follow_go() {
    let p = params(&[("a", "true"), ("b", "0"), ("c", "yes")]);
    assert!(p.bool("a", false).is_ok_and(|v| v));
    assert!(p.bool("b", true).is_ok_and(|v| !v));
    assert!(p.bool("missing", true).is_ok_and(|v| v));
    assert!(p.bool("c", true).is_err());
}

#[test]
fn output_options_follow_kubo() {
    let v0 = parse_ipfs_path("Qmf412jQZiuVUtdgnB36FXFX7xg5V6KEbSJ4dpQuhkLyfD").ok();
    let v1 = "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku";
    let v1 = parse_ipfs_path(v1).ok();
    let (Some(v0), Some(v1)) = (v0, v1) else {
        panic!("test CIDs do not parse")
    };
    let print =
        |pairs: &[(&str, &str)], cid: &Cid| params(pairs).output().map(|e| e.encode(cid)).ok();
    // Unknown options are ignored; the defaults print each CID natively.
    assert_eq!(
        print(&[("paths", "x"), ("stream", "true")], &v0),
        Some(v0.to_string())
    );
    assert_eq!(print(&[], &v1), Some(v1.to_string()));
    // Another base upgrades CIDv0 (Kubo's cidenc), unless told not to.
    let upgraded = Cid::new_v1(v0.codec(), *v0.hash()).to_string();
    assert_eq!(print(&[("cid-base", "base32")], &v0), Some(upgraded));
    assert_eq!(
        print(
            &[("cid-base", "base32"), ("upgrade-cidv0-in-output", "false")],
            &v0
        ),
        Some(v0.to_string())
    );
    assert!(print(&[("cid-base", "base36")], &v1).is_some_and(|t| t.starts_with('k')));
    assert!(print(&[("cid-base", "z")], &v1).is_some_and(|t| t.starts_with('z')));
    assert!(params(&[("cid-base", "nonsense")]).output().is_err());
    assert!(params(&[("encoding", "text")]).output().is_err());
}

#[test]
fn paths_are_cids_with_an_optional_ipfs_prefix() {
    let cid = "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku";
    assert!(parse_ipfs_path(cid).is_ok());
    assert!(parse_ipfs_path(&format!("/ipfs/{cid}")).is_ok());
    assert!(parse_ipfs_path(&format!("/ipfs/{cid}/a")).is_err());
    assert!(parse_ipfs_path("nonsense").is_err_and(|e| e.0.starts_with("invalid path")));
}

#[test]
fn single_arg_wants_exactly_one() {
    assert!(params(&[]).single_arg("ipfs-path").is_err());
    assert!(params(&[("arg", "a"), ("arg", "b")])
        .single_arg("ipfs-path")
        .is_err());
    assert!(params(&[("arg", "a")])
        .single_arg("ipfs-path")
        .is_ok_and(|a| a == "a"));
}
