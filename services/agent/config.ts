import { dirname, isAbsolute, resolve } from "node:path";
import {
  ConfigProblems,
  argvList,
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
  stringList,
  type Obj,
} from "../common/config-helpers.js";
import { CONTROLLER_SPIFFE_ID, isLoopbackHost } from "../common/tls.js";
import { FlotillaError } from "../common/errors.js";
import type { AppInstance, DatabaseKind } from "./core/ports.js";
import type { SecretRef } from "./core/secrets.js";
import { checkAppState } from "./config-app-state.js";

export interface TlsConfig {
  readonly cert: string;
  readonly key: string;
  readonly ca: string;
  /** Client identities (SAN URI, DNS or IP) that may call this agent. */
  readonly allow: readonly string[];
}

export type { SecretRef };

/** One target as configured: secrets are references, read at each operation (a rotated key needs no restart). */
export interface TargetConfig {
  readonly id: string;
  readonly labels: Readonly<Record<string, string>>;
  readonly kind: DatabaseKind;
  /** As configured, without any password (a SQLite path is absolute). */
  readonly database: string;
  /** PostgreSQL password file (read per operation). */
  readonly passwordFile?: string;
  readonly alembic: {
    readonly dir: string;
    readonly command: readonly string[];
    /** Plain (non-secret) environment for env.py. */
    readonly env: Readonly<Record<string, string>>;
    /** Secret environment for env.py by name: where each value is read from. */
    readonly secrets: Readonly<Record<string, SecretRef>>;
    readonly timeoutMs: number;
    /** -c ini file (relative to dir), when not alembic.ini. */
    readonly iniFile?: string;
  };
  readonly backups: {
    readonly dir: string;
    readonly keep: number;
    /** Also keep every backup younger than this many days. */
    readonly keepDays?: number;
    /** Companion files and folders saved with each backup (absolute paths). */
    readonly include?: readonly string[];
  };
  /** Command printing the app version, recorded with each backup. */
  readonly appVersion?: readonly string[];
  /** Queries a drill runs against a restored copy. */
  readonly smoke?: readonly string[];
  readonly blueGreen?: { readonly green: string; readonly switch: readonly string[] };
  readonly lockTimeoutMs: number;
}

/**
 * A target with its secrets resolved for one operation (what the operations
 * and adapters use). Built from a TargetConfig by the target registry.
 */
export interface AgentTarget extends Omit<TargetConfig, "alembic" | "passwordFile"> {
  /** PostgreSQL password read from passwordFile (never logged). */
  readonly password?: string;
  readonly alembic: Omit<TargetConfig["alembic"], "secrets"> & {
    /** Environment for env.py with secrets resolved. */
    readonly env: Readonly<Record<string, string>>;
    /** Names of env entries that are secrets (came from a file or env). */
    readonly secretEnvNames: readonly string[];
  };
}

/** An app instance as configured: the same shape the operations drive through AppControlPort. */
export type AgentApp = AppInstance;

export interface AgentConfig {
  /** The config file this came from (for messages). */
  readonly source: string;
  readonly agentId: string;
  readonly listen: string;
  readonly tls?: TlsConfig;
  readonly dataDir: string;
  readonly targets: readonly TargetConfig[];
  readonly apps: readonly AgentApp[];
  /** Registration: the token file is read at each heartbeat; `ca` is the CA file the controller's HTTPS certificate is checked against (default tls.ca). */
  readonly controller?: {
    readonly address: string;
    readonly advertise: string;
    readonly heartbeatSeconds: number;
    readonly tokenFile?: string;
    readonly ca?: string;
  };
  readonly logLevel: string;
  /**
   * host:port of the small HTTP listener for /healthz, /readyz and /metrics
   * (loopback by default); undefined when turned off with `httpListen: off`.
   */
  readonly httpListen?: string;
  /** True when httpListen was set (flag, env or file): then failing to bind it stops the agent. */
  readonly httpListenExplicit: boolean;
}

/** Default address of the agent's health and metrics listener. */
export const DEFAULT_HTTP_LISTEN = "127.0.0.1:7444";

