/**
 * The agent killed (kill -9, with its Alembic child: the host or container
 * died) in the middle of a job rollout's online migration, while the app keeps
 * writing. Real agent and controller processes, the real CLI, real Alembic on
 * real PostgreSQL and SQLite databases.
 *
 * - PostgreSQL (one transaction per revision): the database is left at a
 *   revision on the path, so the rollout goes forward by itself and succeeds;
 *   every row the app wrote before, during and after the kill is still there.
 * - SQLite: pysqlite commits DDL as it runs, so the cut-off revision leaves
 *   its new columns behind without its version row: the database is at no
 *   revision, going forward would collide, and the target ends needs-restore,
 *   saying plainly that a restore loses the app's writes — nothing is restored
 *   and no row is lost.
 *
 * The kill lands inside revision 4 (its backfill sleeps per batch) by
 * construction: the test waits until the database shows revision 4 under way
 * (PostgreSQL: its exclusive lock on chat while revision 3 is committed;
 * SQLite: revision 4's column present while the version is still revision 3).
 */
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { readdirSync, readFileSync } from "node:fs";
import Database from "better-sqlite3";
import pg from "pg";
import { alembic, Fleet, HEAD_REVISION, OLD_REVISION } from "../helpers/fleet.js";

interface RolloutJson {
  id: string;
  status: string;
  message?: string;
  targets: { targetId: string; status: string; message?: string; steps: { name: string; state: string; agentId: string; detail?: string }[] }[];
}

const TERMINAL = new Set(["succeeded", "failed", "halted", "aborted", "rolled-back"]);
const REV2 = "b2e1d0c0ffee";
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
/** Revision 4's backfill: 60 chats in batches of 5, 400 ms each, so it is under way for seconds. */
const SLOW = { FIXTURE_SLEEP_MS: "400", FIXTURE_BATCH: "5" };

let fleet: Fleet;

before(async () => {
  process.env.FLOTILLA_AGENT_RETURN_MS = "60000";
  fleet = new Fleet({
    agents: ["h1"],
    targets: [
      {
        id: "fwd-pg",
        kind: "postgresql",
        owner: "h1",
        labels: { env: "fwd-pg" },
        apps: [{ agent: "h1" }],
        alembicEnv: { ...SLOW, FIXTURE_TXN: "per-migration" },
      },
      {
        id: "fwd-pg2",
        kind: "postgresql",
        owner: "h1",
        labels: { env: "fwd-pg2" },
        apps: [{ agent: "h1" }],
        alembicEnv: { ...SLOW, FIXTURE_TXN: "per-migration" },
      },
      { id: "fwd-pg0", kind: "postgresql", owner: "h1", labels: { env: "fwd-pg0" }, apps: [{ agent: "h1" }], alembicEnv: SLOW },
      { id: "fwd-lite", kind: "sqlite", owner: "h1", labels: { env: "fwd-lite" }, apps: [{ agent: "h1" }], alembicEnv: SLOW },
    ],
  });
  await fleet.start();
  // Start the PostgreSQL target one revision lower, so the kill leaves it at a revision past where it started.
  for (const id of ["fwd-pg", "fwd-pg2"]) {
    const down = await alembic(fleet.urls.get(id)!, ["downgrade", REV2]);
    assert.equal(down.code, 0, down.stderr);
  }
});

after(async () => {
  await fleet?.stop();
});

async function show(id: string): Promise<RolloutJson> {
  const r = await fleet.cliJson<RolloutJson>(["rollout", "show", id]);
  assert.equal(r.code, 0, r.stderr);
  return r.doc;
}

async function untilEnd(id: string): Promise<RolloutJson> {
  let done = await show(id);
  for (let i = 0; !TERMINAL.has(done.status); i++) {
    if (i > 400) assert.fail(`rollout ${id} did not end: ${JSON.stringify(done).slice(0, 2000)}`);
    await sleep(500);
    done = await show(id);
  }
  return done;
}

/** Processes the agent started for operations whose id contains `rolloutId` (Alembic), found by the id the agent puts in their environment. */
function childrenOf(rolloutId: string): number[] {
  const pids: number[] = [];
  for (const name of readdirSync("/proc")) {
    if (!/^\d+$/.test(name)) continue;
    try {
      if (
        readFileSync(`/proc/${name}/environ`, "latin1")
          .split("\0")
          .some((kv) => kv.startsWith("FLOTILLA_OPERATION_ID=") && kv.includes(rolloutId))
      )
        pids.push(Number(name));
    } catch {
      /* gone or not ours */
    }
  }
  return pids;
}

