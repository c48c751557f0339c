import { test } from "node:test";
import assert from "node:assert/strict";
import * as grpc from "@grpc/grpc-js";
import { create } from "@bufbuild/protobuf";
import {
  Health,
  HealthCheckRequestSchema,
  HealthCheckResponse_ServingStatus as Status,
  HealthListRequestSchema,
  type HealthCheckResponse,
  type HealthListResponse,
} from "./gen/grpc/health/v1/health_pb.js";
import { bindServer, newServer, serverCredentials, serviceDefinition } from "./grpc-bridge.js";
import { addHealthService, checkGrpcHealth } from "./grpc-health.js";

/** A real server on a free loopback port with the health service, and a raw client for it. */
async function serve(t: { after(fn: () => void): void }) {
  const server = newServer();
  const health = addHealthService(server, ["flotilla.v1.AgentService"]);
  const port = await bindServer(server, "127.0.0.1:0", serverCredentials());
  const Ctor = grpc.makeGenericClientConstructor(serviceDefinition(Health), "Health");
  const client = new Ctor(`127.0.0.1:${port}`, grpc.credentials.createInsecure()) as unknown as grpc.Client & {
    watch(req: unknown): grpc.ClientReadableStream<HealthCheckResponse>;
    list(req: unknown, cb: (err: grpc.ServiceError | null, res?: HealthListResponse) => void): void;
  };
  t.after(() => {
    client.close();
    server.forceShutdown();
  });
  return { health, client, address: `127.0.0.1:${port}` };
}

test("Check answers SERVING for the server and each registered service, NOT_FOUND (5) for others, NOT_SERVING after setAll", async (t) => {
  const { health, address } = await serve(t);
  const insecure = grpc.credentials.createInsecure();
  assert.equal(await checkGrpcHealth(address, insecure), "SERVING");
  assert.equal(await checkGrpcHealth(address, insecure, "flotilla.v1.AgentService"), "SERVING");
  await assert.rejects(checkGrpcHealth(address, insecure, "no.such.Service"), (err: { code?: number }) => err.code === grpc.status.NOT_FOUND);
  health.setAll("NOT_SERVING");
  assert.equal(await checkGrpcHealth(address, insecure, "flotilla.v1.AgentService"), "NOT_SERVING");
});

test("Watch sends the status at once and again at each change; an unknown service is SERVICE_UNKNOWN", async (t) => {
  const { health, client } = await serve(t);
  const stream = client.watch(create(HealthCheckRequestSchema, { service: "flotilla.v1.AgentService" }));
  const seen: Status[] = [];
  const got = new Promise<void>((resolve, reject) => {
    stream.on("data", (res: HealthCheckResponse) => {
      seen.push(res.status);
      if (seen.length === 1) health.setAll("NOT_SERVING");
      if (seen.length === 2) resolve();
    });
    stream.on("error", (err: grpc.ServiceError) => {
      if (err.code !== grpc.status.CANCELLED) reject(err);
    });
  });
  await got;
  stream.cancel();
  assert.deepEqual(seen, [Status.SERVING, Status.NOT_SERVING]);

  const unknown = client.watch(create(HealthCheckRequestSchema, { service: "no.such.Service" }));
  const first = await new Promise<HealthCheckResponse>((resolve, reject) => {
    unknown.once("data", resolve);
    unknown.on("error", (err: grpc.ServiceError) => {
      if (err.code !== grpc.status.CANCELLED) reject(err);
    });
  });
  unknown.cancel();
  assert.equal(first.status, Status.SERVICE_UNKNOWN);
});

test("List names the server and every registered service with its status", async (t) => {
  const { client } = await serve(t);
  const res = await new Promise<HealthListResponse>((resolve, reject) =>
    client.list(create(HealthListRequestSchema, {}), (err, r) => (err ? reject(err) : resolve(r!))),
  );
  assert.deepEqual(Object.fromEntries(Object.entries(res.statuses).map(([n, s]) => [n, s.status])), {
    "": Status.SERVING,
    "flotilla.v1.AgentService": Status.SERVING,
  });
});
