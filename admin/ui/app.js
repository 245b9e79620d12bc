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

function renderServer(vs, rs) {
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
    el("td", { class: "num" }, rs.weight),
    el("td", { class: "num" }, rs.active_connections),
    el("td", { class: "num" }, rs.connections_total),
    actions);
}

function renderService(vs) {
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

  const card = el("section", { class: "vs", "data-vs": vs.name },
    el("h2", {}, vs.name, el("span", { class: "vip" }, vs.vip)), facts);
  if (vs.redirect) {
    card.append(el("div", { class: "redirect" }, "HTTP redirect to " + vs.redirect));
    return card;
  }
  const table = el("table", {},
    el("thead", {}, el("tr", {},
      el("th", {}, "real server"), el("th", {}, "state"), el("th", {}, "health"),
      el("th", { class: "num" }, "weight"), el("th", { class: "num" }, "active"),
      el("th", { class: "num" }, "total"), el("th", {}, ""))),
    el("tbody", {}, ...vs.real_servers.map(rs => renderServer(vs, rs))));
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

function render(st) {
  const ready = document.getElementById("ready");
  ready.textContent = st.ready ? "ready" : "not ready";
  ready.className = "badge " + (st.ready ? "ok" : "bad");
  document.getElementById("meta").textContent =
    "version " + st.version + " · " + st.config_file + " · " + (st.config_hash || "").slice(0, 12);
  document.getElementById("updated").textContent = "updated " + new Date().toLocaleTimeString();
  renderAddresses(st);
  renderConfig(st);
  document.getElementById("services").replaceChildren(...st.virtual_services.map(renderService));
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
