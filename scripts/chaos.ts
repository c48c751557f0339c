/**
 * `npm run chaos`: fault injection against a real fleet (agent and controller
 * processes from bin/, SQLite and PostgreSQL targets, stand-in apps), one class
 * of fault at a time, at seeded random points, with a table of what happened.
 *
 *   npm run chaos                      full form (>= 20 agent kill points)
 *   npm run chaos -- --quick           short form (CI)
 *   npm run chaos -- --seed 7 --json   another seed; machine-readable rows
 *
 * For every trial the harness checks, after the fault and the recovery the
 * system performs by itself (or the one instruction it gives):
 *   lost      a row differs from before (at the old revision: the full dump; at the new: every table's rows)
 *   twice     the agent's journal shows the target's migration succeeding more than once
 *   unaudited an agent operation of the trial that no audit row names
 *   stuck     no terminal outcome in time, or the target still locked / holding an interrupted operation
 * "survived" = none of the above and the app instances running again.
 * Exit code 1 when any lost/twice/unaudited/stuck figure is not 0.
 */
import { execFileSync } from "node:child_process";
import { closeSync, existsSync, mkdirSync, openSync, readdirSync, readFileSync, watch, writeFileSync, writeSync } from "node:fs";
import { createServer, connect, type Server, type Socket } from "node:net";
import { join } from "node:path";
import { parse } from "yaml";
import Database from "better-sqlite3";
import pg from "pg";
import { Fleet, HEAD_REVISION, OLD_REVISION, dumpDatabase, freePort, type TargetSpec } from "../test/helpers/fleet.js";

const argv = process.argv.slice(2);
const QUICK = argv.includes("--quick");
const JSON_OUT = argv.includes("--json");
const SEED = Number(argv[argv.indexOf("--seed") + 1] ?? "") || 20261126;
const KILL_POINTS = QUICK ? 4 : 24;
/** `--only WORD`: run only the classes whose function name contains WORD (for working on one class). */
const ONLY = argv.includes("--only") ? argv[argv.indexOf("--only") + 1] ?? "" : "";
const wanted = (name: string): boolean => ONLY === "" || name.toLowerCase().includes(ONLY.toLowerCase());
const TERMINAL = new Set(["succeeded", "failed", "halted", "aborted", "rolled-back"]);

/** mulberry32: a small seeded generator, so every run with one seed injects at the same points. */
function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}
const random = rng(SEED);
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const say = (s: string) => { if (!JSON_OUT) process.stderr.write(`chaos: ${s}\n`); };

interface Row {
  cls: string; injected: number; survived: number; lost: number; twice: number; unaudited: number; stuck: number; recoverMs: number[]; notes: string[];
}
const rows: Row[] = [];
function row(cls: string): Row {
  const r: Row = { cls, injected: 0, survived: 0, lost: 0, twice: 0, unaudited: 0, stuck: 0, recoverMs: [], notes: [] };
  rows.push(r);
  return r;
}

// ------------------------------------------------------------------------------------ fleet access

let fleet: Fleet;
let proxyPort = 0;

/** (Re)starts the controller; it reaches agent h2 through the fault proxy. */
async function startCtl(): Promise<void> {
  const h2 = fleet.agents.get("h2")!;
  const real = h2.port;
  if (proxyPort) h2.port = proxyPort;
  try {
    await fleet.startController();
  } finally {
    h2.port = real;
  }
}

async function api<T = Record<string, unknown>>(method: string, body: unknown, timeoutMs = 60_000): Promise<{ status: number; json: T }> {
  const r = await fetch(`${fleet.controllerUrl}/v1/${method}`, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(body), signal: AbortSignal.timeout(timeoutMs) });
  const text = await r.text();
  let json: T;
  try { json = JSON.parse(text.trim().split("\n").at(-1) ?? "{}") as T; } catch { json = { raw: text } as T; }
  return { status: r.status, json };
}

interface RolloutJson { id: string; status: string; message: string; targets: { targetId: string; status: string; message: string }[] }

async function waitRollout(id: string, timeoutMs: number): Promise<RolloutJson | undefined> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    try {
      const r = await api<RolloutJson>("GetRollout", { id }, 10_000);
      if (r.status === 200 && TERMINAL.has(r.json.status)) return r.json;
    } catch { /* controller down or restarting */ }
    await sleep(500);
  }
  return undefined;
}

