import { randomUUID } from "node:crypto";
import { EventEmitter } from "node:events";
import type { MessageShape } from "@bufbuild/protobuf";
import type { OperationEventSchema, OperationResultSchema } from "../common/gen/flotilla/v1/agent_pb.js";
import { FlotillaError, toFlotillaError } from "../common/errors.js";
import type { Logger } from "../common/logger.js";
import type { AgentClient, GrpcAgentPool } from "./agents/agent-pool.js";
import type { AuditLog } from "./audit/audit-log.js";
import type { ControllerStore, RolloutDoc, RolloutSpecDoc, RolloutTargetDoc, StepDoc } from "./core/ports.js";
import { planTargets } from "./core/rollout-plan.js";
import { compileRolloutRequest, orInvalidArgument, type RolloutRequestInput } from "../common/rollout-request.js";
import type { Inventory } from "./inventory.js";
import { parseDuration } from "../common/config-helpers.js";

type OpResult = MessageShape<typeof OperationResultSchema>;
type OpEvent = MessageShape<typeof OperationEventSchema>;

export interface RolloutLine {
  targetId: string;
  step: string;
  line: string;
}

const TARGET_CONCURRENCY = 8;
/** Compiles a rollout request at the edge with the shared contract (INVALID_ARGUMENT naming each field). */
export function validateSpec(spec: RolloutRequestInput, strategyRequired = true): { spec: RolloutSpecDoc; notes: readonly string[] } {
  const { value, notes } = orInvalidArgument(compileRolloutRequest(spec, { strategyRequired }));
  return { spec: value, notes };
}

/**
 * Runs rollouts: a persisted plan of steps per target, executed wave by wave.
 * Every step's state is saved (and an audit intent written) before the agent
 * is asked to act; a restarted controller resumes from the store, asking the
 * agents' journals what really happened to steps that were running.
 */
export class RolloutEngine {
  private readonly bus = new EventEmitter();
  private readonly running = new Map<string, Promise<void>>();
  private readonly saveChains = new Map<string, Promise<void>>();
  private stopped = false;

  constructor(private readonly d: {
    store: ControllerStore;
    pool: GrpcAgentPool;
    inventory: Inventory;
    audit: AuditLog;
    log: Logger;
    agentTimeoutMs: number;
  }) {
    this.bus.setMaxListeners(0);
  }

  // ------------------------------------------------------------ events

  onEvent(id: string, fn: (e: { kind: "snapshot"; doc: RolloutDoc } | { kind: "line"; line: RolloutLine }) => void): () => void {
    const h = (e: { kind: "snapshot"; doc: RolloutDoc } | { kind: "line"; line: RolloutLine }): void => fn(e);
    this.bus.on(id, h);
    return () => this.bus.off(id, h);
  }

  private async save(doc: RolloutDoc): Promise<void> {
    const prev = this.saveChains.get(doc.id) ?? Promise.resolve();
    const next = prev.then(() => this.d.store.saveRollout(doc));
    this.saveChains.set(doc.id, next.catch(() => undefined));
    await next;
    this.bus.emit(doc.id, { kind: "snapshot", doc: structuredClone(doc) });
  }

  private line(doc: RolloutDoc, targetId: string, step: string, line: string): void {
    this.bus.emit(doc.id, { kind: "line", line: { targetId, step, line } });
  }

  // ------------------------------------------------------------ planning

  async plan(specIn: RolloutRequestInput, strategyRequired = true): Promise<{ spec: RolloutSpecDoc; targets: RolloutTargetDoc[]; warnings: string[] }> {
    const { spec, notes } = validateSpec(specIn, strategyRequired);
    const { targets, agents } = await this.d.inventory.targets(spec.selector);
    if (targets.length === 0) {
      const down = agents.filter((a) => a.state !== "up").map((a) => a.id);
      throw new FlotillaError("INVALID_ARGUMENT", `no target matches selector "${spec.selector}"${down.length ? ` (agents not answering: ${down.join(", ")})` : ""}; list targets with: flotilla targets`);
    }
    const warnings: string[] = [...notes];
    for (const a of agents.filter((x) => x.state !== "up")) warnings.push(`agent ${a.id} is not answering (${a.error || a.state}): its targets are not in this plan`);
    return { spec, targets: planTargets(spec.strategy, targets, spec.waves, spec.toRevision), warnings };
  }

