import type { ServiceImpl, CallContext } from "../../common/grpc-bridge.js";
import { FlotillaError } from "../../common/errors.js";
import type { AgentService } from "../../common/gen/flotilla/v1/agent_pb.js";

/** Metadata key carrying the controller leader's epoch (see the controller's Leadership). */
export const EPOCH_METADATA = "flotilla-epoch";

/** Methods that change a target: each is fenced by the epoch of the controller that sends it. */
const CHANGES = [
  "backup", "verifyBackup", "restore", "migrate", "downgrade", "stamp", "stopApps", "startApps", "clone", "switch", "recover", "move",
  "bundle", "drill",
] as const;

/**
 * Fencing: every changing call may carry `flotilla-epoch`; the agent remembers
 * the highest epoch seen per target (in its journal) and refuses a lower one,
 * so a controller replica that lost its leadership (paused, partitioned)
 * cannot act after a newer leader did. Calls without an epoch (the agent's own
 * tools, a single controller without one) are not fenced.
 */
export function withFencing<S extends ServiceImpl<typeof AgentService.method>>(
  impl: S,
  journal: { observeEpoch(targetId: string, epoch: number): void },
): S {
  const out = { ...impl } as Record<string, unknown>;
  for (const name of CHANGES) {
    const inner = (impl as unknown as Record<string, ((req: never, ctx: CallContext) => unknown) | undefined>)[name];
    if (typeof inner !== "function") continue;
    out[name] = (req: { targetId?: string; fromTargetId?: string; toTargetId?: string }, ctx: CallContext) => {
      const raw = ctx.metadata.get(EPOCH_METADATA)[0];
      if (raw !== undefined) {
        const text = typeof raw === "string" ? raw : raw.toString("utf8");
        if (!/^[1-9][0-9]{0,15}$/.test(text)) throw new FlotillaError("INVALID_ARGUMENT", `${EPOCH_METADATA} must be a positive integer, got ${JSON.stringify(text.slice(0, 20))}`);
        const epoch = Number(text);
        for (const t of [req.targetId, req.fromTargetId, req.toTargetId]) if (t) journal.observeEpoch(t, epoch);
      }
      return inner(req as never, ctx);
    };
  }
  return out as S;
}
