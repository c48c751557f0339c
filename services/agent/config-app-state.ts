/**
 * Checks on the app-state keys of one target beyond their shape (which the
 * config loader reads): an include path must not hold the database or overlap
 * the backups folder or another include path, and a smoke query must be one
 * read-only SELECT (drills also run them on a read-only connection).
 */
import { resolve, sep } from "node:path";
import type { ConfigProblems } from "../common/config-helpers.js";

const SMOKE = /^\s*(SELECT|WITH)\b[^;]*;?\s*$/is;

function inside(child: string, parent: string): boolean {
  return child === parent || child.startsWith(parent.endsWith(sep) ? parent : `${parent}${sep}`);
}

/** Adds a problem for each include path or smoke query that cannot be used; `at` is the key prefix (`targets[0].`). */
export function checkAppState(
  at: string,
  p: ConfigProblems,
  keys: { readonly include?: readonly string[]; readonly smoke?: readonly string[]; readonly sqlitePath?: string; readonly backupsDir?: string },
): void {
  const seen: string[] = [];
  for (const [i, item] of (keys.include ?? []).entries()) {
    const path = resolve(item);
    const kp = `${at}backups.include[${i}]`;
    if (path === "/") p.add(kp, "cannot be the root folder");
    else if (keys.sqlitePath && inside(resolve(keys.sqlitePath), path))
      p.add(kp, `contains the database file ${keys.sqlitePath}, which every backup already copies consistently: list the folders and files beside it instead`);
    else if (keys.backupsDir && (inside(keys.backupsDir, path) || inside(path, keys.backupsDir))) p.add(kp, `overlaps the backups folder ${keys.backupsDir}`);
    else if (seen.some((x) => inside(x, path) || inside(path, x))) p.add(kp, `overlaps another include path (${path})`);
    seen.push(path);
  }
  for (const [i, q] of (keys.smoke ?? []).entries()) {
    if (!SMOKE.test(q)) p.add(`${at}smoke[${i}]`, "must be one read-only SELECT (or WITH … SELECT) statement");
  }
}