async function waitHttp(timeoutMs = 60_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    try { if ((await fetch(`${fleet.controllerUrl}/healthz`, { signal: AbortSignal.timeout(2000) })).ok) return; } catch { /* not yet */ }
    await sleep(200);
  }
  throw new Error("controller did not come back");
}

/** Rows of every table but alembic_version, by table. */
async function tableRows(url: string): Promise<Map<string, string[]>> {
  const out = new Map<string, string[]>();
  if (url.startsWith("sqlite:///")) {
    const db = new Database(url.slice("sqlite:///".length), { readonly: true, fileMustExist: true });
    try {
      const tables = (db.prepare("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' AND name <> 'alembic_version'").all() as { name: string }[]).map((t) => t.name);
      for (const t of tables) out.set(t, (db.prepare(`SELECT * FROM "${t}"`).all() as Record<string, unknown>[]).map((r) => JSON.stringify(r)));
    } finally { db.close(); }
    return out;
  }
  const c = new pg.Client({ connectionString: url });
  await c.connect();
  try {
    const tables = (await c.query<{ table_name: string }>("SELECT table_name FROM information_schema.tables WHERE table_schema = 'public' AND table_name <> 'alembic_version'")).rows.map((r) => r.table_name);
    for (const t of tables) out.set(t, (await c.query(`SELECT * FROM "${t}"`)).rows.map((r) => JSON.stringify(r)));
  } finally { await c.end(); }
  return out;
}

/** True when a row of `before` is missing after (old columns compared; new columns may be added by migrations). */
function rowsLost(before: Map<string, string[]>, after: Map<string, string[]>): boolean {
  for (const [t, rs] of before) {
    const now = after.get(t);
    if (!now || now.length < rs.length) return true;
    const keys = rs.length ? Object.keys(JSON.parse(rs[0]!) as object) : [];
    const project = (r: string) => { const o = JSON.parse(r) as Record<string, unknown>; return JSON.stringify(keys.map((k) => o[k])); };
    const have = new Set(now.map(project));
    if (rs.some((r) => !have.has(project(r)))) return true;
  }
  return false;
}

interface Snapshot { dump: string; rows: Map<string, string[]> }
async function snapshot(targetId: string): Promise<Snapshot> {
  const url = fleet.urls.get(targetId)!;
  return { dump: await dumpDatabase(url), rows: await tableRows(url) };
}

/** Judges a target after a trial: the figures of one row. */
async function judge(targetId: string, agentId: string, before: Snapshot, opts: { rolloutId?: string; terminal: boolean; apps?: boolean }): Promise<{ lost: boolean; twice: boolean; unaudited: string[]; stuck: boolean; appsUp: boolean; detail: string }> {
  const url = fleet.urls.get(targetId)!;
  const rev = await fleet.revisionOf(targetId).catch(() => [] as string[]);
  let lost: boolean;
  if (rev.length === 1 && rev[0] === OLD_REVISION) lost = (await dumpDatabase(url)) !== before.dump;
  else if (rev.length === 1 && rev[0] === HEAD_REVISION) lost = rowsLost(before.rows, await tableRows(url));
  else lost = true;
  const client = fleet.agentClient(agentId);
  let ops: { id: string; kind: string; state: string }[] = [];
  let status: { busyOperationId: string; interruptedOperationIds: string[]; apps: { state: string }[] } | undefined;
  for (let i = 0; i < 40 && !status; i++) {
    try {
      ops = (await client.listOperations({ targetId, limit: 200 }, { timeoutMs: 5000 })).operations;
      status = await client.getStatus({ targetId }, { timeoutMs: 5000 });
    } catch { await sleep(500); }
  }
  const mine = opts.rolloutId ? ops.filter((o) => o.id.includes(opts.rolloutId!)) : ops;
  const twice = mine.filter((o) => o.kind === "migrate" && o.state === "succeeded").length > 1;
  let unaudited: string[] = [];
  if (opts.rolloutId) {
    const audit = await api<{ entries: { args: string }[] }>("QueryAudit", { target: targetId, limit: 10_000 }).catch(() => ({ json: { entries: [] } }));
    const named = new Set<string>();
    for (const e of audit.json.entries ?? []) {
      try { const a = JSON.parse(e.args) as { operation?: string }; if (a.operation) named.add(a.operation); } catch { /* not JSON */ }
    }
    unaudited = mine.filter((o) => ![...named].some((n) => o.id === n || o.id.startsWith(`${n}.`))).map((o) => `${o.kind}:${o.id}`);
  }
  const stuck = !opts.terminal || !status || status.busyOperationId !== "" || status.interruptedOperationIds.length > 0;
  const appsUp = opts.apps === false || (status?.apps ?? []).every((a) => a.state === "running");
  return { lost, twice, unaudited, stuck, appsUp, detail: `rev ${rev.join(",")}; busy ${status?.busyOperationId ?? "?"}; interrupted ${status?.interruptedOperationIds.join(",") ?? "?"}` };
}

