import Database from "better-sqlite3";
import { mkdirSync } from "node:fs";
import { join } from "node:path";
import { FlotillaError } from "../../common/errors.js";
import type { JournalPort, OperationRow, OperationState, RevisionTiming } from "../core/ports.js";

export type { OperationRow, OperationState } from "../core/ports.js";

type Raw = {
  id: string;
  target_id: string;
  kind: string;
  state: OperationState;
  started_at: string;
  finished_at: string | null;
  backup_id: string;
  revision_before: string;
  revision_after: string;
  to_revision: string;
  error_code: string;
  message: string;
  rollout_id: string;
};

function fromRaw(r: Raw): OperationRow {
  return {
    id: r.id,
    targetId: r.target_id,
    kind: r.kind,
    state: r.state,
    startedAt: r.started_at,
    finishedAt: r.finished_at ?? "",
    backupId: r.backup_id,
    revisionBefore: JSON.parse(r.revision_before) as string[],
    revisionAfter: JSON.parse(r.revision_after) as string[],
    toRevision: r.to_revision,
    errorCode: r.error_code,
    message: r.message,
    rolloutId: r.rollout_id,
  };
}

/**
 * The agent's local journal (better-sqlite3, synchronous=FULL): one row per
 * operation and one lock row per busy target. A lock row outlives the process:
 * after a crash the target stays locked by the interrupted operation until a
 * Recover operation resolves it.
 */
export class SqliteJournal implements JournalPort {
  private db: Database.Database | undefined;
  constructor(private readonly dataDir: string) {}

  open(): void {
    mkdirSync(this.dataDir, { recursive: true, mode: 0o700 });
    const db = new Database(join(this.dataDir, "journal.db"));
    db.pragma("journal_mode = WAL");
    db.pragma("synchronous = FULL");
    db.pragma("busy_timeout = 5000");
    db.exec(`
      CREATE TABLE IF NOT EXISTS operations (
        id TEXT PRIMARY KEY, target_id TEXT NOT NULL, kind TEXT NOT NULL, state TEXT NOT NULL,
        started_at TEXT NOT NULL, finished_at TEXT, backup_id TEXT NOT NULL DEFAULT '',
        revision_before TEXT NOT NULL DEFAULT '[]', revision_after TEXT NOT NULL DEFAULT '[]',
        to_revision TEXT NOT NULL DEFAULT '', error_code TEXT NOT NULL DEFAULT '', message TEXT NOT NULL DEFAULT '',
        rollout_id TEXT NOT NULL DEFAULT ''
      );
      CREATE INDEX IF NOT EXISTS operations_target ON operations(target_id, started_at);
      CREATE TABLE IF NOT EXISTS target_locks (
        target_id TEXT PRIMARY KEY, operation_id TEXT NOT NULL, acquired_at TEXT NOT NULL
      );
      CREATE TABLE IF NOT EXISTS target_epochs (
        target_id TEXT PRIMARY KEY, epoch INTEGER NOT NULL, seen_at TEXT NOT NULL
      );
      CREATE TABLE IF NOT EXISTS revision_timings (
        target_id TEXT NOT NULL, revision TEXT NOT NULL, direction TEXT NOT NULL,
        duration_ms INTEGER NOT NULL, source TEXT NOT NULL, recorded_at TEXT NOT NULL,
        PRIMARY KEY (target_id, revision, direction)
      );`);
    this.db = db;
  }

  close(): void {
    this.db?.close();
    this.db = undefined;
  }

  private get d(): Database.Database {
    if (!this.db) throw new Error("journal is not open");
    return this.db;
  }

  /** Marks operations left running by a previous process as interrupted; returns them. Locks stay held. */
  markInterrupted(): OperationRow[] {
    const rows = this.d.prepare("SELECT * FROM operations WHERE state = 'running'").all() as Raw[];
    this.d.prepare("UPDATE operations SET state = 'interrupted', message = 'the agent stopped while this operation was running' WHERE state = 'running'").run();
    return rows.map((r) => ({ ...fromRaw(r), state: "interrupted" as const }));
  }

