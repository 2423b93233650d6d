// HealthSense dashboard: plain JavaScript, no build step, no third-party code.
// Reads the hub's REST API (docs/API.md) with the session cookie and follows
// its server-sent events. Sign-in: Sign-In with Ethereum, through a browser
// wallet (window.ethereum, personal_sign) when there is one, or by pasting a
// signature made with any wallet tool.
//
// The trend charts are SVG this script draws (docs/API.md, "Dashboard", says
// why not a charting library): a fixed clinical range per vital, the NEWS2
// score bands shaded and numbered, a clock-time axis, and the server's
// min/mean/max buckets (GET /trend) merged with live readings by sequence
// number, so neither the history nor a live reading can drop the other.
'use strict';

const $ = (sel, el = document) => el.querySelector(sel);
const SVG = 'http://www.w3.org/2000/svg';

// One rule per vital for what is shown: whole units, temperature to 0.1 °C
// rounded half up (the NEWS2 chart's rule, news2::temperature_tenths).
function tenths(celsius) { return Math.floor((Math.round(celsius * 100) + 5) / 10); }
function fmt(key, v) {
  if (v === null || v === undefined) return '—';
  if (key === 'temperature') return (tenths(v) / 10).toFixed(1);
  return String(Math.round(v));
}

// NEWS2 bands (RCP 2017) per charted vital: [low, high, score], inclusive,
// in the vital's display steps; the chart shades scores 1-3 and numbers them.
const VITALS = [
  { key: 'heartRate', label: 'Heart rate', unit: '/min', range: [30, 170],
    bands: [[0, 40, 3], [41, 50, 1], [51, 90, 0], [91, 110, 1], [111, 130, 2], [131, 400, 3]] },
  { key: 'respRate', label: 'Respiration', unit: '/min', range: [4, 36],
    bands: [[0, 8, 3], [9, 11, 1], [12, 20, 0], [21, 24, 2], [25, 100, 3]] },
  { key: 'spo2', label: 'SpO₂ (NEWS2 scale 1)', unit: '%', range: [80, 100],
    bands: [[0, 91, 3], [92, 93, 2], [94, 95, 1], [96, 100, 0]] },
  { key: 'systolic', second: 'diastolic', label: 'Blood pressure', unit: 'mmHg', range: [40, 220],
    bands: [[0, 90, 3], [91, 100, 2], [101, 110, 1], [111, 219, 0], [220, 400, 3]] },
  { key: 'temperature', label: 'Temperature', unit: '°C', range: [34, 41], step: 0.1,
    bands: [[0, 35.0, 3], [35.1, 36.0, 1], [36.1, 38.0, 0], [38.1, 39.0, 1], [39.1, 50, 2]] },
  { key: 'news2', label: 'NEWS2 (aggregate, highest per bucket)', unit: 'score', range: [0, 20],
    bands: [[0, 4, 0], [5, 6, 2], [7, 20, 3]] },
];
const RANGES = [['1 h', 3600e3], ['8 h', 8 * 3600e3], ['24 h', 24 * 3600e3], ['Whole stay', 'stay']];
const BUCKETS = 600; // per trend, so a 24 h stay at 1 Hz is 600 buckets, not 86,400 points
const LIVE_MAX = 5000; // live points kept before the trend is reloaded

const state = {
  me: null, view: null, patient: null, events: null, updates: 0,
  range: 3600e3, trend: null, held: null, trendToken: 0, live: new Map(), drawQueued: false,
  ward: null, current: new Map(), wardReload: null, unknown: new Set(),
};

async function api(path, opts = {}) {
  const headers = { 'Content-Type': 'application/json', ...(opts.headers || {}) };
  const res = await fetch(path, { credentials: 'same-origin', ...opts, headers });
  const body = res.status === 204 ? null : await res.json().catch(() => null);
  if (!res.ok) {
    const err = new Error((body && body.error) || res.statusText);
    err.status = res.status;
    throw err;
  }
  return body;
}

function show(id) {
  for (const s of document.querySelectorAll('main > section')) s.hidden = s.id !== id;
}

