import type { ServiceImpl, CallContext } from "../../common/grpc-bridge.js";
import { FlotillaError } from "../../common/errors.js";
import type { AgentService } from "../../common/gen/flotilla/v1/agent_pb.js";

/** Metadata key carrying the controller leader's epoch (see the controller's Leadership). */
export const EPOCH_METADATA = "flotilla-epoch";

/** Methods that change a target: each is fenced by the epoch of the controller that sends it. */
const CHANGES = [
  "backup",
  "verifyBackup",
  "restore",
  "migrate",
  "downgrade",
  "stamp",
  "stopApps",
  "startApps",
  "clone",
  "switch",
  "recover",
  "move",
  "bundle",
  "drill",
] as const;

/**
 * Fencing: every changing call may carry `flotilla-epoch`; the agent remembers
 * the highest epoch seen per target (in its journal) and refuses a lower one,
 * so a controller replica that lost its leadership (paused, partitioned)
 * cannot act after a newer leader did. Calls without an epoch (the agent's own
 * tools, a single controller without one) are not fenced.
 */
export function withFencing<S extends ServiceImpl<typeof AgentService.method>>(impl: S, journal: { observeEpoch(targetId: string, epoch: number): void }): S {
  const out = { ...impl } as Record<string, unknown>;
  for (const name of CHANGES) {
    const inner = (impl as unknown as Record<string, ((req: never, ctx: CallContext) => unknown) | undefined>)[name];
    if (typeof inner !== "function") continue;
    out[name] = (req: { targetId?: string; fromTargetId?: string; toTargetId?: string }, ctx: CallContext) => {
      const raw = ctx.metadata.get(EPOCH_METADATA)[0];
      if (raw !== undefined) {
        const text = typeof raw === "string" ? raw : raw.toString("utf8");
        if (!/^[1-9][0-9]{0,15}$/.test(text))
          throw new FlotillaError("INVALID_ARGUMENT", `${EPOCH_METADATA} must be a positive integer, got ${JSON.stringify(text.slice(0, 20))}`);
        const epoch = Number(text);
        for (const t of [req.targetId, req.fromTargetId, req.toTargetId]) if (t) journal.observeEpoch(t, epoch);
      }
      return inner(req as never, ctx);
    };
  }
  return out as S;
}

/** What the offline reset needs of the journal. */
export interface FencingJournal {
  epochs(): { targetId: string; epoch: number; seenAt: string }[];
  resetEpoch(targetId: string, op: { id: string; message: string }): number;
}

export interface FencingResetResult {
  /** Targets whose epoch was forgotten, each recorded as a `reset-fencing` journal operation. */
  readonly cleared: readonly { targetId: string; epoch: number; seenAt: string; operationId: string }[];
  /** Named targets that had no epoch: nothing to forget. */
  readonly unfenced: readonly string[];
}

/**
 * The operator's way out when a controller was legitimately replaced by one
 * with a lower epoch (moved to a fresh store, which starts again at 1): the
 * agent forgets the highest epoch it saw for the named targets (or all), so
 * the next controller to command them sets it afresh.
 *
 * It never runs beside a live agent (the caller holds the agent's instance
 * lock: see adapters/instance-lock.ts), is never reachable over the network
 * (no RPC, no HTTP: only someone who can already stop the agent and write its
 * data dir can do it), and is never silent: each forgotten epoch is a
 * finished `reset-fencing` operation in the target's journal naming the
 * epoch, who and why. A stale leader stays fenced everywhere this was not
 * done; where it was, the operator states that the old controller is gone.
 */
export function resetFencing(
  journal: FencingJournal,
  req: { readonly targets: readonly string[] | "all"; readonly reason: string; readonly actor: string },
  newId: () => string,
): FencingResetResult {
  const known = journal.epochs();
  const wanted = req.targets === "all" ? known.map((k) => k.targetId) : [...new Set(req.targets)];
  const cleared: { targetId: string; epoch: number; seenAt: string; operationId: string }[] = [];
  const unfenced: string[] = [];
  for (const targetId of wanted) {
    const before = known.find((k) => k.targetId === targetId);
    const operationId = newId();
    const epoch =
      before === undefined
        ? 0
        : journal.resetEpoch(targetId, {
            id: operationId,
            message: `fencing reset by ${req.actor} (offline, flotilla-agent --reset-fencing): forgot controller epoch {epoch}; the next controller to command ${targetId} sets it afresh. Reason: ${req.reason}`,
          });
    if (epoch === 0) unfenced.push(targetId);
    else cleared.push({ targetId, epoch, seenAt: before?.seenAt ?? "", operationId });
  }
  return { cleared, unfenced };
}
