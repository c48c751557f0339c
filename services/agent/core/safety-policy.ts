import type { ErrorCode } from "../../common/errors.js";
import type { GraphView } from "./ports.js";

/**
 * The agent's safety policy for schema-moving operations: facts in, a
 * refusal or a plan out, as values. No I/O; every rule is decided here and
 * tested with fakes, and every refusal happens before anything is changed
 * (in a rollout: before any app is stopped, because the controller asks
 * the agent's Plan, which applies `resolveMigration`, first).
 */

/** A refusal: the error code (usage codes exit 2 in the CLI) and what to do instead. */
export interface PolicyRefusal {
  readonly ok: false;
  readonly code: ErrorCode;
  readonly message: string;
}

export type MigrationDecision =
  | PolicyRefusal
  /** Nothing to do: the database is already at the wanted revision. */
  | { readonly ok: true; readonly action: "up-to-date"; readonly target: string; readonly pending: readonly string[]; readonly message: string }
  /** Revisions to apply (upgrade, parents first) or remove (downgrade, children first). */
  | { readonly ok: true; readonly action: "upgrade" | "downgrade"; readonly target: string; readonly pending: readonly string[] };

const REVISION_SHAPE = /^[A-Za-z0-9_]{1,64}$/;

function refusal(code: ErrorCode, message: string): PolicyRefusal {
  return { ok: false, code, message };
}

/**
 * Resolves the wanted revision against the code's revision graph and the
 * database's current revisions:
 * - "" and "head" need exactly one head (several heads: MULTIPLE_HEADS);
 * - an id must be well-formed and in the graph (INVALID_ARGUMENT otherwise);
 * - a database revision the code does not know is version skew (UNKNOWN_REVISION);
 * - an upgrade to a revision behind the database's, or on another branch, is refused;
 * - a downgrade must go to an ancestor (or "base");
 * - already there: "up-to-date", nothing runs.
 * `current` null means the database has no alembic_version table yet.
 */
export function resolveMigration(facts: {
  readonly targetId: string;
  readonly graph: GraphView;
  readonly requested: string;
  readonly current: readonly string[] | null;
  readonly direction: "upgrade" | "downgrade";
}): MigrationDecision {
  const { graph, targetId, direction } = facts;
  const current = facts.current ?? [];
  const requested = facts.requested.trim();
  let target: string;
  if (direction === "upgrade" && (requested === "" || requested === "head")) {
    if (graph.heads.length > 1) {
      return refusal(
        "MULTIPLE_HEADS",
        `the code has ${graph.heads.length} head revisions (${graph.heads.join(", ")}): "head" is ambiguous. ` +
          "Add a merge revision to the app's migrations (alembic merge heads) or name one revision with --to",
      );
    }
    const head = graph.heads[0];
    if (head === undefined) return refusal("PRECONDITION_FAILED", "the code has no revisions at all: check alembic.dir points at the app's migrations");
    target = head;
  } else if (direction === "downgrade" && requested === "base") {
    target = "base";
  } else {
    if (requested === "") return refusal("INVALID_ARGUMENT", "a downgrade needs --to REVISION (or base)");
    if (!REVISION_SHAPE.test(requested)) {
      return refusal("INVALID_ARGUMENT", `"${facts.requested}" is not a revision id: use "head" or an id from the app's history (flotilla plan shows them)`);
    }
    if (!graph.revisions.has(requested)) {
      return refusal(
        "INVALID_ARGUMENT",
        `revision ${requested} is not in the app's migration history (${graph.revisions.size} revisions known, head ${graph.heads.join(", ") || "none"}): check --to`,
      );
    }
    target = requested;
  }

  const unknown = graph.unknown(current);
  if (unknown.length > 0) {
    return refusal(
      "UNKNOWN_REVISION",
      `the database of ${targetId} is at revision ${unknown.join(", ")}, which the app's migrations do not contain ` +
        "(version skew: it was migrated by a newer or different build). Run the code that matches the database, or restore a backup taken before; never stamp over it",
    );
  }

  const below = graph.ancestorsOrSelf(current);
  if (direction === "downgrade") {
    if (target === "base") {
      return current.length === 0
        ? { ok: true, action: "up-to-date", target, pending: [], message: `${targetId} has no revision applied; nothing to downgrade` }
        : { ok: true, action: "downgrade", target, pending: removedBy(graph, [], current) };
    }
    if (current.includes(target)) return { ok: true, action: "up-to-date", target, pending: [], message: `${targetId} is already at ${target}; nothing to do` };
    if (!below.has(target)) {
      return refusal(
        "INVALID_ARGUMENT",
        `${target} is not older than the database's revision ${current.join(", ") || "(none)"}; to move forward use a rollout`,
      );
    }
    return { ok: true, action: "downgrade", target, pending: removedBy(graph, [target], current) };
  }

  if (current.includes(target)) return { ok: true, action: "up-to-date", target, pending: [], message: `${targetId} is already at ${target}; nothing to do` };
  if (below.has(target)) {
    return refusal(
      "INVALID_ARGUMENT",
      `${target} is older than the database's revision ${current.join(", ")}: an upgrade cannot go back. ` +
        `To go back use flotilla downgrade ${targetId} --to ${target} --accept-data-loss`,
    );
  }
  const targetAncestors = graph.ancestorsOrSelf([target]);
  const offBranch = current.filter((id) => !targetAncestors.has(id));
  if (offBranch.length > 0) {
    return refusal(
      "INVALID_ARGUMENT",
      `${target} is on another branch than the database's revision ${offBranch.join(", ")}: upgrading to it would leave the database with two heads. ` +
        "Name a revision that descends from the database's one (or a merge revision)",
    );
  }
  return { ok: true, action: "upgrade", target, pending: graph.pending(current, target) };
}

