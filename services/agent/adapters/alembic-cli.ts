import { createHash } from "node:crypto";
import { readFile, readdir, stat } from "node:fs/promises";
import path from "node:path";
import { FlotillaError } from "../../common/errors.js";
import type { OutputStream, ProcessRunner, RunResult } from "../../common/process-runner.js";
import { isSecretKey, registerSecret } from "../../common/redact.js";
import {
  classifyFailure,
  parseCurrent,
  parseHeads,
  parseHistory,
  parseRunningLines,
  parseVersion,
  type AlembicFailure,
  type RevisionStep,
} from "../core/alembic-output.js";
import type { AlembicPort } from "../core/ports.js";
import { RevisionGraph } from "../core/revision-graph.js";

/** Where and how to run one target's Alembic. */
export interface AlembicTarget {
  /** Working directory of every run (the folder holding alembic.ini; Open WebUI: backend/open_webui). */
  readonly dir: string;
  /** How to start Alembic, e.g. `["alembic"]` or `["/app/venv/bin/python", "-m", "alembic"]`. Never a shell string. */
  readonly command: readonly string[];
  /** The child's whole environment besides DATABASE_URL (e.g. WEBUI_SECRET_KEY, PYTHONPATH). */
  readonly env: Readonly<Record<string, string>>;
  /** Handed to the child as DATABASE_URL; its password is registered for redaction. */
  readonly databaseUrl: string;
  /** `-c` argument, relative to `dir` or absolute; default: Alembic's own (`alembic.ini`). */
  readonly iniFile?: string;
}

export interface RunOpts {
  /** Each output line (redacted) as it arrives. */
  readonly onLine?: (line: string, stream: OutputStream) => void;
  readonly signal?: AbortSignal;
  readonly timeoutMs?: number;
  /** Added to the child's env, e.g. `{ PGOPTIONS: "-c lock_timeout=5000" }`. Cannot replace DATABASE_URL. */
  readonly extraEnv?: Readonly<Record<string, string>>;
}

/** The outcome of one Alembic run. A failing Alembic is a value here, not an exception. */
export interface AlembicResult {
  readonly ok: boolean;
  readonly exitCode: number | null;
  readonly stdout: string;
  readonly stderr: string;
  readonly durationMs: number;
  /** Present exactly when `ok` is false. */
  readonly failure?: AlembicFailure;
  /** `Running upgrade|downgrade|stamp_revision` steps seen on stderr, in order. */
  readonly steps: readonly RevisionStep[];
  /** The argv that ran (holds no secrets: those travel in the env). */
  readonly argv: readonly string[];
  /** True when the runner dropped the head of stdout or stderr. */
  readonly truncated: boolean;
}

export interface AlembicCliOptions {
  /** Deadline of read-only runs (version, history, current). Default 120 s. */
  readonly timeoutMs?: number;
  /** Default deadline of upgrade, downgrade, stamp and offline SQL when RunOpts gives none. Default 4 h. */
  readonly migrationTimeoutMs?: number;
}

const READ_TIMEOUT_MS = 120_000;
const MIGRATION_TIMEOUT_MS = 4 * 3600_000;
const SQL_OUTPUT_BYTES = 32 * 1024 * 1024;
const ID_SHAPE = /^[A-Za-z0-9_]{4,40}$/;
const ENV_NAME = /^[A-Za-z_][A-Za-z0-9_]*$/;

type Keyword = "head" | "heads" | "base";

/**
 * Drives one target's Alembic CLI through the process runner: argv arrays,
 * cwd = target.dir, stdin ignored, and an env of exactly target.env +
 * DATABASE_URL (+ RunOpts.extraEnv) on top of the runner's minimal base —
 * nothing else of the agent's environment. Revision arguments are checked
 * before anything runs: `head`/`heads`/`base` where the command takes them, or
 * an id (or unique prefix of 4+ characters) from the revision graph; anything
 * else throws FlotillaError('INVALID_ARGUMENT') and starts no process; a
 * well-formed id the scripts lack throws FlotillaError('UNKNOWN_REVISION').
 * Alembic failures are returned as classified results, never thrown, except by
 * `graph()` and `version()`, which have nothing else to return. The
 * constructor does no I/O.
 */
