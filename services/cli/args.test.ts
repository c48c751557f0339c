import { test } from "node:test";
import assert from "node:assert/strict";
import { DEFAULT_CONTROLLER, parseCommandLine, parseCron, parseDuration, parseRevision, parseSelector, parseTime, parseWaves, usageText } from "./args.js";

const NOW = new Date("2024-05-01T12:00:00.000Z");

function throwsUsage(fn: () => unknown, fragment: string | RegExp): void {
  assert.throws(fn, (err: Error) => {
    if (typeof fragment === "string") assert.ok(err.message.includes(fragment), `message ${JSON.stringify(err.message)} lacks ${JSON.stringify(fragment)}`);
    else assert.match(err.message, fragment);
    return true;
  });
}

test("waves: counts and percentages, ascending, 100% appended with a note", () => {
  assert.deepEqual(parseWaves("1,25%,100%"), { value: "1,25%,100%", note: undefined });
  const added = parseWaves("1,25%");
  assert.equal(added.value, "1,25%,100%");
  assert.match(added.note ?? "", /added a last wave of 100%/);
  assert.equal(parseWaves("2, 5 ,10").value, "2,5,10,100%");
  throwsUsage(() => parseWaves("1,abc"), '--waves: "1,abc" is not a wave list; use counts or percentages like 1,25%,100%');
  throwsUsage(() => parseWaves("0,100%"), "empty wave");
  throwsUsage(() => parseWaves("101%"), "1% to 100%");
  throwsUsage(() => parseWaves("0%"), "1% to 100%");
  throwsUsage(() => parseWaves("50%,25%"), "not ascending");
  throwsUsage(() => parseWaves("3,2"), "not ascending");
  throwsUsage(() => parseWaves("1.5"), "not a wave list");
  throwsUsage(() => parseWaves(""), "not a wave list");
});

test("selector: k=v pairs with a restricted alphabet, no key twice", () => {
  assert.equal(parseSelector("env=prod"), "env=prod");
  assert.equal(parseSelector("env=prod, region=eu-west/1"), "env=prod,region=eu-west/1");
  throwsUsage(() => parseSelector("env"), "is not a selector");
  throwsUsage(() => parseSelector("env=prod;rm -rf"), "is not a selector");
  throwsUsage(() => parseSelector("env=prod,,x=y"), "is not a selector");
  throwsUsage(() => parseSelector("env=a,env=b"), "gives env twice");
});

test("revision, duration, cron", () => {
  assert.equal(parseRevision("head"), "head");
  assert.equal(parseRevision("1b8c9d0e1f2a"), "1b8c9d0e1f2a");
  throwsUsage(() => parseRevision("abc-def"), "is not a revision");
  throwsUsage(() => parseRevision("x".repeat(65)), "is not a revision");
  assert.equal(parseDuration("1h30m"), "1h30m");
  assert.equal(parseDuration("30m"), "30m");
  throwsUsage(() => parseDuration("2 hours"), "is not a duration");
  throwsUsage(() => parseDuration("0m"), "is not a duration");
  assert.equal(parseCron("0 3 * * 0"), "0 3 * * 0");
  assert.equal(parseCron(" */5  1-3 * * MON "), "*/5 1-3 * * MON");
  throwsUsage(() => parseCron("0 3 * *"), "has 4 fields; a cron expression has 5");
  throwsUsage(() => parseCron("0 3 * * 0; reboot"), "has 6 fields");
  throwsUsage(() => parseCron("0 3 * * $(id)"), "is not a valid day-of-week field");
});

test("times: ISO 8601 or an age before now, always returned as ISO", () => {
  assert.equal(parseTime("1h", NOW, "--since"), "2024-05-01T11:00:00.000Z");
  assert.equal(parseTime("7d", NOW, "--since"), "2024-04-24T12:00:00.000Z");
  assert.equal(parseTime("1h30m", NOW, "--since"), "2024-05-01T10:30:00.000Z");
  assert.equal(parseTime("2024-04-30T03:00:00Z", NOW, "--since"), "2024-04-30T03:00:00.000Z");
  assert.equal(parseTime("2024-04-30T03:00:00+02:00", NOW, "--since"), "2024-04-30T01:00:00.000Z");
  throwsUsage(() => parseTime("yesterday", NOW, "--since"), '--since: "yesterday" is not a time');
  throwsUsage(() => parseTime("2024-13-45", NOW, "--until"), "is not a time");
});

