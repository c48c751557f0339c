import { dirname, isAbsolute, resolve } from "node:path";
import {
  ConfigProblems, HOST_PORT, argvList, deepFreeze, flagValue, identityList, isObj, parseConfigText, str,
} from "../common/config-helpers.js";
import { CONTROLLER_SPIFFE_ID, isLoopbackHost } from "../common/tls.js";
import { FlotillaError } from "../common/errors.js";
import type { DatabaseKind } from "./core/ports.js";

export interface TlsConfig {
  readonly cert: string;
  readonly key: string;
  readonly ca: string;
  /** Client identities (SAN URI, DNS or IP) that may call this agent. */
  readonly allow: readonly string[];
}

export interface AgentTarget {
  readonly id: string;
  readonly labels: Readonly<Record<string, string>>;
  readonly kind: DatabaseKind;
  /** As configured, without any password. */
  readonly database: string;
  /** PostgreSQL password read from passwordFile (never logged). */
  readonly password?: string;
  readonly alembic: {
    readonly dir: string;
    readonly command: readonly string[];
    /** Environment for env.py with secrets resolved. */
    readonly env: Readonly<Record<string, string>>;
    /** Names of env entries that are secrets (came from a file or env). */
    readonly secretEnvNames: readonly string[];
    readonly timeoutMs: number;
    /** -c ini file (relative to dir), when not alembic.ini. */
    readonly iniFile?: string;
  };
  readonly backups: { readonly dir: string; readonly keep: number };
  readonly blueGreen?: { readonly green: string; readonly switch: readonly string[] };
  readonly lockTimeoutMs: number;
}

export interface AgentApp {
  readonly id: string;
  readonly target: string;
  readonly color: "blue" | "green" | "";
  readonly stop?: readonly string[];
  readonly start?: readonly string[];
  readonly health?: string;
}

export interface AgentConfig {
  readonly agentId: string;
  readonly listen: string;
  readonly tls?: TlsConfig;
  readonly dataDir: string;
  readonly targets: readonly AgentTarget[];
  readonly apps: readonly AgentApp[];
  /** Registration with a controller: `ca` is the CA file its HTTPS certificate is checked against (default tls.ca). */
  readonly controller?: { readonly address: string; readonly advertise: string; readonly heartbeatSeconds: number; readonly token?: string; readonly ca?: string };
  readonly logLevel: string;
}

export interface LoadConfigInput {
  readonly argv: readonly string[];
  readonly env: Readonly<Record<string, string | undefined>>;
  /** Reads a file as UTF-8 (throws when absent). */
  readonly readFile: (path: string) => string;
  /** Hostname used as the default agent id. */
  readonly hostname?: string;
}

const ID = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/;
const LABEL = /^[A-Za-z0-9._/-]{1,63}$/;

/** Parses a database URL into its kind and a display form without password. */
export function parseDatabaseUrl(url: string): { kind: DatabaseKind; display: string; sqlitePath?: string; password?: string } | string {
  if (url.startsWith("sqlite:///")) {
    const rest = url.slice("sqlite:///".length);
    if (rest === "") return "sqlite URL has no file path (use sqlite:////abs/path/webui.db: four slashes for an absolute path)";
    return { kind: "sqlite", display: url, sqlitePath: rest.startsWith("/") ? rest : rest };
  }
  if (/^postgres(ql)?(\+psycopg2)?:\/\//.test(url)) {
    let u: URL;
    try {
      u = new URL(url.replace(/^postgres(ql)?(\+psycopg2)?:/, "postgresql:"));
    } catch {
      return "is not a valid PostgreSQL URL (use postgresql://user@host:5432/dbname)";
    }
    if (!u.pathname || u.pathname === "/") return "PostgreSQL URL has no database name (use postgresql://user@host:5432/dbname)";
    const password = u.password ? decodeURIComponent(u.password) : undefined;
    u.password = "";
    return { kind: "postgresql", display: u.toString(), ...(password !== undefined ? { password } : {}) };
  }
  return "must start with sqlite:/// or postgresql:// (e.g. sqlite:////app/backend/data/webui.db)";
}

/**
 * Loads the agent config: flag > env > file > defaults. Pure apart from the
 * injected readFile. Every problem is reported at once with its key path; the
 * result is frozen. Secrets are read from the files the config names.
 */