  /**
   * Starts an operation: takes the target's lock and records the operation in
   * one transaction. Throws TARGET_BUSY naming the holder when locked.
   */
  begin(
    op: { id: string; targetId: string; kind: string; toRevision?: string; rolloutId?: string; backupId?: string; revisionBefore?: string[] },
    takeLock = true,
  ): void {
    const now = new Date().toISOString();
    const tx = this.d.transaction(() => {
      if (this.d.prepare("SELECT 1 FROM operations WHERE id = ?").get(op.id)) {
        throw new FlotillaError("INVALID_ARGUMENT", `operation id ${op.id} was already used; every operation needs a new id`);
      }
      if (takeLock) {
        const held = this.d.prepare("SELECT operation_id FROM target_locks WHERE target_id = ?").get(op.targetId) as { operation_id: string } | undefined;
        if (held) {
          const holder = this.d.prepare("SELECT kind, state FROM operations WHERE id = ?").get(held.operation_id) as
            | { kind: string; state: string }
            | undefined;
          const what = holder ? `${holder.kind} operation ${held.operation_id} (${holder.state})` : `operation ${held.operation_id}`;
          const hint =
            holder?.state === "interrupted"
              ? "; it was interrupted: resolve it with Recover (restore its backup, or accept the database at its target revision)"
              : holder?.state === "needs-restore"
                ? "; it failed with the database changed and needs its backup restored: flotilla recover TARGET --action restore"
                : "; wait for it to finish";
          throw new FlotillaError("TARGET_BUSY", `target ${op.targetId} is busy with ${what}${hint}`);
        }
        this.d.prepare("INSERT INTO target_locks (target_id, operation_id, acquired_at) VALUES (?, ?, ?)").run(op.targetId, op.id, now);
      }
      this.d
        .prepare(`INSERT INTO operations (id, target_id, kind, state, started_at, to_revision, rollout_id, backup_id, revision_before)
        VALUES (?, ?, ?, 'running', ?, ?, ?, ?, ?)`)
        .run(op.id, op.targetId, op.kind, now, op.toRevision ?? "", op.rolloutId ?? "", op.backupId ?? "", JSON.stringify(op.revisionBefore ?? []));
    });
    tx.immediate();
  }

  /** Records progress facts on a running operation (durable before the next action). */
  update(id: string, fields: { backupId?: string; revisionBefore?: string[]; revisionAfter?: string[]; message?: string }): void {
    const sets: string[] = [];
    const vals: unknown[] = [];
    if (fields.backupId !== undefined) {
      sets.push("backup_id = ?");
      vals.push(fields.backupId);
    }
    if (fields.revisionBefore !== undefined) {
      sets.push("revision_before = ?");
      vals.push(JSON.stringify(fields.revisionBefore));
    }
    if (fields.revisionAfter !== undefined) {
      sets.push("revision_after = ?");
      vals.push(JSON.stringify(fields.revisionAfter));
    }
    if (fields.message !== undefined) {
      sets.push("message = ?");
      vals.push(fields.message);
    }
    if (sets.length === 0) return;
    this.d.prepare(`UPDATE operations SET ${sets.join(", ")} WHERE id = ?`).run(...vals, id);
  }

  /** Ends an operation and releases the target lock it holds. */
  finish(id: string, state: Exclude<OperationState, "running">, fields: { errorCode?: string; message?: string; revisionAfter?: string[] } = {}): void {
    const tx = this.d.transaction(() => {
      this.d
        .prepare("UPDATE operations SET state = ?, finished_at = ?, error_code = ?, message = ?, revision_after = COALESCE(?, revision_after) WHERE id = ?")
        .run(
          state,
          new Date().toISOString(),
          fields.errorCode ?? "",
          fields.message ?? "",
          fields.revisionAfter ? JSON.stringify(fields.revisionAfter) : null,
          id,
        );
      this.d.prepare("DELETE FROM target_locks WHERE operation_id = ?").run(id);
    });
    tx.immediate();
  }

  hold(id: string, fields: { errorCode?: string; message?: string; revisionAfter?: string[] }): void {
    this.d
      .prepare(
        "UPDATE operations SET state = 'needs-restore', finished_at = ?, error_code = ?, message = ?, revision_after = COALESCE(?, revision_after) WHERE id = ?",
      )
      .run(new Date().toISOString(), fields.errorCode ?? "", fields.message ?? "", fields.revisionAfter ? JSON.stringify(fields.revisionAfter) : null, id);
  }

  /** Moves a target's lock from an interrupted operation to the recovering one. */
  transferLock(targetId: string, fromOperation: string, toOperation: string): void {
    const r = this.d.prepare("UPDATE target_locks SET operation_id = ? WHERE target_id = ? AND operation_id = ?").run(toOperation, targetId, fromOperation);
    if (r.changes !== 1) throw new FlotillaError("PRECONDITION_FAILED", `operation ${fromOperation} does not hold the lock of ${targetId}`);
  }

  /**
   * Fencing: records that a controller at `epoch` commands `targetId`. Throws
   * FENCED-style PRECONDITION_FAILED when a higher epoch was already seen
   * (a replica that lost its leadership), else remembers the highest one.
   */
  observeEpoch(targetId: string, epoch: number): void {
    const tx = this.d.transaction(() => {
      const seen = this.d.prepare("SELECT epoch FROM target_epochs WHERE target_id = ?").pluck().get(targetId) as number | undefined;
      if (seen !== undefined && epoch < seen) {
        throw new FlotillaError(
          "PRECONDITION_FAILED",
          `refused: this command comes from controller epoch ${epoch}, but ${targetId} already obeys epoch ${seen} (a newer leader): the sending controller replica is no longer the leader and must not act; send changes to the current leader`,
        );
      }
      if (seen === undefined || epoch > seen) {
        this.d
          .prepare(
            "INSERT INTO target_epochs (target_id, epoch, seen_at) VALUES (?, ?, ?) ON CONFLICT (target_id) DO UPDATE SET epoch = excluded.epoch, seen_at = excluded.seen_at",
          )
          .run(targetId, epoch, new Date().toISOString());
      }
    });
    tx.immediate();
  }

