import { readFileSync } from "node:fs";
import { AgentService } from "../../common/gen/flotilla/v1/agent_pb.js";
import { channelCredentials, createClient, type ServiceClient, type TlsFiles } from "../../common/grpc-bridge.js";
import { FlotillaError } from "../../common/errors.js";
import type { ControllerStore } from "../core/ports.js";

export type AgentClient = ServiceClient<typeof AgentService.method>;

export interface AgentEndpoint {
  readonly id: string;
  readonly address: string;
  readonly source: "config" | "registered";
}

/**
 * gRPC clients of the fleet's agents, one channel per agent, created on first
 * use. Addresses come from the config and from agent registration (stored).
 */
export class GrpcAgentPool {
  private readonly clients = new Map<string, { address: string; client: AgentClient }>();
  private readonly tls: TlsFiles | undefined;
  private readonly health = new Map<string, { state: "up" | "down"; lastSeen: string; error: string }>();

  constructor(
    private readonly configured: readonly { id: string; address: string }[],
    private readonly store: ControllerStore,
    tls?: { cert: string; key: string; ca: string },
  ) {
    this.tls = tls ? { cert: readFileSync(tls.cert), key: readFileSync(tls.key), ca: readFileSync(tls.ca) } : undefined;
  }

  /** Every known agent: config first, then registered ones not in the config. */
  async endpoints(): Promise<AgentEndpoint[]> {
    const out: AgentEndpoint[] = this.configured.map((a) => ({ ...a, source: "config" as const }));
    for (const a of await this.store.listAgents()) {
      if (!out.some((o) => o.id === a.id)) out.push({ id: a.id, address: a.address, source: "registered" });
    }
    return out;
  }

  async client(agentId: string): Promise<AgentClient> {
    const ep = (await this.endpoints()).find((e) => e.id === agentId);
    if (!ep) throw new FlotillaError("NOT_FOUND", `no agent "${agentId}" in the inventory`);
    const existing = this.clients.get(agentId);
    if (existing && existing.address === ep.address) return existing.client;
    existing?.client.close();
    const client = createClient(AgentService, ep.address, channelCredentials(this.tls), {
      "grpc.keepalive_time_ms": 30_000,
      ...(this.tls ? { "grpc.ssl_target_name_override": "flotilla-agent" } : {}),
    }) as unknown as AgentClient;
    this.clients.set(agentId, { address: ep.address, client });
    return client;
  }

  markHealth(agentId: string, ok: boolean, error = ""): void {
    const prev = this.health.get(agentId);
    this.health.set(agentId, { state: ok ? "up" : "down", lastSeen: ok ? new Date().toISOString() : prev?.lastSeen ?? "", error });
  }

  healthOf(agentId: string): { state: "up" | "down" | "unknown"; lastSeen: string; error: string } {
    return this.health.get(agentId) ?? { state: "unknown", lastSeen: "", error: "" };
  }

  close(): void {
    for (const c of this.clients.values()) c.client.close();
    this.clients.clear();
  }
}