test("command line: verb, sub-verb, global options anywhere, env fallbacks", () => {
  const a = parseCommandLine(["--controller", "http://10.0.0.5:7441", "--json", "rollout", "show", "r-17", "--follow"], {}, NOW);
  assert.ok(a.ok);
  assert.deepEqual(a.command, { verb: "rollout show", id: "r-17", follow: true });
  assert.equal(a.globals.controller, "http://10.0.0.5:7441/");
  assert.equal(a.globals.json, true);

  const b = parseCommandLine(["targets"], { FLOTILLA_CONTROLLER: "http://ctl:9000", FLOTILLA_TOKEN: "tok-from-env" }, NOW);
  assert.ok(b.ok);
  assert.equal(b.globals.controller, "http://ctl:9000/");
  assert.equal(b.globals.token, "tok-from-env");

  const c = parseCommandLine(["targets", "--token", "tok-flag"], { FLOTILLA_TOKEN: "tok-from-env" }, NOW);
  assert.ok(c.ok);
  assert.equal(c.globals.token, "tok-flag");
  assert.equal(c.globals.controller, DEFAULT_CONTROLLER);

  const d = parseCommandLine(["rollout", "--selector", "env=prod", "--strategy", "blue-green", "--waves", "1,50%", "--max-failures", "2", "--wait"], {}, NOW);
  assert.ok(d.ok);
  assert.deepEqual(d.command, {
    verb: "rollout",
    spec: { selector: "env=prod", toRevision: "head", strategy: "blue-green", waves: "1,50%,100%", maxFailures: 2, window: "", gate: "", allowBreaking: false },
    wait: true,
  });
  assert.equal(d.notes.length, 1);

  const e = parseCommandLine(["audit", "--since", "2h", "--actor", "alice", "--limit", "20"], {}, NOW);
  assert.ok(e.ok);
  assert.deepEqual(e.command, {
    verb: "audit",
    query: { since: "2024-05-01T10:00:00.000Z", until: "", target: "", actor: "alice", action: "", outcome: "", limit: 20 },
  });

  const f = parseCommandLine(["rollout", "--help"], {}, NOW);
  assert.ok(f.ok);
  assert.deepEqual(f.command, { verb: "help", topic: "rollout" });
});

test("command line: recover takes restore, accept or forward (an interrupted online migration goes on)", () => {
  for (const action of ["restore", "accept", "forward"]) {
    const r = parseCommandLine(["recover", "webui-1", "--action", action], {}, NOW);
    assert.ok(r.ok, action);
    assert.deepEqual(r.command, { verb: "recover", target: "webui-1", operationId: "", action });
  }
});

test("command line: each mistake is named with what to do", () => {
  const cases: Array<[string[], string]> = [
    [[], "no verb given"],
    [["frobnicate"], 'unknown verb "frobnicate"'],
    [["targets", "--bogus"], "unknown option --bogus"],
    [["targets", "--selector"], "--selector needs a value"],
    [["plan", "--selector", "--json"], "--selector needs a value"],
    [["targets", "--json=yes"], "--json takes no value"],
    [["diagnose"], "missing TARGET"],
    [["diagnose", "a", "b"], 'unexpected argument "b"'],
    [["schedule"], "schedule needs add or rm"],
    [["rollout", "--selector", "env=prod"], "--strategy is required"],
    [["rollout", "--selector", "env=prod", "--strategy", "canary"], '"canary" is not a strategy; use one of maintenance, job, blue-green'],
    [["rollout", "--selector", "env=prod", "--strategy", "job", "--max-failures", "-1"], "is not a whole number ≥ 0"],
    [["restore", "webui-1", "bk-1"], "flotilla restore webui-1 bk-1 --yes"],
    [["downgrade", "webui-1", "--to", "c3d2e1f00d42"], "the data in them is lost"],
    [["stamp", "webui-1", "head", "--reason", "fix"], "created-with-create-all, imported-backup, applied-by-hand"],
    [["audit", "--since", "1h", "--until", "2h"], "is after --until"],
    [["targets", "--controller", "ftp://x"], "is not an http(s) URL"],
    [["targets", "--controller", "http://user:pw@x"], "no credentials in the URL"],
    [["recover", "webui-1", "--action", "rollback"], 'recover needs --action restore, accept or forward (not "rollback")'],
  ];
  for (const [argv, fragment] of cases) {
    const r = parseCommandLine(argv, {}, NOW);
    assert.equal(r.ok, false, `${argv.join(" ")} should be refused`);
    if (!r.ok) assert.ok(r.message.includes(fragment), `${argv.join(" ")}: ${JSON.stringify(r.message)} lacks ${JSON.stringify(fragment)}`);
  }
});

test("usage lists every verb", () => {
  const text = usageText();
  for (const verb of [
    "targets",
    "diagnose",
    "backup TARGET",
    "backups",
    "restore",
    "plan",
    "rollout --selector",
    "rollouts",
    "rollout show",
    "rollout abort",
    "rollout rollback",
    "downgrade",
    "stamp",
    "schedule add",
    "schedules",
    "schedule rm",
    "audit [",
    "audit verify",
    "audit export",
    "demo",
    "help",
    "--version",
  ]) {
    assert.ok(text.includes(verb), `usage lacks ${verb}`);
  }
});