function text(el, v) { el.textContent = v === null || v === undefined ? '—' : String(v); }
function short(hex) { return hex ? hex.slice(0, 10) + '…' : '—'; }
function time(ms) { return ms ? new Date(ms).toLocaleTimeString([], { hour: '2-digit', minute: '2-digit', second: '2-digit' }) : '—'; }
function clock(ms, withDay, withSeconds) {
  const d = new Date(ms);
  const hm = d.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit', hour12: false, ...(withSeconds ? { second: '2-digit' } : {}) });
  return withDay ? `${d.toLocaleDateString([], { day: 'numeric', month: 'short' })} ${hm}` : hm;
}
function ago(ms) {
  if (ms === null || ms === undefined) return 'no reading';
  const s = Math.max(0, Math.round(ms / 1000));
  if (s < 120) return `${s} s ago`;
  if (s < 7200) return `${Math.round(s / 60)} min ago`;
  return `${Math.round(s / 3600)} h ago`;
}
function money(minor, currency) {
  if (minor === null || minor === undefined) return '—';
  const s = String(minor).padStart(3, '0');
  return `${s.slice(0, -2)}.${s.slice(-2)}${currency ? ' ' + currency : ''}`;
}
function riskClass(risk) { return 'badge risk-' + (risk || 'none'); }
const RISK_TEXT = { none: 'no risk', low: 'low', 'low-medium': 'low-medium', medium: 'medium', high: 'HIGH' };
// A NEWS2 badge says its risk in words too: colour is never the only cue.
function badge(score, risk) {
  const b = document.createElement('span');
  b.className = riskClass(risk);
  b.dataset.risk = risk || 'none';
  text(b, score === null || score === undefined ? '—' : `${score} ${RISK_TEXT[risk] || ''}`.trim());
  return b;
}
function el(tag, cls, content) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (content !== undefined) text(e, content);
  return e;
}

// ------------------------------------------------------------- sign-in

function stayValue() {
  const v = $('#stay').value.trim();
  return v === '' ? undefined : Number(v);
}

async function finishSignIn(message, signature) {
  await api('/api/v1/auth/session', { method: 'POST', body: JSON.stringify({ message, signature }) });
  await start();
}

function signInError(e) { text($('#signin-error'), e.message); }

async function walletSignIn() {
  if (!window.ethereum) {
    signInError(new Error('No browser wallet found: use "sign the message with your wallet tool" below.'));
    $('#manual').open = true;
    return;
  }
  try {
    const [address] = await window.ethereum.request({ method: 'eth_requestAccounts' });
    const ch = await api('/api/v1/auth/challenge', { method: 'POST', body: JSON.stringify({ address, stay: stayValue() }) });
    const hex = '0x' + Array.from(new TextEncoder().encode(ch.message), b => b.toString(16).padStart(2, '0')).join('');
    const signature = await window.ethereum.request({ method: 'personal_sign', params: [hex, address] });
    await finishSignIn(ch.message, signature);
  } catch (e) { signInError(e); }
}

async function getMessage() {
  try {
    const ch = await api('/api/v1/auth/challenge', { method: 'POST', body: JSON.stringify({ address: $('#address').value.trim(), stay: stayValue() }) });
    text($('#message'), ch.message);
  } catch (e) { signInError(e); }
}

async function pasteSignIn() {
  try { await finishSignIn($('#message').textContent, $('#signature').value.trim()); } catch (e) { signInError(e); }
}

async function signOut() {
  try { await api('/api/v1/auth/session', { method: 'DELETE' }); } catch (_) { /* already out */ }
  location.hash = '';
  location.reload();
}

// ---------------------------------------------------------------- live

function connect() {
  if (state.events) return;
  const es = new EventSource('/api/v1/events');
  state.events = es;
  es.onopen = () => { $('#live').className = 'on'; text($('#live'), 'live'); };
  es.onerror = () => { $('#live').className = 'off'; text($('#live'), 'reconnecting'); };
  es.addEventListener('reading', ev => onReading(JSON.parse(ev.data)));
  es.addEventListener('alert', ev => onAlert(JSON.parse(ev.data)));
  es.addEventListener('ack', ev => onAlert(JSON.parse(ev.data)));
  es.addEventListener('state', ev => onState(JSON.parse(ev.data)));
}

function counted() {
  state.updates += 1;
  document.body.dataset.updates = String(state.updates);
}

function onReading(r) {
  counted();
  if (state.held && state.held.length < LIVE_MAX) state.held.push(r); // a patient record on its way (showPatient)
  if (state.view === 'ward') {
    const row = findRow(r.serial);
    if (!row) {
      // Perhaps a new admission; a device whose stay was discharged keeps
      // sending, so each unknown serial asks once (the 10 s reload does the rest).
      if (!state.unknown.has(r.serial)) { state.unknown.add(r.serial); reloadWardSoon(); }
      return;
    }
    row.hsBed.latest = r;
    row.hsBed.receivedAt = Date.now();
    fillRow(row);
    sortWard();
  } else if (state.patient && r.deviceId === state.patient.deviceId) {
    // Kept whether or not the history has arrived yet: merged by seq when drawn.
    state.live.set(r.seq, point(r));
    setNews2(r);
    if (state.live.size > LIVE_MAX) loadTrend();
    else scheduleDraw();
  }
}

