import { test } from "node:test";
import assert from "node:assert/strict";
import { diagnose, lastFailure, DISK_MARGIN_BYTES, BACKUP_MAX_AGE_MS } from "./diagnose.js";
import type { DiagnoseFacts, Finding, JournalRow, Severity } from "./diagnose.js";

const CHAIN = ["a1f0c0de0001", "b2e1d0c0ffee", "c3d2e1f00d42", "d4c3b2a1e5f6", "e5f4a3b2c1d0", "f6a5b4c3d2e1", "0a7b8c9d0e1f", "1b8c9d0e1f2a"];
const HEAD = "1b8c9d0e1f2a";
const MB = 1024 * 1024;

/** A healthy SQLite target at head; each test changes one thing. */
function healthy(overrides: Partial<DiagnoseFacts> = {}): DiagnoseFacts {
  return {
    targetId: "webui-1",
    kind: "sqlite",
    alembicIniFound: true,
    alembicDir: "/app/backend/open_webui",
    secretConfigured: true,
    databaseExists: true,
    heads: [HEAD],
    branchpoints: [],
    knownRevisions: [...CHAIN],
    current: [HEAD],
    pending: [],
    tables: ["alembic_version", "user", "auth", "chat", "message", "config", "shared_chat"],
    alembicTmpTables: [],
    hasMigrateHistory: false,
    preexistingObjects: [],
    integrity: { ok: true, detail: "ok" },
    holders: [],
    idleInTransaction: 0,
    appInstances: [{ id: "webui-1-a", state: "stopped" }],
    databaseBytes: 10 * MB,
    freeBytes: 10 * 1024 * MB,
    lastVerifiedBackupAgeMs: 60 * 60 * 1000,
    interruptedOperations: [],
    sqliteJournalMode: "delete",
    onNetworkFilesystem: false,
    ...overrides,
  };
}

/** Facts of a database at revision 6 with revisions 7 and 8 pending. */
function atRev6(overrides: Partial<DiagnoseFacts> = {}): DiagnoseFacts {
  return healthy({
    current: ["f6a5b4c3d2e1"],
    pending: [
      { id: "0a7b8c9d0e1f", message: "archive chats" },
      { id: "1b8c9d0e1f2a", message: "user settings" },
    ],
    tables: ["alembic_version", "user", "auth", "chat", "message", "config"],
    ...overrides,
  });
}

function find(findings: Finding[], code: string): Finding {
  const hit = findings.find((x) => x.code === code);
  assert.ok(hit, `expected finding ${code}, got ${findings.map((x) => x.code).join(", ")}`);
  return hit;
}

/** Asserts the finding's code and severity and that its fix names the given concrete action. */
function expectFinding(facts: DiagnoseFacts, code: string, severity: Severity, fix: RegExp): Finding {
  const result = diagnose(facts);
  const hit = find(result.findings, code);
  assert.equal(hit.severity, severity);
  assert.match(hit.fix, fix);
  assert.ok(hit.what.length > 0 && hit.why.length > 0, "what and why are filled in");
  assert.equal(
    result.problems,
    result.findings.some((x) => x.severity === "error" || x.severity === "warning"),
  );
  return hit;
}

test("healthy baseline: no problems, one ok finding per checked area", () => {
  const { findings, problems } = diagnose(healthy());
  assert.equal(problems, false);
  for (const x of findings) assert.equal(x.severity, "ok", `${x.code} should be ok`);
  for (const code of [
    "alembic-config-ok",
    "single-head",
    "database-found",
    "at-head",
    "no-batch-leftovers",
    "integrity-ok",
    "database-not-in-use",
    "disk-space-ok",
    "backup-recent",
    "no-interrupted-operations",
  ]) {
    find(findings, code);
  }
});

