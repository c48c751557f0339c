/**
 * Agent overhead benchmark (P16, P14, P15) on the Open WebUI-shaped fixture
 * (test/fixtures/webui) with a seeded SQLite database at c3d2e1f00d42
 * (50 users, 200 chats, 3 messages per chat) and its 5 pending revisions.
 *
 *   P16  the real agent's Migrate of the 5 revisions ÷ bare `alembic upgrade <rev>`,
 *        one child process per revision, on identical copies of the database.
 *        The agent runs in-process (`startAgent`) and is driven over real gRPC
 *        with `createClient`; its wall time is taken at the client, from the
 *        call to the result event, minus the `backup` and `verify-backup` step
 *        durations the agent reports (take_backup is on, as in a rollout). The
 *        rest — revision graph check, journal, per-revision runs, the
 *        post-migration verify step (revision + integrity check) — is what the
 *        agent adds to a migration step. The target's revision graph is warmed
 *        with one GetStatus first, as the controller's status/plan calls do in
 *        a rollout. One warm-up, then 5 runs alternating which side goes first; medians.
 *   P14  idle RSS of `node bin/flotilla-agent.mjs --config …` (one SQLite target),
 *        3 s after it starts listening; a bare `node` idling, and one with the
 *        tsx loader registered (bin/ runs the TypeScript sources through tsx),
 *        are measured as same-run references.
 *   P15  the same agent's RSS after 200 GetStatus RPCs and 3 verified backups
 *        (3 s after the last one) ÷ its idle RSS.
 *
 * Everything lives in a temporary folder that is removed afterwards.
 *
 *   npx tsx bench/agent-overhead.bench.ts
 */
