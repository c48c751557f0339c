/**
 * Identities on every connection, end to end with real processes and real TLS:
 * certificates made the ordinary way with openssl (leaves naming
 * DNS:localhost,IP:127.0.0.1) and with `flotilla certs init`; the controller
 * checks each agent against its own host or configured identity, each agent
 * lets only the controller's identity call it; HTTPS from the CLI; tokens
 * never cross plain HTTP to another machine.
 */
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync, spawn, type ChildProcess } from "node:child_process";
import { X509Certificate } from "node:crypto";
import { existsSync, mkdirSync, mkdtempSync, openSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { networkInterfaces, tmpdir } from "node:os";
import { join } from "node:path";
import { stringify } from "yaml";
import { FIXTURE_DIR, ROOT, run, type RunResult } from "../helpers/fleet.js";
import { AgentService } from "../../services/common/gen/flotilla/v1/agent_pb.js";
import { channelCredentials, createClient, type TlsFiles } from "../../services/common/grpc-bridge.js";
import type { FlotillaError } from "../../services/common/errors.js";

const TOKEN = "identity-admin-token-0123456789";
let dir: string;
const procs: ChildProcess[] = [];

before(() => {
  dir = mkdtempSync(join(tmpdir(), "flotilla-identity-"));
  writeFileSync(join(dir, "secret"), "x".repeat(32), { mode: 0o600 });
  writeFileSync(join(dir, "token"), TOKEN, { mode: 0o600 });
});

after(() => {
  for (const p of procs) if (p.exitCode === null && p.signalCode === null) p.kill("SIGKILL");
  rmSync(dir, { recursive: true, force: true });
});

// ---------------------------------------------------------------------------------------------
// Certificates made with plain openssl, the way an operator without Flotilla's helper would.

function ssl(cwd: string, args: string[]): void {
  execFileSync("openssl", args, { cwd, stdio: "ignore" });
}

function makeCa(cwd: string, name: string): void {
  ssl(cwd, ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "30", "-subj", `/CN=${name}`, "-keyout", `${name}.key`, "-out", `${name}.pem`]);
}

/** A leaf signed by `ca` with these SANs; `days` may be negative (already expired). */
function makeLeaf(cwd: string, ca: string, name: string, san: string, days = 30): void {
  ssl(cwd, ["req", "-newkey", "rsa:2048", "-nodes", "-subj", `/CN=${name}`, "-keyout", `${name}.key`, "-out", `${name}.csr`]);
  writeFileSync(join(cwd, `${name}.ext`), `basicConstraints=critical,CA:FALSE\nsubjectAltName=${san}\n`);
  ssl(cwd, [
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
    String(days),
    "-extfile",
    `${name}.ext`,
    "-out",
    `${name}.pem`,
  ]);
}

function files(cwd: string, cert: string, ca: string, keySuffix = ".key"): TlsFiles {
  return { cert: readFileSync(join(cwd, `${cert}.pem`)), key: readFileSync(join(cwd, `${cert}${keySuffix}`)), ca: readFileSync(join(cwd, `${ca}.pem`)) };
}

// ---------------------------------------------------------------------------------------------
// Processes.

