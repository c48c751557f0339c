import type { MessageInitShape } from "@bufbuild/protobuf";
import { streamOf } from "../../common/async-queue.js";
import { FlotillaError } from "../../common/errors.js";
import type { ServiceImpl } from "../../common/grpc-bridge.js";
import { AgentService, type BackupInfoSchema, type OperationEventSchema, type TargetStatusSchema } from "../../common/gen/flotilla/v1/agent_pb.js";
import type { AgentConfig } from "../config.js";
import type { BackupManifest } from "../adapters/backup-catalog.js";
import type { OperationRow } from "../core/ports.js";
import type { AgentOperations, OpEvent, OpResult } from "../operations/index.js";

type EventInit = MessageInitShape<typeof OperationEventSchema>;

/** Manifest → wire BackupInfo. */
export function backupInfo(m: BackupManifest): MessageInitShape<typeof BackupInfoSchema> {
  return {
    id: m.id,
    targetId: m.targetId,
    kind: m.kind,
    sizeBytes: BigInt(m.sizeBytes),
    sha256: m.sha256,
    revisions: [...m.revisions],
    createdAt: m.createdAt,
    verified: m.verified,
    verifiedAt: m.verifiedAt,
    verification: m.verification,
    operationId: m.operationId,
    source: m.source,
    path: m.path,
    appVersion: m.appVersion ?? "",
    companionPaths: m.companions?.length ?? 0,
    companionBytes: BigInt(m.companionBytes ?? 0),
    companionNewBytes: BigInt(m.companionNewBytes ?? 0),
  };
}

function eventOf(e: OpEvent): EventInit {
  switch (e.kind) {
    case "progress":
      return {
        event: {
          case: "progress",
          value: {
            source: e.source,
            line: e.line,
            bytesDone: BigInt(e.bytesDone ?? 0),
            bytesTotal: BigInt(e.bytesTotal ?? 0),
            revisionIndex: e.revisionIndex ?? 0,
            revisionCount: e.revisionCount ?? 0,
            revision: e.revision ?? "",
            elapsedMs: BigInt(Math.round(e.elapsedMs ?? 0)),
            etaMs: BigInt(Math.round(e.etaMs ?? 0)),
            ...(e.tableCount !== undefined
              ? {
                  table: e.table ?? "",
                  tableIndex: e.tableIndex ?? 0,
                  tableCount: e.tableCount,
                  rowsDone: BigInt(e.rowsDone ?? 0),
                  rowsTotal: BigInt(e.rowsTotal ?? 0),
                  bytesPerSecond: BigInt(e.bytesPerSecond ?? 0),
                }
              : {}),
          },
        },
      };
    case "step":
      return { event: { case: "step", value: { name: e.name, state: e.state, detail: e.detail, durationMs: BigInt(e.durationMs ?? 0) } } };
    case "result":
      return { event: { case: "result", value: resultOf(e.result) } };
  }
}

function resultOf(r: OpResult): Extract<EventInit["event"], { case: "result" }>["value"] {
  return {
    operationId: r.operationId,
    kind: r.kind,
    status: r.status,
    errorCode: r.errorCode,
    message: r.message,
    revisionBefore: r.revisionBefore,
    revisionAfter: r.revisionAfter,
    ...(r.backup ? { backup: backupInfo(r.backup) } : {}),
    timings: r.timings.map((x) => ({ fromRevision: x.from, toRevision: x.to, durationMs: BigInt(x.durationMs), message: x.message })),
    failureClass: r.failureClass,
    restored: r.restored,
    outputTail: r.outputTail,
    durationMs: BigInt(r.durationMs),
    details: r.details,
    effect: r.effect,
    blockingSessions: r.blockingSessions,
  };
}

function opStream(run: (emit: (e: OpEvent) => void) => Promise<OpResult>): AsyncIterable<EventInit> {
  return streamOf<EventInit>(async (push) => {
    await run((e) => push(eventOf(e)));
  });
}

const WIRE_ID = /^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$/;

/** An optional id from the wire (rollout id): empty, or letters, digits, . _ : - (never a path, NUL or newline). */
function optionalId(value: string, what: string): string {
  if (value !== "" && !WIRE_ID.test(value))
    throw new FlotillaError("INVALID_ARGUMENT", `${what} "${value.slice(0, 80)}" is not valid (letters, digits, . _ : -)`);
  return value;
}