/** Revisions a downgrade from `current` to `to` removes, children first. */
function removedBy(graph: GraphView, to: readonly string[], current: readonly string[]): string[] {
  const ids = new Set<string>();
  for (const c of current) for (const id of graph.pending(to, c)) ids.add(id);
  return [...ids].reverse();
}

/** The facts the agent gathers before it changes anything in a migration. */
export interface MigrateGuardFacts {
  readonly targetId: string;
  readonly kind: "sqlite" | "postgresql";
  /** Job strategy (old instances keep running): apps and sessions are allowed to hold the database. */
  readonly online: boolean;
  /** App instances of this target that answer their health check (blue while green migrates is excluded by the caller). */
  readonly runningApps: readonly string[];
  /** Other processes or sessions holding the database, described. */
  readonly holders: readonly string[];
  /** Tables named `_alembic_tmp_*`: leftovers of an earlier failed SQLite batch operation. */
  readonly leftoverTables: readonly string[];
  /** The backup the migration relies on. */
  readonly backup:
    | { readonly kind: "none" }
    | { readonly kind: "take" }
    | {
        readonly kind: "given";
        readonly id: string;
        readonly verified: boolean;
        readonly verification: string;
        readonly rolloutId: string;
        readonly revisions: readonly string[];
        readonly source: string;
      };
  /** The operation's rollout ('' outside one) and the database's revisions and display name. */
  readonly rolloutId: string;
  readonly current: readonly string[];
  readonly displayName: string;
}

function sameSet(a: readonly string[], b: readonly string[]): boolean {
  return a.length === b.length && [...a].sort().join(",") === [...b].sort().join(",");
}

/**
 * Whether a migration may start, given what holds the database, the backup
 * it relies on and what an earlier failure left behind. Null: go.
 */
