import { test } from "node:test";
import assert from "node:assert/strict";
import { Writable } from "node:stream";
import { status as GrpcStatus } from "@grpc/grpc-js";
import { ERROR_CODES, FlotillaError, httpStatusOf, isUsageError, toFlotillaError } from "./errors.js";
import { grpcStatusOf } from "./grpc-bridge.js";
import { redact, redactValue, registerSecret } from "./redact.js";
import { NodeProcessRunner } from "./process-runner.js";
import { createLogger } from "./logger.js";
import { AgentService } from "./gen/flotilla/v1/agent_pb.js";
import { addService, bindServer, channelCredentials, createClient, newServer, serverCredentials } from "./grpc-bridge.js";
import { streamOf } from "./async-queue.js";

test("every error code maps to a gRPC and an HTTP status; system errors map to codes", () => {
  for (const c of ERROR_CODES) {
    assert.equal(typeof grpcStatusOf(c), "number");
    assert.ok(httpStatusOf(c) >= 400);
  }
  assert.equal(grpcStatusOf("TARGET_BUSY"), GrpcStatus.ABORTED);
  assert.equal(httpStatusOf("NOT_FOUND"), 404);
  assert.equal(isUsageError("INVALID_ARGUMENT"), true);
  assert.equal(isUsageError("MIGRATION_FAILED"), false);
  const e = Object.assign(new Error("no such file"), { code: "ENOENT" });
  assert.equal(toFlotillaError(e).code, "NOT_FOUND");
});

test("redaction: registered secrets, URL passwords, key=value and env forms", () => {
  registerSecret("canary-Zz9-secret");
  assert.equal(redact("key is canary-Zz9-secret here"), "key is *** here");
  assert.equal(redact("postgresql://u:p%40ss@h:5432/db"), "postgresql://u:***@h:5432/db");
  assert.equal(redact("host=h password='a b' user=u"), "host=h password=*** user=u");
  assert.equal(redact("WEBUI_SECRET_KEY=abcdef"), "WEBUI_SECRET_KEY=***");
  assert.deepEqual(redactValue({ password: "x", nested: { url: "postgresql://a:b@h/d" }, n: 1 }), {
    password: "***",
    nested: { url: "postgresql://a:***@h/d" },
    n: 1,
  });
});

test("logger redacts secrets in messages and fields", () => {
  registerSecret("canary-log-secret-1");
  let out = "";
  const sink = new Writable({
    write(chunk, _enc, cb) {
      out += chunk.toString();
      cb();
    },
  });
  const log = createLogger({ name: "t", destination: sink });
  log.info({ url: "postgresql://u:pw123456@h/db", token: "tok-abc" }, "connecting with canary-log-secret-1");
  assert.equal(out.includes("canary-log-secret-1"), false);
  assert.equal(out.includes("pw123456"), false);
  assert.equal(out.includes("tok-abc"), false);
});

test("process runner: argv without shell, explicit env, streamed lines, exit codes", async () => {
  const r = new NodeProcessRunner();
  const lines: string[] = [];
  const res = await r.run({ argv: ["/bin/sh", "-c", 'echo "a;b $FOO"; echo err >&2; exit 3'], env: { FOO: "bar" }, onLine: (l) => lines.push(l) });
  assert.equal(res.exitCode, 3);
  assert.deepEqual(lines.sort(), ["a;b bar", "err"]);
  const noShell = await r.run({ argv: ["echo", "$HOME; rm -rf /"] });
  assert.equal(noShell.stdout.trim(), "$HOME; rm -rf /", "arguments are never interpreted by a shell");
  const leak = await r.run({ argv: ["/bin/sh", "-c", "echo ${FLOTILLA_TEST_LEAK:-unset}"] });
  process.env.FLOTILLA_TEST_LEAK = "leaked";
  const leak2 = await r.run({ argv: ["/bin/sh", "-c", "echo ${FLOTILLA_TEST_LEAK:-unset}"] });
  delete process.env.FLOTILLA_TEST_LEAK;
  assert.equal(leak.stdout.trim(), "unset");
  assert.equal(leak2.stdout.trim(), "unset", "the agent's own environment does not leak into children");
  const missing = await r.run({ argv: ["/nonexistent/program"] });
  assert.equal(missing.exitCode, null);
  assert.match(missing.spawnError ?? "", /ENOENT/);
});

