// The forwardpass dashboard: plain JavaScript, no dependencies, charts drawn as SVG.
// Every call goes to this page's own origin through api(), which never throws: a failed
// route yields {ok: false, status, error} and each panel shows that error in place.
"use strict";

const POLL_LIVE_MS = 2000;
const POLL_SLOW_MS = 3000;
const HISTORY = 60; // points kept per live series
const SVGNS = "http://www.w3.org/2000/svg";
const COLORS = ["#1f6feb", "#e36209", "#2e7d32", "#8250df", "#bf3989", "#0a7ea4", "#9a6700", "#57606a"];

const state = {
  key: sessionStorage.getItem("forwardpass-api-key") || "",
  model: "",
  models: [], // [{name, versions: [{version, state, reason, provenance}]}]
  prev: null, // the previous /metrics snapshot of the selected model {t, success, failure, dur}
  series: { t: [], rate: [], p50: [], p90: [], p99: [] },
  meta: {}, // model → {metadata, config}
};

const $ = (id) => document.getElementById(id);

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") node.className = v;
    else if (k === "style") node.style.cssText = v; // the CSSOM: CSP blocks style attributes
    else if (k === "text") node.textContent = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return node;
}

function svg(tag, attrs = {}) {
  const node = document.createElementNS(SVGNS, tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "text") node.textContent = v;
    else node.setAttribute(k, String(v));
  }
  return node;
}

function fmt(x, digits = 3) {
  if (x === null || x === undefined || Number.isNaN(x)) return "–";
  if (typeof x !== "number") return String(x);
  if (x !== 0 && (Math.abs(x) < 1e-3 || Math.abs(x) >= 1e5)) return x.toExponential(2);
  return String(Number(x.toFixed(digits)));
}

function showError(id, message) {
  const node = $(id);
  node.textContent = message || "";
  node.hidden = !message;
}

// ------------------------------------------------------------------ the API
async function api(method, path, { json, body, headers = {} } = {}) {
  const h = { ...headers };
  if (state.key) h["Authorization"] = "Bearer " + state.key;
  let payload = body;
  if (json !== undefined) {
    payload = JSON.stringify(json);
    h["Content-Type"] = "application/json";
  }
  let response;
  try {
    response = await fetch(path, { method, headers: h, body: payload, cache: "no-store" });
  } catch (exc) {
    $("conn").textContent = "server unreachable";
    return { ok: false, status: 0, error: "server unreachable: " + exc.message };
  }
  $("conn").textContent = "";
  const text = await response.text();
  let data = text;
  if ((response.headers.get("content-type") || "").includes("json")) {
    try { data = text ? JSON.parse(text) : null; } catch (exc) { data = text; }
  }
  if (response.status === 401) askForKey();
  if (!response.ok) {
    const error = data && typeof data === "object" && data.error ? data.error : text || response.statusText;
    return { ok: false, status: response.status, error: `${response.status}: ${error}`, data };
  }
  return { ok: true, status: response.status, data };
}

function askForKey() {
  const form = $("key-form");
  if (form.hidden) {
    form.hidden = false;
    $("key-note").textContent = state.key
      ? "the server refused this key; enter another"
      : "the server asks for a key (sent as Authorization: Bearer)";
  }
}

$("key-form").addEventListener("submit", (event) => {
  event.preventDefault();
  state.key = $("api-key").value.trim();
  sessionStorage.setItem("forwardpass-api-key", state.key);
  $("key-form").hidden = true;
  refreshAll();
});

