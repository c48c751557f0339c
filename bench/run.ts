/**
 * Runs the benchmarks and checks them against the performance contract.
 *
 *   npm run bench                      every module, full sizes
 *   npm run bench -- --quick           the short form (under ten minutes on 2 cores)
 *   npm run bench -- --json [--quick]  stdout: only the JSON array of contract figures
 *   npm run bench -- migrate fanout    only the modules whose file name contains a word
 *
 * Every module `bench/<topic>.bench.ts` exports `measure(opts)` returning figures
 * (bench/figure.ts). Modules run one after another, never concurrently (2 cores).
 * Each contract figure below must be reported by some module: a figure that could not be
 * measured is an error (exit 1), except one whose feature does not exist yet, which a
 * module reports with `ratio: null` and a `reason`.
 *
 * Results also go to bench/results/latest.json. Exit status: 0 when every contract figure
 * was measured (goals missed or not: benchmarks report, tests assert); 1 when a module
 * crashed or a figure is missing; 2 for bad arguments.
 */
import { mkdirSync, readdirSync, writeFileSync } from "node:fs";
import { cpus, loadavg } from "node:os";
import { dirname, join, relative, resolve } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";
import { collect, verdict } from "./contract.js";
import type { BenchOptions, Figure } from "./figure.js";

interface ModuleReport {
  module: string;
  ok: boolean;
  durationMs: number;
  loadavg: number[];
  figures: Figure[];
  error?: string;
}

const BENCH_DIR = dirname(fileURLToPath(import.meta.url));
const REPO = resolve(BENCH_DIR, "..");
const RESULTS = join(BENCH_DIR, "results", "latest.json");

const fmt = (x: number | null): string => (x === null ? "—" : String(Number(x.toFixed(3))));

function discover(): { module: string; file: string }[] {
  return readdirSync(BENCH_DIR)
    .filter((f) => f.endsWith(".bench.ts"))
    .sort()
    .map((f) => ({ module: f.slice(0, -".bench.ts".length), file: join(BENCH_DIR, f) }));
}

function isFigure(x: unknown): x is Figure {
  const f = x as Figure;
  return (
    typeof f === "object" &&
    f !== null &&
    typeof f.id === "string" &&
    typeof f.name === "string" &&
    typeof f.unit === "string" &&
    (f.ratio === null || typeof f.ratio === "number") &&
    (f.ratio !== null || typeof f.reason === "string" || f.id === "")
  );
}

async function runModule(module: string, file: string, opts: BenchOptions): Promise<ModuleReport> {
  const load = loadavg().map((x) => Number(x.toFixed(2)));
  opts.log(`\n== ${module} (${relative(REPO, file)}), load average ${load.join(" ")}`);
  const t0 = performance.now();
  const report: ModuleReport = { module, ok: false, durationMs: 0, loadavg: load, figures: [] };
  try {
    const mod = (await import(pathToFileURL(file).href)) as { measure?: (o: BenchOptions) => Promise<unknown> };
    if (typeof mod.measure !== "function") throw new Error(`${relative(REPO, file)} exports no measure() function`);
    const out = await mod.measure(opts);
    if (!Array.isArray(out) || !out.every(isFigure)) throw new Error("measure() did not return an array of figures (bench/figure.ts)");
    report.figures = out;
    report.ok = true;
    for (const f of out) {
      const head = f.id === "" ? "   " : f.id.padEnd(3);
      const ratio =
        f.id === ""
          ? `${fmt(f.value)} ${f.unit}`
          : f.ratio === null
            ? `n/a (${f.reason ?? ""})`
            : `${fmt(f.ratio)}  (${fmt(f.value)} vs ${fmt(f.baseline)} ${f.unit})`;
      opts.log(`  ${head}  ${f.name}: ${ratio}${f.detail ? `  [${f.detail}]` : ""}`);
    }
  } catch (err) {
    report.error = err instanceof Error ? (err.stack ?? err.message) : String(err);
    opts.log(`  CRASHED: ${report.error}`);
  }
  report.durationMs = Math.round(performance.now() - t0);
  opts.log(`  (${(report.durationMs / 1000).toFixed(1)} s)`);
  return report;
}

async function main(argv: string[]): Promise<number> {
  const all = discover();
  const flags = argv.filter((a) => a.startsWith("-"));
  const words = argv.filter((a) => !a.startsWith("-"));
  const unknownFlags = flags.filter((f) => !["--quick", "--json", "--help", "-h"].includes(f));
  if (flags.includes("--help") || flags.includes("-h")) {
    process.stdout.write(`usage: npm run bench -- [--quick] [--json] [MODULE...]\nmodules: ${all.map((b) => b.module).join(", ")}\n`);
    return 0;
  }
  if (unknownFlags.length > 0) {
    process.stderr.write(`bench: unknown option ${unknownFlags.join(", ")} (options: --quick, --json)\n`);
    return 2;
  }
  const unknown = words.filter((a) => !all.some((b) => b.module.includes(a)));
  if (unknown.length > 0) {
    process.stderr.write(`bench: no module matches ${unknown.join(", ")} (modules: ${all.map((b) => b.module).join(", ")})\n`);
    return 2;
  }
  const json = flags.includes("--json");
  const quick = flags.includes("--quick");
  const selected = words.length > 0 ? all.filter((b) => words.some((a) => b.module.includes(a))) : all;
  // In the JSON view stdout carries the array only; everything else goes to stderr.
  const log = (line: string): void => void (json ? process.stderr : process.stdout).write(`${line}\n`);
  const startedAt = new Date().toISOString();
  log(`flotilla bench${quick ? " --quick" : ""}: ${selected.map((b) => b.module).join(", ")} on ${cpus().length} CPUs, Node ${process.version}`);

  const reports: ModuleReport[] = [];
  for (const b of selected) reports.push(await runModule(b.module, b.file, { quick, log }));
  const { contract, missing } = collect(reports.flatMap((r) => r.figures));
  const crashed = reports.filter((r) => !r.ok).map((r) => r.module);
  const partial = words.length > 0;

  mkdirSync(dirname(RESULTS), { recursive: true });
  writeFileSync(
    RESULTS,
    `${JSON.stringify(
      {
        startedAt,
        finishedAt: new Date().toISOString(),
        quick,
        machine: { cpus: cpus().length, cpuModel: cpus()[0]?.model ?? "", node: process.version },
        contract,
        modules: reports,
      },
      null,
      2,
    )}\n`,
  );

  log("\n== contract");
  for (const f of contract) {
    const goal = `${f.better === "lower" ? "≤" : "≥"} ${f.goal}`;
    log(`  ${f.id.padEnd(4)} ${fmt(f.ratio).padStart(7)}  goal ${goal.padEnd(7)} ${verdict(f).padEnd(4)}  ${f.name}${f.reason ? ` (${f.reason})` : ""}`);
  }
  if (missing.length > 0) log(`  not measured: ${missing.join(", ")}${partial ? " (not in the selected modules)" : ""}`);
  if (crashed.length > 0) log(`  crashed: ${crashed.join(", ")}`);
  log(`report: ${relative(REPO, RESULTS)}`);
  if (json) process.stdout.write(`${JSON.stringify(contract, null, 2)}\n`);
  return crashed.length > 0 || (!partial && missing.length > 0) ? 1 : 0;
}

// Benches may leave library timers behind (pools, keepalives): exit explicitly once the report is written.
process.exit(await main(process.argv.slice(2)));