/** kill -9 of the agent and the Alembic it runs (the whole host going down), then the agent starts again. */
async function crashAgent(rolloutId: string): Promise<void> {
  const children = childrenOf(rolloutId);
  assert.ok(children.length > 0, "Alembic is running for the rollout");
  await fleet.killAgent("h1", "SIGKILL");
  for (const pid of children) {
    try {
      process.kill(pid, "SIGKILL");
    } catch {
      /* already gone */
    }
  }
  for (
    let i = 0;
    children.some((pid) => {
      try {
        process.kill(pid, 0);
        return true;
      } catch {
        return false;
      }
    });
    i++
  ) {
    if (i > 200) assert.fail("Alembic did not die");
    await sleep(25);
  }
}

/** What the app writes: users (a table revision 4 does not lock). */
const userRow = (n: number): [string, string, string] => [`app-write-${n}`, `App Write ${n}`, `app-write-${n}@forward.test`];

async function pgWrite(c: pg.Client, from: number, to: number): Promise<void> {
  for (let n = from; n < to; n++) await c.query(`INSERT INTO "user" (id, name, email, role, created_at) VALUES ($1, $2, $3, 'user', 0)`, userRow(n));
}

function liteWrite(file: string, from: number, to: number): void {
  const db = new Database(file);
  db.pragma("busy_timeout = 30000");
  try {
    const insert = db.prepare(`INSERT INTO "user" (id, name, email, role, created_at) VALUES (?, ?, ?, 'user', 0)`);
    for (let n = from; n < to; n++) insert.run(...userRow(n));
  } finally {
    db.close();
  }
}

async function appRowsOf(targetId: string): Promise<string[]> {
  const url = fleet.urls.get(targetId)!;
  if (url.startsWith("sqlite:///")) {
    const db = new Database(url.slice("sqlite:///".length), { readonly: true });
    try {
      return (db.prepare(`SELECT id FROM "user" WHERE id LIKE 'app-write-%' ORDER BY id`).all() as { id: string }[]).map((r) => r.id);
    } finally {
      db.close();
    }
  }
  const c = new pg.Client({ connectionString: url });
  await c.connect();
  try {
    return (await c.query<{ id: string }>(`SELECT id FROM "user" WHERE id LIKE 'app-write-%' ORDER BY id`)).rows.map((r) => r.id);
  } finally {
    await c.end();
  }
}

/**
 * Waits until revision 3 is committed and revision 4 holds chat exclusively, run
 * by an Alembic whose operation id contains `op`: the kill then lands inside revision 4.
 */
async function inRevision4(watch: pg.Client, rolloutId: string, op: string): Promise<void> {
  for (let i = 0; ; i++) {
    const r = await watch.query(`SELECT (SELECT string_agg(version_num, ',') FROM alembic_version) AS v,
      EXISTS (SELECT 1 FROM pg_locks l JOIN pg_class c ON c.oid = l.relation WHERE c.relname = 'chat' AND l.mode = 'AccessExclusiveLock' AND l.granted) AS busy`);
    if (r.rows[0].v === OLD_REVISION && r.rows[0].busy === true && childrenOf(op).length > 0) return;
    if (i > 1200) assert.fail(`revision 4 never ran: ${JSON.stringify(await show(rolloutId)).slice(0, 2000)}`);
    await sleep(50);
  }
}

const expectedRows = (n: number): string[] => Array.from({ length: n }, (_, i) => `app-write-${i}`).sort();

async function startJobRollout(env: string): Promise<string> {
  const started = await fleet.cliJson<RolloutJson>(["rollout", "--selector", `env=${env}`, "--strategy", "job", "--allow-breaking"]);
  assert.equal(started.code, 0, started.stderr);
  return started.doc.id;
}

