import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { classifySql, missingObjects, objectsCreatedBy } from "./sql-compat.js";

const bump = "UPDATE alembic_version SET version_num='e5f4a3b2c1d0' WHERE alembic_version.version_num = 'd4c3b2a1e5f6';";

describe("classifySql", () => {
  it("new tables, nullable or defaulted columns and plain indexes are additive", () => {
    const v = classifySql(
      `CREATE TABLE folder (\n    id TEXT NOT NULL, \n    PRIMARY KEY (id)\n);\n\nALTER TABLE chat ADD COLUMN folder_id TEXT;\n\n` +
        `ALTER TABLE chat ADD COLUMN meta JSON DEFAULT '{}' NOT NULL;\n\nCREATE INDEX message_user_idx ON message (user_id);\n\n${bump}`,
    );
    assert.equal(v.compatibility, "additive");
    assert.match(v.reason, /creates table folder/);
    assert.equal(classifySql(bump).compatibility, "additive");
    // A unique index on a table the same revision creates cannot reject old rows.
    assert.equal(classifySql("CREATE TABLE memory (id TEXT);\nCREATE UNIQUE INDEX memory_id ON memory (id);").compatibility, "additive");
  });

  it("drops, renames, type changes, NOT NULL without default, unique constraints and data updates are breaking", () => {
    const cases: [string, RegExp][] = [
      ["DROP TABLE config_old;", /drops table/],
      ["ALTER TABLE config RENAME TO config_old;", /renames config/],
      ['ALTER TABLE "user" ALTER COLUMN email SET NOT NULL;', /NOT NULL/],
      ["ALTER TABLE chat ALTER COLUMN meta TYPE JSONB;", /column type/],
      ['ALTER TABLE "user" ADD COLUMN theme TEXT NOT NULL;', /NOT NULL column user.theme without a default/],
      ['ALTER TABLE "user" ADD CONSTRAINT uq_user_email UNIQUE (email);', /constraint.*unique/],
      ['CREATE UNIQUE INDEX uq_user_email_lower ON "user" (lower(email));', /unique index on user/],
      ["UPDATE chat SET archived_at = NULL;", /changes existing rows \(update chat\)/],
      ["ALTER TABLE chat DROP COLUMN tags;", /drops from chat/],
      ["INSERT INTO config (id, data) SELECT id, data FROM config_old;", /existing table config/],
    ];
    for (const [sql, why] of cases) {
      const v = classifySql(`${sql}\n\n${bump}`);
      assert.equal(v.compatibility, "breaking", sql);
      assert.match(v.reason, why, sql);
    }
  });

  it("one breaking statement makes the revision breaking; an unreadable one makes it unknown", () => {
    assert.equal(classifySql("CREATE TABLE note (id TEXT);\nUPDATE chat SET x = 1;").compatibility, "breaking");
    const v = classifySql("CREATE TABLE note (id TEXT);\nGRANT SELECT ON note TO reader;");
    assert.equal(v.compatibility, "unknown");
    assert.match(v.reason, /GRANT SELECT/);
  });

  it("ignores comments, the transaction wrapper and semicolons inside string literals", () => {
    assert.equal(classifySql("BEGIN;\n-- DROP TABLE x;\nALTER TABLE chat ADD COLUMN meta JSON DEFAULT 'a;b';\nCOMMIT;").compatibility, "additive");
  });
});

describe("objectsCreatedBy / missingObjects (stamp --reason applied-by-hand)", () => {
  const sql =
    `ALTER TABLE "user" ADD COLUMN settings JSON;\n\nCREATE INDEX chat_user_updated_idx ON chat (user_id, updated_at);\n\n` +
    `CREATE TABLE shared_chat (\n    id VARCHAR NOT NULL, \n    PRIMARY KEY (id)\n);\n\nALTER TABLE "user" ADD CONSTRAINT uq UNIQUE (email);\n\n${bump}`;

  it("reads the tables, columns and indexes a revision creates", () => {
    assert.deepEqual(objectsCreatedBy(sql), { tables: ["shared_chat"], columns: [{ table: "user", column: "settings" }], indexes: ["chat_user_updated_idx"] });
  });

  it("names what the database lacks", () => {
    const present = { tables: ["user", "chat"], indexes: [], columnsOf: (t: string) => (t === "user" ? ["id", "email"] : []) };
    assert.deepEqual(missingObjects(objectsCreatedBy(sql), present), ["table shared_chat", "column user.settings", "index chat_user_updated_idx"]);
    const all = { tables: ["user", "chat", "shared_chat"], indexes: ["chat_user_updated_idx"], columnsOf: () => ["id", "email", "settings"] };
    assert.deepEqual(missingObjects(objectsCreatedBy(sql), all), []);
  });
});