// An alert level change or an acknowledgement: the device's current alert.
function onAlert(a) {
  counted();
  const cur = state.current.get(a.deviceId);
  if (!cur || cur.id <= a.id) state.current.set(a.deviceId, a);
  wardBanner();
  if (state.view === 'ward') {
    const row = findRow(a.serial);
    if (row) { row.hsBed.alert = state.current.get(a.deviceId); fillRow(row); }
    wardAlerts();
  }
  if (state.patient && a.deviceId === state.patient.deviceId) {
    const list = $('#p-alerts');
    const old = list.querySelector(`li[data-id="${a.id}"]`);
    if (old) old.replaceWith(alertItem(a)); else list.prepend(alertItem(a));
    patientBanner();
  }
}

function onState(s) {
  if (state.view !== 'ward') return;
  const row = findRow(s.serial);
  if (!row) return;
  if (s.battery !== null && s.battery !== undefined) row.hsBed.battery = s.battery;
  if (s.asleep !== null && s.asleep !== undefined) row.hsBed.asleep = s.asleep;
  fillRow(row);
  sortWard();
}

function alertText(a) {
  const ack = a.ack ? ` · acknowledged by ${short(a.ack.by)} at ${time(a.ack.at)}` : '';
  return a.level === 'none'
    ? `${time(a.timestamp)} ${a.serial}: resolved (NEWS2 ${a.score}, was ${a.previous})`
    : `${time(a.timestamp)} ${a.serial}: ${a.level.toUpperCase()} (raised at NEWS2 ${a.score})${ack}`;
}

function alertItem(a) {
  const li = el('li', 'alert' + (a.ack ? ' acked' : ''));
  li.dataset.level = a.level;
  li.dataset.id = String(a.id);
  li.append(badge(a.score, a.level === 'none' ? 'none' : a.level), ' ', alertText(a));
  return li;
}

// Every unacknowledged HIGH alert of the ward, on every view of a doctor,
// until a doctor acknowledges it.
function wardBanner() {
  const b = $('#ward-banner');
  const onWard = a => !state.ward || state.ward.beds.some(x => x.deviceId === a.deviceId);
  const doctor = state.me && state.me.role === 'doctor';
  const open = doctor ? Array.from(state.current.values()).filter(a => a.level === 'high' && !a.ack && onWard(a)) : [];
  b.hidden = open.length === 0;
  b.replaceChildren();
  if (!open.length) return;
  b.append(el('strong', null, `${open.length} HIGH NEWS2 alert${open.length > 1 ? 's' : ''} not acknowledged: `));
  for (const a of open) {
    const bed = state.ward && state.ward.beds.find(x => x.deviceId === a.deviceId);
    const link = el('a', 'banner-link', `bed ${a.serial} (NEWS2 ${a.score} at ${time(a.timestamp)})`);
    link.href = bed && bed.patient ? '#/patient/' + bed.patient : '#/ward';
    b.append(link, ' ');
  }
}

// ---------------------------------------------------------------- ward

function findRow(serial) {
  return $('#beds tbody').querySelector(`tr[data-serial="${CSS.escape(serial)}"]`);
}

function reloadWardSoon() {
  if (state.wardReload) return;
  state.wardReload = setTimeout(() => { state.wardReload = null; if (state.view === 'ward') showWard().catch(() => {}); }, 2000);
}

function ageOf(bed) { return bed.receivedAt === null ? null : Date.now() - bed.receivedAt; }

function fillRow(row) {
  const bed = row.hsBed;
  const v = bed.latest;
  const cells = ['hr', 'rr', 'spo2', 'bp', 'temp', 'acvpu'];
  const values = v ? [fmt('heartRate', v.heartRate), fmt('respRate', v.respRate), fmt('spo2', v.spo2),
    v.systolic ? `${fmt('systolic', v.systolic)}/${fmt('diastolic', v.diastolic)}` : '—', fmt('temperature', v.temperature), v.consciousness]
    : cells.map(() => null);
  cells.forEach((c, i) => text($('.' + c, row), values[i]));
  const n = $('.news2', row);
  n.replaceChildren(badge(v ? v.news2 : null, v ? v.risk : 'none'));
  if (bed.alert && bed.alert.level !== 'none') {
    n.append(' ', el('span', 'alert-tag' + (bed.alert.ack ? ' acked' : ''), bed.alert.ack ? `${bed.alert.level} alert, acknowledged` : `${bed.alert.level} alert`));
  }
  row.dataset.news2 = v ? String(v.news2) : '-1';
  text($('.battery', row), bed.battery === null || bed.battery === undefined ? null : Math.round(bed.battery));
  const online = $('.online', row);
  text(online, bed.asleep ? 'asleep' : bed.online ? 'online' : 'offline');
  online.className = 'online ' + (bed.online ? 'online-yes' : 'offline');
  fillAge(row);
}

