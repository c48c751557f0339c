import type { MessageShape } from "@bufbuild/protobuf";
import type { OperationEventSchema, OperationResultSchema } from "../../common/gen/flotilla/v1/agent_pb.js";
import { type ErrorCode, FlotillaError, isErrorCode, toFlotillaError } from "../../common/errors.js";
import type { AgentClient, StepContext, StepDoc, StepLine } from "../core/ports.js";
import type { Effect, StepResult } from "../core/rollout-sequencer.js";
import { upToDateWhenNothingPending } from "../core/rollout-plan.js";
import type { AgentClient as GrpcAgent, GrpcAgentPool } from "./agent-pool.js";

type OpResult = MessageShape<typeof OperationResultSchema>;
type OpEvent = MessageShape<typeof OperationEventSchema>;

const EFFECTS: ReadonlySet<string> = new Set(["none", "changed", "restored", "needs-restore", "up-to-date"]);
const STATUS_TIMEOUT_MS = 30_000;
/** How long a step waits for its agent to come back before its outcome is called unknown. */
const AGENT_RETURN_MS = Number(process.env.FLOTILLA_AGENT_RETURN_MS ?? 60_000);
/** Steps that are one stop or start operation on the agent. */
const APPS_STEPS: ReadonlySet<string> = new Set(["stop", "start", "start-green", "stop-green", "rollback-stop", "rollback-start"]);
/** Steps that only read: asking again is always safe. */
const READS: ReadonlySet<string> = new Set(["precheck", "verify", "rollback-verify", "health", "health-green"]);
/** App operations an interrupted restart can leave holding the target (the re-run completes them). */
const APPS_KINDS: ReadonlySet<string> = new Set(["stop-apps", "start-apps"]);
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

type OpRecord = Awaited<ReturnType<GrpcAgent["getOperation"]>>;

/** The agent operations one run of a restart step is made of, by deterministic id. */
function restartOps(step: StepDoc): { stop: string; start: string; resume: (i: number) => string } {
  return { stop: `${step.operationId}.stop`, start: `${step.operationId}.start`, resume: (i) => `${step.operationId}.resume.${i}` };
}

function codeOf(text: string, fallback: ErrorCode): ErrorCode {
  return isErrorCode(text) ? text : fallback;
}

/** The agent's effect; agents that predate the field say only `restored`. */
function effectOf(r: OpResult): Effect {
  if (EFFECTS.has(r.effect)) return r.effect as Effect;
  if (r.restored) return "restored";
  return r.status === "succeeded" ? "changed" : "none";
}

function fromOperation(r: OpResult): StepResult {
  if (r.status === "succeeded") {
    return {
      outcome: "succeeded",
      effect: effectOf(r),
      detail: r.message,
      ...(r.revisionAfter.length ? { revisionAfter: [...r.revisionAfter] } : {}),
      ...(r.backup?.id ? { backupId: r.backup.id } : {}),
    };
  }
  return {
    outcome: "failed",
    code: codeOf(r.errorCode, "MIGRATION_FAILED"),
    effect: effectOf(r),
    detail: r.message,
    ...(r.revisionAfter.length ? { revisionAfter: [...r.revisionAfter] } : {}),
  };
}

/**
 * The AgentClient port over gRPC: maps each step to the agent RPC that does it
 * and the answer to a typed StepResult. Never throws for an agent's answer;
 * an agent that cannot be reached is a `failed` (or, when it may still be
 * working, an `unknown` after asking its journal) result.
 */
export class GrpcStepClient implements AgentClient {
  constructor(private readonly d: { pool: GrpcAgentPool; agentTimeoutMs: number }) {}

