import assert from "node:assert/strict";
import { existsSync, readFileSync, statSync } from "node:fs";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { describe, it } from "node:test";
import { FlotillaError } from "../../common/errors.js";
import { displayPgUrl, formatPgUrl, libpqEnv, parsePgUrl, withDatabase, withPassword } from "./pg-url.js";
import { escapePgpassField, pgpassLine, withPgpassFile } from "./pgpass.js";

const CANARY = "canary-Pw-9f3k@:x";

function configInvalid(fn: () => unknown, notIn?: string): void {
  assert.throws(fn, (err: unknown) => {
    assert.ok(err instanceof FlotillaError);
    assert.equal(err.code, "CONFIG_INVALID");
    if (notIn !== undefined) assert.ok(!err.message.includes(notIn), `message leaks ${notIn}: ${err.message}`);
    return true;
  });
}

describe("parsePgUrl", () => {
  it("parses both schemes into host, port, user, database", () => {
    for (const scheme of ["postgresql", "postgres"]) {
      assert.deepEqual(parsePgUrl(`${scheme}://webui@db.internal:6543/openwebui`), {
        host: "db.internal",
        port: 6543,
        user: "webui",
        database: "openwebui",
      });
    }
  });

  it("decodes a percent-encoded password containing @ and :", () => {
    const p = parsePgUrl(`postgresql://webui:${encodeURIComponent(CANARY)}@10.0.0.5/app`);
    assert.equal(p.password, CANARY);
    assert.equal(p.host, "10.0.0.5");
    assert.equal(p.port, 5432);
  });

  it("defaults the database to the user name, as libpq does", () => {
    assert.equal(parsePgUrl("postgresql://webui@localhost").database, "webui");
  });

  it("accepts IPv6 hosts in brackets and socket directories in ?host=", () => {
    const v6 = parsePgUrl("postgresql://u@[::1]:5433/d");
    assert.equal(v6.host, "::1");
    assert.equal(v6.port, 5433);
    const sock = parsePgUrl("postgresql://u@/d?host=%2Fvar%2Frun%2Fpostgresql");
    assert.equal(sock.host, "/var/run/postgresql");
  });

  it("keeps SSL settings and connect_timeout", () => {
    const p = parsePgUrl("postgresql://u@h/d?sslmode=verify-full&sslrootcert=%2Fetc%2Fca.pem&connect_timeout=7");
    assert.equal(p.sslmode, "verify-full");
    assert.equal(p.sslrootcert, "/etc/ca.pem");
    assert.equal(p.connectTimeoutSeconds, 7);
  });

  it("refuses bad URLs without echoing the password", () => {
    configInvalid(() => parsePgUrl(`mysql://u:${encodeURIComponent(CANARY)}@h/d`), CANARY);
    configInvalid(() => parsePgUrl(`postgresql://u:${CANARY}@h/d`), "9f3k"); // unencoded @ in the password
    configInvalid(() => parsePgUrl(`postgresql://:${encodeURIComponent(CANARY)}@h/d`), "9f3k"); // no user
    configInvalid(() => parsePgUrl("postgresql://u@h:99999/d"));
    configInvalid(() => parsePgUrl("postgresql://u@h/d?sslmode=sometimes"));
    configInvalid(() => parsePgUrl("postgresql://u@h/d?options=-c%20x%3Dy"));
    configInvalid(() => parsePgUrl("postgresql://u@h1,h2/d"));
    configInvalid(() => parsePgUrl("postgresql://u%ZZ@h/d"));
  });
});

describe("libpqEnv", () => {
  it("gives PGHOST/PGPORT/PGUSER/PGDATABASE and never the password or a URL", () => {
    const parts = parsePgUrl(`postgresql://webui:${encodeURIComponent(CANARY)}@db:5432/app?sslmode=require`);
    const env = libpqEnv(parts);
    assert.deepEqual(env, { PGHOST: "db", PGPORT: "5432", PGUSER: "webui", PGDATABASE: "app", PGSSLMODE: "require" });
    for (const v of Object.values(env)) {
      assert.ok(!v.includes("9f3k") && !v.includes("://"), v);
    }
    assert.equal(libpqEnv(withDatabase(parts, "postgres")).PGDATABASE, "postgres");
  });
});

describe("formatPgUrl", () => {
  const parts = withPassword(parsePgUrl("postgres://webui@db.example:5432/app"), CANARY);

  it("includes the URL-encoded password only when asked, and round-trips", () => {
    const full = formatPgUrl(parts, { withPassword: true });
    assert.equal(full, `postgresql://webui:${encodeURIComponent(CANARY)}@db.example:5432/app`);
    assert.equal(parsePgUrl(full).password, CANARY);
    assert.deepEqual(parsePgUrl(full), parts);
    const shown = displayPgUrl(parts);
    assert.equal(shown, "postgresql://webui@db.example:5432/app");
    assert.ok(!shown.includes("9f3k"));
  });

  it("round-trips socket hosts and IPv6", () => {
    for (const url of ["postgresql://u@/d?host=%2Ftmp&port=5433", "postgresql://u@[fe80::1]:5432/d"]) {
      const p = parsePgUrl(url);
      assert.deepEqual(parsePgUrl(formatPgUrl(p, { withPassword: true })), p);
    }
  });

  it("withPassword(undefined) removes the password", () => {
    assert.equal(withPassword(parts, undefined).password, undefined);
  });
});

describe("pgpass", () => {
  it("escapes backslash and colon as the .pgpass format requires", () => {
    assert.equal(escapePgpassField("a:b\\c"), "a\\:b\\\\c");
    assert.equal(pgpassLine("webui", CANARY), "*:*:*:webui:canary-Pw-9f3k@\\:x\n");
  });

  it("refuses a password with a line break without echoing it", () => {
    configInvalid(() => pgpassLine("u", "secret-line\nbreak"), "secret-line");
  });

  it("writes a 0600 file in a private 0700 directory for one run and deletes both", async () => {
    const base = await mkdtemp(join(tmpdir(), "pgpass-test-"));
    try {
      let seen: string | undefined;
      const result = await withPgpassFile(
        "webui",
        CANARY,
        async (env) => {
          seen = env.PGPASSFILE;
          assert.ok(seen !== undefined && seen.startsWith(base));
          assert.equal(statSync(seen).mode & 0o777, 0o600);
          assert.equal(statSync(dirname(seen)).mode & 0o777, 0o700);
          assert.equal(readFileSync(seen, "utf8"), "*:*:*:webui:canary-Pw-9f3k@\\:x\n");
          assert.deepEqual(Object.keys(env), ["PGPASSFILE"]);
          return 42;
        },
        base,
      );
      assert.equal(result, 42);
      assert.ok(seen !== undefined && !existsSync(seen) && !existsSync(dirname(seen)));

      // Deleted also when the run throws.
      await assert.rejects(
        withPgpassFile(
          "webui",
          CANARY,
          async (env) => {
            seen = env.PGPASSFILE;
            throw new Error("child failed");
          },
          base,
        ),
        /child failed/,
      );
      assert.ok(!existsSync(dirname(seen)));
    } finally {
      await rm(base, { recursive: true, force: true });
    }
  });

  it("passes an empty env when there is no password", async () => {
    const env = await withPgpassFile("webui", undefined, async (e) => e);
    assert.deepEqual(env, {});
  });
});
