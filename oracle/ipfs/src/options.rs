//! The one definition of how HealthSense imports bytes into IPFS.
//!
//! The CID of an archive is written on chain, so it must not depend on which
//! node imported it: the embedded node and a production Kubo (or an IPFS
//! Cluster proxy in front of Kubo) must turn the same bytes into the same CID.
//! Everything that decides the CID is listed here and sent explicitly with
//! every add, rather than relying on a node's configured defaults.

/// UnixFS import options of an `add`: the values that decide the resulting CID.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AddOptions {
    /// CID version of the DAG's nodes (Kubo `--cid-version`).
    pub cid_version: u32,
    /// Store leaves as raw blocks (codec `raw`, 0x55) instead of dag-pb UnixFS
    /// nodes (Kubo `--raw-leaves`; Kubo turns it on by default for CIDv1).
    pub raw_leaves: bool,
    /// Multihash function (Kubo `--hash`).
    pub hash: &'static str,
    /// Chunker (Kubo `--chunker`): fixed-size chunks of [`AddOptions::chunk_size`] bytes.
    pub chunker: &'static str,
    /// Fixed chunk size in bytes, the number in [`AddOptions::chunker`].
    pub chunk_size: usize,
    /// Maximum links per node of the balanced DAG. This is not an RPC option
    /// the client can send (ipfs-api 0.5 has no `max-file-links`): it is
    /// Kubo's default (`Import.UnixFSFileMaxLinks`), which a production Kubo
    /// must keep, and the embedded node's fixed value.
    pub max_links: usize,
    /// Pin the root recursively as part of the add (Kubo `--pin`).
    pub pin: bool,
}

/// The options of every [`crate::Ipfs::add`]: CIDv1, raw leaves, sha2-256,
/// 256 KiB fixed-size chunks, balanced DAG of at most 174 links per node,
/// pinned. The same bytes give the same CID as
/// `ipfs add --cid-version=1 --raw-leaves=true --hash=sha2-256 --chunker=size-262144 --pin=true`
/// on a Kubo with default import settings.
pub const ADD_OPTIONS: AddOptions = AddOptions {
    cid_version: 1,
    raw_leaves: true,
    hash: "sha2-256",
    chunker: "size-262144",
    chunk_size: 262_144,
    max_links: 174,
    pin: true,
};

impl AddOptions {
    /// The equivalent `ipfs add` flags, for docs and for reproducing a CID by hand.
    pub fn kubo_flags(&self) -> String {
        format!(
            "--cid-version={} --raw-leaves={} --hash={} --chunker={} --pin={}",
            self.cid_version, self.raw_leaves, self.hash, self.chunker, self.pin
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunker_names_the_chunk_size() {
        assert_eq!(
            ADD_OPTIONS.chunker,
            format!("size-{}", ADD_OPTIONS.chunk_size)
        );
    }

    #[test]
    fn kubo_flags_spell_out_every_cid_option() {
        assert_eq!(
            ADD_OPTIONS.kubo_flags(),
            "--cid-version=1 --raw-leaves=true --hash=sha2-256 --chunker=size-262144 --pin=true"
        );
    }
}
