import { mkdirSync, readFileSync, readdirSync, rmSync, statSync, writeFileSync } from "node:fs";
import { join } from "node:path";

/**
 * The redacted output tail (Alembic's stderr) of each operation, one small
 * file per operation under `<dataDir>/output/`, so the diagnostics bundle can
 * show what Alembic said. The newest 200 are kept.
 */

const KEEP = 200;
const SAFE_ID = /^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$/;

function dirOf(dataDir: string): string {
  return join(dataDir, "output");
}

/** Never throws: the output log is a diagnostic aid, not part of the operation. */
export function saveOutput(dataDir: string, operationId: string, text: string): void {
  if (text.trim() === "" || !SAFE_ID.test(operationId)) return;
  try {
    const dir = dirOf(dataDir);
    mkdirSync(dir, { recursive: true, mode: 0o700 });
    writeFileSync(join(dir, `${operationId.replace(/:/g, "_")}.txt`), text, { mode: 0o600 });
    const names = readdirSync(dir);
    if (names.length > KEEP) {
      const byAge = names.map((n) => ({ n, t: statSync(join(dir, n)).mtimeMs })).sort((a, b) => a.t - b.t);
      for (const old of byAge.slice(0, names.length - KEEP)) rmSync(join(dir, old.n), { force: true });
    }
  } catch {
    // a full disk must not turn a finished operation into a failure
  }
}

export function readOutput(dataDir: string, operationId: string): string {
  if (!SAFE_ID.test(operationId)) return "";
  try {
    return readFileSync(join(dirOf(dataDir), `${operationId.replace(/:/g, "_")}.txt`), "utf8");
  } catch {
    return "";
  }
}
