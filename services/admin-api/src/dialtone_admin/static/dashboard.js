// The dashboard: one shell, a page per URL (/calls, /calls/<sid>, /monitor, /overview, /webhooks, /audit, /tests, /login),
// drawn from the JSON API. A served file: the page's Content-Security-Policy allows no inline script.
// Signed in means an HttpOnly session cookie this script never sees; signed out (or expired), every
// piece of call data is removed from the page, not hidden.
"use strict";
(() => {
const $ = (id) => document.getElementById(id);
const VIEW = $("view");
const NONCE = document.querySelector('meta[name="csp-nonce"]')?.content || "";
const TZ = Intl.DateTimeFormat().resolvedOptions().timeZone || "UTC";
const FACETS = ["agent", "status", "direction", "outcome"];
let cleanups = []; // what the current page must stop when it is left (streams, audio, timers)
let expiryTimer = null;
let renderToken = 0; // a page drawn after another navigation began is dropped

// Text goes into the page only through textContent, never innerHTML: transcripts are caller input.
function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v == null || v === false) continue;
    if (k === "class") node.className = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) if (c != null && c !== false) node.append(c instanceof Node ? c : String(c));
  return node;
}
const fmtTime = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: "medium" });
const when = (iso) => (iso ? fmtTime.format(new Date(iso)) : "");
const clock = (s) => {
  if (s == null || !isFinite(s)) return "";
  const m = Math.floor(s / 60), r = s - m * 60;
  return `${m}:${r.toFixed(1).padStart(4, "0")}`;
};
const secs = (s) => (s == null ? "" : `${Math.floor(s / 60)}:${String(Math.round(s % 60)).padStart(2, "0")}`);
const usd = (v) => (v == null ? "" : `$${Number(v).toFixed(4)}`);
const ms = (v) => (v == null ? "–" : `${Math.round(v)} ms`);

// An error body's detail is a sentence, or for a 422 a list of {loc, msg}: both become words.
function problem(body, fallback) {
  const d = body && body.detail;
  if (typeof d === "string") return d;
  if (Array.isArray(d)) return d.map((e) => `${(e.loc || []).slice(-1)[0] || "input"}: ${e.msg}`).join("; ");
  return fallback;
}

class SignedOut extends Error {}

async function api(path, options = {}) {
  const res = await fetch(path, { credentials: "same-origin", headers: { Accept: "application/json" }, ...options });
  if (res.status === 401 && !path.startsWith("/auth/session")) {
    signedOut("Your session has ended. Sign in again.");
    throw new SignedOut("signed out");
  }
  const body = res.status === 204 ? null : await res.json().catch(() => null);
  if (!res.ok) {
    const err = new Error(problem(body, `${res.status} ${res.statusText}`));
    err.status = res.status;
    throw err;
  }
  return body;
}

// ---- navigation ------------------------------------------------------------------------------
function navigate(url, replace = false) {
  if (replace) history.replaceState(null, "", url); else history.pushState(null, "", url);
  render();
}
document.addEventListener("click", (ev) => {
  const a = ev.target.closest && ev.target.closest("a[href]");
  if (!a || a.hasAttribute("download") || a.target || ev.ctrlKey || ev.metaKey || ev.shiftKey || ev.button) return;
  const url = new URL(a.href, location.href);
  if (url.origin !== location.origin || !/^\/(calls|monitor|overview|webhooks|audit|tests|login)/.test(url.pathname)) return;
  ev.preventDefault();
  navigate(url.pathname + url.search);
});
window.addEventListener("popstate", () => render());

function leavePage() {
  for (const stop of cleanups.splice(0)) { try { stop(); } catch { /* already stopped */ } }
}

// Signed out or expired: stop everything and remove all call data, then show the sign-in.
function signedOut(message = "") {
  leavePage();
  clearTimeout(expiryTimer);
  VIEW.replaceChildren();
  $("nav").hidden = true; $("logout").hidden = true; $("logout-all").hidden = true; $("tz").hidden = true;
  const here = location.pathname + location.search;
  const next = location.pathname.startsWith("/login") ? "" : `?next=${encodeURIComponent(here)}`;
  history.replaceState(null, "", `/login${next}`);
  drawLogin(message);
}

function watchExpiry(expiresAt) {
  clearTimeout(expiryTimer);
  const wait = Math.max(0, expiresAt * 1000 - Date.now());
  expiryTimer = setTimeout(() => signedOut("Your session has expired. Sign in again."), Math.min(wait, 2 ** 31 - 1));
}

async function render() {
  leavePage();
  const token = ++renderToken;
  const path = location.pathname;
  if (path.startsWith("/login")) {
    try {
      const s = await api("/auth/session");
      watchExpiry(s.expires_at);
      const next = new URLSearchParams(location.search).get("next");
      return navigate(next && /^\/(calls|monitor|overview|webhooks|audit|tests)/.test(next) ? next : "/calls", true);
    } catch { return drawLogin(""); }
  }
  $("nav").hidden = false; $("logout").hidden = false; $("logout-all").hidden = false;
  $("tz").hidden = false; $("tz").textContent = `Times in ${TZ}`;
  for (const a of document.querySelectorAll("[data-nav]")) {
    const on = path === `/${a.dataset.nav}` || (a.dataset.nav === "calls" && path.startsWith("/calls"));
    on ? a.setAttribute("aria-current", "page") : a.removeAttribute("aria-current");
  }
  const stillHere = () => token === renderToken;
  try {
    const m = path.match(/^\/calls\/([A-Za-z0-9_-]{1,64})$/);
    if (m) await drawCall(decodeURIComponent(m[1]), stillHere);
    else if (path === "/monitor") await drawMonitor(stillHere);
    else if (path === "/overview") await drawOverview(stillHere);
    else if (path === "/webhooks") await drawWebhooks(stillHere);
    else if (path === "/audit") await drawAudit(stillHere);
    else if (path === "/tests") await drawTests(stillHere);
    else await drawCalls(stillHere);
  } catch (e) {
    if (e instanceof SignedOut) return;
    if (stillHere()) VIEW.replaceChildren(el("p", { class: "err", role: "alert" }, e.message));
  }
}

// ---- sign-in ---------------------------------------------------------------------------------
function drawLogin(message) {
  document.title = "Sign in · Dialtone";
  const input = el("input", { id: "token", type: "password", autocomplete: "current-password", required: true,
    "aria-describedby": "login-help" });
  const error = el("p", { id: "login-error", class: "err", role: "alert" }, message);
  const form = el("form", { id: "login-form", class: "card login" },
    el("h1", {}, "Sign in"),
    el("p", { id: "login-help" }, "Enter the admin token (", el("code", {}, "ADMIN_TOKEN"),
      "). It is exchanged for a session cookie that this page's scripts cannot read; it ends when you sign out or after a few hours."),
    el("label", { for: "token" }, "Admin token"), input,
    el("p", {}, el("button", { type: "submit" }, "Sign in")), error);
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    error.textContent = "";
    try {
      const s = await api("/auth/session", { method: "POST", headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ token: input.value.trim() }) });
      input.value = "";
      watchExpiry(s.expires_at);
      const next = new URLSearchParams(location.search).get("next");
      navigate(next && /^\/(calls|monitor|overview|webhooks|audit|tests)/.test(next) ? next : "/calls", true);
    } catch (e) { error.textContent = e.status === 401 ? "That is not the admin token." : e.message; }
  });
  VIEW.replaceChildren(form);
  input.focus();
}

