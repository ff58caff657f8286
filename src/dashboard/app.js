// The dashboard: lists the runs (GET /runs), follows one run's events
// (GET /runs/{id}/events) and cancels it (POST /runs/{id}/cancel).
//
// Everything the API answers is untrusted (prompts and events come from
// users and agents), so it only ever reaches the page through textContent
// and attributes, never as markup. The token lives in sessionStorage and
// travels only in the Authorization header.
"use strict";

const TOKEN_KEY = "sandstorm.token";
const STATUSES = ["running", "idle", "succeeded", "failed", "cancelled", "expired"];
// Today's totals read at most this many pages of 200 runs.
const TOTAL_PAGES = 10;
// A live view reconnects after a `detached` event at most this many times
// in a row without a new event.
const RECONNECTS = 5;

const $ = (id) => document.getElementById(id);

const state = {
  status: "",
  cursor: null,
  // The live view's stream, aborted when the view closes.
  live: null,
};

// ---- the API -------------------------------------------------------------

class SignedOut extends Error {}

function token() {
  return sessionStorage.getItem(TOKEN_KEY);
}

function headers() {
  const h = { Accept: "application/json" };
  const t = token();
  if (t) h.Authorization = "Bearer " + t;
  return h;
}

// The message of an API error body ({"error": {"message"}}), or the status.
async function failure(response) {
  let message = "";
  try {
    const body = await response.json();
    message = body && body.error && typeof body.error.message === "string" ? body.error.message : "";
  } catch (_) {
    // Not JSON: the status says enough.
  }
  return new Error(message || "the server answered " + response.status);
}

async function api(path, options = {}) {
  const response = await fetch(path, { ...options, headers: { ...headers(), ...(options.headers || {}) }, cache: "no-store" });
  if (response.status === 401) throw new SignedOut();
  if (!response.ok) throw await failure(response);
  return response.json();
}

// ---- formatting ----------------------------------------------------------

function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else node.setAttribute(key, value);
  }
  for (const child of children) node.append(child);
  return node;
}

function money(usd) {
  if (typeof usd !== "number") return "–";
  return usd < 0.01 && usd > 0 ? "$" + usd.toFixed(4) : "$" + usd.toFixed(2);
}

function duration(ms) {
  if (typeof ms !== "number") return "–";
  const s = ms / 1000;
  if (s < 60) return s.toFixed(s < 10 ? 1 : 0) + " s";
  const m = Math.floor(s / 60);
  if (m < 60) return m + " m " + Math.round(s % 60) + " s";
  return Math.floor(m / 60) + " h " + (m % 60) + " m";
}

function when(iso) {
  const date = new Date(iso);
  if (isNaN(date)) return "–";
  const today = new Date().toDateString() === date.toDateString();
  return today
    ? date.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit" })
    : date.toLocaleString([], { month: "short", day: "numeric", hour: "2-digit", minute: "2-digit" });
}

// How long a run took, or has taken so far.
function runDuration(run) {
  if (typeof run.duration_ms === "number") return duration(run.duration_ms);
  const started = Date.parse(run.created_at);
  if ((run.status === "running" || run.status === "idle") && !isNaN(started)) {
    return duration(Date.now() - started);
  }
  return "–";
}

function statusBadge(status) {
  const name = typeof status === "string" ? status : "unknown";
  const known = STATUSES.includes(name) ? name : "unknown";
  return el("span", { class: "status " + known, text: name });
}

function text(value, fallback = "–") {
  return value === null || value === undefined || value === "" ? fallback : String(value);
}

// ---- views ---------------------------------------------------------------

function show(view) {
  for (const id of ["loading", "signin", "runs-view", "run-view"]) $(id).hidden = id !== view;
  const signedIn = view === "runs-view" || view === "run-view";
  $("refresh").hidden = !signedIn;
  $("signout").hidden = !(signedIn && token());
}

function signIn(message) {
  stopLive();
  show("signin");
  $("signin-error").textContent = message || "";
  $("token").value = "";
  $("token").focus();
}

// Every failure lands here: a 401 asks for the token, the rest is shown.
function failed(error, where) {
  if (error instanceof SignedOut) {
    const had = token();
    sessionStorage.removeItem(TOKEN_KEY);
    signIn(had ? "That token was not accepted." : "");
    return;
  }
  where.textContent = error && error.message ? error.message : String(error);
  where.hidden = false;
}

