import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { revisionTimeline, splitOfflineSql } from "./alembic-output.js";

// stderr of `alembic upgrade 0a7b8c9d0e1f` from c3d2e1f00d42 on PostgreSQL 15, alembic 1.8.1, recorded
// against test/fixtures/webui with FIXTURE_FAIL_AT=f6a5b4c3d2e1 (traceback frames elided as "  …").
const FAILED_18 = `INFO  [alembic.runtime.migration] Context impl PostgresqlImpl.
INFO  [alembic.runtime.migration] Will assume transactional DDL.
INFO  [alembic.runtime.migration] Running upgrade c3d2e1f00d42 -> d4c3b2a1e5f6, Add chat pinned and meta, backfill tags from chat JSON
INFO  [fixapp.migrate] chat meta backfill: 0/200 rows
INFO  [fixapp.migrate] chat meta backfill: 200/200 rows
INFO  [alembic.runtime.migration] Running upgrade d4c3b2a1e5f6 -> e5f4a3b2c1d0, Add message indexes
INFO  [alembic.runtime.migration] Running upgrade e5f4a3b2c1d0 -> f6a5b4c3d2e1, Make user email required and unique
Traceback (most recent call last):
  …
RuntimeError: simulated failure after DDL in revision f6a5b4c3d2e1 (FIXTURE_FAIL_AT=f6a5b4c3d2e1)`.split("\n");

// Newer shapes of the same line: alembic 1.13 under a timestamped logging config (as apps that configure
// logging themselves print it), and a loguru-style handler that Open WebUI-like apps install.
const NEWER = [
  "2025-03-02 10:00:00,101 INFO  [alembic.runtime.migration] Context impl SQLiteImpl.",
  "2025-03-02 10:00:00,150 INFO  [alembic.runtime.migration] Running upgrade 1b8c9d0e1f2a -> 2c1d0e9f8a7b, Add folder table",
  "2025-03-02 10:00:00.300 | INFO     | alembic.runtime.migration:run_migrations:622 - Running upgrade 2c1d0e9f8a7b -> 3d2e1f0a9b8c, Backfill chat_message",
];

/** Feeds lines at the given clock readings. */
function at(lines: readonly string[], times: readonly number[]): { line: string; atMs: number }[] {
  return lines.map((line, i) => ({ line, atMs: times[i] ?? times.at(-1)! }));
}

describe("revisionTimeline", () => {
  it("times each revision from its Running line to the next, the last one to the process end", () => {
    const ok = FAILED_18.slice(0, 6);
    const t = revisionTimeline(at(ok, [0, 10, 100, 150, 400, 1000]), { atMs: 1300, ok: true });
    assert.equal(t.failedAt, null);
    assert.deepEqual(
      t.done.map((s) => [s.to, s.durationMs]),
      [
        ["d4c3b2a1e5f6", 900],
        ["e5f4a3b2c1d0", 300],
      ],
    );
    assert.deepEqual(t.done[1]!.from, ["d4c3b2a1e5f6"]);
    assert.equal(t.done[0]!.message, "Add chat pinned and meta, backfill tags from chat JSON");
  });

  it("names the revision that was running when the run failed", () => {
    const t = revisionTimeline(at(FAILED_18, [0, 1, 10, 20, 30, 40, 50, 51, 52, 53]), { atMs: 80, ok: false });
    assert.deepEqual(
      t.done.map((s) => s.to),
      ["d4c3b2a1e5f6", "e5f4a3b2c1d0"],
    );
    assert.equal(t.failedAt?.to, "f6a5b4c3d2e1");
    assert.equal(t.failedAt?.durationMs, 30);
  });

  it("a failure before any revision started has no failure point", () => {
    const t = revisionTimeline(
      at(["Traceback (most recent call last):", "psycopg2.errors.LockNotAvailable: canceling statement due to lock timeout"], [0, 1]),
      { atMs: 2, ok: false },
    );
    assert.deepEqual(t, { done: [], failedAt: null });
  });

  it("reads newer and app-configured log formats", () => {
    const t = revisionTimeline(at(NEWER, [0, 150, 300]), { atMs: 1000, ok: true });
    assert.deepEqual(
      t.done.map((s) => [s.from.join(","), s.to, s.durationMs]),
      [
        ["1b8c9d0e1f2a", "2c1d0e9f8a7b", 150],
        ["2c1d0e9f8a7b", "3d2e1f0a9b8c", 700],
      ],
    );
    assert.equal(t.done[1]!.message, "Backfill chat_message");
  });
});

// stdout of `alembic upgrade c3d2e1f00d42:0a7b8c9d0e1f --sql` for PostgreSQL (alembic 1.8.1).
const OFFLINE_PG = `BEGIN;

-- Running upgrade c3d2e1f00d42 -> d4c3b2a1e5f6

ALTER TABLE chat ADD COLUMN pinned BOOLEAN;

ALTER TABLE chat ADD COLUMN meta JSON DEFAULT '{}' NOT NULL;

UPDATE alembic_version SET version_num='d4c3b2a1e5f6' WHERE alembic_version.version_num = 'c3d2e1f00d42';

-- Running upgrade d4c3b2a1e5f6 -> e5f4a3b2c1d0

CREATE INDEX message_chat_created_idx ON message (chat_id, created_at);

UPDATE alembic_version SET version_num='e5f4a3b2c1d0' WHERE alembic_version.version_num = 'd4c3b2a1e5f6';

COMMIT;

`;

// The same for SQLite, where revision f6a5b4c3d2e1's batch operation stops offline rendering (exit 255).
const OFFLINE_SQLITE_STOPPED = `-- Running upgrade d4c3b2a1e5f6 -> e5f4a3b2c1d0

CREATE INDEX message_chat_created_idx ON message (chat_id, created_at);

UPDATE alembic_version SET version_num='e5f4a3b2c1d0' WHERE alembic_version.version_num = 'd4c3b2a1e5f6';

-- Running upgrade e5f4a3b2c1d0 -> f6a5b4c3d2e1

`;

describe("splitOfflineSql", () => {
  it("cuts offline SQL into one piece per revision, without the transaction wrapper", () => {
    const s = splitOfflineSql(OFFLINE_PG);
    assert.equal(s.preamble, "BEGIN;");
    assert.deepEqual(
      s.revisions.map((r) => r.to),
      ["d4c3b2a1e5f6", "e5f4a3b2c1d0"],
    );
    assert.match(s.revisions[0]!.sql, /^ALTER TABLE chat ADD COLUMN pinned BOOLEAN;[\s\S]*version_num='d4c3b2a1e5f6'/);
    assert.doesNotMatch(s.revisions[0]!.sql, /message_chat_created_idx/);
    assert.doesNotMatch(s.revisions[1]!.sql, /COMMIT/);
    assert.match(s.revisions[1]!.sql, /CREATE INDEX message_chat_created_idx/);
  });

  it("keeps every revision before the one where rendering stopped", () => {
    const s = splitOfflineSql(OFFLINE_SQLITE_STOPPED);
    assert.deepEqual(
      s.revisions.map((r) => [r.to, r.sql === ""]),
      [
        ["e5f4a3b2c1d0", false],
        ["f6a5b4c3d2e1", true],
      ],
    );
  });
});
