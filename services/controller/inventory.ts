import type { MessageShape } from "@bufbuild/protobuf";
import type { GetInfoResponseSchema, TargetStatusSchema } from "../common/gen/flotilla/v1/agent_pb.js";
import { FlotillaError, toFlotillaError } from "../common/errors.js";
import type { Logger } from "../common/logger.js";
import type { GrpcAgentPool } from "./agents/agent-pool.js";
import { matchesSelector, selectorPairs, type InventoryTarget } from "./core/rollout-plan.js";
import { checkSelector, describeProblems } from "../common/rollout-request.js";

type Info = MessageShape<typeof GetInfoResponseSchema>;
export type TargetStatus = MessageShape<typeof TargetStatusSchema>;

export interface AgentView {
  id: string;
  address: string;
  state: "up" | "down" | "unknown";
  lastSeen: string;
  error: string;
  source: "config" | "registered";
}

/**
 * The fleet as the agents describe it: targets joined by id across agents (a
 * shared PostgreSQL database used by app instances on several hosts is one
 * target), with the agents that host its app instances.
 */
export class Inventory {
  constructor(
    private readonly pool: GrpcAgentPool,
    private readonly log: Logger,
  ) {}

  async describe(): Promise<{ agents: AgentView[]; infos: Map<string, Info> }> {
    const eps = await this.pool.endpoints();
    const infos = new Map<string, Info>();
    await Promise.all(
      eps.map(async (ep) => {
        try {
          const c = await this.pool.client(ep.id);
          const info = await c.getInfo({}, { timeoutMs: 5000 });
          if (info.agentId !== ep.id) this.log.warn({ configured: ep.id, reported: info.agentId }, "agent reports a different id than configured");
          infos.set(ep.id, info);
          this.pool.markHealth(ep.id, true);
        } catch (err) {
          this.pool.markHealth(ep.id, false, toFlotillaError(err).message);
        }
      }),
    );
    const agents = eps.map((ep) => ({ id: ep.id, address: ep.address, source: ep.source, ...this.pool.healthOf(ep.id) }));
    return { agents, infos };
  }

  /** Targets matching the selector (all when empty). */
  async targets(selector: string): Promise<{ targets: InventoryTarget[]; agents: AgentView[] }> {
    const { agents, infos } = await this.describe();
    let pairs: Array<[string, string]> = [];
    if (selector.trim() !== "") {
      const checked = checkSelector(selector);
      if (!checked.ok) throw new FlotillaError("INVALID_ARGUMENT", describeProblems([{ field: "selector", message: checked.problem }]));
      pairs = selectorPairs(checked.value);
    }
    const byId = new Map<string, { owner: string; labels: Record<string, string>; blueGreen: boolean; appAgents: Set<string>; greenAgents: Set<string> }>();
    for (const [agentId, info] of infos) {
      for (const t of info.targets) {
        if (!byId.has(t.id)) byId.set(t.id, { owner: agentId, labels: { ...t.labels }, blueGreen: t.blueGreen, appAgents: new Set(), greenAgents: new Set() });
      }
    }
    for (const [agentId, info] of infos) {
      for (const a of info.apps) {
        byId.get(a.targetId)?.appAgents.add(agentId);
        if (a.color === "green") byId.get(a.targetId)?.greenAgents.add(agentId);
      }
    }
    const targets: InventoryTarget[] = [];
    for (const [id, t] of byId) {
      const it: InventoryTarget = {
        id,
        ownerAgent: t.owner,
        appAgents: [...t.appAgents].sort(),
        greenAgents: [...t.greenAgents].sort(),
        labels: t.labels,
        blueGreen: t.blueGreen,
      };
      if (pairs.length === 0 || matchesSelector(it, pairs)) targets.push(it);
    }
    targets.sort((a, b) => a.id.localeCompare(b.id));
    return { targets, agents };
  }

  async status(t: InventoryTarget): Promise<TargetStatus | { targetId: string; agentId: string; error: string }> {
    try {
      const c = await this.pool.client(t.ownerAgent);
      const s = await c.getStatus({ targetId: t.id }, { timeoutMs: 15_000 });
      // App instances on other hosts are reported by their own agents.
      for (const other of t.appAgents.filter((a) => a !== t.ownerAgent)) {
        try {
          const h = await (await this.pool.client(other)).checkHealth({ targetId: t.id }, { timeoutMs: 10_000 });
          s.apps.push(...h.apps);
        } catch (err) {
          s.error = [s.error, `apps on ${other}: ${toFlotillaError(err).message}`].filter(Boolean).join("; ");
        }
      }
      return s;
    } catch (err) {
      return { targetId: t.id, agentId: t.ownerAgent, error: toFlotillaError(err).message };
    }
  }
}
