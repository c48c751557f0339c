import { test } from "node:test";
import assert from "node:assert/strict";
import { existsSync } from "node:fs";
import { runDemo } from "./demo.js";
import { CANARY_SECRET } from "../helpers/fleet.js";

test("npm run demo: the whole tour runs, every expectation holds, and it cleans up", async () => {
  let out = "";
  let err = "";
  const code = await runDemo({ argv: [], stdout: { write: (s: string) => (out += s) }, stderr: { write: (s: string) => (err += s) }, env: process.env });
  assert.equal(code, 0, `${err}\n${out.slice(-4000)}`);
  for (const section of [
    "1. The fleet",
    "2. What a migration would do",
    "3. Maintenance rollout in waves",
    "4. A migration that fails half-way",
    "5. Blue-green",
    "6. The audit log",
  ]) {
    assert.ok(out.includes(section), section);
  }
  assert.match(out, /chat-lab is exactly as before/);
  assert.match(out, /Running upgrade/, "Alembic lines are streamed live");
  assert.match(out, /audit log intact/);
  assert.match(out, /flotilla demo --keep/);
  assert.equal(out.includes(CANARY_SECRET), false);
  const dir = /files in (\S+)\)/.exec(out)?.[1];
  assert.ok(dir);
  assert.equal(existsSync(dir), false, "the demo removed its files");
});
