//! The device protocol: topic names, status codes and the signed vitals
//! envelope (SenML, RFC 8428), one definition shared by the oracle, the CLI's
//! simulator and the tests. The prose version is `docs/PROTOCOL.md`.

use alloy::primitives::{Address, Signature, B256};
use alloy::signers::{local::PrivateKeySigner, SignerSync};
use healthsense_abi::rules::{eip712, ids};
use healthsense_abi::Reading;
use serde::{Deserialize, Serialize};
use std::borrow::Cow;

/// Protocol version segment of every topic.
pub const VERSION: &str = "v1";
/// Retained announcement of the deployment (chain id, address, ABI).
pub const CONTRACT_TOPIC: &str = "hs/v1/contract";
/// Longest accepted device serial (topic segment).
pub const MAX_SERIAL_LEN: usize = 64;

/// Topic names of one hub.
#[derive(Debug, Clone)]
pub struct Topics {
    hub: String,
}

/// What a device topic is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceTopic {
    /// `hello`: registration handshake.
    Hello,
    /// `vitals`: signed readings.
    Vitals,
    /// `state`: battery and awake/sleep.
    State,
    /// `discharge`: the bedside discharge signal.
    Discharge,
    /// `status`: the hub's replies (written by the hub only).
    Status,
}

impl DeviceTopic {
    fn suffix(self) -> &'static str {
        match self {
            DeviceTopic::Hello => "hello",
            DeviceTopic::Vitals => "vitals",
            DeviceTopic::State => "state",
            DeviceTopic::Discharge => "discharge",
            DeviceTopic::Status => "status",
        }
    }
}

impl Topics {
    /// Topics of hub `hub` (a topic segment: letters, digits, `-`, `_`, `.`).
    pub fn new(hub: &str) -> Result<Self, String> {
        if !valid_segment(hub) {
            return Err(format!("hub name {hub:?} must be 1-64 of [A-Za-z0-9._-]"));
        }
        Ok(Self { hub: hub.to_string() })
    }

    /// The hub name.
    pub fn hub(&self) -> &str {
        &self.hub
    }

    /// `hs/v1/{hub}/dev/{serial}/{kind}`.
    pub fn device(&self, serial: &str, kind: DeviceTopic) -> String {
        format!("hs/{VERSION}/{}/dev/{serial}/{}", self.hub, kind.suffix())
    }

    /// Subscription filter for one kind of device topic of every device.
    pub fn device_filter(&self, kind: DeviceTopic) -> String {
        format!("hs/{VERSION}/{}/dev/+/{}", self.hub, kind.suffix())
    }

    /// `hs/v1/{hub}/online`: retained hub presence, with a Last Will.
    pub fn online(&self) -> String {
        format!("hs/{VERSION}/{}/online", self.hub)
    }

    /// `hs/v1/{hub}/alerts`: clinical alerts (NEWS2 escalations).
    pub fn alerts(&self) -> String {
        format!("hs/{VERSION}/{}/alerts", self.hub)
    }

    /// Splits a device topic of this hub into its serial and kind.
    pub fn parse<'a>(&self, topic: &'a str) -> Option<(&'a str, DeviceTopic)> {
        let rest = topic.strip_prefix("hs/")?.strip_prefix(VERSION)?.strip_prefix('/')?;
        let rest = rest.strip_prefix(self.hub.as_str())?.strip_prefix("/dev/")?;
        let (serial, kind) = rest.split_once('/')?;
        let kind = match kind {
            "hello" => DeviceTopic::Hello,
            "vitals" => DeviceTopic::Vitals,
            "state" => DeviceTopic::State,
            "discharge" => DeviceTopic::Discharge,
            "status" => DeviceTopic::Status,
            _ => return None,
        };
        valid_segment(serial).then_some((serial, kind))
    }
}

/// A hub name or device serial: 1-64 of `[A-Za-z0-9._-]` with at least one
/// letter or digit, so `.`, `..` and other path-like names never make a topic.
fn valid_segment(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_SERIAL_LEN
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        && s.bytes().any(|b| b.is_ascii_alphanumeric())
}

/// Parses a signed payload strictly: it must be a JSON object; an object
/// that names a key twice, at any depth, is refused (serde_json would keep
/// the last value, so `{"seq":1,"seq":2}` would read as 2 where another
/// parser reads 1); an array that is a top-level field holds only objects
/// (so neither the envelope nor a SenML record can come in serde's array
/// form; extension fields inside a record are not looked into); and, through
/// `deny_unknown_fields` on `T`, a top-level field the protocol does not
/// define is refused.
fn strict_json<'a, T: Deserialize<'a>>(payload: &'a [u8]) -> Result<T, String> {
    use serde::de::DeserializeSeed;
    let mut de = serde_json::Deserializer::from_slice(payload);
    Strict(Shape::Top).deserialize(&mut de).and_then(|()| de.end()).map_err(|e| e.to_string())?;
    serde_json::from_slice(payload).map_err(|e| e.to_string())
}

