//! Checking an archive against the chain: every reading's Merkle proof
//! against its anchored batch root and its signature against the device's
//! registered signer, every charge, the policy and the bill against the
//! contract, and the whole record against the on-chain record hash.

use std::collections::HashMap;

use alloy::primitives::{keccak256, Address, Signature, B256};
use alloy::providers::Provider;
use healthsense_abi::bindings::HealthSense::HealthSenseInstance;
use healthsense_abi::rules::reading::{self, reading_leaf};
use healthsense_abi::rules::status::DeviceStatus;
use healthsense_abi::rules::{eip712, merkle};
use rayon::prelude::*;
use serde::Serialize;

use super::fhir::{fields, ParsedBundle};

/// One problem found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// What: `reading 17`, `charge 2`, `bill`, `policy`, `record`.
    pub item: String,
    /// Why it does not match the chain.
    pub why: String,
}

/// The verdict on an archive.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    /// Patient id.
    pub patient: B256,
    /// Readings in the archive.
    pub readings: usize,
    /// Of which proven by an anchored root and signed by the device.
    pub readings_verified: usize,
    /// Anchored batches the readings belong to.
    pub batches: usize,
    /// Charges checked.
    pub charges: usize,
    /// Whether the bill matched.
    pub bill_verified: bool,
    /// Whether the record hash matched the on-chain one.
    pub record_hash_verified: bool,
    /// Everything that did not match.
    pub tampered: Vec<Finding>,
}

impl Report {
    /// True when nothing was found.
    pub fn verified(&self) -> bool {
        self.tampered.is_empty()
    }
}

/// Why verification could not run (as opposed to finding tampering).
#[derive(Debug, thiserror::Error)]
#[error("cannot verify against the chain: {0}")]
pub struct VerifyError(String);

fn rpc(e: impl std::fmt::Display) -> VerifyError {
    VerifyError(e.to_string())
}

/// What the chain cannot say about the readings themselves: each is in the
/// stay's window (the shared rule), appears once, and every charted vital
/// sign shows the value of the reading it names.
fn stay_findings(parsed: &ParsedBundle, admitted_at: u64, discharged_at: u64) -> Vec<Finding> {
    let window = reading::stay_window_ms(admitted_at, discharged_at);
    let mut out = Vec::new();
    let mut by_seq = HashMap::with_capacity(parsed.readings.len());
    for a in &parsed.readings {
        let item = format!("reading {}", a.reading.seq);
        if !window.contains(&a.reading.timestamp) {
            out.push(Finding { item: item.clone(), why: format!("stamped {} ms, outside the stay {window:?}", a.reading.timestamp) });
        }
        if by_seq.insert(a.reading.seq, &a.reading).is_some() {
            out.push(Finding { item, why: "appears twice in the series".into() });
        }
    }
    for c in &parsed.charted {
        let shown = by_seq.get(&c.seq).and_then(|r| fields(r).get(c.field).copied());
        if shown != Some(c.value) {
            out.push(Finding { item: c.item.clone(), why: format!("charts {} where reading {} holds {shown:?}", c.value, c.seq) });
        }
    }
    out
}