test("multiple heads: error, fix is a merge revision or an explicit target", () => {
  const f = expectFinding(
    healthy({ heads: [HEAD, "9c9c9c9c9c9c"], knownRevisions: [...CHAIN, "9c9c9c9c9c9c"], branchpoints: ["e5f4a3b2c1d0"] }),
    "multiple-heads",
    "error",
    /alembic merge .*1b8c9d0e1f2a 9c9c9c9c9c9c/,
  );
  assert.match(f.fix, /flotilla rollout --selector S --to REV/);
  assert.match(f.what, /9c9c9c9c9c9c/);
  assert.equal(
    diagnose(healthy({ heads: [HEAD, "9c9c9c9c9c9c"] })).findings.some((x) => x.code === "single-head"),
    false,
  );
});

test("branchpoints: warning while unmerged, info once merged", () => {
  const open = healthy({ heads: [HEAD, "9c9c9c9c9c9c"], branchpoints: ["e5f4a3b2c1d0"] });
  expectFinding(open, "branchpoints", "warning", /merge the heads/);
  const merged = healthy({ branchpoints: ["e5f4a3b2c1d0"] });
  expectFinding(merged, "branchpoints", "info", /flotilla plan/);
  assert.equal(diagnose(merged).problems, false);
});

test("alembic.ini missing: error naming the dir and the alembic.dir key", () => {
  const f = expectFinding(
    healthy({ alembicIniFound: false, alembicDir: "/app/backend", heads: [], knownRevisions: [] }),
    "alembic-ini-missing",
    "error",
    /`alembic\.dir`.*\/app\/backend\/open_webui/,
  );
  assert.match(f.what, /\/app\/backend/);
  // The empty graph is explained by the missing ini, not reported twice.
  assert.equal(
    diagnose(healthy({ alembicIniFound: false, heads: [], knownRevisions: [] })).findings.some((x) => x.code === "revision-graph-empty"),
    false,
  );
});

test("ini present but rejected (missing-config): same finding with Alembic's message", () => {
  const f = expectFinding(
    healthy({
      heads: [],
      knownRevisions: [],
      alembicEnvError: { kind: "missing-config", message: "No config file 'alembic.ini' found, or file has no '[alembic]' section" },
    }),
    "alembic-ini-missing",
    "error",
    /`alembic\.dir`/,
  );
  assert.match(f.what, /'\[alembic\]' section/);
});

test("missing WEBUI_SECRET_KEY: error, fix configures the key file", () => {
  const facts = healthy({
    secretConfigured: false,
    heads: [],
    knownRevisions: [],
    alembicEnvError: { kind: "env", message: "Required environment variable not found. Terminating now." },
  });
  const f = expectFinding(facts, "secret-missing", "error", /alembic\.env\.WEBUI_SECRET_KEY: \{ file: \/app\/backend\/\.webui_secret_key \}/);
  assert.match(f.what, /not configured/);
  const configured = expectFinding({ ...facts, secretConfigured: true }, "secret-missing", "error", /webui_secret_key/);
  assert.match(configured.what, /empty or unreadable/);
  // The current revision cannot be compared without the graph: said, not guessed.
  expectFinding(facts, "version-unchecked", "info", /flotilla diagnose webui-1/);
  assert.equal(
    diagnose(facts).findings.some((x) => x.code === "version-skew"),
    false,
  );
});

test("other alembic failure: error with its kind, fix names alembic.command", () => {
  const f = expectFinding(
    healthy({ heads: [], knownRevisions: [], alembicEnvError: { kind: "import", message: "ModuleNotFoundError: No module named 'open_webui'" } }),
    "alembic-error",
    "error",
    /`alembic\.command`/,
  );
  assert.match(f.what, /import.*open_webui/);
});

test("empty revision graph with no other explanation: warning", () => {
  expectFinding(healthy({ heads: [], knownRevisions: [] }), "revision-graph-empty", "warning", /script_location/);
});

test("database missing: error; database-derived checks are skipped", () => {
  const facts = healthy({ databaseExists: false, current: null, tables: [] });
  delete facts.integrity;
  expectFinding(facts, "database-missing", "error", /`database` in the agent config/);
  const codes = diagnose(facts).findings.map((x) => x.code);
  assert.ok(!codes.includes("fresh-database"));
  assert.ok(!codes.includes("at-head"));
  expectFinding(healthy({ kind: "postgresql", databaseExists: false }), "database-missing", "error", /CREATE DATABASE/);
});

