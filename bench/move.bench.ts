/**
 * `flotilla move` benchmark (P11 of the move issue): the agent's Move of a
 * ~200 MB Open WebUI-shaped SQLite database into an empty PostgreSQL
 * database, ÷ `pgloader` (Debian package) loading the same file into another
 * empty database, in the same run. Goal ≤ 1.0.
 *
 * The move is measured whole, as an operator gets it: preflight (revision,
 * orphans), backup + verification + integrity check of FROM, `alembic upgrade`
 * on TO, the COPY, sequences, and the per-table checksum verification; it runs
 * in a real agent over gRPC on loopback. pgloader only copies (it builds its own
 * schema from the SQLite one and verifies nothing). Runs alternate
 * (pgloader, move, pgloader, move) so load drift hits both; the figure is the
 * ratio of the medians; the move's steps are detail lines. `--quick` uses a
 * ~30 MB file and one run each.
 *
 * Run alone: `npx tsx bench/move.bench.ts [--quick]`.
 */
import { randomBytes } from "node:crypto";
import { readFileSync } from "node:fs";
import { mkdtemp, rm, stat, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { pathToFileURL, fileURLToPath } from "node:url";
import { Writable } from "node:stream";
import pg from "pg";
import { NodeProcessRunner } from "../services/common/process-runner.js";
import { createLogger } from "../services/common/logger.js";
import { AgentService } from "../services/common/gen/flotilla/v1/agent_pb.js";
import { channelCredentials, createClient } from "../services/common/grpc-bridge.js";
import { loadAgentConfig } from "../services/agent/config.js";
import { startAgent } from "../services/agent/main.js";
import { detailFigure, median, ratioFigure, type BenchOptions, type Figure } from "./figure.js";

const ROOT = resolve(fileURLToPath(new URL(".", import.meta.url)), "..");
const FIXTURE = join(ROOT, "test/fixtures/webui");
const SECRET = "bench-secret";
const PGLOADER = "/usr/bin/pgloader";

export async function measure(opts: BenchOptions): Promise<Figure[]> {
  const adminUrl = process.env.FLOTILLA_TEST_PG_URL || "postgresql://postgres@127.0.0.1:5432/postgres";
  const runner = new NodeProcessRunner();
  const work = await mkdtemp(join(tmpdir(), "flotilla-move-bench-"));
  const tag = `${process.pid}_${randomBytes(3).toString("hex")}`;
  const databases: string[] = [];
  const admin = new pg.Client({ connectionString: adminUrl });
  await admin.connect();
  const urlOf = (name: string): string => {
    const u = new URL(adminUrl);
    u.pathname = `/${name}`;
    return u.toString();
  };
  const createDb = async (name: string): Promise<string> => {
    await admin.query(`CREATE DATABASE ${pg.escapeIdentifier(name)}`);
    databases.push(name);
    return urlOf(name);
  };
  const exec = async (argv: string[], env: Record<string, string>, cwd?: string): Promise<void> => {
    const r = await runner.run({ argv, env: { ...(process.env as Record<string, string>), ...env }, timeoutMs: 30 * 60_000, ...(cwd ? { cwd } : {}) });
    if (r.exitCode !== 0) throw new Error(`${argv[0]} failed (${r.exitCode}): ${r.stderr.slice(-1500)}`);
  };
  let agent: Awaited<ReturnType<typeof startAgent>> | undefined;
  try {
    // The SQLite file: the fixture's schema at head, seeded like an Open WebUI install.
    const file = join(work, "webui.db");
    const env = { DATABASE_URL: `sqlite:///${file}`, WEBUI_SECRET_KEY: SECRET, FIXTURE_PROGRESS: "0" };
    await exec(["alembic", "upgrade", "c3d2e1f00d42"], env, FIXTURE);
    const chats = opts.quick ? 8000 : 55_000;
    await exec(
      ["/usr/bin/python3", join(FIXTURE, "seed.py"), file, "--users", "1000", "--chats", String(chats), "--msgs-per-chat", "10", "--seed", "11"],
      env,
      FIXTURE,
    );
    await exec(["alembic", "upgrade", "head"], env, FIXTURE);
    const bytes = (await stat(file)).size;

    const runs = opts.quick ? 1 : 2;
    const targets: Record<string, unknown>[] = [];
    const pgloaderDbs: string[] = [];
    for (let i = 0; i < runs; i++) {
      pgloaderDbs.push(await createDb(`flotilla_bench_pgl_${tag}_${i}`));
      const to = await createDb(`flotilla_bench_move_${tag}_${i}`);
      targets.push({
        id: `to-${i}`,
        database: to,
        alembic: { dir: FIXTURE, command: ["alembic"], env: { WEBUI_SECRET_KEY: SECRET } },
        backups: { dir: join(work, "backups", `to-${i}`), keep: 2 },
      });
    }
    targets.push({
      id: "from",
      database: `sqlite:///${file}`,
      alembic: { dir: FIXTURE, command: ["alembic"], env: { WEBUI_SECRET_KEY: SECRET } },
      backups: { dir: join(work, "backups", "from"), keep: 2 },
    });
    const configPath = join(work, "agent.yaml");
    await writeFile(configPath, JSON.stringify({ agentId: "bench", listen: "127.0.0.1:0", dataDir: join(work, "agent"), targets, apps: [] }));
    const config = loadAgentConfig({ argv: ["--config", configPath], env: {}, readFile: (p) => readFileSync(p, "utf8"), hostname: "bench" });
    const quiet = createLogger({ name: "bench-agent", level: "warn", destination: new Writable({ write: (_c, _e, cb) => cb() }) });
    agent = await startAgent(config, quiet);
    const client = createClient(AgentService, `127.0.0.1:${agent.port}`, channelCredentials());

    const pgloaderMs: number[] = [];
    const moveMs: number[] = [];
    const steps: Record<string, number[]> = {};
    for (let i = 0; i < runs; i++) {
      const t0 = performance.now();
      await exec([PGLOADER, "--quiet", file, pgloaderDbs[i]!], {}, work);
      pgloaderMs.push(performance.now() - t0);

      const t1 = performance.now();
      let status = "";
      let message = "";
      for await (const ev of client.move({ fromTargetId: "from", toTargetId: `to-${i}`, operationId: `bench-${tag}-${i}` }, { timeoutMs: 60 * 60_000 })) {
        if (ev.event.case === "step" && ev.event.value.state === "succeeded")
          (steps[ev.event.value.name.split(":")[0]!] ??= []).push(Number(ev.event.value.durationMs));
        if (ev.event.case === "result") {
          status = ev.event.value.status;
          message = ev.event.value.message;
        }
      }
      moveMs.push(performance.now() - t1);
      if (status !== "succeeded") throw new Error(`move failed: ${message}`);
    }
    client.close();
    const move = median(moveMs);
    const loader = median(pgloaderMs);
    const detail = `${(bytes / 1e6).toFixed(0)} MB SQLite file, ${runs} run(s) each, alternating; pgloader ${pgloaderMs.map(Math.round).join("/")} ms; move ${moveMs.map(Math.round).join("/")} ms`;
    opts.log(`move: ${detail}`);
    return [
      ratioFigure(
        "P11",
        `SQLite → PostgreSQL move (${(bytes / 1e6).toFixed(0)} MB: backup, schema, COPY, per-table checksums) ÷ pgloader on the same database`,
        move,
        loader,
        "ms",
        detail,
      ),
      ...Object.entries(steps).map(([name, v]) => detailFigure(`move step ${name}`, median(v), "ms")),
    ];
  } finally {
    await agent?.stop(true).catch(() => undefined);
    for (const name of databases) {
      await admin.query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()", [name]).catch(() => undefined);
      await admin.query(`DROP DATABASE IF EXISTS ${pg.escapeIdentifier(name)}`).catch(() => undefined);
    }
    await admin.end().catch(() => undefined);
    await rm(work, { recursive: true, force: true });
  }
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? "").href) {
  measure({ quick: process.argv.includes("--quick"), log: (line) => process.stderr.write(`${line}\n`) }).then(
    (figures) => {
      process.stdout.write(`${JSON.stringify(figures, null, 2)}\n`);
    },
    (err: unknown) => {
      process.stderr.write(`${err instanceof Error ? err.stack : String(err)}\n`);
      process.exitCode = 1;
    },
  );
}
