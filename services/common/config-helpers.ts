import { parse as parseYaml } from "yaml";
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
  throwIfAny(): void {
    if (this.problems.length === 0) return;
    throw new FlotillaError(
      "CONFIG_INVALID",
      `${this.source} has ${this.problems.length} problem${this.problems.length === 1 ? "" : "s"}:\n` +
        this.problems.map((p) => `  - ${p}`).join("\n"),
    );
  }
}

export type Obj = Record<string, unknown>;

export function isObj(v: unknown): v is Obj {
  return v !== null && typeof v === "object" && !Array.isArray(v);
}

/** Parses YAML text; a syntax error becomes CONFIG_INVALID naming the file and line. */
export function parseConfigText(text: string, source: string): Obj {
  let doc: unknown;
  try {
    doc = parseYaml(text);
  } catch (err) {
    throw new FlotillaError("CONFIG_INVALID", `${source}: not valid YAML: ${(err as Error).message}`);
  }
  if (doc === null || doc === undefined) return {};
  if (!isObj(doc)) throw new FlotillaError("CONFIG_INVALID", `${source}: the top level must be a mapping of keys to values`);
  return doc;
}

export function str(o: Obj, key: string, path: string, p: ConfigProblems, opts: { required?: boolean; pattern?: RegExp; hint?: string } = {}): string | undefined {
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
