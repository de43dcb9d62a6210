// Page: the overview (#/).

import { api, keepWatching } from "./api.js";
import { session } from "./caller.js";
import { STATES } from "./constants.js";
import { clear, h, svg } from "./dom.js";
import { timeEl, toInt } from "./format.js";

export function overviewPage(ctx, main) {
  document.title = "Overview · oprun";
  const cards = h("div", { class: "cards", "data-testid": "state-cards" });
  const kindsBody = h("tbody");
  const chartBox = h("div", { "data-testid": "throughput" });
  const nodesBody = h("tbody");
  const error = h("p", { class: "field-error", role: "alert" });
  main.append(
    h("h1", { text: "Overview" }),
    error,
    cards,
    h("section", { class: "panel" },
      h("h2", { text: "Finished per bucket, last 5 minutes" }), chartBox),
    h("section", {},
      h("h2", { text: "By kind" }),
      h("div", { class: "table-wrap" }, h("table", { "data-testid": "kind-counts" },
        h("thead", {}, h("tr", {}, h("th", { text: "Kind" }),
          STATES.map((s) => h("th", { class: "num", text: s.toLowerCase() })),
          h("th", { class: "num", text: "total" }))),
        kindsBody))),
    h("section", {},
      h("h2", { text: "Nodes and worker sessions" }),
      h("div", { class: "table-wrap" }, h("table", { "data-testid": "nodes-table" },
        h("thead", {}, h("tr", {}, h("th", { text: "Name" }), h("th", { text: "What" }), h("th", { text: "Live" }),
          h("th", { class: "num", text: "Running" }), h("th", { text: "Lease expires" }))),
        nodesBody))));

  let inFlight = false;
  let again = false;
  let last = 0;
  let pending = null;

  async function refresh() {
    if (inFlight) {
      again = true;
      return;
    }
    inFlight = true;
    last = Date.now();
    try {
      const [summary, nodes] = await Promise.all([
        api("GET", "/v1/operations:summarize?windowSeconds=300", undefined, ctx.signal),
        api("GET", "/v1/nodes", undefined, ctx.signal),
      ]);
      error.textContent = "";
      renderSummary(summary, cards, kindsBody, chartBox);
      renderNodes(nodes.nodes || [], nodesBody);
    } catch (err) {
      if (!ctx.signal.aborted && err.status !== "UNAUTHENTICATED") error.textContent = String(err);
    } finally {
      inFlight = false;
      if (again && !ctx.signal.aborted) {
        again = false;
        refreshSoon();
      }
    }
  }

  /** At most one summary request a second however many events arrive. */
  function refreshSoon() {
    if (pending) return;
    const wait = Math.max(0, 1000 - (Date.now() - last));
    pending = setTimeout(() => {
      pending = null;
      if (!ctx.signal.aborted) refresh();
    }, wait);
  }
  ctx.signal.addEventListener("abort", () => clearTimeout(pending));

  refresh();
  ctx.every(10000, refresh); // lets the chart slide when nothing happens
  keepWatching(ctx, "/v1/operations:watch", {
    onOpen: refreshSoon,
    onEvent: refreshSoon,
    onFinalError: (err) => { error.textContent = String(err); },
  });
}

export function renderSummary(summary, cards, kindsBody, chartBox) {
  const byState = Object.fromEntries(STATES.map((s) => [s, 0]));
  const byKind = new Map();
  for (const c of summary.counts || []) {
    const n = toInt(c.count);
    byState[c.state] = (byState[c.state] || 0) + n;
    if (!byKind.has(c.kind)) byKind.set(c.kind, {});
    const row = byKind.get(c.kind);
    row[c.state] = (row[c.state] || 0) + n;
  }
  clear(cards).append(
    ...STATES.map((s) => h("div", { class: "card", "data-state": s, "data-testid": "card-" + s },
      h("div", { class: "label", text: s.toLowerCase() }),
      h("div", { class: "value", text: byState[s] }))),
    h("div", { class: "card depth", "data-testid": "queue-depth" },
      h("div", { class: "label", text: "queue depth" }),
      h("div", { class: "value", text: byState.QUEUED })));
  clear(kindsBody);
  const kinds = [...byKind.keys()].sort();
  if (kinds.length === 0) {
    kindsBody.append(h("tr", {}, h("td", { class: "empty", colspan: STATES.length + 2, text: "No operations yet." })));
  }
  for (const kind of kinds) {
    const row = byKind.get(kind);
    const total = STATES.reduce((sum, s) => sum + (row[s] || 0), 0);
    kindsBody.append(h("tr", {},
      h("td", {}, h("a", { href: "#/operations?filter=" + encodeURIComponent(`kind = "${kind}"`), text: kind })),
      STATES.map((s) => h("td", { class: "num", text: row[s] || 0 })),
      h("td", { class: "num", text: total })));
  }
  clear(chartBox).append(throughputChart(summary));
}