function fillAge(row) {
  const age = ageOf(row.hsBed);
  const stale = age === null || age > state.ward.staleAfterMs;
  const cell = $('.age', row);
  cell.replaceChildren();
  if (stale) cell.append(el('span', 'stale', '⚠ stale'), ' ');
  cell.append(ago(age));
  row.classList.toggle('is-stale', stale);
  row.dataset.age = String(age === null ? Number.MAX_SAFE_INTEGER : age);
  // The sort key: a time, not an age, so rows filled at different moments compare truly.
  row.dataset.received = String(row.hsBed.receivedAt === null ? 0 : row.hsBed.receivedAt);
}

// Highest NEWS2 first, then the oldest last reading; the focus stays put.
function sortWard() {
  const body = $('#beds tbody');
  const rows = Array.from(body.children);
  const key = r => [Number(r.dataset.news2), Number(r.dataset.received)];
  const sorted = rows.slice().sort((a, b) => {
    const [na, ra] = key(a); const [nb, rb] = key(b);
    return nb - na || ra - rb;
  });
  if (sorted.every((r, i) => r === rows[i])) return;
  const focused = document.activeElement;
  for (const r of sorted) body.append(r);
  if (focused && body.contains(focused)) focused.focus();
}

function bedRow(bed) {
  const row = document.createElement('tr');
  row.dataset.serial = bed.serial;
  for (const c of ['bed', 'patient', 'hr', 'rr', 'spo2', 'bp', 'temp', 'acvpu', 'news2', 'age', 'battery', 'online']) row.append(el('td', c));
  const th = el('th', 'bed', bed.serial);
  th.scope = 'row';
  row.firstChild.replaceWith(th);
  const a = el('a', 'patient-link', short(bed.patient));
  a.href = '#/patient/' + bed.patient;
  a.setAttribute('aria-label', `Open patient ${short(bed.patient)} in bed ${bed.serial}`);
  $('.patient', row).append(a);
  return row;
}

function wardAlerts() {
  const list = $('#ward-alerts');
  list.replaceChildren();
  const open = Array.from(state.current.values()).filter(a => a.level !== 'none' && state.ward && state.ward.beds.some(b => b.deviceId === a.deviceId));
  open.sort((a, b) => ['low-medium', 'medium', 'high'].indexOf(b.level) - ['low-medium', 'medium', 'high'].indexOf(a.level));
  for (const a of open) list.append(alertItem(a));
  if (!open.length) list.append(el('li', 'muted', 'No open alerts.'));
}

async function showWard() {
  const w = await api('/api/v1/ward');
  state.view = 'ward';
  state.patient = null;
  state.ward = w;
  show('ward');
  text($('#ward-name'), w.ward);
  const body = $('#beds tbody');
  const keep = new Set(w.beds.map(b => b.serial));
  for (const r of Array.from(body.children)) if (!keep.has(r.dataset.serial)) r.remove();
  for (const bed of w.beds) {
    let row = findRow(bed.serial);
    if (!row || row.hsBed.patient !== bed.patient) {
      if (row) row.remove();
      row = bedRow(bed);
      body.append(row);
    }
    row.hsBed = { ...bed, receivedAt: bed.ageMs === null ? null : Date.now() - bed.ageMs };
    if (bed.alert) state.current.set(bed.deviceId, bed.alert);
    fillRow(row);
  }
  sortWard();
  wardAlerts();
  wardBanner();
}

function tick() {
  if (state.view === 'ward') {
    for (const row of $('#beds tbody').children) fillAge(row);
    sortWard();
  }
}

async function showDevices() {
  const d = await api('/api/v1/devices');
  state.view = 'devices';
  state.patient = null;
  show('devices');
  const body = $('#device-table tbody');
  body.replaceChildren();
  for (const dev of d.items) {
    const tr = document.createElement('tr');
    for (const v of [dev.serial, dev.status, dev.battery === null ? null : Math.round(dev.battery), dev.asleep ? 'asleep' : dev.online ? 'online' : 'offline', dev.lastSeq]) {
      tr.append(el('td', null, v));
    }
    body.append(tr);
  }
}

// --------------------------------------------------------------- trends

