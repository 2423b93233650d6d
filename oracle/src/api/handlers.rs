//! The API's endpoints. Who sees what (`docs/API.md`):
//!
//! | caller | sees |
//! | --- | --- |
//! | patient | their own stay: record, vitals, alerts, proofs, charges, bill; batches |
//! | doctor | the hub's ward: every stay admitted to it, the ward overview, devices, batches, live events |
//! | insurer | charges and bill of the stays whose policy it set; batches |
//! | admin | devices (status, battery), batches and proofs' batches, device state events; no clinical data |

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use alloy::primitives::{Address, B256, U256};
use alloy::providers::Provider;
use alloy::rpc::types::Filter;
use alloy::sol_types::SolEvent;
use axum::extract::{FromRequestParts, Path, RawQuery, State};
use axum::http::request::Parts;
use axum::middleware::from_fn_with_state;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use healthsense_abi::bindings::HealthSense as H;
use healthsense_abi::bindings::IHealthSense::PatientInfo;
use healthsense_abi::rules::billing::{self, BillInput, Policy};
use healthsense_abi::rules::ids;
use healthsense_abi::rules::status::{Category, PatientStatus, CATEGORY_COUNT};
use healthsense_abi::Reading;
use serde::Deserialize;
use serde_json::{json, Value};

use super::auth::{Claim, Identity, Refusal, Session};
use super::{queries, ApiError, Ctx, COOKIE};
use crate::alerts::{self, LiveEvent};
use crate::archive::{Job, State as ArchiveStep};
use crate::ingest::now_ms;
use crate::news2::{self, Score};

mod monitor;

/// The OpenAPI 3.1 document.
pub(crate) const OPENAPI: &str = include_str!("openapi.json");

/// Longest page.
const MAX_LIMIT: usize = 1_000;
/// Page size when none is asked for.
const DEFAULT_LIMIT: usize = 100;
/// A device is online if it was heard from within this long.
const ONLINE_MS: u64 = 60_000;

type Ax = State<Arc<Ctx>>;
type ApiResult = Result<Response, ApiError>;

pub(crate) fn router(ctx: Arc<Ctx>) -> Router {
    Router::new()
        .route("/api/v1/openapi.json", get(openapi))
        .route("/api/v1/auth/challenge", post(challenge).route_layer(from_fn_with_state(ctx.clone(), limit_auth)))
        .route(
            "/api/v1/auth/session",
            post(sign_in).delete(sign_out).route_layer(from_fn_with_state(ctx.clone(), limit_auth)),
        )
        .route("/api/v1/me", get(me))
        .route("/api/v1/ward", get(monitor::ward))
        .route("/api/v1/patients", get(patients))
        .route("/api/v1/patients/{id}", get(patient))
        .route("/api/v1/patients/{id}/vitals", get(vitals))
        .route("/api/v1/patients/{id}/vitals/{seq}/proof", get(proof))
        .route("/api/v1/patients/{id}/alerts", get(patient_alerts))
        .route("/api/v1/patients/{id}/alerts/{alert}/ack", post(monitor::acknowledge))
        .route("/api/v1/patients/{id}/trend", get(monitor::trend))
        .route("/api/v1/patients/{id}/charges", get(charges))
        .route("/api/v1/patients/{id}/bill", get(bill))
        .route("/api/v1/devices", get(devices))
        .route("/api/v1/devices/{serial}", get(device))
        .route("/api/v1/batches", get(batches))
        .route("/api/v1/batches/{seq}", get(batch))
        .route("/api/v1/events", get(events))
        .fallback(|| async { ApiError::not_found("no such endpoint: see /api/v1/openapi.json") })
        .layer(axum::middleware::map_response(no_store))
        .with_state(ctx)
}

/// The per-client limit on `/auth/*` (`api.auth_rate_per_s`, `api.auth_burst`):
/// `429` with `Retry-After` past it. The client is the peer address.
async fn limit_auth(State(ctx): Ax, req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let peer = req.extensions().get::<axum::extract::ConnectInfo<std::net::SocketAddr>>().map(|c| c.0.ip());
    if let Some(ip) = peer {
        if let Err(after) = ctx.auth.limiter.take(ip, now_ms()) {
            let message = format!("too many sign-in requests from {ip}: try again in {after} s");
            let mut res = ApiError::new(StatusCode::TOO_MANY_REQUESTS, message).into_response();
            res.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(after));
            return res;
        }
    }
    next.run(req).await
}

