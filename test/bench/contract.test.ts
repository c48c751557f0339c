// The benchmark contract: every figure id is produced by a module, `--json` prints nothing but
// the array with the agreed keys, and the verdicts follow each goal's direction. No timing here.
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { readFileSync, readdirSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { test } from "node:test";
import { fileURLToPath } from "node:url";
import { CONTRACT, collect, verdict } from "../../bench/contract.js";
import type { Figure } from "../../bench/figure.js";

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), "../..");
const BENCH = join(ROOT, "bench");
const KEYS = ["baseline", "better", "goal", "id", "name", "ratio", "unit", "value"];

const figure = (id: string, ratio: number | null): Figure =>
  ratio === null
    ? { id, name: `figure ${id}`, ratio, value: null, baseline: null, unit: "ms", reason: "not built" }
    : { id, name: `figure ${id}`, ratio, value: ratio * 10, baseline: 10, unit: "ms" };

test("collect keeps the contract's order and keys, drops details, lists what is missing", () => {
  const ids = CONTRACT.map((c) => c.id).filter((id) => id !== "P4");
  const { contract, missing } = collect([figure("", 3), ...ids.reverse().map((id) => figure(id, id === "P11" ? null : 0.5))]);
  assert.deepEqual(missing, ["P4"]);
  assert.deepEqual(
    contract.map((c) => c.id),
    CONTRACT.map((c) => c.id).filter((id) => id !== "P4"),
  );
  for (const c of contract)
    assert.deepEqual(
      Object.keys(c)
        .filter((k) => k !== "reason")
        .sort(),
      KEYS,
    );
  assert.equal(contract.find((c) => c.id === "P11")?.reason, "not built");
  assert.equal(contract.find((c) => c.id === "P8s")?.better, "higher");
});

test("verdicts follow the direction of each goal", () => {
  assert.equal(verdict({ ratio: 1.1, goal: 1.15, better: "lower" }), "PASS");
  assert.equal(verdict({ ratio: 1.2, goal: 1.15, better: "lower" }), "MISS");
  assert.equal(verdict({ ratio: 0.95, goal: 0.9, better: "higher" }), "PASS");
  assert.equal(verdict({ ratio: 0.5, goal: 0.9, better: "higher" }), "MISS");
  assert.equal(verdict({ ratio: null, goal: 0.9, better: "higher" }), "n/a");
});

test("every contract id is reported by exactly one bench module", () => {
  const sources = readdirSync(BENCH)
    .filter((f) => f.endsWith(".bench.ts"))
    .map((f) => ({ f, text: readFileSync(join(BENCH, f), "utf8") }));
  for (const { id } of CONTRACT) {
    const owners = sources.filter((s) => s.text.includes(`"${id}"`)).map((s) => s.f);
    assert.ok(owners.length >= 1, `no bench module reports ${id}`);
    // pending.bench.ts names a figure only until its own module exists.
    const real = owners.filter((o) => o !== "pending.bench.ts");
    assert.ok(real.length <= 1, `${id} is reported by ${real.join(", ")}`);
  }
});

test("--json prints only a JSON array of contract figures on stdout; bad options exit 2", () => {
  const r = spawnSync(process.execPath, ["--import", "tsx", join(BENCH, "run.ts"), "--json", "pending"], { cwd: ROOT, encoding: "utf8", timeout: 120_000 });
  assert.equal(r.status, 0, r.stderr);
  const doc = JSON.parse(r.stdout) as Record<string, unknown>[];
  assert.ok(Array.isArray(doc));
  for (const f of doc) {
    assert.deepEqual(
      Object.keys(f)
        .filter((k) => k !== "reason")
        .sort(),
      KEYS,
    );
    if (f.ratio === null) assert.equal(typeof f.reason, "string");
  }
  const bad = spawnSync(process.execPath, ["--import", "tsx", join(BENCH, "run.ts"), "--fast"], { cwd: ROOT, encoding: "utf8", timeout: 120_000 });
  assert.equal(bad.status, 2);
  assert.match(bad.stderr, /unknown option --fast/);
});