// A reading as a one-reading bucket, in the trend's shape.
function point(r) {
  const p = { t: r.timestamp, n: 1, seq: [r.seq, r.seq], news2: [r.news2, r.news2] };
  for (const { key, second } of VITALS) {
    for (const k of [key, second]) {
      if (!k || k === 'news2') continue;
      const v = r[k];
      p[k] = v === null || v === undefined ? null : k === 'temperature' ? [tenths(v) / 10, tenths(v) / 10, tenths(v) / 10] : [v, v, v];
    }
  }
  return p;
}

// The history's buckets, then every live reading newer than the history.
function merged() {
  const items = state.trend ? state.trend.items : [];
  const through = state.trend ? state.trend.maxSeq : -1;
  const live = Array.from(state.live.values()).filter(p => p.seq[0] > through).sort((a, b) => a.t - b.t);
  return items.concat(live);
}

function windowOf() {
  const p = state.patient;
  const end = p.dischargedAt ? p.dischargedAt * 1000 : Date.now();
  // A fixed window ending now, as a monitor shows it (empty before admission).
  const start = state.range === 'stay' ? p.admittedAt * 1000 : end - state.range;
  return [start, Math.max(end, start + 60e3)];
}

// The bucket width for a window of `span` ms: about BUCKETS buckets, past
// 10 s in whole minutes, which the hub answers from its per-minute rollup.
function bucketFor(span) {
  const w = Math.ceil(span / BUCKETS);
  return w > 10e3 ? Math.ceil(w / 60e3) * 60e3 : Math.max(1000, w);
}

// Every page of a trend; null once `stale()` says a newer load won.
async function trendItems(id, from, bucket, stale = () => false) {
  const items = [];
  let cursor = null;
  do {
    const q = `from=${from}&bucket=${bucket}` + (cursor !== null ? `&cursor=${cursor}` : '');
    const page = await api(`/api/v1/patients/${id}/trend?${q}`);
    if (stale()) return null;
    items.push(...page.items);
    cursor = page.next;
  } while (cursor !== null);
  return items;
}

// `early`: the trend asked for together with the patient record (showPatient).
async function loadTrend(early) {
  const token = ++state.trendToken;
  const id = state.patient.id;
  const [start, to] = windowOf();
  const bucket = bucketFor(to - start);
  const from = Math.max(start, state.patient.admittedAt * 1000);
  $('#charts').setAttribute('aria-busy', 'true');
  const stale = () => token !== state.trendToken; // a newer load (range change) won
  const items = await (early && early.bucket === bucket ? early.items : trendItems(id, from, bucket, stale));
  if (!items || stale()) return;
  const maxSeq = items.reduce((m, b) => Math.max(m, b.seq[1]), -1);
  state.trend = { from, bucket, items, maxSeq };
  for (const s of Array.from(state.live.keys())) if (s <= maxSeq) state.live.delete(s);
  $('#charts').setAttribute('aria-busy', 'false');
  drawCharts();
}

function scheduleDraw() {
  if (state.drawQueued || !state.trend) return;
  state.drawQueued = true;
  requestAnimationFrame(() => { state.drawQueued = false; if (state.patient) drawCharts(); });
}

function niceStep(span, target, steps) {
  return steps.find(s => span / s <= target) || steps[steps.length - 1];
}
const MIN = 60e3, HOUR = 3600e3;
const TIME_STEPS = [10e3, 15e3, 30e3, MIN, 2 * MIN, 5 * MIN, 10 * MIN, 15 * MIN, 30 * MIN, HOUR, 2 * HOUR, 3 * HOUR, 6 * HOUR, 12 * HOUR, 24 * HOUR, 48 * HOUR, 168 * HOUR];
const VALUE_STEPS = [0.5, 1, 2, 5, 10, 20, 25, 50, 100];

function svg(tag, attrs, content) {
  const e = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, String(v));
  if (content !== undefined) e.textContent = content;
  return e;
}

const W = 600, H = 190, L = 46, R = 586, T = 10, B = 160;