export class AlembicCli implements AlembicPort {
  private readonly target: AlembicTarget;
  private readonly runner: ProcessRunner;
  private readonly readTimeoutMs: number;
  private readonly migrationTimeoutMs: number;
  private cached: { key: string; graph: RevisionGraph } | null = null;
  private inflight: { key: string | null; promise: Promise<RevisionGraph> } | null = null;

  constructor(target: AlembicTarget, runner: ProcessRunner, options: AlembicCliOptions = {}) {
    if (target.command.length === 0) throw new FlotillaError("CONFIG_INVALID", "alembic target: command is empty");
    this.target = target;
    this.runner = runner;
    this.readTimeoutMs = options.timeoutMs ?? READ_TIMEOUT_MS;
    this.migrationTimeoutMs = options.migrationTimeoutMs ?? MIGRATION_TIMEOUT_MS;
    for (const [k, v] of Object.entries(target.env)) if (isSecretKey(k)) registerSecret(v);
    registerUrlPassword(target.databaseUrl);
  }

  /**
   * The revision graph from `alembic history` (no `-i`: no database access).
   * Cached in memory under a sha256 of the ini file and the version folders'
   * file names, sizes and mtimes: one Alembic run when that changes, none
   * otherwise. When the folders cannot be located (package-style
   * script_location, config outside the ini) every call runs Alembic.
   * Throws FlotillaError (ALEMBIC_FAILED, TIMEOUT, CANCELLED, CONFIG_INVALID)
   * carrying the classified failure in the message.
   */
  async graph(): Promise<RevisionGraph> {
    const key = await this.fingerprint();
    if (key !== null && this.cached?.key === key) return this.cached.graph;
    if (this.inflight && this.inflight.key === key && key !== null) return this.inflight.promise;
    const promise = (async () => {
      const r = await this.exec(["history"], { timeoutMs: this.readTimeoutMs });
      if (!r.ok) throw alembicError("alembic history", r);
      const hash = key ?? createHash("sha256").update(r.stdout).digest("hex");
      const graph = RevisionGraph.fromHistory(parseHistory(r.stdout), { hash });
      if (key !== null) this.cached = { key, graph };
      return graph;
    })();
    this.inflight = { key, promise };
    try {
      return await promise;
    } finally {
      if (this.inflight?.promise === promise) this.inflight = null;
    }
  }

  /** `alembic current`: the revisions in alembic_version (empty for a fresh database). */
  async current(opts: RunOpts = {}): Promise<AlembicResult & { revisions: string[] }> {
    const r = await this.exec(["current"], { ...opts, timeoutMs: opts.timeoutMs ?? this.readTimeoutMs });
    return { ...r, revisions: r.ok ? parseCurrent(r.stdout) : [] };
  }

  /**
   * `alembic heads`: imports every revision module without touching the
   * database, so a missing app variable (WEBUI_SECRET_KEY) or module shows
   * up as a classified failure.
   */
  async checkEnv(opts: RunOpts = {}): Promise<AlembicResult & { heads: string[] }> {
    const r = await this.exec(["heads"], { ...opts, timeoutMs: opts.timeoutMs ?? this.readTimeoutMs });
    return { ...r, heads: r.ok ? parseHeads(r.stdout) : [] };
  }

  /** `alembic upgrade <to>`; `to` is `head`, `heads` or a revision of the graph. Lines stream via `opts.onLine`. */
  async upgrade(to: string, opts: RunOpts = {}): Promise<AlembicResult> {
    const rev = await this.revisionArg(to, ["head", "heads"], "upgrade target");
    return this.exec(["upgrade", rev], this.migrationOpts(opts));
  }

