/** Companion files on real files: link-dest sharing, verification, atomic restore. */
import { after, test } from "node:test";
import assert from "node:assert/strict";
import { randomBytes, createHash } from "node:crypto";
import { mkdtempSync, mkdirSync, writeFileSync, readFileSync, readdirSync, lstatSync, rmSync, existsSync, symlinkSync, readlinkSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import Database from "better-sqlite3";
import {
  companionsChanged,
  repairInterruptedRestore,
  restoreCompanions,
  snapshotCompanions,
  verifyCompanions,
  type CompanionEntry,
} from "./companion-files.js";

const root = mkdtempSync(join(tmpdir(), "flotilla-companions-"));
after(() => rmSync(root, { recursive: true, force: true }));
const quiet = (): void => undefined;

/** Every file under dir: relative path → sha256 (symlinks → "->target"). */
function tree(dir: string): Record<string, string> {
  const out: Record<string, string> = {};
  const visit = (rel: string): void => {
    for (const name of readdirSync(join(dir, rel)).sort()) {
      const r = rel ? join(rel, name) : name;
      const st = lstatSync(join(dir, r));
      if (st.isSymbolicLink()) out[r] = `->${readlinkSync(join(dir, r))}`;
      else if (st.isDirectory()) {
        out[`${r}/`] = "dir";
        visit(r);
      } else
        out[r] = createHash("sha256")
          .update(readFileSync(join(dir, r)))
          .digest("hex");
    }
  };
  visit("");
  return out;
}

/** Disk blocks of the unique inodes under the given folders (st_blocks × 512). */
function uniqueBytes(dirs: string[]): number {
  const seen = new Set<string>();
  let bytes = 0;
  const visit = (p: string): void => {
    const st = lstatSync(p, { bigint: true });
    const key = `${st.dev}:${st.ino}`;
    if (!seen.has(key)) {
      seen.add(key);
      bytes += Number(st.blocks) * 512;
    }
    if (st.isDirectory()) for (const n of readdirSync(p)) visit(join(p, n));
  };
  for (const d of dirs) visit(d);
  return bytes;
}

test("ten backups of a 50 MB folder with one file changed between each take about 50 MB plus the changes", async () => {
  const base = join(root, "dedupe");
  const uploads = join(base, "uploads");
  const backups = join(base, "backups");
  mkdirSync(uploads, { recursive: true });
  mkdirSync(backups);
  for (let i = 0; i < 50; i++) writeFileSync(join(uploads, `file-${i}.bin`), randomBytes(1024 * 1024));
  let previous: { dir: string; entries: CompanionEntry[] } | undefined;
  const dirs: string[] = [];
  let linked = 0;
  for (let n = 0; n < 10; n++) {
    if (n > 0) writeFileSync(join(uploads, `file-${n}.bin`), randomBytes(1024 * 1024));
    const destDir = join(backups, `b${n}.files`);
    const snap = await snapshotCompanions({ include: [uploads], destDir, exclude: [], onProgress: quiet, ...(previous ? { previous } : {}) });
    if (n > 0) {
      assert.equal(snap.copiedFiles, 1, `backup ${n} copies only the changed file`);
      assert.equal(snap.linkedFiles, 49);
      linked += snap.linkedFiles;
    }
    assert.equal(snap.bytes, 50 * 1024 * 1024);
    const v = await verifyCompanions(destDir, snap.entries, { full: true });
    assert.equal(v.ok, true, v.detail);
    previous = { dir: destDir, entries: snap.entries };
    dirs.push(destDir);
  }
  assert.equal(linked, 9 * 49);
  const used = uniqueBytes(dirs);
  const oneCopy = 50 * 1024 * 1024;
  const changes = 9 * 1024 * 1024;
  assert.ok(used >= oneCopy, `at least one full copy is stored (${used})`);
  assert.ok(used <= oneCopy + changes + 2 * 1024 * 1024, `ten backups use ${(used / 1048576).toFixed(1)} MiB, want about 59 MiB (50 + 9 changed files)`);
  // Each backup still holds the folder exactly as it was when taken.
  assert.deepEqual(tree(join(dirs[9]!, "0")), tree(uploads));
});

test("restore puts a folder, a SQLite companion and a key file back exactly; a corrupted copy fails verification and restores nothing", async () => {
  const base = join(root, "restore");
  const data = join(base, "data");
  const uploads = join(data, "uploads");
  const vector = join(data, "vector_db");
  const keyFile = join(data, ".webui_secret_key");
  const backups = join(base, "backups");
  mkdirSync(join(uploads, "nested"), { recursive: true });
  mkdirSync(vector, { recursive: true });
  mkdirSync(backups);
  writeFileSync(join(uploads, "a.txt"), "first upload\n");
  writeFileSync(join(uploads, "nested", "b.bin"), randomBytes(200_000));
  symlinkSync("a.txt", join(uploads, "latest"));
  writeFileSync(keyFile, "not-a-real-key\n", { mode: 0o600 });
  const chroma = new Database(join(vector, "chroma.sqlite3"));
  chroma.pragma("journal_mode = WAL");
  chroma.exec("CREATE TABLE embeddings (id INTEGER PRIMARY KEY, v TEXT); INSERT INTO embeddings (v) VALUES ('one'), ('two');");
  const wantUploads = tree(uploads);
  const wantKey = readFileSync(keyFile, "utf8");
  const destDir = join(backups, "b1.files");
  // The WAL database is open and holds uncheckpointed rows: VACUUM INTO still takes them.
  const snap = await snapshotCompanions({ include: [uploads, vector, keyFile, join(data, "absent")], destDir, exclude: [], onProgress: quiet });
  chroma.close();
  assert.deepEqual(
    snap.entries.map((e) => e.type),
    ["dir", "dir", "file", "missing"],
  );
  const vectorFiles = snap.entries[1]!.files.filter((f) => f.type !== "dir");
  assert.deepEqual(
    vectorFiles.map((f) => [f.path, f.type]),
    [["chroma.sqlite3", "sqlite"]],
    "the -wal/-shm are not copied; the SQLite file is",
  );
  assert.equal((await verifyCompanions(destDir, snap.entries, { full: true })).ok, true);
  assert.equal(
    await companionsChanged(
      snap.entries.filter((e) => e.type !== "dir" || e.source === uploads),
      [],
    ),
    false,
  );

  // The app changes everything after the backup.
  writeFileSync(join(uploads, "a.txt"), "overwritten\n");
  rmSync(join(uploads, "nested", "b.bin"));
  writeFileSync(join(uploads, "new-after-backup.txt"), "x");
  writeFileSync(keyFile, "changed\n");
  const w = new Database(join(vector, "chroma.sqlite3"));
  w.exec("DELETE FROM embeddings; INSERT INTO embeddings (v) VALUES ('three')");
  w.close();
  writeFileSync(join(data, "absent"), "created later");
  assert.equal(await companionsChanged(snap.entries, []), true);

  // A corrupted stored copy: verification names it, restore refuses and changes nothing live.
  const stored = join(destDir, "0", "nested", "b.bin");
  const good = readFileSync(stored);
  const bad = Buffer.from(good);
  bad[1000] = bad[1000]! ^ 0xff;
  writeFileSync(stored, bad);
  const v = await verifyCompanions(destDir, snap.entries, { full: true });
  assert.equal(v.ok, false);
  assert.match(v.detail, /nested\/b\.bin: sha256 .* differs/);
  const liveBefore = tree(uploads);
  await assert.rejects(
    restoreCompanions(destDir, snap.entries, quiet),
    (err: Error & { code?: string }) => err.code === "RESTORE_FAILED" && /does not match its manifest/.test(err.message),
  );
  assert.deepEqual(tree(uploads), liveBefore, "a failed restore leaves the live files as they were");
  assert.deepEqual(
    readdirSync(data).filter((n) => n.includes(".restore-")),
    [],
    "staging removed",
  );
  writeFileSync(stored, good);

  await restoreCompanions(destDir, snap.entries, quiet);
  assert.deepEqual(tree(uploads), wantUploads);
  assert.equal(readFileSync(keyFile, "utf8"), wantKey);
  assert.equal(lstatSync(keyFile).mode & 0o777, 0o600);
  assert.equal(existsSync(join(data, "absent")), false, "a path that did not exist at backup time is removed");
  const r = new Database(join(vector, "chroma.sqlite3"), { readonly: true });
  assert.deepEqual(r.prepare("SELECT v FROM embeddings ORDER BY id").pluck().all(), ["one", "two"]);
  r.close();
  assert.deepEqual(
    readdirSync(data).filter((n) => n.includes(".restore-") || n.includes(".old-")),
    [],
  );
});

test("an unchanged SQLite companion is shared with the previous backup", async () => {
  const base = join(root, "sqlite-share");
  mkdirSync(base);
  const file = join(base, "chroma.sqlite3");
  const db = new Database(file);
  db.exec("CREATE TABLE t (x TEXT); INSERT INTO t VALUES ('a')");
  db.close();
  const one = await snapshotCompanions({ include: [file], destDir: join(base, "one.files"), exclude: [], onProgress: quiet });
  const two = await snapshotCompanions({
    include: [file],
    destDir: join(base, "two.files"),
    exclude: [],
    onProgress: quiet,
    previous: { dir: join(base, "one.files"), entries: one.entries },
  });
  assert.equal(two.linkedFiles, 1);
  assert.equal(lstatSync(join(base, "two.files", "0")).ino, lstatSync(join(base, "one.files", "0")).ino);
});

test("a restore interrupted between its two renames is put right: the live folder goes back, staged copies go", async () => {
  const base = join(root, "interrupted");
  const uploads = join(base, "uploads");
  mkdirSync(join(base, "uploads.old-ab12"), { recursive: true });
  writeFileSync(join(base, "uploads.old-ab12", "kept.txt"), "live data");
  mkdirSync(join(base, "uploads.restore-cd34"));
  mkdirSync(join(base, "other.restore-ee"), { recursive: true });
  const done = await repairInterruptedRestore([uploads]);
  assert.equal(readFileSync(join(uploads, "kept.txt"), "utf8"), "live data");
  assert.deepEqual(readdirSync(base).sort(), ["other.restore-ee", "uploads"], "only this path's leftovers are touched");
  assert.equal(done.length, 2);
  mkdirSync(join(base, "uploads.old-ff"));
  await repairInterruptedRestore([uploads]);
  assert.equal(existsSync(join(base, "uploads.old-ff")), false, "with the path present, the aside copy is the stale one");
  assert.equal(readFileSync(join(uploads, "kept.txt"), "utf8"), "live data");
});
