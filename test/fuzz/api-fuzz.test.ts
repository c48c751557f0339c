/**
 * Hostile input proven harmless: thousands of malformed requests against a
 * real controller (HTTP/JSON and gRPC) and a real agent (gRPC), generated with
 * fast-check: bad JSON, wrong types, huge bodies, unknown paths and methods,
 * path traversal, `-`-prefixed revisions, shell metacharacters, NUL and
 * newlines in ids, random bytes as protobuf. Asserts that nothing crashes,
 * that every answer is a client error (HTTP 4xx with a JSON `{code, message}`;
 * gRPC INVALID_ARGUMENT or another client-error status, never INTERNAL or
 * UNKNOWN), that no child process was started and no file written outside
 * the data folders.
 *
 * CI runs FLOTILLA_FUZZ_REQUESTS (default 3000) requests; `npm run fuzz`
 * runs 12000.
 */
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { spawn, type ChildProcess } from "node:child_process";
import { existsSync, mkdirSync, mkdtempSync, openSync, readFileSync, readdirSync, rmSync, statSync, writeFileSync } from "node:fs";
import { request } from "node:http";
import { tmpdir } from "node:os";
import { join, relative } from "node:path";
import fc from "fast-check";
import * as grpc from "@grpc/grpc-js";
import { create, fromBinary, toBinary, type DescMessage } from "@bufbuild/protobuf";
import { stringify } from "yaml";
import { FIXTURE_DIR, ROOT, alembic } from "../helpers/fleet.js";
import { ControllerService } from "../../services/common/gen/flotilla/v1/controller_pb.js";
import { AgentService } from "../../services/common/gen/flotilla/v1/agent_pb.js";

const TOTAL = Number(process.env.FLOTILLA_FUZZ_REQUESTS ?? 3000);
const CANARY = `flotilla-fuzz-canary-${process.pid}`;
/** Requests carry an admin token, so they reach validation; the Authorization cases carry garbage instead. */
const TOKEN = "fuzz-admin-token-0123456789abcdef";

let dir: string;
let dataDirs: string[];
let marker: string;
const procs: ChildProcess[] = [];
let agentPort = 0;
let httpPort = 0;
let grpcPort = 0;
let agentProc: ChildProcess;
let controllerProc: ChildProcess;

function waitForFile(path: string, proc: ChildProcess): Promise<string> {
  return new Promise((resolve, reject) => {
    const deadline = Date.now() + 90_000;
    const tick = (): void => {
      if (existsSync(path) && readFileSync(path, "utf8") !== "") return resolve(readFileSync(path, "utf8"));
      if (proc.exitCode !== null) return reject(new Error(`exited with ${proc.exitCode}`));
      if (Date.now() > deadline) return reject(new Error(`timed out waiting for ${path}`));
      setTimeout(tick, 50);
    };
    tick();
  });
}

/** Every file under `root` (path → size and mtime), skipping the data folders. */
function snapshot(root: string, skip: string[]): Map<string, string> {
  const out = new Map<string, string>();
  const walk = (d: string): void => {
    for (const ent of readdirSync(d, { withFileTypes: true })) {
      const p = join(d, ent.name);
      if (skip.some((s) => p === s || p.startsWith(`${s}/`))) continue;
      if (ent.isDirectory()) walk(p);
      else {
        const st = statSync(p);
        out.set(relative(root, p), `${st.size}:${st.mtimeMs}`);
      }
    }
  };
  walk(root);
  return out;
}

