/**
 * Companion files: the files and folders an app keeps beside its database
 * (`backups.include`: a vector store's SQLite file, `uploads/`, a secret key
 * file). Backed up with every backup of the target into `<id>.files/`, each
 * file with its sha256 in the manifest; SQLite files among them copied with
 * VACUUM INTO like the main database (their -wal/-shm/-journal are not copied:
 * the VACUUM copy already holds what they hold).
 *
 * Unchanged files are shared with the previous verified backup by hard links,
 * the way `rsync --link-dest` does: a regular file whose source inode, size and
 * mtime (nanoseconds) equal what the previous backup recorded is linked, not
 * copied, and keeps its recorded sha256; a SQLite companion is linked when its
 * fresh VACUUM copy has the previous copy's sha256. Stored files are never
 * written in place (restore copies out of them, never links), so sharing an
 * inode between backups is safe.
 *
 * Restore stages every entry beside its live location (`<path>.restore-<hex>`,
 * same filesystem), sha256-checks every staged file against the manifest, and
 * only when all of them match renames them into place (a folder: live folder
 * renamed aside, staged folder renamed in, old one removed). A mismatch leaves
 * the live files untouched.
 */
import { createHash, randomBytes } from "node:crypto";
import * as fsp from "node:fs/promises";
import * as path from "node:path";
import { FlotillaError } from "../../common/errors.js";
import type { CompanionEntry, CompanionFile } from "../core/companions.js";
import type { ProgressFn } from "../core/ports.js";
import { SqliteDatabase } from "./sqlite-database.js";

export type { CompanionEntry, CompanionFile, CompanionFileType } from "../core/companions.js";

export interface CompanionSnapshot {
  readonly entries: CompanionEntry[];
  /** Logical bytes of every stored file. */
  readonly bytes: number;
  /** Bytes actually written by this backup (the rest are hard links). */
  readonly newBytes: number;
  readonly copiedFiles: number;
  readonly linkedFiles: number;
}

const SQLITE_HEADER = Buffer.from("SQLite format 3\0", "latin1");
const SQLITE_SIDE_FILES = ["-wal", "-shm", "-journal"];
const CHUNK = 1 << 20;

function hex(n: number): string {
  return randomBytes(n).toString("hex");
}

function cancelled(signal: AbortSignal | undefined): void {
  if (signal?.aborted) throw new FlotillaError("CANCELLED", "companion files: cancelled");
}

async function lstatOrNull(p: string): Promise<import("node:fs").BigIntStats | null> {
  try {
    return await fsp.lstat(p, { bigint: true });
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "ENOENT") return null;
    throw err;
  }
}

function quickKey(st: import("node:fs").BigIntStats): string {
  return `${st.ino}:${st.size}:${st.mtimeNs}`;
}

async function isSqliteFile(p: string): Promise<boolean> {
  const fh = await fsp.open(p, "r");
  try {
    const buf = Buffer.alloc(16);
    const { bytesRead } = await fh.read(buf, 0, 16, 0);
    return bytesRead === 16 && buf.equals(SQLITE_HEADER);
  } finally {
    await fh.close();
  }
}

/** sha256 of a file, read in 1 MiB chunks. */
export async function sha256File(p: string, signal?: AbortSignal): Promise<{ sha256: string; size: number }> {
  const hash = createHash("sha256");
  const fh = await fsp.open(p, "r");
  let size = 0;
  try {
    const buf = Buffer.allocUnsafe(CHUNK);
    for (;;) {
      cancelled(signal);
      const { bytesRead } = await fh.read(buf, 0, CHUNK, null);
      if (bytesRead === 0) break;
      hash.update(buf.subarray(0, bytesRead));
      size += bytesRead;
    }
  } finally {
    await fh.close();
  }
  return { sha256: hash.digest("hex"), size };
}

/** Copies src to a new file dest (never overwrites), hashing the bytes, fsynced. */
async function copyHashing(src: string, dest: string, mode: number, signal?: AbortSignal): Promise<{ sha256: string; size: number }> {
  const hash = createHash("sha256");
  const input = await fsp.open(src, "r");
  let size = 0;
  try {
    const output = await fsp.open(dest, "wx", mode & 0o7777);
    try {
      const buf = Buffer.allocUnsafe(CHUNK);
      for (;;) {
        cancelled(signal);
        const { bytesRead } = await input.read(buf, 0, CHUNK, null);
        if (bytesRead === 0) break;
        const chunk = buf.subarray(0, bytesRead);
        hash.update(chunk);
        let off = 0;
        while (off < chunk.length) off += (await output.write(chunk, off, chunk.length - off)).bytesWritten;
        size += bytesRead;
      }
      await output.chmod(mode & 0o7777);
      await output.sync();
    } finally {
      await output.close();
    }
  } finally {
    await input.close();
  }
  return { sha256: hash.digest("hex"), size };
}

