// The topic explorer: type an MQTT filter, watch its messages arrive. Each
// filter gets its own EventSource (format=json), replaced when the filter
// changes.

import { LiveStream, ROUTED_EVENTS, eventsUrl } from './stream.js';

const MAX_ROWS = 200;
// Payloads longer than this are cut in the table (the full text is in the
// cell's tooltip).
const MAX_PAYLOAD_CHARS = 160;

function element(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function clock(ms) {
  const d = new Date(ms);
  const pad = (n, w = 2) => String(n).padStart(w, '0');
  return `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}.${pad(d.getMilliseconds(), 3)}`;
}

// EventSource cannot read an error response: it only reports `error`. So
// the same URL is fetched first; a 400 carries the bridge's explanation
// (e.g. "'#' must be the last level of a filter"). A 200 is the stream
// itself, which is dropped at once.
async function check(filter) {
  const controller = new AbortController();
  try {
    const response = await fetch(eventsUrl([filter], { format: 'json' }), { signal: controller.signal });
    if (response.ok) return null;
    try {
      const body = await response.json();
      return body.message || `the bridge refused it (HTTP ${response.status})`;
    } catch {
      return `the bridge refused it (HTTP ${response.status})`;
    }
  } finally {
    controller.abort();
  }
}

export class Explorer {
  constructor({ form, input, clear, status, rows }) {
    this.input = input;
    this.status = status;
    this.rows = rows;
    this.stream = null;
    this.filter = null;
    this.count = 0;
    this.attempt = 0;
    this.problem = null; // why the last filter typed was refused
    form.addEventListener('submit', (e) => {
      e.preventDefault();
      this.watch(input.value.trim());
    });
    clear.addEventListener('click', () => {
      this.rows.replaceChildren();
      this.count = 0;
      this.showState();
    });
  }

  async watch(filter) {
    const attempt = ++this.attempt;
    if (!filter) {
      this.refuse('type a topic filter, e.g. home/+/temperature or #');
      return;
    }
    this.problem = null;
    this.say(`Checking ${filter}…`);
    let problem;
    try {
      problem = await check(filter);
    } catch (e) {
      problem = `cannot reach the bridge (${e.message})`;
    }
    if (attempt !== this.attempt) return; // a newer filter was typed meanwhile
    if (problem) {
      this.refuse(problem);
      return;
    }
    this.input.removeAttribute('aria-invalid');
    this.stop();
    this.filter = filter;
    this.rows.replaceChildren();
    this.count = 0;
    this.stream = new LiveStream({
      filters: [filter],
      // A route name this page does not know would not be delivered here:
      // EventSource dispatches by exact event name.
      events: ['message', ...ROUTED_EVENTS],
      onMessage: (_event, message) => this.add(message),
      onGap: () => this.addNote('Some messages were missed; current values follow.'),
      onState: () => this.showState(),
    });
    this.stream.open();
  }

  // A filter the bridge refused: say why, and keep watching the previous
  // one (a typo should not stop what was working).
  refuse(problem) {
    this.problem = `Invalid filter: ${problem}.`;
    this.input.setAttribute('aria-invalid', 'true');
    this.showState();
  }

  stop() {
    if (this.stream) this.stream.close();
    this.stream = null;
    this.filter = null;
  }

  add(message) {
    this.count += 1;
    const row = element('tr');
    row.append(element('td', 'time', clock(message.ts)));
    row.append(element('td', 'topic', message.topic));
    const payload = element('td', 'payload');
    let text = message.payload;
    if (message.encoding === 'base64') {
      payload.append(element('span', 'badge', 'base64'));
    }
    if (message.retain) payload.append(element('span', 'badge', 'retained'));
    if (text.length > MAX_PAYLOAD_CHARS) {
      payload.title = text;
      text = `${text.slice(0, MAX_PAYLOAD_CHARS)}…`;
    }
    payload.append(document.createTextNode(text));
    row.append(payload);
    this.prepend(row);
    this.showState();
  }

  addNote(text) {
    const row = element('tr', 'note');
    const cell = element('td', null, text);
    cell.colSpan = 3;
    row.append(cell);
    this.prepend(row);
  }

  prepend(row) {
    this.rows.prepend(row);
    while (this.rows.children.length > MAX_ROWS) this.rows.lastElementChild.remove();
  }

  showState() {
    let text = '';
    if (this.stream) {
      const n = `${this.count} message${this.count === 1 ? '' : 's'}`;
      const state = {
        connecting: 'connecting…',
        open: n,
        reconnecting: `reconnecting… (${n})`,
        offline: `offline, retrying (${n})`,
      }[this.stream.state];
      text = `${this.problem ? 'Still watching' : 'Watching'} ${this.filter}: ${state}`;
    }
    if (this.problem) {
      this.say(`${this.problem} ${text}`, 'problem');
    } else {
      this.say(text);
    }
  }

  say(text, kind = '') {
    this.status.textContent = text;
    this.status.className = `explorer-status ${kind}`;
  }
}
