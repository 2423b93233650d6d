// The dashboard in headless Chromium (playwright-core over Debian's chromium),
// driven by cli/tests/api.rs, which runs the devnet, the hub and the beds.
//
// The page signs in through window.ethereum, the path a browser wallet
// extension takes; the "extension" here is a stub whose personal_sign runs
// `cast wallet sign` with the doctor's dev key. Each step prints one line
// the Rust test checks; "DETERIORATE" asks it to make bed 0 septic.
import { createRequire } from 'node:module';
import { execFileSync } from 'node:child_process';

const env = name => {
  const v = process.env[name];
  if (!v) throw new Error(`${name} is not set (run through cargo test -p healthsense-cli --test api)`);
  return v;
};
const require = createRequire(import.meta.url);
const { chromium } = require(env('HS_PLAYWRIGHT'));

const step = (name, detail = '') => console.log(`${name} ${detail}`.trim());

const browser = await chromium.launch({
  executablePath: env('HS_CHROMIUM'),
  headless: true,
  args: ['--no-sandbox', '--disable-dev-shm-usage', '--disable-gpu'],
});
try {
  const page = await browser.newPage({ viewport: { width: 1280, height: 1000 } });
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
  await page.waitForSelector('#ward:not([hidden]) #beds tbody tr[data-serial]', { timeout: 30000 });
  step('SIGNED-IN', await page.textContent('#where'));

  // Values update live: a bed's heart rate cell changes without a reload.
  await page.waitForFunction(() => document.querySelectorAll('#beds tbody tr').length >= 3, null, { timeout: 30000 });
  const cell = '#beds tr[data-serial="SIM-0"] td.hr';
  const before = await page.textContent(cell);
  await page.waitForFunction(([sel, b]) => {
    const n = Number(document.body.dataset.updates || 0);
    return n >= 5 && document.querySelector(sel).textContent !== b;
  }, [cell, before], { timeout: 30000 });
  step('WARD-UPDATES', `SIM-0 HR ${before} -> ${await page.textContent(cell)}`);

  // The patient view: charts grow live, bill with the insurance share.
  await page.click('#beds tr[data-serial="SIM-0"] a.patient-link');
  await page.waitForSelector('#patient:not([hidden]) .chart[data-vital="heartRate"] polyline', { timeout: 30000 });
  const patient = await page.textContent('#p-id');
  if (patient !== env('HS_PATIENT')) throw new Error(`opened ${patient}, expected ${env('HS_PATIENT')}`);
  const points = Number(await page.getAttribute('.chart[data-vital="heartRate"]', 'data-points'));
  await page.waitForFunction(p => Number(document.querySelector('.chart[data-vital="heartRate"]').dataset.points) > p, points, { timeout: 30000 });
  await page.waitForFunction(() => (document.querySelector('#p-bill').dataset.covered || '0') !== '0', null, { timeout: 30000 });
  step('PATIENT', `${patient} chart ${points} -> ${await page.getAttribute('.chart[data-vital="heartRate"]', 'data-points')} points, covered ${await page.getAttribute('#p-bill', 'data-covered')}`);

  // Induce a deterioration: the alert shows in the page.
  step('DETERIORATE', 'SIM-0');
  await page.waitForSelector('#alert-banner:not([hidden])', { timeout: 30000 });
  await page.waitForSelector('#p-alerts li.alert[data-level="high"]', { timeout: 30000 });
  step('ALERT', await page.textContent('#alert-banner'));
  await page.waitForTimeout(1500); // let the charts show the change
  await page.screenshot({ path: env('HS_SCREENSHOT'), fullPage: true });
  step('SCREENSHOT', env('HS_SCREENSHOT'));
} finally {
  await browser.close();
}
