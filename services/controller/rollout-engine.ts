import { randomUUID } from "node:crypto";
import { EventEmitter } from "node:events";
import { FlotillaError, toFlotillaError } from "../common/errors.js";
import type { Logger } from "../common/logger.js";
import { compileRolloutRequest, orInvalidArgument, type RolloutRequestInput } from "../common/rollout-request.js";
import type { GrpcAgentPool } from "./agents/agent-pool.js";
import type { AuditLog } from "./audit/audit-log.js";
import { type RevisionClass, checkCompatibility, classesFromPlan } from "./core/compatibility-gate.js";
import type { AgentClient, ControllerStore, RolloutDoc, RolloutSpecDoc, RolloutTargetDoc, StepLine } from "./core/ports.js";
import { type PreflightAnswer, planTargets, preflightVerdict, upToDateWhenNothingPending } from "./core/rollout-plan.js";
import {
  type SequencerCommand,
  type SequencerEvent,
  type StepResult,
  isTerminal,
  retryTargets,
  rollbackTargets,
  transition,
} from "./core/rollout-sequencer.js";
import type { Inventory } from "./inventory.js";

export interface RolloutLine {
  targetId: string;
  step: string;
  line: string;
  revisionIndex?: number;
  revisionCount?: number;
  elapsedMs?: number;
  etaMs?: number;
}

export type RolloutEngineEvent = { kind: "snapshot"; doc: RolloutDoc } | { kind: "line"; line: RolloutLine };

/** Compiles a rollout request at the edge with the shared contract (INVALID_ARGUMENT naming each field). */
export function validateSpec(spec: RolloutRequestInput, strategyRequired = true): { spec: RolloutSpecDoc; notes: readonly string[] } {
  const { value, notes } = orInvalidArgument(compileRolloutRequest(spec, { strategyRequired }));
  return { spec: value, notes };
}

/**
 * Drives rollouts: every decision is the pure sequencer's
 * (core/rollout-sequencer.ts); this class only feeds it events (a step's
 * result, an operator's control, a timer, a restart), saves the document it
 * returns (durably, before any agent is asked to act), and carries out its
 * commands through the AgentClient port.
 */
export class RolloutEngine {
  private readonly bus = new EventEmitter();
  private readonly live = new Map<string, RolloutDoc>();
  private readonly chains = new Map<string, Promise<unknown>>();
  private readonly inFlight = new Map<string, Set<Promise<void>>>();
  private readonly timers = new Map<string, NodeJS.Timeout>();
  private stopped = false;

  constructor(
    private readonly d: {
      store: ControllerStore;
      pool: GrpcAgentPool;
      agents: AgentClient;
      inventory: Inventory;
      audit: AuditLog;
      log: Logger;
      /** Clock (tests). */
      now?: () => Date;
    },
  ) {
    this.bus.setMaxListeners(0);
  }

  private now(): string {
    return (this.d.now?.() ?? new Date()).toISOString();
  }

  // ------------------------------------------------------------ events out

  onEvent(id: string, fn: (e: RolloutEngineEvent) => void): () => void {
    const h = (e: RolloutEngineEvent): void => fn(e);
    this.bus.on(id, h);
    return () => this.bus.off(id, h);
  }

  // ------------------------------------------------------------ planning

  async plan(
    specIn: RolloutRequestInput,
    strategyRequired = true,
    onlyTargets?: ReadonlySet<string>,
  ): Promise<{ spec: RolloutSpecDoc; targets: RolloutTargetDoc[]; warnings: string[] }> {
    const { spec, notes } = validateSpec(specIn, strategyRequired);
    const { targets: all, agents } = await this.d.inventory.targets(spec.selector);
    const targets = onlyTargets === undefined ? all : all.filter((t) => onlyTargets.has(t.id));
    if (targets.length === 0) {
      const down = agents.filter((a) => a.state !== "up").map((a) => a.id);
      throw new FlotillaError(
        "INVALID_ARGUMENT",
        `selector: no target matches "${spec.selector}"${down.length ? ` (agents not answering: ${down.join(", ")})` : ""}; list targets with: flotilla targets`,
      );
    }
    const warnings: string[] = [...notes];
    for (const a of agents.filter((x) => x.state !== "up"))
      warnings.push(`agent ${a.id} is not answering (${a.error || a.state}): its targets are not in this plan`);
    return { spec, targets: planTargets(spec.strategy, targets, spec.waves, spec.toRevision), warnings };
  }

