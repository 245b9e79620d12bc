// pairlb status page: polls /api/v1/status every 2 s and renders every virtual service with its
// real servers; the buttons POST to the admin API. With a token file configured, the API answers
// 401 until the page has the token, which it asks for once and keeps in sessionStorage.
"use strict";

const TOKEN_KEY = "pairlb-admin-token";
const REFRESH_MS = 2000;

function token() { return sessionStorage.getItem(TOKEN_KEY) || ""; }

async function api(method, path) {
  const headers = {};
  const sent = token();
  if (sent) headers["Authorization"] = "Bearer " + sent;
  const resp = await fetch(path, { method, headers, cache: "no-store" });
  if (resp.status === 401) {
    // Ask again only if the token has not changed while the request was out.
    if (token() === sent) askToken();
    throw new Error(sent ? "the admin API refused the token" : "the admin API wants a token");
  }
  const body = await resp.json().catch(() => ({}));
  if (!resp.ok) {
    const detail = body.errors ? ": " + body.errors.join("; ") : "";
    throw new Error((body.error || resp.statusText) + detail);
  }
  return body;
}

function askToken() {
  sessionStorage.removeItem(TOKEN_KEY);
  document.getElementById("token-form").hidden = false;
  document.getElementById("forget-token").hidden = true;
}

function showError(msg) {
  const e = document.getElementById("error");
  e.textContent = msg || "";
  e.hidden = !msg;
}

function el(tag, attrs, ...children) {
  const n = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") n.className = v;
    else if (k.startsWith("data-")) n.setAttribute(k, v);
    else n[k] = v;
  }
  for (const c of children) {
    if (c == null) continue;
    n.append(c instanceof Node ? c : String(c));
  }
  return n;
}

function bytes(n) {
  const units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return (i === 0 ? n : n.toFixed(1)) + " " + units[i];
}

function ago(iso) {
  if (!iso) return "";
  const s = Math.max(0, Math.round((Date.now() - Date.parse(iso)) / 1000));
  if (s < 60) return s + " s ago";
  if (s < 3600) return Math.round(s / 60) + " min ago";
  return Math.round(s / 3600) + " h ago";
}

// serverClass is the colour of a real server: its administrative state first, then health.
function serverClass(rs) {
  if (rs.state === "disabled") return "disabled";
  if (rs.state === "draining") return "draining";
  return rs.up ? "available" : "down";
}

// stateText is a real server's state as shown: a draining server with nothing open is
// "drained" (safe to stop), apart from one still draining its connections.
function stateText(rs) { return rs.drained ? "drained" : rs.state; }

// ipOf is the IP of a real server's key as the file writes it: "10.11.1.11",
// "10.11.1.12:4443", "2001:db8::1" or "[2001:db8::1]:4443".
function ipOf(key) {
  if (key.startsWith("[")) return key.slice(1, key.indexOf("]"));
  const parts = key.split(":");
  return parts.length === 2 ? parts[0] : key;
}

function fact(label, value, attrs) { return el("span", attrs || {}, label + " ", el("b", {}, value)); }

// placementFacts say what places a new client: the scheduler, or, for a persistent service that
// places by the consistent hash, "hash" with the scheduler named as unused; then the
// persistence table's fill.
function placementFacts(vs) {
  if (!vs.scheduler) return [];
  const placement = vs.placement || vs.scheduler;
  let text = placement;
  if (placement !== vs.scheduler) text += " (scheduler " + vs.scheduler + " unused)";
  const facts = [fact("placement", text, { class: "placement", "data-placement": placement })];
  const p = vs.persistence;
  if (p) {
    let t = p.type + ", " + p.entries + " / " + p.max_entries + " clients";
    if (p.evictions_total) t += ", " + p.evictions_total + " evicted";
    facts.push(fact("persistence", t, { class: "persistence" }));
  }
  return facts;
}