async function fsyncDir(dir: string): Promise<void> {
  const fh = await fsp.open(dir, "r");
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
}

/** Files of a folder, parents before children, sorted; SQLite side files of a SQLite file skipped. */
async function walk(root: string, skip: (abs: string) => boolean): Promise<{ rel: string; abs: string; st: import("node:fs").BigIntStats }[]> {
  const out: { rel: string; abs: string; st: import("node:fs").BigIntStats }[] = [];
  const visit = async (rel: string): Promise<void> => {
    const dir = rel === "" ? root : path.join(root, rel);
    const names = (await fsp.readdir(dir)).sort();
    for (const name of names) {
      const abs = path.join(dir, name);
      if (skip(abs)) continue;
      const childRel = rel === "" ? name : path.join(rel, name);
      const st = await fsp.lstat(abs, { bigint: true });
      out.push({ rel: childRel, abs, st });
      if (st.isDirectory()) await visit(childRel);
    }
  };
  await visit("");
  return out;
}

export interface SnapshotOptions {
  /** Absolute include paths, in config order. */
  readonly include: readonly string[];
  /** `<backups>/<id>.files`; must not exist. */
  readonly destDir: string;
  /** The previous verified backup's companions, for link-dest sharing. */
  readonly previous?: { readonly dir: string; readonly entries: readonly CompanionEntry[] };
  /** Paths never taken (the main database and its side files, the backups folder). */
  readonly exclude: readonly string[];
  readonly onProgress: ProgressFn;
  readonly signal?: AbortSignal;
}

/**
 * Backs up every include path into destDir (built under a temp name, renamed
 * into place when complete). Returns the manifest entries.
 */
