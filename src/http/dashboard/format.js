// Formatting: ids, times, durations, states, progress.

import { CODE_NAMES, TYPE_PREFIX } from "./constants.js";
import { h } from "./dom.js";

/** The 32-hex id of `operations/{id}`. */
export const opId = (name) => String(name || "").replace(/^operations\//, "");
/** Ids start with a timestamp; their random tail tells operations apart at a glance. */
export const shortId = (name) => "…" + opId(name).slice(-8);
export const opHref = (name) => "#/operations/" + encodeURIComponent(opId(name));
/** The id of `schedules/{id}`. */
export const schedId = (name) => String(name || "").replace(/^schedules\//, "");
export const schedHref = (name) => "#/schedules/" + encodeURIComponent(schedId(name));
/** The operations list, filtered to the operations a schedule started. */
export const schedRunsHref = (name) => "#/operations?filter=" + encodeURIComponent(`schedule = "${name}"`);

export const codeName = (code) => CODE_NAMES[code || 0] || "CODE_" + code;
export const toInt = (s) => (s === undefined || s === null || s === "" ? 0 : Number(s));
export const meta = (op) => (op && op.metadata) || {};
export const stateOf = (op) => meta(op).state || "STATE_UNSPECIFIED";
/** A Timestamp's milliseconds (0 when absent); compare these, not the strings, whose
 * fractional digits vary. */
export const ts = (iso) => (iso ? Date.parse(iso) || 0 : 0);
export const createdMs = (op) => ts(meta(op).createTime);
export const typeName = (any) => String((any && any["@type"]) || "").replace(TYPE_PREFIX, "");

/** "3 min ago" / "in 2 min" relative to now. */
export function relTime(iso) {
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
export function timeEl(iso) {
  if (!iso) return h("span", { class: "muted", text: "—" });
  return h("time", { datetime: iso, title: iso, "data-rel": "", text: relTime(iso) });
}

/** Keeps relative times true while a page stays open (local only: no request). */
export function tickTimes() {
  for (const el of document.querySelectorAll("time[data-rel]")) {
    el.textContent = relTime(el.getAttribute("datetime"));
  }
}

export function badge(state) {
  return h("span", { class: "badge", "data-state": state, "data-testid": "state", text: state });
}

/**
 * A progress bar with "completed/total unit · pct%" beside it. With no total it shows the
 * browser's indeterminate bar while the operation is not done.
 */
export function progressEl(op, large) {
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

export const prettyJson = (value) => JSON.stringify(value, null, 2);

/**
 * A task input for reading: its JSON without "@type" (a well-known type, such as the
 * Struct of a script's kind, as its `value`).
 */
export function inputJson(input) {
  const { "@type": _type, ...fields } = input || {};
  const wellKnown = typeName(input).startsWith("google.protobuf.") && "value" in fields;
  return prettyJson(wellKnown ? fields.value : fields);
}

/** A Duration's JSON ("5400s", "0.100s") for a person: "1h 30m", "0.1s". */
export function durText(d) {
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
export function specText(s) {
  if (s.cron) return `${s.cron} (${s.timeZone || "UTC"})`;
  if (s.interval) return "every " + durText(s.interval);
  return "—";
}

/** A random UUID, also where crypto.randomUUID is missing (plain HTTP off loopback). */
export function uuid() {
  if (crypto.randomUUID) return crypto.randomUUID();
  const b = crypto.getRandomValues(new Uint8Array(16));
  b[6] = (b[6] & 0x0f) | 0x40;
  b[8] = (b[8] & 0x3f) | 0x80;
  const hex = [...b].map((x) => x.toString(16).padStart(2, "0")).join("");
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
}

/** Resolves after `ms`, or at once when `signal` aborts. */
export function sleep(ms, signal) {
  return new Promise((resolve) => {
    const timer = setTimeout(resolve, ms);
    signal && signal.addEventListener("abort", () => { clearTimeout(timer); resolve(); }, { once: true });
  });
}
