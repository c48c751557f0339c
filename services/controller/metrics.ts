import { Counter, Gauge, Histogram, Registry } from "prom-client";
import type { AuditLog } from "./audit/audit-log.js";
import type { ControllerStore, RolloutDoc } from "./core/ports.js";
import type { Inventory } from "./inventory.js";

/** How many of the newest rollouts the rollout and step figures cover. */
const ROLLOUT_WINDOW = 500;
/** Agent status and audit verification are costly: read at most this often, whatever the scrape rate. */
const FLEET_TTL_MS = 60_000;
const AUDIT_TTL_MS = 300_000;
/** A scrape waits this long for a refresh, then answers with what it has. */
const REFRESH_WAIT_MS = 10_000;

export interface ControllerMetricsDeps {
  readonly store: ControllerStore;
  readonly inventory: Inventory;
  readonly audit: AuditLog;
  readonly isLeader: () => boolean;
  readonly now?: () => number;
}

interface FleetFacts {
  readonly agents: ReadonlyArray<{ id: string; up: boolean }>;
  readonly backups: ReadonlyArray<{ targetId: string; sizeBytes: number; createdAt: string }>;
  readonly targets: ReadonlyArray<{ targetId: string; state: string }>;
  readonly drills: ReadonlyArray<{ targetId: string; ok: boolean; at: string }>;
}

/** Keeps one value fresh: refreshed at most every ttl ms, a scrape never waits long for it. */
class Cached<T> {
  #value: T | undefined;
  #at = 0;
  #pending: Promise<void> | undefined;
  constructor(
    private readonly ttlMs: number,
    private readonly load: () => Promise<T>,
    private readonly now: () => number,
  ) {}

  async get(): Promise<T | undefined> {
    if (this.now() - this.#at > this.ttlMs && !this.#pending) {
      this.#pending = this.load()
        .then(
          (v) => {
            this.#value = v;
            this.#at = this.now();
          },
          () => {
            this.#at = this.now();
          },
        )
        .finally(() => {
          this.#pending = undefined;
        });
    }
    if (this.#pending) await Promise.race([this.#pending, new Promise((r) => setTimeout(r, REFRESH_WAIT_MS).unref())]);
    return this.#value;
  }
}

function durationSeconds(startedAt: string | undefined, finishedAt: string | undefined): number | undefined {
  if (!startedAt || !finishedAt) return undefined;
  const ms = Date.parse(finishedAt) - Date.parse(startedAt);
  return Number.isFinite(ms) && ms >= 0 ? ms / 1000 : undefined;
}

/**
 * The controller's Prometheus registry. Figures are read from the store, the
 * agents and the audit log when scraped (cached, see the TTLs above), so the
 * numbers are the same on every replica and survive restarts; only the API
 * call counter lives in memory.
 */
export class ControllerMetrics {
  readonly registry = new Registry();
  readonly #apiCalls: Counter<"method" | "outcome">;

  constructor(d: ControllerMetricsDeps) {
    const now = d.now ?? Date.now;
    const fleet = new Cached<FleetFacts>(
      FLEET_TTL_MS,
      async () => {
        const { targets, agents } = await d.inventory.targets("");
        const statuses = await Promise.all(targets.map((t) => d.inventory.status(t)));
        return {
          agents: agents.map((a) => ({ id: a.id, up: a.state === "up" })),
          backups: statuses.flatMap((s) =>
            "lastVerifiedBackup" in s && s.lastVerifiedBackup
              ? [{ targetId: s.targetId, sizeBytes: Number(s.lastVerifiedBackup.sizeBytes), createdAt: s.lastVerifiedBackup.createdAt }]
              : [],
          ),
          targets: statuses.map((s) => ({ targetId: s.targetId, state: "current" in s ? s.state || "ok" : "unreachable" })),
          drills: statuses.flatMap((s) => ("lastDrillAt" in s && s.lastDrillAt ? [{ targetId: s.targetId, ok: s.lastDrillOk, at: s.lastDrillAt }] : [])),
        };
      },
      now,
    );
    const chain = new Cached(AUDIT_TTL_MS, () => d.audit.verify(), now);
    const rollouts = async (): Promise<RolloutDoc[]> => d.store.listRollouts(ROLLOUT_WINDOW);
    const r = this.registry;

    this.#apiCalls = new Counter({
      name: "flotilla_api_calls_total",
      help: "API calls by method and outcome (ok, error, denied) since start",
      labelNames: ["method", "outcome"],
      registers: [r],
    });

