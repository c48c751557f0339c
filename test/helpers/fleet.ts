/**
 * A real fleet on loopback for end-to-end tests and the demo: agent and
 * controller processes started from bin/, Open WebUI-shaped databases (SQLite
 * files and PostgreSQL databases) at an old revision with seeded rows,
 * stand-in app instances that hold their database open, and a switch hook.
 */
import { spawn, type ChildProcess } from "node:child_process";
import { randomBytes } from "node:crypto";
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { stringify } from "yaml";
import { createTestDatabase, type TestDatabase } from "./pg.js";
import { AgentService } from "../../services/common/gen/flotilla/v1/agent_pb.js";
import { channelCredentials, createClient, type ServiceClient } from "../../services/common/grpc-bridge.js";

export type AgentClient = ServiceClient<typeof AgentService.method>;

export const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), "../..");
export const FIXTURE_DIR = join(ROOT, "test/fixtures/webui");
const APP_CTL = join(ROOT, "test/fixtures/app/app-ctl.mjs");
const LB_SWITCH = join(ROOT, "test/fixtures/app/lb-switch.mjs");
/** The canary secret every fleet uses: tests assert it never appears in output. */
export const CANARY_SECRET = "canary-secret-Zq81xK";
export const CANARY_PASSWORD = "canary-pw-7Hd2@:x";
export const OLD_REVISION = "c3d2e1f00d42";
export const HEAD_REVISION = "1b8c9d0e1f2a";

export interface TargetSpec {
  id: string;
  kind: "sqlite" | "postgresql";
  owner: string;
  labels?: Record<string, string>;
  revision?: string;
  seed?: { users: number; chats: number; msgs: number };
  /** App instances: which agent hosts each. */
  apps?: { agent: string; color?: "blue" | "green" }[];
  blueGreen?: boolean;
  /** FIXTURE_FAIL_AT for this target's Alembic runs. */
  failAt?: string;
  /** Extra Alembic environment (e.g. FIXTURE_SLEEP_MS). */
  alembicEnv?: Record<string, string>;
  /** alembic.config (e.g. alembic-branch.ini). */
  ini?: string;
  /** Omit WEBUI_SECRET_KEY from the target's config. */
  noSecret?: boolean;
  /** Give the target its own WEBUI_SECRET_KEY file with this content ("" = empty); see Fleet.secretFile. */
  secret?: string;
  /** alembic.dir override (e.g. a folder without alembic.ini). */
  alembicDir?: string;
  /** seed.py --dup-emails. */
  dupEmails?: number;
  /** More target config keys (e.g. appVersion, smoke); `backups` is merged into the default backups. */
  extra?: Record<string, unknown>;
}

export interface FleetSpec {
  agents: string[];
  targets: TargetSpec[];
  /** Keep files after stop() (demo --keep). */
  keep?: boolean;
  log?: (line: string) => void;
  /** Start no controller (agent-only tests). */
  noController?: boolean;
  /** Extra environment for agent processes. */
  agentEnv?: Record<string, string>;
  /** Start daemons detached so they outlive this process (demo --keep). */
  detached?: boolean;
}

export interface RunResult {
  code: number;
  stdout: string;
  stderr: string;
}

interface AgentProc {
  id: string;
  configPath: string;
  dataDir: string;
  port: number;
  proc?: ChildProcess;
  logFile: string;
}

export async function freePort(): Promise<number> {
  return new Promise((res, rej) => {
    const s = createServer();
    s.listen(0, "127.0.0.1", () => {
      const port = (s.address() as { port: number }).port;
      s.close(() => res(port));
    });
    s.on("error", rej);
  });
}

