// PostgresDatabase against the real server (FLOTILLA_TEST_PG_URL): one database and one login role per run,
// both dropped at the end. The adapter connects as that role with a canary password. The server uses trust auth,
// so the password is never checked, but every path that carries it (PGPASSFILE, alembicUrl) is exercised and the
// canary is looked for in argv, child environments, /proc, results, progress lines and error messages.
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { createHash, randomBytes } from "node:crypto";
import { existsSync, readdirSync, readFileSync, statSync } from "node:fs";
import { copyFile, mkdir, mkdtemp, open, readdir, rm, statfs, truncate, writeFile } from "node:fs/promises";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { after, before, describe, it } from "node:test";
import pg from "pg";
import { FlotillaError } from "../../common/errors.js";
import { NodeProcessRunner, type ProcessRunner, type RunOptions, type RunResult } from "../../common/process-runner.js";
import type { BackupArtifact, ProgressFn } from "../core/ports.js";
import { createTestDatabase, urlForDatabase, type TestDatabase } from "../../../test/helpers/pg.js";
import { parsePgUrl } from "./pg-url.js";
import { PostgresDatabase } from "./postgres-database.js";

const CANARY = "canary-Pw-9f3k@:x";
const CANARY_FORMS = [CANARY, encodeURIComponent(CANARY), "canary-Pw-9f3k"];

/** Wraps the real runner and records every call (argv and env) for the leak checks. */
class RecordingRunner implements ProcessRunner {
  readonly calls: RunOptions[] = [];
  private readonly inner = new NodeProcessRunner();
  run(options: RunOptions): Promise<RunResult> {
    this.calls.push({ ...options, argv: [...options.argv], ...(options.env ? { env: { ...options.env } } : {}) });
    return this.inner.run(options);
  }
}

function assertNoCanary(text: string, where: string): void {
  for (const form of CANARY_FORMS) assert.ok(!text.includes(form), `canary found in ${where}: ${text.slice(0, 300)}`);
}

const progressLines: string[] = [];
const progress: ProgressFn = (p) => {
  progressLines.push(p.line);
};

async function expectError(promise: Promise<unknown>, code: string): Promise<FlotillaError> {
  try {
    await promise;
  } catch (err) {
    assert.ok(err instanceof FlotillaError, `expected FlotillaError, got ${String(err)}`);
    assert.equal(err.code, code, err.message);
    assertNoCanary(err.message, "error message");
    return err;
  }
  assert.fail(`expected FlotillaError ${code}`);
}

function sha256Of(path: string): string {
  return createHash("sha256").update(readFileSync(path)).digest("hex");
}

