import assert from "node:assert/strict";
import { describe, it } from "node:test";
import type { HistoryRevision } from "./alembic-output.js";
import { RevisionGraph } from "./revision-graph.js";
import {
  afterFailure,
  decideInterruptedMigration,
  guardMigration,
  onUpgradePath,
  resolveMigration,
  snapshotChanges,
  type InterruptedMigrationFacts,
  type MigrateGuardFacts,
} from "./safety-policy.js";

function rev(id: string, down: string[], message = ""): HistoryRevision {
  return { id, down, message, isHead: false, isBranchpoint: false, isMergepoint: false, branchLabels: [], dependsOn: [] };
}

// a → b → c → d (linear), and a side branch b → x.
const linear = RevisionGraph.fromHistory([rev("aaaa", []), rev("bbbb", ["aaaa"]), rev("cccc", ["bbbb"]), rev("dddd", ["cccc"])]);
const branched = RevisionGraph.fromHistory([rev("aaaa", []), rev("bbbb", ["aaaa"]), rev("cccc", ["bbbb"]), rev("dddd", ["cccc"]), rev("xxxx", ["bbbb"])]);

const up = (graph: RevisionGraph, requested: string, current: string[] | null) =>
  resolveMigration({ targetId: "t1", graph, requested, current, direction: "upgrade" });