  // ------------------------------------------------------------ start

  async start(specIn: RolloutRequestInput, actor: string): Promise<RolloutDoc> {
    const { spec, targets, warnings } = await this.plan(specIn);
    const id = `r-${new Date().toISOString().replace(/[-:T]/g, "").slice(0, 14)}-${randomUUID().slice(0, 6)}`;
    const lease = await this.d.store.acquireLeases(id, targets.map((t) => t.targetId));
    if (!lease.ok) {
      throw new FlotillaError("LEASE_HELD", `target ${lease.targetId} is already in rollout ${lease.heldBy}: wait for it to finish (flotilla rollout show ${lease.heldBy}) or abort it`);
    }
    const doc: RolloutDoc = {
      id, status: "pending", spec, targets, createdAt: new Date().toISOString(), actor, message: "", warnings, currentWave: 0,
      abortRequested: false, version: 0,
    };
    try {
      await this.d.store.createRollout(doc);
    } catch (err) {
      await this.d.store.releaseLeases(id);
      throw err;
    }
    this.launch(doc);
    return structuredClone(doc);
  }

  private launch(doc: RolloutDoc): void {
    const p = this.execute(doc).catch((err: unknown) => {
      this.d.log.error({ err: toFlotillaError(err), rollout: doc.id }, "rollout engine error");
    }).finally(() => this.running.delete(doc.id));
    this.running.set(doc.id, p);
  }

  /** Waits for a rollout's background run (tests, shutdown). */
  async settled(id: string): Promise<void> {
    await this.running.get(id);
  }

  async abort(id: string, actor: string): Promise<RolloutDoc> {
    const doc = await this.d.store.getRollout(id);
    if (!doc) throw new FlotillaError("NOT_FOUND", `no rollout ${id} (list them with: flotilla rollouts)`);
    if (doc.status !== "running" && doc.status !== "pending") throw new FlotillaError("PRECONDITION_FAILED", `rollout ${id} is ${doc.status}; only a pending or running rollout can be aborted`);
    const live = this.live.get(id);
    const target = live ?? doc;
    target.abortRequested = true;
    target.message = `abort requested by ${actor}: stopping before the next step`;
    await this.save(target);
    return structuredClone(target);
  }

  private readonly live = new Map<string, RolloutDoc>();

  // ------------------------------------------------------------ execution

  private async execute(doc: RolloutDoc): Promise<void> {
    this.live.set(doc.id, doc);
    try {
      if (doc.status === "pending") {
        doc.status = "running";
        await this.save(doc);
      }
      const deadline = doc.spec.window ? Date.parse(doc.createdAt) + (parseDuration(doc.spec.window) ?? 0) : Infinity;
      const waves = [...new Set(doc.targets.map((t) => t.wave))].sort((a, b) => a - b);
      let halted = false;
      for (const wave of waves) {
        if (this.stopped) return;
        const inWave = doc.targets.filter((t) => t.wave === wave);
        if (inWave.every((t) => t.status !== "pending" && t.status !== "running")) continue;
        if (doc.abortRequested) {
          doc.status = "aborted";
          doc.message = `aborted before wave ${wave + 1}`;
          halted = true;
          break;
        }
        if (Date.now() > deadline) {
          doc.status = "halted";
          doc.message = `maintenance window of ${doc.spec.window} ended before wave ${wave + 1}; remaining targets were not touched`;
          halted = true;
          break;
        }
        doc.currentWave = wave;
        await this.save(doc);
        await this.inParallel(inWave, (t) => this.runTarget(doc, t));
        if (this.stopped) return;
        const failed = doc.targets.filter((t) => t.status === "failed" || t.status === "restored");
        if (doc.abortRequested) {
          doc.status = "aborted";
          doc.message = `aborted during wave ${wave + 1}`;
          halted = true;
          break;
        }
        if (failed.length > doc.spec.maxFailures && wave !== waves.at(-1)) {
          doc.status = "halted";
          doc.message = `halted after wave ${wave + 1}${wave === 0 ? " (canary)" : ""}: ${failed.map((t) => `${t.targetId} ${t.status}`).join(", ")}; later waves were not started`;
          halted = true;
          break;
        }
      }
      if (!halted) {
        const bad = doc.targets.filter((t) => t.status !== "succeeded");
        doc.status = bad.length === 0 ? "succeeded" : "failed";
        doc.message = bad.length === 0
          ? `all ${doc.targets.length} target(s) migrated and verified`
          : `${bad.length} of ${doc.targets.length} target(s) did not complete: ${bad.map((t) => `${t.targetId} ${t.status}`).join(", ")}`;
      }
      doc.finishedAt = new Date().toISOString();
      await this.save(doc);
      await this.d.store.releaseLeases(doc.id);
      await this.d.audit.append({ actor: doc.actor, action: "rollout.finish", target: doc.id, args: { status: doc.status }, outcome: doc.status === "succeeded" ? "ok" : "error", detail: doc.message }).catch(() => undefined);
    } finally {
      this.live.delete(doc.id);
    }
  }