export function loadAgentConfig(input: LoadConfigInput): AgentConfig {
  const configPath = flagValue(input.argv, "config") ?? input.env.FLOTILLA_AGENT_CONFIG;
  if (!configPath) {
    throw new FlotillaError("CONFIG_INVALID", "no config file given: run flotilla-agent --config /etc/flotilla/agent.yaml (or set FLOTILLA_AGENT_CONFIG)");
  }
  let text: string;
  try {
    text = input.readFile(configPath);
  } catch (err) {
    throw new FlotillaError("CONFIG_INVALID", `cannot read config file ${configPath}: ${(err as Error).message}`);
  }
  const base = dirname(resolve(configPath));
  const abs = (p: string): string => (isAbsolute(p) ? p : resolve(base, p));
  const doc = parseConfigText(text, configPath);
  const p = new ConfigProblems(configPath);

  const known = new Set(["agentId", "listen", "tls", "dataDir", "targets", "apps", "controller", "logLevel"]);
  for (const k of Object.keys(doc)) if (!known.has(k)) p.add(k, `unknown key (known: ${[...known].join(", ")})`);

  const agentId = flagValue(input.argv, "agent-id") ?? input.env.FLOTILLA_AGENT_ID ?? str(doc, "agentId", "", p, { pattern: ID, hint: "letters, digits, . _ -" }) ?? input.hostname ?? "agent";
  const listen = flagValue(input.argv, "listen") ?? input.env.FLOTILLA_AGENT_LISTEN ?? str(doc, "listen", "", p) ?? "127.0.0.1:7443";
  if (!HOST_PORT.test(listen)) p.add("listen", `"${listen}" is not host:port (e.g. 127.0.0.1:7443)`);
  const dataDirRaw = flagValue(input.argv, "data-dir") ?? input.env.FLOTILLA_AGENT_DATA_DIR ?? str(doc, "dataDir", "", p) ?? "/var/lib/flotilla-agent";
  const dataDir = abs(dataDirRaw);

  let tls: TlsConfig | undefined;
  if (doc.tls !== undefined) {
    if (!isObj(doc.tls)) p.add("tls", "must be a mapping with cert, key and ca");
    else {
      const cert = str(doc.tls, "cert", "tls.", p, { required: true });
      const key = str(doc.tls, "key", "tls.", p, { required: true });
      const ca = str(doc.tls, "ca", "tls.", p, { required: true });
      // Default: only the controller's identity as `flotilla certs init` issues it.
      const allow = identityList(doc.tls, "allow", "tls.", p) ?? [CONTROLLER_SPIFFE_ID];
      if (cert && key && ca) tls = { cert: abs(cert), key: abs(key), ca: abs(ca), allow };
    }
  }
  const host = listen.replace(/:\d+$/, "");
  if (!tls && !["127.0.0.1", "localhost", "[::1]"].includes(host)) {
    p.add("tls", `is required when listening on ${host} (plain gRPC is allowed on loopback only)`);
  }

  const readSecret = (path: string, keyPath: string): string | undefined => {
    try {
      const v = input.readFile(abs(path)).trim();
      if (v === "") p.add(keyPath, `secret file ${path} is empty`);
      return v;
    } catch (err) {
      p.add(keyPath, `cannot read secret file ${path}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
      return undefined;
    }
  };

  const targets: AgentTarget[] = [];
  const seen = new Set<string>();
  const hasApps = Array.isArray(doc.apps) && doc.apps.length > 0;
  if (doc.targets !== undefined && !Array.isArray(doc.targets)) {
    p.add("targets", "must be a list of targets (id, database, alembic.dir, backups.dir)");
  } else if ((!Array.isArray(doc.targets) || doc.targets.length === 0) && !hasApps) {
    p.add("targets", "must list at least one target (id, database, alembic.dir, backups.dir), or apps must list app instances this host runs");
  } else if (Array.isArray(doc.targets)) {
    doc.targets.forEach((raw, i) => {
      const at = `targets[${i}].`;
      if (!isObj(raw)) return p.add(`targets[${i}]`, "must be a mapping");
      const id = str(raw, "id", at, p, { required: true, pattern: ID, hint: "letters, digits, . _ - (max 64)" });
      if (id) {
        if (seen.has(id)) p.add(`${at}id`, `"${id}" is used by two targets`);
        seen.add(id);
      }
      const labels: Record<string, string> = {};
      if (raw.labels !== undefined) {
        if (!isObj(raw.labels)) p.add(`${at}labels`, "must be a mapping like { env: prod }");
        else for (const [k, v] of Object.entries(raw.labels)) {
          if (!LABEL.test(k) || !LABEL.test(String(v))) p.add(`${at}labels.${k}`, "label keys and values use letters, digits, . _ / -");
          else labels[k] = String(v);
        }
      }
      const dbUrl = str(raw, "database", at, p, { required: true, hint: "sqlite:////path/webui.db or postgresql://user@host:5432/db" });
      let kind: DatabaseKind = "sqlite";
      let display = "";
      let password: string | undefined;
      if (dbUrl) {
        const parsed = parseDatabaseUrl(dbUrl);
        if (typeof parsed === "string") p.add(`${at}database`, parsed);
        else {
          kind = parsed.kind;
          display = parsed.display;
          if (parsed.password !== undefined) p.add(`${at}database`, "contains a password: put it in passwordFile instead (URLs end up in logs and process lists)");
          if (parsed.kind === "sqlite") display = `sqlite:///${abs(parsed.sqlitePath!)}`;
        }
      }
      const pwFile = str(raw, "passwordFile", at, p);
      if (pwFile) {
        if (kind !== "postgresql") p.add(`${at}passwordFile`, "is only for PostgreSQL targets");
        password = readSecret(pwFile, `${at}passwordFile`);
      }
      const al = raw.alembic;
      let alembic: AgentTarget["alembic"] | undefined;
      if (!isObj(al)) p.add(`${at}alembic`, "is required: { dir: <folder with alembic.ini>, command: [alembic] }");
      else {
        const dir = str(al, "dir", `${at}alembic.`, p, { required: true, hint: "the folder that holds alembic.ini" });
        const command = argvList(al, "command", `${at}alembic.`, p) ?? ["alembic"];
        const env: Record<string, string> = {};
        const secretEnvNames: string[] = [];
        if (al.env !== undefined) {
          if (!isObj(al.env)) p.add(`${at}alembic.env`, "must be a mapping of NAME: value | { file: path } | { env: NAME }");
          else for (const [name, v] of Object.entries(al.env)) {
            const kp = `${at}alembic.env.${name}`;
            if (!/^[A-Za-z_][A-Za-z0-9_]*$/.test(name)) { p.add(kp, "is not a valid environment variable name"); continue; }
            if (["DATABASE_URL", "PATH", "LD_PRELOAD", "LD_LIBRARY_PATH", "PGPASSWORD", "PGPASSFILE", "PGOPTIONS"].includes(name)) {
              p.add(kp, `${name} is set by the agent itself and cannot be overridden`);
              continue;
            }
            if (typeof v === "string" || typeof v === "number") env[name] = String(v);
            else if (isObj(v) && typeof v.file === "string") {
              const s = readSecret(v.file, `${kp}.file`);
              if (s !== undefined) { env[name] = s; secretEnvNames.push(name); }
            } else if (isObj(v) && typeof v.env === "string") {
              const s = input.env[v.env];
              if (s === undefined || s === "") p.add(`${kp}.env`, `environment variable ${v.env} is not set`);
              else { env[name] = s; secretEnvNames.push(name); }
            } else p.add(kp, "must be a string, { file: path } or { env: NAME }");
          }
        }
        const timeoutMin = al.timeoutMinutes === undefined ? 120 : Number(al.timeoutMinutes);
        if (!Number.isFinite(timeoutMin) || timeoutMin <= 0) p.add(`${at}alembic.timeoutMinutes`, "must be a positive number of minutes");
        const iniFile = str(al, "config", `${at}alembic.`, p, { pattern: /^[A-Za-z0-9._/-]+\.ini$/, hint: "an .ini file name, e.g. alembic.ini" });
        if (dir) alembic = { dir: abs(dir), command, env, secretEnvNames, timeoutMs: Math.round(timeoutMin * 60_000), ...(iniFile ? { iniFile } : {}) };
      }
      let backups: AgentTarget["backups"] | undefined;
      if (!isObj(raw.backups)) p.add(`${at}backups`, "is required: { dir: /backups/<target>, keep: 10 }");
      else {
        const dir = str(raw.backups, "dir", `${at}backups.`, p, { required: true });
        const keep = raw.backups.keep === undefined ? 10 : Number(raw.backups.keep);
        if (!Number.isInteger(keep) || keep < 1 || keep > 1000) p.add(`${at}backups.keep`, "must be a whole number from 1 to 1000");
        if (dir) backups = { dir: abs(dir), keep };
      }
      let blueGreen: AgentTarget["blueGreen"] | undefined;
      if (raw.blueGreen !== undefined) {
        if (!isObj(raw.blueGreen)) p.add(`${at}blueGreen`, "must be { green: <database URL>, switch: [command] }");
        else {
          const green = str(raw.blueGreen, "green", `${at}blueGreen.`, p, { required: true });
          const sw = argvList(raw.blueGreen, "switch", `${at}blueGreen.`, p, true);
          if (green) {
            const g = parseDatabaseUrl(green);
            if (typeof g === "string") p.add(`${at}blueGreen.green`, g);
            else if (g.kind !== kind) p.add(`${at}blueGreen.green`, `must be the same kind of database as the target (${kind})`);
            else if (sw) blueGreen = { green: g.kind === "sqlite" ? `sqlite:///${abs(g.sqlitePath!)}` : g.display, switch: sw.map((x, j) => (j === 0 && x.startsWith(".") ? abs(x) : x)) };
          }
        }
      }
      const lockTimeoutMs = raw.lockTimeoutMs === undefined ? 5000 : Number(raw.lockTimeoutMs);
      if (!Number.isInteger(lockTimeoutMs) || lockTimeoutMs < 100) p.add(`${at}lockTimeoutMs`, "must be a whole number of milliseconds ≥ 100");
      if (id && dbUrl && alembic && backups) {
        targets.push({
          id, labels, kind, database: display, alembic, backups, lockTimeoutMs,
          ...(password !== undefined ? { password } : {}),
          ...(blueGreen ? { blueGreen } : {}),
        });
      }
    });
  }

  const apps: AgentApp[] = [];
  if (doc.apps !== undefined) {
    if (!Array.isArray(doc.apps)) p.add("apps", "must be a list of app instances");
    else doc.apps.forEach((raw, i) => {
      const at = `apps[${i}].`;
      if (!isObj(raw)) return p.add(`apps[${i}]`, "must be a mapping");
      const id = str(raw, "id", at, p, { required: true, pattern: ID });
      const target = str(raw, "target", at, p, { required: true, pattern: ID });
      const color = str(raw, "color", at, p, { pattern: /^(blue|green)$/, hint: "blue or green" }) ?? "";
      const stop = argvList(raw, "stop", at, p);
      const start = argvList(raw, "start", at, p);
      const health = str(raw, "health", at, p, { pattern: /^https?:\/\/\S+$/, hint: "an http:// URL" });
      if (id && apps.some((a) => a.id === id)) p.add(`${at}id`, `"${id}" is used by two apps`);
      if (id && target) apps.push({ id, target, color: color as AgentApp["color"], ...(stop ? { stop } : {}), ...(start ? { start } : {}), ...(health ? { health } : {}) });
    });
  }

  let controller: AgentConfig["controller"];
  if (doc.controller !== undefined) {
    if (!isObj(doc.controller)) p.add("controller", "must be { address: host:port, advertise: host:port }");
    else {
      const address = str(doc.controller, "address", "controller.", p, { required: true, pattern: /^https?:\/\/\S+$/, hint: "the controller's HTTP URL, e.g. http://controller:7441" });
      const advertise = str(doc.controller, "advertise", "controller.", p) ?? listen;
      const hb = doc.controller.heartbeatSeconds === undefined ? 15 : Number(doc.controller.heartbeatSeconds);
      if (!Number.isFinite(hb) || hb < 1) p.add("controller.heartbeatSeconds", "must be a number of seconds ≥ 1");
      const tokenFile = str(doc.controller, "tokenFile", "controller.", p);
      const token = tokenFile ? readSecret(tokenFile, "controller.tokenFile") : undefined;
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
      if (address) controller = { address, advertise, heartbeatSeconds: hb, ...(token ? { token } : {}), ...(ca ? { ca } : {}) };
    }
  }
  const logLevel = input.env.FLOTILLA_LOG_LEVEL ?? str(doc, "logLevel", "", p) ?? "info";
  p.throwIfAny();
  return deepFreeze({ agentId, listen, dataDir, targets, apps, logLevel, ...(tls ? { tls } : {}), ...(controller ? { controller } : {}) });
}
