// The Headrace dashboard: one status a second from /api/events (server-sent events),
// a few minutes of history from /api/status?history=1, charts drawn as SVG paths.
// No libraries, nothing from elsewhere; values from the pipeline (keys, predictions,
// error texts) are only ever set as text, never as markup.
"use strict";

const HISTORY_SECONDS = 300;
const points = [];
const SVG = "http://www.w3.org/2000/svg";

const $ = (id) => document.getElementById(id);

function num(n, digits = 0) {
  if (n === null || n === undefined || Number.isNaN(n)) return "–";
  return Number(n).toLocaleString("en-US", { maximumFractionDigits: digits, minimumFractionDigits: 0 });
}

function seconds(s) {
  if (s === null || s === undefined || Number.isNaN(s)) return "–";
  if (Math.abs(s) < 1) return (s * 1000).toFixed(1) + " ms";
  if (Math.abs(s) < 120) return s.toFixed(2) + " s";
  if (Math.abs(s) < 7200) return (s / 60).toFixed(1) + " min";
  return (s / 3600).toFixed(1) + " h";
}

function prediction(p) {
  if (typeof p === "number") return Number.isInteger(p) ? String(p) : p.toPrecision(4);
  return JSON.stringify(p);
}

function clock(t) {
  return new Date(t * 1000).toLocaleTimeString();
}

function setText(id, text) {
  const el = $(id);
  if (el && el.textContent !== text) el.textContent = text;
}

function badge(id, text, cls) {
  const el = $(id);
  el.textContent = text;
  el.className = "badge " + cls;
}

function fillTable(id, rows) {
  const body = $(id).tBodies[0];
  const fresh = document.createElement("tbody");
  for (const row of rows) {
    const tr = document.createElement("tr");
    for (const cell of row) {
      const td = document.createElement("td");
      td.textContent = cell === null || cell === undefined ? "–" : String(cell);
      if (typeof cell === "number") td.className = "num";
      tr.appendChild(td);
    }
    fresh.appendChild(tr);
  }
  body.replaceWith(fresh);
}

function chart(id, series, format) {
  const svg = $(id);
  const w = 600, h = 160, left = 44, bottom = 14;
  while (svg.firstChild) svg.removeChild(svg.firstChild);
  const now = points.length ? points[points.length - 1].time : Date.now() / 1000;
  const t0 = now - HISTORY_SECONDS;
  let max = 0;
  for (const s of series) for (const p of points) {
    const v = p[s.field];
    if (v !== null && v !== undefined && v > max) max = v;
  }
  if (max <= 0) max = 1;
  const x = (t) => left + ((t - t0) / HISTORY_SECONDS) * (w - left);
  const y = (v) => (h - bottom) - (v / max) * (h - bottom - 6);
  for (const frac of [0, 0.5, 1]) {
    const line = document.createElementNS(SVG, "line");
    line.setAttribute("class", "grid");
    line.setAttribute("x1", left); line.setAttribute("x2", w);
    line.setAttribute("y1", y(max * frac)); line.setAttribute("y2", y(max * frac));
    svg.appendChild(line);
    const label = document.createElementNS(SVG, "text");
    label.setAttribute("class", "axis");
    label.setAttribute("x", 2); label.setAttribute("y", y(max * frac) + 3);
    label.textContent = format(max * frac);
    svg.appendChild(label);
  }
  for (const s of series) {
    let d = "";
    for (const p of points) {
      const v = p[s.field];
      if (v === null || v === undefined || p.time < t0) continue;
      d += (d ? " L" : "M") + x(p.time).toFixed(1) + " " + y(v).toFixed(1);
    }
    if (!d) continue;
    const path = document.createElementNS(SVG, "path");
    path.setAttribute("class", s.cls);
    path.setAttribute("d", d);
    svg.appendChild(path);
  }
}