  private async inParallel<T>(items: T[], fn: (t: T) => Promise<void>): Promise<void> {
    let next = 0;
    const worker = async (): Promise<void> => {
      while (next < items.length) {
        const item = items[next++]!;
        await fn(item);
      }
    };
    await Promise.all(Array.from({ length: Math.min(TARGET_CONCURRENCY, items.length) }, worker));
  }

  private async runTarget(doc: RolloutDoc, t: RolloutTargetDoc): Promise<void> {
    if (t.status !== "pending" && t.status !== "running") return;
    t.status = "running";
    await this.save(doc);
    for (const step of t.steps) {
      if (step.state === "succeeded" || step.state === "skipped") continue;
      if (this.stopped) return;
      if (doc.abortRequested) {
        const done = t.steps.filter((s) => s.state === "succeeded").map((s) => s.name);
        for (const s of t.steps) if (s.state === "pending") s.state = "skipped";
        await this.compensate(doc, t, "after the abort");
        const changed = done.some((n) => n === "migrate" || n === "migrate-green" || n === "switch");
        t.status = changed ? "aborted" : "skipped";
        t.message = changed
          ? `aborted after ${done.at(-1)}: the database is at ${t.revisionAfter.join(",") || "its new revision"} (verified by the agent); remaining steps were not run`
          : "aborted before any change to this target";
        await this.save(doc);
        return;
      }
      const ok = await this.runStep(doc, t, step);
      if ((t.status as string) === "succeeded") {
        // precheck found nothing to do
        for (const s of t.steps) if (s.state === "pending") s.state = "skipped";
        await this.save(doc);
        return;
      }
      if (!ok) {
        await this.onTargetFailure(doc, t, step);
        return;
      }
    }
    t.status = "succeeded";
    t.message = t.message || `at ${t.revisionAfter.join(",") || doc.spec.toRevision}`;
    await this.save(doc);
  }

  /** After a failed step: bring stopped app instances back on whatever the database now is (old revision when restored). */
  private async onTargetFailure(doc: RolloutDoc, t: RolloutTargetDoc, failed: StepDoc): Promise<void> {
    for (const s of t.steps) if (s.state === "pending") s.state = "skipped";
    if (t.status === "running") t.status = "failed";
    await this.save(doc);
    await this.compensate(doc, t, `after ${failed.name} failed`);
    await this.save(doc);
  }

  /** Starts app instances that this rollout stopped and did not start again (never leaves an app stopped silently). */
  private async compensate(doc: RolloutDoc, t: RolloutTargetDoc, why: string): Promise<void> {
    const stopped = t.steps.filter((s) => s.name === "stop" && s.state === "succeeded").map((s) => s.agentId);
    const started = new Set(t.steps.filter((s) => s.name === "start" && s.state === "succeeded").map((s) => s.agentId));
    const greenStarted = t.steps.filter((s) => s.name === "start-green" && s.state === "succeeded").map((s) => s.agentId);
    const switched = t.steps.some((s) => s.name === "switch" && s.state === "succeeded");
    const extra: StepDoc[] = [];
    for (const agentId of stopped.filter((a) => !started.has(a))) extra.push({ name: "start", state: "pending", agentId, operationId: "", detail: `restart app instances ${why}` });
    if (!switched) for (const agentId of greenStarted) extra.push({ name: "stop-green", state: "pending", agentId, operationId: "", detail: `stop green instances ${why}; blue keeps serving` });
    for (const s of extra) {
      t.steps.push(s);
      await this.runStep(doc, t, s);
    }
  }

