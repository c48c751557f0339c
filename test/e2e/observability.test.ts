/**
 * Observability end to end: the controller's and the agent's Prometheus
 * /metrics scraped and parsed, grpc.health.v1.Health/Check on both daemons,
 * the agent's /healthz and /readyz, and the audit policy for reads.
 */
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { channelCredentials } from "../../services/common/grpc-bridge.js";
import { checkGrpcHealth } from "../../services/common/grpc-health.js";
import { Fleet } from "../helpers/fleet.js";

let fleet: Fleet;
let agentGrpc = 0;
let agentHttp = 0;
let controllerGrpc = 0;

interface Sample {
  name: string;
  labels: Record<string, string>;
  value: number;
}

/** Parses the Prometheus text exposition format (samples only; HELP/TYPE lines checked for shape). */
function parseProm(text: string): { samples: Sample[]; types: Map<string, string> } {
  const samples: Sample[] = [];
  const types = new Map<string, string>();
  for (const line of text.split("\n")) {
    if (line === "") continue;
    if (line.startsWith("# TYPE ")) {
      const [, , name, type] = line.split(" ");
      types.set(name!, type!);
      continue;
    }
    if (line.startsWith("#")) {
      assert.match(line, /^# HELP [a-zA-Z_:][a-zA-Z0-9_:]* .+/, `bad comment line: ${line}`);
      continue;
    }
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$/.exec(line);
    assert.ok(m, `not a Prometheus sample line: ${line}`);
    const labels: Record<string, string> = {};
    for (const l of (m[2] ?? "").matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g)) labels[l[1]!] = l[2]!;
    const value = m[3] === "+Inf" ? Infinity : Number(m[3]);
    assert.ok(!Number.isNaN(value), `sample value is not a number: ${line}`);
    samples.push({ name: m[1]!, labels, value });
  }
  return { samples, types };
}

function sample(samples: Sample[], name: string, labels: Record<string, string> = {}): number | undefined {
  return samples.find((s) => s.name === name && Object.entries(labels).every(([k, v]) => s.labels[k] === v))?.value;
}

before(async () => {
  fleet = new Fleet({
    agents: ["o1"],
    agentEnv: { FLOTILLA_AGENT_HTTP_LISTEN: "127.0.0.1:0" },
    targets: [{ id: "obs-1", kind: "sqlite", owner: "o1", labels: { env: "obs" }, apps: [{ agent: "o1" }] }],
  });
  await fleet.start();
  for (const line of fleet.logs().split("\n")) {
    if (line.includes('"agent listening"')) {
      const doc = JSON.parse(line) as { port: number; httpPort: number };
      agentGrpc = doc.port;
      agentHttp = doc.httpPort;
    }
    if (line.includes('"controller listening"')) controllerGrpc = (JSON.parse(line) as { grpcPort: number }).grpcPort;
  }
  assert.ok(agentGrpc > 0 && agentHttp > 0 && controllerGrpc > 0, "ports found in the daemons' logs");
});

after(async () => {
  await fleet?.stop();
});

test("grpc.health.v1.Health/Check answers SERVING on the controller and the agent", async () => {
  const creds = channelCredentials();
  assert.equal(await checkGrpcHealth(`127.0.0.1:${controllerGrpc}`, creds), "SERVING");
  assert.equal(await checkGrpcHealth(`127.0.0.1:${controllerGrpc}`, creds, "flotilla.v1.ControllerService"), "SERVING");
  assert.equal(await checkGrpcHealth(`127.0.0.1:${agentGrpc}`, creds), "SERVING");
  assert.equal(await checkGrpcHealth(`127.0.0.1:${agentGrpc}`, creds, "flotilla.v1.AgentService"), "SERVING");
  await assert.rejects(checkGrpcHealth(`127.0.0.1:${agentGrpc}`, creds, "no.such.Service"), (err: { code?: number }) => err.code === 5);
});

test("the agent answers /healthz and /readyz on its HTTP listener", async () => {
  const healthz = await fetch(`http://127.0.0.1:${agentHttp}/healthz`);
  assert.equal(healthz.status, 200);
  const readyz = await fetch(`http://127.0.0.1:${agentHttp}/readyz`);
  assert.equal(readyz.status, 200);
  assert.equal((await fetch(`http://127.0.0.1:${agentHttp}/nothing`)).status, 404);
});

