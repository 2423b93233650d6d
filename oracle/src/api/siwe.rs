//! Sign-In with Ethereum (EIP-4361) messages: build, parse, check.
//!
//! A small module on alloy's primitives rather than the `siwe` crate: the
//! crate brings its own `time`, `iri-string` and `http` stacks and an
//! optional ethers dependency for EIP-1271 next to the alloy 1.x this
//! workspace already uses for every signature, for a message format of a
//! dozen lines. What is not supported: EIP-1271 (contract wallet) signatures.
//!
//! Parsing is strict: a message is accepted only if rendering the parsed
//! fields gives back exactly the signed text, so no line can hide in it.

use alloy::primitives::{Address, Signature};

/// The header line's fixed text.
const PREAMBLE: &str = " wants you to sign in with your Ethereum account:";

/// An EIP-4361 message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Optional URI scheme before the domain (`https`).
    pub scheme: Option<String>,
    /// The authority asking for the sign-in (`host[:port]`).
    pub domain: String,
    /// The signer, EIP-55 checksummed in the text.
    pub address: Address,
    /// Human-readable statement.
    pub statement: Option<String>,
    /// The resource the session is for.
    pub uri: String,
    /// Always `1`.
    pub version: String,
    /// EIP-155 chain id.
    pub chain_id: u64,
    /// The server's one-time challenge (at least 8 alphanumerics).
    pub nonce: String,
    /// RFC 3339 time of issue.
    pub issued_at: String,
    /// RFC 3339 time after which the message is void.
    pub expiration_time: Option<String>,
    /// RFC 3339 time before which the message is not yet valid.
    pub not_before: Option<String>,
    /// Request id.
    pub request_id: Option<String>,
    /// Resources (URIs) the sign-in names.
    pub resources: Vec<String>,
}

impl std::fmt::Display for Message {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let Some(s) = &self.scheme {
            write!(f, "{s}://")?;
        }
        write!(f, "{}{PREAMBLE}\n{}\n\n", self.domain, self.address.to_checksum(None))?;
        if let Some(s) = &self.statement {
            writeln!(f, "{s}")?;
        }
        write!(
            f,
            "\nURI: {}\nVersion: {}\nChain ID: {}\nNonce: {}\nIssued At: {}",
            self.uri, self.version, self.chain_id, self.nonce, self.issued_at
        )?;
        for (key, value) in
            [("Expiration Time", &self.expiration_time), ("Not Before", &self.not_before), ("Request ID", &self.request_id)]
        {
            if let Some(v) = value {
                write!(f, "\n{key}: {v}")?;
            }
        }
        if !self.resources.is_empty() {
            write!(f, "\nResources:")?;
            for r in &self.resources {
                write!(f, "\n- {r}")?;
            }
        }
        Ok(())
    }
}

fn field<'a>(line: Option<&'a str>, key: &str) -> Result<&'a str, String> {
    line.and_then(|l| l.strip_prefix(key)).and_then(|l| l.strip_prefix(": ")).ok_or_else(|| format!("expected the {key:?} line"))
}