test("version skew: error, fix is the matching code or a restore, never stamp", () => {
  const f = expectFinding(healthy({ current: ["9f0c9cd09105"] }), "version-skew", "error", /flotilla restore webui-1 BACKUP --yes/);
  assert.match(f.what, /9f0c9cd09105/);
  assert.match(f.fix, /never stamp/);
  assert.doesNotMatch(f.fix, /flotilla stamp/);
});

test("app tables without a version: warning, stamp only after confirming the schema", () => {
  for (const current of [null, []]) {
    const f = expectFinding(
      healthy({ current, pending: CHAIN.map((id) => ({ id, message: "" })) }),
      "unversioned-schema",
      "warning",
      /flotilla stamp webui-1 1b8c9d0e1f2a --reason created-with-create-all/,
    );
    assert.match(f.fix, /only if it matches/);
    assert.match(f.what, /user/);
  }
});

test("no version table and no tables: info, a fresh database", () => {
  const facts = healthy({ current: null, tables: [], pending: CHAIN.map((id) => ({ id, message: "" })) });
  const f = expectFinding(facts, "fresh-database", "info", /flotilla rollout/);
  assert.match(f.why, /8 revisions/);
  assert.equal(diagnose(facts).problems, false);
});

test("version row but no tables: warning, it was stamped without its schema", () => {
  expectFinding(healthy({ tables: ["alembic_version"] }), "stamped-without-schema", "warning", /flotilla restore webui-1 BACKUP --yes/);
});

test("leftover _alembic_tmp_ table: error; drop only when the source table is intact", () => {
  const intact = expectFinding(
    healthy({ alembicTmpTables: ["_alembic_tmp_user"], tables: [...healthy().tables, "_alembic_tmp_user"] }),
    "batch-leftover",
    "error",
    /DROP TABLE "_alembic_tmp_user";/,
  );
  assert.match(intact.fix, /flotilla restore webui-1 BACKUP --yes/);
  assert.match(intact.why, /table _alembic_tmp_user already exists/);
  const lost = expectFinding(
    healthy({ alembicTmpTables: ["_alembic_tmp_user"], tables: ["alembic_version", "auth", "chat", "_alembic_tmp_user"] }),
    "batch-leftover",
    "error",
    /do not drop it.*flotilla restore webui-1 BACKUP --yes/,
  );
  assert.doesNotMatch(lost.fix, /DROP TABLE/);
});

