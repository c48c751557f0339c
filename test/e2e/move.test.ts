/**
 * `flotilla move` end to end: the real agent and controller processes, the
 * real CLI, the fixture's Alembic project (copied, with two test revisions on
 * top: a table with a column of every type and a foreign key, then one more
 * column) on a SQLite file and on the real PostgreSQL server.
 */
import { spawn, type ChildProcess } from "node:child_process";
import { cpSync, existsSync, mkdirSync, mkdtempSync, openSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import Database from "better-sqlite3";
import pg from "pg";
import { stringify } from "yaml";
import { CANARY_PASSWORD, CANARY_SECRET, FIXTURE_DIR, HEAD_REVISION, OLD_REVISION, ROOT, freePort, run, type RunResult } from "../helpers/fleet.js";
import { createTestDatabase, type TestDatabase } from "../helpers/pg.js";

const TYPES_REV = "2c0ffee0a001";
const NEXT_REV = "3d0ffee0a002";
const DB_SWITCH = join(ROOT, "test/fixtures/app/db-switch.mjs");
const APP_CTL = join(ROOT, "test/fixtures/app/app-ctl.mjs");

const TYPES_REVISION = `"""typed table for move tests

Revision ID: ${TYPES_REV}
Revises: ${HEAD_REVISION}
"""
from alembic import op
import sqlalchemy as sa

revision = "${TYPES_REV}"
down_revision = "${HEAD_REVISION}"
branch_labels = None
depends_on = None


def upgrade():
    op.create_table(
        "typed",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("chat_id", sa.String(), sa.ForeignKey("chat.id"), nullable=True),
        sa.Column("flag", sa.Boolean(), nullable=True),
        sa.Column("big", sa.BigInteger(), nullable=True),
        sa.Column("ratio", sa.Float(), nullable=True),
        sa.Column("amount", sa.Numeric(14, 4), nullable=True),
        sa.Column("created", sa.DateTime(), nullable=True),
        sa.Column("day", sa.Date(), nullable=True),
        sa.Column("payload", sa.JSON(), nullable=True),
        sa.Column("blob", sa.LargeBinary(), nullable=True),
        sa.Column("note", sa.Text(), nullable=True),
    )


def downgrade():
    op.drop_table("typed")
`;

const NEXT_REVISION = `"""one more column

Revision ID: ${NEXT_REV}
Revises: ${TYPES_REV}
"""
from alembic import op
import sqlalchemy as sa

revision = "${NEXT_REV}"
down_revision = "${TYPES_REV}"
branch_labels = None
depends_on = None


def upgrade():
    op.add_column("typed", sa.Column("extra", sa.String(), nullable=True))


def downgrade():
    with op.batch_alter_table("typed") as b:
        b.drop_column("extra")
`;

const BIG = "9007199254740993"; // 2^53 + 1: not a JavaScript number
const NOTE = "tab\there\nnew line \\ backslash, ünïcødé ✓, 'quote' \"dq\"";
const PAYLOAD = '{"b": 1, "a": [1, 2.5, {"x": "é", "n": null}], "t": true}';
const BLOB = Buffer.from([0, 1, 2, 0x5c, 0x0a, 0x09, 0xff, 0xfe]);

let dir = "";
let alembicDir = "";
let srcFile = "";
let back = "";
let dst: TestDatabase;
let dst2: TestDatabase;
let ref: TestDatabase;
let full: TestDatabase;
let pgsrc: TestDatabase;
let sqdstFile = "";
let sqfailFile = "";
let switchFile = "";
let agentProc: ChildProcess | undefined;
let controllerProc: ChildProcess | undefined;
let controllerUrl = "";
let appHealth = "";
let appStop: string[] = [];
let appPidfile = "";
const outputs: string[] = [];

function alembicIn(url: string, args: string[]): Promise<RunResult> {
  return run(["alembic", ...args], { cwd: alembicDir, env: { DATABASE_URL: url, WEBUI_SECRET_KEY: CANARY_SECRET, FIXTURE_PROGRESS: "0" } });
}

async function waitForFile(path: string, proc: ChildProcess, log: string): Promise<string> {
  for (let i = 0; i < 1200; i++) {
    if (existsSync(path) && readFileSync(path, "utf8").length > 0) return readFileSync(path, "utf8");
    if (proc.exitCode !== null) throw new Error(`process exited: ${readFileSync(log, "utf8").slice(-2000)}`);
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error(`timed out waiting for ${path}`);
}

async function cli(args: string[]): Promise<RunResult> {
  const r = await run([process.execPath, join(ROOT, "bin/flotilla.mjs"), ...args], { env: { FLOTILLA_CONTROLLER: controllerUrl }, timeoutMs: 600_000 });
  outputs.push(r.stdout, r.stderr);
  return r;
}

async function cliJson(args: string[]): Promise<{ code: number; doc: Record<string, unknown>; stderr: string }> {
  const r = await cli([...args, "--json"]);
  try {
    return { code: r.code, doc: JSON.parse(r.stdout) as Record<string, unknown>, stderr: r.stderr };
  } catch {
    throw new Error(`no JSON from flotilla ${args.join(" ")} (exit ${r.code}): ${r.stdout.slice(0, 800)} ${r.stderr.slice(0, 1500)}`);
  }
}

async function pgQuery<T extends pg.QueryResultRow>(url: string, sql: string): Promise<T[]> {
  const c = new pg.Client({ connectionString: url });
  await c.connect();
  try {
    return (await c.query<T>(sql)).rows;
  } finally {
    await c.end();
  }
}

/** Columns, indexes and constraints, as PostgreSQL describes them. */
async function pgSchema(url: string): Promise<string[]> {
  const rows = await pgQuery<{ line: string }>(
    url,
    `
    SELECT 'column ' || table_name || '.' || column_name || ' ' || data_type || ' ' || is_nullable || ' ' || coalesce(column_default, '') AS line
      FROM information_schema.columns WHERE table_schema = 'public'
    UNION ALL SELECT 'index ' || indexname || ': ' || indexdef FROM pg_indexes WHERE schemaname = 'public'
    UNION ALL SELECT 'constraint ' || conrelid::regclass::text || ' ' || conname || ': ' || pg_get_constraintdef(oid) FROM pg_constraint WHERE connamespace = 'public'::regnamespace
    ORDER BY 1`,
  );
  return rows.map((x) => x.line);
}

async function pgTableNames(url: string): Promise<string[]> {
  return (await pgQuery<{ t: string }>(url, "SELECT tablename AS t FROM pg_tables WHERE schemaname = 'public' ORDER BY 1")).map((r) => r.t);
}

before(async () => {
  dir = mkdtempSync(join(tmpdir(), "flotilla-move-"));
  alembicDir = join(dir, "alembic");
  cpSync(FIXTURE_DIR, alembicDir, { recursive: true, filter: (p) => !p.includes("__pycache__") });
  writeFileSync(join(alembicDir, "migrations/versions", `${TYPES_REV}_typed.py`), TYPES_REVISION);
  writeFileSync(join(alembicDir, "migrations/versions", `${NEXT_REV}_extra.py`), NEXT_REVISION);
  writeFileSync(join(dir, "pg_password"), `${CANARY_PASSWORD}\n`, { mode: 0o600 });
  writeFileSync(join(dir, "webui_secret_key"), `${CANARY_SECRET}\n`, { mode: 0o600 });
  switchFile = join(dir, "switch.state");

  // FROM: a seeded SQLite database at the typed revision, with one row of every kind of value and one orphan.
  mkdirSync(join(dir, "data"));
  srcFile = join(dir, "data", "src.db");
  const srcUrl = `sqlite:///${srcFile}`;
  let r = await alembicIn(srcUrl, ["upgrade", OLD_REVISION]);
  assert.equal(r.code, 0, r.stderr);
  r = await run(["/usr/bin/python3", join(FIXTURE_DIR, "seed.py"), srcFile, "--users", "15", "--chats", "40", "--msgs-per-chat", "3", "--seed", "3"], {
    env: { WEBUI_SECRET_KEY: CANARY_SECRET },
  });
  assert.equal(r.code, 0, r.stderr);
  r = await alembicIn(srcUrl, ["upgrade", TYPES_REV]);
  assert.equal(r.code, 0, r.stderr);
  const db = new Database(srcFile);
  db.pragma("foreign_keys = OFF"); // SQLite does not enforce foreign keys by default; the app writes without them
  const chatId = (db.prepare("SELECT id FROM chat ORDER BY id LIMIT 1").get() as { id: string }).id;
  const ins = db.prepare(
    "INSERT INTO typed (id, chat_id, flag, big, ratio, amount, created, day, payload, blob, note) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
  );
  ins.run(1, chatId, 1, BigInt(BIG), 0.1 + 0.2, "12345678.1234", "2024-02-29 23:59:59.123456", "2024-02-29", PAYLOAD, BLOB, NOTE);
  ins.run(2, chatId, 0, -BigInt(BIG), -1e-300, "0.0001", "1970-01-01 00:00:00.000000", "1999-12-31", "[]", Buffer.alloc(0), "");
  ins.run(3, null, null, null, null, null, null, null, null, null, null);
  ins.run(7, "no-such-chat", 1, 7, 7.5, "7", "2020-01-01 00:00:00.000000", "2020-01-01", "{}", Buffer.from("x"), "orphan");
  db.close();

  // Another SQLite file for the way back and a PostgreSQL source for the other direction.
  back = join(dir, "data", "back.db");
  sqdstFile = join(dir, "data", "from-pg.db");
  sqfailFile = join(dir, "data", "switch-fails.db");
  [dst, dst2, full, pgsrc, ref] = await Promise.all([
    createTestDatabase("move_dst"),
    createTestDatabase("move_dst2"),
    createTestDatabase("move_full"),
    createTestDatabase("move_pgsrc"),
    createTestDatabase("move_ref"),
  ]);
  // What Alembic alone builds at FROM's revision: the moved database must have exactly this schema.
  r = await alembicIn(ref.url, ["upgrade", TYPES_REV]);
  assert.equal(r.code, 0, r.stderr);
  await pgQuery(full.url, "CREATE TABLE keep_me (id int primary key); INSERT INTO keep_me VALUES (1), (2)");
  r = await alembicIn(pgsrc.url, ["upgrade", OLD_REVISION]);
  assert.equal(r.code, 0, r.stderr);
  r = await run(
    ["/usr/bin/python3", join(FIXTURE_DIR, "seed.py"), "--url", pgsrc.url, "--users", "12", "--chats", "30", "--msgs-per-chat", "2", "--seed", "5"],
    { env: { WEBUI_SECRET_KEY: CANARY_SECRET } },
  );
  assert.equal(r.code, 0, r.stderr);
  r = await alembicIn(pgsrc.url, ["upgrade", TYPES_REV]);
  assert.equal(r.code, 0, r.stderr);
  await pgQuery(
    pgsrc.url,
    `INSERT INTO typed (id, chat_id, flag, big, ratio, amount, created, day, payload, blob, note) VALUES
    (1, NULL, true, ${BIG}, 0.30000000000000004, 12345678.1234, '2024-02-29 23:59:59.123456', '2024-02-29', '${PAYLOAD}', '\\x0001025c0a09fffe', 'pg row')`,
  );

  const alembic = { dir: alembicDir, command: ["alembic"], env: { WEBUI_SECRET_KEY: { file: join(dir, "webui_secret_key") }, FIXTURE_PROGRESS: "0" } };
  const target = (id: string, database: string, extra: Record<string, unknown> = {}) => ({
    id,
    labels: { app: "webui" },
    database,
    alembic,
    backups: { dir: join(dir, "backups", id), keep: 3 },
    ...(database.startsWith("postgresql") ? { passwordFile: join(dir, "pg_password") } : {}),
    ...extra,
  });
  const hook = { green: `sqlite:///${join(dir, "data", "unused-green.db")}`, switch: [process.execPath, DB_SWITCH, switchFile] };
  // A stand-in app instance of FROM, running (it holds the SQLite file open) like a live install.
  const appPort = await freePort();
  const pidfile = join(dir, "src-app.pid");
  appPidfile = pidfile;
  const appStart = [
    process.execPath,
    APP_CTL,
    "start",
    "--db",
    srcFile,
    "--port",
    String(appPort),
    "--pidfile",
    pidfile,
    "--name",
    "src-app",
    "--log",
    join(dir, "src-app.log"),
  ];
  appStop = [process.execPath, APP_CTL, "stop", "--pidfile", pidfile];
  appHealth = `http://127.0.0.1:${appPort}/health`;
  r = await run(appStart);
  assert.equal(r.code, 0, r.stderr);
  const agentConfig = join(dir, "agent.yaml");
  writeFileSync(
    agentConfig,
    stringify({
      agentId: "host-a",
      listen: "127.0.0.1:0",
      dataDir: join(dir, "agent"),
      targets: [
        target("src", srcUrl, { blueGreen: hook }),
        target("dst", dst.url),
        target("dst2", dst2.url),
        target("full", full.url),
        target("back", `sqlite:///${back}`),
        target("pgsrc", pgsrc.url),
        target("sqdst", `sqlite:///${sqdstFile}`),
        // Its switch hook always fails (exit 3), after the copy has been verified.
        target("sqfail", `sqlite:///${sqfailFile}`, {
          blueGreen: {
            green: `sqlite:///${join(dir, "data", "unused-green-2.db")}`,
            switch: [process.execPath, "-e", "console.log('switching…'); process.exit(3)"],
          },
        }),
      ],
      apps: [{ id: "src-app", target: "src", start: appStart, stop: appStop, health: appHealth }],
    }),
  );
  const agentLog = join(dir, "agent.log");
  const agentPortFile = join(dir, "agent.port");
  agentProc = spawn(process.execPath, [join(ROOT, "bin/flotilla-agent.mjs"), "--config", agentConfig], {
    env: { ...process.env, FLOTILLA_PORT_FILE: agentPortFile },
    stdio: ["ignore", openSync(agentLog, "a"), openSync(agentLog, "a")],
  });
  const agentPort = Number(await waitForFile(agentPortFile, agentProc, agentLog));
  const controllerConfig = join(dir, "controller.yaml");
  mkdirSync(join(dir, "controller"));
  writeFileSync(
    controllerConfig,
    stringify({
      listen: { grpc: "127.0.0.1:0", http: "127.0.0.1:0" },
      dataDir: join(dir, "controller"),
      store: `sqlite:///${join(dir, "controller", "controller.db")}`,
      agents: [{ id: "host-a", address: `127.0.0.1:${agentPort}` }],
    }),
  );
  const controllerLog = join(dir, "controller.log");
  const controllerPortFile = join(dir, "controller.port");
  controllerProc = spawn(process.execPath, [join(ROOT, "bin/flotilla-controller.mjs"), "--config", controllerConfig], {
    env: { ...process.env, FLOTILLA_PORT_FILE: controllerPortFile },
    stdio: ["ignore", openSync(controllerLog, "a"), openSync(controllerLog, "a")],
  });
  const ports = JSON.parse(await waitForFile(controllerPortFile, controllerProc, controllerLog)) as { http: number };
  controllerUrl = `http://127.0.0.1:${ports.http}`;
});

after(async () => {
  for (const p of [controllerProc, agentProc]) {
    if (p && p.exitCode === null) {
      const exited = new Promise((r) => p.once("exit", r));
      p.kill("SIGTERM");
      await exited;
    }
  }
  if (appStop.length > 0) await run(appStop).catch(() => undefined);
  for (const d of [dst, dst2, full, pgsrc, ref]) await d?.drop().catch(() => undefined);
  rmSync(dir, { recursive: true, force: true });
});

function srcDump(): string {
  const db = new Database(srcFile, { readonly: true });
  try {
    return (db.prepare("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name").all() as { name: string }[])
      .map((t) =>
        JSON.stringify(db.prepare(`SELECT * FROM "${t.name}" ORDER BY 1`).raw(true).safeIntegers(true).all(), (_k, v: unknown) =>
          typeof v === "bigint" ? String(v) : v,
        ),
      )
      .join("\n");
  } finally {
    db.close();
  }
}

test("a non-empty TO is refused with exit 2 and nothing changed", async () => {
  const before = srcDump();
  const r = await cliJson(["move", "src", "full"]);
  assert.equal(r.code, 2, r.stderr);
  const result = r.doc as { status: string; errorCode: string; message: string };
  assert.equal(result.status, "refused");
  assert.match(result.message, /full is not empty \(it has table keep_me\)/);
  assert.deepEqual(await pgTableNames(full.url), ["keep_me"]);
  assert.deepEqual(
    (await pgQuery<{ id: number }>(full.url, "SELECT id FROM keep_me ORDER BY id")).map((x) => x.id),
    [1, 2],
  );
  assert.equal(srcDump(), before);
  assert.equal(existsSync(switchFile), false);
});

test("an orphaned row is refused with the list, then left out with --skip-orphans into a report", async () => {
  const refused = await cli(["move", "src", "dst"]);
  assert.equal(refused.code, 2, refused.stdout + refused.stderr);
  assert.match(refused.stdout, /1 orphaned row .*typed → chat: 1 row/);
  assert.match(refused.stdout, /--skip-orphans/);
  assert.deepEqual(await pgTableNames(dst.url), [], "TO stays empty after a refusal");

  const before = srcDump();
  const moved = await cli(["move", "src", "dst", "--skip-orphans"]);
  assert.equal(moved.code, 0, moved.stdout + moved.stderr);
  assert.match(moved.stdout, /✓ copy/);
  assert.match(moved.stdout, /table \d+\/\d+ \w+: \d+\/\d+ rows/);
  assert.match(moved.stdout, /✓ verify/);
  assert.match(moved.stdout, /✓ switch:dst/);
  assert.ok(moved.stdout.indexOf("✓ stop:src-app") < moved.stdout.indexOf("✓ copy"), "FROM's app is stopped before the copy");
  assert.ok(moved.stdout.indexOf("✓ start:src-app") > moved.stdout.indexOf("✓ switch:dst"), "and started again after the switch");
  assert.equal((await fetch(appHealth)).status, 200);
  assert.equal(readFileSync(switchFile, "utf8"), "dst");
  const report = /orphans\s+1 row\(s\) left out: (\S+)/.exec(moved.stdout)?.[1];
  assert.ok(report, moved.stdout);
  const listed = JSON.parse(readFileSync(report, "utf8")) as { orphans: { table: string; parent: string; key: string }[] };
  assert.deepEqual(
    listed.orphans.map((o) => [o.table, o.parent, o.key]),
    [["typed", "chat", "id=7"]],
  );
  assert.equal(srcDump(), before, "FROM is untouched");
});

test("every column type round-trips exactly, counts match, the sequence is past the highest id", async () => {
  assert.deepEqual(await pgSchema(dst.url), await pgSchema(ref.url), "the schema is exactly what Alembic builds");
  assert.deepEqual(
    (await pgQuery<{ v: string }>(dst.url, "SELECT version_num AS v FROM alembic_version")).map((x) => x.v),
    [TYPES_REV],
  );
  const rows = await pgQuery<Record<string, unknown>>(
    dst.url,
    "SELECT id, chat_id, flag, big::text AS big, ratio, amount::text AS amount, created::text AS created, day::text AS day, payload::text AS payload, blob, note FROM typed ORDER BY id",
  );
  assert.equal(rows.length, 3, "the orphan (id 7) was left out");
  const [a, b, c] = rows as [Record<string, unknown>, Record<string, unknown>, Record<string, unknown>];
  assert.equal(a.flag, true);
  assert.equal(a.big, BIG);
  assert.equal(a.ratio, 0.1 + 0.2);
  assert.equal(a.amount, "12345678.1234");
  assert.equal(a.created, "2024-02-29 23:59:59.123456");
  assert.equal(a.day, "2024-02-29");
  assert.equal(a.payload, PAYLOAD);
  assert.deepEqual(a.blob, BLOB);
  assert.equal(a.note, NOTE);
  assert.equal(b.flag, false);
  assert.equal(b.big, `-${BIG}`);
  assert.equal(b.ratio, -1e-300);
  assert.equal(b.amount, "0.0001");
  assert.equal(b.created, "1970-01-01 00:00:00");
  assert.deepEqual(b.blob, Buffer.alloc(0));
  assert.equal(b.note, "");
  for (const k of ["chat_id", "flag", "big", "ratio", "amount", "created", "day", "payload", "blob", "note"]) assert.equal(c[k], null, k);
  const src = new Database(srcFile, { readonly: true });
  try {
    for (const t of ["user", "auth", "chat", "message", "config", "shared_chat"]) {
      const n = (src.prepare(`SELECT count(*) AS n FROM "${t}"`).get() as { n: number }).n;
      const [m] = await pgQuery<{ n: string }>(dst.url, `SELECT count(*)::text AS n FROM "${t}"`);
      assert.equal(Number(m!.n), n, t);
    }
    const chat = src.prepare("SELECT id, title, chat, pinned, meta, created_at FROM chat ORDER BY id LIMIT 1").get() as Record<string, unknown>;
    const [pgChat] = await pgQuery<Record<string, unknown>>(
      dst.url,
      `SELECT id, title, chat, pinned, meta::text AS meta, created_at::text AS created_at FROM chat WHERE id = '${String(chat.id)}'`,
    );
    assert.equal(pgChat!.title, chat.title);
    assert.equal(pgChat!.chat, chat.chat);
    assert.equal(pgChat!.meta, chat.meta);
    assert.equal(pgChat!.created_at, String(chat.created_at));
  } finally {
    src.close();
  }
  const [seq] = await pgQuery<{ id: number }>(dst.url, "INSERT INTO typed (note) VALUES ('new') RETURNING id");
  assert.equal(seq!.id, 4, "the sequence continues after the highest copied id");
});

test("after the move, a rollout on TO to head works; moving back is refused while TO is newer, then allowed with --yes", async () => {
  const r = await cliJson(["rollout", "--selector", "id=dst", "--strategy", "maintenance", "--wait"]);
  assert.equal(r.code, 0, JSON.stringify(r.doc).slice(0, 2000) + r.stderr);
  assert.deepEqual(
    (await pgQuery<{ v: string }>(dst.url, "SELECT version_num AS v FROM alembic_version")).map((x) => x.v),
    [NEXT_REV],
  );
  assert.deepEqual(
    (await pgQuery<{ extra: string | null }>(dst.url, "SELECT extra FROM typed WHERE id = 1")).map((x) => x.extra),
    [null],
  );

  const before = srcDump();
  const refused = await cliJson(["move", "dst", "src"]);
  assert.equal(refused.code, 2, refused.stderr);
  assert.match((refused.doc as { message: string }).message, /dst is newer \(it is at revision 3d0ffee0a002, the move left it at 2c0ffee0a001\).*--yes/);
  assert.equal(readFileSync(switchFile, "utf8"), "dst");
  const yes = await cliJson(["move", "dst", "src", "--yes"]);
  assert.equal(yes.code, 0, JSON.stringify(yes.doc) + yes.stderr);
  assert.equal(readFileSync(switchFile, "utf8"), "src");
  assert.equal(srcDump(), before, "the way back only switches: src is untouched");
});

test("--from-backup copies the verified backup and says which writes it misses", async () => {
  const before = srcDump();
  const pid = readFileSync(appPidfile, "utf8");
  const r = await cliJson(["move", "src", "dst2", "--from-backup", "--skip-orphans"]);
  assert.equal(r.code, 0, JSON.stringify(r.doc) + r.stderr);
  const doc = r.doc as { details: Record<string, string>; backup: { id: string; createdAt: string } };
  assert.equal(doc.details.missed_writes_since, doc.backup.createdAt);
  assert.equal(doc.details.skipped_rows, "1");
  assert.deepEqual(
    (await pgQuery<{ id: number }>(dst2.url, "SELECT id FROM typed ORDER BY id")).map((x) => x.id),
    [1, 2, 3],
  );
  assert.deepEqual(await pgSchema(dst2.url), await pgSchema(ref.url));
  assert.equal((await fetch(appHealth)).status, 200, "the app kept running");
  assert.equal(readFileSync(appPidfile, "utf8"), pid, "the same app process: never stopped");
  assert.equal(srcDump(), before);
});

test("a switch hook that fails after the verified copy: the move fails, FROM is untouched, TO is emptied again and no move is recorded", async () => {
  const counts = async () =>
    Promise.all(
      ["user", "chat", "message", "typed"].map(async (t) => (await pgQuery<{ n: string }>(pgsrc.url, `SELECT count(*)::text AS n FROM "${t}"`))[0]!.n),
    );
  const before = await counts();
  const r = await cliJson(["move", "pgsrc", "sqfail"]);
  assert.equal(r.code, 1, JSON.stringify(r.doc) + r.stderr);
  assert.equal(r.doc.status, "failed", "an outside failure after real work, not a refusal of the request");
  assert.equal(r.doc.errorCode, "HOOK_FAILED");
  assert.match(String(r.doc.message), /switch hook failed: .*exited with code 3; the app was not switched: sqfail is emptied again/);
  assert.deepEqual(await counts(), before, "FROM is never written");
  if (existsSync(sqfailFile)) {
    const db = new Database(sqfailFile, { readonly: true });
    try {
      assert.equal((db.prepare("SELECT count(*) AS n FROM sqlite_master WHERE type = 'table'").get() as { n: number }).n, 0, "TO is emptied again");
    } finally {
      db.close();
    }
  }
  assert.equal(existsSync(join(dir, "agent", "moves", "sqfail.json")), false, "no record of a move that did not happen");
  // Nothing is left locked or half-done: the same move to a working target goes through (next test).
});

test("PostgreSQL → SQLite: an empty SQLite target gets the schema from Alembic and the same rows", async () => {
  const r = await cliJson(["move", "pgsrc", "sqdst"]);
  assert.equal(r.code, 0, JSON.stringify(r.doc) + r.stderr);
  const details = (r.doc as { details: Record<string, string> }).details;
  assert.equal(details.revision, TYPES_REV);
  const db = new Database(sqdstFile, { readonly: true });
  try {
    assert.deepEqual(
      (db.prepare("SELECT version_num FROM alembic_version").all() as { version_num: string }[]).map((x) => x.version_num),
      [TYPES_REV],
    );
    const row = db.prepare("SELECT flag, CAST(big AS TEXT) AS big, ratio, amount, created, day, payload, blob, note FROM typed WHERE id = 1").get() as Record<
      string,
      unknown
    >;
    assert.equal(row.flag, 1);
    assert.equal(row.big, BIG);
    assert.equal(row.ratio, 0.1 + 0.2);
    assert.equal(Number(row.amount), 12345678.1234);
    assert.equal(row.created, "2024-02-29 23:59:59.123456");
    assert.equal(row.day, "2024-02-29");
    assert.deepEqual(JSON.parse(String(row.payload)), JSON.parse(PAYLOAD));
    assert.deepEqual(row.blob, BLOB);
    for (const t of ["user", "auth", "chat", "message"]) {
      const n = (db.prepare(`SELECT count(*) AS n FROM "${t}"`).get() as { n: number }).n;
      const [m] = await pgQuery<{ n: string }>(pgsrc.url, `SELECT count(*)::text AS n FROM "${t}"`);
      assert.equal(n, Number(m!.n), t);
    }
  } finally {
    db.close();
  }
});

test("every move step is in the audit log, and the canary password never leaks", async () => {
  const a = await cliJson(["audit", "--target", "src"]);
  assert.equal(a.code, 0);
  const actions = (a.doc as { entries: { action: string }[] }).entries.map((e) => e.action);
  for (const want of ["api.MoveTarget", "move.preflight", "move.backup", "move.copy", "move.verify", "move.switch"])
    assert.ok(actions.includes(want), `${want} in ${actions.join(",")}`);
  const exported = await cli(["audit", "export"]);
  const logs = ["agent.log", "controller.log"].map((f) => readFileSync(join(dir, f), "utf8")).join("\n");
  for (const text of [logs, exported.stdout, ...outputs]) {
    assert.equal(text.includes(CANARY_PASSWORD), false);
    assert.equal(text.includes(CANARY_SECRET), false);
  }
});
