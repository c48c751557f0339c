/**
 * The daemons' own config checks, run as real processes: `--check-config`
 * lists every problem of a config with a dozen mistakes and exits 2 (both
 * daemons), exits 0 on the shipped examples and on a config whose files
 * exist, and starts nothing; a daemon whose port is taken exits non-zero with
 * a clear message instead of staying up.
 */
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { createServer, type Server } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { stringify } from "yaml";
import { FIXTURE_DIR, ROOT, run } from "../helpers/fleet.js";

const AGENT = join(ROOT, "bin/flotilla-agent.mjs");
const CONTROLLER = join(ROOT, "bin/flotilla-controller.mjs");
let dir: string;

before(() => {
  dir = mkdtempSync(join(tmpdir(), "flotilla-check-"));
});

after(() => {
  rmSync(dir, { recursive: true, force: true });
});

function write(name: string, text: string): string {
  const p = join(dir, name);
  writeFileSync(p, text);
  return p;
}

/** The problem lines of a report. */
const problemLines = (stdout: string): string[] => stdout.split("\n").filter((l) => l.startsWith("  - "));

test("flotilla-agent --check-config lists every one of a dozen mistakes and exits 2, starting nothing", async () => {
  const dataDir = join(dir, "agent-data-never-created");
  const config = write(
    "agent-bad.yaml",
    `
listen: 127.0.0.1:70000
dataDir: ${dataDir}
logLevel: chatty
tls: { cert: a.pem, key: k.pem, ca: ca.pem, alow: [x] }
targets:
  - id: webui-1
    databse: sqlite:////x.db
    alembic: { dir: /app, comand: [alembic] }
    backups: { dir: /b, kep: 3 }
  - id: webui-1
    database: sqlite:///data/webui.db
    alembic: { dir: /app }
    backups: { dir: /b }
apps:
  - { id: a, target: webui-1, stopp: [x] }
  - { id: a, target: webui-1 }
`,
  );
  const r = await run([process.execPath, AGENT, "--check-config", "--config", config]);
  assert.equal(r.code, 2, r.stdout + r.stderr);
  const lines = problemLines(r.stdout);
  for (const re of [
    /listen: port 70000 is out of range/,
    /logLevel: "chatty"/,
    /tls\.alow: .*did you mean "allow"/,
    /targets\[0\]\.databse: .*did you mean "database"/,
    /targets\[0\]\.database: is required/,
    /targets\[0\]\.alembic\.comand: .*did you mean "command"/,
    /targets\[0\]\.backups\.kep: .*did you mean "keep"/,
    /targets\[1\]\.id: "webui-1" is used by two targets/,
    /targets\[1\]\.database: .*relative path.*sqlite:\/\/\/\/data\/webui\.db/,
    /apps\[0\]\.stopp: .*did you mean "stop"/,
    /apps\[1\]\.id: "a" is used by two apps/,
    /tls\.cert: .* does not exist/,
  ]) {
    assert.ok(
      lines.some((l) => re.test(l)),
      `expected ${re} in:\n${r.stdout}`,
    );
  }
  assert.ok(lines.length >= 12, r.stdout);
  assert.match(r.stdout, new RegExp(`^${config.replace(/[.*+?^${}()|[\]\\]/g, "\\$&")}: ${lines.length} problems$`, "m"));
  assert.equal(existsSync(dataDir), false, "nothing was started or created");
});

test("flotilla-controller --check-config lists every one of a dozen mistakes and exits 2", async () => {
  const config = write(
    "controller-bad.yaml",
    `
listen: { grpc: "127.0.0.1:99999", htp: "127.0.0.1:7441" }
store: "sqlite:///"
dataDir: ${join(dir, "ctl-data-never-created")}
auditKeyFiel: /x
logLevel: loud
tls: { cert: c.pem, key: k.pem, ca: ca.pem, cA: x }
httpTls: { cert: h.pem }
agents:
  - { id: a, address: "host-a:7443", identty: spiffe://flotilla/agent/a }
  - { id: a, address: "host-b:70000" }
tokens:
  - { name: t, role: boss, file: ${join(dir, "no-such-token")} }
schedules:
  - { name: s, cron: "* *", selector: "env", strategy: fast, window: forever }
`,
  );
  const r = await run([process.execPath, CONTROLLER, "--check-config", "--config", config]);
  assert.equal(r.code, 2, r.stdout + r.stderr);
  const lines = problemLines(r.stdout);
  for (const re of [
    /listen\.grpc: port 99999 is out of range/,
    /listen\.htp: .*did you mean "http"/,
    /store: .*no file path/,
    /auditKeyFiel: .*did you mean "auditKeyFile"/,
    /logLevel: "loud"/,
    /tls\.cA: .*did you mean "ca"/,
    /httpTls\.key: is required/,
    /agents\[0\]\.identty: .*did you mean "identity"/,
    /agents\[1\]\.id: .*listed twice/,
    /agents\[1\]\.address: port 70000 is out of range/,
    /tokens\[0\]\.role/,
    /tokens\[0\]\.file: cannot read/,
    /schedules\[0\]\.cron/,
    /schedules\[0\]\.selector/,
    /schedules\[0\]\.strategy/,
    /schedules\[0\]\.window/,
  ]) {
    assert.ok(
      lines.some((l) => re.test(l)),
      `expected ${re} in:\n${r.stdout}`,
    );
  }
  assert.equal(existsSync(join(dir, "ctl-data-never-created")), false);
});

