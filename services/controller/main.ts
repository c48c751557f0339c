import { readFileSync } from "node:fs";
import { mkdir } from "node:fs/promises";
import type { AddressInfo } from "node:net";
import { ControllerService } from "../common/gen/flotilla/v1/controller_pb.js";
import { ReloadableCertificates, addService, bindServer, newServer, peerIdentityGuard, serverCredentials } from "../common/grpc-bridge.js";
import { addHealthService } from "../common/grpc-health.js";
import { expiryWarning, expiryWarnings, hostOf, isLoopbackHost } from "../common/tls.js";
import { createLogger, type Logger } from "../common/logger.js";
import { installProcessGuard } from "../common/process-guard.js";
import { toFlotillaError } from "../common/errors.js";
import { listenError } from "../common/listen-error.js";
import { registerSecret } from "../common/redact.js";
import { GrpcAgentPool } from "./agents/agent-pool.js";
import { AuditLog } from "./audit/audit-log.js";
import { checkpointPathFor, loadOrCreateAuditKey } from "./audit/audit-key.js";
import { loadControllerConfig, type ControllerConfig } from "./config.js";
import { checkControllerConfig } from "./config-host.js";
import { createHttpGateway } from "./http/http-gateway.js";
import { Inventory } from "./inventory.js";
import { RolloutEngine } from "./rollout-engine.js";
import { GrpcStepClient } from "./agents/grpc-step-client.js";
import { Scheduler } from "./scheduler.js";
import { drillSelected, summariseDrills } from "./drills.js";
import { Leadership } from "./leadership.js";
import { ControllerMetrics } from "./metrics.js";
import { API_LEASE_PREFIX, authenticate, controllerServiceImpl } from "./service.js";
import { openStore } from "./store/index.js";

export interface RunningController {
  readonly httpPort: number;
  readonly grpcPort: number;
  readonly engine: RolloutEngine;
  readonly scheduler: Scheduler;
  /** Re-reads every certificate (SIGHUP): new connections use them, open ones go on. Returns expiry warnings. */
  reloadCertificates(): string[];
  stop(): Promise<void>;
}

