// Pages: schedules (#/schedules) and one schedule (#/schedules/{id}).

import { api } from "./api.js";
import { can, session } from "./caller.js";
import { OVERLAP_TEXT, PAGE_SIZE, SCHEDULE_REFRESH_MS } from "./constants.js";
import { addMeta, copyText } from "./detail.js";
import { append, clear, h } from "./dom.js";
import { codeName, durText, inputJson, opHref, prettyJson, schedHref, schedId, schedRunsHref, shortId, specText, timeEl, toInt, typeName, uuid } from "./format.js";
import { navigate } from "./nav.js";
import { confirmAction, promptAction, reportError, setConn, showBanner } from "./status.js";

/** How a schedule's run stands: its state (QUEUED, RUNNING, SUCCEEDED), or its error's code name. */
export function runBadge(run) {
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
export function runLink(run) {
  if (!run.operation) return h("span", { class: "hint", text: "not started" });
  return h("a", { href: opHref(run.operation), class: "mono", title: run.operation, "data-testid": "run-link", text: shortId(run.operation) });
}

/** The "Last run" of a schedule: outcome, operation, fire time, and whether Run now started it. */
export function lastRun(s) {
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
export async function scheduleAction(ctx, s, action) {
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
export function scheduleButtons(ctx, onChange) {
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

export function schedulesPage(ctx, main) {
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

export function schedulePage(ctx, main, id) {
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
export function catchupText(d) {
  if (!d) return "1m (default)";
  return toInt(String(d).replace(/s$/, "")) === 0 ? "0s: missed fires are skipped" : durText(d);
}
