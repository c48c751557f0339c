import { test } from "node:test";
import assert from "node:assert/strict";
import { loadAgentConfig } from "./config.js";

function load(target: string) {
  const yaml = `
listen: 127.0.0.1:7443
dataDir: /var/lib/flotilla-agent
targets:
  - id: webui-1
    database: sqlite:////app/backend/data/webui.db
    alembic: { dir: /app/backend/open_webui }
${target}
`;
  return loadAgentConfig({
    argv: ["--config", "/etc/flotilla/agent.yaml"],
    env: {},
    readFile: (p) => {
      if (p === "/etc/flotilla/agent.yaml") return yaml;
      throw new Error("ENOENT");
    },
  });
}

test("backups.include, keepDays, appVersion and smoke are read", () => {
  const c =
    load(`    backups: { dir: /backups/webui-1, keep: 3, keepDays: 14, include: [/app/backend/data/uploads, /app/backend/data/vector_db, /app/backend/.webui_secret_key] }
    appVersion: [docker, inspect, -f, "{{.Config.Image}}", open-webui]
    smoke: ["SELECT count(*) FROM user;", "WITH x AS (SELECT 1) SELECT * FROM x"]`);
  const t = c.targets[0]!;
  assert.deepEqual(t.backups.include, ["/app/backend/data/uploads", "/app/backend/data/vector_db", "/app/backend/.webui_secret_key"]);
  assert.equal(t.backups.keepDays, 14);
  assert.deepEqual(t.appVersion, ["docker", "inspect", "-f", "{{.Config.Image}}", "open-webui"]);
  assert.deepEqual(t.smoke, ["SELECT count(*) FROM user;", "WITH x AS (SELECT 1) SELECT * FROM x"]);
});

test("without the keys: no companions, no app version, no smoke queries", () => {
  const t = load("    backups: { dir: /backups/webui-1 }").targets[0]!;
  assert.deepEqual(t.backups.include ?? [], []);
  assert.equal(t.backups.keepDays, undefined);
  assert.equal(t.appVersion, undefined);
  assert.deepEqual(t.smoke ?? [], []);
});

test("an include holding the database or overlapping the backups, a writing smoke query and a bad keepDays are all reported at once", () => {
  assert.throws(
    () =>
      load(`    backups: { dir: /backups/webui-1, keepDays: -1, include: [/app/backend/data, /backups, /srv/a, /srv/a/b] }
    smoke: ["DELETE FROM user", "SELECT 1; DROP TABLE user"]`),
    (err: Error) => {
      assert.match(err.message, /backups\.include\[0\].*contains the database file/);
      assert.match(err.message, /backups\.include\[1\].*overlaps the backups folder/);
      assert.match(err.message, /backups\.include\[3\].*overlaps another include path/);
      assert.match(err.message, /backups\.keepDays/);
      assert.match(err.message, /smoke\[0\].*read-only SELECT/);
      assert.match(err.message, /smoke\[1\].*read-only SELECT/);
      return true;
    },
  );
});
