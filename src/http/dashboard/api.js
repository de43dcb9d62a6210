// The REST API: fetch with the bearer token, Google JSON errors as ApiError, and a server-sent
// events reader (fetch + getReader: EventSource cannot send an Authorization header).

import { FINAL_STREAM_ERRORS, TOKEN_KEY } from "./constants.js";
import { codeName, sleep } from "./format.js";
import { setConn, setConnOk } from "./status.js";

/** What the API asks of the shell, set by the app at start (so this module needs no shell). */
export const hooks = { unauthenticated: (_err) => {} };


/** A Google JSON error (or a transport failure, as UNAVAILABLE). */
export class ApiError extends Error {
  constructor(status, message, httpStatus, details) {
    super(message);
    this.status = status;
    this.httpStatus = httpStatus || 0;
    this.details = details || [];
  }
  toString() {
    return `${this.status}: ${this.message}`;
  }
}

export const HTTP_STATUS_NAMES = {
  400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED", 404: "NOT_FOUND",
  409: "ABORTED", 429: "RESOURCE_EXHAUSTED", 500: "INTERNAL", 501: "UNIMPLEMENTED",
  503: "UNAVAILABLE", 504: "DEADLINE_EXCEEDED",
};

/** Turns `{"error":{...}}` (or whatever a proxy sent) into an ApiError. */
export function errorFromBody(httpStatus, text) {
  let err = null;
  try {
    err = JSON.parse(text).error;
  } catch (_) {
    // not JSON: fall through
  }
  if (err && typeof err === "object") {
    return new ApiError(
      err.status || (err.code ? codeName(err.code) : HTTP_STATUS_NAMES[httpStatus]) || "UNKNOWN",
      err.message || "",
      httpStatus,
      err.details,
    );
  }
  return new ApiError(HTTP_STATUS_NAMES[httpStatus] || "UNKNOWN",
    (text || "").trim() || `HTTP ${httpStatus}`, httpStatus);
}

export function authHeaders(extra) {
  const headers = Object.assign({}, extra);
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (token) headers.Authorization = "Bearer " + token;
  return headers;
}

export async function rawFetch(path, init) {
  try {
    return await fetch(path, init);
  } catch (e) {
    if (init && init.signal && init.signal.aborted) throw e;
    throw new ApiError("UNAVAILABLE", "cannot reach the server (" + e.message + ")");
  }
}

/**
 * Calls the REST API. Rejects with ApiError; a 401 also shows the sign-in view (the
 * caller still sees the rejection, and should simply stop).
 */
export async function api(method, path, body, signal) {
  const init = { method, headers: authHeaders({ Accept: "application/json" }), signal };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const res = await rawFetch(path, init);
  const text = await res.text();
  if (!res.ok) throw noteAuthError(errorFromBody(res.status, text));
  setConnOk();
  return text ? JSON.parse(text) : {};
}

export function noteAuthError(err) {
  if (err.status === "UNAUTHENTICATED") hooks.unauthenticated(err);
  return err;
}

/**
 * Reads a server-sent event stream with fetch, so the bearer token goes along.
 * `onOpen` runs once the response is 200; `onEvent` gets each `data:` JSON.
 * Resolves when the server closes the stream; rejects with ApiError on a non-200 answer
 * or an `event: error`.
 */
export async function readSse(path, signal, onOpen, onEvent) {
  const res = await rawFetch(path, {
    headers: authHeaders({ Accept: "text/event-stream" }),
    signal,
    cache: "no-store",
  });
  if (!res.ok) throw noteAuthError(errorFromBody(res.status, await res.text()));
  onOpen();
  const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  let eventType = "message";
  let data = [];
  const dispatch = () => {
    if (data.length === 0) {
      eventType = "message";
      return;
    }
    const payload = data.join("\n");
    const type = eventType;
    eventType = "message";
    data = [];
    if (type === "error") throw noteAuthError(errorFromBody(0, payload));
    let value;
    try {
      value = JSON.parse(payload);
    } catch (_) {
      return; // not ours to show
    }
    if (value && value.error && !value.name) throw noteAuthError(errorFromBody(0, payload));
    onEvent(value);
  };
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += value;
      const lines = buffer.split(/\r\n|\r|\n/);
      buffer = lines.pop(); // the last piece may be an unfinished line
      for (const line of lines) {
        if (line === "") dispatch();
        else if (line.startsWith(":")) continue; // comment / keep-alive
        else {
          const colon = line.indexOf(":");
          const field = colon < 0 ? line : line.slice(0, colon);
          let val = colon < 0 ? "" : line.slice(colon + 1);
          if (val.startsWith(" ")) val = val.slice(1);
          if (field === "data") data.push(val);
          else if (field === "event") eventType = val;
        }
      }
    }
    dispatch();
  } finally {
    reader.cancel().catch(() => {});
  }
}

/**
 * Keeps a watch stream open for the page's lifetime: reopens it with backoff when it
 * ends or fails for a reason a retry can mend. `onOpen` runs on every (re)connect, so a
 * page can re-list what it may have missed. `until()` true stops after a clean close.
 * `onFinalError` gets an error a retry cannot mend.
 */
export function keepWatching(ctx, path, { onOpen, onEvent, onFinalError, until, indicator = true }) {
  let backoff = 500;
  let openedAt = 0;
  // Only the page's main stream drives the header's indicator.
  const conn = indicator ? setConn : () => {};
  (async () => {
    conn("connecting");
    while (!ctx.signal.aborted) {
      try {
        await readSse(path, ctx.signal, () => {
          openedAt = Date.now();
          conn("live");
          onOpen && onOpen();
        }, onEvent);
        if (ctx.signal.aborted || (until && until())) {
          if (!ctx.signal.aborted) conn("ready");
          return;
        }
      } catch (err) {
        if (ctx.signal.aborted) return;
        if (err instanceof ApiError && FINAL_STREAM_ERRORS.has(err.status)) {
          conn("ready");
          onFinalError && onFinalError(err);
          return;
        }
        if (!(err instanceof ApiError)) console.warn("watch failed", err);
      }
      // Start over only after a stream that stayed up: one that opens and fails at once
      // (a 200 then `event: error`) must still back off.
      if (openedAt && Date.now() - openedAt >= 10000) backoff = 500;
      openedAt = 0;
      conn("reconnecting");
      await sleep(backoff + Math.random() * 250, ctx.signal);
      backoff = Math.min(backoff * 2, 15000);
    }
  })();
}
