import { readdir, readFile } from "node:fs/promises";

/**
 * Finds processes started for the given operations (they carry
 * FLOTILLA_OPERATION_ID=<id> in their environment) and kills their process
 * groups. A SIGKILLed agent leaves its Alembic child running in its own process
 * group; it must be stopped before anyone restores or re-runs the migration.
 */
export async function killOrphans(operationIds: readonly string[]): Promise<number[]> {
  if (operationIds.length === 0) return [];
  const wanted = new Set(operationIds.map((id) => `FLOTILLA_OPERATION_ID=${id}`));
  const killed: number[] = [];
  let entries: string[];
  try {
    entries = await readdir("/proc");
  } catch {
    return [];
  }
  for (const e of entries) {
    if (!/^\d+$/.test(e)) continue;
    const pid = Number(e);
    if (pid === process.pid) continue;
    let env: string;
    try {
      env = await readFile(`/proc/${pid}/environ`, "latin1");
    } catch {
      continue;
    }
    if (!env.split("\0").some((kv) => wanted.has(kv))) continue;
    try {
      process.kill(-pid, "SIGKILL");
    } catch {
      try {
        process.kill(pid, "SIGKILL");
      } catch {
        /* already gone */
      }
    }
    killed.push(pid);
  }
  // Give the kernel a moment to reap them before anyone touches the database.
  if (killed.length > 0) await new Promise((r) => setTimeout(r, 200));
  return killed;
}
