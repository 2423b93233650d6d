// The dashboard in headless Chromium (playwright-core over Debian's chromium),
// driven by cli/tests/cli/api.rs, which runs the devnet, the hub and the beds.
//
// The page signs in through window.ethereum, the path a browser wallet
// extension takes; the "extension" here is a stub whose personal_sign runs
// `cast wallet sign` with the doctor's dev key. Each step prints one line
// the Rust test checks; FLAP, CALM, DETERIORATE and DISCHARGE ask it to
// change bed 0's vitals or discharge bed 2's stay. axe-core (test-only, from
// .tools/node_modules) checks accessibility in the page.
import { createRequire } from 'node:module';
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';

const env = name => {
  const v = process.env[name];
  if (!v) throw new Error(`${name} is not set (run through cargo test --workspace --locked --test cli -- api::)`);
  return v;
};
const require = createRequire(import.meta.url);
const { chromium } = require(env('HS_PLAYWRIGHT'));
const OUT = env('HS_OUT');
const PATIENT = env('HS_PATIENT');
const HOLD_MS = Number(env('HS_HOLD_MS'));

const step = (name, detail = '') => console.log(`${name} ${detail}`.trim());
const check = (ok, what) => { if (!ok) throw new Error(what); };
const T = { timeout: 30000 };

const browser = await chromium.launch({
  executablePath: env('HS_CHROMIUM'),
  headless: true,
  args: ['--no-sandbox', '--disable-dev-shm-usage', '--disable-gpu'],
});

// axe-core in the page (page.evaluate is not subject to the page's CSP);
// serious and critical violations fail the test.
async function axe(page, what) {
  const loaded = await page.evaluate(() => typeof window.axe !== 'undefined');
  if (!loaded) await page.evaluate(readFileSync(env('HS_AXE'), 'utf8'));
  const found = await page.evaluate(async () => {
    const r = await window.axe.run(document, { runOnly: { type: 'tag', values: ['wcag2a', 'wcag2aa', 'wcag21a', 'wcag21aa', 'best-practice'] } });
    return r.violations.map(v => ({ id: v.id, impact: v.impact, nodes: v.nodes.slice(0, 3).map(n => n.target.join(' ')) }));
  });
  const bad = found.filter(v => v.impact === 'serious' || v.impact === 'critical');
  check(bad.length === 0, `axe on ${what}: ${JSON.stringify(bad)}`);
  return found.length;
}

// Every reading of the stay, paged through the API as the page's user.
const countReadings = page => page.evaluate(async id => {
  let n = 0, cursor = null;
  do {
    const r = await fetch(`/api/v1/patients/${id}/vitals?limit=1000` + (cursor ? `&cursor=${cursor}` : ''));
    const b = await r.json();
    n += b.items.length;
    cursor = b.next;
  } while (cursor);
  return n;
}, PATIENT);

const points = (page, vital) => page.evaluate(v => Number(document.querySelector(`.chart[data-vital="${v}"]`).dataset.points || 0), vital);

