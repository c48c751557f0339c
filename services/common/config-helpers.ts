import { parseDocument } from "yaml";
import { FlotillaError } from "./errors.js";
import { identityProblem } from "./tls.js";

/**
 * Helpers for the pure config loaders: every problem is collected with its key
 * path, and the loader throws once with all of them.
 */
export class ConfigProblems {
  private readonly problems: string[] = [];
  constructor(private readonly source: string) {}
  add(path: string, message: string): void {
    this.problems.push(`${path}: ${message}`);
  }
  get count(): number {
    return this.problems.length;
  }
  /** Every problem so far, as `path: message` lines. */
  list(): readonly string[] {
    return [...this.problems];
  }
  throwIfAny(): void {
    if (this.problems.length === 0) return;
    throw new FlotillaError(
      "CONFIG_INVALID",
      `${this.source} has ${this.problems.length} problem${this.problems.length === 1 ? "" : "s"}:\n` + this.problems.map((p) => `  - ${p}`).join("\n"),
    );
  }
}

export type Obj = Record<string, unknown>;

export function isObj(v: unknown): v is Obj {
  return v !== null && typeof v === "object" && !Array.isArray(v);
}

/**
 * Parses YAML text. Syntax errors (and keys given twice in one mapping) become
 * one CONFIG_INVALID listing every one of them with its line, the same shape
 * as the content problems.
 */
export function parseConfigText(text: string, source: string): Obj {
  const parsed = parseDocument(text, { uniqueKeys: true });
  if (parsed.errors.length > 0) {
    const lines = parsed.errors.map((e) => {
      const line = e.linePos?.[0]?.line;
      return `  - ${line !== undefined ? `line ${line}: ` : ""}${e.message.split("\n")[0]!.replace(/ at line \d+, column \d+:?$/, "")}`;
    });
    throw new FlotillaError(
      "CONFIG_INVALID",
      `${source} is not valid YAML (${parsed.errors.length} problem${parsed.errors.length === 1 ? "" : "s"}):\n${lines.join("\n")}`,
    );
  }
  const doc: unknown = parsed.toJS();
  if (doc === null || doc === undefined) return {};
  if (!isObj(doc)) throw new FlotillaError("CONFIG_INVALID", `${source}: the top level must be a mapping of keys to values`);
  return doc;
}

export function str(
  o: Obj,
  key: string,
  path: string,
  p: ConfigProblems,
  opts: { required?: boolean; pattern?: RegExp; hint?: string } = {},
): string | undefined {
  const v = o[key];
  if (v === undefined || v === null) {
    if (opts.required) p.add(`${path}${key}`, `is required${opts.hint ? ` (${opts.hint})` : ""}`);
    return undefined;
  }
  if (typeof v !== "string" && typeof v !== "number") {
    p.add(`${path}${key}`, `must be a string`);
    return undefined;
  }
  const s = String(v);
  if (opts.pattern && !opts.pattern.test(s)) {
    p.add(`${path}${key}`, `"${s}" is not valid${opts.hint ? `: ${opts.hint}` : ""}`);
    return undefined;
  }
  return s;
}

export function argvList(o: Obj, key: string, path: string, p: ConfigProblems, required = false): string[] | undefined {
  const v = o[key];
  if (v === undefined || v === null) {
    if (required) p.add(`${path}${key}`, "is required (a command as a list, e.g. [systemctl, stop, open-webui])");
    return undefined;
  }
  if (!Array.isArray(v) || v.length === 0 || !v.every((x) => typeof x === "string" || typeof x === "number")) {
    p.add(`${path}${key}`, "must be a non-empty list of strings (a command and its arguments; no shell)");
    return undefined;
  }
  return v.map(String);
}

/** `host:port` with a numeric port (0 allowed: pick a free one). */
export const HOST_PORT = /^(\[[0-9a-fA-F:]+\]|[A-Za-z0-9.-]+):(\d{1,5})$/;

/**
 * Checks `host:port` (port 0–65535; 0 picks a free one) and reports what is
 * wrong under `path`. Returns the value when it is usable.
 */
export function checkHostPort(value: string, path: string, p: ConfigProblems, example = "127.0.0.1:7443"): string | undefined {
  const m = HOST_PORT.exec(value);
  if (!m) {
    p.add(path, `"${value}" is not host:port (e.g. ${example})`);
    return undefined;
  }
  const port = Number(m[2]);
  if (port > 65535) {
    p.add(path, `port ${port} is out of range: use 1-65535 (or 0 to pick a free port)`);
    return undefined;
  }
  return value;
}