function drawChart(card, vital, points, x0, x1) {
  const { key, second, unit, label } = vital;
  const step = vital.step || 1;
  const vals = [];
  // [min, mean, max] per vital; NEWS2 is [min, max]: the last is the highest.
  const top = a => a[a.length - 1];
  for (const p of points) for (const k of [key, second]) if (k && p[k]) vals.push(p[k][0], top(p[k]));
  // The clinical range, widened only to keep every value on the chart.
  const lo = Math.min(vital.range[0], ...vals);
  const hi = Math.max(vital.range[1], ...vals);
  const sx = t => L + ((t - x0) / Math.max(1, x1 - x0)) * (R - L);
  const sy = v => B - ((v - lo) / Math.max(1e-9, hi - lo)) * (B - T);
  const g = $('svg', card);
  g.replaceChildren();
  const latest = points.length ? points[points.length - 1] : null;
  const latestText = latest && latest[key]
    ? `${fmt(key, latest[key][1])}${second && latest[second] ? '/' + fmt(second, latest[second][1]) : ''} ${unit}` : 'no readings';
  g.append(svg('title', {}, `${label}, ${clock(x0, x1 - x0 > 24 * HOUR)} to ${clock(x1, x1 - x0 > 24 * HOUR)}: latest ${latestText}`));
  // NEWS2 bands: shaded by score and numbered at the right edge.
  const bands = svg('g', { class: 'bands' });
  for (const [blo, bhi, score] of vital.bands) {
    if (!score) continue;
    const y0 = sy(Math.min(hi, bhi + step / 2)), y1 = sy(Math.max(lo, blo - step / 2));
    if (y1 - y0 <= 0) continue;
    bands.append(svg('rect', { class: `band band-${score}`, x: L, y: y0, width: R - L, height: y1 - y0 }));
    if (y1 - y0 >= 9) bands.append(svg('text', { class: 'band-label', x: R - 3, y: (y0 + y1) / 2 + 4, 'text-anchor': 'end' }, `NEWS2 ${score}`));
  }
  g.append(bands);
  // y axis: ticks in the vital's unit.
  const yaxis = svg('g', { class: 'y-axis' });
  const ys = niceStep(hi - lo, 6, VALUE_STEPS);
  for (let v = Math.ceil(lo / ys) * ys; v <= hi + 1e-9; v += ys) {
    yaxis.append(svg('line', { class: 'grid', x1: L, x2: R, y1: sy(v), y2: sy(v) }));
    yaxis.append(svg('text', { x: L - 4, y: sy(v) + 4, 'text-anchor': 'end' }, step < 1 ? v.toFixed(1) : String(Math.round(v))));
  }
  yaxis.append(svg('text', { class: 'y-unit', x: 2, y: T + 2, 'dominant-baseline': 'hanging' }, unit));
  g.append(yaxis);
  // x axis: clock times.
  const xaxis = svg('g', { class: 'x-axis' });
  const xs = niceStep(x1 - x0, 6, TIME_STEPS);
  const offset = new Date(x0).getTimezoneOffset() * MIN;
  const withDay = x1 - x0 > 24 * HOUR;
  for (let t = Math.ceil((x0 - offset) / xs) * xs + offset; t <= x1; t += xs) {
    xaxis.append(svg('line', { class: 'tick', x1: sx(t), x2: sx(t), y1: B, y2: B + 4 }));
    xaxis.append(svg('text', { x: sx(t), y: B + 16, 'text-anchor': 'middle' }, clock(t, withDay, xs < MIN)));
  }
  xaxis.append(svg('line', { class: 'axis', x1: L, x2: R, y1: B, y2: B }));
  xaxis.append(svg('text', { class: 'x-unit', x: R, y: B + 29, 'text-anchor': 'end' }, 'time (local)'));
  g.append(xaxis);
  // Series: the min-max envelope of each bucket and a line through the means
  // (NEWS2: the highest), broken where readings stopped.
  const gap = Math.max(3 * (state.trend ? state.trend.bucket : 1000), 10e3);
  for (const [k, cls] of [[key, 'main'], [second, 'second']]) {
    if (!k) continue;
    const pts = points.filter(p => p[k]);
    let segs = [], seg = [];
    pts.forEach((p, i) => {
      if (i && p.t - pts[i - 1].t > gap) { segs.push(seg); seg = []; }
      seg.push(p);
    });
    if (seg.length) segs.push(seg);
    const mid = 1; // the mean; NEWS2's second value is its highest
    for (const s of segs) {
      const env = s.map(p => `${sx(p.t).toFixed(1)},${sy(top(p[k])).toFixed(1)}`).concat(s.slice().reverse().map(p => `${sx(p.t).toFixed(1)},${sy(p[k][0]).toFixed(1)}`));
      g.append(svg('polygon', { class: `envelope ${cls}`, points: env.join(' ') }));
      g.append(svg('polyline', { class: `line ${cls}`, points: s.map(p => `${sx(p.t).toFixed(1)},${sy(p[k][mid]).toFixed(1)}`).join(' ') }));
    }
  }
  text($('.value', card), latestText);
  card.dataset.points = String(points.filter(p => p[key]).reduce((n, p) => n + p.n, 0));
  card.dataset.lo = String(lo);
  card.dataset.hi = String(hi);
}

