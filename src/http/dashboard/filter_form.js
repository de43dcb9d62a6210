// The operations page's filter: its box (with the error it shows) and the state chips.

import { STATES } from "./constants.js";
import { h } from "./dom.js";
import { navigate } from "./nav.js";

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

/**
 * The filter box and the state chips for `filter`; `onApply(f)` gets the filter asked for.
 * Returns the form, the chips, the input, and how to show or clear the list's error.
 */
export function filterForm(filter, onApply) {
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
    onApply(input.value.trim());
  });
  const chips = h("div", { class: "chips", role: "group", "aria-label": "Filter by state" },
    STATES.map((s) => h("button", {
      type: "button", class: "chip", "data-testid": "chip-" + s,
      "aria-pressed": new RegExp(`\\bstate\\s*=\\s*${s}\\b`).test(filter) ? "true" : "false",
      onclick: () => onApply(toggleStateFilter(input.value.trim(), s)),
      text: s.toLowerCase(),
    })));
  return {
    form,
    chips,
    input,
    /** Shows why the list could not be read (an invalid filter marks the box). */
    showError(err) {
      filterError.textContent = String(err);
      if (err.status === "INVALID_ARGUMENT") input.setAttribute("aria-invalid", "true");
    },
    clearError() {
      filterError.textContent = "";
      input.removeAttribute("aria-invalid");
    },
  };
}
