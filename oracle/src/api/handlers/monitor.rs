//! The ward monitor's endpoints (issue 19): the ward sorted by risk with
//! stale beds marked, the downsampled trend of a stay, the acknowledgement
//! of a NEWS2 alert (the API's one write, to the hub store only) and the
//! chain's clock for the bill estimate. `docs/API.md` describes each.

use alloy::eips::BlockNumberOrTag;

use super::*;
use crate::alerts::{AckRefusal, Alert};
use crate::trend;

/// The header a dashboard request that changes something must carry. A
/// cross-site form cannot set it, and a cross-site `fetch` that sets it
/// needs a CORS preflight this API never grants; with the SameSite=Strict
/// cookie it keeps the acknowledgement first-party.
pub(crate) const CSRF_HEADER: &str = "x-healthsense-csrf";

/// Buckets a trend aims at when the caller names no `bucket` width.
const TREND_BUCKETS: u64 = 600;

/// The chain's latest block time, seconds: the clock the contract bills by.
pub(super) async fn chain_now_s(ctx: &Ctx) -> Result<u64, ApiError> {
    let block = ctx
        .chain
        .provider()
        .get_block_by_number(BlockNumberOrTag::Latest)
        .await
        .map_err(|e| ApiError::from(crate::chain::ChainError::Transport(e.to_string())))?
        .ok_or_else(|| ApiError::new(StatusCode::BAD_GATEWAY, "the chain has no latest block; try again"))?;
    Ok(block.header.timestamp)
}

/// One bed of the ward view, with what it sorts by.
struct BedView {
    news2: Option<u8>,
    age_ms: Option<u64>,
    json: Value,
}

/// `GET /ward`: occupied beds only (a discharged stay leaves the ward),
/// highest NEWS2 first, then the oldest last reading; each bed's age and
/// stale marker and its current alert; the ward's current alerts.
pub(super) async fn ward(State(ctx): Ax, caller: Caller) -> ApiResult {
    caller.require(caller.who().doctor && caller.who().patient.is_none(), "the ward overview")?;
    let now = now_ms();
    let current = ctx.store(|s| alerts::current_alerts(s, &ctx.hub))?;
    let mut beds = Vec::new();
    for (serial, (id, latest, state)) in known_devices(&ctx)? {
        let mut v = device_json(&ctx, &serial, id, latest.as_ref(), state.as_ref(), true).await?;
        let Some(patient) = v["patient"].as_str().and_then(|p| p.parse::<B256>().ok()) else { continue };
        let p = ctx.chain.view(H::getPatientCall { patientId: patient }).await?;
        let (from, to) = stay_window(&p);
        // A device reused by this stay: the earlier stay's reading is not this patient's.
        let latest = latest.filter(|l| (from..=to).contains(&l.reading.timestamp));
        let age_ms = latest.as_ref().map(|l| now.saturating_sub(l.received_ms));
        let alert = current.get(&id).filter(|a| (from..=to).contains(&a.timestamp));
        v["latest"] = json!(latest.as_ref().map(|l| vitals_json(&l.reading, &l.score)));
        v["ageMs"] = json!(age_ms);
        v["stale"] = json!(age_ms.is_none_or(|a| a > ctx.stale_after_ms));
        v["alert"] = json!(alert.map(alert_json));
        beds.push(BedView { news2: latest.as_ref().map(|l| l.score.total), age_ms, json: v });
    }
    beds.sort_by(|a, b| b.news2.cmp(&a.news2).then(b.age_ms.unwrap_or(u64::MAX).cmp(&a.age_ms.unwrap_or(u64::MAX))));
    let mut open: Vec<&Value> = beds.iter().filter_map(|b| b.json.get("alert")).filter(|a| !a.is_null() && a["level"] != "none").collect();
    open.sort_by_key(|a| std::cmp::Reverse(crate::news2::Risk::from_name(a["level"].as_str().unwrap_or("none"))));
    let open: Vec<Value> = open.into_iter().cloned().collect();
    ok(json!({
        "hub": ctx.hub, "ward": ctx.ward, "currency": ctx.currency, "now": now, "staleAfterMs": ctx.stale_after_ms,
        "beds": beds.into_iter().map(|b| b.json).collect::<Vec<_>>(), "alerts": open,
    }))
}

/// The default bucket width for a range of `span` ms: the range in about
/// [`TREND_BUCKETS`]; past 10 s rounded up to whole minutes, so every
/// bucket is whole minutes of the rollup (`crate::trend`).
fn default_width(span: u64) -> u64 {
    let w = span / TREND_BUCKETS;
    if w > 10_000 {
        w.div_ceil(trend::MINUTE_MS) * trend::MINUTE_MS
    } else {
        w.max(1_000)
    }
}