test("process runner: timeout and abort kill the whole process group; output is capped", async () => {
  const r = new NodeProcessRunner();
  const t = await r.run({ argv: ["/bin/sh", "-c", "sleep 30 & sleep 30; wait"], timeoutMs: 300 });
  assert.equal(t.timedOut, true);
  assert.ok(t.durationMs < 10_000);
  const ac = new AbortController();
  setTimeout(() => ac.abort(), 200);
  const a = await r.run({ argv: ["sleep", "30"], signal: ac.signal });
  assert.equal(a.cancelled, true);
  const big = await r.run({ argv: ["/bin/sh", "-c", "head -c 300000 /dev/zero | tr '\\0' x"], maxOutputBytes: 1000 });
  assert.equal(big.stdout.length, 1000);
  assert.equal(big.truncated, true);
});

test("process runner: stdin is ignored unless input is given; input feeds it, and a child that stops reading ends the feed", async () => {
  const r = new NodeProcessRunner();
  const ignored = await r.run({ argv: ["cat"], timeoutMs: 10_000 });
  assert.equal(ignored.exitCode, 0);
  assert.equal(ignored.stdout, "");
  const fed = await r.run({
    argv: ["cat"],
    input: (async function* () {
      yield Buffer.from("hello\n");
      yield Buffer.from("world\n");
    })(),
    timeoutMs: 10_000,
  });
  assert.equal(fed.exitCode, 0);
  assert.equal(fed.stdout, "hello\nworld\n");
  let stopped = false;
  const endless = async function* (): AsyncGenerator<Uint8Array> {
    try {
      for (;;) yield Buffer.alloc(65536, 120);
    } finally {
      stopped = true;
    }
  };
  const early = await r.run({ argv: ["head", "-c", "5"], input: endless(), timeoutMs: 10_000 });
  assert.equal(early.exitCode, 0);
  assert.equal(early.timedOut, false);
  assert.equal(early.stdout, "xxxxx");
  await new Promise((resolve) => setTimeout(resolve, 100));
  assert.equal(stopped, true, "the feed stopped when the child went away");
});

test("grpc bridge: unary and server-streaming calls, FlotillaError codes cross the wire", async () => {
  const server = newServer();
  const impl = {
    getInfo: async () => ({ agentId: "x", version: "1" }),
    getStatus: async () => {
      throw new FlotillaError("TARGET_BUSY", "busy with op-1");
    },
    backup: () =>
      streamOf<{ event: { case: "progress"; value: { line: string } } }>(async (push) => {
        push({ event: { case: "progress", value: { line: "one" } } });
        push({ event: { case: "progress", value: { line: "two" } } });
      }),
  } as Record<string, unknown>;
  for (const m of AgentService.methods) if (!(m.localName in impl)) impl[m.localName] = async () => ({});
  addService(server, AgentService, impl as never);
  const port = await bindServer(server, "127.0.0.1:0", serverCredentials());
  const client = createClient(AgentService, `127.0.0.1:${port}`, channelCredentials());
  try {
    assert.equal((await client.getInfo({})).agentId, "x");
    await assert.rejects(client.getStatus({ targetId: "t" }), (e: unknown) => e instanceof FlotillaError && e.code === "TARGET_BUSY" && /op-1/.test(e.message));
    const lines: string[] = [];
    for await (const ev of client.backup({ targetId: "t" })) if (ev.event.case === "progress") lines.push(ev.event.value.line);
    assert.deepEqual(lines, ["one", "two"]);
  } finally {
    client.close();
    server.forceShutdown();
  }
});

test("process runner: the kept output is exactly the last maxOutputBytes, whatever the chunk sizes", async () => {
  const r = new NodeProcessRunner();
  // Chunks of 600 bytes with pauses: the cap of 1000 falls inside a chunk, not on a boundary.
  const script = "for i in 1 2 3 4 5; do head -c 600 /dev/zero | tr '\\0' $i; sleep 0.05; done";
  const out = await r.run({ argv: ["/bin/sh", "-c", script], maxOutputBytes: 1000 });
  assert.equal(out.truncated, true);
  assert.equal(out.stdout, "4".repeat(400) + "5".repeat(600));
});
