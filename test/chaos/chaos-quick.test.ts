// The short form of `npm run chaos` in the suite: every fault class injected
// against a real fleet; every figure that must be 0 is 0.
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { join } from "node:path";
import { ROOT } from "../helpers/fleet.js";

interface ChaosRow {
  cls: string;
  injected: number;
  survived: number;
  lost: number;
  twice: number;
  unaudited: number;
  stuck: number;
  notes: string[];
}

test("chaos (short form): faults of every class are survived with nothing lost, run twice, unaudited or stuck", { timeout: 1_200_000 }, () => {
  const r = spawnSync(process.execPath, ["--import", "tsx", join(ROOT, "scripts/chaos.ts"), "--quick", "--json"], {
    cwd: ROOT,
    encoding: "utf8",
    timeout: 1_150_000,
  });
  assert.ok(r.stdout.trim().startsWith("{"), `chaos printed no JSON (exit ${r.status}): ${r.stderr.slice(-3000)}`);
  const doc = JSON.parse(r.stdout) as { rows: ChaosRow[] };
  const classes = doc.rows.map((x) => x.cls);
  for (const want of [
    "agent kill",
    "controller kill",
    "network cut",
    "disk full",
    "corrupted backup",
    "same request",
    "app refuses",
    "PG session",
    "tampered audit",
  ]) {
    assert.ok(
      classes.some((c) => c.includes(want)),
      `class ${want} ran`,
    );
  }
  for (const x of doc.rows) {
    // Only the tmpfs class may not run (mounting needs root), and then it says so.
    if (x.injected === 0 && x.notes.some((n) => n.includes("tmpfs not available"))) continue;
    assert.ok(x.injected > 0, `${x.cls}: faults injected`);
    assert.deepEqual(
      { cls: x.cls, lost: x.lost, twice: x.twice, unaudited: x.unaudited, stuck: x.stuck, survived: x.survived },
      { cls: x.cls, lost: 0, twice: 0, unaudited: 0, stuck: 0, survived: x.injected },
      x.notes.join("\n"),
    );
  }
  assert.equal(r.status, 0);
});
