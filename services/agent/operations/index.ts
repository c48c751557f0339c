import type { BackupManifest, OperationRow } from "../core/ports.js";
import type { Finding } from "../core/diagnose.js";
import { OperationContext, type Emit, type OperationsDeps, type OpResult, type TargetRuntime } from "./context.js";
import * as apps from "./apps.js";
import * as backups from "./backup.js";
import * as blueGreen from "./blue-green.js";
import * as migrations from "./migrate.js";
import * as moving from "./move.js";
import * as reads from "./reads.js";
import * as recovery from "./recover.js";
import * as stamping from "./stamp.js";
import * as drills from "./drill.js";
import * as bundles from "./bundle.js";

export { OPERATION_ENV, type Emit, type OpEffect, type OpEvent, type OpResult, type OperationsDeps, type TargetRuntime } from "./context.js";

type Req<F> = F extends (ctx: OperationContext, req: infer R, ...rest: never[]) => unknown ? R : never;

/**
 * The agent's operations: a thin façade over the verb groups in this folder
 * (reads, backup, apps, migrate, stamp, blue-green, recover). Each operation
 * runs under the target's lock, is journaled before it acts, streams progress
 * through `emit`, and always ends with one result event (refusals and
 * failures are results, not exceptions).
 */
export class AgentOperations {
  readonly ctx: OperationContext;

  constructor(deps: OperationsDeps) {
    this.ctx = new OperationContext(deps);
  }

  target(id: string): TargetRuntime {
    return this.ctx.target(id);
  }

  // reads
  status(targetId: string): ReturnType<typeof reads.status> {
    return reads.status(this.ctx, targetId);
  }
  diagnose(targetId: string): Promise<{ findings: Finding[]; problems: boolean }> {
    return reads.diagnose(this.ctx, targetId);
  }
  plan(targetId: string, to: string): ReturnType<typeof reads.plan> {
    return reads.plan(this.ctx, targetId, to);
  }

  // backups
  backup(req: Req<typeof backups.backup>, emit: Emit, signal?: AbortSignal): Promise<OpResult> {
    return backups.backup(this.ctx, req, emit, signal);
  }
  verifyBackup(req: Req<typeof backups.verifyBackup>, emit: Emit, signal?: AbortSignal): Promise<OpResult> {
    return backups.verifyBackup(this.ctx, req, emit, signal);
  }
  listBackups(targetId: string): Promise<BackupManifest[]> {
    return backups.listBackups(this.ctx, targetId);
  }
  restore(req: Req<typeof backups.restore>, emit: Emit, signal?: AbortSignal): Promise<OpResult> {
    return backups.restore(this.ctx, req, emit, signal);
  }

  // apps
  stopApps(req: Req<typeof apps.stopApps>, emit: Emit, signal?: AbortSignal): Promise<OpResult> {
    return apps.stopApps(this.ctx, req, emit, signal);
  }
  startApps(req: Req<typeof apps.startApps>, emit: Emit, signal?: AbortSignal): Promise<OpResult> {
    return apps.startApps(this.ctx, req, emit, signal);
  }
  health(targetId: string, color: string): ReturnType<typeof apps.health> {
    return apps.health(this.ctx, targetId, color);
  }

  // schema
  migrate(req: Req<typeof migrations.migrate>, emit: Emit, signal?: AbortSignal): Promise<OpResult> {
    return migrations.migrate(this.ctx, req, emit, signal);
  }
  rehearse(req: Req<typeof migrations.rehearse>, emit: Emit, signal?: AbortSignal): Promise<OpResult> {
    return migrations.rehearse(this.ctx, req, emit, signal);
  }
  downgrade(req: Req<typeof migrations.downgrade>, emit: Emit, signal?: AbortSignal): Promise<OpResult> {
    return migrations.downgrade(this.ctx, req, emit, signal);
  }
  stamp(req: Req<typeof stamping.stamp>, emit: Emit, signal?: AbortSignal): Promise<OpResult> {
    return stamping.stamp(this.ctx, req, emit, signal);
  }

  // blue-green
  clone(req: Req<typeof blueGreen.clone>, emit: Emit, signal?: AbortSignal): Promise<OpResult> {
    return blueGreen.clone(this.ctx, req, emit, signal);
  }
  switchTraffic(req: Req<typeof blueGreen.switchTraffic>, emit: Emit, signal?: AbortSignal): Promise<OpResult> {
    return blueGreen.switchTraffic(this.ctx, req, emit, signal);
  }

  // app state: restore drills and the diagnostics bundle
  drill(req: Req<typeof drills.drill>, emit: Emit, signal?: AbortSignal): Promise<OpResult> {
    return drills.drill(this.ctx, req, emit, signal);
  }
  lastDrill(targetId: string): OperationRow | undefined {
    return drills.lastDrill(this.ctx, targetId);
  }
  bundle(targetId: string, agentVersion: string): ReturnType<typeof bundles.bundle> {
    return bundles.bundle(this.ctx, targetId, agentVersion);
  }
  // move between SQLite and PostgreSQL
  move(req: Req<typeof moving.moveTarget>, emit: Emit, signal?: AbortSignal): Promise<OpResult> {
    return moving.moveTarget(this.ctx, req, emit, signal);
  }

  // recovery and the journal
  recover(req: Req<typeof recovery.recover>, emit: Emit, signal?: AbortSignal): Promise<OpResult> {
    return recovery.recover(this.ctx, req, emit, signal);
  }
  getOperation(id: string): OperationRow | undefined {
    return this.ctx.deps.journal.get(id);
  }
  listOperations(targetId: string | undefined, limit: number): OperationRow[] {
    return this.ctx.deps.journal.list(targetId, limit);
  }
}
