import { test } from "node:test";
import assert from "node:assert/strict";
import {
  RowChecksum,
  canonicalFromPg,
  canonicalFromSqlite,
  canonicalRow,
  copyFieldFromSqlite,
  decideMove,
  foreignKeyOrder,
  kindOfPgType,
  kindOfSqliteType,
  nextReadyTable,
  planCopy,
  sqliteValueFromPg,
  unescapeCopyField,
  MoveValueError,
  type MovePreflightFacts,
  type TableFact,
  type ValueKind,
} from "./move-plan.js";

test("foreign-key order puts parents first, keeps self-references, reports cycles", () => {
  const { order, cycles } = foreignKeyOrder(
    ["message", "chat", "user", "tag", "a", "b"],
    [
      { table: "message", columns: ["chat_id"], parent: "chat", parentColumns: ["id"] },
      { table: "chat", columns: ["user_id"], parent: "user", parentColumns: ["id"] },
      { table: "message", columns: ["reply_to"], parent: "message", parentColumns: ["id"] },
      { table: "a", columns: ["b_id"], parent: "b", parentColumns: ["id"] },
      { table: "b", columns: ["a_id"], parent: "a", parentColumns: ["id"] },
    ],
  );
  assert.ok(order.indexOf("user") < order.indexOf("chat"));
  assert.ok(order.indexOf("chat") < order.indexOf("message"));
  assert.deepEqual(cycles, ["a", "b"]);
  assert.equal(order.length, 6);
});

test("among tables that are ready, the heaviest is copied first", () => {
  const fks = [{ table: "message", columns: ["chat_id"], parent: "chat", parentColumns: ["id"] }];
  assert.deepEqual(foreignKeyOrder(["auth", "chat", "message", "user"], fks, { message: 900, chat: 50, user: 10 }).order, ["chat", "message", "user", "auth"]);
  assert.deepEqual(foreignKeyOrder(["auth", "chat", "message", "user"], [], { message: 900, chat: 50, user: 10 }).order, ["message", "chat", "user", "auth"]);
});

test("column kinds come from the destination's type", () => {
  const pg: [string, ValueKind][] = [
    ["boolean", "boolean"],
    ["bigint", "integer"],
    ["integer", "integer"],
    ["double precision", "float"],
    ["numeric(14,4)", "numeric"],
    ["json", "json"],
    ["jsonb", "jsonb"],
    ["bytea", "bytes"],
    ["timestamp without time zone", "timestamp"],
    ["timestamp with time zone", "timestamptz"],
    ["date", "date"],
    ["uuid", "uuid"],
    ["character varying", "text"],
    ["text", "text"],
  ];
  for (const [t, k] of pg) assert.equal(kindOfPgType(t), k, t);
  const lite: [string, ValueKind][] = [
    ["BOOLEAN", "boolean"],
    ["BIGINT", "integer"],
    ["INTEGER", "integer"],
    ["FLOAT", "float"],
    ["NUMERIC(14, 4)", "numeric"],
    ["JSON", "json"],
    ["BLOB", "bytes"],
    ["DATETIME", "timestamp"],
    ["DATE", "date"],
    ["VARCHAR", "text"],
    ["TEXT", "text"],
    ["", "text"],
  ];
  for (const [t, k] of lite) assert.equal(kindOfSqliteType(t), k, t);
});

test("SQLite values become COPY text fields converted by kind", () => {
  assert.equal(copyFieldFromSqlite("boolean", "1"), "t");
  assert.equal(copyFieldFromSqlite("boolean", "0"), "f");
  assert.throws(() => copyFieldFromSqlite("boolean", "maybe"), MoveValueError);
  assert.equal(copyFieldFromSqlite("integer", "9007199254740993"), "9007199254740993");
  assert.throws(() => copyFieldFromSqlite("integer", "1.5"), MoveValueError);
  assert.equal(copyFieldFromSqlite("float", 0.1 + 0.2), "0.30000000000000004");
  assert.equal(copyFieldFromSqlite("float", Number.NaN), "NaN");
  assert.equal(copyFieldFromSqlite("bytes", Buffer.from([0, 0x5c, 0xff])), "\\\\x005cff");
  assert.equal(copyFieldFromSqlite("text", "a\tb\nc\\d\re"), "a\\tb\\nc\\\\d\\re");
  assert.equal(copyFieldFromSqlite("json", '{"a":"x\\ny"}'), '{"a":"x\\\\ny"}');
  assert.equal(copyFieldFromSqlite("timestamp", "2024-02-29T23:59:59.123456"), "2024-02-29 23:59:59.123456");
  assert.throws(() => copyFieldFromSqlite("timestamp", "yesterday"), MoveValueError);
  assert.equal(copyFieldFromSqlite("text", null), "\\N");
  assert.equal(unescapeCopyField("a\\tb\\nc\\\\d"), "a\tb\nc\\d");
  assert.equal(unescapeCopyField("\\N"), null);
});

