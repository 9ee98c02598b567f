// One Server-Sent Events subscription to the bridge, with its connection
// state: `connecting` (first attempt), `open`, `reconnecting` (the browser
// retries on its own, sending Last-Event-ID), and `offline` (the browser gave
// up; we open a new stream ourselves, resuming from the last id).

// The event names the bridge's [[routes]] give (bridge.toml). EventSource
// only delivers an event to listeners of its exact name, so every name must
// be listed; messages no route names arrive as `message`.
export const ROUTED_EVENTS = ['temperature', 'humidity', 'light'];

// Backoff for the streams we reopen ourselves after the browser gave up.
const RETRY_MIN_MS = 1000;
const RETRY_MAX_MS = 10000;

// `+` is the MQTT wildcard and must reach the bridge as %2B: encodeURIComponent
// does that (URLSearchParams would turn a space into `+`, a wildcard).
export function eventsUrl(filters, extra = {}) {
  const parts = filters.map((f) => `topic=${encodeURIComponent(f)}`);
  for (const [key, value] of Object.entries(extra)) {
    parts.push(`${key}=${encodeURIComponent(value)}`);
  }
  return `/events?${parts.join('&')}`;
}

export class LiveStream {
  // filters: MQTT topic filters. events: the event names to listen for.
  // onMessage(event, message, id): message is the bridge's JSON object;
  // id is null for retained values, which carry no id.
  // onGap(after): history after that id is lost; current values follow.
  // onState(state, detail): detail.retryInMs for `offline`.
  // history: how far back the first connection reaches (the bridge's
  // `since`, e.g. '-5m'): the messages of that time come first, from the
  // bridge's log, then live ones. Later connections resume by id.
  constructor({ filters, events, onMessage, onGap = () => {}, onState = () => {}, history = null }) {
    this.filters = filters;
    this.history = history;
    this.events = events;
    this.onMessage = onMessage;
    this.onGap = onGap;
    this.onState = onState;
    this.source = null;
    this.lastId = null;
    this.wasOpen = false;
    this.retryMs = RETRY_MIN_MS;
    this.retryTimer = null;
  }

  open() {
    // A stream we reopen ourselves is a first connection for the browser,
    // which cannot set headers on it: the query parameter carries the id.
    const extra = { format: 'json' };
    if (this.lastId) extra.lastEventId = this.lastId;
    else if (this.history) extra.since = this.history;
    const source = new EventSource(eventsUrl(this.filters, extra));
    this.source = source;
    this.setState(this.wasOpen ? 'reconnecting' : 'connecting');

    source.onopen = () => {
      this.wasOpen = true;
      this.retryMs = RETRY_MIN_MS;
      this.setState('open');
    };
    source.onerror = () => {
      if (source !== this.source) return;
      if (source.readyState === EventSource.CONNECTING) {
        // The stream ended or the bridge is unreachable: the browser waits
        // the bridge's `retry:` delay and reconnects with Last-Event-ID.
        this.setState(this.wasOpen ? 'reconnecting' : 'connecting');
      } else if (source.readyState === EventSource.CLOSED) {
        // The browser stops for good after an answer that is not an event
        // stream (a proxy's 502, a 400): try again later ourselves. A first
        // stream refused may have asked for more history than the bridge
        // gives (400 replay-too-long): the next one asks for none.
        if (!this.wasOpen) this.history = null;
        source.close();
        this.setState('offline', { retryInMs: this.retryMs });
        this.retryTimer = setTimeout(() => this.open(), this.retryMs);
        this.retryMs = Math.min(this.retryMs * 2, RETRY_MAX_MS);
      }
    };
    for (const name of this.events) {
      source.addEventListener(name, (e) => {
        const message = JSON.parse(e.data);
        // Retained values come without an `id:` line, and then
        // e.lastEventId still holds the previous event's id: only live
        // messages (retain false) have an id of their own.
        const id = message.retain ? null : e.lastEventId || null;
        if (id) this.lastId = id;
        this.onMessage(name, message, id);
      });
    }
    source.addEventListener('gap', (e) => {
      const gap = JSON.parse(e.data);
      this.onGap(gap.after);
    });
  }

  close() {
    clearTimeout(this.retryTimer);
    if (this.source) this.source.close();
    this.source = null;
  }

  setState(state, detail = {}) {
    this.state = state;
    this.onState(state, detail);
  }
}