/// API answers are personal: never cached, never sniffed.
async fn no_store(mut res: Response) -> Response {
    let h = res.headers_mut();
    h.entry(header::CACHE_CONTROL).or_insert(HeaderValue::from_static("no-store"));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    res
}

fn ok(v: Value) -> ApiResult {
    Ok(Json(v).into_response())
}

/// The signed-in caller of a request (401 without a live session).
pub(crate) struct Caller(pub Session);

impl FromRequestParts<Arc<Ctx>> for Caller {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, ctx: &Arc<Ctx>) -> Result<Self, ApiError> {
        let token = super::token(&parts.headers).ok_or_else(|| {
            ApiError::unauthorized("sign in first: POST /api/v1/auth/challenge, sign it, POST /api/v1/auth/session")
        })?;
        ctx.auth.session(&token, now_ms()).map(Caller).map_err(ApiError::unauthorized)
    }
}

impl Caller {
    fn who(&self) -> &Identity {
        &self.0.who
    }
    fn role(&self) -> &'static str {
        let w = self.who();
        match () {
            _ if w.patient.is_some() => "patient",
            _ if w.doctor => "doctor",
            _ if w.admin => "admin",
            _ => "insurer",
        }
    }
    fn require(&self, allowed: bool, what: &str) -> Result<(), ApiError> {
        if allowed {
            Ok(())
        } else {
            Err(ApiError::forbidden(format!("a {} session cannot see {what}", self.role())))
        }
    }
}

/// Query parameters, parsed with errors that name the parameter.
struct Params(HashMap<String, String>);

impl Params {
    fn new(raw: Option<String>) -> Self {
        Params(url::form_urlencoded::parse(raw.unwrap_or_default().as_bytes()).into_owned().collect())
    }
    fn u64(&self, key: &str) -> Result<Option<u64>, ApiError> {
        self.0
            .get(key)
            .map(|v| v.parse::<u64>().map_err(|_| ApiError::bad_request(format!("{key} must be a non-negative integer, got {v:?}"))))
            .transpose()
    }
    fn limit(&self) -> Result<usize, ApiError> {
        self.limit_or(DEFAULT_LIMIT)
    }
    fn limit_or(&self, default: usize) -> Result<usize, ApiError> {
        match self.u64("limit")? {
            None => Ok(default),
            Some(n) if (1..=MAX_LIMIT as u64).contains(&n) => Ok(n as usize),
            Some(n) => Err(ApiError::bad_request(format!("limit must be 1..={MAX_LIMIT}, got {n}"))),
        }
    }
}

fn parse_id(s: &str) -> Result<B256, ApiError> {
    if s.len() != 66 || !s.starts_with("0x") {
        return Err(ApiError::bad_request(format!("{s:?} is not a patient id (0x + 64 hex digits)")));
    }
    s.parse().map_err(|_| ApiError::bad_request(format!("{s:?} is not a patient id (0x + 64 hex digits)")))
}

async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}

// ---------------------------------------------------------------- sign-in

#[derive(Deserialize)]
struct ChallengeBody {
    address: Address,
    #[serde(default)]
    stay: Option<u64>,
}

fn json_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| ApiError::bad_request(format!("bad JSON body: {e}")))
}

async fn challenge(State(ctx): Ax, body: axum::body::Bytes) -> ApiResult {
    let b: ChallengeBody = json_body(&body)?;
    let m = ctx.auth.challenge(b.address, b.stay, now_ms());
    ok(json!({ "message": m.to_string(), "nonce": m.nonce, "expiresAt": m.expiration_time }))
}

#[derive(Deserialize)]
struct SignInBody {
    message: String,
    signature: String,
}

