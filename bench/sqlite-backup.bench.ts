/**
 * SQLite backup benchmark: the agent's SqliteDatabase adapter against same-run baselines on an
 * Open WebUI-like WAL database (200 MB in --quick, 1 GB otherwise).
 *
 *   P2  backup() with its check of the finished file (what the agent's verified backup runs)
 *       ÷ `cp --reflink=never` of the same file (warm page cache; cold reported as a detail)
 *   P3  backup() while another process commits every 50 ms ÷ idle backup()
 *
 * Everything lives in a temp directory (FLOTILLA_BENCH_DIR to choose where), removed afterwards.
 */
import { spawn } from "node:child_process";
import type { ChildProcess } from "node:child_process";
import { randomBytes } from "node:crypto";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";
import Database from "better-sqlite3";
import { NodeProcessRunner, describeRun } from "../services/common/process-runner.js";
import { type BenchOptions, type Figure, detailFigure, median, ratioFigure, round } from "./figure.js";

const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");

type AdapterModule = typeof import("../services/agent/adapters/sqlite-database.js");

/**
 * The adapter as the agent runs it: bin/runtime.mjs picks the compiled dist/ when `npm run build`
 * made it fresh (`npm run bench` builds first), else the TypeScript sources. It matters here: under
 * tsx each backup's worker thread compiles its module on start (0.2–0.5 s), the shipped JavaScript does not.
 */
async function loadAdapter(): Promise<AdapterModule> {
  const runtime = (await import(pathToFileURL(path.join(REPO, "bin", "runtime.mjs")).href)) as { load(rel: string): Promise<unknown> };
  return (await runtime.load("services/agent/adapters/sqlite-database")) as AdapterModule;
}
const RUNS = 3;

/** ~200 MB Open WebUI-like database in WAL mode: users, chats (indexed title), messages. */
function generateDatabase(file: string, targetBytes: number): void {
  const db = new Database(file);
  try {
    db.pragma("journal_mode = WAL");
    db.pragma("synchronous = OFF");
    db.exec(`
      CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL PRIMARY KEY);
      INSERT INTO alembic_version VALUES ('1b8c9d0e1f2a');
      CREATE TABLE user (id INTEGER PRIMARY KEY, email TEXT NOT NULL UNIQUE, name TEXT);
      CREATE TABLE chat (id INTEGER PRIMARY KEY, user_id INTEGER NOT NULL, title TEXT NOT NULL, created_at INTEGER);
      CREATE INDEX ix_chat_user ON chat(user_id);
      CREATE TABLE message (id INTEGER PRIMARY KEY, chat_id INTEGER NOT NULL, role TEXT, content TEXT);
      CREATE INDEX ix_message_chat ON message(chat_id);
      CREATE TABLE tick (id INTEGER PRIMARY KEY, at TEXT);
    `);
    // A pool of random text so pages are not trivially uniform.
    const pool = Array.from({ length: 256 }, () => randomBytes(600).toString("base64"));
    const u = db.prepare("INSERT INTO user (email, name) VALUES (?, ?)");
    const c = db.prepare("INSERT INTO chat (user_id, title, created_at) VALUES (?, ?, ?)");
    const m = db.prepare("INSERT INTO message (chat_id, role, content) VALUES (?, ?, ?)");
    const users = 1000;
    const chats = 20_000;
    const msgsPerChat = Math.ceil(targetBytes / (chats * 1100));
    db.transaction(() => {
      for (let i = 0; i < users; i++) u.run(`user${i}@example.test`, `User ${i}`);
      let k = 0;
      for (let i = 0; i < chats; i++) {
        c.run((i % users) + 1, `chat ${i}`, 1_700_000_000 + i);
        for (let j = 0; j < msgsPerChat; j++) m.run(i + 1, j % 2 === 0 ? "user" : "assistant", pool[k++ & 255]!);
      }
    })();
    db.pragma("wal_checkpoint(TRUNCATE)");
  } finally {
    db.close();
  }
}

