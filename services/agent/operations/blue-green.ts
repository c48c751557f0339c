import { FlotillaError } from "../../common/errors.js";
import { refuse, type Emit, type OperationContext, type OpResult } from "./context.js";

/** Blue-green verbs: clone the database to green, switch traffic. */

export function clone(
  ctx: OperationContext,
  req: { targetId: string; operationId: string; rolloutId: string },
  emit: Emit,
  signal?: AbortSignal,
): Promise<OpResult> {
  return ctx.run("clone", req.targetId, req.operationId, emit, { rolloutId: req.rolloutId }, async ({ t, progress, result }) => {
    if (!t.green) refuse("PRECONDITION_FAILED", `target ${t.config.id} has no blueGreen.green database configured`);
    const held = await t.green.db.holders();
    if (held.length > 0)
      refuse(
        "APP_STILL_RUNNING",
        `the green database ${t.green.db.displayName} is in use (pid ${held.map((h) => h.pid).join(", ")}): stop the green instances first`,
      );
    result.revisionBefore = (await t.db.readRevisions()) ?? [];
    await ctx.step(
      emit,
      "clone",
      () => t.db.cloneTo(t.green!.db, progress, signal),
      () => `copied to ${t.green!.db.displayName}`,
    );
    const [a, b] = await Promise.all([t.db.readRevisions(), t.green.db.readRevisions()]);
    result.revisionAfter = b ?? [];
    const ic = await t.green.db.integrityCheck();
    if (!ic.ok) throw new FlotillaError("VERIFY_FAILED", `the green copy failed its integrity check: ${ic.detail}`);
    return { message: `cloned ${t.config.id} (at ${(a ?? []).join(",") || "none"}) to green ${t.green.db.displayName}` };
  });
}

export function switchTraffic(
  ctx: OperationContext,
  req: { targetId: string; operationId: string; color: string },
  emit: Emit,
  signal?: AbortSignal,
): Promise<OpResult> {
  return ctx.run("switch", req.targetId, req.operationId, emit, { lock: false }, async ({ t, progress }) => {
    if (req.color !== "blue" && req.color !== "green") refuse("INVALID_ARGUMENT", `switch color must be blue or green, not "${req.color}"`);
    const sw = t.config.blueGreen?.switch;
    if (!sw) refuse("PRECONDITION_FAILED", `target ${t.config.id} has no blueGreen.switch hook configured`);
    const r = await ctx.step(
      emit,
      `switch:${req.color}`,
      () => ctx.deps.runHook([...sw, req.color], (line) => progress({ source: "hook", line }), signal),
      (x) => x.detail,
    );
    if (!r.ok) throw new FlotillaError("PRECONDITION_FAILED", `switch hook failed: ${r.detail}`);
    return { message: `traffic for ${t.config.id} switched to ${req.color}` };
  });
}
