// Room cards: the latest temperature and humidity of each room, with a
// chart of the last minutes. Rooms appear as their first reading arrives
// (topics home/<room>/temperature and home/<room>/humidity).

import { Sparkline } from './chart.js';

const WINDOW_MS = 5 * 60 * 1000;
// Points kept per series: the window at one reading a second, and then some.
const MAX_POINTS = 600;

const METRICS = {
  temperature: { label: 'Temperature', unit: '°C', minSpan: 1, digits: 1 },
  humidity: { label: 'Humidity', unit: '%', minSpan: 4, digits: 1 },
};

// "livingroom" -> "Livingroom", "living_room" -> "Living room".
function roomTitle(room) {
  const words = room.replace(/[_-]+/g, ' ');
  return words.charAt(0).toUpperCase() + words.slice(1);
}

function element(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function ago(ms) {
  const s = Math.max(0, Math.round(ms / 1000));
  if (s < 60) return `${s} s ago`;
  const m = Math.floor(s / 60);
  return m < 60 ? `${m} min ago` : `${Math.floor(m / 60)} h ago`;
}

class Series {
  constructor(container, metric, room) {
    const spec = METRICS[metric];
    this.spec = spec;
    this.points = [];
    this.pendingGap = false;
    this.root = element('div', 'metric');
    this.root.dataset.metric = metric;
    const head = element('div', 'metric-head');
    head.append(element('span', 'metric-label', spec.label));
    this.range = element('span', 'metric-range');
    head.append(this.range);
    const reading = element('div', 'metric-reading');
    this.value = element('span', 'value', '–');
    reading.append(this.value, element('span', 'unit', spec.unit));
    this.root.append(head, reading);
    this.chart = new Sparkline(this.root, {
      windowMs: WINDOW_MS,
      minSpan: spec.minSpan,
      label: `${spec.label} in ${roomTitle(room)}, up to the last 5 minutes`,
    });
    const axis = element('div', 'spark-axis');
    this.since = element('span', null, '');
    axis.append(this.since, element('span', null, 'now'));
    this.root.append(axis);
    container.append(this.root);
  }

  add(message, id) {
    const v = Number.parseFloat(message.payload);
    this.value.textContent = Number.isFinite(v) ? v.toFixed(this.spec.digits) : message.payload;
    if (!Number.isFinite(v)) return;
    const last = this.points[this.points.length - 1];
    // A retained value equal to the latest point is the same reading again
    // (a stream reopened before any live message): the chart has it.
    if (id === null && last && !this.pendingGap && last.v === v) return;
    this.points.push({ t: message.ts, v, id, topic: message.topic, gapBefore: this.pendingGap });
    this.pendingGap = false;
    if (this.points.length > MAX_POINTS) this.points.splice(0, this.points.length - MAX_POINTS);
  }

  draw(now) {
    const newest = this.points.length ? this.points[this.points.length - 1].t : 0;
    // Bridge timestamps drive the x axis; never let a clock ahead of this
    // browser's push the newest point off the right edge.
    const { span, min, max } = this.chart.draw(this.points, Math.max(now, newest));
    const d = this.spec.digits;
    this.range.textContent = min === null ? '' : `${min.toFixed(d)} – ${max.toFixed(d)} ${this.spec.unit}`;
    this.since.textContent = ago(span);
    // Drop what has left the window for good (keep one point as the anchor).
    const start = now - WINDOW_MS;
    const keep = this.points.findIndex((p) => p.t >= start);
    if (keep > 1) this.points.splice(0, keep - 1);
  }
}

class Room {
  constructor(name) {
    this.name = name;
    this.updated = 0;
    this.root = element('article', 'card room');
    this.root.dataset.room = name;
    const head = element('header', 'card-head');
    head.append(element('h3', null, roomTitle(name)));
    this.age = element('span', 'age');
    head.append(this.age);
    this.root.append(head);
    this.series = {
      temperature: new Series(this.root, 'temperature', name),
      humidity: new Series(this.root, 'humidity', name),
    };
  }

  tick(now) {
    this.age.textContent = this.updated ? `updated ${ago(now - this.updated)}` : '';
    // A room silent for three of its usual intervals (at least 30 s) is
    // shown as stale rather than as current.
    const silent = now - this.updated;
    this.root.classList.toggle('stale', this.updated > 0 && silent > Math.max(30000, 3 * this.interval()));
  }

  // The usual time between readings, from the last few.
  interval() {
    const points = this.series.temperature.points;
    const n = Math.min(points.length - 1, 5);
    return n > 0 ? (points[points.length - 1].t - points[points.length - 1 - n].t) / n : 0;
  }
}

export class Rooms {
  constructor(container, placeholder) {
    this.container = container;
    this.placeholder = placeholder;
    this.rooms = new Map();
  }

  // metric: 'temperature' or 'humidity'; message: the bridge's JSON.
  add(metric, message, id) {
    const room = message.topic.split('/')[1];
    if (!room || !METRICS[metric]) return;
    const card = this.room(room);
    card.series[metric].add(message, id);
    card.updated = Date.now();
    const now = Date.now();
    card.series[metric].draw(now);
    card.tick(now);
  }

  // History after the last message is lost: the next point of every
  // series starts a new line.
  markGap() {
    for (const room of this.rooms.values()) {
      for (const series of Object.values(room.series)) series.pendingGap = series.points.length > 0;
    }
  }

  room(name) {
    let room = this.rooms.get(name);
    if (room) return room;
    room = new Room(name);
    this.rooms.set(name, room);
    this.placeholder.hidden = true;
    // Alphabetical, so the layout is the same on every load.
    const after = [...this.rooms.keys()].sort().find((other) => other > name);
    this.container.insertBefore(room.root, after ? this.rooms.get(after).root : null);
    return room;
  }

  tick() {
    const now = Date.now();
    for (const room of this.rooms.values()) {
      for (const series of Object.values(room.series)) series.draw(now);
      room.tick(now);
    }
  }

  // Every point the charts hold, for tests and the console.
  readings() {
    const out = [];
    for (const room of this.rooms.values()) {
      for (const series of Object.values(room.series)) {
        for (const p of series.points) out.push({ topic: p.topic, id: p.id, value: p.v, ts: p.t });
      }
    }
    return out;
  }
}