const WRITER = `
const Database = require('better-sqlite3');
const db = new Database(process.argv[1], { timeout: 10000 });
db.pragma('journal_mode = WAL');
const ins = db.prepare('INSERT INTO tick (at) VALUES (?)');
let n = 0;
console.log('ready');
setInterval(() => { ins.run(new Date().toISOString()); n++; }, 50);
process.on('SIGTERM', () => { console.log('commits ' + n); process.exit(0); });
`;

async function startWriter(dbPath: string): Promise<{ child: ChildProcess; stop: () => Promise<number> }> {
  const child = spawn(process.execPath, ["-e", WRITER, dbPath], { cwd: REPO, stdio: ["ignore", "pipe", "inherit"] });
  let out = "";
  child.stdout!.setEncoding("utf8");
  await new Promise<void>((resolve, reject) => {
    child.stdout!.on("data", (chunk: string) => {
      out += chunk;
      if (out.includes("ready\n")) resolve();
    });
    child.once("exit", (code) => reject(new Error(`writer exited early (${code})`)));
  });
  return {
    child,
    stop: async () => {
      const exited = new Promise<void>((resolve) => child.once("exit", () => resolve()));
      child.kill("SIGTERM");
      await exited;
      return Number(/commits (\d+)/.exec(out)?.[1] ?? "0");
    },
  };
}

/** Empties the kernel's page cache (root only); false when the machine does not allow it. */
function dropPageCache(): boolean {
  try {
    fs.writeFileSync("/proc/sys/vm/drop_caches", "3\n");
    return true;
  } catch {
    return false;
  }
}

/**
 * P2: the agent's whole SQLite backup (snapshot copy in a worker, fsync, then sha256 of the
 * finished file on this thread while the worker runs integrity_check, schema, row counts and
 * revisions against the snapshot, rename) ÷ `cp --reflink=never` of the same file, warm page cache (the
 * figure) and cold (a detail: both sides start from an emptied cache). P3: the same backup
 * while another process commits every 50 ms ÷ idle. 200 MB in --quick, 1 GB otherwise.
 */
