/**
 * Controller fan-out benchmark (P7, P7t): the controller's real gRPC client side
 * (`createClient` from services/common/grpc-bridge.ts, with the channel options
 * of the controller's GrpcAgentPool) against N simulated agents.
 *
 * Each simulated agent is a real grpc-js server implementing the AgentService
 * through `addService`, bound three times on 127.0.0.1:0: plaintext, mTLS with
 * RSA-2048 certificates and mTLS with P-256 certificates (client certificate
 * required, SAN DNS:flotilla-agent, `grpc.ssl_target_name_override`). The
 * agents live in 2–4 child processes (~50 each). Their `Migrate` streams a
 * step event, sleeps 100 ms and streams a step and a result event; `GetInfo`
 * answers the agent id; every other method answers at once.
 *
 *   P7   (fan-out wall − ideal) ÷ N ÷ 2.5 ms, with ideal = ceil(N ÷ 20) × 100 ms:
 *        Migrate on all N agents over connected channels, 20 calls in flight
 *        (mTLS RSA-2048; P-256 and plaintext reported as details)
 *   P7t  fan-out wall ÷ ideal
 *   details: cold connect to all N (fresh channels, GetInfo on every agent at
 *   once) and the controller process's CPU time per target.
 *
 * One warm-up round, then 3 measured rounds (2 in --quick) rotating the order of the three
 * modes; medians. Certificates are made with `openssl req -x509` in a
 * temporary folder that is removed afterwards. N = FLOTILLA_BENCH_AGENTS
 * (default 200).
 *
 *   npx tsx bench/fanout.bench.ts
 */