  // ------------------------------------------------------------ steps

  private async runStep(doc: RolloutDoc, t: RolloutTargetDoc, step: StepDoc): Promise<boolean> {
    step.state = "running";
    step.operationId = step.operationId || `${doc.id}.${t.targetId}.${step.name}.${step.agentId}.${randomUUID().slice(0, 8)}`;
    step.startedAt = new Date().toISOString();
    step.detail = "";
    await this.save(doc); // durable before the agent is asked
    try {
      await this.d.audit.append({ actor: doc.actor, action: `step.${step.name}`, target: t.targetId, args: { rollout: doc.id, agent: step.agentId, operation: step.operationId }, outcome: "intent" });
    } catch (err) {
      step.state = "failed";
      step.detail = `not done: the audit log could not be written (${toFlotillaError(err).message})`;
      step.finishedAt = new Date().toISOString();
      await this.save(doc);
      return false;
    }
    let ok = false;
    try {
      ok = await this.perform(doc, t, step);
    } catch (err) {
      const fe = toFlotillaError(err);
      step.detail = fe.message;
      ok = false;
      if (fe.code === "AGENT_UNAVAILABLE" || fe.code === "TIMEOUT" || fe.code === "CANCELLED") {
        // The agent may still be working: ask its journal before deciding.
        const resolved = await this.resolveFromJournal(doc, t, step).catch(() => undefined);
        if (resolved !== undefined) ok = resolved;
        else step.detail = `${fe.message}; the agent's outcome is unknown: check with flotilla diagnose ${t.targetId}`;
      }
    }
    step.state = ok ? "succeeded" : "failed";
    step.finishedAt = new Date().toISOString();
    await this.save(doc);
    await this.d.audit.append({ actor: doc.actor, action: `step.${step.name}`, target: t.targetId, args: { rollout: doc.id, agent: step.agentId, operation: step.operationId }, outcome: ok ? "ok" : "error", detail: step.detail }).catch((err: unknown) => {
      this.d.log.error({ err: toFlotillaError(err) }, "audit result row could not be written");
    });
    return ok;
  }

  private async streamOp(doc: RolloutDoc, t: RolloutTargetDoc, step: StepDoc, call: (c: AgentClient) => AsyncIterable<OpEvent>): Promise<OpResult> {
    const client = await this.d.pool.client(step.agentId);
    let result: OpResult | undefined;
    for await (const ev of call(client)) {
      switch (ev.event.case) {
        case "progress":
          this.line(doc, t.targetId, step.name, ev.event.value.line);
          break;
        case "step": {
          const s = ev.event.value;
          if (s.state !== "running") this.line(doc, t.targetId, step.name, `${s.name} ${s.state}${s.durationMs ? ` (${(Number(s.durationMs) / 1000).toFixed(2)}s)` : ""}${s.detail ? `: ${s.detail}` : ""}`);
          break;
        }
        case "result":
          result = ev.event.value;
          break;
        default:
          break;
      }
    }
    if (!result) throw new FlotillaError("AGENT_UNAVAILABLE", `agent ${step.agentId} ended ${step.name} without a result`);
    return result;
  }

  private opts(): { timeoutMs: number } {
    return { timeoutMs: this.d.agentTimeoutMs };
  }

