/**
 * The controller's ports. The rollout engine, the audit log and the API
 * handlers depend on these interfaces only; services/controller/store/ has one
 * adapter per database (better-sqlite3, pg), checked by one contract suite.
 */

import type { RolloutState, StepName, StepResult, TargetState } from "./rollout-sequencer.js";

export type RolloutStatus = RolloutState;
export type TargetRunStatus = TargetState;
export type StepState = "pending" | "running" | "succeeded" | "failed" | "skipped" | "interrupted";
import type { RolloutSpec, Strategy } from "../../common/rollout-request.js";

export type { Strategy };

/** The compiled request a rollout runs (frozen; see services/common/rollout-request.ts). */
export type RolloutSpecDoc = RolloutSpec;

export interface StepDoc {
  name: StepName;
  state: StepState;
  agentId: string;
  operationId: string;
  detail: string;
  startedAt?: string;
  finishedAt?: string;
  /** A clean-up step added after a failure or abort (restart stopped apps, stop unswitched green). */
  compensation?: boolean;
  /** Which run of the step this is (1 when absent). A step re-run after its agent was interrupted gets a new run, and so a new operation id. */
  attempt?: number;
  /** Agent operations an earlier run of this step left interrupted: this run completes them (Recover "accept") before its own work. */
  resumes?: string[];
}

export interface RolloutTargetDoc {
  targetId: string;
  agentId: string;
  wave: number;
  status: TargetRunStatus;
  steps: StepDoc[];
  revisionBefore: string[];
  revisionAfter: string[];
  backupId: string;
  /** One line: what happened, where the database is now, what to do next. */
  message: string;
  /** The abort's clean-up steps were added. */
  abortHandled?: boolean;
  /** Part of the rollback (phase "rollback"). */
  rollback?: boolean;
}

/** A rollout as persisted: the whole document is rewritten on every change. */
export interface RolloutDoc {
  id: string;
  status: RolloutStatus;
  spec: RolloutSpecDoc;
  targets: RolloutTargetDoc[];
  createdAt: string;
  finishedAt?: string;
  actor: string;
  message: string;
  warnings: string[];
  currentWave: number;
  /** Set by abort; the engine stops before its next step. */
  abortRequested: boolean;
  /** "rollback" once a rollback of this rollout started (absent: the rollout itself). */
  phase?: "rollout" | "rollback";
  /** No new step starts while paused; leases are kept. */
  paused?: boolean;
  /** What the rollout waits for, in words ("" when it does not wait). */
  waitingFor?: string;
  /** When the manual gate it waits at expires (ISO). */
  gateExpiresAt?: string;
  /** Waves approved at a manual gate. */
  approvedWaves?: number[];
  /** The rollout this one retries. */
  retryOf?: string;
  /** Monotonic revision of the document, bumped by every save (optimistic concurrency). */
  version: number;
}

export interface AgentRecord {
  id: string;
  address: string;
  source: "config" | "registered";
  lastSeen?: string;
}

export interface ScheduleDoc {
  name: string;
  cron: string;
  selector: string;
  strategy: Strategy;
  window: string;
  toRevision: string;
  waves: string;
  /** IANA zone the cron is read in ("" or absent: the controller's). */
  timeZone?: string;
  gate?: string;
  maxFailures?: number;
  source: "config" | "api";
  /** A restore drill of the selected targets instead of a migration. */
  drill?: boolean;
  lastRun?: string;
  lastResult?: string;
}

/** One row of the audit log as stored. `hash` = HMAC-SHA256(key, prevHash ‖ canonical(row)). */
export interface AuditRow {
  seq: number;
  time: string;
  actor: string;
  action: string;
  target: string;
  /** JSON text, secrets already redacted. */
  args: string;
  outcome: "intent" | "ok" | "error" | "denied";
  detail: string;
  prevHash: string;
  hash: string;
}

export type NewAuditRow = Omit<AuditRow, "seq" | "prevHash" | "hash">;

export interface AuditFilter {
  since?: string;
  until?: string;
  target?: string;
  actor?: string;
  action?: string;
  outcome?: AuditRow["outcome"];
  /** Only rows with seq below this (paging back from the newest). */
  beforeSeq?: number;
  limit?: number;
}

