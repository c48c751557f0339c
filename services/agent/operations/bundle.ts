import { redact } from "../../common/redact.js";
import { tarGz, type TarFile } from "../adapters/tar-gz.js";
import type { AgentTarget } from "../config.js";
import type { BackupManifest, GraphView } from "../core/ports.js";
import * as reads from "./reads.js";
import { readAppVersion } from "./app-state.js";
import type { OperationContext, TargetRuntime } from "./context.js";
import { readOutput } from "./output-log.js";

/**
 * The diagnostics bundle of one target: the "Getting Help" set and more, as a
 * .tar.gz built in memory. What goes in is read from the revision graph, the
 * schema (never a row: revisions, table names, column descriptions and row
 * counts only), the journal, the backup manifests and the config; every text
 * passes through redact() and the config's secret values are replaced. The
 * database file and companion files are never read.
 */

const OPERATIONS = 50;

function lines(values: readonly string[]): string {
  return values.length ? `${values.join("\n")}\n` : "(none)\n";
}

function history(graph: GraphView): string {
  const heads = new Set(graph.heads);
  const branchpoints = new Set(graph.branchpoints);
  // Newest first, like `alembic history`: children before parents.
  const order: string[] = [];
  const seen = new Set<string>();
  const visit = (id: string): void => {
    if (seen.has(id)) return;
    seen.add(id);
    order.push(id);
    for (const d of graph.revisions.get(id)?.down ?? []) visit(d);
  };
  for (const h of graph.heads) visit(h);
  for (const id of graph.revisions.keys()) visit(id);
  return lines(
    order.map((id) => {
      const n = graph.revisions.get(id)!;
      const tags = [heads.has(id) ? "(head)" : "", branchpoints.has(id) ? "(branchpoint)" : ""].filter(Boolean).join(" ");
      return `${n.down.length ? n.down.join(", ") : "<base>"} -> ${id}${tags ? ` ${tags}` : ""}, ${n.message}`;
    }),
  );
}

/** The target's config as YAML-ish JSON with every secret value replaced. */
function safeConfig(c: AgentTarget): string {
  const env: Record<string, string> = {};
  for (const [name, value] of Object.entries(c.alembic.env)) env[name] = c.alembic.secretEnvNames.includes(name) ? "[secret: set]" : value;
  const shown = {
    ...c,
    ...(c.password !== undefined ? { password: "[secret: set]" } : {}),
    alembic: { ...c.alembic, env },
  };
  return `${JSON.stringify(shown, null, 2)}\n`;
}

function backupSummary(m: BackupManifest): Record<string, unknown> {
  return {
    id: m.id,
    createdAt: m.createdAt,
    kind: m.kind,
    sizeBytes: m.sizeBytes,
    sha256: m.sha256,
    revisions: m.revisions,
    tool: m.tool,
    verified: m.verified,
    verifiedAt: m.verifiedAt,
    verification: m.verification,
    operationId: m.operationId,
    rolloutId: m.rolloutId,
    appVersion: m.appVersion ?? "",
    tables: Object.keys(m.tableCounts).length,
    // Companion paths as configured and their sizes; the names of the files inside (users' uploads) are left out.
    companions: (m.companions ?? []).map((e) => ({ source: e.source, type: e.type, files: e.files.filter((f) => f.type !== "dir").length })),
    companionBytes: m.companionBytes ?? 0,
    companionNewBytes: m.companionNewBytes ?? 0,
  };
}

async function versions(ctx: OperationContext, t: TargetRuntime, agentVersion: string, engine: string): Promise<string> {
  const run = async (argv: readonly string[]): Promise<string> => {
    const out: string[] = [];
    const r = await ctx.deps.runHook(argv, (l) => out.push(l), AbortSignal.timeout(30_000)).catch(() => ({ ok: false, detail: "not run" }));
    return r.ok ? out.join(" ").trim() : `unavailable (${r.detail})`;
  };
  const alembic = t.alembic as { version?: () => Promise<string> };
  const cmd = t.config.alembic.command;
  const python = cmd[0] && /python/.test(cmd[0]) ? [cmd[0], "--version"] : ["python3", "--version"];
  return (
    [
      `flotilla-agent ${agentVersion}`,
      `node ${process.version}`,
      `alembic: ${alembic.version ? await alembic.version().catch((e: unknown) => `unavailable (${String(e)})`) : "unknown"}`,
      `python: ${await run(python)}`,
      `database (${t.config.kind}): ${engine || "unavailable"}`,
      `app: ${(await readAppVersion(ctx, t)) || (t.config.appVersion ? "appVersion command failed" : "no appVersion command configured")}`,
    ].join("\n") + "\n"
  );
}

