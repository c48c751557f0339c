import type { AppState } from "../core/ports.js";
import type { Emit, OperationContext, OpResult } from "./context.js";

/** App-instance verbs: stop, start, health. */

/** Prefix of the journaled to_revision of an apps operation that names a color. */
export const APPS_COLOR = "color:";

export function stopApps(
  ctx: OperationContext,
  req: { targetId: string; operationId: string; color: string },
  emit: Emit,
  signal?: AbortSignal,
): Promise<OpResult> {
  // Under the target's lock like every change, so an interrupted stop is found and resolved by Recover
  // (the color is journaled in to_revision, the one free field of an apps operation, for Recover to redo or undo it).
  return ctx.run(
    "stop-apps",
    req.targetId,
    req.operationId,
    emit,
    { appsOnly: true, ...(req.color ? { toRevision: `${APPS_COLOR}${req.color}` } : {}) },
    async ({ t, progress }) => {
      const done = await ctx.controlApps(t, "stop", req.color, emit, progress, signal);
      return { message: done.length ? `stopped ${done.join(", ")}` : "no app instances of this target on this host", details: { apps: done.join(",") } };
    },
  );
}

export function startApps(
  ctx: OperationContext,
  req: { targetId: string; operationId: string; color: string },
  emit: Emit,
  signal?: AbortSignal,
): Promise<OpResult> {
  return ctx.run(
    "start-apps",
    req.targetId,
    req.operationId,
    emit,
    { appsOnly: true, ...(req.color ? { toRevision: `${APPS_COLOR}${req.color}` } : {}) },
    async ({ t, progress }) => {
      const done = await ctx.controlApps(t, "start", req.color, emit, progress, signal);
      return { message: done.length ? `started ${done.join(", ")}` : "no app instances of this target on this host", details: { apps: done.join(",") } };
    },
  );
}

export async function health(
  ctx: OperationContext,
  targetId: string,
  color: string,
): Promise<{ apps: { id: string; color: string; state: AppState; detail: string }[]; healthy: boolean }> {
  const t = ctx.appRuntime(targetId);
  const states = (await ctx.appStates(t)).filter((a) => color === "" || a.app.color === color);
  // An instance without a health URL is "unknown": its start command succeeding is all we can know.
  return {
    apps: states.map((a) => ({ id: a.app.id, color: a.app.color, state: a.state, detail: a.detail })),
    healthy: states.every((a) => a.state === "running" || (a.state === "unknown" && !a.app.health)),
  };
}