/** Starts the controller from a loaded config (main, and tests in-process). */
export async function startController(config: ControllerConfig, log: Logger): Promise<RunningController> {
  for (const t of config.tokens) registerSecret(t.value);
  await mkdir(config.dataDir, { recursive: true, mode: 0o700 });
  const store = openStore(config.store);
  await store.init();
  const key = await loadOrCreateAuditKey(config.auditKeyFile);
  const audit = new AuditLog(store, key, { checkpointFile: checkpointPathFor(config.auditKeyFile) });
  // Every command to an agent carries the leader epoch (fencing); leadership is created below.
  const pool = new GrpcAgentPool(config.agents, store, config.tls, () => leadership.epoch);
  const inventory = new Inventory(pool, log);
  const engine = new RolloutEngine({ store, pool, agents: new GrpcStepClient({ pool, agentTimeoutMs: config.agentTimeoutMs }), inventory, audit, log });
  const scheduler = new Scheduler({
    store,
    engine,
    audit,
    log,
    drill: async (selector, actor) => summariseDrills(await drillSelected({ inventory, pool }, selector, actor)),
  });
  for (const s of config.schedules) {
    const existing = (await store.listSchedules()).find((x) => x.name === s.name);
    await store.upsertSchedule({
      ...s,
      source: "config",
      ...(existing?.lastRun ? { lastRun: existing.lastRun } : {}),
      ...(existing?.lastResult ? { lastResult: existing.lastResult } : {}),
    });
  }
  const callerOf = (method: string, ctx: { metadata: { get(k: string): unknown[] } }) => {
    const auth = ctx.metadata.get("authorization")[0];
    return authenticate(config, typeof auth === "string" ? auth : undefined, method);
  };
  const leadership = new Leadership(
    config.store,
    log,
    async () => {
      // Leases of single API operations belong to calls of an earlier leader, gone now (the agent's
      // journal lock still guards an operation it is finishing).
      for (const [targetId, holder] of Object.entries(await store.listLeases())) {
        if (holder.startsWith(API_LEASE_PREFIX)) await store.releaseLeases(holder, [targetId]);
      }
      const resumed = await engine.resumeAll();
      if (resumed.length) log.info({ rollouts: resumed }, "resumed rollouts");
      await scheduler.reload();
    },
    () => {
      // The lock died with the session: stop acting now; the process manager restarts us as a follower.
      void engine.close();
      void scheduler.close();
      process.exitCode = 1;
      setTimeout(() => process.exit(1), 100).unref();
    },
  );
  const readHttpTls = () => (config.httpTls ? { cert: readFileSync(config.httpTls.cert), key: readFileSync(config.httpTls.key) } : undefined);
  let httpTls = readHttpTls();
  const certs = config.tls
    ? new ReloadableCertificates({ cert: readFileSync(config.tls.cert), key: readFileSync(config.tls.key), ca: readFileSync(config.tls.ca) })
    : undefined;
  const certificateWarnings = (): string[] => {
    const now = new Date();
    const own = [
      ...(certs && config.tls ? [{ what: `controller certificate ${config.tls.cert}`, pem: certs.files.cert }] : []),
      ...(httpTls && config.httpTls ? [{ what: `controller HTTPS certificate ${config.httpTls.cert}`, pem: httpTls.cert }] : []),
    ];
    const agents = [...pool.agentCertificateExpiry()].flatMap(([id, notAfter]) => expiryWarning(`certificate of agent ${id}`, notAfter, now) ?? []);
    return [...expiryWarnings(own, now), ...agents];
  };
  const metrics = new ControllerMetrics({ store, inventory, audit, isLeader: () => leadership.isLeader });
  const impl = controllerServiceImpl(
    {
      config,
      store,
      pool,
      inventory,
      engine,
      audit,
      scheduler,
      log,
      isLeader: () => leadership.isLeader,
      certificateWarnings,
      onCall: (method, outcome) => metrics.countCall(method, outcome),
    },
    callerOf,
  );

  const grpcServer = newServer();
  const grpcMtls = config.tokens.length > 0 && certs !== undefined;
  const allow = config.tls?.allow;
  addService(
    grpcServer,
    ControllerService,
    impl,
    grpcMtls && allow
      ? peerIdentityGuard(allow, (refusal) =>
          log.warn({ method: refusal.method, peer: refusal.peer, names: refusal.names, allow }, "refused a client whose certificate is not allowed"),
        )
      : undefined,
  );
  // SERVING on a standby too: it answers reads (readiness for changes is /readyz).
  const health = addHealthService(grpcServer, [ControllerService.typeName]);
  const http = createHttpGateway(impl, { audit, log, callerOf, isLeader: () => leadership.isLeader, metrics, ...(httpTls ? { tls: httpTls } : {}) });
  let grpcPort: number;
  try {
    try {
      grpcPort = await bindServer(grpcServer, config.listen.grpc, grpcMtls ? serverCredentials(certs) : serverCredentials());
    } catch (err) {
      throw listenError("the gRPC API", config.listen.grpc, err);
    }
    const [host, portText] = [config.listen.http.replace(/:\d+$/, "").replace(/^\[|\]$/g, ""), config.listen.http.split(":").at(-1)!];
    await new Promise<void>((resolve, reject) => {
      http.once("error", (err) => reject(listenError("the HTTP API", config.listen.http, err)));
      http.listen(Number(portText), host, () => resolve());
    });
  } catch (err) {
    // A controller that cannot listen must not stay up half started.
    grpcServer.forceShutdown();
    http.close();
    pool.close();
    await store.close().catch(() => undefined);
    throw err;
  }
  const httpPort = (http.address() as AddressInfo).port;
  // A damaged audit log (e.g. its tail cut) does not stop the controller from serving reads and
  // `audit verify`; every change stays refused, since each one needs its audit row first.
  await audit
    .append({ actor: "controller", action: "controller.start", outcome: "ok", detail: `http ${httpPort}, grpc ${grpcPort}` })
    .catch((err: unknown) => log.error({ err: toFlotillaError(err) }, "the audit log refuses appends: changes are refused until it is repaired"));
  await leadership.start();
  log.info({ httpPort, grpcPort, https: Boolean(httpTls), store: config.store.replace(/:[^:@/]*@/, ":***@") }, "controller listening");
  if (!httpTls && config.tokens.length > 0 && !isLoopbackHost(hostOf(config.listen.http))) {
    log.warn({ listen: config.listen.http }, "the HTTP API is plain HTTP on a non-loopback address: calls with tokens are refused there; configure httpTls");
  }
  for (const warning of certificateWarnings()) log.warn({ warning }, "certificate expires soon");
  return {
    httpPort,
    grpcPort,
    engine,
    scheduler,
    reloadCertificates() {
      if (certs && config.tls) certs.update({ cert: readFileSync(config.tls.cert), key: readFileSync(config.tls.key), ca: readFileSync(config.tls.ca) });
      pool.reloadCertificates();
      const next = readHttpTls();
      if (next && "setSecureContext" in http) http.setSecureContext(next);
      httpTls = next;
      log.info({}, "reloaded certificates");
      const warnings = certificateWarnings();
      for (const warning of warnings) log.warn({ warning }, "certificate expires soon");
      return warnings;
    },
    async stop() {
      health.setAll("NOT_SERVING");
      await leadership.close();
      await scheduler.close();
      await engine.close();
      http.closeAllConnections();
      await new Promise<void>((r) => http.close(() => r()));
      grpcServer.forceShutdown();
      pool.close();
      await store.close();
    },
  };
}