$("logout").addEventListener("click", async () => {
  try { await fetch("/auth/logout", { method: "POST", credentials: "same-origin" }); } finally { signedOut("You have signed out."); }
});

// A lost or shared device: end every session (this one too); their open pages stop within a second.
$("logout-all").addEventListener("click", async () => {
  if (!confirm("Sign out every dashboard session, on every device?")) return;
  let message = "Every session has been signed out.";
  try {
    const r = await fetch("/auth/sessions", { method: "DELETE", credentials: "same-origin" });
    if (!r.ok) message = "Signing everyone out failed; try again.";
  } finally { signedOut(message); }
});

// ---- calls list ------------------------------------------------------------------------------
// Dates in the URL are the operator's calendar days; the API gets the instants they begin, in TZ.
function dayStart(ymd, plusDays = 0) {
  const [y, m, d] = ymd.split("-").map(Number);
  return new Date(y, m - 1, d + plusDays).toISOString();
}
function apiFilters(params) {
  const out = new URLSearchParams();
  for (const k of ["q", "number", "verdict", "test", ...FACETS]) if (params.get(k)) out.set(k, params.get(k));
  if (params.get("since")) out.set("since", dayStart(params.get("since")));
  if (params.get("until")) out.set("until", dayStart(params.get("until"), 1)); // the whole last day
  return out;
}

async function drawCalls(stillHere) {
  document.title = "Calls · Dialtone";
  const params = new URLSearchParams(location.search);
  const filters = apiFilters(params);
  const facetsP = api("/sessions/facets").catch(() => ({}));
  const countP = api(`/sessions/count?${filters}`).catch((e) => { if (e instanceof SignedOut) throw e; return null; });
  const form = el("form", { id: "filters", class: "filters", role: "search" });
  const field = (label, control) => el("label", { class: "field" }, el("span", {}, label), control);
  form.append(field("Search transcripts", el("input", { name: "q", type: "search", value: params.get("q") || "",
    maxlength: 200, placeholder: "words said in the call or its summary" })));
  const facets = await facetsP;
  if (!stillHere()) return;
  for (const k of FACETS) {
    const select = el("select", { name: k }, el("option", { value: "" }, "Any"));
    const values = [...(facets[k] || [])];
    if (params.get(k) && !values.some((v) => v.toLowerCase() === params.get(k).toLowerCase())) values.push(params.get(k));
    for (const v of values) select.append(el("option", { value: v, selected: v.toLowerCase() === (params.get(k) || "").toLowerCase() && v === values.find((x) => x.toLowerCase() === v.toLowerCase()) }, v));
    form.append(field(k[0].toUpperCase() + k.slice(1), select));
  }
  const verdict = el("select", { name: "verdict" }, ...[["", "Any"], ["success", "Success"], ["failure", "Failure"]]
    .map(([v, label]) => el("option", { value: v, selected: (params.get("verdict") || "") === v }, label)));
  form.append(field("Verdict", verdict));
  // Test calls (dialtone eval): shown with the others unless hidden, or alone.
  const tests = el("select", { name: "test" }, ...[["", "Shown"], ["exclude", "Hidden"], ["only", "Only"]]
    .map(([v, label]) => el("option", { value: v, selected: (params.get("test") || "") === v }, label)));
  form.append(field("Test calls", tests));
  form.append(field("Number", el("input", { name: "number", type: "tel", value: params.get("number") || "", maxlength: 40, placeholder: "+1555…" })));
  form.append(field(`From (${TZ})`, el("input", { name: "since", type: "date", value: params.get("since") || "" })));
  form.append(field(`To, inclusive (${TZ})`, el("input", { name: "until", type: "date", value: params.get("until") || "" })));
  form.append(el("div", { class: "actions" }, el("button", { type: "submit" }, "Filter"),
    el("a", { href: "/calls", class: "button plain" }, "Clear")));
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    const next = new URLSearchParams();
    for (const [k, v] of new FormData(form)) if (String(v).trim()) next.set(k, String(v).trim());
    navigate(`/calls${next.toString() ? `?${next}` : ""}`);
  });
  const total = el("p", { id: "total", class: "muted", "aria-live": "polite" }, "Counting…");
  const exportLinks = el("p", { class: "exports" }, "Export: ",
    el("a", { href: `/sessions/export?${filters}&format=csv`, download: "", id: "export-csv" }, "CSV"), " · ",
    el("a", { href: `/sessions/export?${filters}&format=json`, download: "", id: "export-json" }, "JSON"));
  const rows = el("tbody", { id: "rows" });
  const table = el("table", { class: "calls" },
    el("caption", { class: "sr-only" }, `Calls, newest first; times in ${TZ}`),
    el("thead", {}, el("tr", {}, ...["Started", "Direction", "From", "To", "Agent", "Status", "Outcome", "Duration", "Cost"]
      .map((h) => el("th", { scope: "col" }, h)))), rows);
  const status = el("p", { id: "list-status", class: "muted", "aria-live": "polite" });
  const more = el("button", { id: "more", class: "plain", type: "button", hidden: true }, "Load more");
  VIEW.replaceChildren(el("h1", {}, "Calls"), form, el("div", { class: "summary" }, total, exportLinks),
    el("div", { class: "table-wrap" }, table), el("p", {}, more, " ", status));
  let cursor = null;
  async function load() {
    status.textContent = "Loading…"; more.hidden = true;
    const q = new URLSearchParams(filters);
    q.set("limit", "50");
    if (cursor) q.set("cursor", cursor);
    try {
      const page = await api(`/sessions?${q}`);
      if (!stillHere()) return;
      for (const s of page.items) rows.append(callRow(s));
      cursor = page.next_cursor;
      more.hidden = !cursor;
      status.textContent = rows.children.length ? "" : "No calls match.";
    } catch (e) { if (!(e instanceof SignedOut)) status.textContent = e.message; }
  }
  more.addEventListener("click", load);
  await load();
  const count = await countP;
  if (stillHere()) total.textContent = count == null ? "" :
    `${count.exact ? "" : "about "}${count.count.toLocaleString()} call${count.count === 1 ? "" : "s"}`;
}

function callRow(s) {
  const href = `/calls/${encodeURIComponent(s.call_sid)}`;
  const cell = (label, value, cls) => el("td", { "data-label": label, class: cls }, value);
  const row = el("tr", { "data-sid": s.call_sid },
    el("td", { "data-label": "Started" }, el("a", { href }, when(s.started_at))),
    cell("Direction", s.direction || ""), cell("From", s.from_number || ""), cell("To", s.to_number || ""),
    el("td", { "data-label": "Agent" }, s.agent || "", s.test_run ? el("span", { class: "chip test-call", title: `test run ${s.test_run}` }, "test") : ""),
    cell("Status", s.status || ""), cell("Outcome", s.outcome || "", "outcome"),
    cell("Duration", secs(s.duration_s)), cell("Cost", usd(s.cost_usd)));
  row.addEventListener("click", (ev) => { if (!ev.target.closest("a")) navigate(href); });
  return row;
}

// ---- one call --------------------------------------------------------------------------------
function offsetOf(entry, s) {
  if (entry.offset_ms != null) return entry.offset_ms / 1000;
  if (!entry.at || !s.started_at) return null;
  return Math.max(0, (new Date(entry.at) - new Date(s.started_at)) / 1000);
}

