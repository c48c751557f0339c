import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { AgentTarget, TargetConfig } from "./config.js";
import { NodeSecretSource } from "./adapters/secret-source.js";
import type { DatabaseAdapter } from "./core/ports.js";
import type { TargetRuntime } from "./operations/index.js";
import { TargetRegistry } from "./target-registry.js";

function targetWith(secretFile: string, passwordFile?: string): TargetConfig {
  return {
    id: "webui-1",
    labels: {},
    kind: passwordFile ? "postgresql" : "sqlite",
    database: "sqlite:////tmp/w.db",
    lockTimeoutMs: 5000,
    ...(passwordFile ? { passwordFile } : {}),
    alembic: { dir: "/app", command: ["alembic"], env: { DATA_DIR: "/data" }, secrets: { WEBUI_SECRET_KEY: { file: secretFile } }, timeoutMs: 60_000 },
    backups: { dir: "/b", keep: 3 },
  };
}

function registry(targets: TargetConfig[]): { reg: TargetRegistry; builds: AgentTarget[] } {
  const builds: AgentTarget[] = [];
  const reg = new TargetRegistry(targets, {
    secrets: new NodeSecretSource({}),
    build: (t) => {
      builds.push(t);
      return { config: t, db: {} as DatabaseAdapter } as unknown as TargetRuntime;
    },
    probe: async (t, secretProblems) => ({
      targetId: t.id,
      kind: t.kind,
      secretProblems,
      alembicDir: { path: t.alembic.dir, kind: "dir" },
      alembicIni: { path: `${t.alembic.dir}/alembic.ini`, kind: "file", configured: false },
      command: { argv0: "alembic", found: true },
    }),
  });
  return { reg, builds };
}

test("secrets are read at each operation: a rotated WEBUI_SECRET_KEY file is used by the next operation, no restart", async () => {
  const dir = mkdtempSync(join(tmpdir(), "flotilla-secrets-"));
  try {
    const key = join(dir, "webui_secret_key");
    writeFileSync(key, "first-key-value\n");
    const { reg, builds } = registry([targetWith(key)]);
    const first = reg.get("webui-1")!;
    assert.equal(first.config.alembic.env.WEBUI_SECRET_KEY, "first-key-value");
    assert.equal(first.config.alembic.env.DATA_DIR, "/data");
    assert.deepEqual(first.config.alembic.secretEnvNames, ["WEBUI_SECRET_KEY"]);
    // Unchanged secrets: the same runtime (its cached revision graph) is kept.
    assert.equal(reg.get("webui-1"), first);
    assert.equal(builds.length, 1);

    writeFileSync(key, "rotated-key-value\n");
    const second = reg.get("webui-1")!;
    assert.notEqual(second, first);
    assert.equal(second.config.alembic.env.WEBUI_SECRET_KEY, "rotated-key-value");
    assert.equal(builds.length, 2);

    // Emptied: the target turns broken at once, and back to ok when the key is written again.
    writeFileSync(key, "");
    const broken = await reg.check("webui-1");
    assert.equal(broken?.state, "broken");
    assert.deepEqual(
      broken?.problems.map((p) => p.code),
      ["secret-empty"],
    );
    assert.equal("WEBUI_SECRET_KEY" in reg.get("webui-1")!.config.alembic.env, false, "an unreadable secret is never passed on as empty");
    writeFileSync(key, "third-key-value");
    assert.equal((await reg.check("webui-1"))?.state, "ok");
    assert.equal(reg.get("webui-1")!.config.alembic.env.WEBUI_SECRET_KEY, "third-key-value");
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test("a rotated database password is used by the next operation; a missing password file is a problem of that target only", async () => {
  const dir = mkdtempSync(join(tmpdir(), "flotilla-secrets-"));
  try {
    const key = join(dir, "k");
    const pw = join(dir, "pw");
    writeFileSync(key, "k1");
    writeFileSync(pw, "old-password");
    const other = { ...targetWith(key), id: "webui-2" };
    const { reg } = registry([targetWith(key, pw), other]);
    assert.equal(reg.get("webui-1")!.config.password, "old-password");
    writeFileSync(pw, "new-password\n");
    assert.equal(reg.get("webui-1")!.config.password, "new-password");
    rmSync(pw);
    assert.deepEqual(
      (await reg.check("webui-1"))?.problems.map((p) => [p.code, p.key]),
      [["secret-missing", "passwordFile"]],
    );
    assert.equal((await reg.check("webui-2"))?.state, "ok");
    assert.equal(await reg.check("nope"), undefined);
    assert.deepEqual([...reg.keys()], ["webui-1", "webui-2"]);
    assert.equal(reg.size, 2);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
