import { mkdir, readFile, rm, writeFile } from "node:fs/promises";
import { join } from "node:path";
import type Database from "better-sqlite3";
import type pg from "pg";
import { FlotillaError, toFlotillaError } from "../../common/errors.js";
import { redact } from "../../common/redact.js";
import { PostgresDatabase } from "../adapters/postgres-database.js";
import { SqliteDatabase } from "../adapters/sqlite-database.js";
import {
  copyPgToSqlite,
  copySqliteTable,
  firstDifference,
  pgCreateIndexes,
  openSqlite,
  pgChecksum,
  pgDropAll,
  pgForeignKeys,
  pgResetSequences,
  pgTables,
  sqliteChecksum,
  sqliteForeignKeys,
  sqliteOrphans,
  sqliteTables,
  type CopyProgress,
  type OrphanRow,
  type SecondaryIndex,
  type TableResult,
} from "../adapters/table-copy.js";
import { decideMove, nextReadyTable, planCopy, type CopyPlan, type MovePreflightFacts, type TableCopy } from "../core/move-plan.js";
import type { AlembicRun, BackupManifest, DatabaseAdapter, ProgressFn } from "../core/ports.js";
import type { Emit, OperationContext, OpResult, OperationsDeps, TargetRuntime } from "./context.js";

type MoveFrame = OperationContext;

export interface MoveRequest {
  readonly fromTargetId: string;
  readonly toTargetId: string;
  readonly operationId: string;
  readonly yes: boolean;
  readonly skipOrphans: boolean;
  readonly fromBackup: boolean;
}

/** Kept per destination after a move: where its data came from, for the way back. */
interface MoveRecord {
  readonly from: string;
  readonly to: string;
  readonly revision: string;
  readonly at: string;
  readonly operationId: string;
  readonly checksums: Record<string, string>;
}

class MoveRefusal extends FlotillaError {}

function refuse(code: FlotillaError["code"], message: string): never {
  throw new MoveRefusal(code, message);
}

function sqlitePath(db: DatabaseAdapter): string {
  if (!(db instanceof SqliteDatabase)) throw new FlotillaError("INTERNAL", "not a SQLite target");
  return db.path;
}

function pgOf(db: DatabaseAdapter): PostgresDatabase {
  if (!(db instanceof PostgresDatabase)) throw new FlotillaError("INTERNAL", "not a PostgreSQL target");
  return db;
}

function recordPath(deps: OperationsDeps, toId: string): string {
  return join(deps.config.dataDir, "moves", `${toId}.json`);
}

async function readRecord(deps: OperationsDeps, toId: string): Promise<MoveRecord | undefined> {
  try {
    return JSON.parse(await readFile(recordPath(deps, toId), "utf8")) as MoveRecord;
  } catch {
    return undefined;
  }
}

/** Rate and share of one progress report, as the line a human reads. */
function progressLine(p: CopyProgress, startedMs: number): { line: string; rate: number } {
  const secs = Math.max(0.001, (performance.now() - startedMs) / 1000);
  const rate = Math.round(p.bytesDone / secs);
  return {
    line: `table ${p.tableIndex}/${p.tableCount} ${p.table}: ${p.rowsDone}/${p.rowsTotal} rows, ${(p.bytesDone / 1e6).toFixed(1)} MB, ${(rate / 1e6).toFixed(1)} MB/s`,
    rate,
  };
}

/** Checksums of the live tables of a database, for the "is it newer" question of a move back. */
async function checksumsOf(t: TargetRuntime, plan: CopyPlan): Promise<Record<string, string>> {
  const out: Record<string, string> = {};
  if (t.config.kind === "sqlite") {
    const db = openSqlite(sqlitePath(t.db), true);
    try {
      for (const table of plan.tables) out[table.name] = sqliteChecksum(db, table).checksum;
    } finally {
      db.close();
    }
  } else {
    const client = await pgOf(t.db).openClient();
    try {
      for (const table of plan.tables) out[table.name] = (await pgChecksum(client, table)).checksum;
    } finally {
      await client.end().catch(() => undefined);
    }
  }
  return out;
}

