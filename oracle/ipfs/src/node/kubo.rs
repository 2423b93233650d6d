//! Kubo's RPC conventions shared by the handlers: the error body, repeated
//! query arguments, Go-style booleans and `/ipfs/` paths.

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use cid::Cid;

/// An RPC failure, answered the way Kubo does:
/// `{"Message":..,"Code":0,"Type":"error"}` with status 500.
#[derive(Debug)]
pub(crate) struct KuboError(pub(crate) String);

/// Result of an RPC handler step.
pub(crate) type KuboResult<T> = Result<T, KuboError>;

impl KuboError {
    pub(crate) fn new(message: impl Into<String>) -> Self {
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

/// Options every Kubo command accepts and this node ignores.
const GLOBAL_OPTIONS: &[&str] = &["encoding", "stream-channels"];

/// Query parameters in request order (Kubo repeats `arg` for several arguments).
#[derive(Debug)]
pub(crate) struct Params(pub(crate) Vec<(String, String)>);

impl Params {
    /// Refuses any option `command` does not know, so a request the node
    /// would silently misread fails instead.
    pub(crate) fn only(&self, command: &str, known: &[&str]) -> KuboResult<()> {
        for (key, value) in &self.0 {
            if key == "encoding" && value != "json" {
                return Err(KuboError::new(format!(
                    "encoding {value:?} is not supported by this node; use json"
                )));
            }
            if !known.contains(&key.as_str()) && !GLOBAL_OPTIONS.contains(&key.as_str()) {
                return Err(KuboError::new(format!(
                    "option {key:?} is not supported by this node's {command}; supported: {}",
                    known.join(", ")
                )));
            }
        }
        Ok(())
    }

    /// Every value of `key`, in order.
    pub(crate) fn all<'a>(&'a self, key: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.0
            .iter()
            .filter(move |(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// The last value of `key` (later options win, as in Kubo).
    pub(crate) fn one<'a>(&'a self, key: &'a str) -> Option<&'a str> {
        self.all(key).last()
    }

    /// A boolean option with Go's `strconv.ParseBool` spellings.
    pub(crate) fn bool(&self, key: &str, default: bool) -> KuboResult<bool> {
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
    pub(crate) fn u64(&self, key: &str) -> KuboResult<Option<u64>> {
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
    pub(crate) fn must_be_off(&self, key: &str, why: &str) -> KuboResult<()> {
        if self.bool(key, false)? {
            return Err(KuboError::new(format!(
                "option {key:?} is not supported by this node: {why}"
            )));
        }
        Ok(())
    }

    /// The single required `arg` of a command, e.g. `ipfs-path` of cat.
    pub(crate) fn single_arg(&self, name: &str) -> KuboResult<&str> {
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

/// Parses `CID` or `/ipfs/CID`. Paths inside a DAG are not served: the
/// archive only ever names whole files.
pub(crate) fn parse_ipfs_path(arg: &str) -> KuboResult<Cid> {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn params(pairs: &[(&str, &str)]) -> Params {
        Params(
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }

    #[test]
    fn booleans_follow_go() {
        let p = params(&[("a", "true"), ("b", "0"), ("c", "yes")]);
        assert!(p.bool("a", false).is_ok_and(|v| v));
        assert!(p.bool("b", true).is_ok_and(|v| !v));
        assert!(p.bool("missing", true).is_ok_and(|v| v));
        assert!(p.bool("c", true).is_err());
    }

    #[test]
    fn unknown_options_are_refused_by_name() {
        let p = params(&[
            ("arg", "x"),
            ("stream-channels", "true"),
            ("recursive", "true"),
        ]);
        assert!(p
            .only("cat", &["arg"])
            .is_err_and(|e| e.0.contains("\"recursive\"")));
        assert!(p.only("pin/add", &["arg", "recursive"]).is_ok());
        assert!(params(&[("encoding", "xml")]).only("id", &[]).is_err());
    }

    #[test]
    fn paths_are_cids_with_an_optional_ipfs_prefix() {
        let cid = "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku";
        assert!(parse_ipfs_path(cid).is_ok());
        assert!(parse_ipfs_path(&format!("/ipfs/{cid}")).is_ok());
        assert!(parse_ipfs_path(&format!("/ipfs/{cid}/a")).is_err());
        assert!(parse_ipfs_path("nonsense").is_err_and(|e| e.0.starts_with("invalid path")));
    }

    #[test]
    fn single_arg_wants_exactly_one() {
        assert!(params(&[]).single_arg("ipfs-path").is_err());
        assert!(params(&[("arg", "a"), ("arg", "b")])
            .single_arg("ipfs-path")
            .is_err());
        assert!(params(&[("arg", "a")])
            .single_arg("ipfs-path")
            .is_ok_and(|a| a == "a"));
    }
}