export function guardMigration(facts: MigrateGuardFacts): PolicyRefusal | null {
  const b = facts.backup;
  if (b.kind === "none") {
    return refusal(
      "BACKUP_UNVERIFIED",
      "no verified backup was taken in this operation: pass the id of a verified backup taken in this rollout, or ask the agent to take one (take_backup)",
    );
  }
  if (facts.leftoverTables.length > 0) {
    return refusal(
      "PRECONDITION_FAILED",
      `leftover batch table(s) ${facts.leftoverTables.join(", ")} from an earlier failed migration: the next attempt would fail with "table ... already exists". ` +
        `Restore the pre-migration backup (flotilla backups ${facts.targetId}; flotilla restore) or run flotilla diagnose ${facts.targetId}`,
    );
  }
  if (!facts.online && facts.runningApps.length > 0) {
    return refusal(
      "APP_STILL_RUNNING",
      `app instance(s) ${facts.runningApps.join(", ")} of ${facts.targetId} are still running: stop them first (the maintenance strategy does this), or use the job strategy for additive migrations`,
    );
  }
  if (!facts.online && facts.holders.length > 0) {
    return refusal(
      "APP_STILL_RUNNING",
      `${facts.displayName} is still held by ${facts.holders.length} other ${facts.kind === "sqlite" ? "process(es)" : "session(s)"}: ${facts.holders.slice(0, 5).join("; ")}. Stop the app on every host before migrating`,
    );
  }
  if (b.kind === "given") {
    if (!b.verified)
      return refusal("BACKUP_UNVERIFIED", `backup ${b.id} is not verified (${b.verification}); a migration needs a verified backup taken in the same rollout`);
    if (facts.rolloutId && b.rolloutId !== facts.rolloutId)
      return refusal("BACKUP_UNVERIFIED", `backup ${b.id} was taken outside rollout ${facts.rolloutId}; take a fresh one in this rollout`);
    if (!sameSet(b.revisions, facts.current)) {
      return refusal(
        "BACKUP_UNVERIFIED",
        `backup ${b.id} is at revision ${b.revisions.join(",") || "none"} but the database is at ${facts.current.join(",") || "none"}: take a fresh backup`,
      );
    }
    if (b.source !== facts.displayName) return refusal("BACKUP_UNVERIFIED", `backup ${b.id} is of ${b.source}, not of ${facts.displayName}`);
  }
  return null;
}

/** What the database looked like, for telling whether a failed run changed anything. */
export interface DatabaseSnapshot {
  readonly revisions: readonly string[];
  readonly schemaHash: string;
  /** Row counts per table; absent when they were not read (the app may be writing: job strategy). */
  readonly tableCounts?: Readonly<Record<string, number>>;
}

/** The differences between two snapshots, one phrase each; empty when nothing changed. */
export function snapshotChanges(before: DatabaseSnapshot, after: DatabaseSnapshot): string[] {
  const changes: string[] = [];
  if (!sameSet(before.revisions, after.revisions)) changes.push(`revision ${before.revisions.join(",") || "none"} → ${after.revisions.join(",") || "none"}`);
  if (before.schemaHash !== after.schemaHash) changes.push("schema changed");
  if (before.tableCounts && after.tableCounts) {
    for (const [table, n] of Object.entries(after.tableCounts)) {
      const was = before.tableCounts[table];
      if (was === undefined) changes.push(`new table ${table}`);
      else if (was !== n) changes.push(`${table}: ${was} → ${n} rows`);
    }
    for (const table of Object.keys(before.tableCounts)) if (!(table in after.tableCounts)) changes.push(`table ${table} gone`);
  }
  return changes;
}

/** What to do after a failed migration run, from what changed and who still holds the database. */
export type AfterFailure =
  | { readonly action: "none"; readonly effect: "none" }
  | { readonly action: "restore"; readonly effect: "restored" }
  | { readonly action: "hold"; readonly effect: "needs-restore"; readonly blockingSessions: readonly string[] };

/**
 * A failed run that changed nothing needs no restore; one that changed
 * something is restored, unless other sessions hold the database (a restore
 * under them is refused or would lose their view): then the target is held
 * as needs-restore, naming them, until `flotilla recover --action restore`.
 */
export function afterFailure(facts: {
  readonly changes: readonly string[];
  readonly kind: "sqlite" | "postgresql";
  readonly holders: readonly string[];
}): AfterFailure {
  if (facts.changes.length === 0) return { action: "none", effect: "none" };
  if (facts.kind === "postgresql" && facts.holders.length > 0) return { action: "hold", effect: "needs-restore", blockingSessions: facts.holders };
  return { action: "restore", effect: "restored" };
}

/**
 * Whether `now` lies on the upgrade path from `before` to `wanted`: every
 * revision of `now` is known, at or below `wanted`, and at or above `before`
 * (a database an interrupted upgrade left part-way). False for anything else:
 * revisions the code does not know, another branch, or below where it started.
 */
export function onUpgradePath(graph: GraphView, before: readonly string[], now: readonly string[], wanted: string): boolean {
  if (!graph.revisions.has(wanted) || graph.unknown(before).length > 0 || graph.unknown(now).length > 0) return false;
  const upToWanted = graph.ancestorsOrSelf([wanted]);
  if (!now.every((id) => upToWanted.has(id))) return false;
  const belowNow = graph.ancestorsOrSelf(now);
  return before.every((id) => belowNow.has(id));
}