/// What [`Strict`] accepts at one place of the document.
#[derive(Clone, Copy)]
enum Shape {
    /// The payload: an object whose values are [`Shape::Field`]s.
    Top,
    /// A top-level field: anything; an array of [`Shape::Record`]s.
    Field,
    /// An object (a SenML record) whose values are anything.
    Record,
    /// Anything.
    Any,
}

/// Walks a JSON document, checking the shape rules of [`strict_json`].
#[derive(Clone, Copy)]
struct Strict(Shape);

impl Strict {
    fn leaf<E: serde::de::Error>(self, what: serde::de::Unexpected) -> Result<(), E> {
        match self.0 {
            Shape::Field | Shape::Any => Ok(()),
            Shape::Top | Shape::Record => Err(E::invalid_type(what, &self)),
        }
    }
}

impl<'de> serde::de::DeserializeSeed<'de> for Strict {
    type Value = ();
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> serde::de::Visitor<'de> for Strict {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str(match self.0 {
            Shape::Top | Shape::Record => "a JSON object",
            Shape::Field | Shape::Any => "a JSON value",
        })
    }
    fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<(), E> {
        self.leaf(serde::de::Unexpected::Bool(v))
    }
    fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<(), E> {
        self.leaf(serde::de::Unexpected::Signed(v))
    }
    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<(), E> {
        self.leaf(serde::de::Unexpected::Unsigned(v))
    }
    fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<(), E> {
        self.leaf(serde::de::Unexpected::Float(v))
    }
    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<(), E> {
        self.leaf(serde::de::Unexpected::Str(v))
    }
    fn visit_unit<E: serde::de::Error>(self) -> Result<(), E> {
        self.leaf(serde::de::Unexpected::Unit)
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        self.leaf::<A::Error>(serde::de::Unexpected::Seq)?;
        let element = Strict(if matches!(self.0, Shape::Field) { Shape::Record } else { Shape::Any });
        while seq.next_element_seed(element)?.is_some() {}
        Ok(())
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let value = Strict(if matches!(self.0, Shape::Top) { Shape::Field } else { Shape::Any });
        let mut keys: Vec<Text<'de>> = Vec::new();
        while let Some(key) = map.next_key::<Text<'de>>()? {
            if keys.contains(&key) {
                return Err(serde::de::Error::custom(format!("duplicate key {:?}", key.0)));
            }
            map.next_value_seed(value)?;
            keys.push(key);
        }
        Ok(())
    }
}

/// A JSON string borrowed from the payload unless it has escapes (serde's
/// own `Cow` always copies inside an `Option`): parsing runs for every
/// reading, and owned strings were an allocation per key and field.
#[derive(PartialEq)]
struct Text<'de>(Cow<'de, str>);

impl std::ops::Deref for Text<'_> {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Text<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> serde::de::Visitor<'de> for V<'a> {
            type Value = Text<'a>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: serde::de::Error>(self, v: &'de str) -> Result<Text<'a>, E> {
                Ok(Text(Cow::Borrowed(v)))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Text<'a>, E> {
                Ok(Text(Cow::Owned(v.to_owned())))
            }
        }
        d.deserialize_str(V(std::marker::PhantomData))
    }
}

