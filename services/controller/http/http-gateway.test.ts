// The HTTP gateway under hostile input: each case below crashed, stalled or
// mis-answered the controller before it was hardened. The gateway runs in this
// process over the real ControllerService handlers, a real SQLite store and
// audit log, and a fake agent pool: an escaped exception would end the test run.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { connect } from "node:net";
import os from "node:os";
import path from "node:path";
import type { AddressInfo } from "node:net";
import type { Server } from "node:http";
import { createLogger } from "../../common/logger.js";
import { redact } from "../../common/redact.js";
import { AuditLog } from "../audit/audit-log.js";
import { checkpointPathFor, loadOrCreateAuditKey } from "../audit/audit-key.js";
import type { ControllerConfig } from "../config.js";
import type { ControllerStore } from "../core/ports.js";
import { authenticate, controllerServiceImpl, type ControllerDeps } from "../service.js";
import { openStore } from "../store/index.js";
import { createHttpGateway } from "./http-gateway.js";

const ADMIN = "admin-token-Hx81kq";
let dir: string;
let store: ControllerStore;
let audit: AuditLog;
let server: Server;
let port: number;
/** Calls the fake agent received (stamp/downgrade must never reach it with an empty revision). */
const agentCalls: string[] = [];

before(async () => {
  dir = mkdtempSync(path.join(os.tmpdir(), "flotilla-gw-"));
  store = openStore(`sqlite:///${path.join(dir, "controller.db")}`);
  await store.init();
  const keyFile = path.join(dir, "keys", "audit.key");
  audit = new AuditLog(store, await loadOrCreateAuditKey(keyFile), { checkpointFile: checkpointPathFor(keyFile) });
  const config = { tokens: [{ name: "admin", role: "admin", value: ADMIN }], agentTimeoutMs: 7_200_000 } as unknown as ControllerConfig;
  const log = createLogger({ name: "gw-test", level: "silent" });
  // An agent that never answers: before the fix, a request it should never see waited for the 2-hour timeout.
  const silent = (name: string) => () => ({
    async *[Symbol.asyncIterator]() {
      agentCalls.push(name);
      await new Promise(() => undefined);
    },
  });
  const pool = { client: async () => ({ stamp: silent("stamp"), downgrade: silent("downgrade") }) };
  const inventory = { targets: async () => ({ targets: [{ id: "t1", ownerAgent: "a1", appAgents: [] }], agents: [] }) };
  const deps = { config, store, audit, log, pool, inventory, isLeader: () => true } as unknown as ControllerDeps;
  const callerOf = (method: string, ctx: { metadata: { get(k: string): unknown[] } }) => {
    const auth = ctx.metadata.get("authorization")[0];
    return authenticate(config, typeof auth === "string" ? auth : undefined, method);
  };
  const impl = controllerServiceImpl(deps, callerOf);
  server = createHttpGateway(impl, { audit, log, callerOf, isLeader: () => true, limits: { headersTimeoutMs: 1_000, requestTimeoutMs: 2_000 } });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", () => r()));
  port = (server.address() as AddressInfo).port;
});

after(async () => {
  server.closeAllConnections();
  await new Promise<void>((r) => server.close(() => r()));
  await store.close();
  rmSync(dir, { recursive: true, force: true });
});

/** Sends raw bytes and returns the status line, headers and body the server answered (or "" if it closed). */
function raw(bytes: Buffer | string, opts: { keepOpenMs?: number } = {}): Promise<{ status: number; head: string; body: string }> {
  return new Promise((resolve, reject) => {
    const s = connect(port, "127.0.0.1");
    const chunks: Buffer[] = [];
    s.on("data", (c: Buffer) => chunks.push(c));
    s.on("error", (err: NodeJS.ErrnoException) => {
      // The server may close while we still write (413); what it answered first is what counts.
      if (err.code !== "EPIPE" && err.code !== "ECONNRESET") reject(err);
    });
    s.on("close", () => {
      const text = Buffer.concat(chunks).toString("latin1");
      const [head = "", body = ""] = text.split("\r\n\r\n", 2);
      resolve({ status: Number(/^HTTP\/1\.1 (\d{3})/.exec(head)?.[1] ?? 0), head, body });
    });
    s.write(bytes);
    if (opts.keepOpenMs === undefined) setTimeout(() => s.end(), 50);
  });
}

