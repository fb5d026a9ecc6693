// The operator dashboard (`baton --admin-listen`) in a real browser: headless Chromium
// (the OS package, driven by playwright-core), against a baton with its own redis-server
// and data seeded over gRPC. Every page is visited signed out and signed in (one <h1>,
// the Sections nav, a <main>, no serious or critical axe-core violation, no console
// error, no horizontal scroll at 1280x800 nor 390x844, Tab reaches the first nav link);
// the seeded <script> payload stays text; the admin signs in and clicks every action, and
// each effect is read back over gRPC; without the admin cookie, with a reader's, or with a
// wrong csrf, the same POSTs answer 403 and change nothing.
//
//   BATON_BIN=target/debug/baton node --test tests/dashboard/
//   SCREENSHOTS=1 ...   also writes a 1280x800 PNG of each page to docs/dashboard/
//                       (SCREENSHOTS_DIR overrides the directory)

import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { mkdirSync, readFileSync, rmSync } from "node:fs";
import { join, resolve } from "node:path";
import { after, before, describe, it } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";

import { chromium } from "playwright-core";

import { REPO, XSS_PAYLOAD, eventually, grpcClients, jobState, makeDeadJobs, seed, startServers } from "./harness.mjs";

const CHROMIUM = process.env.CHROMIUM_BIN || "/usr/bin/chromium";
const AXE_SOURCE = readFileSync(join(import.meta.dirname, "node_modules", "axe-core", "axe.min.js"), "utf8");
const DESKTOP = { width: 1280, height: 800 };
const PHONE = { width: 390, height: 844 };
const NAV = ["Queues", "Locks", "Elections", "Rate limits", "Sessions", "Redis"];
const QUEUE_COLUMNS = [
  "Queue", "Ready", "Scheduled", "Active", "Dead", "Succeeded", "Paused", "Oldest ready", "Enqueued /min", "Succeeded /min",
];
const ACTION_BUTTONS = [
  "Pause queue", "Resume queue", "Retry selected", "Delete selected", "Retry all dead", "Delete all dead",
  "Cancel job", "Revoke", "Revoke all",
];
const SCREENSHOTS = process.env.SCREENSHOTS === "1";
const SCREENSHOTS_DIR = resolve(REPO, process.env.SCREENSHOTS_DIR || "docs/dashboard");

const ADMIN_KEY = `adm_${randomBytes(24).toString("hex")}`;
const READER_KEY = `rdr_${randomBytes(24).toString("hex")}`;

let servers;
let api;
let ids;
let browser;
let base;
let failed = false;

// ---------------------------------------------------------------------------------------
// Helpers

/** `it`, remembering failures so the logs are kept for a failed run. */
function step(name, fn, options = {}) {
  it(name, options, async (t) => {
    try {
      await fn(t);
    } catch (error) {
      failed = true;
      throw error;
    }
  });
}

const squash = (text) => (text ?? "").replace(/\s+/g, " ").trim();

async function newPage(context) {
  const page = await context.newPage();
  page.errors = [];
  page.on("console", (message) => {
    if (message.type() === "error") {
      const { url, lineNumber } = message.location();
      page.errors.push(`console.error on ${page.url()}: ${message.text()}${url ? ` (${url}:${lineNumber})` : ""}`);
    }
  });
  page.on("pageerror", (error) => page.errors.push(`uncaught exception on ${page.url()}: ${error.message}`));
  // A confirm() before a destructive action is fine: accept it, as an operator would.
  page.on("dialog", (dialog) => dialog.accept());
  return page;
}

async function newContext() {
  const context = await browser.newContext({ viewport: DESKTOP });
  context.setDefaultTimeout(15_000);
  context.setDefaultNavigationTimeout(15_000);
  return context;
}

async function visit(page, path, status = 200) {
  const response = await page.goto(base + path, { waitUntil: "load" });
  assert.ok(response, `no response for ${path}`);
  assert.equal(response.status(), status, `GET ${path}: HTTP ${response.status()}, expected ${status}`);
  return response;
}

/** Clicks a submit button and waits for the page it leads to; returns that page's response. */
async function submit(page, locator) {
  const [response] = await Promise.all([page.waitForNavigation({ waitUntil: "load" }), locator.click()]);
  return response;
}

/** A submit button by its visible text (a Revoke button's accessible name also names its session). */
function button(page, name) {
  const text = JSON.stringify(name);
  return page.locator(`button:text-is(${text}), input[type="submit"][value=${text}]`);
}

async function assertNoAxeViolations(page, label) {
  // Evaluated rather than added as a <script> tag: the pages' Content-Security-Policy
  // (script-src 'self') refuses inline scripts, and the test keeps that policy in force.
  const loaded = await page.evaluate(() => typeof globalThis.axe === "object");
  if (!loaded) await page.evaluate(AXE_SOURCE);
  const result = await page.evaluate(() => globalThis.axe.run());
  const bad = result.violations.filter((v) => v.impact === "serious" || v.impact === "critical");
  if (bad.length) {
    const report = bad
      .map((v) => `  [${v.impact}] ${v.id}: ${v.help} (${v.helpUrl})\n` +
        v.nodes.slice(0, 5).map((n) => `      ${n.target.join(" ")}  ${n.html.slice(0, 200)}`).join("\n"))
      .join("\n");
    assert.fail(`axe-core on ${label}: ${bad.length} serious/critical violation(s)\n${report}`);
  }
}