function renderServer(vs, rs, now) {
  const cls = serverClass(rs);
  const h = rs.health;
  let healthCell = rs.up ? "up" : "down";
  if (h && h.check === "none") {
    healthCell = "up (no check)";
  } else if (h) {
    healthCell = el("span", {}, (rs.up ? "up" : "down") + " (" + h.check + ")",
      h.last_check ? el("br") : null,
      h.last_check ? el("small", {}, "checked " + ago(h.last_check) + ", " + (h.last_duration_seconds * 1000).toFixed(1) + " ms") : null,
      h.last_error ? el("div", { class: "err" }, h.last_error) : null);
  }
  const actions = el("td", { class: "actions" });
  for (const [action, label, state] of [["drain", "Drain", "draining"], ["disable", "Disable", "disabled"], ["enable", "Enable", "enabled"]]) {
    actions.append(el("button", {
      type: "button", disabled: rs.state === state, title: label + " " + rs.address,
      "data-vs": vs.name, "data-rs": rs.address, "data-action": action,
      onclick: () => setState(vs.name, rs.address, action),
    }, label));
  }
  const drained = rs.drained ? " drained" : "";
  return el("tr", { class: "rs " + cls + drained, "data-vs": vs.name, "data-rs": rs.address, "data-state": rs.state },
    el("td", { class: "addr" }, el("i", { class: "dot " + cls + drained }), rs.address),
    el("td", { class: "state", title: rs.drained ? "no connection left: safe to stop" : "" }, stateText(rs)),
    el("td", {}, healthCell),
    el("td", { class: "since", title: rs.since ? isoTime(rs.since) : "" }, sinceText(rs, now)),
    el("td", { class: "num" }, rs.weight),
    el("td", { class: "num" }, rs.active_connections),
    el("td", { class: "num" }, rs.connections_total),
    actions);
}

function renderService(vs, now) {
  const ports = el("span", {}, ...vs.ports.map(p => el("span", { class: "port" }, p.port)));
  const facts = el("div", { class: "facts" },
    el("span", {}, ports),
    fact("gateway", vs.default_gateway || "main table"),
    ...placementFacts(vs),
    fact("active", vs.active_connections),
    vs.udp_sessions ? fact("UDP sessions", vs.udp_sessions) : null,
    vs.udp_session_moves_total ? fact("UDP sessions moved", vs.udp_session_moves_total) : null,
    fact("connections", vs.connections_total),
    fact("in", bytes(vs.bytes_client_to_server)),
    fact("out", bytes(vs.bytes_server_to_client)));
  const drops = (vs.dropped || []).filter(d => d.count > 0);
  if (drops.length) facts.append(fact("dropped", drops.map(d => d.reason + " " + d.count).join(", ")));

  facts.append(...rateFacts(vs));
  const badge = vs.state ? el("span", { class: "badge svc-state " + (SERVICE_BADGE[vs.state] || ""), "data-state": vs.state,
    title: vs.redirect ? "" : serviceStateTitle(vs) }, vs.state) : null;
  const card = el("section", { class: "vs", "data-vs": vs.name, "data-state": vs.state || "" },
    el("h2", {}, vs.name, badge, el("span", { class: "vip" }, vs.vip)), facts);
  if (vs.redirect) {
    card.append(el("div", { class: "redirect" }, "HTTP redirect to " + vs.redirect));
    return card;
  }
  const table = el("table", {},
    el("thead", {}, el("tr", {},
      el("th", {}, "real server"), el("th", {}, "state"), el("th", {}, "health"), el("th", {}, "since"),
      el("th", { class: "num" }, "weight"), el("th", { class: "num" }, "active"),
      el("th", { class: "num" }, "total"), el("th", {}, ""))),
    el("tbody", {}, ...vs.real_servers.map(rs => renderServer(vs, rs, now))));
  card.append(table);
  return card;
}