  /**
   * Asks every target's agent for its Plan, once per target and all at once.
   * The answers decide before anything is stopped: a wanted revision any
   * target refuses (unknown, behind, another branch, ambiguous) refuses the
   * whole rollout (preflightVerdict), and each answered target's pending
   * revisions with their compatibility class feed the gate and the up-to-date
   * check. An agent that cannot answer leaves its target unclassified: its
   * precheck step runs and stops it with the reason.
   */
  async survey(
    spec: RolloutSpecDoc,
    targets: readonly { targetId: string; agentId: string }[],
  ): Promise<{ refusal: { code: string; message: string } | null; classes: Map<string, RevisionClass[]> }> {
    const classes = new Map<string, RevisionClass[]>();
    const answers = await Promise.all(
      targets.map(async (t): Promise<PreflightAnswer> => {
        try {
          const p = await (await this.d.pool.client(t.agentId)).plan({ targetId: t.targetId, toRevision: spec.toRevision }, { timeoutMs: 120_000 });
          classes.set(t.targetId, classesFromPlan(p));
          return { targetId: t.targetId, ok: true, pending: p.pending.length };
        } catch (err) {
          const fe = toFlotillaError(err);
          return { targetId: t.targetId, ok: false, code: fe.code, message: fe.message };
        }
      }),
    );
    return { refusal: preflightVerdict(answers).refusal, classes };
  }

  // ------------------------------------------------------------ start, retry

  async start(specIn: RolloutRequestInput, actor: string, opts: { onlyTargets?: ReadonlySet<string>; retryOf?: string } = {}): Promise<RolloutDoc> {
    const { spec, targets, warnings } = await this.plan(specIn, true, opts.onlyTargets);
    const { refusal, classes } = await this.survey(spec, targets);
    if (refusal) throw new FlotillaError(refusal.code as FlotillaError["code"], refusal.message);
    const gate = checkCompatibility(spec.strategy, classes, spec.allowBreaking);
    if (!gate.ok) throw new FlotillaError("PRECONDITION_FAILED", gate.message);
    if (gate.overridden.length > 0) {
      warnings.push(
        `--allow-breaking: ${spec.strategy} runs old and new code side by side over ${gate.overridden.map((r) => `${r.id} (${r.compatibility})`).join(", ")}`,
      );
      await this.d.audit.append({
        actor,
        action: "rollout.allow-breaking",
        target: spec.selector,
        args: { strategy: spec.strategy, revisions: gate.overridden.map((r) => r.id) },
        outcome: "ok",
        detail: "strategy allowed over revisions that are not additive",
      });
    }
    // Nothing pending: up to date, and no step runs for it.
    for (const t of targets) {
      const pending = classes.get(t.targetId);
      if (pending !== undefined && pending.length === 0 && upToDateWhenNothingPending(spec.strategy)) {
        t.status = "up-to-date";
        t.steps = [];
        t.message = "already at the target revision: nothing to do";
      }
    }
    const id = `r-${this.now().replace(/[-:T]/g, "").slice(0, 14)}-${randomUUID().slice(0, 6)}`;
    const leased = targets.filter((t) => t.status !== "up-to-date").map((t) => t.targetId);
    const lease = await this.d.store.acquireLeases(id, leased);
    if (!lease.ok) {
      throw new FlotillaError(
        "LEASE_HELD",
        `target ${lease.targetId} is already in rollout ${lease.heldBy}: wait for it to finish (flotilla rollout show ${lease.heldBy}) or abort it`,
      );
    }
    const doc: RolloutDoc = {
      id,
      status: "pending",
      spec,
      targets,
      createdAt: this.now(),
      actor,
      message: "",
      warnings,
      currentWave: 0,
      abortRequested: false,
      version: 0,
      paused: false,
      waitingFor: "",
      ...(opts.retryOf ? { retryOf: opts.retryOf } : {}),
    };
    try {
      await this.d.store.createRollout(doc);
    } catch (err) {
      await this.d.store.releaseLeases(id);
      throw err;
    }
    this.live.set(id, doc);
    return this.dispatch(id, { kind: "start", now: this.now() });
  }