export function run(argv: string[], opts: { cwd?: string; env?: Record<string, string>; timeoutMs?: number } = {}): Promise<RunResult> {
  return new Promise((res) => {
    const child = spawn(argv[0]!, argv.slice(1), { cwd: opts.cwd, env: { ...process.env, ...opts.env }, stdio: ["ignore", "pipe", "pipe"] });
    let stdout = "";
    let stderr = "";
    child.stdout.on("data", (c: Buffer) => (stdout += c.toString()));
    child.stderr.on("data", (c: Buffer) => (stderr += c.toString()));
    const timer = setTimeout(() => child.kill("SIGKILL"), opts.timeoutMs ?? 600_000);
    child.on("close", (code) => {
      clearTimeout(timer);
      res({ code: code ?? -1, stdout, stderr });
    });
  });
}

/** Runs the fixture's alembic against a database URL. */
export function alembic(url: string, args: string[], env: Record<string, string> = {}): Promise<RunResult> {
  return run(["alembic", ...args], { cwd: FIXTURE_DIR, env: { DATABASE_URL: url, WEBUI_SECRET_KEY: CANARY_SECRET, ...env } });
}

async function waitForFile(path: string, proc: ChildProcess | undefined, timeoutMs: number, logFile: string): Promise<string> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (existsSync(path)) {
      const text = readFileSync(path, "utf8");
      if (text.length > 0) return text;
    }
    if (proc && proc.exitCode !== null)
      throw new Error(`process exited with ${proc.exitCode}: ${existsSync(logFile) ? readFileSync(logFile, "utf8").slice(-2000) : ""}`);
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error(`timed out waiting for ${path}`);
}

export class Fleet {
  readonly dir: string;
  readonly agents = new Map<string, AgentProc>();
  readonly pgDatabases: TestDatabase[] = [];
  readonly urls = new Map<string, string>();
  readonly greenUrls = new Map<string, string>();
  readonly switchFiles = new Map<string, string>();
  controllerProc: ChildProcess | undefined;
  controllerConfig = "";
  httpPort = 0;
  /** The controller's gRPC API port (plain gRPC on loopback in these tests). */
  grpcPort = 0;
  private appPidFiles: string[] = [];
  private readonly clients: AgentClient[] = [];

  constructor(readonly spec: FleetSpec) {
    this.dir = mkdtempSync(join(tmpdir(), "flotilla-fleet-"));
  }

  /** The WEBUI_SECRET_KEY file a target's config names (its own when TargetSpec.secret is set, else the shared one). */
  secretFile(targetId: string): string {
    const own = this.spec.targets.find((t) => t.id === targetId)?.secret !== undefined;
    return join(this.dir, own ? `webui_secret_key-${targetId}` : "webui_secret_key");
  }

  get controllerUrl(): string {
    return `http://127.0.0.1:${this.httpPort}`;
  }

  private say(line: string): void {
    this.spec.log?.(line);
  }