export interface LoadConfigInput {
  readonly argv: readonly string[];
  readonly env: Readonly<Record<string, string | undefined>>;
  /** Reads a file as UTF-8 (throws when absent). Only the config file itself is read. */
  readonly readFile: (path: string) => string;
  /** Hostname used as the default agent id. */
  readonly hostname?: string;
}

const ID = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/;
const LABEL = /^[A-Za-z0-9._/-]{1,63}$/;

/** Parses a database URL into its kind and a display form without password. A message when it is not usable. */
export function parseDatabaseUrl(url: string): { kind: DatabaseKind; display: string; sqlitePath?: string; password?: string } | string {
  if (url.startsWith("sqlite:///")) {
    const problem = sqlitePathProblem(url);
    if (problem !== undefined) return problem;
    return { kind: "sqlite", display: url, sqlitePath: url.slice("sqlite:///".length) };
  }
  if (url.startsWith("sqlite:"))
    return `"${url}" is not a SQLite URL Alembic understands; use sqlite:////abs/path/webui.db (four slashes for an absolute path)`;
  if (/^postgres(ql)?(\+psycopg2)?:\/\//.test(url)) {
    let u: URL;
    try {
      u = new URL(url.replace(/^postgres(ql)?(\+psycopg2)?:/, "postgresql:"));
    } catch {
      const port = /^[^:]+:\/\/(?:[^@/]*@)?(?:\[[^\]]*\]|[^:/]*):(\d+)/.exec(url)?.[1];
      if (port !== undefined && Number(port) > 65535) return `port ${port} is out of range: use 1-65535 (PostgreSQL's default is 5432)`;
      return "is not a valid PostgreSQL URL (use postgresql://user@host:5432/dbname)";
    }
    if (!u.pathname || u.pathname === "/") return "PostgreSQL URL has no database name (use postgresql://user@host:5432/dbname)";
    if (u.port !== "" && (Number(u.port) < 1 || Number(u.port) > 65535)) return `port ${u.port} is out of range: use 1-65535 (PostgreSQL's default is 5432)`;
    const password = u.password ? decodeURIComponent(u.password) : undefined;
    u.password = "";
    return { kind: "postgresql", display: u.toString(), ...(password !== undefined ? { password } : {}) };
  }
  return "must start with sqlite:/// or postgresql:// (e.g. sqlite:////app/backend/data/webui.db)";
}

const ROOT_KEYS = ["agentId", "listen", "tls", "dataDir", "targets", "apps", "controller", "logLevel", "httpListen"] as const;
const TLS_KEYS = ["cert", "key", "ca", "allow"] as const;
const TARGET_KEYS = ["id", "labels", "database", "passwordFile", "alembic", "backups", "appVersion", "smoke", "blueGreen", "lockTimeoutMs"] as const;
const ALEMBIC_KEYS = ["dir", "command", "config", "env", "timeoutMinutes"] as const;
const BACKUP_KEYS = ["dir", "keep", "keepDays", "include"] as const;
const BLUE_GREEN_KEYS = ["green", "switch"] as const;
const APP_KEYS = ["id", "target", "color", "stop", "start", "health"] as const;
const CONTROLLER_KEYS = ["address", "advertise", "heartbeatSeconds", "tokenFile", "ca"] as const;
const LOG_LEVELS = ["fatal", "error", "warn", "info", "debug", "trace", "silent"] as const;
/** Set by the agent itself for every Alembic run. */
const RESERVED_ENV = ["DATABASE_URL", "PATH", "LD_PRELOAD", "LD_LIBRARY_PATH", "PGPASSWORD", "PGPASSFILE", "PGOPTIONS"];

/**
 * Loads the agent config: flag > env > file > defaults. Pure apart from the
 * injected readFile, which reads only the config file: secrets stay
 * references (SecretRef) and are read at each operation. Every problem is
 * reported at once with its key path (unknown keys at every depth with the
 * nearest known key); the result is frozen. Whether the files and folders it
 * names exist on this host is checked elsewhere (config-host.ts), so one
 * target whose files are missing never stops the agent.
 */
export function loadAgentConfig(input: LoadConfigInput): AgentConfig {
  const { config, problems } = readAgentConfig(input);
  problems.throwIfAny();
  return config;
}

