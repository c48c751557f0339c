/**
 * Tokens with roles on the controller's API, agent registration with a
 * heartbeat, and mTLS between the controller and an agent with certificates
 * generated here.
 */
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync, spawn, type ChildProcess } from "node:child_process";
import { mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { stringify } from "yaml";
import { Fleet, ROOT, FIXTURE_DIR, freePort } from "../helpers/fleet.js";
import { AgentService } from "../../services/common/gen/flotilla/v1/agent_pb.js";
import { channelCredentials, createClient } from "../../services/common/grpc-bridge.js";

const TOKENS = { viewer: "viewer-token-0123456789", operator: "operator-token-0123456789", admin: "admin-token-0123456789abc" };
let fleet: Fleet;
const extra: ChildProcess[] = [];

before(async () => {
  fleet = new Fleet({ agents: ["r1"], noController: true, targets: [{ id: "auth-1", kind: "sqlite", owner: "r1", labels: { env: "auth" } }] });
  await fleet.start();
  await fleet.startController({ tokens: Object.entries(TOKENS).map(([role, value]) => ({ name: `${role}-user`, role, value })) });
});

after(async () => {
  for (const p of extra) p.kill("SIGKILL");
  await fleet?.stop();
});

test("no token → exit 3; viewer reads but cannot start a rollout; admin can", async () => {
  const none = await fleet.cli(["targets"]);
  assert.equal(none.code, 3);
  assert.match(none.stderr, /token/);
  const wrong = await fleet.cli(["targets"], { FLOTILLA_TOKEN: "not-a-valid-token-at-all" });
  assert.equal(wrong.code, 3);
  const viewer = await fleet.cli(["targets"], { FLOTILLA_TOKEN: TOKENS.viewer });
  assert.equal(viewer.code, 0, viewer.stderr);
  assert.match(viewer.stdout, /auth-1/);
  const denied = await fleet.cli(["rollout", "--selector", "env=auth", "--strategy", "maintenance"], { FLOTILLA_TOKEN: TOKENS.viewer });
  assert.equal(denied.code, 3);
  assert.match(denied.stderr, /operator/);
  const stampDenied = await fleet.cli(["stamp", "auth-1", "c3d2e1f00d42", "--reason", "imported-backup"], { FLOTILLA_TOKEN: TOKENS.operator });
  assert.equal(stampDenied.code, 3);
  const audit = await fleet.cliJson<{ entries: { actor: string; outcome: string; action: string }[] }>(["audit", "--action", "api.StartRollout"], {
    FLOTILLA_TOKEN: TOKENS.admin,
  });
  assert.ok(
    audit.doc.entries.some((e) => e.outcome === "denied"),
    "denied calls are audited",
  );
  assert.equal(JSON.stringify(audit.doc).includes(TOKENS.viewer), false, "tokens never reach the audit log");
  assert.equal(fleet.logs().includes(TOKENS.admin), false);
});

test("an agent registers itself with the controller (with its token) and shows up in the inventory", async () => {
  const dir = join(fleet.dir, "reg");
  mkdirSync(dir, { recursive: true });
  writeFileSync(join(dir, "token"), TOKENS.operator, { mode: 0o600 });
  writeFileSync(join(dir, "secret"), "x".repeat(32), { mode: 0o600 });
  const cfg = join(dir, "agent.yaml");
  writeFileSync(
    cfg,
    stringify({
      agentId: "reg-1",
      listen: "127.0.0.1:0",
      dataDir: join(dir, "data"),
      controller: { address: fleet.controllerUrl, advertise: "127.0.0.1:0", heartbeatSeconds: 1, tokenFile: join(dir, "token") },
      targets: [
        {
          id: "reg-target",
          labels: { env: "reg" },
          database: `sqlite:///${join(dir, "reg.db")}`,
          alembic: { dir: FIXTURE_DIR, env: { WEBUI_SECRET_KEY: { file: join(dir, "secret") } } },
          backups: { dir: join(dir, "backups") },
        },
      ],
    }),
  );
  const p = spawn(process.execPath, [join(ROOT, "bin/flotilla-agent.mjs"), "--config", cfg], { stdio: "ignore" });
  extra.push(p);
  const deadline = Date.now() + 60_000;
  let found = false;
  while (!found && Date.now() < deadline) {
    const r = await fleet.cliJson<{ agents: { id: string; source: string; state: string }[]; targets: { targetId: string }[] }>(["targets"], {
      FLOTILLA_TOKEN: TOKENS.viewer,
    });
    found =
      r.doc.agents.some((a) => a.id === "reg-1" && a.source === "registered" && a.state === "up") && r.doc.targets.some((t) => t.targetId === "reg-target");
    if (!found) await new Promise((res) => setTimeout(res, 500));
  }
  assert.ok(found, "registered agent and its target appear in the inventory");
});

test("mTLS: the agent accepts the controller's certificate and rejects clients without one or from another CA", async () => {
  const dir = join(fleet.dir, "tls");
  mkdirSync(dir, { recursive: true });
  const ssl = (args: string[]): void => {
    execFileSync("openssl", args, { cwd: dir, stdio: "ignore" });
  };
  const makeCa = (name: string): void =>
    ssl(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", `/CN=${name}`, "-keyout", `${name}.key`, "-out", `${name}.pem`]);
  const makeCert = (ca: string, name: string, san: string): void => {
    ssl(["req", "-newkey", "rsa:2048", "-nodes", "-subj", `/CN=${name}`, "-keyout", `${name}.key`, "-out", `${name}.csr`]);
    writeFileSync(join(dir, `${name}.ext`), `subjectAltName=${san}\n`);
    ssl([
      "x509",
      "-req",
      "-in",
      `${name}.csr`,
      "-CA",
      `${ca}.pem`,
      "-CAkey",
      `${ca}.key`,
      "-CAcreateserial",
      "-days",
      "2",
      "-extfile",
      `${name}.ext`,
      "-out",
      `${name}.pem`,
    ]);
  };
  makeCa("ca");
  makeCa("rogue");
  makeCert("ca", "agent", "DNS:localhost,IP:127.0.0.1");
  makeCert("ca", "controller", "DNS:flotilla-controller");
  makeCert("rogue", "intruder", "DNS:flotilla-controller");
  writeFileSync(join(dir, "secret"), "x".repeat(32), { mode: 0o600 });
  const port = await freePort();
  const cfg = join(dir, "agent.yaml");
  writeFileSync(
    cfg,
    stringify({
      agentId: "tls-1",
      listen: `127.0.0.1:${port}`,
      dataDir: join(dir, "data"),
      tls: { cert: join(dir, "agent.pem"), key: join(dir, "agent.key"), ca: join(dir, "ca.pem"), allow: ["flotilla-controller"] },
      targets: [
        {
          id: "tls-target",
          database: `sqlite:///${join(dir, "t.db")}`,
          alembic: { dir: FIXTURE_DIR, env: { WEBUI_SECRET_KEY: { file: join(dir, "secret") } } },
          backups: { dir: join(dir, "backups") },
        },
      ],
    }),
  );
  const p = spawn(process.execPath, [join(ROOT, "bin/flotilla-agent.mjs"), "--config", cfg], {
    stdio: "ignore",
    env: { ...process.env, FLOTILLA_PORT_FILE: join(dir, "port") },
  });
  extra.push(p);
  const deadline = Date.now() + 60_000;
  while (Date.now() < deadline) {
    try {
      readFileSync(join(dir, "port"));
      break;
    } catch {
      await new Promise((r) => setTimeout(r, 100));
    }
  }
  const files = (cert: string, ca = "ca") => ({
    cert: readFileSync(join(dir, `${cert}.pem`)),
    key: readFileSync(join(dir, `${cert}.key`)),
    ca: readFileSync(join(dir, `${ca}.pem`)),
  });
  const good = createClient(AgentService, `127.0.0.1:${port}`, channelCredentials(files("controller")));
  const info = await good.getInfo({}, { timeoutMs: 10_000 });
  assert.equal(info.agentId, "tls-1");
  good.close();
  const plain = createClient(AgentService, `127.0.0.1:${port}`, channelCredentials());
  await assert.rejects(plain.getInfo({}, { timeoutMs: 5000 }));
  plain.close();
  const { credentials } = await import("@grpc/grpc-js");
  const noCert = createClient(AgentService, `127.0.0.1:${port}`, credentials.createSsl(readFileSync(join(dir, "ca.pem"))));
  await assert.rejects(noCert.getInfo({}, { timeoutMs: 5000 }), "a client without a certificate is rejected");
  noCert.close();
  const rogue = createClient(AgentService, `127.0.0.1:${port}`, channelCredentials({ ...files("intruder", "rogue"), ca: readFileSync(join(dir, "ca.pem")) }));
  await assert.rejects(rogue.getInfo({}, { timeoutMs: 5000 }), "a certificate from another CA is rejected");
  rogue.close();
});
