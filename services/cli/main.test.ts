// The CLI against a stand-in controller: a node:http server on 127.0.0.1:0 answering like the
// HTTP/JSON API spec (the real controller is tested end to end elsewhere).
import { after, before, beforeEach, test } from "node:test";
import assert from "node:assert/strict";
import http from "node:http";
import type { IncomingHttpHeaders, ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import { mkdtempSync, readFileSync, readdirSync, rmSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { spawnSync } from "node:child_process";
import { fileURLToPath } from "node:url";
import { main } from "./main.js";

interface Recorded {
  readonly method: string;
  readonly url: string;
  readonly headers: IncomingHttpHeaders;
  readonly body: string;
}

type Handler = (req: Recorded, res: ServerResponse) => void;

const requests: Recorded[] = [];
let routes: Record<string, Handler> = {};
let server: http.Server;
let baseUrl = "";

before(async () => {
  server = http.createServer((req, res) => {
    let body = "";
    req.setEncoding("utf8");
    req.on("data", (c: string) => (body += c));
    req.on("end", () => {
      const rec: Recorded = { method: req.method ?? "", url: req.url ?? "", headers: req.headers, body };
      requests.push(rec);
      const route = routes[(req.url ?? "").split("?")[0] ?? ""];
      if (route === undefined) {
        sendJson(res, 404, { code: "NOT_FOUND", message: `no route ${req.url}` });
        return;
      }
      route(rec, res);
    });
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  baseUrl = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
});

after(async () => {
  server.closeAllConnections();
  await new Promise<void>((resolve) => server.close(() => resolve()));
});

beforeEach(() => {
  requests.length = 0;
  routes = {};
});

function sendJson(res: ServerResponse, status: number, doc: unknown): void {
  const text = JSON.stringify(doc);
  res.writeHead(status, { "content-type": "application/json", "content-length": Buffer.byteLength(text) });
  res.end(text);
}

async function cli(argv: string[], env: Record<string, string> = {}): Promise<{ code: number; stdout: string; stderr: string }> {
  const out: string[] = [];
  const err: string[] = [];
  const code = await main(argv, {
    stdout: { write: (s: string) => out.push(s) },
    stderr: { write: (s: string) => err.push(s) },
    env: { FLOTILLA_CONTROLLER: baseUrl, ...env },
  });
  return { code, stdout: out.join(""), stderr: err.join("") };
}

/** Asserts stdout is exactly one JSON document and returns it. */
function oneJson(stdout: string): Record<string, unknown> {
  assert.ok(stdout.trim().startsWith("{"), `stdout is not a JSON document: ${stdout}`);
  return JSON.parse(stdout) as Record<string, unknown>;
}

const TARGETS = {
  targets: [
    {
      targetId: "webui-1",
      kind: "sqlite",
      agentId: "host-a",
      current: ["c3d2e1f00d42"],
      heads: ["1b8c9d0e1f2a"],
      currentKnown: true,
      pending: [{ id: "d4c3b2a1e5f6", message: "add x" }],
      apps: [{ id: "a", state: "running" }],
    },
    { targetId: "webui-2", kind: "postgresql", agentId: "host-b", current: [], heads: [], error: "agent host-b unreachable" },
  ],
  agents: [{ id: "host-b", state: "down", error: "connection refused" }],
};

function rollout(status: string, steps: Array<[string, string]>, targetStatus = "running"): Record<string, unknown> {
  return {
    id: "r-1",
    status,
    spec: { selector: "env=prod", strategy: "maintenance", toRevision: "head" },
    currentWave: 1,
    targets: [
      {
        targetId: "webui-1",
        agentId: "host-a",
        wave: 1,
        status: targetStatus,
        revisionBefore: ["c3d2e1f00d42"],
        steps: steps.map(([name, state]) => ({ name, state })),
      },
    ],
  };
}

// ---------------------------------------------------------------------------------------------

test("bad usage exits 2 with a message, and nothing is sent to the controller", async () => {
  const cases: Array<[string[], string]> = [
    [
      ["rollout", "--selector", "env=prod", "--strategy", "maintenance", "--waves", "1,abc"],
      'flotilla: --waves: "1,abc" is not a wave list; use counts or percentages like 1,25%,100%',
    ],
    [["rollout", "--selector", "env=prod"], "--strategy is required"],
    [["rollout", "--selector", "env=prod", "--strategy", "canary"], "is not a strategy"],
    [["plan", "--selector", "env"], "is not a selector"],
    [["plan", "--selector", "env=prod", "--to", "abc-def"], "is not a revision"],
    [["rollout", "--selector", "env=prod", "--strategy", "job", "--window", "2 hours"], "is not a duration"],
    [["rollout", "--selector", "env=prod", "--strategy", "job", "--max-failures", "-1"], "≥ 0"],
    [["targets", "--bogus"], "unknown option --bogus"],
    [["diagnose"], "missing TARGET"],
    [["frobnicate"], "unknown verb"],
    [["restore", "webui-1", "bk-1"], "--yes"],
    [["downgrade", "webui-1", "--to", "c3d2e1f00d42"], "backup"],
    [["stamp", "webui-1", "head", "--reason", "because"], "created-with-create-all, imported-backup, applied-by-hand"],
    [["schedule", "add", "nightly", "--cron", "0 3 * *", "--selector", "env=prod", "--strategy", "job"], "a cron expression has 5"],
    [["audit", "--since", "yesterday"], "is not a time"],
  ];
  routes = { "/v1/StartRollout": (_r, res) => sendJson(res, 200, rollout("pending", [])) };
  for (const [argv, fragment] of cases) {
    const r = await cli(argv);
    assert.equal(r.code, 2, `${argv.join(" ")} → ${r.code}: ${r.stderr}`);
    assert.ok(r.stderr.startsWith("flotilla: "), r.stderr);
    assert.ok(r.stderr.includes(fragment), `${argv.join(" ")}: ${JSON.stringify(r.stderr)} lacks ${JSON.stringify(fragment)}`);
    assert.equal(r.stdout, "");
  }
  assert.equal(requests.length, 0, "no request may be sent for bad usage");
});

test("downgrade without --accept-data-loss says data is lost and to keep the backup", async () => {
  const r = await cli(["downgrade", "webui-1", "--to", "c3d2e1f00d42"]);
  assert.equal(r.code, 2);
  assert.match(r.stderr, /drops the columns and tables/);
  assert.match(r.stderr, /data in them is lost/);
  assert.match(r.stderr, /keep it/);
  assert.equal(requests.length, 0);
});

test("bad usage with --json still prints exactly one JSON document", async () => {
  const r = await cli(["plan", "--json", "--selector", "nope"]);
  assert.equal(r.code, 2);
  const doc = oneJson(r.stdout);
  assert.equal((doc["error"] as { code: string }).code, "INVALID_ARGUMENT");
  assert.equal(requests.length, 0);
});

test("exit codes: 200 → 0, usage-class refusal → 2, failure → 1, 401/403 → 3", async () => {
  routes = {
    "/v1/ListTargets": (_r, res) => sendJson(res, 200, TARGETS),
    "/v1/BackupTarget": (_r, res) => sendJson(res, 409, { code: "TARGET_BUSY", message: "webui-1 is busy with operation op-7" }),
    "/v1/ListTargetBackups": (_r, res) => sendJson(res, 401, {}),
    "/v1/ListRollouts": (_r, res) => sendJson(res, 403, { code: "PERMISSION_DENIED", message: "viewer may not do that" }),
    "/v1/RestoreTarget": (_r, res) => sendJson(res, 500, { code: "RESTORE_FAILED", message: "checksum mismatch" }),
    "/v1/ListSchedules": (_r, res) => sendJson(res, 503, { code: "AGENT_UNAVAILABLE", message: "agent host-a down" }),
  };
  const ok = await cli(["targets"]);
  assert.equal(ok.code, 0, ok.stderr);
  assert.match(ok.stdout, /webui-1/);
  // The important thing first: the broken target and the down agent come before the table.
  assert.ok(ok.stdout.indexOf("webui-2: agent host-b unreachable") < ok.stdout.indexOf("TARGET"), ok.stdout);
  assert.match(ok.stdout, /agent host-b is down/);

  const busy = await cli(["backup", "webui-1"]);
  assert.equal(busy.code, 2);
  assert.match(busy.stderr, /^flotilla: TARGET_BUSY: webui-1 is busy with operation op-7/);

  const unauth = await cli(["backups", "webui-1"]);
  assert.equal(unauth.code, 3);
  assert.match(unauth.stderr, /UNAUTHENTICATED/);
  assert.match(unauth.stderr, /--token or FLOTILLA_TOKEN/);

  const denied = await cli(["rollouts"]);
  assert.equal(denied.code, 3);
  assert.match(denied.stderr, /PERMISSION_DENIED/);

  const failed = await cli(["restore", "webui-1", "bk-1", "--yes"]);
  assert.equal(failed.code, 1);
  assert.match(failed.stderr, /RESTORE_FAILED: checksum mismatch/);

  const agentDown = await cli(["schedules"]);
  assert.equal(agentDown.code, 1);

  const restoreReq = requests.find((r) => r.url === "/v1/RestoreTarget");
  assert.deepEqual(JSON.parse(restoreReq?.body ?? "{}"), { targetId: "webui-1", backupId: "bk-1", yes: true });
});

test("a closed port exits 3 with 'cannot reach the controller'", async () => {
  const probe = http.createServer();
  await new Promise<void>((resolve) => probe.listen(0, "127.0.0.1", resolve));
  const port = (probe.address() as AddressInfo).port;
  await new Promise<void>((resolve) => probe.close(() => resolve()));
  const r = await cli(["targets", "--controller", `http://127.0.0.1:${port}`]);
  assert.equal(r.code, 3);
  assert.match(r.stderr, /^flotilla: cannot reach the controller at http:\/\/127\.0\.0\.1:\d+: connection refused/);
  assert.equal(r.stdout, "");
  const j = await cli(["targets", "--json", "--controller", `http://127.0.0.1:${port}`]);
  assert.equal(j.code, 3);
  assert.equal((oneJson(j.stdout)["error"] as { kind: string }).kind, "unreachable");
});

test("operation results: failed backup → 1; diagnose with problems → 1, clean → 0", async () => {
  routes = {
    "/v1/BackupTarget": (_r, res) => sendJson(res, 200, { status: "failed", errorCode: "BACKUP_FAILED", message: "disk full", durationMs: "1200" }),
    "/v1/DiagnoseTarget": (r, res) => {
      const target = (JSON.parse(r.body) as { targetId: string }).targetId;
      if (target === "sick")
        sendJson(res, 200, {
          targetId: "sick",
          problems: true,
          findings: [
            { code: "ok1", severity: "ok", what: "integrity check passed" },
            { code: "heads", severity: "error", what: "2 Alembic heads", why: "a branch was merged without a merge revision", fix: "alembic merge heads" },
          ],
        });
      else sendJson(res, 200, { targetId: target, problems: false, findings: [{ code: "ok1", severity: "ok", what: "integrity check passed" }] });
    },
  };
  const b = await cli(["backup", "webui-1"]);
  assert.equal(b.code, 1);
  assert.match(b.stdout, /✗ backup of webui-1 failed \(BACKUP_FAILED\)/);

  const sick = await cli(["diagnose", "sick"]);
  assert.equal(sick.code, 1);
  const lines = sick.stdout.split("\n");
  assert.match(lines[0] ?? "", /✗ sick: 1 error/);
  assert.ok(sick.stdout.indexOf("2 Alembic heads") < sick.stdout.indexOf("integrity check passed"), "problems come before passed checks");
  assert.match(sick.stdout, /why: a branch was merged/);
  assert.match(sick.stdout, /fix: alembic merge heads/);

  const healthy = await cli(["diagnose", "webui-1"]);
  assert.equal(healthy.code, 0);
  assert.match(healthy.stdout, /✓ webui-1: no problems/);
});

test("--json prints exactly one parseable document; a rollout has id, status and per-target steps", async () => {
  routes = {
    "/v1/ListTargets": (_r, res) => sendJson(res, 200, TARGETS),
    "/v1/StartRollout": (_r, res) =>
      sendJson(
        res,
        200,
        rollout("running", [
          ["precheck", "succeeded"],
          ["backup", "running"],
        ]),
      ),
    "/v1/GetRollout": (_r, res) =>
      sendJson(
        res,
        200,
        rollout(
          "failed",
          [
            ["precheck", "succeeded"],
            ["migrate", "failed"],
          ],
          "restored",
        ),
      ),
    "/v1/PlanRollout": (_r, res) =>
      sendJson(res, 200, {
        spec: { selector: "env=prod" },
        waveCount: 1,
        targets: [{ targetId: "webui-1", wave: 1, current: ["c3d2e1f00d42"], sql: "ALTER TABLE chat ADD COLUMN x;", sqlComplete: true }],
      }),
    "/v1/BackupTarget": (_r, res) => sendJson(res, 409, { code: "TARGET_BUSY", message: "busy" }),
  };
  const t = await cli(["targets", "--json"]);
  assert.equal(t.code, 0);
  assert.equal((oneJson(t.stdout)["targets"] as unknown[]).length, 2);

  const started = await cli(["--json", "rollout", "--selector", "env=prod", "--strategy", "maintenance"]);
  assert.equal(started.code, 0);
  const doc = oneJson(started.stdout);
  assert.equal(doc["id"], "r-1");
  assert.equal(doc["status"], "running");
  const target = (doc["targets"] as Array<Record<string, unknown>>)[0];
  assert.equal(target?.["targetId"], "webui-1");
  assert.equal(target?.["status"], "running");
  assert.deepEqual(target?.["steps"], [
    { name: "precheck", state: "succeeded", agentId: "", operationId: "", detail: "", startedAt: "", finishedAt: "" },
    { name: "backup", state: "running", agentId: "", operationId: "", detail: "", startedAt: "", finishedAt: "" },
  ]);

  const shown = await cli(["rollout", "show", "r-1", "--json"]);
  assert.equal(shown.code, 0);
  assert.equal(oneJson(shown.stdout)["status"], "failed");

  const plan = await cli(["plan", "--selector", "env=prod", "--json"]);
  assert.equal(plan.code, 0);
  assert.equal((oneJson(plan.stdout)["targets"] as Array<{ sql: string }>)[0]?.sql, "ALTER TABLE chat ADD COLUMN x;");

  const busy = await cli(["backup", "webui-1", "--json"]);
  assert.equal(busy.code, 2);
  assert.equal((oneJson(busy.stdout)["error"] as { code: string }).code, "TARGET_BUSY");
});

test("human views: failed targets first with what to do; plan SQL indented", async () => {
  routes = {
    "/v1/GetRollout": (_r, res) =>
      sendJson(res, 200, {
        ...rollout("halted", []),
        targets: [
          {
            targetId: "webui-1",
            wave: 1,
            status: "succeeded",
            revisionBefore: ["c3d2e1f00d42"],
            revisionAfter: ["1b8c9d0e1f2a"],
            steps: [{ name: "migrate", state: "succeeded" }],
          },
          {
            targetId: "webui-9",
            wave: 1,
            status: "restored",
            backupId: "bk-9",
            revisionBefore: ["c3d2e1f00d42"],
            steps: [{ name: "migrate", state: "failed", detail: "duplicate column name: x" }],
            message: "migrate failed (ALEMBIC_FAILED) and the database was restored to c3d2e1f00d42; fix the cause, then: flotilla rollout retry r-1",
          },
        ],
      }),
    "/v1/PlanRollout": (_r, res) =>
      sendJson(res, 200, {
        spec: { selector: "env=prod", strategy: "maintenance" },
        waveCount: 1,
        targets: [
          {
            targetId: "webui-1",
            wave: 1,
            current: ["c3d2e1f00d42"],
            pending: [{ id: "d4c3b2a1e5f6", message: "add x" }],
            steps: [{ name: "stop" }, { name: "backup" }, { name: "migrate" }],
            sql: "BEGIN;\nALTER TABLE chat ADD COLUMN x;\nCOMMIT;",
            sqlComplete: true,
            warnings: ["drops column y"],
          },
        ],
      }),
  };
  const show = await cli(["rollout", "show", "r-1"]);
  assert.equal(show.code, 0);
  const failedAt = show.stdout.indexOf("webui-9: migrate failed (ALEMBIC_FAILED) and the database was restored to c3d2e1f00d42");
  assert.ok(failedAt > 0 && failedAt < show.stdout.indexOf("TARGET"), show.stdout);
  assert.equal(show.stdout.split("restored to c3d2e1f00d42").length, 2, "the outcome is said once");
  assert.match(show.stdout, /retry what did not complete: flotilla rollout retry r-1/);
  assert.match(show.stdout, /flotilla rollout rollback r-1 --yes/);

  const plan = await cli(["plan", "--selector", "env=prod"]);
  assert.equal(plan.code, 0);
  assert.match(plan.stdout, /revision {2}c3d2e1f00d42 → d4c3b2a1e5f6 {2}\(1 pending\)/);
  assert.match(plan.stdout, /steps {5}stop → backup → migrate/);
  assert.match(plan.stdout, /\n {6}ALTER TABLE chat ADD COLUMN x;\n/);
  assert.match(plan.stdout, /! drops column y/);
});

test("rollout sends the validated spec, with 100% appended to --waves and a note on stderr", async () => {
  routes = { "/v1/StartRollout": (_r, res) => sendJson(res, 200, rollout("pending", [])) };
  const r = await cli([
    "rollout",
    "--selector",
    "env=prod,region=eu",
    "--strategy",
    "blue-green",
    "--waves",
    "1,25%",
    "--to",
    "1b8c9d0e1f2a",
    "--max-failures",
    "1",
  ]);
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stderr, /flotilla: note: --waves 1,25%: added a last wave of 100%/);
  assert.equal(requests.length, 1);
  const req = requests[0];
  assert.equal(req?.method, "POST");
  assert.equal(req?.url, "/v1/StartRollout");
  assert.match(String(req?.headers["content-type"]), /application\/json/);
  assert.deepEqual(JSON.parse(req?.body ?? ""), {
    selector: "env=prod,region=eu",
    toRevision: "1b8c9d0e1f2a",
    strategy: "blue-green",
    waves: "1,25%,100%",
    maxFailures: 1,
  });
});

/** Writes NDJSON events in several chunks, one split mid-line, as a real stream may arrive. */
function streamEvents(res: ServerResponse, events: unknown[]): void {
  res.writeHead(200, { "content-type": "application/x-ndjson" });
  const text = events.map((e) => `${JSON.stringify(e)}\n`).join("");
  const chunks = [text.slice(0, 37), text.slice(37, 200), text.slice(200)];
  const writeNext = (): void => {
    const c = chunks.shift();
    if (c === undefined) {
      res.end();
      return;
    }
    res.write(c);
    setImmediate(writeNext);
  };
  writeNext();
}

const WATCH_EVENTS = [
  {
    snapshot: rollout("running", [
      ["precheck", "running"],
      ["migrate", "pending"],
    ]),
  },
  { line: { targetId: "webui-1", step: "migrate", line: "INFO  [alembic.runtime.migration] Running upgrade c3d2e1f00d42 -> d4c3b2a1e5f6, add x" } },
  {
    snapshot: rollout("running", [
      ["precheck", "succeeded"],
      ["migrate", "running"],
    ]),
  },
  { line: { targetId: "webui-1", step: "migrate", line: "INFO  [alembic.runtime.migration] Running upgrade d4c3b2a1e5f6 -> e5f4a3b2c1d0, add y" } },
];

test("rollout --wait follows WatchRollout: transitions and Alembic lines in order, exit 0 on success", async () => {
  routes = {
    "/v1/StartRollout": (_r, res) =>
      sendJson(
        res,
        200,
        rollout(
          "pending",
          [
            ["precheck", "pending"],
            ["migrate", "pending"],
          ],
          "pending",
        ),
      ),
    "/v1/WatchRollout": (r, res) => {
      assert.deepEqual(JSON.parse(r.body), { id: "r-1" });
      streamEvents(res, [
        ...WATCH_EVENTS,
        {
          snapshot: rollout(
            "succeeded",
            [
              ["precheck", "succeeded"],
              ["migrate", "succeeded"],
            ],
            "succeeded",
          ),
        },
      ]);
    },
  };
  const r = await cli(["rollout", "--selector", "env=prod", "--strategy", "maintenance", "--wait"]);
  assert.equal(r.code, 0, r.stderr);
  const order = [
    "rollout r-1 started",
    "precheck       ▶ running",
    "│ INFO  [alembic.runtime.migration] Running upgrade c3d2e1f00d42 -> d4c3b2a1e5f6, add x",
    "precheck       ✓ succeeded",
    "migrate        ▶ running",
    "Running upgrade d4c3b2a1e5f6 -> e5f4a3b2c1d0, add y",
    "migrate        ✓ succeeded",
    "✓ webui-1 succeeded",
    "rollout r-1: ✓ succeeded",
  ];
  let at = -1;
  for (const piece of order) {
    const i = r.stdout.indexOf(piece, at + 1);
    assert.ok(i > at, `${JSON.stringify(piece)} missing or out of order in:\n${r.stdout}`);
    at = i;
  }
  assert.deepEqual(
    requests.map((q) => q.url),
    ["/v1/StartRollout", "/v1/WatchRollout"],
  );
});

test("rollout show --follow ends with exit 1 when the rollout did not succeed; --json gives only the final rollout", async () => {
  const failed = {
    snapshot: rollout(
      "halted",
      [
        ["precheck", "succeeded"],
        ["migrate", "failed"],
      ],
      "restored",
    ),
  };
  routes = { "/v1/WatchRollout": (_r, res) => streamEvents(res, [...WATCH_EVENTS, failed]) };
  const human = await cli(["rollout", "show", "r-1", "--follow"]);
  assert.equal(human.code, 1);
  assert.match(human.stdout, /migrate {8}✗ failed/);
  assert.match(human.stdout, /rollout r-1: ■ halted/);

  const json = await cli(["rollout", "show", "r-1", "--follow", "--json"]);
  assert.equal(json.code, 1);
  const doc = oneJson(json.stdout);
  assert.equal(doc["status"], "halted");
  assert.doesNotMatch(json.stdout, /Running upgrade/);
});

test("a broken watch stream is resumed from a fresh snapshot", async () => {
  let calls = 0;
  routes = {
    "/v1/WatchRollout": (_r, res) => {
      calls++;
      if (calls === 1) streamEvents(res, WATCH_EVENTS.slice(0, 2));
      else
        streamEvents(res, [
          {
            snapshot: rollout(
              "succeeded",
              [
                ["precheck", "succeeded"],
                ["migrate", "succeeded"],
              ],
              "succeeded",
            ),
          },
        ]);
    },
  };
  const r = await cli(["rollout", "show", "r-1", "--follow"]);
  assert.equal(r.code, 0, r.stderr);
  assert.equal(calls, 2);
  assert.match(r.stderr, /reconnecting \(1\/5\)/);
  assert.match(r.stdout, /migrate {8}✓ succeeded/);
});

test("the token goes in the Authorization header and is never printed", async () => {
  const token = "s3cr3t-T0ken-4242";
  routes = {
    "/v1/ListTargets": (r, res) => {
      if (r.headers.authorization === `Bearer ${token}`) sendJson(res, 200, TARGETS);
      else sendJson(res, 401, { code: "UNAUTHENTICATED", message: `token ${String(r.headers.authorization)} is not known` });
    },
    "/v1/ListRollouts": (r, res) =>
      sendJson(res, 403, { code: "PERMISSION_DENIED", message: `token ${String(r.headers.authorization).replace("Bearer ", "")} is a viewer` }),
  };
  const viaEnv = await cli(["targets"], { FLOTILLA_TOKEN: token });
  assert.equal(viaEnv.code, 0, viaEnv.stderr);
  const viaFlag = await cli(["targets", "--json", "--token", token]);
  assert.equal(viaFlag.code, 0);
  const denied = await cli(["rollouts", "--json", "--token", token]);
  assert.equal(denied.code, 3);
  const noToken = await cli(["targets"]);
  assert.equal(noToken.code, 3);

  assert.equal(requests[0]?.headers.authorization, `Bearer ${token}`);
  assert.equal(requests[1]?.headers.authorization, `Bearer ${token}`);
  assert.equal(requests[3]?.headers.authorization, undefined);
  for (const out of [viaEnv, viaFlag, denied, noToken]) {
    assert.ok(!out.stdout.includes(token) && !out.stderr.includes(token), `token leaked: ${out.stdout}${out.stderr}`);
  }
  assert.match(denied.stderr, /PERMISSION_DENIED: token \*\*\* is a viewer/);
});

const AUDIT_LINES = [
  { seq: "1", time: "2024-05-01T03:00:00Z", actor: "alice", action: "StartRollout", target: "", outcome: "ok", prevHash: "", hash: "aa" },
  {
    seq: "2",
    time: "2024-05-01T03:00:05Z",
    actor: "mallory",
    action: "StampTarget",
    target: "webui-1",
    outcome: "ok",
    args: '{"revision":"head"}',
    prevHash: "aa",
    hash: "bb",
  },
  { seq: "3", time: "2024-05-01T03:00:09Z", actor: "alice", action: "GetRollout", target: "", outcome: "ok", prevHash: "bb", hash: "cc" },
];

test("audit verify: exit 1 and the first broken entry with its reason; exit 0 when intact", async () => {
  let intact = false;
  routes = {
    "/v1/VerifyAudit": (_r, res) =>
      sendJson(
        res,
        200,
        intact ? { ok: true, checked: "3" } : { ok: false, checked: "3", firstBadSeq: "2", reason: "hash does not match the entry's content" },
      ),
    "/v1/ExportAudit": (_r, res) => streamEvents(res, AUDIT_LINES),
  };
  const broken = await cli(["audit", "verify"]);
  assert.equal(broken.code, 1);
  assert.match(broken.stdout, /✗ audit log BROKEN at entry #2: hash does not match the entry's content/);
  assert.match(broken.stdout, /actor {6}mallory/);
  assert.match(broken.stdout, /action {5}StampTarget on webui-1/);

  const json = await cli(["audit", "verify", "--json"]);
  assert.equal(json.code, 1);
  const doc = oneJson(json.stdout);
  assert.equal(doc["firstBadSeq"], "2");
  assert.equal((doc["firstBadEntry"] as { actor: string }).actor, "mallory");

  intact = true;
  const ok = await cli(["audit", "verify"]);
  assert.equal(ok.code, 0);
  assert.match(ok.stdout, /✓ audit log intact: 3 entries checked/);
});

test("audit export: JSON lines verbatim to stdout or to --out; --since converted to ISO in the query", async () => {
  routes = { "/v1/ExportAudit": (_r, res) => streamEvents(res, AUDIT_LINES) };
  const toStdout = await cli(["audit", "export", "--since", "2024-04-30T00:00:00Z", "--actor", "alice"]);
  assert.equal(toStdout.code, 0, toStdout.stderr);
  assert.deepEqual(
    toStdout.stdout
      .trimEnd()
      .split("\n")
      .map((l) => JSON.parse(l) as unknown),
    AUDIT_LINES,
  );
  const url = new URL(requests[0]?.url ?? "", "http://x");
  assert.equal(requests[0]?.method, "GET");
  assert.equal(url.searchParams.get("since"), "2024-04-30T00:00:00.000Z");
  assert.equal(url.searchParams.get("actor"), "alice");

  const dir = mkdtempSync(path.join(os.tmpdir(), "flotilla-cli-"));
  try {
    const file = path.join(dir, "audit.jsonl");
    const toFile = await cli(["audit", "export", "--out", file]);
    assert.equal(toFile.code, 0, toFile.stderr);
    assert.match(toFile.stdout, /exported 3 audit entries/);
    assert.equal(readFileSync(file, "utf8"), AUDIT_LINES.map((l) => `${JSON.stringify(l)}\n`).join(""));
    assert.deepEqual(readdirSync(dir), ["audit.jsonl"], "no partial file left behind");
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test("help and --version exit 0 without contacting the controller", async () => {
  const h = await cli(["--help"]);
  assert.equal(h.code, 0);
  for (const verb of [
    "targets",
    "diagnose",
    "backup",
    "backups",
    "restore",
    "plan",
    "rollout",
    "rollouts",
    "downgrade",
    "stamp",
    "schedule add",
    "schedules",
    "schedule rm",
    "audit verify",
    "audit export",
    "demo",
  ]) {
    assert.ok(h.stdout.includes(verb), `help lacks ${verb}`);
  }
  const sub = await cli(["help", "rollout"]);
  assert.equal(sub.code, 0);
  assert.match(sub.stdout, /--max-failures N/);
  const v = await cli(["--version"]);
  assert.equal(v.code, 0);
  assert.match(v.stdout, /^flotilla \d+\.\d+\.\d+\n$/);
  const vj = await cli(["--version", "--json"]);
  assert.match(String(oneJson(vj.stdout)["version"]), /^\d+\.\d+\.\d+$/);
  assert.equal(requests.length, 0);
});

test("an error line inside the watch stream ends following with that error's exit code", async () => {
  routes = {
    "/v1/WatchRollout": (_r, res) => streamEvents(res, [WATCH_EVENTS[0], { code: "PERMISSION_DENIED", message: "token revoked" }]),
  };
  const r = await cli(["rollout", "show", "r-1", "--follow"]);
  assert.equal(r.code, 3);
  assert.match(r.stderr, /PERMISSION_DENIED: token revoked/);
  assert.equal(requests.length, 1, "a refusal is not retried");
});

test("bin/flotilla.mjs runs the CLI and passes its exit code to the process", () => {
  const bin = fileURLToPath(new URL("../../bin/flotilla.mjs", import.meta.url));
  const v = spawnSync(process.execPath, [bin, "--version"], { encoding: "utf8", env: { ...process.env } });
  assert.equal(v.status, 0, v.stderr);
  assert.match(v.stdout, /^flotilla \d+\.\d+\.\d+\n$/);
  const bad = spawnSync(process.execPath, [bin, "diagnose"], { encoding: "utf8", env: { ...process.env } });
  assert.equal(bad.status, 2);
  assert.match(bad.stderr, /^flotilla: diagnose: missing TARGET/);
  assert.equal(bad.stdout, "");
});

test("rollout controls: rollback needs --yes (nothing sent); --wait follows to the end with the exit code of what was asked", async () => {
  const noYes = await cli(["rollout", "rollback", "r-1"]);
  assert.equal(noYes.code, 2);
  assert.match(noYes.stderr, /flotilla rollout rollback r-1 --yes/);
  assert.equal(requests.length, 0);

  const rolledBack = {
    ...rollout(
      "rolled-back",
      [
        ["rollback-restore", "succeeded"],
        ["rollback-verify", "succeeded"],
      ],
      "rolled-back",
    ),
    targets: [{ targetId: "webui-1", wave: 1, status: "rolled-back", revisionBefore: ["c3d2e1f00d42"], revisionAfter: ["c3d2e1f00d42"], steps: [] }],
  };
  routes = {
    "/v1/RollbackRollout": (r, res) => {
      assert.deepEqual(JSON.parse(r.body), { id: "r-1", yes: true });
      sendJson(res, 200, rollout("running", [["rollback-restore", "running"]]));
    },
    "/v1/WatchRollout": (_r, res) => streamEvents(res, [{ snapshot: rolledBack }]),
  };
  const rb = await cli(["rollout", "rollback", "r-1", "--yes", "--wait"]);
  assert.equal(rb.code, 0, rb.stderr);
  assert.match(rb.stdout, /where each database is now:\n.*\n\s*webui-1\s+c3d2e1f00d42\s+rolled-back/);

  routes = {
    "/v1/AbortRollout": (_r, res) => sendJson(res, 200, rollout("running", [["migrate", "running"]])),
    "/v1/WatchRollout": (_r, res) => streamEvents(res, [{ snapshot: rollout("aborted", [["migrate", "succeeded"]], "aborted") }]),
  };
  assert.equal((await cli(["rollout", "abort", "r-1", "--wait"])).code, 0, "an abort that ends aborted did what was asked");

  routes = {
    "/v1/ApproveRollout": (_r, res) => sendJson(res, 200, rollout("running", [["precheck", "pending"]])),
    "/v1/WatchRollout": (_r, res) =>
      streamEvents(res, [{ snapshot: { ...rollout("running", [["precheck", "succeeded"]]), waitingFor: "approval of wave 3: flotilla rollout approve r-1" } }]),
  };
  const approved = await cli(["rollout", "approve", "r-1", "--wait"]);
  assert.equal(approved.code, 0, "approve --wait stops at the next gate");
  assert.match(approved.stdout, /waiting for approval of wave 3/);

  routes = { "/v1/PauseRollout": (_r, res) => sendJson(res, 200, { ...rollout("running", [["migrate", "running"]]), paused: true }) };
  const paused = await cli(["rollout", "pause", "r-1"]);
  assert.equal(paused.code, 0);
  assert.match(paused.stdout, /paused: running steps finish, no new step starts · resume: flotilla rollout resume r-1/);
});
