// The tamper-evident audit log, run against both stores (a SQLite file and a
// fresh PostgreSQL database), tampering with the rows through raw SQL.
import { after, afterEach, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { chmodSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { FlotillaError } from "../../common/errors.js";
import { createHmac } from "node:crypto";
import { redactValue, registerSecret } from "../../common/redact.js";
import type { ControllerStore } from "../core/ports.js";
import { AuditLog, canonicalJson, GENESIS_HASH, sealAuditRow } from "./audit-log.js";
import { checkpointPathFor, loadOrCreateAuditKey } from "./audit-key.js";
import { postgresBackend, sqliteBackend, STORE_TABLES, type OpenedStore } from "../../../test/helpers/store-backends.js";

async function rejectsWithCode(p: Promise<unknown>, code: string, re?: RegExp): Promise<void> {
  await assert.rejects(p, (err: unknown) => {
    assert.ok(err instanceof FlotillaError, `expected a FlotillaError, got ${String(err)}`);
    assert.equal(err.code, code);
    if (re !== undefined) assert.match(err.message, re);
    return true;
  });
}

const keyDirs: string[] = [];

async function keyAndCheckpoint(): Promise<{ key: Buffer; keyFile: string; checkpointFile: string }> {
  const dir = mkdtempSync(path.join(os.tmpdir(), "flotilla-audit-key-"));
  keyDirs.push(dir);
  const keyFile = path.join(dir, "keys", "audit.key");
  return { key: await loadOrCreateAuditKey(keyFile), keyFile, checkpointFile: checkpointPathFor(keyFile) };
}

async function appendN(log: AuditLog, n: number): Promise<void> {
  for (let i = 1; i <= n; i++) {
    await log.append({ actor: "alice", action: "rollout.step", target: `webui-${i % 3}`, args: { i }, outcome: i % 2 ? "intent" : "ok", detail: `step ${i}` });
  }
}

for (const make of [() => sqliteBackend("audit"), () => postgresBackend("audit_test")]) {
  const backend = make();
  describe(`AuditLog on ${backend.name}`, () => {
    before(() => backend.setup());
    after(() => backend.teardown());
    afterEach(async () => {
      await backend.cleanup();
      for (const d of keyDirs.splice(0)) rmSync(d, { recursive: true, force: true });
    });

    async function twentyRows(): Promise<{ log: AuditLog; sql: OpenedStore["sql"]; checkpointFile: string; store: ControllerStore; key: Buffer }> {
      const { store, sql } = await backend.fresh();
      const { key, checkpointFile } = await keyAndCheckpoint();
      const log = new AuditLog(store, key, { checkpointFile, pageSize: 7 });
      await appendN(log, 20);
      return { log, sql, checkpointFile, store, key };
    }

    test("20 appended rows verify; the rows are chained with HMAC-SHA256 under the key", async () => {
      const { store } = await backend.fresh();
      const { key, checkpointFile } = await keyAndCheckpoint();
      const log = new AuditLog(store, key, { checkpointFile, pageSize: 7 });
      assert.deepEqual(await log.verify(), { ok: true, checked: 0, firstBadSeq: 0, reason: "" });
      await appendN(log, 20);
      assert.deepEqual(await log.verify(), { ok: true, checked: 20, firstBadSeq: 0, reason: "" });
      const rows = await log.query();
      assert.deepEqual(
        rows.map((r) => r.seq),
        Array.from({ length: 20 }, (_, i) => i + 1),
      );
      assert.equal(rows[0]!.prevHash, GENESIS_HASH);
      assert.equal(rows[0]!.hash, sealAuditRow(key, GENESIS_HASH, rows[0]!));
      assert.match(rows[0]!.hash, /^[0-9a-f]{64}$/);
      assert.equal(rows[1]!.prevHash, rows[0]!.hash);
      // a different key does not verify the same chain
      const other = new AuditLog(store, Buffer.alloc(32, 7));
      const bad = await other.verify();
      assert.equal(bad.ok, false);
      assert.equal(bad.firstBadSeq, 1);
    });

    test("an edited row (detail) is found and named", async () => {
      const { log, sql } = await twentyRows();
      await sql("UPDATE audit_log SET detail = 'nothing to see' WHERE seq = 7");
      const r = await log.verify();
      assert.equal(r.ok, false);
      assert.equal(r.firstBadSeq, 7);
      assert.equal(r.checked, 6);
      assert.match(r.reason, /^row 7: hash mismatch \(row was edited/);
    });

    test("an edit to any other field is found too", async () => {
      const { log, sql } = await twentyRows();
      const edits: Array<[number, string]> = [
        [2, "time = '2000-01-01T00:00:00.000Z'"],
        [3, "actor = 'mallory'"],
        [4, "action = 'noop'"],
        [5, "target = 'elsewhere'"],
        [6, "args = '{\"i\":99}'"],
        [8, "outcome = 'denied'"],
      ];
      for (const [seq, set] of edits) {
        const before = (await sql(`SELECT * FROM audit_log WHERE seq = ${seq}`))[0]!;
        await sql(`UPDATE audit_log SET ${set} WHERE seq = ${seq}`);
        const r = await log.verify();
        assert.equal(r.ok, false, set);
        assert.equal(r.firstBadSeq, seq, set);
        const col = set.split(" ")[0]!;
        await sql(`UPDATE audit_log SET ${col} = '${String(before[col]).replace(/'/g, "''")}' WHERE seq = ${seq}`);
        assert.equal((await log.verify()).ok, true, `restored ${col}`);
      }
    });

    test("a deleted middle row is found as a gap", async () => {
      const { log, sql } = await twentyRows();
      await sql("DELETE FROM audit_log WHERE seq = 10");
      assert.deepEqual(await log.verify(), { ok: false, checked: 9, firstBadSeq: 10, reason: "row 10 missing" });
      await sql("DELETE FROM audit_log WHERE seq IN (11, 12)");
      assert.equal((await log.verify()).reason, "rows 10..12 missing");
      await sql("DELETE FROM audit_log WHERE seq = 1");
      assert.deepEqual(await log.verify(), { ok: false, checked: 0, firstBadSeq: 1, reason: "row 1 missing" });
    });

    test("a forged row inserted in the middle (later rows renumbered) is found", async () => {
      const { log, sql } = await twentyRows();
      await sql("UPDATE audit_log SET seq = seq + 1000 WHERE seq >= 10");
      await sql("UPDATE audit_log SET seq = seq - 999 WHERE seq >= 1000");
      await sql(
        "INSERT INTO audit_log (seq, time, actor, action, target, args, outcome, detail, prev_hash, hash) " +
          `SELECT 10, time, 'mallory', 'rollout.create', 'webui-1', '{}', 'ok', 'looks legit', hash, '${"ab".repeat(32)}' FROM audit_log WHERE seq = 9`,
      );
      const r = await log.verify();
      assert.equal(r.ok, false);
      assert.equal(r.firstBadSeq, 10);
      assert.match(r.reason, /row 10: hash mismatch/);
    });

    test("a forged row appended at the tail is found", async () => {
      const { log, sql } = await twentyRows();
      await sql(
        "INSERT INTO audit_log (seq, time, actor, action, target, args, outcome, detail, prev_hash, hash) " +
          `SELECT 21, time, 'mallory', 'stamp', 'webui-1', '{}', 'ok', '', hash, '${"cd".repeat(32)}' FROM audit_log WHERE seq = 20`,
      );
      const r = await log.verify();
      assert.equal(r.firstBadSeq, 21);
      assert.match(r.reason, /row 21: hash mismatch/);
    });

    test("reordered rows are found", async () => {
      const { log, sql } = await twentyRows();
      await sql("UPDATE audit_log SET seq = -5 WHERE seq = 5");
      await sql("UPDATE audit_log SET seq = 5 WHERE seq = 6");
      await sql("UPDATE audit_log SET seq = 6 WHERE seq = -5");
      const r = await log.verify();
      assert.equal(r.ok, false);
      assert.equal(r.firstBadSeq, 5);
      assert.match(r.reason, /row 5: prev_hash does not match row 4/);
    });

    test("tail truncation is found through the checkpoint", async () => {
      const { log, sql, checkpointFile, store, key } = await twentyRows();
      assert.equal(statSync(checkpointFile).mode & 0o777, 0o600);
      assert.equal(JSON.parse(readFileSync(checkpointFile, "utf8")).seq, 20);
      await sql("DELETE FROM audit_log WHERE seq > 17");
      assert.deepEqual(await log.verify(), {
        ok: false,
        checked: 17,
        firstBadSeq: 18,
        reason: "tail truncated: checkpoint says seq 20, store ends at 17",
      });
      // Without the checkpoint file the store's own anchor still finds it.
      assert.deepEqual(await new AuditLog(store, key).verify(), {
        ok: false,
        checked: 17,
        firstBadSeq: 18,
        reason: "tail truncated: the store's audit anchor says seq 20, store ends at 17",
      });
    });

    test("a cut tail is detected forever: appends are refused (the anchors never follow the new tail), also after a restart", async () => {
      const { log, sql, checkpointFile, key, store } = await twentyRows();
      await sql("DELETE FROM audit_log WHERE seq > 17");
      await rejectsWithCode(
        log.append({ actor: "alice", action: "rollout.step", outcome: "ok" }),
        "AUDIT_UNAVAILABLE",
        /tail truncated: .* says seq 20, the log ends at 17/,
      );
      assert.equal((await log.verify()).reason, "tail truncated: checkpoint says seq 20, store ends at 17");
      assert.equal(JSON.parse(readFileSync(checkpointFile, "utf8")).seq, 20, "the checkpoint did not move");
      // A restarted controller (new AuditLog, same store and key folder) refuses too.
      const again = new AuditLog(store, key, { checkpointFile });
      await rejectsWithCode(again.append({ actor: "controller", action: "controller.start", outcome: "ok" }), "AUDIT_UNAVAILABLE", /tail truncated/);
      assert.equal((await again.verify()).ok, false);
      const rows = await sql("SELECT max(seq) AS m FROM audit_log");
      assert.equal(Number(rows[0]!.m), 17, "nothing was appended");
    });

    test("each anchor covers the other: cutting the tail and resetting one anchor is still refused", async () => {
      // The store's anchor reset with the cut: the checkpoint file beside the key refuses.
      const a = await twentyRows();
      await a.sql("DELETE FROM audit_log WHERE seq > 15");
      await a.sql("DELETE FROM audit_anchor");
      await rejectsWithCode(
        new AuditLog(a.store, a.key, { checkpointFile: a.checkpointFile }).append({ actor: "x", action: "y", outcome: "ok" }),
        "AUDIT_UNAVAILABLE",
        /checkpoint .* says seq 20, the log ends at 15/,
      );
      // The checkpoint file removed with the cut: the store's anchor refuses.
      const b = await twentyRows();
      await b.sql("DELETE FROM audit_log WHERE seq > 15");
      rmSync(b.checkpointFile);
      await rejectsWithCode(
        new AuditLog(b.store, b.key, { checkpointFile: b.checkpointFile }).append({ actor: "x", action: "y", outcome: "ok" }),
        "AUDIT_UNAVAILABLE",
        /store's audit anchor says seq 20, the log ends at 15/,
      );
      // The last row replaced by a forged one with a valid-looking chain position: refused as rewritten.
      const c = await twentyRows();
      await c.sql(`UPDATE audit_log SET hash = '${"ef".repeat(32)}' WHERE seq = 20`);
      await rejectsWithCode(c.log.append({ actor: "x", action: "y", outcome: "ok" }), "AUDIT_UNAVAILABLE", /rewritten/);
    });

    test("an edited or foreign checkpoint file fails verification", async () => {
      const { log, checkpointFile } = await twentyRows();
      const cp = JSON.parse(readFileSync(checkpointFile, "utf8")) as { seq: number; hash: string; mac: string };
      writeFileSync(checkpointFile, JSON.stringify({ ...cp, seq: 15 }));
      let r = await log.verify();
      assert.equal(r.ok, false);
      assert.match(r.reason, /checkpoint .* bad signature/);
      writeFileSync(checkpointFile, "garbage");
      r = await log.verify();
      assert.equal(r.ok, false);
      assert.match(r.reason, /not valid JSON/);
      writeFileSync(checkpointFile, JSON.stringify(cp));
      assert.equal((await log.verify()).ok, true);
    });

    test("secrets never reach any stored column; args are canonical JSON", async () => {
      const { store, sql } = await backend.fresh();
      const { key, checkpointFile } = await keyAndCheckpoint();
      const log = new AuditLog(store, key, { checkpointFile });
      registerSecret("canary-registered-789");
      const row = await log.append({
        actor: "alice",
        action: "target.add",
        target: "webui-1",
        args: { url: "postgresql://u:canary-pw-123@h/db", password: "canary-pw-123", nested: [{ token: "canary-pw-123" }], z: 1, a: { y: 2, b: null } },
        outcome: "ok",
        detail: "connected with password=canary-pw-123 and canary-registered-789",
      });
      assert.equal(row.args, '{"a":{"b":null,"y":2},"nested":[{"token":"***"}],"password":"***","url":"postgresql://u:***@h/db","z":1}');
      const dump = JSON.stringify(await sql("SELECT * FROM audit_log"));
      assert.ok(dump.includes("postgresql://u:***@h/db"), dump);
      assert.ok(!dump.includes("canary-pw-123"), dump);
      assert.ok(!dump.includes("canary-registered-789"), dump);
      // the key is in no table either
      for (const table of STORE_TABLES.split(", ")) {
        const all = JSON.stringify(await sql(`SELECT * FROM ${table}`));
        assert.ok(!all.includes(key.toString("hex")) && !all.includes(key.toString("base64")), table);
      }
      assert.equal((await log.verify()).ok, true);
    });

    test("awkward text (quotes, backslashes, newlines, unicode, NUL, SQL) is stored exactly and verifies", async () => {
      const { store, sql } = await backend.fresh();
      const { key, checkpointFile } = await keyAndCheckpoint();
      const log = new AuditLog(store, key, { checkpointFile });
      const nasty = "it's \\ \"quoted\"\n\ttab ünïcødé 🚀 '); DROP TABLE audit_log; -- E'\\x41' $1 $$ ";
      const row = await log.append({ actor: nasty, action: "x", target: nasty, args: { s: `${nasty}\u0000` }, outcome: "error", detail: `${nasty}\u0000end` });
      assert.equal(row.detail, `${nasty}\uFFFDend`);
      const [stored] = await log.query();
      assert.deepEqual(stored, row);
      assert.equal((JSON.parse(row.args) as { s: string }).s, `${nasty}\u0000`);
      assert.equal((await sql("SELECT count(*) AS n FROM audit_log"))[0]!["n"]?.toString(), "1");
      assert.deepEqual(await log.verify(), { ok: true, checked: 1, firstBadSeq: 0, reason: "" });
    });

    test("50 appends in parallel, and from two replicas at once, keep seq 1..n contiguous and the chain valid", async () => {
      const { store, another } = await backend.fresh();
      const { key, checkpointFile } = await keyAndCheckpoint();
      const log = new AuditLog(store, key, { checkpointFile });
      const rows = await Promise.all(Array.from({ length: 50 }, (_, i) => log.append({ actor: "a", action: "x", args: { i }, outcome: "intent" })));
      assert.deepEqual(
        rows.map((r) => r.seq).sort((a, b) => a - b),
        Array.from({ length: 50 }, (_, i) => i + 1),
      );
      assert.deepEqual(await log.verify(), { ok: true, checked: 50, firstBadSeq: 0, reason: "" });
      assert.equal(JSON.parse(readFileSync(checkpointFile, "utf8")).seq, 50);

      const replica = new AuditLog(await another(), key, { checkpointFile });
      await Promise.all(Array.from({ length: 50 }, (_, i) => (i % 2 ? log : replica).append({ actor: "b", action: "y", outcome: "ok" })));
      const all = await log.query();
      assert.deepEqual(
        all.map((r) => r.seq),
        Array.from({ length: 100 }, (_, i) => i + 1),
      );
      assert.deepEqual(await log.verify(), { ok: true, checked: 100, firstBadSeq: 0, reason: "" });
    });

    test("fail closed: append on a closed store, or one whose table is gone, throws AUDIT_UNAVAILABLE", async () => {
      const { store, sql, another } = await backend.fresh();
      const { key, checkpointFile } = await keyAndCheckpoint();
      const log = new AuditLog(store, key, { checkpointFile });
      await log.append({ actor: "a", action: "x", outcome: "ok" });
      await store.close();
      await rejectsWithCode(log.append({ actor: "a", action: "x", outcome: "intent" }), "AUDIT_UNAVAILABLE", /audit log unavailable/);
      await rejectsWithCode(log.verify(), "AUDIT_UNAVAILABLE");

      const log2 = new AuditLog(await another(), key, { checkpointFile });
      await sql("DROP TABLE audit_log");
      await rejectsWithCode(log2.append({ actor: "a", action: "x", outcome: "intent" }), "AUDIT_UNAVAILABLE");
    });

    test("fail closed: a checkpoint that cannot be written makes append throw AUDIT_UNAVAILABLE", async () => {
      const { store } = await backend.fresh();
      const { key, keyFile } = await keyAndCheckpoint();
      const log = new AuditLog(store, key, { checkpointFile: path.join(path.dirname(keyFile), "missing-dir", "cp") });
      await rejectsWithCode(log.append({ actor: "a", action: "x", outcome: "intent" }), "AUDIT_UNAVAILABLE", /checkpoint/);
    });

    test("two replicas taking turns: each checkpoint names exactly the row its own log appended last", async () => {
      const { store, another } = await backend.fresh();
      const a = await keyAndCheckpoint();
      const bFile = `${a.checkpointFile}.b`;
      const logA = new AuditLog(store, a.key, { checkpointFile: a.checkpointFile });
      const logB = new AuditLog(await another(), a.key, { checkpointFile: bFile });
      for (let i = 0; i < 9; i++) {
        // Every append after the other replica's finds its guess at the tail stale: the store seals twice.
        const [log, file] = i % 3 === 2 ? [logB, bFile] : [logA, a.checkpointFile];
        const row = await log.append({ actor: "a", action: "x", args: { i }, outcome: "ok" });
        const cp = JSON.parse(readFileSync(file, "utf8")) as { seq: number; hash: string };
        assert.deepEqual({ seq: cp.seq, hash: cp.hash }, { seq: row.seq, hash: row.hash }, `append ${i}`);
      }
      assert.deepEqual(await logA.verify(), { ok: true, checked: 9, firstBadSeq: 0, reason: "" });
      assert.deepEqual(await logB.verify(), { ok: true, checked: 9, firstBadSeq: 0, reason: "" });
    });

    test("a checkpoint file removed while the log runs is written again at its path; a folder gone makes appends fail closed", async () => {
      const { store } = await backend.fresh();
      const { key, checkpointFile } = await keyAndCheckpoint();
      const log = new AuditLog(store, key, { checkpointFile });
      await appendN(log, 3);
      rmSync(checkpointFile);
      await appendN(log, 64);
      assert.equal(JSON.parse(readFileSync(checkpointFile, "utf8")).seq, 67);
      assert.equal(statSync(checkpointFile).mode & 0o777, 0o600);
      assert.deepEqual(await log.verify(), { ok: true, checked: 67, firstBadSeq: 0, reason: "" });
      rmSync(path.dirname(checkpointFile), { recursive: true, force: true });
      await rejectsWithCode(appendN(log, 64), "AUDIT_UNAVAILABLE", /checkpoint could not be saved/);
    });

    test("args are stored as the canonical JSON of the redacted value (sorted keys at every depth, secret-named members masked)", async () => {
      const { store } = await backend.fresh();
      const { key } = await keyAndCheckpoint();
      const log = new AuditLog(store, key);
      const args = {
        "10": "ten",
        "9": "nine",
        b: [1, "x", null, { token: { deep: 1 }, z: "", y: null, a: "postgresql://u:pw-canary-1@h/db" }],
        a: true,
        nested: { apiKey: "k", private_key: "", password: null, when: new Date(0), big: 12n },
        é: -0,
        list: [[], {}],
      };
      const row = await log.append({ actor: "a", action: "x", args, outcome: "ok" });
      const plain = JSON.parse(JSON.stringify(args, (_k, v: unknown) => (typeof v === "bigint" ? v.toString() : v))) as unknown;
      assert.equal(row.args, canonicalJson(redactValue(plain)));
      assert.match(row.args, /^\{"10":"ten","9":"nine","a":true,"b":\[1,"x",null,\{"a":"postgresql:\/\/u:\*\*\*@h\/db","token":"\*\*\*","y":null,"z":""\}\]/);
      assert.ok(!row.args.includes("pw-canary-1"));
      // A bigint anywhere is written as its decimal digits; a cycle is refused before anything is written.
      assert.equal((await log.append({ actor: "a", action: "x", args: { n: [1n << 70n] }, outcome: "ok" })).args, `{"n":["${1n << 70n}"]}`);
      const cyclic: Record<string, unknown> = { a: 1 };
      cyclic["self"] = cyclic;
      await rejectsWithCode(log.append({ actor: "a", action: "x", args: cyclic, outcome: "ok" }), "INVALID_ARGUMENT", /cannot be serialised/);
      assert.equal((await log.query()).length, 2);
    });

    test("query normalises times and filters; exportJsonLines writes every row, or the filtered ones", async () => {
      const { store } = await backend.fresh();
      const { key, checkpointFile } = await keyAndCheckpoint();
      const log = new AuditLog(store, key, { checkpointFile, pageSize: 3 });
      await appendN(log, 10);
      const rows = await log.query();
      assert.equal(rows.length, 10);
      const since = rows[4]!.time;
      assert.ok((await log.query({ since })).every((r) => r.time >= since));
      assert.deepEqual((await log.query({ since: "2000-01-01", until: "2999-12-31T23:59:59Z" })).length, 10);
      assert.deepEqual(
        (await log.query({ target: "webui-1" })).map((r) => r.seq),
        [1, 4, 7, 10],
      );
      assert.deepEqual(
        (await log.query({ action: "rollout.step", limit: 3 })).map((r) => r.seq),
        [8, 9, 10],
      );
      await rejectsWithCode(log.query({ since: "yesterday-ish" }), "INVALID_ARGUMENT", /since/);
      await rejectsWithCode(log.query({ limit: 0 }), "INVALID_ARGUMENT", /limit/);
      assert.deepEqual(
        (await log.query({ beforeSeq: 4 })).map((r) => r.seq),
        [1, 2, 3],
      );
      await rejectsWithCode(log.query({ outcome: "maybe" as "ok" }), "INVALID_ARGUMENT", /outcome/);
      await rejectsWithCode(log.query({ beforeSeq: 0 }), "INVALID_ARGUMENT", /before/);

      const lines: string[] = [];
      assert.equal(
        await log.exportJsonLines(async (l) => {
          lines.push(l);
        }),
        10,
      );
      assert.deepEqual(
        lines.map((l) => JSON.parse(l) as unknown),
        rows,
      );
      const some: string[] = [];
      assert.equal(
        await log.exportJsonLines(
          (l) => {
            some.push(l);
          },
          { target: "webui-2" },
        ),
        3,
      );
      assert.deepEqual(
        some.map((l) => (JSON.parse(l) as { seq: number }).seq),
        [2, 5, 8],
      );
    });
  });
}

describe("canonicalJson", () => {
  test("sorts keys at every depth, drops undefined members, keeps array order", () => {
    assert.equal(canonicalJson({ b: 1, a: [3, { d: undefined, c: "x" }], é: true }), '{"a":[3,{"c":"x"}],"b":1,"é":true}');
    assert.equal(canonicalJson([1, "a\n", null]), '[1,"a\\n",null]');
  });
});

describe("sealAuditRow", () => {
  test("is HMAC-SHA256 over prev_hash, a newline and the canonical JSON of the row's fields (rows sealed before still verify)", () => {
    const key = Buffer.alloc(32, 9);
    const row = {
      seq: 42,
      time: "2030-01-01T00:00:00.000Z",
      actor: 'ünï "q" \\ 🚀',
      action: "rollout.step",
      target: "t\n1",
      args: '{"a":"\\u0000"}',
      outcome: "ok" as const,
      detail: "\u2028 line",
    };
    const prev = "ab".repeat(32);
    const body = canonicalJson([row.seq, row.time, row.actor, row.action, row.target, row.args, row.outcome, row.detail]);
    assert.equal(sealAuditRow(key, prev, row), createHmac("sha256", key).update(`${prev}\n${body}`).digest("hex"));
  });
});

describe("loadOrCreateAuditKey", () => {
  let dir = "";
  before(() => {
    dir = mkdtempSync(path.join(os.tmpdir(), "flotilla-key-"));
  });
  after(() => rmSync(dir, { recursive: true, force: true }));

  test("creates 32 random bytes with mode 0600 in a new 0700 folder, and returns the same key next time", async () => {
    const file = path.join(dir, "new", "audit.key");
    const key = await loadOrCreateAuditKey(file);
    assert.equal(key.length, 32);
    assert.equal(statSync(file).mode & 0o777, 0o600);
    assert.equal(statSync(path.dirname(file)).mode & 0o777, 0o700);
    assert.deepEqual(await loadOrCreateAuditKey(file), key);
    assert.notDeepEqual(await loadOrCreateAuditKey(path.join(dir, "other.key")), key);
  });

  test("processes starting together agree on one key", async () => {
    const file = path.join(dir, "race", "audit.key");
    const keys = await Promise.all(Array.from({ length: 8 }, () => loadOrCreateAuditKey(file)));
    for (const k of keys) assert.deepEqual(k, keys[0]);
    assert.deepEqual(readFileSync(file), keys[0]);
  });

  test("refuses a key file group or others can read, and one shorter than 32 bytes, without showing the key", async () => {
    const open = path.join(dir, "open.key");
    writeFileSync(open, Buffer.alloc(32, 0x41), { mode: 0o600 });
    chmodSync(open, 0o644);
    await rejectsWithCode(loadOrCreateAuditKey(open), "CONFIG_INVALID", /mode 0644.*chmod 600/);
    chmodSync(open, 0o640);
    await rejectsWithCode(loadOrCreateAuditKey(open), "CONFIG_INVALID", /group or others/);
    chmodSync(open, 0o600);
    assert.deepEqual(await loadOrCreateAuditKey(open), Buffer.alloc(32, 0x41));

    const short = path.join(dir, "short.key");
    writeFileSync(short, "sixteen-byte-key", { mode: 0o600 });
    await assert.rejects(loadOrCreateAuditKey(short), (err: unknown) => {
      assert.ok(err instanceof FlotillaError);
      assert.equal(err.code, "CONFIG_INVALID");
      assert.match(err.message, /holds 16 bytes.*at least 32/);
      assert.doesNotMatch(err.message, /sixteen/);
      return true;
    });
  });

  test("AuditLog refuses a key shorter than 32 bytes", () => {
    assert.throws(
      () => new AuditLog({} as ControllerStore, Buffer.alloc(16)),
      (err: unknown) => {
        assert.ok(err instanceof FlotillaError);
        assert.equal(err.code, "CONFIG_INVALID");
        return true;
      },
    );
  });
});
