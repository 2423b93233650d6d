//! Kubo's RPC conventions shared by the handlers: the error body, repeated
//! query arguments, Go-style booleans and `/ipfs/` paths.

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use cid::multibase::Base;
use cid::{Cid, Version};

/// An RPC failure, answered the way Kubo does:
/// `{"Message":..,"Code":0,"Type":"error"}` with status 500.
#[derive(Debug)]
pub struct KuboError(
    /// The message, Kubo's `Message`.
    pub String,
);

/// Result of an RPC handler step.
pub type KuboResult<T> = Result<T, KuboError>;

impl KuboError {
    /// An error answered with `message` (status 500 unless [`KuboError::with_status`]).
    pub fn new(message: impl Into<String>) -> Self {
        KuboError(message.into())
    }

    /// Kubo's wording when an offline node lacks a block; the client keys
    /// "not found" on it.
    pub(crate) fn block_not_found(cid: &Cid) -> Self {
        KuboError(format!(
            "block was not found locally (offline): ipld: could not find {cid}"
        ))
    }
}

impl KuboError {
    /// The Kubo error body with another status (404 for unknown commands, 403
    /// for refused origins), as Kubo's HTTP layer does outside commands.
    pub(crate) fn with_status(self, status: StatusCode) -> Response {
        let body = serde_json::json!({ "Message": self.0, "Code": 0, "Type": "error" });
        (
            status,
            [(header::CONTENT_TYPE, "application/json")],
            format!("{body}\n"),
        )
            .into_response()
    }
}

impl IntoResponse for KuboError {
    fn into_response(self) -> Response {
        self.with_status(StatusCode::INTERNAL_SERVER_ERROR)
    }
}

/// A 200 JSON answer, newline-terminated like Kubo's encoder.
pub(crate) fn json_ok(value: serde_json::Value) -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        format!("{value}\n"),
    )
        .into_response()
}

/// Query parameters in request order (Kubo repeats `arg` for several arguments).
///
/// Like Kubo, a command ignores options it does not define (the official
/// JavaScript client sends some of its own, e.g. `stream` on `pin/add` and
/// `paths` on `pin/ls`). Each command checks the options it defines, and
/// refuses only those whose value would change an answer this node cannot
/// produce; [`Params::output`] checks the options every command shares.
#[derive(Debug)]
pub struct Params(
    /// `(key, value)` pairs as the query string has them.
    pub Vec<(String, String)>,
);

impl Params {
    /// Checks Kubo's global output options and returns how CIDs are printed:
    /// `encoding` must be `json` (the default; Kubo's `text` is for its
    /// CLI), `cid-base` and `upgrade-cidv0-in-output` as in Kubo.
    pub fn output(&self) -> KuboResult<CidEncoder> {
        if let Some(enc) = self
            .one("encoding")
            .filter(|e| !e.is_empty() && *e != "json")
        {
            return Err(KuboError::new(format!(
                "encoding {enc:?} is not supported by this node; use json"
            )));
        }
        let mut encoder = CidEncoder {
            base: Base::Base32Lower,
            upgrade: false,
        };
        if let Some(name) = self.one("cid-base").filter(|b| !b.is_empty()) {
            encoder.base = base_by_name(name)?;
            // CIDv0 exists only in base58btc: another base upgrades it, as Kubo does.
            encoder.upgrade = encoder.base != Base::Base58Btc;
        }
        if self.one("upgrade-cidv0-in-output").is_some() {
            encoder.upgrade = self.bool("upgrade-cidv0-in-output", false)?;
        }
        Ok(encoder)
    }

