// The console in a real browser: Debian's chromium, headless, driven by puppeteer-core,
// against a llama-pool of fake workers started here on port 0. Checks that the page loads,
// shows the workers ready, changes without a reload while traffic flows, raises no script
// error, requests nothing from another host, streams a playground reply, that its restart
// button restarts a worker and its Cancel button cancels a job, and that with an admin key
// set it asks for the key and then works. With --screenshots DIR it also saves the page at
// 1280 px and at phone width.
//
// usage: node console_browser_test.mjs LLAMA_POOL FAKE_LLAMA_SERVER [--screenshots DIR]
// Prints "N passed, M failed" and exits non-zero on any failure.

import { spawn } from 'node:child_process';
import { mkdtempSync, mkdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import puppeteer from 'puppeteer-core';

const [poolArg, fakeArg, ...rest] = process.argv.slice(2);
if (!poolArg || !fakeArg) {
  console.error('usage: node console_browser_test.mjs LLAMA_POOL FAKE_LLAMA_SERVER [--screenshots DIR]');
  process.exit(2);
}
const poolBin = path.resolve(poolArg);
const fakeBin = path.resolve(fakeArg);
const shotsAt = rest.indexOf('--screenshots');
const screenshots = shotsAt >= 0 ? path.resolve(rest[shotsAt + 1]) : '';
const chromiumPath = process.env.CHROMIUM || '/usr/bin/chromium';

let passed = 0;
let failed = 0;
function check(ok, what, detail = '') {
  if (ok) {
    passed += 1;
    console.log(`PASS ${what}`);
  } else {
    failed += 1;
    console.log(`FAIL ${what}${detail ? `: ${detail}` : ''}`);
  }
  return ok;
}

const work = mkdtempSync(path.join(tmpdir(), 'llama-pool-console-'));
const pools = [];
let browser = null;

// The whole test is bounded: a hang fails it instead of holding ctest.
const watchdog = setTimeout(() => {
  console.log('FAIL the test finished within 150 s');
  finish(1);
}, 150_000);

async function finish(code) {
  clearTimeout(watchdog);
  if (browser) await browser.close().catch(() => {});
  for (const pool of pools) {
    if (pool.exitCode !== null) continue;
    pool.kill('SIGTERM');
    await new Promise((resolve) => {
      const kill = setTimeout(() => pool.kill('SIGKILL'), 10_000);
      pool.once('exit', () => { clearTimeout(kill); resolve(); });
    });
  }
  rmSync(work, { recursive: true, force: true });
  console.log(`${passed} passed, ${failed} failed`);
  process.exit(code || (failed > 0 ? 1 : 0));
}

// Polls `probe` until it returns a truthy value or the deadline passes.
async function until(probe, ms, what) {
  const deadline = Date.now() + ms;
  let last;
  while (Date.now() < deadline) {
    try {
      last = await probe();
      if (last) return last;
    } catch (e) {
      last = e.message;
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`timed out waiting for ${what} (last: ${JSON.stringify(last)})`);
}

function startPool(workers, extra = []) {
  const args = ['--port', '0', '--host', '127.0.0.1', '--workers', String(workers),
    '--llama-server', fakeBin, '--model', poolBin,
    '--data-dir', path.join(work, `data-${pools.length}`),
    '--health-interval', '0.2', '--restart-backoff-base', '0.05', '--restart-backoff-cap', '0.2',
    '--stop-grace', '2', '--shutdown-grace', '3',
    '--worker-arg', '--tokens-per-second', '--worker-arg', '200', ...extra];
  const pool = spawn(poolBin, args, { cwd: work, stdio: ['ignore', 'pipe', 'pipe'] });
  pools.push(pool);
  let log = '';
  return new Promise((resolve, reject) => {
    const onData = (chunk) => {
      log += chunk.toString();
      const m = /event=listening.*?\bport=(\d+)/.exec(log) || /"event":"listening".*?"port":(\d+)/.exec(log);
      if (m) resolve(Number(m[1]));
    };
    pool.stdout.on('data', onData);
    pool.stderr.on('data', onData);
    pool.once('exit', (code) => reject(new Error(`llama-pool exited (${code}): ${log.slice(-2000)}`)));
  });
}

async function status(base, key = '') {
  const res = await fetch(`${base}/pool/status`, key ? { headers: { Authorization: `Bearer ${key}` } } : {});
  return res.json();
}

// Bounded traffic: `count` completions, `parallel` at a time.
async function traffic(base, count, parallel) {
  let next = 0;
  let ok = 0;
  const one = async () => {
    while (next < count) {
      next += 1;
      const res = await fetch(`${base}/completion`, {
        method: 'POST', headers: { 'Content-Type': 'application/json' },
        body: JSON.stringify({ prompt: 'hello', n_predict: 40 }),
      }).catch(() => null);
      if (res) {
        await res.arrayBuffer();
        if (res.ok) ok += 1;
      }
    }
  };
  await Promise.all(Array.from({ length: parallel }, one));
  return ok;
}

async function main() {
  const port = await startPool(2);
  const base = `http://127.0.0.1:${port}`;
  await until(async () => (await status(base)).totals.ready === 2, 30_000, 'two ready workers');

  mkdirSync(path.join(work, 'chromium'), { recursive: true });
  browser = await puppeteer.launch({
    executablePath: chromiumPath,
    headless: true,
    userDataDir: path.join(work, 'chromium'),
    // --no-sandbox: CI runs as root, where chromium's sandbox refuses to start.
    args: ['--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage', '--no-first-run',
      '--no-default-browser-check', '--disable-background-networking', '--disable-sync',
      '--disable-component-update', '--disable-extensions'],
  });
  const page = await browser.newPage();
  await page.setViewport({ width: 1280, height: 900 });
  const errors = [];
  const foreign = [];
  let navigations = 0;
  page.on('console', (m) => { if (m.type() === 'error') errors.push(`console: ${m.text()}`); });
  page.on('pageerror', (e) => errors.push(`pageerror: ${e.message}`));
  page.on('request', (r) => {
    const url = r.url();
    if (!url.startsWith(`${base}/`) && !url.startsWith('data:') && !url.startsWith('blob:')) {
      foreign.push(url);
    }
  });
  page.on('framenavigated', (f) => { if (f === page.mainFrame()) navigations += 1; });

  const response = await page.goto(`${base}/`, { waitUntil: 'load' });
  check(response.status() === 200, 'GET / answers 200');
  const csp = response.headers()['content-security-policy'] || '';
  check(csp.includes("script-src 'self'") && !csp.includes('unsafe-inline'),
    'the page carries a strict Content-Security-Policy', csp);

  // Workers shown ready: two rows, each saying ready, filled from /pool/events.
  const ready = await page.waitForFunction(() => {
    const rows = document.querySelectorAll('#workers-body tr');
    return rows.length === 2 && [...rows].every((r) => r.children[2].textContent === 'ready');
  }, { timeout: 20_000 }).then(() => true, () => false);
  check(ready, 'the console shows both workers ready');
  check(await page.$eval('#live', (e) => e.textContent) === 'live', 'the live indicator says live');

  // Changes without a reload while traffic flows: a marker set in the page survives, no
  // second navigation happens, and the charts and counters move.
  await page.evaluate(() => { window.consoleTestMarker = 42; });
  const before = await page.$eval('#v-requests_per_s', (e) => e.textContent);
  const flowing = traffic(base, 120, 4);
  const moved = await page.waitForFunction(() => {
    const v = Number(document.getElementById('v-requests_per_s').textContent);
    const t = Number(document.getElementById('v-tokens_per_s').textContent);
    return v > 0 && t > 0;
  }, { timeout: 20_000 }).then(() => true, () => false);
  const busySeen = await page.waitForFunction(() =>
    [...document.querySelectorAll('#workers-body tr')].some((r) => !r.children[7].textContent.startsWith('0 /')),
  { timeout: 20_000 }).then(() => true, () => false);
  const served = await flowing;
  check(served > 0, 'traffic was served', `${served} ok`);
  check(moved, 'requests/s and tokens/s rise on the page while traffic flows', `before ${before}`);
  check(busySeen, 'the workers table shows busy slots during traffic');
  check(await page.evaluate(() => window.consoleTestMarker) === 42 && navigations === 1,
    'the page updated without a reload', `navigations ${navigations}`);

  // Playground: a streamed chat reply with time to first token.
  await page.type('#pg-input', 'Hello there');
  await page.click('#pg-send');
  const replied = await page.waitForFunction(() => {
    const msg = document.querySelector('#pg-chat .msg.assistant');
    return msg && msg.textContent.includes('tok') &&
      document.getElementById('pg-stats').textContent.includes('time to first token') &&
      !document.getElementById('pg-send').disabled;
  }, { timeout: 20_000 }).then(() => true, () => false);
  check(replied, 'the playground streams a reply and shows time to first token');

  if (screenshots) {
    mkdirSync(screenshots, { recursive: true });
    await page.click('button[aria-label="show the log of worker 0"]');
    await page.waitForFunction(() => !document.getElementById('log').textContent.startsWith('loading'),
      { timeout: 10_000 }).catch(() => {});
    await traffic(base, 8, 2);
    await page.screenshot({ path: path.join(screenshots, 'console-1280.png'), fullPage: true });
    // Width only: isMobile would make puppeteer reload the page.
    await page.setViewport({ width: 390, height: 844, deviceScaleFactor: 2 });
    await new Promise((r) => setTimeout(r, 1500)); // one tick redraws the charts at the new width
    await page.screenshot({ path: path.join(screenshots, 'console-phone.png'), fullPage: true });
    await page.setViewport({ width: 1280, height: 900 });
  }

  // The restart button restarts a worker: /pool/status shows its restarts up or a new pid.
  const was = (await status(base)).workers.find((w) => w.id === '0');
  await page.focus('button[data-worker="0"]');
  await page.keyboard.press('Enter'); // by keyboard, as an operator without a mouse would
  let restarted = false;
  try {
    await until(async () => {
      const w = (await status(base)).workers.find((x) => x.id === '0');
      return w.restarts > was.restarts || (w.pid !== was.pid && w.pid > 0);
    }, 20_000, 'worker 0 restarted');
    restarted = true;
  } catch (e) {
    restarted = false;
  }
  check(restarted, 'the restart button restarts worker 0', JSON.stringify(was));
  const flashed = await page.waitForFunction(() =>
    document.getElementById('flash').textContent.includes('accepted'), { timeout: 5_000 })
    .then(() => true, () => false);
  check(flashed, 'the page says the restart was accepted');
  const readyAgain = await page.waitForFunction(() => {
    const rows = [...document.querySelectorAll('#workers-body tr')];
    return rows.length === 2 && rows.every((r) => r.children[2].textContent === 'ready');
  }, { timeout: 20_000 }).then(() => true, () => false);
  check(readyAgain, 'the page shows worker 0 ready again after its restart');

  // A background job shows with a progress bar, and its Cancel button cancels it.
  const submitted = await fetch(`${base}/v1/jobs`, {
    method: 'POST', headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify({ type: 'summarize', text: 'word '.repeat(20000) }),
  }).then((r) => r.json());
  const jobShown = await page.waitForFunction((id) => [...document.querySelectorAll('#jobs li')]
    .some((li) => li.textContent.includes(id) && li.querySelector('progress') &&
      !li.querySelector('button').disabled), { timeout: 20_000 }, submitted.id)
    .then(() => true, () => false);
  check(jobShown, 'the page lists the running job with a progress bar and a Cancel button');
  await page.click(`button[aria-label="cancel job ${submitted.id}"]`);
  let jobState = '';
  try {
    jobState = await until(async () => {
      const j = await (await fetch(`${base}/v1/jobs/${submitted.id}`)).json();
      return j.state === 'cancelled' ? j.state : '';
    }, 20_000, 'the job cancelled');
  } catch (e) {
    jobState = e.message;
  }
  check(jobState === 'cancelled', 'the Cancel button cancels the job', jobState);

  // With an admin key the page asks for it, then shows the pool; the key goes in a header.
  const key = 'console-test-key';
  const keyed = `http://127.0.0.1:${await startPool(1, ['--admin-key', key])}`;
  await until(async () => (await status(keyed, key)).totals.ready === 1, 30_000, 'keyed pool ready');
  check((await fetch(`${keyed}/pool/status`)).status === 401, 'the keyed pool refuses /pool/status without the key');
  const keyPage = await browser.newPage();
  keyPage.on('console', (m) => { if (m.type() === 'error' && !m.text().includes('401')) errors.push(`console: ${m.text()}`); });
  keyPage.on('pageerror', (e) => errors.push(`pageerror: ${e.message}`));
  keyPage.on('request', (r) => {
    if (!r.url().startsWith(`${keyed}/`) && !r.url().startsWith('data:')) foreign.push(r.url());
  });
  await keyPage.goto(`${keyed}/`, { waitUntil: 'load' });
  const asked = await keyPage.waitForSelector('#key-form:not([hidden])', { timeout: 10_000 })
    .then(() => true, () => false);
  check(asked, 'with an admin key set, the page asks for it');
  check(await keyPage.$eval('#fallback', (e) => !e.hidden), 'until then the page shows the static table');
  await keyPage.type('#key-input', key);
  await keyPage.keyboard.press('Enter');
  const shown = await keyPage.waitForFunction(() => {
    const rows = document.querySelectorAll('#workers-body tr');
    return rows.length === 1 && rows[0].children[2].textContent === 'ready';
  }, { timeout: 20_000 }).then(() => true, () => false);
  check(shown, 'with the key entered, the page shows the keyed pool live');
  await keyPage.close();

  check(errors.length === 0, 'no console or script error', errors.join(' | '));
  check(foreign.length === 0, 'no request to another host', foreign.join(' '));
}

main().then(() => finish(0), (e) => {
  console.log(`FAIL ${e.message}`);
  failed += 1;
  finish(1);
});