  /** Creates databases, configs and starts every agent and the controller. */
  async start(): Promise<void> {
    writeFileSync(join(this.dir, "webui_secret_key"), `${CANARY_SECRET}\n`, { mode: 0o600 });
    writeFileSync(join(this.dir, "pg_password"), `${CANARY_PASSWORD}\n`, { mode: 0o600 });
    await Promise.all(this.spec.targets.map((t) => this.prepareTarget(t)));
    const agentCfg = new Map<string, { targets: unknown[]; apps: unknown[] }>();
    for (const a of this.spec.agents) agentCfg.set(a, { targets: [], apps: [] });
    for (const t of this.spec.targets) {
      if (t.secret !== undefined) writeFileSync(this.secretFile(t.id), t.secret, { mode: 0o600 });
      const url = this.urls.get(t.id)!;
      const target: Record<string, unknown> = {
        id: t.id,
        labels: t.labels ?? {},
        database: url,
        alembic: {
          dir: t.alembicDir ?? FIXTURE_DIR,
          command: ["alembic"],
          ...(t.ini ? { config: t.ini } : {}),
          env: {
            ...(t.noSecret ? {} : { WEBUI_SECRET_KEY: { file: this.secretFile(t.id) } }),
            ...(t.failAt ? { FIXTURE_FAIL_AT: t.failAt } : {}),
            ...(t.alembicEnv ?? {}),
          },
        },
        backups: { dir: join(this.dir, "backups", t.id), keep: 5 },
      };
      if (t.kind === "postgresql") target.passwordFile = join(this.dir, "pg_password");
      if (t.extra) {
        const { backups, ...rest } = t.extra;
        Object.assign(target, rest);
        if (backups && typeof backups === "object") target.backups = { ...(target.backups as object), ...backups };
      }
      if (t.blueGreen) {
        const sw = join(this.dir, `${t.id}.lb`);
        writeFileSync(sw, "blue");
        this.switchFiles.set(t.id, sw);
        target.blueGreen = { green: this.greenUrls.get(t.id), switch: [process.execPath, LB_SWITCH, sw] };
      }
      agentCfg.get(t.owner)!.targets.push(target);
      let n = 0;
      for (const app of t.apps ?? []) {
        const port = await freePort();
        const appId = `${t.id}-${app.color ?? "app"}-${++n}`;
        const pidfile = join(this.dir, "run", `${appId}.pid`);
        mkdirSync(dirname(pidfile), { recursive: true });
        this.appPidFiles.push(pidfile);
        const db = app.color === "green" ? this.greenUrls.get(t.id)! : url;
        const appDb = db.startsWith("sqlite:///") ? db.slice("sqlite:///".length) : db;
        const logArg = ["--log", join(this.dir, "run", `${appId}.log`)];
        agentCfg.get(app.agent)!.apps.push({
          id: appId,
          target: t.id,
          ...(app.color ? { color: app.color } : {}),
          start: [process.execPath, APP_CTL, "start", "--db", appDb, "--port", String(port), "--pidfile", pidfile, "--name", appId, ...logArg],
          stop: [process.execPath, APP_CTL, "stop", "--pidfile", pidfile],
          health: `http://127.0.0.1:${port}/health`,
        });
        // Blue (and plain) instances run from the start, like a live fleet; green waits for the rollout.
        if (app.color !== "green") {
          const r = await run([process.execPath, APP_CTL, "start", "--db", appDb, "--port", String(port), "--pidfile", pidfile, "--name", appId, ...logArg]);
          if (r.code !== 0) throw new Error(`stand-in app ${appId} did not start: ${r.stderr}`);
        }
      }
    }
    for (const a of this.spec.agents) {
      const dataDir = join(this.dir, "agents", a);
      mkdirSync(dataDir, { recursive: true });
      const configPath = join(this.dir, `agent-${a}.yaml`);
      const c = agentCfg.get(a)!;
      writeFileSync(configPath, stringify({ agentId: a, listen: "127.0.0.1:0", dataDir, targets: c.targets.length ? c.targets : undefined, apps: c.apps }));
      this.agents.set(a, { id: a, configPath, dataDir, port: 0, logFile: join(this.dir, `agent-${a}.log`) });
    }
    await Promise.all([...this.agents.keys()].map((a) => this.startAgent(a)));
    if (!this.spec.noController) await this.startController();
  }

