/**
 * SQLite backup benchmark: the agent's SqliteDatabase adapter against
 * same-run baselines on a ~200 MB WAL database (medians of 3, warm cache).
 *
 *   P1  adapter backup() time ÷ `cp --reflink=never` time of the same file
 *       (backup() includes VACUUM INTO, fsync, row counts, sha256, rename)
 *   P2  backup() time while another process commits every 50 ms ÷ idle backup() time
 *   P3  max event-loop stall during backup(), 5 ms setInterval probe (ms)
 *   P6  verifyBackup() time ÷ backup() time
 *   P5  quick_check and integrity_check s/GiB, and their ratio
 *
 * `run()` returns the metrics; running the file directly prints them.
 * Everything lives in a temp directory (FLOTILLA_BENCH_DIR to choose where)
 * that is removed afterwards.
 */
import { spawn } from "node:child_process";
import type { ChildProcess } from "node:child_process";
import { randomBytes } from "node:crypto";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { fileURLToPath } from "node:url";
import Database from "better-sqlite3";
import { NodeProcessRunner, describeRun } from "../services/common/process-runner.js";
import { SqliteDatabase } from "../services/agent/adapters/sqlite-database.js";

export interface BenchMetric {
  name: string;
  value: number;
  unit: string;
  baseline: string;
}

const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
const TARGET_BYTES = 200 * 1024 * 1024;
const RUNS = 3;
const GIB = 1024 ** 3;

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = Math.floor(s.length / 2);
  return s.length % 2 === 1 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
}

function round(x: number, digits = 3): number {
  const f = 10 ** digits;
  return Math.round(x * f) / f;
}

