/**
 * `npm run demo` / `flotilla demo`: a controller and three agents on loopback,
 * Open WebUI-shaped SQLite databases at an old revision with real rows, stand-in
 * app servers holding their databases open; then the fleet, a plan, a
 * maintenance rollout in waves with a canary, a migration that fails half-way
 * and is restored exactly, a blue-green rollout and its rollback, and the audit
 * log with its verification. Cleans up unless --keep.
 */
import { createHash } from "node:crypto";
import { readFileSync } from "node:fs";
import { Fleet, dumpDatabase } from "../helpers/fleet.js";

interface Sink {
  write(s: string): unknown;
}

export interface DemoOptions {
  argv: string[];
  stdout: Sink;
  stderr: Sink;
  env: Readonly<Record<string, string | undefined>>;
}

const bold = (s: string): string => `\x1b[1m${s}\x1b[0m`;

export async function runDemo(o: DemoOptions): Promise<number> {
  const keep = o.argv.includes("--keep");
  const tty = (o.stdout as { isTTY?: boolean }).isTTY === true;
  const head = (title: string): void => {
    o.stdout.write(`\n${tty ? bold(`== ${title}`) : `== ${title}`}\n\n`);
  };
  const note = (text: string): void => {
    o.stdout.write(`${text}\n`);
  };
  const checks: string[] = [];
  const expect = (ok: boolean, what: string): void => {
    note(`${ok ? "  ok  " : "  FAILED  "} ${what}`);
    if (!ok) checks.push(what);
  };

  head("Starting a Flotilla fleet on this machine");
  note("A controller and three agents (host-a, host-b, host-c) on 127.0.0.1, each agent with Open WebUI-shaped");
  note("SQLite databases at revision c3d2e1f00d42 (an older release) holding real rows, and a small stand-in app");
  note("server per database that keeps its database open, like a running Open WebUI.");
  const fleet = new Fleet({
    agents: ["host-a", "host-b", "host-c"],
    keep,
    detached: keep,
    log: (line) => note(`  ${line}`),
    targets: [
      {
        id: "chat-eu",
        kind: "sqlite",
        owner: "host-a",
        labels: { env: "prod", region: "eu" },
        apps: [{ agent: "host-a" }],
        seed: { users: 200, chats: 2000, msgs: 4 },
      },
      {
        id: "chat-us",
        kind: "sqlite",
        owner: "host-b",
        labels: { env: "prod", region: "us" },
        apps: [{ agent: "host-b" }],
        seed: { users: 200, chats: 2000, msgs: 4 },
      },
      {
        id: "chat-ap",
        kind: "sqlite",
        owner: "host-c",
        labels: { env: "prod", region: "ap" },
        apps: [{ agent: "host-c" }],
        seed: { users: 200, chats: 2000, msgs: 4 },
      },
      // This one carries a fault: revision 0a7b8c9d0e1f raises after its DDL, like a real half-applied migration.
      { id: "chat-lab", kind: "sqlite", owner: "host-c", labels: { env: "lab" }, apps: [{ agent: "host-c" }], failAt: "0a7b8c9d0e1f" },
      {
        id: "chat-stage",
        kind: "sqlite",
        owner: "host-a",
        labels: { env: "staging" },
        blueGreen: true,
        apps: [
          { agent: "host-a", color: "blue" },
          { agent: "host-b", color: "green" },
        ],
      },
    ],
  });
  let code = 1;
  try {
    await fleet.start();
    note(`\ncontroller: ${fleet.controllerUrl}   (files in ${fleet.dir})`);

    head("1. The fleet: flotilla targets");
    await fleet.cliLive(["targets"], o.stdout);

    head("2. What a migration would do, changing nothing: flotilla plan --selector env=prod --waves 1,100%");
    const plan = await fleet.cli(["plan", "--selector", "env=prod", "--waves", "1,100%"]);
    const lines = plan.stdout.split("\n");
    o.stdout.write(`${lines.slice(0, 60).join("\n")}\n${lines.length > 60 ? `  … (${lines.length - 60} more lines of SQL and notes)\n` : ""}`);

    head("3. Maintenance rollout in waves: chat-ap first as the canary, then the rest");
    note("stop apps → backup → verify backup → migrate one revision at a time → verify → start → health\n");
    const r1 = await fleet.cliLive(["rollout", "--selector", "env=prod", "--strategy", "maintenance", "--waves", "1,100%", "--wait"], o.stdout);
    expect(r1.code === 0, "every prod target migrated to head and verified");

    head("4. A migration that fails half-way, restored exactly");
    const before = createHash("sha256")
      .update(await dumpDatabase(fleet.urls.get("chat-lab")!))
      .digest("hex");
    note(`before: chat-lab at ${(await fleet.revisionOf("chat-lab")).join(",")}, content fingerprint ${before.slice(0, 16)}`);
    note("revision 0a7b8c9d0e1f of chat-lab raises after its DDL: SQLite DDL is not transactional, so the table is left half-changed\n");
    const r2 = await fleet.cliLive(["rollout", "--selector", "env=lab", "--strategy", "maintenance", "--wait"], o.stdout);
    const after = createHash("sha256")
      .update(await dumpDatabase(fleet.urls.get("chat-lab")!))
      .digest("hex");
    note(`\nafter:  chat-lab at ${(await fleet.revisionOf("chat-lab")).join(",")}, content fingerprint ${after.slice(0, 16)}`);
    expect(r2.code === 1, "the rollout reports the failure (exit 1)");
    expect(before === after, "chat-lab is exactly as before: every table, every row (the agent restored its verified backup)");

    head("5. Blue-green: migrate a copy, switch traffic, keep blue for rollback");
    note("blue-green runs old and new code side by side: the compatibility gate wants additive revisions, or --allow-breaking (audited)\n");
    const r3 = await fleet.cliJson<{ id: string; status: string }>([
      "rollout",
      "--selector",
      "env=staging",
      "--strategy",
      "blue-green",
      "--allow-breaking",
      "--wait",
    ]);
    const bgShow = await fleet.cli(["rollout", "show", r3.doc.id]);
    o.stdout.write(bgShow.stdout);
    const lb = fleet.switchFiles.get("chat-stage")!;
    note(`load balancer now sends traffic to: ${readFileSync(lb, "utf8")}`);
    expect(r3.code === 0 && readFileSync(lb, "utf8") === "green", "green migrated and serving; blue kept untouched");
    note(`\n$ flotilla rollout rollback ${r3.doc.id} --yes --wait`);
    await fleet.cliLive(["rollout", "rollback", r3.doc.id, "--yes", "--wait"], o.stdout);
    const rolled = await fleet.cliJson<{ status: string }>(["rollout", "show", r3.doc.id]);
    note(`load balancer now sends traffic to: ${readFileSync(lb, "utf8")}`);
    expect(rolled.doc.status === "rolled-back" && readFileSync(lb, "utf8") === "blue", "rollback switched traffic back to blue and stopped green");

    head("6. The audit log: every API call and step, HMAC-chained");
    const audit = await fleet.cli(["audit", "--limit", "12"]);
    o.stdout.write(audit.stdout);
    note("\n$ flotilla audit verify");
    const v = await fleet.cliLive(["audit", "verify"], o.stdout);
    expect(v.code === 0, "the audit chain verifies");

    head(checks.length === 0 ? "Demo finished: everything behaved as expected" : `Demo finished with ${checks.length} unexpected result(s)`);
    if (keep) {
      note("The fleet is still running. Try:");
      note(`  export FLOTILLA_CONTROLLER=${fleet.controllerUrl}`);
      note("  npx flotilla targets");
      note("  npx flotilla diagnose chat-lab");
      note("  npx flotilla backups chat-eu");
      note(`  open ${fleet.controllerUrl}/ in a browser for the web page`);
      note(`Logs and databases are in ${fleet.dir}. When you are done, stop everything with:`);
      note(`  kill ${fleet.pids().join(" ")} && rm -rf ${fleet.dir}`);
    } else {
      note("To keep the fleet running and explore it yourself: npx flotilla demo --keep");
      note("Next: read README.md for pointing an agent at a real Open WebUI install (deploy/examples has configs).");
    }
    code = checks.length === 0 ? 0 : 1;
  } catch (err) {
    o.stderr.write(`flotilla demo: ${err instanceof Error ? err.message : String(err)}\n`);
    code = 1;
  } finally {
    if (!keep) {
      await fleet.stop();
      note("cleaned up: processes stopped, temporary files removed");
    }
  }
  return code;
}
