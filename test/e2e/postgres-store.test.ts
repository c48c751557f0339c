/**
 * The controller on its PostgreSQL store: a rollout, a restart that finds the
 * rollout and the audit chain in PostgreSQL, and audit verification.
 */
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import pg from "pg";
import { Fleet, HEAD_REVISION } from "../helpers/fleet.js";
import { createTestDatabase, type TestDatabase } from "../helpers/pg.js";

let fleet: Fleet;
let storeDb: TestDatabase;

before(async () => {
  storeDb = await createTestDatabase("ctl_store");
  fleet = new Fleet({ agents: ["s1"], noController: true, targets: [{ id: "pgs-1", kind: "sqlite", owner: "s1", labels: { env: "pgstore" }, apps: [{ agent: "s1" }] }] });
  await fleet.start();
  await fleet.startController({ store: storeDb.url });
});

after(async () => {
  await fleet?.stop();
  await storeDb?.drop();
});

test("a rollout runs with the PostgreSQL store, survives a controller restart, and the audit chain verifies", async () => {
  const r = await fleet.cliJson<{ id: string; status: string }>(["rollout", "--selector", "env=pgstore", "--strategy", "maintenance", "--wait"]);
  assert.equal(r.code, 0, r.stderr);
  assert.equal(r.doc.status, "succeeded");
  assert.deepEqual(await fleet.revisionOf("pgs-1"), [HEAD_REVISION]);
  const c = new pg.Client({ connectionString: storeDb.url });
  await c.connect();
  try {
    const rows = await c.query<{ n: string }>("SELECT count(*) AS n FROM audit_log WHERE action = 'step.migrate'");
    assert.equal(Number(rows.rows[0]!.n), 2, "intent and result rows of the migrate step are in PostgreSQL");
  } finally {
    await c.end();
  }
  await fleet.killController("SIGTERM");
  await fleet.startController({ store: storeDb.url });
  const list = await fleet.cliJson<{ rollouts: { id: string; status: string }[] }>(["rollouts"]);
  assert.ok(list.doc.rollouts.some((x) => x.id === r.doc.id && x.status === "succeeded"));
  const v = await fleet.cli(["audit", "verify"]);
  assert.equal(v.code, 0, v.stdout + v.stderr);
});
