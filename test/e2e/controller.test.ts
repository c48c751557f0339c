/**
 * The controller end to end: three real agent processes, the real controller
 * process and the real CLI on loopback; SQLite targets and a PostgreSQL target
 * shared by app instances on two agents.
 */
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import Database from "better-sqlite3";
import { CANARY_PASSWORD, CANARY_SECRET, Fleet, HEAD_REVISION, OLD_REVISION, dumpDatabase } from "../helpers/fleet.js";

interface RolloutJson {
  id: string;
  status: string;
  message?: string;
  targets: { targetId: string; status: string; wave?: number; steps: { name: string; state: string; agentId: string; detail?: string }[] }[];
}

let fleet: Fleet;

before(async () => {
  fleet = new Fleet({
    agents: ["h1", "h2", "h3"],
    targets: [
      { id: "prod-a", kind: "sqlite", owner: "h1", labels: { env: "prod", region: "eu" }, apps: [{ agent: "h1" }] },
      { id: "prod-b", kind: "sqlite", owner: "h2", labels: { env: "prod", region: "us" }, apps: [{ agent: "h2" }] },
      { id: "prod-pg", kind: "postgresql", owner: "h3", labels: { env: "prod", region: "eu" }, apps: [{ agent: "h3" }, { agent: "h1" }] },
      { id: "wave-1", kind: "sqlite", owner: "h1", labels: { env: "waves" } },
      { id: "wave-2", kind: "sqlite", owner: "h2", labels: { env: "waves" }, failAt: "0a7b8c9d0e1f", apps: [{ agent: "h2" }] },
      { id: "wave-3", kind: "sqlite", owner: "h3", labels: { env: "waves" } },
      { id: "job-1", kind: "sqlite", owner: "h3", labels: { env: "job" }, apps: [{ agent: "h3" }, { agent: "h2" }] },
      {
        id: "bg-1",
        kind: "sqlite",
        owner: "h1",
        labels: { env: "bg" },
        blueGreen: true,
        apps: [
          { agent: "h1", color: "blue" },
          { agent: "h1", color: "green" },
        ],
      },
      {
        id: "ab1-slow",
        kind: "sqlite",
        owner: "h1",
        labels: { env: "abort" },
        seed: { users: 20, chats: 60, msgs: 2 },
        alembicEnv: { FIXTURE_SLEEP_MS: "1000", FIXTURE_BATCH: "10" },
        apps: [{ agent: "h1" }],
      },
      { id: "ab2", kind: "sqlite", owner: "h3", labels: { env: "abort" } },
      {
        id: "slow-1",
        kind: "sqlite",
        owner: "h2",
        labels: { env: "slow" },
        seed: { users: 20, chats: 60, msgs: 2 },
        alembicEnv: { FIXTURE_SLEEP_MS: "1000", FIXTURE_BATCH: "10" },
        apps: [{ agent: "h2" }],
      },
    ],
  });
  await fleet.start();
});

after(async () => {
  await fleet?.stop();
});

async function waitForRollout(id: string, done: (r: RolloutJson) => boolean, timeoutMs = 300_000): Promise<RolloutJson> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const r = await fleet.cliJson<RolloutJson>(["rollout", "show", id]);
    if (r.code === 0 && done(r.doc)) return r.doc;
    if (Date.now() > deadline) throw new Error(`rollout ${id} did not reach the expected state: ${JSON.stringify(r.doc).slice(0, 2000)}`);
    await new Promise((res) => setTimeout(res, 500));
  }
}

test("targets: the shared PostgreSQL database is one target with app instances on two agents", async () => {
  const r = await fleet.cliJson<{
    targets: { targetId: string; agentId: string; current: string[]; pending: unknown[]; apps: { id: string; state: string }[] }[];
    agents: { id: string; state: string }[];
  }>(["targets", "--selector", "env=prod"]);
  assert.equal(r.code, 0, r.stderr);
  assert.deepEqual(r.doc.targets.map((t) => t.targetId).sort(), ["prod-a", "prod-b", "prod-pg"]);
  const pgT = r.doc.targets.find((t) => t.targetId === "prod-pg")!;
  assert.equal(pgT.agentId, "h3");
  assert.equal(pgT.apps.length, 2);
  assert.deepEqual(pgT.current, [OLD_REVISION]);
  assert.equal(pgT.pending.length, 5);
  assert.ok(r.doc.agents.every((a) => a.state === "up"));
  const human = await fleet.cli(["targets"]);
  assert.equal(human.code, 0);
  assert.match(human.stdout, /prod-pg/);
  assert.match(human.stdout, /wave-2/);
});

