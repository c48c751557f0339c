import { test } from "node:test";
import assert from "node:assert/strict";
import { FlotillaError } from "../common/errors.js";
import { loadControllerConfig } from "./config.js";

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
  const c = load("listen: { http: '0.0.0.0:7441' }\ntokens:\n  - { name: alice, role: admin, file: /run/secrets/alice }\n", { "/run/secrets/alice": "0123456789abcdef0123\n" });
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
    for (const p of ["listen.grpc", "store", "agents[0].address", "tokens[0].role", "tokens[0].file", "schedules[0].cron", "schedules[0].selector", "schedules[0].strategy", "schedules[0].window"]) {
      assert.ok(err.message.includes(p), `mentions ${p}:\n${err.message}`);
    }
  }
});
