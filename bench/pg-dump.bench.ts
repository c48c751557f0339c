/**
 * PostgreSQL backup benchmark (P4): the agent's whole backup (pg_dump -Fc -Z1 under one
 * exported snapshot, a `pg_restore -f /dev/null` reading the archive as it is written, fsync,
 * sha256, `pg_restore --list` of the final file) with that full-read verification as its proof
 * (what takeBackup uses) ÷ a bare `pg_dump -Fc` at default compression — what an operator
 * following the guide would run — on the same ~100 MB database (FLOTILLA_TEST_PG_URL), same run,
 * medians after a warm-up, the order of the sides alternating. Details: the adapter ÷ bare -Z1,
 * dump start-up, throughput. Run alone: `npx tsx bench/pg-dump.bench.ts`.
 */
import { randomBytes } from "node:crypto";
import { mkdtemp, rm, stat } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { pathToFileURL } from "node:url";
import pg from "pg";
import { NodeProcessRunner, describeRun, type ProcessRunner } from "../services/common/process-runner.js";
import { libpqEnv, parsePgUrl, withDatabase } from "../services/agent/adapters/pg-url.js";
import { PostgresDatabase } from "../services/agent/adapters/postgres-database.js";
import { type BenchOptions, type Figure, detailFigure, median, ratioFigure } from "./figure.js";

const RUNS = 3;
const ROWS = 190_000;

async function timed<T>(fn: () => Promise<T>): Promise<{ ms: number; value: T }> {
  const t0 = performance.now();
  const value = await fn();
  return { ms: performance.now() - t0, value };
}