  /** A new rollout with the same spec over exactly the targets that failed, were restored or were skipped in `id`. */
  async retry(id: string, actor: string): Promise<RolloutDoc> {
    const doc = await this.load(id);
    if (!isTerminal(doc.status)) throw new FlotillaError("PRECONDITION_FAILED", `rollout ${id} is still ${doc.status}: wait for it to end, or abort it`);
    const targets = retryTargets(doc);
    if (targets.length === 0)
      throw new FlotillaError("PRECONDITION_FAILED", `rollout ${id} has no failed, restored or skipped target: there is nothing to retry`);
    const { schedule: _schedule, ...spec } = doc.spec;
    return this.start(spec, actor, { onlyTargets: new Set(targets), retryOf: id });
  }

  // ------------------------------------------------------------ controls

  abort(id: string, actor: string): Promise<RolloutDoc> {
    return this.dispatch(id, { kind: "abort", now: this.now(), actor });
  }

  pause(id: string, actor: string): Promise<RolloutDoc> {
    return this.dispatch(id, { kind: "pause", now: this.now(), actor });
  }

  resume(id: string, actor: string): Promise<RolloutDoc> {
    return this.dispatch(id, { kind: "resume", now: this.now(), actor });
  }

  approve(id: string, actor: string): Promise<RolloutDoc> {
    return this.dispatch(id, { kind: "approve", now: this.now(), actor });
  }

  async rollback(id: string, actor: string): Promise<RolloutDoc> {
    const doc = await this.load(id);
    if (!isTerminal(doc.status))
      throw new FlotillaError("PRECONDITION_FAILED", `rollout ${id} is still ${doc.status}: abort it first (flotilla rollout abort ${id} --wait)`);
    const lease = await this.d.store.acquireLeases(
      id,
      rollbackTargets(doc).map((t) => t.targetId),
    );
    if (!lease.ok) throw new FlotillaError("LEASE_HELD", `target ${lease.targetId} is in rollout ${lease.heldBy}; wait for it before rolling back`);
    this.live.set(id, doc);
    try {
      return await this.dispatch(id, { kind: "rollback", now: this.now(), actor });
    } catch (err) {
      this.live.delete(id);
      await this.d.store.releaseLeases(id);
      throw err;
    }
  }

  // ------------------------------------------------------------ the loop

  private async load(id: string): Promise<RolloutDoc> {
    const doc = this.live.get(id) ?? (await this.d.store.getRollout(id));
    if (!doc) throw new FlotillaError("NOT_FOUND", `no rollout ${id} (list them with: flotilla rollouts)`);
    return doc;
  }

  /** Feeds one event to the sequencer (serialized per rollout), saves, and carries out the commands. */
  private dispatch(id: string, event: SequencerEvent): Promise<RolloutDoc> {
    const prev = this.chains.get(id) ?? Promise.resolve();
    const next = prev
      .catch(() => undefined)
      .then(async () => {
        const doc = await this.load(id);
        const t = transition(doc, event);
        if (t.refusal) throw new FlotillaError(t.refusal.code, t.refusal.message);
        t.doc.version = doc.version;
        await this.d.store.saveRollout(t.doc); // durable before any agent is asked
        if (isTerminal(t.doc.status) && !t.doc.targets.some((x) => x.steps.some((s) => s.state === "running"))) this.live.delete(id);
        else this.live.set(id, t.doc);
        this.bus.emit(id, { kind: "snapshot", doc: structuredClone(t.doc) });
        for (const c of t.commands) this.execute(t.doc, c);
        return structuredClone(t.doc);
      });
    this.chains.set(id, next);
    return next;
  }

  private execute(doc: RolloutDoc, c: SequencerCommand): void {
    if (this.stopped) return;
    switch (c.kind) {
      case "run-step":
      case "resolve-step":
        this.track(doc.id, this.runStep(doc, c));
        break;
      case "wake-at": {
        clearTimeout(this.timers.get(doc.id));
        const delay = Math.max(0, Date.parse(c.at) - Date.now());
        const timer = setTimeout(
          () => {
            this.timers.delete(doc.id);
            void this.dispatch(doc.id, { kind: "tick", now: this.now() }).catch((err: unknown) =>
              this.d.log.error({ err: toFlotillaError(err), rollout: doc.id }, "rollout tick failed"),
            );
          },
          Math.min(delay, 2 ** 31 - 1),
        );
        timer.unref();
        this.timers.set(doc.id, timer);
        break;
      }
      case "finish":
        clearTimeout(this.timers.get(doc.id));
        this.track(
          doc.id,
          (async () => {
            await this.d.store.releaseLeases(doc.id);
            await this.d.audit
              .append({
                actor: doc.actor,
                action: doc.phase === "rollback" ? "rollout.rollback.finish" : "rollout.finish",
                target: doc.id,
                args: { status: c.status },
                outcome: c.status === "succeeded" || c.status === "rolled-back" ? "ok" : "error",
                detail: doc.message,
              })
              .catch(() => undefined);
          })(),
        );
        break;
    }
  }