// renderAddresses is the maintenance panel: each real server's IP with the services it is in,
// and buttons that drain, disable or enable it in all of them at once (POST
// /api/v1/real-servers/{address}/{action}), as a Front End is taken out for patching.
function renderAddresses(st) {
  const byIP = new Map();
  for (const vs of st.virtual_services) {
    for (const rs of vs.real_servers || []) {
      const ip = ipOf(rs.address);
      if (!byIP.has(ip)) byIP.set(ip, []);
      byIP.get(ip).push({ vs: vs.name, rs });
    }
  }
  const rows = [];
  for (const [ip, list] of byIP) {
    const states = new Map();
    let active = 0;
    for (const { rs } of list) {
      const s = stateText(rs);
      states.set(s, (states.get(s) || 0) + 1);
      active += rs.active_connections;
    }
    const summary = [...states].map(([s, n]) => states.size === 1 ? s : s + " in " + n).join(", ");
    const services = [...new Set(list.map(x => x.vs))];
    const actions = el("td", { class: "actions" });
    for (const [action, label, state] of [["drain", "Drain everywhere", "draining"], ["disable", "Disable everywhere", "disabled"], ["enable", "Enable everywhere", "enabled"]]) {
      actions.append(el("button", {
        type: "button", disabled: list.every(x => x.rs.state === state),
        title: label.split(" ")[0] + " " + ip + " in " + services.join(", "),
        "data-addr": ip, "data-action": action,
        onclick: () => setAddressState(ip, action),
      }, label));
    }
    rows.push(el("tr", { class: "addr-row", "data-addr": ip, "data-states": summary },
      el("td", { class: "addr" }, ip),
      el("td", {}, services.join(", "), el("small", {}, " (" + list.length + (list.length === 1 ? " real server)" : " real servers)"))),
      el("td", { class: "state" }, summary),
      el("td", { class: "num" }, active),
      actions));
  }
  document.getElementById("addresses").hidden = rows.length === 0;
  document.getElementById("address-table").replaceChildren(
    el("thead", {}, el("tr", {},
      el("th", {}, "address"), el("th", {}, "virtual services"), el("th", {}, "state"),
      el("th", { class: "num" }, "active"), el("th", {}, ""))),
    el("tbody", {}, ...rows));
}

function showNotice(lines) {
  const n = document.getElementById("notice");
  n.replaceChildren(...lines.map(l => el("div", {}, l)));
  n.hidden = lines.length === 0;
}

// isoTime writes a time of the API as the page shows times: 24-hour ISO, local.
function isoTime(iso) {
  const d = new Date(iso);
  if (!iso || isNaN(d)) return "";
  const p = n => String(n).padStart(2, "0");
  return d.getFullYear() + "-" + p(d.getMonth() + 1) + "-" + p(d.getDate()) + " " +
    p(d.getHours()) + ":" + p(d.getMinutes()) + ":" + p(d.getSeconds());
}

function shortHash(h) { return (h || "").slice(0, 12); }

// configState is what the banner says of the configuration in force against the file an
// operator sees: "failed" (the last reload was rejected), "differs" (the file changed since it
// was loaded), "unknown" (the file cannot be read) or "ok".
function configState(st) {
  const r = st.last_reload, d = st.config_on_disk;
  if (r && r.result === "failed") return "failed";
  if (d && d.state === "differs") return "differs";
  if (d && d.state === "unknown") return "unknown";
  return "ok";
}

// renderConfig shows the banner, red while the running configuration is not the file on disk or
// the last reload failed (with its errors), and the last reload in the header.
function renderConfig(st) {
  const r = st.last_reload, d = st.config_on_disk;
  const state = configState(st);
  const parts = [];
  if (state === "failed") {
    const onDisk = d && d.state === "differs" && d.hash === r.rejected_hash ? " (the file on disk is the one rejected)" : "";
    parts.push(el("div", { class: "title" }, "Last reload failed at " + isoTime(r.time) + ": " + r.file + " rejected" + onDisk +
      "; the running configuration " + shortHash(r.config_hash) + " stays."));
    parts.push(el("ul", { class: "errors" }, ...(r.errors || []).map(e => el("li", {}, e))));
  }
  if (d && d.state === "differs" && !(state === "failed" && d.hash === r.rejected_hash)) {
    parts.push(el("div", { class: "title differs" }, "Running file differs from disk: " + st.config_file + " is " + shortHash(d.hash) +
      " now, the running configuration " + shortHash(st.config_hash) + ". ", el("code", {}, "pairlb reload"), " applies it."));
  }
  if (d && d.state === "unknown") {
    parts.push(el("div", { class: "title" }, "The file on disk cannot be compared with the running configuration: " + d.error));
  }
  const banner = document.getElementById("config-banner");
  banner.className = state === "unknown" ? "warn" : "bad";
  banner.dataset.state = state;
  banner.replaceChildren(...parts);
  banner.hidden = parts.length === 0;

  const last = document.getElementById("last-reload");
  last.textContent = "";
  if (r) {
    const n = (r.changes || []).length;
    last.textContent = (r.trigger === "start" ? "loaded at start " : "last reload ") + isoTime(r.time) +
      (r.result === "failed" ? " FAILED" : r.trigger === "start" ? "" : n ? " (" + n + (n === 1 ? " change)" : " changes)") : " (nothing changed)");
    last.title = (r.changes || []).map(c => c.text).join("\n");
  }
}

