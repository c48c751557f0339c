import { existsSync, readFileSync } from "node:fs";
import { hostname } from "node:os";
import { join } from "node:path";
import { AgentService } from "../common/gen/flotilla/v1/agent_pb.js";
import { request as httpRequest } from "node:http";
import { request as httpsRequest } from "node:https";
import { ReloadableCertificates, addService, bindServer, newServer, peerIdentityGuard, serverCredentials } from "../common/grpc-bridge.js";
import { expiryWarnings } from "../common/tls.js";
import { createLogger, type Logger } from "../common/logger.js";
import { NodeProcessRunner, describeRun, type ProcessRunner } from "../common/process-runner.js";
import { registerSecret } from "../common/redact.js";
import { FlotillaError, toFlotillaError } from "../common/errors.js";
import { loadAgentConfig, type AgentConfig, type AgentTarget } from "./config.js";
import { AppControl } from "./adapters/app-control.js";
import { BackupCatalog } from "./adapters/backup-catalog.js";
import { SqliteJournal } from "./adapters/sqlite-journal.js";
import { SqliteDatabase } from "./adapters/sqlite-database.js";
import { PostgresDatabase } from "./adapters/postgres-database.js";
import { alembicPort } from "./adapters/alembic-port.js";
import { killOrphans } from "./adapters/orphans.js";
import type { DatabaseAdapter } from "./core/ports.js";
import { AgentOperations, type TargetRuntime } from "./operations/index.js";
import { agentServiceImpl } from "./rpc/agent-service.js";

export const AGENT_VERSION = "0.1.0";

function databaseFor(url: string, t: AgentTarget, runner: ProcessRunner, scratchDir: string): DatabaseAdapter {
  if (t.kind === "sqlite") return SqliteDatabase.fromUrl(url);
  return new PostgresDatabase({ url, ...(t.password !== undefined ? { password: t.password } : {}), runner, scratchDir });
}

/** Builds the runtime of every target. No I/O. */
export function buildTargets(config: AgentConfig, runner: ProcessRunner): Map<string, TargetRuntime> {
  const scratchDir = join(config.dataDir, "scratch");
  const out = new Map<string, TargetRuntime>();
  for (const t of config.targets) {
    const db = databaseFor(t.database, t, runner, scratchDir);
    const alembicFor = (url: string) => alembicPort({ dir: t.alembic.dir, command: t.alembic.command, env: t.alembic.env, databaseUrl: url, ...(t.alembic.iniFile ? { iniFile: t.alembic.iniFile } : {}) }, runner, t.alembic.timeoutMs);
    const green = t.blueGreen ? databaseFor(t.blueGreen.green, t, runner, scratchDir) : undefined;
    out.set(t.id, {
      config: t,
      db,
      alembic: alembicFor(db.alembicUrl()),
      ...(green ? { green: { db: green, alembic: alembicFor(green.alembicUrl()) } } : {}),
      catalog: new BackupCatalog(t.backups.dir, t.id, t.kind),
      apps: config.apps.filter((a) => a.target === t.id),
      alembicFor,
    });
  }
  return out;
}

export interface RunningAgent {
  readonly port: number;
  readonly config: AgentConfig;
  /** Re-reads the TLS files (SIGHUP): new connections use them, open ones go on. Returns expiry warnings. */
  reloadCertificates(): string[];
  stop(force?: boolean): Promise<void>;
}

