/**
 * The controller on its PostgreSQL store: a rollout, a restart that finds the
 * rollout and the audit chain in PostgreSQL, and audit verification.
 */
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import pg from "pg";
import { spawn, type ChildProcess } from "node:child_process";
import { existsSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { stringify } from "yaml";
import { Fleet, HEAD_REVISION, ROOT, run } from "../helpers/fleet.js";
import { createTestDatabase, type TestDatabase } from "../helpers/pg.js";

let fleet: Fleet;
let storeDb: TestDatabase;

before(async () => {
  storeDb = await createTestDatabase("ctl_store");
  fleet = new Fleet({
    agents: ["s1"],
    noController: true,
    targets: [{ id: "pgs-1", kind: "sqlite", owner: "s1", labels: { env: "pgstore" }, apps: [{ agent: "s1" }] }],
  });
  await fleet.start();
  await fleet.startController({ store: storeDb.url });
});

let standby: ChildProcess | undefined;
let standbyUrl = "";

after(async () => {
  standby?.kill("SIGKILL");
  await fleet?.stop();
  await storeDb?.drop();
});

test("a rollout runs with the PostgreSQL store, survives a controller restart, and the audit chain verifies", async () => {
  const r = await fleet.cliJson<{ id: string; status: string }>(["rollout", "--selector", "env=pgstore", "--strategy", "maintenance", "--wait"]);
  assert.equal(r.code, 0, r.stderr);
  assert.equal(r.doc.status, "succeeded");
  assert.deepEqual(await fleet.revisionOf("pgs-1"), [HEAD_REVISION]);
  const c = new pg.Client({ connectionString: storeDb.url });
  await c.connect();
  try {
    const rows = await c.query<{ n: string }>("SELECT count(*) AS n FROM audit_log WHERE action = 'step.migrate'");
    assert.equal(Number(rows.rows[0]!.n), 2, "intent and result rows of the migrate step are in PostgreSQL");
  } finally {
    await c.end();
  }
  await fleet.killController("SIGTERM");
  await fleet.startController({ store: storeDb.url });
  const list = await fleet.cliJson<{ rollouts: { id: string; status: string }[] }>(["rollouts"]);
  assert.ok(list.doc.rollouts.some((x) => x.id === r.doc.id && x.status === "succeeded"));
  const v = await fleet.cli(["audit", "verify"]);
  assert.equal(v.code, 0, v.stdout + v.stderr);
});

test("a second controller on the same store stands by (reads only) and takes over when the leader dies", async () => {
  const dir = join(fleet.dir, "standby");
  mkdirSync(dir, { recursive: true });
  const cfg = join(dir, "controller.yaml");
  writeFileSync(
    cfg,
    stringify({
      listen: { grpc: "127.0.0.1:0", http: "127.0.0.1:0" },
      dataDir: dir,
      store: storeDb.url,
      auditKeyFile: join(fleet.dir, "controller", "audit.key"),
      agents: [...fleet.agents.values()].map((a) => ({ id: a.id, address: `127.0.0.1:${a.port}` })),
    }),
  );
  standby = spawn(process.execPath, [join(ROOT, "bin/flotilla-controller.mjs"), "--config", cfg], {
    stdio: "ignore",
    env: { ...process.env, FLOTILLA_PORT_FILE: join(dir, "port") },
  });
  const deadline = Date.now() + 60_000;
  while (!existsSync(join(dir, "port")) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 100));
  const url = `http://127.0.0.1:${(JSON.parse(readFileSync(join(dir, "port"), "utf8")) as { http: number }).http}`;
  standbyUrl = url;
  const cli = (args: string[]) => run([process.execPath, join(ROOT, "bin/flotilla.mjs"), ...args], { env: { FLOTILLA_CONTROLLER: url } });
  assert.equal((await fetch(`${url}/readyz`)).status, 503, "a standby is not ready: load balancers send calls to the leader");
  assert.equal((await fetch(`${url}/healthz`)).status, 200, "but it is alive");
  const read = await cli(["rollouts"]);
  assert.equal(read.code, 0, read.stderr);
  const refused = await cli(["rollout", "--selector", "env=pgstore", "--strategy", "maintenance"]);
  assert.equal(refused.code, 2);
  assert.match(refused.stderr, /standing by/);
  await fleet.killController("SIGKILL");
  let taken = false;
  const until = Date.now() + 60_000;
  while (!taken && Date.now() < until) {
    const r = await cli(["rollout", "--selector", "env=pgstore", "--strategy", "maintenance", "--wait"]);
    taken = r.code === 0;
    if (!taken) {
      assert.match(r.stderr, /standing by/);
      await new Promise((res) => setTimeout(res, 500));
    }
  }
  assert.ok(taken, "the standby became the leader and ran a rollout");
  assert.equal((await fetch(`${url}/readyz`)).status, 200);
  const v = await cli(["audit", "verify"]);
  assert.equal(v.code, 0, v.stdout + v.stderr);
});

test("a schedule fires on the leader at its cron time and starts a rollout, once per slot", async () => {
  assert.ok(standbyUrl, "runs after the takeover test: the former standby leads now");
  const cli = (args: string[]) => run([process.execPath, join(ROOT, "bin/flotilla.mjs"), ...args], { env: { FLOTILLA_CONTROLLER: standbyUrl } });
  const add = await cli([
    "schedule",
    "add",
    "every-minute",
    "--cron",
    "* * * * *",
    "--selector",
    "env=pgstore",
    "--strategy",
    "maintenance",
    "--window",
    "30m",
  ]);
  assert.equal(add.code, 0, add.stderr);
  let fired: { name: string; lastRun: string; lastResult: string } | undefined;
  const until = Date.now() + 90_000;
  while (!fired && Date.now() < until) {
    const r = await cli(["schedules", "--json"]);
    const doc = JSON.parse(r.stdout) as { schedules: { name: string; lastRun: string; lastResult: string }[] };
    fired = doc.schedules.find((x) => x.name === "every-minute" && x.lastRun !== "");
    if (!fired) await new Promise((res) => setTimeout(res, 1000));
  }
  assert.ok(fired, "the schedule fired within a minute and a half");
  assert.match(fired.lastResult, /^started r-/);
  assert.equal((await cli(["schedule", "rm", "every-minute"])).code, 0);
  const list = JSON.parse((await cli(["rollouts", "--json"])).stdout) as { rollouts: { spec: { schedule: string }; actor: string }[] };
  const scheduled = list.rollouts.filter((x) => x.spec.schedule === "every-minute");
  assert.ok(scheduled.length >= 1 && scheduled.length <= 2, `one rollout per fired slot (${scheduled.length})`);
  assert.ok(scheduled.every((x) => x.actor === "schedule:every-minute"));
});
