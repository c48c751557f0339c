import { randomUUID, timingSafeEqual } from "node:crypto";
import type { MessageInitShape } from "@bufbuild/protobuf";
import type { OperationEventSchema, OperationResultSchema } from "../common/gen/flotilla/v1/agent_pb.js";
import type { ControllerService, RolloutSchema, RolloutEventSchema, ScheduleSchema } from "../common/gen/flotilla/v1/controller_pb.js";
import { AsyncQueue } from "../common/async-queue.js";
import { FlotillaError, toFlotillaError } from "../common/errors.js";
import type { CallContext, ServiceImpl } from "../common/grpc-bridge.js";
import type { Logger } from "../common/logger.js";
import { redact, redactValue } from "../common/redact.js";
import type { GrpcAgentPool } from "./agents/agent-pool.js";
import { hostOf, isLoopbackHost } from "../common/tls.js";
import { type AuditLog, outcomeFilter } from "./audit/audit-log.js";
import type { ControllerConfig, Role } from "./config.js";
import type { ControllerStore, RolloutDoc, ScheduleDoc } from "./core/ports.js";
import type { Inventory } from "./inventory.js";
import type { RolloutEngine } from "./rollout-engine.js";
import { preflightVerdict, type PreflightAnswer, upToDateWhenNothingPending } from "./core/rollout-plan.js";
import { type RevisionClass, checkCompatibility, classesFromPlan, strategiesAllowed } from "./core/compatibility-gate.js";
import { Scheduler } from "./scheduler.js";
import {
  DEFAULT_STRATEGY,
  ProtoStrategy,
  checkSelector,
  compileScheduleRequest,
  describeProblems,
  orInvalidArgument,
  strategyName,
  strategyToProto,
} from "../common/rollout-request.js";
import { isRecoverAction, RECOVER_ACTIONS } from "../common/recover-action.js";

type RolloutInit = MessageInitShape<typeof RolloutSchema>;
type OpResultShape = import("@bufbuild/protobuf").MessageShape<typeof OperationResultSchema>;
type OpEventShape = import("@bufbuild/protobuf").MessageShape<typeof OperationEventSchema>;

const ROLE_RANK: Record<Role, number> = { viewer: 0, operator: 1, admin: 2 };

/** Role each method needs; reads are "viewer". */
const METHOD_ROLE: Record<string, Role> = {
  ListTargets: "viewer",
  DiagnoseTarget: "viewer",
  ListTargetBackups: "viewer",
  PlanRollout: "viewer",
  GetRollout: "viewer",
  ListRollouts: "viewer",
  WatchRollout: "viewer",
  ListSchedules: "viewer",
  QueryAudit: "viewer",
  VerifyAudit: "viewer",
  BackupTarget: "operator",
  RehearseTarget: "operator",
  StartRollout: "operator",
  AbortRollout: "operator",
  RegisterAgent: "operator",
  ApproveRollout: "operator",
  PauseRollout: "operator",
  ResumeRollout: "operator",
  RetryRollout: "operator",
  DrillTarget: "operator",
  BundleTarget: "operator",
  RestoreTarget: "admin",
  RecoverTarget: "admin",
  MoveTarget: "admin",
  DowngradeTarget: "admin",
  StampTarget: "admin",
  RollbackRollout: "admin",
  AddSchedule: "admin",
  RemoveSchedule: "admin",
};

const READS = new Set([
  "BundleTarget",
  "ListTargets",
  "DiagnoseTarget",
  "ListTargetBackups",
  "PlanRollout",
  "GetRollout",
  "ListRollouts",
  "WatchRollout",
  "ListSchedules",
  "QueryAudit",
  "VerifyAudit",
]);

/**
 * Methods a role may call (the page shows a button only when its method is here).
 * Methods the table does not name need admin, like authenticate() says.
 */
export function permittedMethods(role: Role, methods: readonly string[]): string[] {
  return methods.filter((m) => ROLE_RANK[role] >= ROLE_RANK[METHOD_ROLE[m] ?? "admin"]);
}

/** Holder names of leases taken by single API operations (a controller that becomes leader releases stale ones). */
export const API_LEASE_PREFIX = "op.";