async fn sign_in(State(ctx): Ax, body: axum::body::Bytes) -> ApiResult {
    let b: SignInBody = json_body(&body)?;
    let claim = ctx.auth.verify(&b.message, &b.signature, now_ms()).map_err(|r| match r {
        Refusal::Unauthenticated(m) => ApiError::unauthorized(m),
        Refusal::Forbidden(m) => ApiError::forbidden(m),
    })?;
    let who = match claim {
        Claim::Staff(address) => {
            let has = |role| ctx.chain.view(H::hasRoleCall { role, account: address });
            let (doctor, admin, insurer) = (has(ids::DOCTOR_ROLE).await?, has(ids::ADMIN_ROLE).await?, has(ids::INSURER_ROLE).await?);
            if !(doctor || admin || insurer) {
                return Err(ApiError::forbidden(format!(
                    "{address} holds no doctor, admin or insurer role; a patient signs in naming their stay"
                )));
            }
            Identity { address, doctor, admin, insurer, patient: None, stay: None }
        }
        Claim::Patient { address, patient, stay } => {
            let info = ctx.chain.view(H::getPatientCall { patientId: patient }).await?;
            if info.status == 0 {
                return Err(ApiError::forbidden(format!(
                    "no stay {stay} for {address} on chain: the hospital admits it with `healthsense patient admit --wallet {address} --stay {stay}`"
                )));
            }
            Identity { address, doctor: false, admin: false, insurer: false, patient: Some(patient), stay: Some(stay) }
        }
    };
    let (token, expires_ms) = ctx.auth.open(who.clone(), now_ms());
    let secure = if ctx.secure_cookie { "; Secure" } else { "" };
    let ttl = expires_ms.saturating_sub(now_ms()) / 1_000;
    let cookie = format!("{COOKIE}={token}; HttpOnly; SameSite=Strict; Path=/; Max-Age={ttl}{secure}");
    let mut res = Json(json!({ "token": token, "expiresAt": expires_ms, "who": who })).into_response();
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        res.headers_mut().insert(header::SET_COOKIE, v);
    }
    Ok(res)
}

/// Signing out needs a live session (`_caller`), then forgets its token.
async fn sign_out(State(ctx): Ax, headers: HeaderMap, _caller: Caller) -> ApiResult {
    if let Some(t) = super::token(&headers) {
        ctx.auth.close(&t);
    }
    let mut res = StatusCode::NO_CONTENT.into_response();
    res.headers_mut().insert(header::SET_COOKIE, HeaderValue::from_static("hs_session=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0"));
    Ok(res)
}

async fn me(State(ctx): Ax, caller: Caller) -> ApiResult {
    ok(json!({
        "who": caller.who(), "role": caller.role(), "expiresAt": caller.0.expires_ms,
        "hub": ctx.hub, "ward": ctx.ward, "chainId": ctx.chain.chain_id(), "contract": ctx.chain.contract().to_string(),
    }))
}

// ------------------------------------------------------------ JSON shapes

const ACVPU: [&str; 5] = ["A", "C", "V", "P", "U"];

/// A reading as JSON: SenML units (temperature in °C), unmeasured as null,
/// with its NEWS2.
pub(crate) fn vitals_json(r: &Reading, score: &Score) -> Value {
    let nz = |v: u16| (v > 0).then_some(v);
    json!({
        "seq": r.seq, "timestamp": r.timestamp,
        "heartRate": nz(r.heartRate), "respRate": nz(r.respRate), "spo2": nz(r.spo2),
        "systolic": nz(r.systolic), "diastolic": nz(r.diastolic),
        "temperature": nz(r.temperature).map(|t| t as f64 / 100.0),
        "consciousness": ACVPU.get((r.consciousness as usize).wrapping_sub(1)),
        "news2": score.total, "risk": score.risk().name(), "scores": score,
    })
}

fn status_name(code: u8) -> &'static str {
    PatientStatus::from_code(code).map_or("unknown", |s| s.name())
}

/// The archive's state, from the chain's `getArchive` checked against this
/// hub's own archive job (`docs/API.md`, "Archive state").
fn archive_json(status: u8, cid: &str, record_hash: B256, job: Option<&Job>) -> Value {
    let discharged = matches!(PatientStatus::from_code(status), Some(PatientStatus::Discharged | PatientStatus::Archived));
    let state = match (discharged, cid.is_empty(), job) {
        (false, _, _) => "not-discharged",
        (true, false, Some(j)) if j.cid.as_deref() == Some(cid) && j.record_hash == Some(record_hash) => "verified",
        (true, false, Some(_)) => "mismatch",
        (true, false, None) => "archived-elsewhere",
        (true, true, Some(j)) if j.state == ArchiveStep::Failed => "failed",
        (true, true, Some(j)) if matches!(j.state, ArchiveStep::Sealed | ArchiveStep::Pinned | ArchiveStep::Archived) => "in-progress",
        (true, true, _) => "pending",
    };
    json!({
        "cid": (!cid.is_empty()).then_some(cid),
        "recordHash": (!cid.is_empty()).then_some(record_hash),
        "state": state,
        "step": job.map(|j| j.state.as_str()),
        "readings": job.and_then(|j| j.readings),
        "bytes": job.and_then(|j| j.blob_bytes),
        "error": job.and_then(|j| j.last_error.clone()),
    })
}

