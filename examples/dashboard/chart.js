// A small line chart of one series over the last few minutes, drawn as
// inline SVG in the element's own pixel size (so strokes and the end dot
// stay crisp at any width). Gaps in the history break the line. The time
// axis grows with the history, from 20 seconds up to `windowMs`, so a fresh
// page does not squeeze its first readings into the right edge.

const SVG = 'http://www.w3.org/2000/svg';
const HEIGHT = 56;
const PAD_Y = 6;
const MIN_WINDOW_MS = 20 * 1000;

function svg(name, attributes = {}) {
  const node = document.createElementNS(SVG, name);
  for (const [key, value] of Object.entries(attributes)) node.setAttribute(key, value);
  return node;
}

export class Sparkline {
  // windowMs: how much history is drawn; minSpan: the smallest y range, so
  // a steady reading is a calm line rather than magnified noise.
  constructor(container, { windowMs, minSpan, label }) {
    this.windowMs = windowMs;
    this.minSpan = minSpan;
    this.root = svg('svg', { class: 'spark', height: HEIGHT, role: 'img', 'aria-label': label });
    this.area = svg('path', { class: 'spark-area' });
    this.line = svg('path', { class: 'spark-line' });
    this.dot = svg('circle', { class: 'spark-dot', r: 3 });
    this.root.append(this.area, this.line, this.dot);
    container.append(this.root);
  }

  // points: [{t (ms), v (number), gapBefore (bool)}], oldest first.
  // Returns the time span drawn and the range of the values in it.
  draw(points, now = Date.now()) {
    const width = this.root.clientWidth || 240;
    this.root.setAttribute('viewBox', `0 0 ${width} ${HEIGHT}`);
    const oldest = points.length ? points[0].t : now;
    const span = Math.min(this.windowMs, Math.max(MIN_WINDOW_MS, now - oldest));
    const start = now - span;
    // The point just before the window anchors the line at its left edge.
    let first = points.findIndex((p) => p.t >= start);
    if (first === -1) first = points.length;
    const visible = points.slice(Math.max(0, first - 1));
    if (visible.length === 0) {
      this.line.setAttribute('d', '');
      this.area.setAttribute('d', '');
      this.dot.setAttribute('visibility', 'hidden');
      return { span, min: null, max: null };
    }

    const values = visible.map((p) => p.v);
    let min = Math.min(...values);
    let max = Math.max(...values);
    if (max - min < this.minSpan) {
      const mid = (max + min) / 2;
      min = mid - this.minSpan / 2;
      max = mid + this.minSpan / 2;
    }
    const x = (t) => Math.max(0, ((t - start) / span) * width);
    const y = (v) => PAD_Y + (1 - (v - min) / (max - min)) * (HEIGHT - 2 * PAD_Y);

    // One sub-path per unbroken run; each run gets its own filled area.
    let line = '';
    let area = '';
    let run = [];
    const flush = () => {
      if (run.length === 0) return;
      const d = run.map(([px, py], i) => `${i ? 'L' : 'M'}${px.toFixed(1)},${py.toFixed(1)}`).join('');
      line += d;
      const [x0] = run[0];
      const [x1] = run[run.length - 1];
      area += `${d}L${x1.toFixed(1)},${HEIGHT}L${x0.toFixed(1)},${HEIGHT}Z`;
      run = [];
    };
    for (const p of visible) {
      if (p.gapBefore) flush();
      run.push([x(p.t), y(p.v)]);
    }
    flush();
    this.line.setAttribute('d', line);
    this.area.setAttribute('d', area);
    const last = visible[visible.length - 1];
    this.dot.setAttribute('cx', x(last.t).toFixed(1));
    this.dot.setAttribute('cy', y(last.v).toFixed(1));
    this.dot.setAttribute('visibility', 'visible');
    const shown = visible.filter((p) => p.t >= start).map((p) => p.v);
    return { span, min: Math.min(...shown, last.v), max: Math.max(...shown, last.v) };
  }
}
