import { randomUUID } from "node:crypto";
import { toFlotillaError } from "../common/errors.js";
import type { GrpcAgentPool } from "./agents/agent-pool.js";
import type { Inventory } from "./inventory.js";

/**
 * Restore drills run by the controller for a schedule: the newest verified
 * backup of every selected target drilled on its owning agent, one target at
 * a time (a drill restores a whole copy: running them all at once would
 * double the fleet's disk and I/O at the same moment).
 */
export async function drillSelected(
  d: { inventory: Inventory; pool: GrpcAgentPool },
  selector: string,
  actor: string,
): Promise<{ targetId: string; ok: boolean; message: string }[]> {
  const { targets } = await d.inventory.targets(selector);
  const out: { targetId: string; ok: boolean; message: string }[] = [];
  for (const t of targets) {
    try {
      const c = await d.pool.client(t.ownerAgent);
      let result: { status: string; message: string } | undefined;
      for await (const ev of c.drill(
        { targetId: t.id, backupId: "", operationId: `${actor.replace(/[^A-Za-z0-9._-]/g, "-")}.${randomUUID()}` },
        { timeoutMs: 6 * 3600_000 },
      )) {
        if (ev.event.case === "result") result = ev.event.value;
      }
      out.push({ targetId: t.id, ok: result?.status === "succeeded", message: result?.message ?? "the agent ended without a result" });
    } catch (err) {
      out.push({ targetId: t.id, ok: false, message: toFlotillaError(err).message });
    }
  }
  return out;
}

/** One line for a schedule's last result: "passed: 3 target(s)" or "failed: a, b of 3 (why)". */
export function summariseDrills(results: readonly { targetId: string; ok: boolean; message: string }[]): string {
  const bad = results.filter((r) => !r.ok);
  if (results.length === 0) return "failed: no target matches the selector";
  if (bad.length === 0) return `passed: ${results.length} target(s) drilled`;
  return `failed: ${bad.map((r) => r.targetId).join(", ")} of ${results.length} (${bad[0]!.message})`;
}
