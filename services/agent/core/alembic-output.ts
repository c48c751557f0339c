/**
 * Pure parsers for the Alembic CLI's output and the classifier of its failures.
 * No I/O: every function takes the recorded text of a run (stdout, stderr,
 * exit code) and returns values. Formats follow alembic 1.8.1 and stay valid
 * for newer versions (field notes §3.1, §3.2, §3.9): `current` and `heads`
 * lines with ` (head)`, ` (effective head)`, ` (branchpoint)`, ` (mergepoint)`,
 * ` (current)` markers, verbose `Rev:` blocks, `history` lines with `<base>`,
 * merge points `a, b -> m`, and the `Running upgrade|downgrade|stamp_revision`
 * log lines (first step `Running upgrade  -> rev`, two spaces).
 */

/** One revision as `alembic history` describes it. */
export interface HistoryRevision {
  readonly id: string;
  /** Parent revision ids; empty for a root (`<base>`). Two or more for a merge point. */
  readonly down: readonly string[];
  /** First paragraph of the revision's docstring ('' when it has none). */
  readonly message: string;
  readonly isHead: boolean;
  readonly isBranchpoint: boolean;
  readonly isMergepoint: boolean;
  /** Branch labels printed in parentheses after the id (`(mybranch)`), if any. */
  readonly branchLabels: readonly string[];
  /** `depends_on` ids printed as `a (dep1, dep2) -> b`, if any. */
  readonly dependsOn: readonly string[];
}

export type StepDirection = "upgrade" | "downgrade" | "stamp";

/** One `Running …` log line of an upgrade, downgrade or stamp. */
export interface RevisionStep {
  readonly direction: StepDirection;
  /** Revisions the step starts from; empty when it starts at base. Two or more for a merge step. */
  readonly from: readonly string[];
  /**
   * The revision the step lands on; `base` when a downgrade or stamp removes
   * the root. For a downgrade out of a merge point (several parents) the first
   * parent; all of them are in `toAll`.
   */
  readonly to: string;
  /** Every revision the step lands on; empty for base. */
  readonly toAll: readonly string[];
  /** The revision's message ('' for stamps and revisions without a docstring). */
  readonly message: string;
}

export type FailureKind =
  | "command-error"
  | "env"
  | "missing-config"
  | "unknown-revision"
  | "multiple-heads"
  | "lock"
  | "partial-apply"
  | "duplicate-object"
  | "batch-leftover"
  | "concurrent-runner"
  | "sql-error"
  | "offline-unsupported"
  | "usage"
  | "timeout"
  | "killed"
  | "unknown";

/** What went wrong in one Alembic run, for an operator. */
export interface AlembicFailure {
  readonly kind: FailureKind;
  /** The `FAILED:` text, the last exception line of the traceback, or what ended the process. */
  readonly message: string;
  /** What the operator should do next. */
  readonly hint: string;
  /**
   * True when the database may hold changes that `alembic_version` does not
   * record (non-transactional DDL after a step started, leftovers of an earlier
   * run, a concurrent runner). False only when the output shows that nothing
   * could have been left half-done.
   */
  readonly changesMayBePartial: boolean;
}

/** How a run ended besides its exit code (from the process runner). */
export interface RunEnding {
  readonly timedOut?: boolean;
  readonly cancelled?: boolean;
  readonly signal?: string | null;
  readonly spawnError?: string;
}