  /** `alembic downgrade <to>`; `to` is `base` or a revision of the graph (relative `-N` is refused). */
  async downgrade(to: string, opts: RunOpts = {}): Promise<AlembicResult> {
    const rev = await this.revisionArg(to, ["base"], "downgrade target");
    return this.exec(["downgrade", rev], this.migrationOpts(opts));
  }

  /**
   * `alembic stamp [--purge] <rev>`: rewrites alembic_version only. Whether a
   * stamp is legitimate is the caller's decision; this only runs it.
   */
  async stamp(rev: string, opts: RunOpts & { purge?: boolean } = {}): Promise<AlembicResult> {
    const arg = await this.revisionArg(rev, ["head", "heads", "base"], "stamp revision");
    return this.exec(["stamp", ...(opts.purge === true ? ["--purge"] : []), arg], this.migrationOpts(opts));
  }

  /**
   * Offline SQL: `alembic upgrade <from>:<to> --sql`, or `alembic upgrade <to> --sql`
   * (which starts at base) when `from` is null. Never connects to the database.
   */
  async offlineSql(from: string | null, to: string, opts: RunOpts = {}): Promise<AlembicResult> {
    checkShape(to, ["head", "heads"], "offline SQL target");
    if (from !== null) checkShape(from, ["base"], "offline SQL start");
    const toArg = await this.revisionArg(to, ["head", "heads"], "offline SQL target");
    const range = from === null ? toArg : `${await this.revisionArg(from, ["base"], "offline SQL start")}:${toArg}`;
    return this.exec(["upgrade", range, "--sql"], { ...this.migrationOpts(opts), maxOutputBytes: SQL_OUTPUT_BYTES });
  }

  /** `alembic --version` → e.g. `1.8.1`. Throws FlotillaError when Alembic cannot run. */
  async version(): Promise<string> {
    const r = await this.exec(["--version"], { timeoutMs: this.readTimeoutMs, noConfig: true });
    const v = r.ok ? parseVersion(r.stdout) : null;
    if (v === null) throw alembicError("alembic --version", r);
    return v;
  }

  /**
   * The folders holding revision scripts, from the ini's [alembic]
   * script_location / version_locations (`%(here)s` expanded); null when
   * they cannot be found from the ini alone.
   */
  async versionLocations(): Promise<{ iniPath: string; dirs: string[]; recursive: boolean } | null> {
    const iniPath = path.resolve(this.target.dir, this.target.iniFile ?? this.target.env["ALEMBIC_CONFIG"] ?? "alembic.ini");
    let text: string;
    try {
      text = await readFile(iniPath, "utf8");
    } catch {
      return null;
    }
    const section = parseIniSection(text, "alembic", { here: path.dirname(iniPath) });
    if (!section) return null;
    const script = section.get("script_location");
    // `package:folder` locations need Python to resolve.
    if (script === undefined || /^[A-Za-z_][\w.]*:/.test(script)) return null;
    const scriptDir = path.resolve(this.target.dir, script);
    const locations = section.get("version_locations");
    const dirs =
      locations === undefined || locations.trim() === ""
        ? [path.join(scriptDir, "versions")]
        : splitLocations(locations, section.get("version_path_separator")).map((d) => path.resolve(this.target.dir, d));
    const recursive = /^(true|yes|on|1)$/i.test(section.get("recursive_version_locations") ?? "");
    return { iniPath, dirs, recursive };
  }

  private async fingerprint(): Promise<string | null> {
    const loc = await this.versionLocations();
    if (!loc) return null;
    const hash = createHash("sha256");
    const ini = await stat(loc.iniPath).catch(() => null);
    hash.update(`ini\0${loc.iniPath}\0${ini?.size ?? -1}\0${ini?.mtimeMs ?? -1}\n`);
    for (const dir of loc.dirs) {
      hash.update(`dir\0${dir}\n`);
      for (const line of await listFiles(dir, loc.recursive)) hash.update(line);
    }
    return hash.digest("hex");
  }