/// The time window of a stay, ms: readings of its device in it are its
/// record. The shared rule, as the archive and `archive verify` use it.
fn stay_window(p: &PatientInfo) -> (u64, u64) {
    let w = healthsense_abi::rules::reading::stay_window_ms(p.admittedAt, p.dischargedAt);
    (*w.start(), *w.end())
}

// -------------------------------------------------------- patient access

#[derive(Clone, Copy, PartialEq, Eq)]
enum Need {
    /// Vitals, alerts, proofs, the record.
    Clinical,
    /// Charges and the bill.
    Billing,
}

/// The stay `id` if the caller may see it for `need`: 400 bad id, 403 not
/// theirs, 404 unknown (only said to those who could see it).
async fn stay(ctx: &Ctx, caller: &Caller, id: &str, need: Need) -> Result<(B256, PatientInfo), ApiError> {
    let id = parse_id(id)?;
    let w = caller.who();
    if let Some(own) = w.patient {
        if own != id {
            return Err(ApiError::forbidden("a patient sees only their own record"));
        }
    } else if !(w.doctor || (w.insurer && need == Need::Billing)) {
        return Err(ApiError::forbidden(format!(
            "a {} session cannot see patient records{}",
            caller.role(),
            if w.insurer { " other than charges and bills" } else { "" }
        )));
    }
    let info = ctx.chain.view(H::getPatientCall { patientId: id }).await?;
    if info.status == 0 {
        return Err(ApiError::not_found(format!("no patient {id} on chain")));
    }
    if w.patient.is_none() && w.doctor && info.ward != ctx.ward_id {
        return Err(ApiError::forbidden(format!("patient {id} is in another ward; ask that ward's hub")));
    }
    if w.patient.is_none() && !w.doctor {
        let policy = ctx.chain.view(H::getPolicyCall { patientId: id }).await?;
        if policy.insurer != w.address {
            return Err(ApiError::forbidden(format!("{} does not insure patient {id}", w.address)));
        }
    }
    Ok((id, info))
}

async fn patient_json(ctx: &Ctx, id: B256, p: &PatientInfo) -> Result<Value, ApiError> {
    let (from, to) = stay_window(p);
    let latest = ctx.live.latest_of(&p.deviceId).filter(|l| (from..=to).contains(&l.reading.timestamp));
    let archive = if p.status >= PatientStatus::Discharged as u8 {
        let a = ctx.chain.view(H::getArchiveCall { patientId: id }).await?;
        let job = ctx.store(|s| s.archive_job(id))?;
        archive_json(p.status, &a.cid, a.recordHash, job.as_ref())
    } else {
        archive_json(p.status, "", B256::ZERO, None)
    };
    Ok(json!({
        "id": id, "status": status_name(p.status), "deviceId": p.deviceId,
        "serial": ctx.live.latest_of(&p.deviceId).map(|l| l.serial),
        "ward": p.ward, "wardName": (p.ward == ctx.ward_id).then_some(&ctx.ward),
        "admittedAt": p.admittedAt, "dischargedAt": (p.dischargedAt > 0).then_some(p.dischargedAt),
        "chargeCount": p.chargeCount,
        "latest": latest.map(|l| vitals_json(&l.reading, &l.score)),
        "archive": archive,
    }))
}

async fn patient(State(ctx): Ax, caller: Caller, Path(id): Path<String>) -> ApiResult {
    let (id, info) = stay(&ctx, &caller, &id, Need::Clinical).await?;
    ok(patient_json(&ctx, id, &info).await?)
}

/// The patients admitted to this hub's ward, from `PatientAdmitted` events
/// (read incrementally; the chain is the only list of stays).
pub(crate) struct WardIndex {
    next_block: u64,
    stays: Vec<B256>,
}

impl WardIndex {
    pub fn new(from_block: u64) -> Self {
        Self { next_block: from_block, stays: Vec::new() }
    }
}

async fn ward_stays(ctx: &Ctx) -> Result<Vec<B256>, ApiError> {
    let mut index = ctx.index.lock().await;
    let head = ctx.chain.block_number().await?;
    if head >= index.next_block {
        let filter = Filter::new()
            .address(ctx.chain.contract())
            .from_block(index.next_block)
            .to_block(head)
            .event_signature(H::PatientAdmitted::SIGNATURE_HASH)
            .topic3(ctx.ward_id);
        let logs = ctx.chain.provider().get_logs(&filter).await.map_err(|e| ApiError::from(crate::chain::ChainError::Transport(e.to_string())))?;
        for log in logs {
            if let Ok(e) = H::PatientAdmitted::decode_log_data(log.data()) {
                index.stays.push(e.patientId);
            }
        }
        index.next_block = head + 1;
    }
    Ok(index.stays.clone())
}

