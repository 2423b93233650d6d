// Benchmark (docs/BENCHMARKS.md, "Dashboard: 24-hour trend"): the dashboard's
// first render of a patient's 24-hour trend in headless Chromium, run by
// cli/tests/cli/api.rs `trend_24h_first_render` against a hub whose store holds
// 86,400 readings of the stay. Five cold page loads each: time from
// navigation to every chart drawn with all readings behind it, and the JSON
// bytes the page fetched; then, as the same run's baseline, the same history
// fetched raw from /vitals (1,000 readings a page) by the page.
import { createRequire } from 'node:module';

const env = name => {
  const v = process.env[name];
  if (!v) throw new Error(`${name} is not set (run through cargo test --workspace --locked --test cli -- --ignored api::trend_24h_first_render)`);
  return v;
};
const require = createRequire(import.meta.url);
const { chromium } = require(env('HS_PLAYWRIGHT'));
const URL_ = env('HS_URL');
const PATIENT = env('HS_PATIENT');
const READINGS = Number(env('HS_READINGS'));
const RUNS = 5;
const median = xs => xs.slice().sort((a, b) => a - b)[Math.floor(xs.length / 2)];

const browser = await chromium.launch({ executablePath: env('HS_CHROMIUM'), headless: true, args: ['--no-sandbox', '--disable-dev-shm-usage', '--disable-gpu'] });
try {
  const render = [], bytes = [], baseline = [], baselineBytes = [];
  for (let run = 0; run < RUNS; run++) {
    const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
    await context.addCookies([{ name: 'hs_session', value: env('HS_TOKEN'), url: URL_ }]);
    const page = await context.newPage();
    await page.goto(`${URL_}#/patient/${PATIENT}/24h`);
    // Every chart drawn, the NEWS2 one last, with the day's readings behind
    // it (the window ends now, so the first seconds of the day have left it).
    await page.waitForFunction(n => {
      const c = document.querySelector('.chart[data-vital="news2"]');
      return c && Number(c.dataset.points) >= n;
    }, Math.floor(READINGS * 0.99), { timeout: 60000, polling: 'raf' });
    const ms = await page.evaluate(() => performance.now());
    const shown = await page.evaluate(() => Number(document.querySelector('.chart[data-vital="news2"]').dataset.points));
    // Where the time went: the trend's API requests (server and transfer)
    // as the page's resource timing saw them.
    const api = await page.evaluate(() => {
      const rs = performance.getEntriesByType('resource').filter(e => e.name.includes('/trend'));
      return { n: rs.length, ms: rs.reduce((t, e) => t + e.duration, 0), end: Math.max(0, ...rs.map(e => e.responseEnd)) };
    });
    await page.waitForTimeout(300); // the page's last requests (bill, charges) end
    // The JSON the page fetched, as its resource timing counts it (bodies
    // decoded; the event stream left out).
    const trendJson = await page.evaluate(() => performance.getEntriesByType('resource')
      .filter(e => e.name.includes('/api/v1/') && !e.name.endsWith('/events'))
      .reduce((n, e) => n + e.decodedBodySize, 0));
    render.push(ms);
    bytes.push(trendJson);
    // Baseline: the raw history, as the dashboard fetched it before.
    const raw = await page.evaluate(async id => {
      const t0 = performance.now();
      let cursor = null, n = 0, size = 0;
      do {
        const r = await fetch(`/api/v1/patients/${id}/vitals?limit=1000` + (cursor ? `&cursor=${cursor}` : ''));
        const text = await r.text();
        size += text.length;
        const b = JSON.parse(text);
        n += b.items.length;
        cursor = b.next;
      } while (cursor);
      return { ms: performance.now() - t0, n, size };
    }, PATIENT);
    if (raw.n < READINGS) throw new Error(`the raw history has ${raw.n} readings, expected ${READINGS}`);
    baseline.push(raw.ms);
    baselineBytes.push(raw.size);
    console.log(`run ${run + 1}: first render ${ms.toFixed(0)} ms, ${shown} readings charted, ${trendJson} JSON bytes ` +
      `(${api.n} /trend request(s) taking ${api.ms.toFixed(0)} ms, the last answered at ${api.end.toFixed(0)} ms); raw /vitals fetch ${raw.ms.toFixed(0)} ms, ${raw.size} bytes`);
    await context.close();
  }
  // Issue 19's bound on what the page transfers (timing is reported, not asserted).
  if (median(bytes) > 20e6) throw new Error(`the 24 h trend fetched ${median(bytes)} JSON bytes, over 20 MB`);
  console.log(`median: first render of the 24 h trend ${median(render).toFixed(0)} ms with ${median(bytes)} JSON bytes; ` +
    `raw /vitals baseline ${median(baseline).toFixed(0)} ms (fetch only) with ${median(baselineBytes)} bytes; ` +
    `ratio ${(median(render) / median(baseline)).toFixed(3)} of the time, ${(median(bytes) / median(baselineBytes)).toFixed(4)} of the bytes`);
} finally {
  await browser.close();
}
