import { test } from "node:test";
import assert from "node:assert/strict";
import { FlotillaError } from "../common/errors.js";
import { loadAgentConfig, parseDatabaseUrl } from "./config.js";

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

test("a valid config loads complete, secrets as references (read per operation, not at load), and frozen", () => {
  const reads: string[] = [];
  const c = loadAgentConfig({
    argv: ["--config", "/etc/flotilla/agent.yaml"],
    env: {},
    hostname: "host-x",
    readFile: (p) => {
      reads.push(p);
      if (p === "/etc/flotilla/agent.yaml") return GOOD;
      throw Object.assign(new Error("ENOENT"), { code: "ENOENT" });
    },
  });
  assert.deepEqual(reads, ["/etc/flotilla/agent.yaml"], "the loader reads only the config file");
  assert.equal(c.agentId, "host-x");
  assert.equal(c.targets.length, 2);
  assert.equal(c.targets[0]!.kind, "sqlite");
  assert.deepEqual(c.targets[0]!.alembic.secrets, { WEBUI_SECRET_KEY: { file: "/etc/flotilla/secret" } });
  assert.equal("WEBUI_SECRET_KEY" in c.targets[0]!.alembic.env, false);
  assert.equal(c.targets[1]!.passwordFile, "/etc/flotilla/pg");
  assert.equal(c.targets[1]!.backups.keep, 10);
  assert.deepEqual(c.targets[1]!.alembic.command, ["alembic"]);
  assert.ok(Object.isFrozen(c) && Object.isFrozen(c.targets[0]!.alembic.secrets));
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
    alembic: { dir: /x, env: { DATABASE_URL: nope, WEBUI_SECRET_KEY: { fil: /missing } } }
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
    for (const path of [
      "bogus",
      "tls",
      "targets[0].id",
      "targets[0].database",
      "targets[0].alembic.env.DATABASE_URL",
      "targets[0].alembic.env.WEBUI_SECRET_KEY.fil",
      "targets[0].backups.keep",
      "targets[1].database",
      "targets[1].backups",
    ]) {
      assert.ok(err.message.includes(path), `mentions ${path}:\n${err.message}`);
    }
    assert.equal(err.message.includes("hunter2"), false, "a password in a URL is never echoed");
  }
});

/** The problems of a config, one per line (what --check-config prints). */
function problemsOf(yaml: string): string[] {
  try {
    load(yaml);
    return [];
  } catch (err) {
    assert.ok(err instanceof FlotillaError && err.code === "CONFIG_INVALID", String(err));
    return err.message
      .split("\n")
      .slice(1)
      .map((l) => l.replace(/^\s*- /, ""));
  }
}

test("a dozen mistakes at every depth are all reported in one report, unknown keys with the nearest known key", () => {
  const problems = problemsOf(`
listen: 127.0.0.1:70000
logLevel: chatty
tls: { cert: a.pem, key: k.pem, ca: ca.pem, alow: [x] }
controller: { address: "http://127.0.0.1:7441", advertize: "127.0.0.1:7443" }
targets:
  - id: webui-1
    databse: sqlite:////x.db
    alembic: { dir: /app, comand: [alembic] }
    backups: { dir: /b, kep: 3 }
  - id: webui-1
    database: sqlite:///data/webui.db
    alembic: { dir: /app, env: { KEY: { file: /k, extra: 1 } } }
    backups: { dir: /b }
    blueGreen: { green: sqlite:////g.db, swich: [x] }
apps:
  - { id: a, target: webui-1, stopp: [x] }
  - { id: a, target: webui-1, health: "http://127.0.0.1:99999/health" }
`);
  const expect: [string, RegExp][] = [
    ["listen", /port 70000 is out of range/],
    ["logLevel", /not a log level/],
    ["tls.alow", /did you mean "allow"/],
    ["controller.advertize", /did you mean "advertise"/],
    ["targets[0].databse", /did you mean "database"/],
    ["targets[0].database", /is required/],
    ["targets[0].alembic.comand", /did you mean "command"/],
    ["targets[0].backups.kep", /did you mean "keep"/],
    ["targets[1].id", /used by two targets/],
    ["targets[1].database", /relative path.*sqlite:\/\/\/\/data\/webui\.db/],
    ["targets[1].alembic.env.KEY.extra", /unknown key/],
    ["targets[1].blueGreen.swich", /did you mean "switch"/],
    ["apps[0].stopp", /did you mean "stop"/],
    ["apps[1].id", /used by two apps/],
    ["apps[1].health", /port 99999 is out of range/],
  ];
  for (const [path, re] of expect) {
    assert.ok(
      problems.some((p) => p.startsWith(`${path}: `) && re.test(p)),
      `expected ${path} ${re}; got:\n${problems.join("\n")}`,
    );
  }
  assert.ok(problems.length >= expect.length, problems.join("\n"));
});

