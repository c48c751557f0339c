/**
 * Runs the benchmarks: every `bench/*.bench.ts`, one after another (never
 * concurrently: the CI machine has 2 cores), or only those named on the
 * command line (`npm run bench -- sqlite fanout`; a name matches a module
 * whose file name contains it). Each module exports
 * `run(): Promise<figure[]>`; each figure is printed on one line with its
 * same-run baseline and, where the goal is known (the figure's own `goal`, or
 * the table below for modules that do not carry one), PASS or MISS.
 *
 * Writes bench/results/latest.json. Exit status: 0 when every bench ran, even
 * if goals were missed (benchmarks report, tests assert); 1 when a bench
 * crashed; 2 for an unknown bench name.
 */
import { mkdirSync, readdirSync, writeFileSync } from "node:fs";
import { cpus, loadavg } from "node:os";
import { dirname, join, relative, resolve } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";

/** A goal of the performance notes (A8): the figure's value must be `op` `value`. */
export interface Goal {
  op: "<=" | ">=";
  value: number;
  /** The goal's id in A8 (P1–P18). */
  id: string;
}

/** What a bench module's run() returns. `goal` is optional; `ratio`/`target` is the audit bench's older shape. */
export interface BenchFigure {
  name: string;
  value: number;
  unit: string;
  baseline: string | number;
  goal?: Goal;
  ratio?: number;
  target?: string;
}

interface Figure {
  id: string;
  name: string;
  value: number;
  unit: string;
  baseline: string;
  goal: Goal | null;
  status: "PASS" | "MISS" | "";
}

interface BenchReport {
  module: string;
  file: string;
  ok: boolean;
  durationMs: number;
  loadavgStart: number[];
  loadavgEnd: number[];
  figures: Figure[];
  error?: string;
}

const BENCH_DIR = dirname(fileURLToPath(import.meta.url));
const REPO = resolve(BENCH_DIR, "..");
const RESULTS = join(BENCH_DIR, "results", "latest.json");

/**
 * Goals of figures whose module does not attach one, keyed by module and exact
 * figure name. The SQLite bench reports P1 as a time ratio: MB/s ≥ 0.8 × cp is
 * time ≤ 1.25 × cp.
 */
const GOALS: Record<string, Record<string, Goal>> = {
  "sqlite-backup": {
    "P1 backup() time ÷ cp time": { op: "<=", value: 1.25, id: "P1" },
    "P2 busy backup() time ÷ idle backup() time": { op: "<=", value: 3, id: "P2" },
    "P3 max event-loop stall during backup()": { op: "<=", value: 50, id: "P3" },
    "P3 max event-loop stall during verifyBackup()": { op: "<=", value: 50, id: "P3" },
    "P3 max event-loop stall during integrityCheck()": { op: "<=", value: 50, id: "P3" },
    "P6 verifyBackup() time ÷ backup() time": { op: "<=", value: 0.5, id: "P6" },
    "P5 quick_check": { op: "<=", value: 1.5, id: "P5" },
  },
  "pg-dump": {
    "P7 adapter backup ÷ bare pg_dump -Fc -Z1 (wall time)": { op: "<=", value: 1.05, id: "P7" },
    "P8 default -Fc time ÷ -Fc -Z1 time (= -Z1 throughput gain)": { op: ">=", value: 2.5, id: "P8" },
    "P6 verify (sha256 + pg_restore -f /dev/null) ÷ adapter backup": { op: "<=", value: 0.5, id: "P6" },
  },
  audit: {
    "P11 audit append rate, SqliteStore WAL+FULL ÷ raw better-sqlite3 single-row insert WAL+FULL": { op: ">=", value: 0.9, id: "P11" },
    "P13 audit append rate, PostgresStore ÷ raw node-postgres single-row insert, same server": { op: ">=", value: 0.4, id: "P13" },
  },
};

const fmt = (x: number): string => (Number.isFinite(x) ? String(Number(x.toFixed(3))) : String(x));
const sym = (op: Goal["op"]): string => (op === "<=" ? "≤" : "≥");

function discover(): { module: string; file: string }[] {
  return readdirSync(BENCH_DIR)
    .filter((f) => f.endsWith(".bench.ts"))
    .sort()
    .map((f) => ({ module: f.slice(0, -".bench.ts".length), file: join(BENCH_DIR, f) }));
}

function isFigure(x: unknown): x is BenchFigure {
  const f = x as BenchFigure;
  return typeof f === "object" && f !== null && typeof f.name === "string" && typeof f.value === "number" && typeof f.unit === "string" &&
    (typeof f.baseline === "string" || typeof f.baseline === "number");
}

/** One figure in the common shape, with its goal and verdict. */
function normalize(module: string, raw: BenchFigure): Figure {
  let { name, value, unit } = raw;
  let baseline = String(raw.baseline);
  // The audit bench's shape: value and baseline are rates, the goal is on their ratio.
  if (typeof raw.baseline === "number" && typeof raw.ratio === "number") {
    baseline = `${Math.round(raw.value)} vs ${Math.round(raw.baseline)} ${raw.unit}, same run`;
    value = raw.ratio;
    unit = "ratio";
  }
  const goal = raw.goal ?? GOALS[module]?.[name] ?? null;
  const id = goal?.id ?? /^(P\d+[a-z]?)\s/.exec(name)?.[1] ?? "";
  if (id !== "" && name.startsWith(`${id} `)) name = name.slice(id.length + 1);
  const status = goal === null ? "" : (goal.op === "<=" ? value <= goal.value : value >= goal.value) ? "PASS" : "MISS";
  return { id, name, value, unit, baseline, goal, status };
}