/** The facts about a migration the agent was cut off in (kill -9, crash, reboot), read after it came back. */
export interface InterruptedMigrationFacts {
  readonly targetId: string;
  /** The interrupted operation's kind; only `migrate` is ever resumed forward. */
  readonly operation: string;
  /** The migration ran with the app instances serving (job strategy): they may have written since the backup. */
  readonly online: boolean;
  /** The database's revisions when the operation started, the revision it was going to, and now. */
  readonly before: readonly string[];
  readonly wanted: string;
  readonly now: readonly string[];
  /** `now` is on the upgrade path from `before` to `wanted` (see onUpgradePath). */
  readonly onPath: boolean;
  /**
   * The revision is still `before` but the schema is not the backup's: the cut-off
   * revision left some of its DDL behind (SQLite under pysqlite commits DDL as it
   * runs), so the database is at no revision at all and re-running would collide.
   */
  readonly partial: boolean;
  /** Integrity check passed and no `_alembic_tmp_*` batch tables were left. */
  readonly intact: boolean;
  /** App instances of the target that are running now. */
  readonly runningApps: readonly string[];
  /** The verified backup the operation took before changing anything ('' when it took none). */
  readonly backupId: string;
}

export type InterruptedMigrationDecision =
  /** Already at the wanted revision and intact: keep it, nothing to run. */
  | { readonly action: "accept"; readonly message: string }
  /** At a known revision on the path: run `alembic upgrade <wanted>` again from there; nothing is lost. */
  | { readonly action: "resume-forward"; readonly message: string }
  /**
   * Not at a known revision on the path (or an offline migration, whose backup
   * is exact): restore. `losesWrites`: the app wrote since the backup, and a
   * restore discards those rows; the message says so plainly.
   */
  | { readonly action: "restore"; readonly losesWrites: boolean; readonly message: string };

/**
 * What to do with an interrupted migration. An online migration (job
 * strategy) goes forward whenever the database is provably at a revision on
 * its path — Alembic commits each revision, so the run can continue from
 * there and the rows the app wrote meanwhile survive. Restore is the answer
 * only when that is not so (partial revision, damaged database, off path, not
 * a migrate), and for an offline migration (maintenance: the apps were
 * stopped, so the backup holds everything and restoring loses nothing).
 * Never decides anything by itself: the caller carries it out.
 */
export function decideInterruptedMigration(facts: InterruptedMigrationFacts): InterruptedMigrationDecision {
  const at = facts.now.join(",") || "no revision";
  const losesWrites = facts.online || facts.runningApps.length > 0;
  const cost = losesWrites
    ? `. Restoring LOSES every row the app wrote to ${facts.targetId} since that backup was taken (the app ${facts.online ? "kept running during the migration" : "is running now"})` +
      `${facts.runningApps.length > 0 ? `; stop the app instances (${facts.runningApps.join(", ")}) first` : ""}, then run flotilla recover ${facts.targetId} --action restore`
    : ": the app was stopped for the migration, so the backup holds every row and nothing is lost";
  const restore = (why: string): InterruptedMigrationDecision => ({
    action: "restore",
    losesWrites,
    message: `${why}; it must be restored from backup ${facts.backupId || "(none taken)"}${cost}`,
  });
  if (facts.intact && facts.now.includes(facts.wanted)) {
    return { action: "accept", message: `${facts.targetId} is at the wanted revision ${facts.wanted} and intact: kept as it is` };
  }
  if (facts.operation !== "migrate") return restore(`an interrupted ${facts.operation} left ${facts.targetId} at ${at}`);
  if (!facts.online) return restore(`the offline migration of ${facts.targetId} was interrupted at ${at}`);
  if (!facts.intact) return restore(`the interrupted migration left ${facts.targetId} damaged (integrity check failed or batch tables left behind) at ${at}`);
  if (facts.partial) return restore(`the interrupted migration left part of a revision's changes in ${facts.targetId} (schema differs from revision ${at})`);
  if (!facts.onPath) return restore(`${facts.targetId} is at ${at}, which is not on the path from ${facts.before.join(",") || "base"} to ${facts.wanted}`);
  return {
    action: "resume-forward",
    message: `${facts.targetId} is at ${at}, on the path from ${facts.before.join(",") || "base"} to ${facts.wanted}: the migration goes on from there (nothing the app wrote is lost)`,
  };
}
