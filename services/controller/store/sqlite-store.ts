import { mkdirSync } from "node:fs";
import path from "node:path";
import Database from "better-sqlite3";
import { FlotillaError } from "../../common/errors.js";
import { truncatedAuditError } from "../core/audit-anchor.js";
import type { AgentRecord, AuditFilter, AuditRow, ControllerStore, LeaseResult, NewAuditRow, RolloutDoc, ScheduleDoc } from "../core/ports.js";

/** prev_hash of the first audit row. */
const GENESIS_HASH = "0".repeat(64);

/** How long a writer waits for another connection's write lock before failing (ms). */
const BUSY_TIMEOUT_MS = 5_000;

const SCHEMA = `
CREATE TABLE IF NOT EXISTS rollouts (
  id TEXT PRIMARY KEY,
  status TEXT NOT NULL,
  created_at TEXT NOT NULL,
  version INTEGER NOT NULL,
  doc TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS rollouts_status ON rollouts (status);
CREATE INDEX IF NOT EXISTS rollouts_created ON rollouts (created_at);
CREATE TABLE IF NOT EXISTS audit_anchor (
  id INTEGER PRIMARY KEY CHECK (id = 1),
  seq INTEGER NOT NULL,
  hash TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS leases (
  target_id TEXT PRIMARY KEY,
  rollout_id TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS leases_rollout ON leases (rollout_id);
CREATE TABLE IF NOT EXISTS agents (
  id TEXT PRIMARY KEY,
  address TEXT NOT NULL,
  source TEXT NOT NULL,
  last_seen TEXT
);
CREATE TABLE IF NOT EXISTS schedules (
  name TEXT PRIMARY KEY,
  doc TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS schedule_fires (
  name TEXT NOT NULL,
  slot TEXT NOT NULL,
  fired_at TEXT NOT NULL,
  PRIMARY KEY (name, slot)
);
CREATE TABLE IF NOT EXISTS audit_log (
  seq INTEGER PRIMARY KEY,
  time TEXT NOT NULL,
  actor TEXT NOT NULL,
  action TEXT NOT NULL,
  target TEXT NOT NULL,
  args TEXT NOT NULL,
  outcome TEXT NOT NULL,
  detail TEXT NOT NULL,
  prev_hash TEXT NOT NULL,
  hash TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS audit_log_time ON audit_log (time);
-- The anchor moves forward in the same statement as the row it names, whoever inserts it
-- (so an append is one statement, one commit); it never moves back, so a tail cut later
-- leaves the anchor ahead of the log.
CREATE TRIGGER IF NOT EXISTS audit_log_anchor AFTER INSERT ON audit_log BEGIN
  INSERT INTO audit_anchor (id, seq, hash) VALUES (1, NEW.seq, NEW.hash)
    ON CONFLICT (id) DO UPDATE SET seq = excluded.seq, hash = excluded.hash WHERE excluded.seq > audit_anchor.seq;
END;
`;

interface RolloutRowDb {
  doc: string;
  version: number;
}
interface AgentRowDb {
  id: string;
  address: string;
  source: string;
  last_seen: string | null;
}
interface AuditRowDb {
  seq: number;
  time: string;
  actor: string;
  action: string;
  target: string;
  args: string;
  outcome: string;
  detail: string;
  prev_hash: string;
  hash: string;
}

type Statements = ReturnType<typeof prepare>;

