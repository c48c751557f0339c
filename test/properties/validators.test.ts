/**
 * Property-based tests (fast-check) of every parser and validator that meets
 * input from outside: the rollout request contract (selectors, waves,
 * durations, revisions, gates, names, cron, time zones, failure limits),
 * revision resolution, backup and operation ids, database and controller URLs,
 * certificate identities and SAN text, both daemons' config loaders and the
 * CLI's command line. For arbitrary (and deliberately hostile) input each must
 * answer without throwing anything but a FlotillaError, and what it accepts
 * must be safe to use: no path escapes, no `-`-prefixed revision, no shell
 * metacharacter, NUL or newline, no secret in an error message.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { resolve, sep } from "node:path";
import fc from "fast-check";
import cron from "node-cron";
import { stringify } from "yaml";
import {
  checkCron,
  checkDuration,
  checkGate,
  checkMaxFailures,
  checkName,
  checkRevision,
  checkSelector,
  checkStrategy,
  checkTimeZone,
  checkWaves,
  compileRolloutRequest,
  compileScheduleRequest,
  durationMs,
  gateTimeoutMs,
  matchesSelector,
  selectorPairs,
  waveSizes,
} from "../../services/common/rollout-request.js";
import { FlotillaError } from "../../services/common/errors.js";
import { resolveTarget } from "../../services/agent/core/revisions.js";
import { assertBackupId } from "../../services/agent/adapters/backup-catalog.js";
import { formatPgUrl, parsePgUrl } from "../../services/agent/adapters/pg-url.js";
import { loadAgentConfig, parseDatabaseUrl } from "../../services/agent/config.js";
import { loadControllerConfig } from "../../services/controller/config.js";
import { parseCommandLine } from "../../services/cli/args.js";
import { identityProblem, namesInclude, parseSubjectAltName } from "../../services/common/tls.js";

/** How many cases each property runs (FLOTILLA_FUZZ_RUNS raises it for `npm run fuzz`). */
const RUNS = Number(process.env.FLOTILLA_PROPERTY_RUNS ?? 400);
const opts = { numRuns: RUNS };

