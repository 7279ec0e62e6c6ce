// The dashboard: a served file, since the page's Content-Security-Policy allows no inline script.
"use strict";
const $ = (id) => document.getElementById(id);
const KEY = "dialtone.adminToken";
// The token lives in sessionStorage: gone when the tab closes, never shared with other tabs.
const store = window.sessionStorage;
localStorage.removeItem(KEY); // where earlier versions kept it
let nextCursor = null;

// Text goes into the page only through textContent, never innerHTML: transcripts are caller input.
function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) k === "class" ? (node.className = v) : node.setAttribute(k, v);
  for (const c of children) node.append(c instanceof Node ? c : String(c ?? ""));
  return node;
}
const when = (iso) => (iso ? new Date(iso).toLocaleString() : "");
const secs = (s) => (s == null ? "" : `${Math.floor(s / 60)}:${String(Math.round(s % 60)).padStart(2, "0")}`);

// An error body's detail is a sentence, or for a 422 a list of {loc, msg}.
function problem(body, fallback) {
  const d = body && body.detail;
  if (typeof d === "string") return d;
  if (Array.isArray(d)) return d.map((e) => `${(e.loc || []).slice(-1)[0] || ""}: ${e.msg}`).join("; ");
  return fallback;
}

async function api(path) {
  const token = store.getItem(KEY);
  const res = await fetch(path, { headers: { Authorization: `Bearer ${token}` } });
  const body = await res.json().catch(() => null);
  // Signed out while this was in flight: its answer must not reach the page.
  if (store.getItem(KEY) !== token) throw new Error("signed out");
  if (res.status === 401) { showLogin("The token was not accepted."); throw new Error("unauthorized"); }
  if (!res.ok) throw new Error(problem(body, res.statusText));
  return body;
}

const NO_SELECTION = () => el("p", { class: "muted" }, "Select a call to see its transcript.");

// Signed out, no call data stays on the page: hidden is not enough, it is removed.
function showLogin(message = "") {
  store.removeItem(KEY);
  $("app").hidden = true; $("logout").hidden = true; $("login").hidden = false;
  $("rows").replaceChildren(); $("detail").replaceChildren(NO_SELECTION());
  $("filters").reset(); $("list-status").textContent = ""; $("live").textContent = "";
  $("more").hidden = true; nextCursor = null;
  $("login-error").textContent = message;
}

function query(cursor) {
  const params = new URLSearchParams();
  for (const [k, v] of new FormData($("filters"))) if (v) params.set(k, v);
  if (cursor) params.set("cursor", cursor);
  params.set("limit", "50");
  return params;
}

async function loadSessions(append) {
  $("list-status").textContent = "Loading…";
  try {
    const page = await api(`/sessions?${query(append ? nextCursor : null)}`);
    if (!append) $("rows").replaceChildren();
    for (const s of page.items) {
      const row = el("tr", {}, el("td", {}, when(s.started_at)), el("td", {}, s.from_number || ""),
        el("td", {}, s.agent || ""), el("td", {}, s.outcome || s.status || ""), el("td", {}, secs(s.duration_s)));
      row.addEventListener("click", () => {
        document.querySelectorAll("tr.sel").forEach((r) => r.classList.remove("sel"));
        row.classList.add("sel"); showSession(s.call_sid);
      });
      $("rows").append(row);
    }
    nextCursor = page.next_cursor;
    $("more").hidden = !nextCursor;
    $("list-status").textContent = $("rows").children.length ? "" : "No calls match.";
  } catch (e) { $("list-status").textContent = e.message; }
}

async function showSession(sid) {
  const box = $("detail");
  box.replaceChildren(el("p", { class: "muted" }, "Loading…"));
  let s;
  try { s = await api(`/sessions/${encodeURIComponent(sid)}`); }
  catch (e) { box.replaceChildren(el("p", { class: "err" }, e.message)); return; }
  const facts = [["Call", s.call_sid], ["From → to", `${s.from_number || "?"} → ${s.to_number || "?"}`],
    ["Agent", s.agent], ["Status", s.status], ["Outcome", s.outcome], ["Started", when(s.started_at)],
    ["Ended", `${when(s.ended_at)} ${s.end_reason ? `(${s.end_reason})` : ""}`], ["Duration", secs(s.duration_s)],
    ["Cost", `$${s.cost_usd.toFixed(4)}`], ["Transferred to", s.transferred_to]];
  const dl = el("dl");
  for (const [k, v] of facts) if (v) dl.append(el("dt", {}, k), el("dd", {}, v));
  // Lines and tool calls share the conversation's seq, so they interleave in the order they happened.
  const entries = [...s.transcript.map((t) => ({ seq: t.seq, line: t })), ...s.tool_calls.map((t) => ({ seq: t.seq, tool: t }))]
    .sort((a, b) => a.seq - b.seq);
  const convo = el("div");
  for (const e of entries) {
    if (e.line) {
      const t = e.line;
      convo.append(el("div", { class: `line ${t.role}` },
        el("div", { class: "who" }, t.role === "agent" ? `agent · ${t.agent}` : "caller", t.interrupted ? " · interrupted" : ""),
        t.text));
    } else {
      const t = e.tool;
      convo.append(el("div", { class: "tool" }, el("strong", {}, `${t.name}`),
        el("span", { class: "muted" }, ` · ${t.agent} · ${Math.round(t.duration_ms)} ms · ${t.ok ? "ok" : "failed"}`),
        el("pre", {}, `arguments: ${JSON.stringify(t.arguments, null, 1)}`),
        el("pre", {}, t.ok ? `result: ${JSON.stringify(t.result, null, 1)}` : `error: ${t.error}`)));
    }
  }
  box.replaceChildren(dl, el("h3", {}, "Conversation"), entries.length ? convo : el("p", { class: "muted" }, "No transcript."));
}

async function refreshLive() {
  try { const live = await api("/live"); $("live").textContent = `${live.items.length} live call(s)`; }
  catch { $("live").textContent = ""; }
}

function start() {
  $("login").hidden = true; $("app").hidden = false; $("logout").hidden = false;
  $("detail").replaceChildren(NO_SELECTION());
  loadSessions(false); refreshLive();
}

$("login-form").addEventListener("submit", (ev) => {
  ev.preventDefault(); store.setItem(KEY, $("token").value.trim()); $("token").value = ""; start();
});
$("filters").addEventListener("submit", (ev) => { ev.preventDefault(); loadSessions(false); });
$("more").addEventListener("click", () => loadSessions(true));
$("logout").addEventListener("click", () => showLogin());
setInterval(() => { if (store.getItem(KEY)) refreshLive(); }, 5000);
store.getItem(KEY) ? start() : showLogin();