/** Entry point of `flotilla-controller --config controller.yaml`. Resolves with an exit code when it does not keep running. */
export async function main(argv: string[]): Promise<number | undefined> {
  if (argv.includes("--help") || argv.includes("-h")) {
    process.stdout.write("usage: flotilla-controller --config controller.yaml [--data-dir DIR] [--store URL] [--check-config [--offline]]\n");
    return 0;
  }
  const readFile = (p: string): string => readFileSync(p, "utf8");
  if (argv.includes("--check-config")) {
    const report = checkControllerConfig({ argv, env: process.env, readFile }, { offline: argv.includes("--offline") });
    process.stdout.write(report.text);
    return report.exitCode;
  }
  let config: ControllerConfig;
  try {
    config = loadControllerConfig({ argv, env: process.env, readFile });
  } catch (err) {
    const fe = toFlotillaError(err);
    process.stderr.write(`flotilla-controller: ${fe.message}\n`);
    return 2;
  }
  const log = createLogger({ name: "flotilla-controller", level: config.logLevel });
  installProcessGuard(log);
  let running: RunningController;
  try {
    running = await startController(config, log);
  } catch (err) {
    log.fatal({ err: toFlotillaError(err) }, "controller failed to start");
    process.stderr.write(`flotilla-controller: ${toFlotillaError(err).message}\n`);
    // Nothing may keep a half-started daemon alive.
    process.exit(1);
  }
  if (process.env.FLOTILLA_PORT_FILE) {
    const { writeFileSync } = await import("node:fs");
    writeFileSync(process.env.FLOTILLA_PORT_FILE, JSON.stringify({ http: running.httpPort, grpc: running.grpcPort }));
  }
  let stopping = false;
  const onSignal = (sig: string): void => {
    if (stopping) process.exit(1);
    stopping = true;
    log.info({ signal: sig }, "stopping: rollouts in progress resume on next start");
    void running.stop().then(() => process.exit(0));
  };
  process.on("SIGTERM", onSignal);
  process.on("SIGINT", onSignal);
  process.on("SIGHUP", () => {
    try {
      running.reloadCertificates();
    } catch (err) {
      log.error({ err: toFlotillaError(err) }, "cannot reload certificates; keeping the ones in use");
    }
  });
  return undefined;
}
