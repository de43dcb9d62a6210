// The caller: their role, what they may do, and the nodes.

import { $ } from "./dom.js";
import { api } from "./api.js";
import { TOKEN_KEY } from "./constants.js";

export const session = { caller: null, signInShown: false };

/** Whether the caller's role allows an action: "submit" (also cancel, rerun) or "delete". */
export function can(action) {
  // Without /v1/caller (an older server) show everything: the server still decides.
  const role = session.caller ? session.caller.role : "ADMIN";
  if (action === "delete") return role === "ADMIN";
  if (action === "submit") return role === "ADMIN" || role === "SUBMITTER";
  return true;
}

export async function loadCaller() {
  try {
    session.caller = await api("GET", "/v1/caller");
  } catch (err) {
    if (err.status === "UNAUTHENTICATED") throw err;
    session.caller = null;
  }
  renderWho();
}

export function renderWho() {
  const c = session.caller;
  const who = $("who");
  if (!c) {
    who.textContent = "";
  } else if (c.authenticated) {
    who.textContent = (c.label ? c.label + " · " : "") + String(c.role || "").toLowerCase();
  } else {
    who.textContent = "no sign-in required";
  }
  $("signout").hidden = !sessionStorage.getItem(TOKEN_KEY);
}

/** The header's node summary; read at start and whenever a stream reconnects. */
export async function loadNodes() {
  try {
    const res = await api("GET", "/v1/nodes");
    const all = res.nodes || [];
    const nodes = all.filter((n) => !n.session);
    const workers = all.length - nodes.length;
    const live = nodes.filter((n) => n.live).length;
    $("nodes").textContent = (nodes.length === 1
      ? "node " + nodes[0].id
      : `${nodes.length} nodes, ${live} live`) +
      (workers ? `, ${workers} worker${workers === 1 ? "" : "s"}` : "");
    return all;
  } catch (_) {
    return [];
  }
}
