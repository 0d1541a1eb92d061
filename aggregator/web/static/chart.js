// Small SVG charts for the dashboard: line charts (one or more series) and bar charts,
// x = model version.
// No library, so the page works on a gateway without internet.
"use strict";
(function () {
  const NS = "http://www.w3.org/2000/svg";
  const W = 480, H = 210, M = { top: 12, right: 14, bottom: 30, left: 58 };

  function el(name, attrs, parent, text) {
    const node = document.createElementNS(NS, name);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
    if (text !== undefined) node.textContent = text;
    if (parent) parent.appendChild(node);
    return node;
  }

  // Round axis steps: 1, 2, 5 times a power of ten.
  function niceTicks(lo, hi, count) {
    if (!(hi > lo) && lo === 0) hi = 1;
    else if (!(hi > lo)) { const pad = Math.abs(lo) * 0.1; lo -= pad; hi += pad; }
    const raw = (hi - lo) / count, mag = Math.pow(10, Math.floor(Math.log10(raw)));
    const f = raw / mag;
    const step = mag * (f >= 7.5 ? 10 : f >= 3.5 ? 5 : f >= 1.5 ? 2 : 1);
    const first = Math.floor(lo / step) * step, ticks = [];
    for (let i = 0; ; i++) {  // up to the first tick at or above hi
      const v = first + i * step;
      ticks.push(Number(v.toPrecision(12)));
      if (v >= hi - step * 1e-9) return ticks;
    }
  }

  function start(svg, label) {
    svg.replaceChildren();
    svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
    el("desc", {}, svg, label);
  }

  function empty(svg, label) {
    start(svg, label + ": no data yet");
    el("text", { x: W / 2, y: H / 2, class: "empty", "text-anchor": "middle" }, svg, "No data yet");
  }

  // Grid, y labels and a y scale; returns y(value) in pixels. opts.top: where the plot
  // starts (lower when a legend takes the top band).
  function yAxis(svg, values, opts) {
    const top = opts.top || M.top;
    const lo = opts.yMin !== undefined ? opts.yMin : Math.min(...values);
    const ticks = niceTicks(lo, Math.max(...values), 4);
    const y0 = ticks[0], y1 = ticks[ticks.length - 1];
    const y = (v) => top + (H - top - M.bottom) * (1 - (v - y0) / (y1 - y0));
    for (const t of ticks) {
      el("line", { x1: M.left, x2: W - M.right, y1: y(t), y2: y(t), class: "grid" }, svg);
      el("text", { x: M.left - 8, y: y(t) + 4, class: "tick", "text-anchor": "end" }, svg,
        opts.format(t));
    }
    return y;
  }

  // Label at most ~8 versions along x, always the last one (and none crowding it);
  // xOf takes the index in xs.
  function xLabels(svg, xs, xOf) {
    const every = Math.max(1, Math.ceil(xs.length / 8)), last = xs.length - 1;
    xs.forEach((v, i) => {
      if (i !== last && (i % every || last - i < every)) return;
      el("text", { x: xOf(i), y: H - M.bottom + 18, class: "tick", "text-anchor": "middle" },
        svg, "v" + v);
    });
  }

  // One swatch and name per series, in the band above the plot, so it never hides a line.
  function legend(svg, series) {
    let x = M.left;
    for (const s of series) {
      const item = el("g", { class: "legend-item" }, svg);
      el("line", { x1: x, x2: x + 18, y1: 10, y2: 10, class: "series " + s.cls }, item);
      const label = el("text", { x: x + 24, y: 14, class: "legend" }, item, s.name);
      // 0 while the chart is not laid out: fall back to a rough width per character.
      x += 24 + Math.max(label.getComputedTextLength(), s.name.length * 6) + 18;
    }
  }

  function latest(s, opts) {
    const p = s.points[s.points.length - 1];
    return `${s.name} latest ${opts.format(p.y)} (v${p.x})`;
  }

  // series: [{name, cls, points: [{x: version, y: number}]}], x on one scale for all.
  // With more than one series the chart gets a legend, even while some have no points.
  function line(svg, series, opts) {
    const drawn = series.filter((s) => s.points.length);
    if (!drawn.length) return empty(svg, opts.label);
    start(svg, `${opts.label}: ${drawn.map((s) => latest(s, opts)).join("; ")}`);
    const withLegend = series.length > 1;
    const all = drawn.flatMap((s) => s.points);
    const y = yAxis(svg, all.map((p) => p.y), { ...opts, top: withLegend ? M.top + 16 : M.top });
    const xs = [...new Set(all.map((p) => p.x))].sort((a, b) => a - b);
    const lo = xs[0], span = xs[xs.length - 1] - lo;
    const xAt = (v) => span ? M.left + (W - M.left - M.right) * (v - lo) / span
      : (M.left + W - M.right) / 2;
    xLabels(svg, xs, (i) => xAt(xs[i]));
    for (const s of drawn) {
      const d = s.points.map((p, i) => `${i ? "L" : "M"}${xAt(p.x).toFixed(1)},${y(p.y).toFixed(1)}`);
      el("path", { d: d.join(" "), class: "series " + s.cls }, svg);
      for (const p of s.points) {
        const dot = el("circle", { cx: xAt(p.x), cy: y(p.y), r: 3, class: "dot " + s.cls }, svg);
        el("title", {}, dot, s.tip ? s.tip(p, opts.format(p.y)) : `v${p.x}: ${opts.format(p.y)}`);
      }
    }
    if (withLegend) legend(svg, series);
  }

  function bars(svg, points, opts) {
    if (!points.length) return empty(svg, opts.label);
    start(svg, `${opts.label}: latest ${opts.format(points[points.length - 1].y)}`);
    const y = yAxis(svg, points.map((p) => p.y), { ...opts, yMin: 0 });
    const band = (W - M.left - M.right) / points.length;
    const xOf = (i) => M.left + band * (i + 0.5);
    xLabels(svg, points.map((p) => p.x), xOf);
    points.forEach((p, i) => {
      const w = Math.max(1, band * 0.7), top = y(p.y);
      const bar = el("rect", { x: xOf(i) - w / 2, y: top, width: w, height: y(0) - top,
        class: "bar " + (opts.cls || "") }, svg);
      el("title", {}, bar, `v${p.x}: ${opts.format(p.y)}`);
    });
  }

  window.FedgeChart = { line, bars, niceTicks };
})();