async function assertNoHorizontalScroll(page, label) {
  const { scrollWidth, innerWidth } = await page.evaluate(() => ({
    scrollWidth: document.documentElement.scrollWidth,
    innerWidth: window.innerWidth,
  }));
  assert.ok(scrollWidth <= innerWidth + 1, `${label}: horizontal scroll (scrollWidth ${scrollWidth} > innerWidth ${innerWidth})`);
}

/** From a fresh load, Tab (at most 10 times) reaches the first link of the Sections nav. */
async function assertTabReachesNav(page, label) {
  const seen = [];
  for (let i = 0; i < 10; i++) {
    await page.keyboard.press("Tab");
    const focus = await page.evaluate(() => {
      const active = document.activeElement;
      const first = document.querySelector('nav[aria-label="Sections"] a');
      return { tag: active?.tagName ?? "", text: (active?.textContent ?? "").trim().slice(0, 40), isFirstNavLink: !!first && active === first };
    });
    seen.push(`${focus.tag.toLowerCase()} "${focus.text}"`);
    if (focus.isFirstNavLink) {
      assert.equal(focus.tag, "A");
      return;
    }
  }
  assert.fail(`${label}: 10 Tabs from the top never reached the first Sections link; focus went: ${seen.join(" → ")}`);
}

async function assertStructure(page, label) {
  assert.equal(await page.locator("h1").count(), 1, `${label}: expected exactly one <h1>`);
  assert.equal(await page.locator("main").count(), 1, `${label}: expected exactly one <main>`);
  const nav = page.locator('nav[aria-label="Sections"]');
  assert.equal(await nav.count(), 1, `${label}: expected one <nav aria-label="Sections">`);
  const links = (await nav.locator("a").allTextContents()).map(squash);
  assert.deepEqual(links, NAV, `${label}: Sections nav links`);
  // Every POST form carries a non-empty hidden csrf field.
  const forms = await page.$$eval("form", (all) =>
    all
      .filter((f) => f.method.toLowerCase() === "post")
      .map((f) => ({
        action: f.getAttribute("action"),
        button: (f.querySelector("button, input[type=submit]")?.textContent ?? "").trim(),
        csrf: f.querySelector('input[type="hidden"][name="csrf"]')?.value ?? null,
      })),
  );
  for (const form of forms) {
    assert.ok(form.csrf, `${label}: POST form ${form.action} ("${form.button}") has no hidden input[name=csrf] with a value`);
  }
  assert.equal(await page.evaluate(() => window.__xss), undefined, `${label}: window.__xss is set: the payload ran`);
}

async function assertReadOnly(page, label) {
  for (const name of ACTION_BUTTONS) {
    assert.equal(await button(page, name).count(), 0, `${label}: signed out, yet a "${name}" button is shown`);
  }
  assert.equal(await page.locator('input[name="job"]').count(), 0, `${label}: signed out, yet job checkboxes are shown`);
}

/**
 * The checks every page gets: status 200, keyboard and scroll at both viewports, one h1,
 * the nav, one main, csrf on POST forms, axe at both viewports, no console error. Leaves
 * the page loaded at 1280x800.
 */
async function checkPage(page, path, label) {
  page.errors.length = 0;
  for (const [name, size] of [["1280x800", DESKTOP], ["390x844", PHONE]]) {
    await page.setViewportSize(size);
    await visit(page, path);
    await assertTabReachesNav(page, `${label} at ${name}`);
    await assertNoHorizontalScroll(page, `${label} at ${name}`);
    await assertNoAxeViolations(page, `${label} at ${name}`);
  }
  await page.setViewportSize(DESKTOP);
  await visit(page, path);
  await assertStructure(page, label);
  await sleep(200); // an <img onerror> would have fired by now
  assert.equal(await page.evaluate(() => window.__xss), undefined, `${label}: window.__xss is set: the payload ran`);
  assert.deepEqual(page.errors, [], `${label}: console errors`);
}

async function cookieHeader(context) {
  return (await context.cookies(base)).map((c) => `${c.name}=${c.value}`).join("; ");
}

/** The form of a submit button as a browser would send it: action, method, fields. */
async function formOf(locator) {
  return locator.evaluate((b) => {
    const form = b.form;
    return {
      action: b.hasAttribute("formaction") ? b.formAction : form.action,
      method: (b.hasAttribute("formmethod") ? b.formMethod : form.method).toUpperCase(),
      fields: [...new FormData(form, b).entries()].map(([k, v]) => [k, String(v)]),
    };
  });
}

/** POSTs a captured form from outside the browser, as a same-origin form post would arrive. */
async function rawPost(form, { cookie, csrf } = {}) {
  const body = new URLSearchParams(form.fields.map(([k, v]) => [k, k === "csrf" && csrf !== undefined ? csrf : v]));
  const headers = { "content-type": "application/x-www-form-urlencoded", origin: base };
  if (cookie) headers.cookie = cookie;
  const response = await fetch(form.action, { method: "POST", body, headers, redirect: "manual" });
  await response.arrayBuffer();
  return response.status;
}