/// Each reading's problems: not anchored, another device's, values that
/// do not match the anchored root, or a signature that is not the device's.
///
/// Proofs are checked once per tree node: per batch, a node already proven
/// to lead to the anchored root ends the walk of every later proof that
/// reaches it with the same path above it (a walk that disagrees is checked
/// in full, so the findings are those of one full check per reading).
/// Signatures are checked on every core in weighted sums against the
/// device's key ([`super::sigs`]); a chunk whose sum fails is checked one
/// signature at a time with the hub's own check, which names each bad one.
fn reading_findings(
    parsed: &ParsedBundle,
    roots: &HashMap<B256, B256>,
    device: B256,
    domain: B256,
    signer: &crate::devices::Device,
) -> Vec<Finding> {
    let mut found: Vec<Option<Finding>> = vec![None; parsed.readings.len()];
    let mut by_batch: HashMap<B256, Vec<usize>> = HashMap::new();
    for (i, a) in parsed.readings.iter().enumerate() {
        let why = match roots.get(&a.batch_id) {
            None => Some(format!("batch {} is not anchored", a.batch_id)),
            Some(root) if root.is_zero() => Some(format!("batch {} is not anchored", a.batch_id)),
            _ if a.reading.deviceId != device => Some("taken by another device".into()),
            _ => {
                by_batch.entry(a.batch_id).or_default().push(i);
                None
            }
        };
        found[i] = why.map(|why| Finding { item: format!("reading {}", a.reading.seq), why });
    }
    let unproven: Vec<usize> = by_batch
        .par_iter()
        .flat_map_iter(|(batch, members)| unproven_in_batch(parsed, roots[batch], members))
        .collect();
    for i in unproven {
        let a = &parsed.readings[i];
        found[i] = Some(Finding { item: format!("reading {}", a.reading.seq), why: format!("values do not match the root anchored in batch {}", a.batch_seq) });
    }
    // Signatures of the readings with nothing else wrong.
    let todo: Vec<usize> = (0..found.len()).filter(|&i| found[i].is_none()).collect();
    let digests: Vec<(B256, &[u8])> = todo
        .par_iter()
        .map(|&i| (eip712::reading_digest(domain, &parsed.readings[i].reading), parsed.readings[i].signature.as_slice()))
        .collect();
    let single = |digest: &B256, sig: &[u8]| Signature::from_raw(sig).is_ok_and(|s| signer.check(digest, &s).is_ok());
    // The device's key, from the first signature that recovers to its signer.
    let key = digests.iter().find_map(|(digest, sig)| {
        let k = Signature::from_raw(sig).ok()?.recover_from_prehash(digest).ok()?;
        (Address::from_public_key(&k) == signer.signer).then(|| *k.as_affine())
    });
    let signed = match key {
        Some(key) => super::sigs::verify_all(&key, &digests, single),
        None => digests.par_iter().map(|(d, s)| single(d, *s)).collect(),
    };
    for (&i, ok) in todo.iter().zip(signed) {
        if !ok {
            found[i] = Some(Finding { item: format!("reading {}", parsed.readings[i].reading.seq), why: "signature is not the device's".into() });
        }
    }
    found.into_iter().flatten().collect()
}

/// The readings of one batch (`members`, indices into `parsed.readings`)
/// whose proof does not lead from their leaf to `root`.
fn unproven_in_batch(parsed: &ParsedBundle, root: B256, members: &[usize]) -> Vec<usize> {
    // Node -> the proof path above it, for nodes proven to reach the root.
    let mut proven: HashMap<B256, &[B256]> = HashMap::with_capacity(members.len() * 2);
    proven.insert(root, &[]);
    let mut bad = Vec::new();
    for &i in members {
        let a = &parsed.readings[i];
        let leaf = reading_leaf(&a.reading);
        let (mut node, mut walked) = (leaf, Vec::with_capacity(a.proof.len()));
        let ok = loop {
            if let Some(above) = proven.get(&node) {
                break *above == &a.proof[walked.len()..] || merkle::verify(&a.proof, root, leaf);
            }
            let Some(sibling) = a.proof.get(walked.len()) else { break false };
            walked.push(node);
            node = merkle::hash_pair(&node, sibling);
        };
        if ok {
            for (level, n) in walked.into_iter().enumerate() {
                proven.entry(n).or_insert(&a.proof[level..]);
            }
        } else {
            bad.push(i);
        }
    }
    bad
}

