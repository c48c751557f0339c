import { dirname, isAbsolute, resolve } from "node:path";
import {
  ConfigProblems,
  HOST_PORT,
  checkHostPort,
  checkKeys,
  deepFreeze,
  flagValue,
  identityList,
  isObj,
  numberOf,
  parseConfigText,
  sqlitePathProblem,
  str,
} from "../common/config-helpers.js";
import { identityProblem } from "../common/tls.js";
import { FlotillaError } from "../common/errors.js";
import { ROLLOUT_FIELDS, type Strategy, compileScheduleRequest } from "../common/rollout-request.js";

export type Role = "viewer" | "operator" | "admin";

export interface ControllerConfig {
  readonly listen: { readonly grpc: string; readonly http: string };
  /** sqlite:///path or postgresql://… */
  readonly store: string;
  readonly dataDir: string;
  readonly auditKeyFile: string;
  /** Client certificate for agents, and the gRPC API's mTLS; `allow`: client identities its gRPC API accepts. */
  readonly tls?: { readonly cert: string; readonly key: string; readonly ca: string; readonly allow?: readonly string[] };
  /** HTTPS for the HTTP API (and the page). */
  readonly httpTls?: { readonly cert: string; readonly key: string };
  /** `identity`: what the agent's certificate must name instead of the host of `address`. */
  readonly agents: readonly { readonly id: string; readonly address: string; readonly identity?: string }[];
  /** Token values are read from their files; never logged. Absent: loopback only, no auth. */
  readonly tokens: readonly { readonly name: string; readonly role: Role; readonly value: string }[];
  readonly schedules: readonly {
    readonly name: string;
    readonly cron: string;
    readonly selector: string;
    readonly strategy: Strategy;
    readonly window: string;
    readonly toRevision: string;
    readonly waves: string;
    readonly timeZone: string;
    readonly gate: string;
    readonly maxFailures: number;
  }[];
  readonly agentTimeoutMs: number;
  readonly logLevel: string;
}

export interface LoadControllerConfigInput {
  readonly argv: readonly string[];
  readonly env: Readonly<Record<string, string | undefined>>;
  readonly readFile: (path: string) => string;
}

const ID = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/;

/** How the config file spells each request field of a schedule. */
const CONFIG_KEY_OF: Readonly<Record<string, string>> = {
  [ROLLOUT_FIELDS.toRevision]: "to",
  [ROLLOUT_FIELDS.maxFailures]: "maxFailures",
  [ROLLOUT_FIELDS.timeZone]: "timeZone",
};

/**
 * Loads the controller config: flag > env > file > defaults, every problem at
 * once with its key path, frozen result. Token values come from files.
 */
const ROOT_KEYS = ["listen", "store", "dataDir", "auditKeyFile", "tls", "httpTls", "agents", "tokens", "schedules", "agentTimeoutSeconds", "logLevel"] as const;
const SCHEDULE_KEYS = ["name", "cron", "timeZone", "selector", "strategy", "window", "to", "waves", "gate", "maxFailures"] as const;
const LOG_LEVELS = ["fatal", "error", "warn", "info", "debug", "trace", "silent"] as const;

export function loadControllerConfig(input: LoadControllerConfigInput): ControllerConfig {
  const { config, problems } = readControllerConfig(input);
  problems.throwIfAny();
  return config;
}

/**
 * The loader's work without the verdict: the config from whatever is valid
 * and every problem found (for --check-config). Throws only when there is no
 * document to read.
 */
