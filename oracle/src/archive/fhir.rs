//! The archived record of one stay as a FHIR R4 (4.0.1) `Bundle` (type
//! `collection`), in two layers (`docs/ARCHIVE.md`):
//!
//! - **the chart**, what an EHR imports: the Patient (pseudonymous id only),
//!   the Encounter (admission and discharge in `period`), the hospital and
//!   insurer Organizations, the bedside Device, the vital signs as the HL7
//!   vital-signs profiles define them (one Observation per vital, grouped
//!   under a 85353-1 panel by `hasMember`) at a clinical interval and at
//!   every change of the NEWS2 alert level, a ChargeItem per charge, the
//!   Coverage, a Claim and, when an insurer set a policy, the
//!   ExplanationOfBenefit;
//! - **the full series**, what `archive verify` checks: every reading of the
//!   stay with its device signature, batch and Merkle proof, as fixed-width
//!   binary rows in `Binary` resources ([`SERIES_TYPE`], layout in
//!   `docs/ARCHIVE.md`).
//!
//! Amounts are also carried exactly, in minor currency units, in HealthSense
//! extensions, because FHIR `Money` is a decimal. No element holds an empty
//! string: a value that is absent is left out.
//!
//! [`write_bundle`] streams (a 7-day stay at 1 Hz is ~600,000 readings) and
//! [`parse_bundle`] reads back exactly what verification needs.

use std::collections::{BTreeSet, HashMap};
use std::io::Write;

use alloy::primitives::{Address, B256, U256};
use base64::Engine as _;
use chrono::{DateTime, SecondsFormat, Utc};
use healthsense_abi::bindings::IHealthSense::{BillInfo, BillingRulesInfo, ChargeInfo, PolicyInfo};
use healthsense_abi::rules::status::Category;
use healthsense_abi::rules::{billing, ids};
use healthsense_abi::Reading;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::news2::{self, Risk};

/// Extension URLs, code systems and identifier systems of this product.
pub mod urls {
    /// Exact amounts and billing facts in minor currency units.
    pub const EXACT: &str = "https://healthsense.dev/fhir/StructureDefinition/exact-amount";
    /// ACVPU consciousness codes (1 A ... 5 U, as the device protocol).
    pub const ACVPU: &str = "https://healthsense.dev/fhir/CodeSystem/acvpu";
    /// Charge categories of the contract (`bed`, `consultation`, ...).
    pub const CHARGE_CATEGORY: &str = "https://healthsense.dev/fhir/CodeSystem/charge-category";
    /// Charge codes as doctors enter them (`LAB-CBC`).
    pub const CHARGE_CODE: &str = "https://healthsense.dev/fhir/CodeSystem/charge-code";
    /// Adjudication amounts FHIR has no code for (the patient's share).
    pub const ADJUDICATION: &str = "https://healthsense.dev/fhir/CodeSystem/adjudication";
    /// On-chain identities (addresses, ids).
    pub const CHAIN_ID: &str = "urn:healthsense:id";
    /// The deployment (`eip155:{chain}:{contract}`): the hospital's.
    pub const DEPLOYMENT: &str = "urn:healthsense:deployment";
    /// Device serials.
    pub const SERIAL: &str = "urn:healthsense:serial";
    /// The device reading a charted Observation shows (its sequence number).
    pub const READING: &str = "urn:healthsense:reading";
    /// LOINC.
    pub const LOINC: &str = "http://loinc.org";
    /// UCUM.
    pub const UCUM: &str = "http://unitsofmeasure.org";
    /// The HL7 FHIR R4 core profiles (`vitalspanel`, `heartrate`, ...).
    pub const PROFILE: &str = "http://hl7.org/fhir/StructureDefinition/";
}

/// `Binary.contentType` of the full series (rows as in `docs/ARCHIVE.md`).
pub const SERIES_TYPE: &str = "application/vnd.healthsense.readings.v1";
/// Readings per `Binary` of the full series (about 2 MB of rows).
pub const SERIES_CHUNK: usize = 4_096;
/// Default clinical charting interval (`archive.chart_interval_s`), ms.
pub const DEFAULT_CHART_MS: u64 = 15 * 60_000;

/// A charted vital: the Observation's id prefix, HL7 profile, LOINC codes,
/// UCUM unit and the scale of the device's integer.
struct Vital {
    id: &'static str,
    profile: &'static str,
    codes: &'static [(&'static str, &'static str)],
    unit: &'static str,
    ucum: &'static str,
    scale: u32,
    /// Index in [`fields`].
    field: usize,
}

const HEART_RATE: Vital =
    Vital { id: "hr", profile: "heartrate", codes: &[("8867-4", "Heart rate")], unit: "beats/minute", ucum: "/min", scale: 1, field: 0 };
const RESP_RATE: Vital = Vital {
    id: "rr",
    profile: "resprate",
    codes: &[("9279-1", "Respiratory rate")],
    unit: "breaths/minute",
    ucum: "/min",
    scale: 1,
    field: 1,
};
const SPO2: Vital = Vital {
    id: "spo2",
    profile: "oxygensat",
    codes: &[("2708-6", "Oxygen saturation in Arterial blood"), ("59408-5", "Oxygen saturation in Arterial blood by Pulse oximetry")],
    unit: "%",
    ucum: "%",
    scale: 1,
    field: 2,
};
const SYSTOLIC: Vital =
    Vital { id: "bp", profile: "bp", codes: &[("8480-6", "Systolic blood pressure")], unit: "mmHg", ucum: "mm[Hg]", scale: 1, field: 3 };
const DIASTOLIC: Vital =
    Vital { id: "bp", profile: "bp", codes: &[("8462-4", "Diastolic blood pressure")], unit: "mmHg", ucum: "mm[Hg]", scale: 1, field: 4 };
const TEMPERATURE: Vital =
    Vital { id: "temp", profile: "bodytemp", codes: &[("8310-5", "Body temperature")], unit: "Cel", ucum: "Cel", scale: 100, field: 5 };
const SIMPLE_VITALS: [&Vital; 4] = [&HEART_RATE, &RESP_RATE, &SPO2, &TEMPERATURE];
const BP_CODE: (&str, &str) = ("85354-9", "Blood pressure panel with all children optional");
const PANEL_CODE: (&str, &str) = ("85353-1", "Vital signs, weight, height, head circumference, oxygen saturation and BMI panel");
const CONSCIOUSNESS_CODE: (&str, &str) = ("80288-4", "Level of consciousness");
const ACVPU: [&str; 5] = ["A", "C", "V", "P", "U"];
/// Index of consciousness in [`fields`].
const CONSCIOUSNESS_FIELD: usize = 6;

/// The reading's values in a fixed order: heart rate, respiratory rate,
/// SpO2, systolic, diastolic, temperature (0.01 °C), consciousness (ACVPU 1-5).
pub fn fields(r: &Reading) -> [u16; 7] {
    [r.heartRate, r.respRate, r.spo2, r.systolic, r.diastolic, r.temperature, u16::from(r.consciousness)]
}

