/**
 * Guard rails before anything is stopped: a bad --to is refused by plan,
 * rollout and schedule add (exit 2) with every app still running under its
 * old pid; rehearse migrates a throwaway copy; plan shows every revision it
 * can render, with its compatibility.
 */
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import Database from "better-sqlite3";
import { Fleet, HEAD_REVISION, OLD_REVISION, dumpDatabase } from "../helpers/fleet.js";
import { collect } from "../helpers/ops.js";

let fleet: Fleet;

before(async () => {
  fleet = new Fleet({
    agents: ["g1", "g2"],
    targets: [
      { id: "g-sqlite", kind: "sqlite", owner: "g1", labels: { env: "guard" }, apps: [{ agent: "g1" }] },
      { id: "g-pg", kind: "postgresql", owner: "g2", labels: { env: "guard" }, apps: [{ agent: "g2" }, { agent: "g1" }] },
    ],
  });
  await fleet.start();
});

after(async () => {
  await fleet?.stop();
});

function appPids(): number[] {
  return ["g-sqlite-app-1", "g-pg-app-1", "g-pg-app-2"].map((id) => Number(readFileSync(join(fleet.dir, "run", `${id}.pid`), "utf8")));
}

test("a bad --to stops no app: rollout, plan and schedule add refuse it with exit 2 before anything happens", async () => {
  const pids = appPids();
  assert.ok(pids.every((p) => p > 0));
  const dbs = await Promise.all(["g-sqlite", "g-pg"].map((id) => dumpDatabase(fleet.urls.get(id)!)));
  for (const to of ["nosuchrev", "b2e1d0c0ffee"]) {
    const r = await fleet.cli(["rollout", "--selector", "env=guard", "--strategy", "maintenance", "--to", to]);
    assert.equal(r.code, 2, `rollout --to ${to}: ${r.stdout}${r.stderr}`);
    assert.match(r.stderr, to === "nosuchrev" ? /nosuchrev is not in the app's migration history/ : /older than the database's revision/);
    assert.match(r.stderr, /before anything was stopped/);
  }
  const plan = await fleet.cli(["plan", "--selector", "env=guard", "--to", "nosuchrev"]);
  assert.equal(plan.code, 2, plan.stdout + plan.stderr);
  assert.match(plan.stderr, /nosuchrev/);
  const sched = await fleet.cli([
    "schedule",
    "add",
    "nightly",
    "--cron",
    "0 3 * * 0",
    "--selector",
    "env=guard",
    "--strategy",
    "maintenance",
    "--to",
    "nosuchrev",
  ]);
  assert.equal(sched.code, 2, sched.stdout + sched.stderr);
  const list = await fleet.cliJson<{ schedules?: { name: string }[] }>(["schedules"]);
  assert.equal(
    (list.doc.schedules ?? []).some((s) => s.name === "nightly"),
    false,
    "the schedule was not stored",
  );
  const rollouts = await fleet.cliJson<{ rollouts?: unknown[] }>(["rollouts"]);
  assert.equal((rollouts.doc.rollouts ?? []).length, 0, "no rollout was recorded");
  assert.deepEqual(appPids(), pids, "every app instance still runs under its old pid");
  assert.deepEqual(await Promise.all(["g-sqlite", "g-pg"].map((id) => dumpDatabase(fleet.urls.get(id)!))), dbs);
});