macro_rules! status_codes {
    ($($(#[$doc:meta])* $v:ident = $code:literal, $name:literal;)*) => {
        /// Status codes on `.../status`. Lifecycle codes (1xx, 2xx) are
        /// retained; rejections (4xx, 5xx) are not, so they never replace the
        /// device's registration state.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        #[serde(into = "u16", try_from = "u16")]
        #[repr(u16)]
        pub enum Code { $($(#[$doc])* $v = $code),* }

        impl Code {
            /// All codes, ascending.
            pub const ALL: &'static [Code] = &[$(Code::$v),*];
            /// Short name, as metrics labels and logs show it.
            pub fn name(self) -> &'static str { match self { $(Code::$v => $name),* } }
        }
    };
}

status_codes! {
    /// Hello received; the hub is checking the chain.
    Initialised = 100, "initialised";
    /// Provisioned for this ward and active on chain: send vitals.
    Registered = 200, "registered";
    /// Discharge signal accepted: the hub discharges the patient and archives the stay.
    Discharging = 202, "discharging";
    /// Not JSON, or not the envelope's shape.
    Malformed = 400, "malformed";
    /// The signature does not parse, is not low-s, or recovers to nothing.
    BadSignature = 401, "bad_signature";
    /// The signature is valid but not by the device's registered signer.
    WrongSigner = 403, "wrong_signer";
    /// No such device on chain.
    UnknownDevice = 404, "unknown_device";
    /// The sequence number is not after the last stored one (replay or duplicate).
    Replayed = 409, "replayed";
    /// The device is revoked on chain.
    Revoked = 410, "revoked";
    /// Provisioned but not yet active: send hello first.
    NotRegistered = 412, "not_registered";
    /// The payload exceeds the hub's limit.
    Oversized = 413, "oversized";
    /// A required field is missing.
    MissingField = 420, "missing_field";
    /// The device is provisioned for another ward.
    WrongWard = 421, "wrong_ward";
    /// A value is outside its physiological or clock range.
    OutOfRange = 422, "out_of_range";
    /// A discharge signal from a device with no admitted patient (or older than the admission).
    NoPatient = 424, "no_patient";
    /// The chain could not be reached; try again later.
    Unavailable = 503, "unavailable";
}

impl From<Code> for u16 {
    fn from(c: Code) -> u16 {
        c as u16
    }
}

impl TryFrom<u16> for Code {
    type Error = String;
    fn try_from(v: u16) -> Result<Self, String> {
        Code::ALL.iter().copied().find(|c| *c as u16 == v).ok_or_else(|| format!("unknown status code {v}"))
    }
}

/// A message on `.../status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusReply {
    /// The code.
    pub code: Code,
    /// Its name.
    pub status: String,
    /// The sequence number of the rejected reading, if any.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub seq: Option<u64>,
    /// Why, in words.
    pub reason: String,
}

impl StatusReply {
    /// A reply with `code` and `reason`.
    pub fn new(code: Code, seq: Option<u64>, reason: impl Into<String>) -> Self {
        Self { code, status: code.name().to_string(), seq, reason: reason.into() }
    }
}

/// A rejected message: its code and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// The status code sent back.
    pub code: Code,
    /// What was wrong.
    pub reason: String,
    /// The reading's sequence number, when it could be read.
    pub seq: Option<u64>,
}

impl Rejection {
    fn new(code: Code, reason: impl Into<String>) -> Self {
        Self { code, reason: reason.into(), seq: None }
    }
}

/// The vitals envelope: a SenML pack plus the sequence number and the
/// device's EIP-712 signature of the [`Reading`] those values make.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VitalsEnvelope {
    /// Per-device sequence number, strictly increasing.
    pub seq: u64,
    /// 65-byte `r‖s‖v` signature, `0x` hex.
    pub sig: String,
    /// The SenML pack.
    pub senml: Vec<SenmlRecord>,
}

/// One SenML record (the fields this protocol uses).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SenmlRecord {
    /// Base name: `urn:dev:hs:{serial}:` on the first record.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bn: Option<String>,
    /// Base time, seconds since the Unix epoch (ms precision).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bt: Option<f64>,
    /// Name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub n: Option<String>,
    /// Unit.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub u: Option<String>,
    /// Numeric value.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub v: Option<f64>,
    /// String value.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vs: Option<String>,
}

/// One measured quantity: SenML name, unit, scale into the `Reading` field
/// and its plausible range (in the field's units).
struct Vital {
    name: &'static str,
    unit: &'static str,
    scale: f64,
    min: u16,
    max: u16,
}

/// The vitals and their plausible ranges: a reading outside them is a sensor
/// fault or a forgery, never stored.
const VITALS: [Vital; 6] = [
    Vital { name: "heartRate", unit: "beat/min", scale: 1.0, min: 20, max: 300 },
    Vital { name: "respRate", unit: "1/min", scale: 1.0, min: 2, max: 80 },
    Vital { name: "spo2", unit: "%", scale: 1.0, min: 50, max: 100 },
    Vital { name: "systolic", unit: "mm[Hg]", scale: 1.0, min: 40, max: 300 },
    Vital { name: "diastolic", unit: "mm[Hg]", scale: 1.0, min: 20, max: 200 },
    Vital { name: "temperature", unit: "Cel", scale: 100.0, min: 2_500, max: 4_500 },
];

/// ACVPU letters, code 1..=5.
const ACVPU: [&str; 5] = ["A", "C", "V", "P", "U"];

/// SenML base name of a device.
pub fn base_name(serial: &str) -> String {
    format!("urn:dev:hs:{serial}:")
}

/// Clock limits for reading timestamps.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    /// Hub time, ms since the Unix epoch.
    pub now_ms: u64,
    /// How far ahead of the hub a device clock may run.
    pub max_future_ms: u64,
    /// How old a reading may be (devices buffer while asleep or offline).
    pub max_age_ms: u64,
}

/// A parsed, not yet verified, vitals message.
#[derive(Debug, Clone)]
pub struct SignedReading {
    /// The reading the device signed.
    pub reading: Reading,
    /// Its signature.
    pub signature: Signature,
}

fn field(v: f64, vital: &Vital) -> Result<u16, Rejection> {
    let scaled = (v * vital.scale).round();
    if !scaled.is_finite() || scaled < vital.min as f64 || scaled > vital.max as f64 {
        return Err(Rejection::new(
            Code::OutOfRange,
            format!("{} {v} {} is outside {}..{}", vital.name, vital.unit, vital.min as f64 / vital.scale, vital.max as f64 / vital.scale),
        ));
    }
    Ok(scaled as u16)
}

