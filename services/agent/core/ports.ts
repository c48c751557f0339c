/**
 * The agent's ports: what its operations need from the outside world. Adapters
 * (services/agent/adapters/) implement them with real SQLite, PostgreSQL,
 * Alembic and app commands; core code never imports those technologies.
 */
import type { CompanionEntry } from "./companions.js";

export type DatabaseKind = "sqlite" | "postgresql";

/** Progress callback: one human line, optionally with byte counts. */
export type ProgressFn = (p: { line: string; source?: "backup" | "alembic" | "app" | "hook" | "agent"; bytesDone?: number; bytesTotal?: number }) => void;

/** Something other than the agent that holds the database open. */
export interface Holder {
  /** Process id (SQLite) or backend pid (PostgreSQL). */
  readonly pid: number;
  /** Command line (SQLite) or application_name/client address (PostgreSQL). */
  readonly description: string;
  /** PostgreSQL session state, e.g. "idle in transaction". */
  readonly state?: string;
}

export interface IntegrityResult {
  readonly ok: boolean;
  /** "ok", or the first problems reported. */
  readonly detail: string;
}

/** A finished backup artifact, before it is recorded in a manifest. */
export interface BackupArtifact {
  /** Absolute path of the artifact (a file, or a directory for pg_dump -Fd). */
  readonly path: string;
  readonly sizeBytes: number;
  readonly sha256: string;
  /** Row counts per table at backup time, for verification. */
  readonly tableCounts: Readonly<Record<string, number>>;
  /** Schema fingerprint (sha256 of the normalised schema) at backup time. */
  readonly schemaHash: string;
  readonly revisions: readonly string[];
  /** Tool that wrote it, e.g. "sqlite snapshot copy 3.50.4" or "pg_dump 15.14 -Fc -Z1". */
  readonly tool: string;
  /**
   * The verification the backup step already ran on the finished artifact: its
   * sha256 was taken from the finished bytes, and the same checks as
   * verifyBackup's decode (SQLite: integrity_check, schema, row counts and
   * revisions against the snapshot; PostgreSQL: a full pg_restore read) ran on
   * them. A caller verifying right after the backup uses it instead of reading
   * the file twice more; later verifications re-read the file. Never saved in a
   * manifest; absent when the adapter did not check.
   */
  readonly proof?: VerifyResult;
}

export interface VerifyResult {
  readonly ok: boolean;
  /** What was checked and what failed, one phrase each. */
  readonly detail: string;
}

/** One target database. Every method opens and closes its own connections. */
export interface DatabaseAdapter {
  readonly kind: DatabaseKind;
  /** Location with any password removed (for display). */
  readonly displayName: string;
  /** Whether the database exists at all (file present / database present). */
  exists(): Promise<boolean>;
  /** Rows of alembic_version; null when the table does not exist. */
  readRevisions(): Promise<string[] | null>;
  /** User tables (excluding sqlite internal tables). */
  listTables(): Promise<string[]>;
  listColumns(table: string): Promise<string[]>;
  /** Names of the user indexes (SQLite: named ones in sqlite_master; PostgreSQL: pg_indexes of the current schema). */
  listIndexes(): Promise<string[]>;
  /** Row count of every user table. */
  tableCounts(): Promise<Record<string, number>>;
  /** sha256 of a normalised description of the schema (tables, columns, indexes). */
  schemaHash(): Promise<string>;
  /** SQLite: PRAGMA integrity_check off the main thread; PostgreSQL: a read of every table (and amcheck when present). */
  integrityCheck(): Promise<IntegrityResult>;
  /**
   * Optional: prepares an integrity check now (SQLite starts its worker thread)
   * and runs it when `when` resolves true; null when it resolves false. Lets
   * the check's start-up overlap a migration that runs meanwhile.
   */
  integrityCheckAfter?(when: Promise<boolean>): Promise<IntegrityResult | null>;
  /** Database size in bytes (file + WAL, or pg_database_size). */
  sizeBytes(): Promise<number>;
  /** Other processes / sessions holding the database. */
  holders(): Promise<Holder[]>;
  /**
   * A consistent backup while the app may be writing, written to `destPath`
   * under a temporary name, fsynced and renamed into place. Never overwrites.
   */
  backup(destPath: string, onProgress: ProgressFn, signal?: AbortSignal): Promise<BackupArtifact>;
  /** Re-read the artifact: sha256 match and a full decode; row counts and schema against the manifest. */
  verifyBackup(artifact: BackupArtifact, onProgress: ProgressFn, signal?: AbortSignal): Promise<VerifyResult>;
  /**
   * Replace the database with the backup, atomically where the engine allows
   * (SQLite: write beside, fsync, rename, WAL/SHM removed; PostgreSQL: into a
   * fresh database that is then swapped in, or a clean restore).
   */
  restore(artifact: BackupArtifact, onProgress: ProgressFn, signal?: AbortSignal): Promise<void>;
  /** Consistent copy of this database to another location of the same kind (blue-green). */
  cloneTo(target: DatabaseAdapter, onProgress: ProgressFn, signal?: AbortSignal): Promise<void>;
  /** A throwaway copy for rehearsals; drop() removes it. */
  scratchCopy(onProgress: ProgressFn, signal?: AbortSignal): Promise<{ adapter: DatabaseAdapter; url: string; drop(): Promise<void> }>;
  /** Free bytes where backups of this database go. */
  freeBytes(dir: string): Promise<number>;
  /** The URL handed to Alembic as DATABASE_URL (with password, never logged). */
  alembicUrl(): string;
  /** A backup restored into scratch (temp SQLite file, scratch PostgreSQL database) for drills; drop() removes it. */
  scratchFromBackup?(
    artifact: BackupArtifact,
    onProgress: ProgressFn,
    signal?: AbortSignal,
  ): Promise<{ adapter: DatabaseAdapter; url: string; drop(): Promise<void> }>;
  /** Engine version and a schema description per table (PRAGMA table_info, or psql \d on PostgreSQL): never rows. */
  describe?(): Promise<{ serverVersion: string; tables: Record<string, string> }>;
  /** One configured read-only query (drill smoke tests): row count and the first value when numeric. */
  smokeQuery?(sql: string): Promise<{ rows: number; value: string }>;
}

