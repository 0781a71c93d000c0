// Herald dashboard: vanilla JS against the API of docs/http-api.md. No build step, no CDN.
"use strict";

const MAX_EVENTS = 200;
const SVG_NS = "http://www.w3.org/2000/svg";
const COLORS = ["#2f6fde", "#c93a3a", "#2a8f4e", "#c98a1a", "#7b4fd0", "#1a9bb0", "#b0418c", "#6b7385"];

const state = {
  tab: "topology",
  events: [],
  eventCount: 0,
  source: null,
  dlqQueue: null,
};

// ---- session & API -----------------------------------------------------------------------
// The page never keeps the token: it trades it once for an HttpOnly, SameSite=Strict session
// cookie (POST /api/session), which fetch and EventSource then send by themselves. The token
// comes from the login link's fragment (#token=..., never sent to the server) or the prompt.

function tokenFromFragment() {
  const hash = window.location.hash || "";
  if (!hash.startsWith("#token=")) return null;
  let token;
  try { token = decodeURIComponent(hash.slice("#token=".length)); } catch (_) { token = hash.slice("#token=".length); }
  // Out of the address bar and the history entry at once.
  history.replaceState(null, "", window.location.pathname + window.location.search);
  return token;
}

async function login(token) {
  const response = await fetch("/api/session", {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ token }),
  });
  return response.ok;
}

function askForToken(message) {
  document.getElementById("token-error").textContent = message || "";
  document.getElementById("token-prompt").hidden = false;
  document.getElementById("token-input").focus();
}

async function api(path, options = {}) {
  const headers = Object.assign({}, options.headers || {});
  if (options.body) headers["Content-Type"] = "application/json";
  const response = await fetch(path, Object.assign({}, options, { headers }));
  if (response.status === 401) {
    askForToken();
    throw new Error("token required");
  }
  const body = await response.json().catch(() => null);
  if (!response.ok) {
    const error = new Error((body && body.error) || response.statusText);
    error.status = response.status;
    throw error;
  }
  return body;
}

// ---- helpers -----------------------------------------------------------------------------

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "text") node.textContent = v;
    // Styles through the CSSOM: the Content-Security-Policy refuses inline style attributes.
    else if (k === "style") Object.assign(node.style, v);
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else if (v !== null && v !== undefined) node.setAttribute(k, v);
  }
  for (const c of children) node.append(c);
  return node;
}

function svg(tag, attrs = {}, text) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  if (text !== undefined) node.textContent = text;
  return node;
}

function short(value, n = 80) {
  const s = typeof value === "string" ? value : JSON.stringify(value);
  return s && s.length > n ? s.slice(0, n) + "…" : s || "";
}

function timeOf(rfc3339) {
  return rfc3339 ? rfc3339.replace(/^.*T/, "").replace(/Z$/, "") : "";
}

// ---- tabs --------------------------------------------------------------------------------

function showTab(tab) {
  state.tab = tab;
  for (const b of document.querySelectorAll("#tabs button")) b.classList.toggle("active", b.dataset.tab === tab);
  for (const p of document.querySelectorAll(".panel")) p.hidden = p.id !== "panel-" + tab;
  refreshActive();
}

function refreshActive() {
  const refresh = { topology: refreshTopology, rates: refreshRates, dlq: refreshDlq, outbox: refreshOutbox, catalog: refreshCatalog }[state.tab];
  if (refresh) refresh().catch(showError);
}

function showError(e) {
  if (e && e.message !== "token required") console.warn(e);
}

// ---- header: info & health ---------------------------------------------------------------

async function refreshHeader() {
  const info = await api("/api/info");
  document.getElementById("info").textContent = `${info.transport} · ${info.broker} · exchange ${info.exchange} · v${info.version}`;
}

async function refreshHealth() {
  const r = await fetch("/health/ready");
  const report = await r.json();
  const badge = document.getElementById("health");
  badge.className = "badge " + report.status;
  badge.textContent = "ready: " + report.status;
  badge.title = report.components.map((c) => `${c.name}: ${c.status} (${c.detail})`).join("\n");
}

// ---- topology graph ----------------------------------------------------------------------

