// The hash router and the sign-in view: each page gets a fresh `ctx` whose AbortSignal ends
// every request, stream and timer of the page when the route changes.

import { ApiError, authHeaders, errorFromBody, rawFetch } from "./api.js";
import { loadNodes, renderWho, session } from "./caller.js";
import { TOKEN_KEY } from "./constants.js";
import { detailPage } from "./detail.js";
import { $, clear, h } from "./dom.js";
import { tickTimes } from "./format.js";
import { kindsPage } from "./kinds.js";
import { listPage } from "./list.js";
import { nav } from "./nav.js";
import { overviewPage } from "./overview.js";
import { schedulePage, schedulesPage } from "./schedules.js";
import { hideBanner, setConn } from "./status.js";

export let current = null; // { ctl: AbortController, timers: [] } of the page on screen

export function parseHash() {
  const raw = location.hash.replace(/^#/, "") || "/";
  const q = raw.indexOf("?");
  const path = q < 0 ? raw : raw.slice(0, q);
  const params = new URLSearchParams(q < 0 ? "" : raw.slice(q + 1));
  return { path, params };
}

/** Ends everything the page on screen started. */
export function teardown() {
  if (!current) return;
  current.ctl.abort();
  current.timers.forEach(clearInterval);
  current = null;
  // A question asked by the page that is gone answers "no" (its `close` listener).
  if ($("confirm").open) $("confirm").close();
}

export function newCtx() {
  const ctl = new AbortController();
  const page = { ctl, timers: [] };
  current = page;
  const ctx = {
    signal: ctl.signal,
    every(ms, fn) {
      // This page's list, not whichever page is on screen when called.
      if (!ctl.signal.aborted) page.timers.push(setInterval(fn, ms));
    },
  };
  return ctx;
}

export function route() {
  teardown();
  hideBanner();
  session.signInShown = false;
  const { path, params } = parseHash();
  const main = clear($("main"));
  const ctx = newCtx();
  ctx.every(15000, tickTimes);
  let section = "";
  if (path === "/" || path === "") {
    section = "overview";
    overviewPage(ctx, main);
  } else if (path === "/operations") {
    section = "operations";
    nav.lastListHash = location.hash || "#/operations";
    listPage(ctx, main, params.get("filter") || "");
  } else if (path.startsWith("/operations/")) {
    section = "operations";
    const id = pathId(path, "/operations/");
    if (id !== null) detailPage(ctx, main, id);
    else notFound(main);
  } else if (path === "/schedules") {
    section = "schedules";
    schedulesPage(ctx, main);
  } else if (path.startsWith("/schedules/")) {
    section = "schedules";
    const id = pathId(path, "/schedules/");
    if (id !== null) schedulePage(ctx, main, id);
    else notFound(main);
  } else if (path === "/kinds") {
    section = "kinds";
    kindsPage(ctx, main);
  } else {
    notFound(main);
  }
  nav.focusFilterOnList = false; // only for the list page this route built
  for (const a of document.querySelectorAll("nav a[data-nav]")) {
    if (a.dataset.nav === section) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
}

/** The decoded rest of `path` after `prefix`; null for a malformed %-escape. */
export function pathId(path, prefix) {
  try {
    return decodeURIComponent(path.slice(prefix.length));
  } catch (_) {
    return null;
  }
}

export function notFound(main) {
  document.title = "Not found · oprun";
  setConn("ready");
  main.append(h("h1", { text: "Page not found" }), h("p", {}, h("a", { href: "#/", text: "Go to the overview" })));
}


// ===================================================================== page: sign in

/** Replaces the page by a token prompt; called on any 401. */
export function showSignIn(err) {
  if (session.signInShown) return;
  session.signInShown = true;
  teardown();
  hideBanner();
  setConn("signin");
  document.title = "Sign in · oprun";
  const main = clear($("main"));
  const input = h("input", {
    type: "password", id: "signin-token", autocomplete: "off", "data-testid": "signin-token",
    "aria-describedby": "signin-error", required: true,
  });
  const error = h("p", { id: "signin-error", class: "field-error", role: "alert", "data-testid": "signin-error" });
  if (sessionStorage.getItem(TOKEN_KEY)) {
    error.textContent = "The server did not accept the token: " + err;
  }
  const form = h("form", { class: "panel signin", "data-testid": "signin" },
    h("h1", { text: "Sign in" }),
    h("p", { text: "This server asks for a bearer token. It is kept in this tab only (sessionStorage) and sent with every request." }),
    h("div", { class: "field" }, h("label", { for: "signin-token", text: "Token" }), input),
    error,
    h("button", { type: "submit", class: "primary", "data-testid": "signin-button", text: "Sign in" }));
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    const token = input.value.trim();
    if (!token) {
      error.textContent = "Enter a token.";
      return;
    }
    sessionStorage.setItem(TOKEN_KEY, token);
    error.textContent = "";
    try {
      // Asked directly, so a rejected token stays on this view with the reason.
      const res = await rawFetch("/v1/caller", { headers: authHeaders({ Accept: "application/json" }) });
      const text = await res.text();
      if (!res.ok) throw errorFromBody(res.status, text);
      session.caller = JSON.parse(text);
    } catch (e2) {
      if (e2.status === "UNAUTHENTICATED") sessionStorage.removeItem(TOKEN_KEY);
      error.textContent = "Sign-in failed: " + e2;
      input.setAttribute("aria-invalid", "true");
      return;
    }
    renderWho();
    loadNodes();
    route();
  });
  main.append(form);
  renderWho();
  input.focus();
}

export function signOut() {
  sessionStorage.removeItem(TOKEN_KEY);
  session.caller = null;
  renderWho();
  showSignIn(new ApiError("UNAUTHENTICATED", "signed out"));
}