export function readControllerConfig(input: LoadControllerConfigInput): { config: ControllerConfig; problems: ConfigProblems } {
  const path = flagValue(input.argv, "config") ?? input.env.FLOTILLA_CONTROLLER_CONFIG;
  if (!path)
    throw new FlotillaError(
      "CONFIG_INVALID",
      "no config file given: run flotilla-controller --config /etc/flotilla/controller.yaml (or set FLOTILLA_CONTROLLER_CONFIG)",
    );
  let text: string;
  try {
    text = input.readFile(path);
  } catch (err) {
    throw new FlotillaError("CONFIG_INVALID", `cannot read config file ${path}: ${(err as Error).message}`);
  }
  const base = dirname(resolve(path));
  const abs = (p: string): string => (isAbsolute(p) ? p : resolve(base, p));
  const doc = parseConfigText(text, path);
  const p = new ConfigProblems(path);
  checkKeys(doc, ROOT_KEYS, "", p);

  let grpc = "127.0.0.1:7440";
  let http = "127.0.0.1:7441";
  if (doc.listen !== undefined) {
    if (!isObj(doc.listen)) p.add("listen", "must be { grpc: host:port, http: host:port }");
    else {
      checkKeys(doc.listen, ["grpc", "http"], "listen.", p);
      grpc = str(doc.listen, "grpc", "listen.", p) ?? grpc;
      http = str(doc.listen, "http", "listen.", p) ?? http;
    }
  }
  grpc = flagValue(input.argv, "grpc-listen") ?? input.env.FLOTILLA_CONTROLLER_GRPC ?? grpc;
  http = flagValue(input.argv, "http-listen") ?? input.env.FLOTILLA_CONTROLLER_HTTP ?? http;
  checkHostPort(grpc, "listen.grpc", p, "127.0.0.1:7440");
  checkHostPort(http, "listen.http", p, "127.0.0.1:7441");

  const dataDir = abs(flagValue(input.argv, "data-dir") ?? input.env.FLOTILLA_CONTROLLER_DATA_DIR ?? str(doc, "dataDir", "", p) ?? "/var/lib/flotilla");
  const store = flagValue(input.argv, "store") ?? input.env.FLOTILLA_STORE ?? str(doc, "store", "", p) ?? `sqlite:///${resolve(dataDir, "controller.db")}`;
  if (store.startsWith("sqlite:")) {
    // The store is Flotilla's own file, not an Alembic URL: openStore reads sqlite:///var/lib/x.db
    // and sqlite:////var/lib/x.db alike as the absolute path (CONTRACT.md spells it with three).
    const problem = store.startsWith("sqlite:///")
      ? sqlitePathProblem(store.replace(/^sqlite:\/\/\/(?!\/)(?=.)/, "sqlite:////"))
      : `"${store}" is not a SQLite URL; use sqlite:////var/lib/flotilla/controller.db (four slashes for an absolute path)`;
    if (problem !== undefined) p.add("store", problem);
  } else if (!/^postgres(ql)?:\/\/\S+\/\S+/.test(store)) {
    p.add("store", `"${store.replace(/:[^:@/]*@/, ":***@")}" must be sqlite:///path or postgresql://user@host:5432/db`);
  }
  const auditKeyFile = abs(str(doc, "auditKeyFile", "", p) ?? resolve(dataDir, "audit.key"));

  let tls: ControllerConfig["tls"];
  if (doc.tls !== undefined) {
    if (!isObj(doc.tls)) p.add("tls", "must be { cert, key, ca }");
    else {
      checkKeys(doc.tls, ["cert", "key", "ca", "allow"], "tls.", p);
      const cert = str(doc.tls, "cert", "tls.", p, { required: true });
      const key = str(doc.tls, "key", "tls.", p, { required: true });
      const ca = str(doc.tls, "ca", "tls.", p, { required: true });
      const allow = identityList(doc.tls, "allow", "tls.", p);
      if (cert && key && ca) tls = { cert: abs(cert), key: abs(key), ca: abs(ca), ...(allow ? { allow } : {}) };
    }
  }
  let httpTls: ControllerConfig["httpTls"];
  if (doc.httpTls !== undefined) {
    if (!isObj(doc.httpTls)) p.add("httpTls", "must be { cert, key }");
    else {
      checkKeys(doc.httpTls, ["cert", "key"], "httpTls.", p);
      const cert = str(doc.httpTls, "cert", "httpTls.", p, { required: true });
      const key = str(doc.httpTls, "key", "httpTls.", p, { required: true });
      if (cert && key) httpTls = { cert: abs(cert), key: abs(key) };
    }
  }

  const agents: { id: string; address: string; identity?: string }[] = [];
  if (doc.agents !== undefined) {
    if (!Array.isArray(doc.agents)) p.add("agents", "must be a list of { id, address }");
    else
      doc.agents.forEach((a, i) => {
        if (!isObj(a)) return p.add(`agents[${i}]`, "must be { id, address }");
        checkKeys(a, ["id", "address", "identity"], `agents[${i}].`, p);
        const id = str(a, "id", `agents[${i}].`, p, { required: true, pattern: ID });
        const addressRaw = str(a, "address", `agents[${i}].`, p, { required: true, pattern: HOST_PORT, hint: "host:port of the agent's gRPC listener" });
        const address = addressRaw === undefined ? undefined : checkHostPort(addressRaw, `agents[${i}].address`, p, "host-a:7443");
        if (id && agents.some((x) => x.id === id)) p.add(`agents[${i}].id`, `"${id}" is listed twice`);
        const identity = str(a, "identity", `agents[${i}].`, p);
        const identityBad = identity === undefined ? undefined : identityProblem(identity);
        if (identityBad) p.add(`agents[${i}].identity`, `${identityBad}; e.g. spiffe://flotilla/agent/${id ?? "host-a"}`);
        if (id && address) agents.push({ id, address, ...(identity && !identityBad ? { identity } : {}) });
      });
  }

  const tokens: { name: string; role: Role; value: string }[] = [];
  if (doc.tokens !== undefined) {
    if (!Array.isArray(doc.tokens)) p.add("tokens", "must be a list of { name, role, file }");
    else
      doc.tokens.forEach((t, i) => {
        const at = `tokens[${i}].`;
        if (!isObj(t)) return p.add(`tokens[${i}]`, "must be { name, role, file }");
        checkKeys(t, ["name", "role", "file"], at, p);
        const name = str(t, "name", at, p, { required: true, pattern: ID });
        if (name && tokens.some((x) => x.name === name)) p.add(`${at}name`, `"${name}" is used by two tokens; give each its own name`);
        const role = str(t, "role", at, p, { required: true, pattern: /^(viewer|operator|admin)$/, hint: "viewer, operator or admin" });
        const file = str(t, "file", at, p, { required: true });
        if (file) {
          try {
            const value = input.readFile(abs(file)).trim();
            if (value.length < 16) p.add(`${at}file`, "token is shorter than 16 characters");
            else if (name && role) tokens.push({ name, role: role as Role, value });
          } catch (err) {
            p.add(`${at}file`, `cannot read ${file}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
          }
        }
      });
  }
  const httpHost = http.replace(/:\d+$/, "");
  if (tokens.length === 0 && !["127.0.0.1", "localhost", "[::1]"].includes(httpHost)) {
    p.add("tokens", `are required when the API listens on ${httpHost} (without tokens it serves loopback only)`);
  }

  const schedules: ControllerConfig["schedules"][number][] = [];
  if (doc.schedules !== undefined) {
    if (!Array.isArray(doc.schedules)) p.add("schedules", "must be a list");
    else
      doc.schedules.forEach((s, i) => {
        const at = `schedules[${i}].`;
        if (!isObj(s)) return p.add(`schedules[${i}]`, "must be a mapping");
        checkKeys(s, SCHEDULE_KEYS, at, p);
        const text = (k: string): string | undefined => str(s, k, at, p);
        const maxFailures = s.maxFailures;
        const compiled = compileScheduleRequest({
          name: text("name") ?? "",
          cron: text("cron") ?? "",
          timeZone: text("timeZone") ?? "",
          selector: text("selector") ?? "",
          strategy: text("strategy") ?? "",
          window: text("window") ?? "",
          toRevision: text("to") ?? "",
          waves: text("waves") ?? "",
          gate: text("gate") ?? "",
          maxFailures: typeof maxFailures === "number" || typeof maxFailures === "string" ? maxFailures : 0,
        });
        if (!compiled.ok) {
          for (const problem of compiled.problems) p.add(`${at}${CONFIG_KEY_OF[problem.field] ?? problem.field}`, problem.message);
          return;
        }
        const { name, cron, timeZone, rollout } = compiled.value;
        if (schedules.some((x) => x.name === name)) return p.add(`${at}name`, `"${name}" is used by two schedules; give each its own name`);
        schedules.push({
          name,
          cron,
          timeZone,
          selector: rollout.selector,
          strategy: rollout.strategy,
          window: rollout.window,
          toRevision: rollout.toRevision,
          waves: rollout.waves,
          gate: rollout.gate,
          maxFailures: rollout.maxFailures,
        });
      });
  }
  const agentTimeoutSeconds = doc.agentTimeoutSeconds === undefined ? 7200 : numberOf(doc.agentTimeoutSeconds);
  if (!Number.isFinite(agentTimeoutSeconds) || agentTimeoutSeconds <= 0) p.add("agentTimeoutSeconds", "must be a positive number");
  const logLevel = input.env.FLOTILLA_LOG_LEVEL ?? str(doc, "logLevel", "", p) ?? "info";
  if (!(LOG_LEVELS as readonly string[]).includes(logLevel)) p.add("logLevel", `"${logLevel}" is not a log level; use one of ${LOG_LEVELS.join(", ")}`);
  const config: ControllerConfig = deepFreeze({
    listen: { grpc, http },
    store,
    dataDir,
    auditKeyFile,
    agents,
    tokens,
    schedules,
    agentTimeoutMs: agentTimeoutSeconds * 1000,
    logLevel,
    ...(tls ? { tls } : {}),
    ...(httpTls ? { httpTls } : {}),
  });
  return { config, problems: p };
}
