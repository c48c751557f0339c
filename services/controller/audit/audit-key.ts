import { randomBytes } from "node:crypto";
import { constants } from "node:fs";
import { link, mkdir, open, readFile, stat, unlink } from "node:fs/promises";
import path from "node:path";
import { FlotillaError } from "../../common/errors.js";

/** Length of a generated key, and the least a key file may hold. */
export const AUDIT_KEY_BYTES = 32;

/** Where the audit log's tail checkpoint lives for a given key file: beside it. */
export function checkpointPathFor(keyFile: string): string {
  return `${keyFile}.checkpoint`;
}

/**
 * Loads the audit HMAC key from `file`, or creates it on first start: 32
 * random bytes, mode 0600, published atomically (written to a private
 * temporary file opened with O_EXCL, then hard-linked into place, so two
 * processes starting together end up with one key and nobody reads a
 * half-written file); a missing parent folder is created with mode 0700.
 *
 * Refuses, with FlotillaError('CONFIG_INVALID'), a key file that group or
 * others may access, that is not a regular file, or that holds fewer than 32
 * bytes. The whole file content is the key. The key is never logged, never
 * put in an error message and never stored in the controller's database.
 */
export async function loadOrCreateAuditKey(file: string): Promise<Buffer> {
  const abs = path.resolve(file);
  try {
    return await readKey(abs);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== "ENOENT") throw err;
  }
  await mkdir(path.dirname(abs), { recursive: true, mode: 0o700 });
  const tmp = `${abs}.${process.pid}.${randomBytes(6).toString("hex")}.tmp`;
  const key = randomBytes(AUDIT_KEY_BYTES);
  const fh = await open(tmp, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL, 0o600);
  try {
    await fh.writeFile(key);
    await fh.sync();
  } finally {
    await fh.close();
  }
  try {
    await link(tmp, abs);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== "EEXIST") {
      throw new FlotillaError("CONFIG_INVALID", `cannot create the audit key file ${abs}: ${(err as Error).message}`, { cause: err });
    }
    // Another process created it first: use theirs.
    return readKey(abs);
  } finally {
    await unlink(tmp).catch(() => undefined);
  }
  await syncDir(path.dirname(abs));
  return key;
}

async function readKey(abs: string): Promise<Buffer> {
  const st = await stat(abs);
  if (!st.isFile()) throw new FlotillaError("CONFIG_INVALID", `audit key ${abs} is not a regular file`);
  const mode = st.mode & 0o777;
  if ((mode & 0o077) !== 0) {
    throw new FlotillaError("CONFIG_INVALID", `audit key file ${abs} has mode 0${mode.toString(8)}: group or others can access it; run chmod 600 ${abs}`);
  }
  const key = await readFile(abs);
  if (key.length < AUDIT_KEY_BYTES) {
    throw new FlotillaError(
      "CONFIG_INVALID",
      `audit key file ${abs} holds ${key.length} bytes; it needs at least ${AUDIT_KEY_BYTES} random bytes ` +
        `(restore the original key: rows sealed with it cannot be verified with any other)`,
    );
  }
  return key;
}

async function syncDir(dir: string): Promise<void> {
  try {
    const fh = await open(dir, constants.O_RDONLY);
    try {
      await fh.sync();
    } finally {
      await fh.close();
    }
  } catch {
    // Not every filesystem lets a folder be fsynced; the key itself is synced.
  }
}
