//! Sign-in and sessions.
//!
//! 1. `POST /api/v1/auth/challenge` hands out an EIP-4361 message with a
//!    fresh one-time nonce for the caller's address (and, for a patient,
//!    the stay they sign in for).
//! 2. The caller signs it with `personal_sign` (EIP-191) and posts message
//!    and signature to `POST /api/v1/auth/session`. The server checks the
//!    text (domain, URI, chain id, times, that the nonce is its own, live
//!    and unused), recovers the signer, marks the nonce used, and looks the
//!    signer's role up on chain: DOCTOR, ADMIN or INSURER; or, for a
//!    patient, that `patient_id(signer, stay)` is a stay on chain.
//! 3. It answers with a random session token (also set as an HttpOnly
//!    cookie, for the dashboard's event stream) that lives `session_ttl_s`.
//!
//! A challenge keeps no server state: its nonce carries its own expiry and
//! an HMAC-SHA256 tag under a key drawn at process start (never logged or
//! stored), so anonymous callers cannot fill a table of pending challenges
//! and lock sign-in (issue 17). Only a nonce whose signed message was
//! accepted is remembered, until it expires, so that it is used once. A
//! per-client [`RateLimiter`] guards `/auth/*` on top.
//!
//! Tokens are kept only as their keccak256 in memory and never logged; a
//! restart signs everyone out (and voids outstanding challenges). Roles are
//! read at sign-in: a revoked role lasts at most one session lifetime.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;

use alloy::primitives::{keccak256, Address, B256};
use healthsense_abi::rules::ids;
use hmac::{Hmac, Mac};
use rand::Rng;
use serde::Serialize;

use super::siwe::{self, Message};

/// Clock skew tolerated on `Issued At`.
const SKEW_MS: u64 = 60_000;
/// Resource prefix naming a patient's stay in a sign-in message.
pub const PATIENT_RESOURCE: &str = "urn:healthsense:patient:";
/// Domain separation of the nonce tag.
const NONCE_TAG_CONTEXT: &[u8] = b"healthsense.siwe-nonce.v1";
/// Bytes of a nonce: expiry (8, big-endian ms), random (8), tag (16); sent as hex.
const NONCE_BYTES: usize = 32;

/// Who a session is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Identity {
    /// The signer (EIP-55 checksummed in JSON).
    #[serde(serialize_with = "crate::protocol::eip55::serialize")]
    pub address: Address,
    /// Holds DOCTOR_ROLE: sees this hub's ward.
    pub doctor: bool,
    /// Holds ADMIN_ROLE: sees devices and batches.
    pub admin: bool,
    /// Holds INSURER_ROLE: sees charges and bills of stays it insures.
    pub insurer: bool,
    /// A patient session: the stay's patient id.
    pub patient: Option<B256>,
    /// The stay number the patient signed in with.
    pub stay: Option<u64>,
}

/// A live session.
#[derive(Debug, Clone)]
pub struct Session {
    /// Who.
    pub who: Identity,
    /// When it ends, ms.
    pub expires_ms: u64,
}

/// What the sign-in settings are.
#[derive(Debug, Clone)]
pub struct Settings {
    /// SIWE domain the messages must name.
    pub domain: String,
    /// SIWE URI the messages must name.
    pub uri: String,
    /// The chain's id.
    pub chain_id: u64,
    /// Session lifetime, ms.
    pub session_ttl_ms: u64,
    /// Challenge lifetime, ms.
    pub nonce_ttl_ms: u64,
    /// Statement shown in the wallet.
    pub statement: String,
    /// Requests a second one client may make to `/auth/*`, sustained.
    pub rate_per_s: f64,
    /// Requests one client may make to `/auth/*` at once.
    pub rate_burst: u32,
}

/// Why a sign-in failed: 401 (the message or signature is not good) or 403
/// (a good signature by someone with no access).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// 401.
    Unauthenticated(String),
    /// 403.
    Forbidden(String),
}

/// What a sign-in asks the chain after the signature checks out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// Staff: look the roles up.
    Staff(Address),
    /// A patient: check the stay exists.
    Patient {
        /// The signer.
        address: Address,
        /// The derived patient id.
        patient: B256,
        /// The stay number.
        stay: u64,
    },
}

/// Challenge keys, used nonces and sessions.
pub struct Auth {
    settings: Settings,
    /// HMAC key of the nonces; random per process.
    nonce_key: [u8; 32],
    used: Mutex<Used>,
    sessions: Mutex<HashMap<B256, Session>>,
    /// The per-client limit on `/auth/*`.
    pub limiter: RateLimiter,
}