/** Strings an attacker would try: shell metacharacters, traversal, option injection, control characters. */
const HOSTILE_PIECES = [
  "constructor",
  "__proto__",
  "toString",
  "-",
  "--",
  "../",
  "..",
  "/",
  "\\",
  ";",
  "|",
  "&",
  "$(",
  "`",
  "'",
  '"',
  "\n",
  "\r",
  "\0",
  " ",
  "\t",
  "*",
  "?",
  "~",
  "%00",
  "%2e%2e%2f",
  "=",
  ",",
  "${IFS}",
  "💥",
  "\u202e",
  ":",
  "@",
  "#",
];
const hostile = fc.oneof(
  fc.string({ maxLength: 80 }),
  fc.string({ unit: "grapheme", maxLength: 40 }),
  fc.array(fc.oneof(fc.constantFrom(...HOSTILE_PIECES), fc.stringMatching(/^[A-Za-z0-9_.]{0,8}$/)), { maxLength: 12 }).map((a) => a.join("")),
);
const UNSAFE = /[\0\n\r\t ;|&$`'"\\<>*?~]/;

/** Throws only FlotillaErrors (or nothing). */
function onlyFlotillaErrors(fn: () => unknown): unknown {
  try {
    return fn();
  } catch (err) {
    assert.ok(err instanceof FlotillaError, `threw something other than a FlotillaError: ${(err as Error)?.stack ?? String(err)}`);
    return err;
  }
}

function inside(base: string, name: string): boolean {
  const p = resolve(base, name);
  return p.startsWith(base + sep) && p !== base;
}

const label = fc.stringMatching(/^[A-Za-z0-9._/-]{1,12}$/);

test("selectors: never throw; accepted ones are key=value pairs of safe characters, normalized idempotently and matched exactly", () => {
  fc.assert(
    fc.property(hostile, (raw) => {
      const r = checkSelector(raw);
      if (!r.ok) return;
      assert.doesNotMatch(r.value, UNSAFE);
      const again = checkSelector(r.value);
      assert.ok(again.ok && again.value === r.value);
      for (const [k, v] of selectorPairs(r.value)) assert.ok(/^[A-Za-z0-9._/-]+$/.test(k) && /^[A-Za-z0-9._/-]+$/.test(v));
    }),
    opts,
  );
  fc.assert(
    fc.property(fc.uniqueArray(fc.tuple(label, label), { minLength: 1, maxLength: 5, selector: ([k]) => k }), (pairs) => {
      const text = pairs.map(([k, v]) => `${k}=${v}`).join(",");
      const r = checkSelector(text);
      assert.ok(r.ok, text);
      assert.deepEqual(selectorPairs(r.value), pairs);
      const labels = Object.fromEntries(pairs);
      assert.equal(matchesSelector({ id: labels.id ?? "t", labels }, selectorPairs(r.value)), true);
    }),
    opts,
  );
});

test("waves: never throw; accepted ones end at 100% and split any fleet into non-empty waves covering every target once", () => {
  const waveItem = fc.oneof(
    fc.integer({ min: -5, max: 2000 }).map(String),
    fc.integer({ min: -5, max: 150 }).map((n) => `${n}%`),
    hostile,
  );
  fc.assert(
    fc.property(
      fc.oneof(
        hostile,
        fc.array(waveItem, { minLength: 1, maxLength: 6 }).map((a) => a.join(",")),
      ),
      fc.integer({ min: 0, max: 3000 }),
      (raw, total) => {
        const r = checkWaves(raw);
        if (!r.ok) return;
        assert.ok(r.value.endsWith("100%"));
        const sizes = waveSizes(r.value, total);
        assert.equal(
          sizes.reduce((a, b) => a + b, 0),
          total,
        );
        assert.ok(sizes.every((s) => Number.isInteger(s) && s > 0));
      },
    ),
    opts,
  );
});

test("durations and gates: never throw; accepted durations are positive whole milliseconds, and d/h/m/s add up", () => {
  fc.assert(
    fc.property(hostile, (raw) => {
      const ms = durationMs(raw);
      if (ms !== undefined) assert.ok(Number.isSafeInteger(ms) && ms > 0);
      assert.equal(checkDuration(raw).ok, ms !== undefined);
      const g = checkGate(raw);
      if (g.ok) assert.ok(g.value === "" || g.value === "manual" || (gateTimeoutMs(g.value) ?? 0) > 0);
    }),
    opts,
  );
  fc.assert(
    fc.property(fc.nat(30), fc.nat(23), fc.nat(59), fc.nat(59), (d, h, m, s) => {
      const text = `${d ? `${d}d` : ""}${h ? `${h}h` : ""}${m ? `${m}m` : ""}${s ? `${s}s` : ""}`;
      const want = (((d * 24 + h) * 60 + m) * 60 + s) * 1000;
      assert.equal(durationMs(text), want > 0 ? want : undefined);
    }),
    opts,
  );
});

test("revisions: nothing accepted can be read as an option or a path, and resolution takes only ids it knows", () => {
  const known = new Set(["a1f0c0de0001", "c3d2e1f00d42", "1b8c9d0e1f2a"]);
  const graph = { heads: ["1b8c9d0e1f2a"], revisions: known } as unknown as Parameters<typeof resolveTarget>[0];
  const revisionish = fc.oneof(
    hostile,
    fc.constantFrom("-1", "+2", "--sql", "-x", "head", "heads", "base", "head~1", "1b8c9d0e1f2a", "c3d2e1f00d42@head", "a1f0c0de0001:c3d2e1f00d42"),
  );
  fc.assert(
    fc.property(revisionish, (raw) => {
      const r = checkRevision(raw);
      if (r.ok) {
        assert.doesNotMatch(r.value, /^-/);
        assert.match(r.value, /^[A-Za-z0-9_]{1,64}$/);
      }
      const out = onlyFlotillaErrors(() => resolveTarget(graph, raw));
      if (typeof out === "string") assert.ok(known.has(out), `resolved ${JSON.stringify(raw)} to ${out}`);
    }),
    opts,
  );
});

test("names, target ids, backup ids: never a path that leaves its folder", () => {
  fc.assert(
    fc.property(hostile, (raw) => {
      const n = checkName(raw);
      if (n.ok) {
        assert.ok(inside("/data/flotilla", n.value), raw);
        assert.doesNotMatch(n.value, UNSAFE);
      }
      const b = onlyFlotillaErrors(() => assertBackupId(raw));
      if (!(b instanceof FlotillaError)) {
        assert.ok(inside("/backups/t", `${raw}.db`) && inside("/backups/t", raw), raw);
        assert.doesNotMatch(raw, UNSAFE);
      } else {
        assert.equal(b.code, "INVALID_ARGUMENT");
      }
    }),
    opts,
  );
});

test("cron: never throws; what it accepts node-cron accepts too (the scheduler cannot fail on a validated expression)", () => {
  const part = fc.oneof(
    fc.constant("*"),
    fc.integer({ min: -1, max: 61 }).map(String),
    fc.constantFrom("*/5", "1-5", "mon", "sun-sat", "jan", "dec", "7", "0/0", "5-1", "1,2,3", "*/0", "L", "?"),
  );
  const expr = fc.oneof(
    hostile,
    fc.array(part, { minLength: 4, maxLength: 6 }).map((a) => a.join(" ")),
  );
  fc.assert(
    fc.property(expr, (raw) => {
      const r = checkCron(raw);
      if (!r.ok) return;
      assert.equal(cron.validate(r.value), true, `checkCron accepted ${JSON.stringify(raw)} but node-cron refuses it`);
    }),
    opts,
  );
});

test("strategies, failure limits, time zones: closed sets and bounded numbers", () => {
  fc.assert(
    fc.property(hostile, fc.oneof(fc.integer(), fc.double(), hostile), (raw, n) => {
      const s = checkStrategy(raw);
      if (s.ok) assert.ok(["maintenance", "job", "blue-green"].includes(s.value));
      const m = checkMaxFailures(n as number | string);
      if (m.ok) assert.ok(Number.isInteger(m.value) && m.value >= 0 && m.value <= 10_000);
      const z = checkTimeZone(raw);
      if (z.ok) assert.doesNotMatch(z.value, /[\0\n]/);
    }),
    opts,
  );
});

test("whole rollout and schedule requests: never throw, problems name their field, accepted specs hold only validated values", () => {
  const field = fc.oneof(hostile, fc.constantFrom("", "env=prod", "head", "maintenance", "job", "1,25%,100%", "2h", "manual:30m", "0 3 * * 0", "UTC"));
  const input = fc.record(
    {
      selector: field,
      toRevision: field,
      strategy: field,
      waves: field,
      maxFailures: fc.oneof(fc.integer({ min: -10, max: 20000 }), field),
      window: field,
      gate: field,
      name: field,
      cron: field,
      timeZone: field,
    },
    { requiredKeys: [] },
  );
  fc.assert(
    fc.property(input, fc.boolean(), (req, strategyRequired) => {
      const r = compileRolloutRequest(req as never, { strategyRequired });
      if (r.ok) {
        assert.ok(checkSelector(r.value.selector).ok);
        assert.ok(r.value.toRevision === "head" || checkRevision(r.value.toRevision).ok);
      } else {
        assert.ok(r.problems.length > 0 && r.problems.every((p) => p.field !== "" && p.message !== ""));
      }
      const s = compileScheduleRequest(req as never);
      if (s.ok) assert.ok(cron.validate((s.value as unknown as { cron: string }).cron));
    }),
    opts,
  );
});

test("PostgreSQL URLs: only CONFIG_INVALID errors, never carrying the password; a formatted URL parses back to the same parts", () => {
  const secret = "S3cr3t-pw-Zq81xK";
  fc.assert(
    fc.property(hostile, hostile, (a, b) => {
      for (const url of [a, `postgresql://${a}`, `postgresql://u:${secret}@${a}/${b}`, `postgres://${a}:${secret}@h/${b}?${a}`]) {
        const out = onlyFlotillaErrors(() => parsePgUrl(url));
        if (out instanceof FlotillaError) assert.equal(out.message.includes(secret), false, `the message leaks the password: ${out.message}`);
      }
    }),
    opts,
  );
  const word = fc.string({ minLength: 1, maxLength: 16 }).filter((s) => !s.includes("\0"));
  fc.assert(
    fc.property(
      word,
      word,
      fc.option(word, { nil: undefined }),
      fc.constantFrom("db.example", "10.0.0.7", "::1", "localhost"),
      fc.integer({ min: 1, max: 65535 }),
      (user, database, password, host, port) => {
        const parts = { host, port, user, database, ...(password !== undefined ? { password } : {}) };
        assert.deepEqual(parsePgUrl(formatPgUrl(parts, { withPassword: true })), parts);
        const shown = formatPgUrl(parts, { withPassword: false });
        if (password !== undefined && password.length > 3) assert.equal(shown.includes(`:${encodeURIComponent(password)}@`), false);
      },
    ),
    opts,
  );
});

