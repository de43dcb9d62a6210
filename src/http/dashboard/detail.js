// Page: one operation (#/operations/{id}).

import { api, keepWatching } from "./api.js";
import { can, session } from "./caller.js";
import { append, clear, h } from "./dom.js";
import { badge, codeName, inputJson, meta, opHref, prettyJson, progressEl, schedHref, shortId, stateOf, timeEl, typeName, uuid } from "./format.js";
import { nav, navigate } from "./nav.js";
import { confirmAction, reportError, showBanner } from "./status.js";

export function detailPage(ctx, main, id) {
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
    h("p", {}, h("a", { href: nav.lastListHash, text: "← Operations" })),
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
      navigate(nav.lastListHash);
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
export function addMeta(dl, label, value, testid) {
  if (value === undefined || value === null || value === "") return;
  dl.append(h("dt", { text: label }), h("dd", { "data-testid": testid }, value));
}

export function renderMeta(dl, op) {
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

export function renderOutcome(section, op) {
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

export async function copyText(text, note) {
  try {
    await navigator.clipboard.writeText(text);
    note.textContent = "Copied.";
  } catch (_) {
    note.textContent = "Copy failed: select the text and copy it by hand.";
  }
}