const EXAMPLES = [
  "examples/agent-sqlite.yaml",
  "examples/agent-postgres.yaml",
  "examples/agent-blue-green.yaml",
  "compose/agent.yaml",
  "examples/controller.yaml",
  "examples/controller-postgres.yaml",
  "compose/controller.yaml",
];

test("--check-config --offline exits 0 on every config shipped in deploy/; on this host it names the files that are not here", async () => {
  for (const rel of EXAMPLES) {
    const bin = rel.includes("agent") ? AGENT : CONTROLLER;
    const file = join(ROOT, "deploy", rel);
    const r = await run([process.execPath, bin, "--check-config", "--offline", "--config", file]);
    assert.equal(r.code, 0, `${rel}: ${r.stdout}${r.stderr}`);
    assert.match(r.stdout, /: ok \(/);
  }
  // Checked on a host without its files, the example names each missing one and says how to check the content only.
  const r = await run([process.execPath, AGENT, "--check-config", "--config", join(ROOT, "deploy/examples/agent-sqlite.yaml")]);
  assert.equal(r.code, 2);
  assert.match(r.stdout, /tls\.cert: \/etc\/flotilla\/tls\/agent\.pem does not exist/);
  assert.match(
    r.stdout,
    /target webui-1: alembic\.env\.WEBUI_SECRET_KEY: secret file \/etc\/flotilla\/secrets\/webui-secret-key does not exist \(the agent would serve it as broken\)/,
  );
  assert.match(r.stdout, /add --offline/);
});

test("--check-config exits 0 on a config whose files exist here, and names an empty secret file as a broken target", async () => {
  const secret = write("webui_secret_key", "a-real-looking-key\n");
  mkdirSync(join(dir, "data"), { recursive: true });
  const cfg = {
    listen: "127.0.0.1:0",
    dataDir: join(dir, "agent-data"),
    targets: [
      {
        id: "w",
        database: `sqlite:///${join(dir, "data", "w.db")}`,
        alembic: { dir: FIXTURE_DIR, env: { WEBUI_SECRET_KEY: { file: secret } } },
        backups: { dir: join(dir, "backups") },
      },
    ],
  };
  const good = write("agent-good.yaml", stringify(cfg));
  const ok = await run([process.execPath, AGENT, "--check-config", "--config", good]);
  assert.equal(ok.code, 0, ok.stdout + ok.stderr);
  assert.match(ok.stdout, /: ok \(1 target, 0 apps\)/);
  assert.equal(existsSync(join(dir, "agent-data")), false, "check-config creates nothing");
  writeFileSync(secret, "");
  const bad = await run([process.execPath, AGENT, "--check-config", "--config", good]);
  assert.equal(bad.code, 2);
  assert.match(bad.stdout, /target w: alembic\.env\.WEBUI_SECRET_KEY: secret file .* is empty \(the agent would serve it as broken\); fix: write/);

  const ctl = write(
    "controller-good.yaml",
    stringify({ listen: { grpc: "127.0.0.1:0", http: "127.0.0.1:0" }, dataDir: join(dir, "ctl-data"), agents: [{ id: "a", address: "127.0.0.1:7443" }] }),
  );
  const c = await run([process.execPath, CONTROLLER, "--check-config", "--config", ctl]);
  assert.equal(c.code, 0, c.stdout + c.stderr);
  assert.equal(existsSync(join(dir, "ctl-data")), false);
});

async function holdPort(): Promise<{ server: Server; port: number }> {
  const server = createServer();
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", () => r()));
  return { server, port: (server.address() as { port: number }).port };
}

test("an agent whose port is taken exits non-zero with a clear message instead of staying up", async () => {
  const held = await holdPort();
  try {
    const secret = write("k2", "key\n");
    const config = write(
      "agent-port.yaml",
      stringify({
        listen: `127.0.0.1:${held.port}`,
        dataDir: join(dir, "agent-port-data"),
        targets: [
          {
            id: "w",
            database: `sqlite:///${join(dir, "data", "p.db")}`,
            alembic: { dir: FIXTURE_DIR, env: { WEBUI_SECRET_KEY: { file: secret } } },
            backups: { dir: join(dir, "backups-p") },
          },
        ],
      }),
    );
    const r = await run([process.execPath, AGENT, "--config", config], { timeoutMs: 60_000 });
    assert.notEqual(r.code, 0);
    assert.notEqual(r.code, -1, "it exited by itself (not killed at the timeout)");
    assert.match(r.stderr, new RegExp(`cannot listen for gRPC on 127\\.0\\.0\\.1:${held.port}: the port is already in use`));
  } finally {
    held.server.close();
  }
});

test("a controller whose HTTP port is taken exits non-zero with a clear message instead of staying up", async () => {
  const held = await holdPort();
  try {
    const dataDir = join(dir, "ctl-port-data");
    const config = write("controller-port.yaml", stringify({ listen: { grpc: "127.0.0.1:0", http: `127.0.0.1:${held.port}` }, dataDir }));
    const r = await run([process.execPath, CONTROLLER, "--config", config], { timeoutMs: 60_000 });
    assert.notEqual(r.code, 0);
    assert.notEqual(r.code, -1, "it exited by itself (not killed at the timeout)");
    assert.match(r.stderr, new RegExp(`cannot listen for the HTTP API on 127\\.0\\.0\\.1:${held.port}: the port is already in use`));
  } finally {
    held.server.close();
  }
});