async function waitForFile(path: string, proc: ChildProcess, log: string): Promise<string> {
  const deadline = Date.now() + 90_000;
  while (Date.now() < deadline) {
    if (existsSync(path)) {
      const text = readFileSync(path, "utf8");
      if (text !== "") return text;
    }
    if (proc.exitCode !== null) throw new Error(`process exited with ${proc.exitCode}: ${readFileSync(log, "utf8").slice(-2000)}`);
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error(`timed out waiting for ${path}`);
}

interface Daemon {
  proc: ChildProcess;
  log: string;
  port: number;
  http?: number;
}

async function startAgent(id: string, tls: Record<string, unknown>): Promise<Daemon> {
  const home = join(dir, `agent-${id}`);
  mkdirSync(home, { recursive: true });
  const cfg = join(home, "agent.yaml");
  writeFileSync(
    cfg,
    stringify({
      agentId: id,
      listen: "127.0.0.1:0",
      dataDir: join(home, "data"),
      tls,
      targets: [
        {
          id: `${id}-db`,
          database: `sqlite:///${join(home, "t.db")}`,
          alembic: { dir: FIXTURE_DIR, env: { WEBUI_SECRET_KEY: { file: join(dir, "secret") } } },
          backups: { dir: join(home, "backups") },
        },
      ],
    }),
  );
  const log = join(home, "agent.log");
  const portFile = join(home, "port");
  const proc = spawn(process.execPath, [join(ROOT, "bin/flotilla-agent.mjs"), "--config", cfg], {
    stdio: ["ignore", openSync(log, "a"), openSync(log, "a")],
    env: { ...process.env, FLOTILLA_PORT_FILE: portFile },
  });
  procs.push(proc);
  return { proc, log, port: Number(await waitForFile(portFile, proc, log)) };
}

async function startController(name: string, config: Record<string, unknown>): Promise<Daemon> {
  const home = join(dir, `controller-${name}`);
  mkdirSync(home, { recursive: true });
  const cfg = join(home, "controller.yaml");
  writeFileSync(cfg, stringify({ listen: { grpc: "127.0.0.1:0", http: "127.0.0.1:0" }, dataDir: home, ...config }));
  const log = join(home, "controller.log");
  const portFile = join(home, "port");
  const proc = spawn(process.execPath, [join(ROOT, "bin/flotilla-controller.mjs"), "--config", cfg], {
    stdio: ["ignore", openSync(log, "a"), openSync(log, "a")],
    env: { ...process.env, FLOTILLA_PORT_FILE: portFile },
  });
  procs.push(proc);
  const ports = JSON.parse(await waitForFile(portFile, proc, log)) as { http: number; grpc: number };
  return { proc, log, port: ports.grpc, http: ports.http };
}

function cli(args: string[], env: Record<string, string>): Promise<RunResult> {
  return run([process.execPath, join(ROOT, "bin/flotilla.mjs"), ...args], { env: { FLOTILLA_TOKEN: "", FLOTILLA_CA: "", ...env }, timeoutMs: 120_000 });
}

interface TargetsDoc {
  agents: { id: string; state: string; error: string }[];
  targets: { targetId: string }[];
  warnings: string[];
}

/** `flotilla targets --json` until every listed agent has a state other than unknown. */
async function targets(env: Record<string, string>, ids: string[]): Promise<TargetsDoc> {
  const r = await cli(["targets", "--json"], env);
  assert.equal(r.stderr.includes(TOKEN), false, "the token never appears in output");
  const doc = JSON.parse(r.stdout) as TargetsDoc;
  for (const id of ids)
    assert.ok(
      doc.agents.some((a) => a.id === id),
      `agent ${id} listed: ${r.stdout}`,
    );
  return doc;
}

function agentState(doc: TargetsDoc, id: string): { state: string; error: string } {
  return doc.agents.find((a) => a.id === id)!;
}

async function rejectsWith(promise: Promise<unknown>, pattern: RegExp, what: string): Promise<FlotillaError> {
  try {
    await promise;
  } catch (err) {
    const fe = err as FlotillaError;
    assert.match(`${fe.code} ${fe.message}`, pattern, what);
    return fe;
  }
  assert.fail(`${what}: the call succeeded`);
}

// ---------------------------------------------------------------------------------------------

test("openssl-made standard certificates: the controller reaches agents whose certificates name their host, and refuses one that names another host, an expired one, and warns of one about to expire", async () => {
  const pki = join(dir, "openssl");
  mkdirSync(pki);
  makeCa(pki, "ca");
  makeLeaf(pki, "ca", "agent1", "DNS:localhost,IP:127.0.0.1");
  makeLeaf(pki, "ca", "agent2", "DNS:localhost,IP:127.0.0.1", 10);
  makeLeaf(pki, "ca", "elsewhere", "DNS:db-7.example,IP:10.9.8.7");
  makeLeaf(pki, "ca", "expired", "DNS:localhost,IP:127.0.0.1", -1);
  makeLeaf(pki, "ca", "controller", "DNS:controller.internal,IP:127.0.0.1");
  const agentTls = (cert: string) => ({
    cert: join(pki, `${cert}.pem`),
    key: join(pki, `${cert}.key`),
    ca: join(pki, "ca.pem"),
    allow: ["controller.internal"],
  });
  const [a1, a2, a3, a4] = await Promise.all([
    startAgent("std-1", agentTls("agent1")),
    startAgent("std-2", agentTls("agent2")),
    startAgent("std-3", agentTls("elsewhere")),
    startAgent("std-4", agentTls("expired")),
  ]);
  assert.match(readFileSync(a2!.log, "utf8"), /certificate expires soon/, "the agent warns at start when its certificate expires within 30 days");
  const ctl = await startController("std", {
    tls: { cert: join(pki, "controller.pem"), key: join(pki, "controller.key"), ca: join(pki, "ca.pem") },
    agents: [
      { id: "std-1", address: `127.0.0.1:${a1!.port}` },
      { id: "std-2", address: `localhost:${a2!.port}` },
      { id: "std-3", address: `127.0.0.1:${a3!.port}` },
      { id: "std-4", address: `127.0.0.1:${a4!.port}` },
    ],
  });
  const env = { FLOTILLA_CONTROLLER: `http://127.0.0.1:${ctl.http}` };
  const doc = await targets(env, ["std-1", "std-2", "std-3", "std-4"]);
  assert.equal(agentState(doc, "std-1").state, "up", JSON.stringify(doc.agents));
  assert.equal(agentState(doc, "std-2").state, "up", "DNS:localhost matches an address written as localhost");
  assert.ok(doc.targets.some((t) => t.targetId === "std-1-db"));
  const elsewhere = agentState(doc, "std-3");
  assert.equal(elsewhere.state, "down");
  assert.match(elsewhere.error, /expected IP:127\.0\.0\.1/, "the message names the expected name");
  assert.match(elsewhere.error, /DNS:db-7\.example/, "and the names the certificate carries");
  const expired = agentState(doc, "std-4");
  assert.equal(expired.state, "down");
  assert.match(expired.error, /expired/i);
  assert.ok(
    doc.warnings.some((w) => /certificate of agent std-2 expires in \d+ day/.test(w)),
    `targets warns of std-2's certificate: ${JSON.stringify(doc.warnings)}`,
  );
  const human = await cli(["targets"], env);
  assert.match(human.stdout, /certificate of agent std-2 expires in/);

  // Callers the agent must refuse.
  const addr = `127.0.0.1:${a1!.port}`;
  const asController = createClient(AgentService, addr, channelCredentials(files(pki, "controller", "ca")));
  assert.equal((await asController.getInfo({}, { timeoutMs: 15_000 })).agentId, "std-1");
  asController.close();
  const otherAgent = createClient(AgentService, addr, channelCredentials(files(pki, "agent2", "ca")));
  const denied = await rejectsWith(
    otherAgent.getInfo({}, { timeoutMs: 15_000 }),
    /PERMISSION_DENIED/,
    "another agent's certificate presented as the controller",
  );
  assert.match(denied.message, /not allowed/);
  otherAgent.close();
  assert.match(readFileSync(a1!.log, "utf8"), /refused a client whose certificate is not allowed/, "the refusal is logged");
  const rogueDir = join(pki, "rogue");
  mkdirSync(rogueDir);
  makeCa(rogueDir, "rogue");
  makeLeaf(rogueDir, "rogue", "intruder", "DNS:controller.internal,IP:127.0.0.1");
  const rogue = createClient(AgentService, addr, channelCredentials({ ...files(rogueDir, "intruder", "rogue"), ca: readFileSync(join(pki, "ca.pem")) }));
  await rejectsWith(rogue.getInfo({}, { timeoutMs: 15_000 }), /UNAVAILABLE|AGENT_UNAVAILABLE|INTERNAL|CANCELLED|TIMEOUT/, "a certificate from a rogue CA");
  rogue.close();
  const { credentials } = await import("@grpc/grpc-js");
  const noCert = createClient(AgentService, addr, credentials.createSsl(readFileSync(join(pki, "ca.pem"))));
  await assert.rejects(noCert.getInfo({}, { timeoutMs: 15_000 }), "no client certificate");
  noCert.close();
  const expiredClient = createClient(AgentService, addr, channelCredentials(files(pki, "expired", "ca")));
  await assert.rejects(expiredClient.getInfo({}, { timeoutMs: 15_000 }), "an expired client certificate");
  expiredClient.close();
});

test("flotilla certs init: a CA and per-host certificates that work as made, HTTPS from the CLI, SPIFFE identities both ways", async () => {
  const pki = join(dir, "made");
  const init = await cli(["certs", "init", pki, "--controller", "localhost", "--agent", "b1=127.0.0.1", "--agent", "b2=b2.example"], {});
  assert.equal(init.code, 0, init.stderr);
  assert.match(init.stdout, /httpTls: \{ cert: .*controller\.pem/, "prints the config lines to paste");
  assert.match(init.stdout, /allow: \[spiffe:\/\/flotilla\/controller\]/);
  for (const [file, names] of [
    ["agent-b1.pem", /IP Address:127\.0\.0\.1.*URI:spiffe:\/\/flotilla\/agent\/b1/],
    ["controller.pem", /DNS:localhost.*URI:spiffe:\/\/flotilla\/controller/],
  ] as const) {
    const cert = new X509Certificate(readFileSync(join(pki, file)));
    assert.equal(cert.ca, false, `${file} is CA:FALSE`);
    assert.match(cert.subjectAltName ?? "", names);
    const days = (new Date(cert.validTo).getTime() - Date.now()) / 86_400_000;
    assert.ok(days > 300 && days < 400, `${file} lives about a year (${days} days)`);
  }
  assert.equal(new X509Certificate(readFileSync(join(pki, "ca.pem"))).ca, true);
  const text = execFileSync("openssl", ["x509", "-in", join(pki, "agent-b1.pem"), "-noout", "-text"], { encoding: "utf8" });
  assert.match(text, /Key Usage: critical\s+Digital Signature/);
  assert.match(text, /Extended Key Usage:\s+TLS Web Server Authentication\n/);
  const check = await cli(["certs", "check", pki], {});
  assert.equal(check.code, 0, check.stdout);
  assert.match(check.stdout, /names\s+DNS:b2\.example, URI:spiffe:\/\/flotilla\/agent\/b2/);
  assert.match(check.stdout, /days left/);

  const agentTls = (id: string) => ({
    cert: join(pki, `agent-${id}.pem`),
    key: join(pki, `agent-${id}-key.pem`),
    ca: join(pki, "ca.pem"),
    allow: ["spiffe://flotilla/controller"],
  });
  const [b1, b2] = await Promise.all([startAgent("b1", agentTls("b1")), startAgent("b2", agentTls("b2"))]);
  const ctl = await startController("made", {
    tls: { cert: join(pki, "controller.pem"), key: join(pki, "controller-key.pem"), ca: join(pki, "ca.pem") },
    httpTls: { cert: join(pki, "controller.pem"), key: join(pki, "controller-key.pem") },
    tokens: [{ name: "admin", role: "admin", file: join(dir, "token") }],
    agents: [
      { id: "b1", address: `127.0.0.1:${b1!.port}` },
      // b2's certificate names b2.example, not the address: its configured identity is what counts.
      { id: "b2", address: `127.0.0.1:${b2!.port}`, identity: "spiffe://flotilla/agent/b2" },
      { id: "b2-by-host", address: `127.0.0.1:${b2!.port}` },
    ],
  });
  const env = { FLOTILLA_CONTROLLER: `https://localhost:${ctl.http}`, FLOTILLA_TOKEN: TOKEN, FLOTILLA_CA: join(pki, "ca.pem") };
  const doc = await targets(env, ["b1", "b2"]);
  assert.equal(agentState(doc, "b1").state, "up", JSON.stringify(doc.agents));
  assert.equal(agentState(doc, "b2").state, "up", JSON.stringify(doc.agents));
  assert.equal(agentState(doc, "b2-by-host").state, "down", "without the identity, b2's certificate does not match 127.0.0.1");
  assert.match(agentState(doc, "b2-by-host").error, /expected IP:127\.0\.0\.1/);

  const untrusted = await cli(["targets"], { ...env, FLOTILLA_CA: "" });
  assert.equal(untrusted.code, 3, "without the CA the CLI does not trust the controller");
  assert.match(untrusted.stderr, /--ca/);
  const byFlag = await cli(["targets", "--ca", join(pki, "ca.pem")], { ...env, FLOTILLA_CA: "" });
  assert.equal(byFlag.code, 0, byFlag.stderr);

  // An agent's certificate is not the controller's: refused at the handshake (no clientAuth), never served.
  const asB2 = createClient(AgentService, `127.0.0.1:${b1!.port}`, channelCredentials(files(pki, "agent-b2", "ca", "-key.pem")));
  await assert.rejects(asB2.getInfo({}, { timeoutMs: 15_000 }), "agent b2's certificate presented as the controller");
  asB2.close();
  const asController = createClient(AgentService, `127.0.0.1:${b1!.port}`, channelCredentials(files(pki, "controller", "ca", "-key.pem")));
  assert.equal((await asController.getInfo({}, { timeoutMs: 15_000 })).agentId, "b1");
  asController.close();
  assert.equal(readFileSync(ctl.log, "utf8").includes(TOKEN), false);

  // SIGHUP: the agent picks up re-issued certificates for new connections without restarting.
  const before = new X509Certificate(readFileSync(join(pki, "agent-b1.pem"))).serialNumber;
  const again = await cli(["certs", "init", pki, "--controller", "localhost", "--agent", "b1=127.0.0.1", "--agent", "b2=b2.example", "--days", "20"], {});
  assert.equal(again.code, 0, again.stderr);
  assert.match(again.stdout, /reused the CA/);
  b1!.proc.kill("SIGHUP");
  const deadline = Date.now() + 30_000;
  let seen: Date | undefined;
  while (Date.now() < deadline) {
    if (/reloaded certificates/.test(readFileSync(b1!.log, "utf8"))) break;
    await new Promise((r) => setTimeout(r, 100));
  }
  assert.match(readFileSync(b1!.log, "utf8"), /certificate expires soon/, "the reload warns of the 20-day certificate");
  const fresh = createClient(
    AgentService,
    `127.0.0.1:${b1!.port}`,
    channelCredentials(files(pki, "controller", "ca", "-key.pem"), { onCertificate: (d) => (seen = d) }),
  );
  assert.equal((await fresh.getInfo({}, { timeoutMs: 15_000 })).agentId, "b1");
  fresh.close();
  assert.ok(seen && seen.getTime() - Date.now() < 21 * 86_400_000, `a new connection sees the re-issued certificate (${seen?.toISOString()})`);
  assert.notEqual(new X509Certificate(readFileSync(join(pki, "agent-b1.pem"))).serialNumber, before);
  assert.equal(b1!.proc.exitCode, null, "the agent kept running");

  // SIGHUP on the controller: its HTTPS listener and agent channels take the re-issued 20-day certificate.
  ctl.proc.kill("SIGHUP");
  const until = Date.now() + 30_000;
  while (Date.now() < until && !/reloaded certificates/.test(readFileSync(ctl.log, "utf8"))) await new Promise((r) => setTimeout(r, 100));
  assert.match(readFileSync(ctl.log, "utf8"), /reloaded certificates/);
  const after = await targets(env, ["b1", "b2"]);
  assert.equal(agentState(after, "b1").state, "up", "agents still answer after the reload");
  assert.ok(
    after.warnings.some((w) => /controller HTTPS certificate .* expires in 1\d day/.test(w)),
    `targets warns of the controller's new certificate: ${JSON.stringify(after.warnings)}`,
  );
  assert.equal(ctl.proc.exitCode, null, "the controller kept running");
});

test("tokens never cross plain HTTP to another machine; registration needs TLS or loopback", async () => {
  const external = Object.values(networkInterfaces())
    .flat()
    .find((i) => i && !i.internal && i.family === "IPv4")?.address;
  assert.ok(external, "this machine has a non-loopback IPv4 address to test with");
  const home = join(dir, "plain");
  mkdirSync(home);
  const ctl = await startController("plain", {
    listen: { grpc: "127.0.0.1:0", http: "0.0.0.0:0" },
    tokens: [{ name: "admin", role: "admin", file: join(dir, "token") }],
  });
  assert.match(readFileSync(ctl.log, "utf8"), /calls with tokens are refused there/, "the controller warns at start");
  const overLan = await fetch(`http://${external}:${ctl.http}/v1/ListTargets`, {
    method: "POST",
    headers: { authorization: `Bearer ${TOKEN}`, "content-type": "application/json" },
    body: "{}",
  });
  assert.equal(overLan.status, 403);
  const body = (await overLan.json()) as { code: string; message: string };
  assert.equal(body.code, "PERMISSION_DENIED");
  assert.match(body.message, /plain HTTP/);
  const local = await fetch(`http://127.0.0.1:${ctl.http}/v1/ListTargets`, {
    method: "POST",
    headers: { authorization: `Bearer ${TOKEN}`, "content-type": "application/json" },
    body: "{}",
  });
  assert.equal(local.status, 200, "loopback stays usable");
  const viaCli = await cli(["targets"], { FLOTILLA_CONTROLLER: `http://${external}:${ctl.http}`, FLOTILLA_TOKEN: TOKEN });
  assert.equal(viaCli.code, 3);
  assert.match(viaCli.stderr, /refusing to send the token over plain HTTP/);
  // Registration from another machine over plain HTTP (no token, so the rule above does not apply) is refused too.
  const noTokenCtl = await startController("plain-open", { listen: { grpc: "127.0.0.1:0", http: "127.0.0.1:0" } });
  const reg = await fetch(`http://127.0.0.1:${noTokenCtl.http}/v1/RegisterAgent`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ agentId: "r-1", address: "10.0.0.9:7443" }),
  });
  assert.equal(reg.status, 200, "from loopback, registration over plain HTTP works (tests, demo)");
  const moved = await fetch(`http://127.0.0.1:${noTokenCtl.http}/v1/RegisterAgent`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ agentId: "r-1", address: "10.0.0.10:7443" }),
  });
  assert.equal(moved.status, 403, "a registered agent's host is fixed");
  assert.match(((await moved.json()) as { message: string }).message, /fixed at registration/);
});