/** The refusal for a target another rollout or operation holds, naming the holder and what to do. */
export function leaseRefusal(verb: string, targetId: string, heldBy: string): FlotillaError {
  const what = heldBy.startsWith(API_LEASE_PREFIX) ? `a ${heldBy.slice(API_LEASE_PREFIX.length).split(".")[0]} operation (${heldBy})` : `rollout ${heldBy}`;
  const todo = heldBy.startsWith(API_LEASE_PREFIX) ? "wait for it to finish" : `wait for it to finish (flotilla rollout show ${heldBy}) or abort it`;
  return new FlotillaError("LEASE_HELD", `refused: ${verb} of ${targetId} while ${what} holds it; ${todo}, then try again`);
}

/** A valid token whose role may not call the method: the audit row names who was refused. */
export class RoleDenied extends FlotillaError {
  constructor(
    readonly actor: string,
    message: string,
  ) {
    super("PERMISSION_DENIED", message);
  }
}

/** Who a refused call came from, for its audit row: the token's name when it was valid, else "unknown". */
export function deniedActor(err: unknown): string {
  return err instanceof RoleDenied ? err.actor : "unknown";
}

export interface Caller {
  readonly actor: string;
  readonly role: Role;
}

/** Authenticates a bearer token against the configured tokens (none configured: loopback-only, actor "local"). */
export function authenticate(config: ControllerConfig, authorization: string | undefined, method: string): Caller {
  if (config.tokens.length === 0) return { actor: "local", role: "admin" };
  const m = /^Bearer\s+(\S+)$/i.exec(authorization ?? "");
  if (!m) throw new FlotillaError("UNAUTHENTICATED", "this controller requires a token: pass --token or set FLOTILLA_TOKEN");
  const given = Buffer.from(m[1]!);
  const tok = config.tokens.find((t) => {
    const want = Buffer.from(t.value);
    return want.length === given.length && timingSafeEqual(want, given);
  });
  if (!tok) throw new FlotillaError("UNAUTHENTICATED", "the token is not valid for this controller");
  const need = METHOD_ROLE[method] ?? "admin";
  if (ROLE_RANK[tok.role] < ROLE_RANK[need]) throw new RoleDenied(tok.name, `${method} needs the ${need} role; token ${tok.name} has ${tok.role}`);
  return { actor: tok.name, role: tok.role };
}

export function rolloutMessage(d: RolloutDoc): RolloutInit {
  return {
    id: d.id,
    status: d.status,
    spec: {
      selector: d.spec.selector,
      toRevision: d.spec.toRevision,
      strategy: strategyToProto(d.spec.strategy),
      waves: d.spec.waves,
      maxFailures: d.spec.maxFailures,
      schedule: d.spec.schedule ?? "",
      window: d.spec.window ?? "",
      gate: d.spec.gate ?? "",
      allowBreaking: d.spec.allowBreaking ?? false,
    },
    targets: d.targets.map((t) => ({
      targetId: t.targetId,
      agentId: t.agentId,
      wave: t.wave,
      status: t.status,
      revisionBefore: t.revisionBefore,
      revisionAfter: t.revisionAfter,
      backupId: t.backupId,
      message: t.message,
      steps: t.steps.map((s) => ({
        name: s.name,
        state: s.state,
        agentId: s.agentId,
        operationId: s.operationId,
        detail: s.detail,
        startedAt: s.startedAt ?? "",
        finishedAt: s.finishedAt ?? "",
      })),
    })),
    createdAt: d.createdAt,
    finishedAt: d.finishedAt ?? "",
    actor: d.actor,
    message: d.message,
    warnings: d.warnings,
    currentWave: d.currentWave,
    waitingFor: d.waitingFor ?? "",
    gateExpiresAt: d.gateExpiresAt ?? "",
    paused: d.paused ?? false,
  };
}

/** A stored schedule as the API shows it, with its next run computed now. */
function scheduleMessage(s: ScheduleDoc): MessageInitShape<typeof ScheduleSchema> {
  const next = Scheduler.nextRun(s.cron, s.timeZone ?? "");
  return {
    name: s.name,
    cron: s.cron,
    selector: s.selector,
    strategy: strategyToProto(s.strategy),
    window: s.window,
    toRevision: s.toRevision,
    waves: s.waves,
    source: s.source,
    lastRun: s.lastRun ?? "",
    lastResult: s.lastResult ?? "",
    timeZone: s.timeZone || Scheduler.localTimeZone(),
    nextRun: next === undefined ? "" : next.toISOString(),
    gate: s.gate ?? "",
    maxFailures: s.maxFailures ?? 0,
    drill: s.drill ?? false,
  };
}

/** A request with a strategy as the audit log records it: the strategy by name, as the operator wrote it. */
function auditedSpec<T extends { strategy: ProtoStrategy }>(req: T): Omit<T, "strategy"> & { strategy: string } {
  return { ...req, strategy: strategyName(req.strategy) };
}

