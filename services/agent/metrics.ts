import { Counter, Gauge, Histogram, Registry } from "prom-client";

/** What the agent's metrics read when scraped: each target's last verified backup time (ISO), if any. */
export interface AgentMetricsDeps {
  readonly lastVerifiedBackups: () => Promise<ReadonlyArray<{ targetId: string; createdAt?: string; sizeBytes?: number }>>;
  readonly now?: () => number;
}

/** The result part of an operation event as it goes on the wire. */
interface ResultLike {
  readonly kind: string;
  readonly status: string;
  readonly durationMs: bigint | number;
}

/**
 * The agent's Prometheus registry: operations by kind and outcome, their
 * durations, and the age of each target's last verified backup (read from
 * the backup catalog when scraped).
 */
export class AgentMetrics {
  readonly registry = new Registry();
  readonly #ops: Counter<"kind" | "status">;
  readonly #durations: Histogram<"kind" | "status">;

  constructor(d: AgentMetricsDeps) {
    const now = d.now ?? Date.now;
    const r = this.registry;
    this.#ops = new Counter({
      name: "flotilla_agent_operations_total",
      help: "Operations finished since start, by kind (migrate, backup, restore, …) and status",
      labelNames: ["kind", "status"],
      registers: [r],
    });
    this.#durations = new Histogram({
      name: "flotilla_agent_operation_duration_seconds",
      help: "Duration of finished operations by kind and status",
      labelNames: ["kind", "status"],
      buckets: [0.05, 0.25, 1, 5, 15, 60, 300, 900, 3600],
      registers: [r],
    });
    new Gauge({
      name: "flotilla_agent_last_backup_age_seconds",
      help: "Age of each target's last verified backup (absent: none)",
      labelNames: ["target"],
      registers: [r],
      async collect() {
        this.reset();
        for (const b of await d.lastVerifiedBackups()) {
          const at = b.createdAt ? Date.parse(b.createdAt) : Number.NaN;
          if (Number.isFinite(at)) this.set({ target: b.targetId }, Math.max(0, (now() - at) / 1000));
        }
      },
    });
    new Gauge({
      name: "flotilla_agent_last_backup_bytes",
      help: "Size of each target's last verified backup",
      labelNames: ["target"],
      registers: [r],
      async collect() {
        this.reset();
        for (const b of await d.lastVerifiedBackups()) if (b.sizeBytes !== undefined && b.createdAt) this.set({ target: b.targetId }, b.sizeBytes);
      },
    });
  }

  /** Records one finished operation. Never throws: metrics must not fail an operation. */
  observe(result: Partial<ResultLike>): void {
    const labels = { kind: result.kind || "unknown", status: result.status || "unknown" };
    const seconds = Number(result.durationMs ?? 0) / 1000;
    this.#ops.inc(labels);
    this.#durations.observe(labels, Number.isFinite(seconds) && seconds >= 0 ? seconds : 0);
  }

  /**
   * Wraps a service implementation: every server-streaming method's `result`
   * event is recorded; everything passes through unchanged.
   */
  instrument<T extends object>(impl: T): T {
    const out: Record<string, unknown> = {};
    for (const [name, fn] of Object.entries(impl as Record<string, unknown>)) {
      if (typeof fn !== "function") {
        out[name] = fn;
        continue;
      }
      out[name] = (...args: unknown[]) => {
        const value: unknown = (fn as (...a: unknown[]) => unknown).apply(impl, args);
        if (value === null || typeof value !== "object" || !(Symbol.asyncIterator in value)) return value;
        const source = value as AsyncIterable<{ event?: { case?: string; value?: unknown } }>;
        const observe = (r: Partial<ResultLike>): void => this.observe(r);
        return {
          async *[Symbol.asyncIterator]() {
            for await (const item of source) {
              if (item.event?.case === "result") {
                try {
                  observe(item.event.value as Partial<ResultLike>);
                } catch {
                  // a metrics bug must never fail the call it watches
                }
              }
              yield item;
            }
          },
        };
      };
    }
    return out as T;
  }

  text(): Promise<string> {
    return this.registry.metrics();
  }

  get contentType(): string {
    return this.registry.contentType;
  }
}