async function refreshTopology() {
  const topo = await api("/api/topology");
  const stats = await api("/api/queues");
  const byQueue = Object.fromEntries(stats.map((s) => [s.queue, s]));
  const queues = topo.queues;
  const services = [...new Set(queues.map((q) => q.service))];
  const rowH = 44, top = 20;
  const height = Math.max(queues.length, services.length, 1) * rowH + top * 2;
  const width = 1000, colX = [20, 330, 760], boxW = [220, 330, 220];
  const g = svg("svg", { width: "100%", viewBox: `0 0 ${width} ${height}`, "data-testid": "topology-svg" });
  const centerY = (i, n) => top + (i + 0.5) * ((height - top * 2) / Math.max(n, 1));

  const exY = height / 2;
  const ex = svg("g", { class: "node exchange", "data-testid": "topology-exchange" });
  ex.append(svg("rect", { x: colX[0], y: exY - 16, width: boxW[0], height: 32, rx: 6 }));
  ex.append(svg("text", { x: colX[0] + 10, y: exY + 5 }, topo.exchange + " (topic)"));

  queues.forEach((q, i) => {
    const y = centerY(i, queues.length);
    const s = byQueue[q.name] || {};
    g.append(svg("path", { class: "edge", d: `M${colX[0] + boxW[0]},${exY} C${colX[1] - 50},${exY} ${colX[0] + boxW[0] + 50},${y} ${colX[1]},${y}` }));
    const sy = centerY(services.indexOf(q.service), services.length);
    g.append(svg("path", { class: "edge", d: `M${colX[1] + boxW[1]},${y} C${colX[2] - 60},${y} ${colX[1] + boxW[1] + 60},${sy} ${colX[2]},${sy}` }));
    const node = svg("g", { class: "node queue", "data-testid": "topology-queue", "data-queue": q.name });
    node.append(svg("rect", { x: colX[1], y: y - 17, width: boxW[1], height: 34, rx: 4 }));
    node.append(svg("text", { x: colX[1] + 8, y: y - 3 }, short(q.name, 44)));
    node.append(svg("text", { x: colX[1] + 8, y: y + 12, fill: "#6b7385" }, short((q.bindings || []).join(", ") || "(bindings unknown)", 40)));
    const ready = s.ready == null ? "?" : s.ready;
    const dead = s.dead_letters == null ? "?" : s.dead_letters;
    node.append(svg("rect", { class: "depth", x: colX[1] + boxW[1] - 86, y: y - 13, width: 40, height: 16, rx: 8 }));
    node.append(svg("text", { class: "badge-text", x: colX[1] + boxW[1] - 80, y: y - 1, "data-testid": "queue-ready" }, String(ready)));
    node.append(svg("rect", { class: "dead", x: colX[1] + boxW[1] - 42, y: y - 13, width: 38, height: 16, rx: 8 }));
    node.append(svg("text", { class: "badge-text", x: colX[1] + boxW[1] - 36, y: y - 1, "data-testid": "queue-dead" }, String(dead)));
    const title = svg("title", {}, `${q.name}\nbindings: ${(q.bindings || []).join(", ")}\nready ${ready}, in flight ${s.in_flight ?? "?"}, dead letters ${dead}, consumers ${q.consumers ?? "?"}`);
    node.append(title);
    g.append(node);
  });
  services.forEach((name, i) => {
    const y = centerY(i, services.length);
    const node = svg("g", { class: "node service", "data-testid": "topology-service" });
    node.append(svg("rect", { x: colX[2], y: y - 16, width: boxW[2], height: 32, rx: 16 }));
    node.append(svg("text", { x: colX[2] + 12, y: y + 5 }, short(name, 28)));
    g.append(node);
  });
  g.append(ex);
  const holder = document.getElementById("topology-graph");
  holder.replaceChildren(queues.length ? g : el("p", { class: "hint", text: "No queues yet: start some consumers." }));
}

// ---- live events -------------------------------------------------------------------------