// --- Service state, since, rates (issue 15, item 2) ---

// SERVICE_BADGE is the colour of a service's state badge.
const SERVICE_BADGE = { up: "ok", degraded: "warn", down: "bad" };

// readyText is the header's word on the daemon, as `pairlb status` says it (admin.Status.ReadyText):
// "ready, 2 services down, 1 degraded", so that a ready daemon never reads as all well while a
// service refuses its clients; readyClass is its colour: red while not ready or a service is
// down, amber while one is degraded.
function readyText(st) {
  let text = st.ready ? "ready" : "not ready";
  const down = st.services_down || 0, degraded = st.services_degraded || 0;
  const plural = n => n === 1 ? "1 service" : n + " services";
  if (down && degraded) text += ", " + plural(down) + " down, " + degraded + " degraded";
  else if (down) text += ", " + plural(down) + " down";
  else if (degraded) text += ", " + plural(degraded) + " degraded";
  return text;
}
function readyClass(st) {
  if (!st.ready || st.services_down) return "bad";
  return st.services_degraded ? "warn" : "ok";
}

// serviceStateTitle says why a service is in its state.
function serviceStateTitle(vs) {
  const of = (vs.servers_available ? vs.servers_available : "none") + " of " + vs.servers_in_rotation +
    (vs.servers_in_rotation === 1 ? " real server" : " real servers") + " in rotation available";
  if (vs.servers_available) return of;
  if (vs.sorry_server) return of + ", the sorry server " + vs.sorry_server + " takes new clients";
  if (vs.unavailable_redirect) return of + ", new clients are redirected to " + vs.unavailable_redirect;
  return of + ", new clients are refused";
}

// shortDuration is a duration in ms to its two largest units: "45s", "12m5s", "2h13m", "3d4h".
function shortDuration(ms) {
  const s = Math.max(0, Math.floor(ms / 1000));
  if (s < 60) return s + "s";
  if (s < 3600) return Math.floor(s / 60) + "m" + (s % 60) + "s";
  if (s < 86400) return Math.floor(s / 3600) + "h" + Math.floor(s % 3600 / 60) + "m";
  return Math.floor(s / 86400) + "d" + Math.floor(s % 86400 / 3600) + "h";
}

// clockText is a time of the API in 24-hour ISO form, local: the time alone when it is on
// now's date (ms since the epoch), else the date too.
function clockText(iso, now) {
  const full = isoTime(iso);
  return full.slice(0, 10) === isoTime(new Date(now).toISOString()).slice(0, 10) ? full.slice(11) : full;
}

// sinceText is how long a real server has been in its condition: "down for 2h13m, since
// 09:14:02".
function sinceText(rs, now) {
  if (!rs.condition || !rs.since || rs.since.startsWith("0001-")) return "";
  return rs.condition.replace("_", " ") + " for " + shortDuration(now - Date.parse(rs.since)) + ", since " + clockText(rs.since, now);
}

// Rates are computed here, from the counters of successive status polls, rather than in the
// daemon: the daemon keeps no history for them (Prometheus computes rates from the same
// counters for graphs), and the page, which polls every 2 s anyway, keeps a minute of samples
// per service.
const RATE_WINDOW_MS = 60000;
const rateHistory = new Map(); // virtual service name -> samples, oldest first

// pushSample adds sample {t (ms), c (connections), i (bytes client to server), o (bytes server
// to client)} to samples and returns the samples that span the window: the oldest kept is the
// newest at or before the window's start. A counter that went back (the daemon restarted, the
// service was removed and added again) or a time that did not advance starts afresh.
function pushSample(samples, sample, windowMs) {
  const last = samples[samples.length - 1];
  if (last && (sample.t <= last.t || sample.c < last.c || sample.i < last.i || sample.o < last.o)) samples = [];
  samples = samples.concat([sample]);
  while (samples.length > 2 && samples[1].t <= sample.t - windowMs) samples = samples.slice(1);
  return samples;
}

// rates are the rates between the oldest and newest of samples: {seconds, connections (per
// second), c2s and s2c (bits per second)}, or null before the samples span a second (two polls
// a moment apart, as a click's refresh makes, say nothing worth showing).
function rates(samples) {
  if (samples.length < 2) return null;
  const a = samples[0], b = samples[samples.length - 1];
  const dt = (b.t - a.t) / 1000;
  if (dt < 1) return null;
  return { seconds: dt, connections: (b.c - a.c) / dt, c2s: (b.i - a.i) * 8 / dt, s2c: (b.o - a.o) * 8 / dt };
}