function record(r: Row, j: Awaited<ReturnType<typeof judge>>, recoverMs: number | undefined, label: string): void {
  r.injected++;
  if (j.lost) r.lost++;
  if (j.twice) r.twice++;
  if (j.unaudited.length) r.unaudited++;
  if (j.stuck) r.stuck++;
  const ok = !j.lost && !j.twice && !j.unaudited.length && !j.stuck && j.appsUp;
  if (ok) { r.survived++; if (recoverMs !== undefined) r.recoverMs.push(recoverMs); } else r.notes.push(`${label}: ${j.lost ? "lost " : ""}${j.twice ? "twice " : ""}${j.unaudited.length ? `unaudited(${j.unaudited.join(" ")}) ` : ""}${j.stuck ? "stuck " : ""}${j.appsUp ? "" : "apps-down "}${j.detail}`);
  say(`${r.cls} ${label}: ${ok ? "survived" : "NOT survived"} (${j.detail})`);
}

async function startRollout(targetId: string): Promise<string> {
  for (let i = 0; i < 60; i++) {
    const r = await api<{ id: string; code?: string; message?: string }>("StartRollout", { selector: `id=${targetId}`, strategy: "maintenance", toRevision: "head" });
    if (r.status === 200 && r.json.id) return r.json.id;
    await sleep(1000);
    if (i === 59) throw new Error(`cannot start a rollout on ${targetId}: ${JSON.stringify(r.json)}`);
  }
  throw new Error("unreachable");
}

// ------------------------------------------------------------------------------------ classes

/** kill -9 of the agent at seeded points of a maintenance rollout (stop, backup, migrate, verify, start). */
async function agentKills(targets: string[], window: number): Promise<void> {
  const r = row("agent kill -9 mid-rollout");
  for (const t of targets) {
    const before = await snapshot(t);
    const at = Math.round(random() * window);
    const id = await startRollout(t);
    await sleep(at);
    await fleet.killAgent("h1", "SIGKILL");
    const killedAt = Date.now();
    await fleet.startAgent("h1");
    const done = await waitRollout(id, 150_000);
    record(r, await judge(t, "h1", before, { rolloutId: id, terminal: done !== undefined }), Date.now() - killedAt, `${t} at ${at} ms (${done?.status ?? "no end"})`);
  }
}

/** kill -9 and SIGSTOP/SIGCONT of the controller mid-rollout. */
async function controllerFaults(targets: string[], window: number): Promise<void> {
  const r = row("controller kill -9 / SIGSTOP mid-rollout");
  for (const [i, t] of targets.entries()) {
    const before = await snapshot(t);
    const at = Math.round(random() * window);
    const id = await startRollout(t);
    await sleep(at);
    const faultAt = Date.now();
    if (i % 2 === 0) {
      await fleet.killController("SIGKILL");
      await startCtl();
    } else {
      fleet.controllerProc!.kill("SIGSTOP");
      await sleep(1500 + Math.round(random() * 2000));
      fleet.controllerProc!.kill("SIGCONT");
    }
    await waitHttp();
    const done = await waitRollout(id, 150_000);
    record(r, await judge(t, "h1", before, { rolloutId: id, terminal: done !== undefined }), Date.now() - faultAt, `${t} ${i % 2 === 0 ? "kill -9" : "SIGSTOP"} at ${at} ms (${done?.status ?? "no end"})`);
  }
}