function connectStream() {
  if (state.source) state.source.close();
  const params = new URLSearchParams();
  const type = document.getElementById("filter-type").value.trim();
  const corr = document.getElementById("filter-correlation").value.trim();
  if (type) params.set("type", type);
  if (corr) params.set("correlation_id", corr);
  state.events = [];
  renderEvents();
  const status = document.getElementById("stream-status");
  status.className = "badge";
  status.textContent = "connecting";
  const source = new EventSource("/api/stream?" + params.toString());
  source.onopen = () => { status.className = "badge connected"; status.textContent = "live"; };
  source.onerror = () => { status.className = "badge disconnected"; status.textContent = "reconnecting"; };
  source.addEventListener("message", (m) => {
    const event = JSON.parse(m.data);
    state.events.unshift(event);
    if (state.events.length > MAX_EVENTS) state.events.length = MAX_EVENTS;
    state.eventCount += 1;
    renderEvents();
  });
  state.source = source;
}

function renderEvents() {
  document.getElementById("event-count").textContent = String(state.eventCount);
  const rows = state.events.map((e) => {
    const corr = e.correlation_id || e.id;
    return el("tr", { "data-testid": "event-row", "data-id": e.id, "data-type": e.type },
      el("td", { text: timeOf(e.time) }),
      el("td", { text: e.type }),
      el("td", { text: e.routing_key }),
      el("td", { text: e.source }),
      el("td", {}, el("a", { class: "corr", "data-testid": "corr-link", title: "follow this flow", text: short(corr, 40), onclick: () => followFlow(corr) })),
      el("td", { text: String(e.attempt) }),
      el("td", { class: "data", title: JSON.stringify(e.data), text: short(e.data, 120) }));
  });
  document.getElementById("event-list").replaceChildren(...rows);
}

function followFlow(correlationId) {
  document.getElementById("filter-correlation").value = correlationId;
  connectStream();
}

// ---- rates & depths ----------------------------------------------------------------------

function lineChart(holder, series, unit) {
  const width = 960, height = 200, left = 50, right = 10, topPad = 10, bottom = 20;
  const all = series.flatMap((s) => s.values.filter((v) => v != null));
  const max = Math.max(1, ...all);
  const n = Math.max(2, ...series.map((s) => s.values.length));
  const x = (i) => left + (i * (width - left - right)) / (n - 1);
  const y = (v) => topPad + (1 - v / max) * (height - topPad - bottom);
  const g = svg("svg", { width: "100%", viewBox: `0 0 ${width} ${height}` });
  g.append(svg("line", { class: "axis", x1: left, y1: y(0), x2: width - right, y2: y(0) }));
  g.append(svg("line", { class: "axis", x1: left, y1: topPad, x2: left, y2: y(0) }));
  g.append(svg("text", { x: 4, y: topPad + 10 }, `${Math.round(max * 10) / 10}`));
  g.append(svg("text", { x: 4, y: y(0) }, "0"));
  g.append(svg("text", { x: left, y: height - 4 }, `last ${n} s (${unit})`));
  const legend = el("div", { class: "legend" });
  series.forEach((s, i) => {
    const color = COLORS[i % COLORS.length];
    const pts = s.values.map((v, j) => (v == null ? null : `${x(j + n - s.values.length)},${y(v)}`)).filter(Boolean);
    if (pts.length) g.append(svg("polyline", { points: pts.join(" "), fill: "none", stroke: color, "stroke-width": 2 }));
    const last = s.values[s.values.length - 1];
    legend.append(el("span", {}, el("i", { style: { background: color } }), `${s.name}: ${last == null ? "?" : Math.round(last * 10) / 10}`));
  });
  holder.replaceChildren(g, legend);
}

async function refreshRates() {
  const history = await api("/api/stats/history");
  const points = history.points;
  const types = [...new Set(points.flatMap((p) => Object.keys(p.by_type)))].sort();
  const rates = [{ name: "all", values: points.map((p) => p.events_per_sec) }]
    .concat(types.map((t) => ({ name: t, values: points.map((p) => p.by_type[t] || 0) })));
  lineChart(document.getElementById("chart-rates"), rates, "events/s");
  const queues = [...new Set(points.flatMap((p) => Object.keys(p.queues)))].sort();
  const depth = (field) => queues.map((q) => ({ name: q, values: points.map((p) => (p.queues[q] ? p.queues[q][field] : null)) }));
  lineChart(document.getElementById("chart-depths"), depth("ready"), "messages");
  lineChart(document.getElementById("chart-dead"), depth("dead_letters"), "messages");
}

