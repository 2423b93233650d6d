//! The archived record of one stay as a FHIR R4 `Bundle` (type
//! `collection`): the Patient (pseudonymous id only), the Encounter, the
//! bedside Device, one vital-signs Observation per reading (LOINC codes,
//! UCUM units, plus its batch id, Merkle proof and device signature), a
//! ChargeItem per charge, the Coverage (policy) and an ExplanationOfBenefit
//! for the bill. Amounts are also carried exactly, in minor currency units,
//! in HealthSense extensions, because FHIR `Money` is a decimal.
//!
//! [`write_bundle`] streams (a 7-day stay is ~1 GB of JSON) and [`parse_bundle`]
//! reads back exactly what verification needs.

use std::io::Write;

use alloy::primitives::{Address, B256, U256};
use chrono::{DateTime, SecondsFormat, Utc};
use healthsense_abi::bindings::IHealthSense::{BillInfo, BillingRulesInfo, ChargeInfo, PolicyInfo};
use healthsense_abi::rules::ids;
use healthsense_abi::Reading;
use serde::{Deserialize, Serialize};

/// Extension URLs and code systems of this product.
pub mod urls {
    /// The reading's anchoring: `seq`, `batchId`, `batchSeq`, `proof`, `signature`.
    pub const ANCHORED: &str = "https://healthsense.dev/fhir/StructureDefinition/anchored-reading";
    /// Exact amounts and billing facts in minor currency units.
    pub const EXACT: &str = "https://healthsense.dev/fhir/StructureDefinition/exact-amount";
    /// ACVPU consciousness codes (1 A ... 5 U, as the device protocol).
    pub const ACVPU: &str = "https://healthsense.dev/fhir/CodeSystem/acvpu";
    /// On-chain identities (addresses, ids).
    pub const CHAIN_ID: &str = "urn:healthsense:id";
    /// LOINC.
    pub const LOINC: &str = "http://loinc.org";
    /// UCUM.
    pub const UCUM: &str = "http://unitsofmeasure.org";
}

/// A vital in the Observation: its LOINC code, UCUM unit and scale.
struct Vital {
    loinc: &'static str,
    display: &'static str,
    ucum: &'static str,
    /// The reading stores `value * scale` as an integer.
    scale: u32,
}

const VITALS: [Vital; 6] = [
    Vital { loinc: "8867-4", display: "Heart rate", ucum: "/min", scale: 1 },
    Vital { loinc: "9279-1", display: "Respiratory rate", ucum: "/min", scale: 1 },
    Vital { loinc: "59408-5", display: "Oxygen saturation in Arterial blood by Pulse oximetry", ucum: "%", scale: 1 },
    Vital { loinc: "8480-6", display: "Systolic blood pressure", ucum: "mm[Hg]", scale: 1 },
    Vital { loinc: "8462-4", display: "Diastolic blood pressure", ucum: "mm[Hg]", scale: 1 },
    Vital { loinc: "8310-5", display: "Body temperature", ucum: "Cel", scale: 100 },
];
const CONSCIOUSNESS_LOINC: &str = "80288-4";
const ACVPU: [&str; 5] = ["A", "C", "V", "P", "U"];
const PANEL_LOINC: &str = "85353-1";