// bitRate writes bits per second in SI units, as link speeds are written.
function bitRate(bps) {
  const units = ["bit/s", "kbit/s", "Mbit/s", "Gbit/s", "Tbit/s"];
  let i = 0;
  while (bps >= 1000 && i < units.length - 1) { bps /= 1000; i++; }
  return (i === 0 ? Math.round(bps) : bps.toFixed(1)) + " " + units[i];
}

// recordRates adds st's counters to the history of each service and forgets removed services.
function recordRates(st) {
  const t = Date.parse(st.time) || Date.now();
  const names = new Set();
  for (const vs of st.virtual_services) {
    names.add(vs.name);
    rateHistory.set(vs.name, pushSample(rateHistory.get(vs.name) || [],
      { t, c: vs.connections_total, i: vs.bytes_client_to_server, o: vs.bytes_server_to_client }, RATE_WINDOW_MS));
  }
  for (const name of [...rateHistory.keys()]) if (!names.has(name)) rateHistory.delete(name);
}

// rateFacts are a service's rates over the last minute (or as much of it as the page has seen).
function rateFacts(vs) {
  const r = rates(rateHistory.get(vs.name) || []);
  if (!r) return [el("span", { class: "rates", "data-rates": "none" }, "rates: measuring…")];
  const over = r.seconds >= RATE_WINDOW_MS / 1000 - 1 ? "last minute" : "last " + Math.round(r.seconds) + " s";
  return [el("span", { class: "rates", title: "over the " + over + ", from the counters of successive polls" },
    over + ": ",
    el("b", { class: "rate-conn" }, r.connections.toFixed(1) + " connections/s"), " · client→server ",
    el("b", { class: "rate-c2s" }, bitRate(r.c2s)), " · server→client ",
    el("b", { class: "rate-s2c" }, bitRate(r.s2c)))];
}

function render(st) {
  const ready = document.getElementById("ready");
  ready.textContent = readyText(st);
  ready.className = "badge " + readyClass(st);
  recordRates(st);
  document.getElementById("meta").textContent =
    "version " + st.version + " · " + st.config_file + " · " + (st.config_hash || "").slice(0, 12);
  document.getElementById("updated").textContent = "updated " + isoTime(new Date().toISOString()).slice(11);
  renderAddresses(st);
  renderConfig(st);
  const now = Date.parse(st.time) || Date.now();
  document.getElementById("services").replaceChildren(...st.virtual_services.map(vs => renderService(vs, now)));
  document.body.dataset.loaded = "true";
}

async function refresh() {
  try {
    render(await api("GET", "/api/v1/status"));
    showError("");
  } catch (e) {
    showError(e.message);
  }
}

async function setState(vs, rs, action) {
  try {
    await api("POST", "/api/v1/virtual-services/" + encodeURIComponent(vs) + "/real-servers/" + encodeURIComponent(rs) + "/" + action);
    showError("");
  } catch (e) {
    showError(action + " " + rs + ": " + e.message);
  }
  refresh();
}

// setAddressState sets the state of an address in every virtual service that has it, and says
// which real servers changed.
async function setAddressState(ip, action) {
  try {
    const out = await api("POST", "/api/v1/real-servers/" + encodeURIComponent(ip) + "/" + action);
    showNotice(out.real_servers.map(r => r.virtual_service + " " + r.real_server + ": " + r.state +
      " (was " + r.was + ", active " + r.active_connections + ")"));
    showError("");
  } catch (e) {
    showNotice([]);
    showError(action + " " + ip + " everywhere: " + e.message);
  }
  refresh();
}

document.getElementById("token-form").addEventListener("submit", ev => {
  ev.preventDefault();
  sessionStorage.setItem(TOKEN_KEY, document.getElementById("token").value.trim());
  document.getElementById("token").value = "";
  document.getElementById("token-form").hidden = true;
  document.getElementById("forget-token").hidden = false;
  refresh();
});
document.getElementById("forget-token").addEventListener("click", askToken);
document.getElementById("forget-token").hidden = !token();

refresh();
setInterval(refresh, REFRESH_MS);