  /** Every target's highest controller epoch seen, and when (for the offline reset). */
  epochs(): { targetId: string; epoch: number; seenAt: string }[] {
    return (
      this.d.prepare("SELECT target_id, epoch, seen_at FROM target_epochs ORDER BY target_id").all() as { target_id: string; epoch: number; seen_at: string }[]
    ).map((r) => ({ targetId: r.target_id, epoch: r.epoch, seenAt: r.seen_at }));
  }

  /**
   * Forgets a target's controller epoch and records it as a finished
   * `reset-fencing` operation, in one transaction (never one without the
   * other). Returns the epoch forgotten; 0 when none was recorded (then
   * nothing is written). Only the offline reset calls this.
   */
  resetEpoch(targetId: string, op: { id: string; message: string }): number {
    let cleared = 0;
    const tx = this.d.transaction(() => {
      const seen = this.d.prepare("SELECT epoch FROM target_epochs WHERE target_id = ?").pluck().get(targetId) as number | undefined;
      if (seen === undefined) return;
      const now = new Date().toISOString();
      this.d.prepare("DELETE FROM target_epochs WHERE target_id = ?").run(targetId);
      this.d
        .prepare(`INSERT INTO operations (id, target_id, kind, state, started_at, finished_at, message) VALUES (?, ?, 'reset-fencing', 'succeeded', ?, ?, ?)`)
        .run(op.id, targetId, now, now, op.message.replaceAll("{epoch}", String(seen)));
      cleared = seen;
    });
    tx.immediate();
    return cleared;
  }

  /** The highest controller epoch seen for a target (0: none). */
  epochOf(targetId: string): number {
    return (this.d.prepare("SELECT epoch FROM target_epochs WHERE target_id = ?").pluck().get(targetId) as number | undefined) ?? 0;
  }

  get(id: string): OperationRow | undefined {
    const r = this.d.prepare("SELECT * FROM operations WHERE id = ?").get(id) as Raw | undefined;
    return r ? fromRaw(r) : undefined;
  }

  list(targetId: string | undefined, limit: number): OperationRow[] {
    const rows = (
      targetId
        ? this.d.prepare("SELECT * FROM operations WHERE target_id = ? ORDER BY started_at DESC LIMIT ?").all(targetId, limit)
        : this.d.prepare("SELECT * FROM operations ORDER BY started_at DESC LIMIT ?").all(limit)
    ) as Raw[];
    return rows.map(fromRaw);
  }

  lockHolder(targetId: string): string | undefined {
    const r = this.d.prepare("SELECT operation_id FROM target_locks WHERE target_id = ?").get(targetId) as { operation_id: string } | undefined;
    return r?.operation_id;
  }

  interrupted(targetId: string): string[] {
    return (
      this.d.prepare("SELECT id FROM operations WHERE target_id = ? AND state IN ('interrupted', 'needs-restore') ORDER BY started_at").all(targetId) as {
        id: string;
      }[]
    ).map((r) => r.id);
  }

  recordTimings(targetId: string, timings: readonly Omit<RevisionTiming, "recordedAt">[]): void {
    if (timings.length === 0) return;
    const now = new Date().toISOString();
    const put = this.d.prepare(`INSERT INTO revision_timings (target_id, revision, direction, duration_ms, source, recorded_at) VALUES (?, ?, ?, ?, ?, ?)
      ON CONFLICT (target_id, revision, direction) DO UPDATE SET duration_ms = excluded.duration_ms, source = excluded.source, recorded_at = excluded.recorded_at`);
    this.d.transaction(() => {
      for (const t of timings) put.run(targetId, t.revision, t.direction, Math.round(t.durationMs), t.source, now);
    })();
  }

  timings(targetId: string, direction: "upgrade" | "downgrade"): Map<string, RevisionTiming> {
    const rows = this.d
      .prepare("SELECT revision, direction, duration_ms, source, recorded_at FROM revision_timings WHERE target_id = ? AND direction = ?")
      .all(targetId, direction) as {
      revision: string;
      direction: "upgrade" | "downgrade";
      duration_ms: number;
      source: "migrate" | "rehearse";
      recorded_at: string;
    }[];
    return new Map(
      rows.map((r) => [r.revision, { revision: r.revision, direction: r.direction, durationMs: r.duration_ms, source: r.source, recordedAt: r.recorded_at }]),
    );
  }
}