/** Edit distance of two short strings (case-insensitive), for "did you mean" hints. */
function distance(a: string, b: string): number {
  const x = a.toLowerCase();
  const y = b.toLowerCase();
  let prev = Array.from({ length: y.length + 1 }, (_, j) => j);
  for (let i = 1; i <= x.length; i++) {
    const row = [i];
    for (let j = 1; j <= y.length; j++) {
      row.push(Math.min(prev[j]! + 1, row[j - 1]! + 1, prev[j - 1]! + (x[i - 1] === y[j - 1] ? 0 : 1)));
    }
    prev = row;
  }
  return prev[y.length]!;
}

/** The known word closest to `word`, when it is close enough to be a likely typo. */
export function nearestKey(word: string, known: readonly string[]): string | undefined {
  let best: string | undefined;
  let bestDistance = Number.POSITIVE_INFINITY;
  for (const k of known) {
    const d = distance(word, k);
    if (d < bestDistance) {
      best = k;
      bestDistance = d;
    }
  }
  const lw = word.toLowerCase();
  const close =
    best !== undefined && (bestDistance <= Math.max(2, Math.floor(word.length / 3)) || best.toLowerCase().startsWith(lw) || lw.startsWith(best.toLowerCase()));
  return close ? best : undefined;
}

/**
 * Reports every key of `o` that is not in `known`, naming the nearest known key
 * (a typo such as `pasword` would otherwise be ignored silently).
 */
export function checkKeys(o: Obj, known: readonly string[], path: string, p: ConfigProblems): void {
  for (const k of Object.keys(o)) {
    if (known.includes(k)) continue;
    const near = nearestKey(k, known);
    p.add(`${path}${k}`, near !== undefined ? `unknown key; did you mean "${near}"?` : `unknown key (known here: ${known.join(", ")})`);
  }
}

/**
 * What is wrong with a sqlite:/// URL's path, or undefined when it is absolute.
 * `sqlite:///rel/x.db` is relative to whatever directory the process starts in,
 * which is never what an operator meant.
 */
export function sqlitePathProblem(url: string): string | undefined {
  const rest = url.slice("sqlite:///".length).replace(/\?.*$/, "");
  if (rest === "") return "sqlite URL has no file path (use sqlite:////abs/path/file.db: four slashes for an absolute path)";
  if (rest === ":memory:") return "an in-memory SQLite database cannot be migrated or backed up; use a file (sqlite:////abs/path/file.db)";
  if (!rest.startsWith("/")) {
    return `"${url}" is a relative path (three slashes); use four slashes for an absolute path: sqlite:////${rest}`;
  }
  return undefined;
}

/** Checks an optional list of strings (e.g. companion paths, smoke queries). */
export function stringList(o: Obj, key: string, path: string, p: ConfigProblems, what: string): string[] | undefined {
  const v = o[key];
  if (v === undefined || v === null) return undefined;
  if (!Array.isArray(v) || !v.every((x) => typeof x === "string" && x !== "")) {
    p.add(`${path}${key}`, `must be a list of ${what}`);
    return undefined;
  }
  return v as string[];
}

/** Reads `--flag value` / `--flag=value` from argv. */
export function flagValue(argv: readonly string[], name: string): string | undefined {
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    if (a === `--${name}`) return argv[i + 1];
    if (a.startsWith(`--${name}=`)) return a.slice(name.length + 3);
  }
  return undefined;
}

/** Deep-freezes a plain object tree. */
export function deepFreeze<T>(v: T): T {
  if (v !== null && typeof v === "object") {
    for (const x of Object.values(v as object)) deepFreeze(x);
    Object.freeze(v);
  }
  return v;
}

/** "90s", "30m", "2h", "1h30m", "1d" → milliseconds; undefined when malformed (the grammar lives in rollout-request.ts). */
export { durationMs as parseDuration } from "./rollout-request.js";

/**
 * A list of certificate identities (`tls.allow`): each a URI such as
 * spiffe://flotilla/controller, a DNS name or an IP address.
 */
export function identityList(o: Obj, key: string, path: string, p: ConfigProblems): string[] | undefined {
  const v = o[key];
  if (v === undefined || v === null) return undefined;
  if (!Array.isArray(v) || v.length === 0) {
    p.add(`${path}${key}`, "must be a non-empty list of identities (e.g. [spiffe://flotilla/controller])");
    return undefined;
  }
  const out: string[] = [];
  v.forEach((item, i) => {
    if (typeof item !== "string") return p.add(`${path}${key}[${i}]`, "must be a string");
    const problem = identityProblem(item);
    if (problem) p.add(`${path}${key}[${i}]`, problem);
    else out.push(item);
  });
  return out;
}

/** A number from a YAML value: numbers and numeric strings only (NaN otherwise; never calls an object's toString). */
export function numberOf(v: unknown): number {
  if (typeof v === "number") return v;
  if (typeof v === "string" && v.trim() !== "") return Number(v);
  return Number.NaN;
}