impl Message {
    /// Parses the text of a message; fails unless it is exactly the
    /// canonical rendering of its fields.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut lines = text.split('\n').peekable();
        let header = lines.next().unwrap_or_default();
        let origin = header.strip_suffix(PREAMBLE).ok_or("the first line must end with the EIP-4361 preamble")?;
        let (scheme, domain) = match origin.split_once("://") {
            Some((s, d)) => (Some(s.to_string()), d.to_string()),
            None => (None, origin.to_string()),
        };
        if domain.is_empty() || domain.contains(char::is_whitespace) {
            return Err("bad domain".into());
        }
        let address: Address = lines.next().unwrap_or_default().parse().map_err(|_| "bad address line")?;
        if lines.next() != Some("") {
            return Err("expected an empty line after the address".into());
        }
        let statement = match lines.next() {
            Some("") => None,
            Some(s) => {
                if lines.next() != Some("") {
                    return Err("expected an empty line after the statement".into());
                }
                Some(s.to_string())
            }
            None => return Err("message ends after the address".into()),
        };
        let uri = field(lines.next(), "URI")?.to_string();
        let version = field(lines.next(), "Version")?.to_string();
        let chain_id = field(lines.next(), "Chain ID")?.parse().map_err(|_| "bad chain id")?;
        let nonce = field(lines.next(), "Nonce")?.to_string();
        let issued_at = field(lines.next(), "Issued At")?.to_string();
        let mut optional = |key: &str| match lines.peek().and_then(|l| l.strip_prefix(key)).and_then(|l| l.strip_prefix(": ")) {
            Some(v) => {
                let v = v.to_string();
                lines.next();
                Some(v)
            }
            None => None,
        };
        let expiration_time = optional("Expiration Time");
        let not_before = optional("Not Before");
        let request_id = optional("Request ID");
        let mut resources = Vec::new();
        if lines.peek() == Some(&"Resources:") {
            lines.next();
            for l in lines.by_ref() {
                resources.push(l.strip_prefix("- ").ok_or("resources are \"- URI\" lines")?.to_string());
            }
        }
        if lines.next().is_some() {
            return Err("unexpected lines at the end".into());
        }
        let m = Message {
            scheme,
            domain,
            address,
            statement,
            uri,
            version,
            chain_id,
            nonce,
            issued_at,
            expiration_time,
            not_before,
            request_id,
            resources,
        };
        if m.version != "1" {
            return Err(format!("version {:?}: only version 1 exists", m.version));
        }
        if m.nonce.len() < 8 || !m.nonce.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err("the nonce must be at least 8 letters or digits".into());
        }
        for t in [Some(&m.issued_at), m.expiration_time.as_ref(), m.not_before.as_ref()].into_iter().flatten() {
            parse_rfc3339_ms(t).ok_or_else(|| format!("{t:?} is not an RFC 3339 time"))?;
        }
        if m.to_string() != text {
            return Err("not in the canonical EIP-4361 form (address must be EIP-55 checksummed)".into());
        }
        Ok(m)
    }

    /// The address that signed `text` with `personal_sign` (EIP-191), from a
    /// 65-byte hex signature (`v` 27/28 or 0/1).
    pub fn recover(text: &str, signature: &str) -> Result<Address, String> {
        let raw = alloy::hex::decode(signature.trim()).map_err(|_| "the signature is not hex")?;
        if raw.len() != 65 {
            return Err("the signature must be 65 bytes".into());
        }
        let sig = Signature::from_raw(&raw).map_err(|e| format!("bad signature: {e}"))?;
        sig.recover_address_from_msg(text.as_bytes()).map_err(|e| format!("the signature recovers to nothing: {e}"))
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's
/// `days_from_civil`).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Milliseconds since the epoch of an RFC 3339 date-time
/// (`2026-11-25T10:00:00Z`, fractions and `±hh:mm` offsets allowed).
pub fn parse_rfc3339_ms(s: &str) -> Option<u64> {
    let b = s.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't') || b[13] != b':' || b[16] != b':' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let t = s.get(r)?;
        t.bytes().all(|c| c.is_ascii_digit()).then(|| t.parse().ok())?
    };
    let (y, mo, d, h, mi, se) = (num(0..4)?, num(5..7)?, num(8..10)?, num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || se > 60 {
        return None;
    }
    let mut rest = &s[19..];
    let mut ms = 0i64;
    if let Some(frac) = rest.strip_prefix('.') {
        let digits = frac.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return None;
        }
        let first3: String = frac[..digits].chars().chain("000".chars()).take(3).collect();
        ms = first3.parse().ok()?;
        rest = &frac[digits..];
    }
    let offset_min = match rest {
        "Z" | "z" => 0,
        _ if rest.len() == 6 && matches!(&rest[..1], "+" | "-") && &rest[3..4] == ":" => {
            let (oh, om) = (rest[1..3].parse::<i64>().ok()?, rest[4..6].parse::<i64>().ok()?);
            if oh > 23 || om > 59 {
                return None;
            }
            (oh * 60 + om) * if rest.starts_with('-') { -1 } else { 1 }
        }
        _ => return None,
    };
    let secs = days_from_civil(y, mo, d) * 86_400 + h * 3_600 + mi * 60 + se - offset_min * 60;
    u64::try_from(secs * 1_000 + ms).ok()
}