function chartCard(vital) {
  const card = el('figure', 'chart');
  card.dataset.vital = vital.key;
  const cap = el('figcaption');
  const h = el('h4');
  const name = el('span', 'name', `${vital.label} (${vital.unit})`);
  name.id = 'chart-' + vital.key;
  h.append(name, el('span', 'value'));
  cap.append(h);
  if (vital.second) {
    const legend = el('p', 'legend');
    legend.append(el('span', 'key main', 'systolic (solid)'), ' ', el('span', 'key second', 'diastolic (dashed)'));
    cap.append(legend);
  }
  const g = svg('svg', { viewBox: `0 0 ${W} ${H}`, role: 'img', 'aria-labelledby': 'chart-' + vital.key });
  card.append(cap, g);
  return card;
}

function drawCharts() {
  const box = $('#charts');
  const [x0, x1] = windowOf();
  const points = merged().filter(p => p.t >= x0);
  for (const vital of VITALS) {
    let card = box.querySelector(`[data-vital="${vital.key}"]`);
    if (!card) { card = chartCard(vital); box.append(card); }
    drawChart(card, vital, points, x0, x1);
  }
  box.dataset.buckets = String(state.trend ? state.trend.items.length : 0);
  box.dataset.live = String(points.length - (state.trend ? state.trend.items.filter(p => p.t >= x0).length : 0));
}

function rangeButtons() {
  const box = $('#ranges');
  box.replaceChildren();
  for (const [label, range] of RANGES) {
    const b = el('button', 'range', label);
    b.type = 'button';
    b.dataset.range = String(range);
    b.setAttribute('aria-pressed', String(range === state.range));
    b.addEventListener('click', () => {
      state.range = range;
      for (const x of box.children) x.setAttribute('aria-pressed', String(x === b));
      loadTrend().catch(e => text($('#where'), e.message));
    });
    box.append(b);
  }
}

// ------------------------------------------------------------- patient

function setNews2(r) {
  const n = $('#p-news2');
  n.replaceChildren(badge(r ? r.news2 : null, r ? r.risk : 'none'));
  state.latestScore = r ? r.news2 : null;
  patientBanner();
}

// The stay's current alert: level, when raised, the latest score, and the
// acknowledgement (a doctor may acknowledge here).
function patientBanner() {
  const b = $('#alert-banner');
  const a = state.patient && state.current.get(state.patient.deviceId);
  if (!a || a.level === 'none') { b.hidden = true; return; }
  b.hidden = false;
  b.className = 'risk-' + a.level;
  b.dataset.level = a.level;
  b.dataset.alert = String(a.id);
  const now = state.latestScore === null || state.latestScore === undefined ? '' : ` · NEWS2 now ${state.latestScore}`;
  text($('#alert-text'), `${a.level.toUpperCase()} NEWS2 alert since ${time(a.timestamp)} (raised at ${a.score})${now}`);
  const ackText = $('#ack-text');
  const button = $('#ack');
  if (a.ack) {
    text(ackText, `Acknowledged by ${short(a.ack.by)} at ${time(a.ack.at)}`);
    button.hidden = true;
  } else {
    text(ackText, 'Not acknowledged');
    button.hidden = !(state.me && state.me.role === 'doctor');
  }
}

async function acknowledge() {
  const a = state.patient && state.current.get(state.patient.deviceId);
  if (!a) return;
  const button = $('#ack');
  button.disabled = true;
  try {
    const done = await api(`/api/v1/patients/${state.patient.id}/alerts/${a.id}/ack`, { method: 'POST', headers: { 'X-HealthSense-CSRF': '1' } });
    onAlert(done);
  } catch (e) {
    text($('#ack-text'), `Not acknowledged: ${e.message}`);
  } finally {
    button.disabled = false;
  }
}

function dl(box, pairs) {
  box.replaceChildren();
  for (const [k, v] of pairs) box.append(el('dt', null, k), el('dd', null, v));
}