export async function snapshotCompanions(o: SnapshotOptions): Promise<CompanionSnapshot> {
  const tmpDir = `${o.destDir}.tmp-${hex(4)}`;
  await fsp.mkdir(tmpDir, { mode: 0o700 });
  const excluded = new Set(o.exclude.map((p) => path.resolve(p)));
  const isExcluded = (abs: string): boolean => {
    if (excluded.has(abs)) return true;
    for (const e of excluded) if (abs.startsWith(`${e}${path.sep}`)) return true;
    return false;
  };
  const entries: CompanionEntry[] = [];
  let bytes = 0;
  let newBytes = 0;
  let copiedFiles = 0;
  let linkedFiles = 0;
  let lastReport = 0;
  try {
    for (const [i, source] of o.include.entries()) {
      const stored = String(i);
      const prevEntry = o.previous?.entries.find((e) => e.source === source && e.type !== "missing");
      const prevFiles = new Map((prevEntry?.files ?? []).map((f) => [f.path, f]));
      const st = await lstatOrNull(source);
      if (!st) {
        entries.push({ source, type: "missing", stored, files: [] });
        o.onProgress({ source: "backup", line: `companion ${source}: does not exist (recorded as missing)` });
        continue;
      }
      const files: CompanionFile[] = [];
      // One file of the entry: link it to the previous backup's copy when unchanged, else copy it.
      const takeFile = async (abs: string, rel: string, fst: import("node:fs").BigIntStats, dest: string, sqlite?: boolean): Promise<void> => {
        cancelled(o.signal);
        const mode = Number(fst.mode);
        const prev = prevFiles.get(rel);
        const prevPath = prevEntry && o.previous ? path.join(o.previous.dir, prevEntry.stored, rel) : undefined;
        if (fst.isSymbolicLink()) {
          const link = await fsp.readlink(abs);
          await fsp.symlink(link, dest);
          files.push({ path: rel, type: "symlink", size: 0, sha256: "", mode, link });
          return;
        }
        if (sqlite ?? (fst.isFile() && (await isSqliteFile(abs)))) {
          const art = await new SqliteDatabase({ path: abs }).backup(dest, () => undefined, o.signal);
          bytes += art.sizeBytes;
          if (prev?.type === "sqlite" && prev.sha256 === art.sha256 && prevPath && (await linkOver(prevPath, dest, art.sizeBytes))) {
            linkedFiles++;
          } else {
            newBytes += art.sizeBytes;
            copiedFiles++;
          }
          files.push({ path: rel, type: "sqlite", size: art.sizeBytes, sha256: art.sha256, mode });
          return;
        }
        const quick = quickKey(fst);
        bytes += Number(fst.size);
        if (prev?.type === "file" && prev.quick === quick && prevPath) {
          try {
            const pst = await fsp.stat(prevPath);
            if (pst.size === prev.size) {
              await fsp.link(prevPath, dest);
              linkedFiles++;
              files.push({ ...prev });
              return;
            }
          } catch {
            // the previous copy is gone: copy afresh
          }
        }
        const c = await copyHashing(abs, dest, mode, o.signal);
        newBytes += c.size;
        copiedFiles++;
        files.push({ path: rel, type: "file", size: c.size, sha256: c.sha256, mode, quick });
        if (newBytes - lastReport >= 64 * 1024 * 1024) {
          lastReport = newBytes;
          o.onProgress({
            source: "backup",
            line: `companion files: ${Math.round(newBytes / 1e6)} MB copied, ${linkedFiles} file(s) shared with the previous backup`,
            bytesDone: newBytes,
          });
        }
      };
      if (st.isDirectory()) {
        const root = path.join(tmpDir, stored);
        await fsp.mkdir(root, { mode: 0o700 });
        files.push({ path: "", type: "dir", size: 0, sha256: "", mode: Number(st.mode) });
        const sqliteFiles = new Set<string>();
        const list = await walk(source, isExcluded);
        // A file the previous backup took as a plain file, unchanged since, is not opened to look for a SQLite header.
        const unchangedPlain = (f: (typeof list)[number]): boolean => {
          const prev = prevFiles.get(f.rel);
          return prev?.type === "file" && prev.quick === quickKey(f.st);
        };
        await eachLimited(list, 8, async (f) => {
          if (f.st.isFile() && !unchangedPlain(f) && (await isSqliteFile(f.abs))) sqliteFiles.add(f.abs);
        });
        const taken = list.filter((f) => {
          const side = SQLITE_SIDE_FILES.find((x) => f.abs.endsWith(x));
          return !(side && sqliteFiles.has(f.abs.slice(0, -side.length))) && (f.st.isDirectory() || f.st.isFile() || f.st.isSymbolicLink());
        });
        // Folders first (parents before children), then the files, several at a time.
        for (const f of taken.filter((x) => x.st.isDirectory())) {
          await fsp.mkdir(path.join(root, f.rel), { mode: 0o700 });
          files.push({ path: f.rel, type: "dir", size: 0, sha256: "", mode: Number(f.st.mode) });
        }
        await eachLimited(
          taken.filter((x) => !x.st.isDirectory()),
          8,
          (f) => takeFile(f.abs, f.rel, f.st, path.join(root, f.rel), sqliteFiles.has(f.abs)),
        );
        files.sort((a, b) => (a.path < b.path ? -1 : a.path > b.path ? 1 : 0));
        entries.push({ source, type: "dir", stored, files });
      } else if (st.isFile()) {
        await takeFile(source, "", st, path.join(tmpDir, stored));
        entries.push({ source, type: "file", stored, files });
      } else {
        throw new FlotillaError("BACKUP_FAILED", `companion ${source} is neither a file nor a folder`);
      }
    }
    await fsp.rename(tmpDir, o.destDir);
    await fsyncDir(path.dirname(o.destDir));
  } catch (err) {
    await fsp.rm(tmpDir, { recursive: true, force: true }).catch(() => undefined);
    if (err instanceof FlotillaError) throw err;
    const e = err as NodeJS.ErrnoException;
    throw new FlotillaError("BACKUP_FAILED", `companion files backup failed${e.code === "ENOSPC" ? " (disk full)" : ""}: ${e.message}`, { cause: err });
  }
  o.onProgress({
    source: "backup",
    line: `companion files: ${entries.length} path(s), ${copiedFiles} file(s) copied (${Math.round(newBytes / 1e6)} MB), ${linkedFiles} shared with the previous backup`,
  });
  return { entries, bytes, newBytes, copiedFiles, linkedFiles };
}

