import { readFileSync } from "node:fs";
import { AgentService } from "../../common/gen/flotilla/v1/agent_pb.js";
import { ReloadableCertificates, channelCredentials, createClient, type ServiceClient } from "../../common/grpc-bridge.js";
import { FlotillaError } from "../../common/errors.js";
import type { ControllerStore } from "../core/ports.js";

export type AgentClient = ServiceClient<typeof AgentService.method>;

export interface AgentEndpoint {
  readonly id: string;
  readonly address: string;
  readonly source: "config" | "registered";
  /** What its certificate must name; absent: the host of `address`. */
  readonly identity?: string;
}

/**
 * gRPC clients of the fleet's agents, one channel per agent, created on first
 * use. Addresses come from the config and from agent registration (stored).
 */
export class GrpcAgentPool {
  private readonly clients = new Map<string, { address: string; identity: string; client: AgentClient }>();
  /** Clients replaced while calls may still run on them; closed with the pool. */
  private readonly retired: AgentClient[] = [];
  private readonly certs: ReloadableCertificates | undefined;
  private readonly certExpiry = new Map<string, Date>();
  private readonly health = new Map<string, { state: "up" | "down"; lastSeen: string; error: string }>();

  constructor(
    private readonly configured: readonly { id: string; address: string; identity?: string }[],
    private readonly store: ControllerStore,
    private readonly tls?: { cert: string; key: string; ca: string },
    /** The leader's fencing epoch, sent with every call as `flotilla-epoch` (0: none sent). */
    private readonly epoch: () => number = () => 0,
  ) {
    this.certs = tls ? new ReloadableCertificates(readTls(tls)) : undefined;
  }

  /** Re-reads the client certificate, key and CA (SIGHUP): new connections use them, calls in flight go on. */
  reloadCertificates(): void {
    if (this.certs && this.tls) this.certs.update(readTls(this.tls));
  }

  /** Expiry of each agent's certificate as last seen at a handshake. */
  agentCertificateExpiry(): ReadonlyMap<string, Date> {
    return this.certExpiry;
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
    const identity = ep.identity ?? "";
    if (existing && existing.address === ep.address && existing.identity === identity) return existing.client;
    // A running operation may still stream on the old channel: keep it open until the pool closes.
    if (existing) this.retired.push(existing.client);
    // Each agent's certificate must name its own host (or its configured identity): no shared name.
    const creds = channelCredentials(this.certs, {
      ...(ep.identity !== undefined ? { identity: ep.identity } : {}),
      onCertificate: (notAfter) => this.certExpiry.set(agentId, notAfter),
    });
    const client = withEpoch(createClient(AgentService, ep.address, creds, { "grpc.keepalive_time_ms": 30_000 }) as unknown as AgentClient, this.epoch);
    this.clients.set(agentId, { address: ep.address, identity, client });
    return client;
  }

  markHealth(agentId: string, ok: boolean, error = ""): void {
    const prev = this.health.get(agentId);
    this.health.set(agentId, { state: ok ? "up" : "down", lastSeen: ok ? new Date().toISOString() : (prev?.lastSeen ?? ""), error });
  }

  healthOf(agentId: string): { state: "up" | "down" | "unknown"; lastSeen: string; error: string } {
    return this.health.get(agentId) ?? { state: "unknown", lastSeen: "", error: "" };
  }

  close(): void {
    for (const c of this.clients.values()) c.client.close();
    for (const c of this.retired.splice(0)) c.close();
    this.clients.clear();
  }
}

function readTls(tls: { cert: string; key: string; ca: string }): { cert: Buffer; key: Buffer; ca: Buffer } {
  return { cert: readFileSync(tls.cert), key: readFileSync(tls.key), ca: readFileSync(tls.ca) };
}

/** Metadata key of the fencing epoch on every controller → agent call. */
export const EPOCH_METADATA = "flotilla-epoch";

/** A client whose every call carries the current epoch as gRPC metadata. */
function withEpoch(client: AgentClient, epoch: () => number): AgentClient {
  return new Proxy(client, {
    get(target, name, receiver) {
      const value = Reflect.get(target, name, receiver) as unknown;
      if (typeof value !== "function" || name === "close") return value;
      return (req: unknown, options?: { metadata?: Record<string, string> }) => {
        const e = epoch();
        const opts = e > 0 ? { ...options, metadata: { ...options?.metadata, [EPOCH_METADATA]: String(e) } } : options;
        return (value as (r: unknown, o?: unknown) => unknown).call(target, req, opts);
      };
    },
  });
}
