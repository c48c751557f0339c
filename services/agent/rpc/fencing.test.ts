// The offline fencing reset on a real agent journal (SQLite), and the instance
// lock it takes, across real processes.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { SqliteJournal } from "../adapters/sqlite-journal.js";
import { InstanceLock } from "../adapters/instance-lock.js";
import { resetFencing } from "./fencing.js";

let dir: string;

before(() => {
  dir = mkdtempSync(path.join(os.tmpdir(), "flotilla-fencing-reset-"));
});

after(() => {
  rmSync(dir, { recursive: true, force: true });
});

function journalWith(name: string, epochs: Record<string, number>): SqliteJournal {
  const j = new SqliteJournal(path.join(dir, name));
  j.open();
  for (const [t, e] of Object.entries(epochs)) j.observeEpoch(t, e);
  return j;
}

let n = 0;
const newId = (): string => `reset-${++n}`;

test("--all-targets forgets every epoch, each recorded once as a finished operation of its target", () => {
  const j = journalWith("all", { a: 7, b: 3 });
  const r = resetFencing(j, { targets: "all", reason: "moved to a fresh store", actor: "alice" }, newId);
  assert.deepEqual(
    r.cleared.map((c) => [c.targetId, c.epoch]),
    [
      ["a", 7],
      ["b", 3],
    ],
  );
  assert.deepEqual(r.unfenced, []);
  assert.deepEqual(j.epochs(), []);
  for (const c of r.cleared) {
    const op = j.get(c.operationId)!;
    assert.equal(op.kind, "reset-fencing");
    assert.equal(op.state, "succeeded");
    assert.equal(op.targetId, c.targetId);
    assert.match(op.message, new RegExp(`fencing reset by alice .*forgot controller epoch ${c.epoch};.*Reason: moved to a fresh store`));
    assert.equal(j.lockHolder(c.targetId), undefined);
    assert.deepEqual(j.interrupted(c.targetId), []);
  }
  j.observeEpoch("a", 1); // the replacement controller is obeyed
  assert.equal(j.epochOf("a"), 1);
  j.close();
});

test("named targets only: the others keep fencing a lower epoch; a target without an epoch writes nothing", () => {
  const j = journalWith("named", { a: 7, b: 3 });
  const r = resetFencing(j, { targets: ["a", "c", "a"], reason: "r", actor: "bob" }, newId);
  assert.deepEqual(
    r.cleared.map((c) => c.targetId),
    ["a"],
  );
  assert.deepEqual(r.unfenced, ["c"]);
  assert.throws(() => j.observeEpoch("b", 1), /already obeys epoch 3/);
  assert.deepEqual(j.list("c", 10), [], "nothing recorded where nothing was forgotten");
  assert.equal(j.list("a", 10).length, 1);
  j.close();
});

/** Runs a child process that tries to take the lock and prints what happened. */
function lockFromAnotherProcess(dataDir: string): Promise<string> {
  const code = `import("${path.join(import.meta.dirname, "../adapters/instance-lock.ts").replaceAll("\\", "/")}").then((m) => { try { m.InstanceLock.acquire(process.argv[1]).release(); console.log("acquired"); } catch (e) { console.log(e.code + ": " + e.message); } });`;
  return new Promise((resolve) => {
    const child = spawn(process.execPath, ["--import", "tsx", "-e", code, dataDir], { stdio: ["ignore", "pipe", "inherit"] });
    let out = "";
    child.stdout.on("data", (c: Buffer) => (out += c.toString()));
    child.on("close", () => resolve(out.trim()));
  });
}

test("the instance lock is exclusive across processes and is free again once released", async () => {
  const dataDir = path.join(dir, "lock");
  const lock = InstanceLock.acquire(dataDir);
  assert.match(await lockFromAnotherProcess(dataDir), /^PRECONDITION_FAILED: a flotilla-agent process is running with data dir /);
  lock.release();
  assert.equal(await lockFromAnotherProcess(dataDir), "acquired");
});
