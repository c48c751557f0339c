import { existsSync, readFileSync } from "node:fs";
import { readdir, rm } from "node:fs/promises";
import { hostname, userInfo } from "node:os";
import { join } from "node:path";
import { AgentService } from "../common/gen/flotilla/v1/agent_pb.js";
import { request as httpRequest } from "node:http";
import { request as httpsRequest } from "node:https";
import { ReloadableCertificates, addService, bindServer, newServer, peerIdentityGuard, serverCredentials } from "../common/grpc-bridge.js";
import { expiryWarnings } from "../common/tls.js";
import { addHealthService } from "../common/grpc-health.js";
import { createLogger, type Logger } from "../common/logger.js";
import { installProcessGuard } from "../common/process-guard.js";
import { NodeProcessRunner, describeRun, type ProcessRunner } from "../common/process-runner.js";
import { registerSecret } from "../common/redact.js";
import { FlotillaError, toFlotillaError } from "../common/errors.js";
import { listenError } from "../common/listen-error.js";
import { loadAgentConfig, type AgentApp, type AgentConfig, type AgentTarget } from "./config.js";
import { checkAgentConfig } from "./config-host.js";
import { AppControl } from "./adapters/app-control.js";
import { BackupCatalog } from "./adapters/backup-catalog.js";
import { SqliteJournal } from "./adapters/sqlite-journal.js";
import { InstanceLock } from "./adapters/instance-lock.js";
import { SqliteDatabase } from "./adapters/sqlite-database.js";
import { PostgresDatabase } from "./adapters/postgres-database.js";
import { alembicPort } from "./adapters/alembic-port.js";
import { killOrphans } from "./adapters/orphans.js";
import { NodeSecretSource } from "./adapters/secret-source.js";
import { probeTarget } from "./adapters/target-probe.js";
import type { DatabaseAdapter } from "./core/ports.js";
import type { SecretSource } from "./core/secrets.js";
import { AgentOperations, type TargetRuntime } from "./operations/index.js";
import { agentServiceImpl } from "./rpc/agent-service.js";
import { withFencing } from "./rpc/fencing.js";
import { RESET_FENCING_USAGE, resetFencingCommand } from "./reset-fencing-command.js";
import { withTargetHealth } from "./rpc/target-health-guard.js";
import { TargetRegistry } from "./target-registry.js";
import { AgentMetrics } from "./metrics.js";
import { startHealthListener } from "./http-health.js";

export const AGENT_VERSION = "0.1.0";

function databaseFor(url: string, t: AgentTarget, runner: ProcessRunner, scratchDir: string): DatabaseAdapter {
  if (t.kind === "sqlite") return SqliteDatabase.fromUrl(url, { scratchDir });
  return new PostgresDatabase({ url, ...(t.password !== undefined ? { password: t.password } : {}), runner, scratchDir });
}

/** Builds the runtime of one target from its config with secrets resolved. No I/O. */
export function buildTarget(t: AgentTarget, apps: readonly AgentApp[], runner: ProcessRunner, scratchDir: string): TargetRuntime {
  const db = databaseFor(t.database, t, runner, scratchDir);
  const alembicFor = (url: string) =>
    alembicPort(
      { dir: t.alembic.dir, command: t.alembic.command, env: t.alembic.env, databaseUrl: url, ...(t.alembic.iniFile ? { iniFile: t.alembic.iniFile } : {}) },
      runner,
      t.alembic.timeoutMs,
    );
  const green = t.blueGreen ? databaseFor(t.blueGreen.green, t, runner, scratchDir) : undefined;
  return {
    config: t,
    db,
    alembic: alembicFor(db.alembicUrl()),
    ...(green ? { green: { db: green, alembic: alembicFor(green.alembicUrl()) } } : {}),
    catalog: new BackupCatalog(t.backups.dir, t.id, t.kind),
    apps: apps.filter((a) => a.target === t.id),
    alembicFor,
  };
}

