import { test } from "node:test";
import assert from "node:assert/strict";
import { diagnose, DRILL_MAX_AGE_MS, type DiagnoseFacts } from "./diagnose.js";

const DAY = 86_400_000;
const base: DiagnoseFacts = {
  targetId: "w1",
  kind: "sqlite",
  alembicIniFound: true,
  alembicDir: "/app",
  secretConfigured: true,
  databaseExists: true,
  heads: ["b"],
  branchpoints: [],
  knownRevisions: ["a", "b"],
  current: ["b"],
  pending: [],
  tables: ["user"],
  alembicTmpTables: [],
  hasMigrateHistory: false,
  preexistingObjects: [],
  integrity: { ok: true, detail: "ok" },
  holders: [],
  idleInTransaction: 0,
  appInstances: [],
  databaseBytes: 1000,
  freeBytes: 1e12,
  lastVerifiedBackupAgeMs: 1000,
  interruptedOperations: [],
};
const codes = (f: DiagnoseFacts): string[] =>
  diagnose(f)
    .findings.filter((x) => x.code.startsWith("drill"))
    .map((x) => `${x.code}:${x.severity}`);

test("a target with backups older than the limit and no passing drill is a warning that names the fix", () => {
  const f = { ...base, drill: { lastFailed: false, oldestVerifiedBackupAgeMs: DRILL_MAX_AGE_MS + DAY } };
  assert.deepEqual(codes(f), ["drill-missing:warning"]);
  assert.equal(diagnose(f).problems, true);
  assert.match(diagnose(f).findings.find((x) => x.code === "drill-missing")!.fix, /flotilla drill w1/);
  const stale = { ...base, drill: { lastFailed: false, lastPassAgeMs: DRILL_MAX_AGE_MS + DAY, oldestVerifiedBackupAgeMs: 90 * DAY } };
  assert.deepEqual(codes(stale), ["drill-missing:warning"]);
});

test("a recent passing drill is ok; a young target is not nagged; a failed last drill is a warning", () => {
  assert.deepEqual(codes({ ...base, drill: { lastFailed: false, lastPassAgeMs: 2 * DAY, oldestVerifiedBackupAgeMs: 90 * DAY } }), ["drill-recent:ok"]);
  assert.deepEqual(codes({ ...base, drill: { lastFailed: false, oldestVerifiedBackupAgeMs: 3 * DAY } }), []);
  assert.equal(diagnose({ ...base, drill: { lastFailed: false, oldestVerifiedBackupAgeMs: 3 * DAY } }).problems, false);
  assert.deepEqual(codes({ ...base, drill: { lastFailed: true, lastPassAgeMs: 9 * DAY, oldestVerifiedBackupAgeMs: 90 * DAY } }), ["drill-failed:warning"]);
});