function request(method: string, target: string, headers: Record<string, string>, body = ""): Buffer {
  const lines = [`${method} ${target} HTTP/1.1`, "host: 127.0.0.1", "connection: close", `content-length: ${Buffer.byteLength(body, "latin1")}`];
  for (const [k, v] of Object.entries(headers)) lines.push(`${k}: ${v}`);
  return Buffer.concat([Buffer.from(`${lines.join("\r\n")}\r\n\r\n`, "latin1"), Buffer.from(body, "latin1")]);
}

async function healthy(): Promise<void> {
  const r = await fetch(`http://127.0.0.1:${port}/healthz`);
  assert.equal(r.status, 200);
}

async function post(
  method: string,
  body: string,
  headers: Record<string, string> = { authorization: `Bearer ${ADMIN}` },
): Promise<{ status: number; json: { code: string; message: string } }> {
  const r = await fetch(`http://127.0.0.1:${port}/v1/${method}`, { method: "POST", headers: { "content-type": "application/json", ...headers }, body });
  assert.match(r.headers.get("content-type") ?? "", /application\/json/);
  return { status: r.status, json: (await r.json()) as { code: string; message: string } };
}

test("an Authorization header with a tab or a byte >= 0x80 is answered 401, and the controller lives on", async () => {
  for (const value of ["Bearer\tabc", "Bearer abc\u00e9", "Bearer \u00ff\u00fe"]) {
    const r = await raw(request("POST", "/v1/ListTargets", { authorization: value }, "{}"));
    assert.equal(r.status, 401, `${JSON.stringify(value)} → ${r.head}`);
    assert.match(r.head, /content-type: application\/json/i);
    assert.equal((JSON.parse(r.body) as { code: string }).code, "UNAUTHENTICATED");
  }
  await healthy();
});

test("request targets that are not paths (http://[ and friends) are answered 400, and the controller lives on", async () => {
  for (const target of ["http://[", "http://[::1", "//[", "http://a:b:c/"]) {
    const r = await raw(request("GET", target, {}));
    assert.ok(r.status === 400 || r.status === 404, `${target} → ${r.head}`);
    assert.ok(r.body.length > 0 && typeof (JSON.parse(r.body) as { code: string }).code === "string");
  }
  await healthy();
});

test("a body over the limit is answered 413 (not a TCP reset), malformed JSON 400, an unknown method 404, all in JSON", async () => {
  const big = `{"selector":"${"x".repeat(1024 * 1024 + 10)}"}`;
  const r = await raw(request("POST", "/v1/ListTargets", { authorization: `Bearer ${ADMIN}`, "content-type": "application/json" }, big));
  assert.equal(r.status, 413, r.head);
  assert.equal((JSON.parse(r.body) as { code: string }).code, "INVALID_ARGUMENT");
  // Chunked, without a length: cut off at the limit too.
  const chunked = Buffer.concat([
    Buffer.from(`POST /v1/ListTargets HTTP/1.1\r\nhost: x\r\nauthorization: Bearer ${ADMIN}\r\ntransfer-encoding: chunked\r\n\r\n`),
    ...Array.from({ length: 5 }, () => Buffer.from(`40000\r\n${"y".repeat(0x40000)}\r\n`)),
    Buffer.from("0\r\n\r\n"),
  ]);
  assert.equal((await raw(chunked)).status, 413);

  const bad = await post("ListTargets", "{not json");
  assert.equal(bad.status, 400);
  assert.equal(bad.json.code, "INVALID_ARGUMENT");
  const unknown = await post("NoSuchMethod", "{}");
  assert.equal(unknown.status, 404);
  assert.equal(unknown.json.code, "NOT_FOUND");
  const get = await fetch(`http://127.0.0.1:${port}/v1/ListTargets`);
  assert.equal(get.status, 404);
  assert.match(get.headers.get("content-type") ?? "", /application\/json/);
  await healthy();
});

test("ExportAudit with a since/until that is not a time is answered 400 before any row is sent", async () => {
  const r = await fetch(`http://127.0.0.1:${port}/v1/ExportAudit?since=garbage`, { headers: { authorization: `Bearer ${ADMIN}` } });
  assert.equal(r.status, 400);
  assert.equal(((await r.json()) as { code: string }).code, "INVALID_ARGUMENT");
  const ok = await fetch(`http://127.0.0.1:${port}/v1/ExportAudit?since=2020-01-01T00:00:00Z`, { headers: { authorization: `Bearer ${ADMIN}` } });
  assert.equal(ok.status, 200);
  await ok.text();
});

