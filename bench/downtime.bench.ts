/**
 * What the app's users feel (P10): how long the app is down during a one-target maintenance
 * rollout, ÷ the same four steps measured alone on an identical copy.
 *
 * A real fleet on loopback (test/helpers/fleet.ts: agent and controller processes, a stand-in
 * app holding its SQLite database open, the fixture's long chain at c3d2e1f00d42 with seeded
 * rows). For each run, two identical targets:
 *
 *   rollout  `flotilla rollout --selector id=T --strategy maintenance --to head --wait`; the
 *            app's health endpoint is polled every 20 ms and the downtime is the span from the
 *            first failed poll to the first healthy one after it.
 *   alone    the agent's StopApps, then its verified Backup, then a bare
 *            `alembic upgrade head`, then StartApps (which returns once the app is healthy),
 *            each started when the previous one ended: the floor any tool has to pay.
 */
import { readFileSync } from "node:fs";
import { parse } from "yaml";
import { CANARY_SECRET, FIXTURE_DIR, Fleet, type AgentClient, run } from "../test/helpers/fleet.js";
import { type BenchOptions, type Figure, median, ratioFigure } from "./figure.js";

const INI = "alembic-chain.ini";
const HEAD = "cf1a0b9c8d7e";

async function drain(stream: AsyncIterable<{ event: { case: string | undefined; value?: unknown } }>): Promise<{ status: string; message: string }> {
  let result: { status: string; message: string } | undefined;
  for await (const ev of stream) if (ev.event.case === "result") result = ev.event.value as typeof result;
  if (!result) throw new Error("operation stream ended without a result");
  return result;
}

/** Polls `url` every 20 ms until stopped; returns the first outage's length in ms. */
function watchHealth(url: string): { stop(): Promise<number> } {
  let down: number | undefined;
  let outage: number | undefined;
  let running = true;
  const loop = (async () => {
    while (running) {
      const t = performance.now();
      let ok = false;
      try {
        const r = await fetch(url, { signal: AbortSignal.timeout(1000) });
        ok = r.ok;
        await r.arrayBuffer();
      } catch {
        ok = false;
      }
      if (!ok && down === undefined) down = t;
      if (ok && down !== undefined && outage === undefined) outage = performance.now() - down;
      await new Promise((r) => setTimeout(r, 20));
    }
  })();
  return {
    async stop() {
      running = false;
      await loop;
      if (outage === undefined) throw new Error(down === undefined ? "the app never went down" : "the app did not come back");
      return outage;
    },
  };
}

export async function measure(opts: BenchOptions): Promise<Figure[]> {
  const runs = opts.quick ? 1 : 3;
  const chats = opts.quick ? 3000 : 10000;
  const ids = Array.from({ length: runs }, (_, i) => i + 1);
  const fleet = new Fleet({
    agents: ["host"],
    targets: ids.flatMap((i) =>
      (["roll", "hand"] as const).map((side) => ({
        id: `${side}-${i}`,
        kind: "sqlite" as const,
        owner: "host",
        ini: INI,
        seed: { users: 300, chats, msgs: 10 },
        apps: [{ agent: "host" }],
      })),
    ),
  });
  try {
    opts.log(`starting a fleet with ${runs * 2} targets (${chats} chats × 10 messages each)`);
    await fleet.start();
    const config = parse(readFileSync(fleet.agents.get("host")!.configPath, "utf8")) as { apps: { target: string; health: string }[] };
    const healthOf = (target: string): string => config.apps.find((a) => a.target === target)!.health;
    const agent: AgentClient = fleet.agentClient("host");
    const rolloutMs: number[] = [];
    const aloneMs: number[] = [];
    for (const i of ids) {
      opts.log(`run ${i}: maintenance rollout`);
      const watch = watchHealth(healthOf(`roll-${i}`));
      await new Promise((r) => setTimeout(r, 100));
      const r = await fleet.cli(["rollout", "--selector", `id=roll-${i}`, "--strategy", "maintenance", "--to", "head", "--wait"]);
      if (r.code !== 0) throw new Error(`rollout of roll-${i} exited ${r.code}: ${r.stderr.slice(-800)}`);
      await new Promise((res) => setTimeout(res, 300));
      rolloutMs.push(await watch.stop());

      opts.log(`run ${i}: the same steps alone`);
      const target = `hand-${i}`;
      const t0 = performance.now();
      const stopped = await drain(agent.stopApps({ targetId: target, operationId: `bench-stop-${i}` }, { timeoutMs: 120_000 }));
      if (stopped.status !== "succeeded") throw new Error(`StopApps: ${stopped.message}`);
      const backup = await drain(agent.backup({ targetId: target, operationId: `bench-backup-${i}`, verify: true }, { timeoutMs: 600_000 }));
      if (backup.status !== "succeeded") throw new Error(`Backup: ${backup.message}`);
      const up = await run(["alembic", "-c", INI, "upgrade", "head"], {
        cwd: FIXTURE_DIR,
        env: { DATABASE_URL: fleet.urls.get(target)!, WEBUI_SECRET_KEY: CANARY_SECRET },
      });
      if (up.code !== 0) throw new Error(`alembic upgrade head: ${up.stderr.slice(-800)}`);
      const started = await drain(agent.startApps({ targetId: target, operationId: `bench-start-${i}` }, { timeoutMs: 120_000 }));
      if (started.status !== "succeeded") throw new Error(`StartApps: ${started.message}`);
      aloneMs.push(performance.now() - t0);
      const revs = await fleet.revisionOf(target);
      if (revs[0] !== HEAD) throw new Error(`${target} is at ${revs.join(",")} after the steps alone`);
    }
    return [
      ratioFigure(
        "P10",
        "app downtime of a one-target maintenance rollout ÷ stop + backup + migrate + start alone",
        median(rolloutMs),
        median(aloneMs),
        "ms",
        `16-revision chain, ${chats} chats × 10 messages, SQLite; rollout ${rolloutMs.map(Math.round).join("/")} ms, alone ${aloneMs.map(Math.round).join("/")} ms`,
      ),
    ];
  } finally {
    await fleet.stop();
  }
}
