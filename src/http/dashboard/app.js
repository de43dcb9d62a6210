// oprun dashboard: ES modules, no framework, no build step. This one starts it.

import { $ } from "./dom.js";
import { hooks } from "./api.js";
import { loadCaller, loadNodes } from "./caller.js";
import { nav, navigate } from "./nav.js";
import { route, showSignIn, signOut } from "./router.js";
import { hideBanner } from "./status.js";

export function onKey(e) {
  // "/" focuses the filter box (going to the list first) unless typing somewhere.
  if (e.key !== "/" || e.ctrlKey || e.metaKey || e.altKey) return;
  const t = e.target;
  if (t && (t.isContentEditable || /^(INPUT|TEXTAREA|SELECT)$/.test(t.tagName))) return;
  if ($("confirm").open) return;
  e.preventDefault();
  if (!$("filter")) {
    nav.focusFilterOnList = true; // hashchange is async: listPage focuses it
    navigate(nav.lastListHash);
  }
  const f = $("filter");
  if (f) {
    f.focus();
    f.select();
  }
}

export async function start() {
  hooks.unauthenticated = showSignIn;
  $("signout").addEventListener("click", signOut);
  $("banner-close").addEventListener("click", hideBanner);
  document.addEventListener("keydown", onKey);
  window.addEventListener("hashchange", route);
  try {
    await loadCaller();
  } catch (_) {
    return; // the sign-in view is up
  }
  loadNodes();
  route();
}


start();