test("normalised values are equal on both sides for every kind", () => {
  const pairs: [ValueKind, Parameters<typeof canonicalFromSqlite>[1], string][] = [
    ["boolean", "1", "t"],
    ["boolean", "0", "f"],
    ["integer", "-9007199254740993", "-9007199254740993"],
    ["float", 0.1 + 0.2, "0.30000000000000004"],
    ["float", 1e21, "1e+21"],
    ["numeric", 1.5, "1.5000"],
    ["numeric", "0.0001", "0.0001"],
    ["timestamp", "2024-02-29 23:59:59.120000", "2024-02-29 23:59:59.12"],
    ["timestamp", "1970-01-01 00:00:00.000000", "1970-01-01 00:00:00"],
    ["timestamptz", "2024-01-01 10:00:00", "2024-01-01 10:00:00+00"],
    ["date", "2024-02-29", "2024-02-29"],
    ["bytes", Buffer.from([1, 2, 255]), "\\x0102ff"],
    ["jsonb", '{"b": 1, "a": [1, 2]}', '{"a": [1, 2], "b": 1}'],
    ["json", '{"b": 1}', '{"b": 1}'],
    ["uuid", "0123456789abcdef0123456789ABCDEF", "01234567-89ab-cdef-0123-456789abcdef"],
    ["text", "é\u0000x", "é\u0000x"],
  ];
  for (const [kind, lite, pgText] of pairs)
    assert.equal(canonicalFromSqlite(kind, lite), canonicalFromPg(kind, pgText), `${kind}: ${String(lite)} vs ${pgText}`);
  assert.notEqual(canonicalFromSqlite("timestamp", "2024-02-29 23:59:59.120001"), canonicalFromPg("timestamp", "2024-02-29 23:59:59.12"));
  assert.notEqual(canonicalFromSqlite("json", '{"b": 1}'), canonicalFromPg("json", '{"b":1}'), "json (not jsonb) keeps its text exactly");
  assert.equal(canonicalFromSqlite("integer", null), null);
});

test("PostgreSQL text values become SQLite values exactly", () => {
  assert.equal(sqliteValueFromPg("boolean", "t"), 1);
  assert.equal(sqliteValueFromPg("integer", "9007199254740993"), 9007199254740993n);
  assert.equal(sqliteValueFromPg("integer", "42"), 42);
  assert.deepEqual(sqliteValueFromPg("bytes", "\\x00ff"), Buffer.from([0, 255]));
  assert.equal(sqliteValueFromPg("timestamp", "2024-02-29 23:59:59.12"), "2024-02-29 23:59:59.120000");
  assert.equal(sqliteValueFromPg("numeric", "12345678.1234"), 12345678.1234);
  assert.equal(sqliteValueFromPg("numeric", "0.10000000000000000001"), "0.10000000000000000001");
  assert.equal(sqliteValueFromPg("text", null), null);
});

test("the row checksum does not depend on row order and sees every change", () => {
  const rows = [
    ["1", "a"],
    ["2", null],
    ["3", "c"],
  ].map((r) => canonicalRow(r));
  const a = new RowChecksum();
  const b = new RowChecksum();
  for (const r of rows) a.add(r);
  for (const r of [...rows].reverse()) b.add(r);
  assert.equal(a.hex(), b.hex());
  const c = new RowChecksum();
  for (const r of [rows[0]!, rows[1]!, canonicalRow(["3", "C"])]) c.add(r);
  assert.notEqual(a.hex(), c.hex());
  const d = new RowChecksum();
  for (const r of [rows[0]!, rows[1]!]) d.add(r);
  assert.notEqual(a.hex(), d.hex(), "a missing row changes the checksum");
  const swapped = new RowChecksum();
  for (const r of [canonicalRow(["1", "c"]), rows[1]!, canonicalRow(["3", "a"])]) swapped.add(r);
  assert.notEqual(a.hex(), swapped.hex(), "values moved between rows change it");
  assert.notEqual(canonicalRow(["", null]), canonicalRow([null, ""]));
});

