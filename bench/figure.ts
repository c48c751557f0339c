/**
 * What every bench module returns, and the small measuring tools they share.
 *
 * A module `bench/<topic>.bench.ts` exports
 * `measure(opts: BenchOptions): Promise<Figure[]>`. Figures whose `id` is one
 * of the contract ids (P1 … P12, see `CONTRACT` in run.ts) are the product's
 * performance contract; figures with `id: ""` are details printed in the human
 * view only (phases, throughput, the parts of a figure).
 */
import { readFileSync } from "node:fs";
import { PerformanceObserver } from "node:perf_hooks";

export interface BenchOptions {
  /** The short form: smaller data, fewer runs (the whole bench under ten minutes on 2 cores). */
  readonly quick: boolean;
  /** Progress lines for the human view; the JSON view sends them to stderr. */
  readonly log: (line: string) => void;
}

export interface Figure {
  /** Contract id (P1, P6s, P7t, …) or "" for a detail line. */
  readonly id: string;
  readonly name: string;
  /** value ÷ baseline (or the figure's own ratio); null only with a `reason`. */
  readonly ratio: number | null;
  /** The measured value and its same-run baseline, both in `unit`. */
  readonly value: number | null;
  readonly baseline: number | null;
  readonly unit: string;
  /** How the baseline was measured, runs, sizes: printed in the human view. */
  readonly detail?: string;
  /** Why the ratio is null (a feature the bench cannot measure yet). */
  readonly reason?: string;
}

export function median(xs: readonly number[]): number {
  if (xs.length === 0) throw new Error("median of no values");
  const s = [...xs].sort((a, b) => a - b);
  const m = Math.floor(s.length / 2);
  return s.length % 2 === 1 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
}

export const round = (x: number, digits = 3): number => Number(x.toFixed(digits));

/** A ratio figure from a measured value and its baseline. */
export function ratioFigure(id: string, name: string, value: number, baseline: number, unit: string, detail?: string): Figure {
  return { id, name, ratio: round(value / baseline), value: round(value, 2), baseline: round(baseline, 2), unit, ...(detail ? { detail } : {}) };
}

/** A detail line (no contract id). */
export function detailFigure(name: string, value: number, unit: string, detail?: string): Figure {
  return { id: "", name, ratio: null, value: round(value, 2), baseline: null, unit, ...(detail ? { detail } : {}) };
}

/** Nanoseconds the main thread has spent on a CPU (Linux schedstat; undefined elsewhere). */
function mainThreadRunNs(): number | undefined {
  try {
    return Number(readFileSync(`/proc/self/task/${process.pid}/schedstat`, "utf8").split(" ")[0]);
  } catch {
    return undefined;
  }
}

/**
 * The longest event-loop stall while `work` runs. A 5 ms interval timer sees how late each
 * tick fires (`maxWallStallMs`). On a loaded machine most of that lateness is the process
 * waiting for a CPU, which says nothing about the code; so `maxStallMs` is the time the main
 * thread itself spent running between two ticks (from its schedstat), the part of a stall the
 * design is responsible for. Without schedstat both are the wall figure.
 *
 * `gcMsInMaxStall` is how much of the interval holding that longest stall this thread's V8
 * spent in garbage collection (wall time, from `gc` performance entries): a rare long stall is most often
 * a major GC (V8's memory reducer starts one when the process looks idle, which is just when
 * the agent waits for a worker or for Alembic), and this tells it from a slow synchronous call.
 */
export async function withStallProbe<T>(work: () => Promise<T>): Promise<{ result: T; maxStallMs: number; maxWallStallMs: number; gcMsInMaxStall: number }> {
  const period = 5;
  let last = performance.now();
  let lastRun = mainThreadRunNs();
  let worstWall = 0;
  let worstRun = 0;
  let worstAt: [number, number] = [last, last];
  const gcs: [number, number][] = [];
  const gcObserver = new PerformanceObserver((list) => {
    for (const e of list.getEntries()) gcs.push([e.startTime, e.startTime + e.duration]);
  });
  gcObserver.observe({ entryTypes: ["gc"] });
  const tick = (): void => {
    const now = performance.now();
    const run = mainThreadRunNs();
    const stall = run !== undefined && lastRun !== undefined ? (run - lastRun) / 1e6 : now - last - period;
    if (stall > worstRun) worstAt = [last, now];
    worstWall = Math.max(worstWall, now - last - period);
    worstRun = Math.max(worstRun, stall);
    last = now;
    lastRun = run;
  };
  const timer = setInterval(tick, period);
  try {
    const result = await work();
    tick();
    // gc entries are delivered after the GC, from the event loop: let them arrive.
    await new Promise((r) => setTimeout(r, 20));
    // Entries can overlap (a major GC and its weak callbacks): merge them, then clip to the interval.
    const [from, to] = worstAt;
    let gcMsInMaxStall = 0;
    let reach = from;
    for (const [start, end] of gcs.sort((a, b) => a[0] - b[0])) {
      const lo = Math.max(start, reach);
      const hi = Math.min(end, to);
      if (hi > lo) gcMsInMaxStall += hi - lo;
      reach = Math.max(reach, end);
    }
    const wall = Math.max(0, worstWall);
    return { result, maxWallStallMs: wall, maxStallMs: lastRun === undefined ? wall : Math.max(0, worstRun), gcMsInMaxStall };
  } finally {
    clearInterval(timer);
    gcObserver.disconnect();
  }
}

/** Runs `fn` once as a warm-up, then `runs` times; returns the measured values (ms). */
export async function timed(runs: number, fn: (i: number) => Promise<number>): Promise<number[]> {
  await fn(0);
  const out: number[] = [];
  for (let i = 1; i <= runs; i++) out.push(await fn(i));
  return out;
}
