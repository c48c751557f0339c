import cron, { type ScheduledTask } from "node-cron";
import { toFlotillaError } from "../common/errors.js";
import type { Logger } from "../common/logger.js";
import type { AuditLog } from "./audit/audit-log.js";
import type { ControllerStore, ScheduleDoc } from "./core/ports.js";
import type { RolloutEngine } from "./rollout-engine.js";

/**
 * Fires scheduled fleet-wide rollouts with node-cron. Each fire is claimed in
 * the store under (name, slot) first, so a slot never runs twice; a target in
 * another rollout makes the fire report "skipped", never queue; a slot missed
 * while the controller was down is reported, not run late.
 */
export class Scheduler {
  private readonly tasks = new Map<string, ScheduledTask>();
  constructor(
    private readonly d: {
      store: ControllerStore;
      engine: RolloutEngine;
      audit: AuditLog;
      log: Logger;
      /** Runs restore drills for a drill schedule; returns a one-line result. */
      drill?: (selector: string, actor: string) => Promise<string>;
    },
  ) {}

  /** When a cron expression fires next after `from`, read in `timeZone` ("" = the controller's); undefined if never. */
  static nextRun(expr: string, timeZone: string, from = new Date()): Date | undefined {
    try {
      const task = cron.createTask(expr, () => undefined, timeZone === "" ? {} : { timezone: timeZone });
      const next = task.getNextRuns(1)[0];
      void task.destroy();
      return next !== undefined && next.getTime() > from.getTime() - 60_000 ? next : undefined;
    } catch {
      return undefined;
    }
  }

  /** The controller's own IANA time zone. */
  static localTimeZone(): string {
    return Intl.DateTimeFormat().resolvedOptions().timeZone;
  }

  async reload(): Promise<void> {
    for (const t of this.tasks.values()) await t.destroy();
    this.tasks.clear();
    for (const s of await this.d.store.listSchedules()) this.add(s);
  }

  private add(s: ScheduleDoc): void {
    const task = cron.schedule(
      s.cron,
      async (ctx) => {
        const slot = new Date(Math.floor(ctx.date.getTime() / 60_000) * 60_000).toISOString();
        await this.fire(s.name, slot);
      },
      { name: s.name, noOverlap: true, ...(s.timeZone ? { timezone: s.timeZone } : {}) },
    );
    task.on("execution:missed", () => {
      void this.d.audit
        .append({
          actor: `schedule:${s.name}`,
          action: "schedule.missed",
          target: s.selector,
          outcome: "error",
          detail: "the scheduled time passed while the controller could not run it; not run late",
        })
        .catch(() => undefined);
    });
    this.tasks.set(s.name, task);
  }

  /** One fire of a schedule for a time slot (also used by tests). */
  async fire(name: string, slot: string): Promise<string> {
    const s = (await this.d.store.listSchedules()).find((x) => x.name === name);
    if (!s) return "gone";
    if (!(await this.d.store.claimScheduleFire(name, slot))) return "already-fired";
    let result: string;
    try {
      if (s.drill && this.d.drill) {
        result = await this.d.drill(s.selector, `schedule:${s.name}`);
        await this.d.store.upsertSchedule({ ...s, lastRun: slot, lastResult: result });
        await this.d.audit
          .append({
            actor: `schedule:${name}`,
            action: "schedule.drill",
            target: s.selector,
            args: { slot },
            outcome: result.startsWith("passed") ? "ok" : "error",
            detail: result,
          })
          .catch(() => undefined);
        return result;
      }
      const doc = await this.d.engine.start(
        {
          selector: s.selector,
          strategy: s.strategy,
          toRevision: s.toRevision,
          waves: s.waves,
          maxFailures: s.maxFailures ?? 0,
          gate: s.gate ?? "",
          schedule: s.name,
          window: s.window,
        },
        `schedule:${s.name}`,
      );
      result = `started ${doc.id}`;
    } catch (err) {
      const fe = toFlotillaError(err);
      result = fe.code === "LEASE_HELD" ? `skipped: ${fe.message}` : `failed: ${fe.message}`;
      this.d.log.warn({ schedule: name, code: fe.code }, "scheduled rollout not started");
    }
    await this.d.store.upsertSchedule({ ...s, lastRun: slot, lastResult: result });
    await this.d.audit
      .append({
        actor: `schedule:${name}`,
        action: "schedule.fire",
        target: s.selector,
        args: { slot },
        outcome: result.startsWith("started") ? "ok" : "error",
        detail: result,
      })
      .catch(() => undefined);
    return result;
  }

  async close(): Promise<void> {
    for (const t of this.tasks.values()) await t.destroy();
    this.tasks.clear();
  }
}