/// RFC 3339 UTC text of a time in ms since the epoch (`…T…:…:….sssZ`).
pub fn format_rfc3339_ms(ms: u64) -> String {
    let secs = (ms / 1_000) as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // civil_from_days (Hinnant).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z", rem / 3_600, rem % 3_600 / 60, rem % 60, ms % 1_000)
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloy::signers::{local::PrivateKeySigner, SignerSync};

    fn sample(address: Address) -> Message {
        Message {
            scheme: None,
            domain: "127.0.0.1:8080".into(),
            address,
            statement: Some("Sign in to the HealthSense ward-3 dashboard.".into()),
            uri: "http://127.0.0.1:8080".into(),
            version: "1".into(),
            chain_id: 31_337,
            nonce: "a1B2c3D4e5".into(),
            issued_at: "2026-11-25T10:00:00.000Z".into(),
            expiration_time: Some("2026-11-25T10:05:00Z".into()),
            not_before: None,
            request_id: None,
            resources: vec!["urn:healthsense:patient:0x01:stay:1".into()],
        }
    }

    #[test]
    fn round_trips_and_recovers_the_signer() {
        let key = PrivateKeySigner::random();
        let m = sample(key.address());
        let text = m.to_string();
        assert!(text.starts_with("127.0.0.1:8080 wants you to sign in with your Ethereum account:\n0x"));
        assert_eq!(Message::parse(&text).unwrap(), m);
        let no_statement = Message { statement: None, resources: vec![], expiration_time: None, ..m.clone() };
        assert_eq!(Message::parse(&no_statement.to_string()).unwrap(), no_statement);
        let with_scheme = Message { scheme: Some("https".into()), ..m.clone() };
        assert_eq!(Message::parse(&with_scheme.to_string()).unwrap(), with_scheme);
        let sig = key.sign_message_sync(text.as_bytes()).unwrap();
        let hex = alloy::hex::encode_prefixed(sig.as_bytes());
        assert_eq!(Message::recover(&text, &hex).unwrap(), key.address());
        assert_ne!(Message::recover(&text.replace("ward-3", "ward-4"), &hex).unwrap(), key.address());
        assert!(Message::recover(&text, "0x1234").is_err());
    }

    #[test]
    fn refuses_non_canonical_text() {
        let m = sample(Address::repeat_byte(0xab));
        let text = m.to_string();
        let lower = text.replace(&m.address.to_checksum(None), &format!("{:#x}", m.address));
        assert!(Message::parse(&lower).unwrap_err().contains("canonical"));
        assert!(Message::parse(&format!("{text}\nExtra: 1")).is_err());
        assert!(Message::parse(&text.replace("Version: 1", "Version: 2")).is_err());
        assert!(Message::parse(&text.replace("a1B2c3D4e5", "short")).is_err());
        assert!(Message::parse(&text.replace("2026-11-25T10:00:00.000Z", "yesterday")).is_err());
        assert!(Message::parse("").is_err());
    }

    #[test]
    fn rfc3339_both_ways() {
        assert_eq!(parse_rfc3339_ms("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_rfc3339_ms("2000-03-01T00:00:00.5Z"), Some(951_868_800_500));
        assert_eq!(parse_rfc3339_ms("2000-03-01T02:00:00+02:00"), Some(951_868_800_000));
        assert_eq!(parse_rfc3339_ms("2000-02-29T23:00:00-01:00"), Some(951_868_800_000));
        for ms in [0, 951_868_800_123, 1_764_064_800_000, 4_102_444_800_999] {
            assert_eq!(parse_rfc3339_ms(&format_rfc3339_ms(ms)), Some(ms));
        }
        for bad in ["2000-13-01T00:00:00Z", "2000-01-01 00:00:00Z", "2000-01-01T00:00:00", "2000-01-01T00:00:00+2:00"] {
            assert_eq!(parse_rfc3339_ms(bad), None, "{bad}");
        }
    }
}