// ---- dead letters ------------------------------------------------------------------------

async function refreshDlq() {
  const queues = await api("/api/dlq");
  const rows = queues.map((q) => el("tr", {
    class: "clickable" + (q.queue === state.dlqQueue ? " selected" : ""),
    "data-testid": "dlq-queue", "data-queue": q.queue,
    onclick: () => { state.dlqQueue = q.queue; refreshDlq().catch(showError); },
  }, el("td", { text: q.queue }), el("td", { "data-testid": "dlq-count", text: String(q.dead_letters) })));
  document.getElementById("dlq-queues").replaceChildren(...rows);
  const queue = state.dlqQueue;
  document.getElementById("dlq-title").textContent = queue ? `Dead letters of ${queue}` : "Pick a queue";
  document.getElementById("dlq-replay-all").disabled = !queue;
  document.getElementById("dlq-purge-all").disabled = !queue;
  if (!queue) {
    document.getElementById("dlq-messages").replaceChildren();
    return;
  }
  const letters = await api(`/api/dlq/${encodeURIComponent(queue)}?limit=100`);
  const msgs = letters.map((d) => el("tr", { "data-testid": "dlq-row", "data-id": d.id },
    el("td", { class: "nowrap" },
      el("button", { "data-testid": "replay", "data-id": d.id, onclick: () => dlqAction("replay", { ids: [d.id] }), text: "Replay" }),
      " ",
      el("button", { "data-testid": "purge", "data-id": d.id, class: "danger", onclick: () => dlqAction("purge", { ids: [d.id] }), text: "Purge" })),
    el("td", { class: "id", title: d.id, text: d.id.slice(-12) }),
    el("td", { text: d.type }),
    el("td", { text: String(d.attempt) }),
    el("td", { class: "error", "data-testid": "dlq-error", text: `${d.error_kind ? "[" + d.error_kind + "] " : ""}${d.error}` }),
    el("td", { class: "nowrap", text: timeOf(d.last_failure) }),
    el("td", {}, d.correlation_id ? el("a", { class: "corr", text: short(d.correlation_id, 24), onclick: () => { showTab("events"); followFlow(d.correlation_id); } }) : ""),
    el("td", { class: "data", title: JSON.stringify(d.data), text: short(d.data, 80) })));
  document.getElementById("dlq-messages").replaceChildren(...msgs);
}

// What to ask before an action that cannot be undone, or that touches many messages at once;
// null when none is needed (replaying one message).
function confirmation(action, selection, queue) {
  if (action === "purge" && selection.all) return `Delete every dead letter of ${queue}? This cannot be undone.`;
  if (action === "purge") return `Delete dead letter ${selection.ids.join(", ")} of ${queue}? This cannot be undone.`;
  if (selection.all) return `Replay every dead letter of ${queue} to its queue?`;
  return null;
}

async function dlqAction(action, selection) {
  const queue = state.dlqQueue;
  if (!queue) return;
  const question = confirmation(action, selection, queue);
  const message = document.getElementById("dlq-message");
  if (question && !window.confirm(question)) {
    message.textContent = `${action} cancelled`;
    return;
  }
  try {
    const r = await api(`/api/dlq/${encodeURIComponent(queue)}/${action}`, { method: "POST", body: JSON.stringify(selection) });
    message.textContent = action === "replay" ? `replayed ${r.replayed}` : `purged ${r.purged}`;
  } catch (e) {
    message.textContent = `${action} failed: ${e.message}`;
  }
  await refreshDlq().catch(showError);
}

// ---- outbox ------------------------------------------------------------------------------

