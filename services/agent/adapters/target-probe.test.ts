// The facts that decide whether a target is servable, collected from the real
// file system, the real alembic on PATH and the real PostgreSQL server.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { chmodSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { NodeProcessRunner } from "../../common/process-runner.js";
import { createTestDatabase, type TestDatabase } from "../../../test/helpers/pg.js";
import type { TargetConfig } from "../config.js";
import { targetHealth } from "../core/target-health.js";
import { PostgresDatabase } from "./postgres-database.js";
import { SqliteDatabase } from "./sqlite-database.js";
import { commandFound, probeTarget } from "./target-probe.js";

let dir: string;
let pg: TestDatabase;

before(async () => {
  dir = mkdtempSync(join(tmpdir(), "flotilla-probe-"));
  pg = await createTestDatabase("probe");
});

after(async () => {
  await pg?.drop();
  rmSync(dir, { recursive: true, force: true });
});

function target(over: Partial<TargetConfig> & { alembicDir?: string; command?: string[] }): TargetConfig {
  return {
    id: "t",
    labels: {},
    kind: "sqlite",
    database: `sqlite:///${join(dir, "data", "w.db")}`,
    lockTimeoutMs: 5000,
    alembic: { dir: over.alembicDir ?? join(dir, "app"), command: over.command ?? ["alembic"], env: {}, secrets: {}, timeoutMs: 60_000 },
    backups: { dir: join(dir, "b"), keep: 3 },
    ...over,
  };
}

test("a SQLite target with its folder, alembic.ini and alembic on PATH is servable; each missing piece is named", async () => {
  mkdirSync(join(dir, "app"), { recursive: true });
  mkdirSync(join(dir, "data"), { recursive: true });
  writeFileSync(join(dir, "app", "alembic.ini"), "[alembic]\n");
  const t = target({});
  const db = SqliteDatabase.fromUrl(t.database);
  assert.deepEqual(targetHealth(await probeTarget(t, [], db)), { state: "ok", problems: [] });

  const noIni = target({ alembicDir: join(dir, "data") });
  assert.deepEqual(
    targetHealth(await probeTarget(noIni, [], db)).problems.map((p) => p.code),
    ["alembic-ini-missing"],
  );
  const noDir = target({ alembicDir: join(dir, "nope"), command: ["/no/such/python", "-m", "alembic"], database: `sqlite:///${join(dir, "gone", "w.db")}` });
  assert.deepEqual(
    targetHealth(await probeTarget(noDir, [], SqliteDatabase.fromUrl(noDir.database))).problems.map((p) => p.code),
    ["alembic-dir-missing", "alembic-command-missing", "database-folder-missing"],
  );
});

test("commandFound resolves names on PATH, absolute paths and paths relative to the Alembic folder, executables only", () => {
  assert.equal(commandFound("alembic", "/"), true);
  assert.equal(commandFound("no-such-command-flotilla", "/"), false);
  assert.equal(commandFound(process.execPath, "/"), true);
  const script = join(dir, "app", "run.sh");
  writeFileSync(script, "#!/bin/sh\n");
  assert.equal(commandFound("./run.sh", join(dir, "app")), false, "not executable");
  chmodSync(script, 0o755);
  assert.equal(commandFound("./run.sh", join(dir, "app")), true);
});

test("PostgreSQL: a reachable server is servable; a closed port is database-unreachable with the reason, and a missing password file skips the attempt", async () => {
  mkdirSync(join(dir, "app"), { recursive: true });
  writeFileSync(join(dir, "app", "alembic.ini"), "[alembic]\n");
  const runner = new NodeProcessRunner();
  const up = target({ kind: "postgresql", database: pg.url });
  const upFacts = await probeTarget(up, [], new PostgresDatabase({ url: pg.url, runner, scratchDir: dir }));
  assert.deepEqual(upFacts.database, { reachable: true, detail: "" });
  const closed = "postgresql://postgres@127.0.0.1:1/nothing";
  const down = await probeTarget(target({ kind: "postgresql", database: closed }), [], new PostgresDatabase({ url: closed, runner, scratchDir: dir }));
  assert.equal(down.database?.reachable, false);
  assert.match(down.database?.detail ?? "", /ECONNREFUSED|connect/);
  assert.deepEqual(
    targetHealth(down).problems.map((p) => p.code),
    ["database-unreachable"],
  );
  const noPw = await probeTarget(
    target({ kind: "postgresql", database: closed, passwordFile: "/nope" }),
    [{ key: "passwordFile", ref: { file: "/nope" }, state: "missing", detail: "ENOENT" }],
    new PostgresDatabase({ url: closed, runner, scratchDir: dir }),
  );
  assert.equal(noPw.database, undefined);
  assert.deepEqual(
    targetHealth(noPw).problems.map((p) => p.code),
    ["secret-missing"],
  );
});