test("PostgreSQL: killed in revision 4 of an online migration, the rollout goes forward by itself; the app's rows are all kept", {
  timeout: 300_000,
}, async () => {
  const url = fleet.urls.get("fwd-pg")!;
  const app = new pg.Client({ connectionString: url, application_name: "test-app-writer" });
  await app.connect();
  const watch = new pg.Client({ connectionString: url });
  await watch.connect();
  try {
    await pgWrite(app, 0, 5); // before the rollout (and its backup)
    const id = await startJobRollout("fwd-pg");
    await inRevision4(watch, id, id);
    await pgWrite(app, 5, 10); // during the migration
    await crashAgent(id);
    assert.deepEqual(
      await fleet.revisionOf("fwd-pg"),
      [OLD_REVISION],
      "the kill left the database at revision 3: past where it started, short of the wanted one",
    );
    await pgWrite(app, 10, 15); // while the agent is down
    await fleet.startAgent("h1");
    const done = await untilEnd(id);

    const t = done.targets[0]!;
    assert.equal(done.status, "succeeded", `${done.message}: ${t.message} ${JSON.stringify(t.steps)}`);
    assert.equal(t.status, "succeeded");
    assert.ok(
      t.steps.every((s) => s.state === "succeeded"),
      JSON.stringify(t.steps),
    );
    const migrate = t.steps.filter((s) => s.name === "migrate");
    assert.equal(migrate.length, 1, "re-run in place, no extra step");
    assert.match(
      migrate[0]!.detail ?? "",
      /going forward after interrupted .*migrated forward c3d2e1f00d42 → 1b8c9d0e1f2a .*\(run 2: the agent was interrupted in the earlier run\)$/,
    );
    assert.deepEqual(await fleet.revisionOf("fwd-pg"), [HEAD_REVISION]);
    assert.equal(t.steps.find((s) => s.name === "verify")?.state, "succeeded");

    await pgWrite(app, 15, 20); // after: the app still writes
    assert.deepEqual(await appRowsOf("fwd-pg"), expectedRows(20), "no row the app wrote was lost");

    const agent = fleet.agentClient("h1");
    const health = await agent.checkHealth({ targetId: "fwd-pg" }, { timeoutMs: 30_000 });
    assert.ok(health.healthy && health.apps.length === 1 && health.apps.every((x) => x.state === "running"), JSON.stringify(health.apps));
    const status = await agent.getStatus({ targetId: "fwd-pg" }, { timeoutMs: 30_000 });
    assert.equal(status.busyOperationId, "");
    assert.deepEqual(status.interruptedOperationIds, []);
    const ops = (await agent.listOperations({ targetId: "fwd-pg", limit: 200 }, { timeoutMs: 30_000 })).operations.filter((o) => o.id.includes(id));
    assert.ok(
      ops.some((o) => o.kind === "migrate" && o.state === "recovered"),
      JSON.stringify(ops.map((o) => [o.id, o.kind, o.state])),
    );
    assert.ok(
      ops.some((o) => o.kind === "recover" && o.state === "succeeded"),
      "the re-run went forward",
    );
    assert.equal(ops.filter((o) => o.kind === "restore" || (o.kind === "recover" && /restored/.test(o.message))).length, 0, "nothing was restored");

    // Audited: the rollout's finish, and the forward run as a step of it.
    const audit = await fleet.cliJson<{ entries: { action: string; target: string; args: string; outcome: string }[] }>(["audit", "--limit", "1000"]);
    assert.equal(audit.code, 0, audit.stderr);
    const finishes = audit.doc.entries.filter((e) => e.action === "rollout.finish" && e.target === id);
    assert.equal(finishes.length, 1, JSON.stringify(finishes));
    assert.equal(finishes[0]!.outcome, "ok");
    const forward = ops.find((o) => o.kind === "recover" && o.state === "succeeded")!;
    assert.ok(
      audit.doc.entries.some((e) => e.args.includes(forward.id)),
      `the forward run ${forward.id} is named in the audit log`,
    );
  } finally {
    await app.end();
    await watch.end();
  }
});

test("PostgreSQL: killed again while the re-run goes forward, the next run takes over and the rollout still succeeds", { timeout: 300_000 }, async () => {
  const url = fleet.urls.get("fwd-pg2")!;
  const app = new pg.Client({ connectionString: url, application_name: "test-app-writer" });
  await app.connect();
  const watch = new pg.Client({ connectionString: url });
  await watch.connect();
  try {
    await pgWrite(app, 0, 5);
    const id = await startJobRollout("fwd-pg2");
    await inRevision4(watch, id, id);
    await crashAgent(id);
    await pgWrite(app, 5, 10);
    await fleet.startAgent("h1");
    // The re-run (run 2) goes forward from revision 3 and is inside revision 4 again: kill it too.
    await inRevision4(watch, id, ".migrate.h1.a2");
    await pgWrite(app, 10, 15);
    await crashAgent(id);
    assert.deepEqual(await fleet.revisionOf("fwd-pg2"), [OLD_REVISION]);
    await fleet.startAgent("h1");
    const done = await untilEnd(id);

    const t = done.targets[0]!;
    assert.equal(done.status, "succeeded", `${done.message}: ${t.message} ${JSON.stringify(t.steps)}`);
    const migrate = t.steps.find((s) => s.name === "migrate")!;
    assert.match(migrate.detail ?? "", /migrated forward c3d2e1f00d42 → 1b8c9d0e1f2a .*\(run 3: the agent was interrupted in the earlier runs\)$/);
    assert.deepEqual(await fleet.revisionOf("fwd-pg2"), [HEAD_REVISION]);
    assert.deepEqual(await appRowsOf("fwd-pg2"), expectedRows(15), "no row the app wrote was lost");
    const agent = fleet.agentClient("h1");
    const status = await agent.getStatus({ targetId: "fwd-pg2" }, { timeoutMs: 30_000 });
    assert.deepEqual(status.interruptedOperationIds, []);
    const ops = (await agent.listOperations({ targetId: "fwd-pg2", limit: 200 }, { timeoutMs: 30_000 })).operations.filter((o) => o.id.includes(id));
    assert.ok(
      ops.some((o) => o.kind === "recover" && o.state === "recovered" && /taken over/.test(o.message)),
      JSON.stringify(ops.map((o) => [o.id, o.kind, o.state])),
    );
  } finally {
    await app.end();
    await watch.end();
  }
});