/** "resize ×4, thumbnail ×1": a worker session's kinds with how many of each it takes. */
export function sessionKinds(session) {
  return (session.kinds || []).map((k) => `${k.name} ×${k.concurrency || 1}`).join(", ");
}

/** The nodes, and the worker sessions (each with its worker, kinds, slots and last report). */
export function renderNodes(nodes, body) {
  clear(body);
  if (nodes.length === 0) body.append(h("tr", {}, h("td", { class: "empty", colspan: 5, text: "No nodes." })));
  for (const n of nodes) {
    const s = n.session;
    body.append(h("tr", { "data-node": n.id, "data-session": s ? "yes" : "no" },
      h("td", { class: "mono", text: n.id }),
      s
        ? h("td", {}, `worker ${s.worker} (on node ${s.node}) runs ${sessionKinds(s)}; last heard `, timeEl(s.lastSeenTime))
        : h("td", { text: "node" }),
      h("td", { text: n.live ? "yes" : "no" }),
      h("td", { class: "num", text: toInt(n.running) }),
      n.holdsStore
        ? h("td", { text: "holds the embedded store (no lease)" })
        : h("td", {}, timeEl(n.leaseExpireTime))));
  }
}

/**
 * The finished-per-bucket bars, drawn by hand. Buckets the server left out count 0; the
 * window ends at the bucket holding `readTime` (or now).
 */
export function throughputChart(summary) {
  const bucketSecs = summary.bucketSeconds || 10;
  const windowSecs = 300;
  const n = Math.max(1, Math.round(windowSecs / bucketSecs));
  const counts = new Map();
  for (const b of summary.finished || []) counts.set(Math.floor(Date.parse(b.startTime) / 1000), toInt(b.count));
  const endRef = summary.readTime ? Date.parse(summary.readTime) : Date.now();
  const lastStart = Math.floor(endRef / 1000 / bucketSecs) * bucketSecs;
  const buckets = [];
  for (let i = n - 1; i >= 0; i--) {
    const start = lastStart - i * bucketSecs;
    buckets.push({ start, count: counts.get(start) || 0 });
  }
  const max = Math.max(1, ...buckets.map((b) => b.count));
  const total = buckets.reduce((s, b) => s + b.count, 0);

  const W = 600, H = 190, left = 40, right = 10, top = 24, bottom = 28;
  const plotW = W - left - right, plotH = H - top - bottom;
  const barW = plotW / n;
  const chart = svg("svg", {
    class: "chart", viewBox: `0 0 ${W} ${H}`, role: "img", "data-testid": "throughput-chart",
    "aria-label": `${total} operations finished in the last ${windowSecs / 60} minutes, at most ${max} per ${bucketSecs} s`,
  });
  // y grid and labels: 0, half, max
  for (const v of [0, Math.round(max / 2), max]) {
    const y = top + plotH - (v / max) * plotH;
    chart.append(svg("line", { class: v === 0 ? "axis" : "grid", x1: left, x2: W - right, y1: y, y2: y }));
    chart.append(svg("text", { x: left - 6, y: y + 4, "text-anchor": "end" }, String(v)));
  }
  buckets.forEach((b, i) => {
    const hgt = (b.count / max) * plotH;
    const rect = svg("rect", {
      class: "bar", x: left + i * barW + 1, y: top + plotH - hgt, width: Math.max(1, barW - 2), height: hgt,
    });
    rect.append(svg("title", {}, `${new Date(b.start * 1000).toISOString()}: ${b.count} finished`));
    chart.append(rect);
  });
  chart.append(svg("line", { class: "axis", x1: left, x2: left, y1: top, y2: top + plotH }));
  // x labels: window start, middle, now
  const labels = [[left, "start", `-${windowSecs / 60} min`], [left + plotW / 2, "middle", `-${windowSecs / 120} min`], [W - right, "end", "now"]];
  for (const [x, anchor, label] of labels) {
    chart.append(svg("text", { x, y: H - 8, "text-anchor": anchor }, label));
  }
  chart.append(svg("text", { x: W - right, y: 12, "text-anchor": "end" }, `per ${bucketSecs} s · ${total} in total`));
  return chart;
}
