/**
 * One bad target never takes a host down: a real agent process with a target
 * whose WEBUI_SECRET_KEY file is empty (and one whose alembic folder has no
 * alembic.ini) starts, serves its other targets, reports the broken ones with
 * each reason and its fix through the controller and the real CLI, refuses
 * operations on them, and picks up a fixed secret file without a restart.
 */
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { existsSync, readFileSync, readdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { CANARY_SECRET, FIXTURE_DIR, Fleet, HEAD_REVISION, OLD_REVISION, type AgentClient } from "../helpers/fleet.js";
import { collect } from "../helpers/ops.js";

let fleet: Fleet;
let a1: AgentClient;
let agentPid: number | undefined;

interface TargetsDoc {
  targets: { targetId: string; state?: string; problems?: string[]; current?: string[] }[];
}

before(async () => {
  fleet = new Fleet({
    agents: ["a1"],
    targets: [
      { id: "iso-ok", kind: "sqlite", owner: "a1" },
      { id: "iso-broken", kind: "sqlite", owner: "a1", secret: "", apps: [{ agent: "a1" }] },
      { id: "iso-noini", kind: "sqlite", owner: "a1", alembicDir: join(FIXTURE_DIR, "migrations") },
      { id: "iso-head", kind: "sqlite", owner: "a1", revision: HEAD_REVISION, apps: [{ agent: "a1" }] },
      { id: "iso-fail", kind: "sqlite", owner: "a1", failAt: "0a7b8c9d0e1f" },
    ],
  });
  await fleet.start();
  a1 = fleet.agentClient("a1");
  agentPid = fleet.agents.get("a1")!.proc?.pid;
});

after(async () => {
  await fleet?.stop();
});

const byId = (doc: TargetsDoc, id: string) => {
  const t = doc.targets.find((x) => x.targetId === id);
  assert.ok(t, `target ${id} missing from ${JSON.stringify(doc)}`);
  return t;
};

test("the agent starts with a broken target and `flotilla targets` shows it broken with its reasons, the others ok", async () => {
  assert.equal(fleet.agents.get("a1")!.proc?.exitCode, null, "the agent is running");
  const r = await fleet.cliJson<TargetsDoc>(["targets"]);
  assert.equal(r.code, 0, r.stderr);
  const broken = byId(r.doc, "iso-broken");
  assert.equal(broken.state, "broken");
  assert.equal(broken.problems?.length, 1);
  assert.match(broken.problems![0]!, /alembic\.env\.WEBUI_SECRET_KEY: secret file \S+ is empty; fix: write the secret WEBUI_SECRET_KEY into/);
  const noIni = byId(r.doc, "iso-noini");
  assert.equal(noIni.state, "broken");
  assert.match(noIni.problems!.join("\n"), /no alembic\.ini in .*migrations/);
  const ok = byId(r.doc, "iso-ok");
  assert.equal(ok.state, "ok");
  assert.deepEqual(ok.current, [OLD_REVISION]);

  const human = await fleet.cli(["targets"]);
  assert.equal(human.code, 0, human.stderr);
  assert.match(human.stdout, /✗ iso-broken: broken: alembic\.env\.WEBUI_SECRET_KEY: secret file .* is empty/);
  assert.match(human.stdout, /iso-broken .*BROKEN/);
  assert.match(human.stdout, /iso-ok /);
});

test("diagnose on the broken target exits 1 naming the fix; operations on it are refused with the reason, changing nothing", async () => {
  const d = await fleet.cli(["diagnose", "iso-broken"]);
  assert.equal(d.code, 1, d.stdout + d.stderr);
  assert.match(d.stdout, /secret file .* is empty/);
  assert.match(d.stdout, /fix: write the secret WEBUI_SECRET_KEY into .*no restart needed/);
  const dj = await fleet.cliJson<{ problems: boolean; findings: { code: string; severity: string }[] }>(["diagnose", "iso-broken"]);
  assert.equal(dj.code, 1);
  assert.deepEqual(
    dj.doc.findings.filter((f) => f.severity === "error").map((f) => f.code),
    ["secret-empty"],
  );

  const b = await fleet.cli(["backup", "iso-broken"]);
  assert.equal(b.code, 1, b.stdout + b.stderr);
  assert.match(b.stderr, /TARGET_BROKEN: target iso-broken is broken.*secret file .* is empty \(fix: write/);
  const backups = join(fleet.dir, "backups", "iso-broken");
  assert.ok(!existsSync(backups) || readdirSync(backups).length === 0, "nothing was written for the broken target");

  const m = await collect(a1.migrate({ targetId: "iso-broken", toRevision: "head", operationId: "iso-m1", takeBackup: true }));
  assert.equal(m.result.status, "refused");
  assert.equal(m.result.errorCode, "TARGET_BROKEN");
  assert.deepEqual(m.steps, [], "no step ran");
  await assert.rejects(a1.plan({ targetId: "iso-noini", toRevision: "head" }), /no alembic\.ini/);
});

test("every other target on the host works: a backup of the healthy target succeeds", async () => {
  const b = await fleet.cliJson<{ status: string; backup?: { verified: boolean } }>(["backup", "iso-ok"]);
  assert.equal(b.code, 0, b.stderr);
  assert.equal(b.doc.status, "succeeded");
  assert.equal(b.doc.backup?.verified, true);
});

test("writing the key into the empty secret file takes effect without a restart", async () => {
  writeFileSync(fleet.secretFile("iso-broken"), `${CANARY_SECRET}-rotated\n`);
  const r = await fleet.cliJson<TargetsDoc>(["targets"]);
  assert.equal(byId(r.doc, "iso-broken").state, "ok");
  const b = await fleet.cliJson<{ status: string }>(["backup", "iso-broken"]);
  assert.equal(b.code, 0, b.stderr);
  // Alembic runs with the new key (env.py refuses to load without one).
  const plan = await a1.plan({ targetId: "iso-broken", toRevision: "head" });
  assert.equal(plan.pending.length, 5);
  const d = await fleet.cli(["diagnose", "iso-broken"]);
  assert.doesNotMatch(d.stdout, /secret/i);
  assert.equal(fleet.agents.get("a1")!.proc?.pid, agentPid, "same agent process");
  assert.equal(fleet.agents.get("a1")!.proc?.exitCode, null);
  // Emptying it again breaks only that target, again without a restart.
  writeFileSync(fleet.secretFile("iso-broken"), "\n");
  assert.equal(byId((await fleet.cliJson<TargetsDoc>(["targets"])).doc, "iso-broken").state, "broken");
  assert.equal(byId((await fleet.cliJson<TargetsDoc>(["targets"])).doc, "iso-ok").state, "ok");
});

test("a rollout over the broken target stops at precheck with the reason: its app is never stopped", async () => {
  const pidFile = join(fleet.dir, "run", "iso-broken-app-1.pid");
  const pidBefore = readFileSync(pidFile, "utf8");
  const r = await fleet.cliJson<{ status: string; targets: { targetId: string; status: string; steps: { name: string; state: string; detail: string }[] }[] }>([
    "rollout",
    "--selector",
    "id=iso-broken",
    "--strategy",
    "maintenance",
    "--wait",
  ]);
  assert.equal(r.code, 1, r.stderr);
  const t = r.doc.targets.find((x) => x.targetId === "iso-broken");
  const precheck = t?.steps.find((x) => x.name.startsWith("precheck"));
  assert.equal(precheck?.state, "failed", JSON.stringify(t));
  assert.match(precheck?.detail ?? "", /target is broken \(alembic\.env\.WEBUI_SECRET_KEY: secret file .* is empty\)/);
  assert.ok(
    t!.steps.filter((x) => x.name.startsWith("stop")).every((x) => x.state !== "succeeded" && x.state !== "running"),
    JSON.stringify(t!.steps),
  );
  assert.equal(readFileSync(pidFile, "utf8"), pidBefore, "the app kept running");
  const app = (await a1.getStatus({ targetId: "iso-broken" })).apps[0];
  assert.equal(app?.state, "running");
});

test("diagnose exits 0 on a healthy, up-to-date target whose app is running (the running app is information)", async () => {
  const d = await fleet.cliJson<{ problems: boolean; findings: { code: string; severity: string; what: string }[] }>(["diagnose", "iso-head"]);
  assert.equal(d.code, 0, JSON.stringify(d.doc.findings.filter((f) => f.severity !== "ok")));
  assert.equal(d.doc.problems, false);
  const app = d.doc.findings.find((f) => f.code === "app-running");
  assert.equal(app?.severity, "info");
  assert.match(app?.what ?? "", /iso-head/);
});

test("diagnose names the last failed operation and what it left behind, from the journal", async () => {
  const m = await collect(a1.migrate({ targetId: "iso-fail", toRevision: "head", operationId: "iso-fail-m1", takeBackup: true }));
  assert.equal(m.result.status, "failed");
  const d = await fleet.cliJson<{ problems: boolean; findings: { code: string; severity: string; what: string; why: string }[] }>(["diagnose", "iso-fail"]);
  const last = d.doc.findings.find((f) => f.code === "last-failed-operation");
  assert.ok(last, JSON.stringify(d.doc.findings.map((f) => f.code)));
  assert.match(last.what, /the last failed operation was migrate iso-fail-m1 .* with MIGRATION_FAILED/);
  assert.match(last.why, /it left the database at its old revision c3d2e1f00d42; its backup \S+ holds the data from before it/);
  // Restored to where it was: information, not a problem that fails diagnose.
  assert.equal(last.severity, "info");
  assert.equal(d.code, 0, JSON.stringify(d.doc.findings.filter((f) => f.severity !== "ok" && f.severity !== "info")));
});

test("no secret appears in any log", () => {
  assert.equal(fleet.logs().includes(CANARY_SECRET), false);
});