/// Nonces whose messages were accepted, each until its expiry (after which
/// the nonce is refused as expired anyway): the table holds at most the
/// sign-ins of one nonce lifetime.
#[derive(Default)]
struct Used {
    nonces: HashMap<[u8; 16], u64>,
    next_prune_ms: u64,
}

impl Used {
    /// Records `tag` as used; false when it already was.
    fn burn(&mut self, tag: [u8; 16], expires_ms: u64, now_ms: u64) -> bool {
        if now_ms >= self.next_prune_ms {
            self.nonces.retain(|_, exp| *exp > now_ms);
            self.next_prune_ms = now_ms + 1_000;
        }
        match self.nonces.entry(tag) {
            std::collections::hash_map::Entry::Occupied(_) => false,
            std::collections::hash_map::Entry::Vacant(v) => {
                v.insert(expires_ms);
                true
            }
        }
    }
}

fn random_alnum(n: usize) -> String {
    const CHARS: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    (0..n).map(|_| CHARS[rng.random_range(0..CHARS.len())] as char).collect()
}

impl Auth {
    /// Sign-in with `settings`.
    pub fn new(settings: Settings) -> Self {
        let limiter = RateLimiter::new(settings.rate_per_s, settings.rate_burst);
        Self { settings, nonce_key: rand::random(), used: Mutex::default(), sessions: Mutex::default(), limiter }
    }

    /// The tag of a nonce whose first 16 bytes (expiry, random) are `head`,
    /// issued for `address`.
    fn nonce_mac(&self, head: &[u8], address: Address) -> Hmac<sha2::Sha256> {
        // HMAC takes keys of any length: this cannot fail.
        let mut mac = <Hmac<sha2::Sha256> as Mac>::new_from_slice(&self.nonce_key).expect("HMAC accepts a 32-byte key");
        mac.update(NONCE_TAG_CONTEXT);
        mac.update(head);
        mac.update(address.as_slice());
        mac
    }

    /// A fresh nonce for `address`, valid until `expires_ms`.
    fn issue_nonce(&self, address: Address, expires_ms: u64) -> String {
        let mut raw = [0u8; NONCE_BYTES];
        raw[..8].copy_from_slice(&expires_ms.to_be_bytes());
        raw[8..16].copy_from_slice(&rand::random::<[u8; 8]>());
        let tag = self.nonce_mac(&raw[..16], address).finalize().into_bytes();
        raw[16..].copy_from_slice(&tag[..16]);
        alloy::hex::encode(raw)
    }

    /// Checks that `nonce` is one this process issued for `address`; returns
    /// its expiry and tag.
    fn open_nonce(&self, nonce: &str, address: Address) -> Option<(u64, [u8; 16])> {
        let mut raw = [0u8; NONCE_BYTES];
        alloy::hex::decode_to_slice(nonce, &mut raw).ok()?;
        // Constant-time comparison of the truncated tag.
        self.nonce_mac(&raw[..16], address).verify_truncated_left(&raw[16..]).ok()?;
        Some((u64::from_be_bytes(raw[..8].try_into().ok()?), raw[16..].try_into().ok()?))
    }

    /// The settings.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// A sign-in message for `address` (and a patient's `stay`), with a
    /// fresh nonce. It costs no server state.
    pub fn challenge(&self, address: Address, stay: Option<u64>, now_ms: u64) -> Message {
        let expires = now_ms + self.settings.nonce_ttl_ms;
        let nonce = self.issue_nonce(address, expires);
        let resources = stay
            .map(|s| vec![format!("{PATIENT_RESOURCE}{}:stay:{s}", ids::patient_id(address, s))])
            .unwrap_or_default();
        Message {
            scheme: None,
            domain: self.settings.domain.clone(),
            address,
            statement: Some(self.settings.statement.clone()),
            uri: self.settings.uri.clone(),
            version: "1".into(),
            chain_id: self.settings.chain_id,
            nonce,
            issued_at: siwe::format_rfc3339_ms(now_ms),
            expiration_time: Some(siwe::format_rfc3339_ms(expires)),
            not_before: None,
            request_id: None,
            resources,
        }
    }