/// Verifies `bundle` (the decrypted, decompressed JSON) of `patient`
/// against the contract at `contract`. `record_hash` is `keccak256(bundle)`.
pub async fn verify<P: Provider>(
    provider: &P,
    contract: Address,
    patient: B256,
    bundle_bytes: &[u8],
    parsed: &ParsedBundle,
) -> Result<Report, VerifyError> {
    let h = HealthSenseInstance::new(contract, provider);
    let chain_id = provider.get_chain_id().await.map_err(rpc)?;
    let mut tampered = Vec::new();
    let mut bad = |item: String, why: String| tampered.push(Finding { item, why });
    for u in &parsed.unreadable {
        bad(u.item.clone(), u.why.clone());
    }

    let on_chain = h.getPatient(patient).call().await.map_err(rpc)?;
    if on_chain.admittedAt == 0 {
        return Err(VerifyError(format!("patient {patient} is unknown to the contract at {contract}")));
    }
    if parsed.patient != Some(patient) {
        bad("patient".into(), format!("the archive is of patient {:?}, not {patient}", parsed.patient));
    }
    if parsed.stay != Some((on_chain.admittedAt, on_chain.dischargedAt)) {
        bad("encounter".into(), format!("stay {:?} differs from the chain's ({}, {})", parsed.stay, on_chain.admittedAt, on_chain.dischargedAt));
    }

    let archive = h.getArchive(patient).call().await.map_err(rpc)?;
    let record_hash_verified = archive.recordHash == keccak256(bundle_bytes);
    if !record_hash_verified {
        bad("record".into(), format!("content hash differs from the on-chain record hash {}", archive.recordHash));
    }

    // Readings: one root lookup per batch, then proofs and signatures in parallel.
    let mut roots: HashMap<B256, B256> = HashMap::new();
    for a in &parsed.readings {
        if let std::collections::hash_map::Entry::Vacant(slot) = roots.entry(a.batch_id) {
            slot.insert(h.batchRoot(a.batch_id).call().await.map_err(rpc)?);
        }
    }
    let mut device = h.getDevice(on_chain.deviceId).call().await.map_err(rpc)?;
    // The device may be revoked by now; what counts is who signed.
    device.status = DeviceStatus::Active as u8;
    let signer = crate::devices::Device::from_info(&device);
    let domain = eip712::domain_separator(chain_id, contract);
    let problems = reading_findings(parsed, &roots, on_chain.deviceId, domain, &signer);
    let readings_verified = parsed.readings.len() - problems.len();
    tampered.extend(problems);
    tampered.extend(stay_findings(parsed, on_chain.admittedAt, on_chain.dischargedAt));
    let mut bad = |item: String, why: String| tampered.push(Finding { item, why });

    if parsed.charges.len() != on_chain.chargeCount as usize {
        bad("charges".into(), format!("{} in the archive, {} on chain", parsed.charges.len(), on_chain.chargeCount));
    }
    for c in &parsed.charges {
        let item = format!("charge {}", c.index);
        match h.getCharge(patient, c.index).call().await {
            Ok(chain) if chain == c.charge && c.display_consistent => {}
            Ok(chain) if chain == c.charge => bad(item, "displayed price differs from the exact one".into()),
            Ok(chain) => bad(item, format!("differs from the chain's {chain:?}")),
            Err(_) => bad(item, "no such charge on chain".into()),
        }
    }
    let policy = h.getPolicy(patient).call().await.map_err(rpc)?;
    let chain_policy = (!policy.insurer.is_zero()).then_some(policy);
    if parsed.policy != chain_policy {
        bad("policy".into(), format!("differs from the chain's {chain_policy:?}"));
    }
    let bill = h.getBill(patient).call().await.map_err(rpc)?;
    let bill_verified = match &parsed.bill {
        Some((b, true)) if *b == bill => true,
        Some((b, false)) if *b == bill => {
            bad("bill".into(), "displayed amounts differ from the exact ones".into());
            false
        }
        Some((b, _)) => {
            bad("bill".into(), format!("total {} covered {} due {} differ from the chain's {} {} {}", b.total, b.covered, b.due, bill.total, bill.covered, bill.due));
            false
        }
        None => {
            bad("bill".into(), "missing".into());
            false
        }
    };
    Ok(Report {
        patient,
        readings: parsed.readings.len(),
        readings_verified,
        batches: roots.len(),
        charges: parsed.charges.len(),
        bill_verified,
        record_hash_verified,
        tampered,
    })
}