test("plan shows every revision it can render: the SQLite batch revision is named with its reason, the others keep their SQL and compatibility", async () => {
  const r = await fleet.cliJson<{
    targets: {
      targetId: string;
      revisions: { id: string; rendered?: boolean; sql?: string; notRenderedReason?: string; compatibility: string; compatibilityReason?: string }[];
    }[];
  }>(["plan", "--selector", "env=guard", "--to", "head"]);
  assert.equal(r.code, 0, r.stderr);
  const sqlite = r.doc.targets.find((t) => t.targetId === "g-sqlite")!;
  assert.deepEqual(
    sqlite.revisions.map((x) => x.id),
    ["d4c3b2a1e5f6", "e5f4a3b2c1d0", "f6a5b4c3d2e1", "0a7b8c9d0e1f", "1b8c9d0e1f2a"],
  );
  const batch = sqlite.revisions.find((x) => x.id === "f6a5b4c3d2e1")!;
  assert.notEqual(batch.rendered, true);
  assert.match(batch.notRenderedReason ?? "", /batch operation/);
  assert.equal(batch.compatibility, "unknown");
  for (const x of sqlite.revisions.filter((y) => y.id !== "f6a5b4c3d2e1")) {
    assert.equal(x.rendered, true, x.id);
    assert.match(x.sql ?? "", /alembic_version|CREATE|ALTER/, x.id);
  }
  assert.match(sqlite.revisions.find((x) => x.id === "1b8c9d0e1f2a")!.sql ?? "", /chat_user_updated_idx/, "SQL after the unrenderable revision is shown");
  assert.equal(sqlite.revisions.find((x) => x.id === "e5f4a3b2c1d0")!.compatibility, "additive");
  assert.equal(sqlite.revisions.find((x) => x.id === "0a7b8c9d0e1f")!.compatibility, "breaking");
  const pgT = r.doc.targets.find((t) => t.targetId === "g-pg")!;
  assert.ok(
    pgT.revisions.every((x) => x.rendered === true),
    "PostgreSQL renders all five",
  );
});

test("rehearse migrates a throwaway copy, prints per-revision timings and go, and leaves the target untouched", async () => {
  const before = await dumpDatabase(fleet.urls.get("g-sqlite")!);
  const human = await fleet.cli(["rehearse", "g-sqlite"]);
  assert.equal(human.code, 0, human.stdout + human.stderr);
  assert.match(human.stdout, /go: the rehearsal on a throwaway copy reached 1b8c9d0e1f2a/);
  assert.match(human.stdout, /f6a5b4c3d2e1 → 0a7b8c9d0e1f/);
  const json = await fleet.cliJson<{ status: string; timings: { toRevision: string }[]; details: Record<string, string> }>([
    "rehearse",
    "g-pg",
    "--to",
    HEAD_REVISION,
  ]);
  assert.equal(json.code, 0, json.stderr);
  assert.equal(json.doc.details["verdict"], "go");
  assert.equal(json.doc.timings.length, 5);
  const bad = await fleet.cli(["rehearse", "g-sqlite", "--to", "nosuchrev"]);
  assert.equal(bad.code, 2, bad.stdout + bad.stderr);
  assert.equal(await dumpDatabase(fleet.urls.get("g-sqlite")!), before);
  assert.deepEqual(await fleet.revisionOf("g-sqlite"), [OLD_REVISION]);
});

test("stamp --reason applied-by-hand first checks that every object the revision creates exists", async () => {
  const refused = await fleet.cli(["stamp", "g-sqlite", "d4c3b2a1e5f6", "--reason", "applied-by-hand"]);
  assert.equal(refused.code, 2, refused.stdout + refused.stderr);
  assert.match(refused.stderr + refused.stdout, /does not have: column chat\.pinned, column chat\.meta/);
  assert.deepEqual(await fleet.revisionOf("g-sqlite"), [OLD_REVISION]);
  // Create them by hand, stop the app, and the stamp goes through.
  const db = new Database(fleet.urls.get("g-sqlite")!.slice("sqlite:///".length));
  db.exec("ALTER TABLE chat ADD COLUMN pinned BOOLEAN; ALTER TABLE chat ADD COLUMN meta JSON DEFAULT '{}' NOT NULL;");
  db.close();
  const stop = await collect(fleet.agentClient("g1").stopApps({ targetId: "g-sqlite", operationId: "g-stop" }));
  assert.equal(stop.result.status, "succeeded", stop.result.message);
  const ok = await fleet.cli(["stamp", "g-sqlite", "d4c3b2a1e5f6", "--reason", "applied-by-hand"]);
  assert.equal(ok.code, 0, ok.stdout + ok.stderr);
  assert.deepEqual(await fleet.revisionOf("g-sqlite"), ["d4c3b2a1e5f6"]);
});
