/**
 * Hands a PostgreSQL password to one child process (pg_dump, pg_restore, psql)
 * through a PGPASSFILE: mode 0600, in a private (0700) temporary directory,
 * deleted when the child is done. Never through argv (readable by everyone via
 * /proc/<pid>/cmdline) and never through PGPASSWORD (readable by the same uid
 * via /proc/<pid>/environ for the whole run).
 */
import { mkdtemp, open, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { FlotillaError } from "../../common/errors.js";

/** Escapes one .pgpass field: `\` → `\\`, `:` → `\:` (the format's only escapes). */
export function escapePgpassField(value: string): string {
  return value.replace(/\\/g, "\\\\").replace(/:/g, "\\:");
}

/**
 * One .pgpass line matching any host, port and database for `user`. The file
 * exists for one child only, so wildcards cost nothing and also cover
 * connections to the maintenance and scratch databases. Throws
 * FlotillaError("CONFIG_INVALID") for a line break in either value (the format
 * cannot hold one); the message never contains the password.
 */
export function pgpassLine(user: string, password: string): string {
  if (/[\r\n]/.test(password)) throw new FlotillaError("CONFIG_INVALID", "PostgreSQL password contains a line break, which a password file cannot hold");
  if (/[\r\n]/.test(user)) throw new FlotillaError("CONFIG_INVALID", "PostgreSQL user name contains a line break");
  return `*:*:*:${escapePgpassField(user)}:${escapePgpassField(password)}\n`;
}

/**
 * Runs `fn` with `{ PGPASSFILE }` pointing at a fresh password file for `user`,
 * and removes the file and its directory afterwards, whether `fn` succeeds or
 * throws. With no password, `fn` gets an empty env (libpq then uses its own
 * defaults, e.g. ~/.pgpass). `dir` is where the private directory is made
 * (default: the OS temp dir, usually tmpfs).
 */
export async function withPgpassFile<T>(
  user: string,
  password: string | undefined,
  fn: (env: Readonly<Record<string, string>>) => Promise<T>,
  dir: string = tmpdir(),
): Promise<T> {
  if (password === undefined || password === "") return fn({});
  const line = pgpassLine(user, password);
  // mkdtemp makes the directory 0700, so nobody else can even look up the file name.
  const privateDir = await mkdtemp(join(dir, "flotilla-pgpass-"));
  try {
    const file = join(privateDir, "pgpass");
    const fh = await open(file, "wx", 0o600);
    try {
      await fh.writeFile(line, "utf8");
      // libpq ignores a password file that group or others can read; make sure umask did not widen it.
      await fh.chmod(0o600);
    } finally {
      await fh.close();
    }
    return await fn({ PGPASSFILE: file });
  } finally {
    await rm(privateDir, { recursive: true, force: true });
  }
}
