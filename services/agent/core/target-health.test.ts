import { test } from "node:test";
import assert from "node:assert/strict";
import { brokenFindings, brokenTargetError, problemLines, targetHealth, type TargetFacts } from "./target-health.js";
import { resolveSecrets, type SecretRead, type SecretRef, type SecretSource } from "./secrets.js";

const HEALTHY: TargetFacts = {
  targetId: "webui-1",
  kind: "sqlite",
  secretProblems: [],
  alembicDir: { path: "/app/open_webui", kind: "dir" },
  alembicIni: { path: "/app/open_webui/alembic.ini", kind: "file", configured: false },
  command: { argv0: "alembic", found: true },
  databaseFolder: { path: "/app/data", kind: "dir" },
};

test("a target whose files, secrets and database are all there is ok", () => {
  assert.deepEqual(targetHealth(HEALTHY), { state: "ok", problems: [] });
  assert.deepEqual(targetHealth({ ...HEALTHY, kind: "postgresql", databaseFolder: undefined as never, database: { reachable: true, detail: "" } }).state, "ok");
});

test("an empty WEBUI_SECRET_KEY file makes the target broken, saying to write the key with no restart needed", () => {
  const h = targetHealth({
    ...HEALTHY,
    secretProblems: [{ key: "alembic.env.WEBUI_SECRET_KEY", ref: { file: "/run/secrets/key" }, state: "empty", detail: "empty" }],
  });
  assert.equal(h.state, "broken");
  assert.equal(h.problems.length, 1);
  const p = h.problems[0]!;
  assert.equal(p.code, "secret-empty");
  assert.equal(p.key, "alembic.env.WEBUI_SECRET_KEY");
  assert.match(p.what, /secret file \/run\/secrets\/key is empty/);
  assert.match(p.fix, /write the secret WEBUI_SECRET_KEY into \/run\/secrets\/key/);
  assert.match(p.fix, /no restart needed/);
});

test("each kind of unsatisfiable config is its own problem with its own fix, in config order", () => {
  const h = targetHealth({
    ...HEALTHY,
    secretProblems: [
      { key: "alembic.env.WEBUI_SECRET_KEY", ref: { file: "/k" }, state: "missing", detail: "ENOENT" },
      { key: "alembic.env.API", ref: { env: "API_TOKEN" }, state: "unset", detail: "" },
      { key: "passwordFile", ref: { file: "/pw" }, state: "unreadable", detail: "EACCES" },
    ],
    alembicDir: { path: "/nope", kind: "missing" },
    command: { argv0: "/venv/bin/python", found: false },
    databaseFolder: { path: "/data", kind: "missing" },
  });
  assert.equal(h.state, "broken");
  assert.deepEqual(
    h.problems.map((p) => p.code),
    ["secret-missing", "secret-unset", "secret-unreadable", "alembic-dir-missing", "alembic-command-missing", "database-folder-missing"],
  );
  assert.match(h.problems[1]!.fix, /set API_TOKEN in the agent's environment.*restart the agent/);
  assert.match(h.problems[2]!.fix, /chmod 0640 \/pw/);
  assert.match(h.problems[3]!.fix, /set alembic\.dir/);
  assert.match(h.problems[5]!.fix, /four slashes/);
  for (const p of h.problems) assert.ok(p.fix.length > 20 && p.what.length > 10, JSON.stringify(p));
});

test("alembic.ini missing from an existing folder, and a configured ini, name the right key", () => {
  const missing = targetHealth({ ...HEALTHY, alembicIni: { path: "/app/open_webui/alembic.ini", kind: "missing", configured: false } });
  assert.deepEqual(
    missing.problems.map((p) => [p.code, p.key]),
    [["alembic-ini-missing", "alembic.dir"]],
  );
  assert.match(missing.problems[0]!.what, /no alembic\.ini in \/app\/open_webui/);
  const configured = targetHealth({ ...HEALTHY, alembicIni: { path: "/app/open_webui/other.ini", kind: "missing", configured: true } });
  assert.deepEqual(
    configured.problems.map((p) => [p.code, p.key]),
    [["alembic-ini-missing", "alembic.config"]],
  );
});

test("an unreachable PostgreSQL database is broken; a database that simply does not exist yet is not decided here", () => {
  const down = targetHealth({ ...HEALTHY, kind: "postgresql", database: { reachable: false, detail: "connect ECONNREFUSED 127.0.0.1:5999" } });
  assert.deepEqual(
    down.problems.map((p) => p.code),
    ["database-unreachable"],
  );
  assert.match(down.problems[0]!.what, /ECONNREFUSED/);
  assert.match(down.problems[0]!.fix, /pg_hba\.conf/);
});

test("the refusal, the status lines and the diagnose findings all carry every reason with its fix", () => {
  const h = targetHealth({
    ...HEALTHY,
    secretProblems: [{ key: "alembic.env.WEBUI_SECRET_KEY", ref: { file: "/k" }, state: "empty", detail: "" }],
    alembicDir: { path: "/x", kind: "missing" },
  });
  const err = brokenTargetError("webui-1", h.problems);
  assert.equal(err.code, "TARGET_BROKEN");
  assert.match(err.message, /target webui-1 is broken/);
  for (const p of h.problems) assert.ok(err.message.includes(p.what) && err.message.includes(p.fix), err.message);
  const lines = problemLines(h.problems);
  assert.equal(lines.length, 2);
  assert.match(lines[0]!, /is empty; fix: write/);
  const findings = brokenFindings("webui-1", h.problems);
  assert.deepEqual(
    findings.map((f) => [f.code, f.severity]),
    [
      ["secret-empty", "error"],
      ["alembic-dir-missing", "error"],
      ["checklist-deferred", "info"],
    ],
  );
  assert.ok(findings.every((f) => f.fix !== ""));
});

class FakeSecrets implements SecretSource {
  constructor(readonly values: Record<string, string | undefined>) {}
  read(ref: SecretRef): SecretRead {
    const key = "file" in ref ? ref.file : `$${ref.env}`;
    const v = this.values[key];
    if (v === undefined) return { ok: false, state: "file" in ref ? "missing" : "unset", detail: "ENOENT" };
    return v.trim() === "" ? { ok: false, state: "empty", detail: "" } : { ok: true, value: v.trim() };
  }
}

test("resolveSecrets reads every secret now and reports the unreadable ones by config key, never throwing", () => {
  const target = { passwordFile: "/pw", alembic: { secrets: { WEBUI_SECRET_KEY: { file: "/k" }, TOKEN: { env: "T" } } } };
  const ok = resolveSecrets(target, new FakeSecrets({ "/pw": "hunter2\n", "/k": "key-1", $T: "tok" }));
  assert.deepEqual(ok, { env: { WEBUI_SECRET_KEY: "key-1", TOKEN: "tok" }, password: "hunter2", problems: [] });
  const bad = resolveSecrets(target, new FakeSecrets({ "/k": "  " }));
  assert.deepEqual(bad.env, {});
  assert.equal(bad.password, undefined);
  assert.deepEqual(
    bad.problems.map((p) => [p.key, p.state]),
    [
      ["alembic.env.WEBUI_SECRET_KEY", "empty"],
      ["alembic.env.TOKEN", "unset"],
      ["passwordFile", "missing"],
    ],
  );
});
