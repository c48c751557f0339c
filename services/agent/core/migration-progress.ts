import { parseRunningLine } from "./alembic-output.js";

/** One progress report of a running migration: revision n of N. */
export interface RevisionProgress {
  /** 1-based position of the revision among the pending ones. */
  readonly index: number;
  readonly count: number;
  readonly revision: string;
  readonly message: string;
  /** Since the Alembic process started. */
  readonly elapsedMs: number;
  /** Estimated time left for the whole run; 0 when any remaining revision has no known duration. */
  readonly etaMs: number;
}

/**
 * Turns the lines of one `alembic upgrade|downgrade TARGET` run into
 * revision n/N progress with an estimate, from known durations of the same
 * revisions (an earlier run or a rehearsal). Pure: the caller passes the
 * clock readings in.
 */
export class MigrationProgress {
  private readonly position: ReadonlyMap<string, number>;
  private current: { revision: string; index: number; startedAtMs: number } | null = null;

  constructor(
    private readonly pending: readonly string[],
    private readonly direction: "upgrade" | "downgrade",
    private readonly estimates: ReadonlyMap<string, number>,
    private readonly startedAtMs: number,
  ) {
    this.position = new Map(pending.map((id, i) => [id, i]));
  }

  /** A progress report when `line` starts a pending revision; null for any other line. */
  onLine(line: string, atMs: number): RevisionProgress | null {
    const step = parseRunningLine(line, new Set(this.position.keys()));
    if (!step || step.direction !== this.direction) return null;
    // An upgrade names the revision it applies; a downgrade the one it removes (its `from`).
    const revision = this.direction === "upgrade" ? step.to : (step.from[0] ?? "");
    const index = this.position.get(revision);
    if (index === undefined) return null;
    this.current = { revision, index, startedAtMs: atMs };
    return { index: index + 1, count: this.pending.length, revision, message: step.message, elapsedMs: atMs - this.startedAtMs, etaMs: this.eta(atMs) };
  }

  /** The revision running now (for heartbeats), with the same fields as a progress report. */
  now(atMs: number): RevisionProgress | null {
    if (!this.current) return null;
    return {
      index: this.current.index + 1,
      count: this.pending.length,
      revision: this.current.revision,
      message: "",
      elapsedMs: atMs - this.startedAtMs,
      etaMs: this.eta(atMs),
    };
  }

  private eta(atMs: number): number {
    if (!this.current) return 0;
    let left = 0;
    for (let i = this.current.index; i < this.pending.length; i++) {
      const known = this.estimates.get(this.pending[i]!);
      if (known === undefined) return 0;
      left += i === this.current.index ? Math.max(0, known - (atMs - this.current.startedAtMs)) : known;
    }
    return Math.round(left);
  }
}

/** Sum of the known durations of `revisions`; undefined when any is unknown. */
export function estimateMs(revisions: readonly string[], estimates: ReadonlyMap<string, number>): number | undefined {
  let total = 0;
  for (const id of revisions) {
    const known = estimates.get(id);
    if (known === undefined) return undefined;
    total += known;
  }
  return total;
}