test("/metrics on both daemons: operations, backups, rollouts, step durations, agents, audit chain, leader", async () => {
  const backup = await fleet.cli(["backup", "obs-1"]);
  assert.equal(backup.code, 0, backup.stderr);
  const drill = await fleet.cli(["drill", "obs-1"]);
  assert.equal(drill.code, 0, drill.stderr + drill.stdout);
  const rollout = await fleet.cli(["rollout", "--selector", "env=obs", "--strategy", "maintenance", "--wait"]);
  assert.equal(rollout.code, 0, rollout.stderr + rollout.stdout);

  const agentRes = await fetch(`http://127.0.0.1:${agentHttp}/metrics`);
  assert.equal(agentRes.status, 200);
  assert.match(agentRes.headers.get("content-type") ?? "", /^text\/plain/);
  const agent = parseProm(await agentRes.text());
  assert.equal(agent.types.get("flotilla_agent_operations_total"), "counter");
  assert.ok((sample(agent.samples, "flotilla_agent_operations_total", { kind: "backup", status: "succeeded" }) ?? 0) >= 1, "the backup is counted");
  assert.ok((sample(agent.samples, "flotilla_agent_operations_total", { kind: "migrate", status: "succeeded" }) ?? 0) >= 1, "the migration is counted");
  assert.equal(agent.types.get("flotilla_agent_operation_duration_seconds"), "histogram");
  assert.ok((sample(agent.samples, "flotilla_agent_operation_duration_seconds_count", { kind: "migrate" }) ?? 0) >= 1);
  const age = sample(agent.samples, "flotilla_agent_last_backup_age_seconds", { target: "obs-1" });
  assert.ok(age !== undefined && age >= 0 && age < 3600, `last backup age is reported (${age})`);

  const res = await fetch(`${fleet.controllerUrl}/metrics`);
  assert.equal(res.status, 200);
  const ctl = parseProm(await res.text());
  assert.equal(sample(ctl.samples, "flotilla_leader"), 1);
  assert.equal(sample(ctl.samples, "flotilla_agent_up", { agent: "o1" }), 1);
  assert.equal(sample(ctl.samples, "flotilla_rollouts", { status: "succeeded" }), 1);
  assert.equal(sample(ctl.samples, "flotilla_rollout_targets", { status: "succeeded" }), 1);
  assert.equal(ctl.types.get("flotilla_rollout_step_duration_seconds"), "histogram");
  assert.equal(sample(ctl.samples, "flotilla_rollout_step_duration_seconds_count", { step: "migrate", state: "succeeded" }), 1);
  assert.ok((sample(ctl.samples, "flotilla_backup_last_verified_bytes", { target: "obs-1" }) ?? 0) > 0, "backup size");
  assert.ok((sample(ctl.samples, "flotilla_backup_last_verified_age_seconds", { target: "obs-1" }) ?? -1) >= 0, "backup age");
  assert.equal(sample(ctl.samples, "flotilla_targets", { state: "ok" }), 1);
  assert.equal(sample(ctl.samples, "flotilla_drill_last_ok", { target: "obs-1" }), 1, "the drill passed");
  assert.ok((sample(ctl.samples, "flotilla_drill_last_age_seconds", { target: "obs-1" }) ?? -1) >= 0, "drill age");
  assert.equal(sample(ctl.samples, "flotilla_api_calls_total", { method: "BackupTarget", outcome: "ok" }), 1);
  assert.equal(sample(ctl.samples, "flotilla_audit_chain_ok"), 1);
});

test("routine reads write no audit row; changes do", async () => {
  const top = async (): Promise<number> => {
    const r = await fleet.cliJson<{ entries: { seq: string }[] }>(["audit"]);
    assert.equal(r.code, 0, r.stderr);
    return Math.max(0, ...r.doc.entries.map((e) => Number(e.seq)));
  };
  const before = await top();
  for (let i = 0; i < 3; i++) {
    assert.equal((await fleet.cli(["targets"])).code, 0);
    assert.equal((await fleet.cli(["rollouts"])).code, 0);
    assert.equal((await fleet.cli(["schedules"])).code, 0);
  }
  assert.equal((await fleet.cli(["audit", "verify"])).code, 0);
  assert.equal(await top(), before, "reads added audit rows");
  assert.equal((await fleet.cli(["backup", "obs-1"])).code, 0);
  const rows = await fleet.cliJson<{ entries: { action: string; outcome: string }[] }>(["audit", "--action", "api.BackupTarget"]);
  assert.deepEqual(
    rows.doc.entries.slice(-2).map((e) => e.outcome),
    ["intent", "ok"],
  );
});
