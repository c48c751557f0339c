import type { ProcessRunner } from "../../common/process-runner.js";
import { describeRun } from "../../common/process-runner.js";
import type { AppControlPort, AppInstance, AppState, ProgressFn } from "../core/ports.js";

export type { AppState } from "../core/ports.js";

/**
 * Stops, starts and health-checks the app instances configured on this host
 * with their own commands (argv, no shell) and health URLs.
 */
export class AppControl implements AppControlPort {
  constructor(
    private readonly runner: ProcessRunner,
    private readonly options: { healthTimeoutMs?: number; waitMs?: number } = {},
  ) {}

  /** running: health answered 2xx; stopped: connection refused or non-2xx; unknown: no health URL. */
  async state(app: AppInstance): Promise<{ state: AppState; detail: string }> {
    if (!app.health) return { state: "unknown", detail: "no health URL configured" };
    try {
      const res = await fetch(app.health, { signal: AbortSignal.timeout(this.options.healthTimeoutMs ?? 2000) });
      await res.arrayBuffer().catch(() => undefined);
      return res.ok ? { state: "running", detail: `health ${res.status}` } : { state: "stopped", detail: `health answered ${res.status}` };
    } catch (err) {
      return { state: "stopped", detail: `health check failed: ${(err as Error).message}` };
    }
  }

  async stop(app: AppInstance, onProgress: ProgressFn, signal?: AbortSignal): Promise<{ ok: boolean; detail: string }> {
    if (!app.stop) return { ok: false, detail: `app ${app.id} has no stop command configured` };
    onProgress({ source: "app", line: `stopping ${app.id}` });
    const r = await this.runner.run({
      argv: app.stop,
      timeoutMs: 120_000,
      ...(signal ? { signal } : {}),
      onLine: (line) => onProgress({ source: "app", line }),
    });
    if (r.exitCode !== 0) return { ok: false, detail: `${app.id}: stop command failed: ${describeRun(app.stop[0]!, r)}` };
    const down = await this.waitFor(app, "stopped", signal);
    return down ? { ok: true, detail: `${app.id} stopped` } : { ok: false, detail: `${app.id} still answers its health check after the stop command` };
  }

  async start(app: AppInstance, onProgress: ProgressFn, signal?: AbortSignal): Promise<{ ok: boolean; detail: string }> {
    if (!app.start) return { ok: false, detail: `app ${app.id} has no start command configured` };
    onProgress({ source: "app", line: `starting ${app.id}` });
    const r = await this.runner.run({
      argv: app.start,
      timeoutMs: 120_000,
      ...(signal ? { signal } : {}),
      onLine: (line) => onProgress({ source: "app", line }),
    });
    if (r.exitCode !== 0) return { ok: false, detail: `${app.id}: start command failed: ${describeRun(app.start[0]!, r)}` };
    const up = await this.waitFor(app, "running", signal);
    return up
      ? { ok: true, detail: `${app.id} healthy` }
      : { ok: false, detail: `${app.id} did not become healthy within ${(this.options.waitMs ?? 60_000) / 1000}s` };
  }

  /** Waits until the health check reports `want` (immediately true without a health URL). */
  async waitFor(app: AppInstance, want: "running" | "stopped", signal?: AbortSignal): Promise<boolean> {
    if (!app.health) return true;
    const deadline = performance.now() + (this.options.waitMs ?? 60_000);
    for (;;) {
      if ((await this.state(app)).state === want) return true;
      if (performance.now() > deadline || signal?.aborted) return false;
      await new Promise((r) => setTimeout(r, 100));
    }
  }
}