before(async () => {
  dir = mkdtempSync(join(tmpdir(), "flotilla-fuzz-"));
  marker = join(dir, "children.log");
  // Every program the agent could start logs its argv here first (alembic then really runs).
  const wrapper = join(dir, "logged.mjs");
  writeFileSync(
    wrapper,
    [
      "import { appendFileSync } from 'node:fs';",
      "import { spawnSync } from 'node:child_process';",
      `appendFileSync(${JSON.stringify(marker)}, JSON.stringify(process.argv.slice(2)) + ' ' + Date.now() + '\\n');`,
      "const [cmd, ...args] = process.argv.slice(2);",
      "if (cmd === 'alembic') process.exit(spawnSync('alembic', args, { stdio: 'inherit' }).status ?? 1);",
    ].join("\n"),
  );
  const secret = join(dir, "secret");
  writeFileSync(secret, "fuzz-secret-0123456789abcdef", { mode: 0o600 });
  const agentData = join(dir, "agent-data");
  const backups = join(dir, "backups");
  const controllerData = join(dir, "controller-data");
  const db = join(dir, "db");
  mkdirSync(db);
  dataDirs = [agentData, backups, controllerData, db];
  const url = `sqlite:///${join(db, "fz.db")}`;
  const up = await alembic(url, ["upgrade", "c3d2e1f00d42"]);
  assert.equal(up.code, 0, up.stderr);
  const logged = (...argv: string[]) => [process.execPath, wrapper, ...argv];
  const agentCfg = join(dir, "agent.yaml");
  writeFileSync(
    agentCfg,
    stringify({
      agentId: "fz-agent",
      listen: "127.0.0.1:0",
      dataDir: agentData,
      targets: [
        {
          id: "fz-1",
          labels: { env: "fuzz" },
          database: url,
          alembic: { dir: FIXTURE_DIR, command: logged("alembic"), env: { WEBUI_SECRET_KEY: { file: secret } } },
          backups: { dir: backups, keep: 3 },
          blueGreen: { green: `sqlite:///${join(db, "fz-green.db")}`, switch: logged("switch") },
        },
      ],
      apps: [{ id: "fz-app", target: "fz-1", color: "blue", stop: logged("stop"), start: logged("start") }],
    }),
  );
  const agentLog = join(dir, "agent.log");
  agentProc = spawn(process.execPath, [join(ROOT, "bin/flotilla-agent.mjs"), "--config", agentCfg], {
    stdio: ["ignore", openSync(agentLog, "a"), openSync(agentLog, "a")],
    env: { ...process.env, FLOTILLA_PORT_FILE: join(dir, "agent.port") },
  });
  procs.push(agentProc);
  agentPort = Number(await waitForFile(join(dir, "agent.port"), agentProc));
  const controllerCfg = join(dir, "controller.yaml");
  writeFileSync(join(dir, "token"), TOKEN, { mode: 0o600 });
  writeFileSync(
    controllerCfg,
    stringify({
      listen: { grpc: "127.0.0.1:0", http: "127.0.0.1:0" },
      dataDir: controllerData,
      agents: [{ id: "fz-agent", address: `127.0.0.1:${agentPort}` }],
      tokens: [{ name: "fuzzer", role: "admin", file: join(dir, "token") }],
    }),
  );
  const controllerLog = join(dir, "controller.log");
  controllerProc = spawn(process.execPath, [join(ROOT, "bin/flotilla-controller.mjs"), "--config", controllerCfg], {
    stdio: ["ignore", openSync(controllerLog, "a"), openSync(controllerLog, "a")],
    env: { ...process.env, FLOTILLA_PORT_FILE: join(dir, "controller.port") },
  });
  procs.push(controllerProc);
  const ports = JSON.parse(await waitForFile(join(dir, "controller.port"), controllerProc)) as { http: number; grpc: number };
  httpPort = ports.http;
  grpcPort = ports.grpc;
});

after(() => {
  for (const p of procs) if (p.exitCode === null) p.kill("SIGKILL");
  if (!process.env.FLOTILLA_FUZZ_KEEP) rmSync(dir, { recursive: true, force: true });
});

// ---------------------------------------------------------------------------------------------
// Hostile values.

/** Characters no Flotilla grammar accepts anywhere: a value holding one must be refused. */
const HARD_BAD = ["\0", "\n", "\r", ";", "|", "&", "$(", "`", "'", '"', "\\", "<", ">", "\u0007"];
const filler = fc.stringMatching(/^[A-Za-z0-9_.-]{0,10}$/);
const hardBad = fc
  .tuple(filler, fc.constantFrom(...HARD_BAD), filler, fc.constantFrom("", "rm -rf /", "$(touch /tmp/" + CANARY + ")", "`id`", "\n--sql", "%00"))
  .map(([a, b, c, d]) => `${a}${b}${c}${d}`);
const traversal = fc.constantFrom(
  `../../../../tmp/${CANARY}`,
  `/tmp/${CANARY}`,
  `..%2f..%2ftmp%2f${CANARY}`,
  `a/../../${CANARY}`,
  `..`,
  `.`,
  `fz-1/../../${CANARY}`,
  `\\..\\..\\${CANARY}`,
);
const dashed = fc.constantFrom("-1", "--sql", "-x", "--help", "-", "--", "-head", "--tag=x", "-c/etc/passwd");
const huge = fc.integer({ min: 300, max: 70_000 }).map((n) => "A".repeat(n));
const poisoned = fc.oneof(hardBad, traversal, dashed, huge);