/// Everything known about a stay besides its readings.
#[derive(Debug, Clone)]
pub struct Stay {
    /// Chain id of the deployment.
    pub chain_id: u64,
    /// Contract address.
    pub contract: Address,
    /// The hub that made the archive.
    pub hub: Address,
    /// Pseudonymous patient id.
    pub patient: B256,
    /// Ward id.
    pub ward: B256,
    /// Bedside device id.
    pub device: B256,
    /// Its serial, when the hub has heard the device (informational).
    pub serial: Option<String>,
    /// Its registered signer.
    pub signer: Address,
    /// Admission, seconds.
    pub admitted_at: u64,
    /// Discharge, seconds.
    pub discharged_at: u64,
    /// Discharge disposition code (docs/PROTOCOL.md), 0 when a doctor discharged.
    pub discharge_code: u16,
    /// Charges, in on-chain order.
    pub charges: Vec<ChargeInfo>,
    /// The policy, if an insurer set one.
    pub policy: Option<PolicyInfo>,
    /// The bill.
    pub bill: BillInfo,
    /// The billing rules in force.
    pub rules: BillingRulesInfo,
    /// ISO 4217 code of the minor units (display only).
    pub currency: String,
    /// The hospital's name (`archive.hospital`), the claim's provider.
    pub hospital: String,
    /// Clinical charting interval, ms (0: chart every reading).
    pub chart_every_ms: u64,
    /// When the archive was made, ms.
    pub created_ms: u64,
}

/// A reading with its place on chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchivedReading {
    /// The reading.
    pub reading: Reading,
    /// The device signature (65 bytes).
    pub signature: Vec<u8>,
    /// The hub's batch sequence number.
    pub batch_seq: u64,
    /// `batchIdOf(hub, batch_seq)`.
    pub batch_id: B256,
    /// Merkle proof of the reading's leaf.
    pub proof: Vec<B256>,
}

/// FHIR discharge-disposition code of a device discharge code.
pub fn disposition(code: u16) -> (&'static str, &'static str) {
    match code {
        1 => ("home", "Home"),
        2 => ("other-hcf", "Other healthcare facility"),
        3 => ("aadvice", "Left against advice"),
        4 => ("exp", "Expired"),
        _ => ("oth", "Other"),
    }
}

fn iso_ms(ms: u64) -> String {
    DateTime::<Utc>::from_timestamp_millis(ms as i64).map_or_else(String::new, |t| t.to_rfc3339_opts(SecondsFormat::Millis, true))
}

fn iso_s(s: u64) -> String {
    DateTime::<Utc>::from_timestamp(s as i64, 0).map_or_else(String::new, |t| t.to_rfc3339_opts(SecondsFormat::Secs, true))
}

fn major(minor: U256) -> f64 {
    minor.to_string().parse::<f64>().unwrap_or(f64::MAX) / 100.0
}

fn money(minor: U256, currency: &str) -> Value {
    // Display only: exact minor units travel in the `exact-amount` extension.
    json!({ "value": major(minor), "currency": currency })
}

/// The `exact-amount` extension; pairs whose value is empty are left out.
fn exact(pairs: &[(&str, String)]) -> Value {
    let ext: Vec<_> =
        pairs.iter().filter(|(_, v)| !v.is_empty()).map(|(k, v)| json!({ "url": k, "valueString": v })).collect();
    json!([{ "url": urls::EXACT, "extension": ext }])
}

fn coding(system: &str, code: &str, display: &str) -> Value {
    match display.is_empty() {
        true => json!({ "system": system, "code": code }),
        false => json!({ "system": system, "code": code, "display": display }),
    }
}

fn concept(system: &str, code: &str, display: &str) -> Value {
    json!({ "coding": [coding(system, code, display)] })
}

fn reference(r: &str) -> Value {
    json!({ "reference": r })
}

/// A charge code as a FHIR concept: its text when printable, else its bytes.
fn charge_code(code: &B256) -> Value {
    match ids::charge_code_text(code).filter(|t| !t.is_empty() && !t.contains(char::is_whitespace)) {
        Some(text) => json!({ "coding": [coding(urls::CHARGE_CODE, text, "")], "text": text }),
        None => json!({ "coding": [coding(urls::CHAIN_ID, &code.to_string(), "")] }),
    }
}

fn category_name(code: u8) -> String {
    Category::from_code(code).map_or_else(|| code.to_string(), |c| c.name().to_string())
}

#[derive(Serialize, Deserialize, Clone, Debug, Default)]
#[serde(rename_all = "camelCase")]
struct Ext {
    url: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    value_string: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    extension: Vec<Ext>,
}

struct Refs {
    patient: String,
    encounter: String,
    device: String,
}

/// Which readings are charted: the first of each clinical interval since
/// admission, and every reading whose NEWS2 alert level differs from the
/// reading before it.
struct Charting {
    every_ms: u64,
    from_ms: u64,
    slots: BTreeSet<u64>,
    level: Risk,
}

impl Charting {
    fn charts(&mut self, r: &Reading) -> bool {
        let level = crate::alerts::alert_level(&news2::score(r));
        let changed = std::mem::replace(&mut self.level, level) != level;
        let new_slot = match self.every_ms {
            0 => true,
            every => self.slots.insert(r.timestamp.saturating_sub(self.from_ms) / every),
        };
        new_slot || changed
    }
}

fn quantity(v: &Vital, value: u16) -> Value {
    let value = match v.scale {
        1 => json!(value),
        s => json!(f64::from(value) / f64::from(s)),
    };
    json!({ "value": value, "unit": v.unit, "system": urls::UCUM, "code": v.ucum })
}

fn codes(list: &[(&str, &str)]) -> Value {
    json!({ "coding": list.iter().map(|(c, d)| coding(urls::LOINC, c, d)).collect::<Vec<_>>() })
}