test("StampTarget and DowngradeTarget with an empty revision are answered INVALID_ARGUMENT without asking the agent", { timeout: 30_000 }, async () => {
  const stamp = await post("StampTarget", JSON.stringify({ targetId: "t1", revision: "", reason: "imported-backup" }));
  assert.equal(stamp.status, 400);
  assert.equal(stamp.json.code, "INVALID_ARGUMENT");
  assert.match(stamp.json.message, /revision/);
  const down = await post("DowngradeTarget", JSON.stringify({ targetId: "t1", toRevision: "", acceptDataLoss: true }));
  assert.equal(down.status, 400);
  assert.equal(down.json.code, "INVALID_ARGUMENT");
  assert.deepEqual(agentCalls, []);
});

test("an unauthenticated request is refused before its body is read: a 120 KB hostile body does not stall the controller", { timeout: 30_000 }, async () => {
  const hostile = JSON.stringify({ selector: "a".repeat(60_000) + "x://y:".repeat(10_000) });
  const r = await post("ListTargets", hostile, { authorization: "Bearer wrong" });
  assert.equal(r.status, 401);
  assert.equal(r.json.code, "UNAUTHENTICATED");
  await healthy();
  // A denied call is still audited (without its body).
  const rows = await audit.query({ action: "api.ListTargets" });
  assert.ok(rows.some((row) => row.outcome === "denied" && row.args.length < 100));
});

test("redaction is linear: hostile shapes that backtracked quadratically are masked at once and still correctly", { timeout: 20_000 }, () => {
  // Each of these took seconds to minutes with the regular expressions used before.
  const inputs = ["a".repeat(400_000), "x://y:".repeat(70_000), "_KEY".repeat(100_000), "A=".repeat(200_000)];
  for (const s of inputs) assert.equal(redact(s).length <= s.length + 3, true);
  assert.equal(redact(`${"a".repeat(300_000)} postgresql://u:pw@h/db`), `${"a".repeat(300_000)} postgresql://u:***@h/db`);
  assert.equal(redact(`${"_KEY".repeat(1000)} WEBUI_SECRET_KEY=abc`), `${"_KEY".repeat(1000)} WEBUI_SECRET_KEY=***`);
  assert.equal(redact("FOO=BAR API_TOKEN=xyz=="), "FOO=BAR API_TOKEN=***");
  assert.equal(redact("see https://u:p@h and http://a:b@c"), "see https://u:***@h and http://a:***@c");
});

test("a client that sends its headers too slowly is cut off with 408 before anything is parsed", { timeout: 30_000 }, async () => {
  const r = await raw("POST /v1/ListTargets HTTP/1.1\r\nhost: x\r\n", { keepOpenMs: 10_000 });
  assert.ok(r.status === 408 || r.status === 0, r.head);
  await healthy();
});

test("leases: restore, downgrade, stamp, backup and recover of a target a rollout holds are refused naming the rollout", async () => {
  const lease = await store.acquireLeases("r-20260101-abcdef", ["t1"]);
  assert.equal(lease.ok, true);
  try {
    const calls: [string, object][] = [
      ["RestoreTarget", { targetId: "t1", backupId: "b1", yes: true }],
      ["DowngradeTarget", { targetId: "t1", toRevision: "abc", acceptDataLoss: true }],
      ["StampTarget", { targetId: "t1", revision: "abc", reason: "imported-backup" }],
      ["BackupTarget", { targetId: "t1" }],
      ["RecoverTarget", { targetId: "t1", operationId: "op-1", action: "restore" }],
    ];
    for (const [method, body] of calls) {
      const r = await post(method, JSON.stringify(body));
      assert.equal(r.status, 409, `${method}: ${JSON.stringify(r.json)}`);
      assert.equal(r.json.code, "LEASE_HELD");
      assert.match(r.json.message, /rollout r-20260101-abcdef/);
    }
    assert.deepEqual(agentCalls, []);
  } finally {
    await store.releaseLeases("r-20260101-abcdef");
  }
  // Free again: the operation takes its own lease, which a rollout then meets (and it is released afterwards).
  assert.deepEqual(await store.listLeases(), {});
});