    new Gauge({
      name: "flotilla_leader",
      help: "1 when this replica leads (acts on rollouts and schedules), 0 on a standby",
      registers: [r],
      collect() {
        this.set(d.isLeader() ? 1 : 0);
      },
    });
    new Gauge({
      name: "flotilla_rollouts",
      help: `Rollouts by status (the newest ${ROLLOUT_WINDOW})`,
      labelNames: ["status"],
      registers: [r],
      async collect() {
        this.reset();
        for (const doc of await rollouts()) this.inc({ status: doc.status });
      },
    });
    new Gauge({
      name: "flotilla_rollout_targets",
      help: `Targets of rollouts by outcome (the newest ${ROLLOUT_WINDOW} rollouts)`,
      labelNames: ["status"],
      registers: [r],
      async collect() {
        this.reset();
        for (const doc of await rollouts()) for (const t of doc.targets) this.inc({ status: t.status });
      },
    });
    new Histogram({
      name: "flotilla_rollout_step_duration_seconds",
      help: `Duration of finished rollout steps by step name and state (the newest ${ROLLOUT_WINDOW} rollouts)`,
      labelNames: ["step", "state"],
      buckets: [0.1, 0.5, 1, 5, 15, 60, 300, 900, 3600],
      registers: [r],
      async collect() {
        this.reset();
        for (const doc of await rollouts()) {
          for (const t of doc.targets) {
            for (const s of t.steps) {
              const sec = durationSeconds(s.startedAt, s.finishedAt);
              if (sec !== undefined) this.observe({ step: s.name, state: s.state }, sec);
            }
          }
        }
      },
    });
    new Gauge({
      name: "flotilla_agent_up",
      help: "1 when the agent answered the controller's last call",
      labelNames: ["agent"],
      registers: [r],
      async collect() {
        this.reset();
        for (const a of (await fleet.get())?.agents ?? []) this.set({ agent: a.id }, a.up ? 1 : 0);
      },
    });
    new Gauge({
      name: "flotilla_targets",
      help: "Targets by state (ok, broken, unreachable)",
      labelNames: ["state"],
      registers: [r],
      async collect() {
        this.reset();
        for (const t of (await fleet.get())?.targets ?? []) this.inc({ state: t.state });
      },
    });
    new Gauge({
      name: "flotilla_backup_last_verified_bytes",
      help: "Size of each target's last verified backup",
      labelNames: ["target"],
      registers: [r],
      async collect() {
        this.reset();
        for (const b of (await fleet.get())?.backups ?? []) this.set({ target: b.targetId }, b.sizeBytes);
      },
    });
    new Gauge({
      name: "flotilla_backup_last_verified_age_seconds",
      help: "Age of each target's last verified backup",
      labelNames: ["target"],
      registers: [r],
      async collect() {
        this.reset();
        for (const b of (await fleet.get())?.backups ?? []) {
          const at = Date.parse(b.createdAt);
          if (Number.isFinite(at)) this.set({ target: b.targetId }, Math.max(0, (now() - at) / 1000));
        }
      },
    });
    new Gauge({
      name: "flotilla_drill_last_ok",
      help: "1 when each target's last restore drill passed, 0 when it failed (absent: never drilled)",
      labelNames: ["target"],
      registers: [r],
      async collect() {
        this.reset();
        for (const dr of (await fleet.get())?.drills ?? []) this.set({ target: dr.targetId }, dr.ok ? 1 : 0);
      },
    });
    new Gauge({
      name: "flotilla_drill_last_age_seconds",
      help: "Age of each target's last restore drill",
      labelNames: ["target"],
      registers: [r],
      async collect() {
        this.reset();
        for (const dr of (await fleet.get())?.drills ?? []) {
          const at = Date.parse(dr.at);
          if (Number.isFinite(at)) this.set({ target: dr.targetId }, Math.max(0, (now() - at) / 1000));
        }
      },
    });
    new Gauge({
      name: "flotilla_audit_chain_ok",
      help: "1 when the audit hash chain verified at the last check (every 5 minutes at most), 0 when broken",
      registers: [r],
      async collect() {
        const v = await chain.get();
        if (v) this.set(v.ok ? 1 : 0);
      },
    });
    new Gauge({
      name: "flotilla_audit_entries_checked",
      help: "Audit entries checked by the last chain verification",
      registers: [r],
      async collect() {
        const v = await chain.get();
        if (v) this.set(v.checked);
      },
    });
  }

  /** Counts one API call (ServiceImpl's onCall). */
  countCall(method: string, outcome: "ok" | "error" | "denied"): void {
    this.#apiCalls.inc({ method, outcome });
  }

  /** The Prometheus text exposition. */
  text(): Promise<string> {
    return this.registry.metrics();
  }

  get contentType(): string {
    return this.registry.contentType;
  }
}