/**
 * The targets of a config as a registry: secrets read at each operation
 * through `secrets`, runtimes rebuilt when they change. No I/O until used.
 */
export function buildTargets(config: AgentConfig, runner: ProcessRunner, secrets: SecretSource = new NodeSecretSource()): TargetRegistry {
  const scratchDir = join(config.dataDir, "scratch");
  return new TargetRegistry(config.targets, {
    secrets,
    build: (t) => buildTarget(t, config.apps, runner, scratchDir),
    probe: probeTarget,
  });
}

export interface RunningAgent {
  readonly port: number;
  /** Port of the /healthz, /readyz, /metrics listener; 0 when it is off. */
  readonly httpPort: number;
  readonly config: AgentConfig;
  /** Re-reads the TLS files (SIGHUP): new connections use them, open ones go on. Returns expiry warnings. */
  reloadCertificates(): string[];
  stop(force?: boolean): Promise<void>;
}

/**
 * Empties the scratch folder (rehearsal copies, drill restores, clone dumps).
 * Only at start, before any operation can run: whatever is there was left by
 * a process that died mid-operation. Returns how many entries were removed.
 */
export async function clearScratch(dir: string): Promise<number> {
  const entries = await readdir(dir).catch(() => [] as string[]);
  await Promise.all(entries.map((e) => rm(join(dir, e), { recursive: true, force: true })));
  return entries.length;
}