/** One revision of the code's revision graph. */
export interface RevisionNode {
  readonly id: string;
  readonly down: readonly string[];
  readonly message: string;
}

/** The code's revision graph as the operations need it. */
export interface GraphView {
  readonly revisions: ReadonlyMap<string, RevisionNode>;
  readonly heads: readonly string[];
  readonly branchpoints: readonly string[];
  /** Hash of the versions folders the graph was built from. */
  readonly hash: string;
  /** Revisions an upgrade from `current` to `target` applies, parents first. */
  pending(current: readonly string[], target: string): string[];
  /** The revisions and everything below them (all ids must be known). */
  ancestorsOrSelf(ids: readonly string[]): Set<string>;
  /** The ids the graph does not contain (version skew). */
  unknown(ids: readonly string[]): string[];
}

export interface AlembicFailureInfo {
  readonly kind: string;
  readonly message: string;
  readonly hint: string;
  readonly changesMayBePartial: boolean;
}

export interface AlembicStep {
  readonly from: readonly string[];
  readonly to: string;
  readonly message: string;
  readonly direction: "upgrade" | "downgrade" | "stamp";
}

export interface AlembicRun {
  readonly ok: boolean;
  readonly exitCode: number | null;
  readonly stdout: string;
  readonly stderr: string;
  readonly durationMs: number;
  readonly failure?: AlembicFailureInfo;
  readonly steps: readonly AlembicStep[];
}

export interface AlembicRunOptions {
  readonly onLine?: (line: string, stream: "stdout" | "stderr") => void;
  readonly signal?: AbortSignal;
  readonly timeoutMs?: number;
  readonly extraEnv?: Readonly<Record<string, string>>;
}

/** The Alembic CLI of one target (its own folder, command, env and database URL). */
export interface AlembicPort {
  /** Revision graph, cached by a hash of the versions folders. */
  graph(): Promise<GraphView>;
  upgrade(to: string, opts: AlembicRunOptions): Promise<AlembicRun>;
  downgrade(to: string, opts: AlembicRunOptions): Promise<AlembicRun>;
  stamp(rev: string, opts: AlembicRunOptions & { purge?: boolean }): Promise<AlembicRun>;
  offlineSql(from: string | null, to: string, opts?: AlembicRunOptions): Promise<AlembicRun>;
  /** Runs a command that imports the revision modules (env problems surface here). */
  checkEnv(): Promise<AlembicRun>;
}

// ---------------------------------------------------------------- operation ports

/** A backup as recorded beside its artifact (`<id>.json`). */
export interface BackupManifest extends BackupArtifact {
  readonly id: string;
  readonly targetId: string;
  readonly kind: DatabaseKind;
  readonly createdAt: string;
  readonly source: string;
  readonly operationId: string;
  readonly rolloutId: string;
  readonly verified: boolean;
  readonly verifiedAt: string;
  readonly verification: string;
  /** Companion files stored in `<id>.files/` (backups.include), each with its sha256. */
  readonly companions?: readonly CompanionEntry[];
  /** Bytes this backup's companions hold, and the part it actually wrote (the rest is shared by hard links). */
  readonly companionBytes?: number;
  readonly companionNewBytes?: number;
  /** Output of the target's appVersion command when the backup was taken. */
  readonly appVersion?: string;
}

