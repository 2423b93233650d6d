//! Sign-in and sessions.
//!
//! 1. `POST /api/v1/auth/challenge` hands out an EIP-4361 message with a
//!    fresh one-time nonce for the caller's address (and, for a patient,
//!    the stay they sign in for).
//! 2. The caller signs it with `personal_sign` (EIP-191) and posts message
//!    and signature to `POST /api/v1/auth/session`. The server checks the
//!    text (domain, URI, chain id, times, its own unused nonce, which it
//!    then burns), recovers the signer, and looks the signer's role up on
//!    chain: DOCTOR, ADMIN or INSURER; or, for a patient, that
//!    `patient_id(signer, stay)` is a stay on chain.
//! 3. It answers with a random session token (also set as an HttpOnly
//!    cookie, for the dashboard's event stream) that lives `session_ttl_s`.
//!
//! Tokens are kept only as their keccak256 in memory and never logged; a
//! restart signs everyone out. Roles are read at sign-in: a revoked role
//! lasts at most one session lifetime.

use std::collections::HashMap;
use std::sync::Mutex;

use alloy::primitives::{keccak256, Address, B256};
use healthsense_abi::rules::ids;
use rand::Rng;
use serde::Serialize;

use super::siwe::{self, Message};

/// Most outstanding challenges (unauthenticated callers cannot grow memory
/// past this).
const MAX_NONCES: usize = 10_000;
/// Clock skew tolerated on `Issued At`.
const SKEW_MS: u64 = 60_000;
/// Resource prefix naming a patient's stay in a sign-in message.
pub const PATIENT_RESOURCE: &str = "urn:healthsense:patient:";

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

/// Nonces and sessions.
pub struct Auth {
    settings: Settings,
    nonces: Mutex<HashMap<String, u64>>,
    sessions: Mutex<HashMap<B256, Session>>,
}

fn random_alnum(n: usize) -> String {
    const CHARS: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    (0..n).map(|_| CHARS[rng.random_range(0..CHARS.len())] as char).collect()
}

impl Auth {
    /// Sign-in with `settings`.
    pub fn new(settings: Settings) -> Self {
        Self { settings, nonces: Mutex::default(), sessions: Mutex::default() }
    }

    /// The settings.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// A sign-in message for `address` (and a patient's `stay`), with a
    /// fresh nonce; `None` when too many challenges are outstanding.
    pub fn challenge(&self, address: Address, stay: Option<u64>, now_ms: u64) -> Option<Message> {
        let nonce = random_alnum(17);
        let mut nonces = self.nonces.lock().ok()?;
        nonces.retain(|_, exp| *exp > now_ms);
        if nonces.len() >= MAX_NONCES {
            return None;
        }
        let expires = now_ms + self.settings.nonce_ttl_ms;
        nonces.insert(nonce.clone(), expires);
        let resources = stay
            .map(|s| vec![format!("{PATIENT_RESOURCE}{}:stay:{s}", ids::patient_id(address, s))])
            .unwrap_or_default();
        Some(Message {
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
        })
    }

    /// Checks a signed message and burns its nonce; says what the chain must
    /// confirm next.
    pub fn verify(&self, text: &str, signature: &str, now_ms: u64) -> Result<Claim, Refusal> {
        let bad = |m: String| Refusal::Unauthenticated(m);
        let m = Message::parse(text).map_err(|e| bad(format!("not an EIP-4361 message: {e}")))?;
        // Burn the nonce first: whatever happens next, this message is spent.
        let issued = self.nonces.lock().ok().and_then(|mut n| n.remove(&m.nonce));
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
        match issued {
            Some(exp) if exp > now_ms => {}
            Some(_) => return Err(bad("the challenge expired: ask for a new one".into())),
            None => return Err(bad("unknown or already used nonce: ask for a new challenge".into())),
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
        })
    }

    fn sign(key: &PrivateKeySigner, text: &str) -> String {
        alloy::hex::encode_prefixed(key.sign_message_sync(text.as_bytes()).unwrap().as_bytes())
    }

    #[test]
    fn nonces_are_one_time_and_checks_hold() {
        let a = auth();
        let key = PrivateKeySigner::random();
        let text = a.challenge(key.address(), None, 10_000).unwrap().to_string();
        assert_eq!(a.verify(&text, &sign(&key, &text), 10_100), Ok(Claim::Staff(key.address())));
        assert!(matches!(a.verify(&text, &sign(&key, &text), 10_100), Err(Refusal::Unauthenticated(m)) if m.contains("already used")));
        // Expired challenge, wrong signer, wrong domain.
        let text = a.challenge(key.address(), None, 10_000).unwrap().to_string();
        assert!(a.verify(&text, &sign(&key, &text), 10_600).is_err());
        let text = a.challenge(key.address(), None, 10_000).unwrap().to_string();
        let other = PrivateKeySigner::random();
        assert!(matches!(a.verify(&text, &sign(&other, &text), 10_100), Err(Refusal::Unauthenticated(m)) if m.contains("signature is by")));
        let m = a.challenge(key.address(), None, 10_000).unwrap();
        let evil = Message { domain: "evil.example".into(), ..m }.to_string();
        assert!(matches!(a.verify(&evil, &sign(&key, &evil), 10_100), Err(Refusal::Unauthenticated(m)) if m.contains("this server is")));
    }

    #[test]
    fn patients_sign_in_for_their_own_stay_only() {
        let a = auth();
        let key = PrivateKeySigner::random();
        let text = a.challenge(key.address(), Some(3), 0).unwrap().to_string();
        let id = ids::patient_id(key.address(), 3);
        assert_eq!(a.verify(&text, &sign(&key, &text), 1), Ok(Claim::Patient { address: key.address(), patient: id, stay: 3 }));
        // A message naming someone else's stay id.
        let m = a.challenge(key.address(), Some(3), 0).unwrap();
        let forged = Message { resources: vec![format!("{PATIENT_RESOURCE}{}:stay:3", B256::repeat_byte(7))], ..m }.to_string();
        assert!(matches!(a.verify(&forged, &sign(&key, &forged), 1), Err(Refusal::Forbidden(_))));
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