/** Fields that are free text or outputs: a hostile value there may be accepted harmlessly, so they are never the poisoned one. */
const FREE_TEXT = new Set(["actor", "action", "target", "source", "lastRun", "lastResult", "schedule", "reason", "nextRun", "line", "step"]);
/** Fields whose grammar legitimately holds '/' or '.', so traversal is not a refusal there. */
const SLASHY = new Set(["selector", "address", "timeZone", "since", "until"]);

type Method = { name: string; localName: string; methodKind: string; input: DescMessage; output: DescMessage };
const controllerMethods = ControllerService.methods as unknown as Method[];
const agentMethods = AgentService.methods as unknown as Method[];

function stringFields(m: DescMessage): { localName: string; jsonName: string; kind: string }[] {
  return m.fields.map((f) => ({ localName: f.localName, jsonName: f.jsonName, kind: f.fieldKind === "scalar" ? `scalar:${f.scalar}` : f.fieldKind }));
}

/** A request whose poisoned field must make the call fail, plus any other fields (hostile or not). */
function poisonable(m: Method): boolean {
  return stringFields(m.input).some((f) => f.kind === "scalar:9" && !FREE_TEXT.has(f.localName));
}

function hostileMessage(m: Method): fc.Arbitrary<{ fields: Record<string, unknown>; poisoned: string }> {
  const fields = stringFields(m.input);
  const targets = fields.filter((f) => f.kind === "scalar:9" && !FREE_TEXT.has(f.localName));
  return fc
    .record({
      which: fc.constantFrom(...targets),
      value: poisoned,
      others: fc.array(
        fc.tuple(
          fc.constantFrom(...fields),
          fc.oneof(poisoned, fc.constantFrom("", "fz-1", "head", "env=fuzz", "maintenance", "2h", "manual")),
          fc.integer({ min: -5, max: 1e6 }),
          fc.boolean(),
        ),
        { maxLength: 4 },
      ),
    })
    .map(({ which, value, others }) => {
      const out: Record<string, unknown> = {};
      for (const [f, s, n, b] of others) {
        if (f.kind === "scalar:9") out[f.localName] = s;
        else if (f.kind === "scalar:5") out[f.localName] = n;
        else if (f.kind === "scalar:8") out[f.localName] = b;
      }
      let v = value;
      if (SLASHY.has(which.localName) && !HARD_BAD.some((c) => v.includes(c))) v = `${v};x`;
      out[which.localName] = v;
      return { fields: out, poisoned: which.localName };
    });
}

// ---------------------------------------------------------------------------------------------
// HTTP.

interface HttpAnswer {
  status: number;
  body: string;
  contentType: string;
}

function httpCall(method: string, path: string, body: Buffer | string | undefined, headers: Record<string, string> = {}): Promise<HttpAnswer> {
  return new Promise((resolve) => {
    // An explicit length: Node's client would send a GET or DELETE body unframed (it would read as a second request).
    const length = body === undefined ? 0 : Buffer.byteLength(body);
    const req = request({
      host: "127.0.0.1",
      port: httpPort,
      method,
      path,
      headers: { "content-type": "application/json", "content-length": String(length), authorization: `Bearer ${TOKEN}`, ...headers },
      agent: false,
    });
    // A request left unanswered is a finding, not a hang.
    req.setTimeout(30_000, () => req.destroy(Object.assign(new Error("no answer within 30s"), { code: "FUZZ_TIMEOUT" })));
    req.on("response", (res) => {
      const chunks: Buffer[] = [];
      res.on("data", (c: Buffer) => chunks.push(c));
      res.on("end", () =>
        resolve({ status: res.statusCode ?? 0, body: Buffer.concat(chunks).toString("utf8"), contentType: String(res.headers["content-type"] ?? "") }),
      );
      res.on("error", (err) => resolve({ status: 0, body: err.message, contentType: "" }));
    });
    // The server may answer 413 and close before the whole body is sent.
    req.on("error", (err: NodeJS.ErrnoException) => {
      if (err.code === "EPIPE" || err.code === "ECONNRESET") resolve({ status: -1, body: err.code, contentType: "" });
      else if (err.code === "FUZZ_TIMEOUT") resolve({ status: 0, body: "no answer within 30s", contentType: "" });
      // A malformed answer (e.g. bytes after `Connection: close`) is a finding, reported with the request.
      else resolve({ status: 0, body: `${err.code ?? ""} ${err.message}`, contentType: "" });
    });
    req.end(body);
  });
}