function timeline(s) {
  const items = [];
  for (const t of s.transcript || []) items.push({ kind: t.source === "dtmf" ? "dtmf" : "line", seq: t.seq, at: t.at, t });
  for (const t of s.tool_calls || []) items.push({ kind: "tool", seq: t.seq, at: t.at, t });
  for (const t of s.status_history || []) items.push({ kind: "status", at: t.at, t });
  for (const t of s.agents || []) items.push({ kind: "handoff", at: t.at, t });
  // The conversation keeps its own order (seq); the rest goes by time among it.
  const conv = items.filter((i) => i.seq != null).sort((a, b) => a.seq - b.seq);
  const other = items.filter((i) => i.seq == null).sort((a, b) => new Date(a.at) - new Date(b.at));
  const out = [];
  for (const c of conv) {
    while (other.length && new Date(other[0].at) <= new Date(c.at)) out.push(other.shift());
    out.push(c);
  }
  out.push(...other);
  if (s.transferred_to) out.push({ kind: "transfer", t: { target: s.transferred_to } });
  return out;
}

function drawEntry(item, s, player) {
  const t = item.t;
  const at = el("time", { class: "muted", datetime: t.at || "" }, t.at ? new Date(t.at).toLocaleTimeString() : "");
  if (item.kind === "line" || item.kind === "dtmf") {
    const offset = offsetOf(t, s);
    const who = t.role === "agent" ? `Agent · ${t.agent}` : "Caller";
    const bits = [];
    if (item.kind === "dtmf") bits.push("keypad");
    if (t.interrupted) bits.push(t.heard_ms != null && t.audio_ms != null
      ? `barge-in: heard ${(t.heard_ms / 1000).toFixed(1)} s of ${(t.audio_ms / 1000).toFixed(1)} s` : "interrupted");
    const text = t.untranscribed ? el("em", { class: "muted" }, "(words not transcribed)")
      : item.kind === "dtmf" ? `Pressed ${t.text}` : t.text;
    const full = t.interrupted && t.full_text && t.full_text !== t.text
      ? el("div", { class: "unheard" }, el("span", { class: "muted" }, "Not heard: "), t.full_text.slice(t.text.length).trim() || t.full_text) : null;
    const node = el(offset == null ? "div" : "button", {
      type: offset == null ? null : "button", class: `entry line ${t.role} ${item.kind}${t.interrupted ? " interrupted" : ""}`,
      "data-offset": offset == null ? null : offset.toFixed(3), "aria-label": offset == null ? null : `${who} at ${clock(offset)}: play from here`,
    }, el("span", { class: "who" }, who, offset != null ? ` · ${clock(offset)}` : "", bits.length ? ` · ${bits.join(" · ")}` : ""),
      el("span", { class: "text" }, text), full);
    if (offset != null) node.addEventListener("click", () => player.seek(offset));
    return node;
  }
  if (item.kind === "tool") {
    return el("div", { class: `entry tool${t.ok ? "" : " failed"}` },
      el("div", {}, el("strong", {}, `Tool ${t.name}`), el("span", { class: "muted" }, ` · ${t.agent} · ${Math.round(t.duration_ms)} ms · ${t.ok ? "ok" : "failed"} `), at),
      el("pre", {}, `arguments: ${JSON.stringify(t.arguments, null, 1)}`),
      el("pre", {}, t.ok ? `result: ${JSON.stringify(t.result, null, 1)}` : `error: ${t.error}`));
  }
  if (item.kind === "status") {
    return el("div", { class: "entry event" }, `Status ${t.status}`, el("span", { class: "muted" },
      ` · ${t.source}${t.answered_by ? ` · answered by ${t.answered_by}` : ""}${t.detail ? ` · ${t.detail}` : ""} `), at);
  }
  if (item.kind === "handoff") return el("div", { class: "entry event" }, `Handoff: ${t.from_agent} → ${t.to_agent} `, at);
  return el("div", { class: "entry event" }, `Transferred to ${t.target}`);
}

// The recording's two channels (caller, agent) with playback; clicking a line seeks there.
function makePlayer(box, sid, s) {
  const state = { ws: null, lines: [] };
  const time = el("span", { id: "play-time", class: "muted", "aria-live": "off" }, "");
  const play = el("button", { type: "button", id: "play", disabled: true }, "Play");
  const wave = el("div", { id: "wave", class: "wave", "aria-label": "Waveform: caller above, agent below" });
  const status = el("p", { class: "muted", id: "wave-status" }, "Loading the recording…");
  box.replaceChildren(el("div", { class: "player-bar" }, play, time), wave, status);
  const setTime = (t) => {
    box.dataset.time = t.toFixed(3);
    time.textContent = `${clock(t)} / ${clock(state.ws ? state.ws.getDuration() : null)}`;
    let current = null;
    for (const n of state.lines) if (Number(n.dataset.offset) <= t + 0.05) current = n;
    for (const n of state.lines) {
      const on = n === current;
      n.classList.toggle("playing", on);
      on ? n.setAttribute("aria-current", "true") : n.removeAttribute("aria-current");
    }
  };
  state.seek = (t) => {
    // The shown time (and data-time) follows the audio element's own currentTime, via the
    // player's timeupdate and seeking events: what moved is the audio, not just the label.
    if (state.ws) state.ws.setTime(t);
  };
  state.attach = (nodes) => { state.lines = nodes; };
  (async () => {
    let wf;
    try { wf = await api(`/sessions/${encodeURIComponent(sid)}/waveform`); }
    catch (e) {
      if (e instanceof SignedOut) return;
      status.textContent = e.status === 404 ? "No recording of this call." : `Recording unavailable: ${e.message}`;
      wave.remove(); play.remove();
      if (e.status === 404) $("download-recording")?.remove();
      return;
    }
    // GET /sessions/{sid}/waveform: {caller: [0..1], agent: [0..1], duration_ms, complete, reason}
    const peaks = [wf.caller || [], wf.agent || []];
    const duration = wf.duration_ms / 1000;
    if (wf.complete === false) status.dataset.incomplete = wf.reason || "incomplete";
    if (typeof WaveSurfer === "undefined") { status.textContent = "The waveform player did not load."; return; }
    const ws = WaveSurfer.create({
      container: wave, url: `/sessions/${encodeURIComponent(sid)}/recording`, peaks, duration,
      height: 56, normalize: false, cspNonce: NONCE, mediaControls: false, interact: true, dragToSeek: true,
      splitChannels: [{ waveColor: "#6b7480", progressColor: "#1d2430" }, { waveColor: "#5b9bd5", progressColor: "#2b6cb0" }],
    });
    state.ws = ws;
    cleanups.push(() => ws.destroy());
    ws.on("ready", () => {
      play.disabled = false;
      status.textContent = "Caller above, agent below." + (wf.complete === false ? ` Part of the audio is missing: ${wf.reason || "unknown"}.` : "");
      setTime(0);
    });
    ws.on("error", (e) => { status.textContent = `The recording could not be played: ${e && e.message ? e.message : e}`; });
    ws.on("timeupdate", (t) => setTime(t));
    ws.on("seeking", (t) => setTime(t));
    ws.on("play", () => { play.textContent = "Pause"; });
    ws.on("pause", () => { play.textContent = "Play"; });
    play.addEventListener("click", () => ws.playPause());
    if (duration) setTime(0);
    play.disabled = false;
  })();
  return state;
}

