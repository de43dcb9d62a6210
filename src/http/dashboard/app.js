// oprun dashboard: one file, no framework, no build step.
//
// Layout
// - Helpers: DOM building (text only, never innerHTML with data), formatting, ids.
// - API: fetch with the bearer token, Google JSON errors as ApiError, and an SSE reader
//   (fetch + getReader, because EventSource cannot send an Authorization header).
// - Shell: the caller's role, the sign-in view, the banner, the connection indicator, the
//   confirmation dialog and the hash router. Each page gets a fresh `ctx` whose AbortSignal
//   ends every request, stream and timer of the page when the route changes.
// - Pages: Overview (#/), Operations (#/operations?filter=…), Detail (#/operations/{id}),
//   Schedules (#/schedules), Schedule (#/schedules/{id}), Kinds (#/kinds) and the sign-in
//   view.
"use strict";

(() => {
  // ===================================================================== constants

  const STATES = ["QUEUED", "RUNNING", "SUCCEEDED", "FAILED", "CANCELLED"];
  const PAGE_SIZE = 50;
  // How often the schedule pages read their schedules again (nothing streams them).
  const SCHEDULE_REFRESH_MS = 5000;
  // What each overlap policy does, in a few words.
  const OVERLAP_TEXT = {
    SKIP: "a fire is skipped while the previous run is not done",
    ALLOW: "every fire starts a run, whatever the previous runs do",
    BUFFER_ONE: "one fire waits for the previous run to end; more are skipped",
    CANCEL_PREVIOUS: "a fire cancels the previous run if it is not done",
  };
  const TOKEN_KEY = "oprun.token";
  const TYPE_PREFIX = "type.googleapis.com/";
  // google.rpc.Code names by number.
  const CODE_NAMES = [
    "OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND",
    "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION",
    "ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS",
    "UNAUTHENTICATED",
  ];
  // Inputs the Submit form starts with, by kind.
  const INPUT_EXAMPLES = { sleep: '{"duration":"10s","steps":10}' };
  // Errors after which reopening a stream cannot help.
  const FINAL_STREAM_ERRORS = new Set([
    "INVALID_ARGUMENT", "NOT_FOUND", "UNAUTHENTICATED", "PERMISSION_DENIED",
    "FAILED_PRECONDITION", "UNIMPLEMENTED",
  ]);

  // ===================================================================== DOM helpers

  /**
   * Builds an element. `attrs` keys: `class`, `text`, `on<event>` (listener), DOM properties
   * for `hidden`, `checked`, `disabled`, `value`; everything else goes through setAttribute.
   * Children may be nodes, strings (as text), or null/false (skipped).
   */
  function h(tag, attrs, ...children) {
    const el = document.createElement(tag);
    setAttrs(el, attrs);
    append(el, children);
    return el;
  }

  const SVG_NS = "http://www.w3.org/2000/svg";
  function svg(tag, attrs, ...children) {
    const el = document.createElementNS(SVG_NS, tag);
    setAttrs(el, attrs);
    append(el, children);
    return el;
  }

  function setAttrs(el, attrs) {
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === undefined || value === null || value === false) continue;
      if (key === "text") el.textContent = String(value);
      else if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
      else if (key === "hidden" || key === "checked" || key === "disabled" || key === "value") {
        el[key] = value;
      } else el.setAttribute(key, value === true ? "" : String(value));
    }
  }

  function append(el, children) {
    for (const child of children.flat()) {
      if (child === null || child === undefined || child === false) continue;
      el.append(typeof child === "string" || typeof child === "number" ? String(child) : child);
    }
  }

  function clear(el) {
    el.replaceChildren();
    return el;
  }

  const $ = (id) => document.getElementById(id);

  // ===================================================================== formatting

  /** The 32-hex id of `operations/{id}`. */
  const opId = (name) => String(name || "").replace(/^operations\//, "");
  /** Ids start with a timestamp; their random tail tells operations apart at a glance. */
  const shortId = (name) => "…" + opId(name).slice(-8);
  const opHref = (name) => "#/operations/" + encodeURIComponent(opId(name));
  /** The id of `schedules/{id}`. */
  const schedId = (name) => String(name || "").replace(/^schedules\//, "");
  const schedHref = (name) => "#/schedules/" + encodeURIComponent(schedId(name));
  /** The operations list, filtered to the operations a schedule started. */
  const schedRunsHref = (name) => "#/operations?filter=" + encodeURIComponent(`schedule = "${name}"`);

  const codeName = (code) => CODE_NAMES[code || 0] || "CODE_" + code;
  const toInt = (s) => (s === undefined || s === null || s === "" ? 0 : Number(s));
  const meta = (op) => (op && op.metadata) || {};
  const stateOf = (op) => meta(op).state || "STATE_UNSPECIFIED";
  /** A Timestamp's milliseconds (0 when absent); compare these, not the strings, whose
   * fractional digits vary. */
  const ts = (iso) => (iso ? Date.parse(iso) || 0 : 0);
  const createdMs = (op) => ts(meta(op).createTime);
  const typeName = (any) => String((any && any["@type"]) || "").replace(TYPE_PREFIX, "");

  /** "3 min ago" / "in 2 min" relative to now. */
  function relTime(iso) {
    const t = Date.parse(iso);
    if (Number.isNaN(t)) return String(iso);
    const secs = Math.round((Date.now() - t) / 1000);
    const abs = Math.abs(secs);
    let text;
    if (abs < 5) return secs >= 0 ? "just now" : "in a moment";
    if (abs < 60) text = abs + " s";
    else if (abs < 3600) text = Math.floor(abs / 60) + " min";
    else if (abs < 86400) text = Math.floor(abs / 3600) + " h";
    else text = Math.floor(abs / 86400) + " d";
    return secs >= 0 ? text + " ago" : "in " + text;
  }

  /** A <time> showing the relative time, the exact one on hover; refreshed by tickTimes. */
  function timeEl(iso) {
    if (!iso) return h("span", { class: "muted", text: "—" });
    return h("time", { datetime: iso, title: iso, "data-rel": "", text: relTime(iso) });
  }

  /** Keeps relative times true while a page stays open (local only: no request). */
  function tickTimes() {
    for (const el of document.querySelectorAll("time[data-rel]")) {
      el.textContent = relTime(el.getAttribute("datetime"));
    }
  }

  function badge(state) {
    return h("span", { class: "badge", "data-state": state, "data-testid": "state", text: state });
  }

  /**
   * A progress bar with "completed/total unit · pct%" beside it. With no total it shows the
   * browser's indeterminate bar while the operation is not done.
   */
  function progressEl(op, large) {
    const p = meta(op).progress || {};
    const completed = toInt(p.completed);
    const total = toInt(p.total);
    const unit = p.unit ? " " + p.unit : "";
    const bar = h("progress", { "data-testid": "progress", "aria-label": "Progress" });
    let text;
    if (total > 0) {
      bar.max = total;
      bar.value = Math.min(completed, total);
      text = `${completed}/${total}${unit} · ${Math.floor((100 * completed) / total)}%`;
    } else if (op.done) {
      bar.max = 1;
      bar.value = op.error ? 0 : 1;
      text = completed ? `${completed}${unit}` : "—";
    } else {
      // No value attribute: indeterminate.
      text = completed ? `${completed}${unit}` : "";
    }
    return h(
      "span",
      {
        class: large ? "progress large" : "progress",
        "data-completed": completed,
        "data-total": total,
      },
      bar,
      h("span", { class: "progress-text", "data-testid": "progress-text", text }),
    );
  }

  const prettyJson = (value) => JSON.stringify(value, null, 2);

  /**
   * A task input for reading: its JSON without "@type" (a well-known type, such as the
   * Struct of a script's kind, as its `value`).
   */
  function inputJson(input) {
    const { "@type": _type, ...fields } = input || {};
    const wellKnown = typeName(input).startsWith("google.protobuf.") && "value" in fields;
    return prettyJson(wellKnown ? fields.value : fields);
  }

  /** A Duration's JSON ("5400s", "0.100s") for a person: "1h 30m", "0.1s". */
  function durText(d) {
    const secs = Number(String(d || "").replace(/s$/, ""));
    if (!d || Number.isNaN(secs)) return String(d || "");
    if (!Number.isInteger(secs) || secs < 60) return secs + "s";
    const parts = [];
    let rest = secs;
    for (const [unit, n] of [["d", 86400], ["h", 3600], ["m", 60], ["s", 1]]) {
      if (rest >= n) {
        parts.push(Math.floor(rest / n) + unit);
        rest %= n;
      }
    }
    return parts.join(" ");
  }

  /** A schedule's spec: "0 3 * * * (Europe/Paris)" or "every 30s". */
  function specText(s) {
    if (s.cron) return `${s.cron} (${s.timeZone || "UTC"})`;
    if (s.interval) return "every " + durText(s.interval);
    return "—";
  }

  /** A random UUID, also where crypto.randomUUID is missing (plain HTTP off loopback). */
  function uuid() {
    if (crypto.randomUUID) return crypto.randomUUID();
    const b = crypto.getRandomValues(new Uint8Array(16));
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    const hex = [...b].map((x) => x.toString(16).padStart(2, "0")).join("");
    return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
  }

  /** Resolves after `ms`, or at once when `signal` aborts. */
  function sleep(ms, signal) {
    return new Promise((resolve) => {
      const timer = setTimeout(resolve, ms);
      signal && signal.addEventListener("abort", () => { clearTimeout(timer); resolve(); }, { once: true });
    });
  }

  // ===================================================================== API

  /** A Google JSON error (or a transport failure, as UNAVAILABLE). */
  class ApiError extends Error {
    constructor(status, message, httpStatus, details) {
      super(message);
      this.status = status;
      this.httpStatus = httpStatus || 0;
      this.details = details || [];
    }
    toString() {
      return `${this.status}: ${this.message}`;
    }
  }

  const HTTP_STATUS_NAMES = {
    400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED", 404: "NOT_FOUND",
    409: "ABORTED", 429: "RESOURCE_EXHAUSTED", 500: "INTERNAL", 501: "UNIMPLEMENTED",
    503: "UNAVAILABLE", 504: "DEADLINE_EXCEEDED",
  };

  /** Turns `{"error":{...}}` (or whatever a proxy sent) into an ApiError. */
  function errorFromBody(httpStatus, text) {
    let err = null;
    try {
      err = JSON.parse(text).error;
    } catch (_) {
      // not JSON: fall through
    }
    if (err && typeof err === "object") {
      return new ApiError(
        err.status || (err.code ? codeName(err.code) : HTTP_STATUS_NAMES[httpStatus]) || "UNKNOWN",
        err.message || "",
        httpStatus,
        err.details,
      );
    }
    return new ApiError(HTTP_STATUS_NAMES[httpStatus] || "UNKNOWN",
      (text || "").trim() || `HTTP ${httpStatus}`, httpStatus);
  }

  function authHeaders(extra) {
    const headers = Object.assign({}, extra);
    const token = sessionStorage.getItem(TOKEN_KEY);
    if (token) headers.Authorization = "Bearer " + token;
    return headers;
  }

  async function rawFetch(path, init) {
    try {
      return await fetch(path, init);
    } catch (e) {
      if (init && init.signal && init.signal.aborted) throw e;
      throw new ApiError("UNAVAILABLE", "cannot reach the server (" + e.message + ")");
    }
  }

  /**
   * Calls the REST API. Rejects with ApiError; a 401 also shows the sign-in view (the
   * caller still sees the rejection, and should simply stop).
   */
  async function api(method, path, body, signal) {
    const init = { method, headers: authHeaders({ Accept: "application/json" }), signal };
    if (body !== undefined) {
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    const res = await rawFetch(path, init);
    const text = await res.text();
    if (!res.ok) throw noteAuthError(errorFromBody(res.status, text));
    setConnOk();
    return text ? JSON.parse(text) : {};
  }

  function noteAuthError(err) {
    if (err.status === "UNAUTHENTICATED") showSignIn(err);
    return err;
  }

  /**
   * Reads a server-sent event stream with fetch, so the bearer token goes along.
   * `onOpen` runs once the response is 200; `onEvent` gets each `data:` JSON.
   * Resolves when the server closes the stream; rejects with ApiError on a non-200 answer
   * or an `event: error`.
   */
  async function readSse(path, signal, onOpen, onEvent) {
    const res = await rawFetch(path, {
      headers: authHeaders({ Accept: "text/event-stream" }),
      signal,
      cache: "no-store",
    });
    if (!res.ok) throw noteAuthError(errorFromBody(res.status, await res.text()));
    onOpen();
    const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    let eventType = "message";
    let data = [];
    const dispatch = () => {
      if (data.length === 0) {
        eventType = "message";
        return;
      }
      const payload = data.join("\n");
      const type = eventType;
      eventType = "message";
      data = [];
      if (type === "error") throw noteAuthError(errorFromBody(0, payload));
      let value;
      try {
        value = JSON.parse(payload);
      } catch (_) {
        return; // not ours to show
      }
      if (value && value.error && !value.name) throw noteAuthError(errorFromBody(0, payload));
      onEvent(value);
    };
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += value;
        const lines = buffer.split(/\r\n|\r|\n/);
        buffer = lines.pop(); // the last piece may be an unfinished line
        for (const line of lines) {
          if (line === "") dispatch();
          else if (line.startsWith(":")) continue; // comment / keep-alive
          else {
            const colon = line.indexOf(":");
            const field = colon < 0 ? line : line.slice(0, colon);
            let val = colon < 0 ? "" : line.slice(colon + 1);
            if (val.startsWith(" ")) val = val.slice(1);
            if (field === "data") data.push(val);
            else if (field === "event") eventType = val;
          }
        }
      }
      dispatch();
    } finally {
      reader.cancel().catch(() => {});
    }
  }

  /**
   * Keeps a watch stream open for the page's lifetime: reopens it with backoff when it
   * ends or fails for a reason a retry can mend. `onOpen` runs on every (re)connect, so a
   * page can re-list what it may have missed. `until()` true stops after a clean close.
   * `onFinalError` gets an error a retry cannot mend.
   */
  function keepWatching(ctx, path, { onOpen, onEvent, onFinalError, until, indicator = true }) {
    let backoff = 500;
    let openedAt = 0;
    // Only the page's main stream drives the header's indicator.
    const conn = indicator ? setConn : () => {};
    (async () => {
      conn("connecting");
      while (!ctx.signal.aborted) {
        try {
          await readSse(path, ctx.signal, () => {
            openedAt = Date.now();
            conn("live");
            onOpen && onOpen();
          }, onEvent);
          if (ctx.signal.aborted || (until && until())) {
            if (!ctx.signal.aborted) conn("ready");
            return;
          }
        } catch (err) {
          if (ctx.signal.aborted) return;
          if (err instanceof ApiError && FINAL_STREAM_ERRORS.has(err.status)) {
            conn("ready");
            onFinalError && onFinalError(err);
            return;
          }
          if (!(err instanceof ApiError)) console.warn("watch failed", err);
        }
        // Start over only after a stream that stayed up: one that opens and fails at once
        // (a 200 then `event: error`) must still back off.
        if (openedAt && Date.now() - openedAt >= 10000) backoff = 500;
        openedAt = 0;
        conn("reconnecting");
        await sleep(backoff + Math.random() * 250, ctx.signal);
        backoff = Math.min(backoff * 2, 15000);
      }
    })();
  }

  // ===================================================================== shell: caller

  const session = { caller: null, signInShown: false };

  /** Whether the caller's role allows an action: "submit" (also cancel, rerun) or "delete". */
  function can(action) {
    // Without /v1/caller (an older server) show everything: the server still decides.
    const role = session.caller ? session.caller.role : "ADMIN";
    if (action === "delete") return role === "ADMIN";
    if (action === "submit") return role === "ADMIN" || role === "SUBMITTER";
    return true;
  }

  async function loadCaller() {
    try {
      session.caller = await api("GET", "/v1/caller");
    } catch (err) {
      if (err.status === "UNAUTHENTICATED") throw err;
      session.caller = null;
    }
    renderWho();
  }

  function renderWho() {
    const c = session.caller;
    const who = $("who");
    if (!c) {
      who.textContent = "";
    } else if (c.authenticated) {
      who.textContent = (c.label ? c.label + " · " : "") + String(c.role || "").toLowerCase();
    } else {
      who.textContent = "no sign-in required";
    }
    $("signout").hidden = !sessionStorage.getItem(TOKEN_KEY);
  }

  /** The header's node summary; read at start and whenever a stream reconnects. */
  async function loadNodes() {
    try {
      const res = await api("GET", "/v1/nodes");
      const all = res.nodes || [];
      const nodes = all.filter((n) => !n.session);
      const workers = all.length - nodes.length;
      const live = nodes.filter((n) => n.live).length;
      $("nodes").textContent = (nodes.length === 1
        ? "node " + nodes[0].id
        : `${nodes.length} nodes, ${live} live`) +
        (workers ? `, ${workers} worker${workers === 1 ? "" : "s"}` : "");
      return all;
    } catch (_) {
      return [];
    }
  }

  // ===================================================================== shell: banner, connection

  function showBanner(text) {
    $("banner-text").textContent = text;
    $("banner").hidden = false;
  }

  function hideBanner() {
    $("banner").hidden = true;
  }

  /** Shows an action's failure: a banner, unless the sign-in view already took over. */
  function reportError(err) {
    if (err && err.name === "AbortError") return;
    if (err && err.status === "UNAUTHENTICATED") return;
    showBanner(String(err));
  }

  const CONN_TEXT = {
    connecting: "connecting…",
    live: "live",
    reconnecting: "reconnecting…",
    ready: "connected",
    signin: "sign-in needed",
    offline: "offline",
  };

  function setConn(state) {
    const el = $("conn");
    el.dataset.state = state;
    el.textContent = CONN_TEXT[state] || state;
  }

  /** A request worked: leave "offline", but do not override a stream's own state. */
  function setConnOk() {
    const el = $("conn");
    if (el.dataset.state === "offline" || el.dataset.state === "connecting") setConn("ready");
  }

  // ===================================================================== shell: confirm dialog

  /**
   * Asks before acting. Resolves true when the OK button is pressed, false on "Go back" or
   * Escape. `detail` is shown verbatim in a <pre> (e.g. the filter a batch acts on).
   */
  function confirmAction({ title, message, detail, ok, danger = true }) {
    return askDialog({ title, message, detail, ok, danger, field: null });
  }

  /**
   * As confirmAction, with a one-line text field (`label`, starting as `value`): resolves
   * with its text when OK is pressed (or Enter in the field), null otherwise.
   */
  async function promptAction({ title, message, label, value = "", ok, danger = false }) {
    const yes = await askDialog({ title, message, ok, danger, field: { label, value } });
    return yes ? $("confirm-input").value.trim() : null;
  }

  /** The dialog behind confirmAction and promptAction; resolves true on OK. */
  function askDialog({ title, message, detail, ok, danger, field }) {
    const dialog = $("confirm");
    $("confirm-title").textContent = title;
    $("confirm-message").textContent = message;
    $("confirm-detail").textContent = detail || "";
    $("confirm-detail").hidden = !detail;
    const input = $("confirm-input");
    $("confirm-field").hidden = !field;
    $("confirm-label").textContent = field ? field.label : "";
    input.value = field ? field.value : "";
    const okButton = $("confirm-ok");
    okButton.textContent = ok;
    okButton.className = danger ? "danger" : "primary";
    return new Promise((resolve) => {
      const done = (answer) => {
        okButton.removeEventListener("click", onOk);
        $("confirm-cancel").removeEventListener("click", onBack);
        input.removeEventListener("keydown", onKey);
        dialog.removeEventListener("close", onClose);
        if (dialog.open) dialog.close();
        resolve(answer);
      };
      const onOk = () => done(true);
      const onBack = () => done(false);
      const onClose = () => done(false); // Escape
      const onKey = (e) => {
        if (e.key !== "Enter") return;
        e.preventDefault();
        done(true);
      };
      okButton.addEventListener("click", onOk);
      $("confirm-cancel").addEventListener("click", onBack);
      input.addEventListener("keydown", onKey);
      dialog.addEventListener("close", onClose);
      dialog.showModal();
      if (field) {
        input.focus(); // asked for a text: the field has the focus
        input.select();
      } else {
        $("confirm-cancel").focus(); // the safe choice has the focus
      }
    });
  }

  // ===================================================================== shell: router

  let current = null; // { ctl: AbortController, timers: [] } of the page on screen
  let lastListHash = "#/operations";

  function parseHash() {
    const raw = location.hash.replace(/^#/, "") || "/";
    const q = raw.indexOf("?");
    const path = q < 0 ? raw : raw.slice(0, q);
    const params = new URLSearchParams(q < 0 ? "" : raw.slice(q + 1));
    return { path, params };
  }

  /** Ends everything the page on screen started. */
  function teardown() {
    if (!current) return;
    current.ctl.abort();
    current.timers.forEach(clearInterval);
    current = null;
    // A question asked by the page that is gone answers "no" (its `close` listener).
    if ($("confirm").open) $("confirm").close();
  }

  function newCtx() {
    const ctl = new AbortController();
    const page = { ctl, timers: [] };
    current = page;
    const ctx = {
      signal: ctl.signal,
      every(ms, fn) {
        // This page's list, not whichever page is on screen when called.
        if (!ctl.signal.aborted) page.timers.push(setInterval(fn, ms));
      },
    };
    return ctx;
  }

  function route() {
    teardown();
    hideBanner();
    session.signInShown = false;
    const { path, params } = parseHash();
    const main = clear($("main"));
    const ctx = newCtx();
    ctx.every(15000, tickTimes);
    let section = "";
    if (path === "/" || path === "") {
      section = "overview";
      overviewPage(ctx, main);
    } else if (path === "/operations") {
      section = "operations";
      lastListHash = location.hash || "#/operations";
      listPage(ctx, main, params.get("filter") || "");
    } else if (path.startsWith("/operations/")) {
      section = "operations";
      const id = pathId(path, "/operations/");
      if (id !== null) detailPage(ctx, main, id);
      else notFound(main);
    } else if (path === "/schedules") {
      section = "schedules";
      schedulesPage(ctx, main);
    } else if (path.startsWith("/schedules/")) {
      section = "schedules";
      const id = pathId(path, "/schedules/");
      if (id !== null) schedulePage(ctx, main, id);
      else notFound(main);
    } else if (path === "/kinds") {
      section = "kinds";
      kindsPage(ctx, main);
    } else {
      notFound(main);
    }
    focusFilterOnList = false; // only for the list page this route built
    for (const a of document.querySelectorAll("nav a[data-nav]")) {
      if (a.dataset.nav === section) a.setAttribute("aria-current", "page");
      else a.removeAttribute("aria-current");
    }
  }

  /** The decoded rest of `path` after `prefix`; null for a malformed %-escape. */
  function pathId(path, prefix) {
    try {
      return decodeURIComponent(path.slice(prefix.length));
    } catch (_) {
      return null;
    }
  }

  function notFound(main) {
    document.title = "Not found · oprun";
    setConn("ready");
    main.append(h("h1", { text: "Page not found" }), h("p", {}, h("a", { href: "#/", text: "Go to the overview" })));
  }

  function navigate(hash) {
    if (location.hash === hash) route();
    else location.hash = hash;
  }

  // ===================================================================== page: sign in

  /** Replaces the page by a token prompt; called on any 401. */
  function showSignIn(err) {
    if (session.signInShown) return;
    session.signInShown = true;
    teardown();
    hideBanner();
    setConn("signin");
    document.title = "Sign in · oprun";
    const main = clear($("main"));
    const input = h("input", {
      type: "password", id: "signin-token", autocomplete: "off", "data-testid": "signin-token",
      "aria-describedby": "signin-error", required: true,
    });
    const error = h("p", { id: "signin-error", class: "field-error", role: "alert", "data-testid": "signin-error" });
    if (sessionStorage.getItem(TOKEN_KEY)) {
      error.textContent = "The server did not accept the token: " + err;
    }
    const form = h("form", { class: "panel signin", "data-testid": "signin" },
      h("h1", { text: "Sign in" }),
      h("p", { text: "This server asks for a bearer token. It is kept in this tab only (sessionStorage) and sent with every request." }),
      h("div", { class: "field" }, h("label", { for: "signin-token", text: "Token" }), input),
      error,
      h("button", { type: "submit", class: "primary", "data-testid": "signin-button", text: "Sign in" }));
    form.addEventListener("submit", async (e) => {
      e.preventDefault();
      const token = input.value.trim();
      if (!token) {
        error.textContent = "Enter a token.";
        return;
      }
      sessionStorage.setItem(TOKEN_KEY, token);
      error.textContent = "";
      try {
        // Asked directly, so a rejected token stays on this view with the reason.
        const res = await rawFetch("/v1/caller", { headers: authHeaders({ Accept: "application/json" }) });
        const text = await res.text();
        if (!res.ok) throw errorFromBody(res.status, text);
        session.caller = JSON.parse(text);
      } catch (e2) {
        if (e2.status === "UNAUTHENTICATED") sessionStorage.removeItem(TOKEN_KEY);
        error.textContent = "Sign-in failed: " + e2;
        input.setAttribute("aria-invalid", "true");
        return;
      }
      renderWho();
      loadNodes();
      route();
    });
    main.append(form);
    renderWho();
    input.focus();
  }

  function signOut() {
    sessionStorage.removeItem(TOKEN_KEY);
    session.caller = null;
    renderWho();
    showSignIn(new ApiError("UNAUTHENTICATED", "signed out"));
  }

  // ===================================================================== page: overview

  function overviewPage(ctx, main) {
    document.title = "Overview · oprun";
    const cards = h("div", { class: "cards", "data-testid": "state-cards" });
    const kindsBody = h("tbody");
    const chartBox = h("div", { "data-testid": "throughput" });
    const nodesBody = h("tbody");
    const error = h("p", { class: "field-error", role: "alert" });
    main.append(
      h("h1", { text: "Overview" }),
      error,
      cards,
      h("section", { class: "panel" },
        h("h2", { text: "Finished per bucket, last 5 minutes" }), chartBox),
      h("section", {},
        h("h2", { text: "By kind" }),
        h("div", { class: "table-wrap" }, h("table", { "data-testid": "kind-counts" },
          h("thead", {}, h("tr", {}, h("th", { text: "Kind" }),
            STATES.map((s) => h("th", { class: "num", text: s.toLowerCase() })),
            h("th", { class: "num", text: "total" }))),
          kindsBody))),
      h("section", {},
        h("h2", { text: "Nodes and worker sessions" }),
        h("div", { class: "table-wrap" }, h("table", { "data-testid": "nodes-table" },
          h("thead", {}, h("tr", {}, h("th", { text: "Name" }), h("th", { text: "What" }), h("th", { text: "Live" }),
            h("th", { class: "num", text: "Running" }), h("th", { text: "Lease expires" }))),
          nodesBody))));

    let inFlight = false;
    let again = false;
    let last = 0;
    let pending = null;

    async function refresh() {
      if (inFlight) {
        again = true;
        return;
      }
      inFlight = true;
      last = Date.now();
      try {
        const [summary, nodes] = await Promise.all([
          api("GET", "/v1/operations:summarize?windowSeconds=300", undefined, ctx.signal),
          api("GET", "/v1/nodes", undefined, ctx.signal),
        ]);
        error.textContent = "";
        renderSummary(summary, cards, kindsBody, chartBox);
        renderNodes(nodes.nodes || [], nodesBody);
      } catch (err) {
        if (!ctx.signal.aborted && err.status !== "UNAUTHENTICATED") error.textContent = String(err);
      } finally {
        inFlight = false;
        if (again && !ctx.signal.aborted) {
          again = false;
          refreshSoon();
        }
      }
    }

    /** At most one summary request a second however many events arrive. */
    function refreshSoon() {
      if (pending) return;
      const wait = Math.max(0, 1000 - (Date.now() - last));
      pending = setTimeout(() => {
        pending = null;
        if (!ctx.signal.aborted) refresh();
      }, wait);
    }
    ctx.signal.addEventListener("abort", () => clearTimeout(pending));

    refresh();
    ctx.every(10000, refresh); // lets the chart slide when nothing happens
    keepWatching(ctx, "/v1/operations:watch", {
      onOpen: refreshSoon,
      onEvent: refreshSoon,
      onFinalError: (err) => { error.textContent = String(err); },
    });
  }

  function renderSummary(summary, cards, kindsBody, chartBox) {
    const byState = Object.fromEntries(STATES.map((s) => [s, 0]));
    const byKind = new Map();
    for (const c of summary.counts || []) {
      const n = toInt(c.count);
      byState[c.state] = (byState[c.state] || 0) + n;
      if (!byKind.has(c.kind)) byKind.set(c.kind, {});
      const row = byKind.get(c.kind);
      row[c.state] = (row[c.state] || 0) + n;
    }
    clear(cards).append(
      ...STATES.map((s) => h("div", { class: "card", "data-state": s, "data-testid": "card-" + s },
        h("div", { class: "label", text: s.toLowerCase() }),
        h("div", { class: "value", text: byState[s] }))),
      h("div", { class: "card depth", "data-testid": "queue-depth" },
        h("div", { class: "label", text: "queue depth" }),
        h("div", { class: "value", text: byState.QUEUED })));
    clear(kindsBody);
    const kinds = [...byKind.keys()].sort();
    if (kinds.length === 0) {
      kindsBody.append(h("tr", {}, h("td", { class: "empty", colspan: STATES.length + 2, text: "No operations yet." })));
    }
    for (const kind of kinds) {
      const row = byKind.get(kind);
      const total = STATES.reduce((sum, s) => sum + (row[s] || 0), 0);
      kindsBody.append(h("tr", {},
        h("td", {}, h("a", { href: "#/operations?filter=" + encodeURIComponent(`kind = "${kind}"`), text: kind })),
        STATES.map((s) => h("td", { class: "num", text: row[s] || 0 })),
        h("td", { class: "num", text: total })));
    }
    clear(chartBox).append(throughputChart(summary));
  }

  /** "resize ×4, thumbnail ×1": a worker session's kinds with how many of each it takes. */
  function sessionKinds(session) {
    return (session.kinds || []).map((k) => `${k.name} ×${k.concurrency || 1}`).join(", ");
  }

  /** The nodes, and the worker sessions (each with its worker, kinds, slots and last report). */
  function renderNodes(nodes, body) {
    clear(body);
    if (nodes.length === 0) body.append(h("tr", {}, h("td", { class: "empty", colspan: 5, text: "No nodes." })));
    for (const n of nodes) {
      const s = n.session;
      body.append(h("tr", { "data-node": n.id, "data-session": s ? "yes" : "no" },
        h("td", { class: "mono", text: n.id }),
        s
          ? h("td", {}, `worker ${s.worker} (on node ${s.node}) runs ${sessionKinds(s)}; last heard `, timeEl(s.lastSeenTime))
          : h("td", { text: "node" }),
        h("td", { text: n.live ? "yes" : "no" }),
        h("td", { class: "num", text: toInt(n.running) }),
        n.holdsStore
          ? h("td", { text: "holds the embedded store (no lease)" })
          : h("td", {}, timeEl(n.leaseExpireTime))));
    }
  }

  /**
   * The finished-per-bucket bars, drawn by hand. Buckets the server left out count 0; the
   * window ends at the bucket holding `readTime` (or now).
   */
  function throughputChart(summary) {
    const bucketSecs = summary.bucketSeconds || 10;
    const windowSecs = 300;
    const n = Math.max(1, Math.round(windowSecs / bucketSecs));
    const counts = new Map();
    for (const b of summary.finished || []) counts.set(Math.floor(Date.parse(b.startTime) / 1000), toInt(b.count));
    const endRef = summary.readTime ? Date.parse(summary.readTime) : Date.now();
    const lastStart = Math.floor(endRef / 1000 / bucketSecs) * bucketSecs;
    const buckets = [];
    for (let i = n - 1; i >= 0; i--) {
      const start = lastStart - i * bucketSecs;
      buckets.push({ start, count: counts.get(start) || 0 });
    }
    const max = Math.max(1, ...buckets.map((b) => b.count));
    const total = buckets.reduce((s, b) => s + b.count, 0);

    const W = 600, H = 190, left = 40, right = 10, top = 24, bottom = 28;
    const plotW = W - left - right, plotH = H - top - bottom;
    const barW = plotW / n;
    const chart = svg("svg", {
      class: "chart", viewBox: `0 0 ${W} ${H}`, role: "img", "data-testid": "throughput-chart",
      "aria-label": `${total} operations finished in the last ${windowSecs / 60} minutes, at most ${max} per ${bucketSecs} s`,
    });
    // y grid and labels: 0, half, max
    for (const v of [0, Math.round(max / 2), max]) {
      const y = top + plotH - (v / max) * plotH;
      chart.append(svg("line", { class: v === 0 ? "axis" : "grid", x1: left, x2: W - right, y1: y, y2: y }));
      chart.append(svg("text", { x: left - 6, y: y + 4, "text-anchor": "end" }, String(v)));
    }
    buckets.forEach((b, i) => {
      const hgt = (b.count / max) * plotH;
      const rect = svg("rect", {
        class: "bar", x: left + i * barW + 1, y: top + plotH - hgt, width: Math.max(1, barW - 2), height: hgt,
      });
      rect.append(svg("title", {}, `${new Date(b.start * 1000).toISOString()}: ${b.count} finished`));
      chart.append(rect);
    });
    chart.append(svg("line", { class: "axis", x1: left, x2: left, y1: top, y2: top + plotH }));
    // x labels: window start, middle, now
    const labels = [[left, "start", `-${windowSecs / 60} min`], [left + plotW / 2, "middle", `-${windowSecs / 120} min`], [W - right, "end", "now"]];
    for (const [x, anchor, label] of labels) {
      chart.append(svg("text", { x, y: H - 8, "text-anchor": anchor }, label));
    }
    chart.append(svg("text", { x: W - right, y: 12, "text-anchor": "end" }, `per ${bucketSecs} s · ${total} in total`));
    return chart;
  }

  // ===================================================================== page: operations list

  /** The filter with `state = X` toggled: removed if there, replacing another state, or added. */
  function toggleStateFilter(filter, state) {
    const re = /\bstate\s*=\s*([A-Z_]+)\b/;
    const m = filter.match(re);
    if (m && m[1] === state) {
      return filter.replace(/\s*\bAND\s+state\s*=\s*[A-Z_]+\b/, "")
        .replace(/\bstate\s*=\s*[A-Z_]+\b\s*(AND\s+)?/, "")
        .trim();
    }
    if (m) return filter.replace(re, `state = ${state}`);
    return filter.trim() ? `${filter.trim()} AND state = ${state}` : `state = ${state}`;
  }

  function listPage(ctx, main, filter) {
    document.title = "Operations · oprun";
    const st = {
      rows: new Map(), // name → { op, tr }
      order: [], // names on screen, newest first
      tokens: [], // page tokens of the pages before this one ("" for the first)
      token: "", // this page's token
      next: "",
      newest: 0, // creation time (ms) of the newest operation known when listing
      newCount: 0,
      selected: new Set(),
      listing: false,
      queued: [], // events that arrived while listing
    };

    // --- filter box and chips
    const input = h("input", {
      type: "search", id: "filter", value: filter, "data-testid": "filter-input",
      placeholder: 'kind = "sleep" AND state = RUNNING', "aria-describedby": "filter-hint filter-error",
      autocomplete: "off", spellcheck: "false",
    });
    const filterError = h("p", { id: "filter-error", class: "field-error", role: "alert", "data-testid": "filter-error" });
    const form = h("form", { class: "filter-form", role: "search" },
      h("label", { for: "filter", class: "filter-label", text: "Filter" }),
      h("div", { class: "filter-row" }, input,
        h("button", { type: "submit", class: "primary", "data-testid": "filter-apply", text: "Apply" }),
        filter ? h("button", { type: "button", onclick: () => navigate("#/operations"), text: "Clear" }) : null),
      h("p", { id: "filter-hint", class: "hint" },
        "AIP-160 filter on name, done, kind, state, error.code, create_time, update_time, priority, schedule. Press / to focus, Enter to apply."),
      filterError);
    form.addEventListener("submit", (e) => {
      e.preventDefault();
      applyFilter(input.value.trim());
    });
    const chips = h("div", { class: "chips", role: "group", "aria-label": "Filter by state" },
      STATES.map((s) => h("button", {
        type: "button", class: "chip", "data-testid": "chip-" + s,
        "aria-pressed": new RegExp(`\\bstate\\s*=\\s*${s}\\b`).test(filter) ? "true" : "false",
        onclick: () => applyFilter(toggleStateFilter(input.value.trim(), s)),
        text: s.toLowerCase(),
      })));

    // --- bulk bar
    const mayCancel = can("submit");
    const mayDelete = can("delete");
    const selCount = h("span", { class: "muted", "data-testid": "selected-count", text: "" });
    const cancelSel = h("button", { type: "button", "data-testid": "bulk-cancel-selected", text: "Cancel selected", hidden: !mayCancel, disabled: true, onclick: () => bulk("cancel", "selected") });
    const deleteSel = h("button", { type: "button", "data-testid": "bulk-delete-selected", text: "Delete selected", hidden: !mayDelete, disabled: true, onclick: () => bulk("delete", "selected") });
    const cancelAll = h("button", { type: "button", "data-testid": "bulk-cancel-matching", text: "Cancel all matching", hidden: !mayCancel, onclick: () => bulk("cancel", "matching") });
    const deleteAll = h("button", { type: "button", "data-testid": "bulk-delete-matching", text: "Delete all matching", hidden: !mayDelete, onclick: () => bulk("delete", "matching") });
    const toolbar = h("div", { class: "toolbar", "data-testid": "bulk-bar", hidden: !mayCancel && !mayDelete },
      cancelSel, deleteSel, selCount, h("span", { class: "spacer" }), cancelAll, deleteAll);
    const batchBox = h("div", { "data-testid": "batch-area" });

    // --- table
    const allBox = h("input", { type: "checkbox", "aria-label": "Select all on this page", "data-testid": "select-all" });
    allBox.addEventListener("change", () => {
      for (const name of st.order) {
        if (allBox.checked) st.selected.add(name);
        else st.selected.delete(name);
      }
      for (const row of st.rows.values()) fillRow(row, row.op);
      updateSelection();
    });
    const tbody = h("tbody");
    const table = h("table", { "data-testid": "ops-table" },
      h("thead", {}, h("tr", {},
        h("th", {}, allBox), h("th", { text: "Name" }), h("th", { text: "Kind" }), h("th", { text: "State" }),
        h("th", { class: "num", text: "Priority" }),
        h("th", { text: "Progress" }), h("th", { text: "Status" }), h("th", { class: "num", text: "Attempt" }),
        h("th", { text: "Created" }), h("th", { text: "Started" }), h("th", { text: "Ended" }), h("th", { text: "Node" }))),
      tbody);
    const newNotice = h("div", { class: "new-notice", "data-testid": "new-notice", "aria-live": "polite", hidden: true });
    const pageInfo = h("span", { class: "muted", "data-testid": "page-info" });
    const prevBtn = h("button", { type: "button", "data-testid": "prev-page", text: "Previous page", disabled: true, onclick: () => loadPage(st.tokens.pop() || "", false) });
    const nextBtn = h("button", { type: "button", "data-testid": "next-page", text: "Next page", disabled: true, onclick: () => { st.tokens.push(st.token); loadPage(st.next, false); } });

    main.append(h("h1", { text: "Operations" }), form, chips, toolbar, batchBox, newNotice,
      h("div", { class: "table-wrap" }, table),
      h("div", { class: "pager" }, prevBtn, nextBtn, pageInfo));
    if (focusFilterOnList) {
      focusFilterOnList = false;
      input.focus();
      input.select();
    }

    function applyFilter(f) {
      navigate(f ? "#/operations?filter=" + encodeURIComponent(f) : "#/operations");
    }

    // --- loading a page
    async function loadPage(token, keepSelection) {
      // Only the latest load may show its page: an older one answering late is dropped.
      const load = (st.load = (st.load || 0) + 1);
      st.listing = true;
      st.queued = [];
      const q = new URLSearchParams({ pageSize: String(PAGE_SIZE), orderBy: "create_time desc" });
      if (filter) q.set("filter", filter);
      if (token) q.set("pageToken", token);
      try {
        const [res, newest] = await Promise.all([
          api("GET", "/v1/operations:query?" + q, undefined, ctx.signal),
          token ? newestMatching() : null,
        ]);
        if (load !== st.load) return;
        filterError.textContent = "";
        input.removeAttribute("aria-invalid");
        st.token = token;
        st.next = res.nextPageToken || "";
        if (!keepSelection) st.selected.clear();
        showOps(res.operations || [], newest);
        const queued = st.queued;
        st.listing = false;
        queued.forEach(onEvent);
      } catch (err) {
        if (load !== st.load) return;
        st.listing = false;
        if (ctx.signal.aborted) return;
        showListError(err);
      }
    }

    /** Creation time of the newest matching operation: what "new" means past page 1. */
    async function newestMatching() {
      const q = new URLSearchParams({ pageSize: "1", orderBy: "create_time desc" });
      if (filter) q.set("filter", filter);
      const res = await api("GET", "/v1/operations:query?" + q, undefined, ctx.signal);
      const ops = res.operations || [];
      return ops.length ? createdMs(ops[0]) : 0;
    }

    function showListError(err) {
      if (err.status === "UNAUTHENTICATED") return;
      if (err.status === "PERMISSION_DENIED") showBanner(String(err));
      filterError.textContent = String(err);
      if (err.status === "INVALID_ARGUMENT") input.setAttribute("aria-invalid", "true");
      clear(tbody).append(h("tr", {}, h("td", { class: "empty", colspan: 12, text: "Could not list operations." })));
    }

    function showOps(ops, newest) {
      st.rows.clear();
      st.order = [];
      clear(tbody);
      st.newCount = 0;
      newNotice.hidden = true;
      st.newest = newest !== null && newest !== undefined ? newest : ops.length ? createdMs(ops[0]) : 0;
      for (const op of ops) {
        const row = makeRow(op);
        st.rows.set(op.name, row);
        st.order.push(op.name);
        tbody.append(row.tr);
      }
      showEmpty();
      const pageNo = st.tokens.length + 1;
      pageInfo.textContent = `Page ${pageNo} · ${ops.length} shown`;
      prevBtn.disabled = st.tokens.length === 0;
      nextBtn.disabled = !st.next;
      updateSelection();
    }

    function showEmpty() {
      const empty = tbody.querySelector("td.empty");
      if (st.order.length === 0 && !empty) {
        tbody.append(h("tr", {}, h("td", { class: "empty", colspan: 12, text: filter ? "No operations match the filter." : "No operations yet." })));
      } else if (st.order.length > 0 && empty) empty.parentElement.remove();
    }

    /** A row for an operation: the checkbox and link stay, the other cells follow updates. */
    function makeRow(op) {
      const tr = h("tr", { "data-name": op.name });
      const box = h("input", { type: "checkbox", "aria-label": "Select " + opId(op.name), "data-testid": "row-select" });
      box.addEventListener("change", () => {
        if (box.checked) st.selected.add(op.name);
        else st.selected.delete(op.name);
        tr.classList.toggle("selected", box.checked);
        updateSelection();
      });
      const cells = Array.from({ length: 10 }, () => h("td"));
      tr.append(h("td", {}, box),
        h("td", { class: "mono" }, h("a", { href: opHref(op.name), title: op.name, "data-testid": "op-link", text: shortId(op.name) })),
        ...cells);
      const row = { op, tr, box, cells };
      fillRow(row, op);
      return row;
    }

    /** Redraws a row's cells from an operation, in place (focus stays where it is). */
    function fillRow(row, op) {
      const m = meta(op);
      row.op = op;
      row.box.checked = st.selected.has(op.name);
      row.tr.classList.toggle("selected", row.box.checked);
      row.tr.dataset.state = m.state || "";
      const [kind, state, priority, progress, status, attempt, created, started, ended, node] = row.cells;
      kind.textContent = m.kind || "";
      clear(state).append(badge(stateOf(op)));
      if (m.requestedCancellation && !op.done) state.append(" ", h("span", { class: "hint", text: "cancel requested" }));
      priority.className = "num";
      priority.textContent = String(m.priority || 0);
      clear(progress).append(progressEl(op, false));
      status.className = "wrap";
      status.textContent = m.statusMessage || "";
      attempt.className = "num";
      attempt.textContent = m.attempt || "";
      clear(created).append(timeEl(m.createTime));
      clear(started).append(timeEl(m.startTime));
      clear(ended).append(timeEl(m.endTime));
      node.className = "mono";
      node.textContent = m.node || "";
    }

    function updateSelection() {
      // Forget selected operations no longer on screen.
      for (const name of st.selected) if (!st.rows.has(name)) st.selected.delete(name);
      const n = st.selected.size;
      selCount.textContent = n ? `${n} selected` : "";
      cancelSel.disabled = n === 0;
      deleteSel.disabled = n === 0;
      allBox.checked = n > 0 && n === st.order.length;
      allBox.indeterminate = n > 0 && n < st.order.length;
    }

    // --- live updates
    function onEvent(op) {
      if (!op || !op.name) return;
      if (st.listing) {
        st.queued.push(op);
        return;
      }
      const known = st.rows.get(op.name);
      if (known) {
        fillRow(known, op);
        return;
      }
      const created = createdMs(op);
      const onFirstPage = st.tokens.length === 0 && !st.token;
      if (!onFirstPage) {
        // New since the list was read: it belongs on page 1.
        if (created > st.newest) {
          st.newest = created;
          st.newCount++;
          clear(newNotice).append(`${st.newCount} new — `,
            h("button", { type: "button", class: "link-button", "data-testid": "show-new", text: "show", onclick: () => { st.tokens = []; loadPage("", false); } }));
          newNotice.hidden = false;
        }
        return;
      }
      // First page: the newest PAGE_SIZE matching operations. Insert in creation order
      // (newest first) when it falls within them, dropping the oldest past the page size.
      const oldest = st.order.length ? createdMs(st.rows.get(st.order[st.order.length - 1]).op) : 0;
      if (st.order.length >= PAGE_SIZE && created <= oldest) return;
      if (created > st.newest) st.newest = created;
      const row = makeRow(op);
      let at = st.order.findIndex((name) => createdMs(st.rows.get(name).op) < created);
      if (at < 0) at = st.order.length;
      st.rows.set(op.name, row);
      if (at < st.order.length) st.rows.get(st.order[at]).tr.before(row.tr);
      else tbody.append(row.tr);
      st.order.splice(at, 0, op.name);
      while (st.order.length > PAGE_SIZE) {
        const name = st.order.pop();
        st.rows.get(name).tr.remove();
        st.rows.delete(name);
      }
      showEmpty();
      pageInfo.textContent = `Page 1 · ${st.order.length} shown`;
      updateSelection();
    }

    // --- bulk actions
    async function bulk(action, scope) {
      const verb = action === "cancel" ? "Cancel" : "Delete";
      let body;
      let title;
      let message;
      let detail;
      if (scope === "selected") {
        const names = [...st.selected];
        if (names.length === 0) return;
        body = { names };
        title = `${verb} ${names.length} selected operation${names.length === 1 ? "" : "s"}?`;
        message = action === "cancel"
          ? "Cancellation is requested for each selected operation that is not done yet."
          : "Each selected operation that is done is deleted for good; those not done are skipped.";
        detail = names.join("\n");
      } else {
        // An empty filter would select nothing: say "every one" explicitly.
        const f = filter || (action === "cancel" ? "done = false" : "done = true");
        body = { filter: f };
        title = `${verb} all operations matching the filter?`;
        message = action === "cancel"
          ? "Cancellation is requested for every operation matching this filter that is not done yet:"
          : "Every finished operation matching this filter is deleted for good (those not done are skipped):";
        detail = f;
      }
      const ok = await confirmAction({ title, message, detail, ok: `${verb} operations` });
      if (!ok || ctx.signal.aborted) return;
      body.requestId = uuid();
      try {
        const batchOp = await api("POST", action === "cancel" ? "/v1/operations:batchCancel" : "/v1/operations:batchDelete", body, ctx.signal);
        batchPanel(ctx, batchBox, batchOp, `${verb} ${scope === "selected" ? "selected" : "matching"}`, () => loadPage(st.token, false));
      } catch (err) {
        if (!ctx.signal.aborted) reportError(err);
      }
    }

    // --- go
    loadPage("", false);
    let opened = false;
    keepWatching(ctx, "/v1/operations:watch" + (filter ? "?filter=" + encodeURIComponent(filter) : ""), {
      onOpen: () => {
        // After a reconnect, re-read the page for what the gap hid.
        if (opened) {
          loadPage(st.token, true);
          loadNodes();
        }
        opened = true;
      },
      onEvent,
      onFinalError: showListError,
    });
  }

  /** The live panel of a batch operation: its progress bar, its result, a link, Cancel. */
  function batchPanel(ctx, box, op, label, onDone) {
    const title = h("h2", {}, `${label}: `, h("a", { href: opHref(op.name), "data-testid": "batch-link", text: shortId(op.name) }), " ", badge(stateOf(op)));
    const progress = h("div", { "data-testid": "batch-progress" }, progressEl(op, true));
    const status = h("p", { class: "muted", "data-testid": "batch-status", "aria-live": "polite" });
    const result = h("p", { "data-testid": "batch-result", role: "status" });
    const cancelBtn = h("button", { type: "button", "data-testid": "batch-cancel", text: "Cancel batch", hidden: !can("submit") });
    const closeBtn = h("button", { type: "button", class: "link-button", text: "Close", onclick: () => { panelCtl.abort(); panel.remove(); } });
    const panel = h("section", { class: "panel", "data-testid": "batch-panel", "data-name": op.name },
      h("div", { class: "section-head" }, title, cancelBtn, closeBtn), progress, status, result);
    box.prepend(panel);

    // The panel's stream ends with the page or when the panel is closed.
    const panelCtl = new AbortController();
    ctx.signal.addEventListener("abort", () => panelCtl.abort(), { once: true });
    const pctx = { signal: panelCtl.signal };
    let last = op;
    let finished = false;

    cancelBtn.addEventListener("click", async () => {
      const ok = await confirmAction({ title: "Cancel the batch?", message: "Operations it already changed stay changed.", ok: "Cancel batch" });
      if (!ok) return;
      try {
        await api("POST", `/v1/operations/${opId(op.name)}:cancel`, {}, pctx.signal);
      } catch (err) {
        reportError(err);
      }
    });

    function show(o) {
      last = o;
      const m = meta(o);
      title.querySelector(".badge").replaceWith(badge(stateOf(o)));
      clear(progress).append(progressEl(o, true));
      if (status.textContent !== (m.statusMessage || "")) status.textContent = m.statusMessage || "";
      cancelBtn.hidden = o.done || !can("submit");
      panel.dataset.done = o.done ? "true" : "false";
      if (o.done) {
        if (o.error) result.textContent = `${codeName(o.error.code)}: ${o.error.message || ""}`;
        else {
          const r = o.response || {};
          result.textContent = `matched ${toInt(r.matched)}, changed ${toInt(r.changed)}, skipped ${toInt(r.skipped)}`;
        }
        if (!finished) {
          finished = true;
          onDone && onDone();
        }
      }
    }
    show(op);
    keepWatching(pctx, `/v1/operations/${opId(op.name)}:watch`, {
      onEvent: show,
      indicator: false,
      until: () => last.done,
      onFinalError: (err) => { result.textContent = String(err); },
    });
  }

  // ===================================================================== page: operation detail

  function detailPage(ctx, main, id) {
    const name = "operations/" + id;
    document.title = `${shortId(name)} · oprun`;
    let op = null;

    const stateSlot = h("span", { "data-testid": "detail-state", "aria-live": "polite" });
    const kindEl = h("span", { class: "muted", "data-testid": "detail-kind" });
    const progressSlot = h("div", { "data-testid": "detail-progress" });
    const statusEl = h("p", { "data-testid": "detail-status", "aria-live": "polite" });
    const error = h("p", { class: "field-error", role: "alert", "data-testid": "detail-error" });
    const cancelBtn = h("button", { type: "button", "data-testid": "btn-cancel", text: "Cancel", hidden: true, onclick: onCancel });
    const deleteBtn = h("button", { type: "button", "data-testid": "btn-delete", text: "Delete", hidden: true, onclick: onDelete });
    const rerunBtn = h("button", { type: "button", "data-testid": "btn-rerun", text: "Run again", hidden: true, onclick: onRerun });
    const metaList = h("dl", { class: "meta", "data-testid": "detail-meta" });
    const outcome = h("section", { "data-testid": "detail-outcome" });
    const raw = h("pre", { class: "json", "data-testid": "raw-json", tabindex: "0" });
    const inputHead = h("h2", { text: "Input" });
    const inputBox = h("pre", { class: "json", "data-testid": "detail-input", tabindex: "0", text: "Loading…" });
    const readOnly = h("span", { class: "hint", hidden: true, text: `Read only: the role ${session.caller ? session.caller.role : ""} cannot change operations.` });
    const copyBtn = h("button", { type: "button", "data-testid": "btn-copy", text: "Copy" });
    const copied = h("span", { class: "muted", role: "status" });
    copyBtn.addEventListener("click", () => copyText(raw.textContent, copied));

    main.append(
      h("p", {}, h("a", { href: lastListHash, text: "← Operations" })),
      h("div", { class: "detail-head" }, h("h1", { "data-testid": "detail-name", text: name }), kindEl, stateSlot),
      error,
      h("section", { class: "panel" }, progressSlot, statusEl,
        h("div", { class: "actions" }, cancelBtn, rerunBtn, deleteBtn, readOnly)),
      h("div", { class: "two-col" },
        h("section", { class: "panel" }, h("h2", { text: "Metadata" }), metaList),
        h("section", { class: "panel" }, outcome)),
      h("section", { class: "panel" }, inputHead, inputBox),
      h("section", { class: "panel" },
        h("div", { class: "section-head" }, h("h2", { text: "Raw operation" }), copied, copyBtn),
        raw));

    // The job's arguments: the input it was submitted with, its type in the heading.
    api("GET", `/v1/operations/${encodeURIComponent(id)}:input`, undefined, ctx.signal).then((input) => {
      inputHead.textContent = "Input" + (input && input["@type"] ? " · " + typeName(input) : "");
      inputBox.textContent = inputJson(input);
    }, (err) => {
      if (err && err.name === "AbortError") return;
      inputBox.textContent = `The input cannot be shown: ${err}`;
    });

    function show(o) {
      op = o;
      const m = meta(o);
      kindEl.textContent = m.kind || "";
      // Live regions: touched only on a change, so a screen reader does not repeat them.
      if (stateSlot.textContent !== stateOf(o)) clear(stateSlot).append(badge(stateOf(o)));
      clear(progressSlot).append(progressEl(o, true));
      if (statusEl.textContent !== (m.statusMessage || "")) statusEl.textContent = m.statusMessage || "";
      cancelBtn.hidden = o.done || !can("submit");
      cancelBtn.disabled = !!m.requestedCancellation;
      cancelBtn.textContent = m.requestedCancellation ? "Cancel requested" : "Cancel";
      rerunBtn.hidden = !o.done || !can("submit");
      deleteBtn.hidden = !o.done || !can("delete");
      readOnly.hidden = can("submit");
      renderMeta(metaList, o);
      renderOutcome(outcome, o);
      raw.textContent = prettyJson(o);
      main.dataset.done = o.done ? "true" : "false";
    }

    async function onCancel() {
      const ok = await confirmAction({ title: "Cancel this operation?", message: `Cancellation of ${name} is requested; the worker stops at its next check.`, ok: "Cancel operation" });
      if (!ok) return;
      try {
        await api("POST", `/v1/operations/${encodeURIComponent(id)}:cancel`, {}, ctx.signal);
        // The watch shows the outcome.
      } catch (err) {
        reportError(err);
      }
    }

    async function onDelete() {
      const ok = await confirmAction({ title: "Delete this operation?", message: `${name} and its result are removed for good.`, ok: "Delete operation" });
      if (!ok) return;
      try {
        await api("DELETE", `/v1/operations/${encodeURIComponent(id)}`, undefined, ctx.signal);
        navigate(lastListHash);
      } catch (err) {
        reportError(err);
      }
    }

    async function onRerun() {
      const ok = await confirmAction({ title: "Run it again?", message: `A new ${meta(op).kind || ""} operation starts with the same input; this one stays as it is.`, ok: "Run again", danger: false });
      if (!ok) return;
      try {
        const fresh = await api("POST", `/v1/operations/${encodeURIComponent(id)}:rerun`, { requestId: uuid() }, ctx.signal);
        navigate(opHref(fresh.name));
      } catch (err) {
        reportError(err);
      }
    }

    keepWatching(ctx, `/v1/operations/${encodeURIComponent(id)}:watch`, {
      onEvent: show,
      until: () => op && op.done,
      onFinalError: (err) => {
        error.textContent = String(err);
        if (err.status === "PERMISSION_DENIED") showBanner(String(err));
      },
    });
  }

  /** Adds a <dt>/<dd> pair; `value` may be a node or text; skipped when empty. */
  function addMeta(dl, label, value, testid) {
    if (value === undefined || value === null || value === "") return;
    dl.append(h("dt", { text: label }), h("dd", { "data-testid": testid }, value));
  }

  function renderMeta(dl, op) {
    const m = meta(op);
    clear(dl);
    addMeta(dl, "Kind", m.kind);
    addMeta(dl, "State", m.state);
    addMeta(dl, "Schedule", m.schedule && h("a", { href: schedHref(m.schedule), text: m.schedule }), "meta-schedule");
    addMeta(dl, "Fire time", m.fireTime && timeEl(m.fireTime), "meta-fire-time");
    addMeta(dl, "Created", m.createTime && timeEl(m.createTime));
    addMeta(dl, "Started", m.startTime && timeEl(m.startTime));
    addMeta(dl, "Updated", m.updateTime && timeEl(m.updateTime));
    addMeta(dl, "Ended", m.endTime && timeEl(m.endTime));
    addMeta(dl, "Attempt", m.attempt ? String(m.attempt) : "");
    addMeta(dl, "Priority", m.priority ? String(m.priority) : "", "meta-priority");
    addMeta(dl, "Max attempts", m.retryPolicy && m.retryPolicy.maxAttempts ? String(m.retryPolicy.maxAttempts) : "");
    addMeta(dl, "Unique key", m.uniqueKey && h("code", { text: m.uniqueKey }));
    addMeta(dl, "Concurrency key", m.concurrencyKey && h("code", { text: m.concurrencyKey }));
    addMeta(dl, "Node", m.node);
    addMeta(dl, "Cancellation requested", m.requestedCancellation ? "yes" : "no", "meta-cancel-requested");
    addMeta(dl, "Deadline", m.deadline && timeEl(m.deadline));
    addMeta(dl, "Next attempt", m.nextAttemptTime && timeEl(m.nextAttemptTime));
    if (m.lastError) {
      addMeta(dl, "Last error", `${codeName(m.lastError.code)} (${m.lastError.code || 0}): ${m.lastError.message || ""}`);
    }
    addMeta(dl, "Trace parent", m.traceparent && h("code", { text: m.traceparent }));
    if (m.details) addMeta(dl, "Details", h("pre", { class: "json", text: prettyJson(m.details) }));
  }

  function renderOutcome(section, op) {
    clear(section);
    if (!op.done) {
      section.append(h("h2", { text: "Result" }), h("p", { class: "muted", text: "Not done yet." }));
    } else if (op.error) {
      const e = op.error;
      // Through `append`, which skips the missing details (Element.append writes "null").
      append(section, [h("h2", { text: "Error" }),
        h("div", { class: "error-box", "data-testid": "detail-error-code" },
          h("strong", { text: `${codeName(e.code)} (${e.code || 0})` }), ": ", e.message || ""),
        e.details && e.details.length ? h("pre", { class: "json", "data-testid": "detail-error-details", text: prettyJson(e.details) }) : null]);
    } else {
      section.append(h("h2", { text: "Response" + (op.response ? " · " + typeName(op.response) : "") }),
        h("pre", { class: "json", "data-testid": "detail-response", text: prettyJson(op.response || {}) }));
    }
  }

  async function copyText(text, note) {
    try {
      await navigator.clipboard.writeText(text);
      note.textContent = "Copied.";
    } catch (_) {
      note.textContent = "Copy failed: select the text and copy it by hand.";
    }
  }

  // ===================================================================== page: schedules

  /** How a schedule's run stands: its state (QUEUED, RUNNING, SUCCEEDED), or its error's code name. */
  function runBadge(run) {
    let state = run.state && run.state !== "STATE_UNSPECIFIED" ? run.state : (run.done ? "SUCCEEDED" : "RUNNING");
    let text = state;
    if (run.error) {
      text = codeName(run.error.code);
      state = text === "CANCELLED" ? "CANCELLED" : "FAILED";
    }
    return h("span", {
      class: "badge", "data-state": state, "data-testid": "run-outcome",
      title: run.error ? run.error.message || "" : null, text,
    });
  }

  /** A run's operation as a link, or why there is none (a fire that could not start one). */
  function runLink(run) {
    if (!run.operation) return h("span", { class: "hint", text: "not started" });
    return h("a", { href: opHref(run.operation), class: "mono", title: run.operation, "data-testid": "run-link", text: shortId(run.operation) });
  }

  /** The "Last run" of a schedule: outcome, operation, fire time, and whether Run now started it. */
  function lastRun(s) {
    const run = (s.recentRuns || [])[0];
    if (!run) return h("span", { class: "muted", text: "—" });
    return h("span", { class: "last-run" }, runBadge(run), " ", runLink(run), " ", timeEl(run.fireTime),
      run.triggered ? h("span", { class: "hint", "data-testid": "run-triggered", text: " · triggered" }) : null);
  }

  /**
   * Pauses a schedule (asking for a note), resumes it or starts a run now (asking first).
   * Resolves with the schedule as it is afterwards, or null when declined or failed (the
   * failure is on the banner).
   */
  async function scheduleAction(ctx, s, action) {
    const path = `/v1/schedules/${encodeURIComponent(schedId(s.name))}`;
    try {
      if (action === "pause") {
        const note = await promptAction({
          title: `Pause ${s.name}?`,
          message: "It stops firing until resumed; the fires meanwhile are not run later.",
          label: "Note (optional): why it is paused",
          value: s.note || "",
          ok: "Pause",
        });
        if (note === null || ctx.signal.aborted) return null;
        return await api("POST", path + ":pause", { note }, ctx.signal);
      }
      if (action === "resume") return await api("POST", path + ":resume", {}, ctx.signal);
      const kind = (s.task && s.task.kind) || "";
      const ok = await confirmAction({
        title: `Run ${s.name} now?`,
        message: `One ${kind} operation starts now, whatever the calendar, pause or overlap policy say; the schedule's own fires go on as before.`,
        ok: "Run now",
        danger: false,
      });
      if (!ok || ctx.signal.aborted) return null;
      await api("POST", path + ":trigger", { requestId: uuid() }, ctx.signal);
      return await api("GET", path, undefined, ctx.signal);
    } catch (err) {
      if (!ctx.signal.aborted) reportError(err);
      return null;
    }
  }

  /** The Pause, Resume and Run now buttons of a schedule; `onChange` gets it after an action. */
  function scheduleButtons(ctx, onChange) {
    let sched = null; // as last shown
    const pause = h("button", { type: "button", "data-testid": "sched-pause", text: "Pause", hidden: true, onclick: () => act("pause") });
    const resume = h("button", { type: "button", "data-testid": "sched-resume", text: "Resume", hidden: true, onclick: () => act("resume") });
    const trigger = h("button", { type: "button", "data-testid": "sched-trigger", text: "Run now", onclick: () => act("trigger") });
    const nodes = [pause, resume, trigger];
    async function act(action) {
      if (!sched) return;
      nodes.forEach((b) => { b.disabled = true; });
      try {
        const fresh = await scheduleAction(ctx, sched, action);
        if (fresh && !ctx.signal.aborted) onChange(fresh);
      } finally {
        nodes.forEach((b) => { b.disabled = false; });
      }
    }
    return {
      nodes,
      /** Shows the buttons that apply to `s`. */
      show(s) {
        sched = s;
        pause.hidden = !!s.paused;
        resume.hidden = !s.paused;
      },
    };
  }

  function schedulesPage(ctx, main) {
    document.title = "Schedules · oprun";
    setConn("ready");
    const mayChange = can("submit");
    const st = {
      rows: new Map(), // name → { tr, cells, buttons }
      tokens: [], // page tokens of the pages before this one ("" for the first)
      token: "", // this page's token
      next: "",
      load: 0, // the latest load: an older one answering late is dropped
      loading: false,
    };
    const error = h("p", { class: "field-error", role: "alert", "data-testid": "schedules-error" });
    const tbody = h("tbody");
    const cols = mayChange ? 7 : 6;
    const table = h("table", { "data-testid": "schedules-table" },
      h("thead", {}, h("tr", {},
        h("th", { text: "Name" }), h("th", { text: "Spec" }), h("th", { text: "Kind" }),
        h("th", { text: "Next run" }), h("th", { text: "Last run" }),
        h("th", { class: "num", title: "operations started / fires skipped", text: "Started / skipped" }),
        mayChange ? h("th", { text: "Actions" }) : null)),
      tbody);
    const pageInfo = h("span", { class: "muted", "data-testid": "page-info" });
    const prevBtn = h("button", { type: "button", "data-testid": "prev-page", text: "Previous page", disabled: true, onclick: () => go(st.tokens.pop() || "") });
    const nextBtn = h("button", { type: "button", "data-testid": "next-page", text: "Next page", disabled: true, onclick: () => { st.tokens.push(st.token); go(st.next); } });
    main.append(h("h1", { text: "Schedules" }), error,
      h("div", { class: "table-wrap" }, table),
      h("div", { class: "pager" }, prevBtn, nextBtn, pageInfo));

    function go(token) {
      st.token = token;
      prevBtn.disabled = st.tokens.length === 0;
      nextBtn.disabled = true;
      load();
    }

    async function load() {
      const n = ++st.load;
      st.loading = true;
      const q = new URLSearchParams({ pageSize: String(PAGE_SIZE) });
      if (st.token) q.set("pageToken", st.token);
      try {
        const res = await api("GET", "/v1/schedules?" + q, undefined, ctx.signal);
        if (n !== st.load) return;
        error.textContent = "";
        st.next = res.nextPageToken || "";
        show(res.schedules || []);
      } catch (err) {
        if (n !== st.load || ctx.signal.aborted || err.status === "UNAUTHENTICATED") return;
        if (err.status === "PERMISSION_DENIED") showBanner(String(err));
        error.textContent = String(err);
      } finally {
        if (n === st.load) st.loading = false;
      }
    }

    /** Puts the page's schedules on screen, updating the rows already there in place. */
    function show(list) {
      const names = new Set(list.map((s) => s.name));
      for (const [name, row] of st.rows) {
        if (names.has(name)) continue;
        row.tr.remove();
        st.rows.delete(name);
      }
      const empty = tbody.querySelector("td.empty");
      if (empty) empty.parentElement.remove();
      list.forEach((s, i) => {
        let row = st.rows.get(s.name);
        if (row) fillRow(row, s);
        else st.rows.set(s.name, (row = makeRow(s)));
        // Moved only when out of place, so that a focused button keeps its focus.
        if (tbody.children[i] !== row.tr) tbody.insertBefore(row.tr, tbody.children[i] || null);
      });
      if (list.length === 0) {
        tbody.append(h("tr", {}, h("td", {
          class: "empty", colspan: cols,
          text: st.token ? "No more schedules." : "No schedules yet: `oprun schedule create` makes one.",
        })));
      }
      pageInfo.textContent = `Page ${st.tokens.length + 1} · ${list.length} shown`;
      prevBtn.disabled = st.tokens.length === 0;
      nextBtn.disabled = !st.next;
    }

    /** A row for a schedule: the link and buttons stay, the other cells follow refreshes. */
    function makeRow(s) {
      const tr = h("tr", { "data-name": s.name });
      const cells = ["sched-spec", "sched-kind", "sched-next", "sched-last", "sched-runs"].map((t) => h("td", { "data-testid": t }));
      const buttons = scheduleButtons(ctx, (fresh) => {
        const row = st.rows.get(fresh.name);
        if (row) fillRow(row, fresh);
        load(); // also drops the answer of a read that started before the action
      });
      append(tr, [
        h("td", { class: "mono" }, h("a", { href: schedHref(s.name), "data-testid": "sched-link", text: schedId(s.name) })),
        cells,
        mayChange ? h("td", {}, h("div", { class: "row-actions" }, buttons.nodes)) : null,
      ]);
      const row = { tr, cells, buttons };
      fillRow(row, s);
      return row;
    }

    function fillRow(row, s) {
      const [spec, kind, next, last, runs] = row.cells;
      row.tr.dataset.paused = s.paused ? "true" : "false";
      spec.className = "mono";
      spec.textContent = specText(s);
      kind.textContent = (s.task && s.task.kind) || "";
      clear(next);
      if (s.paused) {
        next.className = "wrap";
        append(next, [h("span", { class: "badge", "data-state": "PAUSED", title: s.note || null, text: "paused" }),
          s.note ? h("span", { class: "cell-note", "data-testid": "sched-note", text: s.note }) : null]);
      } else {
        next.className = "";
        next.append(timeEl(s.nextRunTime));
      }
      clear(last).append(lastRun(s));
      runs.className = "num";
      runs.title = `${toInt(s.startedRuns)} started, ${toInt(s.skippedRuns)} skipped`;
      runs.textContent = `${toInt(s.startedRuns)} / ${toInt(s.skippedRuns)}`;
      row.buttons.show(s);
    }

    go("");
    // A refresh still on its way is not doubled (a page change still supersedes it).
    ctx.every(SCHEDULE_REFRESH_MS, () => { if (!st.loading) load(); });
  }

  function schedulePage(ctx, main, id) {
    const name = "schedules/" + id;
    const path = `/v1/schedules/${encodeURIComponent(id)}`;
    document.title = `${id} · Schedules · oprun`;
    setConn("ready");
    let loads = 0; // the latest read: an older one answering late is dropped
    let loading = false;
    let gone = false;

    const stateSlot = h("span", { "data-testid": "sched-state" });
    const kindEl = h("span", { class: "muted", "data-testid": "sched-kind" });
    const error = h("p", { class: "field-error", role: "alert", "data-testid": "sched-error" });
    const buttons = scheduleButtons(ctx, (s) => {
      loads++; // a read that started before the action is out of date
      show(s);
    });
    const deleteBtn = h("button", { type: "button", "data-testid": "sched-delete", text: "Delete", hidden: !can("delete"), onclick: onDelete });
    const readOnly = h("span", { class: "hint", hidden: can("submit"), text: `Read only: the role ${session.caller ? session.caller.role : ""} cannot change schedules.` });
    const specList = h("dl", { class: "meta", "data-testid": "sched-meta" });
    const taskList = h("dl", { class: "meta", "data-testid": "sched-task" });
    const inputHead = h("h2", { text: "Input" });
    const inputBox = h("pre", { class: "json", "data-testid": "sched-input", tabindex: "0" });
    const runsBody = h("tbody");
    const raw = h("pre", { class: "json", "data-testid": "raw-json", tabindex: "0" });
    const copyBtn = h("button", { type: "button", "data-testid": "btn-copy", text: "Copy" });
    const copied = h("span", { class: "muted", role: "status" });
    copyBtn.addEventListener("click", () => copyText(raw.textContent, copied));
    // Shown once the schedule is read.
    const content = h("div", { hidden: true },
      h("section", { class: "panel" },
        h("div", { class: "actions" }, can("submit") ? buttons.nodes : null, deleteBtn, readOnly,
          h("span", { class: "spacer" }),
          h("a", { href: schedRunsHref(name), class: "button", "data-testid": "sched-all-runs", text: "All runs" }))),
      h("div", { class: "two-col" },
        h("section", { class: "panel" }, h("h2", { text: "Schedule" }), specList),
        h("section", { class: "panel" }, h("h2", { text: "Task" }), taskList, inputHead, inputBox)),
      h("section", {},
        h("h2", { text: "Recent runs" }),
        h("div", { class: "table-wrap" }, h("table", { "data-testid": "sched-runs-table" },
          h("thead", {}, h("tr", {}, h("th", { text: "Fire time" }), h("th", { text: "Operation" }),
            h("th", { text: "Outcome" }), h("th", { text: "Started by" }))),
          runsBody))),
      h("section", { class: "panel" },
        h("div", { class: "section-head" }, h("h2", { text: "Raw schedule" }), copied, copyBtn),
        raw));

    main.append(
      h("p", {}, h("a", { href: "#/schedules", text: "← Schedules" })),
      h("div", { class: "detail-head" }, h("h1", { "data-testid": "sched-name", text: name }), kindEl, stateSlot),
      error,
      content);

    function show(s) {
      const task = s.task || {};
      const state = s.paused ? "PAUSED" : "ACTIVE";
      kindEl.textContent = task.kind || "";
      if (stateSlot.textContent !== state.toLowerCase()) {
        clear(stateSlot).append(h("span", { class: "badge", "data-state": state, text: state.toLowerCase() }));
      }
      buttons.show(s);

      clear(specList);
      addMeta(specList, "Spec", h("code", { text: s.cron || (s.interval ? "every " + durText(s.interval) : "—") }), "sched-spec");
      if (s.cron) addMeta(specList, "Time zone", s.timeZone || "UTC", "sched-zone");
      const policy = s.overlapPolicy || "SKIP";
      addMeta(specList, "Overlap policy", `${policy}: ${OVERLAP_TEXT[policy] || ""}`, "sched-overlap");
      addMeta(specList, "Catch-up window", catchupText(s.catchupWindow), "sched-catchup");
      addMeta(specList, "Next run", s.paused ? "none while paused" : timeEl(s.nextRunTime), "sched-next");
      addMeta(specList, "Note", s.note, "sched-note");
      addMeta(specList, "Buffered run", s.bufferedRunTime && timeEl(s.bufferedRunTime), "sched-buffered");
      addMeta(specList, "Started runs", String(toInt(s.startedRuns)), "sched-started");
      addMeta(specList, "Skipped fires", String(toInt(s.skippedRuns)), "sched-skipped");
      addMeta(specList, "Created", s.createTime && timeEl(s.createTime));
      addMeta(specList, "Updated", s.updateTime && timeEl(s.updateTime));

      clear(taskList);
      addMeta(taskList, "Kind", task.kind);
      addMeta(taskList, "Priority", task.priority ? String(task.priority) : "");
      addMeta(taskList, "Timeout", task.timeout && durText(task.timeout));
      addMeta(taskList, "Concurrency key", task.concurrencyKey && h("code", { text: task.concurrencyKey }));
      addMeta(taskList, "Max attempts", task.retryPolicy && task.retryPolicy.maxAttempts ? String(task.retryPolicy.maxAttempts) : "");
      inputHead.textContent = "Input" + (task.input && task.input["@type"] ? " · " + typeName(task.input) : "");
      inputBox.textContent = inputJson(task.input);

      const runs = s.recentRuns || [];
      clear(runsBody);
      if (runs.length === 0) runsBody.append(h("tr", {}, h("td", { class: "empty", colspan: 4, text: "No runs yet." })));
      for (const run of runs) {
        runsBody.append(h("tr", { "data-operation": run.operation || "", "data-triggered": run.triggered ? "true" : "false" },
          h("td", {}, timeEl(run.fireTime)),
          h("td", {}, runLink(run)),
          h("td", {}, runBadge(run), run.error && run.error.message ? h("span", { class: "hint", text: " " + run.error.message }) : null),
          h("td", { text: run.triggered ? "Run now (triggered)" : "its calendar" })));
      }
      raw.textContent = prettyJson(s);
      content.hidden = false;
    }

    async function load() {
      if (loading || gone) return;
      const n = ++loads;
      loading = true;
      try {
        const s = await api("GET", path, undefined, ctx.signal);
        if (n !== loads) return;
        error.textContent = "";
        show(s);
      } catch (err) {
        if (n !== loads || ctx.signal.aborted || err.status === "UNAUTHENTICATED") return;
        if (err.status === "PERMISSION_DENIED") showBanner(String(err));
        if (err.status === "NOT_FOUND") {
          gone = true; // deleted, or never was: reading it again will not help
          document.title = "Not found · oprun";
          content.hidden = true;
        }
        error.textContent = String(err);
      } finally {
        loading = false;
      }
    }

    async function onDelete() {
      const ok = await confirmAction({ title: "Delete this schedule?", message: `${name} stops firing and is removed for good; the operations it started stay.`, ok: "Delete schedule" });
      if (!ok) return;
      try {
        await api("DELETE", path, undefined, ctx.signal);
        navigate("#/schedules");
      } catch (err) {
        reportError(err);
      }
    }

    load();
    ctx.every(SCHEDULE_REFRESH_MS, load);
  }

  /** A catch-up window: unset means one minute; zero, that missed fires are always skipped. */
  function catchupText(d) {
    if (!d) return "1m (default)";
    return toInt(String(d).replace(/s$/, "")) === 0 ? "0s: missed fires are skipped" : durText(d);
  }

  // ===================================================================== page: kinds and submit

  function kindsPage(ctx, main) {
    document.title = "Kinds · oprun";
    setConn("ready");
    const tbody = h("tbody");
    const loadError = h("p", { class: "field-error", role: "alert" });
    main.append(h("h1", { text: "Task kinds" }), loadError,
      h("div", { class: "table-wrap" }, h("table", { "data-testid": "kinds-table" },
        h("thead", {}, h("tr", {}, h("th", { text: "Kind" }), h("th", { text: "Runs" }), h("th", { class: "num", text: "Waiting" }),
          h("th", { text: "Input" }), h("th", { text: "Response" }),
          h("th", { text: "Details" }), h("th", { class: "num", text: "Max concurrency" }),
          h("th", { class: "num", text: "Max attempts" }), h("th", { text: "Default timeout" }), h("th", { text: "Retry safe" }))),
        tbody)));
    const formBox = h("section", { class: "panel", "aria-labelledby": "submit-title" });
    if (can("submit")) main.append(formBox);

    api("GET", "/v1/taskKinds", undefined, ctx.signal).then((res) => {
      const kinds = res.kinds || [];
      for (const k of kinds) {
        tbody.append(h("tr", { "data-kind": k.name },
          h("td", { class: "mono", text: k.name }),
          h("td", { "data-testid": "kind-runs", text: runsWhere(k) }),
          h("td", { class: "num", "data-testid": "kind-waiting", text: toInt(k.waiting) }),
          h("td", { class: "mono", text: k.inputType || "" }),
          h("td", { class: "mono", text: k.responseType || "" }),
          h("td", { class: "mono", text: k.detailsType || "—" }),
          h("td", { class: "num", text: k.maxConcurrency ? String(k.maxConcurrency) : "unlimited" }),
          h("td", { class: "num", text: String(k.maxAttempts || 1) }),
          h("td", { text: k.defaultTimeout || "none" }),
          h("td", { text: k.retrySafe ? "yes" : "no" })));
      }
      if (can("submit")) submitForm(ctx, formBox, kinds);
    }, (err) => {
      if (ctx.signal.aborted || err.status === "UNAUTHENTICATED") return;
      loadError.textContent = String(err);
    });
  }

  /** Where a kind runs: in process, in which worker sessions, or nowhere yet (work waits). */
  function runsWhere(k) {
    const sessions = k.sessions || [];
    const parts = [];
    if (k.inProcess) parts.push("in process");
    if (sessions.length) parts.push(`${sessions.length === 1 ? "worker" : sessions.length + " workers"}: ${sessions.join(", ")}`);
    return parts.length ? parts.join("; ") : "no worker connected";
  }

  function submitForm(ctx, box, kinds) {
    const select = h("select", { id: "submit-kind", "data-testid": "submit-kind" },
      kinds.map((k) => h("option", { value: k.name, text: k.name })));
    const first = kinds.find((k) => k.name === "sleep") || kinds[0];
    if (first) select.value = first.name;
    const textarea = h("textarea", {
      id: "submit-input", "data-testid": "submit-input", spellcheck: "false", rows: 8,
      "aria-describedby": "submit-input-hint submit-error",
    });
    const error = h("p", { id: "submit-error", class: "field-error", role: "alert", "data-testid": "submit-error" });
    const requestId = h("input", { type: "text", id: "submit-request-id", "data-testid": "submit-request-id", autocomplete: "off" });
    const button = h("button", { type: "submit", class: "primary", "data-testid": "submit-button", text: "Submit" });
    const kindOf = () => kinds.find((k) => k.name === select.value);
    // The textarea follows the kind until the user edits it.
    let edited = false;
    const prefill = () => {
      textarea.value = INPUT_EXAMPLES[select.value] || "{}";
    };
    prefill();
    textarea.addEventListener("input", () => { edited = true; });
    select.addEventListener("change", () => {
      if (!edited) prefill();
      typeHint.textContent = hintFor(kindOf());
    });
    const hintFor = (k) => (k ? `JSON of ${k.inputType} (proto3 JSON; the server fills in its "@type").` : "");
    const typeHint = h("span", { id: "submit-input-hint", class: "hint", text: hintFor(kindOf()) });

    const form = h("form", { "data-testid": "submit-form" },
      h("h2", { id: "submit-title", text: "Submit a task" }),
      h("div", { class: "field" }, h("label", { for: "submit-kind", text: "Kind" }), select),
      h("div", { class: "field" }, h("label", { for: "submit-input", text: "Input" }), typeHint, textarea, error),
      h("div", { class: "field" }, h("label", { for: "submit-request-id", text: "Request id (optional)" }),
        h("span", { class: "hint", text: "Repeating a request id returns the operation it started instead of a new one." }), requestId),
      button);
    form.addEventListener("submit", async (e) => {
      e.preventDefault();
      const fail = (text) => {
        error.textContent = text;
        textarea.setAttribute("aria-invalid", "true");
      };
      error.textContent = "";
      textarea.removeAttribute("aria-invalid");
      const kind = kindOf();
      if (!kind) return fail("Choose a kind.");
      let input;
      try {
        input = JSON.parse(textarea.value);
      } catch (err) {
        return fail("Input is not valid JSON: " + err.message);
      }
      if (!input || typeof input !== "object" || Array.isArray(input)) return fail("Input must be a JSON object.");
      // The kind fixes the input's type: the server fills in "@type" (and puts a well-known
      // type's JSON, a Struct's object, where it belongs).
      const body = { kind: kind.name, input };
      if (requestId.value.trim()) body.requestId = requestId.value.trim();
      button.disabled = true;
      try {
        const op = await api("POST", "/v1/tasks:submit", body, ctx.signal);
        navigate(opHref(op.name));
      } catch (err) {
        if (ctx.signal.aborted || err.status === "UNAUTHENTICATED") return;
        if (err.status === "PERMISSION_DENIED") showBanner(String(err));
        fail(String(err));
      } finally {
        button.disabled = false;
      }
    });
    clear(box).append(form);
  }

  // ===================================================================== start

  let focusFilterOnList = false;

  function onKey(e) {
    // "/" focuses the filter box (going to the list first) unless typing somewhere.
    if (e.key !== "/" || e.ctrlKey || e.metaKey || e.altKey) return;
    const t = e.target;
    if (t && (t.isContentEditable || /^(INPUT|TEXTAREA|SELECT)$/.test(t.tagName))) return;
    if ($("confirm").open) return;
    e.preventDefault();
    if (!$("filter")) {
      focusFilterOnList = true; // hashchange is async: listPage focuses it
      navigate(lastListHash);
    }
    const f = $("filter");
    if (f) {
      f.focus();
      f.select();
    }
  }

  async function start() {
    $("signout").addEventListener("click", signOut);
    $("banner-close").addEventListener("click", hideBanner);
    document.addEventListener("keydown", onKey);
    window.addEventListener("hashchange", route);
    try {
      await loadCaller();
    } catch (_) {
      return; // the sign-in view is up
    }
    loadNodes();
    route();
  }

  start();
})();