    /// Checks a signed message and, once it is accepted, marks its nonce
    /// used; says what the chain must confirm next.
    pub fn verify(&self, text: &str, signature: &str, now_ms: u64) -> Result<Claim, Refusal> {
        let bad = |m: String| Refusal::Unauthenticated(m);
        let m = Message::parse(text).map_err(|e| bad(format!("not an EIP-4361 message: {e}")))?;
        let s = &self.settings;
        if m.domain != s.domain {
            return Err(bad(format!("the message is for {:?}; this server is {:?}: ask it for a new challenge", m.domain, s.domain)));
        }
        if m.uri != s.uri {
            return Err(bad(format!("the message names URI {:?}; this server is {:?}", m.uri, s.uri)));
        }
        if m.chain_id != s.chain_id {
            return Err(bad(format!("the message is for chain {}; this hub is on chain {}", m.chain_id, s.chain_id)));
        }
        let (expires_ms, tag) = self
            .open_nonce(&m.nonce, m.address)
            .ok_or_else(|| bad("unknown nonce (not issued by this server, or before its restart): ask for a new challenge".into()))?;
        if expires_ms <= now_ms {
            return Err(bad("the challenge expired: ask for a new one".into()));
        }
        let time = |t: &str| siwe::parse_rfc3339_ms(t).unwrap_or(u64::MAX);
        if time(&m.issued_at) > now_ms + SKEW_MS {
            return Err(bad("the message is issued in the future".into()));
        }
        if m.expiration_time.as_deref().is_some_and(|t| time(t) <= now_ms) {
            return Err(bad("the message has expired".into()));
        }
        if m.not_before.as_deref().is_some_and(|t| time(t) > now_ms) {
            return Err(bad("the message is not valid yet".into()));
        }
        let signer = Message::recover(text, signature).map_err(bad)?;
        if signer != m.address {
            return Err(bad(format!("the signature is by {signer}, the message names {}", m.address)));
        }
        let claim = Self::claim(&m, signer)?;
        // Accepted: from here on this nonce is spent.
        let fresh = self.used.lock().map(|mut u| u.burn(tag, expires_ms, now_ms)).unwrap_or(false);
        if !fresh {
            return Err(bad("this nonce was already used: ask for a new challenge".into()));
        }
        Ok(claim)
    }

    /// What a message with a good signature by `signer` claims.
    fn claim(m: &Message, signer: Address) -> Result<Claim, Refusal> {
        let bad = |m: String| Refusal::Unauthenticated(m);
        let patients: Vec<&String> = m.resources.iter().filter(|r| r.starts_with(PATIENT_RESOURCE)).collect();
        match patients.as_slice() {
            [] => Ok(Claim::Staff(signer)),
            [r] => {
                let rest = &r[PATIENT_RESOURCE.len()..];
                let (id, stay) = rest
                    .split_once(":stay:")
                    .and_then(|(id, stay)| Some((id.parse::<B256>().ok()?, stay.parse::<u64>().ok()?)))
                    .ok_or_else(|| bad(format!("{r:?} is not {PATIENT_RESOURCE}<id>:stay:<n>")))?;
                let derived = ids::patient_id(signer, stay);
                if derived != id {
                    return Err(Refusal::Forbidden(format!("stay {stay} of {signer} is patient {derived}, not {id}")));
                }
                Ok(Claim::Patient { address: signer, patient: id, stay })
            }
            _ => Err(bad("a sign-in names at most one patient stay".into())),
        }
    }

    /// Opens a session for `who`; returns the token and its expiry.
    pub fn open(&self, who: Identity, now_ms: u64) -> (String, u64) {
        let token = random_alnum(43);
        let expires_ms = now_ms + self.settings.session_ttl_ms;
        if let Ok(mut sessions) = self.sessions.lock() {
            sessions.retain(|_, s| s.expires_ms > now_ms);
            sessions.insert(keccak256(token.as_bytes()), Session { who, expires_ms });
        }
        (token, expires_ms)
    }

    /// The session of `token`, if it is live.
    pub fn session(&self, token: &str, now_ms: u64) -> Result<Session, String> {
        let key = keccak256(token.as_bytes());
        let sessions = self.sessions.lock().map_err(|_| "session store unavailable".to_string())?;
        match sessions.get(&key) {
            Some(s) if s.expires_ms > now_ms => Ok(s.clone()),
            Some(_) => Err("the session expired: sign in again".into()),
            None => Err("unknown session token: sign in again".into()),
        }
    }