test("keys other helpers build on are accepted and type-checked: tls.allow, backups.keepDays/include, appVersion, smoke, controller.ca", () => {
  const c = load(`
listen: 127.0.0.1:7443
tls: { cert: /t/a.pem, key: /t/k.pem, ca: /t/ca.pem, allow: [spiffe://flotilla/controller] }
controller: { address: "http://127.0.0.1:7441", ca: /t/ca.pem }
targets:
  - id: w
    database: sqlite:////d/w.db
    alembic: { dir: /app }
    backups: { dir: /b, keep: 3, keepDays: 14, include: [/d/uploads, /d/vector_db] }
    appVersion: [docker, inspect, -f, "{{.Config.Image}}", open-webui]
    smoke: ["SELECT count(*) FROM user"]
`);
  assert.deepEqual(c.tls?.allow, ["spiffe://flotilla/controller"]);
  assert.equal(c.controller?.ca, "/t/ca.pem");
  const t = c.targets[0]!;
  assert.equal(t.backups.keepDays, 14);
  assert.deepEqual(t.backups.include, ["/d/uploads", "/d/vector_db"]);
  assert.deepEqual(t.appVersion, ["docker", "inspect", "-f", "{{.Config.Image}}", "open-webui"]);
  assert.deepEqual(t.smoke, ["SELECT count(*) FROM user"]);
  const problems = problemsOf(`
targets:
  - id: w
    database: sqlite:////d/w.db
    alembic: { dir: /app }
    backups: { dir: /b, keepDays: -1, include: [relative/path] }
    appVersion: "docker inspect"
    smoke: [1]
`);
  for (const path of ["targets[0].backups.keepDays", "targets[0].backups.include[0]", "targets[0].appVersion", "targets[0].smoke"]) {
    assert.ok(
      problems.some((p) => p.startsWith(`${path}: `)),
      `expected ${path}; got:\n${problems.join("\n")}`,
    );
  }
});

test("SQLite URLs: four slashes (absolute) load; three (relative), none and :memory: are refused with the fix", () => {
  assert.equal(parseDatabaseUrl("sqlite:////app/backend/data/webui.db").toString(), "[object Object]");
  for (const [url, re] of [
    ["sqlite:///data/webui.db", /relative path.*sqlite:\/\/\/\/data\/webui\.db/],
    ["sqlite:///", /no file path.*four slashes/],
    ["sqlite:///:memory:", /in-memory/],
    ["sqlite://x.db", /four slashes/],
    ["postgresql://u@h:99999/db", /out of range/],
  ] as const) {
    const r = parseDatabaseUrl(url);
    assert.equal(typeof r, "string", url);
    assert.match(r as string, re);
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
  assert.throws(
    () => load(`${GOOD}\nhttpListen: nowhere\n`),
    (err: FlotillaError) => err.code === "CONFIG_INVALID" && /httpListen/.test(err.message),
  );
});

test("YAML syntax errors stop the load with every one of them listed by line, duplicate keys included", () => {
  try {
    load("listen: 127.0.0.1:7443\nlisten: 127.0.0.1:7444\ntargets: [1, 2\napps: {x: 1\n");
    assert.fail("should throw");
  } catch (err) {
    assert.ok(err instanceof FlotillaError && err.code === "CONFIG_INVALID", String(err));
    assert.match(err.message, /^\/etc\/flotilla\/agent\.yaml is not valid YAML \(3 problems\):/);
    const lines = err.message.split("\n").slice(1);
    assert.equal(lines.length, 3, err.message);
    assert.match(lines[0]!, /line 2: Map keys must be unique/);
    assert.match(lines[1]!, /line \d+: Flow sequence/);
    assert.match(lines[2]!, /line \d+: Flow map/);
  }
});