  async runStep(step: StepDoc, ctx: StepContext, onLine: (line: StepLine) => void): Promise<StepResult> {
    try {
      return await this.perform(step, ctx, onLine);
    } catch (err) {
      const fe = toFlotillaError(err);
      if (READS.has(step.name)) return { outcome: "failed", code: fe.code, effect: "none", detail: fe.message };
      if (fe.code === "AGENT_UNAVAILABLE" || fe.code === "TIMEOUT" || fe.code === "CANCELLED") {
        // The agent may still be working: its journal decides.
        const resolved = await this.resolveStep(step, ctx, onLine).catch(() => undefined);
        if (resolved !== undefined && resolved.outcome !== "unknown") return resolved;
        return { outcome: "unknown", code: fe.code, detail: `${fe.message}; the agent's outcome is unknown` };
      }
      return { outcome: "failed", code: fe.code, effect: "none", detail: fe.message };
    }
  }

  async resolveStep(step: StepDoc, ctx: StepContext, onLine: (line: StepLine) => void): Promise<StepResult> {
    if (READS.has(step.name)) return this.runStep(step, ctx, onLine); // a read changes nothing: ask again
    if (step.name === "restart") return this.resolveRestart(step);
    const agent = await this.d.pool.client(step.agentId);
    // An agent killed mid-step usually comes back within seconds (its process manager restarts it):
    // wait for it a bounded time before calling the outcome unknown.
    const giveUpAt = Date.now() + AGENT_RETURN_MS;
    for (let i = 0; i < 3600; i++) {
      let rec: Awaited<ReturnType<GrpcAgent["getOperation"]>>;
      try {
        rec = await agent.getOperation({ operationId: step.operationId }, { timeoutMs: 5000 });
      } catch (err) {
        const fe = toFlotillaError(err);
        if (fe.code === "NOT_FOUND") return { outcome: "not-started", detail: "the agent never started this step" };
        if ((fe.code === "AGENT_UNAVAILABLE" || fe.code === "TIMEOUT") && Date.now() < giveUpAt) {
          await new Promise((r) => setTimeout(r, 1000));
          continue;
        }
        return { outcome: "unknown", code: fe.code, detail: fe.message };
      }
      if (rec.state === "running") {
        await new Promise((r) => setTimeout(r, 1000));
        continue;
      }
      const after = rec.revisionAfter.length ? { revisionAfter: [...rec.revisionAfter] } : {};
      if (rec.state === "succeeded")
        return { outcome: "succeeded", effect: "changed", detail: rec.message || "succeeded", ...after, ...(rec.backupId ? { backupId: rec.backupId } : {}) };
      if (rec.state === "interrupted" && APPS_STEPS.has(step.name)) {
        // An interrupted stop/start is certain to end well by completing it: the rollout goes on.
        const r = await this.stream(step.agentId, onLine, (c) =>
          c.recover({ targetId: ctx.targetId, operationId: step.operationId, action: "accept", newOperationId: `${step.operationId}.recover` }, this.opts()),
        );
        return r.status === "succeeded"
          ? { outcome: "succeeded", effect: "none", detail: `interrupted on the agent; ${r.message}` }
          : { outcome: "failed", code: codeOf(r.errorCode, "INTERRUPTED"), effect: "none", detail: `interrupted on the agent; ${r.message}` };
      }
      if (rec.state === "interrupted" && step.name === "migrate" && ctx.spec.strategy === "job") {
        // An online migration: report the facts; the sequencer re-runs the step, which goes forward (Recover "forward").
        return { outcome: "interrupted", code: "INTERRUPTED", detail: "the agent stopped during the online migration", operations: [step.operationId] };
      }
      if (rec.state === "interrupted" && (step.name === "migrate" || step.name === "migrate-green" || step.name === "backup")) {
        // The agent died mid-operation: put back its pre-operation backup.
        const r = await this.stream(step.agentId, onLine, (c) =>
          c.recover({ targetId: ctx.targetId, operationId: step.operationId, action: "restore", newOperationId: `${step.operationId}.recover` }, this.opts()),
        );
        const restored = r.status === "succeeded";
        return {
          outcome: "failed",
          code: "INTERRUPTED",
          effect: restored ? "restored" : "needs-restore",
          detail: `interrupted on the agent; ${r.message}`,
          ...(r.revisionAfter.length ? { revisionAfter: [...r.revisionAfter] } : {}),
        };
      }
      // A finished migration that failed: the journal's revisions say whether the database is back where it was.
      const same = rec.revisionBefore.length > 0 && rec.revisionBefore.join(",") === rec.revisionAfter.join(",");
      const effect: Effect = step.name.startsWith("migrate") ? (same ? "restored" : "needs-restore") : "none";
      return { outcome: "failed", code: codeOf(rec.errorCode, "INTERRUPTED"), effect, detail: rec.message || rec.state, ...after };
    }
    return { outcome: "unknown", code: "TIMEOUT", detail: "the agent kept reporting the operation as running" };
  }

