// One contract suite for ControllerStore, run against every adapter: a SQLite
// file and a fresh PostgreSQL database (test/helpers/pg.ts).
import { after, afterEach, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { existsSync, mkdtempSync, rmSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { FlotillaError } from "../../common/errors.js";
import type { AuditRow, ControllerStore, NewAuditRow, RolloutDoc, ScheduleDoc } from "../core/ports.js";
import { openStore, PostgresStore, SqliteStore } from "./index.js";
import { postgresBackend, sqliteBackend } from "../../../test/helpers/store-backends.js";

function rollout(id: string, over: Partial<RolloutDoc> = {}): RolloutDoc {
  return {
    id,
    status: "pending",
    spec: {
      selector: "env=prod",
      toRevision: "head",
      strategy: "maintenance",
      waves: "1,100%",
      maxFailures: 0,
      window: "",
      gate: "",
      allowBreaking: false,
      schedule: "",
    },
    targets: [
      {
        targetId: "webui-1",
        agentId: "host-a",
        wave: 0,
        status: "pending",
        steps: [{ name: "backup", state: "pending", agentId: "host-a", operationId: "", detail: "" }],
        revisionBefore: ["a1f0c0de0001"],
        revisionAfter: [],
        backupId: "",
        message: "",
      },
    ],
    createdAt: "2030-01-01T00:00:00.000Z",
    actor: "alice",
    message: "",
    warnings: [],
    currentWave: 0,
    abortRequested: false,
    version: 0,
    ...over,
  };
}

function schedule(name: string, over: Partial<ScheduleDoc> = {}): ScheduleDoc {
  return {
    name,
    cron: "0 3 * * 0",
    selector: "env=prod",
    strategy: "maintenance",
    window: "2h",
    toRevision: "head",
    waves: "1,100%",
    source: "config",
    ...over,
  };
}

function auditRow(over: Partial<NewAuditRow> = {}): NewAuditRow {
  return {
    time: "2030-01-01T00:00:00.000Z",
    actor: "alice",
    action: "rollout.create",
    target: "webui-1",
    args: "{}",
    outcome: "intent",
    detail: "",
    ...over,
  };
}

const fakeSeal = (seq: number, prevHash: string): string => `h${seq + 1}<${prevHash.slice(0, 6)}`;

async function rejectsWith(p: Promise<unknown>, code: string, re: RegExp): Promise<void> {
  await assert.rejects(p, (err: unknown) => {
    assert.ok(err instanceof FlotillaError, `expected a FlotillaError, got ${String(err)}`);
    assert.equal(err.code, code);
    assert.match(err.message, re);
    return true;
  });
}

for (const make of [() => sqliteBackend("store"), () => postgresBackend("store_test")]) {
  const backend = make();
  describe(`ControllerStore contract: ${backend.name}`, () => {
    before(() => backend.setup());
    after(() => backend.teardown());
    afterEach(() => backend.cleanup());

    test("createRollout then getRollout returns the same document; unknown id is null; duplicate id refused", async () => {
      const { store } = await backend.fresh();
      const doc = rollout("r1", {
        spec: {
          selector: "a=b",
          toRevision: "c3d2e1f00d42",
          strategy: "job",
          waves: "1",
          maxFailures: 2,
          window: "2h",
          gate: "manual:30m",
          allowBreaking: true,
          schedule: "",
        },
      });
      await store.createRollout(doc);
      assert.deepEqual(await store.getRollout("r1"), doc);
      assert.equal(await store.getRollout("nope"), null);
      await rejectsWith(store.createRollout(rollout("r1")), "INVALID_ARGUMENT", /r1 already exists/);
    });

    test("saveRollout bumps the version, sets doc.version, and rejects a stale version without changing anything", async () => {
      const { store } = await backend.fresh();
      await store.createRollout(rollout("r1"));
      const a = (await store.getRollout("r1"))!;
      const b = (await store.getRollout("r1"))!;
      a.status = "running";
      a.targets[0]!.steps[0]!.state = "succeeded";
      await store.saveRollout(a);
      assert.equal(a.version, 1);
      const got = (await store.getRollout("r1"))!;
      assert.equal(got.version, 1);
      assert.equal(got.status, "running");
      assert.equal(got.targets[0]!.steps[0]!.state, "succeeded");

      b.status = "aborted";
      await assert.rejects(store.saveRollout(b), /stale rollout version/);
      assert.equal(b.version, 0);
      assert.equal((await store.getRollout("r1"))!.status, "running");

      got.finishedAt = "2030-01-01T01:00:00.000Z";
      await store.saveRollout(got);
      assert.equal((await store.getRollout("r1"))!.version, 2);
      assert.equal((await store.getRollout("r1"))!.finishedAt, "2030-01-01T01:00:00.000Z");
      await rejectsWith(store.saveRollout(rollout("ghost")), "NOT_FOUND", /ghost/);
    });

    test("listRollouts is newest first and honours the limit; listActiveRollouts returns only pending and running", async () => {
      const { store } = await backend.fresh();
      await store.createRollout(rollout("old", { createdAt: "2030-01-01T00:00:00.000Z", status: "succeeded" }));
      await store.createRollout(rollout("mid", { createdAt: "2030-01-02T00:00:00.000Z", status: "running" }));
      await store.createRollout(rollout("new", { createdAt: "2030-01-03T00:00:00.000Z", status: "pending" }));
      await store.createRollout(rollout("halted", { createdAt: "2030-01-04T00:00:00.000Z", status: "halted" }));
      assert.deepEqual(
        (await store.listRollouts(10)).map((r) => r.id),
        ["halted", "new", "mid", "old"],
      );
      assert.deepEqual(
        (await store.listRollouts(2)).map((r) => r.id),
        ["halted", "new"],
      );
      assert.deepEqual((await store.listActiveRollouts()).map((r) => r.id).sort(), ["mid", "new"]);

      const mid = (await store.getRollout("mid"))!;
      mid.status = "failed";
      await store.saveRollout(mid);
      assert.deepEqual(
        (await store.listActiveRollouts()).map((r) => r.id),
        ["new"],
      );
      await rejectsWith(store.listRollouts(-1), "INVALID_ARGUMENT", /limit/);
    });

    test("leases: a second rollout is refused naming the first holder, all-or-nothing, and release frees them", async () => {
      const { store } = await backend.fresh();
      assert.deepEqual(await store.acquireLeases("r1", ["a", "b"]), { ok: true });
      assert.deepEqual(await store.acquireLeases("r2", ["c", "b", "a"]), { ok: false, targetId: "b", heldBy: "r1" });
      // nothing of r2's request was taken, not even the free "c"
      assert.deepEqual(await store.listLeases(), { a: "r1", b: "r1" });
      // re-acquiring one's own lease is fine
      assert.deepEqual(await store.acquireLeases("r1", ["a"]), { ok: true });

      await store.releaseLeases("r1", ["a"]);
      assert.deepEqual(await store.listLeases(), { b: "r1" });
      assert.deepEqual(await store.acquireLeases("r2", ["c", "a"]), { ok: true });
      await store.releaseLeases("r2", ["b"]); // not r2's: untouched
      assert.deepEqual(await store.listLeases(), { a: "r2", b: "r1", c: "r2" });
      await store.releaseLeases("r1");
      assert.deepEqual(await store.listLeases(), { a: "r2", c: "r2" });
      await store.releaseLeases("r2");
      assert.deepEqual(await store.listLeases(), {});
    });

    test("leases: rollouts racing from separate connections for overlapping targets end with exactly one winner", async () => {
      const { store, another } = await backend.fresh();
      const stores = [store, await another(), await another()];
      const targets = ["t1", "t2", "t3", "t4", "t5"];
      const results = await Promise.all(
        Array.from({ length: 9 }, (_, i) => {
          const mine = (i % 2 === 0 ? [...targets].reverse() : [...targets]).slice(i % 3);
          return stores[i % 3]!.acquireLeases(`r${i}`, [...mine, "t5"]);
        }),
      );
      const winners = results.flatMap((r, i) => (r.ok ? [`r${i}`] : []));
      assert.equal(winners.length, 1, JSON.stringify(results));
      const leases = await store.listLeases();
      assert.ok(
        Object.values(leases).every((holder) => holder === winners[0]),
        JSON.stringify(leases),
      );
      for (const r of results) if (!r.ok) assert.equal(r.heldBy, winners[0]);
    });

    test("agents: upsert inserts and replaces, list is sorted by id, lastSeen is absent when unset", async () => {
      const { store } = await backend.fresh();
      await store.upsertAgent({ id: "host-b", address: "host-b:7443", source: "config" });
      await store.upsertAgent({ id: "host-a", address: "host-a:7443", source: "registered", lastSeen: "2030-01-01T00:00:00.000Z" });
      await store.upsertAgent({ id: "host-b", address: "10.0.0.2:7443", source: "registered", lastSeen: "2030-01-02T00:00:00.000Z" });
      assert.deepEqual(await store.listAgents(), [
        { id: "host-a", address: "host-a:7443", source: "registered", lastSeen: "2030-01-01T00:00:00.000Z" },
        { id: "host-b", address: "10.0.0.2:7443", source: "registered", lastSeen: "2030-01-02T00:00:00.000Z" },
      ]);
      await store.upsertAgent({ id: "host-a", address: "host-a:7443", source: "config" });
      const a = (await store.listAgents())[0]!;
      assert.deepEqual(a, { id: "host-a", address: "host-a:7443", source: "config" });
      assert.equal("lastSeen" in a, false);
    });

    test("schedules: upsert inserts and replaces, remove says whether it removed, list is sorted by name", async () => {
      const { store } = await backend.fresh();
      await store.upsertSchedule(schedule("sunday"));
      await store.upsertSchedule(schedule("nightly", { cron: "0 1 * * *", source: "api" }));
      await store.upsertSchedule(schedule("sunday", { window: "4h", lastRun: "2030-01-05T03:00:00.000Z", lastResult: "succeeded" }));
      assert.deepEqual(await store.listSchedules(), [
        schedule("nightly", { cron: "0 1 * * *", source: "api" }),
        schedule("sunday", { window: "4h", lastRun: "2030-01-05T03:00:00.000Z", lastResult: "succeeded" }),
      ]);
      assert.equal(await store.removeSchedule("nightly"), true);
      assert.equal(await store.removeSchedule("nightly"), false);
      assert.deepEqual(
        (await store.listSchedules()).map((s) => s.name),
        ["sunday"],
      );
    });

    test("claimScheduleFire is idempotent per (name, slot), also across connections", async () => {
      const { store, another } = await backend.fresh();
      const slot = "2030-01-06T03:00:00.000Z";
      assert.equal(await store.claimScheduleFire("sunday", slot), true);
      assert.equal(await store.claimScheduleFire("sunday", slot), false);
      assert.equal(await store.claimScheduleFire("sunday", "2030-01-13T03:00:00.000Z"), true);
      assert.equal(await store.claimScheduleFire("nightly", slot), true);
      const other = await another();
      const claims = await Promise.all(Array.from({ length: 8 }, (_, i) => (i % 2 === 0 ? store : other).claimScheduleFire("race", slot)));
      assert.equal(claims.filter(Boolean).length, 1);
    });

    test("appendAudit chains rows: seal gets the previous seq and hash, rows come back as stored", async () => {
      const { store } = await backend.fresh();
      const calls: Array<[number, string]> = [];
      const seal = (seq: number, prev: string): string => {
        calls.push([seq, prev]);
        return fakeSeal(seq, prev);
      };
      const r1 = await store.appendAudit(auditRow({ detail: "first" }), seal);
      const r2 = await store.appendAudit(auditRow({ detail: "second", outcome: "ok" }), seal);
      assert.deepEqual(calls, [
        [0, "0".repeat(64)],
        [1, r1.hash],
      ]);
      assert.deepEqual(r1, { ...auditRow({ detail: "first" }), seq: 1, prevHash: "0".repeat(64), hash: fakeSeal(0, "0".repeat(64)) });
      assert.equal(r2.seq, 2);
      assert.equal(r2.prevHash, r1.hash);
      assert.deepEqual(await store.readAudit(0, 10), [r1, r2]);
      assert.deepEqual(await store.readAudit(1, 10), [r2]);
      assert.deepEqual(await store.readAudit(0, 1), [r1]);
      assert.deepEqual(await store.readAudit(2, 10), []);
    });

    test("appendAudit writes nothing when seal throws", async () => {
      const { store } = await backend.fresh();
      await store.appendAudit(auditRow(), fakeSeal);
      await assert.rejects(
        store.appendAudit(auditRow(), () => {
          throw new Error("seal broke");
        }),
        /seal broke/,
      );
      const r3 = await store.appendAudit(auditRow(), fakeSeal);
      assert.equal(r3.seq, 2);
      assert.deepEqual(
        (await store.readAudit(0, 10)).map((r) => r.seq),
        [1, 2],
      );
    });

    test("appendAudit from several connections in parallel keeps seq contiguous and every link intact", async () => {
      const { store, another } = await backend.fresh();
      const other = await another();
      await Promise.all(Array.from({ length: 40 }, (_, i) => (i % 2 === 0 ? store : other).appendAudit(auditRow({ detail: `n${i}` }), fakeSeal)));
      const rows = await store.readAudit(0, 100);
      assert.deepEqual(
        rows.map((r) => r.seq),
        Array.from({ length: 40 }, (_, i) => i + 1),
      );
      let prev = "0".repeat(64);
      for (const r of rows) {
        assert.equal(r.prevHash, prev, `row ${r.seq}`);
        assert.equal(r.hash, fakeSeal(r.seq - 1, prev));
        prev = r.hash;
      }
    });

    test("appendAudit from two stores taking turns (each one's tail guess stale every time) links every row to the real tail", async () => {
      const { store, another } = await backend.fresh();
      const other = await another();
      for (let i = 0; i < 12; i++) {
        const r = await (i % 3 === 0 ? other : store).appendAudit(auditRow({ detail: `t${i}` }), fakeSeal);
        // The anchor names every new row as soon as it is committed (the fast path moves it too).
        assert.deepEqual(await store.auditAnchor(), { seq: r.seq, hash: r.hash });
      }
      const rows = await store.readAudit(0, 100);
      assert.deepEqual(
        rows.map((r) => r.seq),
        Array.from({ length: 12 }, (_, i) => i + 1),
      );
      let prev = "0".repeat(64);
      for (const r of rows) {
        assert.equal(r.prevHash, prev, `row ${r.seq}`);
        prev = r.hash;
      }
      assert.deepEqual(await store.auditAnchor(), { seq: 12, hash: prev });
    });

    test("two stores appending flat out at once never fork the chain", async () => {
      const { store, another } = await backend.fresh();
      const other = await another();
      const burst = (s: ControllerStore, tag: string) =>
        Promise.all(Array.from({ length: 60 }, (_, i) => s.appendAudit(auditRow({ detail: `${tag}${i}` }), fakeSeal)));
      const [a, b] = await Promise.all([burst(store, "a"), burst(other, "b")]);
      assert.deepEqual(
        [...a, ...b].map((r) => r.seq).sort((x, y) => x - y),
        Array.from({ length: 120 }, (_, i) => i + 1),
      );
      const rows = await store.readAudit(0, 200);
      assert.equal(rows.length, 120);
      let prev = "0".repeat(64);
      for (const r of rows) {
        assert.equal(r.prevHash, prev, `row ${r.seq}`);
        assert.equal(r.hash, fakeSeal(r.seq - 1, prev));
        prev = r.hash;
      }
      assert.deepEqual(await store.auditAnchor(), { seq: 120, hash: prev });
    });

    test("appendAudit after the tail it last wrote was cut or changed refuses and writes nothing", async () => {
      const cut = await backend.fresh();
      for (let i = 0; i < 5; i++) await cut.store.appendAudit(auditRow(), fakeSeal);
      await cut.sql("DELETE FROM audit_log WHERE seq > 3");
      await rejectsWith(cut.store.appendAudit(auditRow(), fakeSeal), "AUDIT_UNAVAILABLE", /tail truncated: .* says seq 5, the log ends at 3/);
      assert.deepEqual(
        (await cut.store.readAudit(0, 10)).map((r) => r.seq),
        [1, 2, 3],
      );
      assert.equal((await cut.store.auditAnchor())?.seq, 5);

      const changed = await backend.fresh();
      for (let i = 0; i < 5; i++) await changed.store.appendAudit(auditRow(), fakeSeal);
      await changed.sql(`UPDATE audit_log SET hash = '${"ef".repeat(32)}' WHERE seq = 5`);
      await rejectsWith(changed.store.appendAudit(auditRow(), fakeSeal), "AUDIT_UNAVAILABLE", /rewritten/);
      assert.equal((await changed.store.readAudit(0, 10)).length, 5);

      // Cut and refilled with a row 5 of the right seq but another hash: refused too.
      const refilled = await backend.fresh();
      for (let i = 0; i < 5; i++) await refilled.store.appendAudit(auditRow(), fakeSeal);
      await refilled.sql("DELETE FROM audit_log WHERE seq = 5");
      await refilled.sql(
        `INSERT INTO audit_log (seq, time, actor, action, target, args, outcome, detail, prev_hash, hash) SELECT 5, time, 'm', 'x', '', '{}', 'ok', '', hash, '${"ab".repeat(32)}' FROM audit_log WHERE seq = 4`,
      );
      await assert.rejects(refilled.store.appendAudit(auditRow(), fakeSeal));
      assert.equal((await refilled.store.readAudit(0, 10)).length, 5);
    });

    test("appendAudit after the anchor was removed or moved back appends on the real tail and moves the anchor to it", async () => {
      const { store, sql } = await backend.fresh();
      for (let i = 0; i < 3; i++) await store.appendAudit(auditRow(), fakeSeal);
      await sql("DELETE FROM audit_anchor");
      const r4 = await store.appendAudit(auditRow(), fakeSeal);
      assert.equal(r4.seq, 4);
      assert.deepEqual(await store.auditAnchor(), { seq: 4, hash: r4.hash });
      const [r1] = await store.readAudit(0, 1);
      await sql(`UPDATE audit_anchor SET seq = 1, hash = '${r1!.hash}'`);
      const r5 = await store.appendAudit(auditRow(), fakeSeal);
      assert.equal(r5.seq, 5);
      assert.equal(r5.prevHash, r4.hash);
      assert.deepEqual(await store.auditAnchor(), { seq: 5, hash: r5.hash });
    });

    test("appendAudit after a row written by a writer that does not move the anchor appends after that row", async () => {
      const { store, sql } = await backend.fresh();
      for (let i = 0; i < 2; i++) await store.appendAudit(auditRow(), fakeSeal);
      const [, r2] = await store.readAudit(0, 2);
      await sql(
        `INSERT INTO audit_log (seq, time, actor, action, target, args, outcome, detail, prev_hash, hash) VALUES (3, 't', 'a', 'x', '', '{}', 'ok', '', '${r2!.hash}', '${fakeSeal(2, r2!.hash)}')`,
      );
      await sql(`UPDATE audit_anchor SET seq = 2, hash = '${r2!.hash}'`);
      const r4 = await store.appendAudit(auditRow(), fakeSeal);
      assert.equal(r4.seq, 4);
      assert.equal(r4.prevHash, fakeSeal(2, r2!.hash));
      assert.deepEqual(await store.auditAnchor(), { seq: 4, hash: r4.hash });
    });

    test("appendAudit after the store's audit connection was killed carries on on a new one, chain intact", async () => {
      const { store, sql } = await backend.fresh();
      for (let i = 0; i < 3; i++) await store.appendAudit(auditRow(), fakeSeal);
      if (backend.name === "PostgresStore") {
        // The audit fast path's own connection (waiting until its backend is gone).
        const killed = await sql(
          "SELECT pg_terminate_backend(pid, 5000) AS k FROM pg_stat_activity WHERE datname = current_database() AND application_name = 'flotilla-controller-audit'",
        );
        assert.deepEqual(killed, [{ k: true }]);
      }
      // At most the first append after the kill fails (closed); none is written twice.
      await store.appendAudit(auditRow(), fakeSeal).catch(() => undefined);
      for (let i = 0; i < 3; i++) await store.appendAudit(auditRow(), fakeSeal);
      const last = await store.appendAudit(auditRow({ detail: "after" }), fakeSeal);
      const rows = await store.readAudit(0, 10);
      assert.deepEqual(
        rows.map((r) => r.seq),
        Array.from({ length: last.seq }, (_, i) => i + 1),
      );
      let prev = "0".repeat(64);
      for (const r of rows) {
        assert.equal(r.prevHash, prev, `row ${r.seq}`);
        prev = r.hash;
      }
      assert.equal(rows.at(-1)?.detail, "after");
    });

    test("queryAudit filters by since/until (inclusive), target, actor, action, and limit (newest rows, in seq order)", async () => {
      const { store } = await backend.fresh();
      const rows: AuditRow[] = [];
      const specs: Array<Partial<NewAuditRow>> = [
        { time: "2030-01-01T00:00:00.000Z", actor: "alice", action: "rollout.create", target: "webui-1" },
        { time: "2030-01-02T00:00:00.000Z", actor: "bob", action: "backup", target: "webui-2" },
        { time: "2030-01-03T00:00:00.000Z", actor: "alice", action: "backup", target: "webui-1" },
        { time: "2030-01-04T00:00:00.000Z", actor: "scheduler", action: "rollout.create", target: "webui-2" },
        { time: "2030-01-05T00:00:00.000Z", actor: "alice", action: "audit.verify", target: "" },
      ];
      for (const s of specs) rows.push(await store.appendAudit(auditRow(s), fakeSeal));
      const seqs = async (f: Parameters<ControllerStore["queryAudit"]>[0]): Promise<number[]> => (await store.queryAudit(f)).map((r) => r.seq);
      assert.deepEqual(await store.queryAudit({}), rows);
      assert.deepEqual(await seqs({ since: "2030-01-02T00:00:00.000Z" }), [2, 3, 4, 5]);
      assert.deepEqual(await seqs({ until: "2030-01-02T00:00:00.000Z" }), [1, 2]);
      assert.deepEqual(await seqs({ since: "2030-01-02T00:00:00.000Z", until: "2030-01-04T00:00:00.000Z" }), [2, 3, 4]);
      assert.deepEqual(await seqs({ target: "webui-1" }), [1, 3]);
      assert.deepEqual(await seqs({ actor: "alice" }), [1, 3, 5]);
      assert.deepEqual(await seqs({ action: "backup" }), [2, 3]);
      assert.deepEqual(await seqs({ actor: "alice", action: "backup" }), [3]);
      assert.deepEqual(await seqs({ limit: 2 }), [4, 5]);
      assert.deepEqual(await seqs({ actor: "alice", limit: 2 }), [3, 5]);
      assert.deepEqual(await seqs({ actor: "nobody" }), []);
    });

    test("queryAudit filters by outcome and pages back with beforeSeq", async () => {
      const { store } = await backend.fresh();
      for (const outcome of ["intent", "ok", "denied", "error", "ok", "denied"] as const) await store.appendAudit(auditRow({ outcome }), fakeSeal);
      const seqs = async (f: Parameters<ControllerStore["queryAudit"]>[0]): Promise<number[]> => (await store.queryAudit(f)).map((r) => r.seq);
      assert.deepEqual(await seqs({ outcome: "denied" }), [3, 6]);
      assert.deepEqual(await seqs({ outcome: "ok" }), [2, 5]);
      assert.deepEqual(await seqs({ beforeSeq: 4 }), [1, 2, 3]);
      assert.deepEqual(await seqs({ beforeSeq: 6, limit: 2 }), [4, 5]);
      assert.deepEqual(await seqs({ outcome: "ok", beforeSeq: 5 }), [2]);
    });

    test("data survives closing and reopening the store", async () => {
      const { store, reopen } = await backend.fresh();
      await store.createRollout(rollout("r1"));
      await store.acquireLeases("r1", ["webui-1"]);
      await store.upsertAgent({ id: "host-a", address: "host-a:7443", source: "config" });
      await store.upsertSchedule(schedule("sunday"));
      await store.claimScheduleFire("sunday", "slot-1");
      const row = await store.appendAudit(auditRow(), fakeSeal);
      await store.close();
      const again = await reopen();
      assert.deepEqual(await again.getRollout("r1"), rollout("r1"));
      assert.deepEqual(await again.listLeases(), { "webui-1": "r1" });
      assert.equal((await again.listAgents()).length, 1);
      assert.equal((await again.listSchedules()).length, 1);
      assert.equal(await again.claimScheduleFire("sunday", "slot-1"), false);
      assert.deepEqual(await again.readAudit(0, 10), [row]);
      assert.equal((await again.appendAudit(auditRow(), fakeSeal)).seq, 2);
    });

    test("a closed store refuses every call, appendAudit included", async () => {
      const { store } = await backend.fresh();
      await store.close();
      await assert.rejects(store.appendAudit(auditRow(), fakeSeal));
      await assert.rejects(store.getRollout("r1"));
      await assert.rejects(store.listLeases());
    });
  });
}

describe("openStore", () => {
  let dir = "";
  before(() => {
    dir = mkdtempSync(path.join(os.tmpdir(), "flotilla-openstore-"));
  });
  after(() => rmSync(dir, { recursive: true, force: true }));

  test("sqlite:///abs and sqlite:////abs both open the absolute file, creating its folder", async () => {
    for (const [url, file] of [
      [`sqlite://${dir}/three/c.db`, `${dir}/three/c.db`],
      [`sqlite:///${dir}/four/c.db`, `${dir}/four/c.db`],
      [`sqlite://${dir}/with%20space/c.db`, `${dir}/with space/c.db`],
    ] as const) {
      const store = openStore(url);
      assert.ok(store instanceof SqliteStore, url);
      assert.equal(existsSync(file), false);
      await store.init();
      await store.upsertAgent({ id: "a", address: "a:1", source: "config" });
      await store.close();
      assert.equal(existsSync(file), true, `${url} → ${file}`);
    }
  });

  test("postgresql:// and postgres:// give a PostgresStore", () => {
    assert.ok(openStore("postgresql://flotilla@db.example:5432/flotilla") instanceof PostgresStore);
    assert.ok(openStore("postgres://flotilla:pw@db.example/flotilla") instanceof PostgresStore);
  });

  test("anything else is CONFIG_INVALID with a clear message that never shows a password", () => {
    const bad = [
      "mysql://root:hunter2-secret@db/x",
      "sqlite://relative.db",
      "sqlite:relative.db",
      "sqlite:///",
      "sqlite:///tmp/%E0%A4%A.db",
      "/var/lib/flotilla/controller.db",
      "postgresql://u:hunter2-secret@[::1/x",
      "",
    ];
    for (const url of bad) {
      assert.throws(
        () => openStore(url),
        (err: unknown) => {
          assert.ok(err instanceof FlotillaError, url);
          assert.equal(err.code, "CONFIG_INVALID", url);
          assert.match(err.message, /store URL/);
          assert.doesNotMatch(err.message, /hunter2/);
          return true;
        },
      );
    }
  });
});