const TERMINAL = new Set(["succeeded", "failed", "halted", "aborted", "rolled-back"]);

export interface ControllerDeps {
  readonly config: ControllerConfig;
  readonly store: ControllerStore;
  readonly pool: GrpcAgentPool;
  readonly inventory: Inventory;
  readonly engine: RolloutEngine;
  readonly audit: AuditLog;
  readonly scheduler: Scheduler;
  readonly log: Logger;
  /** False on a standby replica: it serves reads and refuses changes. */
  readonly isLeader: () => boolean;
  /** Told the outcome of every call (metrics). */
  readonly onCall?: (method: string, outcome: "ok" | "error" | "denied") => void;
  /** Certificates that expire within 30 days (shown by `targets` and the page). */
  readonly certificateWarnings?: () => string[];
}

/**
 * The ControllerService handlers, shared by the gRPC server and the HTTP/JSON
 * gateway. Every call is authenticated. Changes are audited: they write an
 * intent row first and do nothing if it cannot be written (fail closed), then
 * their outcome. Denied calls are audited too. Routine reads are not (a page
 * left open must not write a row per refresh); exports and sign-ins are
 * audited by the HTTP gateway.
 */
export function controllerServiceImpl(d: ControllerDeps, callerOf: (method: string, ctx: CallContext) => Caller): ServiceImpl<typeof ControllerService.method> {
  async function audited<T>(method: string, ctx: CallContext, target: string, args: unknown, fn: (caller: Caller) => Promise<T>): Promise<T> {
    let caller: Caller;
    try {
      caller = callerOf(method, ctx);
    } catch (err) {
      const fe = toFlotillaError(err);
      d.onCall?.(method, "denied");
      await d.audit
        .append({ actor: deniedActor(err), action: `api.${method}`, target, args: redactValue(args), outcome: "denied", detail: fe.message })
        .catch(() => undefined);
      throw fe;
    }
    const read = READS.has(method);
    if (read) {
      try {
        const out = await fn(caller);
        d.onCall?.(method, "ok");
        return out;
      } catch (err) {
        d.onCall?.(method, "error");
        throw toFlotillaError(err);
      }
    }
    if (method !== "RegisterAgent" && !d.isLeader()) {
      throw new FlotillaError(
        "PRECONDITION_FAILED",
        "this controller replica is standing by (another replica leads): send changes to the leader; reads are served here",
      );
    }
    try {
      await d.audit.append({ actor: caller.actor, action: `api.${method}`, target, args: redactValue(args), outcome: "intent" });
    } catch (err) {
      throw new FlotillaError("AUDIT_UNAVAILABLE", `refused: the audit log cannot be written (${toFlotillaError(err).message}); nothing was done`);
    }
    try {
      const out = await fn(caller);
      d.onCall?.(method, "ok");
      await d.audit
        .append({ actor: caller.actor, action: `api.${method}`, target, outcome: "ok" })
        .catch((err: unknown) => d.log.error({ err: toFlotillaError(err) }, "audit write failed"));
      return out;
    } catch (err) {
      const fe = toFlotillaError(err);
      d.onCall?.(method, "error");
      await d.audit
        .append({ actor: caller.actor, action: `api.${method}`, target, outcome: "error", detail: `${fe.code}: ${fe.message}` })
        .catch(() => undefined);
      throw fe;
    }
  }

  async function ownerOf(targetId: string): Promise<{ agentId: string; appAgents: readonly string[] }> {
    if (!/^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/.test(targetId))
      throw new FlotillaError("INVALID_ARGUMENT", `"${targetId}" is not a target id (list them with: flotilla targets)`);
    const { targets } = await d.inventory.targets(`id=${targetId}`);
    const t = targets[0];
    if (!t) throw new FlotillaError("NOT_FOUND", `no target "${targetId}" on any reachable agent (list them with: flotilla targets)`);
    return { agentId: t.ownerAgent, appAgents: t.appAgents };
  }

  async function runOp(agentId: string, call: (c: Awaited<ReturnType<GrpcAgentPool["client"]>>) => AsyncIterable<OpEventShape>): Promise<OpResultShape> {
    const c = await d.pool.client(agentId);
    let result: OpResultShape | undefined;
    for await (const ev of call(c)) if (ev.event.case === "result") result = ev.event.value;
    if (!result) throw new FlotillaError("AGENT_UNAVAILABLE", `agent ${agentId} ended without a result`);
    if (result.status === "refused") throw new FlotillaError((result.errorCode || "PRECONDITION_FAILED") as FlotillaError["code"], result.message);
    return result;
  }

  const timeout = { timeoutMs: d.config.agentTimeoutMs };

  /**
   * Asks every selected target's agent for its Plan (where the agent applies
   * its safety policy) and refuses the whole request when any target refuses
   * the wanted revision: nothing is stopped, backed up or recorded.
   */
  async function preflight(req: Parameters<RolloutEngine["plan"]>[0]): Promise<{ refusal: { code: string; message: string } | null }> {
    const plan = await d.engine.plan(req, false);
    return d.engine.survey(plan.spec, plan.targets);
  }

  /**
   * Runs a change to targets under the same per-target lease rollouts take in
   * the store (the agent's journal lock guards the same target on its side):
   * a restore, downgrade, stamp, backup or recover sent while a rollout or
   * another such operation holds the target is refused, naming the holder.
   */
  async function leased<T>(verb: string, targetIds: readonly string[], fn: () => Promise<T>): Promise<T> {
    const holder = `${API_LEASE_PREFIX}${verb}.${randomUUID()}`;
    const lease = await d.store.acquireLeases(holder, targetIds);
    if (!lease.ok) throw leaseRefusal(verb, lease.targetId, lease.heldBy);
    try {
      return await fn();
    } finally {
      await d.store.releaseLeases(holder).catch((err: unknown) => d.log.error({ err: toFlotillaError(err), holder }, "could not release a lease"));
    }
  }

  return {
    listTargets: (req, ctx) =>
      audited("ListTargets", ctx, req.selector, req, async () => {
        const selector = req.selector === "" ? undefined : checkSelector(req.selector);
        if (selector !== undefined && !selector.ok)
          throw new FlotillaError("INVALID_ARGUMENT", describeProblems([{ field: "selector", message: selector.problem }]));
        const { targets, agents } = await d.inventory.targets(req.selector);
        const statuses = await Promise.all(targets.map((t) => d.inventory.status(t)));
        return {
          targets: statuses.map((s, i) =>
            "current" in s ? s : { targetId: s.targetId, agentId: s.agentId, error: s.error, labels: { ...targets[i]!.labels } },
          ),
          agents: agents.map((a) => ({ id: a.id, address: a.address, state: a.state, lastSeen: a.lastSeen, error: a.error, source: a.source })),
          warnings: d.certificateWarnings?.() ?? [],
        };
      }),
    diagnoseTarget: (req, ctx) =>
      audited("DiagnoseTarget", ctx, req.targetId, req, async () => {
        const { agentId } = await ownerOf(req.targetId);
        return (await d.pool.client(agentId)).diagnose({ targetId: req.targetId }, { timeoutMs: 300_000 });
      }),
    backupTarget: (req, ctx) =>
      audited("BackupTarget", ctx, req.targetId, req, async () => {
        const { agentId } = await ownerOf(req.targetId);
        return leased("backup", [req.targetId], () =>
          runOp(agentId, (c) => c.backup({ targetId: req.targetId, operationId: `api.${randomUUID()}`, verify: true }, timeout)),
        );
      }),
    listTargetBackups: (req, ctx) =>
      audited("ListTargetBackups", ctx, req.targetId, req, async () => {
        const { agentId } = await ownerOf(req.targetId);
        return (await d.pool.client(agentId)).listBackups({ targetId: req.targetId }, { timeoutMs: 30_000 });
      }),
    restoreTarget: (req, ctx) =>
      audited("RestoreTarget", ctx, req.targetId, req, async () => {
        if (!req.yes) throw new FlotillaError("INVALID_ARGUMENT", "restore replaces the database with the backup: confirm with --yes");
        if (!req.backupId) throw new FlotillaError("INVALID_ARGUMENT", "a backup id is required (list them with: flotilla backups TARGET)");
        const { agentId, appAgents } = await ownerOf(req.targetId);
        const others = appAgents.filter((a) => a !== agentId);
        return leased("restore", [req.targetId], async () => {
          for (const a of others) await runOp(a, (c) => c.stopApps({ targetId: req.targetId, operationId: `api.${randomUUID()}` }, timeout));
          try {
            return await runOp(agentId, (c) =>
              c.restore({ targetId: req.targetId, backupId: req.backupId, operationId: `api.${randomUUID()}`, manageApps: true }, timeout),
            );
          } finally {
            for (const a of others)
              await runOp(a, (c) => c.startApps({ targetId: req.targetId, operationId: `api.${randomUUID()}` }, timeout)).catch(() => undefined);
          }
        });
      }),
    downgradeTarget: (req, ctx) =>
      audited("DowngradeTarget", ctx, req.targetId, req, async () => {
        if (!req.toRevision) throw new FlotillaError("INVALID_ARGUMENT", "the revision to downgrade to is required (--to REVISION, or base)");
        if (!req.acceptDataLoss)
          throw new FlotillaError("DATA_LOSS_NOT_ACCEPTED", "a downgrade drops data added by later revisions: confirm with --accept-data-loss");
        const { agentId } = await ownerOf(req.targetId);
        return leased("downgrade", [req.targetId], () =>
          runOp(agentId, (c) =>
            c.downgrade({ targetId: req.targetId, toRevision: req.toRevision, acceptDataLoss: true, operationId: `api.${randomUUID()}` }, timeout),
          ),
        );
      }),
    stampTarget: (req, ctx) =>
      audited("StampTarget", ctx, req.targetId, req, async () => {
        if (!req.revision) throw new FlotillaError("INVALID_ARGUMENT", "the revision to stamp is required (flotilla stamp TARGET REVISION --reason ...)");
        const { agentId } = await ownerOf(req.targetId);
        return leased("stamp", [req.targetId], () =>
          runOp(agentId, (c) => c.stamp({ targetId: req.targetId, revision: req.revision, reason: req.reason, operationId: `api.${randomUUID()}` }, timeout)),
        );
      }),
    recoverTarget: (req, ctx) =>
      audited("RecoverTarget", ctx, req.targetId, req, async () => {
        if (!isRecoverAction(req.action)) throw new FlotillaError("INVALID_ARGUMENT", `--action must be ${RECOVER_ACTIONS.join(", ")}, not "${req.action}"`);
        const { agentId } = await ownerOf(req.targetId);
        return leased("recover", [req.targetId], () =>
          runOp(agentId, (c) =>
            c.recover({ targetId: req.targetId, operationId: req.operationId, action: req.action, newOperationId: `api.${randomUUID()}` }, timeout),
          ),
        );
      }),
    rehearseTarget: (req, ctx) =>
      audited("RehearseTarget", ctx, req.targetId, req, async () => {
        const { agentId } = await ownerOf(req.targetId);
        return runOp(agentId, (c) => c.rehearse({ targetId: req.targetId, toRevision: req.toRevision, operationId: `api.${randomUUID()}` }, timeout));
      }),
    drillTarget: (req, ctx) =>
      audited("DrillTarget", ctx, req.targetId, req, async () => {
        if (req.backupId && !/^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$/.test(req.backupId))
          throw new FlotillaError("INVALID_ARGUMENT", `"${req.backupId}" is not a backup id (list them with: flotilla backups ${req.targetId})`);
        const { agentId } = await ownerOf(req.targetId);
        return runOp(agentId, (c) => c.drill({ targetId: req.targetId, backupId: req.backupId, operationId: `api.${randomUUID()}` }, timeout));
      }),
    bundleTarget: (req, ctx) =>
      audited("BundleTarget", ctx, req.targetId, req, async () => {
        const { agentId } = await ownerOf(req.targetId);
        return (await d.pool.client(agentId)).bundle({ targetId: req.targetId }, { timeoutMs: 300_000 });
      }),
    moveTarget: (req, ctx) => {
      // The agent's events are passed through as they come; every finished step is audited too.
      const q = new AsyncQueue<MessageInitShape<typeof OperationEventSchema>>();
      let resultSent = false;
      void (async () => {
        try {
          await audited("MoveTarget", ctx, req.fromTargetId, req, async (caller) => {
            const from = await ownerOf(req.fromTargetId);
            const to = await ownerOf(req.toTargetId);
            if (from.agentId !== to.agentId) {
              throw new FlotillaError(
                "INVALID_ARGUMENT",
                `${req.fromTargetId} (agent ${from.agentId}) and ${req.toTargetId} (agent ${to.agentId}) are on different agents: a move copies between two targets of the same agent`,
              );
            }
            const holder = `${API_LEASE_PREFIX}move.${randomUUID()}`;
            const lease = await d.store.acquireLeases(holder, [req.fromTargetId, req.toTargetId]);
            if (!lease.ok) throw leaseRefusal("move", lease.targetId, lease.heldBy);
            try {
              const c = await d.pool.client(from.agentId);
              let result: OpResultShape | undefined;
              const stream = c.move(
                {
                  fromTargetId: req.fromTargetId,
                  toTargetId: req.toTargetId,
                  operationId: `api.${randomUUID()}`,
                  yes: req.yes,
                  skipOrphans: req.skipOrphans,
                  fromBackup: req.fromBackup,
                },
                { timeoutMs: 24 * 3600_000 },
              );
              for await (const ev of stream) {
                if (ev.event.case === "step" && ev.event.value.state !== "running") {
                  const s = ev.event.value;
                  await d.audit
                    .append({
                      actor: caller.actor,
                      action: `move.${s.name.split(":")[0]}`,
                      target: req.fromTargetId,
                      outcome: s.state === "failed" ? "error" : "ok",
                      detail: redact(`${s.name} ${s.state}: ${s.detail}`),
                    })
                    .catch((err: unknown) => d.log.error({ err: toFlotillaError(err) }, "audit write failed"));
                }
                if (ev.event.case === "result") {
                  result = ev.event.value;
                  resultSent = true;
                }
                q.push(ev);
              }
              if (!result) throw new FlotillaError("AGENT_UNAVAILABLE", `agent ${from.agentId} ended without a result`);
              if (result.status !== "succeeded") throw new FlotillaError((result.errorCode || "INTERNAL") as FlotillaError["code"], result.message);
            } finally {
              await d.store.releaseLeases(holder).catch(() => undefined);
            }
          });
          q.end();
        } catch (err) {
          // A refusal or failure the agent reported already travelled as the result event.
          if (resultSent) q.end();
          else q.fail(err);
        }
      })();
      return q;
    },
    planRollout: (req, ctx) =>
      audited("PlanRollout", ctx, req.selector, auditedSpec(req), async () => {
        const plan = await d.engine.plan(req, false);
        const warnings = [...plan.warnings];
        const refusals: PreflightAnswer[] = [];
        const classes = new Map<string, RevisionClass[]>();
        const targets = await Promise.all(
          plan.targets.map(async (t) => {
            const notes: string[] = [];
            const tw: string[] = [];
            let p: Awaited<ReturnType<Awaited<ReturnType<GrpcAgentPool["client"]>>["plan"]>> | undefined;
            try {
              p = await (await d.pool.client(t.agentId)).plan({ targetId: t.targetId, toRevision: plan.spec.toRevision }, { timeoutMs: 120_000 });
              notes.push(...p.notes);
            } catch (err) {
              const fe = toFlotillaError(err);
              // A wanted revision the target refuses (unknown, behind, another branch, ambiguous) refuses the plan.
              if (preflightVerdict([{ targetId: t.targetId, ok: false, code: fe.code, message: fe.message }]).refusal) {
                refusals.push({ targetId: t.targetId, ok: false, code: fe.code, message: fe.message });
              }
              tw.push(`cannot plan: ${fe.message}`);
            }
            const revs = p === undefined ? [] : classesFromPlan(p);
            if (p !== undefined) classes.set(t.targetId, revs);
            return {
              targetId: t.targetId,
              agentId: t.agentId,
              wave: t.wave,
              current: p?.current ?? [],
              pending: p?.pending ?? [],
              steps:
                p !== undefined && p.pending.length === 0 && upToDateWhenNothingPending(plan.spec.strategy)
                  ? []
                  : t.steps.map((s) => ({ name: s.name, agentId: s.agentId, detail: s.detail })),
              sql: p?.sql ?? "",
              sqlComplete: p?.sqlComplete ?? false,
              notes,
              warnings: tw,
              revisions: revs.map((r) => ({
                ...(p?.revisions.find((x) => x.id === r.id) ?? { id: r.id }),
                compatibility: r.compatibility,
                compatibilityReason: r.reason,
              })),
              allowedStrategies: strategiesAllowed(revs).map(strategyToProto),
            };
          }),
        );
        const refusal = preflightVerdict(refusals).refusal;
        if (refusal) throw new FlotillaError(refusal.code as FlotillaError["code"], refusal.message);
        const gate = checkCompatibility(plan.spec.strategy, classes, plan.spec.allowBreaking);
        if (!gate.ok) warnings.push(gate.message);
        return {
          spec: { ...plan.spec, strategy: strategyToProto(plan.spec.strategy) },
          targets,
          warnings,
          waveCount: new Set(plan.targets.map((t) => t.wave)).size,
          refused: !gate.ok,
        };
      }),
    startRollout: (req, ctx) =>
      audited("StartRollout", ctx, req.selector, auditedSpec(req), async (caller) => {
        // The engine asks each target's Plan once and refuses before anything is stopped.
        const doc = await d.engine.start({ ...req, schedule: "" }, caller.actor);
        return rolloutMessage(doc);
      }),
    getRollout: (req, ctx) =>
      audited("GetRollout", ctx, req.id, req, async () => {
        const doc = await d.engine.get(req.id);
        if (!doc) throw new FlotillaError("NOT_FOUND", `no rollout ${req.id} (list them with: flotilla rollouts)`);
        return rolloutMessage(doc);
      }),
    listRollouts: (req, ctx) =>
      audited("ListRollouts", ctx, "", req, async () => ({
        rollouts: (await d.store.listRollouts(req.limit > 0 ? Math.min(req.limit, 500) : 50)).map(rolloutMessage),
      })),
    watchRollout: (req, ctx) => {
      const q = new AsyncQueue<MessageInitShape<typeof RolloutEventSchema>>();
      void (async () => {
        try {
          await audited("WatchRollout", ctx, req.id, req, async () => {
            const unsubscribe = d.engine.onEvent(req.id, (e) => {
              if (e.kind === "line") {
                const l = e.line;
                q.push({
                  event: {
                    case: "line",
                    value: {
                      targetId: l.targetId,
                      step: l.step,
                      line: l.line,
                      revisionIndex: l.revisionIndex ?? 0,
                      revisionCount: l.revisionCount ?? 0,
                      elapsedMs: BigInt(l.elapsedMs ?? 0),
                      etaMs: BigInt(l.etaMs ?? 0),
                    },
                  },
                });
              } else {
                q.push({ event: { case: "snapshot", value: rolloutMessage(e.doc) } });
                if (TERMINAL.has(e.doc.status)) {
                  unsubscribe();
                  q.end();
                }
              }
            });
            ctx.signal.addEventListener(
              "abort",
              () => {
                unsubscribe();
                q.end();
              },
              { once: true },
            );
            const doc = await d.engine.get(req.id);
            if (!doc) {
              unsubscribe();
              throw new FlotillaError("NOT_FOUND", `no rollout ${req.id}`);
            }
            q.push({ event: { case: "snapshot", value: rolloutMessage(doc) } });
            if (TERMINAL.has(doc.status)) {
              unsubscribe();
              q.end();
            }
          });
        } catch (err) {
          q.fail(err);
        }
      })();
      return q;
    },
    abortRollout: (req, ctx) => audited("AbortRollout", ctx, req.id, req, async (caller) => rolloutMessage(await d.engine.abort(req.id, caller.actor))),
    rollbackRollout: (req, ctx) =>
      audited("RollbackRollout", ctx, req.id, req, async (caller) => {
        if (!req.yes)
          throw new FlotillaError(
            "INVALID_ARGUMENT",
            `yes: rollback restores the pre-migration backups and loses data written since; confirm with flotilla rollout rollback ${req.id} --yes`,
          );
        return rolloutMessage(await d.engine.rollback(req.id, caller.actor));
      }),
    approveRollout: (req, ctx) => audited("ApproveRollout", ctx, req.id, req, async (caller) => rolloutMessage(await d.engine.approve(req.id, caller.actor))),
    pauseRollout: (req, ctx) => audited("PauseRollout", ctx, req.id, req, async (caller) => rolloutMessage(await d.engine.pause(req.id, caller.actor))),
    resumeRollout: (req, ctx) => audited("ResumeRollout", ctx, req.id, req, async (caller) => rolloutMessage(await d.engine.resume(req.id, caller.actor))),
    retryRollout: (req, ctx) => audited("RetryRollout", ctx, req.id, req, async (caller) => rolloutMessage(await d.engine.retry(req.id, caller.actor))),
    addSchedule: (req, ctx) =>
      audited("AddSchedule", ctx, req.name, auditedSpec(req), async () => {
        // A drill schedule runs no migration: its strategy is only a placeholder.
        const { value: compiled } = orInvalidArgument(
          compileScheduleRequest(req.drill && req.strategy === ProtoStrategy.UNSPECIFIED ? { ...req, strategy: DEFAULT_STRATEGY } : req),
        );
        const existing = (await d.store.listSchedules()).find((x) => x.name === compiled.name);
        if (existing !== undefined && !req.replace) {
          throw new FlotillaError(
            "PRECONDITION_FAILED",
            `a schedule named ${compiled.name} exists already (${existing.cron} · ${existing.selector}); nothing was changed. Replace it with flotilla schedule replace ${compiled.name} … (or --replace), or pick another name`,
          );
        }
        const r = compiled.rollout;
        // The wanted revision is checked against the targets' agents now, not when the schedule fires.
        // A selector with no reachable target yet cannot be checked: the schedule is accepted then.
        const verdict = await preflight({ selector: r.selector, toRevision: r.toRevision, strategy: r.strategy, waves: r.waves }).catch(() => undefined);
        if (verdict?.refusal) throw new FlotillaError(verdict.refusal.code as FlotillaError["code"], verdict.refusal.message);
        const s = {
          name: compiled.name,
          cron: compiled.cron,
          timeZone: compiled.timeZone,
          selector: r.selector,
          strategy: r.strategy,
          window: r.window,
          toRevision: r.toRevision,
          waves: r.waves,
          gate: r.gate,
          maxFailures: r.maxFailures,
          source: "api" as const,
          ...(req.drill ? { drill: true } : {}),
        };
        await d.store.upsertSchedule(s);
        await d.scheduler.reload();
        return scheduleMessage(s);
      }),
    listSchedules: (req, ctx) =>
      audited("ListSchedules", ctx, "", req, async () => ({
        schedules: (await d.store.listSchedules()).map(scheduleMessage),
      })),
    removeSchedule: (req, ctx) =>
      audited("RemoveSchedule", ctx, req.name, req, async () => {
        if (!(await d.store.removeSchedule(req.name))) throw new FlotillaError("NOT_FOUND", `no schedule "${req.name}" (list them with: flotilla schedules)`);
        await d.scheduler.reload();
        return { schedules: (await d.store.listSchedules()).map(scheduleMessage) };
      }),
    queryAudit: (req, ctx) =>
      audited("QueryAudit", ctx, req.target, req, async () => {
        const outcome = outcomeFilter(req.outcome);
        const rows = await d.audit.query({
          ...(req.since ? { since: req.since } : {}),
          ...(req.until ? { until: req.until } : {}),
          ...(req.target ? { target: req.target } : {}),
          ...(req.actor ? { actor: req.actor } : {}),
          ...(req.action ? { action: req.action } : {}),
          ...(outcome !== undefined ? { outcome } : {}),
          ...(req.beforeSeq > 0n ? { beforeSeq: Number(req.beforeSeq) } : {}),
          limit: req.limit > 0 ? Math.min(req.limit, 10_000) : 1000,
        });
        return { entries: rows.map((r) => ({ ...r, seq: BigInt(r.seq) })) };
      }),
    verifyAudit: (req, ctx) =>
      audited("VerifyAudit", ctx, "", req, async () => {
        const v = await d.audit.verify();
        return { ok: v.ok, checked: BigInt(v.checked), firstBadSeq: BigInt(v.firstBadSeq), reason: v.reason };
      }),
    registerAgent: (req, ctx) =>
      audited("RegisterAgent", ctx, req.agentId, req, async () => {
        if (!/^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/.test(req.agentId)) throw new FlotillaError("INVALID_ARGUMENT", "agent_id is not valid");
        if (!/^[A-Za-z0-9.[\]:-]+:\d{1,5}$/.test(req.address)) throw new FlotillaError("INVALID_ARGUMENT", "address must be host:port");
        if (!ctx.secure && !isLoopbackHost(peerHost(ctx.peer))) {
          throw new FlotillaError(
            "PERMISSION_DENIED",
            "agent registration is accepted only over TLS (https:// to the controller's httpTls listener) or from this machine",
          );
        }
        // The host an agent registered with is its identity (its certificate must name it): fixed at registration.
        const known = (await d.store.listAgents()).find((a) => a.id === req.agentId);
        if (known && hostOf(known.address).toLowerCase() !== hostOf(req.address).toLowerCase()) {
          throw new FlotillaError(
            "PERMISSION_DENIED",
            `agent "${req.agentId}" registered at host ${hostOf(known.address)}; its identity is fixed at registration, so it cannot move to ${hostOf(req.address)}`,
          );
        }
        await d.store.upsertAgent({ id: req.agentId, address: req.address, source: "registered", lastSeen: new Date().toISOString() });
        d.pool.markHealth(req.agentId, true);
        return { heartbeatSeconds: 15 };
      }),
  };
}

/** The host of a peer as grpc-js (`ipv4:1.2.3.4:5`, `[::1]:5`) or the HTTP gateway (`1.2.3.4:5`) writes it. */
function peerHost(peer: string): string {
  return hostOf(peer.replace(/^ipv[46]:/, ""));
}
