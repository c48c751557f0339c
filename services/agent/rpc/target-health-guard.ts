import type { MessageInitShape } from "@bufbuild/protobuf";
import type { AgentService, OperationEventSchema } from "../../common/gen/flotilla/v1/agent_pb.js";
import type { CallContext, ServiceImpl } from "../../common/grpc-bridge.js";
import { toFlotillaError } from "../../common/errors.js";
import { redact } from "../../common/redact.js";
import { brokenFindings, brokenTargetError, problemLines, type TargetHealth } from "../core/target-health.js";

type Impl = ServiceImpl<typeof AgentService.method>;
type EventInit = MessageInitShape<typeof OperationEventSchema>;

/** What the guard needs of the target registry. */
export interface TargetHealthSource {
  has(id: string): boolean;
  check(id: string): Promise<TargetHealth | undefined>;
}

/**
 * Operations that need the target's config satisfied (secrets, Alembic
 * project, database). Reads (status, diagnose, backups list, journal, the
 * diagnostics bundle) and app control (stop, start, health) stay available on
 * a broken target: an app stopped by a rollout can always be started again.
 */
const GUARDED_STREAMS = ["backup", "verifyBackup", "restore", "migrate", "rehearse", "downgrade", "stamp", "clone", "switch", "recover", "drill"] as const;
type GuardedStream = (typeof GUARDED_STREAMS)[number];

const KIND_OF: Readonly<Record<GuardedStream, string>> = {
  backup: "backup",
  verifyBackup: "verify-backup",
  restore: "restore",
  migrate: "migrate",
  rehearse: "rehearse",
  downgrade: "downgrade",
  stamp: "stamp",
  clone: "clone",
  switch: "switch",
  recover: "recover",
  drill: "drill",
};

/**
 * Wraps the AgentService so a broken target is served with its reasons while
 * every other target works: its status says `broken` with the problems,
 * diagnose reports each with its fix, and every operation that needs its
 * config is refused with TARGET_BROKEN naming them. Health is decided afresh
 * at each call, so fixing a secret file takes effect without a restart.
 */
export function withTargetHealth(impl: Impl, targets: TargetHealthSource): Impl {
  const healthOf = async (id: string): Promise<TargetHealth | undefined> => (id !== "" && targets.has(id) ? targets.check(id) : undefined);

  const guardStream = <K extends GuardedStream>(name: K): Impl[K] => {
    const inner = impl[name] as (req: { targetId: string; operationId?: string; newOperationId?: string }, ctx: CallContext) => AsyncIterable<EventInit>;
    const guarded = async function* (req: { targetId: string; operationId?: string; newOperationId?: string }, ctx: CallContext): AsyncIterable<EventInit> {
      const health = await healthOf(req.targetId);
      if (health?.state === "broken") {
        const err = brokenTargetError(req.targetId, health.problems);
        yield {
          event: {
            case: "result",
            value: {
              operationId: (name === "recover" ? req.newOperationId : req.operationId) ?? "",
              kind: KIND_OF[name],
              status: "refused",
              errorCode: err.code,
              message: redact(err.message),
              durationMs: 0n,
            },
          },
        };
        return;
      }
      yield* inner.call(impl, req, ctx);
    };
    return guarded as unknown as Impl[K];
  };

  const guarded: Partial<Impl> = {};
  for (const name of GUARDED_STREAMS) (guarded as Record<string, unknown>)[name] = guardStream(name);

  return {
    ...impl,
    ...guarded,
    async getStatus(req, ctx) {
      const health = await healthOf(req.targetId);
      if (health?.state !== "broken") return { ...(await impl.getStatus(req, ctx)), state: health?.state ?? "ok" };
      // Show what can still be read (revision, apps, journal); the problems say why nothing else works.
      const base = await impl.getStatus(req, ctx).catch((err: unknown) => ({ targetId: req.targetId, error: toFlotillaError(err).message }));
      // `error` too, so every reader that only knows that field (rollout precheck, older clients) stops here.
      const error = redact(
        `target is broken (${health.problems.map((p) => p.what).join("; ")}); every operation on it is refused: flotilla diagnose ${req.targetId}`,
      );
      return { ...base, error, state: "broken", problems: problemLines(health.problems).map(redact) };
    },
    async diagnose(req, ctx) {
      const health = await healthOf(req.targetId);
      if (health?.state !== "broken") return impl.diagnose(req, ctx);
      return {
        targetId: req.targetId,
        findings: brokenFindings(req.targetId, health.problems).map((f) => ({ ...f, what: redact(f.what), fix: redact(f.fix) })),
        problems: true,
      };
    },
    move: async function* (req, ctx) {
      // Both ends of a move must be servable: the source is read, the destination written.
      for (const id of [req.fromTargetId, req.toTargetId]) {
        const health = await healthOf(id);
        if (health?.state === "broken") {
          const err = brokenTargetError(id, health.problems);
          yield {
            event: {
              case: "result",
              value: { operationId: req.operationId, kind: "move", status: "refused", errorCode: err.code, message: redact(err.message), durationMs: 0n },
            },
          };
          return;
        }
      }
      yield* impl.move(req, ctx);
    },
    async plan(req, ctx) {
      const health = await healthOf(req.targetId);
      if (health?.state === "broken") throw brokenTargetError(req.targetId, health.problems);
      return impl.plan(req, ctx);
    },
  };
}