/**
 * `flotilla move FROM TO`: copies a target into an empty target of the other
 * engine at the same Alembic revision, verified table by table, then runs the
 * switch hook with TO's id. FROM is never written. Moving back to the target an
 * earlier move came from only switches back (refused while the data moved to
 * is newer, unless `yes`). Runs as one journaled operation on FROM that also
 * holds TO's lock (a companion `move-in` operation on TO).
 */
export function moveTarget(f: MoveFrame, req: MoveRequest, emit: Emit, signal?: AbortSignal): Promise<OpResult> {
  return f.run("move", req.fromTargetId, req.operationId, emit, {}, async ({ id, t: from, progress, result }) => {
    let to: TargetRuntime;
    try {
      to = f.target(req.toTargetId);
    } catch (err) {
      throw new MoveRefusal(toFlotillaError(err).code, toFlotillaError(err).message);
    }
    const inId = `${id}.in`;
    try {
      f.deps.journal.begin({ id: inId, targetId: to.config.id, kind: "move-in" }, true);
    } catch (err) {
      throw new MoveRefusal(toFlotillaError(err).code, toFlotillaError(err).message);
    }
    let inState: "succeeded" | "failed" | "refused" = "failed";
    try {
      const out = await moveBody(f, req, emit, id, from, to, progress, result, signal);
      inState = out.status === "refused" ? "refused" : out.status === "failed" ? "failed" : "succeeded";
      return out;
    } catch (err) {
      inState = err instanceof MoveRefusal ? "refused" : "failed";
      throw err;
    } finally {
      f.deps.journal.finish(inId, inState, { message: `${inState} (move ${id} from ${from.config.id})` });
    }
  });
}