/** The backups of one target (adapter: BackupCatalog, a folder of artifacts and manifests). */
export interface BackupCatalogPort {
  /** Creates the folder and removes temp files left by a crash; returns the removed names. */
  prepare(): Promise<string[]>;
  /** A fresh id and the artifact path it will use. */
  newBackup(): { id: string; path: string };
  save(m: BackupManifest): Promise<void>;
  /** Removes a backup that did not complete (artifact, manifest, temp files); never throws. */
  discard(id: string): Promise<void>;
  /** Throws NOT_FOUND for an unknown id. */
  get(id: string): Promise<BackupManifest>;
  /** Newest first. */
  list(): Promise<BackupManifest[]>;
  lastVerified(): Promise<BackupManifest | undefined>;
  /** Deletes what retention allows (core/retention.ts: keep ∪ keepDays, never the newest verified or a protected one). Returns deleted ids. */
  prune(keep: number, protect: ReadonlySet<string>, keepDays?: number): Promise<string[]>;
  /** Folder holding a backup's companion files. */
  filesDir(id: string): string;
}

/**
 * `interrupted`: the agent stopped while it ran; `needs-restore`: it failed
 * with the database changed and could not restore it (other sessions held it).
 * Both keep the target locked until Recover resolves them.
 */
export type OperationState = "running" | "succeeded" | "failed" | "refused" | "interrupted" | "needs-restore" | "recovered";

export interface OperationRow {
  id: string;
  targetId: string;
  kind: string;
  state: OperationState;
  startedAt: string;
  finishedAt: string;
  backupId: string;
  revisionBefore: string[];
  revisionAfter: string[];
  toRevision: string;
  errorCode: string;
  message: string;
  rolloutId: string;
}

/** How long one revision took on one target, as remembered for estimates. */
export interface RevisionTiming {
  readonly revision: string;
  readonly direction: "upgrade" | "downgrade";
  readonly durationMs: number;
  /** "migrate" (a real run) or "rehearse" (a throwaway copy). */
  readonly source: "migrate" | "rehearse";
  readonly recordedAt: string;
}

/**
 * The agent's durable journal (adapter: SqliteJournal): one row per
 * operation, one lock row per busy target, and remembered revision timings.
 */
export interface JournalPort {
  /** Starts an operation, taking the target's lock unless `takeLock` is false. Throws TARGET_BUSY. */
  begin(
    op: { id: string; targetId: string; kind: string; toRevision?: string; rolloutId?: string; backupId?: string; revisionBefore?: string[] },
    takeLock?: boolean,
  ): void;
  update(id: string, fields: { backupId?: string; revisionBefore?: string[]; revisionAfter?: string[]; message?: string }): void;
  finish(id: string, state: Exclude<OperationState, "running">, fields?: { errorCode?: string; message?: string; revisionAfter?: string[] }): void;
  /** Ends an operation as needs-restore, keeping the target's lock until Recover. */
  hold(id: string, fields: { errorCode?: string; message?: string; revisionAfter?: string[] }): void;
  transferLock(targetId: string, fromOperation: string, toOperation: string): void;
  get(id: string): OperationRow | undefined;
  list(targetId: string | undefined, limit: number): OperationRow[];
  lockHolder(targetId: string): string | undefined;
  /** Operations of a target waiting for Recover (interrupted or needs-restore), oldest first. */
  interrupted(targetId: string): string[];
  /** Records how long revisions took (one row per revision, newest wins for estimates). */
  recordTimings(targetId: string, timings: readonly Omit<RevisionTiming, "recordedAt">[]): void;
  /** The latest known duration of each revision of a target, by revision id. */
  timings(targetId: string, direction: "upgrade" | "downgrade"): Map<string, RevisionTiming>;
}

export type AppState = "running" | "stopped" | "unknown";

/** One app instance configured on this host. */
export interface AppInstance {
  readonly id: string;
  readonly target: string;
  readonly color: "blue" | "green" | "";
  readonly stop?: readonly string[];
  readonly start?: readonly string[];
  readonly health?: string;
}

/** Stops, starts and health-checks app instances (adapter: AppControl). */
export interface AppControlPort {
  state(app: AppInstance): Promise<{ state: AppState; detail: string }>;
  stop(app: AppInstance, onProgress: ProgressFn, signal?: AbortSignal): Promise<{ ok: boolean; detail: string }>;
  start(app: AppInstance, onProgress: ProgressFn, signal?: AbortSignal): Promise<{ ok: boolean; detail: string }>;
}
