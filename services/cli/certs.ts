/**
 * `flotilla certs init` and `flotilla certs check`: a private CA and one
 * certificate per host, made with the openssl CLI through the process runner
 * (argv arrays, no shell), and a readable summary of certificates. Keys are
 * generated in-process and written 0600 before any other program sees them.
 * It never talks to the controller.
 */
import { generateKeyPairSync, randomBytes, X509Certificate } from "node:crypto";
import { existsSync, mkdirSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { join, resolve } from "node:path";
import { parseArgs } from "node:util";
import { NodeProcessRunner, type ProcessRunner } from "../common/process-runner.js";
import {
  CONTROLLER_SPIFFE_ID,
  agentSpiffeId,
  certificateFacts,
  daysLeft,
  describeNames,
  expiryWarning,
  identityProblem,
  type CertificateFacts,
} from "../common/tls.js";

export interface CertsIo {
  readonly stdout: { write(chunk: string): unknown };
  readonly stderr: { write(chunk: string): unknown };
}

const ID = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/;
const CA_DAYS = 3650;
const DEFAULT_LEAF_DAYS = 365;

const USAGE = `usage: flotilla certs init DIR --controller HOST --agent ID=HOST [--agent ID=HOST …] [--days N] [--json]
  make (or reuse) a CA in DIR and issue a certificate for the controller and for each agent:
  CA:FALSE, key usage digitalSignature, extended key usage serverAuth (+ clientAuth for the
  controller), SAN DNS:HOST or IP:HOST plus spiffe://flotilla/controller or spiffe://flotilla/agent/ID.
  Leaves last --days (default ${DEFAULT_LEAF_DAYS}); run it again to renew them, then send SIGHUP.
usage: flotilla certs check PATH [--json]
  show subject, issuer, SANs and expiry of a certificate file, or of every certificate in a folder;
  exit 1 when one has expired or expires within 30 days, or is not signed by the folder's ca.pem
`;

/** Runs `flotilla certs …`; returns the exit code (0 ok, 1 problems found, 2 bad usage). */
export async function certsMain(argv: readonly string[], io: CertsIo, runner: ProcessRunner = new NodeProcessRunner(), now = new Date()): Promise<number> {
  const [sub, ...rest] = argv;
  if (sub === undefined || sub === "help" || sub === "--help" || sub === "-h") {
    io.stdout.write(USAGE);
    return sub === undefined ? 2 : 0;
  }
  let parsed;
  try {
    parsed = parseArgs({
      args: [...rest],
      allowPositionals: true,
      strict: true,
      options: {
        controller: { type: "string" },
        agent: { type: "string", multiple: true },
        days: { type: "string" },
        json: { type: "boolean" },
        help: { type: "boolean", short: "h" },
      },
    });
  } catch (err) {
    return usage(io, `certs ${sub}: ${(err as Error).message}`);
  }
  if (parsed.values.help) {
    io.stdout.write(USAGE);
    return 0;
  }
  const json = parsed.values.json === true;
  if (sub === "init") {
    const dir = parsed.positionals[0];
    if (dir === undefined || parsed.positionals.length > 1)
      return usage(
        io,
        "certs init: give exactly one folder, e.g. flotilla certs init /etc/flotilla/tls --controller ctl.example --agent host-a=host-a.example",
      );
    const controller = parsed.values.controller;
    if (controller === undefined)
      return usage(io, "certs init: --controller HOST is required (the name or IP the agents and the CLI use to reach the controller)");
    const hostBad = hostProblem(controller);
    if (hostBad) return usage(io, `certs init: --controller ${hostBad}`);
    const agents: { id: string; host: string }[] = [];
    for (const spec of parsed.values.agent ?? []) {
      const eq = spec.indexOf("=");
      const id = eq < 0 ? "" : spec.slice(0, eq);
      const host = eq < 0 ? "" : spec.slice(eq + 1);
      if (!ID.test(id))
        return usage(io, `certs init: --agent ${JSON.stringify(spec)} must be ID=HOST with an agent id of letters, digits, . _ - (e.g. host-a=10.0.0.7)`);
      const bad = hostProblem(host);
      if (bad) return usage(io, `certs init: --agent ${id}=… ${bad}`);
      if (agents.some((a) => a.id === id)) return usage(io, `certs init: agent ${id} is given twice`);
      agents.push({ id, host });
    }
    if (agents.length === 0) return usage(io, "certs init: give at least one --agent ID=HOST");
    const daysText = parsed.values.days ?? String(DEFAULT_LEAF_DAYS);
    if (!/^\d{1,4}$/.test(daysText) || Number(daysText) < 1 || Number(daysText) > CA_DAYS)
      return usage(io, `certs init: --days must be a whole number of days from 1 to ${CA_DAYS}`);
    return init(io, runner, { dir: resolve(dir), controller, agents, days: Number(daysText), json });
  }
  if (sub === "check") {
    const path = parsed.positionals[0];
    if (path === undefined || parsed.positionals.length > 1) return usage(io, "certs check: give one certificate file or folder");
    return check(io, resolve(path), now, json);
  }
  return usage(io, `certs: unknown sub-command ${JSON.stringify(sub)}; use init or check`);
}

function usage(io: CertsIo, message: string): number {
  io.stderr.write(`flotilla: ${message}\n`);
  return 2;
}

/** A host name or IP address for a certificate, or why not. */
function hostProblem(host: string): string | undefined {
  if (host === "" || /^[a-z][a-z0-9+.-]*:\/\//i.test(host)) return `"${host}" must be a host name or an IP address`;
  return identityProblem(host);
}

function sanOf(host: string): string {
  return identityProblem(host) === undefined && /^[0-9.]+$|:/.test(host) ? `IP:${host.replace(/^\[|\]$/g, "")}` : `DNS:${host}`;
}

interface InitPlan {
  readonly dir: string;
  readonly controller: string;
  readonly agents: readonly { id: string; host: string }[];
  readonly days: number;
  readonly json: boolean;
}

async function init(io: CertsIo, runner: ProcessRunner, plan: InitPlan): Promise<number> {
  mkdirSync(plan.dir, { recursive: true, mode: 0o700 });
  const caCert = join(plan.dir, "ca.pem");
  const caKey = join(plan.dir, "ca-key.pem");
  const openssl = async (args: string[]): Promise<void> => {
    const r = await runner.run({ argv: ["openssl", ...args], cwd: plan.dir, timeoutMs: 60_000 });
    if (r.exitCode !== 0) throw new Error(`openssl ${args[0]} failed: ${(r.spawnError ?? r.stderr).trim().split("\n").slice(-3).join(" ")}`);
  };
  const made: { name: string; cert: string; key: string; names: string }[] = [];
  try {
    const reuse = existsSync(caCert) && existsSync(caKey);
    if (!reuse) {
      writeKey(caKey);
      const ext = writeExt(plan.dir, "ca", [
        "basicConstraints = critical, CA:TRUE, pathlen:0",
        "keyUsage = critical, keyCertSign, cRLSign",
        "subjectKeyIdentifier = hash",
      ]);
      await openssl([
        "req",
        "-x509",
        "-new",
        "-key",
        caKey,
        "-subj",
        "/O=Flotilla/CN=Flotilla CA",
        "-days",
        String(CA_DAYS),
        "-set_serial",
        serial(),
        "-extensions",
        "v3",
        "-config",
        ext,
        "-out",
        caCert,
      ]);
    }
    const issue = async (name: string, cn: string, host: string, uri: string, eku: string): Promise<void> => {
      const key = join(plan.dir, `${name}-key.pem`);
      const cert = join(plan.dir, `${name}.pem`);
      const csr = join(plan.dir, `${name}.csr`);
      writeKey(key);
      const ext = writeExt(plan.dir, name, [
        "basicConstraints = critical, CA:FALSE",
        "keyUsage = critical, digitalSignature",
        `extendedKeyUsage = ${eku}`,
        `subjectAltName = ${sanOf(host)}, URI:${uri}`,
        "subjectKeyIdentifier = hash",
        "authorityKeyIdentifier = keyid, issuer",
      ]);
      await openssl(["req", "-new", "-key", key, "-subj", `/O=Flotilla/CN=${cn}`, "-config", ext, "-out", csr]);
      await openssl([
        "x509",
        "-req",
        "-in",
        csr,
        "-CA",
        caCert,
        "-CAkey",
        caKey,
        "-set_serial",
        serial(),
        "-days",
        String(plan.days),
        "-extfile",
        ext,
        "-extensions",
        "v3",
        "-out",
        cert,
      ]);
      made.push({ name, cert, key, names: `${sanOf(host)}, URI:${uri}` });
    };
    // The controller is a server (HTTPS, gRPC API) and the agents' client.
    await issue("controller", plan.controller, plan.controller, CONTROLLER_SPIFFE_ID, "serverAuth, clientAuth");
    // An agent only serves: without clientAuth its certificate cannot even be presented as a client.
    for (const a of plan.agents) await issue(`agent-${a.id}`, a.host, a.host, agentSpiffeId(a.id), "serverAuth");
    cleanup(plan.dir);
    const lines = configLines(plan);
    if (plan.json) {
      io.stdout.write(`${JSON.stringify({ dir: plan.dir, ca: caCert, caReused: reuse, certificates: made, config: lines })}\n`);
    } else {
      io.stdout.write(`${reuse ? "reused the CA in" : "made a CA in"} ${plan.dir} (ca.pem; keep ca-key.pem off the hosts)\n`);
      for (const m of made) io.stdout.write(`  ${m.name}.pem  ${m.names}  (${plan.days} days)\n`);
      io.stdout.write(`\n${lines.controller}\n${lines.agents.join("\n")}\n${lines.cli}\n`);
    }
    return 0;
  } catch (err) {
    cleanup(plan.dir);
    io.stderr.write(`flotilla: certs init: ${(err as Error).message}\n`);
    return 1;
  }
}

function serial(): string {
  return `0x${randomBytes(16)
    .toString("hex")
    .replace(/^[89a-f]/, "1")}`;
}

function writeKey(path: string): void {
  const { privateKey } = generateKeyPairSync("ec", { namedCurve: "prime256v1" });
  writeFileSync(path, privateKey.export({ type: "pkcs8", format: "pem" }), { mode: 0o600 });
}

function writeExt(dir: string, name: string, lines: string[]): string {
  const path = join(dir, `${name}.ext`);
  writeFileSync(path, `[req]\ndistinguished_name = dn\n[dn]\n[v3]\n${lines.join("\n")}\n`, { mode: 0o600 });
  return path;
}

/** Removes the requests and extension files (they hold no secret). */
function cleanup(dir: string): void {
  for (const f of readdirSync(dir)) if (f.endsWith(".csr") || f.endsWith(".ext")) rmSync(join(dir, f), { force: true });
}

function configLines(plan: InitPlan): { controller: string; agents: string[]; cli: string } {
  const d = plan.dir;
  const controller = [
    "# controller.yaml",
    `tls: { cert: ${d}/controller.pem, key: ${d}/controller-key.pem, ca: ${d}/ca.pem }`,
    `httpTls: { cert: ${d}/controller.pem, key: ${d}/controller-key.pem }`,
    "agents:",
    ...plan.agents.map((a) => `  - { id: ${a.id}, address: "${a.host.includes(":") ? `[${a.host}]` : a.host}:7443" }`),
  ].join("\n");
  const agents = plan.agents.map((a) =>
    [
      `# agent.yaml on ${a.host} (copy ca.pem, agent-${a.id}.pem and agent-${a.id}-key.pem there)`,
      `tls: { cert: ${d}/agent-${a.id}.pem, key: ${d}/agent-${a.id}-key.pem, ca: ${d}/ca.pem, allow: [${CONTROLLER_SPIFFE_ID}] }`,
    ].join("\n"),
  );
  const cli = `# CLI\nexport FLOTILLA_CONTROLLER=https://${plan.controller.includes(":") ? `[${plan.controller}]` : plan.controller}:7441 FLOTILLA_CA=${d}/ca.pem`;
  return { controller, agents, cli };
}

interface CheckedCertificate {
  readonly file: string;
  readonly subject: string;
  readonly issuer: string;
  readonly sans: string;
  readonly notBefore: string;
  readonly notAfter: string;
  readonly daysLeft: number;
  readonly ca: boolean;
  readonly problems: string[];
}

function check(io: CertsIo, path: string, now: Date, json: boolean): number {
  let files: string[];
  let caFile: string | undefined;
  try {
    if (statSync(path).isDirectory()) {
      files = readdirSync(path)
        .filter((f) => f.endsWith(".pem") && !f.endsWith("-key.pem") && !f.endsWith(".key"))
        .sort()
        .map((f) => join(path, f));
      caFile = files.find((f) => f.endsWith("/ca.pem"));
    } else {
      files = [path];
    }
  } catch (err) {
    return usage(io, `certs check: cannot read ${path}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
  }
  let ca: X509Certificate | undefined;
  if (caFile) {
    try {
      ca = new X509Certificate(readFileSync(caFile));
    } catch {
      ca = undefined;
    }
  }
  const out: CheckedCertificate[] = [];
  for (const file of files) {
    let facts: CertificateFacts[];
    let raw: string;
    try {
      raw = readFileSync(file, "utf8");
      facts = certificateFacts(raw);
    } catch (err) {
      out.push({
        file,
        subject: "",
        issuer: "",
        sans: "",
        notBefore: "",
        notAfter: "",
        daysLeft: 0,
        ca: false,
        problems: [`not a readable certificate: ${(err as Error).message}`],
      });
      continue;
    }
    if (facts.length === 0) {
      out.push({ file, subject: "", issuer: "", sans: "", notBefore: "", notAfter: "", daysLeft: 0, ca: false, problems: ["holds no PEM certificate"] });
      continue;
    }
    const f = facts[0]!;
    const problems: string[] = [];
    const w = expiryWarning("it", f.notAfter, now);
    if (w) problems.push(w.replace(/^it /, ""));
    if (f.notBefore.getTime() > now.getTime()) problems.push(`not valid before ${f.notBefore.toISOString()}`);
    if (ca && file !== caFile) {
      const leaf = new X509Certificate(raw.match(/-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----/)![0]);
      if (!leaf.checkIssued(ca) || !leaf.verify(ca.publicKey)) problems.push("not signed by this folder's ca.pem");
    }
    if (!f.isCa && f.names.dns.length + f.names.ip.length + f.names.uri.length === 0)
      problems.push("names no host (no subject alternative names): hostname verification will refuse it");
    out.push({
      file,
      subject: f.subject,
      issuer: f.issuer,
      sans: describeNames(f.names),
      notBefore: f.notBefore.toISOString(),
      notAfter: f.notAfter.toISOString(),
      daysLeft: daysLeft(f.notAfter, now),
      ca: f.isCa,
      problems,
    });
  }
  const bad = out.some((c) => c.problems.length > 0);
  if (json) {
    io.stdout.write(`${JSON.stringify({ certificates: out, ok: !bad })}\n`);
  } else {
    for (const c of out) {
      io.stdout.write(`${c.problems.length > 0 ? "✗" : "✓"} ${c.file}\n`);
      if (c.subject) {
        io.stdout.write(`    subject  ${c.subject}${c.ca ? "  (CA)" : ""}\n    issuer   ${c.issuer}\n    names    ${c.sans}\n`);
        io.stdout.write(`    valid    ${c.notBefore} → ${c.notAfter} (${c.daysLeft} days left)\n`);
      }
      for (const p of c.problems) io.stdout.write(`    problem  ${p}\n`);
    }
    if (out.length === 0) io.stdout.write(`no certificates (*.pem) in ${path}\n`);
  }
  return bad ? 1 : 0;
}