/** Builds the bundle. Parts that cannot be read say why instead of failing the bundle. */
export async function bundle(ctx: OperationContext, targetId: string, agentVersion: string): Promise<{ fileName: string; data: Buffer; entries: string[] }> {
  const t = ctx.target(targetId);
  const files: TarFile[] = [];
  const add = (name: string, text: string): void => {
    files.push({ name: `${targetId}/${name}`, data: redact(text) });
  };
  const failed = (e: unknown): string => `unavailable: ${e instanceof Error ? e.message : String(e)}\n`;
  const now = new Date().toISOString();

  const graph = await t.alembic.graph().catch((e: unknown) => e as Error);
  const current = await t.db.readRevisions().catch((e: unknown) => e as Error);
  if (graph instanceof Error) {
    for (const n of ["heads", "history", "branches"]) add(`alembic/${n}.txt`, failed(graph));
  } else {
    add("alembic/heads.txt", lines(graph.heads.map((h) => `${h} (head), ${graph.revisions.get(h)?.message ?? ""}`)));
    add("alembic/history.txt", history(graph));
    add(
      "alembic/branches.txt",
      lines(
        graph.branchpoints.map(
          (b) =>
            `${b} (branchpoint) -> ${[...graph.revisions.values()]
              .filter((n) => n.down.includes(b))
              .map((n) => n.id)
              .join(", ")}`,
        ),
      ),
    );
  }
  add(
    "alembic/current.txt",
    current instanceof Error
      ? failed(current)
      : current === null
        ? "no alembic_version table\n"
        : lines(current.map((r) => `${r}${!(graph instanceof Error) && graph.heads.includes(r) ? " (head)" : ""}`)),
  );

  add("database/alembic_version.txt", current instanceof Error ? failed(current) : current === null ? "table absent\n" : lines(current));
  const tables = await t.db.listTables().catch((e: unknown) => e as Error);
  add("database/tables.txt", tables instanceof Error ? failed(tables) : lines(tables));
  const counts = await t.db.tableCounts().catch((e: unknown) => e as Error);
  add("database/row-counts.txt", counts instanceof Error ? failed(counts) : lines(Object.entries(counts).map(([k, v]) => `${k} ${v}`)));
  let engine = "";
  if (t.db.describe) {
    const d = await t.db.describe().catch((e: unknown) => e as Error);
    if (d instanceof Error) add("database/table_info.txt", failed(d));
    else {
      engine = d.serverVersion;
      for (const [table, text] of Object.entries(d.tables)) add(`database/table_info/${table.replace(/[^A-Za-z0-9._-]/g, "_")}.txt`, `${text}\n`);
    }
  }

  const diag = await reads.diagnose(ctx, targetId).catch((e: unknown) => e as Error);
  add("diagnose.json", diag instanceof Error ? failed(diag) : `${JSON.stringify(diag, null, 2)}\n`);
  const ops = ctx.deps.journal.list(targetId, OPERATIONS);
  add("journal.json", `${JSON.stringify(ops, null, 2)}\n`);
  for (const op of ops) {
    const out = readOutput(ctx.deps.config.dataDir, op.id);
    if (out) add(`output/${op.id.replace(/[^A-Za-z0-9._-]/g, "_")}.txt`, `${op.kind} ${op.state} ${op.startedAt}\n${out}\n`);
  }
  const backups = await t.catalog.list().catch((e: unknown) => e as Error);
  add("backups.json", backups instanceof Error ? failed(backups) : `${JSON.stringify(backups.map(backupSummary), null, 2)}\n`);
  add("versions.txt", await versions(ctx, t, agentVersion, engine));
  add("config.json", safeConfig(t.config));
  const entries = [...files.map((f) => f.name), `${targetId}/README.txt`];
  files.unshift({
    name: `${targetId}/README.txt`,
    data:
      `Flotilla diagnostics bundle for target ${targetId}, agent ${ctx.deps.config.agentId}, taken ${now}.\n` +
      "It holds revisions, schema descriptions, row counts, diagnose findings, the journal with Alembic output, backup manifests, versions and the config with secrets replaced.\n" +
      "It never holds the database file, a companion file, a secret or a row of user data.\n\n" +
      entries.join("\n") +
      "\n",
  });
  const stamp = now.replace(/[-:]/g, "").replace(/\.\d+Z$/, "Z");
  return { fileName: `flotilla-bundle-${targetId}-${stamp}.tar.gz`, data: tarGz(files), entries };
}