  private async prepareTarget(t: TargetSpec): Promise<void> {
    const rev = t.revision ?? OLD_REVISION;
    let url: string;
    if (t.kind === "sqlite") {
      const file = join(this.dir, "data", `${t.id}.db`);
      mkdirSync(dirname(file), { recursive: true });
      url = `sqlite:///${file}`;
      if (t.blueGreen) this.greenUrls.set(t.id, `sqlite:///${join(this.dir, "data", `${t.id}-green.db`)}`);
    } else {
      const db = await createTestDatabase(`fleet_${t.id.replace(/[^a-z0-9]/gi, "")}`);
      this.pgDatabases.push(db);
      url = db.url;
      if (t.blueGreen) {
        const green = await createTestDatabase(`fleet_${t.id.replace(/[^a-z0-9]/gi, "")}_green`);
        this.pgDatabases.push(green);
        this.greenUrls.set(t.id, green.url);
      }
    }
    this.urls.set(t.id, url);
    const up = await alembic(url, ["upgrade", rev]);
    if (up.code !== 0) throw new Error(`preparing ${t.id}: alembic upgrade ${rev} failed: ${up.stderr.slice(-1500)}`);
    const seed = t.seed ?? { users: 20, chats: 60, msgs: 3 };
    const args = t.kind === "sqlite" ? [url.slice("sqlite:///".length)] : ["--url", url];
    const s = await run(
      [
        "/usr/bin/python3",
        join(FIXTURE_DIR, "seed.py"),
        ...args,
        "--users",
        String(seed.users),
        "--chats",
        String(seed.chats),
        "--msgs-per-chat",
        String(seed.msgs),
        "--seed",
        "7",
        ...(t.dupEmails ? ["--dup-emails", String(t.dupEmails)] : []),
        ...(rev === OLD_REVISION ? [] : ["--force"]),
      ],
      { env: { WEBUI_SECRET_KEY: CANARY_SECRET } },
    );
    if (s.code !== 0) throw new Error(`seeding ${t.id} failed: ${s.stderr}`);
    this.say(`prepared ${t.id} (${t.kind}) at ${rev}`);
  }

  async startAgent(id: string): Promise<void> {
    const a = this.agents.get(id)!;
    const portFile = join(a.dataDir, "port");
    rmSync(portFile, { force: true });
    const { openSync } = await import("node:fs");
    const out = openSync(a.logFile, "a");
    a.proc = spawn(process.execPath, [join(ROOT, "bin/flotilla-agent.mjs"), "--config", a.configPath, ...(a.port ? ["--listen", `127.0.0.1:${a.port}`] : [])], {
      env: { ...process.env, FLOTILLA_PORT_FILE: portFile, FLOTILLA_LOG_LEVEL: process.env.FLOTILLA_LOG_LEVEL ?? "info", ...(this.spec.agentEnv ?? {}) },
      stdio: ["ignore", out, out],
      detached: this.spec.detached === true,
    });
    if (this.spec.detached) a.proc.unref();
    a.port = Number(await waitForFile(portFile, a.proc, 60_000, a.logFile));
  }

  async startController(extra: { tokens?: { name: string; role: string; value: string }[]; store?: string } = {}): Promise<void> {
    const dataDir = join(this.dir, "controller");
    mkdirSync(dataDir, { recursive: true });
    const portFile = join(dataDir, "port");
    rmSync(portFile, { force: true });
    const tokens = (extra.tokens ?? []).map((t) => {
      const f = join(this.dir, `token-${t.name}`);
      writeFileSync(f, t.value, { mode: 0o600 });
      return { name: t.name, role: t.role, file: f };
    });
    this.controllerConfig = join(this.dir, "controller.yaml");
    writeFileSync(
      this.controllerConfig,
      stringify({
        listen: { grpc: "127.0.0.1:0", http: this.httpPort ? `127.0.0.1:${this.httpPort}` : "127.0.0.1:0" },
        dataDir,
        store: extra.store ?? `sqlite:///${join(dataDir, "controller.db")}`,
        agents: [...this.agents.values()].map((a) => ({ id: a.id, address: `127.0.0.1:${a.port}` })),
        ...(tokens.length ? { tokens } : {}),
      }),
    );
    const { openSync } = await import("node:fs");
    const logFile = join(this.dir, "controller.log");
    const out = openSync(logFile, "a");
    this.controllerProc = spawn(process.execPath, [join(ROOT, "bin/flotilla-controller.mjs"), "--config", this.controllerConfig], {
      env: { ...process.env, FLOTILLA_PORT_FILE: portFile },
      stdio: ["ignore", out, out],
      detached: this.spec.detached === true,
    });
    if (this.spec.detached) this.controllerProc.unref();
    const ports = JSON.parse(await waitForFile(portFile, this.controllerProc, 60_000, logFile)) as { http: number; grpc: number };
    this.httpPort = ports.http;
    this.grpcPort = ports.grpc;
  }

