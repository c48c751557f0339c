import { test } from "node:test";
import assert from "node:assert/strict";
import { FlotillaError } from "../common/errors.js";
import { loadControllerConfig } from "./config.js";
import { SqliteStore, openStore } from "./store/index.js";

function load(yaml: string, files: Record<string, string> = {}, env: Record<string, string> = {}) {
  return loadControllerConfig({
    argv: ["--config", "/etc/flotilla/controller.yaml"],
    env,
    readFile: (p) => {
      if (p === "/etc/flotilla/controller.yaml") return yaml;
      const v = files[p];
      if (v === undefined) throw Object.assign(new Error("ENOENT"), { code: "ENOENT" });
      return v;
    },
  });
}

test("defaults: loopback listeners, SQLite store under dataDir, audit key beside it", () => {
  const c = load("dataDir: /var/lib/flotilla\nagents:\n  - { id: a, address: 'host-a:7443' }\n");
  assert.equal(c.listen.http, "127.0.0.1:7441");
  assert.equal(c.store, "sqlite:////var/lib/flotilla/controller.db");
  assert.equal(c.auditKeyFile, "/var/lib/flotilla/audit.key");
  assert.equal(c.agents[0]!.address, "host-a:7443");
  assert.equal(c.tokens.length, 0);
});

test("tokens are read from files; a public listener without tokens is refused", () => {
  const c = load("listen: { http: '0.0.0.0:7441' }\ntokens:\n  - { name: alice, role: admin, file: /run/secrets/alice }\n", {
    "/run/secrets/alice": "0123456789abcdef0123\n",
  });
  assert.equal(c.tokens[0]!.value, "0123456789abcdef0123");
  assert.throws(() => load("listen: { http: '0.0.0.0:7441' }\n"), /tokens/);
  assert.equal(load("store: x\n", {}, { FLOTILLA_STORE: "postgresql://u@h/db" }).store, "postgresql://u@h/db");
});

test("every problem at once, with key paths", () => {
  try {
    load(`
listen: { grpc: nope }
store: mysql://x
agents: [{ id: a }]
tokens: [{ name: t, role: root, file: /missing }]
schedules: [{ name: s, cron: "* *", selector: "env", strategy: fast, window: forever }]
`);
    assert.fail("should throw");
  } catch (err) {
    assert.ok(err instanceof FlotillaError && err.code === "CONFIG_INVALID");
    for (const p of [
      "listen.grpc",
      "store",
      "agents[0].address",
      "tokens[0].role",
      "tokens[0].file",
      "schedules[0].cron",
      "schedules[0].selector",
      "schedules[0].strategy",
      "schedules[0].window",
    ]) {
      assert.ok(err.message.includes(p), `mentions ${p}:\n${err.message}`);
    }
  }
});

/** Every problem line of a config (what --check-config prints). */
function problemsOf(yaml: string, files: Record<string, string> = {}): string[] {
  try {
    load(yaml, files);
    return [];
  } catch (err) {
    assert.ok(err instanceof FlotillaError && err.code === "CONFIG_INVALID", String(err));
    return err.message
      .split("\n")
      .slice(1)
      .map((l) => l.replace(/^\s*- /, ""));
  }
}

test("a dozen mistakes at every depth in one report: unknown keys with the nearest known key, a store URL without a file, ports, duplicates", () => {
  const problems = problemsOf(
    `
listen: { grpc: "127.0.0.1:99999", htp: "127.0.0.1:7441" }
store: "sqlite:///"
auditKeyFiel: /x
logLevel: loud
tls: { cert: c.pem, key: k.pem, ca: ca.pem, cA: x }
httpTls: { cert: h.pem }
agents:
  - { id: a, address: "host-a:7443", identty: spiffe://flotilla/agent/a }
  - { id: a, address: "host-b:70000" }
tokens:
  - { name: t, role: admin, file: /t1 }
  - { name: t, role: viewer, file: /t2, rol: admin }
`,
    { "/t1": "0123456789abcdef0123", "/t2": "fedcba9876543210fedc" },
  );
  const expect: [string, RegExp][] = [
    ["listen.grpc", /port 99999 is out of range/],
    ["listen.htp", /did you mean "http"/],
    ["store", /no file path/],
    ["auditKeyFiel", /did you mean "auditKeyFile"/],
    ["logLevel", /not a log level/],
    ["tls.cA", /did you mean "ca"/],
    ["httpTls.key", /is required/],
    ["agents[0].identty", /did you mean "identity"/],
    ["agents[1].id", /listed twice/],
    ["agents[1].address", /port 70000 is out of range/],
    ["tokens[1].name", /used by two tokens/],
    ["tokens[1].rol", /did you mean "role"/],
  ];
  for (const [path, re] of expect) {
    assert.ok(
      problems.some((p) => p.startsWith(`${path}: `) && re.test(p)),
      `expected ${path} ${re}; got:\n${problems.join("\n")}`,
    );
  }
});

test("keys other helpers build on are accepted: httpTls and agents[].identity", () => {
  const c = load(`
httpTls: { cert: /t/http.pem, key: /t/http-key.pem }
agents: [{ id: host-b, address: "10.0.0.7:7443", identity: "spiffe://flotilla/agent/host-b" }]
`);
  assert.deepEqual(c.httpTls, { cert: "/t/http.pem", key: "/t/http-key.pem" });
  assert.equal(c.agents[0]!.identity, "spiffe://flotilla/agent/host-b");
  assert.equal(load("store: sqlite:////srv/c.db\n").store, "sqlite:////srv/c.db");
});

test("the store URL keeps the contract's spelling: sqlite:///var/lib/… is the absolute file, as openStore reads it", () => {
  assert.equal(load("store: sqlite:///var/lib/flotilla/controller.db\n").store, "sqlite:///var/lib/flotilla/controller.db");
  assert.equal(openStore("sqlite:///var/lib/flotilla/controller.db") instanceof SqliteStore, true);
});