function kv(rows) {
  const dl = el("dl");
  for (const [k, v] of rows) if (v != null && v !== "") dl.append(el("dt", {}, k), el("dd", {}, v));
  return dl;
}

function drawLatency(box, s) {
  const turns = Array.isArray(s.turns) ? s.turns : [];
  const lat = s.latency || null;
  if (!turns.length && !lat) { box.replaceChildren(el("h2", {}, "Turn latency"), el("p", { class: "muted" }, "No turns measured.")); return; }
  const summary = [];
  const walk = (obj, prefix) => {
    for (const [k, v] of Object.entries(obj || {})) {
      if (v && typeof v === "object") walk(v, `${prefix}${k} `);
      else if (typeof v === "number") summary.push([`${prefix}${k}`.replace(/_/g, " "), /ms$|p\d\d/.test(k) || prefix ? ms(v) : String(v)]);
    }
  };
  walk(lat, "");
  // By stage, each from the caller's stop: the model's first audio received, sent towards Twilio
  // (the difference is the platform's own share), heard by the caller.
  const share = (t) => (t.received_ms == null ? null : t.sent_ms - t.received_ms);
  const table = el("table", { class: "turns" }, el("thead", {}, el("tr", {}, ...["Turn", "Model", "Sent", "Platform", "Heard", "Tools"].map((h) => el("th", { scope: "col" }, h)))),
    el("tbody", {}, ...turns.map((t, i) => el("tr", {}, el("td", {}, t.turn ?? i + 1), el("td", {}, ms(t.received_ms)), el("td", {}, ms(t.sent_ms)),
      el("td", {}, ms(share(t))), el("td", {}, ms(t.heard_ms)),
      el("td", {}, t.tools ? `${t.tools} · ${ms(t.tool_ms)}` : "")))));
  const chart = el("div", { class: "chart", id: "latency-chart" });
  box.replaceChildren(el("h2", {}, "Turn latency"), kv(summary), chart, el("div", { class: "table-wrap" }, table));
  if (turns.length && typeof uPlot !== "undefined") {
    const xs = turns.map((t, i) => t.turn ?? i + 1);
    const plot = new uPlot({ width: Math.max(240, Math.min(box.clientWidth - 24, 640)), height: 160,
      series: [{ label: "turn" }, { label: "model ms", stroke: "#6b46c1" }, { label: "sent ms", stroke: "#2b6cb0" }, { label: "heard ms", stroke: "#b7791f" }],
      axes: [{}, { size: 50 }], scales: { x: { time: false } } },
    [xs, turns.map((t) => t.received_ms ?? null), turns.map((t) => t.sent_ms ?? null), turns.map((t) => t.heard_ms ?? null)], chart);
    cleanups.push(() => plot.destroy());
  }
}

function drawCost(box, s) {
  const cost = s.cost;
  const head = [el("h2", {}, "Cost"), el("p", {}, el("strong", {}, usd(cost ? cost.total_usd : s.cost_usd)), " in total",
    cost && cost.per_minute_usd != null ? ` · ${usd(cost.per_minute_usd)} a minute` : "")];
  if (!cost || !cost.usd) { box.replaceChildren(...head, el("p", { class: "muted" }, "No breakdown.")); return; }
  const kinds = Object.keys(cost.usd).filter((k) => cost.usd[k] || (cost.tokens || {})[k]);
  const table = el("table", { class: "cost" }, el("thead", {}, el("tr", {}, ...["Kind", "Tokens", "USD"].map((h) => el("th", { scope: "col" }, h)))),
    el("tbody", {}, ...kinds.map((k) => el("tr", {}, el("td", {}, k.replace(/_/g, " ")),
      el("td", {}, ((cost.tokens || {})[k] ?? 0).toLocaleString()), el("td", {}, usd(cost.usd[k]))))));
  const extra = cost.hosted_fee_usd != null
    ? el("p", { class: "muted" }, `A hosted builder's fee of ${usd(cost.hosted_fee_per_minute_usd)}/min would have added ${usd(cost.hosted_fee_usd)}.`) : null;
  box.replaceChildren(...head, el("div", { class: "table-wrap" }, table), extra);
}

// The post-call analysis: summary, verdict, extracted fields, or where the analysis stands.
function drawAnalysis(box, s) {
  const a = s.analysis;
  const head = el("h2", {}, "Analysis");
  if (!a) { box.replaceChildren(head, el("p", { class: "muted" }, "No analysis for this agent's calls.")); return; }
  if (a.status === "failed") {
    box.replaceChildren(head, el("p", { class: "err", role: "status" }, `Failed after ${a.attempts} attempt(s): ${a.reason || "unknown reason"}`));
    return;
  }
  if (a.status === "pending") {
    box.replaceChildren(head, el("p", { class: "muted" }, a.attempts ? `Pending (${a.attempts} attempt(s) so far${a.reason ? `; last: ${a.reason}` : ""}).` : "Pending."));
    return;
  }
  const verdict = a.verdict || {};
  const rows = [["Verdict", verdict.success == null ? null : (verdict.success ? "Success" : "Failure")], ["Why", verdict.reason]];
  for (const [k, v] of Object.entries(a.fields || {})) rows.push([k.replace(/_/g, " "), v == null ? "—" : (typeof v === "object" ? JSON.stringify(v) : String(v))]);
  rows.push(["Model", a.model], ["Cost", a.cost_usd != null ? usd(a.cost_usd) : null]);
  box.replaceChildren(head, a.summary ? el("p", { id: "analysis-summary" }, a.summary) : "", kv(rows));
}

