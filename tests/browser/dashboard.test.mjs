// Browser tests of the web dashboard: the real oprun binary, the page it serves at `/`, and
// headless Chromium driven by playwright-core. Work is submitted through the CLI (gRPC) and
// the REST API; what the page shows is checked against what the server says.
//
// Env: OPRUN_BIN (default target/debug/oprun), CHROMIUM (default /usr/bin/chromium),
// DASHBOARD_FROM_SOURCE=1 to serve the dashboard's files (the page, its CSS and every ES
// module but names.js, which the server makes) from src/http/dashboard/ instead of the copies
// embedded in the binary (front-end work without a rebuild).
// Screenshots go to target/browser-screenshots/.

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawn, execFile } from "node:child_process";
import http from "node:http";
import { readdirSync } from "node:fs";
import { mkdtemp, mkdir, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");
const BIN = path.resolve(ROOT, process.env.OPRUN_BIN || "target/debug/oprun");
const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";
const SHOTS = path.join(ROOT, "target/browser-screenshots");
const FROM_SOURCE = process.env.DASHBOARD_FROM_SOURCE === "1";
// Generous: the machine is small and shared. Conditions are polled, never slept on.
const WAIT = 90_000;
const BULK = 500;

const servers = [];
let open; // the server without tokens
let browser;
let page;
const pageErrors = [];
const longRunning = []; // names to cancel before the bulk test

// ---------------------------------------------------------------------- server and CLI

/** Starts `oprun serve` on a free port (gRPC and HTTP on one) and reads it from stdout. */
async function startServer(extraArgs = []) {
  const dataDir = await mkdtemp(path.join(tmpdir(), "oprun-browser-"));
  const proc = spawn(BIN, [
    "serve", "--listen", "127.0.0.1:0", "--data-dir", dataDir,
    "--max-running", "600", ...extraArgs,
  ], { stdio: ["ignore", "pipe", "pipe"] });
  const server = { proc, dataDir, grpc: "", http: "", stderr: "" };
  servers.push(server);
  proc.stderr.on("data", (d) => {
    server.stderr = (server.stderr + d).slice(-20_000);
  });
  await new Promise((resolve, reject) => {
    let out = "";
    const timer = setTimeout(() => reject(new Error("oprun did not start:\n" + out + server.stderr)), 60_000);
    proc.on("exit", (code) => reject(new Error(`oprun exited ${code}:\n${server.stderr}`)));
    proc.stdout.on("data", (d) => {
      out += d;
      const grpc = out.match(/^oprun listening on (\S+)$/m);
      const http = out.match(/^oprun http listening on (\S+)$/m);
      if (grpc && http) {
        server.grpc = grpc[1];
        server.http = "http://" + http[1];
        clearTimeout(timer);
        resolve();
      }
    });
  });
  return server;
}

/** SIGTERM, then SIGKILL if it will not go. */
async function stopServer(server) {
  const { proc } = server;
  if (proc.exitCode === null && proc.signalCode === null) {
    const exited = new Promise((resolve) => proc.once("exit", resolve));
    proc.kill("SIGTERM");
    const timer = setTimeout(() => proc.kill("SIGKILL"), 40_000);
    await exited;
    clearTimeout(timer);
  }
  await rm(server.dataDir, { recursive: true, force: true });
}

/** Runs the CLI; resolves with its exit code and output (never rejects on exit code). */
function cli(args, env = {}) {
  return new Promise((resolve) => {
    execFile(BIN, args, { env: { ...process.env, ...env }, maxBuffer: 64 << 20 }, (err, stdout, stderr) => {
      resolve({ code: err ? (typeof err.code === "number" ? err.code : -1) : 0, stdout, stderr });
    });
  });
}

/** Submits through gRPC with the CLI; returns the operation's name. */
async function submitCli(server, input, { kind = "sleep", token } = {}) {
  const args = ["submit", kind, "--addr", server.grpc, "--input", JSON.stringify(input)];
  if (token) args.push("--token", token);
  const r = await cli(args);
  assert.equal(r.code, 0, `oprun submit failed: ${r.stderr}`);
  return r.stdout.trim().split(/\s+/)[0];
}

/** `oprun get NAME --json`: the operation, or the exit code and stderr when it fails. */
async function getCli(server, name, token) {
  const args = ["get", name, "--addr", server.grpc, "--json"];
  if (token) args.push("--token", token);
  const r = await cli(args);
  return r.code === 0 ? { code: 0, op: JSON.parse(r.stdout) } : r;
}

async function rest(server, method, urlPath, body, token) {
  const headers = { "Content-Type": "application/json" };
  if (token) headers.Authorization = "Bearer " + token;
  const res = await fetch(server.http + urlPath, { method, headers, body: body && JSON.stringify(body) });
  const json = await res.json();
  if (!res.ok) throw new Error(`${method} ${urlPath}: ${res.status} ${JSON.stringify(json)}`);
  return json;
}

/** Polls a server-side condition (not a browser one: those use Playwright's waits). */
async function eventually(what, fn, timeout = WAIT) {
  const end = Date.now() + timeout;
  let last;
  for (;;) {
    last = await fn();
    if (last) return last;
    if (Date.now() > end) throw new Error("timed out waiting for " + what);
    await new Promise((r) => setTimeout(r, 250));
  }
}

/** How many operations match a filter, counted from :query pages. */
async function countMatching(server, filter) {
  let n = 0;
  let token = "";
  do {
    const q = new URLSearchParams({ filter, pageSize: "1000" });
    if (token) q.set("pageToken", token);
    const res = await rest(server, "GET", "/v1/operations:query?" + q);
    n += (res.operations || []).length;
    token = res.nextPageToken || "";
  } while (token);
  return n;
}

/** Runs `fn` over `items` with at most `limit` at once. */
async function pool(items, limit, fn) {
  const results = [];
  let next = 0;
  await Promise.all(Array.from({ length: limit }, async () => {
    while (next < items.length) {
      const i = next++;
      results[i] = await fn(items[i], i);
    }
  }));
  return results;
}

// ---------------------------------------------------------------------- browser

const CSP = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; " +
  "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";
const DASHBOARD_DIR = path.join(ROOT, "src/http/dashboard");
const ASSETS = Object.fromEntries([
  ["/", ["index.html", "text/html"]],
  ["/ui/app.css", ["app.css", "text/css"]],
  ...readdirSync(DASHBOARD_DIR).filter((f) => f.endsWith(".js")).map((f) => ["/ui/" + f, [f, "text/javascript"]]),
]);

async function newPage(options = {}) {
  const context = await browser.newContext({ viewport: { width: 1280, height: 900 }, ...options });
  if (FROM_SOURCE) {
    await context.route((url) => Object.hasOwn(ASSETS, url.pathname), async (route) => {
      const [file, type] = ASSETS[new URL(route.request().url()).pathname];
      const body = await readFile(path.join(DASHBOARD_DIR, file));
      await route.fulfill({ status: 200, body, headers: { "content-type": type + "; charset=utf-8", "content-security-policy": CSP } });
    });
  }
  const p = await context.newPage();
  p.setDefaultTimeout(WAIT);
  p.on("pageerror", (e) => pageErrors.push(e.message));
  p.on("console", (m) => {
    if (/Content[- ]Security[- ]Policy/i.test(m.text())) pageErrors.push("CSP: " + m.text());
  });
  return p;
}

async function shot(p, name) {
  await p.screenshot({ path: path.join(SHOTS, name + ".png"), fullPage: true });
}

const idOf = (name) => name.replace(/^operations\//, "");
const row = (p, name) => p.locator(`tr[data-name="${name}"]`);

/** Reads a row's progress bar value in the page. */
function rowProgress(p, name) {
  return p.evaluate((n) => {
    const bar = document.querySelector(`tr[data-name="${n}"] progress`);
    return bar && bar.hasAttribute("value") ? bar.value : -1;
  }, name);
}

async function detailState(p) {
  return (await p.getByTestId("detail-state").textContent()).trim();
}

async function confirm(p) {
  await p.getByTestId("confirm-dialog").waitFor({ state: "visible" });
  await p.getByTestId("confirm-ok").click();
}

// ---------------------------------------------------------------------- setup

async function cleanUp() {
  if (browser) await browser.close().catch(() => {});
  browser = null;
  await Promise.all(servers.splice(0).map((s) => stopServer(s).catch(() => {})));
}

// Last resort: whatever way the run ends, no oprun is left behind (`exit` allows sync only).
process.once("exit", () => {
  for (const { proc } of servers) {
    if (proc.exitCode === null && proc.signalCode === null) proc.kill("SIGKILL");
  }
});

before(async () => {
  try {
    await mkdir(SHOTS, { recursive: true });
    open = await startServer();
    if (!FROM_SOURCE) {
      const res = await fetch(open.http + "/");
      const html = await res.text();
      assert.ok(html.includes("/ui/app.js"),
        "GET / serves no dashboard: rebuild oprun with the files of src/http/dashboard/ (or set DASHBOARD_FROM_SOURCE=1)");
    }
    browser = await chromium.launch({ executablePath: CHROMIUM, headless: true });
    page = await newPage();
  } catch (e) {
    await cleanUp(); // `after` is not sure to run when `before` fails
    throw e;
  }
});

after(cleanUp);

// ---------------------------------------------------------------------- tests

const names = {};

/** The list shows what was submitted, newest first. */
test("list shows submitted operations, newest first", { timeout: 300_000 }, async () => {
  names.short = [];
  for (let i = 0; i < 3; i++) names.short.push(await submitCli(open, { duration: "1s", steps: 3 }));
  names.long = await submitCli(open, { duration: "120s", steps: 120 });
  longRunning.push(names.long);

  await page.goto(open.http + "/#/operations");
  for (const n of [...names.short, names.long]) await row(page, n).waitFor();
  const order = await page.locator("tbody tr[data-name]").evaluateAll((trs) => trs.map((tr) => tr.dataset.name));
  const positions = [...names.short, names.long].map((n) => order.indexOf(n));
  assert.deepEqual([...positions].sort((a, b) => b - a), positions, `newest first: ${order}`);
  await page.getByTestId("conn").filter({ hasText: "live" }).waitFor();

  // One submitted while the first page is open appears on top, without a reload.
  await page.evaluate(() => { window.__noReload = true; });
  const later = await submitCli(open, { duration: "1s", steps: 3 });
  names.short.push(later);
  await page.waitForFunction((n) => document.querySelector("tbody tr[data-name]")?.dataset.name === n, later);
  assert.equal(await page.evaluate(() => window.__noReload), true, "the page was reloaded");
  await shot(page, "list");
});

/** A running sleep's bar moves on its own: the page is updated live, not reloaded. */
test("running progress advances without a reload", { timeout: 300_000 }, async () => {
  await page.evaluate(() => { window.__noReload = true; });
  await page.waitForFunction((n) => {
    const bar = document.querySelector(`tr[data-name="${n}"] progress`);
    return bar && bar.hasAttribute("value") && bar.value > 0;
  }, names.long);
  const first = await rowProgress(page, names.long);
  await page.waitForFunction(([n, v]) => document.querySelector(`tr[data-name="${n}"] progress`).value > v, [names.long, first]);
  const second = await rowProgress(page, names.long);
  assert.ok(second > first, `progress ${first} then ${second}`);
  assert.equal(await page.evaluate(() => window.__noReload), true, "the page was reloaded");

  // The detail page of the same operation is live as well.
  await page.goto(open.http + "/#/operations/" + idOf(names.long));
  await page.getByTestId("detail-state").filter({ hasText: "RUNNING" }).waitFor();
  const bar = page.getByTestId("detail-progress").locator("progress");
  await page.waitForFunction(() => document.querySelector("[data-testid=detail-progress] progress").value > 0);
  const v1 = await bar.evaluate((b) => b.value);
  await page.waitForFunction((v) => document.querySelector("[data-testid=detail-progress] progress").value > v, v1);
  await page.getByTestId("btn-cancel").waitFor({ state: "visible" });
  await shot(page, "detail-running");

  // Overview: counts and the throughput chart, live.
  await page.goto(open.http + "/#/");
  await page.waitForFunction(() => {
    const v = document.querySelector("[data-testid=card-RUNNING] .value");
    const s = document.querySelector("[data-testid=card-SUCCEEDED] .value");
    return v && Number(v.textContent) >= 1 && Number(s.textContent) >= 3;
  });
  await page.getByTestId("throughput-chart").waitFor();
  assert.ok(await page.locator("[data-testid=throughput-chart] rect.bar").count() >= 30);
  await shot(page, "overview");
});

/** The filter box narrows the list; chips edit it; a bad filter shows the server's message. */
test("filter narrows the list", { timeout: 300_000 }, async () => {
  for (const n of names.short) {
    await eventually(`${n} done`, async () => (await getCli(open, n)).op?.done);
  }
  await page.goto(open.http + "/#/operations");
  const box = page.getByTestId("filter-input");
  await box.fill("state = SUCCEEDED");
  await box.press("Enter");
  await page.waitForURL(/filter=state/);
  // The filtered page, once listed (the unfiltered rows may still be on screen before).
  await page.waitForFunction(() => document.getElementById("filter")?.value === "state = SUCCEEDED" &&
    /^Page 1/.test(document.querySelector("[data-testid=page-info]")?.textContent || ""));
  await row(page, names.short[0]).waitFor();
  assert.equal(await row(page, names.long).count(), 0, "a running one under state = SUCCEEDED");
  const states = await page.locator("tbody tr[data-name]").evaluateAll((trs) => trs.map((tr) => tr.dataset.state));
  assert.ok(states.length >= 3 && states.every((s) => s === "SUCCEEDED"), `states: ${states}`);

  await box.fill('kind = "sleep" AND state = RUNNING');
  await box.press("Enter");
  await row(page, names.long).waitFor();
  await row(page, names.short[0]).waitFor({ state: "detached" });
  const running = await page.locator("tbody tr[data-name]").evaluateAll((trs) => trs.map((tr) => tr.dataset.state));
  assert.ok(running.every((s) => s === "RUNNING"), `states: ${running}`);

  // A chip toggles `state = X` in the filter.
  await page.getByTestId("chip-RUNNING").click(); // removes it
  await page.waitForFunction(() => document.getElementById("filter").value === 'kind = "sleep"');
  await page.getByTestId("chip-SUCCEEDED").click(); // adds it
  await page.waitForFunction(() => document.getElementById("filter").value === 'kind = "sleep" AND state = SUCCEEDED');
  await row(page, names.short[0]).waitFor();

  await box.fill("state = BANANA");
  await box.press("Enter");
  await page.getByTestId("filter-error").filter({ hasText: "INVALID_ARGUMENT" }).waitFor();
  assert.match(await page.getByTestId("filter-error").textContent(), /state/);

  // "/" focuses the filter box.
  await page.evaluate(() => document.activeElement && document.activeElement.blur());
  await page.keyboard.press("/");
  assert.equal(await page.evaluate(() => document.activeElement.id), "filter");
  // …also from another page, which it leaves for the list.
  await page.goto(open.http + "/#/kinds");
  await page.locator('tr[data-kind="sleep"]').waitFor();
  await page.evaluate(() => document.activeElement && document.activeElement.blur());
  await page.keyboard.press("/");
  await page.waitForFunction(() => document.activeElement && document.activeElement.id === "filter");
});

/** Cancel on the detail page ends the operation CANCELLED, in the page and on the server. */
test("cancel from the detail page", { timeout: 300_000 }, async () => {
  const name = await submitCli(open, { duration: "300s", steps: 30 });
  await page.goto(open.http + "/#/operations/" + idOf(name));
  await page.getByTestId("detail-state").filter({ hasText: "RUNNING" }).waitFor();
  await page.getByTestId("btn-cancel").click();
  await confirm(page);
  await page.getByTestId("detail-state").filter({ hasText: "CANCELLED" }).waitFor();
  await page.getByTestId("detail-error-code").filter({ hasText: "CANCELLED" }).waitFor();
  // An error without details shows none (the page once wrote "null" after the message).
  const outcome = await page.getByTestId("detail-error-code").locator("xpath=..").innerText();
  assert.doesNotMatch(outcome, /null/, outcome);
  assert.equal(await page.getByTestId("detail-error-details").count(), 0);
  assert.equal(await page.getByTestId("btn-cancel").isVisible(), false);
  const got = await getCli(open, name);
  assert.equal(got.op.done, true);
  assert.equal(got.op.error.code, 1);
  assert.equal(got.op.metadata.state, "CANCELLED");
});

/** Delete removes a finished operation and goes back to the list. */
test("delete from the detail page", { timeout: 300_000 }, async () => {
  const name = names.short[1];
  // From the list, so that Delete goes back to it (it returns to the last list shown).
  await page.goto(open.http + "/#/operations");
  await row(page, name).waitFor();
  await row(page, name).getByTestId("op-link").click();
  await page.waitForURL((u) => u.hash === "#/operations/" + idOf(name));
  await page.getByTestId("detail-response").waitFor();
  assert.match(await page.getByTestId("detail-response").textContent(), /"stepsDone": 3/);
  // Issue 21, item 6: the job's arguments, pretty-printed, their type in the heading.
  await page.getByTestId("detail-input").filter({ hasText: '"steps": 3' }).waitFor();
  const input = await page.getByTestId("detail-input").textContent();
  assert.match(input, /\{\n  "duration": "1s",\n  "steps": 3\n\}/, input);
  assert.doesNotMatch(input, /@type/, input);
  await page.getByText("Input · oprun.v1.SleepInput").waitFor();
  await shot(page, "detail-done");
  await page.emulateMedia({ colorScheme: "dark" });
  await shot(page, "detail-done-dark");
  await page.emulateMedia({ colorScheme: "light" });

  await page.getByTestId("btn-delete").click();
  await confirm(page);
  await page.waitForURL((u) => u.hash === "#/operations");
  await page.getByTestId("page-info").filter({ hasText: "Page 1" }).waitFor();
  assert.equal(await row(page, name).count(), 0, "the deleted operation is still listed");
  await row(page, names.short[0]).waitFor(); // the list itself is there
  const got = await getCli(open, name);
  assert.equal(got.code, 1);
  assert.match(got.stderr, /not ?found/i);
});

/** Run again starts a new operation of the same kind and input (same deterministic result). */
test("run again", { timeout: 300_000 }, async () => {
  const old = names.short[2];
  await page.goto(open.http + "/#/operations/" + idOf(old));
  await page.getByTestId("btn-rerun").click();
  await confirm(page);
  await page.waitForURL((u) => u.hash.startsWith("#/operations/") && !u.hash.includes(idOf(old)));
  const fresh = "operations/" + decodeURIComponent(new URL(page.url()).hash.slice("#/operations/".length));
  await page.getByTestId("detail-state").filter({ hasText: "SUCCEEDED" }).waitFor();
  const [a, b] = [(await getCli(open, old)).op, (await getCli(open, fresh)).op];
  assert.equal(b.metadata.kind, a.metadata.kind);
  assert.deepEqual(b.response, a.response);
  assert.equal(b.response.stepsDone, 3);
});

/** Issue 22: a batch submitted over REST shows each operation's priority in the list, and its
 *  keys and attempts on its page. */
test("priorities and keys of a batch", { timeout: 300_000 }, async () => {
  const input = { "@type": "type.googleapis.com/oprun.v1.SleepInput", duration: "0.1s" };
  const { operations } = await rest(open, "POST", "/v1/tasks:batchSubmit", {
    requests: [
      { kind: "sleep", input, priority: 42, uniqueKey: "report-42", concurrencyKey: "db-7", retryPolicy: { maxAttempts: 1 } },
      { kind: "sleep", input, priority: -3 },
    ],
  });
  assert.equal(operations.length, 2);
  await page.goto(open.http + "/#/operations?filter=" + encodeURIComponent("priority != 0"));
  const header = await page.locator("thead th").allTextContents();
  assert.ok(header.includes("Priority"), `columns: ${header}`);
  for (const [op, want] of [[operations[0], "42"], [operations[1], "-3"]]) {
    await row(page, op.name).waitFor();
    const cells = await row(page, op.name).locator("td").allTextContents();
    assert.ok(cells.includes(want), `${op.name}: ${cells}`);
  }
  await page.goto(open.http + "/#/operations/" + idOf(operations[0].name));
  await page.getByTestId("meta-priority").filter({ hasText: "42" }).waitFor();
  const meta = await page.getByTestId("detail-meta").textContent();
  for (const text of ["report-42", "db-7", "Max attempts"]) assert.ok(meta.includes(text), `${text} in ${meta}`);
});

/** The Submit form starts a sleep; bad input shows the server's error beside the field. */
test("submit form", { timeout: 300_000 }, async () => {
  await page.goto(open.http + "/#/kinds");
  await page.locator('tr[data-kind="sleep"]').waitFor();
  await page.getByTestId("submit-kind").selectOption("sleep");
  assert.equal(await page.getByTestId("submit-input").inputValue(), '{"duration":"10s","steps":10}');
  await page.getByTestId("submit-input").fill('{"duration":"2s","steps":4}');
  await page.getByTestId("submit-button").click();
  await page.waitForURL(/#\/operations\/[0-9a-f]{32}$/);
  await page.getByTestId("detail-state").filter({ hasText: "SUCCEEDED" }).waitFor();
  assert.match(await page.getByTestId("detail-response").textContent(), /"stepsDone": 4/);

  await page.goto(open.http + "/#/kinds");
  await page.getByTestId("submit-input").waitFor();
  // A JSON syntax error is caught before any request.
  await page.getByTestId("submit-input").fill('{"duration":');
  await page.getByTestId("submit-button").click();
  await page.getByTestId("submit-error").filter({ hasText: "not valid JSON" }).waitFor();
  // The server's own error.
  await page.getByTestId("submit-input").fill('{"duration":"banana"}');
  await page.getByTestId("submit-button").click();
  await page.getByTestId("submit-error").filter({ hasText: "INVALID_ARGUMENT" }).waitFor();
  assert.match(await page.getByTestId("submit-error").textContent(), /duration/);
  assert.match(page.url(), /#\/kinds$/);
  await shot(page, "kinds-submit-error");
});

/**
 * A kind declared by a worker in its own process (`oprun worker exec` running a shell
 * script): the Kinds page says which session runs it, the Overview lists the session with its
 * kinds and slots, the Submit form runs it with a plain JSON object (its type, a Struct, is
 * the server's to fill in), and once the worker leaves, the kind stays with its work waiting.
 */
test("a kind run by a worker process", { timeout: 300_000 }, async () => {
  const dir = await mkdtemp(path.join(tmpdir(), "oprun-browser-worker-"));
  const script = path.join(dir, "shout.sh");
  await writeFile(script, '#!/bin/sh\ninput=$(cat)\necho \'{"status": "shouting"}\'\n' +
    'printf \'{"shouted": %s}\' "$input" > "$OPRUN_OUTPUT"\n', { mode: 0o755 });
  const worker = spawn(BIN, ["worker", "exec", "--kind", "shout", "--concurrency", "2", "--addr", open.grpc, "--", script],
    { stdio: ["ignore", "ignore", "pipe"] });
  let workerLog = "";
  worker.stderr.on("data", (d) => { workerLog = (workerLog + d).slice(-10_000); });
  try {
    await page.goto(open.http + "/#/kinds");
    const row = page.getByTestId("kinds-table").locator('tr[data-kind="shout"]');
    // The Kinds page reads the kinds once: reload until the worker's session has declared it
    // and is listed as running it (the kind is stored a moment before the session is).
    await eventually("the worker declares shout", async () => {
      await page.reload();
      await page.locator('tr[data-kind="sleep"]').waitFor();
      return (await row.count()) === 1 &&
        /^worker: /.test(await row.getByTestId("kind-runs").textContent());
    });
    assert.match(await row.getByTestId("kind-runs").textContent(), /^worker: workerSessions\//);
    assert.equal((await page.locator('tr[data-kind="sleep"]').getByTestId("kind-runs").textContent()), "in process");

    await page.getByTestId("submit-kind").selectOption("shout");
    await page.getByTestId("submit-input").fill('{"word": "hello"}');
    await page.getByTestId("submit-button").click();
    await page.waitForURL(/#\/operations\/[0-9a-f]{32}$/);
    await page.getByTestId("detail-state").filter({ hasText: "SUCCEEDED" }).waitFor();
    assert.match(await page.getByTestId("detail-response").textContent(), /"shouted":\s*\{\s*"word":\s*"hello"/);
    assert.match(await page.getByTestId("detail-meta").textContent(), /workerSessions\//);

    await page.goto(open.http + "/#/");
    const session = page.locator('tr[data-session="yes"]');
    await session.first().waitFor();
    assert.match(await session.first().textContent(), /shout ×2/);
    await page.getByTestId("nodes").filter({ hasText: ", 1 worker" }).waitFor();
    await shot(page, "overview-worker-session");

    // The worker leaves: the kind stays known, and its work waits.
    const exited = new Promise((resolve) => worker.once("exit", resolve));
    worker.kill("SIGTERM");
    await exited;
    const waiting = await rest(open, "POST", "/v1/tasks:submit", { kind: "shout", input: { word: "later" } });
    await page.goto(open.http + "/#/kinds");
    await eventually("shout waits for a worker", async () => {
      await page.reload();
      await row.waitFor();
      return (await row.getByTestId("kind-runs").textContent()) === "no worker connected" &&
        (await row.getByTestId("kind-waiting").textContent()) === "1";
    });
    await shot(page, "kinds-waiting");
    await rest(open, "POST", `/v1/${waiting.name}:cancel`, {});
  } catch (e) {
    throw new Error(`${e.message}\n--- worker stderr\n${workerLog}`);
  } finally {
    if (worker.exitCode === null && worker.signalCode === null) worker.kill("SIGKILL");
    await rm(dir, { recursive: true, force: true });
  }
});

/** `oprun schedule create ID` of sleeps through gRPC with the CLI; `args` say when. */
async function createSchedule(server, id, args, { token } = {}) {
  const all = ["schedule", "create", id, "--addr", server.grpc, "--kind", "sleep", "--input", '{"duration":"0.1s"}', ...args];
  if (token) all.push("--token", token);
  const r = await cli(all);
  assert.equal(r.code, 0, `oprun schedule create failed: ${r.stderr}`);
}

const sched = {}; // the schedule tests' own server and page

/**
 * The Schedules page lists what GET /v1/schedules says (spec, paused, note), follows the
 * schedule that fires every second to its latest run, and its buttons act on the server:
 * Run now starts a triggered run of a paused schedule, Pause keeps the note typed in the
 * dialog, Resume fires again.
 */
test("schedules list: rows as the server says, Run now, Pause with a note, Resume", { timeout: 300_000 }, async () => {
  // Its own server: a schedule firing every second would change what the other tests count.
  const s = (sched.server = await startServer());
  await createSchedule(s, "tick", ["--every", "1s"]);
  await createSchedule(s, "nightly", ["--cron", "0 3 * * *", "--time-zone", "Europe/Paris",
    "--paused", "--note", "waiting for the migration"]);
  const p = (sched.page = await newPage());
  await p.goto(s.http + "/#/schedules");
  const tick = row(p, "schedules/tick");
  const nightly = row(p, "schedules/nightly");
  await tick.waitFor();
  await nightly.waitFor();
  assert.equal(await p.locator('nav a[data-nav="schedules"]').getAttribute("aria-current"), "page");

  const { schedules } = await rest(s, "GET", "/v1/schedules");
  const byName = Object.fromEntries(schedules.map((x) => [x.name, x]));
  const [t, n] = [byName["schedules/tick"], byName["schedules/nightly"]];
  assert.equal(t.interval, "1s");
  assert.equal(t.paused, undefined);
  assert.equal(await tick.getByTestId("sched-spec").textContent(), "every 1s");
  assert.equal(await tick.getByTestId("sched-kind").textContent(), t.task.kind);
  assert.equal(await tick.getAttribute("data-paused"), "false");
  assert.equal(await tick.getByTestId("sched-next").locator("time").count(), 1, "an active schedule's next run");
  assert.equal(n.paused, true);
  assert.equal(n.nextRunTime, undefined);
  assert.equal(await nightly.getByTestId("sched-spec").textContent(), `${n.cron} (${n.timeZone})`);
  assert.equal(await nightly.getAttribute("data-paused"), "true");
  assert.match(await nightly.getByTestId("sched-next").textContent(), /^paused/);
  assert.equal(await nightly.getByTestId("sched-note").textContent(), n.note);
  assert.equal(await nightly.getByTestId("sched-last").textContent(), "—");
  assert.equal(await nightly.getByTestId("sched-runs").textContent(), "0 / 0");

  // The running one fires: its Last run comes to name an operation the schedule started.
  const tickRun = tick.getByTestId("sched-last").getByTestId("run-link");
  await tickRun.waitFor();
  const href = await tickRun.getAttribute("href");
  assert.match(href, /^#\/operations\/[0-9a-f]{32}$/);
  const fired = (await getCli(s, "operations/" + href.slice("#/operations/".length))).op;
  assert.equal(fired.metadata.schedule, "schedules/tick");
  assert.ok(fired.metadata.fireTime, "a fired operation's fire time");

  // Run now on the paused one: a triggered run is its Last run, and it stays paused.
  await nightly.getByTestId("sched-trigger").click();
  await confirm(p);
  await nightly.getByTestId("run-triggered").waitFor();
  const triggered = await nightly.getByTestId("run-link").getAttribute("href");
  const afterRun = await rest(s, "GET", "/v1/schedules/nightly");
  assert.equal(afterRun.paused, true, "Run now resumed it");
  assert.equal(afterRun.recentRuns[0].triggered, true);
  assert.equal(afterRun.recentRuns[0].operation, "operations/" + triggered.slice("#/operations/".length));

  // Pause the running one with a note typed in the dialog.
  await tick.getByTestId("sched-pause").click();
  await p.getByTestId("confirm-dialog").waitFor({ state: "visible" });
  await p.getByTestId("confirm-input").fill("deploying v2");
  await shot(p, "schedules-pause-dialog");
  await p.getByTestId("confirm-ok").click();
  await tick.getByTestId("sched-note").filter({ hasText: "deploying v2" }).waitFor();
  const paused = await rest(s, "GET", "/v1/schedules/tick");
  assert.equal(paused.paused, true);
  assert.equal(paused.note, "deploying v2");
  assert.equal(paused.nextRunTime, undefined);
  assert.equal(await tick.getByTestId("sched-resume").isVisible(), true);
  assert.equal(await tick.getByTestId("sched-pause").isVisible(), false);
  await shot(p, "schedules");

  // Resume: it fires again.
  await tick.getByTestId("sched-resume").click();
  await tick.getByTestId("sched-next").locator("time").waitFor();
  const resumed = await rest(s, "GET", "/v1/schedules/tick");
  assert.equal(resumed.paused, undefined);
  assert.equal(resumed.note, undefined, "Resume without a note clears the pause's");
  assert.ok(resumed.nextRunTime, "a resumed schedule's next run");
  const started = Number(resumed.startedRuns);
  await eventually("tick fires after Resume", async () =>
    Number((await rest(s, "GET", "/v1/schedules/tick")).startedRuns) > started);
});

/**
 * A schedule's page shows its fields and recent runs, each linking to its operation; the
 * operation's page links back to the schedule with the fire time; "All runs" lists what it
 * started; Delete asks, then removes it; an unknown schedule says not found.
 */
test("schedule page: fields, recent runs, All runs, the operation's Schedule link, Delete", { timeout: 300_000 }, async () => {
  const { server: s, page: p } = sched;
  assert.ok(s && p, "runs after the schedules list test");
  try {
    await p.goto(s.http + "/#/schedules");
    await row(p, "schedules/tick").getByTestId("sched-link").click();
    await p.waitForURL((u) => u.hash === "#/schedules/tick");
    await p.getByTestId("sched-meta").getByTestId("sched-spec").waitFor();
    const got = await rest(s, "GET", "/v1/schedules/tick");
    const meta = p.getByTestId("sched-meta");
    assert.equal(await meta.getByTestId("sched-spec").textContent(), "every 1s");
    assert.match(await meta.getByTestId("sched-overlap").textContent(), new RegExp("^" + got.overlapPolicy + ":"));
    assert.equal(await meta.getByTestId("sched-catchup").textContent(), "1m (default)");
    // Resuming without a note cleared the pause's.
    assert.equal(got.note, undefined);
    assert.equal(await meta.getByTestId("sched-note").count(), 0);
    assert.equal(await p.getByTestId("sched-state").textContent(), "active");
    assert.match(await p.getByTestId("sched-input").textContent(), /"duration": "0\.100s"/);
    await p.getByText("Input · oprun.v1.SleepInput").waitFor();

    // Recent runs: newest first, at most 10, each linking to its operation's page.
    const runs = p.getByTestId("sched-runs-table").locator("tbody tr[data-operation]");
    await runs.nth(1).waitFor();
    const shown = await runs.evaluateAll((trs) => trs.map((tr) => ({
      name: tr.dataset.operation,
      href: tr.querySelector("a[data-testid=run-link]").getAttribute("href"),
      fire: Date.parse(tr.querySelector("time").getAttribute("datetime")),
    })));
    assert.ok(shown.length <= 10, `${shown.length} recent runs`);
    for (const r of shown) assert.equal(r.href, "#/operations/" + r.name.replace(/^operations\//, ""));
    const fires = shown.map((r) => r.fire);
    assert.deepEqual([...fires].sort((a, b) => b - a), fires, "newest first");
    await shot(p, "schedule-detail");

    // An operation it started: Schedule and Fire time in its metadata, the link goes back.
    await runs.first().getByTestId("run-link").click();
    await p.waitForURL((u) => u.hash === "#/operations/" + shown[0].name.replace(/^operations\//, ""));
    const link = p.getByTestId("meta-schedule").locator("a");
    await link.waitFor();
    assert.equal(await link.textContent(), "schedules/tick");
    const op = (await getCli(s, shown[0].name)).op;
    assert.equal(op.metadata.schedule, "schedules/tick");
    assert.equal(await p.getByTestId("meta-fire-time").locator("time").getAttribute("datetime"), op.metadata.fireTime);
    await link.click();
    await p.waitForURL((u) => u.hash === "#/schedules/tick");

    // All runs: the operations list under `schedule = "schedules/tick"`.
    await p.getByTestId("sched-all-runs").click();
    await p.waitForURL(/#\/operations\?filter=/);
    assert.equal(await p.getByTestId("filter-input").inputValue(), 'schedule = "schedules/tick"');
    const listed = p.locator("tbody tr[data-name]");
    await listed.first().waitFor();
    const first = (await getCli(s, await listed.first().getAttribute("data-name"))).op;
    assert.equal(first.metadata.schedule, "schedules/tick");

    // The paused one's page: its triggered run is marked.
    await p.goto(s.http + "/#/schedules/nightly");
    await p.getByTestId("sched-state").filter({ hasText: "paused" }).waitFor();
    await p.locator('tr[data-triggered="true"]').first().waitFor();
    assert.equal(await p.getByTestId("sched-meta").getByTestId("sched-zone").textContent(), "Europe/Paris");
    assert.equal(await p.getByTestId("sched-resume").isVisible(), true);

    // Delete, after a confirmation: back to the list, without it.
    await p.getByTestId("sched-delete").click();
    await confirm(p);
    await p.waitForURL((u) => u.hash === "#/schedules");
    await row(p, "schedules/tick").waitFor();
    assert.equal(await row(p, "schedules/nightly").count(), 0, "the deleted schedule is still listed");
    await assert.rejects(rest(s, "GET", "/v1/schedules/nightly"), /404/);

    // A schedule that does not exist.
    await p.goto(s.http + "/#/schedules/nope");
    await p.getByTestId("sched-error").filter({ hasText: "NOT_FOUND" }).waitFor();
    assert.equal(await p.getByTestId("sched-runs-table").isVisible(), false);
  } finally {
    await p.context().close();
    servers.splice(servers.indexOf(s), 1);
    await stopServer(s);
  }
});

/** A bulk cancel over a filter matching 500 running sleeps ends them all, with live progress. */
test("bulk cancel of 500 running operations", { timeout: 900_000 }, async () => {
  for (const n of longRunning) await rest(open, "POST", `/v1/operations/${idOf(n)}:cancel`, {});
  const filter = 'kind = "sleep" AND state = RUNNING';
  await eventually("no sleep running", async () => (await countMatching(open, filter)) === 0);
  const input = { duration: "900s", steps: 5 };
  // Some through gRPC with the CLI, the rest through REST.
  const viaCli = 60;
  await pool(Array.from({ length: viaCli }), 6, () => submitCli(open, input));
  await pool(Array.from({ length: BULK - viaCli }), 16, (_, i) => rest(open, "POST", "/v1/tasks:submit", {
    kind: "sleep", requestId: `bulk-${i}-${Date.now()}`,
    input: { "@type": "type.googleapis.com/oprun.v1.SleepInput", ...input },
  }));
  await eventually(`${BULK} running`, async () => (await countMatching(open, filter)) === BULK, 300_000);

  await page.goto(open.http + "/#/operations?filter=" + encodeURIComponent(filter));
  await page.locator("tbody tr[data-name]").first().waitFor();
  assert.equal(await page.locator("tbody tr[data-name]").count(), 50);
  await page.getByTestId("bulk-cancel-matching").click();
  await page.getByTestId("confirm-dialog").waitFor({ state: "visible" });
  assert.equal((await page.locator("#confirm-detail").textContent()).trim(), filter);
  await page.getByTestId("confirm-ok").click();

  const panel = page.getByTestId("batch-panel");
  await panel.waitFor();
  await panel.getByTestId("progress-text").filter({ hasText: `${BULK}/${BULK}` }).waitFor({ timeout: 300_000 });
  await panel.getByTestId("batch-result").filter({ hasText: `matched ${BULK}, changed ${BULK}` }).waitFor();
  await shot(page, "bulk-progress");

  const batchName = await panel.getAttribute("data-name");
  const batch = (await getCli(open, batchName)).op;
  assert.equal(batch.metadata.kind, "oprun.cancel_operations");
  assert.equal(batch.response.matched, String(BULK));
  await eventually(`${BULK} cancelled`, async () =>
    (await countMatching(open, 'kind = "sleep" AND state = CANCELLED')) >= BULK &&
    (await countMatching(open, filter)) === 0, 300_000);
});

/** Pages of 50 with Next/Previous; news while on page 2; deleting selected rows. */
test("paging, new operations notice, delete selected", { timeout: 300_000 }, async () => {
  // Runs on page 1 while page 2 is shown: its progress is not news.
  const busy = await submitCli(open, { duration: "60s", steps: 60 });
  await eventually("busy running", async () => (await getCli(open, busy)).op?.metadata?.state === "RUNNING");
  await page.goto(open.http + "/#/operations?filter=" + encodeURIComponent('kind = "sleep"'));
  await page.locator("tbody tr[data-name]").nth(49).waitFor();
  const first = await page.locator("tbody tr[data-name]").evaluateAll((trs) => trs.map((tr) => tr.dataset.name));
  await page.getByTestId("next-page").click();
  await page.getByTestId("page-info").filter({ hasText: "Page 2" }).waitFor();
  const second = await page.locator("tbody tr[data-name]").evaluateAll((trs) => trs.map((tr) => tr.dataset.name));
  assert.equal(second.length, 50);
  assert.equal(second.filter((n) => first.includes(n)).length, 0, "page 2 repeats page 1");

  const fresh = await submitCli(open, { duration: "1s", steps: 1 });
  await page.getByTestId("new-notice").filter({ hasText: "1 new" }).waitFor();
  await eventually("fresh done", async () => (await getCli(open, fresh)).op?.done);
  const busyBefore = (await getCli(open, busy)).op.metadata.progress.completed;
  await eventually("busy progressing", async () => (await getCli(open, busy)).op.metadata.progress.completed !== busyBefore);
  assert.match(await page.getByTestId("new-notice").textContent(), /^1 new/);
  assert.equal(await row(page, fresh).count(), 0);
  await page.getByTestId("show-new").click();
  await page.getByTestId("page-info").filter({ hasText: "Page 1" }).waitFor();
  await row(page, fresh).waitFor();

  await page.getByTestId("next-page").click();
  await page.getByTestId("page-info").filter({ hasText: "Page 2" }).waitFor();
  await page.getByTestId("prev-page").click();
  await page.getByTestId("page-info").filter({ hasText: "Page 1" }).waitFor();
  await rest(open, "POST", `/v1/operations/${idOf(busy)}:cancel`, {});

  // Delete two selected finished operations.
  await page.goto(open.http + "/#/operations?filter=" + encodeURIComponent("state = CANCELLED"));
  await page.locator("tbody tr[data-name]").nth(1).waitFor();
  const picked = await page.locator("tbody tr[data-name]").evaluateAll((trs) => trs.slice(0, 2).map((tr) => tr.dataset.name));
  for (const n of picked) await row(page, n).getByTestId("row-select").check();
  await page.getByTestId("selected-count").filter({ hasText: "2 selected" }).waitFor();
  await page.getByTestId("bulk-delete-selected").click();
  await confirm(page);
  const panel = page.getByTestId("batch-panel");
  await panel.getByTestId("batch-result").filter({ hasText: "matched 2, changed 2, skipped 0" }).waitFor();
  for (const n of picked) {
    await row(page, n).waitFor({ state: "detached" });
    assert.equal((await getCli(open, n)).code, 1);
  }
});

/** Narrow windows and dark mode stay usable (screenshots to look at). */
test("narrow and dark screenshots", { timeout: 300_000 }, async () => {
  const narrow = await newPage({ viewport: { width: 420, height: 900 } });
  await narrow.goto(open.http + "/#/operations");
  await narrow.locator("tbody tr[data-name]").first().waitFor();
  // The table scrolls inside its box instead of widening the page.
  const overflow = await narrow.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  assert.ok(overflow <= 1, `page wider than the window by ${overflow}px`);
  await shot(narrow, "list-narrow-420");
  await narrow.context().close();

  const dark = await newPage({ colorScheme: "dark" });
  await dark.goto(open.http + "/#/");
  await dark.getByTestId("throughput-chart").waitFor();
  const bg = await dark.evaluate(() => getComputedStyle(document.body).backgroundColor);
  assert.notEqual(bg, "rgb(246, 247, 249)", "dark mode keeps the light background");
  await shot(dark, "overview-dark");
  await dark.context().close();
});

/** With tokens: no token → sign-in; a reader sees the list but no buttons that change things. */
test("tokens: sign-in and the reader's view", { timeout: 300_000 }, async () => {
  const tokens = {};
  const lines = [];
  for (const role of ["reader", "admin"]) {
    const r = await cli(["token", "new", "--role", role, "--label", role + "-browser"]);
    assert.equal(r.code, 0, r.stderr);
    const [token, line] = r.stdout.trim().split("\n");
    tokens[role] = token.trim();
    lines.push(line.trim());
  }
  const dir = await mkdtemp(path.join(tmpdir(), "oprun-tokens-"));
  const file = path.join(dir, "tokens");
  await writeFile(file, lines.join("\n") + "\n");
  const secured = await startServer(["--tokens-file", file]);
  const name = await submitCli(secured, { duration: "300s", steps: 30 }, { token: tokens.admin });
  await createSchedule(secured, "hourly", ["--cron", "@hourly"], { token: tokens.admin });

  const p = await newPage();
  await p.goto(secured.http + "/#/operations");
  await p.getByTestId("signin-token").waitFor();
  await shot(p, "sign-in");
  await p.getByTestId("signin-token").fill("not-a-token");
  await p.getByTestId("signin-button").click();
  await p.getByTestId("signin-error").filter({ hasText: "UNAUTHENTICATED" }).waitFor();

  await p.getByTestId("signin-token").fill(tokens.reader);
  await p.getByTestId("signin-button").click();
  await row(p, name).waitFor();
  await p.getByTestId("who").filter({ hasText: "reader" }).waitFor();
  // The token lives in this tab's sessionStorage only: not in localStorage, not in the URL.
  const stored = await p.evaluate(() => ({
    session: sessionStorage.getItem("oprun.token"),
    local: JSON.stringify({ ...localStorage }),
    url: location.href,
  }));
  assert.equal(stored.session, tokens.reader);
  assert.ok(!stored.local.includes(tokens.reader) && !stored.url.includes(tokens.reader), "token leaked");
  for (const id of ["bulk-cancel-selected", "bulk-delete-selected", "bulk-cancel-matching", "bulk-delete-matching"]) {
    assert.equal(await p.getByTestId(id).isVisible(), false, id + " shown to a reader");
  }
  await p.goto(secured.http + "/#/operations/" + idOf(name));
  await p.getByTestId("detail-state").filter({ hasText: "RUNNING" }).waitFor();
  assert.equal(await p.getByTestId("btn-cancel").isVisible(), false, "Cancel shown to a reader");
  assert.equal(await p.getByTestId("btn-delete").isVisible(), false);
  assert.equal(await p.getByTestId("btn-rerun").isVisible(), false);
  await shot(p, "reader-view");
  await p.goto(secured.http + "/#/kinds");
  await p.getByTestId("kinds-table").locator('tr[data-kind="sleep"]').waitFor();
  assert.equal(await p.getByTestId("submit-form").count(), 0, "Submit shown to a reader");
  // Schedules: listed and shown, without Pause, Run now or Delete.
  await p.goto(secured.http + "/#/schedules");
  await row(p, "schedules/hourly").getByTestId("sched-spec").filter({ hasText: "@hourly (UTC)" }).waitFor();
  assert.equal(await p.getByTestId("sched-pause").count(), 0, "Pause shown to a reader");
  assert.equal(await p.getByTestId("sched-trigger").count(), 0, "Run now shown to a reader");
  await p.goto(secured.http + "/#/schedules/hourly");
  await p.getByTestId("sched-state").filter({ hasText: "active" }).waitFor();
  for (const id of ["sched-pause", "sched-resume", "sched-trigger", "sched-delete"]) {
    assert.equal(await p.getByTestId(id).isVisible(), false, id + " shown to a reader");
  }
  await p.getByText("Read only: the role READER cannot change schedules.").waitFor();

  // Sign out brings the prompt back and forgets the token.
  await p.getByTestId("signout").click();
  await p.getByTestId("signin-token").waitFor();
  assert.equal(await p.evaluate(() => sessionStorage.getItem("oprun.token")), null);
  await p.context().close();
  await rm(dir, { recursive: true, force: true });
});

/**
 * A web page on another origin (another port on 127.0.0.1, as any page the user visits could
 * be) tries what a cross-site request forgery would: "simple" no-cors POSTs that need no CORS
 * preflight (no Content-Type, text/plain), a form posted as text/plain, and a CORS request.
 * None changes anything: no operation is deleted, no batch or task starts. (Before, the
 * first deleted every finished operation.)
 */
test("a page on another origin changes nothing", { timeout: 300_000 }, async () => {
  const finished = await countMatching(open, "done = true");
  assert.ok(finished > 0, "finished operations to protect");
  const kinds = async () => ({
    batches: await countMatching(open, 'kind = "oprun.delete_operations" OR kind = "oprun.cancel_operations"'),
    sleeps: await countMatching(open, 'kind = "sleep"'),
  });
  const before = await kinds();
  const target = open.http;
  const body = JSON.stringify({ filter: "done = true" });
  const submit = JSON.stringify({ kind: "sleep", input: { "@type": "type.googleapis.com/oprun.v1.SleepInput", duration: "1s" } });
  const html = `<!doctype html><title>evil</title>
<iframe name="sink"></iframe>
<form id="f" method="POST" action="${target}/v1/operations:batchDelete" enctype="text/plain" target="sink">
<input name='{"filter":"done = true","x":"' value='"}'></form>
<script>
const target = ${JSON.stringify(target)};
const tries = [
  fetch(target + "/v1/operations:batchDelete", { method: "POST", mode: "no-cors", body: ${JSON.stringify(body)} }),
  fetch(target + "/v1/operations:batchDelete", { method: "POST", mode: "no-cors", headers: { "content-type": "text/plain" }, body: ${JSON.stringify(body)} }),
  fetch(target + "/v1/tasks:submit", { method: "POST", mode: "no-cors", body: ${JSON.stringify(submit)} }),
  fetch(target + "/v1/operations:batchDelete", { method: "POST", headers: { "content-type": "application/json" }, body: ${JSON.stringify(body)} }),
  fetch(target + "/v1/operations").then((r) => r.text()),
];
document.getElementById("f").submit();
Promise.allSettled(tries).then((r) => {
  window.results = r.map((x) => x.status + ":" + (x.value && x.value.type ? x.value.type : String(x.reason || x.value).slice(0, 80)));
  document.title = "tried";
});
</script>`;
  const evil = http.createServer((req, res) => {
    res.writeHead(200, { "content-type": "text/html; charset=utf-8" });
    res.end(html);
  });
  await new Promise((resolve) => evil.listen(0, "127.0.0.1", resolve));
  const evilUrl = `http://127.0.0.1:${evil.address().port}/`;
  const context = await browser.newContext();
  try {
    const p = await context.newPage();
    await p.goto(evilUrl);
    await p.waitForFunction(() => document.title === "tried", null, { timeout: WAIT });
    const results = await p.evaluate(() => window.results);
    // The CORS request and the read are blocked by the browser; the no-cors ones are opaque.
    assert.match(results[3], /^rejected/, JSON.stringify(results));
    assert.match(results[4], /^rejected/, JSON.stringify(results));
    // Give anything the server might have started the time to show.
    await new Promise((r) => setTimeout(r, 1500));
    // (Others may have finished meanwhile; none went.)
    const after = await countMatching(open, "done = true");
    assert.ok(after >= finished, `no operation was deleted: ${after} < ${finished}`);
    assert.deepEqual(await kinds(), before, "no batch or task was started");
  } finally {
    await context.close();
    evil.close();
  }
});

test("no script errors or CSP violations", () => {
  assert.deepEqual(pageErrors, []);
});