/// Parses and range-checks a vitals payload from device `serial`. It does not
/// check the signature (see [`crate::devices`]).
pub fn parse_vitals(serial: &str, payload: &[u8], max_payload: usize, clock: Clock) -> Result<SignedReading, Rejection> {
    if payload.len() > max_payload {
        return Err(Rejection::new(Code::Oversized, format!("{} bytes, limit {max_payload}", payload.len())));
    }
    // Every field optional here so that a missing one answers 420, not 400.
    // Strings are borrowed from the payload where they have no escapes: this
    // runs for every reading.
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Wire<'a> {
        seq: Option<u64>,
        #[serde(borrow)]
        sig: Option<Text<'a>>,
        #[serde(borrow)]
        senml: Option<Vec<Record<'a>>>,
    }
    let wire: Wire = strict_json(payload).map_err(|e| Rejection::new(Code::Malformed, format!("bad envelope: {e}")))?;
    let missing = |key: &str| Rejection::new(Code::MissingField, format!("missing {key:?}"));
    let seq = wire.seq.ok_or_else(|| missing("seq"))?;
    let sig = wire.sig.ok_or_else(|| missing("sig"))?;
    let senml = wire.senml.ok_or_else(|| missing("senml"))?;
    let with_seq = |mut r: Rejection| {
        r.seq = Some(seq);
        r
    };
    let reading = senml_reading(serial, seq, &senml, clock).map_err(with_seq)?;
    let signature = parse_signature(&sig).map_err(with_seq)?;
    Ok(SignedReading { reading, signature })
}

/// A [`SenmlRecord`] as the hub reads it, its strings borrowed from the
/// payload. Fields this protocol does not use are ignored (SenML's rule).
#[derive(Deserialize)]
struct Record<'a> {
    #[serde(borrow)]
    bn: Option<Text<'a>>,
    bt: Option<f64>,
    #[serde(borrow)]
    n: Option<Text<'a>>,
    #[serde(borrow)]
    u: Option<Text<'a>>,
    v: Option<f64>,
    #[serde(borrow)]
    vs: Option<Text<'a>>,
}

/// Whether `bn` is [`base_name`]`(serial)`, without building it.
fn is_base_name(bn: &str, serial: &str) -> bool {
    bn.strip_prefix("urn:dev:hs:").and_then(|rest| rest.strip_suffix(':')) == Some(serial)
}

