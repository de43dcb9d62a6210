// The banner, the connection indicator, and the confirmation dialogs.

import { $ } from "./dom.js";

export function showBanner(text) {
  $("banner-text").textContent = text;
  $("banner").hidden = false;
}

export function hideBanner() {
  $("banner").hidden = true;
}

/** Shows an action's failure: a banner, unless the sign-in view already took over. */
export function reportError(err) {
  if (err && err.name === "AbortError") return;
  if (err && err.status === "UNAUTHENTICATED") return;
  showBanner(String(err));
}

export const CONN_TEXT = {
  connecting: "connecting…",
  live: "live",
  reconnecting: "reconnecting…",
  ready: "connected",
  signin: "sign-in needed",
  offline: "offline",
};

export function setConn(state) {
  const el = $("conn");
  el.dataset.state = state;
  el.textContent = CONN_TEXT[state] || state;
}

/** A request worked: leave "offline", but do not override a stream's own state. */
export function setConnOk() {
  const el = $("conn");
  if (el.dataset.state === "offline" || el.dataset.state === "connecting") setConn("ready");
}

// ===================================================================== shell: confirm dialog

/**
 * Asks before acting. Resolves true when the OK button is pressed, false on "Go back" or
 * Escape. `detail` is shown verbatim in a <pre> (e.g. the filter a batch acts on).
 */
export function confirmAction({ title, message, detail, ok, danger = true }) {
  return askDialog({ title, message, detail, ok, danger, field: null });
}

/**
 * As confirmAction, with a one-line text field (`label`, starting as `value`): resolves
 * with its text when OK is pressed (or Enter in the field), null otherwise.
 */
export async function promptAction({ title, message, label, value = "", ok, danger = false }) {
  const yes = await askDialog({ title, message, ok, danger, field: { label, value } });
  return yes ? $("confirm-input").value.trim() : null;
}

/** The dialog behind confirmAction and promptAction; resolves true on OK. */
export function askDialog({ title, message, detail, ok, danger, field }) {
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