async function drawCall(sid, stillHere) {
  document.title = `Call ${sid} · Dialtone`;
  VIEW.replaceChildren(el("p", { class: "muted" }, "Loading…"));
  let s;
  try { s = await api(`/sessions/${encodeURIComponent(sid)}`); }
  catch (e) {
    if (e instanceof SignedOut) throw e;
    if (!stillHere()) return;
    VIEW.replaceChildren(el("p", {}, el("a", { href: "/calls" }, "← Calls")),
      el("p", { class: "err", role: "alert" }, e.status === 404 ? `There is no call ${sid}.` : e.message));
    return;
  }
  if (!stillHere()) return;
  const base = `/sessions/${encodeURIComponent(sid)}`;
  const facts = kv([["Call", s.call_sid], ["Direction", s.direction], ["From → to", `${s.from_number || "?"} → ${s.to_number || "?"}`],
    ["Agent", [s.agent, ...(s.agents || []).map((a) => a.to_agent)].filter((v, i, a) => v && a.indexOf(v) === i).join(" → ")],
    ["Status", s.status], ["Answered by", s.answered_by], ["Outcome", s.outcome], ["End reason", s.end_reason],
    ["Started", when(s.started_at)], ["Ended", when(s.ended_at)], ["Duration", secs(s.duration_s)], ["Cost", usd(s.cost_usd)],
    ["Transferred to", s.transferred_to]]);
  const downloads = el("p", { class: "downloads" },
    el("a", { href: `${base}/transcript`, download: `${sid}.json`, id: "download-transcript", class: "button plain" }, "Transcript (JSON)"), " ",
    el("a", { href: `${base}/recording`, download: `${sid}.wav`, id: "download-recording", class: "button plain" }, "Recording (WAV)"));
  const playerBox = el("section", { class: "card player", id: "player", "aria-label": "Recording" });
  const convo = el("ol", { class: "timeline", id: "timeline" });
  const latency = el("section", { class: "card", id: "latency" });
  const cost = el("section", { class: "card", id: "cost" });
  const analysis = el("section", { class: "card", id: "analysis" });
  const back = el("a", { href: "/calls", id: "back" }, "← Calls");
  // A test call (placed by a test run, dialtone eval or the Tests page) says so, with its run.
  const testBadge = s.test_run ? el("p", { id: "test-call-badge", class: "test-badge", role: "note" },
    el("span", { class: "chip test-call" }, "test call"), " placed by test run ",
    el("a", { href: `/tests?run=${encodeURIComponent(s.test_run)}`, id: "test-run-link" }, s.test_run),
    el("span", { class: "muted" }, " · left out of the overview's counts and costs")) : null;
  VIEW.replaceChildren(el("p", {}, back), el("h1", {}, `Call from ${s.from_number || "unknown"}`), testBadge ?? "",
    el("div", { class: "call-grid" },
      el("div", {}, el("section", { class: "card" }, facts, downloads), playerBox,
        el("section", { class: "card" }, el("h2", {}, "Timeline"), convo)),
      el("div", {}, analysis, latency, cost)));
  const player = makePlayer(playerBox, sid, s);
  const entries = timeline(s);
  for (const item of entries) convo.append(el("li", {}, drawEntry(item, s, player)));
  if (!entries.length) convo.append(el("li", { class: "muted" }, "No transcript."));
  player.attach([...convo.querySelectorAll("[data-offset]")]);
  drawLatency(latency, s);
  drawAnalysis(analysis, s);
  drawCost(cost, s);
}

// ---- live calls ------------------------------------------------------------------------------
async function drawMonitor(stillHere) {
  document.title = "Live · Dialtone";
  const list = el("div", { id: "live-calls", class: "live-grid" });
  const status = el("p", { id: "live-status", class: "muted", "aria-live": "polite" }, "Connecting…");
  VIEW.replaceChildren(el("h1", {}, "Live calls"), status, list);
  const cards = new Map();
  function card(call) {
    let c = cards.get(call.call_id);
    if (!c) {
      const lines = el("ol", { class: "live-lines", "aria-live": "polite" });
      const head = el("div", { class: "live-head" });
      const listen = el("button", { type: "button", class: "plain listen" }, "Listen in");
      const meter = el("span", { class: "muted meter" }, "");
      c = { node: el("article", { class: "card live-call", "data-call": call.call_id }, head, el("div", {}, listen, " ", meter), lines),
        head, lines, listen, meter, seen: new Set(), stop: null };
      listen.addEventListener("click", () => (c.stop ? stopListening(c) : startListening(c, call.call_id)));
      cards.set(call.call_id, c);
      list.append(c.node);
    }
    if (call.agent) {
      c.head.replaceChildren(el("strong", {}, call.from_number || call.call_id), el("span", { class: "muted" },
        ` · ${call.direction || ""} · ${call.agent} · ${call.state || ""} · since ${call.started_at ? new Date(call.started_at).toLocaleTimeString() : ""} `),
        el("a", { href: `/calls/${encodeURIComponent(call.call_id)}` }, "details"));
    }
    return c;
  }
  function addLine(line) {
    const c = card({ call_id: line.call_id });
    const key = `${line.item_id}:${line.rev || 0}`;
    if (c.seen.has(key)) return;
    c.seen.add(key);
    const existing = c.lines.querySelector(`[data-item="${CSS.escape(line.item_id)}"]`);
    if (existing && Number(existing.dataset.rev) > (line.rev || 0)) return; // a correction came first
    const node = el("li", { class: `line ${line.role}${line.interrupted ? " interrupted" : ""}`, "data-item": line.item_id, "data-seq": line.seq, "data-rev": line.rev || 0 },
      el("span", { class: "who" }, line.role === "agent" ? `Agent · ${line.agent}` : "Caller"), el("span", { class: "text" }, line.untranscribed ? "(words not transcribed)" : line.text));
    if (existing) existing.replaceWith(node);
    else {
      const after = [...c.lines.children].find((n) => Number(n.dataset.seq) > line.seq);
      after ? c.lines.insertBefore(node, after) : c.lines.append(node);
    }
  }
  function ended(id) {
    const c = cards.get(id);
    if (!c) return;
    stopListening(c);
    c.node.remove(); cards.delete(id);
  }
  const source = new EventSource("/live/stream");
  cleanups.push(() => { source.close(); for (const c of cards.values()) stopListening(c); });
  source.addEventListener("open", () => { status.textContent = "Connected: calls appear here as they start."; });
  source.addEventListener("snapshot", (ev) => {
    const snap = JSON.parse(ev.data);
    const ids = new Set(snap.calls.map((c) => c.call_id));
    for (const id of [...cards.keys()]) if (!ids.has(id)) ended(id);
    for (const call of snap.calls) card(call);
    for (const line of snap.lines) addLine(line);
    status.textContent = snap.calls.length ? "" : "No call in progress.";
  });
  source.addEventListener("call", (ev) => { card(JSON.parse(ev.data)); status.textContent = ""; });
  source.addEventListener("line", (ev) => addLine(JSON.parse(ev.data)));
  source.addEventListener("ended", (ev) => ended(JSON.parse(ev.data).call_id));
  source.addEventListener("error", async () => {
    status.textContent = "Reconnecting…";
    try { await api("/auth/session"); } catch { if (stillHere()) signedOut("Your session has ended. Sign in again."); }
  });
}

// Listen-in: both sides of the call as mu-law frames from the bus, decoded and played here.
const MULAW = (() => {
  const table = new Float32Array(256);
  for (let i = 0; i < 256; i++) {
    const u = ~i & 0xff, sign = u & 0x80, exp = (u >> 4) & 7, mant = u & 0x0f;
    const mag = (((mant << 3) + 0x84) << exp) - 0x84;
    table[i] = (sign ? -mag : mag) / 32768;
  }
  return table;
})();

function startListening(c, callId) {
  const ctx = new AudioContext();
  const source = new EventSource(`/live/${encodeURIComponent(callId)}/listen`);
  const next = { in: 0, out: 0 };
  let frames = 0;
  const pans = { in: new StereoPannerNode(ctx, { pan: -0.4 }), out: new StereoPannerNode(ctx, { pan: 0.4 }) };
  pans.in.connect(ctx.destination); pans.out.connect(ctx.destination);
  source.addEventListener("audio", (ev) => {
    const f = JSON.parse(ev.data);
    const raw = atob(f.audio);
    const buffer = ctx.createBuffer(1, raw.length, 8000);
    const data = buffer.getChannelData(0);
    for (let i = 0; i < raw.length; i++) data[i] = MULAW[raw.charCodeAt(i)];
    const node = ctx.createBufferSource();
    node.buffer = buffer;
    node.connect(pans[f.side] || ctx.destination);
    // Each side plays in order with a little slack; a side fallen behind (a gap) starts afresh.
    const now = ctx.currentTime;
    if (next[f.side] < now || next[f.side] > now + 1) next[f.side] = now + 0.15;
    node.start(next[f.side]);
    next[f.side] += buffer.duration;
    frames += 1;
    c.node.dataset.frames = String(frames);
    c.meter.textContent = `${frames} audio frames`;
  });
  source.addEventListener("error", () => { c.meter.textContent = "Listening stopped."; });
  c.listen.textContent = "Stop listening";
  c.listen.setAttribute("aria-pressed", "true");
  c.stop = () => { source.close(); ctx.close(); };
}