function printFigures(figures: readonly Figure[]): void {
  const w = (f: (x: Figure) => string): number => Math.max(0, ...figures.map((x) => f(x).length));
  const cols = {
    id: w((x) => x.id),
    name: w((x) => x.name),
    value: w((x) => fmt(x.value)),
    unit: w((x) => x.unit),
    baseline: w((x) => `(baseline: ${x.baseline})`),
    target: w((x) => (x.goal ? `target ${sym(x.goal.op)} ${x.goal.value}` : "")),
  };
  for (const f of figures) {
    const target = f.goal ? `target ${sym(f.goal.op)} ${f.goal.value}` : "";
    const line = [
      f.id.padEnd(cols.id), f.name.padEnd(cols.name), fmt(f.value).padStart(cols.value), f.unit.padEnd(cols.unit),
      `(baseline: ${f.baseline})`.padEnd(cols.baseline), target.padEnd(cols.target), f.status,
    ].join("  ");
    process.stdout.write(`  ${line.trimEnd()}\n`);
  }
}

async function runOne(module: string, file: string): Promise<BenchReport> {
  const loadavgStart = loadavg().map((x) => Number(x.toFixed(2)));
  process.stdout.write(`\n== ${module} (${relative(REPO, file)}), load average ${loadavgStart.join(" ")}\n`);
  const t0 = performance.now();
  const report: BenchReport = { module, file: relative(REPO, file), ok: false, durationMs: 0, loadavgStart, loadavgEnd: [], figures: [] };
  try {
    const mod = (await import(pathToFileURL(file).href)) as { run?: () => Promise<unknown> };
    if (typeof mod.run !== "function") throw new Error(`${relative(REPO, file)} exports no run() function`);
    const out = await mod.run();
    if (!Array.isArray(out) || !out.every(isFigure)) throw new Error("run() did not return an array of { name, value, unit, baseline } figures");
    report.figures = out.map((f) => normalize(module, f));
    for (const name of Object.keys(GOALS[module] ?? {})) {
      if (!out.some((f) => f.name === name)) process.stdout.write(`  (note: the goal table names "${name}", which ${module} no longer reports)\n`);
    }
    report.ok = true;
    printFigures(report.figures);
  } catch (err) {
    report.error = err instanceof Error ? (err.stack ?? err.message) : String(err);
    process.stdout.write(`  CRASHED: ${report.error}\n`);
  }
  report.durationMs = Math.round(performance.now() - t0);
  report.loadavgEnd = loadavg().map((x) => Number(x.toFixed(2)));
  process.stdout.write(`  (${(report.durationMs / 1000).toFixed(1)} s, load average ${report.loadavgEnd.join(" ")})\n`);
  return report;
}

async function main(argv: string[]): Promise<number> {
  const all = discover();
  if (argv.includes("--help") || argv.includes("-h")) {
    process.stdout.write(`usage: npm run bench [-- NAME...]\nbenches: ${all.map((b) => b.module).join(", ")}\n`);
    return 0;
  }
  let selected = all;
  if (argv.length > 0) {
    const unknown = argv.filter((a) => !all.some((b) => b.module.includes(a)));
    if (unknown.length > 0) {
      process.stderr.write(`bench: no benchmark matches ${unknown.join(", ")} (benches: ${all.map((b) => b.module).join(", ")})\n`);
      return 2;
    }
    selected = all.filter((b) => argv.some((a) => b.module.includes(a)));
  }
  const startedAt = new Date().toISOString();
  process.stdout.write(`flotilla bench: ${selected.map((b) => b.module).join(", ")} on ${cpus().length} CPUs, Node ${process.version}\n`);
  const benches: BenchReport[] = [];
  for (const b of selected) benches.push(await runOne(b.module, b.file));

  const figures = benches.flatMap((b) => b.figures);
  const pass = figures.filter((f) => f.status === "PASS").length;
  const missed = figures.filter((f) => f.status === "MISS");
  const crashed = benches.filter((b) => !b.ok).map((b) => b.module);
  mkdirSync(dirname(RESULTS), { recursive: true });
  writeFileSync(RESULTS, `${JSON.stringify({
    startedAt, finishedAt: new Date().toISOString(),
    machine: { cpus: cpus().length, cpuModel: cpus()[0]?.model ?? "", node: process.version },
    benches,
    summary: { figures: figures.length, pass, miss: missed.length, crashed },
  }, null, 2)}\n`);
  process.stdout.write(`\n${figures.length} figures: ${pass} PASS, ${missed.length} MISS` +
    (missed.length > 0 ? ` (${missed.map((f) => `${f.id} ${f.name}`).join("; ")})` : "") +
    (crashed.length > 0 ? `; crashed: ${crashed.join(", ")}` : "") + `\nreport: ${relative(REPO, RESULTS)}\n`);
  return crashed.length > 0 ? 1 : 0;
}

// Benches may leave library timers behind (pools, keepalives): exit explicitly once the report is written.
process.exit(await main(process.argv.slice(2)));