// ---- the list ------------------------------------------------------------

function filters() {
  const nav = $("filters");
  nav.replaceChildren();
  for (const status of ["", ...STATUSES]) {
    const button = el("button", { type: "button", "aria-pressed": String(state.status === status), text: status || "all" });
    button.addEventListener("click", () => {
      state.status = status;
      loadRuns();
    });
    nav.append(button);
  }
}

function row(run) {
  const id = text(run.run_id, "");
  const href = "#run/" + encodeURIComponent(id);
  const prompt = el("a", { href, text: text(run.prompt, "(no prompt)") });
  const tr = el(
    "tr",
    { "data-run-id": id },
    el("td", { class: "status-cell", "data-label": "Status" }, statusBadge(run.status)),
    el("td", { "data-label": "Started", text: when(run.created_at) }),
    el("td", { class: "prompt", title: text(run.prompt, "") }, prompt),
    el("td", { class: "model", "data-label": "Model", text: text(run.model) }),
    el("td", { class: "num", "data-label": "Cost", text: money(run.total_cost_usd) }),
    el("td", { class: "num", "data-label": "Turns", text: text(run.turns) }),
    el("td", { class: "num", "data-label": "Duration", text: runDuration(run) }),
  );
  tr.addEventListener("click", (event) => {
    if (event.target.closest("a")) return;
    location.hash = href;
  });
  return tr;
}

function listPath(cursor) {
  const query = new URLSearchParams({ limit: "50" });
  if (state.status) query.set("status", state.status);
  if (cursor) query.set("cursor", cursor);
  return "/runs?" + query;
}

async function loadRuns() {
  filters();
  $("list-error").hidden = true;
  try {
    const page = await api(listPath(null));
    show("runs-view");
    $("runs-body").replaceChildren(...(page.runs || []).map(row));
    setCursor(page.next_cursor);
    $("empty").hidden = (page.runs || []).length > 0;
    loadTotals();
  } catch (error) {
    show("runs-view");
    failed(error, $("list-error"));
  }
}

function setCursor(cursor) {
  state.cursor = typeof cursor === "string" ? cursor : null;
  $("more").hidden = !state.cursor;
}

async function more() {
  if (!state.cursor) return;
  $("more").disabled = true;
  try {
    const page = await api(listPath(state.cursor));
    $("runs-body").append(...(page.runs || []).map(row));
    setCursor(page.next_cursor);
  } catch (error) {
    failed(error, $("list-error"));
  } finally {
    $("more").disabled = false;
  }
}

// Today's runs, cost and failures, from local midnight.
async function loadTotals() {
  const midnight = new Date();
  midnight.setHours(0, 0, 0, 0);
  const query = new URLSearchParams({ since: midnight.toISOString(), limit: "200" });
  let runs = 0, cost = 0, failures = 0, running = 0, cursor = null;
  try {
    for (let page = 0; page < TOTAL_PAGES; page++) {
      if (cursor) query.set("cursor", cursor);
      const body = await api("/runs?" + query);
      for (const run of body.runs || []) {
        runs += 1;
        if (typeof run.total_cost_usd === "number") cost += run.total_cost_usd;
        if (run.status === "failed" || run.status === "expired") failures += 1;
        if (run.status === "running") running += 1;
      }
      cursor = body.next_cursor;
      if (typeof cursor !== "string") break;
    }
  } catch (error) {
    if (error instanceof SignedOut) return failed(error);
    // The list still shows; the totals say they are unknown.
    runs = cost = failures = running = null;
  }
  $("total-runs").textContent = runs === null ? "?" : String(runs);
  $("total-cost").textContent = cost === null ? "?" : money(cost);
  $("total-failures").textContent = failures === null ? "?" : String(failures);
  $("total-running").textContent = running === null ? "?" : String(running);
}

// ---- one run -------------------------------------------------------------

function fact(name, value) {
  return el("div", {}, el("dt", { text: name }), el("dd", { text: value }));
}

