/**
 * The operator page in a real browser: Debian's Chromium driven by
 * playwright-core against a real controller and agents on loopback. Sign-in,
 * fleet, a rollout watched live to its end, a gated wave approved, the audit
 * log filtered and exported, schedules with their next run, a plan, a viewer
 * who sees no controls (and whom the API refuses anyway), and a page left
 * open that writes no audit rows. Screenshots go to test-results/web-page/.
 */
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { existsSync, mkdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { chromium, type Browser, type BrowserContext, type Page } from "playwright-core";
import { Fleet, ROOT } from "../helpers/fleet.js";

// Functions passed to page.evaluate/waitForFunction run in the browser; this file is type-checked without the DOM library.
/* eslint-disable @typescript-eslint/no-explicit-any */
declare const document: any;
declare const sessionStorage: any;

const TOKENS = { admin: "adm-7f3c9a1e5b2d4c6f8a0b", viewer: "vwr-2b4d6f8a0c1e3g5h7j9k" };
const SHOTS = join(ROOT, "test-results", "web-page");
const CHROMIUM = [process.env.FLOTILLA_CHROMIUM, "/usr/lib/chromium/chromium", "/usr/bin/chromium"].find((p) => p && existsSync(p));

let fleet: Fleet;
let browser: Browser;
let liveRolloutId = "";

before(async () => {
  assert.ok(CHROMIUM, "Debian's chromium is installed (scripts/ensure-deps.mjs --need-browser installs it)");
  mkdirSync(SHOTS, { recursive: true });
  fleet = new Fleet({
    agents: ["w1", "w2"],
    noController: true,
    targets: [
      { id: "web-a", kind: "sqlite", owner: "w1", labels: { env: "web" }, apps: [{ agent: "w1" }] },
      {
        id: "web-slow",
        kind: "sqlite",
        owner: "w2",
        labels: { env: "live" },
        seed: { users: 20, chats: 60, msgs: 2 },
        alembicEnv: { FIXTURE_SLEEP_MS: "700", FIXTURE_BATCH: "10" },
        apps: [{ agent: "w2" }],
      },
      { id: "gate-1", kind: "sqlite", owner: "w1", labels: { env: "gate" } },
      { id: "gate-2", kind: "sqlite", owner: "w2", labels: { env: "gate" } },
    ],
  });
  await fleet.start();
  await fleet.startController({
    tokens: [
      { name: "alice", role: "admin", value: TOKENS.admin },
      { name: "victor", role: "viewer", value: TOKENS.viewer },
    ],
  });
  browser = await chromium.launch({ executablePath: CHROMIUM!, args: ["--no-sandbox", "--disable-dev-shm-usage"], headless: true });
});

after(async () => {
  await browser?.close();
  await fleet?.stop();
});

async function newPage(): Promise<{ context: BrowserContext; page: Page }> {
  const context = await browser.newContext({ viewport: { width: 1280, height: 800 }, acceptDownloads: true });
  const page = await context.newPage();
  page.setDefaultTimeout(60_000);
  return { context, page };
}

async function signIn(page: Page, token: string): Promise<void> {
  await page.goto(`${fleet.controllerUrl}/`);
  await page.getByLabel("Token").fill(token);
  await page.getByRole("button", { name: "Sign in" }).click();
  await page.locator("#role").waitFor();
}

async function shot(page: Page, name: string): Promise<void> {
  await page.screenshot({ path: join(SHOTS, `${name}.png`), fullPage: true });
}

/** Every form control on the page has an accessible name (a label or aria-label). */
async function assertLabelled(page: Page): Promise<void> {
  const unlabelled = await page.evaluate(() =>
    [...document.querySelectorAll("input, select, textarea")]
      .filter((el: any) => !el.closest("[hidden]") && el.labels?.length === 0 && !el.getAttribute("aria-label"))
      .map((el: any) => el.outerHTML as string),
  );
  assert.deepEqual(unlabelled, []);
}

async function api<T>(method: string, body: unknown, token = TOKENS.admin): Promise<{ status: number; doc: T }> {
  const res = await fetch(`${fleet.controllerUrl}/v1/${method}`, {
    method: "POST",
    headers: { "content-type": "application/json", authorization: `Bearer ${token}` },
    body: JSON.stringify(body),
  });
  return { status: res.status, doc: (await res.json()) as T };
}

/** The newest audit entry number (QueryAudit is a read: asking does not add a row). */
async function auditTop(): Promise<number> {
  const r = await api<{ entries: { seq: string }[] }>("QueryAudit", { limit: 1 });
  assert.equal(r.status, 200);
  return Number(r.doc.entries.at(-1)?.seq ?? 0);
}

async function confirm(page: Page): Promise<void> {
  await page.locator("#confirm").waitFor({ state: "visible" });
  await page.locator("#confirm-ok").click();
}

test("sign in with a token (a wrong one is refused), see the fleet, sign out", async () => {
  const { context, page } = await newPage();
  await page.goto(`${fleet.controllerUrl}/`);
  await page.getByLabel("Token").fill("not-a-token");
  await page.getByRole("button", { name: "Sign in" }).click();
  await page.locator("#sign-in-error").waitFor({ state: "visible" });
  assert.match(await page.locator("#sign-in-error").innerText(), /not valid/);
  await page.getByLabel("Token").fill(TOKENS.admin);
  await page.getByRole("button", { name: "Sign in" }).click();
  assert.equal(await page.locator("#role").innerText(), "admin");
  assert.equal(await page.evaluate(() => sessionStorage.getItem("flotilla.token")), TOKENS.admin, "the token is kept in session storage");
  await page.locator("#targets table").waitFor();
  const rows = await page.locator("#targets tbody tr[data-target]").evaluateAll((trs) => trs.map((tr) => tr.getAttribute("data-target")));
  assert.deepEqual(rows.sort(), ["gate-1", "gate-2", "web-a", "web-slow"]);
  const webA = page.locator('tr[data-target="web-a"]');
  assert.match(await webA.innerText(), /sqlite/);
  assert.match(await webA.innerText(), /c3d2e1f00d42/, "current revision shown");
  assert.match(await webA.innerText(), /running/, "the app instance and its state");
  assert.match(await page.locator("#agents").innerText(), /w1\s+up/);
  await assertLabelled(page);
  // Filter by selector.
  await page.getByLabel("Selector").fill("env=gate");
  await page.getByRole("button", { name: "Apply" }).click();
  await page.waitForFunction(() => document.querySelectorAll("#targets tbody tr[data-target]").length === 2);
  await shot(page, "01-fleet");
  // Reloading keeps the session (session storage), signing out forgets it.
  await page.reload();
  await page.locator("#role").waitFor();
  await page.getByRole("button", { name: "Sign out" }).click();
  await page.getByLabel("Token").waitFor({ state: "visible" });
  assert.equal(await page.evaluate(() => sessionStorage.getItem("flotilla.token")), null);
  await context.close();
  const signIns = await api<{ entries: { actor: string; outcome: string }[] }>("QueryAudit", { action: "api.SignIn" });
  assert.deepEqual(
    signIns.doc.entries.map((e) => [e.actor, e.outcome]),
    [
      ["unknown", "denied"],
      ["alice", "ok"],
    ],
    "sign-ins (and the refused one) are audited",
  );
  assert.equal(JSON.stringify(signIns.doc).includes(TOKENS.admin), false, "no token in the audit log");
});

test("a rollout started from the page streams its live Alembic lines and finishes", async () => {
  const { context, page } = await newPage();
  await signIn(page, TOKENS.admin);
  await page.goto(`${fleet.controllerUrl}/#/rollouts`);
  await page.locator("#start-selector").fill("env=live");
  await page.getByRole("button", { name: "Start…" }).click();
  await confirm(page);
  await page.waitForURL(/#\/rollouts\/[^/]+$/);
  liveRolloutId = decodeURIComponent(page.url().split("#/rollouts/")[1]!);
  // Lines arrive while the rollout still runs: the stream is live, not a reload at the end.
  await page.waitForFunction(
    () =>
      (document.getElementById("live-lines")?.textContent ?? "").includes("Running upgrade") &&
      /running/.test(document.getElementById("rollout-status")?.textContent ?? ""),
    undefined,
    { timeout: 180_000 },
  );
  await shot(page, "02-rollout-running");
  await page.waitForFunction(() => /succeeded/.test(document.getElementById("rollout-status")?.textContent ?? ""), undefined, { timeout: 300_000 });
  const lines = await page.locator("#live-lines").innerText();
  assert.match(lines, /\[web-slow\]/);
  assert.match(lines, /Running upgrade .*1b8c9d0e1f2a/, "the last revision's line arrived");
  const row = page.locator('#waves tr[data-target="web-slow"]');
  assert.match(await row.innerText(), /migrate\s+succeeded/);
  assert.match(await row.innerText(), /revision [1-5]\/5/, "Alembic progress n/N from the agent's single run reaches the page");
  assert.match(await row.innerText(), /\d+(\.\d)? s|\d+ ms|\d+ min/, "step durations shown");
  assert.match(await page.locator("#rollout-head").innerText(), /alice/, "who started it");
  assert.equal(await page.locator("#live-state").innerText(), "ended: succeeded");
  await shot(page, "03-rollout-finished");
  await context.close();
});

test("approve a gated wave from the page", async () => {
  const { context, page } = await newPage();
  await signIn(page, TOKENS.admin);
  await page.goto(`${fleet.controllerUrl}/#/rollouts`);
  await page.locator("#start-selector").fill("env=gate");
  await page.locator("#start-waves").fill("1,100%");
  await page.locator("#start-gate").fill("manual");
  await page.getByRole("button", { name: "Start…" }).click();
  await confirm(page);
  await page.waitForURL(/#\/rollouts\/[^/]+$/);
  await page.locator("#gate").waitFor({ state: "visible", timeout: 180_000 });
  assert.match(await page.locator("#gate").innerText(), /approval/i);
  const approve = page.locator('[data-action="ApproveRollout"]');
  await approve.waitFor();
  await shot(page, "04-gate-waiting");
  await approve.click();
  await confirm(page);
  await page.waitForFunction(() => /succeeded/.test(document.getElementById("rollout-status")?.textContent ?? ""), undefined, { timeout: 300_000 });
  assert.equal(await page.locator("#gate").count(), 0, "no longer waiting");
  const approvals = await api<{ entries: { actor: string; outcome: string }[] }>("QueryAudit", { action: "api.ApproveRollout" });
  assert.deepEqual(
    approvals.doc.entries.map((e) => [e.actor, e.outcome]),
    [
      ["alice", "intent"],
      ["alice", "ok"],
    ],
  );
  await shot(page, "05-gate-approved");
  await context.close();
});

test("a viewer sees no action buttons, and the API refuses the actions anyway", async () => {
  assert.ok(liveRolloutId, "the live rollout test ran first");
  const { context, page } = await newPage();
  await signIn(page, TOKENS.viewer);
  assert.equal(await page.locator("#role").innerText(), "viewer");
  await page.locator("#targets table").waitFor();
  assert.equal(await page.getByRole("button", { name: /Diagnose/ }).count(), 4, "diagnose is a read: viewers may use it");
  await page.goto(`${fleet.controllerUrl}/#/rollouts`);
  await page.locator("#rollout-list table").waitFor();
  assert.equal(await page.locator("#start-selector").count(), 0, "no start form for a viewer");
  await page.goto(`${fleet.controllerUrl}/#/rollouts/${encodeURIComponent(liveRolloutId)}`);
  await page.locator("#rollout-status").waitFor();
  assert.equal(await page.locator("[data-action]").count(), 0, "no control for a viewer");
  await shot(page, "06-viewer-rollout");
  await context.close();

  // The same page as admin offers a rollback on the finished rollout: the buttons do depend on the role.
  const admin = await newPage();
  await signIn(admin.page, TOKENS.admin);
  await admin.page.goto(`${fleet.controllerUrl}/#/rollouts/${encodeURIComponent(liveRolloutId)}`);
  await admin.page.locator('[data-action="RollbackRollout"]').waitFor();
  await admin.context.close();

  for (const [method, body] of [
    ["AbortRollout", { id: liveRolloutId }],
    ["RollbackRollout", { id: liveRolloutId, yes: true }],
    ["ApproveRollout", { id: liveRolloutId }],
    ["StartRollout", { selector: "env=web", strategy: "maintenance" }],
  ] as const) {
    const r = await api<{ code: string }>(method, body, TOKENS.viewer);
    assert.equal(r.status, 403, `${method} refused for a viewer`);
    assert.equal(r.doc.code, "PERMISSION_DENIED");
  }
  const denied = await api<{ entries: { actor: string }[] }>("QueryAudit", { outcome: "denied", action: "api.RollbackRollout" });
  assert.deepEqual(
    denied.doc.entries.map((e) => e.actor),
    ["victor"],
    "the refused call is audited, naming the token",
  );
  const rollout = await api<{ status: string }>("GetRollout", { id: liveRolloutId });
  assert.equal(rollout.doc.status, "succeeded", "nothing happened to the rollout");
});

test("audit review: filter by action and outcome, page back, export JSON lines (recorded), chain verified", async () => {
  const { context, page } = await newPage();
  await signIn(page, TOKENS.admin);
  await page.goto(`${fleet.controllerUrl}/#/audit`);
  await page.locator("#audit-entries table").waitFor();
  await page.waitForFunction(() => /verified \(\d+ entries\)/.test(document.getElementById("chain")?.textContent ?? ""));
  await assertLabelled(page);
  await page.getByLabel("Action").fill("api.StartRollout");
  await page.getByRole("button", { name: "Apply" }).click();
  await page.waitForFunction(() =>
    [...document.querySelectorAll("#audit-entries tbody tr")].every((tr: any) => tr.children[3]?.textContent === "api.StartRollout"),
  );
  const actions = await page.locator("#audit-entries tbody tr td:nth-child(4)").allInnerTexts();
  assert.ok(actions.length >= 2, "the intent and ok rows of the rollout started from the page");
  assert.equal((await api("StartRollout", { selector: "env=web", strategy: "maintenance" }, TOKENS.viewer)).status, 403);
  await page.getByLabel("Outcome").selectOption("denied");
  await page.getByRole("button", { name: "Apply" }).click();
  await page.waitForFunction(() => {
    const rows = [...document.querySelectorAll("#audit-entries tbody tr")];
    return rows.length >= 1 && rows.every((tr: any) => tr.children[5]?.textContent === "denied" && tr.children[3]?.textContent === "api.StartRollout");
  });
  await shot(page, "07-audit-filtered");
  // Paging: the newest 50 entries, then older ones (refused calls are audited: enough of them make two pages).
  for (let i = 0; i < 55; i++) assert.equal((await api("AbortRollout", { id: liveRolloutId }, TOKENS.viewer)).status, 403);
  await page.getByLabel("Action").fill("");
  await page.getByLabel("Outcome").selectOption("");
  await page.getByRole("button", { name: "Apply" }).click();
  await page.getByRole("button", { name: "Older →" }).click();
  await page.getByRole("button", { name: "← Newer" }).waitFor();
  const firstOlder = Number(await page.locator("#audit-entries tbody tr td:nth-child(1)").first().innerText());
  const top = await auditTop();
  assert.ok(firstOlder <= top - 50, `the older page starts below the newest 50 (${firstOlder} vs ${top})`);
  // Export.
  await page.getByLabel("Action").fill("api.StartRollout");
  const [download] = await Promise.all([page.waitForEvent("download"), page.getByRole("button", { name: "Export JSON lines" }).click()]);
  const text = readFileSync((await download.path())!, "utf8");
  const rows = text
    .trim()
    .split("\n")
    .map((l) => JSON.parse(l) as { action: string; hash: string });
  assert.ok(rows.length >= 2 && rows.every((r) => r.action === "api.StartRollout" && r.hash.length > 0));
  const exports = await api<{ entries: { actor: string }[] }>("QueryAudit", { action: "api.ExportAudit" });
  assert.deepEqual(
    exports.doc.entries.map((e) => e.actor),
    ["alice"],
    "the export is audited",
  );
  await context.close();
});

test("schedules show their next run and time zone", async () => {
  const add = await fleet.cli(["schedule", "add", "nightly-web", "--cron", "30 2 * * *", "--selector", "env=web", "--strategy", "maintenance"], {
    FLOTILLA_TOKEN: TOKENS.admin,
  });
  assert.equal(add.code, 0, add.stderr);
  const { context, page } = await newPage();
  await signIn(page, TOKENS.admin);
  await page.goto(`${fleet.controllerUrl}/#/schedules`);
  const row = page.locator('tr[data-schedule="nightly-web"]');
  await row.waitFor();
  const next = await row.locator(".next-run time").getAttribute("datetime");
  assert.ok(next, "next run shown");
  const at = new Date(next);
  assert.ok(at.getTime() > Date.now() && at.getTime() <= Date.now() + 25 * 3600_000, `next run within a day: ${next}`);
  assert.match(await row.locator(".next-run").innerText(), /^in /m);
  assert.match(await row.locator(".next-run time").innerText(), /UTC|GMT|[A-Z]{3}/, "shown in the schedule's time zone, named");
  assert.doesNotMatch(await row.locator(".next-run time").innerText(), /T\d\d:/, "a readable time, not the raw ISO string");
  assert.notEqual((await row.locator("td").nth(2).innerText()).trim(), "", "time zone shown");
  await shot(page, "08-schedules");
  await context.close();
});

test("plan for a selector shows the steps and the SQL, changing nothing", async () => {
  const { context, page } = await newPage();
  await signIn(page, TOKENS.admin);
  await page.goto(`${fleet.controllerUrl}/#/plan`);
  await page.getByLabel("Selector").fill("env=web");
  await page.getByRole("button", { name: "Plan" }).click();
  const section = page.locator('section[data-target="web-a"]');
  await section.waitFor();
  assert.match(await section.innerText(), /migrate/);
  await section.locator("summary").click();
  assert.match(await section.locator("pre").innerText(), /ALTER TABLE/);
  await shot(page, "09-plan");
  await context.close();
  const t = await api<{ targets: { targetId: string; current: string[] }[] }>("ListTargets", { selector: "env=web" });
  assert.deepEqual(t.doc.targets[0]?.current, ["c3d2e1f00d42"]);
});

test("a page left open for 60 s with no activity adds no audit rows", async () => {
  const { context, page } = await newPage();
  await signIn(page, TOKENS.admin);
  await page.locator("#targets table").waitFor();
  // Session storage is per tab: the second tab signs in too, then watches a rollout.
  const second = await context.newPage();
  await signIn(second, TOKENS.admin);
  await second.goto(`${fleet.controllerUrl}/#/rollouts/${encodeURIComponent(liveRolloutId)}`);
  await second.locator("#rollout-status").waitFor();
  const before = await auditTop();
  await new Promise((r) => setTimeout(r, 60_000));
  assert.equal(await auditTop(), before, "no audit row written while the page sat open");
  assert.equal(await page.locator("#role").innerText(), "admin", "the page is still signed in and showing");
  await shot(page, "10-idle-fleet");
  await context.close();
});