/** Starts an agent from a loaded config (used by main and by tests in-process). */
export async function startAgent(config: AgentConfig, log: Logger): Promise<RunningAgent> {
  const runner = new NodeProcessRunner();
  registerSecret(config.controller?.token);
  for (const t of config.targets) {
    registerSecret(t.password);
    for (const name of t.alembic.secretEnvNames) registerSecret(t.alembic.env[name]);
  }
  const journal = new SqliteJournal(config.dataDir);
  journal.open();
  const interrupted = journal.markInterrupted();
  const killed = await killOrphans(interrupted.map((o) => o.id));
  if (killed.length > 0) log.warn({ pids: killed }, "killed child processes left running by the previous agent process");
  for (const op of interrupted) {
    log.warn({ op: op.id, target: op.targetId, kind: op.kind }, "operation was interrupted by an agent stop; the target stays locked until Recover");
  }
  const targets = buildTargets(config, runner);
  for (const t of targets.values()) {
    const removed = await t.catalog.prepare().catch(() => [] as string[]);
    if (removed.length > 0) log.info({ target: t.config.id, files: removed.length }, "removed temporary backup files left by a crash");
  }
  const ops = new AgentOperations({
    config, targets, journal, log, appControl: new AppControl(runner),
    heartbeatMs: Number(process.env.FLOTILLA_HEARTBEAT_MS ?? 15_000),
    fileExists: (path) => existsSync(path), killOrphans,
    runHook: async (argv, onLine, signal) => {
      const r = await runner.run({ argv, timeoutMs: 120_000, onLine: (l) => onLine(l), ...(signal ? { signal } : {}) });
      return { ok: r.exitCode === 0, detail: r.exitCode === 0 ? `hook ${argv.join(" ")} ok` : describeRun(argv[0]!, r) + (r.stderr ? `: ${r.stderr.trim().split("\n").at(-1)}` : "") };
    },
  });
  const server = newServer();
  const certs = config.tls ? new ReloadableCertificates(readTlsFiles(config.tls)) : undefined;
  const guard = config.tls
    ? peerIdentityGuard(config.tls.allow, (refusal) => log.warn({ method: refusal.method, peer: refusal.peer, names: refusal.names, allow: config.tls?.allow }, "refused a client whose certificate is not allowed"))
    : undefined;
  addService(server, AgentService, agentServiceImpl(config, ops, AGENT_VERSION), guard);
  const port = await bindServer(server, config.listen, serverCredentials(certs));
  log.info({ port, targets: config.targets.map((t) => t.id), tls: Boolean(certs), allow: config.tls?.allow ?? [] }, "agent listening");
  if (certs) for (const warning of expiryWarnings([{ what: `agent certificate ${config.tls!.cert}`, pem: certs.files.cert }], new Date())) log.warn({ warning }, "certificate expires soon");

  let heartbeat: NodeJS.Timeout | undefined;
  if (config.controller) {
    const c = config.controller;
    const advertise = c.advertise.replace(/:0$/, `:${port}`);
    const beat = async (): Promise<void> => {
      try {
        const status = await postJson(new URL("/v1/RegisterAgent", c.address), { agentId: config.agentId, address: advertise }, {
          ...(c.token ? { token: c.token } : {}),
          ...(c.ca ? { ca: readFileSync(c.ca) } : {}),
        });
        if (status < 200 || status >= 300) log.warn({ status }, "controller refused registration");
      } catch (err) {
        log.warn({ err: toFlotillaError(err) }, "cannot reach the controller to register");
      }
    };
    void beat();
    heartbeat = setInterval(() => void beat(), c.heartbeatSeconds * 1000);
    heartbeat.unref();
  }

  return {
    port,
    config,
    reloadCertificates() {
      if (!certs || !config.tls) return [];
      certs.update(readTlsFiles(config.tls));
      const warnings = expiryWarnings([{ what: `agent certificate ${config.tls.cert}`, pem: certs.files.cert }], new Date());
      log.info({ cert: config.tls.cert }, "reloaded certificates");
      for (const warning of warnings) log.warn({ warning }, "certificate expires soon");
      return warnings;
    },
    async stop(force = false) {
      if (heartbeat) clearInterval(heartbeat);
      if (force) server.forceShutdown();
      else await new Promise<void>((r) => server.tryShutdown(() => r()));
      journal.close();
    },
  };
}

/** Entry point of `flotilla-agent --config agent.yaml`. */
export async function main(argv: string[]): Promise<void> {
  if (argv.includes("--help") || argv.includes("-h")) {
    process.stdout.write("usage: flotilla-agent --config agent.yaml [--listen host:port] [--data-dir DIR]\n");
    return;
  }
  let config: AgentConfig;
  try {
    config = loadAgentConfig({ argv, env: process.env, readFile: (p) => readFileSync(p, "utf8"), hostname: hostname() });
  } catch (err) {
    const fe = toFlotillaError(err);
    process.stderr.write(`flotilla-agent: ${fe.message}\n`);
    process.exitCode = fe.code === "CONFIG_INVALID" || fe.code === "INVALID_ARGUMENT" ? 2 : 1;
    return;
  }
  const log = createLogger({ name: "flotilla-agent", level: config.logLevel });
  let agent: RunningAgent;
  try {
    agent = await startAgent(config, log);
  } catch (err) {
    log.fatal({ err: toFlotillaError(err) }, "agent failed to start");
    process.exitCode = 1;
    return;
  }
  if (process.env.FLOTILLA_PORT_FILE) {
    const { writeFileSync } = await import("node:fs");
    writeFileSync(process.env.FLOTILLA_PORT_FILE, String(agent.port));
  }
  let stopping = false;
  const onSignal = (sig: string): void => {
    if (stopping) {
      log.warn({ signal: sig }, "second signal: stopping now");
      void agent.stop(true).finally(() => process.exit(1));
      return;
    }
    stopping = true;
    log.info({ signal: sig }, "draining: finishing running operations, then stopping");
    void agent.stop(false).then(() => process.exit(0));
  };
  process.on("SIGTERM", onSignal);
  process.on("SIGINT", onSignal);
  process.on("SIGHUP", () => {
    try {
      agent.reloadCertificates();
    } catch (err) {
      log.error({ err: toFlotillaError(err) }, "cannot reload certificates; keeping the ones in use");
    }
  });
}

/** POSTs JSON to the controller over HTTP(S) and resolves the status; the token goes only in the header. */
function postJson(url: URL, body: unknown, opts: { token?: string; ca?: Buffer }): Promise<number> {
  return new Promise((resolve, reject) => {
    const headers = { "content-type": "application/json", ...(opts.token ? { authorization: `Bearer ${opts.token}` } : {}) };
    const req = url.protocol === "https:"
      ? httpsRequest(url, { method: "POST", headers, agent: false, timeout: 5000, ...(opts.ca ? { ca: opts.ca } : {}) })
      : httpRequest(url, { method: "POST", headers, agent: false, timeout: 5000 });
    req.on("timeout", () => req.destroy(new FlotillaError("TIMEOUT", `no answer from ${url.origin} within 5s`)));
    req.on("error", reject);
    req.on("response", (res) => {
      res.resume();
      resolve(res.statusCode ?? 0);
    });
    req.end(JSON.stringify(body));
  });
}

function readTlsFiles(tls: { cert: string; key: string; ca: string }): { cert: Buffer; key: Buffer; ca: Buffer } {
  return { cert: readFileSync(tls.cert), key: readFileSync(tls.key), ca: readFileSync(tls.ca) };
}