test("plan is a dry run with steps and SQL per target and changes nothing", async () => {
  const before = await dumpDatabase(fleet.urls.get("prod-a")!);
  const r = await fleet.cliJson<{ targets: { targetId: string; wave: number; steps: { name: string }[]; sql: string }[]; waveCount: number }>([
    "plan",
    "--selector",
    "env=prod",
    "--strategy",
    "maintenance",
    "--waves",
    "1,100%",
  ]);
  assert.equal(r.code, 0, r.stderr);
  assert.equal(r.doc.waveCount, 2);
  const a = r.doc.targets.find((t) => t.targetId === "prod-a")!;
  assert.equal(a.wave, 0);
  assert.deepEqual(
    a.steps.map((s) => s.name),
    ["precheck", "stop", "backup", "migrate", "verify", "start", "health"],
  );
  assert.match(a.sql, /ALTER TABLE chat ADD COLUMN pinned/);
  const pgPlan = r.doc.targets.find((t) => t.targetId === "prod-pg")!;
  assert.equal(pgPlan.steps.filter((s) => s.name === "stop").length, 2, "both app hosts are stopped");
  assert.equal(await dumpDatabase(fleet.urls.get("prod-a")!), before);
  const job = await fleet.cliJson<{ refused: boolean; warnings: string[]; targets: { allowedStrategies: string[] }[] }>([
    "plan",
    "--selector",
    "env=job",
    "--strategy",
    "job",
  ]);
  assert.equal(job.doc.refused, true, "the compatibility gate refuses job over revisions not known to be additive");
  assert.ok(
    job.doc.warnings.some((w) => /not every pending revision is additive/.test(w)),
    JSON.stringify(job.doc.warnings),
  );
  assert.deepEqual(job.doc.targets[0]!.allowedStrategies, ["maintenance"]);
});

test("maintenance rollout in waves with a canary migrates every target and starts every app again", async () => {
  const r = await fleet.cliJson<RolloutJson>(["rollout", "--selector", "env=prod", "--strategy", "maintenance", "--waves", "1,100%", "--wait"]);
  assert.equal(r.code, 0, `${r.stderr}\n${JSON.stringify(r.doc).slice(0, 3000)}`);
  assert.equal(r.doc.status, "succeeded");
  for (const id of ["prod-a", "prod-b", "prod-pg"]) assert.deepEqual(await fleet.revisionOf(id), [HEAD_REVISION], id);
  assert.equal(r.doc.targets.find((t) => t.targetId === "prod-a")!.wave, 0);
  const pgT = r.doc.targets.find((t) => t.targetId === "prod-pg")!;
  assert.deepEqual(
    pgT.steps
      .filter((s) => s.name === "stop")
      .map((s) => s.agentId)
      .sort(),
    ["h1", "h3"],
  );
  assert.ok(pgT.steps.every((s) => s.state === "succeeded"));
  const t = await fleet.cliJson<{ targets: { targetId: string; apps: { state: string }[]; pending: unknown[] }[] }>(["targets", "--selector", "env=prod"]);
  for (const x of t.doc.targets) {
    assert.equal(x.pending.length, 0);
    assert.ok(
      x.apps.every((a) => a.state === "running"),
      `${x.targetId} apps running`,
    );
  }
});