async function moveBody(
  f: MoveFrame,
  req: MoveRequest,
  emit: Emit,
  id: string,
  from: TargetRuntime,
  to: TargetRuntime,
  progress: ProgressFn,
  result: Partial<OpResult>,
  signal?: AbortSignal,
): Promise<Partial<OpResult>> {
  const details: Record<string, string> = { from: from.config.id, to: to.config.id };
  result.details = details;

  // ---------------------------------------------------------------- preflight: nothing changes
  const facts = await f.step(
    emit,
    "preflight",
    async () => {
      // Independent reads at once: the revision graph costs a Python start-up.
      const readTo = async (): Promise<{ toExists: boolean; toTables: string[]; toVersionRows: number }> => {
        const toExists = await to.db.exists().catch(() => false);
        const toTables = toExists ? await to.db.listTables() : [];
        const toVersionRows = toExists && toTables.includes("alembic_version") ? ((await to.db.readRevisions()) ?? []).length : 0;
        return { toExists, toTables, toVersionRows };
      };
      const [graph, fromRevisions, { toExists, toTables, toVersionRows }, record] = await Promise.all([
        from.alembic.graph(),
        from.db.readRevisions(),
        readTo(),
        readRecord(f.deps, from.config.id),
      ]);
      let moveBack: MovePreflightFacts["moveBack"];
      if (record && record.from === to.config.id && from.config.kind !== to.config.kind) {
        // FROM was filled by a move from TO: this is the way back. Is FROM newer than what it received?
        const now = await from.db.readRevisions();
        const reasons: string[] = [];
        if ((now ?? []).join(",") !== record.revision)
          reasons.push(`it is at revision ${(now ?? []).join(",") || "none"}, the move left it at ${record.revision}`);
        else {
          const fromFacts = from.config.kind === "sqlite" ? sqliteTablesOf(from) : await pgTablesOf(from);
          const toFacts = to.config.kind === "sqlite" ? sqliteTablesOf(to) : await pgTablesOf(to);
          const plan = planCopy(fromFacts, toFacts, to.config.kind, []);
          const sums = await checksumsOf(from, plan);
          const changed = Object.keys(record.checksums).filter((k) => sums[k] !== record.checksums[k]);
          if (changed.length > 0)
            reasons.push(`table${changed.length === 1 ? "" : "s"} ${changed.slice(0, 5).join(", ")} changed since the move at ${record.at}`);
        }
        moveBack = { fromNewer: reasons.length > 0, why: reasons.join("; ") };
      }
      let orphanRows: OrphanRow[] = [];
      if (!moveBack && from.config.kind === "sqlite" && (await from.db.exists())) {
        const db = openSqlite(sqlitePath(from.db), true);
        try {
          orphanRows = sqliteOrphans(db, sqliteTables(db));
        } finally {
          db.close();
        }
      }
      const counts = new Map<string, { table: string; parent: string; count: number }>();
      for (const o of orphanRows) {
        const k = `${o.table}\0${o.parent}`;
        const c = counts.get(k) ?? { table: o.table, parent: o.parent, count: 0 };
        c.count++;
        counts.set(k, c);
      }
      const running = (await f.appStates(from)).filter((a) => a.state === "running").map((a) => a.app.id);
      const preflight: MovePreflightFacts = {
        fromId: from.config.id,
        toId: to.config.id,
        fromKind: from.config.kind,
        toKind: to.config.kind,
        sameAlembicProject: from.config.alembic.dir === to.config.alembic.dir,
        fromRevisions,
        unknownRevisions: graph.unknown(fromRevisions ?? []),
        toTables,
        toVersionRows,
        integrity: { ok: true, detail: "checked with the backup" },
        orphans: [...counts.values()],
        skipOrphans: req.skipOrphans,
        runningApps: running,
        fromBackup: req.fromBackup,
        ...(moveBack ? { moveBack } : {}),
        yes: req.yes,
      };
      return { decision: decideMove(preflight), orphanRows, toExists };
    },
    (x) =>
      x.decision.go === "refuse"
        ? "refused"
        : x.decision.go === "back"
          ? "moving back"
          : `at ${x.decision.revision}; TO empty; ${x.orphanRows.length} orphaned row(s)`,
  );
  const decision = facts.decision;
  if (decision.go === "refuse") refuse(decision.code, decision.message);
  for (const n of decision.notes) progress({ source: "agent", line: n });
  result.revisionBefore = (await from.db.readRevisions()) ?? [];

  // ---------------------------------------------------------------- the way back: switch only
  if (decision.go === "back") {
    const sw = switchHook(from, to);
    if (!sw)
      refuse(
        "PRECONDITION_FAILED",
        `no switch hook configured (blueGreen.switch on ${from.config.id} or ${to.config.id}): repoint the app's DATABASE_URL to ${to.config.id} by hand; ${to.config.id} is untouched`,
      );
    await runSwitch(f, emit, progress, sw, to.config.id, signal);
    await rm(recordPath(f.deps, from.config.id), { force: true });
    result.revisionAfter = (await to.db.readRevisions()) ?? [];
    return {
      message: `switched back to ${to.config.id} (untouched since the move); ${from.config.id} is kept as it is`,
      details: { ...details, direction: "back" },
    };
  }
  const revision = decision.revision;
  details.revision = revision;

  // ---------------------------------------------------------------- stop, back up (with integrity), verify
  const stopped = req.fromBackup ? [] : await f.controlApps(from, "stop", "", emit, progress, signal);
  let toTouched = false;
  let recordWritten = false;
  let schema: Promise<AlembicRun> | undefined;
  let backupP: Promise<BackupManifest> | undefined;
  let integrityP: Promise<{ ok: boolean; detail: string }> | undefined;
  try {
    if (!req.fromBackup) await f.assertNotHeld(from, from.db, true);
    // TO's schema is built while FROM is backed up and checked; with the app stopped, the copy reads FROM
    // itself meanwhile. The move succeeds only once the backup is verified and the integrity check passed;
    // any failure after this point empties TO again.
    toTouched = true;
    schema = f.step(
      emit,
      `schema:${revision}`,
      () =>
        to.alembic.upgrade(revision, {
          timeoutMs: to.config.alembic.timeoutMs,
          ...(signal ? { signal } : {}),
          onLine: (line) => progress({ source: "alembic", line }),
        }),
      (r) => (r.ok ? `alembic upgrade ${revision} on ${to.config.id}` : (r.failure?.message ?? "alembic failed")),
    );
    schema.catch(() => undefined);
    backupP = f.takeBackup(from, from.db, id, "", true, emit, progress, signal);
    backupP.catch(() => undefined);
    const copyFromBackup = req.fromBackup && from.config.kind === "sqlite";
    integrityP =
      from.config.kind === "sqlite"
        ? // SQLite: the backup's verification runs PRAGMA integrity_check on a copy of every page of FROM, and the
          // copy reads every row of FROM (a damaged table page fails it); a second integrity_check of the live file
          // would only re-check FROM's indexes, which are not copied (PostgreSQL builds its own).
          backupP.then((b) => {
            const r = { ok: /integrity_check ok/.test(b.verification), detail: b.verification };
            emit({
              kind: "step",
              name: "integrity",
              state: r.ok ? "succeeded" : "failed",
              detail: `integrity_check of the verified backup taken now: ${r.ok ? "ok" : r.detail}`,
            });
            return r;
          })
        : f.step(
            emit,
            "integrity",
            () => from.db.integrityCheck(),
            (r) => r.detail,
          );
    integrityP.catch(() => undefined);
    let sourcePath = from.config.kind === "sqlite" ? sqlitePath(from.db) : "";
    if (copyFromBackup) {
      const b = await backupP;
      sourcePath = b.path;
      details.missed_writes_since = b.createdAt;
      progress({
        source: "agent",
        line: `copying from backup ${b.id} (taken ${b.createdAt}) while the app runs: writes made to ${from.config.id} after that time are not in ${to.config.id}`,
      });
    } else if (req.fromBackup) {
      details.missed_writes_since = new Date().toISOString();
      progress({
        source: "agent",
        line: `copying one consistent snapshot of ${from.config.id} while the app runs: writes after ${details.missed_writes_since} are not in ${to.config.id}`,
      });
    }

    // ---------------------------------------------------------------- schema from Alembic
    const up = await schema;
    if (!up.ok)
      throw new FlotillaError(
        "ALEMBIC_FAILED",
        `building the schema on ${to.config.id} with alembic upgrade ${revision} failed: ${up.failure?.message ?? "alembic failed"}`,
      );
    const toRevs = (await to.db.readRevisions()) ?? [];
    if (toRevs.join(",") !== revision)
      throw new FlotillaError("MIGRATION_FAILED", `after alembic upgrade ${revision}, ${to.config.id} reports ${toRevs.join(",") || "no revision"}`);

    // ---------------------------------------------------------------- copy and verify
    const copied =
      from.config.kind === "sqlite"
        ? await sqliteToPg(f, emit, progress, from, to, sourcePath, facts.orphanRows, req.skipOrphans, id, details, signal)
        : await pgToSqlite(f, emit, progress, from, to, signal);
    const [backup, integrity] = await Promise.all([backupP, integrityP]);
    result.backup = backup;
    if (!integrity.ok)
      refuse(
        "PRECONDITION_FAILED",
        `${from.config.id} fails its integrity check (${integrity.detail}): restore a good backup first (flotilla backups ${from.config.id}); ${to.config.id} was emptied again`,
      );
    const rows = copied.reduce((a, r) => a + r.rows, 0);
    const bytes = copied.reduce((a, r) => a + r.bytes, 0);
    details.tables = String(copied.length);
    details.rows = String(rows);
    details.bytes = String(bytes);
    result.revisionAfter = toRevs;

    const record: MoveRecord = {
      from: from.config.id,
      to: to.config.id,
      revision,
      at: new Date().toISOString(),
      operationId: id,
      checksums: Object.fromEntries(copied.map((r) => [r.table, r.checksum])),
    };
    await mkdir(join(f.deps.config.dataDir, "moves"), { recursive: true, mode: 0o700 });
    await writeFile(recordPath(f.deps, to.config.id), JSON.stringify(record, null, 2));
    recordWritten = true;

    // ---------------------------------------------------------------- switch
    const sw = switchHook(from, to);
    if (sw) await runSwitch(f, emit, progress, sw, to.config.id, signal);
    else {
      emit({ kind: "step", name: "switch", state: "skipped", detail: `no switch hook configured: point the app's DATABASE_URL at ${to.config.id}` });
    }
    if (stopped.length > 0) await f.controlApps(from, "start", "", emit, progress, signal);
    return {
      message:
        `moved ${from.config.id} (${from.config.kind}) to ${to.config.id} (${to.config.kind}) at ${revision}: ${copied.length} tables, ${rows} rows verified` +
        `${details.skipped_rows ? `, ${details.skipped_rows} orphaned row(s) left out (report ${details.orphans_report})` : ""}; ${from.config.id} is untouched (backup ${backup.id})` +
        `${sw ? "" : `; no switch hook: point the app at ${to.config.id}`}`,
      details,
    };
  } catch (err) {
    // Nothing may still be running when the operation ends.
    await Promise.allSettled([schema, backupP, integrityP]);
    // No move happened: the record must not say one did (a later move would take TO for FROM's copy).
    if (recordWritten) await rm(recordPath(f.deps, to.config.id), { force: true }).catch(() => undefined);
    if (toTouched) {
      progress({ source: "agent", line: `move failed: emptying ${to.config.id} again` });
      await emptyTarget(to, facts.toExists).catch((e: unknown) =>
        progress({ source: "agent", line: `could not empty ${to.config.id}: ${redact(toFlotillaError(e).message)}` }),
      );
    }
    if (stopped.length > 0) await f.controlApps(from, "start", "", emit, progress, signal).catch(() => undefined);
    throw err;
  }
}