  async killController(signal: NodeJS.Signals = "SIGKILL"): Promise<void> {
    const p = this.controllerProc;
    if (!p || p.exitCode !== null || p.signalCode !== null) return;
    const exited = new Promise((r) => p.once("exit", r));
    p.kill(signal);
    await exited;
  }

  async killAgent(id: string, signal: NodeJS.Signals = "SIGKILL"): Promise<void> {
    const p = this.agents.get(id)?.proc;
    if (!p || p.exitCode !== null || p.signalCode !== null) return;
    const exited = new Promise((r) => p.once("exit", r));
    p.kill(signal);
    await exited;
  }

  /** A gRPC client of one agent (closed by stop()). */
  agentClient(id: string): AgentClient {
    const a = this.agents.get(id)!;
    const c = createClient(AgentService, `127.0.0.1:${a.port}`, channelCredentials()) as unknown as AgentClient;
    this.clients.push(c);
    return c;
  }

  /** Runs the real CLI, streaming its output to `sink` as it arrives. */
  cliLive(args: string[], sink: { write(s: string): unknown }): Promise<RunResult> {
    return new Promise((res) => {
      const child = spawn(process.execPath, [join(ROOT, "bin/flotilla.mjs"), ...args], {
        env: { ...process.env, FLOTILLA_CONTROLLER: this.controllerUrl },
        stdio: ["ignore", "pipe", "pipe"],
      });
      let stdout = "";
      let stderr = "";
      child.stdout.on("data", (c: Buffer) => {
        stdout += c.toString();
        sink.write(c.toString());
      });
      child.stderr.on("data", (c: Buffer) => {
        stderr += c.toString();
        sink.write(c.toString());
      });
      child.on("close", (code) => res({ code: code ?? -1, stdout, stderr }));
    });
  }

  /** Runs the real CLI (bin/flotilla.mjs) against this fleet's controller. */
  cli(args: string[], env: Record<string, string> = {}): Promise<RunResult> {
    return run([process.execPath, join(ROOT, "bin/flotilla.mjs"), ...args], { env: { FLOTILLA_CONTROLLER: this.controllerUrl, ...env } });
  }

  async cliJson<T = Record<string, unknown>>(args: string[], env: Record<string, string> = {}): Promise<{ code: number; doc: T; stderr: string }> {
    const r = await this.cli([...args, "--json"], env);
    let doc: T;
    try {
      doc = JSON.parse(r.stdout) as T;
    } catch {
      throw new Error(`flotilla ${args.join(" ")} --json printed no JSON (exit ${r.code}): ${r.stdout.slice(0, 500)} ${r.stderr.slice(0, 1500)}`);
    }
    return { code: r.code, doc, stderr: r.stderr };
  }

  /** Current alembic_version rows, read straight from the database. */
  async revisionOf(targetId: string, green = false): Promise<string[]> {
    return readRevisions(green ? this.greenUrls.get(targetId)! : this.urls.get(targetId)!);
  }

  /** A full, ordered dump of every table (for "exactly as before" checks). */
  async dumpOf(targetId: string): Promise<string> {
    return dumpDatabase(this.urls.get(targetId)!);
  }

  /** Process ids of every daemon and app instance of this fleet (for demo --keep). */
  pids(): number[] {
    const out: number[] = [];
    for (const a of this.agents.values()) if (a.proc?.pid) out.push(a.proc.pid);
    if (this.controllerProc?.pid) out.push(this.controllerProc.pid);
    for (const f of this.appPidFiles) {
      try {
        out.push(Number(readFileSync(f, "utf8")));
      } catch {
        /* not running */
      }
    }
    return out.filter((p) => Number.isInteger(p) && p > 0);
  }

