// The operator's live view: couriers on a map coloured by risk, the alert feed with each
// task's timeline, devices with their sync lag and release. Everything comes from the
// aggregator's API and its live stream, with a viewer token.
"use strict";

const state = {
  token: null,
  couriers: new Map(), // id -> {lat, lon, score, severity, task_id, time}
  alerts: new Map(), // id -> alert object
  lastSeq: 0,
  socket: null,
  dirty: true,
};
// For people and tests looking from the console.
window.fleet = state;

const $ = (id) => document.getElementById(id);

function tokenFromPage() {
  const m = location.hash.match(/token=([^&]+)/);
  if (m) {
    const t = decodeURIComponent(m[1]);
    localStorage.setItem("fleet-token", t);
    history.replaceState(null, "", location.pathname);
    return t;
  }
  return localStorage.getItem("fleet-token");
}

async function api(path) {
  const r = await fetch(path, { headers: { Authorization: `Bearer ${state.token}` } });
  if (!r.ok) throw new Error(`${path}: ${r.status} ${(await r.text()).slice(0, 200)}`);
  return r.json();
}

function text(tag, content, cls) {
  const e = document.createElement(tag);
  e.textContent = content ?? "";
  if (cls) e.className = cls;
  return e;
}

// --- map: Web Mercator, fitted to the couriers -------------------------------------------
function mercator(lat, lon) {
  const s = Math.sin((Math.max(-85, Math.min(85, lat)) * Math.PI) / 180);
  return [(lon + 180) / 360, 0.5 - Math.log((1 + s) / (1 - s)) / (4 * Math.PI)];
}

const COLOURS = { info: "#1e8e3e", warning: "#f29900", critical: "#d93025" };

function draw() {
  if (!state.dirty) return requestAnimationFrame(draw);
  state.dirty = false;
  const canvas = $("map");
  const ctx = canvas.getContext("2d");
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  const points = [...state.couriers.values()].map((c) => ({ c, p: mercator(c.lat, c.lon) }));
  $("courier-count").textContent = `${points.length} known`;
  if (points.length === 0) return requestAnimationFrame(draw);
  let [x0, y0, x1, y1] = [Infinity, Infinity, -Infinity, -Infinity];
  for (const { p } of points) {
    x0 = Math.min(x0, p[0]); x1 = Math.max(x1, p[0]);
    y0 = Math.min(y0, p[1]); y1 = Math.max(y1, p[1]);
  }
  const span = Math.max(x1 - x0, y1 - y0, 1e-6);
  const scale = (Math.min(canvas.width, canvas.height) - 40) / span;
  const ox = (canvas.width - (x1 - x0) * scale) / 2, oy = (canvas.height - (y1 - y0) * scale) / 2;
  // A 1 km scale bar at the map's latitude.
  const lat = points[0].c.lat;
  const kmPerUnit = 40075 * Math.cos((lat * Math.PI) / 180);
  const bar = scale / kmPerUnit;
  ctx.fillStyle = "#5f6673";
  ctx.fillRect(20, canvas.height - 20, bar, 3);
  ctx.fillText("1 km", 20, canvas.height - 26);
  for (const { c, p } of points) {
    c.x = ox + (p[0] - x0) * scale;
    c.y = oy + (p[1] - y0) * scale;
    ctx.beginPath();
    ctx.arc(c.x, c.y, c.severity === "critical" ? 6 : 4, 0, 2 * Math.PI);
    ctx.fillStyle = COLOURS[c.severity] || "#8a94a6";
    ctx.fill();
  }
  requestAnimationFrame(draw);
}

function moved(p) {
  const c = state.couriers.get(p.courier_id) || {};
  Object.assign(c, { lat: p.lat, lon: p.lon, task_id: p.task_id, time: p.time });
  if (p.score !== undefined && p.score !== null) c.score = p.score;
  if (p.severity) c.severity = p.severity;
  state.couriers.set(p.courier_id, c);
  state.dirty = true;
}

// --- alerts ---------------------------------------------------------------------------------
function showAlerts() {
  const list = $("alerts");
  list.replaceChildren();
  const alerts = [...state.alerts.values()].sort((a, b) => (a.opened < b.opened ? 1 : -1));
  let open = 0;
  for (const a of alerts.slice(0, 200)) {
    if (a.state === "open") open += 1;
    const li = document.createElement("li");
    li.className = `alert ${a.severity} ${a.state}`;
    li.dataset.task = a.task_id || "";
    li.append(
      text("strong", `${a.severity.toUpperCase()} ${a.task_id || a.courier_id}`),
      text("span", ` peak ${a.peak_score.toFixed(2)} · ${a.state}${a.resolution ? ` (${a.resolution})` : ""}`),
      text("div", `${a.courier_id} · opened ${a.opened}${a.escalated ? ` · escalated ${a.escalated}` : ""} · ${a.release || a.modules.policy}`, "meta"),
      text("div", a.top_factors.map((f) => `${f.feature} ${f.contribution >= 0 ? "+" : ""}${f.contribution.toFixed(2)}`).join(", "), "meta"),
    );
    li.onclick = () => showTask(a.task_id);
    list.append(li);
  }
  $("alert-count").textContent = `${open} open of ${state.alerts.size}`;
}

function alertStep(data) {
  const a = data.alert;
  state.alerts.set(a.id, a);
  const c = state.couriers.get(a.courier_id);
  if (c) {
    c.severity = a.state === "open" ? a.severity : c.severity === "critical" || c.severity === "warning" ? "info" : c.severity;
    state.dirty = true;
  }
  showAlerts();
}