function showRun(run) {
  $("run-status").replaceWith(Object.assign(statusBadge(run.status), { id: "run-status" }));
  const labels = run.labels && typeof run.labels === "object"
    ? Object.entries(run.labels).map(([k, v]) => k + "=" + v).join(", ")
    : "";
  $("run-facts").replaceChildren(
    fact("Started", when(run.created_at)),
    fact("Model", text(run.model)),
    fact("Cost", money(run.total_cost_usd)),
    fact("Turns", text(run.turns)),
    fact("Duration", runDuration(run)),
    fact("Kind", run.detached ? "detached" : "attached"),
    ...(run.error_type ? [fact("Error", String(run.error_type))] : []),
    ...(labels ? [fact("Labels", labels)] : []),
  );
  $("run-prompt").textContent = text(run.prompt, "");
  const live = run.status === "running" || run.status === "idle";
  $("cancel").hidden = !live;
}

async function openRun(id) {
  stopLive();
  show("run-view");
  $("run-title").textContent = id;
  $("run-facts").replaceChildren();
  $("events").replaceChildren();
  $("cancel-outcome").textContent = "";
  $("cancel").hidden = true;
  $("cancel").disabled = false;
  $("live-state").textContent = "";
  let run;
  try {
    run = await api("/runs/" + encodeURIComponent(id));
  } catch (error) {
    failed(error, $("live-state"));
    return;
  }
  showRun(run);
  follow(id);
}

async function refreshRun(id) {
  try {
    showRun(await api("/runs/" + encodeURIComponent(id)));
  } catch (error) {
    if (error instanceof SignedOut) failed(error);
  }
}

function stopLive() {
  if (state.live) state.live.abort();
  state.live = null;
}

// One event as the live view shows it: a kind, a line of text, and for
// tool calls and results their details.
function describe(event) {
  const type = typeof event.type === "string" ? event.type : "event";
  const content = event.message && Array.isArray(event.message.content) ? event.message.content : [];
  switch (type) {
    case "run":
      return [{ kind: "run", text: "Run started; its sandbox lives until " + when(event.expires_at) }];
    case "turn":
      return [{ kind: "turn", text: "Turn " + text(event.turn) }];
    case "system":
      return event.subtype === "init"
        ? [{ kind: "agent", text: "Agent started on " + text(event.model) }]
        : [{ kind: "system", text: text(event.subtype, "") }];
    case "assistant":
      return content.map((block) => {
        if (block.type === "text") return { kind: "assistant", cls: "assistant", text: text(block.text, "") };
        if (block.type === "tool_use") {
          return { kind: "tool call", cls: "tool", text: text(block.name), detail: JSON.stringify(block.input, null, 2) };
        }
        if (block.type === "thinking") return { kind: "thinking", text: text(block.thinking, "") };
        return { kind: text(block.type, "assistant"), text: "" };
      });
    case "user":
      return content
        .filter((block) => block.type === "tool_result")
        .map((block) => ({
          kind: block.is_error ? "tool error" : "tool result",
          cls: block.is_error ? "error" : "tool",
          text: "",
          detail: typeof block.content === "string" ? block.content : JSON.stringify(block.content, null, 2),
        }));
    case "result":
      return [{
        kind: "result",
        cls: event.is_error ? "error" : "result",
        text: text(event.result, text(event.subtype, "")),
        detail: "cost " + money(event.total_cost_usd) + " · " + text(event.num_turns) + " turns · " + duration(event.duration_ms),
      }];
    case "error":
      return [{ kind: "error: " + text(event.error_type, "?"), cls: "error", text: text(event.error, "") }];
    case "stderr":
      return [{ kind: "stderr", text: text(event.data, "") }];
    case "done":
      return [{ kind: "done", cls: event.status === "success" ? "done-ok" : "done-bad", text: "Status: " + text(event.status) }];
    case "detached":
      return [];
    case "omitted":
      return [{ kind: "omitted", cls: "error", text: text(event.message, "") }];
    default:
      return [{ kind: type, text: "" }];
  }
}

function render(id, event) {
  const items = describe(event);
  for (const item of items) {
    const li = el("li", { class: "event " + (item.cls || "") });
    li.dataset.type = typeof event.type === "string" ? event.type : "";
    if (id) li.append(el("span", { class: "id", text: "#" + id }));
    li.append(el("div", { class: "kind", text: item.kind }));
    if (item.text) li.append(el("div", { class: "text", text: item.text }));
    if (item.detail) li.append(el("pre", { text: item.detail }));
    $("events").append(li);
  }
  if (items.length && window.scrollY + window.innerHeight >= document.body.scrollHeight - 120) {
    window.scrollTo(0, document.body.scrollHeight);
  }
}