type HttpCase = { what: string; method: string; path: string; body?: Buffer | string; headers?: Record<string, string> };

const jsonValue = fc.jsonValue({ maxDepth: 3 });
const wrongType = (m: Method): fc.Arbitrary<string> => {
  const fields = stringFields(m.input).filter((f) => f.kind.startsWith("scalar"));
  if (fields.length === 0) return fc.constant("[1,2,3]");
  return fc
    .tuple(
      fc.constantFrom(...fields),
      fc.oneof(fc.constant({ a: 1 }), fc.constant([1]), fc.constant(true), fc.integer(), fc.constant("not-a-number"), fc.constant(1e300)),
    )
    .map(([f, v]) => {
      // A value of the wrong JSON type for the field (strings get objects, numbers get strings…).
      if (f.kind === "scalar:9" && typeof v === "string") return JSON.stringify({ [f.jsonName]: { v } });
      if (f.kind !== "scalar:9" && typeof v === "number") return JSON.stringify({ [f.jsonName]: "x" + String(v) });
      if (f.kind === "scalar:8" && typeof v === "boolean") return JSON.stringify({ [f.jsonName]: "yes" });
      return JSON.stringify({ [f.jsonName]: v });
    });
};

const httpCase: fc.Arbitrary<HttpCase> = fc.constantFrom(...controllerMethods).chain((m) =>
  fc.oneof(
    ...(poisonable(m)
      ? [
          {
            weight: 5,
            arbitrary: hostileMessage(m).map(
              (x): HttpCase => ({ what: `${m.name} with a hostile ${x.poisoned}`, method: "POST", path: `/v1/${m.name}`, body: JSON.stringify(x.fields) }),
            ),
          },
        ]
      : []),
    {
      weight: 2,
      arbitrary: fc
        .oneof(fc.string({ maxLength: 60 }), fc.constantFrom("{", '{"a":', "[", "nul", "{'a':1}", "\u0000", "{}}", '{"targetId":"\\ud800"}'))
        .filter((s) => {
          if (s.trim() === "") return false;
          try {
            JSON.parse(s);
            return false;
          } catch {
            return true;
          }
        })
        .map((s) => ({ what: `${m.name} with bad JSON`, method: "POST", path: `/v1/${m.name}`, body: s })),
    },
    {
      weight: 2,
      arbitrary: wrongType(m).map((s) => ({ what: `${m.name} with a wrong type: ${s.slice(0, 60)}`, method: "POST", path: `/v1/${m.name}`, body: s })),
    },
    {
      weight: 1,
      arbitrary: jsonValue
        .filter((v) => v === null || typeof v !== "object" || Array.isArray(v))
        .map((v) => ({
          what: `${m.name} with a JSON ${Array.isArray(v) ? "array" : typeof v}`,
          method: "POST",
          path: `/v1/${m.name}`,
          body: JSON.stringify(v),
        })),
    },
    {
      weight: 1,
      arbitrary: fc
        .constantFrom("PUT", "DELETE", "PATCH", "GET")
        .map((verb) => ({ what: `${verb} /v1/${m.name}`, method: verb, path: `/v1/${m.name}`, body: "{}" })),
    },
    {
      weight: 1,
      arbitrary: fc
        .oneof(
          traversal.map((t) => `/v1/${t}`),
          fc.constantFrom(
            "/v1/",
            "/v2/ListTargets",
            "/v1/ListTargets/../../etc/passwd",
            "/%2e%2e/%2e%2e/etc/passwd",
            "/v1/__proto__",
            "/v1/constructor",
            "/v1/ListTargets%00",
            "//v1//ListTargets",
          ),
        )
        .map((p) => ({ what: `POST ${p}`, method: "POST", path: p, body: "{}" })),
    },
    {
      weight: 1,
      arbitrary: fc.constantFrom("Bearer", "Bearer \u00ff\u00fe", "Basic YWRtaW46YWRtaW4=", "Bearer ../../etc/passwd", "x".repeat(9000)).map((a) => ({
        what: `${m.name} with Authorization ${a.slice(0, 20)}`,
        method: "POST",
        path: `/v1/${m.name}`,
        body: "{}",
        headers: { authorization: a },
      })),
    },
  ),
);

