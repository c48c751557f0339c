import { mkdirSync } from "node:fs";
import { join } from "node:path";
import Database from "better-sqlite3";
import { FlotillaError } from "../../common/errors.js";

/** The lock file in the agent's data dir. */
export const INSTANCE_LOCK_FILE = "agent.lock";

/**
 * One agent process per data dir: the daemon holds an exclusive SQLite lock
 * on DATA_DIR/agent.lock for its whole life, and offline tools
 * (--reset-fencing) take the same lock, so they never run beside a live
 * agent. The operating system drops the lock when the process ends, even on
 * kill -9, so a crash never leaves it stale (unlike a pid file).
 */
export class InstanceLock {
  private constructor(private db: Database.Database | undefined) {}

  /** Takes the lock, or throws PRECONDITION_FAILED when another process holds it. */
  static acquire(dataDir: string): InstanceLock {
    mkdirSync(dataDir, { recursive: true, mode: 0o700 });
    const path = join(dataDir, INSTANCE_LOCK_FILE);
    const db = new Database(path, { timeout: 0 });
    try {
      db.pragma("locking_mode = EXCLUSIVE");
      // Held until this connection closes: the transaction is never ended.
      db.exec("BEGIN EXCLUSIVE");
    } catch (err) {
      db.close();
      if ((err as { code?: string }).code === "SQLITE_BUSY") {
        throw new FlotillaError("PRECONDITION_FAILED", `a flotilla-agent process is running with data dir ${dataDir} (it holds ${path})`);
      }
      throw err;
    }
    return new InstanceLock(db);
  }

  release(): void {
    this.db?.close();
    this.db = undefined;
  }
}