test("a migration failing in the second wave is restored exactly and the rollout halts before the next wave", async () => {
  const before2 = await dumpDatabase(fleet.urls.get("wave-2")!);
  const before3 = await dumpDatabase(fleet.urls.get("wave-3")!);
  const r = await fleet.cliJson<RolloutJson>(["rollout", "--selector", "env=waves", "--strategy", "maintenance", "--waves", "1,2,100%", "--wait"]);
  assert.equal(r.code, 1);
  assert.equal(r.doc.status, "halted");
  const by = new Map(r.doc.targets.map((t) => [t.targetId, t]));
  assert.equal(by.get("wave-1")!.status, "succeeded");
  assert.equal(by.get("wave-2")!.status, "restored");
  assert.equal(by.get("wave-3")!.status, "skipped");
  assert.deepEqual(await fleet.revisionOf("wave-1"), [HEAD_REVISION]);
  assert.equal(await dumpDatabase(fleet.urls.get("wave-2")!), before2, "wave-2 is exactly as before");
  assert.equal(await dumpDatabase(fleet.urls.get("wave-3")!), before3, "wave-3 was never touched");
  const w2 = by.get("wave-2")!;
  assert.ok(
    w2.steps.some((s) => s.name === "start" && s.state === "succeeded"),
    "the stopped app was started again on the restored database",
  );
  const human = await fleet.cli(["rollout", "show", r.doc.id]);
  assert.match(human.stdout, /halted/);
});

test("job strategy: backup, migrate while running, rolling restart; rollback restores the pre-migration backup exactly", async () => {
  const before = await dumpDatabase(fleet.urls.get("job-1")!);
  const r = await fleet.cliJson<RolloutJson>(["rollout", "--selector", "env=job", "--strategy", "job", "--allow-breaking", "--wait"]);
  assert.equal(r.code, 0, JSON.stringify(r.doc).slice(0, 2000));
  const t = r.doc.targets[0]!;
  assert.deepEqual(
    t.steps.map((s) => s.name),
    ["precheck", "backup", "migrate", "verify", "restart", "restart", "health", "health"],
  );
  assert.deepEqual(await fleet.revisionOf("job-1"), [HEAD_REVISION]);
  const rb = await fleet.cliJson<RolloutJson>(["rollout", "rollback", r.doc.id, "--yes"]);
  assert.equal(rb.code, 0, rb.stderr);
  const done = await waitForRollout(r.doc.id, (d) => d.status !== "running");
  assert.equal(done.status, "rolled-back", JSON.stringify(done).slice(0, 2000));
  assert.equal(await dumpDatabase(fleet.urls.get("job-1")!), before, "job-1 is exactly as before the rollout");
  const h = await fleet.agentClient("h3").checkHealth({ targetId: "job-1" });
  assert.ok(h.healthy, "apps running again after the rollback");
});

test("abort stops before the next step: the running target finishes safely, later waves never start", async () => {
  const before2 = await dumpDatabase(fleet.urls.get("ab2")!);
  const start = await fleet.cliJson<RolloutJson>(["rollout", "--selector", "env=abort", "--strategy", "maintenance", "--waves", "1,100%"]);
  assert.equal(start.code, 0, start.stderr);
  await waitForRollout(start.doc.id, (d) => d.targets.some((t) => t.steps.some((s) => s.name === "migrate" && s.state === "running")));
  const ab = await fleet.cli(["rollout", "abort", start.doc.id]);
  assert.equal(ab.code, 0, ab.stderr);
  const done = await waitForRollout(start.doc.id, (d) => !["running", "pending"].includes(d.status));
  assert.equal(done.status, "aborted");
  const by = new Map(done.targets.map((t) => [t.targetId, t]));
  assert.equal(by.get("ab2")!.status, "skipped", "the second wave never started");
  assert.ok(by.get("ab2")!.steps.every((s) => s.state === "skipped"));
  assert.ok(["aborted", "skipped"].includes(by.get("ab1-slow")!.status));
  assert.equal(await dumpDatabase(fleet.urls.get("ab2")!), before2);
  const s1 = by.get("ab1-slow")!;
  const rev = await fleet.revisionOf("ab1-slow");
  assert.ok(rev[0] === HEAD_REVISION || rev[0] === OLD_REVISION, `slow-2 is at the old or the new revision, never between: ${rev.join(",")}`);
  assert.ok(
    s1.steps.some((s) => s.name === "start" && s.state === "succeeded"),
    "its app was started again",
  );
  const h = await fleet.agentClient("h1").checkHealth({ targetId: "ab1-slow" });
  assert.ok(h.healthy);
});