async function showPatient(id) {
  // The trend and the alerts are asked for with the patient record, not
  // after it: a live stay's fixed window (1 h, 8 h, 24 h) needs only the
  // range. Live readings are held meanwhile, until the record names the
  // stay's device.
  const span = typeof state.range === 'number' ? state.range : null;
  const early = span && { bucket: bucketFor(span), items: trendItems(id, Date.now() - span, bucketFor(span)) };
  const alertsReq = api(`/api/v1/patients/${id}/alerts?limit=20`);
  for (const req of [alertsReq, early && early.items]) if (req) req.catch(() => {}); // awaited below
  state.held = [];
  let p, held;
  try {
    p = await api(`/api/v1/patients/${id}`);
  } finally {
    held = state.held;
    state.held = null;
  }
  // Live readings of this stay are kept from here on, before the history
  // arrives; the two are merged by sequence number.
  state.view = 'patient';
  state.patient = p;
  state.trend = null;
  state.live = new Map();
  for (const r of held) if (r.deviceId === p.deviceId) state.live.set(r.seq, point(r));
  show('patient');
  text($('#p-id'), p.id);
  text($('#p-status'), p.status);
  text($('#p-serial'), p.serial);
  text($('#p-admitted'), new Date(p.admittedAt * 1000).toLocaleString());
  setNews2(p.latest);
  $('#charts').replaceChildren();
  rangeButtons();
  const alerts = await alertsReq;
  const list = $('#p-alerts');
  list.replaceChildren();
  for (const a of alerts.items) list.append(alertItem(a));
  if (alerts.items[0]) state.current.set(p.deviceId, alerts.items[0]); else state.current.delete(p.deviceId);
  patientBanner();
  wardBanner();
  await loadTrend(p.dischargedAt ? null : early);
  const bill = await api(`/api/v1/patients/${id}/bill`);
  const charges = await api(`/api/v1/patients/${id}/charges`);
  text($('#p-amount-head'), `Amount (${bill.currency})`);
  const body = $('#p-charges tbody');
  body.replaceChildren();
  for (const c of charges.items) {
    const tr = document.createElement('tr');
    for (const v of [c.code, c.category, c.quantity, money(c.amount)]) tr.append(el('td', null, v));
    body.append(tr);
  }
  dl($('#p-bill'), [
    ['Kind', bill.final ? 'final (computed at discharge)' : `estimate, if discharged at chain time ${new Date(bill.asOf * 1000).toLocaleString()}`],
    ['Bed days', bill.bedDays],
    ['Total', money(bill.total, bill.currency)],
    ['Insurance share', money(bill.covered, bill.currency) + (bill.policy ? ` (${bill.policy.coverageBps / 100} %)` : ' (no policy)')],
    ['Patient due', money(bill.due, bill.currency)],
  ]);
  $('#p-bill').dataset.covered = bill.covered;
  dl($('#p-archive'), [['CID', p.archive.cid], ['State', p.archive.state], ['Readings', p.archive.readings], ['Record hash', p.archive.recordHash], ['Error', p.archive.error]]);
}

async function lookup() {
  const id = $('#lookup-id').value.trim();
  location.hash = '#/patient/' + id;
}

// -------------------------------------------------------------- routing

async function route() {
  const me = state.me;
  const hash = location.hash;
  try {
    // #/patient/0x…[/1h|8h|24h|stay]: a patient, optionally at a trend range.
    const m = hash.match(/^#\/patient\/(0x[0-9a-fA-F]{64})(?:\/(1h|8h|24h|stay))?$/);
    if (m) {
      if (m[2]) state.range = m[2] === 'stay' ? 'stay' : Number(m[2].slice(0, -1)) * 3600e3;
      return await showPatient(m[1]);
    }
    if (me.role === 'patient') return await showPatient(me.who.patient);
    if (me.role === 'doctor') return await showWard();
    if (me.role === 'admin') return await showDevices();
    state.view = 'lookup';
    state.patient = null;
    show('lookup');
  } catch (e) {
    if (e.status === 401) return location.reload();
    text($('#where'), e.message);
  }
}

async function start() {
  state.me = await api('/api/v1/me');
  const me = state.me;
  text($('#where'), `${me.ward} · ${me.role} ${short(me.who.address)}`);
  $('#nav').hidden = false;
  $('#nav-ward').hidden = me.role !== 'doctor';
  connect();
  if (me.role === 'doctor' && !/^#\/patient\//.test(location.hash)) await route();
  else {
    if (me.role === 'doctor') {
      // The ward-wide banner needs the ward's current alerts on any view.
      const w = await api('/api/v1/ward');
      state.ward = w;
      for (const b of w.beds) if (b.alert) state.current.set(b.deviceId, b.alert);
    }
    await route();
  }
  setInterval(tick, 1000);
  // Admissions and discharges come from the chain, not the live stream.
  setInterval(() => { if (state.view === 'ward') showWard().catch(() => {}); }, 10000);
}

window.addEventListener('hashchange', () => state.me && route());
window.addEventListener('DOMContentLoaded', async () => {
  $('#wallet-signin').addEventListener('click', walletSignIn);
  $('#get-message').addEventListener('click', getMessage);
  $('#paste-signin').addEventListener('click', pasteSignIn);
  $('#signout').addEventListener('click', signOut);
  $('#lookup-go').addEventListener('click', lookup);
  $('#ack').addEventListener('click', acknowledge);
  try {
    await start();
  } catch (e) {
    show('signin');
    if (e.status !== 401) signInError(e);
  }
});