function prepare(db: Database.Database) {
  return {
    insertRollout: db.prepare("INSERT INTO rollouts (id, status, created_at, version, doc) VALUES (?, ?, ?, ?, ?)"),
    updateRollout: db.prepare("UPDATE rollouts SET status = ?, doc = ?, version = version + 1 WHERE id = ? AND version = ?"),
    rolloutExists: db.prepare("SELECT 1 FROM rollouts WHERE id = ?").pluck(),
    getRollout: db.prepare("SELECT doc, version FROM rollouts WHERE id = ?"),
    listRollouts: db.prepare("SELECT doc, version FROM rollouts ORDER BY created_at DESC, rowid DESC LIMIT ?"),
    listActive: db.prepare("SELECT doc, version FROM rollouts WHERE status IN ('pending', 'running') ORDER BY created_at, rowid"),
    leaseHolder: db.prepare("SELECT rollout_id FROM leases WHERE target_id = ?").pluck(),
    insertLease: db.prepare("INSERT OR IGNORE INTO leases (target_id, rollout_id) VALUES (?, ?)"),
    releaseAll: db.prepare("DELETE FROM leases WHERE rollout_id = ?"),
    releaseOne: db.prepare("DELETE FROM leases WHERE rollout_id = ? AND target_id = ?"),
    listLeases: db.prepare("SELECT target_id, rollout_id FROM leases ORDER BY target_id"),
    upsertAgent: db.prepare(
      "INSERT INTO agents (id, address, source, last_seen) VALUES (?, ?, ?, ?) " +
        "ON CONFLICT (id) DO UPDATE SET address = excluded.address, source = excluded.source, last_seen = excluded.last_seen",
    ),
    listAgents: db.prepare("SELECT id, address, source, last_seen FROM agents ORDER BY id"),
    upsertSchedule: db.prepare("INSERT INTO schedules (name, doc) VALUES (?, ?) ON CONFLICT (name) DO UPDATE SET doc = excluded.doc"),
    removeSchedule: db.prepare("DELETE FROM schedules WHERE name = ?"),
    listSchedules: db.prepare("SELECT doc FROM schedules ORDER BY name").pluck(),
    claimFire: db.prepare("INSERT OR IGNORE INTO schedule_fires (name, slot, fired_at) VALUES (?, ?, ?)"),
    auditTail: db.prepare("SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1"),
    auditAnchor: db.prepare("SELECT seq, hash FROM audit_anchor WHERE id = 1"),
    auditAnchorSet: db.prepare(
      "INSERT INTO audit_anchor (id, seq, hash) VALUES (1, ?, ?) ON CONFLICT (id) DO UPDATE SET seq = excluded.seq, hash = excluded.hash WHERE excluded.seq > audit_anchor.seq",
    ),
    auditInsert: db.prepare(
      "INSERT INTO audit_log (seq, time, actor, action, target, args, outcome, detail, prev_hash, hash) " + "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
    ),
    // The fast path: one autocommit statement (SQLite takes the write lock before it reads, like
    // BEGIN IMMEDIATE) that inserts row n+1 only if the anchor and the tail are still the row
    // (n, prev) this connection last wrote or read; the trigger moves the anchor with it.
    auditInsertAfter: db.prepare(
      "INSERT INTO audit_log (seq, time, actor, action, target, args, outcome, detail, prev_hash, hash) " +
        "SELECT ?, ?, ?, ?, ?, ?, ?, ?, ?, ? " +
        "WHERE EXISTS (SELECT 1 FROM audit_anchor WHERE id = 1 AND seq = ? AND hash = ?) " +
        "AND EXISTS (SELECT 1 FROM audit_log WHERE seq = ? AND hash = ?)",
    ),
    auditRead: db.prepare("SELECT * FROM audit_log WHERE seq > ? ORDER BY seq LIMIT ?"),
  };
}

type Transactions = ReturnType<typeof transactions>;