function switchHook(from: TargetRuntime, to: TargetRuntime): readonly string[] | undefined {
  return from.config.blueGreen?.switch ?? to.config.blueGreen?.switch;
}

async function runSwitch(f: MoveFrame, emit: Emit, progress: ProgressFn, sw: readonly string[], toId: string, signal?: AbortSignal): Promise<void> {
  const r = await f.step(
    emit,
    `switch:${toId}`,
    () => f.deps.runHook([...sw, toId], (line) => progress({ source: "hook", line }), signal),
    (x) => x.detail,
  );
  // The copy was done and verified: a failing hook is an outside failure (exit 1), not a refusal.
  if (!r.ok)
    throw new FlotillaError("HOOK_FAILED", `switch hook failed: ${r.detail}; the app was not switched: ${toId} is emptied again and the source keeps serving`);
}

function sqliteTablesOf(t: TargetRuntime): ReturnType<typeof sqliteTables> {
  const db = openSqlite(sqlitePath(t.db), true);
  try {
    return sqliteTables(db);
  } finally {
    db.close();
  }
}

async function pgTablesOf(t: TargetRuntime): Promise<Awaited<ReturnType<typeof pgTables>>> {
  const c = await pgOf(t.db).openClient();
  try {
    return await pgTables(c);
  } finally {
    await c.end().catch(() => undefined);
  }
}

