import { randomBytes } from "node:crypto";
import { mkdir, open, readFile, readdir, rename, rm, stat, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { FlotillaError } from "../../common/errors.js";
import type { BackupCatalogPort, BackupManifest, DatabaseKind } from "../core/ports.js";

export type { BackupManifest } from "../core/ports.js";
import { backupsToDelete } from "../core/retention.js";

const BACKUP_ID = /^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$/;

/** Validates a backup id received over the wire: ids only, never paths. */
export function assertBackupId(id: string): void {
  if (!BACKUP_ID.test(id) || id.includes("..")) {
    throw new FlotillaError("INVALID_ARGUMENT", `"${id}" is not a backup id (list them with: flotilla backups TARGET)`);
  }
}

async function fsyncPath(path: string): Promise<void> {
  const fh = await open(path, "r");
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
}

/**
 * Backups of one target in one folder: `<id>.db`/`<id>.dump` plus `<id>.json`.
 * Paths are built here from ids; a manifest is written with temp + fsync +
 * rename, so no partial file ever carries a final name.
 */
export class BackupCatalog implements BackupCatalogPort {
  constructor(
    private readonly dir: string,
    private readonly targetId: string,
    private readonly kind: DatabaseKind,
  ) {}

  /**
   * Creates the folder and removes what a crash or a full disk left behind:
   * temp files, and backup artifacts without a manifest (a manifest is written
   * only for a complete backup, so an artifact without one is not a backup).
   * Runs under the target's lock, so no backup of this target is being written.
   */
  async prepare(): Promise<string[]> {
    await mkdir(this.dir, { recursive: true, mode: 0o700 });
    const removed: string[] = [];
    const names = await readdir(this.dir);
    const manifests = new Set(names.filter((n) => n.endsWith(".json") && !n.includes(".tmp-")).map((n) => n.slice(0, -".json".length)));
    const ext = `.${this.kind === "sqlite" ? "db" : "dump"}`;
    for (const name of names) {
      const orphan = name.endsWith(ext) && !manifests.has(name.slice(0, -ext.length));
      if (name.includes(".tmp-") || name.includes(".restore-") || orphan) {
        await rm(join(this.dir, name), { recursive: true, force: true });
        removed.push(name);
      }
    }
    return removed;
  }

  /** Removes a backup that did not complete: its artifact, manifest and temp files. Never throws. */
  async discard(id: string): Promise<void> {
    assertBackupId(id);
    const names = await readdir(this.dir).catch(() => [] as string[]);
    const artifact = this.artifactPath(id);
    const mine = names.filter(
      (n) => n.startsWith(`${id}.`) && (n.includes(".tmp-") || join(this.dir, n) === artifact || n === `${id}.json` || n === `${id}.files`),
    );
    // The manifest goes first: a folder never shows a manifest whose artifact is gone.
    mine.sort((a, b) => Number(b === `${id}.json`) - Number(a === `${id}.json`));
    for (const n of mine) await rm(join(this.dir, n), { recursive: true, force: true }).catch(() => undefined);
    await fsyncPath(this.dir).catch(() => undefined);
  }

  /** A fresh id and the artifact path it will use. */
  newBackup(): { id: string; path: string } {
    const stamp = new Date()
      .toISOString()
      .replace(/[-:]/g, "")
      .replace(/\.\d+Z$/, "Z");
    const id = `${this.targetId}-${stamp}-${randomBytes(3).toString("hex")}`;
    return { id, path: this.artifactPath(id) };
  }

  artifactPath(id: string): string {
    assertBackupId(id);
    return join(this.dir, `${id}.${this.kind === "sqlite" ? "db" : "dump"}`);
  }

  /** Folder holding a backup's companion files. */
  filesDir(id: string): string {
    assertBackupId(id);
    return join(this.dir, `${id}.files`);
  }

  async save(m: BackupManifest): Promise<void> {
    assertBackupId(m.id);
    const final = join(this.dir, `${m.id}.json`);
    const tmp = `${final}.tmp-${randomBytes(4).toString("hex")}`;
    try {
      await writeFile(tmp, JSON.stringify(m, null, 2), { mode: 0o600, flag: "wx" });
      await fsyncPath(tmp);
      await rename(tmp, final);
    } catch (err) {
      // A full disk must not leave a half-written manifest behind.
      await rm(tmp, { force: true }).catch(() => undefined);
      throw err;
    }
    await fsyncPath(this.dir);
  }

  async get(id: string): Promise<BackupManifest> {
    assertBackupId(id);
    let text: string;
    try {
      text = await readFile(join(this.dir, `${id}.json`), "utf8");
    } catch {
      throw new FlotillaError("NOT_FOUND", `backup ${id} does not exist for target ${this.targetId} (list them with: flotilla backups ${this.targetId})`);
    }
    return JSON.parse(text) as BackupManifest;
  }

  /** Newest first. */
  async list(): Promise<BackupManifest[]> {
    let names: string[];
    try {
      names = await readdir(this.dir);
    } catch {
      return [];
    }
    const out: BackupManifest[] = [];
    for (const n of names) {
      if (!n.endsWith(".json") || n.includes(".tmp-")) continue;
      try {
        out.push(JSON.parse(await readFile(join(this.dir, n), "utf8")) as BackupManifest);
      } catch {
        // a manifest that cannot be read is not a backup we can offer
      }
    }
    return out.sort((a, b) => b.createdAt.localeCompare(a.createdAt));
  }

  async lastVerified(): Promise<BackupManifest | undefined> {
    return (await this.list()).find((m) => m.verified);
  }

  /**
   * Deletes what retention allows (core/retention.ts): beyond the newest
   * `keep` and older than `keepDays`, never the newest verified backup nor one
   * in `protect`. Returns deleted ids.
   */
  async prune(keep: number, protect: ReadonlySet<string>, keepDays?: number): Promise<string[]> {
    const all = await this.list();
    const deleted: string[] = [];
    for (const id of backupsToDelete(all, { keep, nowMs: Date.now(), protect, ...(keepDays !== undefined ? { keepDays } : {}) })) {
      const m = { id };
      await rm(this.filesDir(m.id), { recursive: true, force: true });
      await rm(this.artifactPath(m.id), { recursive: true, force: true });
      await rm(join(this.dir, `${m.id}.json`), { force: true });
      deleted.push(m.id);
    }
    return deleted;
  }

  async artifactExists(id: string): Promise<boolean> {
    try {
      await stat(this.artifactPath(id));
      return true;
    } catch {
      return false;
    }
  }
}
