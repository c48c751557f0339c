/**
 * The standard `grpc.health.v1.Health` service (grpc-health-check) on a grpc-js
 * server, and a small client for it. Beside grpc-bridge.ts: this file knows
 * grpc-js and the health package, never protobuf-es.
 */
import * as grpc from "@grpc/grpc-js";
import { HealthImplementation, service as healthService, type ServingStatus } from "grpc-health-check";

export type { ServingStatus };

/** Health statuses of one daemon: "" (the whole server) and each named service. */
export interface HealthReporter {
  /** Sets every registered service (and "") to one status, e.g. NOT_SERVING while draining. */
  setAll(status: ServingStatus): void;
}

/**
 * Registers grpc.health.v1.Health on `server`, answering SERVING for "" and
 * for each of `services` (fully qualified names such as flotilla.v1.AgentService).
 */
export function addHealthService(server: grpc.Server, services: readonly string[]): HealthReporter {
  const names = ["", ...services];
  const impl = new HealthImplementation(Object.fromEntries(names.map((n) => [n, "SERVING" as ServingStatus])));
  impl.addToServer(server as unknown as Parameters<HealthImplementation["addToServer"]>[0]);
  return {
    setAll(status) {
      for (const n of names) impl.setStatus(n, status);
    },
  };
}

/**
 * Calls grpc.health.v1.Health/Check and returns the status word
 * ("SERVING", "NOT_SERVING", "UNKNOWN", or "SERVICE_UNKNOWN"). Rejects when the
 * server cannot be reached before the deadline.
 */
export function checkGrpcHealth(address: string, credentials: grpc.ChannelCredentials, serviceName = "", timeoutMs = 5000): Promise<string> {
  const Ctor = grpc.makeGenericClientConstructor(healthService as unknown as grpc.ServiceDefinition, "Health");
  const client = new Ctor(address, credentials) as unknown as grpc.Client & {
    check(req: { service: string }, md: grpc.Metadata, opts: grpc.CallOptions, cb: (err: grpc.ServiceError | null, res?: { status: string }) => void): void;
  };
  return new Promise<string>((resolve, reject) => {
    client.check({ service: serviceName }, new grpc.Metadata(), { deadline: new Date(Date.now() + timeoutMs) }, (err, res) => {
      client.close();
      if (err) reject(err);
      else resolve(String(res?.status ?? "UNKNOWN"));
    });
  });
}
