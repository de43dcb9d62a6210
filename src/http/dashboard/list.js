// Page: operations (#/operations?filter=…), newest first, a page at a time, following
// changes live; with bulk actions over the selection or the filter (their batches in
// batch.js), the filter box (filter_form.js) and the table (ops_table.js).

import { keepWatching, api } from "./api.js";
import { bulkBar, runBulk } from "./batch.js";
import { loadNodes } from "./caller.js";
import { PAGE_SIZE } from "./constants.js";
import { clear, h } from "./dom.js";
import { filterForm } from "./filter_form.js";
import { createdMs } from "./format.js";
import { nav, navigate } from "./nav.js";
import { opsTable } from "./ops_table.js";
import { showBanner } from "./status.js";

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
  const filterBox = filterForm(filter, applyFilter);

  // --- bulk bar and the batches it starts
  const bar = bulkBar(bulk);
  const batchBox = h("div", { "data-testid": "batch-area" });

  // --- table
  const { table, tbody, allBox, makeRow, fillRow } = opsTable(st.selected, updateSelection, (checked) => {
    for (const name of st.order) {
      if (checked) st.selected.add(name);
      else st.selected.delete(name);
    }
    for (const row of st.rows.values()) fillRow(row, row.op);
    updateSelection();
  });
  const newNotice = h("div", { class: "new-notice", "data-testid": "new-notice", "aria-live": "polite", hidden: true });
  const pageInfo = h("span", { class: "muted", "data-testid": "page-info" });
  const prevBtn = h("button", { type: "button", "data-testid": "prev-page", text: "Previous page", disabled: true, onclick: () => loadPage(st.tokens.pop() || "", false) });
  const nextBtn = h("button", { type: "button", "data-testid": "next-page", text: "Next page", disabled: true, onclick: () => { st.tokens.push(st.token); loadPage(st.next, false); } });

  main.append(h("h1", { text: "Operations" }), filterBox.form, filterBox.chips, bar.toolbar, batchBox, newNotice,
    h("div", { class: "table-wrap" }, table),
    h("div", { class: "pager" }, prevBtn, nextBtn, pageInfo));
  if (nav.focusFilterOnList) {
    nav.focusFilterOnList = false;
    filterBox.input.focus();
    filterBox.input.select();
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
      filterBox.clearError();
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
    filterBox.showError(err);
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

  function updateSelection() {
    // Forget selected operations no longer on screen.
    for (const name of st.selected) if (!st.rows.has(name)) st.selected.delete(name);
    const n = st.selected.size;
    bar.showSelected(n);
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
  function bulk(action, scope) {
    return runBulk(ctx, batchBox, action, scope, [...st.selected], filter, () => loadPage(st.token, false));
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