/** An app color from the wire: "" (all), blue or green. */
function colorOf(value: string): string {
  if (value !== "" && value !== "blue" && value !== "green") throw new FlotillaError("INVALID_ARGUMENT", `color "${value.slice(0, 40)}" is not blue or green`);
  return value;
}

/**
 * A revision from the wire, checked for shape before any operation looks at the
 * graph (which may start `alembic history`): "" (head), head, base where the
 * verb allows it, or an id of letters, digits and _ — never `-N`, `+N`, a path or an option.
 */
function revisionOf(value: string, what: string, allowBase = false): string {
  if (value === "" || value === "head" || (allowBase && value === "base") || /^[A-Za-z0-9_]{1,64}$/.test(value)) return value;
  throw new FlotillaError(
    "INVALID_ARGUMENT",
    `${what} "${value.slice(0, 80)}" is not a revision: use head${allowBase ? ", base" : ""} or a revision id from the app's history`,
  );
}

/** TargetStatus fields of the last restore drill. */
function drillStatus(o: OperationRow | undefined): { lastDrillAt?: string; lastDrillOk?: boolean; lastDrillBackupId?: string; lastDrillMessage?: string } {
  if (!o) return {};
  return { lastDrillAt: o.finishedAt || o.startedAt, lastDrillOk: o.state === "succeeded", lastDrillBackupId: o.backupId, lastDrillMessage: o.message };
}

function need(value: string, what: string): string {
  if (value === "") throw new FlotillaError("INVALID_ARGUMENT", `${what} is required`);
  return value;
}

/**
 * The gRPC AgentService: validated requests in, operations, wire messages out.
 * Operations run to completion even when the caller goes away: a controller
 * crash or a network blip must not stop a migration half-way (the controller
 * reads the outcome from the journal with GetOperation).
 */