test("PostgreSQL, one transaction for the whole run: the kill rolls back to where it started (schema as the backup's), and the rollout goes forward from there", {
  timeout: 300_000,
}, async () => {
  const url = fleet.urls.get("fwd-pg0")!;
  const app = new pg.Client({ connectionString: url, application_name: "test-app-writer" });
  await app.connect();
  const watch = new pg.Client({ connectionString: url });
  await watch.connect();
  try {
    await pgWrite(app, 0, 5);
    const id = await startJobRollout("fwd-pg0");
    await inRevision4(watch, id, ".migrate.h1");
    await pgWrite(app, 5, 10);
    await crashAgent(id);
    assert.deepEqual(await fleet.revisionOf("fwd-pg0"), [OLD_REVISION], "rolled back to the revision it started from");
    await fleet.startAgent("h1");
    const done = await untilEnd(id);
    const t = done.targets[0]!;
    assert.equal(done.status, "succeeded", `${done.message}: ${t.message} ${JSON.stringify(t.steps)}`);
    assert.match(t.steps.find((s) => s.name === "migrate")!.detail ?? "", /migrated forward c3d2e1f00d42 → 1b8c9d0e1f2a /);
    assert.deepEqual(await fleet.revisionOf("fwd-pg0"), [HEAD_REVISION]);
    assert.deepEqual(await appRowsOf("fwd-pg0"), expectedRows(10), "no row the app wrote was lost");
  } finally {
    await app.end();
    await watch.end();
  }
});

test("SQLite: killed in revision 4, whose columns pysqlite had already committed: needs-restore naming the data loss; nothing restored, no row lost", {
  timeout: 300_000,
}, async () => {
  const file = fleet.urls.get("fwd-lite")!.slice("sqlite:///".length);
  liteWrite(file, 0, 5);
  const id = await startJobRollout("fwd-lite");
  for (let i = 0; ; i++) {
    const db = new Database(file, { readonly: true });
    let inRev4 = false;
    try {
      db.pragma("busy_timeout = 5000");
      const v = (db.prepare("SELECT version_num FROM alembic_version").all() as { version_num: string }[]).map((r) => r.version_num).join(",");
      const cols = (db.prepare("PRAGMA table_info(chat)").all() as { name: string }[]).map((c) => c.name);
      inRev4 = v === OLD_REVISION && cols.includes("pinned");
    } finally {
      db.close();
    }
    if (inRev4) break;
    if (i > 1200) assert.fail(`revision 4 never ran: ${JSON.stringify(await show(id)).slice(0, 2000)}`);
    await sleep(50);
  }
  await crashAgent(id);
  liteWrite(file, 5, 10); // while the agent is down (the app keeps running)
  await fleet.startAgent("h1");
  const done = await untilEnd(id);

  const t = done.targets[0]!;
  assert.equal(done.status, "failed");
  assert.equal(t.status, "needs-restore", `${t.message} ${JSON.stringify(t.steps)}`);
  assert.match(t.message ?? "", /restoring loses every row it wrote since backup/);
  const migrate = t.steps.find((s) => s.name === "migrate")!;
  assert.match(migrate.detail ?? "", /LOSES every row the app wrote to fwd-lite since that backup was taken/);
  assert.deepEqual(await fleet.revisionOf("fwd-lite"), [OLD_REVISION], "nothing ran forward");
  assert.deepEqual(await appRowsOf("fwd-lite"), expectedRows(10), "nothing was restored: no row the app wrote was lost");
  const agent = fleet.agentClient("h1");
  const status = await agent.getStatus({ targetId: "fwd-lite" }, { timeoutMs: 30_000 });
  assert.equal(status.interruptedOperationIds.length, 1, "the interrupted migrate waits for a person, holding the target");
  const health = await agent.checkHealth({ targetId: "fwd-lite" }, { timeoutMs: 30_000 });
  assert.ok(
    health.apps.every((x) => x.state === "running"),
    "the app kept running",
  );
});
