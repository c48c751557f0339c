// Fencing: the leader's epoch travels with every controller → agent command;
// agents remember the highest epoch per target and refuse a lower one. Real
// gRPC on loopback, the real agent journal and the controller's agent pool,
// and leader election on the real PostgreSQL.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import type { Server } from "@grpc/grpc-js";
import pino from "pino";
import { AgentService } from "../../services/common/gen/flotilla/v1/agent_pb.js";
import { addService, bindServer, newServer, serverCredentials, type CallContext, type ServiceImpl } from "../../services/common/grpc-bridge.js";
import { FlotillaError } from "../../services/common/errors.js";
import { SqliteJournal } from "../../services/agent/adapters/sqlite-journal.js";
import { withFencing } from "../../services/agent/rpc/fencing.js";
import { GrpcAgentPool } from "../../services/controller/agents/agent-pool.js";
import { Leadership } from "../../services/controller/leadership.js";
import type { ControllerStore } from "../../services/controller/core/ports.js";
import { createTestDatabase, type TestDatabase } from "../helpers/pg.js";

let dir: string;
let server: Server;
let port: number;
let journal: SqliteJournal;
/** Epoch metadata each stamp the fake agent ran saw. */
const ran: string[] = [];

before(async () => {
  dir = mkdtempSync(path.join(os.tmpdir(), "flotilla-fence-"));
  journal = new SqliteJournal(dir);
  journal.open();
  const stamp = (_req: unknown, ctx: CallContext) => ({
    async *[Symbol.asyncIterator]() {
      ran.push(String(ctx.metadata.get("flotilla-epoch")[0] ?? "none"));
      yield { event: { case: "result" as const, value: { status: "succeeded", operationId: "x" } } };
    },
  });
  const impl: Record<string, unknown> = {};
  for (const m of AgentService.methods)
    impl[m.localName] = () => {
      throw new Error(`unexpected ${m.name}`);
    };
  impl.stamp = stamp;
  server = newServer();
  addService(server, AgentService, withFencing(impl as unknown as ServiceImpl<typeof AgentService.method>, journal));
  port = await bindServer(server, "127.0.0.1:0", serverCredentials());
});

after(() => {
  server.forceShutdown();
  journal.close();
  rmSync(dir, { recursive: true, force: true });
});

function poolAt(epoch: () => number): GrpcAgentPool {
  const store = { listAgents: async () => [] } as unknown as ControllerStore;
  return new GrpcAgentPool([{ id: "a1", address: `127.0.0.1:${port}` }], store, undefined, epoch);
}

async function stampVia(pool: GrpcAgentPool, targetId = "t1"): Promise<string> {
  const c = await pool.client("a1");
  try {
    for await (const ev of c.stamp({ targetId, revision: "abc", reason: "imported-backup", operationId: `op-${Math.random()}` }, { timeoutMs: 20_000 })) {
      if (ev.event.case === "result") return ev.event.value.status;
    }
    return "no result";
  } catch (err) {
    return err instanceof FlotillaError ? `${err.code}: ${err.message}` : String(err);
  }
}

test("every command carries the epoch; a lower epoch than one already obeyed is refused, per target", async () => {
  let epoch = 2;
  const pool = poolAt(() => epoch);
  try {
    assert.equal(await stampVia(pool), "succeeded");
    assert.deepEqual(ran, ["2"]);
    assert.equal(journal.epochOf("t1"), 2);
    epoch = 1; // a replica paused past the loss of its leadership wakes up and sends its old epoch
    const refused = await stampVia(pool);
    assert.match(refused, /^PRECONDITION_FAILED: refused: this command comes from controller epoch 1, but t1 already obeys epoch 2/);
    assert.deepEqual(ran, ["2"], "the refused command never reached the operation");
    assert.equal(await stampVia(pool, "t2"), "succeeded", "another target has its own epoch");
    epoch = 3;
    assert.equal(await stampVia(pool), "succeeded");
    assert.equal(journal.epochOf("t1"), 3);
    // The agent remembers across restarts: the journal holds it.
    journal.close();
    journal.open();
    epoch = 2;
    assert.match(await stampVia(pool), /already obeys epoch 3/);
  } finally {
    pool.close();
  }
});

test("leader election on PostgreSQL hands out a higher epoch to each new leader; the SQLite store has a fixed one", async () => {
  let db: TestDatabase | undefined;
  try {
    db = await createTestDatabase("fence_epoch");
    const log = pino({ level: "silent" });
    const first = new Leadership(
      db.url,
      log,
      async () => undefined,
      () => undefined,
    );
    await first.start();
    assert.equal(first.isLeader, true);
    const e1 = first.epoch;
    assert.ok(e1 >= 1);
    const standby = new Leadership(
      db.url,
      log,
      async () => undefined,
      () => undefined,
      100,
    );
    await standby.start();
    assert.equal(standby.epoch, 0, "a standby has no epoch");
    await first.close();
    assert.equal(first.epoch, 0, "a replica that lost its leadership has no epoch");
    for (let i = 0; i < 100 && !standby.isLeader; i++) await new Promise((r) => setTimeout(r, 100));
    assert.equal(standby.isLeader, true);
    assert.ok(standby.epoch > e1, `${standby.epoch} > ${e1}`);
    await standby.close();
    const sqlite = new Leadership(
      "sqlite:///tmp/x.db",
      log,
      async () => undefined,
      () => undefined,
    );
    await sqlite.start();
    assert.equal(sqlite.epoch, 1);
    await sqlite.close();
  } finally {
    await db?.drop();
  }
});