    /// Every value of `key`, in order.
    pub fn all<'a>(&'a self, key: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.0
            .iter()
            .filter(move |(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// The last value of `key` (later options win, as in Kubo).
    pub fn one<'a>(&'a self, key: &'a str) -> Option<&'a str> {
        self.all(key).last()
    }

    /// A boolean option with Go's `strconv.ParseBool` spellings.
    pub fn bool(&self, key: &str, default: bool) -> KuboResult<bool> {
        match self.one(key) {
            None | Some("") => Ok(default),
            Some("1" | "t" | "T" | "true" | "TRUE" | "True") => Ok(true),
            Some("0" | "f" | "F" | "false" | "FALSE" | "False") => Ok(false),
            Some(other) => Err(KuboError::new(format!(
                "option {key:?}: {other:?} is not a boolean"
            ))),
        }
    }

    /// A non-negative integer option.
    pub fn u64(&self, key: &str) -> KuboResult<Option<u64>> {
        self.one(key)
            .map(|v| {
                v.parse::<u64>().map_err(|_| {
                    KuboError::new(format!(
                        "option {key:?}: {v:?} is not a non-negative integer"
                    ))
                })
            })
            .transpose()
    }

    /// Refuses a feature flag this node does not implement unless it is off.
    pub fn must_be_off(&self, key: &str, why: &str) -> KuboResult<()> {
        if self.bool(key, false)? {
            return Err(KuboError::new(format!(
                "option {key:?} is not supported by this node: {why}"
            )));
        }
        Ok(())
    }

    /// Refuses a string option this node does not implement unless it is
    /// absent or empty.
    pub fn must_be_unset(&self, key: &str, why: &str) -> KuboResult<()> {
        if self.one(key).is_some_and(|v| !v.is_empty()) {
            return Err(KuboError::new(format!(
                "option {key:?} is not supported by this node: {why}"
            )));
        }
        Ok(())
    }

    /// The single required `arg` of a command, e.g. `ipfs-path` of cat.
    pub fn single_arg(&self, name: &str) -> KuboResult<&str> {
        let mut args = self.all("arg");
        match (args.next(), args.next()) {
            (Some(arg), None) => Ok(arg),
            (None, _) => Err(KuboError::new(format!("argument {name:?} is required"))),
            (Some(_), Some(_)) => Err(KuboError::new(format!(
                "this node takes one {name:?} per request"
            ))),
        }
    }
}

/// How CIDs are printed in answers (Kubo's `cidenc.Encoder`): CIDv0 as is
/// unless upgraded, CIDv1 in `base` (base32 by default).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CidEncoder {
    base: Base,
    upgrade: bool,
}

impl CidEncoder {
    /// The CID's text as Kubo would print it under the same options.
    pub fn encode(&self, cid: &Cid) -> String {
        let cid = match cid.version() {
            Version::V0 if self.upgrade => Cid::new_v1(cid.codec(), *cid.hash()),
            _ => *cid,
        };
        match cid.version() {
            Version::V0 => cid.to_string(),
            Version::V1 => cid
                .to_string_of_base(self.base)
                .unwrap_or_else(|_| cid.to_string()),
        }
    }
}

/// A multibase by its name or prefix character, as Kubo's `--cid-base` takes it.
fn base_by_name(name: &str) -> KuboResult<Base> {
    let base = match name {
        "base32" => Some(Base::Base32Lower),
        "base32upper" => Some(Base::Base32Upper),
        "base36" => Some(Base::Base36Lower),
        "base36upper" => Some(Base::Base36Upper),
        "base58btc" => Some(Base::Base58Btc),
        "base16" => Some(Base::Base16Lower),
        "base16upper" => Some(Base::Base16Upper),
        "base64" => Some(Base::Base64),
        "base64url" => Some(Base::Base64Url),
        _ => {
            let mut chars = name.chars();
            match (chars.next(), chars.next()) {
                (Some(code), None) => Base::from_code(code).ok(),
                _ => None,
            }
        }
    };
    base.ok_or_else(|| {
        KuboError::new(format!(
            "invalid cid-base {name:?}: use a multibase name such as base32, base36 or base58btc"
        ))
    })
}

/// A streamed answer: one JSON value per line, as Kubo's streaming commands
/// (`pin ls --stream`) send them.
pub(crate) fn ndjson_ok(values: impl IntoIterator<Item = serde_json::Value>) -> Response {
    let mut body = String::new();
    for value in values {
        body.push_str(&value.to_string());
        body.push('\n');
    }
    (
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::HeaderName::from_static("x-chunked-output"), "1"),
        ],
        body,
    )
        .into_response()
}

/// Parses `CID` or `/ipfs/CID`. Paths inside a DAG are not served: the
/// archive only ever names whole files.
pub fn parse_ipfs_path(arg: &str) -> KuboResult<Cid> {
    let trimmed = arg
        .strip_prefix("/ipfs/")
        .unwrap_or(arg)
        .trim_end_matches('/');
    if trimmed.contains('/') {
        return Err(KuboError::new(format!(
            "invalid path {arg:?}: paths below a CID are not supported by this node; pass the CID of the file"
        )));
    }
    Cid::try_from(trimmed)
        .map_err(|e| KuboError::new(format!("invalid path {arg:?}: invalid cid: {e}")))
}

/// "outer: inner: innermost" for an error and its sources.
pub(crate) fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(inner) = source {
        text.push_str(": ");
        text.push_str(&inner.to_string());
        source = inner.source();
    }
    text
}