/** Rare, costly cases: each runs a few times per run. */
const HUGE_CASES: HttpCase[] = [
  { what: "a 3 MiB body", method: "POST", path: "/v1/StartRollout", body: Buffer.alloc(3 * 1024 * 1024, 0x41) },
  { what: "a 2 MiB JSON string", method: "POST", path: "/v1/ListTargets", body: JSON.stringify({ selector: "a".repeat(2 * 1024 * 1024) }) },
  { what: "deeply nested JSON", method: "POST", path: "/v1/PlanRollout", body: `${"[".repeat(50_000)}${"]".repeat(50_000)}` },
];

function assertClientError(a: HttpAnswer, what: string): void {
  if (a.status === -1) return; // the server cut an oversized upload short (413 sent before the body ended)
  assert.ok(a.status >= 400 && a.status < 500, `${what}: HTTP ${a.status} ${a.body.slice(0, 300)}`);
  let doc: { code?: unknown; message?: unknown };
  try {
    doc = JSON.parse(a.body) as typeof doc;
  } catch {
    assert.fail(`${what}: HTTP ${a.status} answered something that is not JSON: ${a.body.slice(0, 200)}`);
  }
  assert.equal(typeof doc.code, "string", `${what}: no error code in ${a.body.slice(0, 200)}`);
  assert.equal(typeof doc.message, "string", `${what}: no message`);
  assert.equal(a.body.includes("fuzz-secret-0123456789abcdef") || a.body.includes(TOKEN), false, `${what}: a secret leaked`);
}

// ---------------------------------------------------------------------------------------------
// gRPC.

const CLIENT_ERRORS = new Set([
  grpc.status.INVALID_ARGUMENT,
  grpc.status.NOT_FOUND,
  grpc.status.FAILED_PRECONDITION,
  grpc.status.OUT_OF_RANGE,
  grpc.status.PERMISSION_DENIED,
  grpc.status.UNAUTHENTICATED,
  grpc.status.RESOURCE_EXHAUSTED,
]);

/** `wellFormed`: random bytes that happen to decode as the request message (protobuf skips unknown fields): any non-server-error answer is fine. */
type GrpcCase = { what: string; service: "controller" | "agent"; method: Method; bytes: Buffer; wellFormed?: boolean };

function decodes(m: Method, bytes: Buffer): boolean {
  try {
    fromBinary(m.input, bytes);
    return true;
  } catch {
    return false;
  }
}

function grpcCaseFor(service: "controller" | "agent", methods: Method[]): fc.Arbitrary<GrpcCase> {
  return fc.constantFrom(...methods).chain((m) =>
    fc.oneof(
      ...(poisonable(m)
        ? [
            {
              weight: 3,
              arbitrary: hostileMessage(m).map(
                (x): GrpcCase => ({
                  what: `${service} ${m.name} with a hostile ${x.poisoned}: ${JSON.stringify(x.fields[x.poisoned]).slice(0, 60)}`,
                  service,
                  method: m,
                  bytes: Buffer.from(toBinary(m.input, create(m.input, x.fields as never))),
                }),
              ),
            },
          ]
        : []),
      {
        weight: 1,
        arbitrary: fc.uint8Array({ minLength: 1, maxLength: 200 }).map((b) => ({
          what: `${service} ${m.name} with random bytes`,
          service,
          method: m,
          bytes: Buffer.from(b),
          wellFormed: decodes(m, Buffer.from(b)),
        })),
      },
      {
        weight: 1,
        arbitrary: fc
          .constantFrom(
            Buffer.from([0x0a, 0xff, 0xff, 0xff, 0xff, 0x0f]),
            Buffer.from([0x0a, 0x05, 0xc3, 0x28, 0x00, 0x0a, 0x0d]),
            Buffer.from([0xff]),
            Buffer.from([0x08]),
          )
          .map((b) => ({ what: `${service} ${m.name} with truncated protobuf`, service, method: m, bytes: b, wellFormed: decodes(m, b) })),
      },
    ),
  );
}