fn senml_reading(serial: &str, seq: u64, pack: &[Record<'_>], clock: Clock) -> Result<Reading, Rejection> {
    let first = pack.first().ok_or_else(|| Rejection::new(Code::MissingField, "empty SenML pack"))?;
    let bn = first.bn.as_deref().ok_or_else(|| Rejection::new(Code::MissingField, "missing bn"))?;
    if !is_base_name(bn, serial) {
        return Err(Rejection::new(Code::Malformed, format!("bn {bn:?} is not this device's {:?}", base_name(serial))));
    }
    let bt = first.bt.ok_or_else(|| Rejection::new(Code::MissingField, "missing bt"))?;
    let ts = (bt * 1000.0).round();
    if !ts.is_finite() || ts < 0.0 {
        return Err(Rejection::new(Code::OutOfRange, format!("bt {bt} is not a time")));
    }
    let ts = ts as u64;
    if ts > clock.now_ms.saturating_add(clock.max_future_ms) || ts.saturating_add(clock.max_age_ms) < clock.now_ms {
        return Err(Rejection::new(Code::OutOfRange, format!("timestamp {ts} ms is outside the hub's clock window")));
    }
    let mut values = [None::<u16>; 6];
    let mut consciousness = 0u8;
    for (i, rec) in pack.iter().enumerate() {
        if i > 0 && (rec.bn.is_some() || rec.bt.is_some()) {
            return Err(Rejection::new(Code::Malformed, "bn/bt only on the first record"));
        }
        let name = rec.n.as_deref().ok_or_else(|| Rejection::new(Code::MissingField, format!("record {i} has no n")))?;
        if name == "consciousness" {
            let letter = rec.vs.as_deref().ok_or_else(|| Rejection::new(Code::MissingField, "consciousness needs vs"))?;
            let code = ACVPU.iter().position(|l| *l == letter).ok_or_else(|| {
                Rejection::new(Code::OutOfRange, format!("consciousness {letter:?} is not one of A C V P U"))
            })?;
            if consciousness != 0 {
                return Err(Rejection::new(Code::Malformed, "consciousness given twice"));
            }
            consciousness = code as u8 + 1;
            continue;
        }
        let k = VITALS
            .iter()
            .position(|v| v.name == name)
            .ok_or_else(|| Rejection::new(Code::Malformed, format!("unknown vital {name:?}")))?;
        let vital = &VITALS[k];
        if rec.u.as_deref() != Some(vital.unit) {
            return Err(Rejection::new(Code::Malformed, format!("{name} must be in {:?}", vital.unit)));
        }
        let v = rec.v.ok_or_else(|| Rejection::new(Code::MissingField, format!("{name} has no v")))?;
        if values[k].replace(field(v, vital)?).is_some() {
            return Err(Rejection::new(Code::Malformed, format!("{name} given twice")));
        }
    }
    if values.iter().all(Option::is_none) && consciousness == 0 {
        return Err(Rejection::new(Code::MissingField, "no vitals in the pack"));
    }
    if let (Some(sys), Some(dia)) = (values[3], values[4]) {
        if dia >= sys {
            return Err(Rejection::new(Code::OutOfRange, format!("diastolic {dia} is not below systolic {sys}")));
        }
    }
    let [hr, rr, spo2, sys, dia, temp] = values.map(|v| v.unwrap_or(0));
    Ok(Reading {
        deviceId: ids::device_id(serial),
        seq,
        timestamp: ts,
        heartRate: hr,
        respRate: rr,
        spo2,
        systolic: sys,
        diastolic: dia,
        temperature: temp,
        consciousness,
    })
}

fn parse_signature(hex: &str) -> Result<Signature, Rejection> {
    let raw = hex.strip_prefix("0x").unwrap_or(hex);
    let mut bytes = [0u8; 65];
    if raw.len() != 130 {
        return Err(Rejection::new(Code::BadSignature, "sig must be 65 bytes of hex"));
    }
    alloy::hex::decode_to_slice(raw, &mut bytes)
        .map_err(|_| Rejection::new(Code::BadSignature, "sig is not hex"))?;
    if !matches!(bytes[64], 27 | 28) {
        return Err(Rejection::new(Code::BadSignature, "sig v must be 27 or 28"));
    }
    let sig = Signature::try_from(&bytes[..]).map_err(|_| Rejection::new(Code::BadSignature, "sig r/s out of range"))?;
    // EIP-2: the contract (and ecrecover users generally) accept low s only.
    if sig.s() > SECP256K1_HALF_N {
        return Err(Rejection::new(Code::BadSignature, "sig s is not in the lower half order (EIP-2)"));
    }
    Ok(sig)
}

/// `n / 2` of secp256k1: the largest `s` a signature may carry.
const SECP256K1_HALF_N: alloy::primitives::U256 =
    alloy::primitives::uint!(0x7FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF5D576E7357A4501DDFE92F46681B20A0_U256);

/// Builds the SenML pack of a reading (device side).
pub fn senml_pack(serial: &str, r: &Reading) -> Vec<SenmlRecord> {
    let mut pack = Vec::with_capacity(7);
    let fields = [r.heartRate, r.respRate, r.spo2, r.systolic, r.diastolic, r.temperature];
    for (vital, value) in VITALS.iter().zip(fields) {
        if value == 0 {
            continue;
        }
        pack.push(SenmlRecord {
            n: Some(vital.name.to_string()),
            u: Some(vital.unit.to_string()),
            v: Some(value as f64 / vital.scale),
            ..Default::default()
        });
    }
    if (1..=5).contains(&r.consciousness) {
        pack.push(SenmlRecord {
            n: Some("consciousness".into()),
            vs: Some(ACVPU[r.consciousness as usize - 1].to_string()),
            ..Default::default()
        });
    }
    if let Some(first) = pack.first_mut() {
        first.bn = Some(base_name(serial));
        first.bt = Some(r.timestamp as f64 / 1000.0);
    }
    pack
}

/// Signs a reading as its device would and returns the vitals payload.
/// `domain` is the deployment's EIP-712 domain separator.
pub fn sign_vitals(
    key: &PrivateKeySigner,
    domain: B256,
    serial: &str,
    r: &Reading,
) -> Result<Vec<u8>, alloy::signers::Error> {
    let digest = eip712::reading_digest(domain, r);
    let sig = key.sign_hash_sync(&digest)?.as_bytes();
    let env = VitalsEnvelope { seq: r.seq, sig: alloy::hex::encode_prefixed(sig), senml: senml_pack(serial, r) };
    Ok(serde_json::to_vec(&env).unwrap_or_default())
}

/// Serde for the addresses the hub and the CLI write: EIP-55 checksummed
/// text (alloy's own serde writes lowercase), read in any case.
pub mod eip55 {
    use alloy::primitives::Address;
    use serde::{Deserialize, Deserializer, Serializer};

    /// Writes `address` EIP-55 checksummed.
    pub fn serialize<S: Serializer>(address: &Address, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(address)
    }

    /// Reads an address in any case.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Address, D::Error> {
        Address::deserialize(d)
    }

    /// The same for an optional address.
    pub mod option {
        use alloy::primitives::Address;
        use serde::{Deserialize, Deserializer, Serializer};

        /// Writes `Some(address)` EIP-55 checksummed, `None` as null.
        pub fn serialize<S: Serializer>(address: &Option<Address>, s: S) -> Result<S::Ok, S::Error> {
            match address {
                Some(a) => s.collect_str(a),
                None => s.serialize_none(),
            }
        }

        /// Reads an optional address in any case.
        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Address>, D::Error> {
            Option::<Address>::deserialize(d)
        }
    }
}

/// The hello payload on `.../hello`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Hello {
    /// The device's signing address (what the admin provisioned).
    #[serde(with = "eip55")]
    pub signer: Address,
    /// Firmware version, for the log.
    #[serde(default)]
    pub firmware: Option<String>,
}

/// The retained hub presence on `.../online` (the Last Will says offline).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Presence {
    /// Whether the hub is up.
    pub online: bool,
    /// The hub's chain address, when online.
    #[serde(default, skip_serializing_if = "Option::is_none", with = "eip55::option")]
    pub hub: Option<Address>,
    /// The ward name, when online.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ward: Option<String>,
}

