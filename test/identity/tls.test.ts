import { test } from "node:test";
import assert from "node:assert/strict";
import { FlotillaError } from "../../services/common/errors.js";
import {
  CONTROLLER_SPIFFE_ID,
  agentSpiffeId,
  describeNames,
  expiryWarning,
  expiryWarnings,
  hostOf,
  identityProblem,
  isLoopbackHost,
  namesInclude,
  parseSubjectAltName,
} from "../../services/common/tls.js";
import { loadAgentConfig } from "../../services/agent/config.js";
import { loadControllerConfig } from "../../services/controller/config.js";

test("subjectAltName text: DNS, IP and URI entries, quoted ones unquoted, others ignored", () => {
  const names = parseSubjectAltName('DNS:Host-A.example, IP Address:127.0.0.1, URI:spiffe://flotilla/agent/a, email:x@y, DNS:"odd,name", IP Address:::1');
  assert.deepEqual(names, { dns: ["host-a.example", "odd,name"], ip: ["127.0.0.1", "::1"], uri: ["spiffe://flotilla/agent/a"] });
  assert.equal(describeNames(names), "DNS:host-a.example, DNS:odd,name, IP:127.0.0.1, IP:::1, URI:spiffe://flotilla/agent/a");
  assert.deepEqual(parseSubjectAltName(undefined), { dns: [], ip: [], uri: [] });
});

test("identities match exactly: URI against URI names, DNS case-insensitively, IPs as IPs; no prefix or wildcard tricks", () => {
  const names = parseSubjectAltName(`DNS:host-a.example, IP Address:10.0.0.7, URI:${agentSpiffeId("a")}`);
  assert.ok(namesInclude(names, "HOST-A.example"));
  assert.ok(namesInclude(names, "10.0.0.7"));
  assert.ok(namesInclude(names, "spiffe://flotilla/agent/a"));
  assert.equal(namesInclude(names, CONTROLLER_SPIFFE_ID), false);
  assert.equal(namesInclude(names, "spiffe://flotilla/agent/ab"), false);
  assert.equal(namesInclude(names, "host-a"), false);
  assert.equal(namesInclude(names, "*.example"), false);
  assert.equal(
    namesInclude(parseSubjectAltName("DNS:spiffe://flotilla/controller"), CONTROLLER_SPIFFE_ID),
    false,
    "a DNS name that looks like a URI is not the URI",
  );
  assert.equal(identityProblem("spiffe://flotilla/controller"), undefined);
  assert.equal(identityProblem("ctl.internal"), undefined);
  assert.match(identityProblem("bad name;rm") ?? "", /neither a URI/);
});

test("loopback and hosts", () => {
  for (const h of ["127.0.0.1", "127.9.9.9", "localhost", "::1", "[::1]", "::ffff:127.0.0.1"]) assert.ok(isLoopbackHost(h), h);
  for (const h of ["0.0.0.0", "10.0.0.1", "192.0.2.2", "example.com", "::", "128.0.0.1"]) assert.equal(isLoopbackHost(h), false, h);
  assert.equal(hostOf("[::1]:7443"), "::1");
  assert.equal(hostOf("db-1.example:7443"), "db-1.example");
});

test("expiry: a warning from 30 days before, another once expired, nothing before that", () => {
  const now = new Date("2026-06-01T00:00:00Z");
  assert.equal(expiryWarning("cert", new Date("2026-07-15T00:00:00Z"), now), undefined);
  assert.match(expiryWarning("cert", new Date("2026-06-20T00:00:00Z"), now) ?? "", /^cert expires in 19 day\(s\).*SIGHUP/);
  assert.match(expiryWarning("cert", new Date("2026-05-31T00:00:00Z"), now) ?? "", /^cert expired on 2026-05-31/);
  assert.deepEqual(expiryWarnings([{ what: "junk", pem: "not a certificate" }], now), [], "unreadable files are start-up's business");
});

const AGENT = (controller: string, tls = "") => `
listen: 127.0.0.1:7443
${tls}
controller: { address: "${controller}", tokenFile: /t }
targets:
  - id: t1
    database: sqlite:////data/t1.db
    alembic: { dir: /app }
    backups: { dir: /backups/t1 }
`;

function agent(yaml: string) {
  return loadAgentConfig({ argv: ["--config", "/a.yaml"], env: {}, readFile: (p) => (p === "/a.yaml" ? yaml : "token-0123456789abcdef"), hostname: "h" });
}

test("agent config: tls.allow defaults to the controller's SPIFFE id; registration over plain HTTP only to loopback; controller.ca defaults to tls.ca", () => {
  const withTls = agent(AGENT("https://ctl.internal:7441", "tls: { cert: /c.pem, key: /k.pem, ca: /ca.pem }"));
  assert.deepEqual(withTls.tls?.allow, [CONTROLLER_SPIFFE_ID]);
  assert.equal(withTls.controller?.ca, "/ca.pem");
  assert.deepEqual(
    agent(AGENT("https://ctl.internal:7441", "tls: { cert: /c.pem, key: /k.pem, ca: /ca.pem, allow: [ctl.internal, 'spiffe://x/y'] }")).tls?.allow,
    ["ctl.internal", "spiffe://x/y"],
  );
  assert.equal(agent(AGENT("http://127.0.0.1:7441")).controller?.address, "http://127.0.0.1:7441");
  assert.throws(
    () => agent(AGENT("http://ctl.internal:7441")),
    (err: FlotillaError) => err.code === "CONFIG_INVALID" && /controller\.address.*plain HTTP.*https:\/\//.test(err.message),
  );
  assert.throws(
    () => agent(AGENT("https://ctl.internal:7441", "tls: { cert: /c.pem, key: /k.pem, ca: /ca.pem, allow: [] }")),
    /tls\.allow: must be a non-empty list/,
  );
  assert.throws(() => agent(AGENT("https://ctl.internal:7441", "tls: { cert: /c.pem, key: /k.pem, ca: /ca.pem, allow: ['a b'] }")), /tls\.allow\[0\]/);
});

test("controller config: agents[].identity and httpTls are read and checked", () => {
  const yaml = `
httpTls: { cert: /h.pem, key: /h-key.pem }
agents:
  - { id: a, address: "10.0.0.7:7443", identity: "spiffe://flotilla/agent/a" }
  - { id: b, address: "b.internal:7443" }
`;
  const c = loadControllerConfig({ argv: ["--config", "/c.yaml"], env: {}, readFile: () => yaml });
  assert.deepEqual(c.httpTls, { cert: "/h.pem", key: "/h-key.pem" });
  assert.deepEqual(
    c.agents.map((a) => a.identity ?? ""),
    ["spiffe://flotilla/agent/a", ""],
  );
  assert.throws(
    () => loadControllerConfig({ argv: ["--config", "/c.yaml"], env: {}, readFile: () => `agents: [{ id: a, address: "h:1", identity: "not valid;x" }]` }),
    /agents\[0\]\.identity/,
  );
});
