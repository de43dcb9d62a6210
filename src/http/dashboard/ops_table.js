// The operations table: its head (with select-all), and rows that keep their checkbox and
// link while their other cells follow the operation's changes.

import { clear, h } from "./dom.js";
import { badge, meta, opHref, opId, progressEl, shortId, stateOf, timeEl } from "./format.js";

/**
 * A table of operations whose selection is `selected` (a Set of names). `onSelect()` is
 * called after a checkbox changed it; `onSelectAll(checked)` when the head's box did.
 * Returns the table, its body, the head's box, and makeRow/fillRow for its rows.
 */
export function opsTable(selected, onSelect, onSelectAll) {
  const allBox = h("input", { type: "checkbox", "aria-label": "Select all on this page", "data-testid": "select-all" });
  allBox.addEventListener("change", () => onSelectAll(allBox.checked));
  const tbody = h("tbody");
  const table = h("table", { "data-testid": "ops-table" },
    h("thead", {}, h("tr", {},
      h("th", {}, allBox), h("th", { text: "Name" }), h("th", { text: "Kind" }), h("th", { text: "State" }),
      h("th", { class: "num", text: "Priority" }),
      h("th", { text: "Progress" }), h("th", { text: "Status" }), h("th", { class: "num", text: "Attempt" }),
      h("th", { text: "Created" }), h("th", { text: "Started" }), h("th", { text: "Ended" }), h("th", { text: "Node" }))),
    tbody);

  /** A row for an operation: the checkbox and link stay, the other cells follow updates. */
  function makeRow(op) {
    const tr = h("tr", { "data-name": op.name });
    const box = h("input", { type: "checkbox", "aria-label": "Select " + opId(op.name), "data-testid": "row-select" });
    box.addEventListener("change", () => {
      if (box.checked) selected.add(op.name);
      else selected.delete(op.name);
      tr.classList.toggle("selected", box.checked);
      onSelect();
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
    row.box.checked = selected.has(op.name);
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

  return { table, tbody, allBox, makeRow, fillRow };
}