  private track(id: string, p: Promise<void>): void {
    const set = this.inFlight.get(id) ?? new Set();
    this.inFlight.set(id, set);
    const wrapped = p
      .catch((err: unknown) => this.d.log.error({ err: toFlotillaError(err), rollout: id }, "rollout engine error"))
      .finally(() => set.delete(wrapped));
    set.add(wrapped);
  }

  private async runStep(doc: RolloutDoc, c: Extract<SequencerCommand, { kind: "run-step" | "resolve-step" }>): Promise<void> {
    const t = doc.targets.find((x) => x.targetId === c.targetId)!;
    const ctx = { rolloutId: doc.id, spec: doc.spec, targetId: t.targetId, backupId: t.backupId, revisionAfter: t.revisionAfter };
    const auditArgs = { rollout: doc.id, agent: c.step.agentId, operation: c.step.operationId };
    const onLine = (l: StepLine): void => {
      this.bus.emit(doc.id, { kind: "line", line: { targetId: t.targetId, step: c.step.name, ...l } });
    };
    let result: StepResult;
    if (c.kind === "resolve-step") {
      result = await this.d.agents.resolveStep(c.step, ctx, onLine);
    } else {
      try {
        await this.d.audit.append({ actor: doc.actor, action: `step.${c.step.name}`, target: t.targetId, args: auditArgs, outcome: "intent" });
        result = await this.d.agents.runStep(c.step, ctx, onLine);
      } catch (err) {
        result = {
          outcome: "failed",
          code: "AUDIT_UNAVAILABLE",
          effect: "none",
          detail: `not done: the audit log could not be written (${toFlotillaError(err).message})`,
        };
      }
      await this.d.audit
        .append({
          actor: doc.actor,
          action: `step.${c.step.name}`,
          target: t.targetId,
          args: auditArgs,
          outcome: result.outcome === "succeeded" ? "ok" : "error",
          detail: result.detail,
        })
        .catch((err: unknown) => {
          this.d.log.error({ err: toFlotillaError(err) }, "audit result row could not be written");
        });
    }
    if (this.stopped) return;
    await this.dispatch(doc.id, { kind: "step-finished", now: this.now(), targetId: c.targetId, index: c.index, result });
  }

  // ------------------------------------------------------------ restart

  /** At start-up (on becoming leader): resume every rollout that was pending or running, paused ones stay paused. */
  async resumeAll(): Promise<string[]> {
    const active = await this.d.store.listActiveRollouts();
    for (const doc of active) {
      this.d.log.info({ rollout: doc.id, paused: doc.paused === true }, "resuming rollout after controller restart");
      await this.d.audit
        .append({ actor: "controller", action: "rollout.resume", target: doc.id, outcome: "intent", detail: "controller restarted" })
        .catch(() => undefined);
      this.live.set(doc.id, doc);
      await this.dispatch(doc.id, { kind: "restarted", now: this.now() }).catch((err: unknown) =>
        this.d.log.error({ err: toFlotillaError(err), rollout: doc.id }, "rollout could not be resumed"),
      );
      if (doc.gateExpiresAt) this.execute(doc, { kind: "wake-at", at: doc.gateExpiresAt });
    }
    return active.map((x) => x.id);
  }

  /** Waits until a rollout's in-flight work is done (tests, shutdown). */
  async settled(id: string): Promise<void> {
    for (;;) {
      await this.chains.get(id)?.catch(() => undefined);
      const set = this.inFlight.get(id);
      if (!set || set.size === 0) return;
      await Promise.all(set);
    }
  }

  /** Stops acting (steps in flight finish on the agents; the store keeps the state for resume). */
  async close(): Promise<void> {
    this.stopped = true;
    for (const t of this.timers.values()) clearTimeout(t);
    this.timers.clear();
    this.bus.removeAllListeners();
  }

  async get(id: string): Promise<RolloutDoc | null> {
    const live = this.live.get(id);
    if (live) return structuredClone(live);
    return this.d.store.getRollout(id);
  }
}
