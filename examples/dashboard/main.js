// The dashboard: one SSE stream for rooms and lights, the connection state,
// the gap notice and the topic explorer. Served by the bridge itself, so
// every URL is relative to this page's origin (no CORS needed).

import { LiveStream } from './stream.js';
import { Rooms } from './rooms.js';
import { Lights } from './lights.js';
import { Explorer } from './explorer.js';

// The topics sim-thermo and sim-light publish, which bridge.toml routes to
// these event names.
const FILTERS = [
  'home/+/temperature',
  'home/+/humidity',
  'home/light/+/state',
  '$tidewater/presence/#',
];
const EVENTS = ['temperature', 'humidity', 'light', 'presence'];

const $ = (id) => document.getElementById(id);

const rooms = new Rooms($('rooms'), $('rooms-empty'));
const lights = new Lights($('lights'), $('lights-empty'));
const gaps = [];

function showConnection(state, detail) {
  const text = {
    connecting: 'Connecting…',
    open: 'Live',
    reconnecting: 'Reconnecting…',
    offline: `Offline, retrying in ${Math.round((detail.retryInMs || 0) / 1000)} s`,
  }[state];
  $('connection').dataset.state = state;
  $('connection-text').textContent = text;
  if (state === 'open') loadDrivers();
}

function showGap(after) {
  const at = new Date().toLocaleTimeString();
  gaps.push({ after, at: Date.now() });
  rooms.markGap();
  $('gap-text').textContent =
    `At ${at} the bridge no longer had the messages after the last one this page received ` +
    '(it restarted, or they had aged out of its replay buffer). ' +
    'Current values are shown again; the charts have a break where history is missing.';
  $('gap-notice').hidden = false;
}

$('gap-dismiss').addEventListener('click', () => {
  $('gap-notice').hidden = true;
});

// The footer's driver list, from GET /plugins (refreshed on each connect).
async function loadDrivers() {
  try {
    const response = await fetch('/plugins');
    if (!response.ok) return;
    const plugins = await response.json();
    const drivers = $('drivers');
    drivers.replaceChildren();
    if (plugins.length === 0) return;
    drivers.append('Drivers: ');
    plugins.forEach((p, i) => {
      const item = document.createElement('span');
      item.className = `driver driver-${p.state}`;
      item.textContent = `${p.name} ${p.state}`;
      if (p.last_error) item.title = p.last_error;
      drivers.append(...(i ? [' · ', item] : [item]));
    });
  } catch {
    // The connection state already says the bridge is unreachable.
  }
}

const live = new LiveStream({
  filters: FILTERS,
  events: EVENTS,
  // The charts show five minutes: fill them from the bridge's log.
  history: '-5m',
  onMessage: (event, message, id) => {
    if (event === 'light') lights.add(message);
    else if (event === 'presence') lights.presence(message);
    else rooms.add(event, message, id);
  },
  onGap: showGap,
  onState: showConnection,
});
live.open();

const explorer = new Explorer({
  form: $('explorer-form'),
  input: $('explorer-filter'),
  clear: $('explorer-clear'),
  status: $('explorer-status'),
  rows: $('explorer-rows'),
});
explorer.watch($('explorer-filter').value.trim());

// Charts slide and "updated … ago" counts up even when nothing arrives.
setInterval(() => rooms.tick(), 1000);
window.addEventListener('resize', () => rooms.tick());

// Read-only view of what the page holds, for tests and the browser console.
window.tidewaterDashboard = {
  connection: () => live.state,
  lastEventId: () => live.lastId,
  gaps: () => gaps.map((g) => ({ ...g })),
  readings: () => rooms.readings(),
};