import { spawn, type ChildProcess } from "node:child_process";
import { randomBytes } from "node:crypto";
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, openSync, closeSync, readFileSync, readdirSync, rmSync, writeFileSync } from "node:fs";
import { hostname, tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";
import Database from "better-sqlite3";
import { stringify } from "yaml";
import { AgentService } from "../services/common/gen/flotilla/v1/agent_pb.js";
import { channelCredentials, createClient, type ServiceClient } from "../services/common/grpc-bridge.js";
import { silentLogger } from "../services/common/logger.js";
import { NodeProcessRunner, describeRun } from "../services/common/process-runner.js";
import { loadAgentConfig } from "../services/agent/config.js";
import { startAgent } from "../services/agent/main.js";

/** One measured figure, with an optional goal `run.ts` checks. */
export interface BenchFigure {
  name: string;
  value: number;
  unit: string;
  baseline: string;
  goal?: { op: "<=" | ">="; value: number; id: string };
}

type AgentClient = ServiceClient<typeof AgentService.method>;

const REPO = resolve(dirname(fileURLToPath(import.meta.url)), "..");
const FIXTURE = join(REPO, "test/fixtures/webui");
const PYTHON = "/usr/bin/python3";
const FROM = "c3d2e1f00d42";
const PENDING = ["d4c3b2a1e5f6", "e5f4a3b2c1d0", "f6a5b4c3d2e1", "0a7b8c9d0e1f", "1b8c9d0e1f2a"] as const;
const HEAD = PENDING[PENDING.length - 1]!;
/** Alembic child processes vary a lot on a shared machine: more runs than the usual 3. */
const RUNS = 5;
const SETTLE_MS = 3000;
const STATUS_RPCS = 200;
const BACKUPS = 3;

const runner = new NodeProcessRunner();
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

function median(xs: readonly number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = Math.floor(s.length / 2);
  return s.length % 2 === 1 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
}

const round = (x: number, digits = 3): number => Number(x.toFixed(digits));
const ms = (x: number): string => `${Math.round(x)} ms`;

/** Runs a fixture command (alembic, seed.py) and throws with its last stderr line when it fails. */
async function fixtureRun(argv: string[], env: Record<string, string>): Promise<number> {
  const t0 = performance.now();
  const r = await runner.run({ argv, cwd: FIXTURE, env, timeoutMs: 300_000 });
  const elapsed = performance.now() - t0;
  if (r.exitCode !== 0) throw new Error(`${describeRun(argv[0]!, r)}: ${r.stderr.trim().split("\n").at(-1) ?? ""}`);
  return elapsed;
}

function revisionOf(file: string): string {
  const db = new Database(file, { readonly: true });
  try {
    return (db.prepare("SELECT version_num FROM alembic_version").get() as { version_num: string } | undefined)?.version_num ?? "";
  } finally {
    db.close();
  }
}

/** VmRSS of a process in MiB, from /proc/<pid>/status. */
function rssMiB(pid: number): number {
  const m = /^VmRSS:\s+(\d+)\s+kB$/m.exec(readFileSync(`/proc/${pid}/status`, "utf8"));
  if (!m) throw new Error(`no VmRSS for pid ${pid}`);
  return Number(m[1]) / 1024;
}

/** Descendants of a process (by walking /proc/<pid>/stat parent ids). */
function descendants(pid: number): number[] {
  const parent = new Map<number, number>();
  for (const name of readdirSync("/proc")) {
    if (!/^\d+$/.test(name)) continue;
    try {
      const stat = readFileSync(`/proc/${name}/stat`, "utf8");
      const ppid = Number(stat.slice(stat.lastIndexOf(")") + 2).split(" ")[1]);
      parent.set(Number(name), ppid);
    } catch {
      // the process exited while we looked
    }
  }
  const out: number[] = [];
  const walk = (p: number): void => {
    for (const [child, pp] of parent) if (pp === p) { out.push(child); walk(child); }
  };
  walk(pid);
  return out;
}

function treeRssMiB(pid: number): number {
  let total = rssMiB(pid);
  for (const c of descendants(pid)) {
    try {
      total += rssMiB(c);
    } catch {
      // exited
    }
  }
  return total;
}

async function stopProcess(proc: ChildProcess): Promise<void> {
  if (proc.exitCode !== null || proc.signalCode !== null) return;
  const exited = new Promise<void>((r) => proc.once("exit", () => r()));
  proc.kill("SIGTERM");
  const timer = setTimeout(() => proc.kill("SIGKILL"), 10_000);
  await exited;
  clearTimeout(timer);
}

async function drain(stream: AsyncIterable<{ event: { case: string | undefined; value?: unknown } }>): Promise<{
  result: { status: string; message: string; timings: unknown[]; revisionAfter: string[] };
  steps: Map<string, number>;
}> {
  const steps = new Map<string, number>();
  let result: { status: string; message: string; timings: unknown[]; revisionAfter: string[] } | undefined;
  for await (const ev of stream) {
    if (ev.event.case === "step") {
      const s = ev.event.value as { name: string; state: string; durationMs: bigint };
      if (s.state === "succeeded") steps.set(s.name, Number(s.durationMs));
    } else if (ev.event.case === "result") {
      result = ev.event.value as typeof result;
    }
  }
  if (!result) throw new Error("operation stream ended without a result");
  return { result, steps };
}

interface Setup {
  dir: string;
  template: string;
  secretFile: string;
  secret: string;
}

/** A seeded database at c3d2e1f00d42, used as the template of every copy. */
async function prepare(dir: string): Promise<Setup> {
  const secret = `bench-${randomBytes(12).toString("hex")}`;
  const secretFile = join(dir, "webui_secret_key");
  writeFileSync(secretFile, `${secret}\n`, { mode: 0o600 });
  const template = join(dir, "template.db");
  await fixtureRun(["alembic", "upgrade", FROM], { WEBUI_SECRET_KEY: secret, DATABASE_URL: `sqlite:///${template}` });
  await fixtureRun([PYTHON, join(FIXTURE, "seed.py"), template, "--users", "50", "--chats", "200", "--msgs-per-chat", "3"], {});
  return { dir, template, secretFile, secret };
}

function agentConfigYaml(s: Setup, dataDir: string, targets: { id: string; file: string }[]): string {
  return stringify({
    agentId: "bench-agent",
    listen: "127.0.0.1:0",
    dataDir,
    logLevel: "warn",
    targets: targets.map((t) => ({
      id: t.id,
      database: `sqlite:///${t.file}`,
      alembic: { dir: FIXTURE, command: ["alembic"], env: { WEBUI_SECRET_KEY: { file: s.secretFile } } },
      backups: { dir: join(s.dir, "backups", t.id), keep: 10 },
    })),
  });
}

/** P16: per-revision bare alembic against the in-process agent's Migrate, same copies. */
async function migrationOverhead(s: Setup): Promise<BenchFigure[]> {
  const targets = Array.from({ length: RUNS + 1 }, (_, i) => ({ id: `run-${i}`, file: join(s.dir, `agent-${i}.db`) }));
  for (const t of targets) copyFileSync(s.template, t.file);
  const configPath = join(s.dir, "agent-inproc.yaml");
  const dataDir = join(s.dir, "agent-inproc");
  mkdirSync(dataDir, { recursive: true });
  writeFileSync(configPath, agentConfigYaml(s, dataDir, targets));
  const config = loadAgentConfig({ argv: ["--config", configPath], env: {}, readFile: (p) => readFileSync(p, "utf8"), hostname: hostname() });
  const agent = await startAgent(config, silentLogger());
  const client: AgentClient = createClient(AgentService, `127.0.0.1:${agent.port}`, channelCredentials());
  try {
    const bare = async (i: number): Promise<{ total: number; perRev: number[] }> => {
      const file = join(s.dir, `bare-${i}.db`);
      copyFileSync(s.template, file);
      const env = { WEBUI_SECRET_KEY: s.secret, DATABASE_URL: `sqlite:///${file}` };
      const perRev: number[] = [];
      for (const rev of PENDING) perRev.push(await fixtureRun(["alembic", "upgrade", rev], env));
      const at = revisionOf(file);
      if (at !== HEAD) throw new Error(`bare alembic left ${file} at ${at}, not ${HEAD}`);
      return { total: perRev.reduce((a, b) => a + b, 0), perRev };
    };
    const viaAgent = async (i: number): Promise<{ total: number; migrateOnly: number; children: number }> => {
      const targetId = `run-${i}`;
      const st = await client.getStatus({ targetId }, { timeoutMs: 60_000 });
      if (st.pending.length !== PENDING.length) throw new Error(`${targetId}: ${st.pending.length} pending revisions, expected ${PENDING.length} (${st.error})`);
      const t0 = performance.now();
      const { result, steps } = await drain(client.migrate({ targetId, toRevision: HEAD, operationId: `bench-migrate-${i}`, takeBackup: true }, { timeoutMs: 600_000 }));
      const total = performance.now() - t0;
      if (result.status !== "succeeded" || result.timings.length !== PENDING.length || result.revisionAfter[0] !== HEAD) {
        throw new Error(`agent migrate of ${targetId} ended ${result.status}: ${result.message}`);
      }
      const backup = steps.get("backup");
      const verify = steps.get("verify-backup");
      if (backup === undefined || verify === undefined) throw new Error(`agent migrate of ${targetId} reported no backup/verify-backup step durations`);
      const children = PENDING.reduce((a, rev) => a + (steps.get(`upgrade:${rev}`) ?? Number.NaN), 0);
      return { total, migrateOnly: total - backup - verify, children };
    };

    // Warm-up: Python's bytecode caches and the page cache for both sides.
    await bare(0);
    await viaAgent(0);
    const bareMs: number[] = [];
    const bareRevMs: number[] = [];
    const agentTotal: number[] = [];
    const agentOnly: number[] = [];
    const agentChildren: number[] = [];
    for (let i = 1; i <= RUNS; i++) {
      const agentFirst = i % 2 === 1;
      const doBare = async (): Promise<void> => {
        const b = await bare(i);
        bareMs.push(b.total);
        bareRevMs.push(...b.perRev);
      };
      const doAgent = async (): Promise<void> => {
        const a = await viaAgent(i);
        agentTotal.push(a.total);
        agentOnly.push(a.migrateOnly);
        agentChildren.push(a.children);
      };
      if (agentFirst) { await doAgent(); await doBare(); } else { await doBare(); await doAgent(); }
    }
    const mBare = median(bareMs);
    const mOnly = median(agentOnly);
    const n = PENDING.length;
    return [
      {
        name: "P16 agent Migrate (5 revisions, backup excluded) ÷ bare alembic upgrade, one process per revision", value: round(mOnly / mBare), unit: "ratio",
        baseline: `bare ${ms(mBare)} (runs ${bareMs.map(ms).join(", ")}); agent ${ms(mOnly)} (runs ${agentOnly.map(ms).join(", ")}); median of ${RUNS}`,
        goal: { op: "<=", value: 1.1, id: "P16" },
      },
      {
        name: "P16 agent overhead per revision", value: Math.round((mOnly - mBare) / n), unit: "ms",
        baseline: `(agent migrate-only − bare) ÷ ${n}, medians`,
      },
      {
        name: "P16 agent's alembic children ÷ bare alembic (same argv)", value: round(median(agentChildren) / mBare), unit: "ratio",
        baseline: `sum of the agent's upgrade:<rev> step durations ${ms(median(agentChildren))} vs bare ${ms(mBare)}`,
      },
      {
        name: "P16 agent Migrate with take_backup (backup + verify included) ÷ bare alembic", value: round(median(agentTotal) / mBare), unit: "ratio",
        baseline: `agent total ${ms(median(agentTotal))} vs bare ${ms(mBare)}`,
      },
      {
        name: "bare alembic upgrade, one revision", value: Math.round(median(bareRevMs)), unit: "ms",
        baseline: `median of ${bareRevMs.length} child processes (Python start + imports + one revision)`,
      },
    ];
  } finally {
    client.close();
    await agent.stop(true);
  }
}

/** Idle RSS of a spawned process, `settleMs` after `ready` resolves. */
async function spawnAndWait(argv: string[], env: NodeJS.ProcessEnv, logFile: string, ready: (proc: ChildProcess) => Promise<void>): Promise<ChildProcess> {
  const fd = openSync(logFile, "a");
  try {
    // A long-running daemon whose pid we read while it runs: spawned directly (as the test
    // fleet does), not through the ProcessRunner, which returns only when the child exits.
    const proc = spawn(argv[0]!, argv.slice(1), { cwd: REPO, env, stdio: ["ignore", fd, fd] });
    await ready(proc);
    return proc;
  } finally {
    closeSync(fd);
  }
}

async function waitForFile(file: string, proc: ChildProcess, logFile: string): Promise<string> {
  const deadline = Date.now() + 60_000;
  while (Date.now() < deadline) {
    if (existsSync(file)) {
      const text = readFileSync(file, "utf8").trim();
      if (text !== "") return text;
    }
    if (proc.exitCode !== null) throw new Error(`agent exited with ${proc.exitCode}: ${readFileSync(logFile, "utf8").slice(-2000)}`);
    await sleep(50);
  }
  throw new Error(`the agent did not write ${file} within 60 s`);
}

/** P14 and P15: a real agent process. */
async function footprint(s: Setup): Promise<BenchFigure[]> {
  // Same-run reference: a bare Node process doing nothing.
  const nodeLog = join(s.dir, "bare-node.log");
  const bareNode = await spawnAndWait([process.execPath, "-e", "setInterval(() => {}, 1 << 30)"], { PATH: process.env.PATH ?? "/usr/bin:/bin" }, nodeLog, async () => sleep(SETTLE_MS));
  let nodeRss: number;
  try {
    nodeRss = rssMiB(bareNode.pid!);
  } finally {
    await stopProcess(bareNode);
  }
  // And one with the tsx loader registered, as bin/flotilla-agent.mjs does before importing the agent.
  const tsxNode = await spawnAndWait(
    [process.execPath, "-e", "import('tsx/esm/api').then((m) => m.register()); setInterval(() => {}, 1 << 30)"],
    { PATH: process.env.PATH ?? "/usr/bin:/bin" }, nodeLog, async () => sleep(SETTLE_MS),
  );
  let tsxRss: number;
  try {
    tsxRss = rssMiB(tsxNode.pid!);
  } finally {
    await stopProcess(tsxNode);
  }

  const file = join(s.dir, "rss.db");
  copyFileSync(s.template, file);
  const dataDir = join(s.dir, "agent-rss");
  mkdirSync(dataDir, { recursive: true });
  const configPath = join(s.dir, "agent-rss.yaml");
  writeFileSync(configPath, agentConfigYaml(s, dataDir, [{ id: "rss", file }]));
  const portFile = join(s.dir, "agent-rss.port");
  const logFile = join(s.dir, "agent-rss.log");
  let port = 0;
  const proc = await spawnAndWait(
    [process.execPath, join(REPO, "bin/flotilla-agent.mjs"), "--config", configPath],
    { PATH: process.env.PATH ?? "/usr/bin:/bin", HOME: process.env.HOME ?? dataDir, FLOTILLA_PORT_FILE: portFile },
    logFile,
    async (p) => {
      port = Number(await waitForFile(portFile, p, logFile));
    },
  );
  const client: AgentClient = createClient(AgentService, `127.0.0.1:${port}`, channelCredentials());
  try {
    await sleep(SETTLE_MS);
    const idle = rssMiB(proc.pid!);
    const idleTree = treeRssMiB(proc.pid!);
    for (let i = 0; i < STATUS_RPCS; i++) {
      const st = await client.getStatus({ targetId: "rss" }, { timeoutMs: 60_000 });
      if (st.current[0] !== FROM) throw new Error(`GetStatus reported ${st.current.join(",")} (${st.error})`);
    }
    for (let i = 0; i < BACKUPS; i++) {
      const { result } = await drain(client.backup({ targetId: "rss", operationId: `bench-backup-${i}`, verify: true }, { timeoutMs: 300_000 }));
      if (result.status !== "succeeded") throw new Error(`backup ${i} ended ${result.status}: ${result.message}`);
    }
    await sleep(SETTLE_MS);
    const after = rssMiB(proc.pid!);
    return [
      {
        name: "P14 agent idle RSS", value: round(idle, 1), unit: "MiB",
        baseline: `node bin/flotilla-agent.mjs, one SQLite target, ${SETTLE_MS / 1000} s after listening; bare node idles at ${round(nodeRss, 1)} MiB (${round(idle / nodeRss, 2)}×)` +
          (idleTree - idle > 0.05 ? `; with child processes ${round(idleTree, 1)} MiB` : ""),
        goal: { op: "<=", value: 80, id: "P14" },
      },
      {
        name: "P14 agent idle RSS above node with the tsx loader", value: round(idle - tsxRss, 1), unit: "MiB",
        baseline: `node + tsx register() idles at ${round(tsxRss, 1)} MiB (bare node ${round(nodeRss, 1)} MiB): the loader's share is ${round(tsxRss - nodeRss, 1)} MiB`,
      },
      {
        name: `P15 agent RSS after ${STATUS_RPCS} GetStatus + ${BACKUPS} verified backups ÷ idle RSS`, value: round(after / idle), unit: "ratio",
        baseline: `idle ${round(idle, 1)} MiB, after ${round(after, 1)} MiB (${SETTLE_MS / 1000} s after the last backup)`,
        goal: { op: "<=", value: 1.2, id: "P15" },
      },
    ];
  } finally {
    client.close();
    await stopProcess(proc);
  }
}

/** Runs P16, P14 and P15 and returns their figures. */
export async function run(): Promise<BenchFigure[]> {
  const dir = mkdtempSync(join(tmpdir(), "flotilla-bench-agent-"));
  try {
    const s = await prepare(dir);
    return [...(await migrationOverhead(s)), ...(await footprint(s))];
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

if (process.argv[1] !== undefined && import.meta.url === pathToFileURL(resolve(process.argv[1])).href) {
  for (const f of await run()) {
    process.stdout.write(`${f.name}: ${f.value} ${f.unit}  [baseline: ${f.baseline}]${f.goal ? `  (goal ${f.goal.op} ${f.goal.value})` : ""}\n`);
  }
}