/** P4 on a ~100 MB Open WebUI-like database (FLOTILLA_TEST_PG_URL). */
export async function measure(opts: BenchOptions): Promise<Figure[]> {
  const runs = opts.quick ? 2 : RUNS;
  const adminUrl = process.env.FLOTILLA_TEST_PG_URL || "postgresql://postgres@127.0.0.1:5432/postgres";
  const adminParts = parsePgUrl(adminUrl);
  const name = `flotilla_bench_pgdump_${process.pid}_${randomBytes(3).toString("hex")}`;
  const work = await mkdtemp(join(tmpdir(), "flotilla-pgdump-bench-"));
  const connect = async (database: string): Promise<pg.Client> => {
    const c = new pg.Client({
      host: adminParts.host,
      port: adminParts.port,
      user: adminParts.user,
      database,
      ...(adminParts.password !== undefined ? { password: adminParts.password } : {}),
      application_name: "flotilla-bench",
    });
    await c.connect();
    return c;
  };
  const admin = await connect(adminParts.database);
  await admin.query(`CREATE DATABASE ${pg.escapeIdentifier(name)}`);
  try {
    const seed = await connect(name);
    try {
      // Open WebUI-like rows: a chat's messages as JSON text (words from a small vocabulary, compressible
      // like real chat text) next to hex ids (barely compressible), plus a user table and an index.
      await seed.query(`
        CREATE TABLE "user" (id int PRIMARY KEY, email text NOT NULL, name text);
        INSERT INTO "user" SELECT g, 'user' || g || '@example.org', 'User ' || g FROM generate_series(1, 5000) g;
        CREATE TABLE chat (id bigint PRIMARY KEY, user_id int NOT NULL, share_id text, title text, chat text, created_at timestamptz NOT NULL);
        INSERT INTO chat
          SELECT g, 1 + g % 5000, md5(g::text), 'chat ' || g,
                 json_build_object(
                   'id', md5((g * 7)::text),
                   'messages', json_build_array(
                     json_build_object('role', 'user', 'content',
                       (SELECT string_agg((ARRAY['the','model','answer','question','please','explain','database','migration',
                          'backup','server','agent','restore','table','column','index','value','error','works','again','why',
                          'how','when','open','webui','python','alembic','upgrade','version','check','data'])[1 + (g::bigint * k * 7919 + k * 31) % 30], ' ')
                          FROM generate_series(1, 12) k)),
                     json_build_object('role', 'assistant', 'content',
                       (SELECT string_agg((ARRAY['sure','here','is','a','short','answer','with','some','detail','about','your',
                          'question','and','an','example','that','should','help','you','move','forward','today','first','then',
                          'finally','note','step','run','command','result'])[1 + (g::bigint * k * 104729 + k * 17) % 30], ' ')
                          FROM generate_series(1, 24) k))))::text,
                 timestamptz '2024-01-01' + g * interval '1 second'
            FROM generate_series(1, ${ROWS}) g;
        CREATE INDEX chat_user_id ON chat (user_id);
      `);
      await seed.query("VACUUM ANALYZE"); // not allowed in the multi-statement (implicit transaction) above
    } finally {
      await seed.end();
    }
    const dbBytes = Number((await admin.query<{ s: string }>("SELECT pg_database_size($1)::text AS s", [name])).rows[0]?.s);

    const runner = new NodeProcessRunner();
    // Times the pg_dump child the adapter starts, to split its overhead into "dump slowed by the
    // concurrent counts" and "serial work around the dump" (connect, snapshot, fsync, sha256, rename).
    let adapterDumpMs = 0;
    const timingRunner: ProcessRunner = {
      async run(options) {
        const t = await timed(() => runner.run(options));
        if (options.argv[0] === "pg_dump" && options.argv.some((a) => a.startsWith("--snapshot="))) adapterDumpMs = t.ms;
        return t.value;
      },
    };
    const url = `postgresql://${encodeURIComponent(adminParts.user)}@${adminParts.host.includes(":") ? `[${adminParts.host}]` : adminParts.host}:${adminParts.port}/${name}`;
    const adapter = new PostgresDatabase({
      url,
      ...(adminParts.password !== undefined ? { password: adminParts.password } : {}),
      runner: timingRunner,
      scratchDir: work,
    });
    const env = { ...libpqEnv(withDatabase(adminParts, name)), PGAPPNAME: "flotilla-bench pg_dump" };
    const bare = async (flags: readonly string[], file: string): Promise<number> => {
      // The adapter's argv without --snapshot (which needs the exporting transaction), through the same runner.
      const { ms, value: r } = await timed(() => runner.run({ argv: ["pg_dump", "--no-password", ...flags, `--file=${file}`], env }));
      if (r.exitCode !== 0) throw new Error(`${describeRun("pg_dump", r)}: ${r.stderr}`);
      return ms;
    };

    const adapterMs: number[] = [];
    const adapterChildMs: number[] = [];
    const schemaOnlyMs: number[] = [];
    const bareZ1Ms: number[] = [];
    const defaultMs: number[] = [];
    const verifyMs: number[] = [];
    const reverifyMs: number[] = [];
    let z1Bytes = 0;
    let defaultBytes = 0;
    for (let i = 0; i <= runs; i++) {
      const warmup = i === 0;
      const a = join(work, `adapter-${i}.dump`);
      const b = join(work, `bare-z1-${i}.dump`);
      const d = join(work, `default-${i}.dump`);
      // Alternate the order so cache warmth and drift do not favour one side.
      const order = i % 2 === 0 ? ["adapter", "bare", "default", "schema"] : ["schema", "default", "bare", "adapter"];
      for (const which of order) {
        if (which === "adapter") {
          const t = await timed(() => adapter.backup(a, () => undefined));
          // What the agent's takeBackup does: the backup's proof (a full pg_restore read while the archive was
          // written, the final TOC, the sha256 of the finished file) is the verification; otherwise read it again.
          const proof = t.value.proof;
          const v = proof !== undefined ? { ms: 0, value: proof } : await timed(() => adapter.verifyBackup(t.value, () => undefined));
          if (!v.value.ok) throw new Error(`verification failed: ${v.value.detail}`);
          // A later, standalone verification (verify-backup, restore) re-reads the archive: a detail.
          const again = await timed(() => adapter.verifyBackup(t.value, () => undefined));
          if (!again.value.ok) throw new Error(`re-verification failed: ${again.value.detail}`);
          if (!warmup) {
            adapterMs.push(t.ms);
            adapterChildMs.push(adapterDumpMs);
            verifyMs.push(v.ms);
            reverifyMs.push(again.ms);
          }
          z1Bytes = t.value.sizeBytes;
        } else if (which === "bare") {
          const ms = await bare(["-Fc", "-Z1"], b);
          if (!warmup) bareZ1Ms.push(ms);
        } else if (which === "schema") {
          // Start-up and catalog work without data: the fixed part of every dump.
          const ms = await bare(["-Fc", "-Z1", "--schema-only"], `${d}.schema`);
          if (!warmup) schemaOnlyMs.push(ms);
          await rm(`${d}.schema`, { force: true });
        } else {
          const ms = await bare(["-Fc"], d);
          if (!warmup) defaultMs.push(ms);
          defaultBytes = (await stat(d)).size;
        }
      }
      await Promise.all([a, b, d].map((f) => rm(f, { force: true })));
    }
    const mA = median(adapterMs);
    const mB = median(bareZ1Ms);
    const mD = median(defaultMs);
    const mV = median(verifyMs);
    const mC = median(adapterChildMs);
    const mS = median(schemaOnlyMs);
    const mb = (bytes: number): string => `${(bytes / 1e6).toFixed(1)} MB`;
    return [
      ratioFigure(
        "P4",
        `PostgreSQL backup + full-read verification ÷ pg_dump -Fc at default compression, ${mb(dbBytes)} database`,
        mA + mV,
        mD,
        "ms",
        `adapter backup ${Math.round(mA)} ms (pg_dump -Fc -Z1 under one snapshot, a pg_restore -f /dev/null reading it as it is written, fsync, sha256, pg_restore --list) + separate verification ${Math.round(mV)} ms; default -Fc ${Math.round(mD)} ms, ${mb(defaultBytes)} vs -Z1 ${mb(z1Bytes)}; median of ${runs}`,
      ),
      detailFigure("standalone re-verification (sha256 ∥ pg_restore -f /dev/null)", median(reverifyMs), "ms"),
      detailFigure("adapter backup ÷ bare pg_dump -Fc -Z1", mA / mB, "ratio", `bare ${Math.round(mB)} ms; the adapter's pg_dump child ${Math.round(mC)} ms`),
      detailFigure("dump start-up (--schema-only)", mS, "ms"),
      detailFigure("pg_dump -Fc -Z1 throughput", dbBytes / 1e6 / (mB / 1000), "MB/s"),
    ];
  } finally {
    await admin.query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()", [name]).catch(() => undefined);
    await admin.query(`DROP DATABASE IF EXISTS ${pg.escapeIdentifier(name)}`);
    await admin.end();
    await rm(work, { recursive: true, force: true });
  }
}

if (process.argv[1] !== undefined && import.meta.url === pathToFileURL(resolve(process.argv[1])).href) {
  for (const f of await measure({ quick: process.argv.includes("--quick"), log: (l) => process.stderr.write(`${l}\n`) }))
    process.stdout.write(`${JSON.stringify(f)}\n`);
}