export function agentServiceImpl(config: AgentConfig, ops: AgentOperations, version: string): ServiceImpl<typeof AgentService.method> {
  const status = async (targetId: string): Promise<MessageInitShape<typeof TargetStatusSchema>> => {
    const t = ops.target(need(targetId, "target_id"));
    const s = await ops.status(targetId);
    return {
      targetId,
      kind: t.config.kind,
      labels: { ...t.config.labels },
      current: s.current,
      heads: s.heads,
      pending: s.pending.map((p) => ({ id: p.id, down: p.down, message: p.message })),
      apps: s.apps.map((a) => ({ id: a.id, targetId, color: a.color, state: a.state, detail: a.detail })),
      ...(s.lastVerified ? { lastVerifiedBackup: backupInfo(s.lastVerified) } : {}),
      busyOperationId: s.busy,
      interruptedOperationIds: s.interrupted,
      error: s.error,
      currentKnown: s.currentKnown,
      agentId: config.agentId,
      database: t.config.database,
      ...drillStatus(ops.lastDrill(targetId)),
    };
  };
  return {
    async getInfo() {
      return {
        agentId: config.agentId,
        version,
        targets: config.targets.map((t) => ({ id: t.id, kind: t.kind, labels: { ...t.labels }, blueGreen: t.blueGreen !== undefined, database: t.database })),
        apps: config.apps.map((a) => ({ id: a.id, targetId: a.target, color: a.color, state: "", detail: "" })),
      };
    },
    getStatus: (req) => status(req.targetId),
    async diagnose(req) {
      const r = await ops.diagnose(need(req.targetId, "target_id"));
      return { targetId: req.targetId, findings: r.findings, problems: r.problems };
    },
    async plan(req) {
      const p = await ops.plan(need(req.targetId, "target_id"), revisionOf(req.toRevision, "to_revision"));
      return {
        targetId: req.targetId,
        current: p.current,
        toRevision: p.to,
        pending: p.pending,
        sql: p.sql,
        sqlComplete: p.sqlComplete,
        notes: p.notes,
        additiveOnly: p.additiveOnly,
        revisions: p.revisions.map((r) => ({ ...r, estimateMs: BigInt(Math.round(r.estimateMs)) })),
      };
    },
    async listBackups(req) {
      return { backups: (await ops.listBackups(need(req.targetId, "target_id"))).map(backupInfo) };
    },
    async getOperation(req) {
      const o = ops.getOperation(need(req.operationId, "operation_id"));
      if (!o) throw new FlotillaError("NOT_FOUND", `operation ${req.operationId} is not in this agent's journal`);
      return { ...o };
    },
    async listOperations(req) {
      if (req.targetId !== "") ops.target(req.targetId);
      return { operations: ops.listOperations(req.targetId || undefined, req.limit > 0 ? Math.min(req.limit, 500) : 50).map((o) => ({ ...o })) };
    },
    backup: (req) =>
      opStream((emit) =>
        ops.backup({ targetId: req.targetId, operationId: req.operationId, rolloutId: optionalId(req.rolloutId, "rollout_id"), verify: req.verify }, emit),
      ),
    verifyBackup: (req) =>
      opStream((emit) => ops.verifyBackup({ targetId: req.targetId, backupId: need(req.backupId, "backup_id"), operationId: req.operationId }, emit)),
    restore: (req) =>
      opStream((emit) =>
        ops.restore({ targetId: req.targetId, backupId: need(req.backupId, "backup_id"), operationId: req.operationId, manageApps: req.manageApps }, emit),
      ),
    migrate: (req) =>
      opStream((emit) =>
        ops.migrate(
          {
            targetId: req.targetId,
            toRevision: revisionOf(req.toRevision, "to_revision"),
            operationId: req.operationId,
            rolloutId: optionalId(req.rolloutId, "rollout_id"),
            backupId: req.backupId,
            takeBackup: req.takeBackup,
            online: req.online,
            green: req.green,
            lockTimeoutMs: req.lockTimeoutMs,
          },
          emit,
        ),
      ),
    rehearse: (req) =>
      opStream((emit) => ops.rehearse({ targetId: req.targetId, toRevision: revisionOf(req.toRevision, "to_revision"), operationId: req.operationId }, emit)),
    downgrade: (req) =>
      opStream((emit) =>
        ops.downgrade(
          {
            targetId: req.targetId,
            toRevision: revisionOf(need(req.toRevision, "to_revision"), "to_revision", true),
            operationId: req.operationId,
            acceptDataLoss: req.acceptDataLoss,
          },
          emit,
        ),
      ),
    stamp: (req) =>
      opStream((emit) =>
        ops.stamp(
          { targetId: req.targetId, revision: revisionOf(need(req.revision, "revision"), "revision"), operationId: req.operationId, reason: req.reason },
          emit,
        ),
      ),
    stopApps: (req) => opStream((emit) => ops.stopApps({ targetId: req.targetId, operationId: req.operationId, color: colorOf(req.color) }, emit)),
    startApps: (req) => opStream((emit) => ops.startApps({ targetId: req.targetId, operationId: req.operationId, color: colorOf(req.color) }, emit)),
    async checkHealth(req) {
      optionalId(req.operationId, "operation_id");
      const h = await ops.health(need(req.targetId, "target_id"), colorOf(req.color));
      return { apps: h.apps.map((a) => ({ id: a.id, targetId: req.targetId, color: a.color, state: a.state, detail: a.detail })), healthy: h.healthy };
    },
    clone: (req) =>
      opStream((emit) => ops.clone({ targetId: req.targetId, operationId: req.operationId, rolloutId: optionalId(req.rolloutId, "rollout_id") }, emit)),
    switch: (req) => opStream((emit) => ops.switchTraffic({ targetId: req.targetId, operationId: req.operationId, color: req.color }, emit)),
    drill: (req) => opStream((emit) => ops.drill({ targetId: req.targetId, backupId: req.backupId, operationId: req.operationId }, emit)),
    async bundle(req) {
      const b = await ops.bundle(need(req.targetId, "target_id"), version);
      return { fileName: b.fileName, data: b.data, entries: b.entries };
    },
    move: (req) =>
      opStream((emit) =>
        ops.move(
          {
            fromTargetId: need(req.fromTargetId, "from_target_id"),
            toTargetId: need(req.toTargetId, "to_target_id"),
            operationId: req.operationId,
            yes: req.yes,
            skipOrphans: req.skipOrphans,
            fromBackup: req.fromBackup,
          },
          emit,
        ),
      ),
    recover: (req) =>
      opStream((emit) => ops.recover({ targetId: req.targetId, operationId: req.operationId, action: req.action, newOperationId: req.newOperationId }, emit)),
  };
}
