// HealthSense dashboard: plain JavaScript, no build step, no third-party code.
// Reads the hub's REST API (docs/API.md) with the session cookie and follows
// its server-sent events. Sign-in: Sign-In with Ethereum, through a browser
// wallet (window.ethereum, personal_sign) when there is one, or by pasting a
// signature made with any wallet tool.
'use strict';

const $ = (sel, el = document) => el.querySelector(sel);
const VITALS = [
  ['heartRate', 'Heart rate', '/min'],
  ['respRate', 'Respiration', '/min'],
  ['spo2', 'SpO₂', '%'],
  ['systolic', 'Blood pressure', 'mmHg', 'diastolic'],
  ['temperature', 'Temperature', '°C'],
  ['news2', 'NEWS2', ''],
];
const KEEP = 300; // points per chart

const state = { me: null, view: null, patient: null, series: {}, events: null, updates: 0 };

async function api(path, opts = {}) {
  const res = await fetch(path, { credentials: 'same-origin', headers: { 'Content-Type': 'application/json' }, ...opts });
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
function time(ms) { return ms ? new Date(ms).toLocaleTimeString() : '—'; }
function money(minor) {
  if (minor === null || minor === undefined) return '—';
  const s = String(minor).padStart(3, '0');
  return s.slice(0, -2) + '.' + s.slice(-2);
}
function riskClass(risk) { return 'badge risk-' + (risk || 'none'); }

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
  es.addEventListener('state', ev => onState(JSON.parse(ev.data)));
}

function counted() {
  state.updates += 1;
  document.body.dataset.updates = String(state.updates);
}

function onReading(r) {
  counted();
  if (state.view === 'ward') {
    const row = bedRow(r.serial);
    fillVitals(row, r);
    row.classList.remove('flash'); void row.offsetWidth; row.classList.add('flash');
  } else if (state.view === 'patient' && state.patient && r.deviceId === state.patient.deviceId) {
    pushPoint(r);
    drawCharts();
    setNews2(r);
  }
}

function onAlert(a) {
  counted();
  if (state.view === 'ward') addAlert($('#ward-alerts'), a);
  if (state.view === 'patient' && state.patient && a.deviceId === state.patient.deviceId) {
    addAlert($('#p-alerts'), a);
    banner(a);
  }
}

function onState(s) {
  if (state.view !== 'ward') return;
  const row = bedRow(s.serial);
  if (s.battery !== null && s.battery !== undefined) text($('.battery', row), Math.round(s.battery) + ' %');
  if (s.asleep !== null && s.asleep !== undefined) text($('.online', row), s.asleep ? 'asleep' : 'online');
}

function alertText(a) {
  return a.level === 'none'
    ? `${time(a.timestamp)} ${a.serial}: resolved (NEWS2 ${a.score}, was ${a.previous})`
    : `${time(a.timestamp)} ${a.serial}: ${a.level.toUpperCase()} (NEWS2 ${a.score})`;
}

function addAlert(list, a) {
  const li = document.createElement('li');
  li.className = 'alert';
  li.dataset.level = a.level;
  const badge = document.createElement('span');
  badge.className = riskClass(a.level);
  text(badge, a.score);
  li.append(badge, ' ', alertText(a));
  list.prepend(li);
  while (list.children.length > 20) list.lastChild.remove();
}

function banner(a) {
  const b = $('#alert-banner');
  if (!a || a.level === 'none') { b.hidden = true; return; }
  b.hidden = false;
  b.className = 'risk-' + a.level;
  text(b, `NEWS2 alert: ${a.level.toUpperCase()} (score ${a.score}) at ${time(a.timestamp)}`);
}

// ---------------------------------------------------------------- ward

function bedRow(serial) {
  const body = $('#beds tbody');
  let row = body.querySelector(`tr[data-serial="${CSS.escape(serial)}"]`);
  if (!row) {
    row = document.createElement('tr');
    row.dataset.serial = serial;
    for (const c of ['bed', 'patient', 'hr', 'rr', 'spo2', 'bp', 'temp', 'acvpu', 'news2', 'battery', 'online']) {
      const td = document.createElement('td');
      td.className = c;
      row.append(td);
    }
    text($('.bed', row), serial);
    const rows = Array.from(body.children);
    const after = rows.find(r => r.dataset.serial > serial);
    body.insertBefore(row, after || null);
  }
  return row;
}

