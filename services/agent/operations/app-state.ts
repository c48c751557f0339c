import { dirname, join } from "node:path";
import type { BackupManifest, DatabaseAdapter, ProgressFn } from "../core/ports.js";
import { companionsChanged, repairInterruptedRestore, restoreCompanions, snapshotCompanions, verifyCompanions } from "../adapters/companion-files.js";
import type { OperationContext, TargetRuntime } from "./context.js";

/**
 * The app's state beyond its database, as the operations use it: companion
 * files (backups.include) taken, verified and restored with every backup of
 * the live database, and the app version recorded with it.
 */

/** Where a manifest's companion files are: `<id>.files` beside its artifact. */
export function companionsDir(m: BackupManifest): string {
  return join(dirname(m.path), `${m.id}.files`);
}

/** Files never taken as companions: the main database with its side files, and the backups folder. */
function excluded(t: TargetRuntime): string[] {
  const out = [t.config.backups.dir];
  if (t.config.kind === "sqlite") {
    const file = t.config.database.slice("sqlite:///".length);
    out.push(file, `${file}-wal`, `${file}-shm`, `${file}-journal`);
  }
  return out;
}

/**
 * Backs up the target's companions for backup `id` (nothing when none are
 * configured or `db` is not the live database), sharing unchanged files with
 * the newest verified backup that has them.
 */
export async function takeCompanions(
  t: TargetRuntime,
  db: DatabaseAdapter,
  id: string,
  progress: ProgressFn,
  signal?: AbortSignal,
): Promise<Pick<BackupManifest, "companions" | "companionBytes" | "companionNewBytes">> {
  const include = t.config.backups.include ?? [];
  if (include.length === 0 || db !== t.db) return {};
  for (const line of await repairInterruptedRestore(include)) progress({ source: "backup", line: `companion files: ${line} (left by an interrupted restore)` });
  const previous = (await t.catalog.list()).find((m) => m.verified && m.companions && m.companions.length > 0);
  const snap = await snapshotCompanions({
    include,
    destDir: t.catalog.filesDir(id),
    exclude: excluded(t),
    onProgress: progress,
    ...(previous?.companions ? { previous: { dir: companionsDir(previous), entries: previous.companions } } : {}),
    ...(signal ? { signal } : {}),
  });
  return { companions: snap.entries, companionBytes: snap.bytes, companionNewBytes: snap.newBytes };
}

/** Verifies a manifest's companions (full: re-hash every file). ok with an empty detail when it has none. */
export async function verifyCompanionsOf(m: BackupManifest, full: boolean, signal?: AbortSignal): Promise<{ ok: boolean; detail: string }> {
  if (!m.companions || m.companions.length === 0) return { ok: true, detail: "" };
  return verifyCompanions(companionsDir(m), m.companions, { full, ...(signal ? { signal } : {}) });
}

/** Restores a manifest's companions (staged, checked, renamed in). */
export async function restoreCompanionsOf(m: BackupManifest, progress: ProgressFn, signal?: AbortSignal): Promise<void> {
  if (!m.companions || m.companions.length === 0) return;
  for (const line of await repairInterruptedRestore(m.companions.map((e) => e.source)))
    progress({ source: "backup", line: `companion files: ${line} (left by an interrupted restore)` });
  await restoreCompanions(companionsDir(m), m.companions, progress, signal);
}

/**
 * After a failed migration that left the database untouched: the companions
 * are put back too when they may have changed since the backup.
 */
export async function restoreCompanionsIfChanged(t: TargetRuntime, m: BackupManifest, progress: ProgressFn, signal?: AbortSignal): Promise<boolean> {
  if (!m.companions || m.companions.length === 0) return false;
  if (!(await companionsChanged(m.companions, excluded(t)))) return false;
  progress({ source: "agent", line: `companion files changed since backup ${m.id}: restoring them` });
  await restoreCompanionsOf(m, progress, signal);
  return true;
}

/** The manifest field for an app version ("" records nothing). */
export function appVersionOf(v: string): { appVersion?: string } {
  return v ? { appVersion: v } : {};
}

/** The target's app version (first line of its appVersion command), or "" when none is configured or it fails. */
export async function readAppVersion(ctx: OperationContext, t: TargetRuntime, signal?: AbortSignal): Promise<string> {
  const argv = t.config.appVersion;
  if (!argv || argv.length === 0) return "";
  const lines: string[] = [];
  // A hung version command (a stopped Docker daemon) must not hold a backup up: 15 s at most.
  const limit = AbortSignal.timeout(15_000);
  const r = await ctx.deps.runHook(argv, (l) => lines.push(l), signal ? AbortSignal.any([signal, limit]) : limit).catch(() => ({ ok: false, detail: "" }));
  if (!r.ok) return "";
  return (lines.map((l) => l.trim()).find((l) => l.length > 0) ?? "").slice(0, 200);
}

/**
 * What a restore of `m` should tell about app versions: which version the
 * backup belongs to when it differs from the running one, and, when the
 * restore goes back to an older revision, that a newer app image would
 * migrate it again at start.
 */
export function appVersionNotes(m: BackupManifest, current: string, olderRevision: boolean): string[] {
  const notes: string[] = [];
  if (m.appVersion && current && m.appVersion !== current) {
    notes.push(`backup ${m.id} was taken under app version ${m.appVersion}; the app now reports ${current}`);
  }
  if (olderRevision) {
    notes.push(
      `the database is now at an older revision (${m.revisions.join(",") || "none"}): start the app version that matches it${m.appVersion ? ` (${m.appVersion})` : ""}; a newer app image would migrate it again at start (Open WebUI does unless ENABLE_DB_MIGRATIONS=false)`,
    );
  }
  return notes;
}
