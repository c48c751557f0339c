// Audit log append rate against a raw single-row insert on the same engine, in the same run.
//
//   P8s: AuditLog.append on SqliteStore (WAL, synchronous=FULL) ÷ raw better-sqlite3 single-row
//        autocommit INSERT (WAL, synchronous=FULL). Goal ≥ 0.9.
//   P8p: AuditLog.append on PostgresStore ÷ raw node-postgres single-row autocommit INSERT, same
//        server. Goal ≥ 0.9.
//
// Each side writes ROWS rows one at a time (each row committed before the next starts). The
// two sides alternate in chunks of CHUNK rows, so both see the same background load (fsync cost
// on a shared disk drifts by several times within seconds); the figure is the median of the
// per-pair ratios (see interleaved()). SQLite files live in a temporary folder; the
// PostgreSQL database is created fresh (FLOTILLA_TEST_PG_URL's server) and dropped afterwards.
//
//   npx tsx bench/audit.bench.ts
import { randomBytes } from "node:crypto";
import { mkdtempSync, rmSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { pathToFileURL } from "node:url";
import Database from "better-sqlite3";
import pg from "pg";
import { createTestDatabase } from "../test/helpers/pg.js";
import { AuditLog } from "../services/controller/audit/audit-log.js";
import { checkpointPathFor, loadOrCreateAuditKey } from "../services/controller/audit/audit-key.js";
import { PostgresStore } from "../services/controller/store/postgres-store.js";
import { SqliteStore } from "../services/controller/store/sqlite-store.js";
import { type BenchOptions, type Figure, median, round } from "./figure.js";

const ROWS = 2000;
const CHUNK = 20;
const WARMUP = 50;

const RAW_TABLE = `CREATE TABLE raw_audit (
  seq BIGINT PRIMARY KEY, time TEXT NOT NULL, actor TEXT NOT NULL, action TEXT NOT NULL, target TEXT NOT NULL,
  args TEXT NOT NULL, outcome TEXT NOT NULL, detail TEXT NOT NULL, prev_hash TEXT NOT NULL, hash TEXT NOT NULL)`;

/**
 * Random 64-hex-digit values made before timing starts: the plain rows carry hash-like
 * prev_hash and hash as the audit rows do (the audit side computes its HMACs in its timed
 * work). Repeated "000…"/"fff…" made the plain rows cheaper to store on this machine's disk:
 * the same insert with random hex ran at 0.955, 0.933 and 0.968 of it (median of paired chunks).
 */
const HEX = Array.from({ length: 4096 }, () => randomBytes(32).toString("hex"));

/** The same row the audit log writes: same columns, a similar payload. */
function rawRow(seq: number): unknown[] {
  return [
    seq,
    new Date().toISOString(),
    "alice",
    "rollout.step",
    "webui-1",
    `{"i":${seq},"step":"migrate"}`,
    "intent",
    `step ${seq}`,
    HEX[(seq - 1) % HEX.length],
    HEX[seq % HEX.length],
  ];
}

function entry(i: number) {
  return { actor: "alice", action: "rollout.step", target: "webui-1", args: { i, step: "migrate" }, outcome: "intent" as const, detail: `step ${i}` };
}

interface Rates {
  /** Rows per second of each side over the whole run. */
  baseline: number;
  subject: number;
  /** Median over the chunk pairs of (subject rate ÷ baseline rate) within the pair. */
  medianRatio: number;
  pairs: number;
}

/**
 * Each side writes ROWS rows in alternating chunks of CHUNK after a warm-up. The figure is the
 * median of the per-pair ratios: another tenant's burst of slow fsyncs (seen here: a commit
 * going from 0.15 to 3 ms for a second or more) lands on one side of one or two pairs and moves
 * the median little, where it moved the ratio of the summed times by up to ±0.15 between runs.
 */
async function interleaved(baseline: (i: number) => unknown, subject: (i: number) => unknown): Promise<Rates> {
  for (let i = 0; i < WARMUP; i++) {
    await baseline(i);
    await subject(i);
  }
  let tb = 0;
  let ts = 0;
  const ratios: number[] = [];
  for (let done = 0; done < ROWS; done += CHUNK) {
    let t0 = process.hrtime.bigint();
    for (let i = done; i < done + CHUNK; i++) await baseline(WARMUP + i);
    const b = Number(process.hrtime.bigint() - t0);
    t0 = process.hrtime.bigint();
    for (let i = done; i < done + CHUNK; i++) await subject(WARMUP + i);
    const s = Number(process.hrtime.bigint() - t0);
    tb += b;
    ts += s;
    ratios.push(b / s);
  }
  return { baseline: ROWS / (tb / 1e9), subject: ROWS / (ts / 1e9), medianRatio: median(ratios), pairs: ratios.length };
}

function rateFigure(id: string, name: string, r: Rates): Figure {
  return {
    id,
    name,
    ratio: round(r.medianRatio),
    value: round(r.subject, 2),
    baseline: round(r.baseline, 2),
    unit: "rows/s",
    detail: `median of ${r.pairs} alternating ${CHUNK}-row chunk pairs; whole-run rates give ${round(r.subject / r.baseline)}`,
  };
}

async function sqliteRates(dir: string): Promise<Rates> {
  const raw = new Database(path.join(dir, "raw.db"));
  raw.pragma("journal_mode = WAL");
  raw.pragma("synchronous = FULL");
  raw.exec(RAW_TABLE);
  const insert = raw.prepare("INSERT INTO raw_audit VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)");
  const store = new SqliteStore(path.join(dir, "audit.db"));
  await store.init();
  const keyFile = path.join(dir, "sqlite.key");
  const log = new AuditLog(store, await loadOrCreateAuditKey(keyFile), { checkpointFile: checkpointPathFor(keyFile) });
  try {
    const r = await interleaved(
      (i) => insert.run(...rawRow(i + 1)),
      (i) => log.append(entry(i)),
    );
    const check = await log.verify();
    if (!check.ok || check.checked !== WARMUP + ROWS) throw new Error(`SQLite audit chain does not verify after the bench: ${check.reason}`);
    return r;
  } finally {
    await store.close();
    raw.close();
  }
}

async function postgresRates(dir: string): Promise<Rates> {
  const db = await createTestDatabase("bench_audit");
  const client = new pg.Client({ connectionString: db.url });
  const store = new PostgresStore(db.url);
  try {
    await client.connect();
    await client.query(RAW_TABLE);
    await store.init();
    const keyFile = path.join(dir, "pg.key");
    const log = new AuditLog(store, await loadOrCreateAuditKey(keyFile), { checkpointFile: checkpointPathFor(keyFile) });
    const sql = "INSERT INTO raw_audit VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)";
    const r = await interleaved(
      (i) => client.query(sql, rawRow(i + 1)),
      (i) => log.append(entry(i)),
    );
    const check = await log.verify();
    if (!check.ok || check.checked !== WARMUP + ROWS) throw new Error(`PostgreSQL audit chain does not verify after the bench: ${check.reason}`);
    return r;
  } finally {
    await client.end().catch(() => undefined);
    await store.close().catch(() => undefined);
    await db.drop();
  }
}

/** P8s and P8p: rows/s of the audit append ÷ rows/s of a plain insert, same engine, same run. */
export async function measure(opts: BenchOptions): Promise<Figure[]> {
  const dir = mkdtempSync(path.join(os.tmpdir(), "flotilla-bench-audit-"));
  try {
    opts.log(`SQLite: ${ROWS} appends against ${ROWS} plain inserts, interleaved`);
    const s = await sqliteRates(dir);
    opts.log(`PostgreSQL: ${ROWS} appends against ${ROWS} plain inserts, interleaved`);
    const p = await postgresRates(dir);
    return [
      rateFigure("P8s", "audit append with the HMAC chain ÷ plain insert (WAL, synchronous=FULL), SQLite", s),
      rateFigure("P8p", "audit append with the HMAC chain ÷ plain autocommit insert, PostgreSQL", p),
    ];
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

if (process.argv[1] !== undefined && import.meta.url === pathToFileURL(path.resolve(process.argv[1])).href) {
  for (const f of await measure({ quick: false, log: (l) => process.stderr.write(`${l}\n`) })) process.stdout.write(`${JSON.stringify(f)}\n`);
}
