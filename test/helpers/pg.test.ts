import { test } from "node:test";
import assert from "node:assert/strict";
import pg from "pg";
import { createTestDatabase, pgAdminUrl } from "./pg.js";

async function databaseExists(name: string): Promise<boolean> {
  const admin = new pg.Client({ connectionString: pgAdminUrl() });
  await admin.connect();
  try {
    const r = await admin.query<{ n: number }>("SELECT count(*)::int AS n FROM pg_database WHERE datname = $1", [name]);
    return r.rows[0]?.n === 1;
  } finally {
    await admin.end();
  }
}

test("createTestDatabase creates a usable database and drop() removes it", async () => {
  const db = await createTestDatabase("Helper-PG");
  try {
    assert.match(db.name, new RegExp(`^helper_pg_${process.pid}_[0-9a-f]{8}$`));
    assert.equal(new URL(db.url).pathname, `/${db.name}`);
    assert.equal(await databaseExists(db.name), true);

    const client = new pg.Client({ connectionString: db.url });
    await client.connect();
    try {
      const cur = await client.query<{ db: string }>("SELECT current_database() AS db");
      assert.equal(cur.rows[0]?.db, db.name);
      await client.query("CREATE TABLE t (id int PRIMARY KEY, v text)");
      await client.query("INSERT INTO t VALUES (1, 'one'), (2, 'two')");
      const rows = await client.query<{ v: string }>("SELECT v FROM t ORDER BY id");
      assert.deepEqual(
        rows.rows.map((r) => r.v),
        ["one", "two"],
      );
    } finally {
      await client.end();
    }
  } finally {
    await db.drop();
  }
  assert.equal(await databaseExists(db.name), false);
  await db.drop(); // idempotent
});

test("drop() terminates connections still open on the database", async () => {
  const db = await createTestDatabase("helper_pg_busy");
  const client = new pg.Client({ connectionString: db.url });
  const errors: Error[] = [];
  client.on("error", (err) => errors.push(err));
  await client.connect();
  await client.query("SELECT 1");
  await db.drop();
  assert.equal(await databaseExists(db.name), false);
  await assert.rejects(client.query("SELECT 1"));
  await client.end().catch(() => undefined);
});