/** Built once per connection: db.transaction() builds its wrapper functions anew on every call (measured: half the cost of an append). */
function transactions(st: Statements, db: Database.Database) {
  return {
    // Run with .immediate(): BEGIN IMMEDIATE takes the write lock before the
    // tail is read, so two connections to one file cannot extend the same tail.
    appendAudit: db.transaction((row: NewAuditRow, seal: (seq: number, prevHash: string) => string): AuditRow => {
      const tail = st.auditTail.get() as { seq: number; hash: string } | undefined;
      const prevSeq = tail?.seq ?? 0;
      const prevHash = tail?.hash ?? GENESIS_HASH;
      const anchor = st.auditAnchor.get() as { seq: number; hash: string } | undefined;
      if (anchor !== undefined && (prevSeq < anchor.seq || (prevSeq === anchor.seq && prevHash !== anchor.hash))) {
        throw truncatedAuditError("store's audit anchor", anchor.seq, prevSeq);
      }
      const hash = seal(prevSeq, prevHash);
      const seq = prevSeq + 1;
      st.auditInsert.run(seq, row.time, row.actor, row.action, row.target, row.args, row.outcome, row.detail, prevHash, hash);
      // The trigger audit_log_anchor has moved the anchor already; this covers a database whose trigger was dropped.
      st.auditAnchorSet.run(seq, hash);
      return { seq, ...row, prevHash, hash };
    }),
    acquireLeases: db.transaction((rolloutId: string, ids: readonly string[]): LeaseResult => {
      for (const targetId of ids) {
        const holder = st.leaseHolder.get(targetId) as string | undefined;
        if (holder !== undefined && holder !== rolloutId) return { ok: false, targetId, heldBy: holder };
      }
      for (const targetId of ids) st.insertLease.run(targetId, rolloutId);
      return { ok: true };
    }),
    releaseLeases: db.transaction((rolloutId: string, ids: readonly string[]): void => {
      for (const targetId of ids) st.releaseOne.run(rolloutId, targetId);
    }),
    saveRollout: db.transaction((doc: RolloutDoc, json: string): void => {
      const changed = st.updateRollout.run(doc.status, json, doc.id, doc.version).changes;
      if (changed === 1) return;
      if (st.rolloutExists.get(doc.id) === undefined) throw new FlotillaError("NOT_FOUND", `rollout ${doc.id} not found`);
      throw new FlotillaError("PRECONDITION_FAILED", "stale rollout version");
    }),
  };
}

function toRollout(row: RolloutRowDb): RolloutDoc {
  const doc = JSON.parse(row.doc) as RolloutDoc;
  doc.version = row.version;
  return doc;
}

function toAudit(r: AuditRowDb): AuditRow {
  return {
    seq: r.seq,
    time: r.time,
    actor: r.actor,
    action: r.action,
    target: r.target,
    args: r.args,
    outcome: r.outcome as AuditRow["outcome"],
    detail: r.detail,
    prevHash: r.prev_hash,
    hash: r.hash,
  };
}

function checkLimit(limit: number): void {
  if (!Number.isSafeInteger(limit) || limit < 0) {
    throw new FlotillaError("INVALID_ARGUMENT", `limit must be a non-negative integer, got ${String(limit)}`);
  }
}

function isConstraintError(err: unknown): boolean {
  const code = (err as { code?: unknown } | null)?.code;
  return typeof code === "string" && code.startsWith("SQLITE_CONSTRAINT");
}

/**
 * The controller store on one SQLite file (better-sqlite3): WAL journal,
 * synchronous=FULL (every commit is on disk before the call returns), a
 * busy timeout so several connections to one file wait rather than fail.
 * The constructor does no I/O; `init()` opens the file (creating its folder)
 * and the tables. Calls are synchronous underneath, so each one is atomic and
 * never interleaves with another call in this process.
 */
export class SqliteStore implements ControllerStore {
  readonly #file: string;
  #db: Database.Database | undefined;
  #st: Statements | undefined;
  #tx: Transactions | undefined;
  #closed = false;
  /** (seq, hash) of the audit row this connection last appended: the fast path's guess at the tail. */
  #auditTail: { seq: number; hash: string } | undefined;

  /** `file` is the database file path (absolute, or relative to the working directory). */
  constructor(file: string) {
    this.#file = file;
  }