test("database URLs in the agent config: a value or a sentence, never a throw", () => {
  fc.assert(
    fc.property(hostile, (raw) => {
      for (const url of [raw, `sqlite:///${raw}`, `postgresql://${raw}`]) {
        const r = parseDatabaseUrl(url);
        assert.ok(typeof r === "string" || r.kind === "sqlite" || r.kind === "postgresql");
      }
    }),
    opts,
  );
});

test("certificate identities and SAN text: never throw; a name put in a SAN list is found there, nothing else is", () => {
  fc.assert(
    fc.property(hostile, hostile, (text, identity) => {
      const names = parseSubjectAltName(text);
      identityProblem(identity);
      namesInclude(names, identity);
    }),
    opts,
  );
  const dns = fc.domain();
  fc.assert(
    fc.property(fc.uniqueArray(dns, { minLength: 1, maxLength: 4 }), fc.ipV4(), fc.stringMatching(/^[a-z0-9-]{1,12}$/), (hosts, ip, id) => {
      const text = [...hosts.map((h) => `DNS:${h}`), `IP Address:${ip}`, `URI:spiffe://flotilla/agent/${id}`].join(", ");
      const names = parseSubjectAltName(text);
      for (const h of hosts) assert.ok(namesInclude(names, h), h);
      assert.ok(namesInclude(names, ip));
      assert.ok(namesInclude(names, `spiffe://flotilla/agent/${id}`));
      assert.equal(namesInclude(names, `spiffe://flotilla/agent/${id}x`), false);
      assert.equal(namesInclude(names, "spiffe://flotilla/controller"), false, "an agent's names never include the controller's identity");
      assert.equal(identityProblem(`spiffe://flotilla/agent/${id}`), undefined);
    }),
    opts,
  );
});