try {
  const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
  page.on('console', m => { if (m.type() === 'error') console.error(`page: ${m.text()}`); });
  page.on('pageerror', e => console.error(`page error: ${e.message}`));
  await page.exposeFunction('hsTestSign', hex => {
    const message = Buffer.from(hex.slice(2), 'hex').toString('utf8');
    return execFileSync(env('HS_CAST'), ['wallet', 'sign', '--private-key', env('HS_KEY'), message], { encoding: 'utf8' }).trim();
  });
  await page.addInitScript(address => {
    window.ethereum = {
      request: async ({ method, params }) => {
        if (method === 'eth_requestAccounts') return [address];
        if (method === 'personal_sign') return window.hsTestSign(params[0]);
        throw new Error(`unsupported ${method}`);
      },
    };
  }, env('HS_ADDRESS'));

  await page.goto(env('HS_URL'));
  await page.click('#wallet-signin');
  await page.waitForSelector('#ward:not([hidden]) #beds tbody tr[data-serial]', T);
  step('SIGNED-IN', await page.textContent('#where'));

  // Values update live: a bed's heart rate cell changes without a reload.
  await page.waitForFunction(() => document.querySelectorAll('#beds tbody tr').length >= 4, null, T);
  const cell = '#beds tr[data-serial="SIM-1"] td.hr';
  const before = await page.textContent(cell);
  await page.waitForFunction(([sel, b]) => Number(document.body.dataset.updates || 0) >= 5 && document.querySelector(sel).textContent !== b, [cell, before], T);
  step('WARD-UPDATES', `SIM-1 HR ${before} -> ${await page.textContent(cell)}`);

  // Units in the headers; rows by NEWS2, then the oldest reading; bed 3 went silent: stale.
  const heads = await page.$$eval('#beds thead th', ths => ths.map(t => t.textContent));
  for (const u of ['/min', '%', 'mmHg', '°C']) check(heads.some(h => h.includes(u)), `no ${u} in the ward's headers: ${heads}`);
  await page.waitForSelector('#beds tr[data-serial="SIM-3"] .stale', T);
  // Received times, not ages: ages are refreshed row by row, so two rows' ages may come from different moments.
  const order = await page.$$eval('#beds tbody tr', rows => rows.map(r => [r.dataset.serial, Number(r.dataset.news2), Number(r.dataset.received)]));
  check(order.every((r, i) => i === 0 || order[i - 1][1] > r[1] || (order[i - 1][1] === r[1] && order[i - 1][2] <= r[2])), `ward order ${JSON.stringify(order)}`);
  step('WARD-ORDER', JSON.stringify(order));
  step('STALE', await page.textContent('#beds tr[data-serial="SIM-3"] td.age'));
  step('AXE-WARD', `${await axe(page, 'the ward')} minor or moderate findings`);
  await page.screenshot({ path: join(OUT, 'dashboard-ward.png'), fullPage: true });

  // A discharged stay leaves the ward.
  step('DISCHARGE', 'SIM-2');
  await page.waitForSelector('#beds tr[data-serial="SIM-2"]', { state: 'detached', timeout: 40000 });
  step('DISCHARGED', 'SIM-2 left the ward');

  // The patient, opened from the ward by keyboard, with the history's
  // answer delayed 1.5 s while live readings keep coming.
  const isTrend = url => url.pathname.endsWith('/trend');
  await page.route(isTrend, route => setTimeout(() => route.continue(), 1500));
  const stored = await countReadings(page);
  const link = `#beds tr[data-serial="SIM-0"] a.patient-link`;
  for (let i = 0; i < 60; i++) {
    await page.keyboard.press('Tab');
    if (await page.evaluate(sel => document.activeElement === document.querySelector(sel), link)) break;
  }
  check(await page.evaluate(sel => document.activeElement === document.querySelector(sel), link), 'the patient link is not reachable with Tab');
  await page.keyboard.press('Enter');
  await page.waitForSelector('#patient:not([hidden]) .chart[data-vital="heartRate"] polyline', { state: 'attached', timeout: 30000 });
  check(await page.textContent('#p-id') === PATIENT, 'opened the wrong patient');
  const shown = await points(page, 'heartRate');
  check(shown >= stored, `history lost: ${shown} points shown, ${stored} stored before opening`);
  step('HISTORY', `${shown} points shown, ${stored} stored before opening, trend delayed 1.5 s`);
  await page.unroute(isTrend);

  // Axes with clock times and units, NEWS2 bands, one rounding rule.
  const axes = await page.evaluate(() => Object.fromEntries(Array.from(document.querySelectorAll('.chart')).map(c => [c.dataset.vital, {
    x: Array.from(c.querySelectorAll('.x-axis text')).map(t => t.textContent),
    unit: c.querySelector('.y-unit').textContent,
    y: c.querySelectorAll('.y-axis text').length,
    bands: c.querySelectorAll('rect.band').length,
    value: c.querySelector('.value').textContent,
  }])));
  for (const [v, unit] of [['heartRate', '/min'], ['respRate', '/min'], ['spo2', '%'], ['systolic', 'mmHg'], ['temperature', '°C'], ['news2', 'score']]) {
    const a = axes[v];
    check(a.unit === unit && a.y >= 3, `${v}: y axis ${JSON.stringify(a)}`);
    check(a.x.filter(t => /^\d{2}:\d{2}$/.test(t)).length >= 2, `${v}: x axis ${JSON.stringify(a.x)}`);
    check(a.bands >= 2, `${v}: NEWS2 bands ${a.bands}`);
  }
  check(/^\d{2}\.\d °C$/.test(axes.temperature.value), `temperature shown as ${axes.temperature.value}`);
  check(await page.textContent('.chart[data-vital="systolic"] .legend') === 'systolic (solid) diastolic (dashed)', 'blood pressure legend');
  step('AXES', JSON.stringify(axes.heartRate));

  // Other ranges load from the API and keep every reading.
  await page.focus('#ranges button[data-range="28800000"]');
  await page.keyboard.press('Enter');
  await page.waitForSelector('#ranges button[data-range="28800000"][aria-pressed="true"]', T);
  await page.waitForFunction(n => Number(document.querySelector('.chart[data-vital="heartRate"]').dataset.points) >= n, shown, T);
  await page.click('#ranges button[data-range="stay"]');
  await page.waitForFunction(n => Number(document.querySelector('.chart[data-vital="heartRate"]').dataset.points) >= n, shown, T);
  step('RANGE', `8 h and whole stay: ${await points(page, 'heartRate')} points`);

  await page.waitForFunction(() => (document.querySelector('#p-bill').dataset.covered || '0') !== '0', null, T);
  const bill = await page.textContent('#p-bill');
  check(bill.includes('EUR') && (await page.textContent('#p-amount-head')).includes('EUR'), `currency missing: ${bill}`);
  step('BILL', bill);

  // A patient at a threshold: HIGH, MEDIUM, HIGH… is one alert, and the
  // ward-wide banner stays until a doctor acknowledges it.
  step('FLAP', 'SIM-0');
  await page.waitForSelector('#alert-banner[data-level="high"]:not([hidden])', T);
  await page.waitForSelector('#ward-banner:not([hidden])', T);
  await page.waitForTimeout(3000);
  const flapping = await page.$$eval('#p-alerts li.alert', lis => lis.map(l => l.dataset.level));
  check(JSON.stringify(flapping) === '["high"]', `a flapping series raised ${JSON.stringify(flapping)}`);
  step('ONE-ALERT', JSON.stringify(flapping));

  // Refused for a patient and an insurer (403), and without the CSRF header.
  const alertId = await page.getAttribute('#alert-banner', 'data-alert');
  const refusals = await page.evaluate(async ([id, alert, patient, insurer]) => {
    const post = (headers) => fetch(`/api/v1/patients/${id}/alerts/${alert}/ack`, { method: 'POST', headers }).then(r => r.status);
    return [
      await post({ Authorization: `Bearer ${patient}`, 'X-HealthSense-CSRF': '1' }),
      await post({ Authorization: `Bearer ${insurer}`, 'X-HealthSense-CSRF': '1' }),
      await post({}),
    ];
  }, [PATIENT, alertId, env('HS_PATIENT_TOKEN'), env('HS_INSURER_TOKEN')]);
  check(JSON.stringify(refusals) === '[403,403,403]', `acknowledgement refusals ${refusals}`);
  step('ACK-REFUSED', `patient, insurer, no CSRF header: ${refusals}`);
  await page.click('#ack');
  await page.waitForFunction(() => document.querySelector('#ack-text').textContent.startsWith('Acknowledged by'), null, T);
  await page.waitForSelector('#ward-banner', { state: 'hidden', timeout: 30000 });
  step('ACKNOWLEDGED', await page.textContent('#ack-text'));

  // Calm again: the alert steps down once the lower level has held HOLD_MS.
  step('CALM', 'SIM-0');
  await page.waitForSelector('#p-alerts li.alert[data-level="none"]', T);
  const levels = await page.$$eval('#p-alerts li.alert', lis => lis.map(l => l.dataset.level));
  check(JSON.stringify(levels) === '["none","high"]', `alerts after the flap: ${JSON.stringify(levels)}`);
  const held = await page.evaluate(async id => {
    const alerts = (await (await fetch(`/api/v1/patients/${id}/alerts`)).json()).items;
    let items = [], cursor = null;
    do {
      const b = await (await fetch(`/api/v1/patients/${id}/vitals?limit=1000` + (cursor ? `&cursor=${cursor}` : ''))).json();
      items = items.concat(b.items);
      cursor = b.next;
    } while (cursor);
    const down = alerts.find(a => a.level === 'none');
    const lastHigh = Math.max(...items.filter(r => r.news2 >= 7 && r.seq < down.seq).map(r => r.timestamp));
    return down.timestamp - lastHigh;
  }, PATIENT);
  check(held >= HOLD_MS, `stepped down ${held} ms after the last HIGH reading (hold ${HOLD_MS})`);
  step('STEPPED-DOWN', `${held} ms after the last HIGH reading, hold ${HOLD_MS} ms`);

  // Worse again after the acknowledgement: a new alert, the banner again.
  step('DETERIORATE', 'SIM-0');
  await page.waitForSelector('#ward-banner:not([hidden])', T);
  await page.waitForFunction(() => document.querySelector('#ack-text').textContent === 'Not acknowledged', null, T);
  step('ESCALATED', await page.textContent('#alert-banner'));
  await page.waitForTimeout(1500); // let the charts show the change
  step('AXE-PATIENT', `${await axe(page, 'the patient view')} minor or moderate findings`);
  await page.screenshot({ path: join(OUT, 'dashboard-patient.png'), fullPage: true });
  await page.screenshot({ path: join(OUT, 'dashboard.png'), fullPage: true });

  // Tablet width: no sideways scrolling, same checks.
  await page.setViewportSize({ width: 1024, height: 768 });
  await page.waitForTimeout(500);
  const wide = await page.evaluate(() => document.documentElement.scrollWidth);
  check(wide <= 1024, `the patient view is ${wide} px wide at 1024`);
  await page.screenshot({ path: join(OUT, 'dashboard-patient-tablet.png'), fullPage: true });
  await page.goto(env('HS_URL') + '#/ward');
  await page.waitForSelector('#ward:not([hidden]) #beds tbody tr[data-serial]', T);
  const wideWard = await page.evaluate(() => document.documentElement.scrollWidth);
  check(wideWard <= 1024, `the ward is ${wideWard} px wide at 1024`);
  await axe(page, 'the ward at tablet width');
  await page.screenshot({ path: join(OUT, 'dashboard-ward-tablet.png'), fullPage: true });
  step('TABLET', `ward ${wideWard} px, patient ${wide} px`);
  step('SCREENSHOTS', OUT);
} finally {
  await browser.close();
}