/** Puts TO back to empty after a failed move (it was empty before: every object in it is ours). */
async function emptyTarget(to: TargetRuntime, existed: boolean): Promise<void> {
  if (to.config.kind === "postgresql") {
    const c = await pgOf(to.db).openClient();
    try {
      await pgDropAll(c);
    } finally {
      await c.end().catch(() => undefined);
    }
    return;
  }
  const path = sqlitePath(to.db);
  if (!existed) {
    for (const p of [path, `${path}-wal`, `${path}-shm`, `${path}-journal`]) await rm(p, { force: true });
    return;
  }
  const db = openSqlite(path, false);
  try {
    db.pragma("foreign_keys = OFF");
    for (const t of sqliteTables(db)) db.exec(`DROP TABLE IF EXISTS "${t.name.replace(/"/g, '""')}"`);
  } finally {
    db.close();
  }
}

async function sqliteToPg(
  f: MoveFrame,
  emit: Emit,
  progress: ProgressFn,
  from: TargetRuntime,
  to: TargetRuntime,
  sourcePath: string,
  preflightOrphans: readonly OrphanRow[],
  skipOrphans: boolean,
  id: string,
  details: Record<string, string>,
  signal?: AbortSignal,
): Promise<TableResult[]> {
  // FROM itself while its app is stopped and nothing holds it, or the verified backup (--from-backup).
  const source: Database.Database = openSqlite(sourcePath, true);
  let client: pg.Client | undefined;
  try {
    client = await pgOf(to.db).openClient();
    const c = client;
    const fromFacts = sqliteTables(source);
    // Row counts order the copy: the biggest table first among those whose parents are copied.
    const weights = Object.fromEntries(
      fromFacts.map((t) => [t.name, (source.prepare(`SELECT count(*) AS n FROM "${t.name.replace(/"/g, '""')}"`).get() as { n: number }).n]),
    );
    const plan = planCopy(
      fromFacts,
      await pgTables(c),
      "postgresql",
      [
        ...sqliteForeignKeys(
          source,
          fromFacts.map((t) => t.name),
        ),
        ...(await pgForeignKeys(c)),
      ],
      weights,
    );
    if (plan.problems.length > 0)
      throw new FlotillaError("PRECONDITION_FAILED", `the schema of ${from.config.id} does not match what Alembic builds: ${plan.problems.join("; ")}`);
    const skip = new Map<string, Set<number>>();
    // Found again in the source the copy reads: a backup's rowids can differ from FROM's (VACUUM renumbers them).
    const orphans = skipOrphans && preflightOrphans.length > 0 ? sqliteOrphans(source, fromFacts) : [];
    if (orphans.length > 0) {
      for (const o of orphans) {
        const s = skip.get(o.table) ?? new Set<number>();
        s.add(o.rowid);
        skip.set(o.table, s);
      }
      const reportDir = join(f.deps.config.dataDir, "moves");
      await mkdir(reportDir, { recursive: true, mode: 0o700 });
      const report = join(reportDir, `${id}.orphans.json`);
      await writeFile(report, JSON.stringify({ operationId: id, from: from.config.id, to: to.config.id, orphans }, null, 2), { mode: 0o600 });
      details.orphans_report = report;
      details.skipped_rows = String(orphans.length);
      progress({ source: "agent", line: `${orphans.length} orphaned row(s) left out, listed in ${report}` });
    }
    // Two copy workers, each with its own SQLite handle and PostgreSQL connection, take tables whose
    // parents are committed (biggest first); as each table is committed its indexes are built and its
    // checksum is read on connections of their own, so checks overlap the copy of the others.
    const started = performance.now();
    const startedTables = new Set<string>();
    const doneTables = new Set<string>();
    const results = new Map<string, TableResult>();
    const checks: Promise<void>[] = [];
    let failure: unknown;
    let wake: () => void = () => undefined;
    const withTo = async <T>(fn: (client: pg.Client) => Promise<T>): Promise<T> => {
      const cl = await pgOf(to.db).openClient();
      try {
        return await fn(cl);
      } finally {
        await cl.end().catch(() => undefined);
      }
    };
    const check = async (t: TableCopy, sent: TableResult, indexes: SecondaryIndex[]): Promise<void> => {
      const [, got] = await Promise.all([
        indexes.length > 0 ? withTo((cl) => pgCreateIndexes(cl, indexes)) : Promise.resolve(),
        withTo((cl) => pgChecksum(cl, t)),
      ]);
      if (got.rows !== sent.rows || got.checksum !== sent.checksum) {
        const sample = await withTo((cl) => firstDifference(source, cl, t, skip.get(t.name)));
        throw new FlotillaError(
          "VERIFY_FAILED",
          `table ${t.name} differs after the copy (${sent.rows} rows sent, ${got.rows} in ${to.config.id}); first difference at ${sample}`,
        );
      }
    };
    const worker = async (): Promise<void> => {
      const db = openSqlite(sourcePath, true);
      const cl = await pgOf(to.db).openClient();
      try {
        for (;;) {
          if (failure !== undefined || signal?.aborted) return;
          const t = nextReadyTable(plan, startedTables, doneTables);
          if (!t) {
            if (startedTables.size === plan.tables.length) return;
            await new Promise<void>((r) => {
              const prev = wake;
              wake = () => {
                prev();
                r();
              };
            });
            continue;
          }
          startedTables.add(t.name);
          const { result: sent, indexes } = await copySqliteTable(
            db,
            cl,
            t,
            { index: startedTables.size, count: plan.tables.length, inCycle: plan.cycles.includes(t.name) },
            skip.get(t.name),
            (p) => {
              const { line, rate } = progressLine(p, started);
              emit({
                kind: "progress",
                source: "agent",
                line,
                bytesDone: p.bytesDone,
                table: p.table,
                tableIndex: p.tableIndex,
                tableCount: p.tableCount,
                rowsDone: p.rowsDone,
                rowsTotal: p.rowsTotal,
                bytesPerSecond: rate,
              });
            },
            signal,
          );
          results.set(t.name, sent);
          doneTables.add(t.name);
          const w = wake;
          wake = () => undefined;
          w();
          const p = check(t, sent, indexes);
          p.catch((err: unknown) => {
            failure ??= err;
          });
          checks.push(p);
        }
      } catch (err) {
        failure ??= err;
      } finally {
        const w = wake;
        wake = () => undefined;
        w();
        db.close();
        await cl.end().catch(() => undefined);
      }
    };
    try {
      const copied = await f.step(
        emit,
        "copy",
        async () => {
          await Promise.all([worker(), worker()]);
          if (failure !== undefined) throw failure;
          if (signal?.aborted) throw new FlotillaError("CANCELLED", "move cancelled");
          const seqs = await pgResetSequences(c, plan.tables);
          if (seqs.length > 0) progress({ source: "agent", line: `sequences moved past the highest id: ${seqs.join(", ")}` });
          return plan.tables.map((t) => results.get(t.name)!);
        },
        (r) =>
          `${r.length} tables, ${r.reduce((a, x) => a + x.rows, 0)} rows, ${(r.reduce((a, x) => a + x.bytes, 0) / 1e6).toFixed(1)} MB in ${((performance.now() - started) / 1000).toFixed(1)}s`,
      );
      await f.step(
        emit,
        "verify",
        async () => {
          await Promise.all(checks);
        },
        () => `${plan.tables.length} tables: indexes built, row counts and content checksums equal on both sides`,
      );
      return copied;
    } finally {
      await Promise.allSettled(checks);
    }
  } finally {
    source.close();
    await client?.end().catch(() => undefined);
  }
}