// Revision ids are whatever the scripts declare; Alembic's own are 12 hex digits.
const ID = String.raw`[A-Za-z0-9_]+`;
const ANSI = /\u001b\[[0-9;?]*[ -/]*[@-~]/g;
const MARKERS = new Set(["head", "effective head", "branchpoint", "mergepoint", "current"]);
const DEFAULT_ID = /^[0-9a-f]{12}$/;

/** Removes ANSI escape sequences (colour codes some wrappers add). */
export function stripAnsi(text: string): string {
  return text.replace(ANSI, "");
}

function lines(text: string): string[] {
  return stripAnsi(text).split(/\r?\n/);
}

function splitIds(list: string): string[] {
  return list
    .split(",")
    .map((s) => s.trim())
    .filter((s) => s !== "");
}

/** The id of a `current`/`heads` line: `id`, optionally followed by `(marker)` groups; null for anything else. */
function markedId(text: string): string | null {
  const m = new RegExp(`^(${ID})(?: \\([^()]*\\))*$`).exec(text.trim());
  return m ? m[1]! : null;
}

/**
 * Revision ids from `alembic current` (plain or `-v`) or `alembic heads`
 * output: `1b8c9d0e1f2a (head)`, `7d7d… (head) (mergepoint)`, `e5f4… (branchpoint)`,
 * or verbose `Rev: <id> (head)` blocks. The `-v` header (`Current revision(s)
 * for <url>:`, password masked as `XXXXX` in 1.8 or `***` later) and log lines
 * are ignored. Empty output (fresh database) gives `[]`.
 */
export function parseCurrent(stdout: string): string[] {
  const ids: string[] = [];
  const all = lines(stdout);
  const verbose = all.some((l) => /^Rev: /.test(l));
  for (const raw of all) {
    const line = raw.trimEnd();
    if (verbose) {
      const m = /^Rev: (\S+)/.exec(line);
      if (m) ids.push(m[1]!);
      continue;
    }
    if (line === "" || /^\s/.test(raw)) continue;
    const id = markedId(line);
    if (id !== null && !ids.includes(id)) ids.push(id);
  }
  return ids;
}

/** Head ids from `alembic heads` output (same line format as `current`). */
export function parseHeads(stdout: string): string[] {
  return parseCurrent(stdout);
}

const HISTORY_LINE = new RegExp(String.raw`^(<base>|${ID}(?:, ${ID})*)(?: \(([^()]*)\))? -> (${ID})((?: \([^()]*\))*)(?:, ?(.*))?$`);

/**
 * Revisions from plain `alembic history` output (newest first, as printed):
 * `<down> -> <id>[ (labels)][ (head)][ (branchpoint)][ (mergepoint)], <message>`.
 * A line that does not have that shape continues the previous message (a
 * docstring whose first paragraph spans several lines).
 */
export function parseHistory(stdout: string): HistoryRevision[] {
  const out: HistoryRevision[] = [];
  for (const raw of lines(stdout)) {
    const line = raw.trimEnd();
    if (line === "") continue;
    const m = HISTORY_LINE.exec(line);
    if (!m) {
      const prev = out.pop();
      if (prev) out.push({ ...prev, message: prev.message === "" ? line.trim() : `${prev.message} ${line.trim()}` });
      continue;
    }
    const downText = m[1]!;
    const groups = [...(m[4] ?? "").matchAll(/\(([^()]*)\)/g)].map((g) => g[1] ?? "");
    const markers = groups.filter((g) => MARKERS.has(g));
    const labels = groups.filter((g) => !MARKERS.has(g)).flatMap(splitIds);
    out.push({
      id: m[3]!,
      down: downText === "<base>" ? [] : splitIds(downText),
      message: (m[5] ?? "").trim(),
      isHead: markers.includes("head") || markers.includes("effective head"),
      isBranchpoint: markers.includes("branchpoint"),
      isMergepoint: markers.includes("mergepoint"),
      branchLabels: labels,
      dependsOn: m[2] !== undefined ? splitIds(m[2]) : [],
    });
  }
  return out;
}

const RUNNING = /Running (upgrade|downgrade|stamp_revision) (.*?) -> ?(.*)$/;

/**
 * Parses one `Running upgrade|downgrade|stamp_revision` log line (with or
 * without the `INFO  [alembic.runtime.migration]` prefix, or the `-- Running`
 * comment of `--sql` output); null for any other line.
 *
 * After `->` a downgrade out of a merge point lists several ids before the
 * message (`m -> a, b, msg`). Ids are told from message words with
 * `knownIds` when given, else by Alembic's default id shape (12 hex digits);
 * a single target id is always taken.
 */
export function parseRunningLine(line: string, knownIds?: ReadonlySet<string>): RevisionStep | null {
  const m = RUNNING.exec(stripAnsi(line).trimEnd());
  if (!m) return null;
  const direction: StepDirection = m[1] === "upgrade" ? "upgrade" : m[1] === "downgrade" ? "downgrade" : "stamp";
  const from = splitIds(m[2] ?? "");
  const rest = (m[3] ?? "").trim();
  // `a1f0c0de0001 -> , init`: a downgrade to base has an empty target list.
  const parts = rest === "" ? [] : rest.startsWith(",") ? ["", ...rest.slice(1).trim().split(", ")] : rest.split(", ");
  const anyId = new RegExp(`^${ID}$`);
  const isId = (s: string): boolean => anyId.test(s) && (knownIds ? knownIds.has(s) : DEFAULT_ID.test(s));
  const toAll: string[] = [];
  if (parts[0] === "") {
    parts.shift();
  } else if (direction === "stamp") {
    // Stamps log no message: everything after the arrow is a target id.
    while (parts.length > 0 && anyId.test(parts[0]!)) toAll.push(parts.shift()!);
  } else if (parts.length > 0 && anyId.test(parts[0]!)) {
    toAll.push(parts.shift()!);
    // Only a downgrade out of a merge point lands on several revisions.
    if (direction === "downgrade") {
      while (parts.length > 0 && isId(parts[0]!) && (knownIds !== undefined || parts.length > 1)) toAll.push(parts.shift()!);
    }
  }
  return { direction, from, to: toAll[0] ?? "base", toAll, message: parts.join(", ").trim() };
}

/** Every `Running …` step in a block of log text, in order. */
export function parseRunningLines(text: string, knownIds?: ReadonlySet<string>): RevisionStep[] {
  const steps: RevisionStep[] = [];
  for (const line of lines(text)) {
    const step = parseRunningLine(line, knownIds);
    if (step) steps.push(step);
  }
  return steps;
}

/** Version string from `alembic --version` (`alembic 1.8.1` → `1.8.1`); null if absent. */
export function parseVersion(stdout: string): string | null {
  const m = /alembic\s+(\d+\.\d+(?:\.\d+)?\S*)/i.exec(stripAnsi(stdout));
  return m ? m[1]! : null;
}

/** The `FAILED: …` message of a command error (stdout), or the `ERROR [alembic.util.messaging]` line (stderr). */
export function failedMessage(stdout: string, stderr: string): string | null {
  const out = lines(stdout);
  for (let i = out.length - 1; i >= 0; i--) {
    const l = out[i]!;
    if (l.startsWith("FAILED:")) {
      let msg = l.slice("FAILED:".length).trim();
      // A wrapped message continues on the following lines.
      for (let j = i + 1; j < out.length && out[j]!.trim() !== ""; j++) msg += ` ${out[j]!.trim()}`;
      return msg;
    }
  }
  for (const l of lines(stderr).reverse()) {
    const m = /^ERROR \[alembic\.util\.messaging\] (.*)$/.exec(l);
    if (m) return m[1]!.trim();
  }
  return null;
}

/**
 * The final exception of a Python traceback: the first unindented line after
 * the last `Traceback (most recent call last):` (e.g.
 * `sqlalchemy.exc.OperationalError: (sqlite3.OperationalError) database is locked`),
 * plus the lines after it (`DETAIL:`, `[SQL: …]`). Null when there is no traceback.
 */
export function lastException(stderr: string): { line: string; block: string } | null {
  const all = lines(stderr);
  let start = -1;
  for (let i = all.length - 1; i >= 0; i--) {
    if (all[i]!.startsWith("Traceback (most recent call last):")) {
      start = i;
      break;
    }
  }
  if (start < 0) return null;
  for (let i = start + 1; i < all.length; i++) {
    const l = all[i]!;
    if (l.trim() !== "" && !/^\s/.test(l)) {
      return { line: l.trim(), block: all.slice(i).join("\n") };
    }
  }
  return null;
}

/** Last line that is neither a log line nor blank: the best message when there is no traceback. */
function lastMeaningfulLine(stdout: string, stderr: string): string {
  const candidates = [...lines(stdout), ...lines(stderr)].map((l) => l.trim()).filter((l) => l !== "" && !/^(INFO|WARNI?N?G?|DEBUG)\s+\[/.test(l));
  return candidates[candidates.length - 1] ?? "";
}

const HINTS: Record<FailureKind, string> = {
  "command-error": "Alembic refused the command before changing anything; read the message, fix the request or the project, and retry.",
  env: "The app environment is incomplete (a required variable such as WEBUI_SECRET_KEY, the app's Python modules, or the database connection); fix the target's env/command in the agent config. Nothing was changed.",
  "missing-config":
    "Alembic found no alembic.ini with an [alembic] section: point the target's dir (and iniFile) at the folder holding it (Open WebUI: backend/open_webui). Nothing was changed.",
  "unknown-revision":
    "A revision id is not in the installed scripts: the database was migrated by a newer or different build (version skew), or the requested id is wrong. Deploy the matching build or restore a backup made with this one; `stamp --purge` only after verifying the schema.",
  "multiple-heads":
    "The scripts have several heads: migrate to an explicit revision or to `heads`, or merge the heads in the app's scripts. Nothing was changed.",
  lock: "Another process or session holds the database (the app still running, an idle transaction): stop the app instances or end the blocking session, then retry.",
  "partial-apply":
    "A revision failed after part of its DDL ran on a database without transactional DDL (SQLite); alembic_version still names the previous revision. Restore the pre-migration backup before any retry; do not stamp.",
  "duplicate-object":
    "An object this revision creates already exists: an earlier run applied part of it. Restore the pre-migration backup and retry; stamp past this one revision only after verifying that all of its objects exist.",
  "batch-leftover":
    "A failed batch (move-and-copy) rebuild left an _alembic_tmp_ table; every retry fails until it is dropped. Fix the data that broke the copy, then restore the backup or drop the _alembic_tmp_ table once the source table is verified intact.",
  "concurrent-runner":
    "Another migrator ran on the same database at the same time (app auto-migration or a second runner). Keep one runner per database (ENABLE_DB_MIGRATIONS=false on the app), check alembic_version and the schema, and restore the backup if they disagree.",
  "sql-error":
    "A SQL statement failed; with transactional DDL the step was rolled back. Fix the cause named in the message (data, permissions, schema drift) and retry.",
  "offline-unsupported":
    "Offline --sql cannot render this range (batch mode needs a live connection, or a revision reads the database). Use the pending revision list, or render a narrower range. Nothing was changed.",
  usage: "Alembic rejected the command line; this Alembic version may lack the option or subcommand (check `alembic --version`). Nothing was changed.",
  timeout:
    "Alembic was killed at the time limit; a long data migration may need more time. Check alembic_version and the database, and restore the backup if a step was cut short.",
  killed: "Alembic was stopped before it finished. Check alembic_version and the database, and restore the backup if a step was cut short.",
  unknown: "Alembic failed in an unrecognised way; read the output tail, check alembic_version, and restore the backup if the schema is inconsistent.",
};

function failure(kind: FailureKind, message: string, changesMayBePartial: boolean): AlembicFailure {
  return { kind, message, hint: HINTS[kind], changesMayBePartial };
}

const DB_ERROR = /^(sqlalchemy\.exc\.|psycopg2?\.|psycopg\.|sqlite3\.|pymysql\.|asyncpg\.)/;

/**
 * Classifies a failed Alembic run from its exit code and output; null when
 * the run succeeded (exit 0 and not killed). Exit 255 is a command error
 * (`FAILED: …`, nothing changed); exit 1 carries a traceback whose last
 * exception is matched; exit 2 is argparse. `ending` adds what the process
 * runner knows (timeout, cancel, signal, spawn error).
 */
export function classifyFailure(exitCode: number | null, stdout: string, stderr: string, ending: RunEnding = {}): AlembicFailure | null {
  const err = stripAnsi(stderr);
  const steps = parseRunningLines(err);
  const offline = /Generating static SQL/.test(err);
  const transactional = /Will assume transactional DDL/.test(err);
  const nonTransactional = /Will assume non-transactional DDL/.test(err);
  // Without the context log lines we cannot tell; assume the worst.
  const mayBePartial = !offline && !transactional && (steps.length > 0 || !nonTransactional);

  if (ending.spawnError !== undefined) {
    return failure("env", `could not start alembic: ${ending.spawnError}`, false);
  }
  if (ending.timedOut || exitCode === 124) {
    return failure("timeout", "alembic was killed at the time limit", mayBePartial);
  }
  if (ending.cancelled || (ending.signal ?? null) !== null || exitCode === null || exitCode === 137 || exitCode === 143) {
    const how = ending.cancelled ? "cancelled" : ending.signal ? `killed by ${ending.signal}` : `exit ${String(exitCode)}`;
    return failure("killed", `alembic was stopped (${how})`, mayBePartial);
  }
  if (exitCode === 0) return null;

  if (exitCode === 2 && /^(usage: |\S+: error: )/m.test(err)) {
    const m = /^\S+: error: (.*)$/m.exec(err);
    return failure("usage", m ? m[1]!.trim() : lastMeaningfulLine(stdout, stderr), false);
  }

  const failed = failedMessage(stdout, stderr);
  if (exitCode === 255 || (failed !== null && lastException(stderr) === null)) {
    const msg = failed ?? lastMeaningfulLine(stdout, stderr);
    if (/No config file .* found|has no '\[alembic\]' section/.test(msg)) return failure("missing-config", msg, false);
    if (/Can't locate revision identified by|No such revision or branch/.test(msg)) return failure("unknown-revision", msg, false);
    if (/Multiple head revisions are present/.test(msg)) return failure("multiple-heads", msg, false);
    if (/cannot proceed in --sql mode/.test(msg)) return failure("offline-unsupported", msg, false);
    if (/Online migration expected to match one row/.test(msg)) return failure("concurrent-runner", msg, true);
    if (/Required environment variable not found/.test(msg)) return failure("env", msg, false);
    return failure("command-error", msg, false);
  }

  const exc = lastException(stderr);
  const msg = exc?.line ?? failed ?? lastMeaningfulLine(stdout, stderr);
  const block = exc?.block ?? msg;

  if (/Required environment variable not found|Terminating now\./.test(msg)) return failure("env", msg, false);
  if (/No config file .* found/.test(msg)) return failure("missing-config", msg, false);
  if (/^(ModuleNotFoundError|ImportError)\b/.test(msg)) return failure("env", msg, false);
  if (/Can't locate revision identified by/.test(msg)) return failure("unknown-revision", msg, false);
  if (/Multiple head revisions are present/.test(msg)) return failure("multiple-heads", msg, false);
  if (/cannot proceed in --sql mode/.test(msg)) return failure("offline-unsupported", msg, false);
  if (
    /pg_type_typname_nsp_index/.test(block) ||
    /UNIQUE constraint failed: alembic_version/.test(msg) ||
    (/alembic_version/.test(msg) && /UniqueViolation|already exists|duplicate key/.test(msg))
  ) {
    return failure("concurrent-runner", msg, true);
  }
  if (/_alembic_tmp_/.test(msg)) return failure("batch-leftover", msg, true);
  if (/database is locked|database table is locked|LockNotAvailable|lock timeout|deadlock detected/i.test(msg)) {
    return failure("lock", msg, mayBePartial);
  }
  if (/duplicate column name|already exists|DuplicateColumn|DuplicateTable|DuplicateObject/.test(msg)) {
    return failure("duplicate-object", msg, true);
  }
  if (
    /unable to open database file|could not connect to server|Connection refused|password authentication failed|could not translate host name|database "[^"]*" does not exist/.test(
      msg,
    )
  ) {
    return failure("env", msg, false);
  }
  if (/MockConnection/.test(msg) && offline) return failure("offline-unsupported", msg, false);
  if (steps.length > 0 && mayBePartial) return failure("partial-apply", msg, true);
  if (DB_ERROR.test(msg)) return failure("sql-error", msg, mayBePartial);
  return failure("unknown", msg, mayBePartial);
}

/** One revision of a run, placed in time by its `Running …` line. */
export interface TimedStep extends RevisionStep {
  /** When its `Running …` line was seen (caller's clock, ms). */
  readonly startedAtMs: number;
  /** Until the next step's line, or the end of the run for the last one. */
  readonly durationMs: number;
}

/**
 * Places the `Running …` lines of one Alembic run in time: each revision
 * lasts from its own line to the next one's, the last one until the process
 * ended. When the run failed, the last revision that started is where it
 * failed (`failedAt`); when it failed before any revision started (env.py,
 * connection, lock), `failedAt` is null and `done` is empty. On a
 * transactional database "done" means "ran", not "committed": the caller
 * reads the database to know what stayed.
 */
export function revisionTimeline(
  lines: readonly { readonly line: string; readonly atMs: number }[],
  end: { readonly atMs: number; readonly ok: boolean },
  knownIds?: ReadonlySet<string>,
): { done: TimedStep[]; failedAt: TimedStep | null } {
  const started: { step: RevisionStep; atMs: number }[] = [];
  for (const l of lines) {
    const step = parseRunningLine(l.line, knownIds);
    if (step && step.direction !== "stamp") started.push({ step, atMs: l.atMs });
  }
  const timed = started.map(
    (s, i): TimedStep => ({
      ...s.step,
      startedAtMs: s.atMs,
      durationMs: Math.max(0, (started[i + 1]?.atMs ?? end.atMs) - s.atMs),
    }),
  );
  if (end.ok) return { done: timed, failedAt: null };
  const failedAt = timed.pop() ?? null;
  return { done: timed, failedAt };
}

/** The offline SQL of one revision, cut out of an `upgrade A:B --sql` output. */
export interface RevisionSql {
  readonly from: readonly string[];
  readonly to: string;
  readonly sql: string;
}

/**
 * Cuts `alembic upgrade A:B --sql` output into one piece per revision at its
 * `-- Running upgrade A -> B` comments. What comes before the first comment
 * (`BEGIN;`, the alembic_version table) is the preamble; a trailing `COMMIT;`
 * is left out of the last piece. Output that stopped half-way (a revision
 * that offline mode cannot render) still yields every piece before the
 * stopping one, and the stopping one as `partial`.
 */
export function splitOfflineSql(stdout: string, knownIds?: ReadonlySet<string>): { preamble: string; revisions: RevisionSql[] } {
  const out: { from: readonly string[]; to: string; body: string[] }[] = [];
  const preamble: string[] = [];
  for (const raw of lines(stdout)) {
    const step = /^-- Running upgrade /.test(raw) ? parseRunningLine(raw, knownIds) : null;
    if (step) {
      out.push({ from: step.from, to: step.to, body: [] });
      continue;
    }
    (out.at(-1)?.body ?? preamble).push(raw);
  }
  const last = out.at(-1);
  if (last) {
    while (last.body.length > 0 && /^\s*$/.test(last.body.at(-1)!)) last.body.pop();
    if (/^COMMIT;\s*$/.test(last.body.at(-1) ?? "")) last.body.pop();
  }
  return {
    preamble: preamble.join("\n").trim(),
    revisions: out.map((r) => ({ from: r.from, to: r.to, sql: r.body.join("\n").trim() })),
  };
}