async fn patients(State(ctx): Ax, caller: Caller) -> ApiResult {
    let w = caller.who();
    let ids = match w.patient {
        Some(own) => vec![own],
        None => {
            caller.require(w.doctor, "the ward's patient list")?;
            ward_stays(&ctx).await?
        }
    };
    let mut items = Vec::new();
    for id in ids.into_iter().rev() {
        let info = ctx.chain.view(H::getPatientCall { patientId: id }).await?;
        items.push(patient_json(&ctx, id, &info).await?);
    }
    ok(json!({ "items": items }))
}

fn cursor(s: &str) -> Result<(u64, u64), ApiError> {
    s.split_once('-')
        .and_then(|(t, q)| Some((t.parse().ok()?, q.parse().ok()?)))
        .ok_or_else(|| ApiError::bad_request(format!("cursor {s:?} is not one this API returned")))
}

async fn vitals(State(ctx): Ax, caller: Caller, Path(id): Path<String>, RawQuery(q): RawQuery) -> ApiResult {
    let q = Params::new(q);
    let limit = q.limit()?;
    let (from, to) = (q.u64("from")?.unwrap_or(0), q.u64("to")?.unwrap_or(u64::MAX));
    if from > to {
        return Err(ApiError::bad_request(format!("from ({from}) is after to ({to})")));
    }
    let after = q.0.get("cursor").map(|c| cursor(c)).transpose()?;
    let (_, p) = stay(&ctx, &caller, &id, Need::Clinical).await?;
    let (s_from, s_to) = stay_window(&p);
    let (from, to) = (from.max(s_from), to.min(s_to));
    let rows = if from > to { Vec::new() } else { ctx.store(|s| queries::vitals(s, p.deviceId, from, to, after, limit))? };
    let next = (rows.len() == limit).then(|| rows.last().map(|r| format!("{}-{}", r.reading.timestamp, r.reading.seq))).flatten();
    let items: Vec<Value> = rows
        .iter()
        .map(|r| {
            let mut v = vitals_json(&r.reading, &news2::score(&r.reading));
            v["batch"] = json!(r.batch_seq);
            v
        })
        .collect();
    ok(json!({ "items": items, "next": next }))
}

async fn proof(State(ctx): Ax, caller: Caller, Path((id, seq)): Path<(String, String)>) -> ApiResult {
    let seq: u64 = seq.parse().map_err(|_| ApiError::bad_request(format!("seq {seq:?} is not a number")))?;
    let (_, p) = stay(&ctx, &caller, &id, Need::Clinical).await?;
    let (from, to) = stay_window(&p);
    let row = ctx
        .store(|s| s.reading(p.deviceId, seq))?
        .filter(|r| (from..=to).contains(&r.reading.timestamp))
        .ok_or_else(|| ApiError::not_found(format!("no reading {seq} in this stay")))?;
    let leaf = healthsense_abi::rules::reading::reading_leaf(&row.reading);
    let batch = match row.batch_seq {
        Some(b) => ctx.store(|s| queries::batch(s, b))?,
        None => None,
    };
    let hub = ctx.chain.hub();
    ok(json!({
        "reading": vitals_json(&row.reading, &news2::score(&row.reading)),
        "signed": super::signed::signed_json(&row.reading),
        "signature": alloy::hex::encode_prefixed(&row.signature),
        "domain": super::signed::domain_json(ctx.chain.chain_id(), ctx.chain.contract()),
        "leaf": leaf,
        "proof": row.proof,
        "batch": batch.map(|b| json!({ "seq": b.seq, "batchId": ids::batch_id(hub, b.seq), "root": b.root, "state": b.state, "tx": b.tx, "block": b.block })),
        "verify": format!("verifyReading(batchId, leaf, proof) on contract {} returns true once the batch is anchored", ctx.chain.contract()),
    }))
}

fn alert_json(a: &alerts::Alert) -> Value {
    serde_json::to_value(a).unwrap_or(Value::Null)
}

async fn patient_alerts(State(ctx): Ax, caller: Caller, Path(id): Path<String>, RawQuery(q): RawQuery) -> ApiResult {
    let q = Params::new(q);
    let limit = q.limit()?;
    let before = q.u64("cursor")?.map(|c| c.min(i64::MAX as u64) as i64);
    let (_, p) = stay(&ctx, &caller, &id, Need::Clinical).await?;
    let (from, to) = stay_window(&p);
    let rows = ctx.store(|s| alerts::device_alerts(s, Some(p.deviceId), from, to, before, limit, &ctx.hub))?;
    let next = (rows.len() == limit).then(|| rows.last().map(|a| a.id.to_string())).flatten();
    ok(json!({ "items": rows.iter().map(alert_json).collect::<Vec<_>>(), "next": next }))
}

