import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { estimateMs, MigrationProgress } from "./migration-progress.js";

const P = "INFO  [alembic.runtime.migration] ";

describe("MigrationProgress", () => {
  it("reports revision n/N with elapsed time, and an ETA only when every remaining revision has a known duration", () => {
    const pending = ["d4c3b2a1e5f6", "e5f4a3b2c1d0", "f6a5b4c3d2e1"];
    const known = new Map([
      ["d4c3b2a1e5f6", 1000],
      ["e5f4a3b2c1d0", 200],
      ["f6a5b4c3d2e1", 300],
    ]);
    const p = new MigrationProgress(pending, "upgrade", known, 10_000);
    assert.equal(p.onLine(`${P}Context impl PostgresqlImpl.`, 10_100), null);
    assert.deepEqual(p.onLine(`${P}Running upgrade c3d2e1f00d42 -> d4c3b2a1e5f6, Add chat pinned`, 10_500), {
      index: 1,
      count: 3,
      revision: "d4c3b2a1e5f6",
      message: "Add chat pinned",
      elapsedMs: 500,
      etaMs: 1500,
    });
    // 400 ms into a 1000 ms revision: 600 + 200 + 300 left.
    assert.equal(p.now(10_900)?.etaMs, 1100);
    assert.equal(p.onLine("INFO  [fixapp.migrate] chat meta backfill: 5000/100000 rows", 11_000), null);
    const third = p.onLine(`${P}Running upgrade e5f4a3b2c1d0 -> f6a5b4c3d2e1, Make user email required`, 12_000);
    assert.equal(third?.index, 3);
    assert.equal(third?.etaMs, 300);

    const unknown = new MigrationProgress(pending, "upgrade", new Map([["d4c3b2a1e5f6", 1000]]), 0);
    assert.equal(unknown.onLine(`${P}Running upgrade c3d2e1f00d42 -> d4c3b2a1e5f6, x`, 5)?.etaMs, 0);
  });

  it("follows downgrades by the revision they remove", () => {
    const p = new MigrationProgress(["1b8c9d0e1f2a", "0a7b8c9d0e1f"], "downgrade", new Map(), 0);
    assert.equal(p.onLine(`${P}Running upgrade 0a7b8c9d0e1f -> 1b8c9d0e1f2a, x`, 1), null);
    assert.deepEqual(p.onLine(`${P}Running downgrade 1b8c9d0e1f2a -> 0a7b8c9d0e1f, Add user settings`, 2), {
      index: 1,
      count: 2,
      revision: "1b8c9d0e1f2a",
      message: "Add user settings",
      elapsedMs: 2,
      etaMs: 0,
    });
  });

  it("estimateMs sums known durations and says undefined when one is missing", () => {
    assert.equal(
      estimateMs(
        ["a", "b"],
        new Map([
          ["a", 5],
          ["b", 7],
        ]),
      ),
      12,
    );
    assert.equal(estimateMs(["a", "c"], new Map([["a", 5]])), undefined);
    assert.equal(estimateMs([], new Map()), 0);
  });
});
