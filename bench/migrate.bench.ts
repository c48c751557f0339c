/**
 * The figures a user feels when migrating: the agent against Alembic run by hand, on the
 * fixture's long chain (test/fixtures/webui/alembic-chain.ini: 19 revisions, 16 pending from
 * the seeded c3d2e1f00d42, four of them moving data), SQLite and PostgreSQL.
 *
 *   P1   the agent's GetStatus (current, heads, pending; the revision graph warm, as it is
 *        between a rollout's calls) ÷ what an operator runs by hand for the same answer:
 *        `alembic current -v`, `heads`, `history`, `branches`, one after another.
 *   P5   the longest event-loop stall of the (in-process) agent during a verified backup
 *        and a migration ÷ 50 ms.
 *   P6s  the agent's Migrate (the rollout's verified backup already taken, as in every
 *        strategy; what is timed is the migrate step the user waits for: policy checks,
 *        Alembic, post-migration verification) ÷ a bare `alembic upgrade head` on an
 *        identical copy. SQLite.
 *   P6p  the same on PostgreSQL (copies made with CREATE DATABASE … TEMPLATE).
 *
 * One warm-up, then RUNS runs alternating which side goes first; medians.
 */
import { randomBytes } from "node:crypto";
import { copyFileSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { hostname, tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";
import pg from "pg";
import { stringify } from "yaml";
import { loadAgentConfig } from "../services/agent/config.js";
import { startAgent } from "../services/agent/main.js";
import { AgentService } from "../services/common/gen/flotilla/v1/agent_pb.js";
import { channelCredentials, createClient, type ServiceClient } from "../services/common/grpc-bridge.js";
import { silentLogger } from "../services/common/logger.js";
import { NodeProcessRunner, describeRun } from "../services/common/process-runner.js";
import { createTestDatabase, urlForDatabase, type TestDatabase } from "../test/helpers/pg.js";
import { type BenchOptions, type Figure, detailFigure, median, ratioFigure, round, withStallProbe } from "./figure.js";

type AgentClient = ServiceClient<typeof AgentService.method>;

const REPO = resolve(dirname(fileURLToPath(import.meta.url)), "..");
const FIXTURE = join(REPO, "test/fixtures/webui");
const INI = "alembic-chain.ini";
const PYTHON = "/usr/bin/python3";
const FROM = "c3d2e1f00d42";
const HEAD = "cf1a0b9c8d7e";
const PENDING_COUNT = 16;

const runner = new NodeProcessRunner();

interface Sizes {
  chats: number;
  msgs: number;
  runs: number;
  statusRuns: number;
}

const sizesFor = (quick: boolean): Sizes => (quick ? { chats: 3000, msgs: 10, runs: 3, statusRuns: 3 } : { chats: 10000, msgs: 10, runs: 5, statusRuns: 5 });

async function fixtureRun(argv: string[], env: Record<string, string>): Promise<number> {
  const t0 = performance.now();
  const r = await runner.run({ argv, cwd: FIXTURE, env: { PATH: "/usr/bin:/bin", ...env }, timeoutMs: 900_000 });
  const elapsed = performance.now() - t0;
  if (r.exitCode !== 0) throw new Error(`${describeRun(argv[0]!, r)}: ${r.stderr.trim().split("\n").slice(-3).join(" | ")}`);
  return elapsed;
}

async function drain(stream: AsyncIterable<{ event: { case: string | undefined; value?: unknown } }>): Promise<{
  status: string;
  message: string;
  revisionAfter: string[];
  backup?: { id: string };
}> {
  let result: { status: string; message: string; revisionAfter: string[]; backup?: { id: string } } | undefined;
  for await (const ev of stream) if (ev.event.case === "result") result = ev.event.value as typeof result;
  if (!result) throw new Error("operation stream ended without a result");
  return result;
}

interface Side {
  kind: "sqlite" | "postgresql";
  /** A fresh identical copy of the seeded template; returns its DATABASE_URL. */
  copy(name: string): Promise<string>;
  cleanup(): Promise<void>;
}

async function sqliteSide(dir: string, secret: string, sizes: Sizes): Promise<Side> {
  const template = join(dir, "template.db");
  await fixtureRun(["alembic", "-c", INI, "upgrade", FROM], { WEBUI_SECRET_KEY: secret, DATABASE_URL: `sqlite:///${template}` });
  await fixtureRun([PYTHON, "seed.py", template, "--users", "300", "--chats", String(sizes.chats), "--msgs-per-chat", String(sizes.msgs)], {});
  return {
    kind: "sqlite",
    async copy(name) {
      const file = join(dir, `${name}.db`);
      copyFileSync(template, file);
      return `sqlite:///${file}`;
    },
    async cleanup() {},
  };
}

async function postgresSide(secret: string, sizes: Sizes): Promise<Side> {
  const template = await createTestDatabase("flotilla_bench_chain");
  const copies: TestDatabase[] = [];
  await fixtureRun(["alembic", "-c", INI, "upgrade", FROM], { WEBUI_SECRET_KEY: secret, DATABASE_URL: template.url });
  await fixtureRun([PYTHON, "seed.py", "--url", template.url, "--users", "300", "--chats", String(sizes.chats), "--msgs-per-chat", String(sizes.msgs)], {});
  const admin = new pg.Client({ connectionString: urlForDatabase("postgres") });
  await admin.connect();
  return {
    kind: "postgresql",
    async copy(name) {
      const db = `${template.name}_${name.replace(/[^a-z0-9_]/g, "_")}`.slice(0, 63);
      await admin.query(`CREATE DATABASE ${pg.escapeIdentifier(db)} TEMPLATE ${pg.escapeIdentifier(template.name)}`);
      copies.push({
        url: urlForDatabase(db),
        name: db,
        drop: async () => {
          await admin.query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()", [db]);
          await admin.query(`DROP DATABASE IF EXISTS ${pg.escapeIdentifier(db)}`);
        },
      });
      return urlForDatabase(db);
    },
    async cleanup() {
      for (const c of copies) await c.drop().catch(() => undefined);
      await admin.end().catch(() => undefined);
      await template.drop().catch(() => undefined);
    },
  };
}

interface Agent {
  client: AgentClient;
  stop(): Promise<void>;
}

async function startBenchAgent(dir: string, secretFile: string, targets: { id: string; url: string }[]): Promise<Agent> {
  const dataDir = join(dir, "agent-data");
  mkdirSync(dataDir, { recursive: true });
  const configPath = join(dir, "agent.yaml");
  writeFileSync(
    configPath,
    stringify({
      agentId: "bench-agent",
      listen: "127.0.0.1:0",
      dataDir,
      logLevel: "warn",
      targets: targets.map((t) => ({
        id: t.id,
        database: t.url,
        alembic: { dir: FIXTURE, config: INI, command: ["alembic"], env: { WEBUI_SECRET_KEY: { file: secretFile } } },
        backups: { dir: join(dir, "backups", t.id), keep: 3 },
      })),
    }),
  );
  const config = loadAgentConfig({ argv: ["--config", configPath], env: {}, readFile: (p) => readFileSync(p, "utf8"), hostname: hostname() });
  const agent = await startAgent(config, silentLogger());
  const client: AgentClient = createClient(AgentService, `127.0.0.1:${agent.port}`, channelCredentials());
  return {
    client,
    stop: async () => {
      client.close();
      await agent.stop(true);
    },
  };
}

interface SideResult {
  figures: Figure[];
  stallMs: number;
  /** Main-thread GC time inside the interval of the longest stall. */
  stallGcMs: number;
  wallStallMs: number;
  status?: { agentMs: number; byHandMs: number };
}

async function measureSide(side: Side, dir: string, secret: string, secretFile: string, sizes: Sizes, withStatus: boolean): Promise<SideResult> {
  const n = sizes.runs + 1;
  const targets: { id: string; url: string }[] = [];
  for (let i = 0; i < n; i++) targets.push({ id: `${side.kind}-${i}`, url: await side.copy(`agent${i}`) });
  const sideDir = join(dir, side.kind);
  mkdirSync(sideDir, { recursive: true });
  const agent = await startBenchAgent(sideDir, secretFile, targets);
  let stallMs = 0;
  let stallGcMs = 0;
  let wallStallMs = 0;
  try {
    const bare = async (i: number): Promise<number> => {
      const url = await side.copy(`bare${i}`);
      return fixtureRun(["alembic", "-c", INI, "upgrade", "head"], { WEBUI_SECRET_KEY: secret, DATABASE_URL: url });
    };
    const viaAgent = async (i: number): Promise<number> => {
      const targetId = `${side.kind}-${i}`;
      const rolloutId = `bench-rollout-${i}`;
      const st = await agent.client.getStatus({ targetId }, { timeoutMs: 120_000 });
      if (st.pending.length !== PENDING_COUNT) throw new Error(`${targetId}: ${st.pending.length} pending, expected ${PENDING_COUNT} (${st.error})`);
      const backup = await withStallProbe(() =>
        drain(agent.client.backup({ targetId, operationId: `bench-backup-${i}`, rolloutId, verify: true }, { timeoutMs: 600_000 })),
      );
      if (backup.result.status !== "succeeded" || !backup.result.backup)
        throw new Error(`backup of ${targetId}: ${backup.result.status} ${backup.result.message}`);
      if (backup.maxStallMs > stallMs) [stallMs, stallGcMs] = [backup.maxStallMs, backup.gcMsInMaxStall];
      wallStallMs = Math.max(wallStallMs, backup.maxWallStallMs);
      const t0 = performance.now();
      const migrate = await withStallProbe(() =>
        drain(
          agent.client.migrate(
            {
              targetId,
              toRevision: HEAD,
              operationId: `bench-migrate-${i}`,
              rolloutId,
              backupId: backup.result.backup!.id,
            },
            { timeoutMs: 900_000 },
          ),
        ),
      );
      const elapsed = performance.now() - t0;
      if (migrate.maxStallMs > stallMs) [stallMs, stallGcMs] = [migrate.maxStallMs, migrate.gcMsInMaxStall];
      wallStallMs = Math.max(wallStallMs, migrate.maxWallStallMs);
      if (migrate.result.status !== "succeeded" || migrate.result.revisionAfter[0] !== HEAD) {
        throw new Error(`agent migrate of ${targetId} ended ${migrate.result.status}: ${migrate.result.message}`);
      }
      return elapsed;
    };
    await bare(0);
    await viaAgent(0);
    const bareMs: number[] = [];
    const agentMs: number[] = [];
    for (let i = 1; i <= sizes.runs; i++) {
      if (i % 2 === 1) {
        agentMs.push(await viaAgent(i));
        bareMs.push(await bare(i));
      } else {
        bareMs.push(await bare(i));
        agentMs.push(await viaAgent(i));
      }
    }
    const id = side.kind === "sqlite" ? "P6s" : "P6p";
    const figures: Figure[] = [
      ratioFigure(
        id,
        `agent migrate of the 16-revision chain ÷ bare alembic upgrade head, ${side.kind}`,
        median(agentMs),
        median(bareMs),
        "ms",
        `${sizes.chats} chats × ${sizes.msgs} messages; agent ${agentMs.map(Math.round).join("/")} ms, bare ${bareMs.map(Math.round).join("/")} ms; median of ${sizes.runs}`,
      ),
    ];
    let status: SideResult["status"];
    if (withStatus) {
      // The target at run 1 has been migrated: status answers "up to date" from the database and the cached graph.
      const statusTarget = `${side.kind}-1`;
      const url = targets[1]!.url;
      const env = { WEBUI_SECRET_KEY: secret, DATABASE_URL: url };
      const agentRuns: number[] = [];
      const handRuns: number[] = [];
      await agent.client.getStatus({ targetId: statusTarget }, { timeoutMs: 60_000 });
      for (let i = 0; i < sizes.statusRuns; i++) {
        const t0 = performance.now();
        const st = await agent.client.getStatus({ targetId: statusTarget }, { timeoutMs: 60_000 });
        agentRuns.push(performance.now() - t0);
        if (st.current[0] !== HEAD) throw new Error(`GetStatus of ${statusTarget} says ${st.current.join(",")} (${st.error})`);
        let hand = 0;
        for (const cmd of [["current", "-v"], ["heads"], ["history"], ["branches"]]) hand += await fixtureRun(["alembic", "-c", INI, ...cmd], env);
        handRuns.push(hand);
      }
      status = { agentMs: median(agentRuns), byHandMs: median(handRuns) };
    }
    return { figures, stallMs, stallGcMs, wallStallMs, ...(status ? { status } : {}) };
  } finally {
    await agent.stop();
  }
}

export async function measure(opts: BenchOptions): Promise<Figure[]> {
  const sizes = sizesFor(opts.quick);
  const dir = mkdtempSync(join(tmpdir(), "flotilla-bench-migrate-"));
  const secret = `bench-${randomBytes(12).toString("hex")}`;
  const secretFile = join(dir, "webui_secret_key");
  writeFileSync(secretFile, `${secret}\n`, { mode: 0o600 });
  const sides: Side[] = [];
  try {
    opts.log(`seeding SQLite and PostgreSQL at ${FROM} (${sizes.chats} chats × ${sizes.msgs} messages)`);
    const sqlite = await sqliteSide(dir, secret, sizes);
    sides.push(sqlite);
    const postgres = await postgresSide(secret, sizes);
    sides.push(postgres);
    opts.log("SQLite: agent vs bare alembic");
    const s = await measureSide(sqlite, dir, secret, secretFile, sizes, true);
    opts.log("PostgreSQL: agent vs bare alembic");
    const p = await measureSide(postgres, dir, secret, secretFile, sizes, false);
    const status = s.status!;
    const stall = Math.max(s.stallMs, p.stallMs);
    const stallGc = s.stallMs >= p.stallMs ? s.stallGcMs : p.stallGcMs;
    return [
      ratioFigure(
        "P1",
        "target status (current, heads, pending) ÷ alembic current -v, heads, history, branches by hand",
        status.agentMs,
        status.byHandMs,
        "ms",
        `GetStatus over gRPC, graph cached; by hand: four alembic runs, median of ${sizes.statusRuns}`,
      ),
      {
        id: "P5",
        name: "longest agent event-loop stall during backup, verification and migration ÷ 50 ms",
        ratio: round(stall / 50),
        value: round(stall, 1),
        baseline: 50,
        unit: "ms",
        detail: `the agent's main thread on a CPU between two ticks of a 5 ms interval probe, over every verified backup and migrate of P6s and P6p; V8 garbage collection took ${round(stallGc, 1)} ms (wall) of the interval holding the longest stall`,
      },
      detailFigure(
        "P5 longest wall-clock lateness of the same probe (includes waiting for a CPU on a loaded machine)",
        Math.max(s.wallStallMs, p.wallStallMs),
        "ms",
      ),
      ...s.figures,
      ...p.figures,
      detailFigure("P1 GetStatus (warm)", status.agentMs, "ms"),
      detailFigure("P1 four alembic commands by hand", status.byHandMs, "ms"),
    ];
  } finally {
    for (const side of sides) await side.cleanup();
    rmSync(dir, { recursive: true, force: true });
  }
}

if (process.argv[1] !== undefined && import.meta.url === pathToFileURL(resolve(process.argv[1])).href) {
  for (const f of await measure({ quick: process.argv.includes("--quick"), log: (l) => process.stderr.write(`${l}\n`) })) {
    process.stdout.write(`${JSON.stringify(f)}\n`);
  }
  process.exit(0);
}
