/**
 * Pure rollout planning: selectors, waves and the steps each strategy takes
 * per target. No I/O; the engine executes what this produces.
 */
import { FlotillaError } from "../../common/errors.js";
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

/** Parses `env=prod,region=eu`. Every pair must match; `id=X` matches the target id. */
export function parseSelector(selector: string): Array<[string, string]> {
  const s = selector.trim();
  if (s === "") throw new FlotillaError("INVALID_ARGUMENT", "a selector is required, e.g. --selector env=prod (use id=TARGET for one target)");
  return s.split(",").map((pair) => {
    const m = /^([A-Za-z0-9._/-]+)=([A-Za-z0-9._/-]*)$/.exec(pair.trim());
    if (!m) throw new FlotillaError("INVALID_ARGUMENT", `selector part "${pair}" is not key=value (e.g. env=prod,region=eu)`);
    return [m[1]!, m[2]!];
  });
}

export function matchesSelector(t: { id: string; labels: Readonly<Record<string, string>> }, pairs: Array<[string, string]>): boolean {
  return pairs.every(([k, v]) => (k === "id" ? t.id === v : t.labels[k] === v));
}

/**
 * Wave sizes from a spec like `1,25%,100%`: each entry is a cumulative count or
 * a cumulative percentage of all targets. The last wave always takes the rest.
 */
export function parseWaves(spec: string, total: number): number[] {
  const text = spec.trim() === "" ? "100%" : spec.trim();
  const cumulative: number[] = [];
  for (const part of text.split(",")) {
    const p = part.trim();
    let n: number;
    if (/^\d+%$/.test(p)) {
      const pct = Number(p.slice(0, -1));
      if (pct < 1 || pct > 100) throw new FlotillaError("INVALID_ARGUMENT", `wave "${p}" must be between 1% and 100%`);
      n = Math.ceil((total * pct) / 100);
    } else if (/^\d+$/.test(p) && Number(p) > 0) {
      n = Number(p);
    } else {
      throw new FlotillaError("INVALID_ARGUMENT", `--waves "${spec}": "${p}" is neither a count nor a percentage (use e.g. 1,25%,100%)`);
    }
    cumulative.push(Math.min(n, total));
  }
  const sizes: number[] = [];
  let done = 0;
  for (const c of cumulative) {
    if (c > done) {
      sizes.push(c - done);
      done = c;
    }
  }
  if (done < total) sizes.push(total - done);
  return sizes;
}

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
  const sizes = parseWaves(waves, sorted.length);
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

export function isStrategy(s: string): s is Strategy {
  return s === "maintenance" || s === "job" || s === "blue-green";
}
