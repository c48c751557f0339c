import { test } from "node:test";
import assert from "node:assert/strict";
import { FlotillaError } from "../common/errors.js";
import { loadAgentConfig } from "./config.js";

const files: Record<string, string> = {
  "/etc/flotilla/secret": "s3cret-value\n",
  "/etc/flotilla/pg": "pg-pass\n",
};

function load(yaml: string, extra: { argv?: string[]; env?: Record<string, string> } = {}) {
  return loadAgentConfig({
    argv: ["--config", "/etc/flotilla/agent.yaml", ...(extra.argv ?? [])],
    env: extra.env ?? {},
    readFile: (p) => {
      if (p === "/etc/flotilla/agent.yaml") return yaml;
      const v = files[p];
      if (v === undefined) throw Object.assign(new Error("ENOENT"), { code: "ENOENT" });
      return v;
    },
    hostname: "host-x",
  });
}

const GOOD = `
listen: 127.0.0.1:7443
dataDir: /var/lib/flotilla-agent
targets:
  - id: webui-1
    labels: { env: prod }
    database: sqlite:////app/backend/data/webui.db
    alembic:
      dir: /app/backend/open_webui
      command: [/venv/bin/python, -m, alembic]
      env:
        WEBUI_SECRET_KEY: { file: /etc/flotilla/secret }
    backups: { dir: /backups/webui-1, keep: 3 }
  - id: webui-pg
    database: postgresql://webui@db:5432/webui
    passwordFile: /etc/flotilla/pg
    alembic: { dir: /app/backend/open_webui }
    backups: { dir: /backups/webui-pg }
apps:
  - { id: a, target: webui-1, stop: [systemctl, stop, open-webui], start: [systemctl, start, open-webui], health: "http://127.0.0.1:8080/health" }
`;

test("a valid config loads complete, with secrets read from files, and frozen", () => {
  const c = load(GOOD);
  assert.equal(c.agentId, "host-x");
  assert.equal(c.targets.length, 2);
  assert.equal(c.targets[0]!.kind, "sqlite");
  assert.equal(c.targets[0]!.alembic.env.WEBUI_SECRET_KEY, "s3cret-value");
  assert.deepEqual(c.targets[0]!.alembic.secretEnvNames, ["WEBUI_SECRET_KEY"]);
  assert.equal(c.targets[1]!.password, "pg-pass");
  assert.equal(c.targets[1]!.backups.keep, 10);
  assert.deepEqual(c.targets[1]!.alembic.command, ["alembic"]);
  assert.ok(Object.isFrozen(c) && Object.isFrozen(c.targets[0]!.alembic.env));
});

test("flag > env > file for the listen address", () => {
  assert.equal(load(GOOD, { env: { FLOTILLA_AGENT_LISTEN: "127.0.0.1:9000" } }).listen, "127.0.0.1:9000");
  assert.equal(load(GOOD, { env: { FLOTILLA_AGENT_LISTEN: "127.0.0.1:9000" }, argv: ["--listen", "127.0.0.1:9001"] }).listen, "127.0.0.1:9001");
});

test("every problem is reported at once, each with its key path", () => {
  const bad = `
listen: 0.0.0.0:7443
bogus: 1
targets:
  - id: "bad id!"
    database: mysql://x
    alembic: { dir: /x, env: { DATABASE_URL: nope, WEBUI_SECRET_KEY: { file: /missing } } }
    backups: { dir: /b, keep: 0 }
  - id: ok
    database: postgresql://u:hunter2@h/db
    alembic: { dir: /x }
`;
  try {
    load(bad);
    assert.fail("should throw");
  } catch (err) {
    assert.ok(err instanceof FlotillaError);
    assert.equal(err.code, "CONFIG_INVALID");
    for (const path of ["bogus", "tls", "targets[0].id", "targets[0].database", "targets[0].alembic.env.DATABASE_URL", "targets[0].alembic.env.WEBUI_SECRET_KEY.file", "targets[0].backups.keep", "targets[1].database", "targets[1].backups"]) {
      assert.ok(err.message.includes(path), `mentions ${path}:\n${err.message}`);
    }
    assert.equal(err.message.includes("hunter2"), false, "a password in a URL is never echoed");
  }
});

test("an agent that only runs app instances of another agent's target needs no targets", () => {
  const c = load(`
apps:
  - { id: b, target: shared-db, stop: [x], start: [y], health: "http://127.0.0.1:1/health" }
`);
  assert.equal(c.targets.length, 0);
  assert.equal(c.apps[0]!.target, "shared-db");
  assert.throws(() => load("listen: 127.0.0.1:1\n"), /at least one target/);
});

test("httpListen: loopback 7444 by default, settable by file, env and flag, off turns it off, bad values refused", () => {
  const def = load(GOOD);
  assert.equal(def.httpListen, "127.0.0.1:7444");
  assert.equal(def.httpListenExplicit, false);
  assert.equal(load(`${GOOD}\nhttpListen: 0.0.0.0:9000\n`).httpListen, "0.0.0.0:9000");
  assert.equal(load(GOOD, { env: { FLOTILLA_AGENT_HTTP_LISTEN: "127.0.0.1:0" } }).httpListen, "127.0.0.1:0");
  const flag = load(GOOD, { argv: ["--http-listen", "127.0.0.1:9100"] });
  assert.equal(flag.httpListen, "127.0.0.1:9100");
  assert.equal(flag.httpListenExplicit, true);
  assert.equal(load(`${GOOD}\nhttpListen: "off"\n`).httpListen, undefined);
  assert.throws(() => load(`${GOOD}\nhttpListen: nowhere\n`), (err: FlotillaError) => err.code === "CONFIG_INVALID" && /httpListen/.test(err.message));
});
