// The tooti gateway dashboard. Plain JS, no dependencies: it polls the gateway's own JSON APIs
// (the ones `tooti status` reads, plus /v1/admin/summary) and renders them. Every string that
// came from a peer is inserted with textContent, never as HTML.
"use strict";

const REFRESH_MS = 2000;
const HISTORY = 60; // points kept for the rate sparklines (2 min at 2 s)
const KEY_STORAGE = "tooti.adminKey";
const history = []; // {t, requests, errors, tokens}

function apiKey() {
  return sessionStorage.getItem(KEY_STORAGE) || "";
}

class AuthNeeded extends Error {}

async function getJSON(path) {
  const headers = {};
  const key = apiKey();
  if (key) headers["Authorization"] = "Bearer " + key;
  const r = await fetch(path, { headers, cache: "no-store" });
  if (r.status === 401 || r.status === 403) {
    let message = r.statusText;
    try { message = (await r.json()).error.message; } catch (e) { /* not JSON: keep the status text */ }
    throw new AuthNeeded(message);
  }
  if (!r.ok) throw new Error(path + ": HTTP " + r.status);
  return r.json();
}

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") node.className = v; else node.setAttribute(k, v);
  }
  for (const c of children) {
    if (c === null || c === undefined) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}

function setText(id, text) {
  document.getElementById(id).textContent = text;
}

const SVG = "http://www.w3.org/2000/svg";

function sparkline(svg, values) {
  while (svg.firstChild) svg.firstChild.remove();
  if (values.length < 2) return;
  const w = 120, h = 30, max = Math.max(...values, 1e-9);
  const pts = values.map((v, i) => [(i / (values.length - 1)) * w, h - 1 - (v / max) * (h - 2)]);
  const line = pts.map((p) => p[0].toFixed(1) + "," + p[1].toFixed(1)).join(" ");
  const area = document.createElementNS(SVG, "polygon");
  area.setAttribute("points", "0," + h + " " + line + " " + w + "," + h);
  const poly = document.createElementNS(SVG, "polyline");
  poly.setAttribute("points", line);
  svg.append(area, poly);
}

function spark(values) {
  const svg = document.createElementNS(SVG, "svg");
  svg.setAttribute("class", "spark");
  svg.setAttribute("viewBox", "0 0 120 30");
  svg.setAttribute("preserveAspectRatio", "none");
  sparkline(svg, values);
  return svg;
}

function fmt(n, digits) {
  if (n === null || n === undefined || Number.isNaN(n)) return "–";
  return Number(n).toLocaleString(undefined, { maximumFractionDigits: digits, minimumFractionDigits: 0 });
}

function ago(seconds) {
  if (seconds < 60) return fmt(seconds, 1) + " s ago";
  if (seconds < 3600) return fmt(seconds / 60, 0) + " min ago";
  return fmt(seconds / 3600, 1) + " h ago";
}

function nodeState(n) {
  if (!n.live) return "stale";
  return n.healthy ? "live" : "unhealthy";
}

function renderNodes(nodes, queued) {
  const body = document.getElementById("nodes-body");
  const rows = nodes.slice().sort((a, b) => (a.namespace + a.name).localeCompare(b.namespace + b.name));
  const out = rows.map((n) => {
    const load = n.capacity ? n.in_flight / n.capacity : 0;
    const fill = el("i");
    fill.style.width = Math.min(100, Math.round(load * 100)) + "%"; // CSSOM: allowed by the CSP
    const bar = el("span", { class: "bar" + (load >= 1 ? " full" : load >= 0.75 ? " hot" : "") }, fill);
    const state = nodeState(n);
    return el("tr", { "data-peer": n.peer_id, "data-state": state },
      el("td", {}, n.name || "(unnamed)", el("span", { class: "sub" }, n.peer_id.slice(0, 8) + "…" + n.peer_id.slice(-6))),
      el("td", {}, n.namespace || el("span", { class: "muted" }, "public")),
      el("td", {}, ...n.models.slice(0, 6).map((m) => el("span", { class: "tag" }, m)),
        n.models.length > 6 ? el("span", { class: "muted" }, "+" + (n.models.length - 6)) : null),
      el("td", {}, bar, n.in_flight + " / " + n.capacity),
      el("td", { class: "num" }, n.ttft_ms ? fmt(n.ttft_ms, 0) + " ms" : "–"),
      el("td", { class: "num" }, n.tokens_per_s ? fmt(n.tokens_per_s, 1) : "–"),
      el("td", { class: "num" }, n.rtt_ms === null ? "–" : fmt(n.rtt_ms, 1) + " ms"),
      el("td", { class: "num" }, ago(n.last_heartbeat_s)),
      el("td", {}, el("span", { class: "state " + state }, state)));
  });
  if (!out.length) out.push(el("tr", {}, el("td", { colspan: "9", class: "muted" }, "no nodes have joined this gateway")));
  body.replaceChildren(...out);
  const live = nodes.filter((n) => nodeState(n) === "live").length;
  setText("nodes-live", live);
  const ns = new Set(nodes.map((n) => n.namespace || "public"));
  setText("nodes-detail", nodes.length + " known · " + ns.size + " namespace" + (ns.size === 1 ? "" : "s") +
    " · " + fmt(queued || 0, 0) + " queued");
  document.getElementById("nodes").dataset.live = String(live);
}

