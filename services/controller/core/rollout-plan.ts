/**
 * Pure rollout planning: selectors, waves and the steps each strategy takes
 * per target. No I/O; the engine executes what this produces.
 */
import { FlotillaError } from "../../common/errors.js";
import { waveSizes } from "../../common/rollout-request.js";
import type { RolloutTargetDoc, StepDoc, Strategy } from "./ports.js";

export interface InventoryTarget {
  readonly id: string;
  /** The agent whose config holds the target (runs backups and migrations). */
  readonly ownerAgent: string;
  /** Agents that host app instances of the target (may include the owner). */
  readonly appAgents: readonly string[];
  readonly labels: Readonly<Record<string, string>>;
  readonly blueGreen: boolean;
  /** Agents that host green app instances (blue-green). */
  readonly greenAgents?: readonly string[];
}

/** Wave sizes for `total` targets (the grammar and its checks live in services/common/rollout-request.ts). */
export { waveSizes, matchesSelector, selectorPairs } from "../../common/rollout-request.js";

function step(name: string, agentId: string, detail = ""): StepDoc {
  return { name, state: "pending", agentId, operationId: "", detail };
}

/** The ordered steps one target takes under a strategy. */
export function stepsFor(strategy: Strategy, t: InventoryTarget, toRevision: string): StepDoc[] {
  const owner = t.ownerAgent;
  const appAgents = [...t.appAgents].sort();
  const steps: StepDoc[] = [step("precheck", owner, "revision known, single head, no interrupted operation")];
  switch (strategy) {
    case "maintenance":
      for (const a of appAgents) steps.push(step("stop", a, "stop every app instance of the target on this host"));
      steps.push(step("backup", owner, "backup + verify"), step("migrate", owner, `upgrade to ${toRevision}, one revision at a time`), step("verify", owner, "revision at target, integrity ok"));
      for (const a of appAgents) steps.push(step("start", a));
      for (const a of appAgents) steps.push(step("health", a));
      break;
    case "job":
      steps.push(step("backup", owner, "backup + verify"), step("migrate", owner, `upgrade to ${toRevision} while instances run`), step("verify", owner));
      for (const a of appAgents) steps.push(step("restart", a, "rolling restart: stop + start, one host at a time"));
      for (const a of appAgents) steps.push(step("health", a));
      break;
    case "blue-green":
      if (!t.blueGreen) throw new FlotillaError("INVALID_ARGUMENT", `target ${t.id} has no blueGreen section in its agent's config: blue-green needs a green database and a switch hook`);
      steps.push(step("clone", owner, "consistent copy of blue to green"), step("migrate-green", owner, `upgrade green to ${toRevision} (backup of green first)`), step("verify", owner, "green at target"));
      {
        const green = t.greenAgents && t.greenAgents.length > 0 ? [...t.greenAgents].sort() : appAgents;
        for (const a of green) steps.push(step("start-green", a));
        for (const a of green) steps.push(step("health-green", a));
      }
      steps.push(step("switch", owner, "run the switch hook with green; blue is kept for rollback"));
      break;
  }
  return steps;
}

/** Targets in stable order, assigned to waves, with their steps. */
export function planTargets(strategy: Strategy, targets: readonly InventoryTarget[], waves: string, toRevision: string): RolloutTargetDoc[] {
  const sorted = [...targets].sort((a, b) => a.id.localeCompare(b.id));
  const sizes = waveSizes(waves, sorted.length);
  const out: RolloutTargetDoc[] = [];
  let i = 0;
  sizes.forEach((size, wave) => {
    for (let k = 0; k < size; k++) {
      const t = sorted[i++]!;
      out.push({
        targetId: t.id, agentId: t.ownerAgent, wave, status: "pending", steps: stepsFor(strategy, t, toRevision),
        revisionBefore: [], revisionAfter: [], backupId: "", message: "",
      });
    }
  });
  return out;
}
