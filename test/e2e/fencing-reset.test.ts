// The operator's way out of fencing after a legitimate controller replacement:
// `flotilla-agent --reset-fencing`, offline, on the real agent process and its
// real journal; a controller at epoch 1 is accepted again afterwards, and only
// where the reset was done.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { join } from "node:path";
import type { ControllerStore } from "../../services/controller/core/ports.js";
import { GrpcAgentPool } from "../../services/controller/agents/agent-pool.js";
import { FlotillaError } from "../../services/common/errors.js";
import { Fleet, ROOT, run } from "../helpers/fleet.js";

let fleet: Fleet;
const pools: GrpcAgentPool[] = [];

before(async () => {
  fleet = new Fleet({
    agents: ["h1"],
    noController: true,
    targets: [
      { id: "f-1", kind: "sqlite", owner: "h1" },
      { id: "f-2", kind: "sqlite", owner: "h1" },
    ],
  });
  await fleet.start();
});

after(async () => {
  for (const p of pools) p.close();
  await fleet?.stop();
});

/** A controller's view of the agent at a fixed leader epoch (a fresh pool: the agent's port may have changed). */
function controllerAt(epoch: number): GrpcAgentPool {
  const store = { listAgents: async () => [] } as unknown as ControllerStore;
  const pool = new GrpcAgentPool([{ id: "h1", address: `127.0.0.1:${fleet.agents.get("h1")!.port}` }], store, undefined, () => epoch);
  pools.push(pool);
  return pool;
}

/** A fenced, harmless change: start the target's app instances (it has none). */
async function command(pool: GrpcAgentPool, targetId: string): Promise<string> {
  try {
    const c = await pool.client("h1");
    for await (const ev of c.startApps({ targetId, operationId: `cmd-${Math.random().toString(36).slice(2)}` }, { timeoutMs: 20_000 })) {
      if (ev.event.case === "result") return ev.event.value.status;
    }
    return "no result";
  } catch (err) {
    return err instanceof FlotillaError ? `${err.code}: ${err.message}` : String(err);
  }
}

function agentCli(args: string[]) {
  return run([process.execPath, join(ROOT, "bin/flotilla-agent.mjs"), "--config", fleet.agents.get("h1")!.configPath, ...args]);
}

test("--help documents --reset-fencing", async () => {
  const r = await agentCli(["--help"]);
  assert.equal(r.code, 0);
  assert.match(r.stdout, /--reset-fencing \(--target ID \.\.\. \| --all-targets\) --reason TEXT/);
  assert.match(r.stdout, /Refused while the agent runs/);
});

test("a replaced controller (epoch 1) is refused until --reset-fencing, which is refused while the agent runs, recorded, and scoped to the named targets", async () => {
  const old = controllerAt(9);
  assert.equal(await command(old, "f-1"), "succeeded");
  assert.equal(await command(old, "f-2"), "succeeded");
  const fresh = controllerAt(1);
  assert.match(await command(fresh, "f-1"), /^PRECONDITION_FAILED: refused: this command comes from controller epoch 1, but f-1 already obeys epoch 9/);

  // Refused while the agent runs: nothing changes.
  const busy = await agentCli(["--reset-fencing", "--target", "f-1", "--reason", "controller moved to a new store"]);
  assert.equal(busy.code, 1, busy.stderr);
  assert.match(busy.stderr, /refused: a flotilla-agent process is running with data dir .*Stop the agent first.*nothing was changed/);
  assert.match(await command(fresh, "f-1"), /already obeys epoch 9/);
  // A second daemon on the same data dir is refused too.
  const second = await agentCli(["--listen", "127.0.0.1:0"]);
  assert.equal(second.code, 1);
  assert.match(second.stderr, /running with data dir .*refusing to start a second one/);

  // Usage: a reason and a target choice are required.
  await fleet.killAgent("h1", "SIGKILL"); // a crash leaves no stale lock behind
  const noReason = await agentCli(["--reset-fencing", "--target", "f-1"]);
  assert.equal(noReason.code, 2);
  assert.match(noReason.stderr, /--reason TEXT is required/);
  const noTarget = await agentCli(["--reset-fencing", "--reason", "x"]);
  assert.equal(noTarget.code, 2);
  assert.match(noTarget.stderr, /--target ID .* or give --all-targets/);

  const done = await agentCli(["--reset-fencing", "--target", "f-1", "--target", "f-3", "--reason", "controller moved to a new store"]);
  assert.equal(done.code, 0, done.stderr);
  assert.match(done.stdout, /^f-1: forgot controller epoch 9 \(last seen .*\); recorded as operation reset-fencing\./m);
  assert.match(done.stdout, /^f-3: no controller epoch recorded; nothing to forget$/m);

  await fleet.startAgent("h1");
  const freshAgain = controllerAt(1);
  assert.equal(await command(freshAgain, "f-1"), "succeeded", "the replaced controller commands the reset target");
  assert.match(await command(freshAgain, "f-2"), /already obeys epoch 9/, "a target not named stays fenced");
  // The new epoch is obeyed from then on: fencing works as before.
  assert.equal(await command(controllerAt(2), "f-1"), "succeeded");
  assert.match(await command(freshAgain, "f-1"), /already obeys epoch 2/);

  // Recorded in the target's journal: who, what epoch, why.
  const ops = (await fleet.agentClient("h1").listOperations({ targetId: "f-1", limit: 50 }, { timeoutMs: 10_000 })).operations;
  const reset = ops.filter((o) => o.kind === "reset-fencing");
  assert.equal(reset.length, 1);
  assert.equal(reset[0]!.state, "succeeded");
  assert.match(
    reset[0]!.message,
    /fencing reset by .+ \(offline, flotilla-agent --reset-fencing\): forgot controller epoch 9; .*Reason: controller moved to a new store/,
  );
  const status = await fleet.agentClient("h1").getStatus({ targetId: "f-1" }, { timeoutMs: 10_000 });
  assert.deepEqual(status.interruptedOperationIds, [], "the reset leaves nothing to recover");
});