  /** All log text the fleet's processes wrote (for secret checks). */
  logs(): string {
    const parts: string[] = [];
    for (const a of this.agents.values()) if (existsSync(a.logFile)) parts.push(readFileSync(a.logFile, "utf8"));
    const c = join(this.dir, "controller.log");
    if (existsSync(c)) parts.push(readFileSync(c, "utf8"));
    return parts.join("\n");
  }

  async stop(): Promise<void> {
    for (const c of this.clients) c.close();
    await this.killController("SIGTERM").catch(() => undefined);
    for (const id of this.agents.keys()) await this.killAgent(id, "SIGTERM").catch(() => undefined);
    for (const pidfile of this.appPidFiles) {
      await run([process.execPath, APP_CTL, "stop", "--pidfile", pidfile]).catch(() => undefined);
    }
    if (!this.spec.keep) {
      for (const db of this.pgDatabases) await db.drop().catch(() => undefined);
      rmSync(this.dir, { recursive: true, force: true });
    }
  }
}

export async function readRevisions(url: string): Promise<string[]> {
  if (url.startsWith("sqlite:///")) {
    const Database = (await import("better-sqlite3")).default;
    const db = new Database(url.slice("sqlite:///".length), { readonly: true, fileMustExist: true });
    try {
      return (db.prepare("SELECT version_num FROM alembic_version").all() as { version_num: string }[]).map((r) => r.version_num);
    } finally {
      db.close();
    }
  }
  const pg = (await import("pg")).default;
  const c = new pg.Client({ connectionString: url });
  await c.connect();
  try {
    return (await c.query<{ version_num: string }>("SELECT version_num FROM alembic_version")).rows.map((r) => r.version_num);
  } finally {
    await c.end();
  }
}

/** Every table's schema and rows in a stable order: two equal dumps mean the same data. */
export async function dumpDatabase(url: string): Promise<string> {
  const out: string[] = [];
  if (url.startsWith("sqlite:///")) {
    const Database = (await import("better-sqlite3")).default;
    const db = new Database(url.slice("sqlite:///".length), { readonly: true, fileMustExist: true });
    try {
      const objs = db.prepare("SELECT type, name, sql FROM sqlite_master WHERE name NOT LIKE 'sqlite_%' ORDER BY type, name").all() as {
        type: string;
        name: string;
        sql: string | null;
      }[];
      for (const o of objs) {
        out.push(`${o.type} ${o.name}: ${o.sql ?? ""}`);
        if (o.type === "table") {
          for (const r of db.prepare(`SELECT * FROM "${o.name}" ORDER BY 1`).all()) out.push(JSON.stringify(r));
        }
      }
    } finally {
      db.close();
    }
    return out.join("\n");
  }
  const pg = (await import("pg")).default;
  const c = new pg.Client({ connectionString: url });
  await c.connect();
  try {
    const cols = await c.query<{ table_name: string; column_name: string; data_type: string }>(
      "SELECT table_name, column_name, data_type FROM information_schema.columns WHERE table_schema = 'public' ORDER BY table_name, column_name",
    );
    for (const r of cols.rows) out.push(`column ${r.table_name}.${r.column_name} ${r.data_type}`);
    const idx = await c.query<{ indexname: string; indexdef: string }>(
      "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = 'public' ORDER BY indexname",
    );
    for (const r of idx.rows) out.push(`index ${r.indexname}: ${r.indexdef}`);
    const tables = [...new Set(cols.rows.map((r) => r.table_name))];
    for (const t of tables) {
      const rows = await c.query(`SELECT * FROM "${t}" ORDER BY 1`);
      for (const r of rows.rows) out.push(`${t} ${JSON.stringify(r)}`);
    }
  } finally {
    await c.end();
  }
  return out.join("\n");
}

export function randomId(): string {
  return randomBytes(4).toString("hex");
}
