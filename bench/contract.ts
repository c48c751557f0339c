/**
 * The performance contract: the figures `npm run bench -- --json` must always print, their
 * goals, and how module output becomes that array. Pure (tested in test/bench/contract.test.ts).
 */
import type { Figure } from "./figure.js";

/** The performance contract: one entry per figure, in the order they are printed. */
export const CONTRACT = [
  { id: "P1", goal: 0.05, better: "lower", name: "target status ÷ alembic current -v, heads, history, branches by hand" },
  { id: "P2", goal: 1.5, better: "lower", name: "SQLite backup + sha256 + verification ÷ cp of the same file" },
  { id: "P3", goal: 3, better: "lower", name: "SQLite backup while another process commits every 50 ms ÷ the same backup idle" },
  { id: "P4", goal: 0.6, better: "lower", name: "PostgreSQL backup + full-read verification ÷ pg_dump -Fc at default compression" },
  { id: "P5", goal: 1, better: "lower", name: "longest agent event-loop stall during backup, verification and migration ÷ 50 ms" },
  { id: "P6s", goal: 1.15, better: "lower", name: "agent migrate of a 16-revision chain ÷ bare alembic upgrade head, SQLite" },
  { id: "P6p", goal: 1.15, better: "lower", name: "agent migrate of a 16-revision chain ÷ bare alembic upgrade head, PostgreSQL" },
  { id: "P7", goal: 1, better: "lower", name: "controller overhead per target at 200 agents over mTLS, 20 at a time ÷ 2.5 ms" },
  { id: "P7t", goal: 1.1, better: "lower", name: "controller fan-out total ÷ ideal at 200 agents over mTLS" },
  { id: "P8s", goal: 0.9, better: "higher", name: "audit append with the HMAC chain ÷ plain insert at the same durability, SQLite" },
  { id: "P8p", goal: 0.9, better: "higher", name: "audit append with the HMAC chain ÷ plain insert at the same durability, PostgreSQL" },
  { id: "P9", goal: 1, better: "lower", name: "agent idle RSS ÷ 64 MiB" },
  { id: "P10", goal: 1.1, better: "lower", name: "app downtime of a one-target maintenance rollout ÷ stop + backup + migrate + start alone" },
  { id: "P11", goal: 1, better: "lower", name: "SQLite → PostgreSQL move ÷ pgloader on the same database" },
  { id: "P12", goal: 0.1, better: "lower", name: "second backup with an unchanged 200 MB companion folder ÷ the first" },
] as const satisfies readonly { id: string; goal: number; better: "lower" | "higher"; name: string }[];

export type ContractId = (typeof CONTRACT)[number]["id"];

/** One contract figure as `--json` prints it. */
export interface ContractFigure {
  id: ContractId;
  name: string;
  ratio: number | null;
  goal: number;
  better: "lower" | "higher";
  baseline: number | null;
  value: number | null;
  unit: string;
  reason?: string;
}

/** PASS / MISS / "n/a" of a contract figure. */
export function verdict(f: Pick<ContractFigure, "ratio" | "goal" | "better">): "PASS" | "MISS" | "n/a" {
  if (f.ratio === null) return "n/a";
  return (f.better === "lower" ? f.ratio <= f.goal : f.ratio >= f.goal) ? "PASS" : "MISS";
}

/** The contract figures from every module's output; missing ones are listed. */
export function collect(figures: readonly Figure[]): { contract: ContractFigure[]; missing: string[] } {
  const contract: ContractFigure[] = [];
  const missing: string[] = [];
  for (const c of CONTRACT) {
    const f = figures.find((x) => x.id === c.id);
    if (f === undefined) {
      missing.push(c.id);
      continue;
    }
    contract.push({
      id: c.id,
      name: f.name || c.name,
      ratio: f.ratio,
      goal: c.goal,
      better: c.better,
      baseline: f.baseline,
      value: f.value,
      unit: f.unit,
      ...(f.ratio === null && f.reason ? { reason: f.reason } : {}),
    });
  }
  return { contract, missing };
}