test("the copy plan converts by TO's types and names schema drift", () => {
  const from: TableFact[] = [
    {
      name: "chat",
      columns: [
        { name: "id", type: "VARCHAR", notNull: true, pk: 1 },
        { name: "pinned", type: "BOOLEAN", notNull: false, pk: 0 },
      ],
    },
    {
      name: "message",
      columns: [
        { name: "id", type: "INTEGER", notNull: true, pk: 1 },
        { name: "chat_id", type: "VARCHAR", notNull: true, pk: 0 },
        { name: "stray", type: "TEXT", notNull: false, pk: 0 },
      ],
    },
    { name: "alembic_version", columns: [{ name: "version_num", type: "VARCHAR(32)", notNull: true, pk: 1 }] },
    { name: "migratehistory", columns: [{ name: "id", type: "INTEGER", notNull: true, pk: 1 }] },
  ];
  const to: TableFact[] = [
    {
      name: "chat",
      columns: [
        { name: "id", type: "character varying", notNull: true, pk: 1 },
        { name: "pinned", type: "boolean", notNull: false, pk: 0 },
      ],
    },
    {
      name: "message",
      columns: [
        { name: "id", type: "integer", notNull: true, pk: 1 },
        { name: "chat_id", type: "character varying", notNull: true, pk: 0 },
      ],
    },
    { name: "alembic_version", columns: [{ name: "version_num", type: "character varying(32)", notNull: true, pk: 1 }] },
  ];
  const plan = planCopy(from, to, "postgresql", [{ table: "message", columns: ["chat_id"], parent: "chat", parentColumns: ["id"] }]);
  assert.deepEqual(
    plan.tables.map((t) => t.name),
    ["chat", "message"],
  );
  assert.deepEqual(
    plan.tables[0]!.columns.map((c) => c.kind),
    ["text", "boolean"],
  );
  assert.equal(plan.tables[1]!.serial, "id");
  assert.equal(plan.tables[0]!.serial, undefined);
  assert.deepEqual(plan.tables[1]!.parents, ["chat"]);
  assert.equal(nextReadyTable(plan, new Set(), new Set())?.name, "chat");
  assert.equal(nextReadyTable(plan, new Set(["chat"]), new Set()), undefined, "message waits for chat to be copied");
  assert.equal(nextReadyTable(plan, new Set(["chat"]), new Set(["chat"]))?.name, "message");
  assert.equal(plan.problems.length, 2);
  assert.match(plan.problems.join(";"), /table migratehistory exists in FROM/);
  assert.match(plan.problems.join(";"), /column message\.stray/);
});

function facts(over: Partial<MovePreflightFacts> = {}): MovePreflightFacts {
  return {
    fromId: "lite",
    toId: "pg",
    fromKind: "sqlite",
    toKind: "postgresql",
    sameAlembicProject: true,
    fromRevisions: ["abc"],
    unknownRevisions: [],
    toTables: [],
    toVersionRows: 0,
    integrity: { ok: true, detail: "ok" },
    orphans: [],
    skipOrphans: false,
    runningApps: [],
    fromBackup: false,
    yes: false,
    ...over,
  };
}

test("preflight: a clean move goes on at FROM's revision", () => {
  const d = decideMove(facts({ runningApps: ["app-1"], toTables: ["alembic_version"] }));
  assert.equal(d.go, "copy");
  assert.equal(d.go === "copy" && d.revision, "abc");
  assert.match(d.go === "copy" ? d.notes.join() : "", /app-1 will be stopped/);
});

test("preflight refusals name what is wrong", () => {
  const cases: [Partial<MovePreflightFacts>, string, RegExp][] = [
    [{ toId: "lite" }, "INVALID_ARGUMENT", /same target/],
    [{ toKind: "sqlite" }, "INVALID_ARGUMENT", /both sqlite/],
    [{ sameAlembicProject: false }, "INVALID_ARGUMENT", /different Alembic projects/],
    [{ fromRevisions: null }, "PRECONDITION_FAILED", /records no Alembic revision/],
    [{ fromRevisions: ["a", "b"] }, "PRECONDITION_FAILED", /several revisions \(a, b\)/],
    [{ unknownRevisions: ["abc"] }, "UNKNOWN_REVISION", /migrations do not contain/],
    [{ toTables: ["alembic_version", "user", "chat"] }, "PRECONDITION_FAILED", /pg is not empty \(it has tables user, chat\)/],
    [{ toTables: ["alembic_version"], toVersionRows: 1 }, "PRECONDITION_FAILED", /not empty \(it has a revision in alembic_version\)/],
    [{ integrity: { ok: false, detail: "page 3 broken" } }, "PRECONDITION_FAILED", /integrity check \(page 3 broken\)/],
    [
      {
        orphans: [
          { table: "message", parent: "chat", count: 2 },
          { table: "tag", parent: "user", count: 1 },
        ],
      },
      "PRECONDITION_FAILED",
      /3 orphaned rows .*message → chat: 2 rows; tag → user: 1 row.*--skip-orphans/,
    ],
    [{ moveBack: { fromNewer: true, why: "table chat changed" } }, "DATA_LOSS_NOT_ACCEPTED", /newer \(table chat changed\).*--yes/],
  ];
  for (const [over, code, message] of cases) {
    const d = decideMove(facts(over));
    assert.equal(d.go, "refuse", JSON.stringify(over));
    if (d.go === "refuse") {
      assert.equal(d.code, code, JSON.stringify(over));
      assert.match(d.message, message);
    }
  }
});

test("preflight: orphans skipped on request, and the way back", () => {
  const skip = decideMove(facts({ orphans: [{ table: "message", parent: "chat", count: 2 }], skipOrphans: true }));
  assert.equal(skip.go, "copy");
  assert.match(skip.go === "copy" ? skip.notes.join() : "", /2 orphaned row\(s\) will be left out/);
  assert.equal(decideMove(facts({ moveBack: { fromNewer: false, why: "" }, toTables: ["user"] })).go, "back");
  assert.equal(decideMove(facts({ moveBack: { fromNewer: true, why: "x" }, yes: true })).go, "back");
});