function render(st) {
  document.title = "Headrace · " + st.pipeline;
  setText("pipeline", st.pipeline);
  badge("state", st.state, st.state);
  badge("ready", st.ready ? "ready" : "not ready: " + st.not_ready, st.ready ? "ready" : "notready");
  setText("paused", st.paused.length ? "paused: " + st.paused.join(", ") : "");
  setText("updated", "updated " + clock(st.time));
  const t = st.totals, r = st.rates || { in: 0, out: 0, batch: 0 };
  setText("rate-out", num(r.out));
  setText("rate-in", num(r.in));
  setText("records-out", num(t.out));
  setText("records-in", num(t.in));
  setText("p50", seconds(st.latency.p50));
  setText("p99", seconds(st.latency.p99));
  setText("batch", num(r.batch, 1));
  setText("in-flight", num(st.in_flight.records) + " / " + num(st.in_flight.max_records));
  const lagRecords = st.lag.reduce((a, p) => a + p.records, 0);
  const lagSeconds = st.lag.reduce((a, p) => Math.max(a, p.seconds), 0);
  setText("lag-total", st.lag.length ? num(lagRecords) : "–");
  setText("lag-seconds", st.lag.length ? seconds(lagSeconds) : "–");
  setText("failed", num(t.failed));
  setText("shed", num(t.shed));

  const m = st.model;
  setText("model-name", m.name);
  setText("model-version", m.version);
  setText("model-sha", m.sha256 || "–");
  const updates = Object.entries(m.updates).map(([k, v]) => k + " " + v).join(", ");
  setText("model-updates", updates || "none");
  setText("model-canary", m.canary ? (m.canary.version + " on " + (m.canary.fraction * 100).toFixed(1) + "% of keys") : "–");
  setText("model-shadow", m.shadow ? (m.shadow.version + ": " + (m.shadow.agreement === null ? "no comparisons yet" : (m.shadow.agreement * 100).toFixed(1) + "% agree")) : "–");
  fillTable("model-history", m.history.slice().reverse().map((e) => [clock(e.at), e.outcome.replace("_", " "), e.version, e.detail]));

  if (st.workers) {
    $("workers-panel").hidden = false;
    fillTable("workers", st.workers.map((w) => [w.worker, w.state, w.ready ? "yes" : "no", w.out, w.model, w.partitions]));
  }
  fillTable("lag-table", st.lag.map((p) => [p.topic, p.partition, p.records, seconds(p.seconds)]));
  const win = st.windows;
  setText("watermark", win && win.watermark ? new Date(win.watermark * 1000).toISOString() : "–");
  setText("windows-open", win ? num(win.open) : "–");
  setText("windows-closed", win ? num(win.closed) : "–");
  fillTable("dead-letters", st.dead_letters.map((d) => [d.stage, d.error_type, d.count]));
  fillTable("shed-table", st.shed.map((d) => [d.reason, d.priority, d.count]));
  fillTable("written", Object.entries(st.written).map(([k, v]) => [k, v]));
  fillTable("alerts", st.alerts.slice(-10).reverse().map((a) => [clock(a.at), a.sink, a.key, prediction(a.prediction)]));

  chart("chart-rate", [{ field: "in_rate", cls: "in" }, { field: "out_rate", cls: "out" }], (v) => num(v));
  chart("chart-latency", [{ field: "p50", cls: "p50" }, { field: "p99", cls: "p99" }], seconds);
  chart("chart-flight", [{ field: "in_flight", cls: "inflight" }, { field: "batch", cls: "batch" }], (v) => num(v));
  chart("chart-lag", [{ field: "lag_records", cls: "lag" }, { field: "lag_seconds", cls: "lagsec" }], (v) => num(v, 1));
}

function take(st) {
  if (st.point && (!points.length || st.point.time > points[points.length - 1].time)) {
    points.push(st.point);
    while (points.length && points[0].time < st.point.time - HISTORY_SECONDS) points.shift();
  }
  render(st);
}

async function start() {
  try {
    const response = await fetch("/api/status?history=1", { cache: "no-store" });
    const st = await response.json();
    points.push(...(st.history || []));
    render(st);
  } catch (err) {
    badge("state", "disconnected", "disconnected");
  }
  const events = new EventSource("/api/events");
  events.onmessage = (e) => take(JSON.parse(e.data));
  events.onerror = () => badge("state", "disconnected", "disconnected");
}

start();