import { spawn, type ChildProcess } from "node:child_process";
import { mkdirSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { createInterface } from "node:readline";
import { fileURLToPath, pathToFileURL } from "node:url";
import type * as grpc from "@grpc/grpc-js";
import { AgentService } from "../services/common/gen/flotilla/v1/agent_pb.js";
import {
  addService,
  bindServer,
  channelCredentials,
  createClient,
  newServer,
  serverCredentials,
  type ServiceClient,
  type ServiceImpl,
  type TlsFiles,
} from "../services/common/grpc-bridge.js";
import { NodeProcessRunner, describeRun } from "../services/common/process-runner.js";
import { type BenchOptions, type Figure, detailFigure, median, ratioFigure, round } from "./figure.js";

type AgentMethods = typeof AgentService.method;
type AgentClient = ServiceClient<AgentMethods>;

const REPO = resolve(dirname(fileURLToPath(import.meta.url)), "..");
const SELF = fileURLToPath(import.meta.url);
const TASK_MS = 100;
const CONCURRENCY = 20;
const ROUNDS = 3;
const PER_PROCESS = 50;
/** The controller's channel options (services/controller/agents/agent-pool.ts). */
const POOL_OPTIONS: grpc.ChannelOptions = { "grpc.keepalive_time_ms": 30_000 };
const TLS_NAME = "flotilla-agent";

/** plaintext, mTLS with RSA 2048 keys, mTLS with P-256 (ECDSA) keys. */
const MODES = ["plain", "rsa", "ec"] as const;
type Mode = (typeof MODES)[number];
const LABEL: Record<Mode, string> = { plain: "plaintext", rsa: "mTLS RSA-2048", ec: "mTLS P-256" };

interface SimAgent {
  id: string;
  ports: Record<Mode, number>;
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

// ------------------------------------------------------------------ simulated agents (child side)

/** A simulated agent: real AgentService over grpc-js, no database behind it. */
function simulatedAgent(agentId: string): ServiceImpl<AgentMethods> {
  const impl: Record<string, unknown> = {};
  for (const m of AgentService.methods) {
    impl[m.localName] =
      m.methodKind === "unary"
        ? async () => ({})
        : async function* () {
            yield { event: { case: "result", value: { kind: m.localName, status: "refused", errorCode: "INVALID_ARGUMENT", message: "not simulated" } } };
          };
  }
  const getInfo: ServiceImpl<AgentMethods>["getInfo"] = async () => ({ agentId, version: "bench" });
  const migrate: ServiceImpl<AgentMethods>["migrate"] = async function* (req) {
    const started = performance.now();
    yield { event: { case: "step", value: { name: `upgrade:${req.toRevision}`, state: "running" } } };
    await sleep(TASK_MS);
    const durationMs = BigInt(Math.round(performance.now() - started));
    yield { event: { case: "step", value: { name: `upgrade:${req.toRevision}`, state: "succeeded", durationMs } } };
    yield {
      event: {
        case: "result",
        value: { operationId: req.operationId, kind: "migrate", status: "succeeded", revisionAfter: [req.toRevision], durationMs },
      },
    };
  };
  return { ...impl, getInfo, migrate } as unknown as ServiceImpl<AgentMethods>;
}

/**
 * Child mode: serves `count` simulated agents, each on a plaintext port and an
 * mTLS port per key type, prints `{"agents":[{id,ports}]}` on one line, and
 * exits when its stdin closes (so it never outlives the bench).
 */
async function serve(count: number, prefix: string, certRoot: string): Promise<void> {
  const creds = Object.fromEntries(
    MODES.map((m) => [
      m,
      m === "plain"
        ? serverCredentials()
        : serverCredentials({
            cert: readFileSync(join(certRoot, m, "server.crt")),
            key: readFileSync(join(certRoot, m, "server.key")),
            ca: readFileSync(join(certRoot, m, "ca.crt")),
          }),
    ]),
  ) as Record<Mode, grpc.ServerCredentials>;
  const servers: grpc.Server[] = [];
  const agents: SimAgent[] = [];
  for (let i = 0; i < count; i++) {
    const id = `${prefix}-${i}`;
    const server = newServer();
    addService(server, AgentService, simulatedAgent(id));
    const ports = {} as Record<Mode, number>;
    for (const m of MODES) ports[m] = await bindServer(server, "127.0.0.1:0", creds[m]);
    servers.push(server);
    agents.push({ id, ports });
  }
  process.stdout.write(`${JSON.stringify({ agents })}\n`);
  process.stdin.resume();
  process.stdin.on("end", () => {
    for (const s of servers) s.forceShutdown();
    process.exit(0);
  });
}

// ------------------------------------------------------------------ controller side

interface AgentHost {
  proc: ChildProcess;
  agents: SimAgent[];
}

async function startHost(count: number, prefix: string, certRoot: string): Promise<AgentHost> {
  const proc = spawn(process.execPath, ["--import", "tsx", SELF, "--serve", String(count), prefix, certRoot], {
    cwd: REPO,
    stdio: ["pipe", "pipe", "pipe"],
  });
  let stderr = "";
  proc.stderr!.on("data", (c: Buffer) => (stderr = (stderr + c.toString()).slice(-4000)));
  const lines = createInterface({ input: proc.stdout! });
  return new Promise<AgentHost>((resolvePromise, reject) => {
    const onExit = (code: number | null): void => reject(new Error(`simulated agent process exited with ${code} before serving: ${stderr}`));
    proc.once("exit", onExit);
    lines.once("line", (line) => {
      proc.off("exit", onExit);
      try {
        resolvePromise({ proc, agents: (JSON.parse(line) as { agents: SimAgent[] }).agents });
      } catch (err) {
        reject(new Error(`simulated agent process printed ${JSON.stringify(line.slice(0, 200))}: ${(err as Error).message}`));
      }
    });
  });
}

async function stopHost(h: AgentHost): Promise<void> {
  if (h.proc.exitCode !== null) return;
  const exited = new Promise<void>((r) => h.proc.once("exit", () => r()));
  h.proc.stdin!.end();
  const timer = setTimeout(() => h.proc.kill("SIGKILL"), 5000);
  await exited;
  clearTimeout(timer);
}

/** Per key type: a CA, an agent server certificate (SAN DNS:flotilla-agent) and a controller client certificate. */
async function makeCertificates(root: string, mode: Exclude<Mode, "plain">): Promise<void> {
  const dir = join(root, mode);
  mkdirSync(dir);
  const runner = new NodeProcessRunner();
  const key = mode === "ec" ? ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"] : ["-newkey", "rsa:2048"];
  const openssl = async (args: string[]): Promise<void> => {
    const r = await runner.run({ argv: ["openssl", ...args], cwd: dir, timeoutMs: 60_000 });
    if (r.exitCode !== 0) throw new Error(`${describeRun("openssl", r)}: ${r.stderr.trim().split("\n").at(-1) ?? ""}`);
  };
  await openssl(["req", "-x509", ...key, "-nodes", "-keyout", "ca.key", "-out", "ca.crt", "-days", "1", "-subj", "/CN=flotilla-bench-ca"]);
  const leaf = (name: string, subject: string, san: string, eku: string): Promise<void> =>
    openssl([
      "req",
      "-x509",
      ...key,
      "-nodes",
      "-keyout",
      `${name}.key`,
      "-out",
      `${name}.crt`,
      "-days",
      "1",
      "-subj",
      subject,
      "-CA",
      "ca.crt",
      "-CAkey",
      "ca.key",
      "-addext",
      `subjectAltName=${san}`,
      "-addext",
      "basicConstraints=critical,CA:FALSE",
      "-addext",
      `extendedKeyUsage=${eku}`,
    ]);
  await leaf("server", `/CN=${TLS_NAME}`, `DNS:${TLS_NAME}`, "serverAuth");
  await leaf("client", "/CN=flotilla-controller", "URI:spiffe://flotilla/controller", "clientAuth");
}

function clientsFor(agents: readonly SimAgent[], mode: Mode, tls: TlsFiles | undefined): AgentClient[] {
  // One credentials object per channel set; an own subchannel pool per channel so
  // a "fresh" client never rides on a connection left by an earlier round.
  const creds = channelCredentials(tls);
  return agents.map((a) =>
    createClient(AgentService, `127.0.0.1:${a.ports[mode]}`, creds, {
      ...POOL_OPTIONS,
      ...(tls ? { "grpc.ssl_target_name_override": TLS_NAME } : {}),
      "grpc.use_local_subchannel_pool": 1,
    }),
  );
}

/** Runs `fn` on every index with at most `concurrency` in flight. */
async function withConcurrency(n: number, concurrency: number, fn: (i: number) => Promise<void>): Promise<void> {
  let next = 0;
  const worker = async (): Promise<void> => {
    while (next < n) {
      const i = next++;
      await fn(i);
    }
  };
  await Promise.all(Array.from({ length: Math.min(concurrency, n) }, () => worker()));
}

async function getInfoAll(clients: readonly AgentClient[], agents: readonly SimAgent[]): Promise<number> {
  const t0 = performance.now();
  await Promise.all(
    clients.map(async (c, i) => {
      const info = await c.getInfo({}, { timeoutMs: 30_000 });
      if (info.agentId !== agents[i]!.id) throw new Error(`agent ${agents[i]!.id} answered as ${info.agentId}`);
    }),
  );
  return performance.now() - t0;
}

async function fanOut(clients: readonly AgentClient[], round: number): Promise<number> {
  const t0 = performance.now();
  await withConcurrency(clients.length, CONCURRENCY, async (i) => {
    let status = "";
    for await (const ev of clients[i]!.migrate(
      { targetId: "webui", toRevision: "head", operationId: `bench-${round}-${i}`, takeBackup: true },
      { timeoutMs: 60_000 },
    )) {
      if (ev.event.case === "result") status = ev.event.value.status;
    }
    if (status !== "succeeded") throw new Error(`simulated migrate on agent ${i} ended with "${status}"`);
  });
  return performance.now() - t0;
}

/** User + system CPU time of this (the controller's) process, in ms. */
const cpuMs = (u: NodeJS.CpuUsage): number => (u.user + u.system) / 1000;

interface ModeSamples {
  coldMs: number[];
  warmMs: number[];
  fanOutMs: number[];
  coldCpuMs: number[];
  fanOutCpuMs: number[];
}

async function measureMode(agents: readonly SimAgent[], mode: Mode, tls: TlsFiles | undefined, round: number, into: ModeSamples | null): Promise<void> {
  const clients = clientsFor(agents, mode, tls);
  try {
    let cpu = process.cpuUsage();
    const cold = await getInfoAll(clients, agents);
    const coldCpu = cpuMs(process.cpuUsage(cpu));
    const warm = await getInfoAll(clients, agents);
    cpu = process.cpuUsage();
    const fan = await fanOut(clients, round);
    const fanCpu = cpuMs(process.cpuUsage(cpu));
    into?.coldMs.push(cold);
    into?.warmMs.push(warm);
    into?.fanOutMs.push(fan);
    into?.coldCpuMs.push(coldCpu);
    into?.fanOutCpuMs.push(fanCpu);
  } finally {
    for (const c of clients) c.close();
  }
  await sleep(200); // let the servers see the closed connections before the next round
}

/** P7 and P7t (sizes: FLOTILLA_BENCH_AGENTS, default 200). */
export async function measure(opts: BenchOptions): Promise<Figure[]> {
  const rounds = opts.quick ? 2 : ROUNDS;
  const n = Number(process.env.FLOTILLA_BENCH_AGENTS ?? 200);
  if (!Number.isInteger(n) || n < 1) throw new Error(`FLOTILLA_BENCH_AGENTS must be a positive whole number, not ${process.env.FLOTILLA_BENCH_AGENTS}`);
  const dir = mkdtempSync(join(tmpdir(), "flotilla-bench-fanout-"));
  const hosts: AgentHost[] = [];
  try {
    await makeCertificates(dir, "rsa");
    await makeCertificates(dir, "ec");
    const tlsOf = (mode: Mode): TlsFiles | undefined =>
      mode === "plain"
        ? undefined
        : {
            cert: readFileSync(join(dir, mode, "client.crt")),
            key: readFileSync(join(dir, mode, "client.key")),
            ca: readFileSync(join(dir, mode, "ca.crt")),
          };
    const tls = Object.fromEntries(MODES.map((m) => [m, tlsOf(m)])) as Record<Mode, TlsFiles | undefined>;
    const procs = Math.min(4, Math.max(2, Math.ceil(n / PER_PROCESS)));
    const sizes = Array.from({ length: procs }, (_, i) => Math.floor(n / procs) + (i < n % procs ? 1 : 0)).filter((s) => s > 0);
    // Started one after another: starting them at once only competes for the 2 cores.
    for (const [i, size] of sizes.entries()) hosts.push(await startHost(size, `sim${i}`, dir));
    const agents = hosts.flatMap((h) => h.agents);
    if (agents.length !== n) throw new Error(`expected ${n} simulated agents, got ${agents.length}`);

    const empty = (): ModeSamples => ({ coldMs: [], warmMs: [], fanOutMs: [], coldCpuMs: [], fanOutCpuMs: [] });
    const samples: Record<Mode, ModeSamples> = { plain: empty(), rsa: empty(), ec: empty() };
    for (const mode of MODES) await measureMode(agents, mode, tls[mode], 0, null); // warm-up
    for (let r = 1; r <= rounds; r++) {
      // Rotate the order so drift in the background load does not favour one mode.
      const order = MODES.map((_, i) => MODES[(i + r) % MODES.length]!);
      for (const mode of order) await measureMode(agents, mode, tls[mode], r, samples[mode]);
    }

    const ideal = Math.ceil(n / CONCURRENCY) * TASK_MS;
    const setup = `${n} simulated agents in ${sizes.length} processes on loopback, ${TASK_MS} ms task, ${CONCURRENCY} at a time, warm channels, median of ${rounds}`;
    const wall = (mode: Mode): number => median(samples[mode].fanOutMs);
    const overhead = (mode: Mode): number => (wall(mode) - ideal) / n;
    const perHost = (xs: readonly number[]): number => median(xs) / n;
    return [
      {
        id: "P7",
        name: `controller overhead per target at ${n} agents over mTLS (${LABEL.rsa}), ${CONCURRENCY} at a time ÷ 2.5 ms`,
        ratio: round(overhead("rsa") / 2.5),
        value: round(overhead("rsa"), 3),
        baseline: 2.5,
        unit: "ms",
        detail: `(wall ${Math.round(wall("rsa"))} ms − ideal ${ideal} ms) ÷ ${n}; ${setup}`,
      },
      ratioFigure(
        "P7t",
        `controller fan-out total ÷ ideal at ${n} agents over mTLS (${LABEL.rsa})`,
        wall("rsa"),
        ideal,
        "ms",
        `ideal = ceil(${n}/${CONCURRENCY}) × ${TASK_MS} ms`,
      ),
      detailFigure(`overhead per target, ${LABEL.ec}`, overhead("ec"), "ms"),
      detailFigure("overhead per target, plaintext", overhead("plain"), "ms"),
      ...MODES.map((mode) => detailFigure(`cold connect + GetInfo to all ${n} agents, ${LABEL[mode]}`, median(samples[mode].coldMs), "ms")),
      detailFigure(`controller CPU per target during the fan-out, ${LABEL.rsa}`, perHost(samples.rsa.fanOutCpuMs), "ms"),
    ];
  } finally {
    await Promise.all(hosts.map(stopHost));
    rmSync(dir, { recursive: true, force: true });
  }
}

const direct = process.argv[1] !== undefined && import.meta.url === pathToFileURL(resolve(process.argv[1])).href;
if (direct && process.argv[2] === "--serve") {
  await serve(Number(process.argv[3]), process.argv[4] ?? "sim", process.argv[5] ?? "");
} else if (direct) {
  for (const f of await measure({ quick: false, log: (l) => process.stderr.write(`${l}\n`) })) process.stdout.write(`${JSON.stringify(f)}\n`);
}