/// The retained announcement on [`CONTRACT_TOPIC`]: where the contract is,
/// where its ABI can be fetched, and what devices sign under.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Announcement {
    /// Chain id.
    pub chain_id: u64,
    /// Contract address, EIP-55 checksummed.
    #[serde(with = "eip55")]
    pub address: Address,
    /// The IPFS CID of the JSON ABI (`abi/HealthSense.json`, added with the
    /// archive's CID options), once the hub has pinned it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub abi_cid: Option<String>,
    /// The REST API's URL of the same JSON (`GET /api/v1/abi`), when the API is on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub abi_url: Option<String>,
    /// A further location the operator publishes the ABI at (`chain.abi`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub abi: Option<String>,
    /// The EIP-712 domain separator devices sign under.
    pub domain_separator: B256,
}

/// Device state on `.../state`: a SenML pack of `battery` (`%EL`) and
/// `mode` (`vs`: `awake` or `sleep`).
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceState {
    /// Remaining battery, percent.
    pub battery: Option<f64>,
    /// Whether the device is asleep.
    pub asleep: Option<bool>,
}

/// Parses a state pack.
pub fn parse_state(payload: &[u8], max_payload: usize) -> Result<DeviceState, Rejection> {
    if payload.len() > max_payload {
        return Err(Rejection::new(Code::Oversized, format!("{} bytes, limit {max_payload}", payload.len())));
    }
    let pack: Vec<SenmlRecord> =
        serde_json::from_slice(payload).map_err(|e| Rejection::new(Code::Malformed, format!("not a SenML pack: {e}")))?;
    let mut state = DeviceState { battery: None, asleep: None };
    for rec in pack {
        match (rec.n.as_deref(), rec.u.as_deref()) {
            (Some("battery"), Some("%EL")) => {
                let v = rec.v.filter(|v| (0.0..=100.0).contains(v));
                state.battery = Some(v.ok_or_else(|| Rejection::new(Code::OutOfRange, "battery must be 0..100 %EL"))?);
            }
            (Some("mode"), _) => {
                state.asleep = Some(match rec.vs.as_deref() {
                    Some("awake") => false,
                    Some("sleep") => true,
                    _ => return Err(Rejection::new(Code::OutOfRange, "mode must be awake or sleep")),
                });
            }
            _ => return Err(Rejection::new(Code::Malformed, "state records are battery (%EL) and mode")),
        }
    }
    Ok(state)
}

/// The device state pack (device side).
pub fn state_pack(serial: &str, battery: f64, asleep: bool) -> Vec<u8> {
    let pack = [
        SenmlRecord {
            bn: Some(base_name(serial)),
            n: Some("battery".into()),
            u: Some("%EL".into()),
            v: Some(battery),
            ..Default::default()
        },
        SenmlRecord { n: Some("mode".into()), vs: Some(if asleep { "sleep" } else { "awake" }.into()), ..Default::default() },
    ];
    serde_json::to_vec(&pack).unwrap_or_default()
}

alloy::sol! {
    /// The bedside discharge signal a device signs (EIP-712, same domain as
    /// readings): the device and a disposition code, stamped so an old
    /// signal cannot discharge a later stay.
    #[derive(Debug, PartialEq, Eq)]
    struct Discharge {
        bytes32 deviceId;
        uint64 timestamp;
        uint16 code;
    }
}

/// Discharge disposition codes a device may send (docs/PROTOCOL.md).
pub const DISCHARGE_CODES: [(u16, &str); 5] =
    [(1, "home"), (2, "transfer to another facility"), (3, "left against advice"), (4, "deceased"), (5, "other")];

/// The discharge envelope on `.../discharge`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DischargeEnvelope {
    /// Disposition code, one of [`DISCHARGE_CODES`].
    pub code: u16,
    /// When the signal was given, ms since the Unix epoch.
    pub timestamp: u64,
    /// `0x`-hex 65-byte signature of the [`Discharge`] typed data.
    pub sig: String,
}

/// The digest a device signs for a discharge.
pub fn discharge_digest(domain: B256, d: &Discharge) -> B256 {
    use alloy::sol_types::SolStruct;
    let mut buf = [0u8; 66];
    buf[0] = 0x19;
    buf[1] = 0x01;
    buf[2..34].copy_from_slice(domain.as_slice());
    buf[34..].copy_from_slice(d.eip712_hash_struct().as_slice());
    alloy::primitives::keccak256(buf)
}

/// A signed discharge payload for device `serial`.
pub fn sign_discharge(
    key: &PrivateKeySigner,
    domain: B256,
    serial: &str,
    code: u16,
    timestamp: u64,
) -> Result<Vec<u8>, alloy::signers::Error> {
    let d = Discharge { deviceId: ids::device_id(serial), timestamp, code };
    let sig = key.sign_hash_sync(&discharge_digest(domain, &d))?.as_bytes();
    let env = DischargeEnvelope { code, timestamp, sig: alloy::hex::encode_prefixed(sig) };
    Ok(serde_json::to_vec(&env).unwrap_or_default())
}