/** A TCP proxy between the controller and an agent that can reset, black-hole or delay connections. */
class FaultyProxy {
  server!: Server;
  port = 0;
  readonly sockets = new Set<Socket>();
  mode: "pass" | "drop" = "pass";
  delayMs = 0;
  constructor(private readonly upstream: () => number) {}
  async start(port = 0): Promise<void> {
    this.server = createServer((down) => {
      if (this.mode === "drop") { down.resetAndDestroy(); return; }
      const up = connect(this.upstream(), "127.0.0.1");
      this.sockets.add(down); this.sockets.add(up);
      const forward = (from: Socket, to: Socket) => from.on("data", (d) => {
        if (this.mode === "drop") return; // black hole
        if (this.delayMs > 0) { from.pause(); setTimeout(() => { to.write(d); from.resume(); }, this.delayMs); } else to.write(d);
      });
      forward(down, up); forward(up, down);
      const close = () => { down.destroy(); up.destroy(); this.sockets.delete(down); this.sockets.delete(up); };
      down.on("error", close); up.on("error", close); down.on("close", close); up.on("close", close);
    });
    await new Promise<void>((res) => this.server.listen(port, "127.0.0.1", () => res()));
    this.port = (this.server.address() as { port: number }).port;
  }
  reset(): void { for (const s of this.sockets) s.resetAndDestroy(); this.sockets.clear(); }
  close(): void { this.reset(); this.server.close(); }
}

async function networkCuts(targets: string[], window: number, proxy: FaultyProxy): Promise<void> {
  const r = row("network cut controller<->agent (reset/drop/delay)");
  const kinds = ["reset", "drop", "delay"] as const;
  for (const [i, t] of targets.entries()) {
    const before = await snapshot(t);
    const kind = kinds[i % kinds.length]!;
    const at = Math.round(random() * window);
    const id = await startRollout(t);
    await sleep(at);
    const faultAt = Date.now();
    if (kind === "reset") proxy.reset();
    else if (kind === "drop") { proxy.mode = "drop"; proxy.reset(); await sleep(3000 + Math.round(random() * 3000)); proxy.mode = "pass"; }
    else { proxy.delayMs = 200 + Math.round(random() * 400); await sleep(4000); proxy.delayMs = 0; }
    const done = await waitRollout(id, 150_000);
    record(r, await judge(t, "h2", before, { rolloutId: id, terminal: done !== undefined }), Date.now() - faultAt, `${t} ${kind} at ${at} ms (${done?.status ?? "no end"})`);
  }
}

