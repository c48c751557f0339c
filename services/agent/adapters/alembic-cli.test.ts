import assert from "node:assert/strict";
import { cpSync, existsSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { after, before, describe, it } from "node:test";
import { fileURLToPath } from "node:url";
import Database from "better-sqlite3";
import pg from "pg";
import { FlotillaError } from "../../common/errors.js";
import { NodeProcessRunner, type ProcessRunner, type RunOptions, type RunResult } from "../../common/process-runner.js";
import { createTestDatabase, type TestDatabase } from "../../../test/helpers/pg.js";
import { AlembicCli, type AlembicTarget } from "./alembic-cli.js";

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../../..");
const FIXTURE = path.join(ROOT, "test/fixtures/webui");
const SECRET = "fixture-secret-7f3a9c";
const REV = {
  r1: "a1f0c0de0001",
  r2: "b2e1d0c0ffee",
  r3: "c3d2e1f00d42",
  r4: "d4c3b2a1e5f6",
  r5: "e5f4a3b2c1d0",
  r6: "f6a5b4c3d2e1",
  r7: "0a7b8c9d0e1f",
  r8: "1b8c9d0e1f2a",
  branch: "9c9c9c9c9c9c",
} as const;

/** The real runner, counting and recording every process it starts. */
class CountingRunner implements ProcessRunner {
  readonly runs: RunOptions[] = [];
  private readonly inner = new NodeProcessRunner();
  run(options: RunOptions): Promise<RunResult> {
    this.runs.push(options);
    return this.inner.run(options);
  }
}

let tmp: string;
let dbSeq = 0;
const newDbUrl = (): string => `sqlite:///${path.join(tmp, `db${++dbSeq}.db`)}`;
const dbPath = (url: string): string => url.slice("sqlite:///".length);

function target(over: Partial<AlembicTarget> = {}): AlembicTarget {
  return { dir: FIXTURE, command: ["alembic"], env: { WEBUI_SECRET_KEY: SECRET }, databaseUrl: newDbUrl(), ...over };
}

function copyFixture(name: string): string {
  const dest = path.join(tmp, name);
  cpSync(FIXTURE, dest, { recursive: true, filter: (src) => path.basename(src) !== "__pycache__" });
  return dest;
}

async function rejects(p: Promise<unknown>, code: string): Promise<FlotillaError> {
  try {
    await p;
  } catch (e) {
    assert.ok(e instanceof FlotillaError, `expected FlotillaError, got ${String(e)}`);
    assert.equal(e.code, code, e.message);
    return e;
  }
  assert.fail(`expected a FlotillaError ${code}`);
}

before(() => {
  const versions = path.join(FIXTURE, "migrations/versions");
  assert.ok(existsSync(versions), "test/fixtures/webui is missing");
  assert.equal(readdirSync(versions).filter((f) => f.endsWith(".py")).length, 8);
  tmp = mkdtempSync(path.join(os.tmpdir(), "flotilla-alembic-cli-"));
});

after(() => {
  rmSync(tmp, { recursive: true, force: true });
});

describe("AlembicCli against the real fixture", () => {
  it("version() runs alembic --version", async () => {
    const runner = new CountingRunner();
    const v = await new AlembicCli(target(), runner).version();
    assert.match(v, /^1\.\d+\.\d+/);
    assert.deepEqual(runner.runs[0]!.argv, ["alembic", "--version"]);
  });

  it("graph(): 8 revisions, one head, from `alembic history` without -i; cached (no second process)", async () => {
    const runner = new CountingRunner();
    const cli = new AlembicCli(target(), runner);
    const g = await cli.graph();
    assert.equal(g.size, 8);
    assert.deepEqual(g.heads, [REV.r8]);
    assert.deepEqual(g.bases, [REV.r1]);
    assert.match(g.hash, /^[0-9a-f]{64}$/);
    assert.equal(runner.runs.length, 1);
    assert.deepEqual(runner.runs[0]!.argv, ["alembic", "history"]);
    const again = await cli.graph();
    assert.equal(again, g);
    assert.equal(runner.runs.length, 1, "a cached graph starts no process");
    // Concurrent callers share one run as well.
    const fresh = new CountingRunner();
    const cli2 = new AlembicCli(target(), fresh);
    const [a, b] = await Promise.all([cli2.graph(), cli2.graph()]);
    assert.equal(a, b);
    assert.equal(fresh.runs.length, 1);
  });

  it("graph() is recomputed when a revision file is added to the versions folder", async () => {
    const dir = copyFixture("added-rev");
    const runner = new CountingRunner();
    const cli = new AlembicCli(target({ dir }), runner);
    const before = await cli.graph();
    assert.equal(before.size, 8);
    writeFileSync(
      path.join(dir, "migrations/versions/2c9d0e1f2a3b_extra.py"),
      [
        '"""Extra revision added by the test',
        "",
        "Revision ID: 2c9d0e1f2a3b",
        `Revises: ${REV.r8}`,
        '"""',
        'revision = "2c9d0e1f2a3b"',
        `down_revision = "${REV.r8}"`,
        "branch_labels = None",
        "depends_on = None",
        "",
        "def upgrade():",
        "    pass",
        "",
        "def downgrade():",
        "    pass",
        "",
      ].join("\n"),
    );
    const afterAdd = await cli.graph();
    assert.equal(runner.runs.length, 2);
    assert.equal(afterAdd.size, 9);
    assert.deepEqual(afterAdd.heads, ["2c9d0e1f2a3b"]);
    assert.notEqual(afterAdd.hash, before.hash);
    await cli.graph();
    assert.equal(runner.runs.length, 2, "unchanged folder: cached again");
  });

  it("the child gets exactly target.env + DATABASE_URL + extraEnv, cwd = dir, stdin closed, secrets redacted", async () => {
    process.env["FLOTILLA_LEAK_CHECK"] = "must-not-leak";
    try {
      const dump =
        "import os, sys, json; print(json.dumps({'env': sorted(os.environ), 'cwd': os.getcwd(), 'stdin': sys.stdin.read(), " +
        "'secret': os.environ.get('WEBUI_SECRET_KEY'), 'argv': sys.argv[1:]}))";
      const t = target({ command: ["/usr/bin/python3", "-c", dump], env: { WEBUI_SECRET_KEY: SECRET, PYTHONPATH: "." } });
      const runner = new CountingRunner();
      const r = await new AlembicCli(t, runner).current({ extraEnv: { PGOPTIONS: "-c lock_timeout=5000" } });
      assert.equal(r.ok, true);
      const seen = JSON.parse(r.stdout) as { env: string[]; cwd: string; stdin: string; secret: string; argv: string[] };
      // The runner's minimal base (HOME only when the agent has one) plus exactly what the target asked for.
      const base = ["COLUMNS", "LANG", "PATH", "PYTHONUNBUFFERED", ...(process.env["HOME"] !== undefined ? ["HOME"] : [])];
      const expected = [...base, "DATABASE_URL", "PGOPTIONS", "PYTHONPATH", "WEBUI_SECRET_KEY"].sort();
      // Python itself may add LC_CTYPE under a C locale.
      assert.deepEqual(seen.env.filter((k) => k !== "LC_CTYPE").sort(), expected);
      assert.ok(!seen.env.includes("FLOTILLA_LEAK_CHECK"));
      assert.equal(seen.cwd, FIXTURE);
      assert.equal(seen.stdin, "");
      assert.deepEqual(seen.argv, ["current"]);
      assert.equal(seen.secret, "***", "the secret value is redacted from captured output");
      assert.ok(!r.stdout.includes(SECRET));
      assert.deepEqual(runner.runs[0]!.env, {
        WEBUI_SECRET_KEY: SECRET,
        PYTHONPATH: ".",
        PGOPTIONS: "-c lock_timeout=5000",
        DATABASE_URL: t.databaseUrl,
      });
      assert.ok(!runner.runs[0]!.argv.some((a) => a.includes(SECRET)));
    } finally {
      delete process.env["FLOTILLA_LEAK_CHECK"];
    }
  });

  it("upgrade to c3d2e1f00d42 streams three `Running upgrade` steps; current parses", async () => {
    const cli = new AlembicCli(target(), new CountingRunner());
    const fresh = await cli.current();
    assert.equal(fresh.ok, true);
    assert.deepEqual(fresh.revisions, []);
    const streamed: string[] = [];
    const r = await cli.upgrade(REV.r3, {
      onLine: (line, stream) => {
        if (stream === "stderr") streamed.push(line);
      },
    });
    assert.equal(r.ok, true, r.stderr);
    assert.equal(r.exitCode, 0);
    assert.equal(r.failure, undefined);
    assert.equal(streamed.filter((l) => l.includes("Running upgrade")).length, 3);
    assert.deepEqual(
      r.steps.map((s) => [s.direction, s.from.join(","), s.to]),
      [
        ["upgrade", "", REV.r1],
        ["upgrade", REV.r1, REV.r2],
        ["upgrade", REV.r2, REV.r3],
      ],
    );
    assert.deepEqual(r.argv, ["alembic", "upgrade", REV.r3]);
    const cur = await cli.current();
    assert.deepEqual(cur.revisions, [REV.r3]);
    // A unique prefix is resolved to the full id before alembic runs.
    const down = await cli.downgrade("b2e1");
    assert.equal(down.ok, true, down.stderr);
    assert.deepEqual(down.argv, ["alembic", "downgrade", REV.r2]);
    assert.deepEqual(
      down.steps.map((s) => [s.direction, s.to]),
      [["downgrade", REV.r2]],
    );
    const st = await cli.stamp("base");
    assert.deepEqual(
      st.steps.map((s) => [s.direction, s.from.join(","), s.to]),
      [["stamp", REV.r2, "base"]],
    );
    assert.deepEqual((await cli.current()).revisions, []);
  });

  it("missing WEBUI_SECRET_KEY → env failure (exit 1); graph() throws ALEMBIC_FAILED naming it", async () => {
    const cli = new AlembicCli(target({ env: {} }), new CountingRunner());
    const r = await cli.current();
    assert.equal(r.ok, false);
    assert.equal(r.exitCode, 1);
    assert.equal(r.failure?.kind, "env");
    assert.match(r.failure!.message, /Required environment variable not found/);
    assert.equal(r.failure?.changesMayBePartial, false);
    const env = await cli.checkEnv();
    assert.equal(env.failure?.kind, "env");
    const e = await rejects(cli.graph(), "ALEMBIC_FAILED");
    assert.match(e.message, /\(env\).*Required environment variable not found/);
  });

  it("a folder without alembic.ini → missing-config (exit 255)", async () => {
    const empty = mkdtempSync(path.join(tmp, "noini-"));
    const cli = new AlembicCli(target({ dir: empty }), new CountingRunner());
    const r = await cli.current();
    assert.equal(r.exitCode, 255);
    assert.equal(r.failure?.kind, "missing-config");
    assert.match(r.failure!.message, /^No config file 'alembic\.ini' found/);
    assert.equal(await cli.versionLocations(), null);
  });

  it("branch ini: two heads in the graph; upgrade head → multiple-heads; heads works", async () => {
    const runner = new CountingRunner();
    const cli = new AlembicCli(target({ iniFile: "alembic-branch.ini" }), runner);
    const loc = await cli.versionLocations();
    assert.deepEqual(loc?.dirs, [path.join(FIXTURE, "migrations/versions"), path.join(FIXTURE, "migrations/versions_branch")]);
    const g = await cli.graph();
    assert.equal(g.size, 9);
    assert.deepEqual([...g.heads].sort(), [REV.r8, REV.branch]);
    assert.deepEqual(g.branchpoints, [REV.r5]);
    assert.deepEqual(runner.runs[0]!.argv, ["alembic", "-c", "alembic-branch.ini", "history"]);
    assert.deepEqual((await cli.checkEnv()).heads.sort(), [REV.r8, REV.branch]);
    const r = await cli.upgrade("head");
    assert.equal(r.exitCode, 255);
    assert.equal(r.failure?.kind, "multiple-heads");
    assert.equal(r.failure?.changesMayBePartial, false);
    const ok = await cli.upgrade("heads");
    assert.equal(ok.ok, true, ok.stderr);
    assert.equal(ok.steps.length, 9);
    assert.deepEqual((await cli.current()).revisions.sort(), [REV.r8, REV.branch]);
  });

  it("FIXTURE_FAIL_AT leaves a partial apply on SQLite; the retry is a duplicate object", async () => {
    const cli = new AlembicCli(target(), new CountingRunner());
    assert.equal((await cli.upgrade(REV.r6)).ok, true);
    const failed = await cli.upgrade("head", { extraEnv: { FIXTURE_FAIL_AT: REV.r7 } });
    assert.equal(failed.exitCode, 1);
    assert.equal(failed.failure?.kind, "partial-apply");
    assert.equal(failed.failure?.changesMayBePartial, true);
    assert.match(failed.failure!.message, /^RuntimeError: simulated failure after DDL in revision 0a7b8c9d0e1f/);
    assert.equal(failed.steps.at(-1)?.to, REV.r7);
    assert.deepEqual((await cli.current()).revisions, [REV.r6]);
    const retry = await cli.upgrade("head");
    assert.equal(retry.failure?.kind, "duplicate-object");
    assert.match(retry.failure!.message, /duplicate column name: archived_at/);
    assert.equal(retry.failure?.changesMayBePartial, true);
  });

  it("offline SQL for revisions 3:5 works; head --sql is offline-unsupported", async () => {
    const runner = new CountingRunner();
    const t = target();
    const cli = new AlembicCli(t, runner);
    const r = await cli.offlineSql("c3d2", REV.r5);
    assert.equal(r.ok, true, r.stderr);
    assert.deepEqual(r.argv, ["alembic", "upgrade", `${REV.r3}:${REV.r5}`, "--sql"]);
    assert.match(r.stdout, /ALTER TABLE chat ADD COLUMN pinned BOOLEAN;/);
    assert.match(r.stdout, /CREATE INDEX message_chat_created_idx ON message \(chat_id, created_at\);/);
    assert.deepEqual(
      r.steps.map((s) => s.to),
      [REV.r4, REV.r5],
    );
    assert.equal(existsSync(dbPath(t.databaseUrl)), false, "offline mode never touches the database");
    const head = await cli.offlineSql(null, "head");
    assert.equal(head.exitCode, 255);
    assert.equal(head.failure?.kind, "offline-unsupported");
    assert.match(head.stdout, /CREATE TABLE alembic_version/);
    assert.deepEqual(head.argv, ["alembic", "upgrade", "head", "--sql"]);
  });

  it("an unknown revision in alembic_version → unknown-revision; stamp --purge recovers", async () => {
    const t = target();
    const cli = new AlembicCli(t, new CountingRunner());
    assert.equal((await cli.upgrade(REV.r3)).ok, true);
    const db = new Database(dbPath(t.databaseUrl));
    db.prepare("UPDATE alembic_version SET version_num = '9f0c9cd09105'").run();
    db.close();
    const cur = await cli.current();
    assert.equal(cur.failure?.kind, "unknown-revision");
    assert.equal(cur.failure?.message, "Can't locate revision identified by '9f0c9cd09105'");
    assert.deepEqual(cur.revisions, []);
    assert.equal((await cli.upgrade("head")).failure?.kind, "unknown-revision");
    assert.equal((await cli.stamp(REV.r3)).failure?.kind, "unknown-revision");
    const purged = await cli.stamp(REV.r3, { purge: true });
    assert.equal(purged.ok, true, purged.stderr);
    assert.deepEqual(purged.argv, ["alembic", "stamp", "--purge", REV.r3]);
    assert.deepEqual((await cli.current()).revisions, [REV.r3]);
  });

  it("invalid revision arguments are rejected before any process starts", async () => {
    const runner = new CountingRunner();
    const cli = new AlembicCli(target(), runner);
    const bad = ["abc; rm -rf /", "--sql", "-1", "+1", "", "head; ls", "../x", "abc", "a".repeat(41), "heads:x", "c3d2e1f00d42\n"];
    for (const arg of bad) {
      await rejects(cli.upgrade(arg), "INVALID_ARGUMENT");
      await rejects(cli.downgrade(arg), "INVALID_ARGUMENT");
      await rejects(cli.stamp(arg), "INVALID_ARGUMENT");
      await rejects(cli.offlineSql(arg, "head"), "INVALID_ARGUMENT");
      await rejects(cli.offlineSql(null, arg), "INVALID_ARGUMENT");
    }
    await rejects(cli.downgrade("head"), "INVALID_ARGUMENT");
    await rejects(cli.upgrade("base"), "INVALID_ARGUMENT");
    await rejects(cli.current({ extraEnv: { "BAD NAME": "x" } }), "INVALID_ARGUMENT");
    assert.equal(runner.runs.length, 0, "no process was started");
    const e = await rejects(cli.upgrade("abc; rm -rf /"), "INVALID_ARGUMENT");
    assert.match(e.message, /not allowed: use 'head', 'heads', a revision id/);
    // Well-formed but unknown: only `alembic history` runs, never the upgrade.
    await rejects(cli.upgrade("deadbeef0000"), "UNKNOWN_REVISION");
    assert.deepEqual(
      runner.runs.map((r) => r.argv.at(-1)),
      ["history"],
    );
  });

  it("timeout and cancel of a long data migration are classified", async () => {
    const t = target();
    const cli = new AlembicCli(t, new CountingRunner());
    assert.equal((await cli.upgrade(REV.r3)).ok, true);
    const db = new Database(dbPath(t.databaseUrl));
    db.prepare("INSERT INTO chat (id, user_id, title, chat, created_at, updated_at) VALUES ('c1', 'u1', 't', '{\"tags\": [\"Work\"]}', 0, 0)").run();
    db.close();
    const slow = { FIXTURE_SLEEP_MS: "120000" };
    // Revision 4 sleeps 120 s after its first batch; the deadline cuts it short.
    const timedOut = await cli.upgrade(REV.r4, { extraEnv: slow, timeoutMs: 6000 });
    assert.equal(timedOut.ok, false);
    assert.equal(timedOut.exitCode, null);
    assert.equal(timedOut.failure?.kind, "timeout");
    assert.equal(timedOut.failure?.changesMayBePartial, true, "SQLite: a killed step may leave DDL behind");

    const t2 = target();
    const cli2 = new AlembicCli(t2, new CountingRunner());
    assert.equal((await cli2.upgrade(REV.r3)).ok, true);
    const db2 = new Database(dbPath(t2.databaseUrl));
    db2.prepare("INSERT INTO chat (id, user_id, title, chat, created_at, updated_at) VALUES ('c1', 'u1', 't', '{}', 0, 0)").run();
    db2.close();
    const ac = new AbortController();
    const cancelled = await cli2.upgrade(REV.r4, {
      extraEnv: slow,
      signal: ac.signal,
      onLine: (line) => {
        if (line.includes("backfill: 0/1 rows")) ac.abort();
      },
    });
    assert.equal(cancelled.failure?.kind, "killed");
    assert.deepEqual(
      cancelled.steps.map((s) => s.to),
      [REV.r4],
    );
  });
});

describe("AlembicCli on PostgreSQL", () => {
  let pgdb: TestDatabase;
  before(async () => {
    pgdb = await createTestDatabase("alembic_cli");
  });
  after(async () => {
    await pgdb.drop();
  });

  it("PGOPTIONS lock_timeout via extraEnv turns a blocked ALTER into a lock failure", async () => {
    const cli = new AlembicCli(target({ databaseUrl: pgdb.url }), new CountingRunner());
    const up = await cli.upgrade(REV.r5);
    assert.equal(up.ok, true, up.stderr);
    const blocker = new pg.Client({ connectionString: pgdb.url });
    await blocker.connect();
    try {
      await blocker.query("BEGIN");
      await blocker.query('SELECT count(*) FROM "user"');
      const r = await cli.upgrade(REV.r6, { extraEnv: { PGOPTIONS: "-c lock_timeout=1000" } });
      assert.equal(r.failure?.kind, "lock");
      assert.match(r.failure!.message, /LockNotAvailable/);
      assert.equal(r.failure?.changesMayBePartial, false, "transactional DDL rolled back");
    } finally {
      await blocker.query("ROLLBACK").catch(() => undefined);
      await blocker.end();
    }
    assert.deepEqual((await cli.current()).revisions, [REV.r5]);
  });
});