  /**
   * How one run of a restart ended, from the agent's journal: a restart is
   * several agent operations (completing what an earlier run left interrupted,
   * then stop, then start), none named by the step's own id. Reports the facts
   * only: succeeded, failed, never started, or interrupted with the operations
   * still holding the target — the sequencer decides what follows.
   */
  private async resolveRestart(step: StepDoc): Promise<StepResult> {
    const ids = restartOps(step);
    const resumes = step.resumes ?? [];
    const wanted = [ids.stop, ids.start, ...resumes.map((_, i) => ids.resume(i)), ...resumes];
    const agent = await this.d.pool.client(step.agentId);
    const giveUpAt = Date.now() + AGENT_RETURN_MS;
    for (let i = 0; i < 3600; i++) {
      const found = new Map<string, OpRecord>();
      try {
        for (const id of wanted) {
          const rec = await agent.getOperation({ operationId: id }, { timeoutMs: 5000 }).catch((err: unknown) => {
            if (toFlotillaError(err).code === "NOT_FOUND") return undefined;
            throw err;
          });
          if (rec !== undefined) found.set(id, rec);
        }
      } catch (err) {
        const fe = toFlotillaError(err);
        if ((fe.code === "AGENT_UNAVAILABLE" || fe.code === "TIMEOUT") && Date.now() < giveUpAt) {
          await sleep(1000);
          continue;
        }
        return { outcome: "unknown", code: fe.code, detail: fe.message };
      }
      const mine = [...found.values()].filter((o) => o.id.startsWith(`${step.operationId}.`));
      if (mine.some((o) => o.state === "running")) {
        await sleep(1000);
        continue;
      }
      if (mine.length === 0) return { outcome: "not-started", detail: "the agent never started this run of the restart" };
      const started = found.get(ids.start);
      if (started?.state === "succeeded") return { outcome: "succeeded", effect: "none", detail: `${started.message} (read from the agent's journal)` };
      const failed = mine.find((o) => o.state === "failed" || o.state === "refused" || o.state === "needs-restore");
      if (failed !== undefined)
        return { outcome: "failed", code: codeOf(failed.errorCode, "INTERRUPTED"), effect: "none", detail: failed.message || `${failed.kind} ${failed.state}` };
      const holding = [...found.values()].filter((o) => o.state === "interrupted" && APPS_KINDS.has(o.kind)).map((o) => o.id);
      const reached = found.has(ids.start)
        ? "while starting the app instances"
        : found.has(ids.stop)
          ? found.get(ids.stop)!.state === "succeeded"
            ? "after stopping the app instances"
            : "while stopping the app instances"
          : "while completing the earlier run";
      return { outcome: "interrupted", code: "INTERRUPTED", detail: `the agent stopped ${reached}`, operations: holding };
    }
    return { outcome: "unknown", code: "TIMEOUT", detail: "the agent kept reporting the restart as running" };
  }

  private opts(): { timeoutMs: number } {
    return { timeoutMs: this.d.agentTimeoutMs };
  }

  private async stream(agentId: string, onLine: (line: StepLine) => void, call: (c: GrpcAgent) => AsyncIterable<OpEvent>): Promise<OpResult> {
    const client = await this.d.pool.client(agentId);
    let result: OpResult | undefined;
    for await (const ev of call(client)) {
      switch (ev.event.case) {
        case "progress": {
          const p = ev.event.value;
          onLine({ line: p.line, revisionIndex: p.revisionIndex, revisionCount: p.revisionCount, elapsedMs: Number(p.elapsedMs), etaMs: Number(p.etaMs) });
          break;
        }
        case "step": {
          const s = ev.event.value;
          if (s.state !== "running")
            onLine({ line: `${s.name} ${s.state}${s.durationMs ? ` (${(Number(s.durationMs) / 1000).toFixed(2)}s)` : ""}${s.detail ? `: ${s.detail}` : ""}` });
          break;
        }
        case "result":
          result = ev.event.value;
          break;
        default:
          break;
      }
    }
    if (!result) throw new FlotillaError("AGENT_UNAVAILABLE", `agent ${agentId} ended the operation without a result`);
    return result;
  }