  private async perform(doc: RolloutDoc, t: RolloutTargetDoc, step: StepDoc): Promise<boolean> {
    const opId = step.operationId;
    const base = { targetId: t.targetId, operationId: opId };
    const finishWith = (r: OpResult): boolean => {
      step.detail = r.message;
      return r.status === "succeeded";
    };
    switch (step.name) {
      case "precheck": {
        const c = await this.d.pool.client(step.agentId);
        const s = await c.getStatus({ targetId: t.targetId }, { timeoutMs: 30_000 });
        t.revisionBefore = [...s.current];
        const problems: string[] = [];
        if (s.error) problems.push(s.error);
        if (!s.currentKnown) problems.push(`database revision ${s.current.join(",")} is unknown to the code (version skew)`);
        if (s.heads.length > 1 && doc.spec.toRevision === "head") problems.push(`the code has ${s.heads.length} heads (${s.heads.join(", ")}): name a revision or merge them`);
        if (s.busyOperationId) problems.push(`target is busy with operation ${s.busyOperationId}`);
        if (s.interruptedOperationIds.length) problems.push(`interrupted operation(s) ${s.interruptedOperationIds.join(", ")} must be recovered first`);
        if (problems.length > 0) {
          step.detail = problems.join("; ");
          return false;
        }
        const atTarget = doc.spec.toRevision === "head" ? s.pending.length === 0 : s.current.includes(doc.spec.toRevision);
        step.detail = `at ${s.current.join(",") || "no revision"}; ${s.pending.length} pending`;
        if (atTarget && doc.spec.strategy !== "blue-green") {
          t.status = "succeeded";
          t.revisionAfter = [...s.current];
          t.message = `already at ${s.current.join(",")}: nothing to do`;
        }
        return true;
      }
      case "stop":
        return finishWith(await this.streamOp(doc, t, step, (c) => c.stopApps({ ...base }, this.opts())));
      case "start":
        return finishWith(await this.streamOp(doc, t, step, (c) => c.startApps({ ...base }, this.opts())));
      case "start-green":
        return finishWith(await this.streamOp(doc, t, step, (c) => c.startApps({ ...base, color: "green" }, this.opts())));
      case "stop-green":
        return finishWith(await this.streamOp(doc, t, step, (c) => c.stopApps({ ...base, color: "green" }, this.opts())));
      case "restart": {
        const a = await this.streamOp(doc, t, step, (c) => c.stopApps({ targetId: t.targetId, operationId: `${opId}.stop` }, this.opts()));
        if (a.status !== "succeeded") return finishWith(a);
        return finishWith(await this.streamOp(doc, t, step, (c) => c.startApps({ targetId: t.targetId, operationId: `${opId}.start` }, this.opts())));
      }
      case "health":
      case "health-green": {
        const c = await this.d.pool.client(step.agentId);
        const h = await c.checkHealth({ targetId: t.targetId, color: step.name === "health-green" ? "green" : "" }, { timeoutMs: 30_000 });
        step.detail = h.apps.map((a) => `${a.id} ${a.state}`).join(", ") || "no app instances";
        return h.healthy;
      }
      case "backup": {
        const r = await this.streamOp(doc, t, step, (c) => c.backup({ ...base, rolloutId: doc.id, verify: true }, this.opts()));
        if (r.backup) t.backupId = r.backup.id;
        return finishWith(r) && Boolean(r.backup?.verified);
      }
      case "clone":
        return finishWith(await this.streamOp(doc, t, step, (c) => c.clone({ ...base, rolloutId: doc.id }, this.opts())));
      case "migrate":
      case "migrate-green": {
        const green = step.name === "migrate-green";
        const r = await this.streamOp(doc, t, step, (c) => c.migrate({
          ...base, toRevision: doc.spec.toRevision, rolloutId: doc.id, backupId: green ? "" : t.backupId, takeBackup: green,
          online: doc.spec.strategy === "job", green,
        }, this.opts()));
        if (r.revisionAfter.length) t.revisionAfter = [...r.revisionAfter];
        if (r.status !== "succeeded") {
          t.status = r.restored ? "restored" : "failed";
          t.message = r.message;
        }
        return finishWith(r);
      }
      case "verify": {
        if (doc.spec.strategy === "blue-green") {
          step.detail = `green at ${t.revisionAfter.join(",")}`;
          return t.revisionAfter.length > 0;
        }
        const c = await this.d.pool.client(step.agentId);
        const s = await c.getStatus({ targetId: t.targetId }, { timeoutMs: 30_000 });
        const ok = doc.spec.toRevision === "head" ? s.pending.length === 0 && s.current.length > 0 : s.current.includes(doc.spec.toRevision);
        t.revisionAfter = [...s.current];
        step.detail = ok ? `at ${s.current.join(",")}` : `database reports ${s.current.join(",") || "none"}, expected ${doc.spec.toRevision}`;
        return ok;
      }
      case "switch":
        return finishWith(await this.streamOp(doc, t, step, (c) => c.switch({ ...base, color: "green" }, this.opts())));
      case "rollback-switch":
        return finishWith(await this.streamOp(doc, t, step, (c) => c.switch({ ...base, color: "blue" }, this.opts())));
      case "rollback-stop":
        return finishWith(await this.streamOp(doc, t, step, (c) => c.stopApps({ ...base }, this.opts())));
      case "rollback-restore": {
        const r = await this.streamOp(doc, t, step, (c) => c.restore({ ...base, backupId: t.backupId, manageApps: false }, this.opts()));
        if (r.status === "succeeded") t.revisionAfter = [...r.revisionAfter];
        return finishWith(r);
      }
      case "rollback-start":
        return finishWith(await this.streamOp(doc, t, step, (c) => c.startApps({ ...base }, this.opts())));
      default:
        throw new FlotillaError("INTERNAL", `unknown step ${step.name}`);
    }
  }