const rawClients = new Map<string, grpc.Client>();
function rawClient(port: number): grpc.Client {
  const key = String(port);
  if (!rawClients.has(key)) rawClients.set(key, new grpc.Client(`127.0.0.1:${port}`, grpc.credentials.createInsecure()));
  return rawClients.get(key)!;
}

interface GrpcAnswer {
  code: number;
  details: string;
  results: { status?: string; errorCode?: string }[];
}

function grpcCall(c: GrpcCase): Promise<GrpcAnswer> {
  const client = rawClient(c.service === "controller" ? grpcPort : agentPort);
  const svc = c.service === "controller" ? ControllerService : AgentService;
  const path = `/${svc.typeName}/${c.method.name}`;
  const serialize = (b: Buffer): Buffer => b;
  const deserialize = (b: Buffer): Buffer => b;
  const deadline = new Date(Date.now() + 60_000);
  const md = new grpc.Metadata();
  if (c.service === "controller") md.set("authorization", `Bearer ${TOKEN}`);
  return new Promise((resolve) => {
    if (c.method.methodKind === "unary") {
      client.makeUnaryRequest(path, serialize, deserialize, c.bytes, md, { deadline }, (err) => {
        resolve({ code: err ? err.code : grpc.status.OK, details: err?.details ?? "", results: [] });
      });
      return;
    }
    const call = client.makeServerStreamRequest(path, serialize, deserialize, c.bytes, md, { deadline });
    const results: GrpcAnswer["results"] = [];
    call.on("data", (b: Buffer) => {
      let event: { event: { case?: string; value?: unknown } };
      try {
        event = fromBinary(c.method.output, b) as unknown as typeof event;
      } catch {
        results.push({ status: "undecodable" });
        return;
      }
      if (event.event.case === "result") {
        const r = event.event.value as { status: string; errorCode: string };
        results.push({ status: r.status, errorCode: r.errorCode });
      }
    });
    call.on("error", (err: grpc.ServiceError) => resolve({ code: err.code, details: err.details, results }));
    call.on("end", () => resolve({ code: grpc.status.OK, details: "", results }));
  });
}

// ---------------------------------------------------------------------------------------------