async function refreshOutbox() {
  const holder = document.getElementById("outbox");
  let status;
  try {
    status = await api("/api/outbox");
  } catch (e) {
    if (e.status === 404) { holder.replaceChildren(el("p", { class: "hint", text: e.message })); return; }
    throw e;
  }
  const counts = Object.entries(status.counts).map(([k, v]) => el("tr", {}, el("td", { text: k }), el("td", { "data-testid": "outbox-" + k, text: String(v) })));
  const failures = (status.failures || []).map((f) => el("tr", {}, el("td", { text: f.event_id }), el("td", { text: f.routing_key }), el("td", { text: String(f.attempts) }), el("td", { class: "error", text: f.error })));
  const health = status.health || {};
  holder.replaceChildren(
    el("p", {}, el("span", { class: "badge " + (health.status || ""), text: health.status || "?" }), " ", health.detail || ""),
    el("p", { text: `oldest pending: ${status.oldest_pending_age_secs == null ? "none" : status.oldest_pending_age_secs.toFixed(1) + " s"}` }),
    el("table", { class: "grid" }, el("thead", {}, el("tr", {}, el("th", { text: "status" }), el("th", { text: "rows" }))), el("tbody", {}, ...counts)),
    el("h2", { text: "Most retried failures" }),
    el("table", { class: "grid" }, el("thead", {}, el("tr", {}, el("th", { text: "event" }), el("th", { text: "routing key" }), el("th", { text: "attempts" }), el("th", { text: "error" }))), el("tbody", {}, ...failures)));
}

// ---- catalog -----------------------------------------------------------------------------

async function refreshCatalog() {
  const catalog = await api("/api/catalog");
  const holder = document.getElementById("catalog");
  if (!catalog.events.length) {
    holder.replaceChildren(el("p", { class: "hint", text: "No catalog: start herald serve with --catalog FILE (herald docs --format json)." }));
    return;
  }
  holder.replaceChildren(...catalog.events.map((e) => {
    const consumers = (e.consumers || []).map((c) => `${c.service} (${c.queue})`).join(", ") || "none declared";
    return el("div", { class: "card", "data-testid": "catalog-event", "data-event": e.name },
      el("h2", { text: `${e.name} v${e.version}` }),
      el("p", { text: e.description || "" }),
      el("p", { text: `routing key ${e.routing_key} · type ${e.type_name || "?"}` }),
      el("p", { text: `${(e.publishers || []).join(", ") || "?"} → ${consumers}` }),
      el("details", {}, el("summary", { text: "schema" }), el("pre", { text: e.schema ? JSON.stringify(e.schema, null, 2) : "unknown" })),
      el("details", {}, el("summary", { text: "example" }), el("pre", { text: e.example ? JSON.stringify(e.example, null, 2) : "none" })));
  }));
}

// ---- start -------------------------------------------------------------------------------

function afterLogin() {
  document.getElementById("token-prompt").hidden = true;
  refreshHeader().catch(showError);
  connectStream();
  refreshActive();
}

async function start() {
  for (const b of document.querySelectorAll("#tabs button")) b.addEventListener("click", () => showTab(b.dataset.tab));
  document.getElementById("token-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const input = document.getElementById("token-input");
    const ok = await login(input.value).catch(() => false);
    input.value = "";
    if (ok) afterLogin();
    else askForToken("That token was refused.");
  });
  let debounce = null;
  for (const id of ["filter-type", "filter-correlation"]) {
    document.getElementById(id).addEventListener("input", () => { clearTimeout(debounce); debounce = setTimeout(connectStream, 300); });
  }
  document.getElementById("filter-clear").addEventListener("click", () => {
    document.getElementById("filter-type").value = "";
    document.getElementById("filter-correlation").value = "";
    connectStream();
  });
  document.getElementById("dlq-replay-all").addEventListener("click", () => dlqAction("replay", { all: true }));
  document.getElementById("dlq-purge-all").addEventListener("click", () => dlqAction("purge", { all: true }));
  const fromLink = tokenFromFragment();
  if (fromLink && !(await login(fromLink).catch(() => false))) askForToken("The token in the link was refused.");
  const initial = (window.location.hash || "").replace("#", "");
  refreshHeader().catch(showError);
  refreshHealth().catch(showError);
  connectStream();
  showTab(["topology", "events", "rates", "dlq", "outbox", "catalog"].includes(initial) ? initial : "topology");
  setInterval(() => { if (state.tab === "rates") refreshRates().catch(showError); }, 1000);
  setInterval(() => { if (["topology", "dlq", "outbox"].includes(state.tab)) refreshActive(); refreshHealth().catch(showError); }, 2000);
}

start();
