/**
 * Companion files as recorded in a backup manifest (`backups.include`): the
 * shapes only; the adapter that writes, verifies and restores them is
 * adapters/companion-files.ts.
 */

export type CompanionFileType = "file" | "sqlite" | "symlink" | "dir";

/** One stored file (or folder, or symlink) of an entry. */
export interface CompanionFile {
  /** Relative to the entry ("" for an entry that is a single file, or for the folder itself). */
  readonly path: string;
  readonly type: CompanionFileType;
  readonly size: number;
  /** sha256 of the stored bytes; "" for folders and symlinks. */
  readonly sha256: string;
  readonly mode: number;
  /** Symlink target. */
  readonly link?: string;
  /** Source identity when it was stored (`ino:size:mtimeNs`), for link-dest reuse. */
  readonly quick?: string;
}

/** One configured include path as backed up. */
export interface CompanionEntry {
  /** Absolute path as configured. */
  readonly source: string;
  /** "missing": the path did not exist when the backup was taken (a restore removes it). */
  readonly type: "file" | "dir" | "missing";
  /** Name under `<id>.files/`. */
  readonly stored: string;
  readonly files: readonly CompanionFile[];
}
