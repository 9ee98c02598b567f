// The dashboard (examples/dashboard) in headless Chromium against a real
// bridge, driven by core/tests/dashboard.rs:
//
//   1. readings arrive for every room; every light reports; the page is Live;
//   2. a click on a light's switch is a command the light answers with its
//      state; a command a silent light never answers leaves the switch as
//      reported and says so once the bridge's timeout passes; that light's
//      device going away shows Offline, and coming back its state again
//      (prints `drop-silent-light` / `bring-back-silent-light` and waits
//      for `dropped` / `back` on stdin);
//      a command from elsewhere shows up too;
//   3. the explorer shows the bridge's 400 message for an invalid filter,
//      then watches a valid one;
//   4. prints `ready-for-restart` and waits for `restarted` on stdin (the
//      test restarts the bridge on the same port and the same log
//      meanwhile): the page shows reconnecting, then live again, no gap
//      notice, and readings resume;
//   5. saves a screenshot and prints `result <json>`: the readings the
//      charts hold and the gaps announced, for the test to compare with what
//      its own SSE client received.
//
// Usage: node dashboard.mjs <page-url> <screenshot.png> <expect-json>
//   expect-json: {"rooms": [...], "lights": [...], "silent": "<light id>"}
// Exits non-zero, saying what it expected and what it saw, on any failure
// or after OVERALL_TIMEOUT_MS.

import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { chromium } from 'playwright-core';

const OVERALL_TIMEOUT_MS = 120_000;
// One step (a reading, a light's answer, a reconnect) may take this long.
const STEP_TIMEOUT_MS = 20_000;
const [pageUrl, screenshotPath, expectJson] = process.argv.slice(2);
const expected = JSON.parse(expectJson);
const log = (line) => console.error(`dashboard: ${line}`);
const started = Date.now();
const elapsed = () => `${((Date.now() - started) / 1000).toFixed(1)} s`;

let page = null;
let context = null;
const profile = mkdtempSync(join(tmpdir(), 'tidewater-chromium-'));

async function cleanup() {
  if (context) await context.close().catch(() => {});
  rmSync(profile, { recursive: true, force: true });
}

async function fail(why) {
  log(`FAILED after ${elapsed()}: ${why}`);
  if (page) {
    log(`page state: ${await describe().catch((e) => `unavailable (${e.message})`)}`);
    await page.screenshot({ path: screenshotPath, fullPage: true }).catch(() => {});
    log(`screenshot of the failure: ${screenshotPath}`);
  }
  await cleanup();
  process.exit(1);
}

setTimeout(() => fail(`overall timeout of ${OVERALL_TIMEOUT_MS / 1000} s`), OVERALL_TIMEOUT_MS).unref();

// What the page shows, for failure messages.
async function describe() {
  return page.evaluate(() => {
    const text = (selector) => document.querySelector(selector)?.textContent.trim();
    const rooms = [...document.querySelectorAll('[data-room]')].map(
      (r) => `${r.dataset.room}: ${[...r.querySelectorAll('.value')].map((v) => v.textContent).join(' / ')}`,
    );
    const lights = [...document.querySelectorAll('[data-light]')].map(
      (l) => `${l.dataset.light}: ${l.querySelector('[role=switch]').getAttribute('aria-checked')} "${text(`[data-light="${l.dataset.light}"] .light-status`)}"`,
    );
    return JSON.stringify({
      connection: text('#connection'),
      gapNotice: document.getElementById('gap-notice').hidden ? null : text('#gap-text'),
      rooms,
      lights,
      explorer: text('#explorer-status'),
      liveReadings: window.tidewaterDashboard?.readings().filter((r) => r.id).length,
    });
  });
}

// Waits for `predicate(arg)` to hold in the page; on timeout, fails naming
// what was expected (the page state is printed by fail()).
async function waitInPage(what, predicate, arg) {
  try {
    await page.waitForFunction(predicate, arg, { timeout: STEP_TIMEOUT_MS, polling: 50 });
  } catch (e) {
    await fail(`expected ${what} within ${STEP_TIMEOUT_MS / 1000} s (${e.message.split('\n')[0]})`);
  }
  log(`${elapsed()}: ${what}`);
}

// stdin, line by line: the test's `restarted`.
const stdinLines = createInterface({ input: process.stdin });
const nextStdinLine = () =>
  new Promise((resolve) => {
    stdinLines.once('line', resolve);
    stdinLines.once('close', () => resolve(null));
  });

// Lights start off. Checks the switch's checked state and status text.
const lightIs = (id, on, status) =>
  waitInPage(
    `light ${id} shown ${on ? 'on' : 'off'} ("${status}")`,
    ([id, on, status]) => {
      const tile = document.querySelector(`[data-light="${id}"]`);
      return tile
        && tile.querySelector('[role=switch]').getAttribute('aria-checked') === String(on)
        && tile.querySelector('.light-status').textContent.startsWith(status);
    },
    [id, on, status],
  );

