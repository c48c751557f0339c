/**
 * The app's whole state end to end: companion files backed up and restored
 * with the database by a failing rollout (SQLite and the real PostgreSQL), the
 * app version recorded and warned about, restore drills and the diagnostics
 * bundle, through the real controller and CLI.
 */
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { createHash, randomBytes } from "node:crypto";
import { mkdirSync, mkdtempSync, readFileSync, readdirSync, lstatSync, rmSync, writeFileSync, existsSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import Database from "better-sqlite3";
import pg from "pg";
import { CANARY_PASSWORD, CANARY_SECRET, Fleet, HEAD_REVISION, OLD_REVISION, run } from "../helpers/fleet.js";
import { collect } from "../helpers/ops.js";

const appRoot = mkdtempSync(join(tmpdir(), "flotilla-appstate-"));
const USER_CANARY = "canary-user-row-Q7pz";
const FILE_CANARY = "companion-file-canary-K3vd";
let fleet: Fleet;

interface RolloutJson {
  id: string;
  status: string;
  targets: { targetId: string; status: string; steps: { name: string; state: string; detail: string }[] }[];
}

/** A companion layout: an uploads folder, a vector-store SQLite file in its folder, a key file. */
function makeApp(name: string): { uploads: string; vector: string; key: string; version: string; include: string[] } {
  const base = join(appRoot, name);
  const uploads = join(base, "uploads");
  const vector = join(base, "vector_db");
  mkdirSync(join(uploads, "u1"), { recursive: true });
  mkdirSync(vector, { recursive: true });
  writeFileSync(join(uploads, "u1", "report.pdf"), randomBytes(300_000));
  writeFileSync(join(uploads, "notes.txt"), `uploaded notes ${FILE_CANARY}\n`);
  const db = new Database(join(vector, "chroma.sqlite3"));
  db.pragma("journal_mode = WAL");
  db.exec("CREATE TABLE embeddings (id INTEGER PRIMARY KEY, v TEXT); INSERT INTO embeddings (v) VALUES ('e1'), ('e2')");
  db.close();
  const key = join(base, ".webui_secret_key");
  writeFileSync(key, `${FILE_CANARY}-key\n`, { mode: 0o600 });
  const version = join(base, "app-version");
  writeFileSync(version, "open-webui:v0.6.5\n");
  return { uploads, vector, key, version, include: [uploads, vector, key] };
}

function tree(dir: string): Record<string, string> {
  const out: Record<string, string> = {};
  const visit = (rel: string): void => {
    for (const name of readdirSync(join(dir, rel)).sort()) {
      const r = rel ? join(rel, name) : name;
      const st = lstatSync(join(dir, r));
      if (st.isDirectory()) {
        out[`${r}/`] = "dir";
        visit(r);
      } else if (name.endsWith("-wal") || name.endsWith("-shm")) continue;
      else if (name.endsWith(".sqlite3")) {
        const db = new Database(join(dir, r), { readonly: true });
        out[r] = JSON.stringify(db.prepare("SELECT * FROM embeddings ORDER BY id").all());
        db.close();
      } else
        out[r] = createHash("sha256")
          .update(readFileSync(join(dir, r)))
          .digest("hex");
    }
  };
  visit("");
  return out;
}

function snapshot(app: ReturnType<typeof makeApp>): Record<string, unknown> {
  return { uploads: tree(app.uploads), vector: tree(app.vector), key: readFileSync(app.key, "utf8") };
}

/** What the app (or a migration) does to its files after the backup. */
function scribble(app: ReturnType<typeof makeApp>): void {
  writeFileSync(join(app.uploads, "notes.txt"), "rewritten after the backup\n");
  rmSync(join(app.uploads, "u1", "report.pdf"));
  writeFileSync(join(app.uploads, "new-upload.bin"), randomBytes(1000));
  const db = new Database(join(app.vector, "chroma.sqlite3"));
  db.exec("DELETE FROM embeddings; INSERT INTO embeddings (v) VALUES ('after')");
  db.close();
  writeFileSync(app.key, "replaced key\n");
}

const sApp = makeApp("s-app");
const pApp = makeApp("p-app");
const vApp = makeApp("s-ver");
const smoke = ['SELECT count(*) FROM "user"'];
const slow = { FIXTURE_SLEEP_MS: "1000", FIXTURE_BATCH: "10" };

before(async () => {
  fleet = new Fleet({
    agents: ["a1"],
    targets: [
      {
        id: "s-app",
        kind: "sqlite",
        owner: "a1",
        labels: { app: "s" },
        failAt: "0a7b8c9d0e1f",
        seed: { users: 20, chats: 60, msgs: 2 },
        alembicEnv: slow,
        extra: { backups: { include: sApp.include }, appVersion: ["cat", sApp.version], smoke },
      },
      {
        id: "p-app",
        kind: "postgresql",
        owner: "a1",
        labels: { app: "p" },
        failAt: "0a7b8c9d0e1f",
        seed: { users: 20, chats: 60, msgs: 2 },
        alembicEnv: slow,
        extra: { backups: { include: pApp.include }, appVersion: ["cat", pApp.version], smoke },
      },
      { id: "s-ver", kind: "sqlite", owner: "a1", labels: { app: "v" }, extra: { backups: { include: vApp.include }, appVersion: ["cat", vApp.version] } },
      { id: "s-keep", kind: "sqlite", owner: "a1", labels: { app: "k" }, extra: { backups: { keep: 1 } } },
    ],
  });
  await fleet.start();
});

after(async () => {
  await fleet?.stop();
  rmSync(appRoot, { recursive: true, force: true });
});

async function waitForRollout(id: string, done: (r: RolloutJson) => boolean): Promise<RolloutJson> {
  const deadline = Date.now() + 300_000;
  for (;;) {
    const r = await fleet.cliJson<RolloutJson>(["rollout", "show", id]);
    if (r.code === 0 && done(r.doc)) return r.doc;
    if (Date.now() > deadline) throw new Error(`rollout ${id} did not get there: ${JSON.stringify(r.doc).slice(0, 2000)}`);
    await new Promise((res) => setTimeout(res, 300));
  }
}

for (const [id, app] of [
  ["s-app", sApp],
  ["p-app", pApp],
] as const) {
  test(`${id}: a rollout failing half-way restores the database and its companion files, changed after the backup, exactly`, async () => {
    const dbBefore = await fleet.dumpOf(id);
    const filesBefore = snapshot(app);
    const start = await fleet.cliJson<RolloutJson>(["rollout", "--selector", `app=${id[0]}`, "--strategy", "maintenance"]);
    assert.equal(start.code, 0, start.stderr);
    // The backup is taken and verified before migrate starts; then the files change under it.
    await waitForRollout(start.doc.id, (d) => d.targets[0]!.steps.some((s) => s.name === "migrate" && s.state === "running"));
    scribble(app);
    assert.notDeepEqual(snapshot(app), filesBefore);
    const done = await waitForRollout(start.doc.id, (d) => !["running", "pending"].includes(d.status));
    const t = done.targets[0]!;
    assert.equal(t.status, "restored", JSON.stringify(t));
    assert.deepEqual(await fleet.revisionOf(id), [OLD_REVISION]);
    assert.equal(await fleet.dumpOf(id), dbBefore, "the database is exactly as backed up");
    assert.deepEqual(snapshot(app), filesBefore, "the companion files are exactly as backed up");
    const backups = await fleet.cliJson<{ backups: { id: string; verified: boolean; appVersion: string; companionPaths: number; companionBytes: string }[] }>([
      "backups",
      id,
    ]);
    const b = backups.doc.backups[0]!;
    assert.equal(b.verified, true);
    assert.equal(b.appVersion, "open-webui:v0.6.5", "the app version is in the manifest");
    assert.equal(b.companionPaths, 3);
    assert.ok(Number(b.companionBytes) > 300_000);
    const backupStep = t.steps.find((s) => s.name === "backup");
    assert.match(backupStep?.detail ?? "", /app version open-webui:v0\.6\.5/, "and in the rollout step");
  });
}

test("a drill passes on a good backup (smoke queries run on the scratch copy) and exits 1 on a corrupted one; targets shows the last drill", async () => {
  for (const id of ["s-app", "p-app"]) {
    const good = await fleet.cliJson<{ status: string; message: string; backup: { id: string } }>(["drill", id]);
    assert.equal(good.code, 0, `${good.doc.message} ${good.stderr}`);
    assert.equal(good.doc.status, "succeeded");
    assert.match(good.doc.message, /passed/);
    assert.match(good.doc.message, /smoke 1: 1 row\(s\) \(2\d\)/, "the smoke count ran on the copy");
    assert.match(good.doc.message, /3 companion path\(s\) verified/);
  }
  assert.deepEqual(await fleet.revisionOf("s-app"), [OLD_REVISION], "a drill never touches the target");

  // A corrupted companion file in the newest backup of s-app: the drill fails, exit 1.
  const list = await fleet.cliJson<{ backups: { id: string; path: string }[] }>(["backups", "s-app"]);
  const newest = list.doc.backups[0]!;
  const stored = join(newest.path.replace(/\.db$/, ".files"), "0", "notes.txt");
  const rotten = readFileSync(stored);
  rotten[3] = rotten[3]! ^ 0x20;
  writeFileSync(stored, rotten);
  const bad = await fleet.cliJson<{ status: string; message: string }>(["drill", "s-app", "--backup", newest.id]);
  assert.equal(bad.code, 1);
  assert.equal(bad.doc.status, "failed");
  assert.match(bad.doc.message, /notes\.txt: .*sha256/);
  const again = await fleet.cli(["drill", "s-app", "--backup", newest.id]);
  assert.equal(again.code, 2, "the backup is now marked unverified: drilling it again is refused");
  assert.match(again.stderr, /has not passed verification/);

  // A corrupted database artifact of p-app: exit 1 too.
  const plist = await fleet.cliJson<{ backups: { id: string; path: string }[] }>(["backups", "p-app"]);
  const pNewest = plist.doc.backups[0]!;
  const bytes = readFileSync(pNewest.path);
  bytes[Math.floor(bytes.length / 2)] = bytes[Math.floor(bytes.length / 2)]! ^ 0xff;
  writeFileSync(pNewest.path, bytes);
  const pBad = await fleet.cliJson<{ status: string; message: string }>(["drill", "p-app", "--backup", pNewest.id]);
  assert.equal(pBad.code, 1, pBad.doc.message);

  const targets = await fleet.cliJson<{ targets: { targetId: string; lastDrillAt: string; lastDrillOk?: boolean; lastDrillBackupId: string }[] }>(["targets"]);
  const s = targets.doc.targets.find((x) => x.targetId === "s-app")!;
  assert.ok(Date.now() - Date.parse(s.lastDrillAt) < 600_000, "the last drill's time is shown");
  assert.equal(s.lastDrillOk ?? false, false);
  assert.equal(s.lastDrillBackupId, newest.id);
  const d = await fleet.cliJson<{ findings: { code: string; severity: string }[] }>(["diagnose", "s-app"]);
  assert.equal(d.code, 1);
  assert.ok(d.doc.findings.some((f) => f.code === "drill-failed" && f.severity === "warning"));
});

test("restore of a backup taken under another app version says so and warns that a newer image would migrate it again", async () => {
  const a1 = fleet.agentClient("a1");
  const b = await collect(a1.backup({ targetId: "s-ver", operationId: "ver-backup", verify: true }));
  assert.equal(b.result.status, "succeeded", b.result.message);
  assert.equal(b.result.backup?.appVersion, "open-webui:v0.6.5");
  writeFileSync(vApp.version, "open-webui:v0.7.0\n");
  const m = await collect(a1.migrate({ targetId: "s-ver", toRevision: "head", operationId: "ver-migrate", takeBackup: true }));
  assert.equal(m.result.status, "succeeded", m.result.message);
  assert.match(m.result.message, /app version open-webui:v0\.7\.0/);
  const r = await fleet.cliJson<{ status: string; message: string }>(["restore", "s-ver", b.result.backup!.id, "--yes"]);
  assert.equal(r.code, 0, r.doc.message);
  assert.match(r.doc.message, /taken under app version open-webui:v0\.6\.5; the app now reports open-webui:v0\.7\.0/);
  assert.match(r.doc.message, /a newer app image would migrate it again at start/);
  assert.deepEqual(await fleet.revisionOf("s-ver"), [OLD_REVISION]);
  void HEAD_REVISION;
});

test("the bundle holds every listed item and no secret, no row of user data, no database or companion file", async () => {
  const sqliteFile = fleet.urls.get("s-app")!.slice("sqlite:///".length);
  const db = new Database(sqliteFile);
  db.prepare('UPDATE "user" SET name = ? WHERE rowid = (SELECT min(rowid) FROM "user")').run(USER_CANARY);
  db.close();
  const client = new pg.Client({ connectionString: fleet.urls.get("p-app")! });
  await client.connect();
  await client.query('UPDATE "user" SET name = $1 WHERE id = (SELECT min(id) FROM "user")', [USER_CANARY]);
  await client.end();
  for (const id of ["s-app", "p-app"]) {
    const out = join(appRoot, `${id}-bundle.tar.gz`);
    const r = await fleet.cliJson<{ file: string; entries: string[] }>(["bundle", id, "--out", out]);
    assert.equal(r.code, 0, r.stderr);
    const dir = join(appRoot, `${id}-bundle`);
    mkdirSync(dir);
    const x = await run(["tar", "-xzf", out, "-C", dir]);
    assert.equal(x.code, 0, x.stderr);
    const root = join(dir, id);
    for (const f of [
      "README.txt",
      "alembic/current.txt",
      "alembic/heads.txt",
      "alembic/history.txt",
      "alembic/branches.txt",
      "database/tables.txt",
      "database/alembic_version.txt",
      "database/table_info/user.txt",
      "database/table_info/chat.txt",
      "diagnose.json",
      "journal.json",
      "backups.json",
      "versions.txt",
      "config.json",
    ]) {
      assert.ok(existsSync(join(root, f)), `${id}: ${f} is in the bundle`);
    }
    assert.match(readFileSync(join(root, "alembic/current.txt"), "utf8"), new RegExp(OLD_REVISION));
    assert.match(readFileSync(join(root, "alembic/history.txt"), "utf8"), new RegExp(`${HEAD_REVISION} \\(head\\)`));
    assert.match(readFileSync(join(root, "database/table_info/user.txt"), "utf8"), /email/);
    const versions = readFileSync(join(root, "versions.txt"), "utf8");
    assert.match(versions, /flotilla-agent/);
    assert.match(versions, /alembic: .*1\.\d/);
    assert.match(versions, /python: Python 3/);
    assert.match(versions, id === "s-app" ? /SQLite 3\./ : /PostgreSQL \d+/);
    assert.match(versions, /app: open-webui:v0\.6\.5/);
    const journal = JSON.parse(readFileSync(join(root, "journal.json"), "utf8")) as { kind: string; id: string }[];
    const failedMigrate = journal.find((o) => o.kind === "migrate")!;
    assert.ok(failedMigrate, "the journal has the failed migration");
    const output = readdirSync(join(root, "output"))
      .map((n) => readFileSync(join(root, "output", n), "utf8"))
      .join("\n");
    assert.match(output, /simulated failure after DDL in revision 0a7b8c9d0e1f/, "with its Alembic output");
    assert.match(readFileSync(join(root, "backups.json"), "utf8"), /"verification"/);
    assert.match(readFileSync(join(root, "config.json"), "utf8"), /WEBUI_SECRET_KEY": "\[secret: set\]"/);
    // Nothing that must never be there.
    const all: string[] = [];
    const visit = (p: string): void => {
      for (const n of readdirSync(p)) {
        const f = join(p, n);
        if (lstatSync(f).isDirectory()) visit(f);
        else all.push(f);
      }
    };
    visit(root);
    for (const f of all) {
      const data = readFileSync(f);
      const text = data.toString("utf8");
      assert.ok(!data.subarray(0, 16).toString("latin1").startsWith("SQLite format 3"), `${f} is not a database file`);
      assert.ok(!data.subarray(0, 5).toString("latin1").startsWith("PGDMP"), `${f} is not a dump`);
      for (const canary of [CANARY_SECRET, CANARY_PASSWORD, USER_CANARY, FILE_CANARY]) assert.ok(!text.includes(canary), `${f} must not contain ${canary}`);
    }
  }
});

test("schedule add --drill needs no strategy and is listed as a drill", async () => {
  const add = await fleet.cliJson<{ name: string; drill?: boolean }>([
    "schedule",
    "add",
    "weekly-drill",
    "--drill",
    "--cron",
    "0 4 * * 0",
    "--selector",
    "app=v",
  ]);
  assert.equal(add.code, 0, add.stderr);
  assert.equal(add.doc.drill, true);
  const human = await fleet.cli(["schedules"]);
  assert.match(human.stdout, /weekly-drill .*app=v +drill/);
  const noStrategy = await fleet.cli(["schedule", "add", "nightly", "--cron", "0 3 * * *", "--selector", "app=v"]);
  assert.equal(noStrategy.code, 2, "a migration schedule still needs --strategy");
});

test("retention (keep: 1) keeps the backup of a rollout that has not migrated yet, and deletes the rest", async () => {
  const a1 = fleet.agentClient("a1");
  const take = async (op: string, rolloutId = ""): Promise<string> => {
    const r = await collect(a1.backup({ targetId: "s-keep", operationId: op, rolloutId, verify: true }));
    assert.equal(r.result.status, "succeeded", r.result.message);
    return r.result.backup!.id;
  };
  const ids = async (): Promise<string[]> => (await a1.listBackups({ targetId: "s-keep" })).backups.map((b) => b.id);
  const first = await take("keep-1");
  const gated = await take("keep-2", "rollout-gated");
  assert.deepEqual(await ids(), [gated], `${first} went: beyond keep, not needed`);
  const third = await take("keep-3");
  assert.deepEqual(await ids(), [third, gated], "the gated rollout's backup stays");
  const fourth = await take("keep-4");
  assert.deepEqual(await ids(), [fourth, gated]);
});
