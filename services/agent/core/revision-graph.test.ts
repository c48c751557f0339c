import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { FlotillaError } from "../../common/errors.js";
import { parseHistory, type HistoryRevision } from "./alembic-output.js";
import { RevisionGraph } from "./revision-graph.js";

// `alembic history` of test/fixtures/webui (alembic 1.8.1), recorded.
const LINEAR = `0a7b8c9d0e1f -> 1b8c9d0e1f2a (head), Add user settings and chat user/updated index
f6a5b4c3d2e1 -> 0a7b8c9d0e1f, Add chat archived_at and shared_chat table
e5f4a3b2c1d0 -> f6a5b4c3d2e1, Make user email required and unique
d4c3b2a1e5f6 -> e5f4a3b2c1d0, Add message indexes
c3d2e1f00d42 -> d4c3b2a1e5f6, Add chat pinned and meta, backfill tags from chat JSON
b2e1d0c0ffee -> c3d2e1f00d42, Add reply_to_id column to message
a1f0c0de0001 -> b2e1d0c0ffee, Add message and config tables
<base> -> a1f0c0de0001, init
`;
// `alembic -c alembic-branch.ini history`, recorded.
const BRANCH = `0a7b8c9d0e1f -> 1b8c9d0e1f2a (head), Add user settings and chat user/updated index
f6a5b4c3d2e1 -> 0a7b8c9d0e1f, Add chat archived_at and shared_chat table
e5f4a3b2c1d0 -> f6a5b4c3d2e1, Make user email required and unique
e5f4a3b2c1d0 -> 9c9c9c9c9c9c (head), Add side table (side branch)
d4c3b2a1e5f6 -> e5f4a3b2c1d0 (branchpoint), Add message indexes
c3d2e1f00d42 -> d4c3b2a1e5f6, Add chat pinned and meta, backfill tags from chat JSON
b2e1d0c0ffee -> c3d2e1f00d42, Add reply_to_id column to message
a1f0c0de0001 -> b2e1d0c0ffee, Add message and config tables
<base> -> a1f0c0de0001, init
`;
// The same after `alembic merge -m "merge heads" --rev-id 7d7d7d7d7d7d heads`, recorded.
const MERGED = `1b8c9d0e1f2a, 9c9c9c9c9c9c -> 7d7d7d7d7d7d (head) (mergepoint), merge heads
${BRANCH.replace("1b8c9d0e1f2a (head)", "1b8c9d0e1f2a").replace("9c9c9c9c9c9c (head)", "9c9c9c9c9c9c")}`;

const linear = RevisionGraph.fromHistory(parseHistory(LINEAR), { hash: "h1" });
const branch = RevisionGraph.fromHistory(parseHistory(BRANCH));
const merged = RevisionGraph.fromHistory(parseHistory(MERGED));

function code(fn: () => unknown): string {
  try {
    fn();
  } catch (e) {
    assert.ok(e instanceof FlotillaError, `expected a FlotillaError, got ${String(e)}`);
    return e.code;
  }
  assert.fail("expected a throw");
}

function assertParentsFirst(g: RevisionGraph, ids: readonly string[]): void {
  for (const [i, id] of ids.entries()) {
    for (const p of g.get(id)!.down) {
      const at = ids.indexOf(p);
      if (at >= 0) assert.ok(at < i, `${p} must come before ${id}`);
    }
  }
}

