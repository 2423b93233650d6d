//! An independent UnixFS file encoder, written from the specs rather than
//! from rust-unixfs, so the node's CIDs are checked by a second implementation:
//!
//! - dag-pb: `PBNode { Links (field 2) before Data (field 1) }`,
//!   `PBLink { Hash = 1, Name = 2, Tsize = 3 }`; Kubo writes the empty Name.
//! - UnixFS `Data { Type = 1 (File = 2), Data = 2, filesize = 3, blocksizes = 4 }`.
//! - CIDv0 = sha2-256 multihash in base58btc; CIDv1 = `0x01, codec, multihash`
//!   in multibase base32 (`b`, lower case, no padding).
//! - Kubo's balanced layout (boxo `importer/balanced`): the first leaf is the
//!   root; while data remains, the root becomes the first child of a new root
//!   one level deeper, which is then filled depth-first with up to `max_links`
//!   children, each a subtree of the depth below.

use sha2::{Digest, Sha256};

const DAG_PB: u64 = 0x70;
const RAW: u64 = 0x55;

/// Import parameters, as Kubo's `ipfs add` flags.
#[derive(Debug, Clone, Copy)]
pub struct Layout {
    pub chunk_size: usize,
    pub max_links: usize,
    pub cid_version: u8,
    pub raw_leaves: bool,
}

impl Layout {
    /// `--cid-version=1` (raw leaves) with the given chunk size and 174 links.
    pub fn cid_v1(chunk_size: usize) -> Layout {
        Layout {
            chunk_size,
            max_links: 174,
            cid_version: 1,
            raw_leaves: true,
        }
    }
}

/// A finished node: its CID bytes, cumulative DAG size (`Tsize`) and file bytes.
struct Node {
    cid: Vec<u8>,
    tsize: u64,
    filesize: u64,
}

/// The CID string Kubo gives `data` under `layout`.
pub fn file_cid(data: &[u8], layout: Layout) -> String {
    let mut chunks = data.chunks(layout.chunk_size).peekable();
    let mut root = match chunks.next() {
        Some(first) => leaf(first, layout),
        None => leaf(&[], layout),
    };
    let mut depth = 1;
    while chunks.peek().is_some() {
        root = fill(vec![root], depth, &mut chunks, layout);
        depth += 1;
    }
    cid_string(&root.cid, layout.cid_version)
}

fn fill<'a>(
    mut children: Vec<Node>,
    depth: usize,
    chunks: &mut std::iter::Peekable<impl Iterator<Item = &'a [u8]>>,
    layout: Layout,
) -> Node {
    while children.len() < layout.max_links && chunks.peek().is_some() {
        let child = if depth == 1 {
            match chunks.next() {
                Some(chunk) => leaf(chunk, layout),
                None => break,
            }
        } else {
            fill(Vec::new(), depth - 1, chunks, layout)
        };
        children.push(child);
    }
    branch(&children, layout)
}

fn leaf(chunk: &[u8], layout: Layout) -> Node {
    let filesize = chunk.len() as u64;
    if layout.raw_leaves {
        return Node {
            cid: cid_bytes(1, RAW, chunk),
            tsize: filesize,
            filesize,
        };
    }
    let block = pb_node(&[], &unixfs_file(Some(chunk), filesize, &[]));
    Node {
        cid: cid_bytes(layout.cid_version, DAG_PB, &block),
        tsize: block.len() as u64,
        filesize,
    }
}

fn branch(children: &[Node], layout: Layout) -> Node {
    let filesize = children.iter().map(|c| c.filesize).sum();
    let sizes: Vec<u64> = children.iter().map(|c| c.filesize).collect();
    let links: Vec<Vec<u8>> = children.iter().map(|c| pb_link(&c.cid, c.tsize)).collect();
    let block = pb_node(&links, &unixfs_file(None, filesize, &sizes));
    let tsize = block.len() as u64 + children.iter().map(|c| c.tsize).sum::<u64>();
    Node {
        cid: cid_bytes(layout.cid_version, DAG_PB, &block),
        tsize,
        filesize,
    }
}

fn unixfs_file(data: Option<&[u8]>, filesize: u64, blocksizes: &[u64]) -> Vec<u8> {
    let mut out = Vec::new();
    varint_field(&mut out, 1, 2); // Type = File
    if let Some(data) = data.filter(|d| !d.is_empty()) {
        bytes_field(&mut out, 2, data);
    }
    varint_field(&mut out, 3, filesize);
    for size in blocksizes {
        varint_field(&mut out, 4, *size);
    }
    out
}

fn pb_link(cid: &[u8], tsize: u64) -> Vec<u8> {
    let mut out = Vec::new();
    bytes_field(&mut out, 1, cid);
    bytes_field(&mut out, 2, b"");
    varint_field(&mut out, 3, tsize);
    out
}

fn pb_node(links: &[Vec<u8>], data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for link in links {
        bytes_field(&mut out, 2, link);
    }
    bytes_field(&mut out, 1, data);
    out
}

fn varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

fn varint_field(out: &mut Vec<u8>, field: u64, value: u64) {
    varint(out, field << 3);
    varint(out, value);
}

fn bytes_field(out: &mut Vec<u8>, field: u64, bytes: &[u8]) {
    varint(out, (field << 3) | 2);
    varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

fn cid_bytes(version: u8, codec: u64, block: &[u8]) -> Vec<u8> {
    let mut multihash = vec![0x12, 0x20];
    multihash.extend_from_slice(&Sha256::digest(block));
    if version == 0 {
        return multihash;
    }
    let mut out = vec![0x01];
    varint(&mut out, codec);
    out.extend_from_slice(&multihash);
    out
}

fn cid_string(cid: &[u8], version: u8) -> String {
    if version == 0 {
        base58btc(cid)
    } else {
        format!("b{}", base32_lower(cid))
    }
}

fn base32_lower(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";
    let mut out = String::new();
    let (mut buffer, mut bits) = (0u32, 0);
    for byte in bytes {
        buffer = (buffer << 8) | u32::from(*byte);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(ALPHABET[((buffer >> bits) & 31) as usize] as char);
        }
    }
    if bits > 0 {
        out.push(ALPHABET[((buffer << (5 - bits)) & 31) as usize] as char);
    }
    out
}

fn base58btc(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 58] = b"123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz";
    let mut digits: Vec<u8> = Vec::new(); // base-58 digits, least significant first
    for byte in bytes {
        let mut carry = u32::from(*byte);
        for digit in digits.iter_mut() {
            carry += u32::from(*digit) << 8;
            *digit = (carry % 58) as u8;
            carry /= 58;
        }
        while carry > 0 {
            digits.push((carry % 58) as u8);
            carry /= 58;
        }
    }
    let zeros = bytes.iter().take_while(|b| **b == 0).count();
    std::iter::repeat_n('1', zeros)
        .chain(digits.iter().rev().map(|d| ALPHABET[*d as usize] as char))
        .collect()
}