async function signIn(page, key) {
  await visit(page, "/login");
  await page.getByLabel("Admin API key").fill(key);
  return submit(page, button(page, "Sign in"));
}

async function stats(queue) {
  return api.queue.getQueueStats({ queue });
}

async function sessionCount() {
  return (await api.session.listSessions({ subject: "user-7" })).sessions.length;
}

/** The table's column headers include one matching each of `wanted`. */
async function assertColumns(page, table, wanted) {
  const headers = (await page.locator(`${table} th[scope="col"], ${table} thead th`).allTextContents()).map(squash);
  for (const pattern of wanted) {
    assert.ok(headers.some((h) => pattern.test(h)), `${table}: no column header matching ${pattern}; headers: ${JSON.stringify([...new Set(headers)])}`);
  }
}

/** A table's data rows: body rows with a td or a row header (not the column headers). */
function bodyRows(page, table) {
  return page.locator(`${table} > tbody > tr:has(> td, > th[scope="row"])`);
}

/** The cells (th or td) of a table row, squashed text. */
async function cells(row) {
  return (await row.locator(":scope > th, :scope > td").allTextContents()).map(squash);
}

const number = (text) => Number(text.replace(/[,\s\u202f]/g, ""));

// ---------------------------------------------------------------------------------------

describe("operator dashboard", { concurrency: false }, () => {
  let anon; // signed-out context and page
  let anonPage;
  let admin;
  let adminPage;
  let reader;
  let readerPage;

  before(async () => {
    servers = await startServers({ adminKey: ADMIN_KEY, readerKey: READER_KEY });
    base = servers.adminBase;
    api = grpcClients(`127.0.0.1:${servers.grpcPort}`, ADMIN_KEY);
    ids = await seed(api);
    browser = await chromium.launch({
      executablePath: CHROMIUM,
      args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"],
    });
    anon = await newContext();
    anonPage = await newPage(anon);
  }, { timeout: 180_000 });

  after(async () => {
    await browser?.close();
    api?.close();
    await servers?.stop();
    if (servers) {
      if (failed) {
        console.log(`# logs kept in ${servers.dir} (baton.log, redis.log); baton log tail:\n` +
          servers.baton.log().split("\n").slice(-40).join("\n"));
      } else {
        rmSync(servers.dir, { recursive: true, force: true });
      }
    }
  });

  // --- signed out -------------------------------------------------------------------------

  step("/ redirects to /queues", async () => {
    await visit(anonPage, "/");
    assert.equal(new URL(anonPage.url()).pathname, "/queues");
  });

  step("signed out: /queues lists both queues with the counts GetQueueStats gives", async () => {
    const page = anonPage;
    await checkPage(page, "/queues", "/queues");
    await assertReadOnly(page, "/queues");
    const table = page.locator("table#queues");
    assert.equal(await table.count(), 1, "no table#queues");
    const headers = (await table.locator("tr").filter({ has: page.locator("th") }).first().locator("th").allTextContents()).map(squash);
    assert.deepEqual(headers, QUEUE_COLUMNS, "table#queues column headers");
    for (const queue of ["emails", "reports"]) {
      const row = table.locator(`tr[data-queue="${queue}"]`);
      assert.equal(await row.count(), 1, `no tr[data-queue="${queue}"]`);
      const got = await cells(row);
      assert.equal(got.length, QUEUE_COLUMNS.length, `row ${queue}: ${got.length} cells: ${JSON.stringify(got)}`);
      assert.equal(got[0], queue);
      assert.equal(await row.locator(`a[href="/queues/${queue}"]`).count(), 1, `row ${queue}: first cell has no link to /queues/${queue}`);
      const want = await stats(queue);
      assert.deepEqual(
        got.slice(1, 6).map(number),
        [want.ready, want.scheduled, want.active, want.dead, want.succeeded].map(Number),
        `row ${queue}: Ready..Succeeded ${JSON.stringify(got.slice(1, 6))} vs GetQueueStats ${JSON.stringify(want)}`,
      );
      assert.equal(got[6], "no", `row ${queue}: Paused`);
      assert.ok(got[7].length > 0, `row ${queue}: Oldest ready is empty`);
    }
    const emails = await stats("emails");
    assert.equal(Number(emails.ready), 7, "seed: 7 ready jobs in emails");
    assert.equal(Number(emails.dead), 4, "seed: 4 dead jobs in emails");
    assert.equal(Number(emails.succeeded), 1, "seed: 1 succeeded job in emails");
    assert.equal(Number((await stats("reports")).scheduled), 1, "seed: 1 scheduled job in reports");
  });

  step("signed out: /queues/emails has its state links, jobs linked to their pages, and the groups", async () => {
    const page = anonPage;
    await checkPage(page, "/queues/emails", "/queues/emails");
    await assertReadOnly(page, "/queues/emails");
    for (const [state, label] of [["ready", "Ready"], ["scheduled", "Scheduled"], ["active", "Active"], ["succeeded", "Succeeded"], ["dead", "Dead"]]) {
      const link = page.locator(`main a[href*="state=${state}"]`);
      assert.ok((await link.count()) >= 1, `/queues/emails: no link to ?state=${state}`);
      assert.match(squash(await link.first().textContent()), new RegExp(`^${label}\\b`), `/queues/emails: the ?state=${state} link's text`);
    }
    const groups = page.locator("table#groups");
    assert.equal(await groups.count(), 1, "/queues/emails: no table#groups although job(s) are in group tenant-a");
    assert.match(squash(await groups.textContent()), /tenant-a/, "table#groups does not show tenant-a");

    // The Ready state, reached by its link.
    await submitLink(page, page.locator('main a[href*="state=ready"]').first());
    const jobs = page.locator("table#jobs");
    assert.equal(await jobs.count(), 1, "?state=ready: no table#jobs");
    for (const id of [...ids.ready, ids.xss, ids.large, ids.binary]) {
      const row = jobs.locator(`tr[data-job="${id}"]`);
      assert.equal(await row.count(), 1, `?state=ready: no tr[data-job="${id}"]`);
      const href = await row.locator(":scope > :first-child a").getAttribute("href");
      assert.equal(href, `/queues/emails/jobs/${id}`, `?state=ready: the first cell of job ${id} links to`);
    }
    assert.deepEqual(page.errors, [], "console errors");
  });

  step("signed out: the Dead, Succeeded and Scheduled states list their jobs", async () => {
    const page = anonPage;
    await checkPage(page, "/queues/emails?state=dead", "/queues/emails?state=dead");
    await assertReadOnly(page, "/queues/emails?state=dead");
    for (const id of ids.dead) {
      assert.equal(await page.locator(`table#jobs tr[data-job="${id}"]`).count(), 1, `?state=dead: no tr[data-job="${id}"]`);
    }
    await visit(page, "/queues/emails?state=succeeded");
    assert.equal(await page.locator(`table#jobs tr[data-job="${ids.succeeded}"]`).count(), 1, "?state=succeeded: the acked job is missing");
    await visit(page, "/queues/reports?state=scheduled");
    assert.equal(await page.locator(`table#jobs tr[data-job="${ids.reportsScheduled}"]`).count(), 1, "reports ?state=scheduled: the delayed job is missing");
    assert.deepEqual(page.errors, [], "console errors");
  });

  step("signed out: a job page shows the <script> payload as inert text", async () => {
    const page = anonPage;
    const path = `/queues/emails/jobs/${ids.xss}`;
    await visit(page, path);
    await sleep(200); // an <img onerror> would have fired by now
    const dl = page.locator("dl#job");
    assert.equal(await dl.count(), 1, "job page: no dl#job");
    assert.ok(squash(await page.locator("main").textContent()).includes(ids.xss), "the job page does not show the job id");
    assert.match(squash(await dl.textContent()), /ready/i, "dl#job does not show the state READY");
    const pre = page.locator("pre#payload");
    assert.equal(await pre.count(), 1, "job page: no pre#payload");
    assert.ok((await pre.textContent()).includes(XSS_PAYLOAD), `pre#payload's text is not the literal payload: ${await pre.textContent()}`);
    assert.ok((await pre.textContent()).includes("<script>"));
    assert.equal(await page.locator('script:not([src])', { hasText: "__xss" }).count(), 0, "a <script> element with the payload exists");
    assert.equal(await page.locator('img[src="x"]').count(), 0, "the payload's <img> became an element");
    assert.equal(await page.evaluate(() => window.__xss), undefined, "window.__xss is set: the payload ran");
    await checkPage(page, path, "job page");
    await assertReadOnly(page, "job page");
  });

  step("signed out: a large payload's preview is capped, a binary one renders", async () => {
    const page = anonPage;
    await visit(page, `/queues/emails/jobs/${ids.large}`);
    const text = await page.locator("pre#payload").textContent();
    assert.ok(text.length > 0 && text.length < 300_000, `pre#payload of a 300,000-byte payload has ${text.length} characters: not capped`);
    await checkPage(page, `/queues/emails/jobs/${ids.binary}`, "binary job page");
    assert.equal(await page.locator("pre#payload").count(), 1, "binary job page: no pre#payload");
  });

  step("signed out: /locks finds orders/42 through its search form", async () => {
    const page = anonPage;
    await checkPage(page, "/locks", "/locks");
    const prefix = page.locator('main form input[name="prefix"]');
    if ((await prefix.count()) !== 1) {
      const inputs = await page.$$eval("main form input", (all) => all.map((i) => `${i.name}${i.labels?.[0] ? ` ("${i.labels[0].textContent.trim()}")` : ""}`));
      assert.fail(`/locks: no search input named "prefix"; the form's inputs: ${JSON.stringify(inputs)}`);
    }
    await prefix.fill("orders/");
    await submitLink(page, button(page, "Look up"));
    const url = new URL(page.url());
    assert.equal(url.pathname, "/locks");
    assert.equal(url.searchParams.get("prefix"), "orders/");
    const row = page.locator('table#locks tr[data-lock="orders/42"]');
    assert.equal(await row.count(), 1, '/locks?prefix=orders/: no tr[data-lock="orders/42"]');
    const text = squash(await row.textContent());
    assert.ok(text.includes(ids.lock.fencingToken), `lock row does not show fencing token ${ids.lock.fencingToken}: ${text}`);
    await assertColumns(page, "table#locks", [/fencing token/i, /waiters/i]);
    await checkPage(page, "/locks?prefix=orders/", "/locks?prefix=orders/");
    await assertReadOnly(page, "/locks?prefix=orders/");
  });

  step("signed out: /elections?prefix=sch shows the scheduler's leader", async () => {
    const page = anonPage;
    await checkPage(page, "/elections?prefix=sch", "/elections?prefix=sch");
    await assertReadOnly(page, "/elections");
    const row = page.locator('table#elections tr[data-election="scheduler"]');
    assert.equal(await row.count(), 1, '/elections?prefix=sch: no tr[data-election="scheduler"]');
    const text = squash(await row.textContent());
    assert.ok(text.includes("scheduler-1.internal:8080"), `election row does not show the leader's value: ${text}`);
    assert.ok(text.includes(ids.election.leader.term), `election row does not show term ${ids.election.leader.term}: ${text}`);
    await assertColumns(page, "table#elections", [/leader/i, /term/i, /value/i]);
  });

  step("signed out: /ratelimits lists policy api and offers the dry run form", async () => {
    const page = anonPage;
    await checkPage(page, "/ratelimits", "/ratelimits");
    await assertReadOnly(page, "/ratelimits");
    const rows = [];
    for (const row of await bodyRows(page, "table#policies").all()) rows.push(await cells(row));
    assert.ok(rows.some((c) => c[0] === "api" && c.includes("10")), `table#policies has no row for policy api (limit 10): ${JSON.stringify(rows)}`);
    assert.equal(await page.locator('select[name="policy"]').count(), 1, 'no select[name="policy"]');
    assert.equal(await page.locator('input[name="key"]').count(), 1, 'no input[name="key"]');
    assert.equal(await button(page, "Try (dry run)").count(), 1, 'no "Try (dry run)" button');
  });

  step("signed out: /sessions?subject=user-7 shows two sessions, never their ids", async () => {
    const page = anonPage;
    await checkPage(page, "/sessions?subject=user-7", "/sessions?subject=user-7");
    await assertReadOnly(page, "/sessions");
    assert.equal(await bodyRows(page, "table#sessions").count(), 2, "table#sessions: expected 2 rows");
    const html = await page.content();
    for (const id of ids.sessions) assert.ok(!html.includes(id), "a session id appears in the page");
  });

  step("signed out: /redis shows memory and eviction policy", async () => {
    const page = anonPage;
    await checkPage(page, "/redis", "/redis");
    await assertReadOnly(page, "/redis");
    const facts = await page.$$eval("dl#redis dt", (dts) =>
      Object.fromEntries(dts.map((dt) => {
        let dd = dt.nextElementSibling;
        while (dd && dd.tagName !== "DD") dd = dd.nextElementSibling;
        return [dt.textContent.trim(), dd ? dd.textContent.trim() : null];
      })),
    );
    for (const term of ["Memory used", "Max memory", "Eviction policy"]) {
      assert.ok(facts[term], `dl#redis: no "${term}" with a value: ${JSON.stringify(facts)}`);
    }
    assert.equal(facts["Eviction policy"], "noeviction");
  });

  step("signed out: /login has the Admin API key field and a Sign in button", async () => {
    const page = anonPage;
    await checkPage(page, "/login", "/login");
    const field = page.getByLabel("Admin API key");
    assert.equal(await field.count(), 1, 'no field labelled "Admin API key"');
    assert.equal(await field.getAttribute("type"), "password");
    assert.equal(await field.getAttribute("name"), "key");
    assert.equal(await button(page, "Sign in").count(), 1, 'no "Sign in" button');
  });

  step("a wrong key does not sign in", async () => {
    const context = await newContext();
    try {
      const page = await newPage(context);
      await signIn(page, `adm_${randomBytes(24).toString("hex")}`);
      assert.ok(!squash(await page.textContent("body")).includes("Signed in as"), "a wrong key signed in");
      assert.equal(await button(page, "Sign out").count(), 0);
      await visit(page, "/queues/emails");
      await assertReadOnly(page, "after a wrong key");
    } finally {
      await context.close();
    }
  });

  // --- signed in --------------------------------------------------------------------------

  step("the admin key signs in: HttpOnly SameSite cookie, Signed in as ops-admin, Sign out", async () => {
    admin = await newContext();
    adminPage = await newPage(admin);
    const response = await signIn(adminPage, ADMIN_KEY);
    assert.ok(response.status() < 400, `sign in answered HTTP ${response.status()}`);
    const cookies = await admin.cookies(base);
    assert.ok(cookies.length >= 1, "no cookie set by sign in");
    for (const cookie of cookies) {
      assert.equal(cookie.httpOnly, true, `cookie ${cookie.name} is not HttpOnly`);
      assert.ok(["Strict", "Lax"].includes(cookie.sameSite), `cookie ${cookie.name} has SameSite=${cookie.sameSite}`);
    }
    await visit(adminPage, "/queues");
    assert.ok(squash(await adminPage.locator("header").textContent().catch(() => "")).includes("Signed in as ops-admin"), 'no <header> with "Signed in as ops-admin"');
    assert.equal(await button(adminPage, "Sign out").count(), 1, 'no "Sign out" button');
    assert.ok(!squash(await adminPage.content()).includes(ADMIN_KEY), "the admin key appears in the page");
  });

  const signedInPages = [
    ["queues", "/queues"],
    ["queue", "/queues/emails"],
    ["queue-dead", "/queues/emails?state=dead"],
    ["job", () => `/queues/emails/jobs/${ids.ready[0]}`],
    ["locks", "/locks?prefix=orders/"],
    ["elections", "/elections?prefix=sch"],
    ["ratelimits", "/ratelimits"],
    ["sessions", "/sessions?subject=user-7"],
    ["redis", "/redis"],
  ];
  for (const [name, where] of signedInPages) {
    step(`signed in: ${name} passes the page checks with its action forms`, async () => {
      const path = typeof where === "function" ? where() : where;
      await checkPage(adminPage, path, `signed in ${path}`);
      assert.ok(squash(await adminPage.textContent("body")).includes("Signed in as ops-admin"), `${path}: no "Signed in as ops-admin"`);
    });
  }

  step("signed in: the forms offer their actions (Pause, dead-job checkboxes, Cancel, Revoke)", async () => {
    const page = adminPage;
    await visit(page, "/queues/emails");
    assert.equal(await button(page, "Pause queue").count(), 1, '/queues/emails: no "Pause queue" button');
    await visit(page, "/queues/emails?state=dead");
    for (const id of ids.dead) {
      assert.equal(await page.locator(`tr[data-job="${id}"] input[name="job"][value="${id}"]`).count(), 1, `?state=dead: no checkbox for ${id} in its row`);
    }
    for (const name of ["Retry selected", "Delete selected", "Retry all dead", "Delete all dead"]) {
      assert.equal(await button(page, name).count(), 1, `?state=dead: no "${name}" button`);
    }
    await visit(page, `/queues/emails/jobs/${ids.ready[0]}`);
    assert.equal(await button(page, "Cancel job").count(), 1, 'a READY job page has no "Cancel job" button');
    await visit(page, `/queues/emails/jobs/${ids.succeeded}`);
    assert.equal(await button(page, "Cancel job").count(), 0, 'a SUCCEEDED job page has a "Cancel job" button');
    await visit(page, `/queues/emails/jobs/${ids.dead[0]}`);
    assert.equal(await button(page, "Cancel job").count(), 0, 'a DEAD job page has a "Cancel job" button');
    await visit(page, "/sessions?subject=user-7");
    assert.equal(await button(page, "Revoke").count(), 2, 'expected one "Revoke" button per session');
    assert.equal(await button(page, "Revoke all").count(), 1, 'no "Revoke all" button');
  });

  if (SCREENSHOTS) {
    step(`screenshots to ${SCREENSHOTS_DIR}`, async () => {
      mkdirSync(SCREENSHOTS_DIR, { recursive: true });
      const shots = [
        ["queues", "/queues"], ["queue", "/queues/emails"], ["job", `/queues/emails/jobs/${ids.ready[1]}`],
        ["locks", "/locks?prefix=orders/"], ["elections", "/elections?prefix=sch"], ["ratelimits", "/ratelimits"],
        ["sessions", "/sessions?subject=user-7"], ["redis", "/redis"],
      ];
      await adminPage.setViewportSize(DESKTOP);
      for (const [name, path] of shots) {
        await visit(adminPage, path);
        await adminPage.screenshot({ path: join(SCREENSHOTS_DIR, `${name}.png`) });
      }
    });
  }

  // --- refusals ---------------------------------------------------------------------------

  step("a reader key signs in but its actions are refused with 403", async () => {
    reader = await newContext();
    readerPage = await newPage(reader);
    await signIn(readerPage, READER_KEY);
    await visit(readerPage, "/queues/emails");
    assert.ok(squash(await readerPage.textContent("body")).includes("Signed in as reader"), 'reader: no "Signed in as reader"');
    const pause = button(readerPage, "Pause queue");
    if (await pause.count()) {
      const response = await submit(readerPage, pause);
      assert.equal(response.status(), 403, `reader clicking "Pause queue": HTTP ${response.status()}`);
      assert.equal((await stats("emails")).paused, false, "the reader's click paused the queue");
    }
  });

  step("POSTs without the admin cookie, with a reader's, or with a wrong csrf answer 403 and change nothing", async () => {
    await visit(adminPage, "/queues/emails");
    const pause = await formOf(button(adminPage, "Pause queue"));
    assert.equal(pause.method, "POST");
    assert.ok(pause.fields.some(([k]) => k === "csrf"), `the Pause form has no csrf field: ${JSON.stringify(pause.fields)}`);
    const adminCookie = await cookieHeader(admin);

    assert.equal(await rawPost(pause), 403, "POST without a cookie");
    assert.equal(await rawPost(pause, { cookie: adminCookie, csrf: "0".repeat(43) }), 403, "POST with the admin cookie and a wrong csrf");
    assert.equal(await rawPost(pause, { cookie: adminCookie, csrf: "" }), 403, "POST with the admin cookie and an empty csrf");

    await visit(readerPage, "/queues/emails");
    const readerCsrfField = readerPage.locator('form input[name="csrf"]');
    assert.ok((await readerCsrfField.count()) > 0, "the reader's /queues/emails has no form with a csrf field (no Sign out form?)");
    const readerCsrf = await readerCsrfField.first().inputValue();
    assert.equal(await rawPost(pause, { cookie: await cookieHeader(reader), csrf: readerCsrf }), 403, "POST with the reader's cookie and csrf");
    assert.equal((await stats("emails")).paused, false, "a refused POST paused the queue");

    // The control: the same form with the admin's cookie and csrf is applied.
    const status = await rawPost(pause, { cookie: adminCookie });
    assert.ok(status < 400, `POST with the admin cookie and csrf: HTTP ${status}`);
    await eventually("the control POST paused emails", async () => (await stats("emails")).paused);
    await api.queue.resumeQueue({ queue: "emails" });
  });

  // --- actions ----------------------------------------------------------------------------

  step("clicking Pause queue pauses emails; Resume queue resumes it", async () => {
    const page = adminPage;
    await visit(page, "/queues/emails");
    let response = await submit(page, button(page, "Pause queue"));
    assert.ok(response.status() < 400, `Pause queue: HTTP ${response.status()}`);
    await eventually("GetQueueStats says emails is paused", async () => (await stats("emails")).paused === true, 5000);
    assert.equal(await button(page, "Resume queue").count(), 1, 'after pausing: no "Resume queue" button');
    await visit(page, "/queues");
    assert.equal((await cells(page.locator('tr[data-queue="emails"]')))[6], "yes", "/queues: Paused is not yes");

    await visit(page, "/queues/emails");
    response = await submit(page, button(page, "Resume queue"));
    assert.ok(response.status() < 400, `Resume queue: HTTP ${response.status()}`);
    await eventually("GetQueueStats says emails is not paused", async () => (await stats("emails")).paused === false, 5000);
    assert.equal(await button(page, "Pause queue").count(), 1, 'after resuming: no "Pause queue" button');
    assert.deepEqual(page.errors, [], "console errors");
  });

  step("Retry selected makes the checked dead job READY, and only it", async () => {
    const page = adminPage;
    const [d1, d2] = ids.dead;
    await visit(page, "/queues/emails?state=dead");
    await page.locator(`input[name="job"][value="${d1}"]`).check();
    const response = await submit(page, button(page, "Retry selected"));
    assert.ok(response.status() < 400, `Retry selected: HTTP ${response.status()}`);
    await eventually(`GetJob ${d1} is READY`, async () => (await jobState(api, d1)) === "JOB_STATE_READY", 5000);
    assert.equal(await jobState(api, d2), "JOB_STATE_DEAD", "an unchecked dead job was retried");
    await visit(page, "/queues/emails?state=dead");
    assert.equal(await page.locator(`tr[data-job="${d1}"]`).count(), 0, "the retried job is still listed as dead");
  });

  step("Delete selected deletes the checked dead job (GetJob: NOT_FOUND), and only it", async () => {
    const page = adminPage;
    const [, d2, d3] = ids.dead;
    await visit(page, "/queues/emails?state=dead");
    await page.locator(`input[name="job"][value="${d2}"]`).check();
    const response = await submit(page, button(page, "Delete selected"));
    assert.ok(response.status() < 400, `Delete selected: HTTP ${response.status()}`);
    await eventually(`GetJob ${d2} is NOT_FOUND`, async () => (await jobState(api, d2)) === "NOT_FOUND", 5000);
    assert.equal(await jobState(api, d3), "JOB_STATE_DEAD", "an unchecked dead job was deleted");
    assert.equal(Number((await stats("emails")).dead), 2);
  });

  step("Retry all dead makes every dead job READY", async () => {
    const page = adminPage;
    const [, , d3, d4] = ids.dead;
    await visit(page, "/queues/emails?state=dead");
    const response = await submit(page, button(page, "Retry all dead"));
    assert.ok(response.status() < 400, `Retry all dead: HTTP ${response.status()}`);
    await eventually("both remaining dead jobs are READY", async () =>
      (await jobState(api, d3)) === "JOB_STATE_READY" && (await jobState(api, d4)) === "JOB_STATE_READY", 5000);
    assert.equal(Number((await stats("emails")).dead), 0);
  });

  step("Delete all dead deletes every dead job", async () => {
    const page = adminPage;
    const more = await makeDeadJobs(api, "emails", 2, "bounce-again");
    await visit(page, "/queues/emails?state=dead");
    for (const id of more) assert.equal(await page.locator(`tr[data-job="${id}"]`).count(), 1, `new dead job ${id} not listed`);
    const response = await submit(page, button(page, "Delete all dead"));
    assert.ok(response.status() < 400, `Delete all dead: HTTP ${response.status()}`);
    await eventually("both dead jobs are NOT_FOUND", async () =>
      (await jobState(api, more[0])) === "NOT_FOUND" && (await jobState(api, more[1])) === "NOT_FOUND", 5000);
    assert.equal(Number((await stats("emails")).dead), 0);
    assert.equal(await jobState(api, ids.dead[0]), "JOB_STATE_READY", "Delete all dead touched a READY job");
  });

  step("Cancel job cancels a READY job (GetJob: CANCELLED)", async () => {
    const page = adminPage;
    const id = ids.ready[0];
    await visit(page, `/queues/emails/jobs/${id}`);
    const response = await submit(page, button(page, "Cancel job"));
    assert.ok(response.status() < 400, `Cancel job: HTTP ${response.status()}`);
    await eventually(`GetJob ${id} is CANCELLED`, async () => (await jobState(api, id)) === "JOB_STATE_CANCELLED", 5000);
    await visit(page, `/queues/emails/jobs/${id}`);
    assert.equal(await button(page, "Cancel job").count(), 0, 'a CANCELLED job still offers "Cancel job"');
    assert.match(squash(await page.locator("dl#job").textContent()), /cancelled/i, "dl#job does not say CANCELLED");
    assert.equal(await jobState(api, ids.ready[1]), "JOB_STATE_READY", "another job was cancelled too");
  });

  step("Try (dry run) shows remaining for policy api and consumes nothing", async () => {
    const page = adminPage;
    const dry = async () => (await api.ratelimit.check({ limits: [{ key: "dash-key", policy: "api" }], dryRun: true })).results[0].remaining;
    const before = await dry(); // 3 hits seeded: "6" (what would remain after one more)
    const texts = [];
    for (let i = 0; i < 2; i++) {
      await visit(page, "/ratelimits");
      await page.locator('select[name="policy"]').selectOption("api");
      await page.locator('input[name="key"]').fill("dash-key");
      await button(page, "Try (dry run)").click();
      const result = page.locator("#dry-run").filter({ hasText: /remaining/i });
      await result.waitFor();
      texts.push(squash(await result.textContent()));
    }
    // Both show what a gRPC dry run shows (the reset time moves on, so only the count is compared).
    for (const text of texts) {
      assert.ok(new RegExp(`(?<!\\d)${before}(?!\\d)`).test(text), `#dry-run "${text}" does not show remaining ${before} (gRPC dry run)`);
    }
    assert.equal(await dry(), before, "the dashboard's dry runs consumed from the limit");
    assert.deepEqual(page.errors, [], "console errors");
  });

  step("Revoke ends one session of user-7; Revoke all ends the rest", async () => {
    const page = adminPage;
    assert.equal(await sessionCount(), 2);
    await visit(page, "/sessions?subject=user-7");
    let response = await submit(page, button(page, "Revoke").first());
    assert.ok(response.status() < 400, `Revoke: HTTP ${response.status()}`);
    await eventually("ListSessions shows one session", async () => (await sessionCount()) === 1, 5000);
    await visit(page, "/sessions?subject=user-7");
    assert.equal(await bodyRows(page, "table#sessions").count(), 1, "table#sessions does not list 1 row");

    response = await submit(page, button(page, "Revoke all"));
    assert.ok(response.status() < 400, `Revoke all: HTTP ${response.status()}`);
    await eventually("ListSessions shows none", async () => (await sessionCount()) === 0, 5000);
    assert.equal(Number((await api.session.countSessions({})).live), 0, "CountSessions is not 0");
    assert.deepEqual(page.errors, [], "console errors");
  });

  let signedOut; // the Pause form and the cookie from before Sign out
  step("Sign out returns to read-only", async () => {
    const page = adminPage;
    await visit(page, "/queues/emails");
    signedOut = { pause: await formOf(button(page, "Pause queue")), cookie: await cookieHeader(admin) };
    const response = await submit(page, button(page, "Sign out"));
    assert.ok(response.status() < 400, `Sign out: HTTP ${response.status()}`);
    assert.deepEqual(await admin.cookies(base), [], "Sign out left a cookie");
    await visit(page, "/queues/emails");
    assert.ok(!squash(await page.textContent("body")).includes("Signed in as"), 'still "Signed in as" after Sign out');
    await assertReadOnly(page, "after Sign out");
  });

  // Sign out ends the sign-in on the server, not just in this browser.
  step("after Sign out, a copy of the old cookie no longer acts", async () => {
    assert.ok(signedOut, "the Sign out step did not run");
    assert.equal(await rawPost(signedOut.pause, { cookie: signedOut.cookie }), 403, "a POST with the signed-out cookie and its csrf");
  });

  // Live pages refresh their content in place: a queue that appears shows up unreloaded.
  step("a live page follows the data without a reload", async () => {
    const page = anonPage;
    await visit(page, "/queues");
    await page.evaluate(() => { window.__sameDocument = true; });
    assert.equal(await page.locator('tr[data-queue="live"]').count(), 0, "no queue live yet");
    await api.queue.enqueue({ queue: "live", payload: Buffer.from("x") });
    await eventually(
      "tr[data-queue=live] on the open page",
      async () => (await page.locator('tr[data-queue="live"]').count()) === 1,
      15_000,
    );
    assert.equal(await page.evaluate(() => window.__sameDocument), true, "the page was reloaded, not refreshed in place");
    assert.deepEqual(page.errors, [], "console errors");
  });
});

/** Follows a link or a GET form's button and waits for the page it leads to. */
async function submitLink(page, locator) {
  const response = await submit(page, locator);
  assert.ok(response.status() < 400, `following ${await locator.evaluate((e) => e.outerHTML.slice(0, 120))}: HTTP ${response.status()}`);
  return response;
}