fn vitals_of(r: &Reading) -> [u16; 6] {
    [r.heartRate, r.respRate, r.spo2, r.systolic, r.diastolic, r.temperature]
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
    /// Its serial, when the hub has seen one (informational).
    pub serial: String,
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

fn money(minor: U256, currency: &str) -> serde_json::Value {
    // Display only: exact minor units travel in the `exact-amount` extension.
    let major = minor.to_string().parse::<f64>().unwrap_or(f64::MAX) / 100.0;
    serde_json::json!({ "value": major, "currency": currency })
}

fn exact(pairs: &[(&str, String)]) -> serde_json::Value {
    let ext: Vec<_> = pairs.iter().map(|(k, v)| serde_json::json!({ "url": k, "valueString": v })).collect();
    serde_json::json!([{ "url": urls::EXACT, "extension": ext }])
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

/// Writes Observations from fragments rendered once per stay: a 7-day stay
/// has 604,800 of them, all alike but for the numbers and hashes, so
/// building serde values for each would dominate the archive's time
/// (`docs/BENCHMARKS.md`). The tests hold it byte for byte to the serde
/// rendering of the same resource.
struct ObservationWriter {
    /// `{"resource":{"resourceType":"Observation","id":"reading-`
    head: Vec<u8>,
    /// From after the id to the opening quote of `effectiveDateTime`.
    refs: Vec<u8>,
    /// Per vital: the component up to its value, and after it.
    vitals: Vec<(Vec<u8>, Vec<u8>)>,
    /// Per ACVPU code: the whole component.
    acvpu: Vec<Vec<u8>>,
    /// `"` to `proof`'s value: the extension's head.
    anchored: Vec<u8>,
    /// The `YYYY-MM-DDTHH:MM:` of the last minute written, and its number.
    minute: (u64, String),
    scratch: Vec<u8>,
}

fn json_str(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_default()
}

impl ObservationWriter {
    fn new(refs: &Refs) -> ObservationWriter {
        let coding = |system: &str, code: &str, display: &str| {
            let display = if display.is_empty() { String::new() } else { format!(",\"display\":{}", json_str(display)) };
            format!("{{\"coding\":[{{\"system\":{},\"code\":{}{display}}}]}}", json_str(system), json_str(code))
        };
        let reference = |r: &str| format!("{{\"reference\":{}}}", json_str(r));
        let head = b"{\"resource\":{\"resourceType\":\"Observation\",\"id\":\"reading-".to_vec();
        let refs_part = format!(
            "\",\"status\":\"final\",\"category\":[{}],\"code\":{},\"subject\":{},\"encounter\":{},\"device\":{},\"effectiveDateTime\":\"",
            coding("http://terminology.hl7.org/CodeSystem/observation-category", "vital-signs", "Vital Signs"),
            coding(urls::LOINC, PANEL_LOINC, "Vital signs panel"),
            reference(&refs.patient),
            reference(&refs.encounter),
            reference(&refs.device),
        );
        let vitals = VITALS
            .iter()
            .map(|v| {
                let pre = format!("{{\"code\":{},\"valueQuantity\":{{\"value\":", coding(urls::LOINC, v.loinc, v.display));
                let post = format!(",\"unit\":{},\"system\":{},\"code\":{}}}}}", json_str(v.ucum), json_str(urls::UCUM), json_str(v.ucum));
                (pre.into_bytes(), post.into_bytes())
            })
            .collect();
        let acvpu = ACVPU
            .iter()
            .map(|code| {
                format!(
                    "{{\"code\":{},\"valueCodeableConcept\":{}}}",
                    coding(urls::LOINC, CONSCIOUSNESS_LOINC, "Level of consciousness"),
                    coding(urls::ACVPU, code, "")
                )
                .into_bytes()
            })
            .collect();
        let anchored = format!("],\"extension\":[{{\"url\":{},\"extension\":[{{\"url\":\"seq\",\"valueString\":\"", json_str(urls::ANCHORED));
        ObservationWriter {
            head,
            refs: refs_part.into_bytes(),
            vitals,
            acvpu,
            anchored: anchored.into_bytes(),
            minute: (u64::MAX, String::new()),
            scratch: Vec::with_capacity(4096),
        }
    }

    /// `YYYY-MM-DDTHH:MM:SS.mmmZ`, as `iso_ms`; chrono runs once a minute.
    fn timestamp(&mut self, ms: u64) {
        let minute = ms / 60_000;
        if self.minute.0 != minute {
            let full = iso_ms(minute * 60_000);
            // `iso_ms` is empty for times chrono cannot represent.
            self.minute = (minute, full.get(..17).unwrap_or("").to_string());
        }
        if self.minute.1.is_empty() {
            return;
        }
        let in_minute = ms % 60_000;
        let b = &mut self.scratch;
        b.extend_from_slice(self.minute.1.as_bytes());
        let (s, m) = ((in_minute / 1000) as u8, (in_minute % 1000) as u16);
        b.extend_from_slice(&[b'0' + s / 10, b'0' + s % 10, b'.']);
        b.extend_from_slice(&[b'0' + (m / 100) as u8, b'0' + (m / 10 % 10) as u8, b'0' + (m % 10) as u8, b'Z']);
    }

    /// `value / scale` as serde_json prints the f64 (shortest round trip:
    /// `72.0`, `37.05`, `37.5`).
    fn decimal(b: &mut Vec<u8>, value: u16, scale: u32) {
        let mut itoa = itoa::Buffer::new();
        let v = u32::from(value);
        b.extend_from_slice(itoa.format(v / scale).as_bytes());
        b.push(b'.');
        match scale {
            1 => b.push(b'0'),
            _ => {
                // Adding `scale` keeps the leading zeros: 37.05 -> 5 + 100 -> "05".
                let digits = &itoa.format(v % scale + scale).as_bytes()[1..];
                let end = digits.iter().rposition(|&d| d != b'0').map_or(1, |i| i + 1);
                b.extend_from_slice(&digits[..end]);
            }
        }
    }

    fn hex(b: &mut Vec<u8>, bytes: &[u8]) {
        b.extend_from_slice(b"0x");
        let at = b.len();
        b.resize(at + 2 * bytes.len(), 0);
        // The slice is exactly twice the input's length, which is all encode_to_slice needs.
        let _ = alloy::hex::encode_to_slice(bytes, &mut b[at..]);
    }

    fn write<W: Write>(&mut self, w: &mut W, a: &ArchivedReading) -> std::io::Result<()> {
        let mut itoa = itoa::Buffer::new();
        self.scratch.clear();
        self.scratch.extend_from_slice(&self.head);
        self.scratch.extend_from_slice(itoa.format(a.reading.seq).as_bytes());
        self.scratch.extend_from_slice(&self.refs);
        self.timestamp(a.reading.timestamp);
        self.scratch.extend_from_slice(b"\",\"component\":[");
        let mut first = true;
        for ((vital, value), (pre, post)) in VITALS.iter().zip(vitals_of(&a.reading)).zip(&self.vitals) {
            if value == 0 {
                continue; // not measured
            }
            if !std::mem::take(&mut first) {
                self.scratch.push(b',');
            }
            self.scratch.extend_from_slice(pre);
            Self::decimal(&mut self.scratch, value, vital.scale);
            self.scratch.extend_from_slice(post);
        }
        if let Some(component) = self.acvpu.get(usize::from(a.reading.consciousness).wrapping_sub(1)) {
            if !first {
                self.scratch.push(b',');
            }
            self.scratch.extend_from_slice(component);
        }
        let b = &mut self.scratch;
        b.extend_from_slice(&self.anchored);
        b.extend_from_slice(itoa.format(a.reading.seq).as_bytes());
        b.extend_from_slice(b"\"},{\"url\":\"batchSeq\",\"valueString\":\"");
        b.extend_from_slice(itoa.format(a.batch_seq).as_bytes());
        b.extend_from_slice(b"\"},{\"url\":\"batchId\",\"valueString\":\"");
        Self::hex(b, a.batch_id.as_slice());
        b.extend_from_slice(b"\"},{\"url\":\"proof\",\"valueString\":\"");
        for (i, h) in a.proof.iter().enumerate() {
            if i > 0 {
                b.push(b',');
            }
            Self::hex(b, h.as_slice());
        }
        b.extend_from_slice(b"\"},{\"url\":\"signature\",\"valueString\":\"");
        Self::hex(b, &a.signature);
        b.extend_from_slice(b"\"}]}]}}");
        w.write_all(b)
    }
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
    let cur = stay.currency.as_str();
    let (disp_code, disp_text) = disposition(stay.discharge_code);
    let head = serde_json::json!({
        "resourceType": "Bundle",
        "type": "collection",
        "identifier": { "system": "urn:healthsense:archive", "value": format!("eip155:{}:{}/patient/{}", stay.chain_id, stay.contract, stay.patient) },
        "timestamp": iso_ms(stay.created_ms),
    });
    // The header object without its closing brace, then the entries.
    let head = serde_json::to_string(&head)?;
    w.write_all(&head.as_bytes()[..head.len() - 1])?;
    w.write_all(b",\"entry\":[")?;
    let mut small = vec![
        serde_json::json!({ "resourceType": "Patient", "id": pid,
            "identifier": [{ "system": urls::CHAIN_ID, "value": stay.patient.to_string() }] }),
        serde_json::json!({ "resourceType": "Encounter", "id": pid, "status": "finished",
            "class": { "system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "IMP", "display": "inpatient encounter" },
            "subject": { "reference": refs.patient },
            "period": { "start": iso_s(stay.admitted_at), "end": iso_s(stay.discharged_at) },
            "hospitalization": { "dischargeDisposition": { "coding": [{
                "system": "http://terminology.hl7.org/CodeSystem/discharge-disposition", "code": disp_code, "display": disp_text }] } },
            "location": [{ "location": { "identifier": { "system": urls::CHAIN_ID, "value": stay.ward.to_string() } } }],
            "extension": exact(&[
                ("admittedAt", stay.admitted_at.to_string()),
                ("dischargedAt", stay.discharged_at.to_string()),
                ("dischargeCode", stay.discharge_code.to_string()),
                ("hub", stay.hub.to_string()),
            ]) }),
        serde_json::json!({ "resourceType": "Device", "id": did,
            "identifier": [{ "system": "urn:healthsense:serial", "value": stay.serial },
                           { "system": urls::CHAIN_ID, "value": stay.signer.to_string() }] }),
    ];
    for (i, c) in stay.charges.iter().enumerate() {
        let code_text = ids::charge_code_text(&c.code).unwrap_or("");
        small.push(serde_json::json!({ "resourceType": "ChargeItem", "id": format!("charge-{i}"), "status": "billable",
            "code": { "coding": [{ "system": urls::CHAIN_ID, "code": c.code.to_string() }], "text": code_text },
            "subject": { "reference": refs.patient }, "context": { "reference": refs.encounter },
            "quantity": { "value": c.quantity },
            "priceOverride": money(U256::from(c.unitPrice), cur),
            "enterer": { "identifier": { "system": urls::CHAIN_ID, "value": c.doctor.to_string() } },
            "extension": exact(&[
                ("index", i.to_string()), ("category", c.category.to_string()),
                ("quantity", c.quantity.to_string()), ("unitPrice", c.unitPrice.to_string()),
                ("doctor", c.doctor.to_string()), ("code", c.code.to_string()),
            ]) }));
    }
    if let Some(p) = &stay.policy {
        small.push(serde_json::json!({ "resourceType": "Coverage", "id": "policy", "status": "active",
            "beneficiary": { "reference": refs.patient },
            "payor": [{ "identifier": { "system": urls::CHAIN_ID, "value": p.insurer.to_string() } }],
            "extension": exact(&[
                ("insurer", p.insurer.to_string()), ("coverageBps", p.coverageBps.to_string()),
                ("deductible", p.deductible.to_string()), ("cap", p.cap.to_string()),
                ("coveredCategories", p.coveredCategories.to_string()),
            ]) }));
    }
    let b = &stay.bill;
    small.push(serde_json::json!({ "resourceType": "ExplanationOfBenefit", "id": "bill", "status": "active",
        "type": { "coding": [{ "system": "http://terminology.hl7.org/CodeSystem/claim-type", "code": "institutional" }] },
        "use": "claim", "patient": { "reference": refs.patient }, "created": iso_s(stay.discharged_at),
        "outcome": "complete",
        "total": [
            { "category": { "coding": [{ "system": "http://terminology.hl7.org/CodeSystem/adjudication", "code": "submitted" }] }, "amount": money(b.total, cur) },
            { "category": { "coding": [{ "system": "http://terminology.hl7.org/CodeSystem/adjudication", "code": "benefit" }] }, "amount": money(b.covered, cur) },
            { "category": { "coding": [{ "system": urls::EXACT, "code": "due" }] }, "amount": money(b.due, cur) },
        ],
        "extension": exact(&[
            ("total", b.total.to_string()), ("covered", b.covered.to_string()), ("due", b.due.to_string()),
            ("bedDays", b.bedDays.to_string()), ("rulesVersion", b.rulesVersion.to_string()),
            ("rulesCid", stay.rules.cid.clone()),
        ]) }));
    for (i, r) in small.iter().enumerate() {
        if i > 0 {
            w.write_all(b",")?;
        }
        serde_json::to_writer(&mut w, &serde_json::json!({ "resource": r }))?;
    }
    let mut observations = ObservationWriter::new(&refs);
    for a in readings {
        w.write_all(b",")?;
        observations.write(&mut w, &a)?;
    }
    w.write_all(b"]}")?;
    Ok(())
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
    effective_date_time: Option<String>,
    component: Vec<ComponentIn>,
    extension: Vec<Ext>,
    identifier: Vec<IdentifierIn>,
    price_override: Option<MoneyIn>,
    total: Vec<TotalIn>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct IdentifierIn {
    system: String,
    value: String,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct MoneyIn {
    value: f64,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct TotalIn {
    amount: MoneyIn,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
struct ComponentIn {
    code: ConceptIn,
    value_quantity: Option<QuantityIn>,
    value_codeable_concept: Option<ConceptIn>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct ConceptIn {
    coding: Vec<CodingIn>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct CodingIn {
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
    /// The FHIR resource (`Observation/reading-12`).
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

/// What [`parse_bundle`] reads back.
#[derive(Debug, Clone, Default)]
pub struct ParsedBundle {
    /// Patient id (from the Patient resource).
    pub patient: Option<B256>,
    /// Device serial.
    pub serial: Option<String>,
    /// `(admittedAt, dischargedAt)`.
    pub stay: Option<(u64, u64)>,
    /// Readings with their anchoring.
    pub readings: Vec<ArchivedReading>,
    /// Charges.
    pub charges: Vec<ArchivedCharge>,
    /// The policy.
    pub policy: Option<PolicyInfo>,
    /// The bill, and whether its display amounts agree with the exact ones.
    pub bill: Option<(BillInfo, bool)>,
    /// Items that could not be read.
    pub unreadable: Vec<Unreadable>,
}

/// Why a bundle cannot be read at all.
#[derive(Debug, thiserror::Error)]
#[error("the archive's content is not a HealthSense FHIR bundle: {0}")]
pub struct BundleError(String);

fn exact_map(exts: &[Ext], url: &str) -> std::collections::HashMap<String, String> {
    exts.iter()
        .filter(|e| e.url == url)
        .flat_map(|e| e.extension.iter())
        .filter_map(|e| Some((e.url.clone(), e.value_string.clone()?)))
        .collect()
}

fn field<T: std::str::FromStr>(m: &std::collections::HashMap<String, String>, k: &str) -> Result<T, String> {
    let v = m.get(k).ok_or_else(|| format!("no {k}"))?;
    v.parse().map_err(|_| format!("{k} = {v:?} does not parse"))
}

fn close(display: f64, exact: U256) -> bool {
    let exact = exact.to_string().parse::<f64>().unwrap_or(f64::MAX) / 100.0;
    (display - exact).abs() <= exact.abs() * 1e-12 + 0.005
}

fn parse_reading(r: &ResourceIn, device_id: B256) -> Result<ArchivedReading, String> {
    let m = exact_map(&r.extension, urls::ANCHORED);
    let when = r.effective_date_time.as_deref().ok_or("no effectiveDateTime")?;
    let ts = DateTime::parse_from_rfc3339(when).map_err(|e| format!("effectiveDateTime {when:?}: {e}"))?.timestamp_millis();
    let mut reading = Reading { deviceId: device_id, seq: field(&m, "seq")?, timestamp: u64::try_from(ts).map_err(|_| "negative time")?, ..Default::default() };
    for c in &r.component {
        let code = c.code.coding.first().map(|c| c.code.as_str()).unwrap_or("");
        if code == CONSCIOUSNESS_LOINC {
            let v = c.value_codeable_concept.as_ref().and_then(|v| v.coding.first()).map(|c| c.code.as_str()).unwrap_or("");
            let at = ACVPU.iter().position(|a| *a == v).ok_or_else(|| format!("consciousness {v:?} is not ACVPU"))?;
            reading.consciousness = at as u8 + 1;
            continue;
        }
        let at = VITALS.iter().position(|v| v.loinc == code).ok_or_else(|| format!("unknown LOINC code {code:?}"))?;
        let q = c.value_quantity.as_ref().ok_or_else(|| format!("{code} has no valueQuantity"))?;
        if q.code != VITALS[at].ucum {
            return Err(format!("{code} in {:?}, expected UCUM {:?}", q.code, VITALS[at].ucum));
        }
        let scaled = q.value * f64::from(VITALS[at].scale);
        if !(1.0..=f64::from(u16::MAX)).contains(&scaled) || (scaled - scaled.round()).abs() > 1e-6 {
            return Err(format!("{code} value {} is not a device value", q.value));
        }
        let v = scaled.round() as u16;
        match at {
            0 => reading.heartRate = v,
            1 => reading.respRate = v,
            2 => reading.spo2 = v,
            3 => reading.systolic = v,
            4 => reading.diastolic = v,
            _ => reading.temperature = v,
        }
    }
    let proof = m.get("proof").ok_or("no proof")?;
    let proof = match proof.is_empty() {
        true => Vec::new(),
        false => proof.split(',').map(|h| h.parse::<B256>().map_err(|_| format!("proof hash {h:?}"))).collect::<Result<_, _>>()?,
    };
    let sig = m.get("signature").ok_or("no signature")?;
    Ok(ArchivedReading {
        reading,
        signature: alloy::hex::decode(sig).map_err(|_| "signature is not hex")?,
        batch_seq: field(&m, "batchSeq")?,
        batch_id: field(&m, "batchId")?,
        proof,
    })
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
    let mut device_id = None;
    for e in &bundle.entry {
        let r = &e.resource;
        if r.resource_type == "Device" {
            out.serial = r.identifier.iter().find(|i| i.system == "urn:healthsense:serial").map(|i| i.value.clone());
            device_id = r.id.parse::<B256>().ok();
        }
    }
    let device_id = device_id.ok_or_else(|| BundleError("no Device whose id is the 32-byte device id".into()))?;
    for e in bundle.entry {
        let r = e.resource;
        let item = format!("{}/{}", r.resource_type, r.id);
        let mut bad = |why: String| out.unreadable.push(Unreadable { item: item.clone(), why });
        match r.resource_type.as_str() {
            "Patient" => match r.identifier.iter().find(|i| i.system == urls::CHAIN_ID).map(|i| i.value.parse::<B256>()) {
                Some(Ok(p)) => out.patient = Some(p),
                _ => bad("no patient id".into()),
            },
            "Encounter" => {
                let m = exact_map(&r.extension, urls::EXACT);
                match (field(&m, "admittedAt"), field(&m, "dischargedAt")) {
                    (Ok(a), Ok(d)) => out.stay = Some((a, d)),
                    (Err(e), _) | (_, Err(e)) => bad(e),
                }
            }
            "Observation" => match parse_reading(&r, device_id) {
                Ok(a) => out.readings.push(a),
                Err(e) => bad(e),
            },
            "ChargeItem" => {
                let m = exact_map(&r.extension, urls::EXACT);
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
            "Coverage" => {
                let m = exact_map(&r.extension, urls::EXACT);
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
            "ExplanationOfBenefit" => {
                let m = exact_map(&r.extension, urls::EXACT);
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
                        let shown: Vec<f64> = r.total.iter().map(|t| t.amount.value).collect();
                        let consistent = shown.len() == 3
                            && close(shown[0], b.total)
                            && close(shown[1], b.covered)
                            && close(shown[2], b.due);
                        out.bill = Some((b, consistent));
                    }
                    Err(e) => bad(e),
                }
            }
            _ => {}
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    /// The serde rendering of an Observation the fast writer must match.
    mod reference {
        use super::super::*;
        use serde::Serialize;

        #[derive(Serialize)]
        struct Coding<'a> {
            system: &'a str,
            code: &'a str,
            #[serde(skip_serializing_if = "str::is_empty")]
            display: &'a str,
        }

        #[derive(Serialize)]
        struct Concept<'a> {
            coding: [Coding<'a>; 1],
        }

        #[derive(Serialize)]
        struct Quantity<'a> {
            value: f64,
            unit: &'a str,
            system: &'a str,
            code: &'a str,
        }

        #[derive(Serialize)]
        #[serde(rename_all = "camelCase")]
        struct ComponentOut<'a> {
            code: Concept<'a>,
            #[serde(skip_serializing_if = "Option::is_none")]
            value_quantity: Option<Quantity<'a>>,
            #[serde(skip_serializing_if = "Option::is_none")]
            value_codeable_concept: Option<Concept<'a>>,
        }

        #[derive(Serialize)]
        struct Reference<'a> {
            reference: &'a str,
        }

        #[derive(Serialize)]
        #[serde(rename_all = "camelCase")]
        pub(crate) struct ObservationOut<'a> {
            resource_type: &'static str,
            id: String,
            status: &'static str,
            category: [Concept<'a>; 1],
            code: Concept<'a>,
            subject: Reference<'a>,
            encounter: Reference<'a>,
            device: Reference<'a>,
            effective_date_time: String,
            component: Vec<ComponentOut<'a>>,
            extension: [Ext; 1],
        }

        #[derive(Serialize)]
        pub(crate) struct EntryOut<T> {
            pub(crate) resource: T,
        }

        fn ext(url: &str, value: String) -> Ext {
            Ext { url: url.into(), value_string: Some(value), extension: Vec::new() }
        }

        pub(crate) fn observation<'a>(a: &'a ArchivedReading, refs: &'a Refs) -> ObservationOut<'a> {
            let mut component = Vec::with_capacity(7);
            for (vital, value) in VITALS.iter().zip(vitals_of(&a.reading)) {
                if value == 0 {
                    continue; // not measured
                }
                component.push(ComponentOut {
                    code: Concept { coding: [Coding { system: urls::LOINC, code: vital.loinc, display: vital.display }] },
                    value_quantity: Some(Quantity {
                        value: f64::from(value) / f64::from(vital.scale),
                        unit: vital.ucum,
                        system: urls::UCUM,
                        code: vital.ucum,
                    }),
                    value_codeable_concept: None,
                });
            }
            if let Some(code) = ACVPU.get(usize::from(a.reading.consciousness).wrapping_sub(1)) {
                component.push(ComponentOut {
                    code: Concept { coding: [Coding { system: urls::LOINC, code: CONSCIOUSNESS_LOINC, display: "Level of consciousness" }] },
                    value_quantity: None,
                    value_codeable_concept: Some(Concept { coding: [Coding { system: urls::ACVPU, code, display: "" }] }),
                });
            }
            let proof = a.proof.iter().map(|h| h.to_string()).collect::<Vec<_>>().join(",");
            ObservationOut {
                resource_type: "Observation",
                id: format!("reading-{}", a.reading.seq),
                status: "final",
                category: [Concept {
                    coding: [Coding {
                        system: "http://terminology.hl7.org/CodeSystem/observation-category",
                        code: "vital-signs",
                        display: "Vital Signs",
                    }],
                }],
                code: Concept { coding: [Coding { system: urls::LOINC, code: PANEL_LOINC, display: "Vital signs panel" }] },
                subject: Reference { reference: &refs.patient },
                encounter: Reference { reference: &refs.encounter },
                device: Reference { reference: &refs.device },
                effective_date_time: iso_ms(a.reading.timestamp),
                component,
                extension: [Ext {
                    url: urls::ANCHORED.into(),
                    value_string: None,
                    extension: vec![
                        ext("seq", a.reading.seq.to_string()),
                        ext("batchSeq", a.batch_seq.to_string()),
                        ext("batchId", a.batch_id.to_string()),
                        ext("proof", proof),
                        ext("signature", alloy::hex::encode_prefixed(&a.signature)),
                    ],
                }],
            }
        }
    }

    use super::*;

    pub(crate) fn sample_stay() -> Stay {
        Stay {
            chain_id: 31337,
            contract: Address::repeat_byte(1),
            hub: Address::repeat_byte(2),
            patient: B256::repeat_byte(3),
            ward: ids::ward_id("ward-3"),
            device: ids::device_id("HS-0001"),
            serial: "HS-0001".into(),
            signer: Address::repeat_byte(4),
            admitted_at: 1_764_000_000,
            discharged_at: 1_764_090_000,
            discharge_code: 1,
            charges: vec![ChargeInfo {
                code: ids::charge_code("LAB-CBC").unwrap_or_default(),
                category: 2,
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
            created_ms: 1_764_090_001_000,
        }
    }

    #[test]
    fn observations_are_written_as_serde_would_write_them() {
        let stay = sample_stay();
        let refs = Refs { patient: "Patient/p\"q".into(), encounter: "Encounter/e".into(), device: "Device/d".into() };
        let mut fast = ObservationWriter::new(&refs);
        let cases = [
            (1, 0, 0, 0, 0, 0, 0, 0u8, 0u64, 0usize, 0usize),
            (2, 72, 16, 97, 120, 80, 3_700, 1, 1_764_000_000_123, 11, 65),
            (3, 65_535, 1, 100, 300, 20, 3_705, 5, 1_764_000_059_999, 1, 65),
            (4, 40, 0, 88, 0, 0, 3_750, 6, 1_764_000_060_000, 0, 0),
            (5, 0, 0, 0, 0, 0, 65_535, 3, 253_402_300_799_999, 2, 1),
            (6, 0, 0, 0, 0, 0, 1, 2, 9, 3, 64),
        ];
        for (seq, hr, rr, spo2, sys, dia, temp, avpu, ts, proof_len, sig_len) in cases {
            let a = ArchivedReading {
                reading: Reading {
                    deviceId: stay.device,
                    seq,
                    timestamp: ts,
                    heartRate: hr,
                    respRate: rr,
                    spo2,
                    systolic: sys,
                    diastolic: dia,
                    temperature: temp,
                    consciousness: avpu,
                },
                signature: (0..sig_len).map(|i| (i * 7) as u8).collect(),
                batch_seq: seq * 1_000_003,
                batch_id: B256::repeat_byte(seq as u8 + 0xa0),
                proof: (0..proof_len).map(|i| B256::repeat_byte((i * 13) as u8)).collect(),
            };
            let mut written = Vec::new();
            fast.write(&mut written, &a).unwrap();
            let expected = serde_json::to_vec(&reference::EntryOut { resource: reference::observation(&a, &refs) }).unwrap();
            assert_eq!(String::from_utf8_lossy(&written), String::from_utf8_lossy(&expected), "reading {seq}");
        }
    }

    #[test]
    fn bundles_read_back_what_was_written() {
        let stay = sample_stay();
        let readings: Vec<_> = (1..=3u64)
            .map(|seq| ArchivedReading {
                reading: Reading {
                    deviceId: stay.device,
                    seq,
                    timestamp: 1_764_000_000_123 + seq * 1000,
                    heartRate: 70 + seq as u16,
                    respRate: 16,
                    spo2: 97,
                    systolic: 120,
                    diastolic: 80,
                    temperature: 3_712,
                    consciousness: if seq == 2 { 0 } else { seq as u8 },
                },
                signature: vec![seq as u8; 65],
                batch_seq: 4,
                batch_id: B256::repeat_byte(9),
                proof: vec![B256::repeat_byte(seq as u8); seq as usize - 1],
            })
            .collect();
        let mut json = Vec::new();
        write_bundle(&mut json, &stay, readings.clone()).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&json).unwrap();
        assert_eq!(v["entry"].as_array().unwrap().len(), 3 + 1 + 1 + 1 + 3);
        let parsed = parse_bundle(&json).unwrap();
        assert!(parsed.unreadable.is_empty(), "{:?}", parsed.unreadable);
        assert_eq!(parsed.patient, Some(stay.patient));
        assert_eq!(parsed.stay, Some((stay.admitted_at, stay.discharged_at)));
        assert_eq!(parsed.readings, readings);
        assert_eq!(parsed.charges.len(), 1);
        assert_eq!(parsed.charges[0].charge, stay.charges[0]);
        assert!(parsed.charges[0].display_consistent);
        assert_eq!(parsed.policy, stay.policy);
        assert_eq!(parsed.bill, Some((stay.bill.clone(), true)));

        // A value that no device sends is an unreadable item, not a failed bundle.
        let text = String::from_utf8(json).unwrap().replacen("\"value\":37.12", "\"value\":37.125", 1);
        let parsed = parse_bundle(text.as_bytes()).unwrap();
        assert_eq!(parsed.readings.len(), 2);
        assert_eq!(parsed.unreadable[0].item, "Observation/reading-1");
        assert!(parse_bundle(b"{\"resourceType\":\"Patient\"}").is_err());
        assert!(parse_bundle(b"[1,2").is_err());
    }
}