/** Disk full during a backup: the backup folder is a small tmpfs filled while the backup is written. */
async function diskFull(t: string): Promise<void> {
  const r = row("disk full during backup (tmpfs)");
  const dir = join(fleet.dir, "backups", t);
  mkdirSync(dir, { recursive: true });
  let mounted = false;
  try {
    execFileSync("mount", ["-t", "tmpfs", "-o", "size=48m,mode=0700", "tmpfs", dir]);
    mounted = true;
  } catch (err) {
    r.notes.push(`tmpfs not available (${(err as Error).message.split("\n")[0]}): class not run`);
    return;
  }
  try {
    for (let i = 0; i < (QUICK ? 2 : 4); i++) {
      const before = await snapshot(t);
      // Leave just what the agent's free-space check asks for ((database + WAL) x 1.1 + 16 MiB, its own
      // formula) and a little more, then another writer takes the rest while the backup runs.
      const dbFile = fleet.urls.get(t)!.slice("sqlite:///".length);
      const dbBytes = readFileSync(dbFile).length + (existsSync(`${dbFile}-wal`) ? readFileSync(`${dbFile}-wal`).length : 0);
      const prefill = join(dir, `filler-pre-${i}`);
      const avail = Number(execFileSync("df", ["-B1", "--output=avail", dir]).toString().trim().split("\n")[1]);
      const keep = Math.ceil(dbBytes * 1.1) + 16 * 1024 * 1024 + 256 * 1024;
      writeFileSync(prefill, Buffer.alloc(Math.max(0, avail - keep)));
      let finished = false;
      // Two landing points, alternately. Even trials: the moment the copy creates its temp file
      // (inotify), the agent is frozen (SIGSTOP) while the disk is filled, then let go, so the copy
      // itself meets the full disk (filling the 16 MiB the free-space check keeps spare takes longer
      // than copying this database, so without the freeze it rarely does). Odd trials: the disk
      // fills a seeded 0-20 ms after the copy started, which mostly lands in the writes after it
      // (manifest, verification).
      const freeze = i % 2 === 0;
      const agentProc = fleet.agents.get("h1")!.proc!;
      let frozen = false;
      const watcher = freeze ? watch(dir, (_event, name) => {
        if (!frozen && !finished && name?.includes(".tmp-")) frozen = agentProc.kill("SIGSTOP");
      }) : undefined;
      const backing = api<{ code?: string; message?: string; status?: string; errorCode?: string }>("BackupTarget", { targetId: t }, 120_000).finally(() => { finished = true; });
      if (freeze) {
        while (!finished && !frozen) await sleep(1);
        watcher?.close();
      } else {
        while (!finished && !readdirSync(dir).some((n) => n.includes(".tmp-"))) await sleep(1);
        await sleep(Math.round(random() * 20));
      }
      const filler = join(dir, `filler-${i}`);
      const fd = openSync(filler, "w");
      try { const chunk = Buffer.alloc(1 << 16, 7); for (;;) writeSync(fd, chunk); } catch { /* ENOSPC: full */ } finally {
        closeSync(fd);
        if (frozen) agentProc.kill("SIGCONT");
      }
      const res = await backing;
      // BackupTarget streams: HTTP 200 carries the operation's own result (succeeded, failed, refused) as its last line.
      const landed = res.status !== 200 ? `HTTP ${res.status} ${res.json.code ?? ""}: ${(res.json.message ?? "").slice(0, 120)}`
        : res.json.status === "succeeded" ? "the backup completed: the fault landed after the copy"
        : `${res.json.status} ${res.json.errorCode ?? ""}: ${(res.json.message ?? "").slice(0, 120)}${frozen ? " (copy frozen, the disk filled under it)" : ""}`;
      r.notes.push(`backup ${i}: ${landed}`);
      execFileSync("rm", ["-f", filler, prefill]);
      const names = readdirSync(dir).filter((n) => !n.startsWith("filler"));
      const tmp = names.filter((n) => n.includes(".tmp-"));
      const artifacts = names.filter((n) => n.endsWith(".db"));
      const incomplete = artifacts.filter((n) => {
        const m = join(dir, n.replace(/\.db$/, ".json"));
        return !existsSync(m) || (JSON.parse(readFileSync(m, "utf8")) as { verified: boolean }).verified !== true;
      });
      const j = await judge(t, "h1", before, { terminal: true, apps: false });
      const clean = tmp.length === 0 && incomplete.length === 0;
      if (!clean) r.notes.push(`leftovers after backup ${i}: ${[...tmp, ...incomplete].join(", ")}`);
      // Leftover files count as a failure to survive (the folder must hold only complete, verified backups).
      record(r, { ...j, appsUp: clean }, undefined, `backup ${i}: ${landed}`);
    }
  } finally {
    if (mounted) execFileSync("umount", ["-l", dir]);
  }
}

/** A corrupted backup is refused by restore and the database is untouched. */
async function corruptedBackup(t: string): Promise<void> {
  const r = row("corrupted backup");
  for (let i = 0; i < 2; i++) {
    const b = await api<{ backup?: { id: string; path: string } }>("BackupTarget", { targetId: t }, 120_000);
    const before = await snapshot(t);
    const path = b.json.backup?.path;
    if (!path) { r.notes.push(`backup failed: ${JSON.stringify(b.json)}`); continue; }
    const fd = openSync(path, "r+");
    const size = readFileSync(path).length;
    writeSync(fd, Buffer.from("corrupt!corrupt!"), 0, 16, Math.floor(random() * (size - 16)));
    closeSync(fd);
    const res = await api<{ code?: string }>("RestoreTarget", { targetId: t, backupId: b.json.backup!.id, yes: true }, 120_000);
    const j = await judge(t, "h1", before, { terminal: true });
    const refused = res.status !== 200;
    if (!refused) r.notes.push(`restore of a corrupted backup was not refused`);
    record(r, { ...j, lost: j.lost || !refused }, undefined, `corrupt at random offset: HTTP ${res.status} ${res.json.code ?? ""}`);
  }
}