  private migrationOpts(opts: RunOpts): RunOpts & { timeoutMs: number } {
    return { ...opts, timeoutMs: opts.timeoutMs ?? this.migrationTimeoutMs };
  }

  /** Shape check first (no process), then membership in the graph (may run `alembic history` once). */
  private async revisionArg(value: string, keywords: readonly Keyword[], what: string): Promise<string> {
    checkShape(value, keywords, what);
    if ((keywords as readonly string[]).includes(value)) return value;
    const graph = await this.graph();
    const id = graph.resolve(value);
    if (id === null) {
      throw new FlotillaError("UNKNOWN_REVISION", `${what} '${value}' is not a revision of this target's Alembic scripts`);
    }
    return id;
  }

  private async exec(args: readonly string[], opts: RunOpts & { timeoutMs: number; maxOutputBytes?: number; noConfig?: boolean }): Promise<AlembicResult> {
    const extra = opts.extraEnv ?? {};
    for (const [k, v] of Object.entries(extra)) {
      if (!ENV_NAME.test(k) || v.includes("\0")) {
        throw new FlotillaError("INVALID_ARGUMENT", `extra environment variable ${JSON.stringify(k)} is not a valid name=value`);
      }
      if (isSecretKey(k)) registerSecret(v);
    }
    const env: Record<string, string> = { ...this.target.env, ...extra, DATABASE_URL: this.target.databaseUrl };
    const config = opts.noConfig !== true && this.target.iniFile !== undefined ? ["-c", this.target.iniFile] : [];
    const argv = [...this.target.command, ...config, ...args];
    const r: RunResult = await this.runner.run({
      argv,
      cwd: this.target.dir,
      env,
      timeoutMs: opts.timeoutMs,
      ...(opts.signal !== undefined ? { signal: opts.signal } : {}),
      ...(opts.onLine !== undefined ? { onLine: opts.onLine } : {}),
      ...(opts.maxOutputBytes !== undefined ? { maxOutputBytes: opts.maxOutputBytes } : {}),
    });
    const failure = classifyFailure(r.exitCode, r.stdout, r.stderr, {
      timedOut: r.timedOut,
      cancelled: r.cancelled,
      signal: r.signal,
      ...(r.spawnError !== undefined ? { spawnError: r.spawnError } : {}),
    });
    return {
      ok: failure === null,
      exitCode: r.exitCode,
      stdout: r.stdout,
      stderr: r.stderr,
      durationMs: r.durationMs,
      steps: parseRunningLines(r.stderr, this.cached?.graph.ids()),
      argv,
      truncated: r.truncated,
      ...(failure !== null ? { failure } : {}),
    };
  }
}

/**
 * Turns a failed run into a FlotillaError whose message names the command,
 * the failure kind, Alembic's message and the operator hint.
 */
export function alembicError(what: string, r: AlembicResult): FlotillaError {
  const f = r.failure;
  const text = f ? `${what} failed (${f.kind}): ${f.message}. ${f.hint}` : `${what} gave unexpected output`;
  const code = f?.kind === "timeout" ? "TIMEOUT" : f?.kind === "killed" ? "CANCELLED" : "ALEMBIC_FAILED";
  return new FlotillaError(code, text);
}

const KEYWORDS: readonly string[] = ["head", "heads", "base"];

function checkShape(value: string, keywords: readonly Keyword[], what: string): void {
  if ((keywords as readonly string[]).includes(value)) return;
  // `head`/`heads`/`base` have the shape of an id but are only valid where the command takes them.
  if (ID_SHAPE.test(value) && !KEYWORDS.includes(value)) return;
  const allowed = [...keywords.map((k) => `'${k}'`), "a revision id (4-40 letters, digits or _)"].join(", ");
  throw new FlotillaError("INVALID_ARGUMENT", `${what} ${JSON.stringify(value)} is not allowed: use ${allowed}`);
}