async function showTask(task) {
  if (!task) return;
  const t = await api(`/api/v1/tasks/${encodeURIComponent(task)}?limit=500`);
  $("task-id").textContent = task;
  const body = $("timeline").querySelector("tbody");
  body.replaceChildren();
  for (const item of t.items) {
    const d = item.data;
    const tr = document.createElement("tr");
    if (item.kind === "event") {
      tr.append(text("td", d.event_time), text("td", d.event_type), text("td", ""), text("td", ""), text("td", ""));
    } else {
      tr.append(
        text("td", d.event_time),
        text("td", d.alert_step ? `decision: alert ${d.alert_step}` : "decision"),
        text("td", d.score.toFixed(2)),
        text("td", d.top_factors.map((f) => `${f.feature} ${f.contribution >= 0 ? "+" : ""}${f.contribution.toFixed(2)}`).join(", ")),
        text("td", d.release || d.modules.policy),
      );
    }
    body.append(tr);
  }
  $("task-panel").hidden = false;
}

// --- devices and stats ------------------------------------------------------------------------
async function refresh() {
  try {
    const s = await api("/api/v1/stats");
    $("stats").textContent = `${s.events} events · ${s.decisions} decisions · ${s.devices} devices`;
    const d = await api("/api/v1/devices?limit=10000");
    const body = $("devices").querySelector("tbody");
    body.replaceChildren();
    // The devices furthest behind first.
    const devices = d.devices.sort((a, b) => b.lag_ms - a.lag_ms || b.unsynced - a.unsynced);
    $("device-count").textContent = devices.length > 30 ? `30 furthest behind of ${devices.length}` : `${devices.length}`;
    for (const dev of devices.slice(0, 30)) {
      const tr = document.createElement("tr");
      tr.append(
        text("td", dev.device),
        text("td", `${(dev.lag_ms / 1000).toFixed(1)} s`),
        text("td", dev.unsynced),
        text("td", dev.release?.active_label || ""),
        text("td", dev.last_seen),
      );
      body.append(tr);
    }
  } catch (e) {
    console.warn(e);
  }
}

// --- drift ----------------------------------------------------------------------------------
async function showDrift() {
  try {
    const d = await api("/api/v1/drift");
    const body = $("drift").querySelector("tbody");
    body.replaceChildren();
    const raised = d.models.filter((m) => m.alert).map((m) => m.model);
    const few = d.models.filter((m) => m.decisions < d.min_decisions).map((m) => `${m.model}: ${m.decisions} decisions, too few to judge`);
    $("drift-summary").textContent = raised.length ? `drift alert: ${raised.join(", ")}` : [`${d.models.length} model(s), no alert`, ...few].join("; ");
    $("drift-summary").className = raised.length ? "critical" : "";
    for (const m of d.models) {
      const judged = m.decisions >= d.min_decisions;
      // The score first, then the features by PSI, highest first.
      const rows = [m.score, ...m.features.slice().sort((a, b) => (b.psi ?? 0) - (a.psi ?? 0))];
      for (const f of rows) {
        const tr = document.createElement("tr");
        tr.className = `drift ${f.seasonal || !judged ? "muted" : f.band || ""}`;
        tr.append(
          text("td", m.model),
          text("td", f.seasonal ? `${f.name} (calendar)` : f.name),
          text("td", f.psi == null ? "" : f.psi.toFixed(3)),
          text("td", f.band || `${m.decisions} decisions`),
        );
        body.append(tr);
      }
    }
  } catch (e) {
    console.warn(e);
  }
}

// --- the live stream ------------------------------------------------------------------------
function connect() {
  const proto = location.protocol === "https:" ? "wss" : "ws";
  const since = state.lastSeq ? `&since=${state.lastSeq}` : "";
  const ws = new WebSocket(`${proto}://${location.host}/api/v1/stream?topics=alerts,positions,devices,drift&access_token=${encodeURIComponent(state.token)}${since}`);
  state.socket = ws;
  ws.onopen = () => { $("live").textContent = "live"; $("live").className = "on"; };
  ws.onclose = () => {
    $("live").textContent = "reconnecting"; $("live").className = "off";
    setTimeout(connect, 1000);
  };
  ws.onmessage = (m) => {
    const msg = JSON.parse(m.data);
    if (msg.kind === "lagged") console.warn(`missed ${msg.missed} live events`);
    if (msg.kind !== "events") return;
    for (const e of msg.events) {
      state.lastSeq = Math.max(state.lastSeq, e.seq);
      if (e.topic === "positions") moved(e.data);
      else if (e.topic === "alerts") alertStep(e.data);
      else if (e.topic === "devices") refresh();
      else if (e.topic === "drift") showDrift();
    }
  };
}

async function start() {
  $("login").hidden = true;
  const [couriers, alerts] = await Promise.all([
    api("/api/v1/couriers?bbox=-90,-180,90,180&limit=10000"),
    api("/api/v1/alerts?state=open&limit=1000"),
  ]);
  for (const c of couriers.couriers) moved(c);
  for (const a of alerts.alerts) state.alerts.set(a.id, a);
  showAlerts();
  connect();
  refresh();
  showDrift();
  setInterval(refresh, 5000);
  setInterval(showDrift, 30000);
  requestAnimationFrame(draw);
}

$("task-close").onclick = () => { $("task-panel").hidden = true; };
$("login").onsubmit = (e) => {
  e.preventDefault();
  state.token = $("token").value.trim();
  localStorage.setItem("fleet-token", state.token);
  start().catch((err) => alert(err.message));
};
state.token = tokenFromPage();
if (state.token) start().catch((err) => { $("login").hidden = false; console.error(err); });