  /**
   * Learns what the agent did with a step's operation from its journal:
   * true/false when finished, undefined when the agent cannot say.
   */
  private async resolveFromJournal(doc: RolloutDoc, t: RolloutTargetDoc, step: StepDoc): Promise<boolean | undefined> {
    const c = await this.d.pool.client(step.agentId);
    for (let i = 0; i < 3600; i++) {
      let rec;
      try {
        rec = await c.getOperation({ operationId: step.operationId }, { timeoutMs: 5000 });
      } catch (err) {
        const fe = toFlotillaError(err);
        if (fe.code === "NOT_FOUND") {
          step.detail = "the agent never started this step";
          return false;
        }
        return undefined;
      }
      if (rec.state === "running") {
        await new Promise((r) => setTimeout(r, 1000));
        continue;
      }
      if (rec.backupId && step.name === "backup") t.backupId = rec.backupId;
      if (rec.revisionAfter.length) t.revisionAfter = [...rec.revisionAfter];
      step.detail = rec.message || rec.state;
      if (rec.state === "succeeded") return true;
      if (rec.state === "interrupted" && (step.name === "migrate" || step.name === "migrate-green" || step.name === "backup")) {
        // The agent died mid-operation: restore its pre-operation backup.
        const r = await this.streamOp(doc, t, { ...step, name: `${step.name}-recover` }, (cl) => cl.recover({ targetId: t.targetId, operationId: step.operationId, action: "restore", newOperationId: `${step.operationId}.recover` }, this.opts()));
        step.detail = `interrupted on the agent; ${r.message}`;
        if (r.restored) { t.status = "restored"; t.revisionAfter = [...r.revisionAfter]; }
        return false;
      }
      if (step.name.startsWith("migrate") && rec.message.includes("restored")) t.status = "restored";
      return false;
    }
    return undefined;
  }

  // ------------------------------------------------------------ resume

  /** At start-up: resume every rollout that was pending or running when the controller stopped. */
  async resumeAll(): Promise<string[]> {
    const active = await this.d.store.listActiveRollouts();
    for (const doc of active) {
      this.d.log.info({ rollout: doc.id }, "resuming rollout after controller restart");
      await this.d.audit.append({ actor: "controller", action: "rollout.resume", target: doc.id, outcome: "intent", detail: "controller restarted" }).catch(() => undefined);
      for (const t of doc.targets) {
        for (const step of t.steps) {
          if (step.state !== "running") continue;
          const resolved = await this.resolveFromJournal(doc, t, step).catch(() => undefined);
          if (resolved === undefined) {
            step.state = "interrupted";
            t.status = "failed";
            t.message = `step ${step.name} (operation ${step.operationId}) was running when the controller stopped and agent ${step.agentId} cannot say how it ended; run flotilla diagnose ${t.targetId}`;
          } else if (step.detail === "the agent never started this step") {
            step.state = "pending";
            step.operationId = "";
          } else {
            step.state = resolved ? "succeeded" : "failed";
            step.finishedAt = new Date().toISOString();
            if (!resolved && t.status === "running") t.status = "failed";
          }
        }
        if (t.status === "failed" || t.status === "restored") {
          for (const s of t.steps) if (s.state === "pending") s.state = "skipped";
          await this.compensate(doc, t, "after the controller restart found this target failed");
        }
      }
      await this.save(doc);
      this.launch(doc);
    }
    return active.map((d) => d.id);
  }