test(`${TOTAL} malformed HTTP and gRPC requests: every one refused as a client error, nothing crashes, nothing runs, nothing is written outside the data folders`, async () => {
  // Warm up with one legitimate read (the agent builds its revision graph once), then record what exists.
  const warm = await httpCall("POST", "/v1/ListTargets", "{}");
  assert.equal((await httpCall("POST", "/v1/ListTargets", "{}", { authorization: "Bearer not-the-token-0123456789" })).status, 401, "the token is checked");
  assert.equal(warm.status, 200, warm.body);
  assert.match(warm.body, /fz-1/);
  await new Promise((r) => setTimeout(r, 500));
  const childrenBefore = existsSync(marker) ? readFileSync(marker, "utf8") : "";
  const filesBefore = snapshot(dir, dataDirs.concat([marker]));
  const repoBefore = snapshot(join(ROOT, "services"), []);

  const httpShare = Math.ceil(TOTAL * 0.55);
  const httpCases = fc.sample(httpCase, { numRuns: httpShare, seed: Number(process.env.FLOTILLA_FUZZ_SEED ?? 42) });
  const grpcCases = fc.sample(fc.oneof(grpcCaseFor("controller", controllerMethods), grpcCaseFor("agent", agentMethods)), {
    numRuns: TOTAL - httpShare,
    seed: Number(process.env.FLOTILLA_FUZZ_SEED ?? 42),
  });
  const failures: string[] = [];
  const tally = new Map<string, number>();
  const count = (k: string): void => void tally.set(k, (tally.get(k) ?? 0) + 1);

  const trace = process.env.FLOTILLA_FUZZ_TRACE === "1";
  const say = (line: string): void => void (trace && process.stderr.write(`${Date.now()} ${line}\n`));
  const batch = 16;
  for (let i = 0; i < httpCases.length; i += batch) {
    await Promise.all(
      httpCases.slice(i, i + batch).map(async (c) => {
        say(`→ ${c.what.slice(0, 120)}`);
        const a = await httpCall(c.method, c.path, c.body, c.headers);
        say(`← ${a.status} ${c.what.slice(0, 60)}`);
        count(`http ${a.status}`);
        try {
          assertClientError(a, c.what);
        } catch (err) {
          failures.push((err as Error).message);
        }
      }),
    );
  }
  for (const c of HUGE_CASES) {
    const a = await httpCall(c.method, c.path, c.body, c.headers);
    count(`http ${a.status}`);
    try {
      assertClientError(a, c.what);
    } catch (err) {
      failures.push((err as Error).message);
    }
  }
  for (let i = 0; i < grpcCases.length; i += batch) {
    await Promise.all(
      grpcCases.slice(i, i + batch).map(async (c) => {
        say(`→ ${c.what.slice(0, 120)}`);
        const a = await grpcCall(c);
        say(`← ${grpc.status[a.code]} ${c.what.slice(0, 60)}`);
        count(`grpc ${grpc.status[a.code]}`);
        // An agent operation may also answer with one result event of status "refused" and a client-error code.
        const refused =
          a.code === grpc.status.OK &&
          a.results.length === 1 &&
          a.results[0]!.status === "refused" &&
          ["INVALID_ARGUMENT", "NOT_FOUND", "PRECONDITION_FAILED", "STAMP_REFUSED", "DATA_LOSS_NOT_ACCEPTED", "UNKNOWN_REVISION", "TARGET_BUSY"].includes(
            a.results[0]!.errorCode ?? "",
          );
        if (refused) count(`grpc refused ${a.results[0]!.errorCode}`);
        const serverError = [grpc.status.INTERNAL, grpc.status.UNKNOWN, grpc.status.UNAVAILABLE, grpc.status.DATA_LOSS, grpc.status.DEADLINE_EXCEEDED].includes(
          a.code,
        );
        const ok = CLIENT_ERRORS.has(a.code) || refused || (c.wellFormed === true && !serverError);
        if (!ok) failures.push(`${c.what}: gRPC ${grpc.status[a.code]} ${a.details.slice(0, 200)} ${a.results.length ? JSON.stringify(a.results) : ""}`);
      }),
    );
  }
  const sent = httpCases.length + HUGE_CASES.length + grpcCases.length;
  process.stdout.write(`# fuzz: ${sent} requests; answers: ${JSON.stringify(Object.fromEntries([...tally].sort()))}\n`);
  assert.ok(sent >= TOTAL, `sent ${sent} requests`);
  const unique = [...new Set(failures.map((f) => f.replace(/\d+/g, "N").slice(0, 120)))];
  assert.deepEqual(unique.slice(0, 40), [], `${failures.length} requests were not refused as client errors; first: ${failures.slice(0, 10).join("\n")}`);

  // Nothing crashed: both daemons are alive and still answer a legitimate request.
  assert.equal(agentProc.exitCode, null, "the agent is still running");
  assert.equal(controllerProc.exitCode, null, "the controller is still running");
  const still = await httpCall("POST", "/v1/ListTargets", "{}");
  assert.equal(still.status, 200, still.body);
  assert.match(still.body, /"state":"up"/, "the agent still answers the controller");

  // Nothing ran: no program was started by the agent during the fuzz.
  await new Promise((r) => setTimeout(r, 300));
  const childrenAfter = existsSync(marker) ? readFileSync(marker, "utf8") : "";
  const argvOf = (log: string): string[] =>
    log
      .split("\n")
      .filter((l) => l !== "")
      .map((l) => l.replace(/ \d+$/, ""));
  assert.deepEqual(
    argvOf(childrenAfter),
    argvOf(childrenBefore),
    `child processes were started: ${childrenAfter.slice(childrenBefore.length, childrenBefore.length + 500)}`,
  );

  // Nothing written outside the data folders: the test folder, the sources, and no canary anywhere under /tmp.
  const filesAfter = snapshot(dir, dataDirs.concat([marker]));
  const changed = [...filesAfter].filter(([p, v]) => filesBefore.get(p) !== v && !/\.log$|\.port$/.test(p)).map(([p]) => p);
  assert.deepEqual(changed, [], "files changed outside the data folders");
  assert.deepEqual(
    [...snapshot(join(ROOT, "services"), [])].filter(([p, v]) => repoBefore.get(p) !== v),
    [],
    "the sources are untouched",
  );
  assert.equal(
    readdirSync("/tmp").some((n) => n.includes(CANARY)),
    false,
    "no canary file appeared in /tmp",
  );
  for (const c of rawClients.values()) c.close();
});