/** The same request twice at once: one runs, the other is refused naming the first. */
async function sameRequestTwice(t: string): Promise<void> {
  const r = row("same request sent twice");
  const before = await snapshot(t);
  const body = { selector: `id=${t}`, strategy: "maintenance", toRevision: "head" };
  const [a, b] = await Promise.all([api<{ id?: string; code?: string }>("StartRollout", body), api<{ id?: string; code?: string }>("StartRollout", body)]);
  const started = [a, b].filter((x) => x.status === 200);
  const id = started[0]?.json.id;
  const done = id ? await waitRollout(id, 150_000) : undefined;
  const j = await judge(t, "h1", before, { ...(id ? { rolloutId: id } : {}), terminal: done !== undefined });
  record(r, { ...j, twice: j.twice || started.length !== 1 }, undefined, `StartRollout x2: ${a.status}/${b.status}`);
  const [c, d] = await Promise.all([api<{ code?: string }>("BackupTarget", { targetId: t }, 120_000), api<{ code?: string }>("BackupTarget", { targetId: t }, 120_000)]);
  const j2 = await judge(t, "h1", await snapshot(t), { terminal: true });
  record(r, { ...j2, twice: [c, d].filter((x) => x.status === 200).length !== 1 }, undefined, `BackupTarget x2: ${c.status}/${d.status} ${c.json.code ?? ""}${d.json.code ?? ""}`);
}

/** An app that will not stop (it keeps the database open) and one that does not come back healthy. */
async function stubbornApps(tStop: string, tHealth: string): Promise<void> {
  const r = row("app refuses to stop / to come back healthy");
  // Refuses to stop: a process that keeps the SQLite file open through the rollout.
  {
    const before = await snapshot(tStop);
    const file = fleet.urls.get(tStop)!.slice("sqlite:///".length);
    const holder = new Database(file);
    holder.prepare("BEGIN").run();
    holder.prepare("SELECT count(*) FROM alembic_version").get();
    const id = await startRollout(tStop);
    const done = await waitRollout(id, 150_000);
    holder.prepare("ROLLBACK").run();
    holder.close();
    record(r, await judge(tStop, "h1", before, { rolloutId: id, terminal: done !== undefined }), undefined, `${tStop} held open: ${done?.status ?? "no end"}`);
  }
  // Does not come back healthy: its port is taken by a process that answers 500.
  {
    const before = await snapshot(tHealth);
    const cfg = parse(readFileSync(fleet.agents.get("h1")!.configPath, "utf8")) as { apps: { id: string; target: string; health: string }[] };
    const app = cfg.apps.find((a) => a.target === tHealth)!;
    const port = Number(/:(\d+)\//.exec(app.health)![1]);
    const id = await startRollout(tHealth);
    // Once the app is stopped, squat its port.
    let squat: Server | undefined;
    for (let i = 0; i < 200 && !squat; i++) {
      await sleep(100);
      try {
        const s = (await import("node:http")).createServer((_q, res) => { res.writeHead(500); res.end("broken"); });
        await new Promise<void>((res, rej) => { s.once("error", rej); s.listen(port, "127.0.0.1", () => res()); });
        squat = s as unknown as Server;
      } catch { /* still in use by the app */ }
    }
    const done = await waitRollout(id, 180_000);
    squat?.close();
    // With its port back, the operator's one instruction is to start the app: judge after that.
    for await (const _ of fleet.agentClient("h1").startApps({ targetId: tHealth, operationId: `chaos.start2.${Date.now()}` }, { timeoutMs: 60_000 })) { /* drain */ }
    record(r, await judge(tHealth, "h1", before, { terminal: done !== undefined }), undefined, `${tHealth} unhealthy after start: ${done?.status ?? "no end"} ${done?.targets[0]?.message.slice(0, 120) ?? ""}`);
  }
}

/** A PostgreSQL session idle in a transaction holding a lock on a table the migration alters. */
async function pgIdleLock(t: string): Promise<void> {
  const r = row("PG session idle in transaction holding a lock");
  const before = await snapshot(t);
  const c = new pg.Client({ connectionString: fleet.urls.get(t)! });
  await c.connect();
  await c.query("BEGIN");
  await c.query('LOCK TABLE chat IN ACCESS SHARE MODE');
  const id = await startRollout(t);
  const done = await waitRollout(id, 240_000);
  await c.query("ROLLBACK").catch(() => undefined);
  await c.end();
  record(r, await judge(t, "h2", before, { rolloutId: id, terminal: done !== undefined, apps: false }), undefined, `${t}: ${done?.status ?? "no end"} ${done?.targets[0]?.message.slice(0, 160) ?? ""}`);
}

/** Audit tampering: edit, delete, reorder, cut tail (with and without a controller restart). */
async function auditTamper(): Promise<void> {
  const r = row("tampered audit log");
  const dbFile = join(fleet.dir, "controller", "controller.db");
  const kinds = ["edit", "delete", "reorder", "cut-tail", "cut-tail+restart"] as const;
  for (const kind of kinds) {
    await fleet.killController("SIGTERM");
    const copy = readFileSync(dbFile);
    const db = new Database(dbFile);
    const max = (db.prepare("SELECT max(seq) AS m FROM audit_log").get() as { m: number }).m;
    const k = 2 + Math.floor(random() * (max - 4));
    if (kind === "edit") db.prepare("UPDATE audit_log SET detail = 'nothing happened' WHERE seq = ?").run(k);
    if (kind === "delete") db.prepare("DELETE FROM audit_log WHERE seq = ?").run(k);
    if (kind === "reorder") { db.prepare("UPDATE audit_log SET seq = -1 WHERE seq = ?").run(k); db.prepare("UPDATE audit_log SET seq = ? WHERE seq = ?").run(k, k + 1); db.prepare("UPDATE audit_log SET seq = ? WHERE seq = -1").run(k + 1); }
    if (kind.startsWith("cut-tail")) db.prepare("DELETE FROM audit_log WHERE seq > ?").run(max - 3);
    db.close();
    const t0 = Date.now();
    await startCtl();
    await waitHttp();
    const v = await api<{ ok: boolean; reason: string }>("VerifyAudit", {});
    let detected = v.json.ok === false;
    if (kind.startsWith("cut-tail")) {
      // Detected forever: a change is refused (nothing appended over the cut), and still after a restart.
      const change = await api<{ code?: string }>("BackupTarget", { targetId: "c-0" }, 60_000);
      detected = detected && change.status === 503;
      if (kind === "cut-tail+restart") {
        await fleet.killController("SIGTERM");
        await startCtl();
        await waitHttp();
        detected = detected && (await api<{ ok: boolean }>("VerifyAudit", {})).json.ok === false;
      }
    }
    r.injected++;
    if (detected) { r.survived++; r.recoverMs.push(Date.now() - t0); } else { r.unaudited++; r.notes.push(`${kind} not detected: ${v.json.reason}`); }
    say(`audit ${kind}: ${detected ? "detected" : "NOT detected"} (${v.json.reason})`);
    // Put the log back for the next kind.
    await fleet.killController("SIGTERM");
    writeFileSync(dbFile, copy);
    for (const s of ["-wal", "-shm"]) if (existsSync(dbFile + s)) execFileSync("rm", ["-f", dbFile + s]);
    await startCtl();
    await waitHttp();
  }
}

// ------------------------------------------------------------------------------------ main

function median(xs: number[]): number {
  if (!xs.length) return 0;
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)]!;
}

