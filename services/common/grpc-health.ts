/**
 * The standard `grpc.health.v1.Health` service on a grpc-js server, and a small
 * client for it. Messages are protobuf-es, generated from the protocol's own
 * health.proto (proto/grpc/health/v1): the grpc-health-check package compiled
 * that file with protobufjs at load time, which cost each daemon about 3 MiB of
 * idle memory for two one-field messages.
 */
import * as grpc from "@grpc/grpc-js";
import { create } from "@bufbuild/protobuf";
import {
  Health,
  HealthCheckRequestSchema,
  HealthCheckResponse_ServingStatus as Status,
  type HealthCheckRequest,
  type HealthCheckResponse,
  type HealthListResponse,
  HealthCheckResponseSchema,
  HealthListResponseSchema,
} from "./gen/grpc/health/v1/health_pb.js";
import { serviceDefinition } from "./grpc-bridge.js";

/** A serving status as the health protocol names it. */
export type ServingStatus = "UNKNOWN" | "SERVING" | "NOT_SERVING" | "SERVICE_UNKNOWN";

/** Health statuses of one daemon: "" (the whole server) and each named service. */
export interface HealthReporter {
  /** Sets every registered service (and "") to one status, e.g. NOT_SERVING while draining. */
  setAll(status: ServingStatus): void;
}

/** `List` answers RESOURCE_EXHAUSTED above this many services, as the protocol says. */
const LIST_LIMIT = 100;

const response = (status: ServingStatus): HealthCheckResponse => create(HealthCheckResponseSchema, { status: Status[status] });

/** The service name of a decoded request; undefined when the request did not decode. */
function serviceOf(request: unknown): string | undefined {
  const service = (request as Partial<HealthCheckRequest> | null)?.service;
  return typeof service === "string" ? service : undefined;
}

const invalid = { code: grpc.status.INVALID_ARGUMENT, details: "the request is not a valid grpc.health.v1.HealthCheckRequest" };

/**
 * Registers grpc.health.v1.Health on `server`, answering SERVING for "" and
 * for each of `services` (fully qualified names such as flotilla.v1.AgentService).
 * Check of an unknown name answers NOT_FOUND; Watch sends the status now and at each change.
 */
export function addHealthService(server: grpc.Server, services: readonly string[]): HealthReporter {
  const names = ["", ...services];
  const statuses = new Map<string, ServingStatus>(names.map((n) => [n, "SERVING"]));
  const watchers = new Map<string, Set<(status: ServingStatus) => void>>();
  const handlers: grpc.UntypedServiceImplementation = {
    check(call: grpc.ServerUnaryCall<unknown, HealthCheckResponse>, callback: grpc.sendUnaryData<HealthCheckResponse>) {
      const name = serviceOf(call.request);
      if (name === undefined) return callback(invalid, null);
      const status = statuses.get(name);
      if (status === undefined) return callback({ code: grpc.status.NOT_FOUND, details: `Health status unknown for service ${name}` }, null);
      callback(null, response(status));
    },
    watch(call: grpc.ServerWritableStream<unknown, HealthCheckResponse>) {
      const name = serviceOf(call.request);
      if (name === undefined) {
        call.emit("error", invalid);
        return;
      }
      const send = (status: ServingStatus): void => {
        call.write(response(status));
      };
      const set = watchers.get(name) ?? new Set();
      watchers.set(name, set);
      set.add(send);
      call.on("cancelled", () => set.delete(send));
      send(statuses.get(name) ?? "SERVICE_UNKNOWN");
    },
    list(_call: grpc.ServerUnaryCall<unknown, HealthListResponse>, callback: grpc.sendUnaryData<HealthListResponse>) {
      if (statuses.size > LIST_LIMIT) return callback({ code: grpc.status.RESOURCE_EXHAUSTED, details: "Too many services to list." }, null);
      callback(null, create(HealthListResponseSchema, { statuses: Object.fromEntries([...statuses].map(([n, s]) => [n, response(s)])) }));
    },
  };
  server.addService(serviceDefinition(Health), handlers);
  return {
    setAll(status) {
      for (const n of names) {
        statuses.set(n, status);
        for (const send of watchers.get(n) ?? []) send(status);
      }
    },
  };
}

/**
 * Calls grpc.health.v1.Health/Check and returns the status word
 * ("SERVING", "NOT_SERVING", "UNKNOWN", or "SERVICE_UNKNOWN"). Rejects when the
 * server cannot be reached before the deadline, or with the gRPC error (code 5 for an unknown service).
 */
export function checkGrpcHealth(address: string, credentials: grpc.ChannelCredentials, serviceName = "", timeoutMs = 5000): Promise<string> {
  const Ctor = grpc.makeGenericClientConstructor(serviceDefinition(Health), "Health");
  const client = new Ctor(address, credentials) as unknown as grpc.Client & {
    check(req: HealthCheckRequest, md: grpc.Metadata, opts: grpc.CallOptions, cb: (err: grpc.ServiceError | null, res?: HealthCheckResponse) => void): void;
  };
  return new Promise<string>((resolve, reject) => {
    client.check(
      create(HealthCheckRequestSchema, { service: serviceName }),
      new grpc.Metadata(),
      { deadline: new Date(Date.now() + timeoutMs) },
      (err, res) => {
        client.close();
        if (err) reject(err);
        else resolve(Status[res?.status ?? Status.UNKNOWN] ?? "UNKNOWN");
      },
    );
  });
}