async function pgToSqlite(
  f: MoveFrame,
  emit: Emit,
  progress: ProgressFn,
  from: TargetRuntime,
  to: TargetRuntime,
  signal?: AbortSignal,
): Promise<TableResult[]> {
  const client = await pgOf(from.db).openClient();
  const dest = openSqlite(sqlitePath(to.db), false);
  try {
    // One snapshot of FROM for the copy and the source checksums.
    await client.query("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY");
    const fromFacts = await pgTables(client);
    const plan = planCopy(fromFacts, sqliteTables(dest), "sqlite", await pgForeignKeys(client));
    if (plan.problems.length > 0)
      throw new FlotillaError("PRECONDITION_FAILED", `the schema of ${from.config.id} does not match what Alembic builds: ${plan.problems.join("; ")}`);
    for (const t of plan.tables) dest.exec(`DELETE FROM "${t.name.replace(/"/g, '""')}"`);
    const started = performance.now();
    const copied = await f.step(
      emit,
      "copy",
      () =>
        copyPgToSqlite(
          client,
          dest,
          plan.tables,
          (p) => {
            const { line, rate } = progressLine(p, started);
            emit({
              kind: "progress",
              source: "agent",
              line,
              bytesDone: p.bytesDone,
              table: p.table,
              tableIndex: p.tableIndex,
              tableCount: p.tableCount,
              rowsDone: p.rowsDone,
              rowsTotal: p.rowsTotal,
              bytesPerSecond: rate,
            });
          },
          signal,
        ),
      (r) => `${r.length} tables, ${r.reduce((a, x) => a + x.rows, 0)} rows in ${((performance.now() - started) / 1000).toFixed(1)}s`,
    );
    await client.query("COMMIT");
    await f.step(
      emit,
      "verify",
      async () => {
        for (const [i, t] of plan.tables.entries()) {
          const want = copied[i]!;
          const got = sqliteChecksum(dest, t);
          if (got.rows !== want.rows || got.checksum !== want.checksum) {
            throw new FlotillaError("VERIFY_FAILED", `table ${t.name} differs after the copy (${want.rows} rows read, ${got.rows} in ${to.config.id})`);
          }
        }
        const ic = dest.prepare("PRAGMA integrity_check(5)").pluck().all() as string[];
        if (ic.join() !== "ok") throw new FlotillaError("VERIFY_FAILED", `integrity check of ${to.config.id} after the copy: ${ic.join("; ")}`);
      },
      () => `${plan.tables.length} tables: row counts and content checksums equal on both sides; integrity ok`,
    );
    return copied;
  } finally {
    await client.query("ROLLBACK").catch(() => undefined);
    await client.end().catch(() => undefined);
    dest.close();
  }
}