describe("RevisionGraph structure", () => {
  it("linear fixture: 8 revisions, one head, one base, no branches", () => {
    assert.equal(linear.size, 8);
    assert.deepEqual(linear.heads, ["1b8c9d0e1f2a"]);
    assert.deepEqual(linear.bases, ["a1f0c0de0001"]);
    assert.deepEqual(linear.branchpoints, []);
    assert.deepEqual(linear.mergepoints, []);
    assert.equal(linear.hash, "h1");
    assert.deepEqual(
      [...linear.revisions.keys()],
      ["a1f0c0de0001", "b2e1d0c0ffee", "c3d2e1f00d42", "d4c3b2a1e5f6", "e5f4a3b2c1d0", "f6a5b4c3d2e1", "0a7b8c9d0e1f", "1b8c9d0e1f2a"],
    );
    assert.deepEqual(linear.get("c3d2e1f00d42")!.up, ["d4c3b2a1e5f6"]);
    assert.equal(linear.get("a1f0c0de0001")!.message, "init");
  });

  it("branch fixture: two heads, branch point e5f4a3b2c1d0", () => {
    assert.deepEqual([...branch.heads].sort(), ["1b8c9d0e1f2a", "9c9c9c9c9c9c"]);
    assert.deepEqual(branch.branchpoints, ["e5f4a3b2c1d0"]);
    assert.deepEqual([...branch.get("e5f4a3b2c1d0")!.up].sort(), ["9c9c9c9c9c9c", "f6a5b4c3d2e1"]);
  });

  it("merged: one head that is a merge point", () => {
    assert.deepEqual(merged.heads, ["7d7d7d7d7d7d"]);
    assert.deepEqual(merged.mergepoints, ["7d7d7d7d7d7d"]);
    assert.deepEqual(merged.get("7d7d7d7d7d7d")!.down, ["1b8c9d0e1f2a", "9c9c9c9c9c9c"]);
    assertParentsFirst(merged, [...merged.revisions.keys()]);
  });

  it("computes heads from edges, not from the (head) markers", () => {
    const revs: HistoryRevision[] = parseHistory(LINEAR).map((r) => ({ ...r, isHead: false }));
    assert.deepEqual(RevisionGraph.fromHistory(revs).heads, ["1b8c9d0e1f2a"]);
  });

  it("rejects duplicate ids, missing parents and cycles", () => {
    const base = parseHistory(LINEAR);
    assert.equal(
      code(() => RevisionGraph.fromHistory([...base, base[0]!])),
      "CONFIG_INVALID",
    );
    assert.equal(
      code(() => RevisionGraph.fromHistory(base.slice(0, 7))),
      "CONFIG_INVALID",
    );
    const cyc = parseHistory("bbbbbbbbbbbb -> aaaaaaaaaaaa, a\naaaaaaaaaaaa -> bbbbbbbbbbbb, b\n");
    assert.equal(
      code(() => RevisionGraph.fromHistory(cyc)),
      "CONFIG_INVALID",
    );
  });
});

describe("RevisionGraph lookups", () => {
  it("reports ids the scripts do not know (database stamped by a newer build)", () => {
    assert.deepEqual(linear.unknown(["c3d2e1f00d42", "9f0c9cd09105"]), ["9f0c9cd09105"]);
    assert.deepEqual(linear.unknown([]), []);
    assert.equal(
      code(() => linear.pending(["9f0c9cd09105"], "head")),
      "UNKNOWN_REVISION",
    );
  });

  it("resolves unique prefixes of 4+ characters", () => {
    assert.equal(linear.resolve("c3d2e1f00d42"), "c3d2e1f00d42");
    assert.equal(linear.resolve("c3d2"), "c3d2e1f00d42");
    assert.equal(linear.resolve("c3d"), null);
    assert.equal(linear.resolve("ffff"), null);
    const g = RevisionGraph.fromHistory(parseHistory("ab12cd000000 -> ab12ef000000, b\n<base> -> ab12cd000000, a\n"));
    assert.equal(
      code(() => g.resolve("ab12")),
      "INVALID_ARGUMENT",
    );
    assert.equal(g.resolve("ab12e"), "ab12ef000000");
  });

  it("answers ancestry", () => {
    assert.equal(linear.isAncestor("a1f0c0de0001", "1b8c9d0e1f2a"), true);
    assert.equal(linear.isAncestor("1b8c9d0e1f2a", "a1f0c0de0001"), false);
    assert.equal(branch.isAncestor("9c9c9c9c9c9c", "1b8c9d0e1f2a"), false);
    assert.deepEqual([...branch.descendants("f6a5b4c3d2e1")].sort(), ["0a7b8c9d0e1f", "1b8c9d0e1f2a"]);
  });
});