/** Runs fn over items, at most `limit` at a time. */
async function eachLimited<T>(items: readonly T[], limit: number, fn: (item: T) => Promise<void>): Promise<void> {
  let next = 0;
  const worker = async (): Promise<void> => {
    while (next < items.length) {
      const item = items[next++]!;
      await fn(item);
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
}

/** Replaces dest by a hard link to prev when prev has the expected size. */
async function linkOver(prev: string, dest: string, size: number): Promise<boolean> {
  try {
    if ((await fsp.stat(prev)).size !== size) return false;
    const tmp = `${dest}.link-${hex(4)}`;
    await fsp.link(prev, tmp);
    await fsp.rename(tmp, dest);
    return true;
  } catch {
    return false;
  }
}

/**
 * Checks stored companions against their manifest. `full`: every file is
 * re-hashed. Otherwise (right after taking the backup) files written by this
 * backup (one link) are re-hashed and files shared with an earlier backup are
 * checked by size (they were hashed when first written; a full verify
 * re-hashes them). Never throws for a bad file: ok=false with the reasons.
 */
export async function verifyCompanions(
  dir: string,
  entries: readonly CompanionEntry[],
  opts: { full: boolean; signal?: AbortSignal },
): Promise<{ ok: boolean; detail: string }> {
  const problems: string[] = [];
  let hashed = 0;
  let shared = 0;
  for (const e of entries) {
    if (e.type === "missing") continue;
    for (const f of e.files) {
      if (f.type === "dir" || f.type === "symlink") continue;
      const p = e.type === "file" ? path.join(dir, e.stored) : path.join(dir, e.stored, f.path);
      const label = e.type === "file" ? e.source : path.join(e.source, f.path);
      let st: import("node:fs").Stats;
      try {
        st = await fsp.stat(p);
      } catch {
        problems.push(`${label}: stored copy missing`);
        continue;
      }
      if (st.size !== f.size) {
        problems.push(`${label}: ${st.size} bytes, manifest says ${f.size}`);
        continue;
      }
      if (!opts.full && st.nlink > 1) {
        shared++;
        continue;
      }
      const h = await sha256File(p, opts.signal);
      hashed++;
      if (h.sha256 !== f.sha256) problems.push(`${label}: sha256 ${h.sha256.slice(0, 12)}… differs from the manifest's ${f.sha256.slice(0, 12)}…`);
    }
  }
  if (problems.length > 0) {
    const shown = problems.slice(0, 5).join("; ");
    return { ok: false, detail: `companion files: ${problems.length} problem(s): ${shown}${problems.length > 5 ? "; …" : ""}` };
  }
  return {
    ok: true,
    detail: `companion files: ${hashed} sha256 match${shared > 0 ? `, ${shared} shared with an earlier verified backup (size checked)` : ""}`,
  };
}

/**
 * Puts every entry back exactly as backed up: staged beside the live path,
 * each file sha256-checked, then renamed into place. RESTORE_FAILED, with
 * nothing live touched, when a stored file does not match its manifest.
 * The caller guarantees the app is stopped.
 */
export async function restoreCompanions(dir: string, entries: readonly CompanionEntry[], onProgress: ProgressFn, signal?: AbortSignal): Promise<void> {
  const staged: { entry: CompanionEntry; path: string }[] = [];
  try {
    for (const e of entries) {
      if (e.type === "missing") {
        staged.push({ entry: e, path: "" });
        continue;
      }
      const stage = `${e.source}.restore-${hex(4)}`;
      staged.push({ entry: e, path: stage });
      await fsp.mkdir(path.dirname(e.source), { recursive: true });
      const put = async (f: CompanionFile, from: string, to: string): Promise<void> => {
        if (f.type === "dir") {
          await fsp.mkdir(to, { mode: f.mode & 0o7777 });
          return;
        }
        if (f.type === "symlink") {
          await fsp.symlink(f.link ?? "", to);
          return;
        }
        const c = await copyHashing(from, to, f.mode, signal);
        if (c.sha256 !== f.sha256 || c.size !== f.size) {
          throw new FlotillaError(
            "RESTORE_FAILED",
            `companion ${e.type === "file" ? e.source : path.join(e.source, f.path)} in the backup does not match its manifest (sha256 ${c.sha256.slice(0, 12)}…, want ${f.sha256.slice(0, 12)}…): nothing was restored`,
          );
        }
      };
      if (e.type === "file") {
        await put(e.files[0]!, path.join(dir, e.stored), stage);
      } else {
        await fsp.mkdir(stage, { mode: 0o700 });
        for (const f of e.files) if (f.path !== "") await put(f, path.join(dir, e.stored, f.path), path.join(stage, f.path));
        // Folder modes last, so a read-only folder does not stop its children being written.
        for (const f of e.files) if (f.type === "dir" && f.path !== "") await fsp.chmod(path.join(stage, f.path), f.mode & 0o7777);
      }
    }
    // Every staged file matches: swap them in.
    for (const s of staged) {
      const e = s.entry;
      const aside = `${e.source}.old-${hex(4)}`;
      const live = await lstatOrNull(e.source);
      if (e.type === "file" && e.files[0]?.type === "sqlite") {
        for (const side of SQLITE_SIDE_FILES) await fsp.rm(`${e.source}${side}`, { force: true });
      }
      if (live && (e.type !== "file" || live.isDirectory())) await fsp.rename(e.source, aside);
      if (e.type !== "missing") await fsp.rename(s.path, e.source);
      if (e.type === "dir") {
        const root = e.files.find((f) => f.path === "");
        if (root) await fsp.chmod(e.source, root.mode & 0o7777);
      }
      await fsyncDir(path.dirname(e.source));
      await fsp.rm(aside, { recursive: true, force: true });
      onProgress({
        source: "backup",
        line: `restore: companion ${e.source} ${e.type === "missing" ? "removed (it did not exist at backup time)" : "restored"}`,
      });
    }
  } catch (err) {
    for (const s of staged) if (s.path) await fsp.rm(s.path, { recursive: true, force: true }).catch(() => undefined);
    if (err instanceof FlotillaError) throw err;
    throw new FlotillaError("RESTORE_FAILED", `restoring companion files failed: ${(err as Error).message}`, { cause: err });
  }
}

/**
 * Whether the live companions may differ from the backup (cheap: file set,
 * size and source identity; SQLite files by their side files' presence).
 * True means "restore them to be sure".
 */
export async function companionsChanged(entries: readonly CompanionEntry[], exclude: readonly string[]): Promise<boolean> {
  for (const e of entries) {
    const st = await lstatOrNull(e.source);
    if (e.type === "missing") {
      if (st) return true;
      continue;
    }
    if (!st) return true;
    if (e.type === "file") {
      const f = e.files[0]!;
      if (f.type === "sqlite") return true;
      if (f.quick !== quickKey(st)) return true;
      continue;
    }
    const live = await walk(e.source, (abs) => exclude.includes(abs));
    const want = new Map(e.files.map((f) => [f.path, f]));
    const seen = new Set<string>();
    for (const l of live) {
      if (SQLITE_SIDE_FILES.some((s) => l.rel.endsWith(s) && want.get(l.rel.slice(0, -s.length))?.type === "sqlite")) continue;
      const f = want.get(l.rel);
      if (!f) return true;
      seen.add(l.rel);
      if (f.type === "sqlite") return true;
      if (f.type === "file" && f.quick !== quickKey(l.st)) return true;
    }
    if ([...want.keys()].some((k) => k !== "" && !seen.has(k))) return true;
  }
  return false;
}

/**
 * Puts right what an agent crash in the middle of restoreCompanions() left
 * beside the include paths: staged copies (`<path>.restore-*`) are removed;
 * a live copy renamed aside (`<path>.old-*`) goes back when the path itself is
 * missing (the crash fell between the two renames), and is removed otherwise.
 * Returns what it did, one phrase each.
 */
export async function repairInterruptedRestore(include: readonly string[]): Promise<string[]> {
  const done: string[] = [];
  for (const source of include) {
    const parent = path.dirname(source);
    const base = path.basename(source);
    let names: string[];
    try {
      names = await fsp.readdir(parent);
    } catch {
      continue;
    }
    for (const n of names.filter((x) => x.startsWith(`${base}.old-`))) {
      if (!(await lstatOrNull(source))) {
        await fsp.rename(path.join(parent, n), source);
        done.push(`${source} put back from ${n}`);
      } else {
        await fsp.rm(path.join(parent, n), { recursive: true, force: true });
        done.push(`${n} removed`);
      }
    }
    for (const n of names.filter((x) => x.startsWith(`${base}.restore-`))) {
      await fsp.rm(path.join(parent, n), { recursive: true, force: true });
      done.push(`${n} removed`);
    }
  }
  return done;
}