export type LeaseResult = { ok: true } | { ok: false; targetId: string; heldBy: string };

/** Everything the controller persists. Every method is atomic. */
export interface ControllerStore {
  /** Creates tables if needed. */
  init(): Promise<void>;
  close(): Promise<void>;

  createRollout(doc: RolloutDoc): Promise<void>;
  /** Replaces the document; fails with Error('stale rollout version') if doc.version is not the stored version (then stores version+1 and sets doc.version). */
  saveRollout(doc: RolloutDoc): Promise<void>;
  getRollout(id: string): Promise<RolloutDoc | null>;
  /** Newest first. */
  listRollouts(limit: number): Promise<RolloutDoc[]>;
  /** Rollouts whose status is pending or running. */
  listActiveRollouts(): Promise<RolloutDoc[]>;

  /** All-or-nothing: leases every target for the rollout, or none and names the first holder. */
  acquireLeases(rolloutId: string, targetIds: readonly string[]): Promise<LeaseResult>;
  /** Releases the rollout's leases (all of them when targetIds is absent). */
  releaseLeases(rolloutId: string, targetIds?: readonly string[]): Promise<void>;
  /** targetId → rolloutId for every held lease. */
  listLeases(): Promise<Record<string, string>>;

  upsertAgent(agent: AgentRecord): Promise<void>;
  listAgents(): Promise<AgentRecord[]>;

  upsertSchedule(s: ScheduleDoc): Promise<void>;
  removeSchedule(name: string): Promise<boolean>;
  listSchedules(): Promise<ScheduleDoc[]>;
  /** Records that schedule `name` fired for `slot` (ISO time); false if it already had (idempotency key). */
  claimScheduleFire(name: string, slot: string): Promise<boolean>;

  /**
   * Appends one audit row atomically at the chain's tail and moves the anchor
   * to it in the same commit. Fast path: one statement that inserts on top of
   * the row this store last appended only if the anchor and the tail still
   * name that row. Otherwise it reads the last (seq, hash) under a lock
   * (SQLite: BEGIN IMMEDIATE; PostgreSQL: pg_advisory_xact_lock and the
   * anchor row's lock), checks it against the anchor, seals and inserts.
   * `seal(prevSeq, prevHash)` gives the new hash; it may be called twice (a
   * stale guess, then the real tail) and must have no other effect. Throws if
   * it cannot write (callers fail closed).
   */
  appendAudit(row: NewAuditRow, seal: (seq: number, prevHash: string) => string): Promise<AuditRow>;
  /**
   * The chain's anchor: seq and hash of the last row Flotilla appended, kept in
   * the store's own table and moved only forward by appendAudit. appendAudit
   * refuses (AUDIT_UNAVAILABLE) when the chain's tail is behind its anchor or
   * differs from it: rows were cut from the tail outside Flotilla.
   */
  auditAnchor(): Promise<{ seq: number; hash: string } | null>;
  /** Rows in seq order from `afterSeq` (exclusive), at most `limit`. */
  readAudit(afterSeq: number, limit: number): Promise<AuditRow[]>;
  queryAudit(filter: AuditFilter): Promise<AuditRow[]>;
}

/** What a step needs to know about its rollout and target. */
export interface StepContext {
  readonly rolloutId: string;
  readonly spec: RolloutSpecDoc;
  readonly targetId: string;
  readonly backupId: string;
  readonly revisionAfter: readonly string[];
}

/** A line of agent output or progress for the rollout's watchers. */
export interface StepLine {
  readonly line: string;
  readonly revisionIndex?: number;
  readonly revisionCount?: number;
  readonly elapsedMs?: number;
  readonly etaMs?: number;
}

/**
 * The sequencer driver's port to the agents: runs one step and answers with
 * a typed result (never throws for an agent's failure), or asks the agent's
 * journal how a step that was running when the controller stopped ended.
 */
export interface AgentClient {
  runStep(step: StepDoc, ctx: StepContext, onLine: (line: StepLine) => void): Promise<StepResult>;
  resolveStep(step: StepDoc, ctx: StepContext, onLine: (line: StepLine) => void): Promise<StepResult>;
}