/** Starts an agent from a loaded config (used by main and by tests in-process). */
export async function startAgent(config: AgentConfig, log: Logger, secrets: SecretSource = new NodeSecretSource()): Promise<RunningAgent> {
  const runner = new NodeProcessRunner();
  const certs = config.tls ? new ReloadableCertificates(readTls(config.tls)) : undefined;
  const journal = new SqliteJournal(config.dataDir);
  journal.open();
  const server = newServer();
  try {
    const interrupted = journal.markInterrupted();
    const killed = await killOrphans(interrupted.map((o) => o.id));
    if (killed.length > 0) log.warn({ pids: killed }, "killed child processes left running by the previous agent process");
    for (const op of interrupted) {
      log.warn({ op: op.id, target: op.targetId, kind: op.kind }, "operation was interrupted by an agent stop; the target stays locked until Recover");
    }
    const leftovers = await clearScratch(join(config.dataDir, "scratch"));
    if (leftovers > 0) log.info({ entries: leftovers }, "removed scratch copies left by a crash (rehearsals, drills, clones)");
    const targets = buildTargets(config, runner, secrets);
    // In parallel: one unreachable database must not hold up the start of the others.
    await Promise.all(
      [...targets.keys()].map(async (id) => {
        const health = await targets.check(id);
        if (health?.state === "broken") {
          log.warn(
            { target: id, problems: health.problems.map((p) => p.code) },
            "target is broken: it is served with its problems and operations on it are refused until they are fixed",
          );
          return;
        }
        const removed = await targets
          .get(id)!
          .catalog.prepare()
          .catch(() => [] as string[]);
        if (removed.length > 0) log.info({ target: id, files: removed.length }, "removed temporary backup files left by a crash");
      }),
    );
    const ops = new AgentOperations({
      config,
      targets,
      journal,
      log,
      appControl: new AppControl(runner),
      heartbeatMs: Number(process.env.FLOTILLA_HEARTBEAT_MS ?? 15_000),
      fileExists: (path) => existsSync(path),
      killOrphans,
      runHook: async (argv, onLine, signal) => {
        const r = await runner.run({ argv, timeoutMs: 120_000, onLine: (l) => onLine(l), ...(signal ? { signal } : {}) });
        return {
          ok: r.exitCode === 0,
          detail: r.exitCode === 0 ? `hook ${argv.join(" ")} ok` : describeRun(argv[0]!, r) + (r.stderr ? `: ${r.stderr.trim().split("\n").at(-1)}` : ""),
        };
      },
    });
    const guard = config.tls
      ? peerIdentityGuard(config.tls.allow, (refusal) =>
          log.warn(
            { method: refusal.method, peer: refusal.peer, names: refusal.names, allow: config.tls?.allow },
            "refused a client whose certificate is not allowed",
          ),
        )
      : undefined;
    const metrics = new AgentMetrics({
      lastVerifiedBackups: () =>
        Promise.all(
          [...targets.keys()].map(async (id) => {
            const m = await targets
              .get(id)
              ?.catalog.lastVerified()
              .catch(() => undefined);
            return { targetId: id, ...(m ? { createdAt: m.createdAt, sizeBytes: m.sizeBytes } : {}) };
          }),
        ),
    });
    addService(server, AgentService, withFencing(metrics.instrument(withTargetHealth(agentServiceImpl(config, ops, AGENT_VERSION), targets)), journal), guard);
    // Health answers any client the TLS handshake lets in: it tells only SERVING or not.
    const health = addHealthService(server, [AgentService.typeName]);
    let port: number;
    try {
      port = await bindServer(server, config.listen, serverCredentials(certs));
    } catch (err) {
      throw listenError("gRPC", config.listen, err);
    }
    let draining = false;
    let httpServer: import("node:http").Server | undefined;
    let httpPort = 0;
    if (config.httpListen) {
      try {
        ({ server: httpServer, port: httpPort } = await startHealthListener(config.httpListen, { ready: () => !draining, metrics }));
      } catch (err) {
        // The default address may be taken (several agents on one host); only an explicit one must work.
        if (config.httpListenExplicit) throw listenError("HTTP (httpListen)", config.httpListen, err);
        log.warn({ err: toFlotillaError(err), address: config.httpListen }, "health and metrics listener not started: set httpListen to a free address");
      }
    }
    log.info({ port, httpPort, targets: config.targets.map((t) => t.id), tls: Boolean(certs), allow: config.tls?.allow ?? [] }, "agent listening");
    if (certs)
      for (const warning of expiryWarnings([{ what: `agent certificate ${config.tls!.cert}`, pem: certs.files.cert }], new Date()))
        log.warn({ warning }, "certificate expires soon");

    let heartbeat: NodeJS.Timeout | undefined;
    if (config.controller) {
      const c = config.controller;
      const advertise = c.advertise.replace(/:0$/, `:${port}`);
      const beat = async (): Promise<void> => {
        // The token file is read at each beat: a rotated token needs no restart.
        let token: string | undefined;
        if (c.tokenFile !== undefined) {
          const r = secrets.read({ file: c.tokenFile });
          if (!r.ok) {
            log.warn({ file: c.tokenFile, problem: r.state }, "cannot read the registration token file; not registering");
            return;
          }
          token = r.value;
          registerSecret(token);
        }
        try {
          const status = await postJson(
            new URL("/v1/RegisterAgent", c.address),
            { agentId: config.agentId, address: advertise },
            {
              ...(token ? { token } : {}),
              ...(c.ca ? { ca: readFileSync(c.ca) } : {}),
            },
          );
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
      httpPort,
      config,
      reloadCertificates() {
        if (!certs || !config.tls) return [];
        certs.update(readTls(config.tls));
        const warnings = expiryWarnings([{ what: `agent certificate ${config.tls.cert}`, pem: certs.files.cert }], new Date());
        log.info({ cert: config.tls.cert }, "reloaded certificates");
        for (const warning of warnings) log.warn({ warning }, "certificate expires soon");
        return warnings;
      },
      async stop(force = false) {
        draining = true;
        health.setAll("NOT_SERVING");
        if (heartbeat) clearInterval(heartbeat);
        httpServer?.closeAllConnections();
        httpServer?.close();
        if (force) server.forceShutdown();
        else await new Promise<void>((r) => server.tryShutdown(() => r()));
        journal.close();
      },
    };
  } catch (err) {
    server.forceShutdown();
    journal.close();
    throw err;
  }
}

let instanceLock: InstanceLock | undefined;

/** Entry point of `flotilla-agent --config agent.yaml`. Resolves with an exit code when it does not keep running. */
export async function main(argv: string[]): Promise<number | undefined> {
  if (argv.includes("--help") || argv.includes("-h")) {
    process.stdout.write(
      `usage: flotilla-agent --config agent.yaml [--listen host:port] [--data-dir DIR] [--check-config [--offline]]\n       ${RESET_FENCING_USAGE}`,
    );
    return 0;
  }
  const readFile = (p: string): string => readFileSync(p, "utf8");
  if (argv.includes("--reset-fencing")) {
    const actor = (() => {
      try {
        return userInfo().username;
      } catch {
        return `uid ${process.getuid?.() ?? "?"}`;
      }
    })();
    return resetFencingCommand(argv, {
      env: process.env,
      readFile,
      hostname: hostname(),
      actor,
      out: (t) => process.stdout.write(t),
      err: (t) => process.stderr.write(t),
    });
  }
  if (argv.includes("--check-config")) {
    const report = await checkAgentConfig({ argv, env: process.env, readFile, hostname: hostname() }, { offline: argv.includes("--offline") });
    process.stdout.write(report.text);
    return report.exitCode;
  }
  let config: AgentConfig;
  try {
    config = loadAgentConfig({ argv, env: process.env, readFile, hostname: hostname() });
  } catch (err) {
    const fe = toFlotillaError(err);
    process.stderr.write(`flotilla-agent: ${fe.message}\n`);
    return fe.code === "CONFIG_INVALID" || fe.code === "INVALID_ARGUMENT" ? 2 : 1;
  }
  // One daemon per data dir, and offline tools (--reset-fencing) never beside it; released by the OS when the process ends.
  try {
    // Kept referenced for the life of the process (a collected connection would drop the lock).
    instanceLock = InstanceLock.acquire(config.dataDir);
  } catch (err) {
    process.stderr.write(`flotilla-agent: ${toFlotillaError(err).message}: refusing to start a second one\n`);
    return 1;
  }
  const log = createLogger({ name: "flotilla-agent", level: config.logLevel });
  installProcessGuard(log);
  let agent: RunningAgent;
  try {
    agent = await startAgent(config, log);
  } catch (err) {
    const fe = toFlotillaError(err);
    log.fatal({ err: fe }, "agent failed to start");
    process.stderr.write(`flotilla-agent: ${fe.message}\n`);
    // Nothing may keep a half-started daemon alive.
    process.exit(1);
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
    void agent.stop(false).then(() => {
      instanceLock?.release();
      process.exit(0);
    });
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
  return undefined;
}

/** POSTs JSON to the controller over HTTP(S) and resolves the status; the token goes only in the header. */
function postJson(url: URL, body: unknown, opts: { token?: string; ca?: Buffer }): Promise<number> {
  return new Promise((resolve, reject) => {
    const headers = { "content-type": "application/json", ...(opts.token ? { authorization: `Bearer ${opts.token}` } : {}) };
    const req =
      url.protocol === "https:"
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

/** Reads the TLS files; a missing one is a clear CONFIG_INVALID naming it. */
function readTls(tls: { cert: string; key: string; ca: string }): { cert: Buffer; key: Buffer; ca: Buffer } {
  const read = (path: string, key: string): Buffer => {
    try {
      return readFileSync(path);
    } catch (err) {
      throw new FlotillaError(
        "CONFIG_INVALID",
        `tls.${key}: cannot read ${path} (${(err as NodeJS.ErrnoException).code ?? "error"}); fix the path in the agent config or install the file`,
      );
    }
  };
  return { cert: read(tls.cert, "cert"), key: read(tls.key, "key"), ca: read(tls.ca, "ca") };
}