describe("resolveMigration", () => {
  it("head resolves to the single head and lists what runs, parents first", () => {
    assert.deepEqual(up(linear, "head", ["bbbb"]), { ok: true, action: "upgrade", target: "dddd", pending: ["cccc", "dddd"] });
    assert.deepEqual(up(linear, "", null), { ok: true, action: "upgrade", target: "dddd", pending: ["aaaa", "bbbb", "cccc", "dddd"] });
  });

  it("an unknown or malformed --to is refused as INVALID_ARGUMENT", () => {
    const unknown = up(linear, "nosuchrev", ["bbbb"]);
    assert.equal(unknown.ok, false);
    assert.equal(!unknown.ok && unknown.code, "INVALID_ARGUMENT");
    assert.match(!unknown.ok ? unknown.message : "", /nosuchrev is not in the app's migration history/);
    const bad = up(linear, "../etc", ["bbbb"]);
    assert.equal(!bad.ok && bad.code, "INVALID_ARGUMENT");
    const relative = up(linear, "+1", ["bbbb"]);
    assert.equal(!relative.ok && relative.code, "INVALID_ARGUMENT");
  });

  it("a revision behind the database's is refused for an upgrade, naming the downgrade command", () => {
    const d = up(linear, "bbbb", ["dddd"]);
    assert.equal(!d.ok && d.code, "INVALID_ARGUMENT");
    assert.match(!d.ok ? d.message : "", /older than the database's revision dddd.*flotilla downgrade t1 --to bbbb/);
  });

  it("a revision on another branch is refused", () => {
    const d = up(branched, "xxxx", ["cccc"]);
    assert.equal(!d.ok && d.code, "INVALID_ARGUMENT");
    assert.match(!d.ok ? d.message : "", /another branch than the database's revision cccc/);
    // Descending along the branch from the branch point is fine.
    assert.deepEqual(up(branched, "xxxx", ["bbbb"]), { ok: true, action: "upgrade", target: "xxxx", pending: ["xxxx"] });
  });

  it("several heads make 'head' ambiguous", () => {
    const d = up(branched, "head", ["bbbb"]);
    assert.equal(!d.ok && d.code, "MULTIPLE_HEADS");
    assert.match(!d.ok ? d.message : "", /dddd, xxxx|xxxx, dddd/);
  });

  it("a database revision the code does not know is version skew", () => {
    const d = up(linear, "head", ["ffff"]);
    assert.equal(!d.ok && d.code, "UNKNOWN_REVISION");
  });

  it("already at the wanted revision: up-to-date, nothing pending", () => {
    const d = up(linear, "head", ["dddd"]);
    assert.equal(d.ok && d.action, "up-to-date");
    assert.deepEqual(d.ok ? d.pending : null, []);
    assert.match(d.ok && d.action === "up-to-date" ? d.message : "", /already at dddd; nothing to do/);
  });

  it("downgrades go to an ancestor only, listing what they remove children first", () => {
    const down = (requested: string, current: string[]) => resolveMigration({ targetId: "t1", graph: linear, requested, current, direction: "downgrade" });
    assert.deepEqual(down("bbbb", ["dddd"]), { ok: true, action: "downgrade", target: "bbbb", pending: ["dddd", "cccc"] });
    assert.deepEqual(down("base", ["bbbb"]), { ok: true, action: "downgrade", target: "base", pending: ["bbbb", "aaaa"] });
    const ahead = down("dddd", ["bbbb"]);
    assert.equal(!ahead.ok && ahead.code, "INVALID_ARGUMENT");
    assert.equal(down("bbbb", ["bbbb"]).ok && (down("bbbb", ["bbbb"]) as { action: string }).action, "up-to-date");
  });
});

const guardBase: MigrateGuardFacts = {
  targetId: "t1",
  kind: "postgresql",
  online: false,
  runningApps: [],
  holders: [],
  leftoverTables: [],
  backup: { kind: "take" },
  rolloutId: "r1",
  current: ["bbbb"],
  displayName: "postgresql://db/app",
};

describe("guardMigration", () => {
  it("goes when nothing holds the database and a backup will be taken", () => {
    assert.equal(guardMigration(guardBase), null);
  });

  it("refuses without a backup", () => {
    assert.equal(guardMigration({ ...guardBase, backup: { kind: "none" } })?.code, "BACKUP_UNVERIFIED");
  });

  it("refuses while an app instance runs or a session holds the database, unless online", () => {
    const apps = guardMigration({ ...guardBase, runningApps: ["web-1"] });
    assert.equal(apps?.code, "APP_STILL_RUNNING");
    assert.match(apps?.message ?? "", /web-1/);
    const held = guardMigration({ ...guardBase, holders: ["pid 42 (webui, idle)"] });
    assert.equal(held?.code, "APP_STILL_RUNNING");
    assert.match(held?.message ?? "", /pid 42/);
    assert.equal(guardMigration({ ...guardBase, online: true, runningApps: ["web-1"], holders: ["pid 42"] }), null);
  });

  it("refuses leftover batch tables even online", () => {
    const r = guardMigration({ ...guardBase, online: true, leftoverTables: ["_alembic_tmp_user"] });
    assert.equal(r?.code, "PRECONDITION_FAILED");
    assert.match(r?.message ?? "", /_alembic_tmp_user/);
  });

  it("checks a given backup: verified, same rollout, same revision, same database", () => {
    const given = { kind: "given" as const, id: "b1", verified: true, verification: "ok", rolloutId: "r1", revisions: ["bbbb"], source: "postgresql://db/app" };
    assert.equal(guardMigration({ ...guardBase, backup: given }), null);
    assert.equal(guardMigration({ ...guardBase, backup: { ...given, verified: false } })?.code, "BACKUP_UNVERIFIED");
    assert.match(guardMigration({ ...guardBase, backup: { ...given, rolloutId: "r0" } })?.message ?? "", /outside rollout r1/);
    assert.match(guardMigration({ ...guardBase, backup: { ...given, revisions: ["aaaa"] } })?.message ?? "", /take a fresh backup/);
    assert.match(guardMigration({ ...guardBase, backup: { ...given, source: "other" } })?.message ?? "", /is of other/);
  });
});

describe("after a failed run", () => {
  const before = { revisions: ["bbbb"], schemaHash: "h1", tableCounts: { user: 3, chat: 10 } };

  it("an unchanged database needs no restore", () => {
    const changes = snapshotChanges(before, { ...before });
    assert.deepEqual(changes, []);
    assert.deepEqual(afterFailure({ changes, kind: "postgresql", holders: ["pid 1"] }), { action: "none", effect: "none" });
  });

  it("a changed revision, schema or row count is a change", () => {
    assert.deepEqual(snapshotChanges(before, { ...before, revisions: ["cccc"] }), ["revision bbbb → cccc"]);
    assert.deepEqual(snapshotChanges(before, { ...before, schemaHash: "h2" }), ["schema changed"]);
    assert.deepEqual(snapshotChanges(before, { ...before, tableCounts: { user: 3, chat: 9, memo: 0 } }), ["chat: 10 → 9 rows", "new table memo"]);
    // Without counts on one side (job strategy), only revision and schema are compared.
    assert.deepEqual(snapshotChanges({ revisions: ["bbbb"], schemaHash: "h1" }, { ...before, tableCounts: { user: 99 } }), []);
  });

  it("a change is restored, unless PostgreSQL sessions block the restore: then needs-restore naming them", () => {
    assert.deepEqual(afterFailure({ changes: ["schema changed"], kind: "postgresql", holders: [] }), { action: "restore", effect: "restored" });
    assert.deepEqual(afterFailure({ changes: ["schema changed"], kind: "postgresql", holders: ["pid 7 (psql, idle in transaction)"] }), {
      action: "hold",
      effect: "needs-restore",
      blockingSessions: ["pid 7 (psql, idle in transaction)"],
    });
    assert.deepEqual(afterFailure({ changes: ["schema changed"], kind: "sqlite", holders: ["pid 7"] }), { action: "restore", effect: "restored" });
  });
});

describe("onUpgradePath", () => {
  it("is true from where the run started up to the wanted revision, inclusive", () => {
    for (const now of [["bbbb"], ["cccc"], ["dddd"]]) assert.equal(onUpgradePath(linear, ["bbbb"], now, "dddd"), true, now.join());
    assert.equal(onUpgradePath(linear, [], [], "dddd"), true, "from base, nothing applied yet");
    assert.equal(onUpgradePath(linear, [], ["aaaa"], "dddd"), true);
  });

  it("is false below the start, past the wanted revision, on another branch, or at a revision the code does not know", () => {
    assert.equal(onUpgradePath(linear, ["bbbb"], ["aaaa"], "dddd"), false);
    assert.equal(onUpgradePath(linear, ["aaaa"], ["dddd"], "cccc"), false);
    assert.equal(onUpgradePath(branched, ["bbbb"], ["xxxx"], "dddd"), false);
    assert.equal(onUpgradePath(linear, ["bbbb"], ["zzzz"], "dddd"), false);
    assert.equal(onUpgradePath(linear, ["bbbb"], [], "dddd"), false, "revision table emptied");
  });
});

describe("decideInterruptedMigration", () => {
  const facts = (over: Partial<InterruptedMigrationFacts> = {}): InterruptedMigrationFacts => ({
    targetId: "t1",
    operation: "migrate",
    online: true,
    before: ["bbbb"],
    wanted: "dddd",
    now: ["cccc"],
    onPath: true,
    partial: false,
    intact: true,
    runningApps: ["t1-a"],
    backupId: "bk1",
    ...over,
  });

  it("an online migration at a revision on its path goes forward, whether it got past the first revision or not", () => {
    assert.equal(decideInterruptedMigration(facts()).action, "resume-forward");
    const none = decideInterruptedMigration(facts({ now: ["bbbb"] }));
    assert.equal(none.action, "resume-forward");
    assert.match(none.message, /nothing the app wrote is lost/);
  });

  it("a database already at the wanted revision and intact is accepted", () => {
    assert.equal(decideInterruptedMigration(facts({ now: ["dddd"] })).action, "accept");
    assert.equal(decideInterruptedMigration(facts({ now: ["dddd"], online: false })).action, "accept");
  });

  it("an online migration not at a known revision on its path is restored, saying plainly that the app's writes are lost", () => {
    for (const over of [{ partial: true }, { intact: false }, { onPath: false, now: ["xxxx"] }, { operation: "downgrade" }, { intact: false, now: ["dddd"] }]) {
      const d = decideInterruptedMigration(facts(over));
      assert.equal(d.action, "restore", JSON.stringify(over));
      assert.equal(d.action === "restore" && d.losesWrites, true);
      assert.match(d.message, /backup bk1/);
      assert.match(d.message, /LOSES every row the app wrote to t1 since that backup/);
      assert.match(d.message, /stop the app instances \(t1-a\) first, then run flotilla recover t1 --action restore/);
    }
  });

  it("an offline migration (maintenance: apps stopped) is restored as before, and the restore loses nothing", () => {
    const d = decideInterruptedMigration(facts({ online: false, runningApps: [] }));
    assert.equal(d.action, "restore");
    assert.equal(d.action === "restore" && d.losesWrites, false);
    assert.match(d.message, /the backup holds every row and nothing is lost/);
  });
});