fn money(v: U256) -> String {
    v.to_string()
}

async fn charge_rows(ctx: &Ctx, id: B256, n: u32) -> Result<(Vec<Value>, [U256; CATEGORY_COUNT]), ApiError> {
    let mut rows = Vec::new();
    let mut totals = [U256::ZERO; CATEGORY_COUNT];
    for i in 0..n {
        let c = ctx.chain.view(H::getChargeCall { patientId: id, index: i }).await?;
        let amount = billing::charge_amount(c.quantity, c.unitPrice);
        if let Some(t) = totals.get_mut(c.category as usize) {
            *t += amount;
        }
        rows.push(json!({
            "index": i, "code": ids::charge_code_text(&c.code), "category": Category::from_code(c.category).map(|c| c.name()),
            "quantity": c.quantity, "unitPrice": c.unitPrice.to_string(), "amount": money(amount), "doctor": c.doctor.to_string(),
        }));
    }
    Ok((rows, totals))
}

async fn charges(State(ctx): Ax, caller: Caller, Path(id): Path<String>) -> ApiResult {
    let (id, p) = stay(&ctx, &caller, &id, Need::Billing).await?;
    let (items, _) = charge_rows(&ctx, id, p.chargeCount).await?;
    ok(json!({ "items": items }))
}

async fn bill(State(ctx): Ax, caller: Caller, Path(id): Path<String>) -> ApiResult {
    let (id, p) = stay(&ctx, &caller, &id, Need::Billing).await?;
    let pol = ctx.chain.view(H::getPolicyCall { patientId: id }).await?;
    let policy = (pol.insurer != Address::ZERO).then_some(Policy {
        coverage_bps: pol.coverageBps,
        deductible: pol.deductible,
        cap: pol.cap,
        covered_categories: pol.coveredCategories,
    });
    let policy_json = policy.map(|_| {
        json!({ "insurer": pol.insurer.to_string(), "coverageBps": pol.coverageBps, "deductible": pol.deductible.to_string(),
                "cap": pol.cap.to_string(), "coveredCategories": pol.coveredCategories })
    });
    if p.status >= PatientStatus::Discharged as u8 {
        let b = ctx.chain.view(H::getBillCall { patientId: id }).await?;
        return ok(json!({
            "final": true, "bedDays": b.bedDays, "total": money(b.total), "covered": money(b.covered), "due": money(b.due),
            "rulesVersion": b.rulesVersion, "policy": policy_json, "currency": ctx.currency,
        }));
    }
    // Admitted: what the contract would bill if discharged now (the shared
    // rule), by the chain's clock, which the contract bills by.
    let (_, category_totals) = charge_rows(&ctx, id, p.chargeCount).await?;
    let daily_rate = ctx.chain.view(H::tariffCall { ward: p.ward }).await?;
    let chain_now = monitor::chain_now_s(&ctx).await?;
    let b = billing::compute_bill(&BillInput {
        admitted_at: p.admittedAt,
        discharged_at: chain_now.max(p.admittedAt),
        daily_rate,
        category_totals,
        policy,
    });
    ok(json!({
        "final": false, "bedDays": b.bed_days, "total": money(b.total), "covered": money(b.covered), "due": money(b.due),
        "rulesVersion": null, "policy": policy_json, "currency": ctx.currency, "asOf": chain_now,
    }))
}

// -------------------------------------------------------- ward, devices

/// A device this hub has heard from: id, latest reading, reported state.
type Known = (B256, Option<alerts::Latest>, Option<queries::DeviceState>);

/// Every device this hub has heard from, by serial.
fn known_devices(ctx: &Ctx) -> Result<BTreeMap<String, Known>, ApiError> {
    let mut out: BTreeMap<String, Known> = BTreeMap::new();
    for (id, l) in ctx.live.latest() {
        out.insert(l.serial.clone(), (id, Some(l), None));
    }
    for (serial, st) in ctx.store(queries::device_states)? {
        out.entry(serial.clone()).or_insert_with(|| (ids::device_id(&serial), None, None)).2 = Some(st);
    }
    Ok(out)
}