function renderRates(totals, now) {
  history.push({ t: now, requests: totals.requests, errors: totals.errors,
    tokens: totals.prompt_tokens + totals.generation_tokens, gen: totals.generation_tokens });
  while (history.length > HISTORY + 1) history.shift();
  const rates = { req: [], tok: [], err: [] };
  for (let i = 1; i < history.length; i++) {
    const a = history[i - 1], b = history[i], dt = Math.max(1e-3, b.t - a.t);
    rates.req.push(Math.max(0, (b.requests - a.requests) / dt));
    rates.tok.push(Math.max(0, (b.gen - a.gen) / dt));
    rates.err.push(Math.max(0, (b.errors - a.errors) / dt));
  }
  const last = (xs) => (xs.length ? xs[xs.length - 1] : null);
  setText("req-rate", fmt(last(rates.req), 1));
  setText("tok-rate", fmt(last(rates.tok), 0));
  setText("err-rate", fmt(last(rates.err), 2));
  setText("err-total", fmt(totals.errors, 0) + (totals.errors === 1 ? " error" : " errors") + " of " +
    fmt(totals.requests, 0) + (totals.requests === 1 ? " request" : " requests"));
  sparkline(document.getElementById("req-spark"), rates.req);
  sparkline(document.getElementById("tok-spark"), rates.tok);
}

function renderRecent(recent) {
  const body = document.getElementById("recent-body");
  const rows = recent.series.map((s) => el("tr", {},
    el("td", {}, s.key ? el("code", {}, s.key) : el("span", { class: "muted" }, "(open mode)")),
    el("td", {}, s.namespace || el("span", { class: "muted" }, "public")),
    el("td", {}, spark(s.tokens)),
    el("td", { class: "num" }, fmt(s.requests.reduce((a, b) => a + b, 0), 0)),
    el("td", { class: "num" }, fmt(s.tokens.reduce((a, b) => a + b, 0), 0))));
  if (!rows.length) rows.push(el("tr", {}, el("td", { colspan: "5", class: "muted" }, "no requests in the last hour")));
  body.replaceChildren(...rows);
}

function renderDaily(daily) {
  const section = document.getElementById("daily-section");
  if (!daily) { section.hidden = true; return; }
  section.hidden = false;
  const rows = daily.slice(0, 100).map((r) => el("tr", {},
    el("td", {}, r.day), el("td", {}, el("code", {}, r.key)), el("td", {}, r.model),
    el("td", { class: "num" }, fmt(r.requests, 0)), el("td", { class: "num" }, fmt(r.prompt_tokens, 0)),
    el("td", { class: "num" }, fmt(r.completion_tokens, 0))));
  if (!rows.length) rows.push(el("tr", {}, el("td", { colspan: "6", class: "muted" }, "no usage recorded yet")));
  document.getElementById("daily-body").replaceChildren(...rows);
}

function renderHealth(h) {
  const pill = document.getElementById("health");
  pill.textContent = h.status === "ok" ? "healthy" : h.status;
  pill.className = "pill " + (h.status === "ok" ? "ok" : "warn");
  if (h.database && !h.database.ok) pill.title = h.database.error || "database unavailable";
}

function showKeyForm(message) {
  const form = document.getElementById("key-form");
  form.hidden = false;
  setText("key-error", apiKey() ? message : "");
}

async function refresh() {
  try {
    const health = await getJSON("/healthz");
    renderHealth(health);
    setText("gateway-id", health.peer_id);
    const [nodes, models, summary] = await Promise.all([
      getJSON("/v1/network/nodes"), getJSON("/v1/models"), getJSON("/v1/admin/summary"),
    ]);
    document.getElementById("key-form").hidden = true;
    renderNodes(nodes.data, summary.queued);
    setText("models-count", models.data.length);
    setText("models-list", models.data.slice(0, 4).map((m) => m.id).join(", ") + (models.data.length > 4 ? ", …" : ""));
    renderRates(summary.totals, summary.time);
    renderRecent(summary.recent_usage);
    renderDaily(summary.daily_usage);
    setText("updated", "updated " + new Date().toLocaleTimeString());
    document.body.dataset.ready = "1";
  } catch (e) {
    if (e instanceof AuthNeeded) {
      showKeyForm(e.message);
    } else {
      const pill = document.getElementById("health");
      pill.textContent = "unreachable";
      pill.className = "pill bad";
      setText("updated", String(e.message || e));
    }
  }
}

document.addEventListener("DOMContentLoaded", () => {
  document.getElementById("key-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    sessionStorage.setItem(KEY_STORAGE, document.getElementById("key-input").value.trim());
    history.length = 0;
    refresh();
  });
  refresh();
  setInterval(refresh, REFRESH_MS);
});