function fillVitals(row, v) {
  if (!v) return;
  text($('.hr', row), v.heartRate);
  text($('.rr', row), v.respRate);
  text($('.spo2', row), v.spo2);
  text($('.bp', row), v.systolic ? `${v.systolic}/${v.diastolic ?? '—'}` : null);
  text($('.temp', row), v.temperature === null ? null : v.temperature.toFixed(1));
  text($('.acvpu', row), v.consciousness);
  const n = $('.news2', row);
  n.replaceChildren();
  const badge = document.createElement('span');
  badge.className = riskClass(v.risk);
  text(badge, v.news2);
  n.append(badge);
}

async function showWard() {
  const w = await api('/api/v1/ward');
  state.view = 'ward';
  show('ward');
  text($('#ward-name'), w.ward);
  $('#beds tbody').replaceChildren();
  for (const bed of w.beds) {
    const row = bedRow(bed.serial);
    fillVitals(row, bed.latest);
    const cell = $('.patient', row);
    cell.replaceChildren();
    if (bed.patient) {
      const a = document.createElement('a');
      a.href = '#/patient/' + bed.patient;
      a.className = 'patient-link';
      text(a, short(bed.patient));
      cell.append(a);
    } else text(cell, '—');
    text($('.battery', row), bed.battery === null ? null : Math.round(bed.battery) + ' %');
    const online = $('.online', row);
    text(online, bed.asleep ? 'asleep' : bed.online ? 'online' : 'offline');
    online.className = 'online ' + (bed.online ? 'online-yes' : 'offline');
  }
  const list = $('#ward-alerts');
  list.replaceChildren();
  for (const a of w.alerts.slice().reverse()) addAlert(list, a);
}

async function showDevices() {
  const d = await api('/api/v1/devices');
  state.view = 'devices';
  show('devices');
  const body = $('#device-table tbody');
  body.replaceChildren();
  for (const dev of d.items) {
    const tr = document.createElement('tr');
    for (const v of [dev.serial, dev.status, dev.battery === null ? null : Math.round(dev.battery) + ' %', dev.asleep ? 'asleep' : dev.online ? 'online' : 'offline', dev.lastSeq]) {
      const td = document.createElement('td');
      text(td, v);
      tr.append(td);
    }
    body.append(tr);
  }
}

// ------------------------------------------------------------- patient

function pushPoint(r) {
  for (const [key, , , second] of VITALS) {
    for (const k of [key, second]) {
      if (!k || r[k] === null || r[k] === undefined) continue;
      const s = (state.series[k] = state.series[k] || []);
      if (s.length && s[s.length - 1][2] >= r.seq) continue;
      s.push([r.timestamp, r[k], r.seq]);
      if (s.length > KEEP) s.shift();
    }
  }
}

function polyline(points, x0, x1, lo, hi, cls) {
  const p = document.createElementNS('http://www.w3.org/2000/svg', 'polyline');
  const sx = t => ((t - x0) / Math.max(1, x1 - x0)) * 300;
  const sy = v => 85 - ((v - lo) / Math.max(1e-9, hi - lo)) * 80;
  p.setAttribute('points', points.map(([t, v]) => `${sx(t).toFixed(1)},${sy(v).toFixed(1)}`).join(' '));
  if (cls) p.setAttribute('class', cls);
  return p;
}