describe("RevisionGraph.pending (upgrade plan)", () => {
  it("fresh database to head: every revision, parents first", () => {
    assert.deepEqual(linear.pending([], "head"), [...linear.revisions.keys()]);
  });

  it("from rev 3 to head and to an intermediate revision", () => {
    assert.deepEqual(linear.pending(["c3d2e1f00d42"], "head"), ["d4c3b2a1e5f6", "e5f4a3b2c1d0", "f6a5b4c3d2e1", "0a7b8c9d0e1f", "1b8c9d0e1f2a"]);
    assert.deepEqual(linear.pending(["c3d2e1f00d42"], "e5f4a3b2c1d0"), ["d4c3b2a1e5f6", "e5f4a3b2c1d0"]);
  });

  it("nothing at head, nothing for a target below current", () => {
    assert.deepEqual(linear.pending(["1b8c9d0e1f2a"], "head"), []);
    assert.deepEqual(linear.pending(["e5f4a3b2c1d0"], "c3d2e1f00d42"), []);
  });

  it("'head' with two heads is refused; 'heads' applies both branches", () => {
    assert.equal(
      code(() => branch.pending(["d4c3b2a1e5f6"], "head")),
      "MULTIPLE_HEADS",
    );
    const all = branch.pending(["d4c3b2a1e5f6"], "heads");
    assert.deepEqual([...all].sort(), ["0a7b8c9d0e1f", "1b8c9d0e1f2a", "9c9c9c9c9c9c", "e5f4a3b2c1d0", "f6a5b4c3d2e1"]);
    assertParentsFirst(branch, all);
    assert.deepEqual(branch.pending(["1b8c9d0e1f2a"], "heads"), ["9c9c9c9c9c9c"]);
    assert.deepEqual(branch.pending(["1b8c9d0e1f2a", "9c9c9c9c9c9c"], "heads"), []);
  });

  it("through a merge point", () => {
    assert.deepEqual(merged.pending(["1b8c9d0e1f2a", "9c9c9c9c9c9c"], "head"), ["7d7d7d7d7d7d"]);
    const p = merged.pending(["e5f4a3b2c1d0"], "head");
    assert.deepEqual([...p].sort(), ["0a7b8c9d0e1f", "1b8c9d0e1f2a", "7d7d7d7d7d7d", "9c9c9c9c9c9c", "f6a5b4c3d2e1"]);
    assert.equal(p.at(-1), "7d7d7d7d7d7d");
    assertParentsFirst(merged, p);
  });

  it("an unknown target is refused", () => {
    assert.equal(
      code(() => linear.pending([], "deadbeef0000")),
      "UNKNOWN_REVISION",
    );
  });
});

describe("RevisionGraph.downgradePath", () => {
  it("children first, down to (not including) the target", () => {
    assert.deepEqual(linear.downgradePath(["1b8c9d0e1f2a"], "c3d2e1f00d42"), ["1b8c9d0e1f2a", "0a7b8c9d0e1f", "f6a5b4c3d2e1", "e5f4a3b2c1d0", "d4c3b2a1e5f6"]);
    assert.deepEqual(linear.downgradePath(["c3d2e1f00d42"], "base"), ["c3d2e1f00d42", "b2e1d0c0ffee", "a1f0c0de0001"]);
    assert.deepEqual(linear.downgradePath(["c3d2e1f00d42"], "c3d2e1f00d42"), []);
  });

  it("with two applied heads: below the branch point undoes both, inside one branch only that one (as alembic does)", () => {
    const both = branch.downgradePath(["1b8c9d0e1f2a", "9c9c9c9c9c9c"], "d4c3b2a1e5f6");
    assert.deepEqual([...both].sort(), ["0a7b8c9d0e1f", "1b8c9d0e1f2a", "9c9c9c9c9c9c", "e5f4a3b2c1d0", "f6a5b4c3d2e1"]);
    assert.equal(both.at(-1), "e5f4a3b2c1d0");
    assert.deepEqual(branch.downgradePath(["1b8c9d0e1f2a", "9c9c9c9c9c9c"], "f6a5b4c3d2e1"), ["1b8c9d0e1f2a", "0a7b8c9d0e1f"]);
  });

  it("refuses a target that is not applied", () => {
    assert.equal(
      code(() => linear.downgradePath(["c3d2e1f00d42"], "1b8c9d0e1f2a")),
      "INVALID_ARGUMENT",
    );
    assert.equal(
      code(() => branch.downgradePath(["1b8c9d0e1f2a"], "9c9c9c9c9c9c")),
      "INVALID_ARGUMENT",
    );
    assert.equal(
      code(() => linear.downgradePath(["c3d2e1f00d42"], "nope0000")),
      "UNKNOWN_REVISION",
    );
  });
});