function table(): string {
  const head = ["class", "injected", "survived", "data lost", "migrations twice", "unaudited", "stuck", "time to recover (median)"];
  const body = rows.map((r) => [r.cls, String(r.injected), String(r.survived), String(r.lost), String(r.twice), String(r.unaudited), String(r.stuck), r.recoverMs.length ? `${(median(r.recoverMs) / 1000).toFixed(1)} s` : "-"]);
  const w = head.map((h, i) => Math.max(h.length, ...body.map((b) => b[i]!.length)));
  const line = (cells: string[]) => `| ${cells.map((c, i) => (i === 0 ? c.padEnd(w[i]!) : c.padStart(w[i]!))).join(" | ")} |`;
  return [line(head), `|${w.map((n, i) => (i === 0 ? "-".repeat(n + 2) : `${"-".repeat(n + 1)}:`)).join("|")}|`, ...body.map(line)].join("\n");
}

async function main(): Promise<void> {
  const started = Date.now();
  const kills = Array.from({ length: KILL_POINTS }, (_, i) => `k-${i}`);
  const ctl = Array.from({ length: QUICK ? 2 : 6 }, (_, i) => `c-${i}`);
  const net = Array.from({ length: QUICK ? 3 : 6 }, (_, i) => `n-${i}`);
  const targets: TargetSpec[] = [
    ...kills.map((id) => ({ id, kind: "sqlite" as const, owner: "h1", labels: { chaos: "kill" }, apps: [{ agent: "h1" }], seed: { users: 10, chats: 30, msgs: 2 } })),
    ...ctl.map((id) => ({ id, kind: "sqlite" as const, owner: "h1", labels: { chaos: "ctl" }, apps: [{ agent: "h1" }], seed: { users: 10, chats: 30, msgs: 2 } })),
    ...net.map((id) => ({ id, kind: "sqlite" as const, owner: "h2", labels: { chaos: "net" }, apps: [{ agent: "h2" }], seed: { users: 10, chats: 30, msgs: 2 } })),
    { id: "disk", kind: "sqlite", owner: "h1", labels: { chaos: "disk" }, seed: { users: 50, chats: 1500, msgs: 8 } },
    { id: "corrupt", kind: "sqlite", owner: "h1", labels: { chaos: "corrupt" }, apps: [{ agent: "h1" }] },
    { id: "twice", kind: "sqlite", owner: "h1", labels: { chaos: "twice" }, apps: [{ agent: "h1" }] },
    { id: "nostop", kind: "sqlite", owner: "h1", labels: { chaos: "app" } },
    { id: "unhealthy", kind: "sqlite", owner: "h1", labels: { chaos: "app" }, apps: [{ agent: "h1" }] },
    { id: "pglock", kind: "postgresql", owner: "h2", labels: { chaos: "pg" } },
  ];
  say(`seed ${SEED}, ${QUICK ? "quick" : "full"} form: preparing ${targets.length} targets`);
  fleet = new Fleet({ agents: ["h1", "h2"], targets, noController: true, agentEnv: { FLOTILLA_HEARTBEAT_MS: "2000" } });
  let proxy: FaultyProxy | undefined;
  try {
    await fleet.start();
    // The controller reaches h2 through a proxy that can cut the network.
    const h2 = fleet.agents.get("h2")!;
    proxy = new FaultyProxy(() => h2.port);
    await proxy.start();
    proxyPort = proxy.port;
    process.env.FLOTILLA_AGENT_RETURN_MS = "60000";
    await startCtl();
    await waitHttp();

    // Calibrate: how long an undisturbed maintenance rollout takes here (faults land inside it).
    const t0 = Date.now();
    const cal = ONLY === "" || /kill|fault|cut/i.test(ONLY) ? await startRollout(kills[0]!) : "";
    const calDone = cal ? await waitRollout(cal, 150_000) : undefined;
    const window = Math.max(1000, Date.now() - t0);
    say(`an undisturbed rollout takes ${(window / 1000).toFixed(1)} s here (${calDone?.status}); faults are injected inside that window`);
    // The calibration target migrated; later kill trials use the others.
    if (wanted("agentKills")) await agentKills(kills.slice(1), window);
    if (wanted("controllerFaults")) await controllerFaults(ctl, window);
    if (wanted("networkCuts")) await networkCuts(net, window, proxy);
    if (wanted("diskFull")) await diskFull("disk");
    if (wanted("corruptedBackup")) await corruptedBackup("corrupt");
    if (wanted("sameRequestTwice")) await sameRequestTwice("twice");
    if (wanted("stubbornApps")) await stubbornApps("nostop", "unhealthy");
    if (wanted("pgIdleLock")) await pgIdleLock("pglock");
    if (wanted("auditTamper")) await auditTamper();
  } finally {
    proxy?.close();
    await fleet.stop();
  }
  if (JSON_OUT) process.stdout.write(`${JSON.stringify({ seed: SEED, quick: QUICK, rows: rows.map((r) => ({ ...r, recoverMsMedian: median(r.recoverMs) })) }, null, 2)}\n`);
  else {
    process.stdout.write(`\nFlotilla chaos (seed ${SEED}, ${QUICK ? "quick" : "full"} form, ${((Date.now() - started) / 1000).toFixed(0)} s)\n\n${table()}\n`);
    const notes = rows.flatMap((r) => r.notes.map((n) => `  ${r.cls}: ${n}`));
    if (notes.length) process.stdout.write(`\nnotes:\n${notes.join("\n")}\n`);
  }
  const bad = rows.some((r) => r.lost || r.twice || r.unaudited || r.stuck);
  process.exitCode = bad ? 1 : 0;
}

void main().catch((err: unknown) => {
  process.stderr.write(`chaos: ${(err as Error).stack ?? String(err)}\n`);
  process.exitCode = 2;
});