  // ------------------------------------------------------------ rollback

  async rollback(id: string, actor: string): Promise<RolloutDoc> {
    const doc = await this.d.store.getRollout(id);
    if (!doc) throw new FlotillaError("NOT_FOUND", `no rollout ${id} (list them with: flotilla rollouts)`);
    if (doc.status === "running" || doc.status === "pending") throw new FlotillaError("PRECONDITION_FAILED", `rollout ${id} is still ${doc.status}: abort it first`);
    if (doc.status === "rolled-back") throw new FlotillaError("PRECONDITION_FAILED", `rollout ${id} was already rolled back`);
    const targets = doc.targets.filter((t) => t.status === "succeeded" && t.steps.some((s) => (s.name === "migrate" || s.name === "switch") && s.state === "succeeded"));
    const lease = await this.d.store.acquireLeases(id, targets.map((t) => t.targetId));
    if (!lease.ok) throw new FlotillaError("LEASE_HELD", `target ${lease.targetId} is in rollout ${lease.heldBy}; wait for it before rolling back`);
    doc.status = "running";
    doc.message = `rollback requested by ${actor}`;
    for (const t of targets) {
      t.status = "running";
      if (doc.spec.strategy === "blue-green") {
        t.steps.push({ name: "rollback-switch", state: "pending", agentId: t.agentId, operationId: "", detail: "switch traffic back to blue" });
        const greenHosts = [...new Set(t.steps.filter((s) => s.name === "start-green").map((s) => s.agentId))];
        for (const a of greenHosts) t.steps.push({ name: "stop-green", state: "pending", agentId: a, operationId: "", detail: "stop green instances" });
      } else {
        const hosts = [...new Set(t.steps.filter((s) => s.name === "stop" || s.name === "restart" || s.name === "start").map((s) => s.agentId))];
        for (const a of hosts) t.steps.push({ name: "rollback-stop", state: "pending", agentId: a, operationId: "", detail: "stop app instances" });
        t.steps.push({ name: "rollback-restore", state: "pending", agentId: t.agentId, operationId: "", detail: `restore pre-migration backup ${t.backupId}` });
        for (const a of hosts) t.steps.push({ name: "rollback-start", state: "pending", agentId: a, operationId: "", detail: "start app instances" });
      }
    }
    await this.save(doc);
    const run = (async () => {
      this.live.set(doc.id, doc);
      let bad = 0;
      for (const t of targets) {
        let ok = true;
        for (const s of t.steps) {
          if (s.state !== "pending") continue;
          if (!ok) { s.state = "skipped"; continue; }
          ok = await this.runStep(doc, t, s);
        }
        t.status = ok ? "rolled-back" : "failed";
        if (!ok) bad++;
      }
      doc.status = bad === 0 ? "rolled-back" : "failed";
      doc.message = bad === 0 ? `rolled back ${targets.length} target(s)` : `rollback failed on ${bad} target(s)`;
      doc.finishedAt = new Date().toISOString();
      await this.save(doc);
      await this.d.store.releaseLeases(doc.id);
      this.live.delete(doc.id);
    })().catch((err: unknown) => this.d.log.error({ err: toFlotillaError(err) }, "rollback error"));
    this.running.set(doc.id, run.finally(() => this.running.delete(doc.id)));
    return structuredClone(doc);
  }

  /** Stops acting (steps in flight finish on the agents; the store keeps the state for resume). */
  async close(): Promise<void> {
    this.stopped = true;
    this.bus.removeAllListeners();
  }

  async get(id: string): Promise<RolloutDoc | null> {
    const live = this.live.get(id);
    if (live) return structuredClone(live);
    return this.d.store.getRollout(id);
  }
}