export async function measure(opts: BenchOptions): Promise<Figure[]> {
  const base = process.env.FLOTILLA_BENCH_DIR ?? os.tmpdir();
  const dir = fs.mkdtempSync(path.join(base, "flotilla-bench-sqlite-"));
  const runs = opts.quick ? 3 : RUNS;
  try {
    const dbPath = path.join(dir, "webui.db");
    const bytes = opts.quick ? 200 * 1024 * 1024 : 1024 * 1024 * 1024;
    opts.log(`generating a ${Math.round(bytes / 1024 / 1024)} MiB database`);
    generateDatabase(dbPath, bytes);
    const size = fs.statSync(dbPath).size;
    const adapter = new (await loadAdapter()).SqliteDatabase({ path: dbPath });
    const workerStartMs: number[] = [];
    const runner = new NodeProcessRunner();
    const noProgress = (): void => undefined;
    let seq = 0;
    const dest = (): string => path.join(dir, `copy-${++seq}.db`);
    const cp = async (): Promise<number> => {
      const to = dest();
      const r = await runner.run({ argv: ["cp", "--reflink=never", dbPath, to], timeoutMs: 600_000 });
      if (r.exitCode !== 0) throw new Error(describeRun("cp", r));
      fs.rmSync(to);
      return r.durationMs;
    };
    let tool = "";
    const verifyAlone: number[] = [];
    // What the agent's takeBackup does: the backup's own check of the finished file (its proof) is
    // the verification; only an adapter without one is verified by reading the file again.
    const backupAndVerify = async (): Promise<number> => {
      const t0 = performance.now();
      const b = await adapter.backup(dest(), (p) => {
        const started = /worker start (\d+) ms/.exec(p.line);
        if (started?.[1] !== undefined) workerStartMs.push(Number(started[1]));
      });
      const v = b.proof ?? (await adapter.verifyBackup(b, noProgress));
      if (!v.ok) throw new Error(`verification failed: ${v.detail}`);
      const ms = performance.now() - t0;
      tool = b.tool;
      // A later, standalone verification (verify-backup, restore) re-reads the file: a detail.
      const t1 = performance.now();
      const again = await adapter.verifyBackup(b, noProgress);
      if (!again.ok) throw new Error(`re-verification failed: ${again.detail}`);
      verifyAlone.push(performance.now() - t1);
      fs.rmSync(b.path);
      return ms;
    };
    opts.log("cp and backup + verification, warm page cache");
    await cp();
    await backupAndVerify();
    const cpMs: number[] = [];
    const fullMs: number[] = [];
    for (let i = 0; i < runs; i++) {
      cpMs.push(await cp());
      fullMs.push(await backupAndVerify());
    }
    opts.log("cold page cache");
    const coldCp: number[] = [];
    const coldFull: number[] = [];
    let cold = true;
    for (let i = 0; i < Math.min(runs, 2) && cold; i++) {
      cold = dropPageCache();
      if (cold) coldCp.push(await cp());
      cold = cold && dropPageCache();
      if (cold) coldFull.push(await backupAndVerify());
    }
    opts.log("idle and busy backups (a writer commits every 50 ms)");
    const idleMs: number[] = [];
    for (let i = 0; i < runs; i++) {
      const t0 = performance.now();
      fs.rmSync((await adapter.backup(dest(), noProgress)).path);
      idleMs.push(performance.now() - t0);
    }
    const busyMs: number[] = [];
    const busyHow: string[] = [];
    const writer = await startWriter(dbPath);
    let commits: number;
    try {
      for (let i = 0; i < runs; i++) {
        const t0 = performance.now();
        const b = await adapter.backup(dest(), (p) => {
          const how = /by (snapshot copy(?: \+ \d+ WAL frames)?|VACUUM INTO)/.exec(p.line);
          if (how?.[1] !== undefined) busyHow.push(how[1].replace(/\d+ WAL frames/, "WAL frames"));
        });
        busyMs.push(performance.now() - t0);
        if (b.proof?.ok !== true) throw new Error(`busy backup failed its check: ${b.proof?.detail}`);
        fs.rmSync(b.path);
      }
    } finally {
      commits = await writer.stop();
    }
    const mb = round(size / 1e6, 1);
    return [
      ratioFigure("P2", `SQLite backup + sha256 + verification ÷ cp, ${mb} MB, warm cache`, median(fullMs), median(cpMs), "ms", `${tool}; median of ${runs}`),
      detailFigure("backup worker thread start", median(workerStartMs), "ms", "the adapter as bin/runtime.mjs loads it (dist/ when built)"),
      detailFigure(
        "standalone re-verification (sha256 ∥ integrity_check, schema, counts) ÷ cp",
        median(verifyAlone) / median(cpMs),
        "ratio",
        `${Math.round(median(verifyAlone))} ms`,
      ),
      coldFull.length > 0
        ? detailFigure(
            "P2 cold cache: backup + verification ÷ cp",
            median(coldFull) / median(coldCp),
            "ratio",
            `${Math.round(median(coldFull))} vs ${Math.round(median(coldCp))} ms`,
          )
        : detailFigure("P2 cold cache not measured (cannot write /proc/sys/vm/drop_caches)", 0, ""),
      ratioFigure(
        "P3",
        "SQLite backup while a writer commits every 50 ms ÷ idle backup",
        median(busyMs),
        median(idleMs),
        "ms",
        `writer committed ${commits} times; busy copies by ${[...new Set(busyHow)].join(", ")}; median of ${runs}`,
      ),
      detailFigure("backup + verification throughput", mb / (median(fullMs) / 1000), "MB/s"),
      detailFigure("cp throughput", mb / (median(cpMs) / 1000), "MB/s"),
    ];
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}
