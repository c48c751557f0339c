// The agent's gRPC service over a real grpc-js server on loopback: a request
// refused by validation ends its stream with a status the caller can read.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import type { Server } from "@grpc/grpc-js";
import { AgentService } from "../../common/gen/flotilla/v1/agent_pb.js";
import { addService, bindServer, channelCredentials, createClient, newServer, serverCredentials, type ServiceClient } from "../../common/grpc-bridge.js";
import { FlotillaError } from "../../common/errors.js";
import type { AgentConfig } from "../config.js";
import type { AgentOperations } from "../operations/index.js";
import { agentServiceImpl } from "./agent-service.js";

let server: Server;
let client: ServiceClient<typeof AgentService.method>;
const reached: string[] = [];

before(async () => {
  const ops = new Proxy(
    {},
    {
      get: (_t, name) => () => {
        reached.push(String(name));
        throw new Error("operations must not be reached");
      },
    },
  ) as unknown as AgentOperations;
  server = newServer();
  addService(server, AgentService, agentServiceImpl({ agentId: "a1", targets: [], apps: [] } as unknown as AgentConfig, ops, "test"));
  const port = await bindServer(server, "127.0.0.1:0", serverCredentials());
  client = createClient(AgentService, `127.0.0.1:${port}`, channelCredentials());
});

after(() => {
  client.close();
  server.forceShutdown();
});

async function codeOf(stream: AsyncIterable<unknown>): Promise<string> {
  try {
    for await (const _ of stream) {
      /* drain */
    }
  } catch (err) {
    return err instanceof FlotillaError ? err.code : String(err);
  }
  return "no error";
}

test("stamp and downgrade with an empty revision end their streams with INVALID_ARGUMENT (not a dropped stream)", { timeout: 60_000 }, async () => {
  // A deadline far beyond the test's timeout: before the fix the call only ended when it expired.
  const long = { timeoutMs: 3_600_000 };
  assert.equal(await codeOf(client.stamp({ targetId: "t1", revision: "", reason: "imported-backup", operationId: "op1" }, long)), "INVALID_ARGUMENT");
  assert.equal(await codeOf(client.downgrade({ targetId: "t1", toRevision: "", acceptDataLoss: true, operationId: "op2" }, long)), "INVALID_ARGUMENT");
  assert.equal(await codeOf(client.restore({ targetId: "t1", backupId: "", operationId: "op3" }, long)), "INVALID_ARGUMENT");
  assert.deepEqual(reached, []);
});
