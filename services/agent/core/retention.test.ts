import { test } from "node:test";
import assert from "node:assert/strict";
import { backupsToDelete, type RetentionBackup } from "./retention.js";

const NOW = Date.parse("2026-11-26T12:00:00Z");
const daysAgo = (d: number): string => new Date(NOW - d * 86_400_000).toISOString();
const b = (id: string, age: number, verified = true): RetentionBackup => ({ id, createdAt: daysAgo(age), verified });

test("keep: the newest N stay, the older ones go, oldest last", () => {
  const all = [b("a", 5), b("b", 4), b("c", 3), b("d", 2), b("e", 1)];
  assert.deepEqual(backupsToDelete(all, { keep: 2, nowMs: NOW, protect: new Set() }), ["c", "b", "a"]);
});

test("keepDays keeps every backup younger than the limit on top of keep", () => {
  const all = [b("a", 20), b("b", 10), b("c", 3), b("d", 2), b("e", 1)];
  assert.deepEqual(backupsToDelete(all, { keep: 1, keepDays: 7, nowMs: NOW, protect: new Set() }), ["b", "a"]);
});

test("the newest verified backup is never deleted, even when the newer ones are unverified", () => {
  const all = [b("old-verified", 30), b("x", 2, false), b("y", 1, false)];
  assert.deepEqual(backupsToDelete(all, { keep: 1, nowMs: NOW, protect: new Set() }), ["x"]);
});

test("protected backups (an unfinished rollout, an interrupted operation) stay", () => {
  const all = [b("a", 5), b("b", 4), b("c", 1)];
  assert.deepEqual(backupsToDelete(all, { keep: 1, nowMs: NOW, protect: new Set(["a"]) }), ["b"]);
});
