// Page: operations (#/operations?filter=…), with batches.

import { api, keepWatching } from "./api.js";
import { can, loadNodes } from "./caller.js";
import { PAGE_SIZE, STATES } from "./constants.js";
import { clear, h } from "./dom.js";
import { badge, codeName, createdMs, meta, opHref, opId, progressEl, shortId, stateOf, timeEl, toInt, uuid } from "./format.js";
import { nav, navigate } from "./nav.js";
import { confirmAction, reportError, showBanner } from "./status.js";

/** The filter with `state = X` toggled: removed if there, replacing another state, or added. */
export function toggleStateFilter(filter, state) {
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

export function listPage(ctx, main, filter) {
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
  if (nav.focusFilterOnList) {
    nav.focusFilterOnList = false;
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
export function batchPanel(ctx, box, op, label, onDone) {
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
