// Light tiles: each light's reported state (home/light/<id>/state, JSON
// {"on", "brightness"}) and a switch that sends on/off as a command to
// home/light/<id>/set (POST /command: the bridge waits for the light's
// answer). The switch shows what the light reports, never what was asked:
// a command is only a request until the light answers.

const PREFIX = 'home/light';
// How long the bridge waits for a light's answer before saying none came.
const ANSWER_TIMEOUT_MS = 5000;

function element(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

// Why a publish failed, in the bridge's words when it gave a JSON error.
async function failure(response) {
  try {
    const body = await response.json();
    if (body && body.message) return body.message;
  } catch {
    // Not JSON (a proxy's error page, say): the status says enough.
  }
  return `HTTP ${response.status}`;
}

class Light {
  constructor(id) {
    this.id = id;
    this.state = null; // {on, brightness} as last reported
    this.online = true; // what the light's presence says, when it says
    this.pending = null; // {wanted} while a command awaits its answer
    this.root = element('article', 'card light');
    this.root.dataset.light = id;
    const text = element('div', 'light-text');
    text.append(element('h3', null, `Light ${id}`));
    this.status = element('p', 'light-status', 'Unknown');
    text.append(this.status);
    this.switch = element('button', 'switch');
    this.switch.type = 'button';
    this.switch.setAttribute('role', 'switch');
    this.switch.setAttribute('aria-checked', 'false');
    this.switch.setAttribute('aria-label', `Light ${id}`);
    this.switch.disabled = true;
    this.switch.append(element('span', 'knob'));
    this.switch.addEventListener('click', () => this.toggle());
    this.root.append(text, this.switch);
  }

  report(state) {
    this.state = state;
    this.pending = null;
    this.render();
  }

  setOnline(online) {
    this.online = online;
    this.render();
  }

  async toggle() {
    if (!this.state || this.pending) return;
    const wanted = !this.state.on;
    this.pending = { wanted };
    this.render();
    const topic = `${PREFIX}/${encodeURIComponent(this.id)}/set`;
    const url = `/command/${topic}?timeout_ms=${ANSWER_TIMEOUT_MS}`;
    let note = null;
    try {
      const response = await fetch(url, { method: 'POST', body: wanted ? 'on' : 'off' });
      if (response.ok) {
        // The light's answer is its new state (or why it could not).
        const answer = await response.json().catch(() => null);
        if (answer && typeof answer.on === 'boolean') {
          this.report(answer);
          return;
        }
        note = `Light ${this.id}: ${answer && answer.error ? answer.error : 'an answer this page cannot read'}`;
      } else if (response.status === 504) {
        note = `No answer from light ${this.id}`;
      } else if (response.status === 404) {
        note = `Light ${this.id} is not connected`;
      } else {
        note = `Not sent: ${await failure(response)}`;
      }
    } catch (e) {
      note = `Not sent: cannot reach the bridge (${e.message})`;
    }
    this.pending = null;
    this.render(note);
  }

  render(note) {
    const on = Boolean(this.state && this.state.on);
    this.switch.setAttribute('aria-checked', String(on));
    this.switch.disabled = !this.state || !this.online;
    this.root.classList.toggle('offline', !this.online);
    this.switch.setAttribute('aria-busy', String(Boolean(this.pending)));
    this.root.classList.toggle('on', on);
    this.status.classList.toggle('problem', Boolean(note));
    if (!this.online) {
      this.status.textContent = 'Offline';
    } else if (note) {
      this.status.textContent = note;
    } else if (this.pending) {
      this.status.textContent = `Switching ${this.pending.wanted ? 'on' : 'off'}…`;
    } else if (!this.state) {
      this.status.textContent = 'Unknown';
    } else if (on) {
      const level = Number.isFinite(this.state.brightness) ? ` · ${this.state.brightness} %` : '';
      this.status.textContent = `On${level}`;
    } else {
      this.status.textContent = 'Off';
    }
  }
}

export class Lights {
  constructor(container, placeholder) {
    this.container = container;
    this.placeholder = placeholder;
    this.lights = new Map();
    this.online = new Map(); // light id -> what its presence last said
  }

  // message: the bridge's JSON for home/light/<id>/state.
  add(message) {
    const parts = message.topic.split('/');
    const id = parts[parts.length - 2];
    let state;
    try {
      state = JSON.parse(message.payload);
    } catch {
      return; // not a state this page understands
    }
    if (typeof state !== 'object' || state === null || typeof state.on !== 'boolean') return;
    this.light(id).report(state);
  }

  // message: the bridge's JSON for $tidewater/presence/…: a light is
  // sim-light's device <id> ("driver": "lights"), or an MQTT device whose
  // client id is light-<id>. Other devices are not lights.
  presence(message) {
    let state;
    try {
      state = JSON.parse(message.payload);
    } catch {
      return;
    }
    if (!state || typeof state.client_id !== 'string' || typeof state.online !== 'boolean') return;
    let id = null;
    if (state.driver === 'lights') id = state.client_id;
    else if (!state.driver && state.client_id.startsWith('light-')) id = state.client_id.slice(6);
    if (!id) return;
    // Kept for a light whose first state has not come yet.
    this.online.set(id, state.online);
    const light = this.lights.get(id);
    if (light) light.setOnline(state.online);
  }

  light(id) {
    let light = this.lights.get(id);
    if (light) return light;
    light = new Light(id);
    if (this.online.has(id)) light.online = this.online.get(id);
    this.lights.set(id, light);
    this.placeholder.hidden = true;
    const order = (a, b) => a.localeCompare(b, undefined, { numeric: true });
    const after = [...this.lights.keys()].sort(order).find((other) => order(other, id) > 0);
    this.container.insertBefore(light.root, after ? this.lights.get(after).root : null);
    return light;
  }
}