function stopListening(c) {
  if (!c.stop) return;
  c.stop(); c.stop = null;
  c.listen.textContent = "Listen in";
  c.listen.setAttribute("aria-pressed", "false");
}

// ---- overview --------------------------------------------------------------------------------
async function drawOverview(stillHere) {
  document.title = "Overview · Dialtone";
  const params = new URLSearchParams(location.search);
  const days = Math.min(Math.max(Number(params.get("days")) || 30, 1), 366);
  const today = new Date();
  const since = new Date(today.getFullYear(), today.getMonth(), today.getDate() - days + 1).toISOString();
  const until = new Date(today.getFullYear(), today.getMonth(), today.getDate() + 1).toISOString();
  VIEW.replaceChildren(el("h1", {}, "Overview"), el("p", { class: "muted" }, "Loading…"));
  const q = new URLSearchParams({ since, until, tz: TZ });
  const data = await api(`/stats/daily?${q}`);
  if (!stillHere()) return;
  const picker = el("p", { class: "muted" }, `Last ${days} days, by day in ${TZ}, test calls left out. `,
    ...[7, 30, 90].map((d) => el("a", { href: `/overview?days=${d}`, class: "chip", "aria-current": d === days ? "page" : null }, `${d} days`)));
  const totals = data.days.reduce((a, d) => ({ calls: a.calls + d.calls, minutes: a.minutes + d.minutes, cost: a.cost + d.cost_usd }), { calls: 0, minutes: 0, cost: 0 });
  const charts = el("div", { class: "charts" });
  VIEW.replaceChildren(el("h1", {}, "Overview"), picker,
    el("p", { class: "stats" }, el("strong", {}, totals.calls.toLocaleString()), " calls · ",
      el("strong", {}, Math.round(totals.minutes).toLocaleString()), " minutes · ", el("strong", {}, usd(totals.cost))), charts);
  const xs = data.days.map((d) => new Date(`${d.day}T12:00:00`).getTime() / 1000);
  const chart = (title, series, ys) => {
    const box = el("section", { class: "card chart" }, el("h2", {}, title));
    charts.append(box);
    if (typeof uPlot === "undefined" || !xs.length) { box.append(el("p", { class: "muted" }, "No data.")); return; }
    const plot = new uPlot({ width: Math.max(260, Math.min(box.clientWidth - 24, 560)), height: 180,
      series: [{}, ...series], axes: [{}, { size: 56 }] }, [xs, ...ys], box);
    cleanups.push(() => plot.destroy());
  };
  const palette = ["#2b6cb0", "#b7791f", "#2f855a", "#c53030", "#6b46c1", "#718096", "#d53f8c"];
  chart("Calls per day", [{ label: "calls", stroke: palette[0] }], [data.days.map((d) => d.calls)]);
  chart("Minutes per day", [{ label: "minutes", stroke: palette[1] }], [data.days.map((d) => +d.minutes.toFixed(1))]);
  chart("Cost per day (USD)", [{ label: "USD", stroke: palette[2] }], [data.days.map((d) => +d.cost_usd.toFixed(4))]);
  const outcomes = [...new Set(data.days.flatMap((d) => Object.keys(d.outcomes)))];
  chart("Outcomes per day", outcomes.map((o, i) => ({ label: o, stroke: palette[i % palette.length] })),
    outcomes.map((o) => data.days.map((d) => d.outcomes[o] || 0)));
  chart("Turn latency per day (ms)", [{ label: "p50", stroke: palette[0] }, { label: "p95", stroke: palette[3] }],
    [data.days.map((d) => d.latency_p50_ms), data.days.map((d) => d.latency_p95_ms)]);
  const agents = data.agents || [];
  charts.append(el("section", { class: "card" }, el("h2", {}, "Turn latency per agent"),
    agents.length ? el("div", { class: "table-wrap" }, el("table", {}, el("thead", {}, el("tr", {}, ...["Day", "Agent", "Turns", "p50", "p95"].map((h) => el("th", { scope: "col" }, h)))),
      el("tbody", {}, ...agents.map((a) => el("tr", {}, el("td", {}, a.day), el("td", {}, a.agent), el("td", {}, a.turns), el("td", {}, ms(a.latency_p50_ms)), el("td", {}, ms(a.latency_p95_ms)))))))
      : el("p", { class: "muted" }, "No turns measured in this period.")));
}

// ---- webhooks --------------------------------------------------------------------------------
// Deliveries to the operator's systems, newest first, each with its attempts; "Resend" puts one back
// in the queue (POST with the session cookie: the server checks the request comes from this page).
async function drawWebhooks(stillHere) {
  document.title = "Webhooks · Dialtone";
  const params = new URLSearchParams(location.search);
  const form = el("form", { id: "webhook-filters", class: "filters", role: "search" });
  const field = (label, control) => el("label", { class: "field" }, el("span", {}, label), control);
  const status = el("select", { name: "status" }, ...["", "pending", "delivered", "dead"].map((v) =>
    el("option", { value: v, selected: (params.get("status") || "") === v }, v || "Any")));
  form.append(field("Status", status),
    field("Call", el("input", { name: "call", type: "search", value: params.get("call") || "", maxlength: 64, placeholder: "CA…" })),
    field("Endpoint", el("input", { name: "endpoint", type: "search", value: params.get("endpoint") || "", maxlength: 200, placeholder: "global" })),
    el("div", { class: "actions" }, el("button", { type: "submit" }, "Filter"), el("a", { href: "/webhooks", class: "button plain" }, "Clear")));
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    const next = new URLSearchParams();
    for (const [k, v] of new FormData(form)) if (String(v).trim()) next.set(k, String(v).trim());
    navigate(`/webhooks${next.toString() ? `?${next}` : ""}`);
  });
  const rows = el("tbody", { id: "webhook-rows" });
  const table = el("table", { class: "webhooks" },
    el("caption", { class: "sr-only" }, `Webhook deliveries, newest first; times in ${TZ}`),
    el("thead", {}, el("tr", {}, ...["Event", "Call", "Endpoint", "Status", "Attempts", "Last result", ""]
      .map((h) => el("th", { scope: "col" }, h)))), rows);
  const note = el("p", { id: "webhook-status", class: "muted", "aria-live": "polite" });
  const more = el("button", { id: "webhook-more", class: "plain", type: "button", hidden: true }, "Load more");
  VIEW.replaceChildren(el("h1", {}, "Webhooks"), form, el("div", { class: "table-wrap" }, table), el("p", {}, more, " ", note));
  let cursor = null;
  async function load() {
    note.textContent = "Loading…"; more.hidden = true;
    const q = new URLSearchParams();
    for (const k of ["status", "call", "endpoint"]) if (params.get(k)) q.set(k, params.get(k));
    q.set("limit", "50");
    if (cursor) q.set("cursor", cursor);
    try {
      const page = await api(`/webhooks/deliveries?${q}`);
      if (!stillHere()) return;
      for (const d of page.items) rows.append(...webhookRows(d));
      cursor = page.next_cursor;
      more.hidden = !cursor;
      note.textContent = rows.children.length ? "" : "No webhook deliveries.";
    } catch (e) { if (!(e instanceof SignedOut)) note.textContent = e.message; }
  }
  more.addEventListener("click", load);
  await load();
}