// ------------------------------------------------------------------ Prometheus text
function parseProm(text) {
  const samples = [];
  for (const line of text.split("\n")) {
    if (!line || line[0] === "#") continue;
    const m = line.match(/^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s+(\S+)/);
    if (!m) continue;
    const labels = {};
    if (m[3]) {
      const re = /([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g;
      let l;
      while ((l = re.exec(m[3])) !== null) labels[l[1]] = l[2].replace(/\\(.)/g, (_, c) => (c === "n" ? "\n" : c));
    }
    samples.push({ name: m[1], labels, value: parseFloat(m[4]) });
  }
  return samples;
}

// A counter's samples, named with or without the "_total" suffix the client library adds.
function sumOf(samples, name, model) {
  let total = 0;
  for (const s of samples) if ((s.name === name || s.name === name + "_total") && s.labels.model === model) total += s.value;
  return total;
}

// Cumulative buckets of one histogram summed over the model's versions: [[le, count], ...].
function bucketsOf(samples, name, model) {
  const by = new Map();
  for (const s of samples) {
    if (s.name !== name + "_bucket" || s.labels.model !== model) continue;
    const le = s.labels.le === "+Inf" ? Infinity : parseFloat(s.labels.le);
    by.set(le, (by.get(le) || 0) + s.value);
  }
  return [...by.entries()].sort((a, b) => a[0] - b[0]);
}

// Prometheus's histogram_quantile: linear interpolation inside the bucket holding rank q.
function quantile(q, buckets) {
  if (!buckets.length) return null;
  const total = buckets[buckets.length - 1][1];
  if (total <= 0) return null;
  const rank = q * total;
  let prevLe = 0;
  let prevCount = 0;
  for (const [le, count] of buckets) {
    if (count >= rank) {
      if (le === Infinity) return prevLe;
      const inBucket = count - prevCount;
      return inBucket > 0 ? prevLe + (le - prevLe) * ((rank - prevCount) / inBucket) : le;
    }
    prevLe = le;
    prevCount = count;
  }
  return prevLe;
}

function deltaBuckets(now, before) {
  const old = new Map(before || []);
  return now.map(([le, c]) => [le, c - (old.get(le) || 0)]);
}

// ------------------------------------------------------------------ charts
function chartFrame(node, { yMax, yLabel = (v) => fmt(v, 2) }) {
  node.replaceChildren();
  const w = node.clientWidth || 300;
  const h = node.clientHeight || 150;
  node.setAttribute("viewBox", `0 0 ${w} ${h}`);
  const box = { left: 40, right: w - 8, top: 8, bottom: h - 18, w, h };
  for (let i = 0; i <= 4; i++) {
    const y = box.bottom - ((box.bottom - box.top) * i) / 4;
    node.append(svg("line", { class: "grid", x1: box.left, x2: box.right, y1: y, y2: y }));
    node.append(svg("text", { x: 2, y: y + 3, text: yLabel((yMax * i) / 4) }));
  }
  node.append(svg("line", { class: "axis", x1: box.left, x2: box.left, y1: box.top, y2: box.bottom }));
  node.append(svg("line", { class: "axis", x1: box.left, x2: box.right, y1: box.bottom, y2: box.bottom }));
  return box;
}

function emptyChart(node, message) {
  node.replaceChildren();
  const w = node.clientWidth || 300;
  const h = node.clientHeight || 150;
  node.setAttribute("viewBox", `0 0 ${w} ${h}`);
  node.append(svg("text", { class: "empty", x: w / 2, y: h / 2, "text-anchor": "middle", text: message }));
}

// Lines over a shared x; values may be null (a gap). series: [{name, values, color}].
function lineChart(node, xs, series, { yMax, xLabel = () => "", marks = [], threshold = null } = {}) {
  const values = series.flatMap((s) => s.values.filter((v) => v !== null && Number.isFinite(v)));
  if (!xs.length || !values.length) return emptyChart(node, "no data yet");
  const top = Math.max(yMax || 0, ...values, threshold || 0) * 1.1 || 1;
  const box = chartFrame(node, { yMax: top });
  const x0 = xs[0];
  const span = xs[xs.length - 1] - x0 || 1;
  const X = (x) => box.left + ((box.right - box.left) * (x - x0)) / span;
  const Y = (v) => box.bottom - ((box.bottom - box.top) * v) / top;
  node.append(svg("text", { x: box.left, y: box.h - 4, text: xLabel(xs[0]) }));
  node.append(svg("text", { x: box.right, y: box.h - 4, "text-anchor": "end", text: xLabel(xs[xs.length - 1]) }));
  if (threshold !== null) {
    node.append(svg("line", { class: "threshold", x1: box.left, x2: box.right, y1: Y(threshold), y2: Y(threshold) }));
  }
  for (const m of marks) {
    const line = svg("line", { class: "alarm-mark", x1: X(m.x), x2: X(m.x), y1: box.top, y2: box.bottom, "data-x": m.x });
    line.append(svg("title", { text: m.title }));
    node.append(line);
  }
  series.forEach((s, i) => {
    const color = s.color || COLORS[i % COLORS.length];
    let path = "";
    let pen = false;
    const g = svg("g", { "data-series": s.name });
    s.values.forEach((v, j) => {
      if (v === null || !Number.isFinite(v)) { pen = false; return; }
      path += (pen ? "L" : "M") + X(xs[j]).toFixed(1) + "," + Y(v).toFixed(1);
      pen = true;
      const dot = svg("circle", { class: "point", cx: X(xs[j]), cy: Y(v), r: 2, fill: color, "data-x": xs[j], "data-value": v });
      dot.append(svg("title", { text: `${s.name}: ${fmt(v)}` }));
      g.append(dot);
    });
    g.prepend(svg("path", { class: "line", d: path, stroke: color }));
    node.append(g);
  });
}

// Bars with optional interval whiskers: [{label, value, lo, hi, attrs}].
function barChart(node, bars, { yMax } = {}) {
  if (!bars.length) return emptyChart(node, "no data yet");
  const top = Math.max(yMax || 0, ...bars.map((b) => Math.max(b.value || 0, b.hi || 0))) * 1.1 || 1;
  const box = chartFrame(node, { yMax: top });
  const slot = (box.right - box.left) / bars.length;
  const Y = (v) => box.bottom - ((box.bottom - box.top) * v) / top;
  bars.forEach((b, i) => {
    const x = box.left + slot * i + slot * 0.15;
    const bw = slot * 0.7;
    const v = b.value || 0;
    const rect = svg("rect", { class: "bar", x, y: Y(v), width: bw, height: box.bottom - Y(v), "data-label": b.label, "data-value": v, ...(b.attrs || {}) });
    rect.append(svg("title", { text: `${b.label}: ${fmt(b.value)}` + (b.lo !== undefined && b.lo !== null ? ` [${fmt(b.lo)}, ${fmt(b.hi)}]` : "") }));
    node.append(rect);
    if (b.lo !== undefined && b.lo !== null && b.hi !== null) {
      const cx = x + bw / 2;
      node.append(svg("line", { class: "whisker", x1: cx, x2: cx, y1: Y(b.lo), y2: Y(b.hi), "data-label": b.label }));
      node.append(svg("line", { class: "whisker", x1: cx - 4, x2: cx + 4, y1: Y(b.lo), y2: Y(b.lo) }));
      node.append(svg("line", { class: "whisker", x1: cx - 4, x2: cx + 4, y1: Y(b.hi), y2: Y(b.hi) }));
    }
    node.append(svg("text", { x: x + bw / 2, y: box.h - 4, "text-anchor": "middle", text: b.label }));
  });
}

function legend(node, names) {
  node.replaceChildren(...names.map((name, i) => {
    const swatch = svg("svg", { width: 14, height: 8, "aria-hidden": "true" });
    swatch.append(svg("rect", { width: 14, height: 4, y: 2, fill: COLORS[i % COLORS.length] }));
    return el("span", {}, swatch, " " + name);
  }));
}

// ------------------------------------------------------------------ models
function provenanceText(v) {
  if (v.optimized_from === undefined) return "";
  return `optimized from v${v.optimized_from}` + (v.optimization ? ` by ${v.optimization}` : "");
}

async function refreshModels() {
  const result = await api("POST", "/v2/repository/index", { json: {} });
  let models = [];
  if (result.ok && Array.isArray(result.data)) {
    showError("models-error", "");
    const by = new Map();
    for (const row of result.data) {
      if (!by.has(row.name)) by.set(row.name, { name: row.name, versions: [] });
      if (row.version !== undefined) by.get(row.name).versions.push(row);
    }
    models = [...by.values()];
  } else {
    // The repository API may be restricted: the statistics list every loaded model.
    const stats = await api("GET", "/v2/models/stats");
    if (stats.ok && stats.data && Array.isArray(stats.data.model_stats)) {
      showError("models-error", `repository index unavailable (${result.error}); showing loaded models from the statistics`);
      const by = new Map();
      for (const s of stats.data.model_stats) {
        if (!by.has(s.name)) by.set(s.name, { name: s.name, versions: [] });
        by.get(s.name).versions.push({ name: s.name, version: s.version, state: "READY", reason: "" });
      }
      models = [...by.values()];
    } else {
      showError("models-error", `cannot list models: ${result.error}; ${stats.error}`);
      return;
    }
  }
  state.models = models;
  renderModels();
}

function renderModels() {
  const body = $("models-body");
  body.replaceChildren();
  for (const m of state.models) {
    const versions = m.versions.length ? m.versions : [{ name: m.name }];
    versions.forEach((v, i) => {
      const tr = el("tr", { class: m.name === state.model ? "selected" : "", "data-model": m.name, "data-version": v.version || "" });
      tr.append(el("td", {}, i === 0 ? m.name : ""));
      tr.append(el("td", {}, v.version || "–"));
      tr.append(el("td", {}, v.state ? el("span", { class: "badge " + v.state, text: v.state }) : "not loaded", v.reason ? el("div", { class: "muted", text: v.reason }) : ""));
      tr.append(el("td", { class: "provenance" }, provenanceText(v)));
      tr.append(el("td", {}, i === 0 ? el("button", { type: "button", class: "link", text: "show", "aria-label": `show model ${m.name}`, onclick: () => selectModel(m.name) }) : ""));
      body.append(tr);
    });
  }
  const select = $("model-select");
  const names = state.models.filter((m) => m.versions.some((v) => v.state === "READY")).map((m) => m.name);
  const current = [...select.options].map((o) => o.value);
  if (current.join("\n") !== names.join("\n")) {
    select.replaceChildren(...names.map((n) => el("option", { value: n, text: n })));
  }
  if (!state.model || !names.includes(state.model)) {
    const wanted = new URLSearchParams(location.hash.slice(1)).get("model");
    if (names.length) selectModel(names.includes(wanted) ? wanted : names[0]);
  }
  select.value = state.model;
}

function selectModel(name) {
  if (name === state.model) return;
  state.model = name;
  state.prev = null;
  state.series = { t: [], rate: [], p50: [], p90: [], p99: [] };
  history.replaceState(null, "", "#model=" + encodeURIComponent(name));
  $("model-select").value = name;
  for (const span of document.querySelectorAll(".model-name")) span.textContent = "· " + name;
  for (const tr of document.querySelectorAll("#models-body tr")) tr.classList.toggle("selected", tr.dataset.model === name);
  refreshAll();
}

$("model-select").addEventListener("change", (e) => selectModel(e.target.value));
// A link to #model=NAME (or the back button) selects that model.
window.addEventListener("hashchange", () => {
  const wanted = new URLSearchParams(location.hash.slice(1)).get("model");
  if (wanted && state.models.some((m) => m.name === wanted)) selectModel(wanted);
});

// ------------------------------------------------------------------ live traffic
async function refreshLive() {
  const model = state.model;
  if (!model) return;
  const result = await api("GET", "/metrics");
  if (model !== state.model) return;
  if (!result.ok) {
    showError("live-error", `metrics unavailable: ${result.error}`);
    return refreshLiveFromStats(model);
  }
  showError("live-error", "");
  const samples = parseProm(result.data);
  const now = performance.now() / 1000;
  const snap = {
    t: now,
    success: sumOf(samples, "forwardpass_request_success", model),
    failure: sumOf(samples, "forwardpass_request_failure", model),
    dur: bucketsOf(samples, "forwardpass_request_duration_seconds", model),
    batch: bucketsOf(samples, "forwardpass_batch_size", model),
    executions: sumOf(samples, "forwardpass_execution_count", model),
  };
  const total = snap.success + snap.failure;
  $("live-total").textContent = String(total);
  $("live-failures").textContent = String(snap.failure);
  $("live-batches").textContent = String(snap.executions);
  // Percentiles since start, in the figures; per interval, in the chart.
  for (const q of [50, 90, 99]) {
    const v = quantile(q / 100, snap.dur);
    $("live-p" + q).textContent = v === null ? "–" : fmt(v * 1000, 2) + " ms";
  }
  const prev = state.prev;
  if (prev) {
    const dt = snap.t - prev.t;
    const rate = dt > 0 ? (total - prev.success - prev.failure) / dt : 0;
    const d = deltaBuckets(snap.dur, prev.dur);
    const s = state.series;
    s.t.push(snap.t);
    s.rate.push(rate);
    for (const q of [50, 90, 99]) {
      const v = quantile(q / 100, d);
      s["p" + q].push(v === null ? null : v * 1000);
    }
    for (const k of Object.keys(s)) if (s[k].length > HISTORY) s[k].shift();
    $("live-rate").textContent = fmt(rate, 1) + " req/s";
  }
  state.prev = snap;
  drawLive(snap);
}

function drawLive(snap) {
  const s = state.series;
  const t0 = s.t.length ? s.t[s.t.length - 1] : 0;
  const ago = (t) => `${Math.round(t - t0)} s`;
  lineChart($("chart-rate"), s.t, [{ name: "requests/s", values: s.rate }], { xLabel: ago });
  lineChart($("chart-latency"), s.t, [
    { name: "p50", values: s.p50 },
    { name: "p90", values: s.p90 },
    { name: "p99", values: s.p99 },
  ], { xLabel: ago });
  legend($("latency-legend"), ["p50", "p90", "p99"]);
  const bars = [];
  let prevCount = 0;
  let prevLe = 0;
  for (const [le, count] of snap.batch) {
    const n = count - prevCount;
    const label = le === Infinity ? `>${prevLe}` : prevLe + 1 >= le ? `${le}` : `${prevLe + 1}–${le}`;
    bars.push({ label, value: n, attrs: { "data-le": le === Infinity ? "+Inf" : le, "data-count": n } });
    prevCount = count;
    prevLe = le;
  }
  // Trim the empty buckets above the largest batch seen.
  while (bars.length > 1 && bars[bars.length - 1].value === 0) bars.pop();
  if (snap.executions === 0) emptyChart($("chart-batch"), "no batches yet");
  else barChart($("chart-batch"), bars);
}

// Without /metrics (--no-metrics or restricted): counts and mean latency from the statistics.
async function refreshLiveFromStats(model) {
  const result = await api("GET", `/v2/models/${encodeURIComponent(model)}/stats`);
  if (!result.ok) {
    showError("live-error", `metrics and statistics unavailable: ${result.error}`);
    return;
  }
  let success = 0, ns = 0, failure = 0, executions = 0;
  const sizes = new Map();
  for (const s of result.data.model_stats || []) {
    const st = s.inference_stats || {};
    success += (st.success || {}).count || 0;
    ns += (st.success || {}).ns || 0;
    failure += (st.fail || {}).count || 0;
    executions += s.execution_count || 0;
    for (const b of s.batch_stats || []) sizes.set(b.batch_size, (sizes.get(b.batch_size) || 0) + ((b.compute_infer || {}).count || 0));
  }
  $("live-total").textContent = String(success + failure);
  $("live-failures").textContent = String(failure);
  $("live-batches").textContent = String(executions);
  $("live-p50").textContent = success ? `mean ${fmt(ns / success / 1e6, 2)} ms` : "–";
  const now = performance.now() / 1000;
  if (state.prev && state.prev.fromStats) {
    const s = state.series;
    s.t.push(now);
    s.rate.push((success + failure - state.prev.total) / (now - state.prev.t));
    for (const k of ["p50", "p90", "p99"]) s[k].push(null);
    for (const k of Object.keys(s)) if (s[k].length > HISTORY) s[k].shift();
  }
  state.prev = { fromStats: true, t: now, total: success + failure };
  const s = state.series;
  lineChart($("chart-rate"), s.t, [{ name: "requests/s", values: s.rate }]);
  emptyChart($("chart-latency"), "percentiles need /metrics");
  const bars = [...sizes.entries()].sort((a, b) => a[0] - b[0]).map(([size, n]) => ({ label: String(size), value: n, attrs: { "data-le": size, "data-count": n } }));
  barChart($("chart-batch"), bars);
}

// ------------------------------------------------------------------ drift
function notMonitored(node, text) {
  node.textContent = text;
  node.className = "status not-monitored";
}

function statusError(node, text) {
  node.textContent = text;
  node.className = "status error";
}

async function refreshDrift() {
  const model = state.model;
  if (!model) return;
  const result = await api("GET", `/v2/models/${encodeURIComponent(model)}/monitor`);
  if (model !== state.model) return;
  const status = $("drift-status");
  const body = $("drift-body");
  if (!result.ok) {
    body.replaceChildren();
    $("drift-legend").replaceChildren();
    emptyChart($("chart-drift"), "not monitored");
    if (result.status === 400 && /no drift monitoring/.test(result.error)) notMonitored(status, "not monitored: " + result.error);
    else if (result.status === 404 && /no route/.test(result.error)) notMonitored(status, "not monitored: this server has no drift monitor");
    else statusError(status, result.error);
    return;
  }
  const doc = result.data;
  if (!doc.enabled) {
    statusError(status, "drift monitoring is off: " + (doc.error || "unknown reason"));
    emptyChart($("chart-drift"), "monitor off");
    body.replaceChildren();
    return;
  }
  const win = doc.window || {};
  status.className = "status";
  status.replaceChildren(
    el("span", { class: "badge " + (doc.alarm ? "alarm" : "calm"), id: "drift-alarm", text: doc.alarm ? "ALARM" : "no alarm" }),
    ` ${doc.observed_requests} requests observed; window ${win.filled ?? "–"}/${win.size ?? "–"} rows` +
      (doc.reference ? `; reference ${doc.reference.rows} rows` : "") +
      (doc.dropped_records ? `; ${doc.dropped_records} records dropped` : "") +
      (doc.state_error ? `; state: ${doc.state_error}` : ""),
  );
  body.replaceChildren(...(doc.features || []).map((f) => el("tr", { "data-feature": f.feature, class: f.drift ? "drifted" : "" },
    el("td", {}, f.feature), el("td", {}, f.test), el("td", {}, fmt(f.statistic)), el("td", {}, fmt(f.p_value)),
    el("td", {}, fmt(f.psi)), el("td", {}, fmt(f.wasserstein)),
    el("td", {}, f.drift ? el("span", { class: "badge alarm", text: "drift" }) : "–"))));
  const hist = doc.history || [];
  const features = [...new Set(hist.flatMap((h) => Object.keys(h.p_value || {})))];
  const xs = hist.map((h) => h.end);
  const series = features.map((name) => ({
    name,
    values: hist.map((h) => {
      const p = (h.p_value || {})[name];
      return p === null || p === undefined ? null : -Math.log10(Math.max(p, 1e-300));
    }),
  }));
  const marks = hist.filter((h) => h.alarm).map((h) => ({ x: h.end, title: `alarm at row ${h.end}: ${(h.drift || []).join(", ")}` }));
  const level = doc.per_test_level;
  lineChart($("chart-drift"), xs, series, {
    xLabel: (x) => `row ${x}`,
    marks,
    threshold: typeof level === "number" && level > 0 ? -Math.log10(level) : null,
  });
  legend($("drift-legend"), features);
}

// ------------------------------------------------------------------ fairness
async function refreshFairness() {
  const model = state.model;
  if (!model) return;
  const result = await api("GET", `/v2/models/${encodeURIComponent(model)}/fairness`);
  if (model !== state.model) return;
  const status = $("fairness-status");
  const out = $("fairness-versions");
  if (!result.ok) {
    out.replaceChildren();
    if (result.status === 404 && /no route/.test(result.error)) notMonitored(status, "not monitored: this server has no fairness monitor");
    else statusError(status, result.error);
    return;
  }
  const doc = result.data;
  const problems = [...(doc.errors || []), ...Object.entries(doc.disabled || {}).map(([sink, why]) => `${sink} disabled: ${why}`)];
  if (!doc.configured) {
    out.replaceChildren();
    if (problems.length) statusError(status, "not monitored: " + problems.join("; "));
    else notMonitored(status, "not monitored: the model declares no monitoring.fairness");
    return;
  }
  status.className = problems.length ? "status error" : "status";
  status.textContent = `sensitive: ${doc.sensitive.join(", ")}; ${doc.pending} prediction(s) awaiting ground truth` + (problems.length ? "; " + problems.join("; ") : "");
  const metric = $("fairness-metric").value;
  const versions = Object.entries(doc.versions || {});
  if (!versions.length) {
    out.replaceChildren(el("p", { class: "muted", text: "no labelled predictions yet (POST /v2/models/" + model + "/feedback)" }));
    return;
  }
  out.replaceChildren(...versions.map(([version, rep]) => renderFairnessVersion(version, rep, metric)));
}

function renderFairnessVersion(version, rep, metric) {
  const box = el("div", { class: "fairness-version", "data-version": version });
  box.append(el("h3", { text: `version ${version}: ${rep.labelled} labelled prediction(s), window ${rep.window}` }));
  const chart = svg("svg", { class: "chart fairness-chart", role: "img", "aria-label": `${metric} by group, version ${version}` });
  box.append(chart);
  const table = el("table", {}, el("thead", {}, el("tr", {}, ...["Group", "Count", "Selection rate", "Accuracy", "TPR", "FPR", "Precision"].map((h) => el("th", { scope: "col", text: h })))));
  const tbody = el("tbody");
  const interval = (g, k) => {
    const v = (g.metrics || {})[k];
    const iv = (g.intervals || {})[k];
    return fmt(v) + (iv && iv[0] !== null ? ` [${fmt(iv[0])}, ${fmt(iv[1])}]` : "");
  };
  for (const g of rep.groups) {
    const tr = el("tr", { "data-group": g.group }, el("td", {}, g.group), el("td", {}, String(g.count)));
    if (g.insufficient) tr.append(el("td", { colspan: 5, class: "muted insufficient", text: g.insufficient }));
    else for (const k of ["selection_rate", "accuracy", "tpr", "fpr", "precision"]) tr.append(el("td", {}, interval(g, k)));
    tbody.append(tr);
  }
  table.append(tbody);
  box.append(table);
  if (rep.disparities) {
    box.append(el("ul", { class: "disparities" }, ...Object.entries(rep.disparities).map(([k, d]) =>
      el("li", { "data-disparity": k }, `${k.replaceAll("_", " ")}: ${fmt(d.value)}` + (d.interval ? ` [${fmt(d.interval[0])}, ${fmt(d.interval[1])}]` : "")))));
  } else if (rep.insufficient) {
    box.append(el("p", { class: "muted", text: rep.insufficient }));
  }
  // Drawn once the box is in the page (it needs a size).
  requestAnimationFrame(() => {
    const bars = rep.groups.filter((g) => !g.insufficient).map((g) => {
      const iv = (g.intervals || {})[metric] || [null, null];
      return { label: g.group, value: (g.metrics || {})[metric], lo: iv[0], hi: iv[1], attrs: { "data-group": g.group } };
    });
    if (bars.length) barChart(chart, bars, { yMax: 1 });
    else emptyChart(chart, "no group has enough labelled predictions");
  });
  return box;
}

$("fairness-metric").addEventListener("change", refreshFairness);

// Ground truth for one logged prediction: a number when it reads as one, else the text.
$("feedback-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const status = $("feedback-status");
  const raw = $("feedback-truth").value.trim();
  const truth = raw !== "" && Number.isFinite(Number(raw)) ? Number(raw) : raw;
  const result = await api("POST", `/v2/models/${encodeURIComponent(state.model)}/feedback`, { json: { id: $("feedback-id").value.trim(), truth } });
  if (!result.ok) return statusError(status, result.error);
  status.className = "status";
  status.textContent = `joined ${result.data.joined} prediction(s)`;
  refreshFairness();
  refreshLog();
});

// ------------------------------------------------------------------ request log
async function refreshLog() {
  const model = state.model;
  if (!model) return;
  const params = new URLSearchParams();
  const since = $("log-since").value;
  if (since) params.set("since", since);
  const limit = parseInt($("log-limit").value, 10);
  params.set("limit", String(Number.isFinite(limit) ? limit : 100));
  const result = await api("GET", `/v2/models/${encodeURIComponent(model)}/log?${params}`);
  if (model !== state.model) return;
  const line = $("log-status-line");
  const body = $("log-body");
  if (!result.ok) {
    body.replaceChildren();
    if (result.status === 404 && /no request log/.test(result.error)) notMonitored(line, "not logged: " + result.error);
    else statusError(line, result.error);
    return;
  }
  const wanted = $("log-status").value;
  const idPart = $("log-id").value.trim();
  const rows = result.data.rows.filter((r) =>
    (!wanted || (wanted === "OK" ? r.status === "OK" : r.status !== "OK")) && (!idPart || r.id.includes(idPart)));
  rows.reverse();
  line.className = "status";
  line.textContent = `${rows.length} of ${result.data.rows.length} row(s)`;
  const ms = (us) => fmt(us / 1000, 2);
  body.replaceChildren(...rows.map((r) => el("tr", { "data-id": r.id, "data-status": r.status },
    el("td", {}, new Date(r.time * 1000).toLocaleTimeString()),
    el("td", { class: "id" }, el("button", { type: "button", class: "link", text: r.id, title: "give its ground truth",
      onclick: () => { $("feedback-id").value = r.id; $("feedback-truth").focus(); } })),
    el("td", {}, r.version),
    el("td", { title: r.error || "" }, el("span", { class: "badge " + (r.status === "OK" ? "OK" : "err"), text: r.status }), r.error ? el("div", { class: "muted", text: r.error }) : ""),
    el("td", {}, ms(r.total_us)), el("td", {}, ms(r.queue_us)), el("td", {}, ms(r.compute_us)),
    el("td", {}, String(r.batch_size)),
    el("td", { class: "truth" }, r.truth === null || r.truth === undefined ? "" : JSON.stringify(r.truth)))));
}

$("log-form").addEventListener("submit", (e) => { e.preventDefault(); refreshLog(); });
for (const id of ["log-status", "log-since"]) $(id).addEventListener("change", refreshLog);
$("log-id").addEventListener("input", refreshLog);

// ------------------------------------------------------------------ try it
async function modelInfo(model) {
  if (state.meta[model]) return state.meta[model];
  const [metadata, config] = await Promise.all([
    api("GET", `/v2/models/${encodeURIComponent(model)}`),
    api("GET", `/v2/models/${encodeURIComponent(model)}/config`),
  ]);
  if (!metadata.ok) return { error: metadata.error };
  const info = { metadata: metadata.data, config: config.ok ? config.data : null };
  state.meta[model] = info;
  return info;
}

function tryMode() {
  return document.querySelector('input[name="try-mode"]:checked').value;
}

function describeInputs(info) {
  if (info.error) return info.error;
  return "inputs: " + info.metadata.inputs.map((i) => `${i.name} ${i.datatype} [${i.shape.join(", ")}]`).join("; ");
}

async function updateTryForm() {
  const mode = tryMode();
  $("try-image-row").hidden = mode !== "image";
  $("try-text-row").hidden = mode === "image";
  $("try-text").labels[0].textContent = mode === "json" ? "JSON inference request (V2)" : "Text";
  if (!state.model) return;
  const info = await modelInfo(state.model);
  $("try-inputs").textContent = describeInputs(info);
  const text = $("try-text");
  if (mode === "json" && !text.value.trim().startsWith("{") && !info.error) {
    text.value = JSON.stringify({
      inputs: info.metadata.inputs.map((i) => ({ name: i.name, datatype: i.datatype, shape: i.shape.map((d) => (d < 0 ? 1 : d)), data: [] })),
    }, null, 1);
  } else if (mode === "text" && text.value.trim().startsWith("{")) {
    text.value = "";
  }
}

for (const radio of document.querySelectorAll('input[name="try-mode"]')) radio.addEventListener("change", updateTryForm);

// Outputs with labels are asked for as Triton classifications (score:index:label).
function outputRequests(info) {
  const labelled = new Set(((info.config || {}).output || []).filter((o) => o.label_filename).map((o) => o.name));
  return info.metadata.outputs.map((o) => (labelled.has(o.name) ? { name: o.name, parameters: { classification: 5 } } : { name: o.name }));
}

function shapeOf(input) {
  return input.shape.map((d) => (d < 0 ? 1 : d));
}

function imageLayout(dims) {
  if (dims.length === 3 && (dims[0] === 1 || dims[0] === 3)) return { layout: "CHW", c: dims[0], h: dims[1], w: dims[2] };
  if (dims.length === 3 && (dims[2] === 1 || dims[2] === 3)) return { layout: "HWC", c: dims[2], h: dims[0], w: dims[1] };
  if (dims.length === 2) return { layout: "HW", c: 1, h: dims[0], w: dims[1] };
  return null;
}

// An image file as the pixels a tensor input wants, as forwardpass's image decoding makes them:
// resized to the input's size, in [0, 1], grey as PIL's "L", inverted per image_invert.
async function imagePixels(file, geom, params) {
  const bitmap = await createImageBitmap(file);
  const canvas = document.createElement("canvas");
  canvas.width = geom.w;
  canvas.height = geom.h;
  const ctx = canvas.getContext("2d");
  ctx.imageSmoothingQuality = "high";
  ctx.drawImage(bitmap, 0, 0, geom.w, geom.h);
  const rgba = ctx.getImageData(0, 0, geom.w, geom.h).data;
  const n = geom.w * geom.h;
  const planes = [];
  for (let c = 0; c < geom.c; c++) planes.push(new Float32Array(n));
  let sum = 0;
  for (let i = 0; i < n; i++) {
    const r = rgba[4 * i], g = rgba[4 * i + 1], b = rgba[4 * i + 2];
    if (geom.c === 1) planes[0][i] = (r * 299 + g * 587 + b * 114) / 1000 / 255;
    else { planes[0][i] = r / 255; planes[1][i] = g / 255; planes[2][i] = b / 255; }
    for (let c = 0; c < geom.c; c++) sum += planes[c][i];
  }
  const invert = String((params.image_invert || {}).string_value || "false").toLowerCase();
  if (invert === "true" || (invert === "auto" && sum / (n * geom.c) > 0.5)) for (const p of planes) for (let i = 0; i < n; i++) p[i] = 1 - p[i];
  const out = [];
  if (geom.layout === "HWC") for (let i = 0; i < n; i++) for (let c = 0; c < geom.c; c++) out.push(planes[c][i]);
  else for (const p of planes) out.push(...p);
  return out;
}

async function buildImageRequest(info, file) {
  const inputs = info.metadata.inputs;
  const bytesInput = inputs.find((i) => i.datatype === "BYTES");
  if (bytesInput) {
    // Binary tensor extension: the JSON header, then the element as 4-byte length + bytes.
    const data = new Uint8Array(await file.arrayBuffer());
    const header = new TextEncoder().encode(JSON.stringify({
      inputs: [{ name: bytesInput.name, datatype: "BYTES", shape: shapeOf(bytesInput), parameters: { binary_data_size: data.length + 4 } }],
      outputs: outputRequests(info),
    }));
    const body = new Uint8Array(header.length + 4 + data.length);
    body.set(header, 0);
    new DataView(body.buffer).setUint32(header.length, data.length, true);
    body.set(data, header.length + 4);
    return { body, headers: { "Inference-Header-Content-Length": String(header.length), "Content-Type": "application/octet-stream" } };
  }
  const batching = inputs[0] && inputs[0].shape[0] === -1 && ((info.config || {}).max_batch_size || 0) > 0;
  const target = inputs.find((i) => imageLayout(batching ? i.shape.slice(1) : i.shape));
  if (!target) throw new Error(`no input of this model takes an image (${describeInputs(info)})`);
  const geom = imageLayout(batching ? target.shape.slice(1) : target.shape);
  if (geom.h < 0 || geom.w < 0) throw new Error(`input ${target.name} has a variable image size; send JSON instead`);
  const data = await imagePixels(file, geom, (info.config || {}).parameters || {});
  return { json: { inputs: [{ name: target.name, datatype: target.datatype, shape: shapeOf(target), data }], outputs: outputRequests(info) } };
}

function buildTextRequest(info, text) {
  const input = info.metadata.inputs.find((i) => i.datatype === "BYTES");
  if (!input) throw new Error(`no BYTES input takes text (${describeInputs(info)})`);
  return { json: { inputs: [{ name: input.name, datatype: "BYTES", shape: shapeOf(input), data: [text] }], outputs: outputRequests(info) } };
}

const CLASS_ENTRY = /^(-?[\d.]+(?:[eE][-+]?\d+)?|nan|inf|-inf):(\d+)(?::(.*))?$/;

function renderAnswer(doc) {
  const out = $("try-answer");
  out.replaceChildren();
  if (doc.id) out.append(el("p", { class: "muted" }, "request id ", el("code", { id: "try-request-id", text: doc.id })));
  for (const o of doc.outputs || []) {
    const data = Array.isArray(o.data) ? o.data : [];
    const entries = o.datatype === "BYTES" && data.length ? data.map((d) => String(d).match(CLASS_ENTRY)) : [];
    if (entries.length && entries.every((m) => m)) {
      const list = el("ol", { class: "classes", "data-output": o.name });
      const top = Math.max(...entries.map((m) => parseFloat(m[1])).filter(Number.isFinite), 1e-9);
      for (const m of entries) {
        const score = parseFloat(m[1]);
        const label = m[3] !== undefined ? m[3] : m[2];
        list.append(el("li", { "data-label": label, "data-score": score }, el("strong", { text: label }), ` ${fmt(score, 4)}`,
          el("span", { class: "score", style: `width:${Math.max(0, (score / top) * 8).toFixed(2)}em`, "aria-hidden": "true" })));
      }
      out.append(el("h3", { text: `${o.name} (top ${entries.length})` }), list);
    } else {
      out.append(el("h3", { text: `${o.name} ${o.datatype} [${(o.shape || []).join(", ")}]` }),
        el("pre", { class: "output", "data-output": o.name, text: JSON.stringify(o.data) }));
    }
  }
}

$("try-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const status = $("try-status");
  const model = state.model;
  if (!model) return statusError(status, "no model selected");
  status.className = "status";
  status.textContent = "sending…";
  $("try-answer").replaceChildren();
  $("try-json").textContent = "";
  const info = await modelInfo(model);
  if (info.error) return statusError(status, info.error);
  let request;
  try {
    const mode = tryMode();
    if (mode === "image") {
      const file = $("try-file").files[0];
      if (!file) return statusError(status, "choose an image file first");
      request = await buildImageRequest(info, file);
    } else if (mode === "text") {
      request = buildTextRequest(info, $("try-text").value);
    } else {
      try { request = { json: JSON.parse($("try-text").value) }; } catch (exc) { return statusError(status, "not valid JSON: " + exc.message); }
    }
  } catch (exc) {
    return statusError(status, exc.message);
  }
  const started = performance.now();
  const result = await api("POST", `/v2/models/${encodeURIComponent(model)}/infer`, request);
  const took = performance.now() - started;
  if (!result.ok) return statusError(status, result.error);
  if (typeof result.data !== "object") return statusError(status, "the server answered binary outputs; ask for JSON");
  status.textContent = `answered in ${fmt(took, 1)} ms`;
  $("try-json").textContent = JSON.stringify(result.data, null, 1);
  renderAnswer(result.data);
});

// ------------------------------------------------------------------ polling
async function serverInfo() {
  const result = await api("GET", "/v2");
  $("server-info").textContent = result.ok ? `${result.data.name} ${result.data.version}` : result.error;
}

function refreshAll() {
  refreshLive();
  refreshDrift();
  refreshFairness();
  refreshLog();
  updateTryForm();
}

function every(ms, fn) {
  let busy = false;
  setInterval(async () => {
    if (busy || document.hidden) return;
    busy = true;
    try { await fn(); } catch (exc) { console.error(exc); } finally { busy = false; }
  }, ms);
}

serverInfo();
refreshModels();
every(POLL_LIVE_MS, refreshLive);
every(POLL_SLOW_MS, async () => {
  await refreshModels();
  await Promise.all([refreshDrift(), refreshFairness(), $("log-auto").checked ? refreshLog() : null]);
});