async function waitFor<T>(what: string, fn: () => T | undefined | Promise<T | undefined>, timeoutMs = 20_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await fn();
    if (v !== undefined) return v;
    if (Date.now() > deadline) assert.fail(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

/** The real pg_dump process working on `database` (found through /proc/<pid>/environ), if any. */
function findPgDump(database: string): { pid: number; cmdline: string; environ: string } | undefined {
  for (const ent of readdirSync("/proc")) {
    if (!/^\d+$/.test(ent)) continue;
    try {
      const argv = readFileSync(`/proc/${ent}/cmdline`, "latin1").split("\0");
      // Debian's /usr/bin/pg_dump is a wrapper script that execs the real binary in place.
      if (!(argv[0] ?? "").endsWith("bin/pg_dump")) continue;
      const environ = readFileSync(`/proc/${ent}/environ`, "latin1");
      if (environ.split("\0").includes(`PGDATABASE=${database}`)) return { pid: Number(ent), cmdline: argv.join(" "), environ };
    } catch {
      // the process ended meanwhile
    }
  }
  return undefined;
}

async function closedPort(): Promise<number> {
  return new Promise((resolve) => {
    const srv = createServer();
    srv.listen(0, "127.0.0.1", () => {
      const port = (srv.address() as { port: number }).port;
      srv.close(() => resolve(port));
    });
  });
}

describe("PostgresDatabase (real PostgreSQL)", () => {
  const runner = new RecordingRunner();
  const role = `flotilla_canary_${randomBytes(4).toString("hex")}`;
  let testDb: TestDatabase;
  let dbName: string;
  let roleUrl: string;
  let db: PostgresDatabase;
  let workDir: string;
  let firstBackup: BackupArtifact;
  const artifacts: BackupArtifact[] = [];

  const admin = async <T>(fn: (c: pg.Client) => Promise<T>, database = "postgres"): Promise<T> => {
    const c = new pg.Client({ connectionString: urlForDatabase(database), application_name: "test-admin" });
    c.on("error", () => undefined);
    await c.connect();
    try {
      return await fn(c);
    } finally {
      await c.end();
    }
  };
  /** A session as the role, like an app instance would hold. */
  const session = async (applicationName: string, database = dbName): Promise<pg.Client> => {
    const u = new URL(roleUrl);
    u.pathname = `/${database}`;
    const c = new pg.Client({ connectionString: u.toString(), application_name: applicationName });
    c.on("error", () => undefined);
    await c.connect();
    return c;
  };
  const asRole = async <T>(fn: (c: pg.Client) => Promise<T>, database = dbName): Promise<T> => {
    const c = await session("test-seed", database);
    try {
      return await fn(c);
    } finally {
      await c.end();
    }
  };
  const databaseOid = (name: string): Promise<number | undefined> =>
    admin(async (c) => (await c.query<{ oid: number }>("SELECT oid::int AS oid FROM pg_database WHERE datname = $1", [name])).rows[0]?.oid);
  const leftovers = (): Promise<string[]> =>
    admin(async (c) =>
      (await c.query<{ datname: string }>("SELECT datname FROM pg_database WHERE starts_with(datname, $1) AND datname LIKE '%flotilla%'", [dbName])).rows.map(
        (r) => r.datname,
      ),
    );

  before(async () => {
    workDir = await mkdtemp(join(tmpdir(), "flotilla-pg-adapter-"));
    testDb = await createTestDatabase("pg_adapter");
    dbName = testDb.name;
    await admin(async (c) => {
      await c.query(`CREATE ROLE ${pg.escapeIdentifier(role)} LOGIN CREATEDB PASSWORD ${pg.escapeLiteral(CANARY)}`);
      await c.query(`ALTER DATABASE ${pg.escapeIdentifier(dbName)} OWNER TO ${pg.escapeIdentifier(role)}`);
    });
    const u = new URL(testDb.url);
    u.username = role;
    u.password = "";
    roleUrl = u.toString();
    await asRole(async (c) => {
      await c.query(`
        CREATE TABLE "user" (id serial PRIMARY KEY, email text NOT NULL, junk int, name text);
        ALTER TABLE "user" DROP COLUMN junk;
        CREATE UNIQUE INDEX user_email_key ON "user" (email);
        CREATE TABLE chat (id bigserial PRIMARY KEY, user_id int REFERENCES "user"(id), title text, body text);
        CREATE INDEX chat_user_id ON chat (user_id);
        INSERT INTO "user" (email, name) SELECT 'u' || g || '@example.org', 'user ' || g FROM generate_series(1, 500) g;
        INSERT INTO chat (user_id, title, body)
          SELECT 1 + g % 500, 'chat ' || g, repeat(md5(g::text), 8) FROM generate_series(1, 20000) g;
      `);
    });
    db = new PostgresDatabase({ url: roleUrl, password: CANARY, runner, scratchDir: join(workDir, "scratch") });
  });

  after(async () => {
    await admin(async (c) => {
      const names = (await c.query<{ datname: string }>("SELECT datname FROM pg_database WHERE starts_with(datname, $1)", [dbName])).rows;
      for (const { datname } of names) {
        await c.query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1", [datname]);
        await c.query(`DROP DATABASE IF EXISTS ${pg.escapeIdentifier(datname)}`);
      }
      await c.query(`DROP ROLE IF EXISTS ${pg.escapeIdentifier(role)}`);
    });
    await testDb.drop();
    await rm(workDir, { recursive: true, force: true });
  });

  it("constructs without I/O and shows the URL without the password", () => {
    const offline = new PostgresDatabase({ url: "postgresql://u@db.invalid:1/x", password: CANARY, runner, scratchDir: "/nonexistent" });
    assert.equal(offline.displayName, "postgresql://u@db.invalid:1/x");
    assert.equal(db.displayName, `postgresql://${role}@127.0.0.1:${new URL(roleUrl).port || 5432}/${dbName}`);
    assert.equal(db.kind, "postgresql");
  });

  it("alembicUrl carries the URL-encoded password, and only it does", () => {
    const url = db.alembicUrl();
    assert.ok(url.startsWith("postgresql://"));
    assert.ok(url.includes(encodeURIComponent(CANARY)));
    assert.equal(parsePgUrl(url).password, CANARY);
    assert.equal(parsePgUrl(url).database, dbName);
    assertNoCanary(db.displayName, "displayName");
  });

  it("exists() tells a present database from an absent one", async () => {
    assert.equal(await db.exists(), true);
    const missing = new PostgresDatabase({ url: urlForDatabase(`${dbName}_absent`), runner, scratchDir: workDir });
    assert.equal(await missing.exists(), false);
  });

  it("readRevisions() is null without alembic_version and lists the rows with it", async () => {
    assert.equal(await db.readRevisions(), null);
    await asRole((c) =>
      c.query("CREATE TABLE alembic_version (version_num varchar(32) NOT NULL PRIMARY KEY); INSERT INTO alembic_version VALUES ('1b8c9d0e1f2a')"),
    );
    assert.deepEqual(await db.readRevisions(), ["1b8c9d0e1f2a"]);
  });

  it("lists tables and columns of the current schema, and counts rows exactly", async () => {
    assert.deepEqual(await db.listTables(), ["alembic_version", "chat", "user"]);
    assert.deepEqual(await db.listColumns("user"), ["id", "email", "name"]);
    assert.deepEqual(await db.listColumns("chat"), ["id", "user_id", "title", "body"]);
    assert.deepEqual(await db.listColumns("no_such_table"), []);
    assert.deepEqual(await db.tableCounts(), { alembic_version: 1, chat: 20000, user: 500 });
  });

  it("schemaHash() is stable and changes with columns and indexes", async () => {
    const h1 = await db.schemaHash();
    assert.match(h1, /^[0-9a-f]{64}$/);
    assert.equal(await db.schemaHash(), h1);
    await asRole((c) => c.query("ALTER TABLE chat ADD COLUMN archived_at timestamptz"));
    const h2 = await db.schemaHash();
    assert.notEqual(h2, h1);
    await asRole((c) => c.query("CREATE INDEX chat_title ON chat (title)"));
    const h3 = await db.schemaHash();
    assert.notEqual(h3, h2);
    await asRole((c) => c.query("DROP INDEX chat_title; ALTER TABLE chat DROP COLUMN archived_at"));
    // Dropping a column leaves an attnum gap; positions are relative, so the hash is back to the first one.
    assert.equal(await db.schemaHash(), h1);
  });

  it("sizeBytes() is pg_database_size and freeBytes() is statfs of the directory", async () => {
    const size = await db.sizeBytes();
    const expected = await admin(async (c) => Number((await c.query<{ s: string }>("SELECT pg_database_size($1)::text AS s", [dbName])).rows[0]?.s));
    assert.ok(Math.abs(size - expected) < 1024 * 1024, `${size} vs ${expected}`);
    const s = await statfs(workDir);
    const free = await db.freeBytes(workDir);
    assert.ok(free > 0);
    assert.ok(Math.abs(free - Number(s.bavail) * Number(s.bsize)) < 64 * 1024 * 1024);
  });

  it("holders() reports other sessions with state, but not the agent's own", async () => {
    assert.deepEqual(await db.holders(), []);
    const app = await session("open-webui");
    const agent = await session("flotilla-agent-other");
    try {
      await app.query("BEGIN");
      await app.query("SELECT count(*) FROM chat");
      const me = (await app.query<{ pid: number; addr: string | null }>("SELECT pg_backend_pid() AS pid, host(inet_client_addr()) AS addr")).rows[0]!;
      const holders = await db.holders();
      assert.equal(holders.length, 1, JSON.stringify(holders));
      assert.equal(holders[0]!.pid, me.pid);
      assert.equal(holders[0]!.description, `open-webui @ ${me.addr ?? "local socket"} (${role})`);
      assert.equal(holders[0]!.state, "idle in transaction");
    } finally {
      await app.end();
      await agent.end();
    }
  });

  it("integrityCheck() reads every table and reports one it cannot read", async () => {
    const good = await db.integrityCheck();
    assert.equal(good.ok, true, good.detail);
    assert.match(good.detail, /read 3 tables, 20501 rows/);
    assert.match(good.detail, /amcheck not installed/);
    await admin((c) => c.query("CREATE TABLE admin_only (x int); INSERT INTO admin_only VALUES (1)"), dbName);
    try {
      const bad = await db.integrityCheck();
      assert.equal(bad.ok, false);
      assert.match(bad.detail, /reading table admin_only failed: permission denied/);
    } finally {
      await admin((c) => c.query("DROP TABLE admin_only"), dbName);
    }
  });

  it("integrityCheck() runs amcheck when installed (never installs it) and skips it when not permitted", async () => {
    const before = await admin(async (c) => (await c.query("SELECT 1 FROM pg_extension WHERE extname = 'amcheck'")).rowCount, dbName);
    assert.equal(before, 0);
    await db.integrityCheck();
    assert.equal(await admin(async (c) => (await c.query("SELECT 1 FROM pg_extension WHERE extname = 'amcheck'")).rowCount, dbName), 0);
    await admin((c) => c.query("CREATE EXTENSION amcheck"), dbName);
    try {
      const btrees = await admin(
        async (c) =>
          Number(
            (
              await c.query<{ n: string }>(
                `SELECT count(*)::text AS n FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_am am ON am.oid = c.relam
            WHERE c.relnamespace = 'public'::regnamespace AND am.amname = 'btree'`,
              )
            ).rows[0]?.n,
          ),
        dbName,
      );
      const asSuperuser = new PostgresDatabase({ url: testDb.url, runner, scratchDir: workDir });
      const r = await asSuperuser.integrityCheck();
      assert.equal(r.ok, true, r.detail);
      assert.match(r.detail, new RegExp(`amcheck checked ${btrees} btree indexes`));
      const asRole = await db.integrityCheck();
      assert.equal(asRole.ok, true, asRole.detail);
      assert.match(asRole.detail, /amcheck not permitted/);
    } finally {
      // Left installed, the dump would contain CREATE EXTENSION, which the role may not restore.
      await admin((c) => c.query("DROP EXTENSION amcheck"), dbName);
    }
  });

  it("backup() writes a 0600 pg_dump -Fc -Z1 artifact with matching sha256, counts, schema and revisions", async () => {
    const dir = join(workDir, "backups");
    await rm(dir, { recursive: true, force: true });
    await mkdir(dir);
    const dest = join(dir, "first.dump");
    const before = progressLines.length;
    firstBackup = await db.backup(dest, progress);
    artifacts.push(firstBackup);
    assert.equal(firstBackup.path, dest);
    assert.equal(firstBackup.sizeBytes, statSync(dest).size);
    assert.equal(firstBackup.sha256, sha256Of(dest));
    assert.deepEqual(firstBackup.tableCounts, { alembic_version: 1, chat: 20000, user: 500 });
    assert.equal(firstBackup.schemaHash, await db.schemaHash());
    assert.deepEqual(firstBackup.revisions, ["1b8c9d0e1f2a"]);
    assert.match(firstBackup.tool, /^pg_dump \d+\.\d+ -Fc -Z1$/);
    assert.equal(statSync(dest).mode & 0o777, 0o600);
    assert.deepEqual(await readdir(dir), ["first.dump"]); // no temporary file left
    assert.ok(progressLines.length > before);
    const list = spawnSync("pg_restore", ["--list", dest], { encoding: "utf8" });
    assert.equal(list.status, 0);
    assert.match(list.stdout, /TABLE DATA public chat/);
    const argv = runner.calls.filter((c) => c.argv[0] === "pg_dump" && c.argv.length > 2).at(-1)!.argv;
    assert.ok(argv.includes("-Fc") && argv.includes("-Z1") && argv.some((a) => a.startsWith("--snapshot=")), argv.join(" "));
    // The proof: pg_restore read the archive on its stdin while pg_dump wrote it, then --list read the final TOC.
    assert.equal(firstBackup.proof?.ok, true, firstBackup.proof?.detail);
    assert.equal(
      firstBackup.proof?.detail,
      "sha256 of the finished file recorded; full read ok (pg_restore -f /dev/null, while it was written); table of contents ok (pg_restore --list)",
    );
    const streamed = runner.calls.filter((c) => c.argv[0] === "pg_restore" && c.input !== undefined);
    assert.deepEqual(streamed.at(-1)?.argv, ["pg_restore", "--file=/dev/null"]);
  });

  it("backup() proves the finished file when the streamed read fails, and reports a file that does not read", async () => {
    const dir = join(workDir, "backups");
    // The streamed reader gets nothing (it stands for a stream that broke): the finished file is read in full instead.
    const brokenStream: ProcessRunner = {
      run: (o) =>
        runner.run(o.input !== undefined ? { ...o, argv: ["pg_restore", "--file=/dev/null", "/nonexistent.dump"], input: (async function* () {})() } : o),
    };
    const fallback = new PostgresDatabase({ url: roleUrl, password: CANARY, runner: brokenStream, scratchDir: join(workDir, "scratch") });
    const lines: string[] = [];
    const a = await fallback.backup(join(dir, "fallback.dump"), (p) => lines.push(p.line));
    assert.ok(
      lines.some((l) => /streamed read did not pass; reading the finished archive in full/.test(l)),
      lines.join("\n"),
    );
    assert.equal(a.proof?.ok, true, a.proof?.detail);
    assert.match(a.proof?.detail ?? "", /full read ok \(pg_restore -f \/dev\/null\); table of contents ok/);
    // Every full read fails (as a damaged archive would): the proof says so, and the backup is not called verified.
    const noRead: ProcessRunner = {
      run: (o) =>
        runner.run(
          o.argv[0] === "pg_restore" && o.argv.includes("--file=/dev/null") && !o.argv.includes("--list")
            ? { ...o, argv: ["pg_restore", "--file=/dev/null", "/nonexistent.dump"], input: (async function* () {})() }
            : o,
        ),
    };
    const failing = new PostgresDatabase({ url: roleUrl, password: CANARY, runner: noRead, scratchDir: join(workDir, "scratch") });
    const bad = await failing.backup(join(dir, "unread.dump"), () => undefined);
    assert.equal(bad.proof?.ok, false);
    assert.match(bad.proof?.detail ?? "", /^FAILED: full read failed \(pg_restore exited with code 1/);
    await rm(join(dir, "fallback.dump"));
    await rm(join(dir, "unread.dump"));
  });

  it("backup() never overwrites an existing destination", async () => {
    const dest = join(workDir, "backups", "exists.dump");
    await writeFile(dest, "precious");
    const err = await expectError(db.backup(dest, progress), "INVALID_ARGUMENT");
    assert.match(err.message, /already exists/);
    assert.equal(readFileSync(dest, "utf8"), "precious");
    await rm(dest);
  });

  it("backup() takes counts and dump from one snapshot; the password reaches pg_dump only through a 0600 PGPASSFILE", async () => {
    // An exclusive lock makes pg_dump wait (after the snapshot was exported) so the test can look at it and write meanwhile.
    const locker = await session("test-locker");
    const writer = await session("test-writer");
    await locker.query("BEGIN");
    await locker.query("LOCK TABLE chat IN ACCESS EXCLUSIVE MODE");
    let released = false;
    try {
      const dest = join(workDir, "backups", "snapshot.dump");
      const running = db.backup(dest, progress);
      running.catch(() => undefined);
      const proc = await waitFor("pg_dump in /proc", () => findPgDump(dbName));
      assertNoCanary(proc.cmdline, `/proc/${proc.pid}/cmdline`);
      assertNoCanary(proc.environ, `/proc/${proc.pid}/environ`);
      assert.ok(!proc.cmdline.includes("postgresql://") && !proc.cmdline.includes(dbName), proc.cmdline);
      const env = proc.environ.split("\0");
      assert.ok(!env.some((e) => e.startsWith("PGPASSWORD=")));
      const passfile = env.find((e) => e.startsWith("PGPASSFILE="))?.slice("PGPASSFILE=".length);
      assert.ok(passfile !== undefined, "PGPASSFILE set for pg_dump");
      assert.equal(statSync(passfile).mode & 0o777, 0o600);
      assert.equal(statSync(dirname(passfile)).mode & 0o777, 0o700);
      assert.equal(readFileSync(passfile, "utf8"), `*:*:*:${role}:canary-Pw-9f3k@\\:x\n`);

      // pg_dump is past its snapshot import and waiting for the lock: rows committed now must be in neither the counts nor the dump.
      await waitFor("pg_dump waiting for the lock", () =>
        admin(async (c) =>
          (
            await c.query("SELECT 1 FROM pg_stat_activity WHERE datname = $1 AND application_name = 'flotilla-agent pg_dump' AND wait_event_type = 'Lock'", [
              dbName,
            ])
          ).rowCount
            ? true
            : undefined,
        ),
      );
      await writer.query("INSERT INTO \"user\" (email, name) SELECT 'late' || g || '@example.org', 'late' FROM generate_series(1, 7) g");
      await locker.query("COMMIT");
      released = true;
      const art = await running;
      artifacts.push(art);
      assert.equal(art.tableCounts.user, 500);
      assert.equal((await db.tableCounts()).user, 507);
      assert.ok(!existsSync(passfile), "PGPASSFILE removed after the run");
      const deep = await db.verifyBackup(art, progress, undefined, { deep: true });
      assert.equal(deep.ok, true, deep.detail); // the dump holds exactly the counted rows
    } finally {
      if (!released) await locker.query("ROLLBACK").catch(() => undefined);
      await locker.end();
      await writer.query("DELETE FROM \"user\" WHERE name = 'late'");
      await writer.end();
    }
  });

  it("backup() cancelled mid-dump throws CANCELLED and leaves no file behind", async () => {
    const locker = await session("test-locker");
    await locker.query("BEGIN");
    await locker.query("LOCK TABLE chat IN ACCESS EXCLUSIVE MODE");
    const dir = join(workDir, "cancel");
    await mkdir(dir, { recursive: true });
    try {
      const ac = new AbortController();
      const running = db.backup(join(dir, "cancelled.dump"), progress, ac.signal);
      running.catch(() => undefined);
      await waitFor("pg_dump in /proc", () => findPgDump(dbName));
      ac.abort();
      await expectError(running, "CANCELLED");
      assert.deepEqual(await readdir(dir), []);
    } finally {
      await locker.query("ROLLBACK").catch(() => undefined);
      await locker.end();
    }
    await waitFor("pg_dump gone", () => (findPgDump(dbName) === undefined ? true : undefined));
  });

  it("verifyBackup() passes a good archive: sha256 and a full pg_restore read", async () => {
    const r = await db.verifyBackup(firstBackup, progress);
    assert.equal(r.ok, true, r.detail);
    assert.match(r.detail, /sha256 ok/);
    assert.match(r.detail, /full read ok/);
    assert.ok(runner.calls.some((c) => c.argv[0] === "pg_restore" && c.argv.includes("--file=/dev/null")));
  });

  it("verifyBackup() fails on a sha256 or size mismatch", async () => {
    const wrongSha = await db.verifyBackup({ ...firstBackup, sha256: "0".repeat(64) }, progress);
    assert.equal(wrongSha.ok, false);
    assert.match(wrongSha.detail, /sha256 does not match/);
    const wrongSize = await db.verifyBackup({ ...firstBackup, sizeBytes: firstBackup.sizeBytes + 1 }, progress);
    assert.equal(wrongSize.ok, false);
    const missing = await db.verifyBackup({ ...firstBackup, path: join(workDir, "nope.dump") }, progress);
    assert.equal(missing.ok, false);
  });

  it("verifyBackup() fails an archive with 4 KiB overwritten in the middle that pg_restore --list accepts", async () => {
    const bad = join(workDir, "backups", "corrupt.dump");
    await copyFile(firstBackup.path, bad);
    const fh = await open(bad, "r+");
    await fh.write(randomBytes(4096), 0, 4096, Math.floor(firstBackup.sizeBytes / 2));
    await fh.close();
    // The premise: the table of contents still reads fine.
    assert.equal(spawnSync("pg_restore", ["--list", bad]).status, 0);
    const sameSize = { ...firstBackup, path: bad };
    const shaCaught = await db.verifyBackup(sameSize, progress);
    assert.equal(shaCaught.ok, false);
    assert.match(shaCaught.detail, /sha256/);
    // As if the corruption had happened before hashing: only the full read can catch it.
    const r = await db.verifyBackup({ ...sameSize, sha256: sha256Of(bad) }, progress);
    assert.equal(r.ok, false);
    assert.match(r.detail, /sha256 ok; full read failed/);
    await expectError(db.restore({ ...sameSize, sha256: sha256Of(bad) }, progress), "VERIFY_FAILED");
  });

  it("verifyBackup() fails an archive truncated to 75% that pg_restore --list accepts", async () => {
    const bad = join(workDir, "backups", "truncated.dump");
    await copyFile(firstBackup.path, bad);
    const size = Math.floor(firstBackup.sizeBytes * 0.75);
    await truncate(bad, size);
    assert.equal(spawnSync("pg_restore", ["--list", bad]).status, 0);
    const r = await db.verifyBackup({ ...firstBackup, path: bad, sizeBytes: size, sha256: sha256Of(bad) }, progress);
    assert.equal(r.ok, false);
    assert.match(r.detail, /full read failed/);
  });

  it("verifyBackup({ deep: true }) restores into a scratch database, compares counts, and cleans up", async () => {
    const ok = await db.verifyBackup(firstBackup, progress, undefined, { deep: true });
    assert.equal(ok.ok, true, ok.detail);
    assert.match(ok.detail, /scratch restore matches/);
    const lying = { ...firstBackup, tableCounts: { ...firstBackup.tableCounts, chat: 20001 } };
    const r = await db.verifyBackup(lying, progress, undefined, { deep: true });
    assert.equal(r.ok, false);
    assert.match(r.detail, /table chat has 20000 rows, expected 20001/);
    assert.deepEqual(await leftovers(), []);
  });

  it("restore() refuses with APP_STILL_RUNNING while another session is connected, changing nothing", async () => {
    const oid = await databaseOid(dbName);
    const app = await session("open-webui");
    try {
      const err = await expectError(db.restore(firstBackup, progress), "APP_STILL_RUNNING");
      assert.match(err.message, /open-webui/);
    } finally {
      await app.end();
    }
    assert.equal(await databaseOid(dbName), oid);
    assert.deepEqual(await leftovers(), []);
  });

  it("restore() leaves the original untouched when the restored copy does not match", async () => {
    await asRole((c) => c.query("DELETE FROM chat WHERE id > 19000; UPDATE alembic_version SET version_num = '0a7b8c9d0e1f'"));
    const oid = await databaseOid(dbName);
    const lying = { ...firstBackup, tableCounts: { ...firstBackup.tableCounts, user: 499 } };
    const err = await expectError(db.restore(lying, progress), "RESTORE_FAILED");
    assert.match(err.message, /table user has 500 rows, expected 499/);
    assert.equal(await databaseOid(dbName), oid);
    assert.equal((await db.tableCounts()).chat, 19000);
    assert.deepEqual(await db.readRevisions(), ["0a7b8c9d0e1f"]);
    assert.deepEqual(await leftovers(), []);
  });

  it("restore() swaps in a fresh verified copy and drops the old database", async () => {
    await asRole((c) => c.query("CREATE TABLE stray (x int)"));
    const oid = await databaseOid(dbName);
    await db.restore(firstBackup, progress);
    assert.notEqual(await databaseOid(dbName), oid);
    assert.deepEqual(await db.tableCounts(), firstBackup.tableCounts);
    assert.equal(await db.schemaHash(), firstBackup.schemaHash);
    assert.deepEqual(await db.readRevisions(), ["1b8c9d0e1f2a"]);
    assert.ok(!(await db.listTables()).includes("stray"));
    assert.deepEqual(await leftovers(), []);
    // The restored database belongs to the restoring role, like the original.
    const owner = await admin(
      async (c) => (await c.query<{ o: string }>("SELECT pg_get_userbyid(datdba) AS o FROM pg_database WHERE datname = $1", [dbName])).rows[0]?.o,
    );
    assert.equal(owner, role);
  });

  it("cloneTo() creates an absent target, replaces an idle one, and refuses a busy one", async () => {
    const targetName = `${dbName}_clone`;
    const target = new PostgresDatabase({ url: urlForDatabase(targetName, roleUrl), password: CANARY, runner, scratchDir: join(workDir, "scratch") });
    assert.equal(await target.exists(), false);
    await db.cloneTo(target, progress);
    assert.deepEqual(await target.tableCounts(), await db.tableCounts());
    assert.equal(await target.schemaHash(), await db.schemaHash());

    await asRole((c) => c.query("DELETE FROM chat WHERE id > 100; CREATE TABLE green_only (x int)"), targetName);
    await db.cloneTo(target, progress);
    assert.deepEqual(await target.tableCounts(), await db.tableCounts());
    assert.ok(!(await target.listTables()).includes("green_only"));

    await asRole((c) => c.query("DELETE FROM chat WHERE id > 100"), targetName);
    const app = await session("green-app", targetName);
    try {
      await expectError(db.cloneTo(target, progress), "APP_STILL_RUNNING");
    } finally {
      await app.end();
    }
    assert.equal((await target.tableCounts()).chat, 100);
    await expectError(db.cloneTo(db, progress), "INVALID_ARGUMENT");
    assert.deepEqual(await readdir(join(workDir, "scratch")), []);
    assert.deepEqual(
      (await leftovers()).filter((n) => n !== targetName),
      [],
    );
  });

  it("scratchCopy() copies by template when idle and by pg_dump when not, and drop() removes it", async () => {
    const idle = await db.scratchCopy(progress);
    assert.ok(progressLines.at(-1)?.includes("template copy"), progressLines.at(-1));
    assert.deepEqual(await idle.adapter.tableCounts(), await db.tableCounts());
    assert.equal(await idle.adapter.schemaHash(), await db.schemaHash());
    // url is what Alembic gets as DATABASE_URL for the rehearsal: the copy, with the password.
    assert.equal(idle.url, idle.adapter.alembicUrl());
    assert.equal(parsePgUrl(idle.url).password, CANARY);
    assertNoCanary(idle.adapter.displayName, "scratch displayName");
    const idleName = parsePgUrl(idle.url).database;
    assert.match(idleName, /_flotilla_scratch_[0-9a-f]{8}$/);
    await idle.drop();
    await idle.drop();
    assert.equal(await databaseOid(idleName), undefined);

    const app = await session("open-webui");
    try {
      const busy = await db.scratchCopy(progress);
      assert.ok(progressLines.at(-1)?.includes("pg_dump snapshot"), progressLines.at(-1));
      assert.deepEqual(await busy.adapter.tableCounts(), await db.tableCounts());
      await busy.drop();
      assert.equal(await databaseOid(parsePgUrl(busy.url).database), undefined);
    } finally {
      await app.end();
    }
  });

  it("errors about an unreachable server carry no password, whether from the config or the URL", async () => {
    const port = await closedPort();
    const viaConfig = new PostgresDatabase({ url: `postgresql://${role}@127.0.0.1:${port}/${dbName}`, password: CANARY, runner, scratchDir: workDir });
    await expectError(viaConfig.tableCounts(), "INTERNAL");
    await expectError(viaConfig.backup(join(workDir, "unreachable.dump"), progress), "BACKUP_FAILED");
    const viaUrl = new PostgresDatabase({ url: `postgresql://${role}:${encodeURIComponent(CANARY)}@127.0.0.1:${port}/${dbName}`, runner, scratchDir: workDir });
    assertNoCanary(viaUrl.displayName, "displayName");
    await expectError(viaUrl.exists(), "INTERNAL");
    assert.ok(!existsSync(join(workDir, "unreachable.dump")));
  });

  it("no child process ever got the password in argv or env, and no result or progress line holds it", () => {
    assert.ok(runner.calls.length >= 10, `only ${runner.calls.length} child runs recorded`);
    const connecting = runner.calls.filter((c) => c.env?.PGDATABASE !== undefined);
    assert.ok(connecting.length >= 5);
    for (const call of runner.calls) {
      assertNoCanary(call.argv.join(" "), `argv ${call.argv[0]}`);
      assert.ok(!call.argv.some((a) => a.includes("postgresql://") || a.includes("postgres://")), call.argv.join(" "));
      assertNoCanary(JSON.stringify(call.env ?? {}), `env of ${call.argv[0]}`);
      assert.equal(call.env?.PGPASSWORD, undefined);
    }
    for (const call of connecting) assert.ok(call.env?.PGPASSFILE !== undefined, `${call.argv[0]} without PGPASSFILE`);
    for (const a of artifacts) assertNoCanary(JSON.stringify(a), "artifact");
    assert.ok(progressLines.length > 0);
    assertNoCanary(progressLines.join("\n"), "progress");
  });
});