function webhookRows(d) {
  const last = d.attempts[d.attempts.length - 1];
  const result = last ? (last.status_code != null ? `HTTP ${last.status_code}` : last.error || "") : "not tried yet";
  const cell = (label, ...value) => el("td", { "data-label": label }, ...value);
  const statusCell = cell("Status", el("span", { class: `wh-${d.status}` }, d.status),
    d.status === "pending" && d.next_attempt_at ? el("span", { class: "muted" }, ` · next ${when(d.next_attempt_at)}`) : null);
  const button = el("button", { class: "plain resend", type: "button", "data-id": d.id }, "Resend");
  const details = el("tr", { class: "attempts", hidden: true }, el("td", { colspan: 7 },
    el("p", { class: "muted" }, `webhook-id ${d.id} · ${d.url}`),
    d.attempts.length ? el("ol", {}, ...d.attempts.map((a) => el("li", {},
      `${when(a.at)} · ${a.status_code != null ? `HTTP ${a.status_code}` : "no answer"} · ${ms(a.latency_ms)}`,
      a.error && a.status_code == null ? ` · ${a.error}` : "", a.response ? el("pre", {}, a.response) : null))) : el("p", {}, "No attempt yet.")));
  const toggle = el("button", { class: "plain", type: "button", "aria-expanded": "false",
    "aria-label": `${d.attempts.length} attempt${d.attempts.length === 1 ? "" : "s"}: show them` }, String(d.attempts.length));
  toggle.addEventListener("click", () => {
    details.hidden = !details.hidden;
    toggle.setAttribute("aria-expanded", String(!details.hidden));
  });
  const row = el("tr", { "data-delivery": d.id },
    cell("Event", d.event_type, el("br"), el("span", { class: "muted" }, when(d.event_at))),
    cell("Call", el("a", { href: `/calls/${encodeURIComponent(d.call_sid)}` }, d.call_sid)),
    cell("Endpoint", d.endpoint), statusCell, cell("Attempts", toggle), cell("Last result", result), cell("", button));
  button.addEventListener("click", async () => {
    button.disabled = true;
    try {
      const updated = await api(`/webhooks/deliveries/${encodeURIComponent(d.id)}/resend`, { method: "POST" });
      statusCell.replaceChildren(el("span", { class: `wh-${updated.status}` }, updated.status), el("span", { class: "muted" }, " · resent"));
    } catch (e) {
      if (!(e instanceof SignedOut)) statusCell.append(el("span", { class: "err", role: "alert" }, ` ${e.message}`));
    } finally { button.disabled = false; }
  });
  return [row, details];
}

// ---- audit -----------------------------------------------------------------------------------
// Who viewed or downloaded which call's transcript or recording, when and from where, newest first.
async function drawAudit(stillHere) {
  document.title = "Audit · Dialtone";
  const params = new URLSearchParams(location.search);
  const form = el("form", { id: "audit-filters", class: "filters", role: "search" });
  const field = (label, control) => el("label", { class: "field" }, el("span", {}, label), control);
  const actions = ["", "view_call", "export_transcript", "play_recording", "export_calls", "listen_live"];
  form.append(field("Action", el("select", { name: "action" }, ...actions.map((v) =>
      el("option", { value: v, selected: (params.get("action") || "") === v }, v || "Any")))),
    field("Call", el("input", { name: "call", type: "search", value: params.get("call") || "", maxlength: 64, placeholder: "CA…" })),
    field("Who", el("input", { name: "actor", type: "search", value: params.get("actor") || "", maxlength: 64, placeholder: "sign-in id or token:…" })),
    el("div", { class: "actions" }, el("button", { type: "submit" }, "Filter"), el("a", { href: "/audit", class: "button plain" }, "Clear")));
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    const next = new URLSearchParams();
    for (const [k, v] of new FormData(form)) if (String(v).trim()) next.set(k, String(v).trim());
    navigate(`/audit${next.toString() ? `?${next}` : ""}`);
  });
  const rows = el("tbody", { id: "audit-rows" });
  const table = el("table", { class: "audit" },
    el("caption", { class: "sr-only" }, `Audit log, newest first; times in ${TZ}`),
    el("thead", {}, el("tr", {}, ...["When", "Who", "What", "Call", "From"].map((h) => el("th", { scope: "col" }, h)))), rows);
  const note = el("p", { id: "audit-status", class: "muted", "aria-live": "polite" });
  const more = el("button", { id: "audit-more", class: "plain", type: "button", hidden: true }, "Load more");
  VIEW.replaceChildren(el("h1", {}, "Audit"), form, el("div", { class: "table-wrap" }, table), el("p", {}, more, " ", note));
  let cursor = null;
  async function load() {
    note.textContent = "Loading…"; more.hidden = true;
    const q = new URLSearchParams();
    for (const k of ["action", "call", "actor"]) if (params.get(k)) q.set(k, params.get(k));
    q.set("limit", "50");
    if (cursor) q.set("cursor", cursor);
    try {
      const page = await api(`/audit/entries?${q}`);
      if (!stillHere()) return;
      const cell = (label, ...value) => el("td", { "data-label": label }, ...value);
      for (const e of page.items) {
        const extra = e.detail && (e.detail.range || e.detail.format) ? ` (${e.detail.range || e.detail.format})` : "";
        rows.append(el("tr", { "data-audit": String(e.id) }, cell("When", when(e.at)),
          cell("Who", `${e.actor_kind === "session" ? "sign-in" : "token"} ${e.actor}`),
          cell("What", e.action + extra),
          cell("Call", e.call_sid ? el("a", { href: `/calls/${encodeURIComponent(e.call_sid)}` }, e.call_sid) : "–"),
          cell("From", e.client || "", el("br"), el("span", { class: "muted" }, e.user_agent || ""))));
      }
      cursor = page.next_cursor;
      more.hidden = !cursor;
      note.textContent = rows.children.length ? "" : "No views or downloads yet.";
    } catch (e) { if (!(e instanceof SignedOut)) note.textContent = e.message; }
  }
  more.addEventListener("click", load);
  await load();
}