/**
 * The loader's work without the verdict: the config built from whatever is
 * valid, and every problem found. Throws only when there is no document to
 * read (no file, unreadable, not YAML). Used by --check-config, which adds the
 * host checks to the same report.
 */
export function readAgentConfig(input: LoadConfigInput): { config: AgentConfig; problems: ConfigProblems } {
  const configPath = flagValue(input.argv, "config") ?? input.env.FLOTILLA_AGENT_CONFIG;
  if (!configPath) {
    throw new FlotillaError("CONFIG_INVALID", "no config file given: run flotilla-agent --config /etc/flotilla/agent.yaml (or set FLOTILLA_AGENT_CONFIG)");
  }
  let text: string;
  try {
    text = input.readFile(configPath);
  } catch (err) {
    throw new FlotillaError("CONFIG_INVALID", `cannot read config file ${configPath}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
  }
  const base = dirname(resolve(configPath));
  const abs = (path: string): string => (isAbsolute(path) ? path : resolve(base, path));
  const doc = parseConfigText(text, configPath);
  const p = new ConfigProblems(configPath);
  checkKeys(doc, ROOT_KEYS, "", p);

  const agentId =
    flagValue(input.argv, "agent-id") ??
    input.env.FLOTILLA_AGENT_ID ??
    str(doc, "agentId", "", p, { pattern: ID, hint: "letters, digits, . _ -" }) ??
    input.hostname ??
    "agent";
  const listen = flagValue(input.argv, "listen") ?? input.env.FLOTILLA_AGENT_LISTEN ?? str(doc, "listen", "", p) ?? "127.0.0.1:7443";
  checkHostPort(listen, "listen", p);
  const dataDirRaw = flagValue(input.argv, "data-dir") ?? input.env.FLOTILLA_AGENT_DATA_DIR ?? str(doc, "dataDir", "", p) ?? "/var/lib/flotilla-agent";
  const dataDir = abs(dataDirRaw);

  let tls: TlsConfig | undefined;
  if (doc.tls !== undefined) {
    if (!isObj(doc.tls)) p.add("tls", "must be a mapping with cert, key and ca");
    else {
      checkKeys(doc.tls, TLS_KEYS, "tls.", p);
      const cert = str(doc.tls, "cert", "tls.", p, { required: true });
      const key = str(doc.tls, "key", "tls.", p, { required: true });
      const ca = str(doc.tls, "ca", "tls.", p, { required: true });
      // Default: only the controller's identity as `flotilla certs init` issues it.
      const allow = identityList(doc.tls, "allow", "tls.", p) ?? [CONTROLLER_SPIFFE_ID];
      if (cert && key && ca) tls = { cert: abs(cert), key: abs(key), ca: abs(ca), allow };
    }
  }
  const host = listen.replace(/:\d+$/, "");
  if (doc.tls === undefined && !["127.0.0.1", "localhost", "[::1]"].includes(host)) {
    p.add("tls", `is required when listening on ${host} (plain gRPC is allowed on loopback only)`);
  }

  const secretRef = (v: Obj, keyPath: string): SecretRef | undefined => {
    checkKeys(v, ["file", "env"], `${keyPath}.`, p);
    if (typeof v.file === "string" && v.file !== "" && v.env === undefined) return { file: abs(v.file) };
    if (typeof v.env === "string" && /^[A-Za-z_][A-Za-z0-9_]*$/.test(v.env) && v.file === undefined) return { env: v.env };
    p.add(keyPath, "must be a string, { file: /path/to/secret } or { env: VARIABLE_NAME }");
    return undefined;
  };

  const targets: TargetConfig[] = [];
  const seen = new Set<string>();
  const hasApps = Array.isArray(doc.apps) && doc.apps.length > 0;
  if (doc.targets !== undefined && doc.targets !== null && !Array.isArray(doc.targets)) {
    p.add("targets", "must be a list of targets (id, database, alembic.dir, backups.dir)");
  } else if ((!Array.isArray(doc.targets) || doc.targets.length === 0) && !hasApps) {
    p.add("targets", "must list at least one target (id, database, alembic.dir, backups.dir), or apps must list app instances this host runs");
  } else if (Array.isArray(doc.targets)) {
    doc.targets.forEach((raw: unknown, i: number) => {
      const at = `targets[${i}].`;
      if (!isObj(raw)) return p.add(`targets[${i}]`, "must be a mapping");
      checkKeys(raw, TARGET_KEYS, at, p);
      const id = str(raw, "id", at, p, { required: true, pattern: ID, hint: "letters, digits, . _ - (max 64)" });
      if (id) {
        if (seen.has(id)) p.add(`${at}id`, `"${id}" is used by two targets; give each target its own id`);
        seen.add(id);
      }
      const labels: Record<string, string> = {};
      if (raw.labels !== undefined) {
        if (!isObj(raw.labels)) p.add(`${at}labels`, "must be a mapping like { env: prod }");
        else
          for (const [k, v] of Object.entries(raw.labels)) {
            if (!LABEL.test(k) || !LABEL.test(String(v))) p.add(`${at}labels.${k}`, "label keys and values use letters, digits, . _ / -");
            else labels[k] = String(v);
          }
      }
      const dbUrl = str(raw, "database", at, p, { required: true, hint: "sqlite:////path/webui.db or postgresql://user@host:5432/db" });
      let kind: DatabaseKind = "sqlite";
      let display = "";
      if (dbUrl) {
        const parsed = parseDatabaseUrl(dbUrl);
        if (typeof parsed === "string") p.add(`${at}database`, parsed);
        else {
          kind = parsed.kind;
          display = parsed.display;
          if (parsed.password !== undefined)
            p.add(`${at}database`, "contains a password: put it in passwordFile instead (URLs end up in logs and process lists)");
        }
      }
      const pwFile = str(raw, "passwordFile", at, p);
      if (pwFile !== undefined && kind !== "postgresql" && display !== "") p.add(`${at}passwordFile`, "is only for PostgreSQL targets");
      const al = raw.alembic;
      let alembic: TargetConfig["alembic"] | undefined;
      if (!isObj(al)) p.add(`${at}alembic`, "is required: { dir: <folder with alembic.ini>, command: [alembic] }");
      else {
        checkKeys(al, ALEMBIC_KEYS, `${at}alembic.`, p);
        const dir = str(al, "dir", `${at}alembic.`, p, { required: true, hint: "the folder that holds alembic.ini" });
        const command = argvList(al, "command", `${at}alembic.`, p) ?? ["alembic"];
        const env: Record<string, string> = {};
        const secrets: Record<string, SecretRef> = {};
        if (al.env !== undefined && al.env !== null) {
          if (!isObj(al.env)) p.add(`${at}alembic.env`, "must be a mapping of NAME: value | { file: path } | { env: NAME }");
          else
            for (const [name, v] of Object.entries(al.env)) {
              const kp = `${at}alembic.env.${name}`;
              if (!/^[A-Za-z_][A-Za-z0-9_]*$/.test(name)) {
                p.add(kp, "is not a valid environment variable name");
                continue;
              }
              if (RESERVED_ENV.includes(name)) {
                p.add(kp, `${name} is set by the agent itself and cannot be overridden`);
                continue;
              }
              if (typeof v === "string" || typeof v === "number" || typeof v === "boolean") env[name] = String(v);
              else if (isObj(v)) {
                const ref = secretRef(v, kp);
                if (ref) secrets[name] = ref;
              } else p.add(kp, "must be a string, { file: path } or { env: NAME }");
            }
        }
        const timeoutMin = al.timeoutMinutes === undefined ? 120 : numberOf(al.timeoutMinutes);
        if (!Number.isFinite(timeoutMin) || timeoutMin <= 0) p.add(`${at}alembic.timeoutMinutes`, "must be a positive number of minutes");
        const iniFile = str(al, "config", `${at}alembic.`, p, { pattern: /^[A-Za-z0-9._/-]+\.ini$/, hint: "an .ini file name, e.g. alembic.ini" });
        if (dir) alembic = { dir: abs(dir), command, env, secrets, timeoutMs: Math.round(timeoutMin * 60_000), ...(iniFile ? { iniFile } : {}) };
      }
      let backups: TargetConfig["backups"] | undefined;
      if (!isObj(raw.backups)) p.add(`${at}backups`, "is required: { dir: /backups/<target>, keep: 10 }");
      else {
        checkKeys(raw.backups, BACKUP_KEYS, `${at}backups.`, p);
        const dir = str(raw.backups, "dir", `${at}backups.`, p, { required: true });
        const keep = raw.backups.keep === undefined ? 10 : numberOf(raw.backups.keep);
        if (!Number.isInteger(keep) || keep < 1 || keep > 1000) p.add(`${at}backups.keep`, "must be a whole number from 1 to 1000");
        const keepDays = raw.backups.keepDays === undefined ? undefined : numberOf(raw.backups.keepDays);
        if (keepDays !== undefined && (!Number.isFinite(keepDays) || keepDays <= 0 || keepDays > 3650))
          p.add(`${at}backups.keepDays`, "must be a number of days from 1 to 3650");
        const include = stringList(raw.backups, "include", `${at}backups.`, p, "absolute paths of companion files or folders");
        if (include)
          for (const [j, path] of include.entries()) if (!isAbsolute(path)) p.add(`${at}backups.include[${j}]`, `"${path}" must be an absolute path`);
        if (dir) backups = { dir: abs(dir), keep, ...(keepDays !== undefined ? { keepDays } : {}), ...(include ? { include } : {}) };
      }
      const appVersion = argvList(raw, "appVersion", at, p);
      const smoke = stringList(raw, "smoke", at, p, "SQL queries (e.g. SELECT count(*) FROM user)");
      checkAppState(at, p, {
        ...(backups?.include ? { include: backups.include } : {}),
        ...(smoke ? { smoke } : {}),
        ...(kind === "sqlite" && display ? { sqlitePath: display.slice("sqlite:///".length) } : {}),
        ...(backups ? { backupsDir: backups.dir } : {}),
      });
      let blueGreen: TargetConfig["blueGreen"] | undefined;
      if (raw.blueGreen !== undefined) {
        if (!isObj(raw.blueGreen)) p.add(`${at}blueGreen`, "must be { green: <database URL>, switch: [command] }");
        else {
          checkKeys(raw.blueGreen, BLUE_GREEN_KEYS, `${at}blueGreen.`, p);
          const green = str(raw.blueGreen, "green", `${at}blueGreen.`, p, { required: true });
          const sw = argvList(raw.blueGreen, "switch", `${at}blueGreen.`, p, true);
          if (green) {
            const g = parseDatabaseUrl(green);
            if (typeof g === "string") p.add(`${at}blueGreen.green`, g);
            else if (g.kind !== kind) p.add(`${at}blueGreen.green`, `must be the same kind of database as the target (${kind})`);
            else if (g.display === display) p.add(`${at}blueGreen.green`, "must be another database than the target's own");
            else if (sw) blueGreen = { green: g.display, switch: sw.map((x, j) => (j === 0 && x.startsWith(".") ? abs(x) : x)) };
          }
        }
      }
      const lockTimeoutMs = raw.lockTimeoutMs === undefined ? 5000 : numberOf(raw.lockTimeoutMs);
      if (!Number.isInteger(lockTimeoutMs) || lockTimeoutMs < 100) p.add(`${at}lockTimeoutMs`, "must be a whole number of milliseconds ≥ 100");
      if (id && dbUrl && display && alembic && backups) {
        targets.push({
          id,
          labels,
          kind,
          database: display,
          alembic,
          backups,
          lockTimeoutMs,
          ...(pwFile !== undefined && kind === "postgresql" ? { passwordFile: abs(pwFile) } : {}),
          ...(appVersion ? { appVersion } : {}),
          ...(smoke ? { smoke } : {}),
          ...(blueGreen ? { blueGreen } : {}),
        });
      }
    });
  }

  const apps: AgentApp[] = [];
  if (doc.apps !== undefined && doc.apps !== null) {
    if (!Array.isArray(doc.apps)) p.add("apps", "must be a list of app instances");
    else
      doc.apps.forEach((raw: unknown, i: number) => {
        const at = `apps[${i}].`;
        if (!isObj(raw)) return p.add(`apps[${i}]`, "must be a mapping");
        checkKeys(raw, APP_KEYS, at, p);
        const id = str(raw, "id", at, p, { required: true, pattern: ID });
        const target = str(raw, "target", at, p, { required: true, pattern: ID });
        const color = str(raw, "color", at, p, { pattern: /^(blue|green)$/, hint: "blue or green" }) ?? "";
        const stop = argvList(raw, "stop", at, p);
        const start = argvList(raw, "start", at, p);
        const health = str(raw, "health", at, p, { pattern: /^https?:\/\/\S+$/, hint: "an http:// URL" });
        if (health) {
          const port = /^https?:\/\/(?:\[[^\]]*\]|[^:/]*):(\d+)/.exec(health)?.[1];
          if (port !== undefined && Number(port) > 65535) p.add(`${at}health`, `port ${port} is out of range: use 1-65535`);
          else if (!URL.canParse(health)) p.add(`${at}health`, `"${health}" is not a URL (e.g. http://127.0.0.1:8080/health)`);
        }
        if (id && apps.some((a) => a.id === id)) p.add(`${at}id`, `"${id}" is used by two apps; give each app instance its own id`);
        if (id && target)
          apps.push({ id, target, color: color as AgentApp["color"], ...(stop ? { stop } : {}), ...(start ? { start } : {}), ...(health ? { health } : {}) });
      });
  }

  let controller: AgentConfig["controller"];
  if (doc.controller !== undefined) {
    if (!isObj(doc.controller)) p.add("controller", "must be { address: http://controller:7441, advertise: host:port }");
    else {
      checkKeys(doc.controller, CONTROLLER_KEYS, "controller.", p);
      const address = str(doc.controller, "address", "controller.", p, {
        required: true,
        pattern: /^https?:\/\/\S+$/,
        hint: "the controller's HTTP URL, e.g. http://controller:7441",
      });
      const advertised = str(doc.controller, "advertise", "controller.", p);
      if (advertised !== undefined) checkHostPort(advertised, "controller.advertise", p);
      const advertise = advertised ?? listen;
      const hb = doc.controller.heartbeatSeconds === undefined ? 15 : numberOf(doc.controller.heartbeatSeconds);
      if (!Number.isFinite(hb) || hb < 1) p.add("controller.heartbeatSeconds", "must be a number of seconds ≥ 1");
      const tokenFile = str(doc.controller, "tokenFile", "controller.", p);
      const caFile = str(doc.controller, "ca", "controller.", p);
      const ca = caFile ? abs(caFile) : tls?.ca;
      let addressHost: string | undefined;
      try {
        addressHost = address ? new URL(address).hostname : undefined;
      } catch {
        p.add("controller.address", `"${address}" is not a URL (e.g. https://controller:7441)`);
      }
      if (address && addressHost !== undefined && address.startsWith("http:") && !isLoopbackHost(addressHost)) {
        p.add("controller.address", `"${address}" is plain HTTP to another host: registration sends a token, so use https:// (the controller's httpTls)`);
      }
      if (address) controller = { address, advertise, heartbeatSeconds: hb, ...(tokenFile ? { tokenFile: abs(tokenFile) } : {}), ...(ca ? { ca } : {}) };
    }
  }
  const logLevel = input.env.FLOTILLA_LOG_LEVEL ?? str(doc, "logLevel", "", p) ?? "info";
  if (!(LOG_LEVELS as readonly string[]).includes(logLevel)) p.add("logLevel", `"${logLevel}" is not a log level; use one of ${LOG_LEVELS.join(", ")}`);
  const httpGiven = flagValue(input.argv, "http-listen") ?? input.env.FLOTILLA_AGENT_HTTP_LISTEN ?? str(doc, "httpListen", "", p);
  const httpListen = httpGiven ?? DEFAULT_HTTP_LISTEN;
  if (httpListen !== "off") checkHostPort(httpListen, "httpListen", p, "127.0.0.1:7444, or off");
  const config: AgentConfig = deepFreeze({
    source: configPath,
    agentId,
    listen,
    dataDir,
    targets,
    apps,
    logLevel,
    ...(tls ? { tls } : {}),
    ...(controller ? { controller } : {}),
    ...(httpListen !== "off" ? { httpListen } : {}),
    httpListenExplicit: httpGiven !== undefined,
  });
  return { config, problems: p };
}