// Reads one SSE response: calls `onEvent(id, data)` per event. A server
// keepalive is a comment line and is skipped.
async function readSse(response, onEvent) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true }).replace(/\r\n?/g, "\n");
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      let id = null;
      const data = [];
      for (const line of block.split("\n")) {
        if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
        else if (line.startsWith("id:")) id = line.slice(3).trim();
      }
      if (data.length) onEvent(id, data.join("\n"));
    }
  }
}

// Follows a run's events until its `done`, picking up after the last id
// when a stream detaches (a platform deadline) before the end.
async function follow(runId) {
  const controller = new AbortController();
  state.live = controller;
  const path = "/runs/" + encodeURIComponent(runId) + "/events";
  let last = null, finished = false, quiet = 0, stored = false;
  $("live-state").textContent = "· connecting";
  while (!finished && quiet < RECONNECTS && state.live === controller) {
    let progressed = false;
    try {
      const extra = last ? { "Last-Event-ID": last } : {};
      const response = await fetch(path, { headers: { ...headers(), Accept: "text/event-stream", ...extra }, signal: controller.signal, cache: "no-store" });
      if (response.status === 401) throw new SignedOut();
      if (response.status === 404) {
        $("live-state").textContent = "· not live: the run's sandbox is gone, and its events with it (SANDSTORM_STORE_EVENTS=1 keeps them)";
        return;
      }
      if (!response.ok) throw await failure(response);
      // A finished run's events, kept by the history: the same events, not live.
      stored = response.headers.get("x-events-source") === "history";
      $("live-state").textContent = stored ? "· stored: the run's sandbox is gone" : "· live";
      await readSse(response, (id, data) => {
        let event;
        try {
          event = JSON.parse(data);
        } catch (_) {
          return;
        }
        if (!event || typeof event !== "object") return;
        if (id) last = id;
        progressed = true;
        render(id, event);
        if (event.type === "done") {
          finished = true;
          refreshRun(runId);
        }
      });
    } catch (error) {
      if (controller.signal.aborted) return;
      if (error instanceof SignedOut) return failed(error);
      $("live-state").textContent = "· " + (error && error.message ? error.message : "the stream broke");
    }
    quiet = progressed ? 0 : quiet + 1;
  }
  if (state.live !== controller) return;
  state.live = null;
  $("live-state").textContent = finished
    ? (stored ? "· finished (its stored events)" : "· finished")
    : "· the stream ended before the run did";
}

async function cancel() {
  const id = $("run-title").textContent;
  const button = $("cancel");
  button.disabled = true;
  $("cancel-outcome").textContent = "Cancelling…";
  try {
    const run = await api("/runs/" + encodeURIComponent(id) + "/cancel", { method: "POST" });
    $("cancel-outcome").textContent = "Cancelled: the run is " + text(run.status) + ".";
    button.hidden = true;
  } catch (error) {
    if (error instanceof SignedOut) return failed(error);
    $("cancel-outcome").textContent = "Cancel failed: " + error.message;
    button.disabled = false;
  }
}

// ---- wiring --------------------------------------------------------------

function route() {
  const match = /^#run\/(.+)$/.exec(location.hash);
  if (match) {
    let id;
    try {
      id = decodeURIComponent(match[1]);
    } catch (_) {
      id = "";
    }
    if (id) return openRun(id);
  }
  stopLive();
  loadRuns();
}

document.addEventListener("DOMContentLoaded", () => {
  $("signin-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const value = $("token").value.trim();
    $("token").value = "";
    if (!value) return;
    sessionStorage.setItem(TOKEN_KEY, value);
    route();
  });
  $("signout").addEventListener("click", () => {
    sessionStorage.removeItem(TOKEN_KEY);
    signIn("Signed out.");
  });
  $("refresh").addEventListener("click", route);
  $("more").addEventListener("click", more);
  $("cancel").addEventListener("click", cancel);
  window.addEventListener("hashchange", route);
  route();
});