async fn device_json(
    ctx: &Ctx,
    serial: &str,
    id: B256,
    latest: Option<&alerts::Latest>,
    state: Option<&queries::DeviceState>,
    clinical: bool,
) -> Result<Value, ApiError> {
    let info = ctx.chain.device(id).await?;
    let now = now_ms();
    let heard = latest.map(|l| l.received_ms).max(state.map(|s| s.at_ms)).unwrap_or(0);
    let status = healthsense_abi::rules::status::DeviceStatus::from_code(info.status).map_or("unknown", |s| s.name());
    let mut v = json!({
        "serial": serial, "deviceId": id, "status": status,
        "battery": state.and_then(|s| s.battery), "asleep": state.and_then(|s| s.asleep),
        "online": now.saturating_sub(heard) < ONLINE_MS, "lastSeen": (heard > 0).then_some(heard),
        "lastSeq": latest.map(|l| l.reading.seq),
        "patient": (info.patientId != B256::ZERO).then_some(info.patientId),
    });
    if clinical {
        v["latest"] = json!(latest.map(|l| vitals_json(&l.reading, &l.score)));
    }
    Ok(v)
}

fn staff_ops(caller: &Caller) -> Result<(), ApiError> {
    let w = caller.who();
    caller.require(w.patient.is_none() && (w.doctor || w.admin), "devices")
}

async fn devices(State(ctx): Ax, caller: Caller) -> ApiResult {
    staff_ops(&caller)?;
    let mut items = Vec::new();
    for (serial, (id, latest, state)) in known_devices(&ctx)? {
        items.push(device_json(&ctx, &serial, id, latest.as_ref(), state.as_ref(), false).await?);
    }
    ok(json!({ "items": items }))
}

async fn device(State(ctx): Ax, caller: Caller, Path(serial): Path<String>) -> ApiResult {
    staff_ops(&caller)?;
    let mut known = known_devices(&ctx)?;
    let (id, latest, state) =
        known.remove(&serial).ok_or_else(|| ApiError::not_found(format!("device {serial:?} has not been heard by this hub")))?;
    ok(device_json(&ctx, &serial, id, latest.as_ref(), state.as_ref(), false).await?)
}

// -------------------------------------------------------------- batches

async fn batches(State(ctx): Ax, _caller: Caller, RawQuery(q): RawQuery) -> ApiResult {
    let q = Params::new(q);
    let limit = q.limit()?;
    let before = q.u64("cursor")?;
    let rows = ctx.store(|s| queries::batches(s, before, limit))?;
    let next = (rows.len() == limit).then(|| rows.last().map(|b| b.seq.to_string())).flatten();
    let hub = ctx.chain.hub();
    let items: Vec<Value> = rows
        .iter()
        .map(|b| {
            let mut v = serde_json::to_value(b).unwrap_or(Value::Null);
            v["batchId"] = json!(ids::batch_id(hub, b.seq));
            v
        })
        .collect();
    ok(json!({ "hub": hub.to_string(), "items": items, "next": next }))
}

async fn batch(State(ctx): Ax, _caller: Caller, Path(seq): Path<String>) -> ApiResult {
    let seq: u64 = seq.parse().map_err(|_| ApiError::bad_request(format!("batch {seq:?} is not a number")))?;
    let b = ctx.store(|s| queries::batch(s, seq))?.ok_or_else(|| ApiError::not_found(format!("no batch {seq} on this hub")))?;
    let mut v = serde_json::to_value(&b).unwrap_or(Value::Null);
    v["batchId"] = json!(ids::batch_id(ctx.chain.hub(), b.seq));
    ok(v)
}

// ---------------------------------------------------------------- events

/// What a session may receive from the live stream.
enum Filter_ {
    /// Everything (doctor).
    Ward,
    /// Device state only (admin).
    States,
    /// One device's readings and alerts within a stay (patient).
    Stay(B256, u64, u64),
}

