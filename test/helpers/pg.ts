// PostgreSQL helpers for tests. The server comes from FLOTILLA_TEST_PG_URL (run-tests.mjs sets it,
// starting a throwaway cluster when needed); each test gets its own database.
import { randomBytes } from "node:crypto";
import pg from "pg";

export const DEFAULT_TEST_PG_URL = "postgresql://postgres@127.0.0.1:5432/postgres";

export interface TestDatabase {
  /** Connection URL of the new database. */
  url: string;
  /** Database name. */
  name: string;
  /** Terminates other connections to the database and drops it. Safe to call twice. */
  drop(): Promise<void>;
}

/** URL of the maintenance database tests create their databases from. */
export function pgAdminUrl(): string {
  const fromEnv = process.env["FLOTILLA_TEST_PG_URL"];
  return fromEnv !== undefined && fromEnv !== "" ? fromEnv : DEFAULT_TEST_PG_URL;
}

/** The admin URL with its database replaced by `name`. */
export function urlForDatabase(name: string, adminUrl: string = pgAdminUrl()): string {
  const u = new URL(adminUrl);
  u.pathname = `/${encodeURIComponent(name)}`;
  return u.toString();
}

async function withAdmin<T>(fn: (client: pg.Client) => Promise<T>): Promise<T> {
  const client = new pg.Client({ connectionString: pgAdminUrl(), connectionTimeoutMillis: 10_000 });
  client.on("error", () => {
    /* reported through the failing query */
  });
  await client.connect();
  try {
    return await fn(client);
  } finally {
    await client.end().catch(() => undefined);
  }
}

/** Creates a fresh, uniquely named database `${prefix}_${pid}_${hex}` (lower case). */
export async function createTestDatabase(prefix: string): Promise<TestDatabase> {
  const suffix = `_${process.pid}_${randomBytes(4).toString("hex")}`;
  const cleanPrefix =
    prefix
      .toLowerCase()
      .replace(/[^a-z0-9_]/g, "_")
      .replace(/^([^a-z_])/, "_$1") || "test";
  // PostgreSQL identifiers are at most 63 bytes.
  const name = `${cleanPrefix.slice(0, 63 - suffix.length)}${suffix}`.toLowerCase();
  const ident = pg.escapeIdentifier(name);
  await withAdmin(async (c) => {
    await c.query(`CREATE DATABASE ${ident}`);
  });
  let dropped = false;
  return {
    url: urlForDatabase(name),
    name,
    async drop(): Promise<void> {
      if (dropped) return;
      await withAdmin(async (c) => {
        await c.query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()", [name]);
        await c.query(`DROP DATABASE IF EXISTS ${ident}`);
      });
      dropped = true;
    },
  };
}