// ---- tests: runs of the agents' scenarios (dialtone eval), started here, placed by a test worker ----
async function drawTests(stillHere) {
  document.title = "Tests · Dialtone";
  const field = (label, control) => el("label", { class: "field" }, el("span", {}, label), control);
  const form = el("form", { id: "test-start", class: "filters" },
    field("Agent", el("input", { name: "agent", type: "text", maxlength: 64, placeholder: "every agent" })),
    field("Scenario", el("input", { name: "scenario", type: "text", maxlength: 64, placeholder: "every scenario" })),
    field("Calls per scenario", el("input", { name: "runs", type: "number", min: 1, max: 20, value: 1 })),
    el("div", { class: "actions" }, el("button", { type: "submit", id: "test-start-button" }, "Start run")));
  const note = el("p", { id: "test-note", class: "muted", "aria-live": "polite" });
  const rows = el("tbody", { id: "test-runs" });
  const table = el("table", { class: "tests" },
    el("caption", { class: "sr-only" }, `Test runs, newest first; times in ${TZ}`),
    el("thead", {}, el("tr", {}, ...["Started", "Scope", "Status", "Progress", "Models", ""]
      .map((h) => el("th", { scope: "col" }, h)))), rows);
  const history = el("div", { id: "test-history" });
  VIEW.replaceChildren(el("h1", {}, "Tests"),
    el("p", { class: "muted" }, "Each run places test calls of the agents' scenarios through the real call path " +
      "and judges them (see \u201cTest your agent\u201d in the README). Test calls are left out of the overview."),
    form, note, el("h2", {}, "Runs"), el("div", { class: "table-wrap" }, table), el("h2", {}, "Pass rate per scenario"), history);
  const runRows = new Map(); // run_id -> {row, details}
  function runRow(r) {
    const status = el("span", { class: `run-status st-${r.status}` }, r.status);
    const progress = el("span", { class: "run-progress" }, `${r.done}/${r.total} calls, ${r.passed} passed`);
    const details = el("tr", { class: "run-details", hidden: true }, el("td", { colspan: 6 }));
    const toggle = el("button", { class: "plain run-toggle", type: "button", "aria-expanded": "false" }, "Calls");
    toggle.addEventListener("click", async () => {
      details.hidden = !details.hidden;
      toggle.setAttribute("aria-expanded", String(!details.hidden));
      if (!details.hidden) await fillDetails(r.run_id, details.firstChild);
    });
    const row = el("tr", { "data-run": r.run_id },
      el("td", { "data-label": "Started" }, when(r.created_at), el("br"), el("span", { class: "muted" }, r.run_id)),
      el("td", { "data-label": "Scope" }, `${r.agent || "every agent"}${r.scenario ? ` / ${r.scenario}` : ""} × ${r.runs}`),
      el("td", { "data-label": "Status" }, status, r.error ? el("span", { class: "err" }, ` ${r.error}`) : null),
      el("td", { "data-label": "Progress" }, progress),
      el("td", { "data-label": "Models" }, r.simulated ? el("span", { class: "chip", title: "no OPENAI_API_KEY: Dialtone's simulators answered; this tested the plumbing, not the model" }, "simulated") : "real"),
      el("td", {}, toggle));
    runRows.set(r.run_id, { row, details, status, progress, toggle });
    return [row, details];
  }
  async function fillDetails(runId, cell) {
    try {
      const run = await api(`/tests/runs/${encodeURIComponent(runId)}`);
      if (!stillHere()) return;
      cell.replaceChildren(run.calls.length ? el("ol", { class: "test-calls" }, ...run.calls.map((c) => el("li", { class: c.passed ? "pass" : "fail", "data-scenario": c.scenario },
        el("strong", {}, c.passed ? "PASS " : "FAIL "), `${c.scenario} [${c.engine}] run ${c.run} · ${c.seconds.toFixed(1)} s · `,
        c.call_sid ? el("a", { class: "call-link", href: `/calls/${encodeURIComponent(c.call_sid)}` }, "the call") : "no call",
        c.error ? el("p", { class: "err" }, c.error) : null,
        el("ul", { class: "checks" }, ...c.checks.map((k) => el("li", { class: k.passed ? "pass" : "fail" },
          `${k.passed ? "✓" : "✗"} ${k.name}: expected ${k.expected}`, k.passed || !k.actual ? "" : `, ${k.actual}`,
          k.reasoning ? el("span", { class: "muted judge" }, ` · judge: ${k.reasoning}`) : null)))))) : el("p", { class: "muted" }, "No call judged yet."));
    } catch (e) { if (!(e instanceof SignedOut)) cell.replaceChildren(el("p", { class: "err" }, e.message)); }
  }
  async function loadRuns() {
    const page = await api("/tests/runs?limit=50");
    if (!stillHere()) return;
    runRows.clear();
    rows.replaceChildren(...page.items.flatMap(runRow));
    if (!page.items.length) rows.append(el("tr", {}, el("td", { colspan: 6, class: "muted" }, "No test run yet.")));
  }
  // /tests?run=<id> (a test call's page links here): that run, its calls open, even when older than the list.
  async function focusRun(runId) {
    if (!runRows.has(runId)) {
      let run;
      try { run = await api(`/tests/runs/${encodeURIComponent(runId)}`); }
      catch (e) { if (!(e instanceof SignedOut)) { note.textContent = ""; note.append(el("span", { class: "err", role: "alert" }, e.status === 404 ? `There is no test run ${runId}.` : e.message)); } return; }
      if (!stillHere()) return;
      rows.prepend(...runRow(run));
    }
    const known = runRows.get(runId);
    known.row.classList.add("focused"); known.row.setAttribute("aria-current", "true");
    if (known.details.hidden) known.toggle.click();
    known.row.scrollIntoView({ block: "center" });
  }
  async function loadHistory() {
    const data = await api("/tests/scenarios");
    if (!stillHere()) return;
    history.replaceChildren(data.items.length ? el("table", { class: "tests-history" },
      el("thead", {}, el("tr", {}, el("th", { scope: "col" }, "Scenario"), el("th", { scope: "col" }, "Engine"), el("th", { scope: "col" }, "Runs, oldest first"))),
      el("tbody", {}, ...data.items.map((s) => el("tr", {},
        el("td", {}, s.scenario), el("td", {}, s.engine),
        el("td", {}, ...s.points.map((p) => el("span", { class: `rate ${p.passed === p.calls ? "pass" : "fail"}`,
          title: `${when(p.at)} · run ${p.run_id}` }, `${Math.round((100 * p.passed) / p.calls)}%`))))))) :
      el("p", { class: "muted" }, "No scenario has run yet."));
  }
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const data = new FormData(form);
    const body = { runs: Number(data.get("runs")) || 1 };
    for (const k of ["agent", "scenario"]) if (String(data.get(k) || "").trim()) body[k] = String(data.get(k)).trim();
    const button = $("test-start-button");
    button.disabled = true; note.textContent = "Starting…";
    try {
      const started = await api("/tests/runs", { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });
      note.textContent = `Run ${started.run_id} started: ${started.total} test call${started.total === 1 ? "" : "s"}.`;
      await loadRuns();
    } catch (e) { if (!(e instanceof SignedOut)) { note.textContent = ""; note.append(el("span", { class: "err", role: "alert" }, e.message)); } }
    finally { button.disabled = false; }
  });
  // Progress, live from the bus: a run's row follows its calls as they are judged.
  const events = new EventSource("/tests/stream");
  cleanups.push(() => events.close());
  events.addEventListener("progress", async (ev) => {
    const p = JSON.parse(ev.data);
    const known = runRows.get(p.run_id);
    if (!known) { await loadRuns(); return; }
    known.status.textContent = p.status; known.status.className = `run-status st-${p.status}`;
    known.progress.textContent = `${p.done}/${p.total} calls, ${p.passed} passed`;
    if (!known.details.hidden && p.result) await fillDetails(p.run_id, known.details.firstChild);
    if (["passed", "failed", "error"].includes(p.status)) await loadHistory();
  });
  await Promise.all([loadRuns(), loadHistory()]);
  const wanted = new URLSearchParams(location.search).get("run");
  if (wanted && stillHere()) await focusRun(wanted);
}

render();
})();