async fn events(State(ctx): Ax, caller: Caller) -> ApiResult {
    let w = caller.who().clone();
    let filter = if let Some(id) = w.patient {
        let p = ctx.chain.view(H::getPatientCall { patientId: id }).await?;
        let (from, to) = stay_window(&p);
        Filter_::Stay(p.deviceId, from, to)
    } else if w.doctor {
        Filter_::Ward
    } else if w.admin {
        Filter_::States
    } else {
        return Err(ApiError::forbidden("an insurer session has no live events"));
    };
    let rx = ctx.live.subscribe();
    let expires = caller.0.expires_ms;
    let hello = Event::default().event("hello").data(json!({ "role": caller.role(), "hub": ctx.hub }).to_string());
    let stream = futures_util::stream::unfold((rx, filter, Some(hello)), move |(mut rx, filter, first)| async move {
        if let Some(h) = first {
            return Some((Ok::<_, Infallible>(h), (rx, filter, None)));
        }
        loop {
            // The stream ends with the session, so an expired token stops seeing data.
            if now_ms() >= expires {
                return None;
            }
            let ev = match tokio::time::timeout(Duration::from_secs(5), rx.recv()).await {
                Err(_) => continue,
                Ok(Err(tokio::sync::broadcast::error::RecvError::Lagged(_))) => continue,
                Ok(Err(_)) => return None,
                Ok(Ok(ev)) => ev,
            };
            let out = match (&*ev, &filter) {
                (LiveEvent::Reading(l), Filter_::Ward) => Some(("reading", reading_event(l))),
                (LiveEvent::Reading(l), Filter_::Stay(d, from, to))
                    if l.reading.deviceId == *d && (*from..=*to).contains(&l.reading.timestamp) =>
                {
                    Some(("reading", reading_event(l)))
                }
                (LiveEvent::Alert(a), Filter_::Ward) => Some(("alert", alert_json(a))),
                (LiveEvent::Alert(a), Filter_::Stay(d, from, to)) if a.device_id == *d && (*from..=*to).contains(&a.timestamp) => {
                    Some(("alert", alert_json(a)))
                }
                (LiveEvent::Ack(a), Filter_::Ward) => Some(("ack", alert_json(a))),
                (LiveEvent::Ack(a), Filter_::Stay(d, from, to)) if a.device_id == *d && (*from..=*to).contains(&a.timestamp) => {
                    Some(("ack", alert_json(a)))
                }
                (LiveEvent::State { serial, battery, asleep }, Filter_::Ward | Filter_::States) => {
                    Some(("state", json!({ "serial": serial, "battery": battery, "asleep": asleep })))
                }
                _ => None,
            };
            if let Some((name, data)) = out {
                return Some((Ok(Event::default().event(name).data(data.to_string())), (rx, filter, None)));
            }
        }
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))).into_response())
}

fn reading_event(l: &alerts::Latest) -> Value {
    let mut v = vitals_json(&l.reading, &l.score);
    v["serial"] = json!(l.serial);
    v["deviceId"] = json!(l.reading.deviceId);
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn archive_state_checks_the_chain_against_the_hubs_job() {
        let hash = B256::repeat_byte(7);
        let mut job = Job {
            patient: B256::ZERO,
            device: B256::ZERO,
            state: ArchiveStep::Discharged,
            discharge_code: 1,
            requested_ms: 0,
            bill: None,
            blob_path: None,
            record_hash: None,
            blob_bytes: None,
            readings: None,
            cid: None,
            archive_tx: None,
            attempts: 0,
            last_error: None,
        };
        let state = |status, cid, job: Option<&Job>| archive_json(status, cid, hash, job)["state"].clone();
        assert_eq!(state(1, "", None), "not-discharged");
        assert_eq!(state(2, "", None), "pending");
        assert_eq!(state(2, "", Some(&job)), "pending");
        job.state = ArchiveStep::Pinned;
        assert_eq!(state(2, "", Some(&job)), "in-progress");
        job.state = ArchiveStep::Failed;
        assert_eq!(state(2, "", Some(&job)), "failed");
        assert_eq!(state(3, "bafy", None), "archived-elsewhere");
        (job.state, job.cid, job.record_hash) = (ArchiveStep::Archived, Some("bafy".into()), Some(hash));
        assert_eq!(state(3, "bafy", Some(&job)), "verified");
        assert_eq!(state(3, "bafz", Some(&job)), "mismatch");
        job.record_hash = Some(B256::ZERO);
        assert_eq!(state(3, "bafy", Some(&job)), "mismatch");
    }

    #[test]
    fn vitals_json_uses_senml_units_and_nulls() {
        let r = Reading { seq: 3, heartRate: 72, temperature: 3_705, consciousness: 3, ..Default::default() };
        let v = vitals_json(&r, &news2::score(&r));
        assert_eq!(v["temperature"], json!(37.05));
        assert_eq!(v["spo2"], Value::Null);
        assert_eq!(v["consciousness"], "V");
        assert_eq!((v["news2"].as_u64(), v["risk"].as_str()), (Some(3), Some("low-medium")));
        assert!(parse_id("0x12").is_err() && cursor("x").is_err());
    }
}