test("peewee migratehistory: warning without an Alembic version, info with one", () => {
  const legacy = healthy({ current: null, hasMigrateHistory: true, tables: ["migratehistory", "user", "chat"] });
  expectFinding(legacy, "peewee-legacy", "warning", /app's own migration path/);
  const unversioned = find(diagnose(legacy).findings, "unversioned-schema");
  assert.match(unversioned.fix, /peewee/);
  assert.doesNotMatch(unversioned.fix, /flotilla stamp/);
  const migrated = healthy({ hasMigrateHistory: true });
  expectFinding(migrated, "peewee-legacy", "info", /keep the table/);
  assert.equal(diagnose(migrated).problems, false);
});

test("objects of a pending revision already exist: error, restore first, stamp one revision only applied-by-hand", () => {
  const facts = atRev6({
    preexistingObjects: [
      { revision: "0a7b8c9d0e1f", object: "chat.archived_at", kind: "column" },
      { revision: "0a7b8c9d0e1f", object: "shared_chat", kind: "table" },
    ],
  });
  const f = expectFinding(facts, "partial-apply", "error", /flotilla restore webui-1 BACKUP --yes/);
  assert.match(f.fix, /flotilla stamp webui-1 0a7b8c9d0e1f --reason applied-by-hand/);
  assert.match(f.what, /column chat\.archived_at/);
  assert.match(f.why, /duplicate column/);
  // Objects of two revisions: stamping one cannot repair it, so no stamp is offered.
  const two = expectFinding(
    atRev6({
      preexistingObjects: [
        { revision: "1b8c9d0e1f2a", object: "user.settings", kind: "column" },
        { revision: "0a7b8c9d0e1f", object: "chat.archived_at", kind: "column" },
      ],
    }),
    "partial-apply",
    "error",
    /flotilla restore webui-1 BACKUP --yes/,
  );
  assert.match(two.what, /0a7b8c9d0e1f creates/, "the earliest pending revision is named first");
  assert.doesNotMatch(two.fix, /flotilla stamp/);
  find(diagnose(atRev6()).findings, "no-partial-apply");
});

test("pending revisions: info with count and ids", () => {
  const facts = atRev6();
  const f = expectFinding(facts, "pending-revisions", "info", /flotilla rollout --selector S/);
  assert.match(f.what, /^2 revisions pending: 0a7b8c9d0e1f, 1b8c9d0e1f2a$/);
  assert.equal(diagnose(facts).problems, false);
});

test("integrity check failed: error, restore the last verified backup", () => {
  const f = expectFinding(
    healthy({ integrity: { ok: false, detail: "*** in database main ***\nPage 5: btree cell count" } }),
    "integrity-failed",
    "error",
    /flotilla restore webui-1 BACKUP --yes/,
  );
  assert.match(f.what, /Page 5/);
  assert.doesNotMatch(f.what, /\n/);
});

test("app instance running with a migration pending: warning naming it, fix is the maintenance strategy", () => {
  const f = expectFinding(
    atRev6({
      appInstances: [
        { id: "webui-1-a", state: "running" },
        { id: "webui-1-b", state: "stopped" },
      ],
    }),
    "app-running",
    "warning",
    /--strategy maintenance/,
  );
  assert.match(f.what, /webui-1-a/);
  assert.doesNotMatch(f.what, /webui-1-b/);
  const unknown = healthy({ appInstances: [{ id: "webui-1-a", state: "unknown" }] });
  expectFinding(unknown, "app-state-unknown", "info", /apps\[\]\.health/);
  assert.equal(diagnose(unknown).problems, false);
});

test("a healthy, up-to-date target with its app running and holding the file has no problems (the app is information)", () => {
  const facts = healthy({ appInstances: [{ id: "webui-1-a", state: "running" }], holders: [{ pid: 4242, description: "python3 -m open_webui.main" }] });
  const result = diagnose(facts);
  assert.equal(result.problems, false, JSON.stringify(result.findings.filter((x) => x.severity !== "ok")));
  expectFinding(facts, "app-running", "info", /nothing to do/);
  expectFinding(facts, "database-in-use", "info", /kill 4242/);
  // The same app with a revision pending is a warning again.
  assert.equal(diagnose(atRev6({ appInstances: [{ id: "webui-1-a", state: "running" }] })).problems, true);
});

test("processes holding the SQLite file with a migration pending: warning naming pids, fix stops them", () => {
  const f = expectFinding(atRev6({ holders: [{ pid: 4242, description: "python3 -m open_webui.main" }] }), "database-in-use", "warning", /kill 4242/);
  assert.match(f.what, /pid 4242 \(python3 -m open_webui\.main\)/);
  assert.match(f.why, /refused/);
});

test("other PostgreSQL sessions with a migration pending: warning naming pids, fix uses pg_stat_activity", () => {
  const f = expectFinding(
    atRev6({ kind: "postgresql", holders: [{ pid: 777, description: "open-webui@10.0.0.5", state: "idle" }] }),
    "database-in-use",
    "warning",
    /pg_stat_activity.*pg_terminate_backend\(777\)/,
  );
  assert.match(f.what, /pid 777 \(open-webui@10\.0\.0\.5, idle\)/);
});

test("idle in transaction on PostgreSQL: warning, fix names pg_stat_activity and pg_blocking_pids", () => {
  const f = expectFinding(atRev6({ kind: "postgresql", idleInTransaction: 2 }), "idle-in-transaction", "warning", /pg_stat_activity/);
  expectFinding(healthy({ kind: "postgresql", idleInTransaction: 2 }), "idle-in-transaction", "info", /pg_stat_activity/);
  assert.match(f.fix, /pg_blocking_pids/);
  assert.match(f.why, /lock_timeout/);
  assert.match(f.what, /^2 sessions are idle in transaction$/);
  // SQLite has no such sessions: the fact is ignored there.
  assert.equal(
    diagnose(healthy({ idleInTransaction: 2 })).findings.some((x) => x.code === "idle-in-transaction"),
    false,
  );
});

test("free disk: error below one copy plus margin, warning below two copies", () => {
  const db = 1024 * MB;
  expectFinding(healthy({ databaseBytes: db, freeBytes: db + DISK_MARGIN_BYTES - 1 }), "disk-space-low", "error", /`backups\.dir`/);
  const tight = expectFinding(healthy({ databaseBytes: db, freeBytes: db + DISK_MARGIN_BYTES }), "disk-space-tight", "warning", /flotilla backups webui-1/);
  assert.match(tight.what, /1\.0 GiB database/);
  expectFinding(healthy({ databaseBytes: db, freeBytes: 2 * db - 1 }), "disk-space-tight", "warning", /`backups\.dir`/);
  assert.equal(find(diagnose(healthy({ databaseBytes: db, freeBytes: 2 * db })).findings, "disk-space-ok").severity, "ok");
});

test("no verified backup or an old one: info, fix is flotilla backup", () => {
  const none = healthy();
  delete none.lastVerifiedBackupAgeMs;
  expectFinding(none, "no-verified-backup", "info", /^`flotilla backup webui-1`$/);
  assert.equal(diagnose(none).problems, false);
  const old = expectFinding(healthy({ lastVerifiedBackupAgeMs: BACKUP_MAX_AGE_MS + 3 * 24 * 3_600_000 }), "backup-old", "info", /flotilla backup webui-1/);
  assert.match(old.what, /4 days old/);
});

test("interrupted operations: error, fix is flotilla recover with restore", () => {
  const f = expectFinding(healthy({ interruptedOperations: ["op-17"] }), "interrupted-operation", "error", /flotilla recover webui-1 op-17 --action restore/);
  assert.match(f.what, /op-17/);
});

test("SQLite on a network filesystem: warning, fix moves it to local disk", () => {
  expectFinding(healthy({ onNetworkFilesystem: true }), "network-filesystem", "warning", /local disk/);
  assert.equal(
    diagnose(healthy({ kind: "postgresql", onNetworkFilesystem: true })).findings.some((x) => x.code === "network-filesystem"),
    false,
  );
});

test("WAL mode: info only, backups handle it", () => {
  const facts = healthy({ sqliteJournalMode: "wal" });
  expectFinding(facts, "sqlite-wal", "info", /flotilla backup webui-1/);
  assert.equal(diagnose(facts).problems, false);
});

test("any stamp advice carries a legitimate reason and never targets head blindly", () => {
  const scenarios: DiagnoseFacts[] = [
    healthy({ current: ["9f0c9cd09105"] }),
    healthy({ current: null }),
    healthy({ current: null, hasMigrateHistory: true }),
    healthy({ alembicTmpTables: ["_alembic_tmp_user"] }),
    atRev6({ preexistingObjects: [{ revision: "0a7b8c9d0e1f", object: "shared_chat", kind: "table" }] }),
    healthy({ interruptedOperations: ["op-1"], integrity: { ok: false, detail: "bad" } }),
  ];
  for (const facts of scenarios) {
    for (const x of diagnose(facts).findings) {
      for (const m of x.fix.matchAll(/flotilla stamp [^`]*/g)) {
        assert.match(m[0], /--reason (created-with-create-all|imported-backup|applied-by-hand)$/, `${x.code}: ${m[0]}`);
        assert.doesNotMatch(m[0], / head /);
      }
    }
  }
});

function row(over: Partial<JournalRow>): JournalRow {
  return {
    id: "op",
    kind: "migrate",
    state: "succeeded",
    startedAt: "2026-11-26T03:00:00.000Z",
    errorCode: "",
    message: "",
    revisionBefore: [],
    revisionAfter: [],
    toRevision: "",
    backupId: "",
    ...over,
  };
}

test("lastFailure picks the newest failed or interrupted operation from the journal and notes a later success that settled it", () => {
  assert.equal(lastFailure([row({ id: "a" }), row({ id: "b", state: "refused" })]), undefined);
  const rows = [
    row({ id: "op-3", kind: "backup", state: "succeeded" }),
    row({
      id: "op-2",
      state: "failed",
      errorCode: "MIGRATION_FAILED",
      revisionBefore: ["f6a5b4c3d2e1"],
      revisionAfter: ["0a7b8c9d0e1f"],
      toRevision: HEAD,
      backupId: "b-1",
    }),
    row({ id: "op-1", state: "interrupted" }),
  ];
  const last = lastFailure(rows);
  assert.equal(last?.id, "op-2");
  assert.equal(last?.supersededBy, undefined, "a backup does not settle a half-migrated database");
  const settled = lastFailure([row({ id: "op-4", kind: "restore", state: "succeeded" }), ...rows]);
  assert.deepEqual(settled?.supersededBy, { id: "op-4", kind: "restore" });
});

test("last failed migration that left the database between revisions: warning naming it, what it left and the restore of its backup", () => {
  const op = lastFailure([
    row({
      id: "op-2",
      state: "failed",
      errorCode: "MIGRATION_FAILED",
      message: "duplicate column",
      revisionBefore: ["f6a5b4c3d2e1"],
      revisionAfter: ["0a7b8c9d0e1f"],
      toRevision: HEAD,
      backupId: "b-1",
    }),
  ])!;
  const f = expectFinding(
    atRev6({ current: ["0a7b8c9d0e1f"], lastFailedOperation: op }),
    "last-failed-operation",
    "warning",
    /flotilla restore webui-1 b-1 --yes/,
  );
  assert.match(f.what, /migrate op-2 .*MIGRATION_FAILED: duplicate column/);
  assert.match(f.why, /left the database at 0a7b8c9d0e1f, not at its old revision f6a5b4c3d2e1/);
  assert.match(f.why, /backup b-1 holds the data from before/);
});

test("last failed migration that left nothing behind, or one settled since, is information and keeps diagnose at exit 0", () => {
  const restored = lastFailure([
    row({ id: "op-2", state: "failed", errorCode: "MIGRATION_FAILED", revisionBefore: [HEAD], revisionAfter: [HEAD], backupId: "b-1" }),
  ])!;
  const f = expectFinding(healthy({ lastFailedOperation: restored }), "last-failed-operation", "info", /nothing is left to repair/);
  assert.match(f.why, /left the database at its old revision 1b8c9d0e1f2a/);
  assert.equal(diagnose(healthy({ lastFailedOperation: restored })).problems, false);
  const settled = lastFailure([row({ id: "op-9", kind: "migrate" }), row({ id: "op-2", state: "failed", revisionBefore: ["x"], revisionAfter: ["y"] })])!;
  const s2 = expectFinding(healthy({ lastFailedOperation: settled }), "last-failed-operation", "info", /nothing to do/);
  assert.match(s2.why, /migrate op-9 succeeded since/);
});

test("an interrupted operation still holding the target is named with what it left behind in the interrupted finding", () => {
  const op = lastFailure([row({ id: "op-17", state: "interrupted", revisionBefore: ["f6a5b4c3d2e1"], toRevision: HEAD, backupId: "b-7" })])!;
  const facts = atRev6({ interruptedOperations: ["op-17"], lastFailedOperation: op });
  const f = expectFinding(facts, "interrupted-operation", "error", /flotilla recover webui-1 op-17 --action restore/);
  assert.match(f.why, /migrate op-17 started .* towards 1b8c9d0e1f2a from f6a5b4c3d2e1 after taking backup b-7/);
  assert.equal(
    diagnose(facts).findings.some((x) => x.code === "last-failed-operation"),
    false,
    "named once",
  );
});