/// The charted Observations of one reading: the vital-signs panel first,
/// then its members.
fn charted(refs: &Refs, r: &Reading) -> Vec<Value> {
    let seq = r.seq;
    let when = iso_ms(r.timestamp);
    let base = |id: String, profile: Option<&str>, code: Value| {
        let mut o = json!({
            "resourceType": "Observation", "id": id,
            "identifier": [{ "system": urls::READING, "value": seq.to_string() }],
            "status": "final",
            "category": [concept("http://terminology.hl7.org/CodeSystem/observation-category", "vital-signs", "Vital Signs")],
            "code": code,
            "subject": reference(&refs.patient), "encounter": reference(&refs.encounter),
            "effectiveDateTime": when, "device": reference(&refs.device),
        });
        if let Some(p) = profile {
            o["meta"] = json!({ "profile": [format!("{}{p}", urls::PROFILE)] });
        }
        o
    };
    let mut members = Vec::new();
    for v in SIMPLE_VITALS {
        let value = fields(r)[v.field];
        if value == 0 {
            continue; // not measured
        }
        let mut o = base(format!("{}-{seq}", v.id), Some(v.profile), codes(v.codes));
        o["valueQuantity"] = quantity(v, value);
        members.push(o);
    }
    if r.systolic > 0 || r.diastolic > 0 {
        let mut o = base(format!("bp-{seq}"), Some(SYSTOLIC.profile), codes(&[BP_CODE]));
        let component = |v: &Vital, value: u16| match value {
            0 => json!({ "code": codes(v.codes),
                "dataAbsentReason": concept("http://terminology.hl7.org/CodeSystem/data-absent-reason", "not-performed", "Not Performed") }),
            _ => json!({ "code": codes(v.codes), "valueQuantity": quantity(v, value) }),
        };
        o["component"] = json!([component(&SYSTOLIC, r.systolic), component(&DIASTOLIC, r.diastolic)]);
        members.push(o);
    }
    if let Some(code) = ACVPU.get(usize::from(r.consciousness).wrapping_sub(1)) {
        // No HL7 vital-signs profile covers consciousness: a plain Observation.
        let mut o = base(format!("avpu-{seq}"), None, codes(&[CONSCIOUSNESS_CODE]));
        o["valueCodeableConcept"] = concept(urls::ACVPU, code, "");
        members.push(o);
    }
    if members.is_empty() {
        return members;
    }
    let mut panel = base(format!("vitals-{seq}"), Some("vitalspanel"), codes(&[PANEL_CODE]));
    panel["hasMember"] =
        members.iter().map(|m| reference(&format!("Observation/{}", m["id"].as_str().unwrap_or_default()))).collect();
    std::iter::once(panel).chain(members).collect()
}

/// Bytes of a series row before its proof: `seq`, `timestamp`, six vitals,
/// consciousness, batch sequence, proof length, a zero; the batch id and a
/// zero; the signature and a zero. Every field that repeats across rows
/// starts at a multiple of 3 bytes, so its base64 text repeats too and the
/// bundle's compression finds it.
const ROW_HEAD: usize = 39 + 33 + 66;
/// Bytes per proof hash (32 and a zero).
const ROW_HASH: usize = 33;

fn write_row(out: &mut Vec<u8>, a: &ArchivedReading) -> std::io::Result<()> {
    let bad = |why: String| std::io::Error::new(std::io::ErrorKind::InvalidData, why);
    let sig: &[u8; 65] =
        a.signature.as_slice().try_into().map_err(|_| bad(format!("reading {} has a {}-byte signature", a.reading.seq, a.signature.len())))?;
    let n = u8::try_from(a.proof.len()).map_err(|_| bad(format!("reading {} has a proof of {} hashes", a.reading.seq, a.proof.len())))?;
    let r = &a.reading;
    out.extend_from_slice(&r.seq.to_be_bytes());
    out.extend_from_slice(&r.timestamp.to_be_bytes());
    for v in [r.heartRate, r.respRate, r.spo2, r.systolic, r.diastolic, r.temperature] {
        out.extend_from_slice(&v.to_be_bytes());
    }
    out.push(r.consciousness);
    out.extend_from_slice(&a.batch_seq.to_be_bytes());
    out.extend_from_slice(&[n, 0]);
    out.extend_from_slice(a.batch_id.as_slice());
    out.push(0);
    out.extend_from_slice(sig);
    out.push(0);
    for h in &a.proof {
        out.extend_from_slice(h.as_slice());
        out.push(0);
    }
    Ok(())
}

fn read_rows(bytes: &[u8], device: B256) -> Result<Vec<ArchivedReading>, String> {
    let be64 = |b: &[u8]| u64::from_be_bytes(b.try_into().unwrap_or([0; 8]));
    let be16 = |b: &[u8]| u16::from_be_bytes(b.try_into().unwrap_or([0; 2]));
    let mut out = Vec::with_capacity(bytes.len() / (ROW_HEAD + 11 * ROW_HASH));
    let mut rest = bytes;
    while !rest.is_empty() {
        if rest.len() < ROW_HEAD {
            return Err(format!("row {} is cut short", out.len()));
        }
        let n = usize::from(rest[37]);
        let len = ROW_HEAD + n * ROW_HASH;
        if rest.len() < len {
            return Err(format!("row {} is cut short", out.len()));
        }
        let (row, tail) = rest.split_at(len);
        rest = tail;
        let pads = [38, 71, 137].into_iter().chain((0..n).map(|i| ROW_HEAD + i * ROW_HASH + 32));
        if pads.into_iter().any(|i| row[i] != 0) {
            return Err(format!("row {} is not in the v1 layout", out.len()));
        }
        let v = |i: usize| be16(&row[16 + 2 * i..18 + 2 * i]);
        out.push(ArchivedReading {
            reading: Reading {
                deviceId: device,
                seq: be64(&row[0..8]),
                timestamp: be64(&row[8..16]),
                heartRate: v(0),
                respRate: v(1),
                spo2: v(2),
                systolic: v(3),
                diastolic: v(4),
                temperature: v(5),
                consciousness: row[28],
            },
            batch_seq: be64(&row[29..37]),
            batch_id: B256::from_slice(&row[39..71]),
            signature: row[72..137].to_vec(),
            proof: (0..n).map(|i| B256::from_slice(&row[ROW_HEAD + i * ROW_HASH..ROW_HEAD + i * ROW_HASH + 32])).collect(),
        });
    }
    Ok(out)
}

/// Writes one `Binary` of the full series.
fn write_series<W: Write>(w: &mut W, index: usize, patient_ref: &str, rows: &[u8]) -> std::io::Result<()> {
    let head = json!({ "resourceType": "Binary", "id": format!("readings-{index}"), "contentType": SERIES_TYPE,
        "securityContext": reference(patient_ref) });
    let head = serde_json::to_string(&head)?;
    w.write_all(b",{\"resource\":")?;
    w.write_all(&head.as_bytes()[..head.len() - 1])?;
    w.write_all(b",\"data\":\"")?;
    w.write_all(base64::engine::general_purpose::STANDARD.encode(rows).as_bytes())?;
    w.write_all(b"\"}}")
}

fn entry<W: Write>(w: &mut W, resource: &Value) -> std::io::Result<()> {
    w.write_all(b",")?;
    serde_json::to_writer(&mut *w, &json!({ "resource": resource }))?;
    Ok(())
}

