import { accessSync, constants, statSync } from "node:fs";
import { delimiter, dirname, isAbsolute, join, resolve } from "node:path";
import { toFlotillaError } from "../../common/errors.js";
import { redact } from "../../common/redact.js";
import type { TargetConfig } from "../config.js";
import type { DatabaseAdapter } from "../core/ports.js";
import type { SecretProblem } from "../core/secrets.js";
import type { PathKind, TargetFacts } from "../core/target-health.js";

/** What a path is, without following anything but the path itself. */
export function pathKind(path: string): PathKind {
  try {
    const st = statSync(path);
    if (st.isDirectory()) {
      accessSync(path, constants.R_OK | constants.X_OK);
      return "dir";
    }
    if (st.isFile()) {
      accessSync(path, constants.R_OK);
      return "file";
    }
    return "other";
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    return code === "ENOENT" || code === "ENOTDIR" ? "missing" : "unreadable";
  }
}

function executable(path: string): boolean {
  try {
    if (!statSync(path).isFile()) return false;
    accessSync(path, constants.X_OK);
    return true;
  } catch {
    return false;
  }
}

/**
 * Whether argv[0] of a command resolves to an executable the way the process
 * runner will start it: a path (relative ones from `cwd`), or a name on PATH.
 */
export function commandFound(argv0: string, cwd: string, pathVar = process.env.PATH ?? "/usr/local/bin:/usr/bin:/bin"): boolean {
  if (argv0.includes("/")) return executable(isAbsolute(argv0) ? argv0 : resolve(cwd, argv0));
  return pathVar
    .split(delimiter)
    .filter((d) => d !== "")
    .some((d) => executable(join(d, argv0)));
}

/**
 * Collects the facts that decide whether a target is servable now: its
 * folders and files, its secrets (read by the caller), and for PostgreSQL one
 * connection attempt. Never throws; messages are redacted.
 */
export async function probeTarget(t: TargetConfig, secretProblems: readonly SecretProblem[], db: DatabaseAdapter): Promise<TargetFacts> {
  const dirKind = pathKind(t.alembic.dir);
  const iniName = t.alembic.iniFile ?? "alembic.ini";
  const iniPath = isAbsolute(iniName) ? iniName : join(t.alembic.dir, iniName);
  const facts: TargetFacts = {
    targetId: t.id,
    kind: t.kind,
    secretProblems,
    alembicDir: { path: t.alembic.dir, kind: dirKind },
    alembicIni: { path: iniPath, kind: dirKind === "dir" ? pathKind(iniPath) : "missing", configured: t.alembic.iniFile !== undefined },
    command: { argv0: t.alembic.command[0] ?? "alembic", found: commandFound(t.alembic.command[0] ?? "alembic", t.alembic.dir) },
  };
  if (t.kind === "sqlite") {
    const file = t.database.slice("sqlite:///".length).replace(/\?.*$/, "");
    return { ...facts, databaseFolder: { path: dirname(file), kind: pathKind(dirname(file)) } };
  }
  // The password is part of reaching PostgreSQL: without it a connection attempt only adds noise.
  if (secretProblems.some((s) => s.key === "passwordFile")) return facts;
  try {
    await db.exists();
    return { ...facts, database: { reachable: true, detail: "" } };
  } catch (err) {
    return { ...facts, database: { reachable: false, detail: redact(toFlotillaError(err).message) } };
  }
}