  private async op(step: StepDoc, onLine: (line: StepLine) => void, call: (c: GrpcAgent) => AsyncIterable<OpEvent>): Promise<StepResult> {
    return fromOperation(await this.stream(step.agentId, onLine, call));
  }

  private async perform(step: StepDoc, ctx: StepContext, onLine: (line: StepLine) => void): Promise<StepResult> {
    const base = { targetId: ctx.targetId, operationId: step.operationId };
    const spec = ctx.spec;
    switch (step.name) {
      case "precheck": {
        const s = await (await this.d.pool.client(step.agentId)).getStatus({ targetId: ctx.targetId }, { timeoutMs: STATUS_TIMEOUT_MS });
        const problems: string[] = [];
        if (s.error) problems.push(s.error);
        if (!s.currentKnown) problems.push(`database revision ${s.current.join(",")} is unknown to the code (version skew)`);
        if (s.heads.length > 1 && spec.toRevision === "head")
          problems.push(`the code has ${s.heads.length} heads (${s.heads.join(", ")}): name a revision or merge them`);
        if (s.busyOperationId) problems.push(`target is busy with operation ${s.busyOperationId}`);
        if (s.interruptedOperationIds.length) problems.push(`interrupted operation(s) ${s.interruptedOperationIds.join(", ")} must be recovered first`);
        if (problems.length > 0) return { outcome: "failed", code: "PRECONDITION_FAILED", effect: "none", detail: problems.join("; ") };
        const atTarget = spec.toRevision === "head" ? s.pending.length === 0 : s.current.includes(spec.toRevision);
        return {
          outcome: "succeeded",
          effect: atTarget && upToDateWhenNothingPending(spec.strategy) ? "up-to-date" : "none",
          detail: `at ${s.current.join(",") || "no revision"}; ${s.pending.length} pending`,
          revisionBefore: [...s.current],
        };
      }
      case "stop":
      case "rollback-stop":
        return this.op(step, onLine, (c) => c.stopApps({ ...base }, this.opts()));
      case "start":
      case "rollback-start":
        return this.op(step, onLine, (c) => c.startApps({ ...base }, this.opts()));
      case "start-green":
        return this.op(step, onLine, (c) => c.startApps({ ...base, color: "green" }, this.opts()));
      case "stop-green":
        return this.op(step, onLine, (c) => c.stopApps({ ...base, color: "green" }, this.opts()));
      case "restart": {
        // A re-run first completes what the interrupted run left (Recover "accept": finish the stop or the start).
        for (const [i, interrupted] of (step.resumes ?? []).entries()) {
          const r = await this.stream(step.agentId, onLine, (c) =>
            c.recover({ targetId: ctx.targetId, operationId: interrupted, action: "accept", newOperationId: restartOps(step).resume(i) }, this.opts()),
          );
          if (r.status !== "succeeded") return { ...fromOperation(r), detail: `completing interrupted ${interrupted}: ${r.message}` };
        }
        const stopped = await this.stream(step.agentId, onLine, (c) =>
          c.stopApps({ targetId: ctx.targetId, operationId: `${step.operationId}.stop` }, this.opts()),
        );
        if (stopped.status !== "succeeded") return fromOperation(stopped);
        return this.op(step, onLine, (c) => c.startApps({ targetId: ctx.targetId, operationId: `${step.operationId}.start` }, this.opts()));
      }
      case "health":
      case "health-green": {
        const h = await (await this.d.pool.client(step.agentId)).checkHealth(
          { targetId: ctx.targetId, color: step.name === "health-green" ? "green" : "" },
          { timeoutMs: STATUS_TIMEOUT_MS },
        );
        const detail = h.apps.map((a) => `${a.id} ${a.state}`).join(", ") || "no app instances";
        return h.healthy
          ? { outcome: "succeeded", effect: "none", detail }
          : { outcome: "failed", code: "PRECONDITION_FAILED", effect: "none", detail: `unhealthy: ${detail}` };
      }
      case "backup": {
        const r = await this.stream(step.agentId, onLine, (c) => c.backup({ ...base, rolloutId: ctx.rolloutId, verify: true }, this.opts()));
        const result = fromOperation(r);
        if (result.outcome === "succeeded" && !r.backup?.verified)
          return { outcome: "failed", code: "BACKUP_UNVERIFIED", effect: "none", detail: `backup ${r.backup?.id ?? ""} could not be verified: ${r.message}` };
        return result;
      }
      case "clone":
        return this.op(step, onLine, (c) => c.clone({ ...base, rolloutId: ctx.rolloutId }, this.opts()));
      case "migrate":
      case "migrate-green": {
        const green = step.name === "migrate-green";
        const interrupted = step.resumes?.[0];
        if (interrupted !== undefined && !green) {
          // A re-run of an online migration the agent was cut off in: go on from where the database is. The recover
          // takes this run's own operation id, so a cut-off re-run is found (and taken over) by the next one.
          const r = await this.stream(step.agentId, onLine, (c) =>
            c.recover({ targetId: ctx.targetId, operationId: interrupted, action: "forward", newOperationId: step.operationId }, this.opts()),
          );
          const result = fromOperation(r);
          return { ...result, detail: `going forward after interrupted ${interrupted}: ${r.message}` };
        }
        return this.op(step, onLine, (c) =>
          c.migrate(
            {
              ...base,
              toRevision: spec.toRevision,
              rolloutId: ctx.rolloutId,
              backupId: green ? "" : ctx.backupId,
              takeBackup: green,
              online: spec.strategy === "job",
              green,
            },
            this.opts(),
          ),
        );
      }
      case "verify": {
        if (spec.strategy === "blue-green") {
          return ctx.revisionAfter.length > 0
            ? { outcome: "succeeded", effect: "none", detail: `green at ${ctx.revisionAfter.join(",")}` }
            : { outcome: "failed", code: "VERIFY_FAILED", effect: "none", detail: "green reports no revision" };
        }
        const s = await (await this.d.pool.client(step.agentId)).getStatus({ targetId: ctx.targetId }, { timeoutMs: STATUS_TIMEOUT_MS });
        const ok = spec.toRevision === "head" ? s.pending.length === 0 && s.current.length > 0 : s.current.includes(spec.toRevision);
        return ok
          ? { outcome: "succeeded", effect: "none", detail: `at ${s.current.join(",")}`, revisionAfter: [...s.current] }
          : {
              outcome: "failed",
              code: "VERIFY_FAILED",
              effect: "none",
              detail: `database reports ${s.current.join(",") || "none"}, expected ${spec.toRevision}`,
              revisionAfter: [...s.current],
            };
      }
      case "rollback-verify": {
        const s = await (await this.d.pool.client(step.agentId)).getStatus({ targetId: ctx.targetId }, { timeoutMs: STATUS_TIMEOUT_MS });
        return { outcome: "succeeded", effect: "none", detail: `database at ${s.current.join(",") || "no revision"}`, revisionAfter: [...s.current] };
      }
      case "switch":
        return this.op(step, onLine, (c) => c.switch({ ...base, color: "green" }, this.opts()));
      case "rollback-switch":
        return this.op(step, onLine, (c) => c.switch({ ...base, color: "blue" }, this.opts()));
      case "rollback-restore": {
        if (!ctx.backupId) return { outcome: "failed", code: "BACKUP_FAILED", effect: "none", detail: "this target has no pre-migration backup to restore" };
        return this.op(step, onLine, (c) => c.restore({ ...base, backupId: ctx.backupId, manageApps: false }, this.opts()));
      }
    }
  }
}
