/**
 * The controller store's two adapters as test backends: a SQLite file and a
 * fresh PostgreSQL database, each with raw SQL access for tampering. Shared by
 * the store contract suite and the audit log suite (`for (const make of STORE_BACKENDS)`).
 */
import { mkdtempSync, rmSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import Database from "better-sqlite3";
import pg from "pg";
import type { ControllerStore } from "../../services/controller/core/ports.js";
import { PostgresStore, SqliteStore } from "../../services/controller/store/index.js";
import { createTestDatabase, type TestDatabase } from "./pg.js";

export interface OpenedStore {
  store: ControllerStore;
  /** A second store instance (its own connection) on the same database. */
  another(): Promise<ControllerStore>;
  /** The same database opened again after `store` was closed. */
  reopen(): Promise<ControllerStore>;
  /** Runs one raw SQL statement on a separate connection; returns its rows. */
  sql(text: string): Promise<Array<Record<string, unknown>>>;
}

export interface StoreBackend {
  name: string;
  setup(): Promise<void>;
  teardown(): Promise<void>;
  fresh(): Promise<OpenedStore>;
  cleanup(): Promise<void>;
}

export const STORE_TABLES = "rollouts, leases, agents, schedules, schedule_fires, audit_log, audit_anchor";

export function sqliteBackend(prefix: string): StoreBackend {
  let dir = "";
  let n = 0;
  const toClose: Array<() => Promise<void> | void> = [];
  return {
    name: "SqliteStore",
    async setup() {
      dir = mkdtempSync(path.join(os.tmpdir(), `flotilla-${prefix}-`));
    },
    async teardown() {
      rmSync(dir, { recursive: true, force: true });
    },
    async cleanup() {
      for (const c of toClose.splice(0)) await c();
    },
    async fresh() {
      const file = path.join(dir, `${prefix}-${++n}.db`);
      const open = async (): Promise<ControllerStore> => {
        const s = new SqliteStore(file);
        await s.init();
        toClose.push(() => s.close());
        return s;
      };
      const store = await open();
      let raw: Database.Database | undefined;
      return {
        store,
        another: open,
        reopen: open,
        async sql(text) {
          if (raw === undefined) {
            const db = new Database(file, { timeout: 5000 });
            raw = db;
            toClose.push(() => {
              db.close();
            });
          }
          const st = raw.prepare(text);
          if (st.reader) return st.all() as Array<Record<string, unknown>>;
          st.run();
          return [];
        },
      };
    },
  };
}

export function postgresBackend(prefix: string): StoreBackend {
  let db: TestDatabase | undefined;
  const toClose: Array<() => Promise<void>> = [];
  return {
    name: "PostgresStore",
    async setup() {
      db = await createTestDatabase(prefix);
    },
    async teardown() {
      await db?.drop();
    },
    async cleanup() {
      for (const c of toClose.splice(0)) await c();
    },
    async fresh() {
      const raw = new pg.Client({ connectionString: db!.url });
      raw.on("error", () => undefined);
      await raw.connect();
      toClose.push(() => raw.end());
      await raw.query(`DROP TABLE IF EXISTS ${STORE_TABLES}`);
      const open = async (): Promise<ControllerStore> => {
        const s = new PostgresStore(db!.url);
        toClose.push(() => s.close());
        await s.init();
        return s;
      };
      const store = await open();
      return {
        store,
        another: open,
        reopen: open,
        async sql(text) {
          return (await raw.query(text)).rows as Array<Record<string, unknown>>;
        },
      };
    },
  };
}