  /** Opens the file and creates the tables if needed. Idempotent. */
  async init(): Promise<void> {
    if (this.#db !== undefined) return;
    if (this.#closed) throw new FlotillaError("INTERNAL", "the SQLite store is closed");
    mkdirSync(path.dirname(path.resolve(this.#file)), { recursive: true, mode: 0o700 });
    const db = new Database(this.#file, { timeout: BUSY_TIMEOUT_MS });
    try {
      db.pragma("journal_mode = WAL");
      db.pragma("synchronous = FULL");
      db.pragma(`busy_timeout = ${BUSY_TIMEOUT_MS}`);
      db.exec(SCHEMA);
      this.#st = prepare(db);
      this.#tx = transactions(this.#st, db);
    } catch (err) {
      db.close();
      throw err;
    }
    this.#db = db;
  }

  /** Closes the file. Every later call throws. Idempotent. */
  async close(): Promise<void> {
    this.#closed = true;
    const db = this.#db;
    this.#db = undefined;
    this.#st = undefined;
    this.#tx = undefined;
    if (db !== undefined && db.open) db.close();
  }

  #open(): { db: Database.Database; st: Statements; tx: Transactions } {
    if (this.#db === undefined || this.#st === undefined || this.#tx === undefined) {
      throw new FlotillaError("INTERNAL", this.#closed ? "the SQLite store is closed" : "the SQLite store is not initialised: call init() first");
    }
    return { db: this.#db, st: this.#st, tx: this.#tx };
  }

  async createRollout(doc: RolloutDoc): Promise<void> {
    const { st } = this.#open();
    try {
      st.insertRollout.run(doc.id, doc.status, doc.createdAt, doc.version, JSON.stringify(doc));
    } catch (err) {
      if (isConstraintError(err)) throw new FlotillaError("INVALID_ARGUMENT", `rollout ${doc.id} already exists`, { cause: err });
      throw err;
    }
  }

  async saveRollout(doc: RolloutDoc): Promise<void> {
    const next = doc.version + 1;
    this.#open().tx.saveRollout.immediate(doc, JSON.stringify({ ...doc, version: next }));
    doc.version = next;
  }

  async getRollout(id: string): Promise<RolloutDoc | null> {
    const row = this.#open().st.getRollout.get(id) as RolloutRowDb | undefined;
    return row === undefined ? null : toRollout(row);
  }

  async listRollouts(limit: number): Promise<RolloutDoc[]> {
    checkLimit(limit);
    return (this.#open().st.listRollouts.all(limit) as RolloutRowDb[]).map(toRollout);
  }

  async listActiveRollouts(): Promise<RolloutDoc[]> {
    return (this.#open().st.listActive.all() as RolloutRowDb[]).map(toRollout);
  }

  async acquireLeases(rolloutId: string, targetIds: readonly string[]): Promise<LeaseResult> {
    return this.#open().tx.acquireLeases.immediate(rolloutId, [...new Set(targetIds)]);
  }

  async releaseLeases(rolloutId: string, targetIds?: readonly string[]): Promise<void> {
    const { st, tx } = this.#open();
    if (targetIds === undefined) {
      st.releaseAll.run(rolloutId);
      return;
    }
    tx.releaseLeases.immediate(rolloutId, targetIds);
  }

  async listLeases(): Promise<Record<string, string>> {
    const out: Record<string, string> = {};
    for (const r of this.#open().st.listLeases.all() as Array<{ target_id: string; rollout_id: string }>) {
      out[r.target_id] = r.rollout_id;
    }
    return out;
  }

  async upsertAgent(agent: AgentRecord): Promise<void> {
    this.#open().st.upsertAgent.run(agent.id, agent.address, agent.source, agent.lastSeen ?? null);
  }

  async listAgents(): Promise<AgentRecord[]> {
    return (this.#open().st.listAgents.all() as AgentRowDb[]).map((r) => {
      const a: AgentRecord = { id: r.id, address: r.address, source: r.source as AgentRecord["source"] };
      if (r.last_seen !== null) a.lastSeen = r.last_seen;
      return a;
    });
  }

  async upsertSchedule(s: ScheduleDoc): Promise<void> {
    this.#open().st.upsertSchedule.run(s.name, JSON.stringify(s));
  }

  async removeSchedule(name: string): Promise<boolean> {
    return this.#open().st.removeSchedule.run(name).changes > 0;
  }

  async listSchedules(): Promise<ScheduleDoc[]> {
    return (this.#open().st.listSchedules.all() as string[]).map((d) => JSON.parse(d) as ScheduleDoc);
  }

  async claimScheduleFire(name: string, slot: string): Promise<boolean> {
    return this.#open().st.claimFire.run(name, slot, new Date().toISOString()).changes === 1;
  }

  async appendAudit(row: NewAuditRow, seal: (seq: number, prevHash: string) => string): Promise<AuditRow> {
    const { st, tx } = this.#open();
    const tail = this.#auditTail;
    this.#auditTail = undefined;
    if (tail !== undefined) {
      // Fast path: guess that the tail is still the row this connection last saw. The statement
      // checks the guess against the anchor and the tail row itself and inserts nothing when it
      // is wrong (another connection appended, or rows were cut or changed): then the slow path
      // reads the truth under the write lock. A guess cannot fork the chain: row n+1 is
      // inserted only on top of the row n it was sealed with, and seq is the primary key.
      let hash: string | undefined;
      try {
        hash = seal(tail.seq, tail.hash);
      } catch {
        // The caller refused this tail (its own anchor is ahead): let the slow path decide on the store's real tail.
      }
      if (hash !== undefined) {
        const seq = tail.seq + 1;
        let inserted = 0;
        try {
          inserted = st.auditInsertAfter.run(
            seq,
            row.time,
            row.actor,
            row.action,
            row.target,
            row.args,
            row.outcome,
            row.detail,
            tail.hash,
            hash,
            tail.seq,
            tail.hash,
            tail.seq,
            tail.hash,
          ).changes;
        } catch (err) {
          if (!isConstraintError(err)) throw err;
        }
        if (inserted === 1) {
          this.#auditTail = { seq, hash };
          return { seq, ...row, prevHash: tail.hash, hash };
        }
      }
    }
    const stored = tx.appendAudit.immediate(row, seal);
    this.#auditTail = { seq: stored.seq, hash: stored.hash };
    return stored;
  }

  async auditAnchor(): Promise<{ seq: number; hash: string } | null> {
    const r = this.#open().st.auditAnchor.get() as { seq: number; hash: string } | undefined;
    return r === undefined ? null : { seq: Number(r.seq), hash: r.hash };
  }

  async readAudit(afterSeq: number, limit: number): Promise<AuditRow[]> {
    checkLimit(limit);
    return (this.#open().st.auditRead.all(afterSeq, limit) as AuditRowDb[]).map(toAudit);
  }

  /** Matching rows in seq order; with `limit`, the newest `limit` of them. `since`/`until` are inclusive ISO times. */
  async queryAudit(filter: AuditFilter): Promise<AuditRow[]> {
    const { db } = this.#open();
    const where: string[] = [];
    const params: Array<string | number> = [];
    if (filter.since !== undefined) {
      where.push("time >= ?");
      params.push(filter.since);
    }
    if (filter.until !== undefined) {
      where.push("time <= ?");
      params.push(filter.until);
    }
    if (filter.target !== undefined) {
      where.push("target = ?");
      params.push(filter.target);
    }
    if (filter.actor !== undefined) {
      where.push("actor = ?");
      params.push(filter.actor);
    }
    if (filter.action !== undefined) {
      where.push("action = ?");
      params.push(filter.action);
    }
    if (filter.outcome !== undefined) {
      where.push("outcome = ?");
      params.push(filter.outcome);
    }
    if (filter.beforeSeq !== undefined) {
      where.push("seq < ?");
      params.push(filter.beforeSeq);
    }
    const cond = where.length > 0 ? `WHERE ${where.join(" AND ")}` : "";
    let sql = `SELECT * FROM audit_log ${cond} ORDER BY seq`;
    if (filter.limit !== undefined) {
      checkLimit(filter.limit);
      sql = `SELECT * FROM (SELECT * FROM audit_log ${cond} ORDER BY seq DESC LIMIT ?) ORDER BY seq`;
      params.push(filter.limit);
    }
    return (db.prepare(sql).all(...params) as AuditRowDb[]).map(toAudit);
  }
}