/// Writes the bundle of `stay` with `readings` (in sequence order) to `w`.
pub fn write_bundle<W: Write>(
    mut w: W,
    stay: &Stay,
    readings: impl IntoIterator<Item = ArchivedReading>,
) -> std::io::Result<()> {
    let pid = alloy::hex::encode(stay.patient);
    let did = alloy::hex::encode(stay.device);
    let refs = Refs { patient: format!("Patient/{pid}"), encounter: format!("Encounter/{pid}"), device: format!("Device/{did}") };
    let head = json!({
        "resourceType": "Bundle",
        "type": "collection",
        "identifier": { "system": "urn:healthsense:archive", "value": format!("eip155:{}:{}/patient/{}", stay.chain_id, stay.contract, stay.patient) },
        "timestamp": iso_ms(stay.created_ms),
    });
    // The header object without its closing brace, then the entries.
    let head = serde_json::to_string(&head)?;
    w.write_all(&head.as_bytes()[..head.len() - 1])?;
    w.write_all(b",\"entry\":[")?;
    let mut small = record_resources(stay, &refs).into_iter();
    if let Some(first) = small.next() {
        serde_json::to_writer(&mut w, &json!({ "resource": first }))?;
    }
    for r in small {
        entry(&mut w, &r)?;
    }
    let mut chart = Charting { every_ms: stay.chart_every_ms, from_ms: stay.admitted_at * 1_000, slots: BTreeSet::new(), level: Risk::None };
    let mut rows = Vec::with_capacity(SERIES_CHUNK * (ROW_HEAD + 12 * ROW_HASH));
    let (mut in_chunk, mut chunks) = (0, 0);
    for a in readings {
        if chart.charts(&a.reading) {
            for o in charted(&refs, &a.reading) {
                entry(&mut w, &o)?;
            }
        }
        write_row(&mut rows, &a)?;
        in_chunk += 1;
        if in_chunk == SERIES_CHUNK {
            write_series(&mut w, chunks, &refs.patient, &rows)?;
            (in_chunk, chunks) = (0, chunks + 1);
            rows.clear();
        }
    }
    if in_chunk > 0 {
        write_series(&mut w, chunks, &refs.patient, &rows)?;
    }
    w.write_all(b"]}")?;
    Ok(())
}