function drawCharts() {
  const box = $('#charts');
  for (const [key, label, unit, second] of VITALS) {
    let card = box.querySelector(`[data-vital="${key}"]`);
    if (!card) {
      card = document.createElement('div');
      card.className = 'chart';
      card.dataset.vital = key;
      const h = document.createElement('h4');
      const name = document.createElement('span');
      text(name, label);
      const val = document.createElement('span');
      val.className = 'value';
      h.append(name, val);
      const svg = document.createElementNS('http://www.w3.org/2000/svg', 'svg');
      svg.setAttribute('viewBox', '0 0 300 90');
      svg.setAttribute('preserveAspectRatio', 'none');
      card.append(h, svg);
      box.append(card);
    }
    const a = state.series[key] || [];
    const b = second ? state.series[second] || [] : [];
    const all = a.concat(b);
    const svg = $('svg', card);
    svg.replaceChildren();
    if (!all.length) continue;
    const x0 = Math.min(...all.map(p => p[0]));
    const x1 = Math.max(...all.map(p => p[0]));
    let lo = Math.min(...all.map(p => p[1]));
    let hi = Math.max(...all.map(p => p[1]));
    const pad = Math.max(1, (hi - lo) * 0.1);
    lo -= pad; hi += pad;
    svg.append(polyline(a, x0, x1, lo, hi));
    if (b.length) svg.append(polyline(b, x0, x1, lo, hi, 'second'));
    const last = a[a.length - 1];
    const lastB = b[b.length - 1];
    text($('.value', card), last ? `${last[1]}${lastB ? '/' + lastB[1] : ''} ${unit}` : null);
    card.dataset.points = String(a.length);
  }
}

function setNews2(r) {
  const n = $('#p-news2');
  n.className = riskClass(r && r.risk);
  text(n, r ? r.news2 : null);
}

function dl(el, pairs) {
  el.replaceChildren();
  for (const [k, v] of pairs) {
    const dt = document.createElement('dt');
    text(dt, k);
    const dd = document.createElement('dd');
    text(dd, v);
    el.append(dt, dd);
  }
}

async function showPatient(id) {
  const p = await api(`/api/v1/patients/${id}`);
  state.view = 'patient';
  state.patient = p;
  state.series = {};
  show('patient');
  text($('#p-id'), p.id);
  text($('#p-status'), p.status);
  text($('#p-serial'), p.serial);
  text($('#p-admitted'), new Date(p.admittedAt * 1000).toLocaleString());
  setNews2(p.latest);
  $('#charts').replaceChildren();
  let cursor = null;
  const from = Date.now() - 15 * 60 * 1000;
  for (let page = 0; page < 3; page++) {
    const q = `from=${from}&limit=1000` + (cursor ? `&cursor=${encodeURIComponent(cursor)}` : '');
    const h = await api(`/api/v1/patients/${id}/vitals?${q}`);
    h.items.forEach(pushPoint);
    cursor = h.next;
    if (!cursor) break;
  }
  drawCharts();
  const alerts = await api(`/api/v1/patients/${id}/alerts?limit=20`);
  const list = $('#p-alerts');
  list.replaceChildren();
  for (const a of alerts.items.slice().reverse()) addAlert(list, a);
  banner(alerts.items[0]);
  const charges = await api(`/api/v1/patients/${id}/charges`);
  const body = $('#p-charges tbody');
  body.replaceChildren();
  for (const c of charges.items) {
    const tr = document.createElement('tr');
    for (const v of [c.code, c.category, c.quantity, money(c.amount)]) {
      const td = document.createElement('td');
      text(td, v);
      tr.append(td);
    }
    body.append(tr);
  }
  const bill = await api(`/api/v1/patients/${id}/bill`);
  dl($('#p-bill'), [
    ['Kind', bill.final ? 'final (computed at discharge)' : 'estimate, if discharged now'],
    ['Bed days', bill.bedDays],
    ['Total', money(bill.total)],
    ['Insurance share', money(bill.covered) + (bill.policy ? ` (${bill.policy.coverageBps / 100} %)` : ' (no policy)')],
    ['Patient due', money(bill.due)],
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
    const m = hash.match(/^#\/patient\/(0x[0-9a-fA-F]{64})$/);
    if (m) return await showPatient(m[1]);
    if (me.role === 'patient') return await showPatient(me.who.patient);
    if (me.role === 'doctor') return await showWard();
    if (me.role === 'admin') return await showDevices();
    state.view = 'lookup';
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
  await route();
}

window.addEventListener('hashchange', () => state.me && route());
window.addEventListener('DOMContentLoaded', async () => {
  $('#wallet-signin').addEventListener('click', walletSignIn);
  $('#get-message').addEventListener('click', getMessage);
  $('#paste-signin').addEventListener('click', pasteSignIn);
  $('#signout').addEventListener('click', signOut);
  $('#lookup-go').addEventListener('click', lookup);
  try {
    await start();
  } catch (e) {
    show('signin');
    if (e.status !== 401) signInError(e);
  }
});