test("config files: arbitrary YAML documents give CONFIG_INVALID with key paths, never a crash", () => {
  const scalar = fc.oneof(hostile, fc.integer(), fc.boolean(), fc.constant(null), fc.double());
  const value = fc.letrec((tie) => ({
    any: fc.oneof(
      { depthSize: "small" },
      scalar,
      fc.array(tie("any"), { maxLength: 3 }),
      fc.dictionary(
        fc.oneof(hostile, fc.constantFrom("id", "address", "cert", "allow", "tls", "targets", "database", "constructor", "__proto__", "toString")),
        tie("any"),
        { maxKeys: 4 },
      ),
    ),
  })).any;
  const agentKeys = ["agentId", "listen", "tls", "dataDir", "targets", "apps", "controller", "logLevel"];
  const controllerKeys = ["listen", "store", "dataDir", "tls", "httpTls", "agents", "tokens", "schedules", "agentTimeoutSeconds"];
  const doc = (keys: string[]) => fc.dictionary(fc.oneof(fc.constantFrom(...keys), hostile), value, { maxKeys: 6 });
  const readFile = (path: string): string => {
    if (path.endsWith("config.yaml")) throw new Error("unreachable");
    if (path.includes("missing")) throw Object.assign(new Error("ENOENT"), { code: "ENOENT" });
    return "file-content-0123456789abcdef";
  };
  fc.assert(
    fc.property(doc(agentKeys), doc(controllerKeys), (agentDoc, controllerDoc) => {
      for (const [text, load] of [
        [
          stringify(agentDoc),
          (t: string) => loadAgentConfig({ argv: ["--config", "/etc/a.yaml"], env: {}, readFile: (p) => (p === "/etc/a.yaml" ? t : readFile(p)) }),
        ],
        [
          stringify(controllerDoc),
          (t: string) => loadControllerConfig({ argv: ["--config", "/etc/c.yaml"], env: {}, readFile: (p) => (p === "/etc/c.yaml" ? t : readFile(p)) }),
        ],
      ] as const) {
        const out = onlyFlotillaErrors(() => load(text));
        if (out instanceof FlotillaError) assert.equal(out.code, "CONFIG_INVALID", out.message);
      }
    }),
    { numRuns: Math.max(100, Math.floor(RUNS / 2)) },
  );
});

test("the CLI command line: any argv gives a command or a usage message, never a throw", () => {
  const token = fc.oneof(
    hostile,
    fc.constantFrom(
      "rollout",
      "plan",
      "targets",
      "--selector",
      "--to",
      "--waves",
      "--strategy",
      "--json",
      "--controller",
      "--token",
      "--ca",
      "schedule",
      "add",
      "--cron",
      "audit",
      "--since",
      "restore",
      "--yes",
      "stamp",
      "--reason",
      "-h",
      "--",
      "show",
      "abort",
      "certs",
      "valueOf",
      "--constructor",
      "--toString=1",
      "--__proto__",
      "hasOwnProperty",
    ),
  );
  fc.assert(
    fc.property(fc.array(token, { maxLength: 8 }), (argv) => {
      const r = parseCommandLine(argv, {}, new Date("2026-01-01T00:00:00Z"));
      if (!r.ok) assert.ok(r.message.length > 0);
      else if (r.command.verb === "rollout") {
        const spec = (r.command as unknown as { spec?: { toRevision?: string } }).spec;
        if (spec?.toRevision) assert.doesNotMatch(spec.toRevision, /^-/);
      }
    }),
    opts,
  );
});