/// The resources of the stay besides its vital signs: Organizations,
/// Patient, Encounter, Device, ChargeItems, Coverage, Claim and (with a
/// policy) the ExplanationOfBenefit.
fn record_resources(stay: &Stay, refs: &Refs) -> Vec<Value> {
    let pid = alloy::hex::encode(stay.patient);
    let did = alloy::hex::encode(stay.device);
    let cur = stay.currency.as_str();
    let (disp_code, disp_text) = disposition(stay.discharge_code);
    let mut hospital = json!({ "resourceType": "Organization", "id": "hospital", "active": true,
        "identifier": [{ "system": urls::DEPLOYMENT, "value": format!("eip155:{}:{}", stay.chain_id, stay.contract) }] });
    if !stay.hospital.is_empty() {
        hospital["name"] = json!(stay.hospital);
    }
    let mut out = vec![
        hospital,
        json!({ "resourceType": "Patient", "id": pid,
            "identifier": [{ "system": urls::CHAIN_ID, "value": stay.patient.to_string() }] }),
        json!({ "resourceType": "Encounter", "id": pid, "status": "finished",
            "class": { "system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "IMP", "display": "inpatient encounter" },
            "subject": reference(&refs.patient),
            "period": { "start": iso_s(stay.admitted_at), "end": iso_s(stay.discharged_at) },
            "hospitalization": { "dischargeDisposition": concept("http://terminology.hl7.org/CodeSystem/discharge-disposition", disp_code, disp_text) },
            "location": [{ "location": { "identifier": { "system": urls::CHAIN_ID, "value": stay.ward.to_string() } } }],
            "serviceProvider": reference("Organization/hospital"),
            "extension": exact(&[("dischargeCode", stay.discharge_code.to_string()), ("hub", stay.hub.to_string())]) }),
    ];
    let mut identifiers = Vec::new();
    if let Some(serial) = stay.serial.as_deref().filter(|s| !s.is_empty()) {
        identifiers.push(json!({ "system": urls::SERIAL, "value": serial }));
    }
    identifiers.push(json!({ "system": urls::CHAIN_ID, "value": stay.signer.to_string() }));
    out.push(json!({ "resourceType": "Device", "id": did, "identifier": identifiers }));

    let mut per_category: Vec<(u8, U256)> = Vec::new();
    let mut claim_items = Vec::new();
    for (i, c) in stay.charges.iter().enumerate() {
        let amount = billing::charge_amount(c.quantity, c.unitPrice);
        match per_category.iter_mut().find(|(k, _)| *k == c.category) {
            Some((_, t)) => *t += amount,
            None => per_category.push((c.category, amount)),
        }
        out.push(json!({ "resourceType": "ChargeItem", "id": format!("charge-{i}"), "status": "billable",
            "code": charge_code(&c.code),
            "subject": reference(&refs.patient), "context": reference(&refs.encounter),
            "quantity": { "value": c.quantity },
            "priceOverride": money(U256::from(c.unitPrice), cur),
            "enterer": { "identifier": { "system": urls::CHAIN_ID, "value": c.doctor.to_string() } },
            "extension": exact(&[
                ("index", i.to_string()), ("category", c.category.to_string()),
                ("quantity", c.quantity.to_string()), ("unitPrice", c.unitPrice.to_string()),
                ("doctor", c.doctor.to_string()), ("code", c.code.to_string()),
            ]) }));
        claim_items.push(json!({ "sequence": i + 1,
            "category": concept(urls::CHARGE_CATEGORY, &category_name(c.category), ""),
            "productOrService": charge_code(&c.code),
            "quantity": { "value": c.quantity },
            "unitPrice": money(U256::from(c.unitPrice), cur), "net": money(amount, cur) }));
    }
    // The bed days are what the bill holds beyond the charges.
    let b = &stay.bill;
    let charged = per_category.iter().fold(U256::ZERO, |sum, (_, t)| sum + *t);
    let beds = b.total.saturating_sub(charged);
    claim_items.push(json!({ "sequence": stay.charges.len() + 1,
        "category": concept(urls::CHARGE_CATEGORY, "bed", ""),
        "productOrService": concept(urls::CHARGE_CATEGORY, "bed", "Bed days"),
        "quantity": { "value": b.bedDays }, "net": money(beds, cur) }));
    match per_category.iter_mut().find(|(k, _)| *k == Category::Bed as u8) {
        Some((_, t)) => *t += beds,
        None => per_category.insert(0, (Category::Bed as u8, beds)),
    }

    let coverage = match &stay.policy {
        Some(p) => {
            out.push(json!({ "resourceType": "Organization", "id": "insurer", "active": true,
                "identifier": [{ "system": urls::CHAIN_ID, "value": p.insurer.to_string() }] }));
            out.push(json!({ "resourceType": "Coverage", "id": "policy", "status": "active",
                "beneficiary": reference(&refs.patient),
                "payor": [reference("Organization/insurer")],
                "extension": exact(&[
                    ("insurer", p.insurer.to_string()), ("coverageBps", p.coverageBps.to_string()),
                    ("deductible", p.deductible.to_string()), ("cap", p.cap.to_string()),
                    ("coveredCategories", p.coveredCategories.to_string()),
                ]) }));
            "Coverage/policy"
        }
        None => {
            // FHIR's way to say "no insurer": a self-pay Coverage paid by the patient.
            out.push(json!({ "resourceType": "Coverage", "id": "self-pay", "status": "active",
                "type": concept("http://terminology.hl7.org/CodeSystem/coverage-selfpay", "pay", "PAY"),
                "beneficiary": reference(&refs.patient),
                "payor": [reference(&refs.patient)] }));
            "Coverage/self-pay"
        }
    };
    let claim_type = concept("http://terminology.hl7.org/CodeSystem/claim-type", "institutional", "Institutional");
    out.push(json!({ "resourceType": "Claim", "id": "claim", "status": "active", "type": claim_type.clone(), "use": "claim",
        "patient": reference(&refs.patient), "created": iso_s(stay.discharged_at),
        "provider": reference("Organization/hospital"),
        "priority": concept("http://terminology.hl7.org/CodeSystem/processpriority", "normal", "Normal"),
        "insurance": [{ "sequence": 1, "focal": true, "coverage": reference(coverage) }],
        "item": claim_items,
        "total": money(b.total, cur),
        "extension": exact(&[
            ("total", b.total.to_string()), ("covered", b.covered.to_string()), ("due", b.due.to_string()),
            ("bedDays", b.bedDays.to_string()), ("rulesVersion", b.rulesVersion.to_string()),
            ("rulesCid", stay.rules.cid.clone()),
        ]) }));
    if stay.policy.is_some() {
        let adjudication = |system: &str, code: &str, amount: U256| json!({ "category": concept(system, code, ""), "amount": money(amount, cur) });
        let items: Vec<Value> = per_category
            .iter()
            .enumerate()
            .map(|(i, (k, amount))| {
                let name = category_name(*k);
                json!({ "sequence": i + 1, "category": concept(urls::CHARGE_CATEGORY, &name, ""),
                    "productOrService": concept(urls::CHARGE_CATEGORY, &name, ""),
                    "adjudication": [adjudication("http://terminology.hl7.org/CodeSystem/adjudication", "submitted", *amount)] })
            })
            .collect();
        out.push(json!({ "resourceType": "ExplanationOfBenefit", "id": "bill", "status": "active",
            "type": claim_type, "use": "claim", "patient": reference(&refs.patient), "created": iso_s(stay.discharged_at),
            "insurer": reference("Organization/insurer"), "provider": reference("Organization/hospital"),
            "claim": reference("Claim/claim"), "outcome": "complete",
            "insurance": [{ "focal": true, "coverage": reference(coverage) }],
            "item": items,
            "total": [
                adjudication("http://terminology.hl7.org/CodeSystem/adjudication", "submitted", b.total),
                adjudication("http://terminology.hl7.org/CodeSystem/adjudication", "benefit", b.covered),
                adjudication(urls::ADJUDICATION, "patient-share", b.due),
            ] }));
    }
    out
}

// ---- reading back ------------------------------------------------------

#[derive(Deserialize)]
struct BundleIn {
    #[serde(rename = "resourceType")]
    resource_type: String,
    #[serde(default)]
    entry: Vec<EntryIn>,
}

#[derive(Deserialize)]
struct EntryIn {
    resource: ResourceIn,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
struct ResourceIn {
    resource_type: String,
    id: String,
    identifier: Vec<IdentifierIn>,
    extension: Vec<Ext>,
    period: Option<PeriodIn>,
    code: ConceptIn,
    value_quantity: Option<QuantityIn>,
    value_codeable_concept: Option<ConceptIn>,
    component: Vec<ComponentIn>,
    price_override: Option<MoneyIn>,
    total: Option<Value>,
    content_type: String,
    data: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct IdentifierIn {
    system: String,
    value: String,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct PeriodIn {
    start: String,
    end: String,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct MoneyIn {
    value: f64,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
struct ComponentIn {
    code: ConceptIn,
    value_quantity: Option<QuantityIn>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct ConceptIn {
    coding: Vec<CodingIn>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct CodingIn {
    system: String,
    code: String,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct QuantityIn {
    value: f64,
    code: String,
}

/// A bundle item that could not be read back as written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unreadable {
    /// The FHIR resource (`Binary/readings-0`, `Observation/hr-12`).
    pub item: String,
    /// What is wrong.
    pub why: String,
}

/// An archived charge as read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchivedCharge {
    /// Index on chain.
    pub index: u32,
    /// The charge.
    pub charge: ChargeInfo,
    /// Whether the display price agrees with the exact one.
    pub display_consistent: bool,
}

/// A charted value as read back: which reading, which value (index in the
/// order heart rate, respiratory rate, SpO2, systolic, diastolic,
/// temperature in 0.01 °C, ACVPU code), the device integer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChartedValue {
    /// The Observation (`Observation/hr-12`).
    pub item: String,
    /// The reading's sequence number.
    pub seq: u64,
    /// Which value.
    pub field: usize,
    /// The value as the device's integer.
    pub value: u16,
}

/// What [`parse_bundle`] reads back.
#[derive(Debug, Clone, Default)]
pub struct ParsedBundle {
    /// Patient id (from the Patient resource).
    pub patient: Option<B256>,
    /// Device serial.
    pub serial: Option<String>,
    /// `(admittedAt, dischargedAt)`, from `Encounter.period`.
    pub stay: Option<(u64, u64)>,
    /// The full series: every reading with its anchoring.
    pub readings: Vec<ArchivedReading>,
    /// The charted vital signs.
    pub charted: Vec<ChartedValue>,
    /// Charges.
    pub charges: Vec<ArchivedCharge>,
    /// The policy.
    pub policy: Option<PolicyInfo>,
    /// The bill (from the Claim), and whether the display amounts of the
    /// Claim and the ExplanationOfBenefit agree with it (an EOB exactly
    /// when there is a policy).
    pub bill: Option<(BillInfo, bool)>,
    /// Items that could not be read.
    pub unreadable: Vec<Unreadable>,
}

/// Why a bundle cannot be read at all.
#[derive(Debug, thiserror::Error)]
#[error("the archive's content is not a HealthSense FHIR bundle: {0}")]
pub struct BundleError(String);

fn exact_map(exts: &[Ext]) -> HashMap<String, String> {
    exts.iter()
        .filter(|e| e.url == urls::EXACT)
        .flat_map(|e| e.extension.iter())
        .filter_map(|e| Some((e.url.clone(), e.value_string.clone()?)))
        .collect()
}

fn field<T: std::str::FromStr>(m: &HashMap<String, String>, k: &str) -> Result<T, String> {
    let v = m.get(k).ok_or_else(|| format!("no {k}"))?;
    v.parse().map_err(|_| format!("{k} = {v:?} does not parse"))
}

fn close(display: f64, exact: U256) -> bool {
    let exact = major(exact);
    (display - exact).abs() <= exact.abs() * 1e-12 + 0.005
}

fn seconds(iso: &str) -> Result<u64, String> {
    let t = DateTime::parse_from_rfc3339(iso).map_err(|e| format!("time {iso:?}: {e}"))?;
    u64::try_from(t.timestamp()).map_err(|_| format!("time {iso:?} is before 1970"))
}

/// A device integer from a charted quantity.
fn device_value(q: &QuantityIn, v: &Vital) -> Result<u16, String> {
    if q.code != v.ucum {
        return Err(format!("{} in {:?}, expected UCUM {:?}", v.codes[0].0, q.code, v.ucum));
    }
    let scaled = q.value * f64::from(v.scale);
    if !(1.0..=f64::from(u16::MAX)).contains(&scaled) || (scaled - scaled.round()).abs() > 1e-6 {
        return Err(format!("{} value {} is not a device value", v.codes[0].0, q.value));
    }
    Ok(scaled.round() as u16)
}

fn parse_charted(r: &ResourceIn, item: &str) -> Result<Vec<ChartedValue>, String> {
    let seq: u64 = r.identifier.iter().find(|i| i.system == urls::READING).ok_or("no reading identifier")?.value.parse()
        .map_err(|_| "reading identifier is not a sequence number")?;
    let code = r.code.coding.first().map(|c| c.code.as_str()).unwrap_or("");
    let value = |field, value| ChartedValue { item: item.to_string(), seq, field, value };
    if code == PANEL_CODE.0 {
        return Ok(Vec::new());
    }
    if code == CONSCIOUSNESS_CODE.0 {
        let c = r.value_codeable_concept.as_ref().and_then(|v| v.coding.first()).map(|c| c.code.as_str()).unwrap_or("");
        let at = ACVPU.iter().position(|a| *a == c).ok_or_else(|| format!("consciousness {c:?} is not ACVPU"))?;
        return Ok(vec![value(CONSCIOUSNESS_FIELD, at as u16 + 1)]);
    }
    if code == BP_CODE.0 {
        let mut out = Vec::new();
        for c in &r.component {
            let code = c.code.coding.first().map(|c| c.code.as_str()).unwrap_or("");
            let v = [&SYSTOLIC, &DIASTOLIC].into_iter().find(|v| v.codes[0].0 == code).ok_or_else(|| format!("unknown component {code:?}"))?;
            if let Some(q) = &c.value_quantity {
                out.push(value(v.field, device_value(q, v)?));
            }
        }
        return Ok(out);
    }
    let v = SIMPLE_VITALS.into_iter().find(|v| v.codes[0].0 == code).ok_or_else(|| format!("unknown LOINC code {code:?}"))?;
    let q = r.value_quantity.as_ref().ok_or_else(|| format!("{code} has no valueQuantity"))?;
    Ok(vec![value(v.field, device_value(q, v)?)])
}

fn parse_series(r: &ResourceIn, device: B256) -> Result<Vec<ArchivedReading>, String> {
    if r.content_type != SERIES_TYPE {
        return Err(format!("contentType {:?}, expected {SERIES_TYPE}", r.content_type));
    }
    let data = r.data.as_deref().ok_or("no data")?;
    let rows = base64::engine::general_purpose::STANDARD.decode(data).map_err(|e| format!("data is not base64: {e}"))?;
    read_rows(&rows, device)
}

/// The display totals of the ExplanationOfBenefit: submitted, benefit, patient share.
fn eob_totals(total: Option<&Value>) -> Vec<f64> {
    total.and_then(Value::as_array).into_iter().flatten().filter_map(|t| t["amount"]["value"].as_f64()).collect()
}

/// Reads a bundle written by [`write_bundle`]. Items that do not parse are
/// listed in [`ParsedBundle::unreadable`] (verification reports them as
/// tampered) rather than failing the whole bundle.
pub fn parse_bundle(json: &[u8]) -> Result<ParsedBundle, BundleError> {
    let bundle: BundleIn = serde_json::from_slice(json).map_err(|e| BundleError(e.to_string()))?;
    if bundle.resource_type != "Bundle" {
        return Err(BundleError(format!("resourceType {:?}", bundle.resource_type)));
    }
    let mut out = ParsedBundle::default();
    let device = bundle
        .entry
        .iter()
        .map(|e| &e.resource)
        .find(|r| r.resource_type == "Device")
        .and_then(|r| {
            out.serial = r.identifier.iter().find(|i| i.system == urls::SERIAL).map(|i| i.value.clone());
            r.id.parse::<B256>().ok()
        })
        .ok_or_else(|| BundleError("no Device whose id is the 32-byte device id".into()))?;
    // The full series, decoded in parallel: most of the bundle's bytes.
    let series: Vec<(String, Result<Vec<ArchivedReading>, String>)> = bundle
        .entry
        .par_iter()
        .filter(|e| e.resource.resource_type == "Binary")
        .map(|e| (format!("Binary/{}", e.resource.id), parse_series(&e.resource, device)))
        .collect();
    for (item, rows) in series {
        match rows {
            Ok(rows) => out.readings.extend(rows),
            Err(why) => out.unreadable.push(Unreadable { item, why }),
        }
    }
    let mut eob = None;
    let mut claim_total = None;
    for e in bundle.entry {
        let r = e.resource;
        let item = format!("{}/{}", r.resource_type, r.id);
        let mut bad = |why: String| out.unreadable.push(Unreadable { item: item.clone(), why });
        match r.resource_type.as_str() {
            "Patient" => match r.identifier.iter().find(|i| i.system == urls::CHAIN_ID).map(|i| i.value.parse::<B256>()) {
                Some(Ok(p)) => out.patient = Some(p),
                _ => bad("no patient id".into()),
            },
            "Encounter" => match r.period.as_ref().map(|p| (seconds(&p.start), seconds(&p.end))) {
                Some((Ok(a), Ok(d))) => out.stay = Some((a, d)),
                Some((Err(e), _) | (_, Err(e))) => bad(e),
                None => bad("no period".into()),
            },
            "Observation" => match parse_charted(&r, &item) {
                Ok(values) => out.charted.extend(values),
                Err(e) => bad(e),
            },
            "ChargeItem" => {
                let m = exact_map(&r.extension);
                let charge = (|| -> Result<ArchivedCharge, String> {
                    let charge = ChargeInfo {
                        code: field(&m, "code")?,
                        category: field(&m, "category")?,
                        quantity: field(&m, "quantity")?,
                        unitPrice: field(&m, "unitPrice")?,
                        doctor: field(&m, "doctor")?,
                    };
                    let display = r.price_override.as_ref().map_or(f64::NAN, |p| p.value);
                    Ok(ArchivedCharge { index: field(&m, "index")?, display_consistent: close(display, U256::from(charge.unitPrice)), charge })
                })();
                match charge {
                    Ok(c) => out.charges.push(c),
                    Err(e) => bad(e),
                }
            }
            "Coverage" if r.id == "policy" => {
                let m = exact_map(&r.extension);
                let policy = (|| -> Result<PolicyInfo, String> {
                    Ok(PolicyInfo {
                        insurer: field(&m, "insurer")?,
                        coverageBps: field(&m, "coverageBps")?,
                        deductible: field(&m, "deductible")?,
                        cap: field(&m, "cap")?,
                        coveredCategories: field(&m, "coveredCategories")?,
                    })
                })();
                match policy {
                    Ok(p) => out.policy = Some(p),
                    Err(e) => bad(e),
                }
            }
            "Claim" => {
                let m = exact_map(&r.extension);
                let bill = (|| -> Result<BillInfo, String> {
                    Ok(BillInfo {
                        total: field(&m, "total")?,
                        covered: field(&m, "covered")?,
                        due: field(&m, "due")?,
                        bedDays: field(&m, "bedDays")?,
                        rulesVersion: field(&m, "rulesVersion")?,
                    })
                })();
                match bill {
                    Ok(b) => {
                        claim_total = r.total.as_ref().and_then(|t| t["value"].as_f64());
                        out.bill = Some((b, true));
                    }
                    Err(e) => bad(e),
                }
            }
            "ExplanationOfBenefit" => eob = Some(eob_totals(r.total.as_ref())),
            _ => {}
        }
    }
    if let Some((b, consistent)) = &mut out.bill {
        let eob_ok = match (&eob, out.policy.is_some()) {
            (Some(t), true) => t.len() == 3 && close(t[0], b.total) && close(t[1], b.covered) && close(t[2], b.due),
            (None, false) => true,
            _ => false,
        };
        *consistent = eob_ok && claim_total.is_some_and(|t| close(t, b.total));
    }
    Ok(out)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn sample_stay() -> Stay {
        Stay {
            chain_id: 31337,
            contract: Address::repeat_byte(1),
            hub: Address::repeat_byte(2),
            patient: B256::repeat_byte(3),
            ward: ids::ward_id("ward-3"),
            device: ids::device_id("HS-0001"),
            serial: Some("HS-0001".into()),
            signer: Address::repeat_byte(4),
            admitted_at: 1_764_000_000,
            discharged_at: 1_764_090_000,
            discharge_code: 1,
            charges: vec![ChargeInfo {
                code: ids::charge_code("LAB-CBC").unwrap_or_default(),
                category: 4,
                quantity: 3,
                unitPrice: 1_999,
                doctor: Address::repeat_byte(5),
            }],
            policy: Some(PolicyInfo {
                insurer: Address::repeat_byte(6),
                coverageBps: 8_000,
                deductible: 10_000,
                cap: 1_000_000,
                coveredCategories: 0xff,
            }),
            bill: BillInfo {
                total: U256::from(205_997u64),
                covered: U256::from(156_797u64),
                due: U256::from(49_200u64),
                bedDays: 2,
                rulesVersion: 1,
            },
            rules: BillingRulesInfo { cid: "bafkreiexample".into(), version: 1 },
            currency: "EUR".into(),
            hospital: "St Example".into(),
            chart_every_ms: DEFAULT_CHART_MS,
            created_ms: 1_764_090_001_000,
        }
    }

    /// `n` readings one second apart from admission; `sick` ones score NEWS2 high.
    pub(crate) fn sample_readings(stay: &Stay, n: u64, sick: impl Fn(u64) -> bool) -> Vec<ArchivedReading> {
        (1..=n)
            .map(|seq| ArchivedReading {
                reading: Reading {
                    deviceId: stay.device,
                    seq,
                    timestamp: stay.admitted_at * 1_000 + seq * 1_000 + 123,
                    heartRate: if sick(seq) { 140 } else { 70 + (seq % 5) as u16 },
                    respRate: if sick(seq) { 30 } else { 16 },
                    spo2: if seq == 2 { 0 } else { 97 },
                    systolic: if seq == 3 { 0 } else { 120 },
                    diastolic: 80,
                    temperature: 3_705 + (seq % 3) as u16,
                    consciousness: if seq == 2 { 0 } else { 1 },
                },
                signature: vec![seq as u8; 65],
                batch_seq: 4 + seq / 3,
                batch_id: B256::repeat_byte(9 + (seq / 3) as u8),
                proof: vec![B256::repeat_byte(seq as u8); (seq % 12) as usize],
            })
            .collect()
    }

    fn bundle(stay: &Stay, readings: &[ArchivedReading]) -> (Vec<u8>, Value) {
        let mut json = Vec::new();
        write_bundle(&mut json, stay, readings.to_vec()).unwrap();
        let v: Value = serde_json::from_slice(&json).unwrap();
        (json, v)
    }

    fn no_empty_strings(v: &Value, path: &str) {
        match v {
            Value::String(s) => assert!(!s.is_empty(), "empty string at {path}"),
            Value::Array(a) => a.iter().enumerate().for_each(|(i, v)| no_empty_strings(v, &format!("{path}[{i}]"))),
            Value::Object(o) => o.iter().for_each(|(k, v)| no_empty_strings(v, &format!("{path}.{k}"))),
            _ => {}
        }
    }

    /// The bundles `scripts/test` hands to the third-party validators
    /// (`tests/fhir/check_archive.py bundle target/test-output/fhir/*.json`):
    /// a normal stay, no policy, no billing rules published, a device the
    /// hub never heard say hello, a deceased disposition, a doctor's
    /// discharge with charting at every reading.
    #[test]
    fn writes_the_fixture_bundles_the_third_party_validators_check() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/test-output/fhir");
        std::fs::create_dir_all(&dir).unwrap();
        let base = sample_stay();
        let mut cases = vec![("normal-stay", base.clone())];
        let mut s = base.clone();
        s.policy = None;
        cases.push(("no-policy", s));
        let mut s = base.clone();
        (s.rules, s.bill.rulesVersion) = (BillingRulesInfo { cid: String::new(), version: 0 }, 0);
        cases.push(("no-billing-rules", s));
        let mut s = base.clone();
        s.serial = None;
        cases.push(("device-never-said-hello", s));
        let mut s = base.clone();
        (s.discharge_code, s.charges) = (4, Vec::new());
        cases.push(("deceased", s));
        let mut s = base;
        (s.discharge_code, s.hospital, s.chart_every_ms) = (0, String::new(), 0);
        cases.push(("doctor-discharge-every-reading-charted", s));
        for (name, stay) in cases {
            let readings = sample_readings(&stay, if stay.chart_every_ms == 0 { 20 } else { 300 }, |seq| (100..=130).contains(&seq));
            let (json, v) = bundle(&stay, &readings);
            no_empty_strings(&v, name);
            let parsed = parse_bundle(&json).unwrap();
            assert!(parsed.unreadable.is_empty(), "{name}: {:?}", parsed.unreadable);
            assert_eq!(parsed.readings, readings, "{name}");
            std::fs::write(dir.join(format!("{name}.json")), json).unwrap();
        }
    }

    #[test]
    fn series_rows_round_trip_and_reject_bad_layouts() {
        let stay = sample_stay();
        let readings = sample_readings(&stay, 14, |_| false);
        let mut rows = Vec::new();
        for a in &readings {
            write_row(&mut rows, a).unwrap();
            assert_eq!(rows.len() % 3, 0);
        }
        assert_eq!(read_rows(&rows, stay.device).unwrap(), readings);
        assert!(read_rows(&rows[..rows.len() - 1], stay.device).is_err());
        let mut padded = rows.clone();
        padded[38] = 1;
        assert!(read_rows(&padded, stay.device).is_err());
        let mut short = readings[0].clone();
        short.signature.pop();
        assert!(write_row(&mut Vec::new(), &short).is_err());
    }

    #[test]
    fn bundles_read_back_what_was_written() {
        let stay = sample_stay();
        let readings = sample_readings(&stay, 3, |_| false);
        let (json, v) = bundle(&stay, &readings);
        no_empty_strings(&v, "bundle");
        let types: Vec<&str> = v["entry"].as_array().unwrap().iter().map(|e| e["resource"]["resourceType"].as_str().unwrap()).collect();
        for t in ["Organization", "Patient", "Encounter", "Device", "ChargeItem", "Coverage", "Claim", "ExplanationOfBenefit", "Observation", "Binary"] {
            assert!(types.contains(&t), "{t} missing from {types:?}");
        }
        let parsed = parse_bundle(&json).unwrap();
        assert!(parsed.unreadable.is_empty(), "{:?}", parsed.unreadable);
        assert_eq!(parsed.patient, Some(stay.patient));
        assert_eq!(parsed.serial.as_deref(), Some("HS-0001"));
        assert_eq!(parsed.stay, Some((stay.admitted_at, stay.discharged_at)));
        assert_eq!(parsed.readings, readings);
        assert_eq!(parsed.charges.len(), 1);
        assert_eq!(parsed.charges[0].charge, stay.charges[0]);
        assert!(parsed.charges[0].display_consistent);
        assert_eq!(parsed.policy, stay.policy);
        assert_eq!(parsed.bill, Some((stay.bill.clone(), true)));
        // The first reading is charted: every measured value, as the device's integer.
        let first: Vec<(usize, u16)> = parsed.charted.iter().filter(|c| c.seq == 1).map(|c| (c.field, c.value)).collect();
        let want: Vec<(usize, u16)> = fields(&readings[0].reading).into_iter().enumerate().filter(|(_, v)| *v > 0).collect();
        let mut got = first.clone();
        got.sort();
        assert_eq!(got, want);

        // A charted value no device sends is an unreadable item, not a failed bundle.
        let text = String::from_utf8(json.clone()).unwrap().replacen("\"value\":37.06", "\"value\":37.065", 1);
        let parsed = parse_bundle(text.as_bytes()).unwrap();
        assert_eq!(parsed.unreadable[0].item, "Observation/temp-1");
        // A broken series chunk is reported by its Binary.
        let text = String::from_utf8(json).unwrap().replacen("\"data\":\"", "\"data\":\"!", 1);
        let parsed = parse_bundle(text.as_bytes()).unwrap();
        assert!(parsed.readings.is_empty());
        assert_eq!(parsed.unreadable[0].item, "Binary/readings-0");
        assert!(parse_bundle(b"{\"resourceType\":\"Patient\"}").is_err());
        assert!(parse_bundle(b"[1,2").is_err());
    }

    #[test]
    fn billing_resources_follow_the_policy() {
        let mut stay = sample_stay();
        let (_, v) = bundle(&stay, &[]);
        let find = |v: &Value, t: &str| v["entry"].as_array().unwrap().iter().map(|e| e["resource"].clone()).find(|r| r["resourceType"] == t);
        let eob = find(&v, "ExplanationOfBenefit").unwrap();
        assert_eq!(eob["insurer"]["reference"], "Organization/insurer");
        assert_eq!(eob["provider"]["reference"], "Organization/hospital");
        assert_eq!(eob["insurance"][0]["coverage"]["reference"], "Coverage/policy");
        // Items per category: the laboratory charge and the bed days, adding up to the bill.
        let items = eob["item"].as_array().unwrap();
        let sum: f64 = items.iter().map(|i| i["adjudication"][0]["amount"]["value"].as_f64().unwrap()).sum();
        assert!((sum - 2_059.97).abs() < 1e-6, "{sum}");
        assert_eq!(items.iter().map(|i| i["category"]["coding"][0]["code"].as_str().unwrap()).collect::<Vec<_>>(), ["bed", "laboratory"]);

        stay.policy = None;
        stay.rules.cid = String::new();
        stay.serial = None;
        let (json, v) = bundle(&stay, &[]);
        no_empty_strings(&v, "bundle");
        assert!(find(&v, "ExplanationOfBenefit").is_none());
        let claim = find(&v, "Claim").unwrap();
        assert_eq!(claim["insurance"][0]["coverage"]["reference"], "Coverage/self-pay");
        assert_eq!(find(&v, "Device").unwrap()["identifier"].as_array().unwrap().len(), 1);
        let parsed = parse_bundle(&json).unwrap();
        assert!(parsed.unreadable.is_empty(), "{:?}", parsed.unreadable);
        assert_eq!((parsed.policy, parsed.bill), (None, Some((stay.bill.clone(), true))));
    }

    #[test]
    fn vitals_are_charted_per_interval_and_at_alert_changes() {
        let mut stay = sample_stay();
        stay.chart_every_ms = 10_000;
        // Readings 1..=40, one a second; 15-17 deteriorate (NEWS2 high) and recover at 18.
        let readings = sample_readings(&stay, 40, |seq| (15..=17).contains(&seq));
        let (_, v) = bundle(&stay, &readings);
        let panels: Vec<u64> = v["entry"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| &e["resource"])
            .filter(|r| r["code"]["coding"][0]["code"] == PANEL_CODE.0)
            .map(|r| r["identifier"][0]["value"].as_str().unwrap().parse().unwrap())
            .collect();
        // Slots of 10 s from admission (readings at +1.123 s ...) open at 1, 10, 20, 30, 40; the level changes at 15 and 18.
        assert_eq!(panels, [1, 10, 15, 18, 20, 30, 40]);
        let panel = v["entry"].as_array().unwrap().iter().map(|e| &e["resource"]).find(|r| r["id"] == "vitals-1").unwrap();
        assert_eq!(panel["meta"]["profile"][0], "http://hl7.org/fhir/StructureDefinition/vitalspanel");
        let members: Vec<&str> = panel["hasMember"].as_array().unwrap().iter().map(|m| m["reference"].as_str().unwrap()).collect();
        assert_eq!(members, ["Observation/hr-1", "Observation/rr-1", "Observation/spo2-1", "Observation/temp-1", "Observation/bp-1", "Observation/avpu-1"]);
        let spo2 = v["entry"].as_array().unwrap().iter().map(|e| &e["resource"]).find(|r| r["id"] == "spo2-1").unwrap();
        assert_eq!(spo2["code"]["coding"][0]["code"], "2708-6");
        assert_eq!(spo2["code"]["coding"][1]["code"], "59408-5");
        assert_eq!(spo2["valueQuantity"], json!({ "value": 97, "unit": "%", "system": urls::UCUM, "code": "%" }));
        // The full series holds every reading regardless.
        assert_eq!(parse_bundle(&serde_json::to_vec(&v).unwrap()).unwrap().readings.len(), 40);
    }
}
