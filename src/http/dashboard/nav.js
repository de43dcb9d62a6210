// Navigation state shared by the router and the pages.

/** Where the dashboard was and goes: shared by the router and the pages. */
export const nav = { lastListHash: "#/operations", focusFilterOnList: false };

/** Goes to `hash`; the router builds the page (again, if it is on screen already). */
export function navigate(hash) {
  if (location.hash === hash) window.dispatchEvent(new HashChangeEvent("hashchange"));
  else location.hash = hash;
}
