// Batches from the operations page: what a bulk action asks (and how it is confirmed), and
// the live panel of the batch operation it starts.

import { api, keepWatching } from "./api.js";
import { can } from "./caller.js";
import { clear, h } from "./dom.js";
import { badge, codeName, meta, opHref, opId, progressEl, shortId, stateOf, toInt, uuid } from "./format.js";
import { confirmAction, reportError } from "./status.js";

/**
 * The bar of bulk actions, each shown when the caller's role allows it; `onBulk(action,
 * scope)` runs one. Returns the bar and `showSelected(n)`, which says how many are selected.
 */
export function bulkBar(onBulk) {
  const mayCancel = can("submit");
  const mayDelete = can("delete");
  const selCount = h("span", { class: "muted", "data-testid": "selected-count", text: "" });
  const cancelSel = h("button", { type: "button", "data-testid": "bulk-cancel-selected", text: "Cancel selected", hidden: !mayCancel, disabled: true, onclick: () => onBulk("cancel", "selected") });
  const deleteSel = h("button", { type: "button", "data-testid": "bulk-delete-selected", text: "Delete selected", hidden: !mayDelete, disabled: true, onclick: () => onBulk("delete", "selected") });
  const cancelAll = h("button", { type: "button", "data-testid": "bulk-cancel-matching", text: "Cancel all matching", hidden: !mayCancel, onclick: () => onBulk("cancel", "matching") });
  const deleteAll = h("button", { type: "button", "data-testid": "bulk-delete-matching", text: "Delete all matching", hidden: !mayDelete, onclick: () => onBulk("delete", "matching") });
  const toolbar = h("div", { class: "toolbar", "data-testid": "bulk-bar", hidden: !mayCancel && !mayDelete },
    cancelSel, deleteSel, selCount, h("span", { class: "spacer" }), cancelAll, deleteAll);
  return {
    toolbar,
    showSelected(n) {
      selCount.textContent = n ? `${n} selected` : "";
      cancelSel.disabled = n === 0;
      deleteSel.disabled = n === 0;
    },
  };
}

/**
 * The request of a bulk `action` ("cancel" or "delete") on the `names` selected (scope
 * "selected") or on every operation matching `filter` (scope "matching"), and the words that
 * confirm it: { body, title, message, detail }; null when nothing is selected.
 */
export function bulkRequest(action, scope, names, filter) {
  const verb = action === "cancel" ? "Cancel" : "Delete";
  if (scope === "selected") {
    if (names.length === 0) return null;
    return {
      body: { names },
      title: `${verb} ${names.length} selected operation${names.length === 1 ? "" : "s"}?`,
      message: action === "cancel"
        ? "Cancellation is requested for each selected operation that is not done yet."
        : "Each selected operation that is done is deleted for good; those not done are skipped.",
      detail: names.join("\n"),
    };
  }
  // An empty filter would select nothing: say "every one" explicitly.
  const f = filter || (action === "cancel" ? "done = false" : "done = true");
  return {
    body: { filter: f },
    title: `${verb} all operations matching the filter?`,
    message: action === "cancel"
      ? "Cancellation is requested for every operation matching this filter that is not done yet:"
      : "Every finished operation matching this filter is deleted for good (those not done are skipped):",
    detail: f,
  };
}

/**
 * Asks to confirm a bulk `action` on `scope`, then starts its batch and shows its panel in
 * `box`; `onDone()` runs when the batch ends.
 */
export async function runBulk(ctx, box, action, scope, names, filter, onDone) {
  const asked = bulkRequest(action, scope, names, filter);
  if (!asked) return;
  const verb = action === "cancel" ? "Cancel" : "Delete";
  const { body, title, message, detail } = asked;
  const ok = await confirmAction({ title, message, detail, ok: `${verb} operations` });
  if (!ok || ctx.signal.aborted) return;
  body.requestId = uuid();
  try {
    const batchOp = await api("POST", action === "cancel" ? "/v1/operations:batchCancel" : "/v1/operations:batchDelete", body, ctx.signal);
    batchPanel(ctx, box, batchOp, `${verb} ${scope === "selected" ? "selected" : "matching"}`, onDone);
  } catch (err) {
    if (!ctx.signal.aborted) reportError(err);
  }
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
