/**
 * The target config keys for the app's whole state: `backups.include`
 * (companion files), `backups.keepDays`, `appVersion` and `smoke`. Parsed
 * here so the main config loader only calls one function.
 */
import { resolve, sep } from "node:path";
import { argvList, isObj, type ConfigProblems } from "../common/config-helpers.js";

export interface AppStateConfig {
  /** Absolute companion paths (files or folders). */
  readonly include: readonly string[];
  readonly keepDays?: number;
  /** Command whose trimmed stdout names the app version (argv, no shell). */
  readonly appVersion?: readonly string[];
  /** Read-only queries a restore drill runs on the scratch copy. */
  readonly smoke: readonly string[];
}

const SMOKE = /^\s*(SELECT|WITH)\b[^;]*;?\s*$/is;

function inside(child: string, parent: string): boolean {
  return child === parent || child.startsWith(parent.endsWith(sep) ? parent : `${parent}${sep}`);
}

/**
 * Reads the app-state keys of one target. `at` is the key path prefix
 * (`targets[0].`); `sqlitePath` the main database file when SQLite.
 */
export function parseAppState(
  raw: Record<string, unknown>, at: string, p: ConfigProblems, abs: (path: string) => string,
  where: { readonly sqlitePath?: string; readonly backupsDir?: string },
): AppStateConfig {
  const include: string[] = [];
  let keepDays: number | undefined;
  const b = raw.backups;
  if (isObj(b)) {
    if (b.include !== undefined) {
      if (!Array.isArray(b.include) || !b.include.every((x) => typeof x === "string" && x.length > 0)) {
        p.add(`${at}backups.include`, "must be a list of paths (files or folders backed up with the database), e.g. [/app/backend/data/uploads]");
      } else {
        for (const [i, item] of (b.include as string[]).entries()) {
          const path = resolve(abs(item));
          const kp = `${at}backups.include[${i}]`;
          if (path === "/") p.add(kp, "cannot be the root folder");
          else if (where.sqlitePath && inside(resolve(where.sqlitePath), path)) p.add(kp, `contains the database file ${where.sqlitePath}, which every backup already copies consistently: list the folders and files beside it instead`);
          else if (where.backupsDir && (inside(where.backupsDir, path) || inside(path, where.backupsDir))) p.add(kp, `overlaps the backups folder ${where.backupsDir}`);
          else if (include.some((x) => inside(x, path) || inside(path, x))) p.add(kp, `overlaps another include path (${path})`);
          else include.push(path);
        }
      }
    }
    if (b.keepDays !== undefined) {
      const n = Number(b.keepDays);
      if (!Number.isFinite(n) || n <= 0 || n > 36500) p.add(`${at}backups.keepDays`, "must be a positive number of days (backups younger than this are kept, on top of keep)");
      else keepDays = n;
    }
  }
  const appVersion = argvList(raw, "appVersion", at, p);
  const smoke: string[] = [];
  if (raw.smoke !== undefined) {
    if (!Array.isArray(raw.smoke) || !raw.smoke.every((x) => typeof x === "string")) p.add(`${at}smoke`, "must be a list of SQL queries, e.g. [\"SELECT count(*) FROM user\"]");
    else for (const [i, q] of (raw.smoke as string[]).entries()) {
      if (!SMOKE.test(q)) p.add(`${at}smoke[${i}]`, "must be one read-only SELECT (or WITH … SELECT) statement");
      else smoke.push(q.trim().replace(/;\s*$/, ""));
    }
  }
  return { include, ...(keepDays !== undefined ? { keepDays } : {}), ...(appVersion ? { appVersion } : {}), smoke };
}
