/**
 * Agent footprint (P9): idle RSS of a real `flotilla-agent` process (compiled dist/ when
 * built, as deployed) with one SQLite target, 3 s after it listens, ÷ 64 MiB; a bare node and
 * node with the tsx loader are measured in the same run for reference. Detail: RSS after 200
 * GetStatus RPCs and 3 verified backups ÷ idle.
 *
 *   npx tsx bench/agent-footprint.bench.ts
 */
import { spawn, type ChildProcess } from "node:child_process";
import { randomBytes } from "node:crypto";
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, openSync, closeSync, readFileSync, readdirSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";
import { stringify } from "yaml";
import { AgentService } from "../services/common/gen/flotilla/v1/agent_pb.js";
import { channelCredentials, createClient, type ServiceClient } from "../services/common/grpc-bridge.js";
import { NodeProcessRunner, describeRun } from "../services/common/process-runner.js";
import { type BenchOptions, type Figure, detailFigure, round } from "./figure.js";

type AgentClient = ServiceClient<typeof AgentService.method>;

const REPO = resolve(dirname(fileURLToPath(import.meta.url)), "..");
const FIXTURE = join(REPO, "test/fixtures/webui");
const PYTHON = "/usr/bin/python3";
const FROM = "c3d2e1f00d42";
const SETTLE_MS = 3000;
const STATUS_RPCS = 200;
const BACKUPS = 3;

const runner = new NodeProcessRunner();
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** Runs a fixture command (alembic, seed.py) and throws with its last stderr line when it fails. */
async function fixtureRun(argv: string[], env: Record<string, string>): Promise<number> {
  const t0 = performance.now();
  const r = await runner.run({ argv, cwd: FIXTURE, env, timeoutMs: 300_000 });
  const elapsed = performance.now() - t0;
  if (r.exitCode !== 0) throw new Error(`${describeRun(argv[0]!, r)}: ${r.stderr.trim().split("\n").at(-1) ?? ""}`);
  return elapsed;
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
    for (const [child, pp] of parent)
      if (pp === p) {
        out.push(child);
        walk(child);
      }
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
async function footprint(s: Setup): Promise<Figure[]> {
  // Same-run reference: a bare Node process doing nothing.
  const nodeLog = join(s.dir, "bare-node.log");
  const bareNode = await spawnAndWait(
    [process.execPath, "-e", "setInterval(() => {}, 1 << 30)"],
    { PATH: process.env.PATH ?? "/usr/bin:/bin" },
    nodeLog,
    async () => sleep(SETTLE_MS),
  );
  let nodeRss: number;
  try {
    nodeRss = rssMiB(bareNode.pid!);
  } finally {
    await stopProcess(bareNode);
  }
  // And one with the tsx loader registered, as bin/flotilla-agent.mjs does before importing the agent.
  const tsxNode = await spawnAndWait(
    [process.execPath, "-e", "import('tsx/esm/api').then((m) => m.register()); setInterval(() => {}, 1 << 30)"],
    { PATH: process.env.PATH ?? "/usr/bin:/bin" },
    nodeLog,
    async () => sleep(SETTLE_MS),
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
        id: "P9",
        name: "agent idle RSS ÷ 64 MiB",
        ratio: round(idle / 64),
        value: round(idle, 1),
        baseline: 64,
        unit: "MiB",
        detail:
          `node bin/flotilla-agent.mjs, one SQLite target, ${SETTLE_MS / 1000} s after listening; a bare node idles at ${round(nodeRss, 1)} MiB, node with the tsx loader at ${round(tsxRss, 1)} MiB` +
          (idleTree - idle > 0.05 ? `; with child processes ${round(idleTree, 1)} MiB` : ""),
      },
      detailFigure(
        `agent RSS after ${STATUS_RPCS} GetStatus + ${BACKUPS} verified backups ÷ idle RSS`,
        after / idle,
        "ratio",
        `idle ${round(idle, 1)} MiB, after ${round(after, 1)} MiB`,
      ),
    ];
  } finally {
    client.close();
    await stopProcess(proc);
  }
}

/** P9 and a detail on memory growth. */
export async function measure(_opts: BenchOptions): Promise<Figure[]> {
  const dir = mkdtempSync(join(tmpdir(), "flotilla-bench-agent-"));
  try {
    return await footprint(await prepare(dir));
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

if (process.argv[1] !== undefined && import.meta.url === pathToFileURL(resolve(process.argv[1])).href) {
  for (const f of await measure({ quick: false, log: (l) => process.stderr.write(`${l}\n`) })) process.stdout.write(`${JSON.stringify(f)}\n`);
}
