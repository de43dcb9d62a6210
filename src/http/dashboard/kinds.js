// Page: kinds, and the submit form (#/kinds).

import { api } from "./api.js";
import { can } from "./caller.js";
import { INPUT_EXAMPLES } from "./constants.js";
import { clear, h } from "./dom.js";
import { opHref, toInt } from "./format.js";
import { navigate } from "./nav.js";
import { setConn, showBanner } from "./status.js";

export function kindsPage(ctx, main) {
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
export function runsWhere(k) {
  const sessions = k.sessions || [];
  const parts = [];
  if (k.inProcess) parts.push("in process");
  if (sessions.length) parts.push(`${sessions.length === 1 ? "worker" : sessions.length + " workers"}: ${sessions.join(", ")}`);
  return parts.length ? parts.join("; ") : "no worker connected";
}

export function submitForm(ctx, box, kinds) {
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