test("blue-green: clone, migrate green, start green, switch; blue kept; rollback switches back and stops green", async () => {
  const blueBefore = await dumpDatabase(fleet.urls.get("bg-1")!);
  const r = await fleet.cliJson<RolloutJson>(["rollout", "--selector", "env=bg", "--strategy", "blue-green", "--allow-breaking", "--wait"]);
  assert.equal(r.code, 0, JSON.stringify(r.doc).slice(0, 3000));
  assert.equal(readFileSync(fleet.switchFiles.get("bg-1")!, "utf8"), "green");
  assert.deepEqual(await fleet.revisionOf("bg-1", true), [HEAD_REVISION]);
  assert.equal(await dumpDatabase(fleet.urls.get("bg-1")!), blueBefore, "blue is kept untouched");
  const rb = await fleet.cliJson<RolloutJson>(["rollout", "rollback", r.doc.id, "--yes"]);
  assert.equal(rb.code, 0, rb.stderr);
  const done = await waitForRollout(r.doc.id, (d) => d.status !== "running");
  assert.equal(done.status, "rolled-back", JSON.stringify(done).slice(0, 2000));
  assert.equal(readFileSync(fleet.switchFiles.get("bg-1")!, "utf8"), "blue");
  const h = await fleet.agentClient("h1").checkHealth({ targetId: "bg-1", color: "green" });
  assert.ok(
    h.apps.every((a) => a.state === "stopped"),
    "green instances stopped after rollback",
  );
});

test("a second rollout on a busy target is refused naming the first; the controller killed mid-rollout resumes consistently", async () => {
  const start = await fleet.cliJson<RolloutJson>(["rollout", "--selector", "env=slow", "--strategy", "maintenance"]);
  assert.equal(start.code, 0, start.stderr);
  const second = await fleet.cli(["rollout", "--selector", "env=slow", "--strategy", "maintenance"]);
  assert.equal(second.code, 2);
  assert.match(second.stderr, new RegExp(start.doc.id));
  // Wait until the migration is running on the agent, then kill the controller.
  await waitForRollout(start.doc.id, (d) => d.targets[0]!.steps.some((s) => s.name === "migrate" && s.state === "running"));
  await new Promise((res) => setTimeout(res, 1500));
  await fleet.killController("SIGKILL");
  await fleet.startController();
  const done = await waitForRollout(start.doc.id, (d) => !["running", "pending"].includes(d.status));
  const t = done.targets[0]!;
  const rev = await fleet.revisionOf("slow-1");
  assert.ok(done.status === "succeeded" ? rev[0] === HEAD_REVISION : rev[0] === OLD_REVISION, `${done.status} with revision ${rev.join(",")}`);
  assert.equal(done.status, "succeeded", JSON.stringify(done).slice(0, 3000));
  assert.equal(t.steps.filter((s) => s.name === "migrate").length, 1, "the migration was not re-run");
  const h = await fleet.agentClient("h2").checkHealth({ targetId: "slow-1" });
  assert.ok(h.healthy, "the app is running again");
  const ops = await fleet.agentClient("h2").listOperations({ targetId: "slow-1", limit: 50 });
  assert.equal(ops.operations.filter((o) => o.kind === "migrate").length, 1, "the agent ran exactly one migrate");
});