try {
  context = await chromium.launchPersistentContext(profile, {
    executablePath: '/usr/bin/chromium',
    headless: true,
    viewport: { width: 1280, height: 900 },
    args: [
      '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync',
    ],
  });
  page = context.pages()[0] || (await context.newPage());
  page.on('pageerror', (e) => fail(`uncaught error in the page: ${e.message}`));
  await page.goto(pageUrl);
  log(`${elapsed()}: page loaded`);

  // Record every connection state the page shows, so a short-lived one
  // (reconnecting lasts about the bridge's retry delay) cannot be missed.
  await page.evaluate(() => {
    const node = document.getElementById('connection');
    window.seenStates = [node.dataset.state];
    new MutationObserver(() => window.seenStates.push(node.dataset.state))
      .observe(node, { attributes: true, attributeFilter: ['data-state'] });
  });

  // 1. Live, and readings for every room: a value shown and live readings
  //    (with ids) charted for both quantities.
  await waitInPage('the connection shown as Live', () =>
    document.getElementById('connection').dataset.state === 'open'
      && document.getElementById('connection-text').textContent === 'Live');
  for (const room of expected.rooms) {
    await waitInPage(
      `two live readings of each quantity in ${room}`,
      (room) => ['temperature', 'humidity'].every((q) => {
        const value = document.querySelector(`[data-room="${room}"] [data-metric="${q}"] .value`);
        const live = window.tidewaterDashboard.readings()
          .filter((r) => r.topic === `home/${room}/${q}` && r.id);
        return value && /^\d+\.\d$/.test(value.textContent) && live.length >= 2;
      }),
      room,
    );
  }
  for (const light of expected.lights) await lightIs(light, false, 'Off');

  // 2a. A click publishes "on"; the switch turns on when light 1 reports.
  const [first, , third] = expected.lights;
  await page.click(`[data-light="${first}"] [role=switch]`);
  await lightIs(first, true, 'On · 100 %');

  // 2b. A light that takes commands but never answers (a real MQTT device
  //     the test runs): the switch does not move, and once the bridge's
  //     timeout passes the tile says no answer came.
  const silent = expected.silent;
  await lightIs(silent, false, 'Off');
  await page.click(`[data-light="${silent}"] [role=switch]`);
  await lightIs(silent, false, 'Switching on…');
  await lightIs(silent, false, `No answer from light ${silent}`);

  // 2b'. The silent light's device goes away (the test drops it) and comes
  //      back: its presence turns the tile Offline, then back to its state.
  console.log('drop-silent-light');
  if ((await nextStdinLine()) !== 'dropped') await fail('expected "dropped" on stdin');
  await lightIs(silent, false, 'Offline');
  console.log('bring-back-silent-light');
  if ((await nextStdinLine()) !== 'back') await fail('expected "back" on stdin');
  await lightIs(silent, false, 'Off');

  // 2c. A command from another client: the page follows the light's report.
  const command = await fetch(new URL(`/publish/home/light/${third}/set?qos=1`, pageUrl), {
    method: 'POST',
    body: 'brightness 40',
  });
  if (command.status !== 200) await fail(`expected 200 for another client's command, got ${command.status}`);
  await lightIs(third, true, 'On · 40 %');

  // 3. The explorer: the bridge's own words for a bad filter, then a good one.
  await page.fill('#explorer-filter', 'home/#/x');
  await page.press('#explorer-filter', 'Enter');
  await waitInPage('the bridge\'s message for the invalid filter home/#/x', () =>
    document.getElementById('explorer-status').textContent
      .includes("'#' must be the last level of a filter"));
  await page.fill('#explorer-filter', 'home/+/temperature');
  await page.press('#explorer-filter', 'Enter');
  await waitInPage(
    'explorer rows for home/+/temperature only, from every room',
    (rooms) => {
      const topics = [...document.querySelectorAll('#explorer-rows td.topic')].map((t) => t.textContent);
      return document.getElementById('explorer-status').textContent.startsWith('Watching home/+/temperature:')
        && topics.length > 0
        && topics.every((t) => /^home\/[^/]+\/temperature$/.test(t))
        && rooms.every((room) => topics.includes(`home/${room}/temperature`));
    },
    expected.rooms,
  );

  // 4. The restart, done by the test while we wait.
  const before = await page.evaluate(() => ({
    epoch: window.tidewaterDashboard.lastEventId().split('-')[0],
    states: window.seenStates.length,
  }));
  console.log('ready-for-restart');
  const line = await nextStdinLine();
  if (line !== 'restarted') await fail(`expected "restarted" on stdin, got ${JSON.stringify(line)}`);
  log(`${elapsed()}: the test restarted the bridge`);
  await waitInPage(
    'Reconnecting…, then Live again',
    (from) => {
      const states = window.seenStates.slice(from);
      const reconnecting = states.indexOf('reconnecting');
      return reconnecting !== -1 && states.indexOf('open', reconnecting) !== -1
        && document.getElementById('connection-text').textContent === 'Live';
    },
    before.states,
  );
  const restartedAt = Date.now();
  await waitInPage(
    'live readings from the restarted bridge in every room, in the same epoch',
    ([rooms, epoch, since]) => rooms.every((room) => window.tidewaterDashboard.readings().some(
      (r) => r.topic.startsWith(`home/${room}/`) && r.id && r.id.startsWith(`${epoch}-`) && r.ts >= since,
    )),
    [expected.rooms, before.epoch, restartedAt],
  );
  const gapShown = await page.evaluate(() => !document.getElementById('gap-notice').hidden);
  if (gapShown) await fail('the page announced a gap across the restart: the log should have kept its place');
  // The restarted lights start off again, and say so.
  await lightIs(first, false, 'Off');

  // 5. The picture and the result.
  await page.screenshot({ path: screenshotPath, fullPage: true });
  const result = await page.evaluate(() => ({
    readings: window.tidewaterDashboard.readings(),
    gaps: window.tidewaterDashboard.gaps(),
    states: window.seenStates,
  }));
  console.log(`result ${JSON.stringify(result)}`);
  log(`${elapsed()}: done, screenshot at ${screenshotPath}`);
  await cleanup();
  process.exit(0);
} catch (e) {
  await fail(e.stack || String(e));
}