/** ~200 MB Open WebUI-like database in WAL mode: users, chats (indexed title), messages. */
function generateDatabase(file: string): void {
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
    const msgsPerChat = Math.ceil(TARGET_BYTES / (chats * 1100));
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

/** Runs fn while a 5 ms interval measures the longest gap beyond its period. */
async function withStallProbe<T>(fn: () => Promise<T>): Promise<{ value: T; maxStallMs: number; ms: number }> {
  let last = performance.now();
  let maxStall = 0;
  const probe = setInterval(() => {
    const now = performance.now();
    maxStall = Math.max(maxStall, now - last - 5);
    last = now;
  }, 5);
  const t0 = performance.now();
  try {
    const value = await fn();
    const ms = performance.now() - t0;
    const now = performance.now();
    maxStall = Math.max(maxStall, now - last - 5);
    return { value, maxStallMs: Math.max(0, maxStall), ms };
  } finally {
    clearInterval(probe);
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

function timeSync(fn: () => void): number {
  const t0 = performance.now();
  fn();
  return performance.now() - t0;
}

/** Measures and returns the metrics; creates and removes its own temp directory. */
export async function run(): Promise<BenchMetric[]> {
  const base = process.env.FLOTILLA_BENCH_DIR ?? os.tmpdir();
  const dir = fs.mkdtempSync(path.join(base, "flotilla-bench-sqlite-"));
  const say = (s: string): void => void process.stderr.write(`sqlite-backup bench: ${s}\n`);
  try {
    const dbPath = path.join(dir, "webui.db");
    say("generating the database");
    generateDatabase(dbPath);
    const size = fs.statSync(dbPath).size;
    say(`database is ${(size / 1024 / 1024).toFixed(1)} MiB`);
    const adapter = new SqliteDatabase({ path: dbPath });
    const runner = new NodeProcessRunner();
    const noProgress = (): void => undefined;
    // The adapter's final line carries its phase timings: "(worker start 250 ms, vacuum 900 ms, …)".
    const phases: Record<string, number[]> = {};
    const recordPhases = (p: { line: string }): void => {
      const m = /^backup: done, .*\(([^()]*)\)$/.exec(p.line);
      for (const part of m?.[1]?.split(", ") ?? []) {
        const pm = /^(.*) (\d+) ms$/.exec(part);
        if (pm?.[1] !== undefined) (phases[pm[1]] ??= []).push(Number(pm[2]));
      }
    };
    let seq = 0;
    const dest = (): string => path.join(dir, `copy-${++seq}.db`);

    const cp = async (): Promise<number> => {
      const to = dest();
      const r = await runner.run({ argv: ["cp", "--reflink=never", dbPath, to], timeoutMs: 120_000 });
      if (r.exitCode !== 0) throw new Error(describeRun("cp", r));
      fs.rmSync(to);
      return r.durationMs;
    };
    await cp(); // warm the page cache
    const cpMs: number[] = [];
    for (let i = 0; i < RUNS; i++) cpMs.push(await cp());

    say("idle backups");
    const backupMs: number[] = [];
    const stallMs: number[] = [];
    const verifyMs: number[] = [];
    const verifyStallMs: number[] = [];
    for (let i = 0; i < RUNS; i++) {
      const b = await withStallProbe(() => adapter.backup(dest(), recordPhases));
      backupMs.push(b.ms);
      stallMs.push(b.maxStallMs);
      const v = await withStallProbe(() => adapter.verifyBackup(b.value, noProgress));
      if (!v.value.ok) throw new Error(`verification failed: ${v.value.detail}`);
      verifyMs.push(v.ms);
      verifyStallMs.push(v.maxStallMs);
      fs.rmSync(b.value.path);
    }

    say("raw VACUUM INTO (no fsync, hash or counts)");
    const rawMs: number[] = [];
    for (let i = 0; i < RUNS; i++) {
      const to = dest();
      const src = new Database(dbPath, { readonly: true });
      rawMs.push(timeSync(() => src.prepare("VACUUM INTO ?").run(to)));
      src.close();
      fs.rmSync(to);
    }

    say("backups while another process commits every 50 ms");
    const busyMs: number[] = [];
    const writer = await startWriter(dbPath);
    let commits: number;
    try {
      for (let i = 0; i < RUNS; i++) {
        const b = await withStallProbe(() => adapter.backup(dest(), noProgress));
        busyMs.push(b.ms);
        fs.rmSync(b.value.path);
      }
    } finally {
      commits = await writer.stop();
    }

    say("quick_check and integrity_check");
    const gib = fs.statSync(dbPath).size / GIB;
    const quickMs: number[] = [];
    const fullMs: number[] = [];
    for (let i = 0; i < RUNS; i++) {
      const db = new Database(dbPath, { readonly: true });
      quickMs.push(timeSync(() => db.pragma("quick_check")));
      fullMs.push(timeSync(() => db.pragma("integrity_check")));
      db.close();
    }
    const checkStallMs: number[] = [];
    for (let i = 0; i < RUNS; i++) {
      const c = await withStallProbe(() => adapter.integrityCheck());
      if (!c.value.ok) throw new Error(`integrity check failed: ${c.value.detail}`);
      checkStallMs.push(c.maxStallMs);
    }

    const mb = size / 1e6;
    const cpMed = median(cpMs);
    const backupMed = median(backupMs);
    const busyMed = median(busyMs);
    const sameRun = "same file, same run, median of 3";
    return [
      { name: "P1 backup() time ÷ cp time", value: round(backupMed / cpMed), unit: "ratio", baseline: `cp --reflink=never, ${sameRun}` },
      { name: "P1 raw VACUUM INTO time ÷ cp time", value: round(median(rawMs) / cpMed), unit: "ratio", baseline: `cp --reflink=never, ${sameRun}` },
      { name: "P2 busy backup() time ÷ idle backup() time", value: round(busyMed / backupMed), unit: "ratio", baseline: `idle backup(), ${sameRun}; writer committed ${commits} times` },
      { name: "P3 max event-loop stall during backup()", value: round(median(stallMs), 1), unit: "ms", baseline: "5 ms setInterval probe, median of 3 runs' maxima" },
      { name: "P3 max event-loop stall during verifyBackup()", value: round(median(verifyStallMs), 1), unit: "ms", baseline: "5 ms setInterval probe, median of 3 runs' maxima" },
      { name: "P3 max event-loop stall during integrityCheck()", value: round(median(checkStallMs), 1), unit: "ms", baseline: "5 ms setInterval probe, median of 3 runs' maxima" },
      { name: "P6 verifyBackup() time ÷ backup() time", value: round(median(verifyMs) / backupMed), unit: "ratio", baseline: `idle backup(), ${sameRun}` },
      { name: "P5 quick_check", value: round(median(quickMs) / 1000 / gib), unit: "s/GiB", baseline: "warm cache, median of 3" },
      { name: "P5 integrity_check", value: round(median(fullMs) / 1000 / gib), unit: "s/GiB", baseline: "warm cache, median of 3" },
      { name: "P5 integrity_check ÷ quick_check", value: round(median(fullMs) / median(quickMs)), unit: "ratio", baseline: "same file, same run, median of 3" },
      ...Object.entries(phases).map(([phase, ms]) => ({ name: `backup() phase: ${phase}`, value: Math.round(median(ms)), unit: "ms", baseline: "absolute, idle, median of 3" })),
      { name: "backup() throughput", value: round(mb / (backupMed / 1000), 1), unit: "MB/s", baseline: `absolute; database ${round(mb, 1)} MB` },
      { name: "cp throughput", value: round(mb / (cpMed / 1000), 1), unit: "MB/s", baseline: "absolute" },
    ];
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const metrics = await run();
  for (const m of metrics) console.log(`${m.name.padEnd(50)} ${String(m.value).padStart(9)} ${m.unit.padEnd(6)} (${m.baseline})`);
}