function registerUrlPassword(url: string): void {
  const m = /^[a-z][a-z0-9+.-]*:\/\/[^:/?#@\s]*:([^@\s]*)@/i.exec(url);
  if (!m || m[1] === undefined || m[1] === "") return;
  registerSecret(m[1]);
  try {
    registerSecret(decodeURIComponent(m[1]));
  } catch {
    // not percent-encoded: registered as is
  }
}

/** Regular files of a version folder as `name\0size\0mtime` lines, sorted; `__pycache__` is ignored (Python rewrites it). */
async function listFiles(dir: string, recursive: boolean, prefix = ""): Promise<string[]> {
  let entries;
  try {
    entries = await readdir(dir, { withFileTypes: true });
  } catch {
    return [`missing\0${prefix}\n`];
  }
  const out: string[] = [];
  for (const e of entries) {
    if (e.name === "__pycache__") continue;
    const full = path.join(dir, e.name);
    if (e.isDirectory()) {
      if (recursive) out.push(...(await listFiles(full, true, `${prefix}${e.name}/`)));
      continue;
    }
    const s = await stat(full).catch(() => null);
    if (s?.isFile()) out.push(`${prefix}${e.name}\0${s.size}\0${s.mtimeMs}\n`);
  }
  return out.sort();
}

/**
 * One section of an ini file the way Python's configparser reads it
 * (`key = value` or `key: value`, indented continuation lines, `#`/`;`
 * comments, keys lower-cased, `%(name)s` interpolation from the section,
 * [DEFAULT] and `vars`). Null when the section is absent.
 */
export function parseIniSection(text: string, name: string, vars: Readonly<Record<string, string>> = {}): Map<string, string> | null {
  const sections = new Map<string, Map<string, string>>();
  let current: Map<string, string> | null = null;
  let lastKey: string | null = null;
  for (const raw of text.split(/\r?\n/)) {
    if (/^\s*[#;]/.test(raw) || raw.trim() === "") {
      if (raw.trim() === "") lastKey = null;
      continue;
    }
    const header = /^\[([^\]]+)\]\s*$/.exec(raw);
    if (header) {
      const secName = header[1]!.trim();
      current = sections.get(secName) ?? new Map();
      sections.set(secName, current);
      lastKey = null;
      continue;
    }
    if (current === null) continue;
    if (/^\s/.test(raw) && lastKey !== null) {
      current.set(lastKey, `${current.get(lastKey) ?? ""}\n${raw.trim()}`);
      continue;
    }
    const kv = /^([^=:]+?)\s*[=:]\s*(.*)$/.exec(raw);
    if (kv) {
      lastKey = kv[1]!.trim().toLowerCase();
      current.set(lastKey, kv[2]!.trim());
    }
  }
  const section = sections.get(name);
  if (!section) return null;
  const defaults = sections.get("DEFAULT") ?? new Map<string, string>();
  const lookup = (key: string): string | undefined => section.get(key) ?? defaults.get(key) ?? vars[key];
  const expand = (value: string, depth: number): string =>
    depth > 10
      ? value
      : value.replace(/%\(([^)]+)\)s|%%/g, (m, key: string | undefined) => {
          if (m === "%%") return "%";
          const v = lookup(key!.toLowerCase());
          return v === undefined ? m : expand(v, depth + 1);
        });
  const out = new Map<string, string>();
  for (const [k, v] of section) out.set(k, expand(v, 0));
  return out;
}

/** Splits version_locations the way Alembic does for the configured separator (legacy: spaces or commas). */
function splitLocations(value: string, separator: string | undefined): string[] {
  const sep = separator?.trim();
  let parts: string[];
  if (sep === undefined || sep === "") parts = value.split(/[\s,]+/);
  else if (sep === "os") parts = value.split(path.delimiter);
  else if (sep === "space") parts = value.split(/ +/);
  else if (sep === "newline") parts = value.split(/\n/);
  else parts = value.split(sep);
  return parts.map((p) => p.trim()).filter((p) => p !== "");
}
