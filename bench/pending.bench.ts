/**
 * Contract figures whose feature is built by another piece of work: reported with
 * `ratio: null` and the reason, so `--json` always carries every id. A module that measures
 * one of them for real (bench/move.bench.ts for P11, bench/companions.bench.ts for P12)
 * replaces its line here.
 */
import { existsSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import type { BenchOptions, Figure } from "./figure.js";

const HERE = dirname(fileURLToPath(import.meta.url));

const PENDING = [
  { id: "P11", module: "move", name: "SQLite → PostgreSQL move ÷ pgloader on the same database", reason: "flotilla move is not built yet" },
  {
    id: "P12",
    module: "companions",
    name: "second backup with an unchanged 200 MB companion folder ÷ the first",
    reason: "companion files in backups are not built yet",
  },
] as const;

export async function measure(_opts: BenchOptions): Promise<Figure[]> {
  return PENDING.filter((p) => !existsSync(join(HERE, `${p.module}.bench.ts`))).map((p) => ({
    id: p.id,
    name: p.name,
    ratio: null,
    value: null,
    baseline: null,
    unit: "ms",
    reason: p.reason,
  }));
}