    /// Ends the session of `token`.
    pub fn close(&self, token: &str) {
        if let Ok(mut sessions) = self.sessions.lock() {
            sessions.remove(&keccak256(token.as_bytes()));
        }
    }
}

/// Most clients the [`RateLimiter`] tracks. Past it, idle clients are
/// forgotten; if every one is active, a new client is let through untracked
/// rather than refused: sign-in must not be lockable through this table
/// either, and challenges cost no state.
const MAX_CLIENTS: usize = 65_536;

/// A token bucket per client address on `/auth/*`: `burst` requests at once,
/// refilled at `per_s` a second. IPv6 clients are keyed by their /64, the
/// smallest block a single host is commonly given.
pub struct RateLimiter {
    per_s: f64,
    burst: f64,
    buckets: Mutex<HashMap<IpAddr, (f64, u64)>>,
}

impl RateLimiter {
    /// A limiter of `per_s` requests a second with bursts of `burst`.
    pub fn new(per_s: f64, burst: u32) -> Self {
        Self { per_s: per_s.max(0.001), burst: f64::from(burst.max(1)), buckets: Mutex::default() }
    }

    /// Takes one request of `ip`'s budget at `now_ms`; `Err(seconds)` says
    /// when to try again.
    pub fn take(&self, ip: IpAddr, now_ms: u64) -> Result<(), u64> {
        let key = match ip.to_canonical() {
            IpAddr::V6(v6) => {
                let mut o = v6.octets();
                o[8..].fill(0);
                IpAddr::from(o)
            }
            v4 => v4,
        };
        let Ok(mut buckets) = self.buckets.lock() else { return Ok(()) };
        let refill = |(tokens, at): (f64, u64)| (tokens + now_ms.saturating_sub(at) as f64 / 1_000.0 * self.per_s).min(self.burst);
        if !buckets.contains_key(&key) && buckets.len() >= MAX_CLIENTS {
            buckets.retain(|_, b| refill(*b) < self.burst);
            if buckets.len() >= MAX_CLIENTS {
                return Ok(());
            }
        }
        let bucket = buckets.entry(key).or_insert((self.burst, now_ms));
        let tokens = refill(*bucket);
        if tokens >= 1.0 {
            *bucket = (tokens - 1.0, now_ms);
            Ok(())
        } else {
            *bucket = (tokens, now_ms);
            Err(((1.0 - tokens) / self.per_s).ceil().max(1.0) as u64)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloy::signers::{local::PrivateKeySigner, SignerSync};

    fn auth() -> Auth {
        Auth::new(Settings {
            domain: "127.0.0.1:8080".into(),
            uri: "http://127.0.0.1:8080".into(),
            chain_id: 31_337,
            session_ttl_ms: 1_000,
            nonce_ttl_ms: 500,
            statement: "Sign in.".into(),
            rate_per_s: 1.0,
            rate_burst: 3,
        })
    }

    fn sign(key: &PrivateKeySigner, text: &str) -> String {
        alloy::hex::encode_prefixed(key.sign_message_sync(text.as_bytes()).unwrap().as_bytes())
    }

    #[test]
    fn nonces_are_one_time_and_checks_hold() {
        let a = auth();
        let key = PrivateKeySigner::random();
        let text = a.challenge(key.address(), None, 10_000).to_string();
        assert_eq!(a.verify(&text, &sign(&key, &text), 10_100), Ok(Claim::Staff(key.address())));
        assert!(matches!(a.verify(&text, &sign(&key, &text), 10_100), Err(Refusal::Unauthenticated(m)) if m.contains("already used")));
        // A bad signature does not spend the nonce: the right one still signs in.
        let text = a.challenge(key.address(), None, 10_000).to_string();
        assert!(a.verify(&text, "0x1234", 10_100).is_err());
        assert!(a.verify(&text, &sign(&PrivateKeySigner::random(), &text), 10_100).is_err());
        assert_eq!(a.verify(&text, &sign(&key, &text), 10_100), Ok(Claim::Staff(key.address())));
        // Nonces this server did not issue: made up, another process's, another address's.
        let m = a.challenge(key.address(), None, 10_000);
        for nonce in ["a".repeat(64), auth().challenge(key.address(), None, 10_000).nonce] {
            let forged = Message { nonce, ..m.clone() }.to_string();
            assert!(matches!(a.verify(&forged, &sign(&key, &forged), 10_100), Err(Refusal::Unauthenticated(e)) if e.contains("unknown nonce")));
        }
        let other = PrivateKeySigner::random();
        let moved = Message { address: other.address(), ..m }.to_string();
        assert!(matches!(a.verify(&moved, &sign(&other, &moved), 10_100), Err(Refusal::Unauthenticated(e)) if e.contains("unknown nonce")));
        // Expired challenge, wrong signer, wrong domain.
        let text = a.challenge(key.address(), None, 10_000).to_string();
        assert!(a.verify(&text, &sign(&key, &text), 10_600).is_err());
        let text = a.challenge(key.address(), None, 10_000).to_string();
        let other = PrivateKeySigner::random();
        assert!(matches!(a.verify(&text, &sign(&other, &text), 10_100), Err(Refusal::Unauthenticated(m)) if m.contains("signature is by")));
        let m = a.challenge(key.address(), None, 10_000);
        let evil = Message { domain: "evil.example".into(), ..m }.to_string();
        assert!(matches!(a.verify(&evil, &sign(&key, &evil), 10_100), Err(Refusal::Unauthenticated(m)) if m.contains("this server is")));
    }

    #[test]
    fn patients_sign_in_for_their_own_stay_only() {
        let a = auth();
        let key = PrivateKeySigner::random();
        let text = a.challenge(key.address(), Some(3), 0).to_string();
        let id = ids::patient_id(key.address(), 3);
        assert_eq!(a.verify(&text, &sign(&key, &text), 1), Ok(Claim::Patient { address: key.address(), patient: id, stay: 3 }));
        // A message naming someone else's stay id.
        let m = a.challenge(key.address(), Some(3), 0);
        let forged = Message { resources: vec![format!("{PATIENT_RESOURCE}{}:stay:3", B256::repeat_byte(7))], ..m }.to_string();
        assert!(matches!(a.verify(&forged, &sign(&key, &forged), 1), Err(Refusal::Forbidden(_))));
    }

    #[test]
    fn challenges_keep_no_state_and_used_nonces_expire() {
        let a = auth();
        let key = PrivateKeySigner::random();
        for i in 0..20_000 {
            a.challenge(Address::repeat_byte((i % 251) as u8), None, 0);
        }
        assert_eq!(a.used.lock().unwrap().nonces.len(), 0, "issuing a challenge stores nothing");
        let text = a.challenge(key.address(), None, 0).to_string();
        assert!(a.verify(&text, &sign(&key, &text), 100).is_ok());
        assert_eq!(a.used.lock().unwrap().nonces.len(), 1);
        // Past its lifetime (500 ms) the used nonce leaves the table.
        let later = a.challenge(key.address(), None, 2_000).to_string();
        assert!(a.verify(&later, &sign(&key, &later), 2_100).is_ok());
        assert_eq!(a.used.lock().unwrap().nonces.len(), 1);
    }

    #[test]
    fn the_limiter_keeps_each_client_to_its_budget() {
        let l = RateLimiter::new(1.0, 3);
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        for _ in 0..3 {
            assert_eq!(l.take(a, 0), Ok(()));
        }
        assert_eq!(l.take(a, 0), Err(1));
        assert_eq!(l.take(b, 0), Ok(()), "another client has its own budget");
        assert_eq!(l.take(a, 1_000), Ok(()), "one more a second later");
        assert_eq!(l.take(a, 1_000), Err(1));
        // One IPv6 host's /64 is one client; an IPv4-mapped address is the IPv4 one.
        let (v6a, v6b): (IpAddr, IpAddr) = ("2001:db8::1".parse().unwrap(), "2001:db8::ffff:2".parse().unwrap());
        for _ in 0..3 {
            assert_eq!(l.take(v6a, 0), Ok(()));
        }
        assert!(l.take(v6b, 0).is_err());
        assert!(l.take("::ffff:10.0.0.2".parse().unwrap(), 0).is_ok());
    }

    #[test]
    fn sessions_expire_and_close() {
        let a = auth();
        let who = Identity { address: Address::ZERO, doctor: true, admin: false, insurer: false, patient: None, stay: None };
        let (token, exp) = a.open(who.clone(), 0);
        assert_eq!(exp, 1_000);
        assert_eq!(a.session(&token, 999).unwrap().who, who);
        assert!(a.session(&token, 1_000).unwrap_err().contains("expired"));
        assert!(a.session("nope", 0).unwrap_err().contains("unknown"));
        a.close(&token);
        assert!(a.session(&token, 0).is_err());
    }
}