/// Reads a discharge signal and recovers its signer (checked by the caller
/// against the device's registered signer).
pub fn parse_discharge(serial: &str, payload: &[u8], max_payload: usize, domain: B256) -> Result<(Discharge, Address), Rejection> {
    if payload.len() > max_payload {
        return Err(Rejection::new(Code::Oversized, format!("{} bytes, limit {max_payload}", payload.len())));
    }
    let env: DischargeEnvelope = strict_json(payload)
        .map_err(|e| Rejection::new(Code::Malformed, format!("not a discharge envelope {{code, timestamp, sig}}: {e}")))?;
    if !DISCHARGE_CODES.iter().any(|(c, _)| *c == env.code) {
        return Err(Rejection::new(Code::OutOfRange, format!("discharge code {} is not one of 1..5", env.code)));
    }
    let d = Discharge { deviceId: ids::device_id(serial), timestamp: env.timestamp, code: env.code };
    let raw = alloy::hex::decode(&env.sig).map_err(|_| Rejection::new(Code::BadSignature, "sig is not hex"))?;
    let sig = Signature::from_raw(&raw).map_err(|_| Rejection::new(Code::BadSignature, "sig is not 65 bytes r‖s‖v"))?;
    let signer = sig
        .recover_address_from_prehash(&discharge_digest(domain, &d))
        .map_err(|_| Rejection::new(Code::BadSignature, "signature recovers to no key"))?;
    Ok((d, signer))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn clock(now_ms: u64) -> Clock {
        Clock { now_ms, max_future_ms: 300_000, max_age_ms: 86_400_000 }
    }

    fn sample(serial: &str) -> Reading {
        Reading {
            deviceId: ids::device_id(serial),
            seq: 7,
            timestamp: 1_764_000_000_123,
            heartRate: 72,
            respRate: 16,
            spo2: 97,
            systolic: 121,
            diastolic: 79,
            temperature: 3_705,
            consciousness: 1,
        }
    }

    #[test]
    fn topics_round_trip_and_reject_foreign_hubs() {
        let t = Topics::new("ward-3").unwrap();
        let topic = t.device("HS-0001", DeviceTopic::Vitals);
        assert_eq!(topic, "hs/v1/ward-3/dev/HS-0001/vitals");
        assert_eq!(t.parse(&topic), Some(("HS-0001", DeviceTopic::Vitals)));
        assert_eq!(t.parse("hs/v1/ward-4/dev/HS-0001/vitals"), None);
        assert_eq!(t.parse("hs/v1/ward-3/dev/a+b/vitals"), None);
        assert_eq!(t.parse("hs/v1/ward-3/dev/HS-1/other"), None);
        assert!(Topics::new("ward/3").is_err());
        // Path-like and punctuation-only serials and hub names make no topic.
        for bad in [".", "..", "...", "-", "_.-"] {
            assert_eq!(t.parse(&format!("hs/v1/ward-3/dev/{bad}/hello")), None, "{bad}");
            assert!(Topics::new(bad).is_err(), "{bad}");
        }
        assert_eq!(t.parse("hs/v1/ward-3/dev/.a/hello"), Some((".a", DeviceTopic::Hello)));
    }

    #[test]
    fn signed_payloads_are_parsed_strictly() {
        let key = PrivateKeySigner::random();
        let r = sample("HS-1");
        let good = String::from_utf8(sign_vitals(&key, B256::ZERO, "HS-1", &r).unwrap()).unwrap();
        let c = clock(r.timestamp);
        let refused = |p: &str| {
            let err = parse_vitals("HS-1", p.as_bytes(), 2048, c).unwrap_err();
            assert_eq!(err.code, Code::Malformed, "{p}: {}", err.reason);
            err.reason
        };
        assert!(good.starts_with("{\"seq\":7,"), "{good}");
        // The same key twice, even with the same value; at the top and in a record.
        assert!(refused(&good.replacen("{\"seq\":7,", "{\"seq\":7,\"seq\":7,", 1)).contains("duplicate key \"seq\""));
        assert!(refused(&good.replacen("{\"seq\":7,", "{\"seq\":8,\"seq\":7,", 1)).contains("duplicate"));
        assert!(refused(&good.replacen("\"n\":\"heartRate\"", "\"n\":\"heartRate\",\"n\":\"heartRate\"", 1)).contains("duplicate"));
        // An unknown top-level field; the envelope or a record in array form.
        assert!(refused(&good.replacen("{\"seq\":7,", "{\"seq\":7,\"note\":1,", 1)).contains("unknown field"));
        refused("[7,\"0x00\",[]]");
        let v: serde_json::Value = serde_json::from_str(&good).unwrap();
        let as_array = format!("{{\"seq\":7,\"sig\":{},\"senml\":[[\"urn:dev:hs:HS-1:\",1764000000.123]]}}", v["sig"]);
        refused(&as_array);
        refused(&format!("{good} {{}}"));
        // Escaped strings read as their text: a key spelled with an escape is
        // still the same key, a name with one still the vital.
        assert!(refused(&good.replacen("{\"seq\":7,", "{\"seq\":7,\"s\\u0065q\":7,", 1)).contains("duplicate"));
        let escaped = good.replacen("\"n\":\"heartRate\"", "\"n\":\"heart\\u0052ate\"", 1);
        assert_ne!(escaped, good);
        assert_eq!(parse_vitals("HS-1", escaped.as_bytes(), 2048, c).unwrap().reading, r);
        // SenML's own rule stays: a record field this protocol does not use is ignored.
        let ext = good.replacen("\"n\":\"heartRate\"", "\"n\":\"heartRate\",\"x-note\":[1,{\"a\":2}]", 1);
        assert_eq!(parse_vitals("HS-1", ext.as_bytes(), 2048, c).unwrap().reading, r);
        // A discharge signal likewise.
        let d = String::from_utf8(sign_discharge(&key, B256::ZERO, "HS-1", 1, 5).unwrap()).unwrap();
        let twice = d.replacen("{\"code\":1,", "{\"code\":1,\"code\":1,", 1);
        assert_eq!(parse_discharge("HS-1", twice.as_bytes(), 2048, B256::ZERO).unwrap_err().code, Code::Malformed);
        assert!(parse_discharge("HS-1", d.as_bytes(), 2048, B256::ZERO).is_ok());
    }

    #[test]
    fn pack_round_trips_to_the_same_reading() {
        let key = PrivateKeySigner::random();
        let r = sample("HS-0001");
        let payload = sign_vitals(&key, B256::repeat_byte(1), "HS-0001", &r).unwrap();
        let parsed = parse_vitals("HS-0001", &payload, 2048, clock(r.timestamp)).unwrap();
        assert_eq!(parsed.reading, r);
        let digest = eip712::reading_digest(B256::repeat_byte(1), &r);
        assert_eq!(parsed.signature.recover_address_from_prehash(&digest).unwrap(), key.address());
    }

    #[test]
    fn rejections_carry_their_codes() {
        let key = PrivateKeySigner::random();
        let r = sample("HS-1");
        let good = sign_vitals(&key, B256::ZERO, "HS-1", &r).unwrap();
        let c = clock(r.timestamp);
        let code = |p: &[u8]| parse_vitals("HS-1", p, 2048, c).unwrap_err().code;
        assert_eq!(code(b"{nope"), Code::Malformed);
        assert_eq!(code(b"[1,2]"), Code::Malformed);
        assert_eq!(code(br#"{"seq":1,"senml":[]}"#), Code::MissingField);
        assert_eq!(code(&vec![b' '; 4096]), Code::Oversized);
        // Another device's payload on this device's topic.
        assert_eq!(parse_vitals("HS-2", &good, 2048, c).unwrap_err().code, Code::Malformed);
        let mut v: serde_json::Value = serde_json::from_slice(&good).unwrap();
        v["senml"][0]["v"] = 400.0.into();
        assert_eq!(code(&serde_json::to_vec(&v).unwrap()), Code::OutOfRange);
        let mut v: serde_json::Value = serde_json::from_slice(&good).unwrap();
        v["sig"] = "0x1234".into();
        assert_eq!(code(&serde_json::to_vec(&v).unwrap()), Code::BadSignature);
        let late = clock(r.timestamp + 2 * 86_400_000);
        assert_eq!(parse_vitals("HS-1", &good, 2048, late).unwrap_err().code, Code::OutOfRange);
    }

    #[test]
    fn codes_serialize_as_numbers_and_state_parses() {
        let reply = StatusReply::new(Code::Replayed, Some(3), "seq 3 is not after 9");
        let json = serde_json::to_string(&reply).unwrap();
        assert!(json.contains("\"code\":409"), "{json}");
        let back: StatusReply = serde_json::from_str(&json).unwrap();
        assert_eq!(back, reply);
        let s = parse_state(&state_pack("HS-1", 83.0, true), 1024).unwrap();
        assert_eq!(s, DeviceState { battery: Some(83.0), asleep: Some(true) });
        assert_eq!(parse_state(b"[{\"n\":\"battery\",\"u\":\"%EL\",\"v\":140}]", 1024).unwrap_err().code, Code::OutOfRange);
    }

    #[test]
    fn discharge_signals_round_trip_and_bad_ones_are_refused() {
        let key = PrivateKeySigner::random();
        let domain = B256::repeat_byte(3);
        let payload = sign_discharge(&key, domain, "HS-1", 1, 1_764_000_000_000).unwrap();
        let (d, signer) = parse_discharge("HS-1", &payload, 2_048, domain).unwrap();
        assert_eq!((d.code, d.timestamp, signer), (1, 1_764_000_000_000, key.address()));
        // Replayed on another device's topic, it recovers to some other key.
        let (_, other) = parse_discharge("HS-2", &payload, 2_048, domain).unwrap();
        assert_ne!(other, key.address());
        let bad_code = sign_discharge(&key, domain, "HS-1", 9, 1).unwrap();
        assert_eq!(parse_discharge("HS-1", &bad_code, 2_048, domain).unwrap_err().code, Code::OutOfRange);
        assert_eq!(parse_discharge("HS-1", b"{}", 2_048, domain).unwrap_err().code, Code::Malformed);
        assert_eq!(parse_discharge("HS-1", &payload, 10, domain).unwrap_err().code, Code::Oversized);
        let text = String::from_utf8(payload).unwrap().replace("\"sig\":\"0x", "\"sig\":\"0xzz");
        assert_eq!(parse_discharge("HS-1", text.as_bytes(), 2_048, domain).unwrap_err().code, Code::BadSignature);
    }
}