test("CLI target verbs: diagnose, backup, backups, restore (needs --yes), downgrade and stamp refusals", async () => {
  const d = await fleet.cliJson<{ findings: { code: string; severity: string }[]; problems: boolean }>(["diagnose", "prod-a"]);
  assert.ok(
    d.doc.findings.some((f) => f.code === "app-running"),
    JSON.stringify(d.doc.findings.map((f) => f.code)),
  );
  assert.equal(d.code, d.doc.problems ? 1 : 0);
  const b = await fleet.cliJson<{ status: string; backup: { id: string; verified: boolean; sha256: string } }>(["backup", "prod-a"]);
  assert.equal(b.code, 0, b.stderr);
  assert.equal(b.doc.backup.verified, true);
  const list = await fleet.cliJson<{ backups: { id: string; verified: boolean }[] }>(["backups", "prod-a"]);
  assert.ok(list.doc.backups.some((x) => x.id === b.doc.backup.id && x.verified));
  const noYes = await fleet.cli(["restore", "prod-a", b.doc.backup.id]);
  assert.equal(noYes.code, 2);
  const before = await dumpDatabase(fleet.urls.get("prod-a")!);
  const r = await fleet.cliJson<{ status: string; restored: boolean }>(["restore", "prod-a", b.doc.backup.id, "--yes"]);
  assert.equal(r.code, 0, r.stderr);
  assert.equal(await dumpDatabase(fleet.urls.get("prod-a")!), before);
  const h = await fleet.agentClient("h1").checkHealth({ targetId: "prod-a" });
  assert.ok(h.healthy, "restore started the app again");
  assert.equal((await fleet.cli(["downgrade", "prod-a", "--to", OLD_REVISION])).code, 2);
  assert.equal((await fleet.cli(["stamp", "prod-a", OLD_REVISION, "--reason", "because"])).code, 2);
  const unknown = await fleet.cli(["backup", "no-such-target"]);
  assert.equal(unknown.code, 2);
  assert.match(unknown.stderr, /no-such-target/);
});

test("schedules: add (validated), list, remove; the web page is served", async () => {
  const bad = await fleet.cli(["schedule", "add", "nightly", "--cron", "61 * * * *", "--selector", "env=prod", "--strategy", "maintenance"]);
  assert.equal(bad.code, 2);
  const ok = await fleet.cli(["schedule", "add", "nightly", "--cron", "0 3 * * 0", "--selector", "env=prod", "--strategy", "maintenance", "--window", "2h"]);
  assert.equal(ok.code, 0, ok.stderr);
  const list = await fleet.cliJson<{ schedules: { name: string; cron: string; window: string }[] }>(["schedules"]);
  assert.deepEqual(
    list.doc.schedules.map((x) => [x.name, x.cron, x.window]),
    [["nightly", "0 3 * * 0", "2h"]],
  );
  assert.equal((await fleet.cli(["schedule", "rm", "nightly"])).code, 0);
  assert.equal((await fleet.cliJson<{ schedules: unknown[] }>(["schedules"])).doc.schedules.length, 0);
  const page = await fetch(`${fleet.controllerUrl}/`);
  assert.equal(page.status, 200);
  assert.match(await page.text(), /<title>Flotilla<\/title>/);
});

test("audit: every step recorded; verify passes, then fails naming the edited row", async () => {
  const q = await fleet.cliJson<{ entries: { seq: string; action: string; outcome: string; target: string }[] }>(["audit", "--target", "wave-2"]);
  assert.equal(q.code, 0, q.stderr);
  assert.ok(q.doc.entries.some((e) => e.action === "step.migrate" && e.outcome === "intent"));
  assert.ok(q.doc.entries.some((e) => e.action === "step.migrate" && e.outcome === "error"));
  const ok = await fleet.cli(["audit", "verify"]);
  assert.equal(ok.code, 0, ok.stderr + ok.stdout);
  const db = new Database(join(fleet.dir, "controller", "controller.db"));
  const row = db.prepare("SELECT seq FROM audit_log WHERE action = 'step.migrate' ORDER BY seq LIMIT 1").get() as { seq: number };
  db.prepare("UPDATE audit_log SET detail = 'nothing happened' WHERE seq = ?").run(row.seq);
  db.close();
  const bad = await fleet.cliJson<{ ok: boolean; firstBadSeq: string }>(["audit", "verify"]);
  assert.equal(bad.code, 1);
  assert.equal(Number(bad.doc.firstBadSeq), row.seq);
  const logs = fleet.logs();
  assert.equal(logs.includes(CANARY_SECRET), false);
  assert.equal(logs.includes(CANARY_PASSWORD), false);
});