/// `GET /patients/{id}/trend?from&to&bucket&limit&cursor`: the stay's
/// readings in time buckets of `bucket` ms (default: the range in about 600,
/// whole minutes past 10 s), aligned to multiples of the width since the
/// epoch; each with its reading count, sequence range, and per vital the
/// minimum, mean and maximum (so a spike is never averaged away), NEWS2 min
/// and max. Temperature in °C to 0.1 (the charted rounding), the rest whole
/// units. Pages of `limit` buckets (default and most 1,000); `next` is the
/// next page's `cursor`. Whole minutes come from the store's per-minute
/// rollup, so a 24-hour trend reads about 1,440 rows.
pub(super) async fn trend(State(ctx): Ax, caller: Caller, Path(id): Path<String>, RawQuery(q): RawQuery) -> ApiResult {
    let q = Params::new(q);
    let limit = q.limit_or(MAX_LIMIT)? as u64;
    let (_, p) = stay(&ctx, &caller, &id, Need::Clinical).await?;
    let (s_from, s_to) = stay_window(&p);
    let last = ctx.live.latest_of(&p.deviceId).map_or(now_ms(), |l| l.reading.timestamp.max(now_ms()));
    let from = q.u64("from")?.unwrap_or(s_from).max(s_from);
    let to = q.u64("to")?.unwrap_or(u64::MAX).min(s_to).min(last);
    if from > to {
        return ok(json!({ "from": from, "to": to, "bucket": 1_000, "items": [], "next": null }));
    }
    let width = match q.u64("bucket")? {
        Some(0) => return Err(ApiError::bad_request("bucket must be at least 1 (ms)")),
        Some(w) => w,
        None => default_width(to - from),
    };
    let first = from - from % width;
    let start = match q.u64("cursor")? {
        Some(c) if c < first || c > to || c % width != 0 => {
            return Err(ApiError::bad_request(format!("cursor {c} is not one this API returned")));
        }
        Some(c) => c,
        None => first,
    };
    let end = start.saturating_add(width.saturating_mul(limit)).saturating_sub(1).min(to);
    let buckets = ctx.store(|s| trend::trend(s, p.deviceId, start.max(from), end, width, trend::Source::Rollup))?;
    let whole = |v: u64| json!(v);
    let tenths = |v: u64| json!(v as f64 / 10.0);
    let show = |a: &trend::Agg, scale: &dyn Fn(u64) -> Value| {
        a.min_mean_max().map_or(Value::Null, |(lo, mean, hi)| json!([scale(lo), scale(mean), scale(hi)]))
    };
    let items: Vec<Value> = buckets
        .iter()
        .map(|(&t, b)| {
            let [hr, rr, spo2, sys, dia, temp] = &b.vitals;
            json!({
                // A first bucket that began before `from` starts, as shown, there.
                "t": t.max(from), "n": b.n, "seq": [b.seq.0, b.seq.1],
                "heartRate": show(hr, &whole), "respRate": show(rr, &whole), "spo2": show(spo2, &whole),
                "systolic": show(sys, &whole), "diastolic": show(dia, &whole), "temperature": show(temp, &tenths),
                "news2": [b.news2.0, b.news2.1],
            })
        })
        .collect();
    let next = (end < to).then(|| end + 1);
    ok(json!({ "from": from, "to": to, "bucket": width, "items": items, "next": next }))
}

/// Refuses a state-changing request that did not come from the dashboard's
/// own page: without the [`CSRF_HEADER`], or from another origin.
fn same_origin(headers: &HeaderMap) -> Result<(), ApiError> {
    if headers.get(CSRF_HEADER).and_then(|v| v.to_str().ok()) != Some("1") {
        return Err(ApiError::forbidden(format!("send the header {CSRF_HEADER}: 1 (the dashboard does); cross-site requests are refused")));
    }
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok());
    if let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) {
        let authority = origin.split_once("://").map(|(_, a)| a);
        if authority.is_none() || authority != host {
            return Err(ApiError::forbidden(format!("a request from {origin} is cross-site; open the dashboard on its own address")));
        }
    }
    if let Some(site) = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok()) {
        if site != "same-origin" && site != "none" {
            return Err(ApiError::forbidden(format!("a {site} request may not acknowledge alerts")));
        }
    }
    Ok(())
}

/// `POST /patients/{id}/alerts/{alert}/ack` (DOCTOR): acknowledges the
/// stay's current alert; the hub store records who and when, the alert
/// topic and the live stream carry it. Idempotent: a second
/// acknowledgement answers the first.
pub(super) async fn acknowledge(
    State(ctx): Ax,
    caller: Caller,
    headers: HeaderMap,
    Path((id, alert)): Path<(String, String)>,
) -> ApiResult {
    same_origin(&headers)?;
    let (_, p) = stay(&ctx, &caller, &id, Need::Clinical).await?;
    let w = caller.who();
    caller.require(w.doctor && w.patient.is_none(), "alert acknowledgements (doctors only)")?;
    let alert: i64 = alert.parse().map_err(|_| ApiError::bad_request(format!("alert {alert:?} is not an alert id")))?;
    let (from, to) = stay_window(&p);
    let in_stay = |a: &Alert| a.device_id == p.deviceId && (from..=to).contains(&a.timestamp);
    if !ctx.store(|s| alerts::alert(s, alert, &ctx.hub))?.is_some_and(|a| in_stay(&a)) {
        return Err(ApiError::not_found(format!("no alert {alert} in this stay")));
    }
    let now = now_ms();
    let acked = match ctx.store(|s| alerts::acknowledge(s, alert, w.address, now, &ctx.hub))? {
        Ok(a) => a,
        Err(AckRefusal::Unknown) => return Err(ApiError::not_found(format!("no alert {alert} in this stay"))),
        Err(AckRefusal::NotCurrent(current)) => {
            return Err(ApiError::new(StatusCode::CONFLICT, format!("alert {alert} was replaced by alert {current}; acknowledge that one")));
        }
        Err(AckRefusal::Resolved) => {
            return Err(ApiError::new(StatusCode::CONFLICT, format!("alert {alert} is a resolution; there is nothing to acknowledge")));
        }
    };
    if acked.ack.as_ref().is_some_and(|k| k.by == w.address && k.at == now) {
        tracing::info!(serial = %acked.serial, alert, level = acked.level.name(), by = %w.address, "NEWS2 alert acknowledged");
        ctx.live.acknowledged(acked.clone()).await;
    }
    ok(alert_json(&acked))
}
