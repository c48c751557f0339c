#!/usr/bin/env node
// Runs the Flotilla test suite.
//
//   node scripts/run-tests.mjs                 typecheck, biome lint, generated-code drift check, all tests
//   node scripts/run-tests.mjs a.test.ts ...   only the given test files (no typecheck/lint/drift)
//
// It makes sure dependencies (including the PostgreSQL server binaries) are installed, finds a
// PostgreSQL server (FLOTILLA_TEST_PG_URL or the default) or starts a throwaway cluster, and
// exports FLOTILLA_TEST_PG_URL to the tests. FLOTILLA_TEST_CONCURRENCY overrides the test
// runner's concurrency (default 1).
import { spawn, spawnSync } from 'node:child_process';
import { cpSync, existsSync, mkdtempSync, readFileSync, readdirSync, rmSync, statSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const say = (msg) => process.stderr.write(`flotilla: ${msg}\n`);

const BIN = path.join(ROOT, 'node_modules', '.bin');
const childEnv = () => ({ ...process.env, PATH: `${BIN}${path.delimiter}${process.env.PATH ?? ''}` });

function runSync(cmd, args) {
  const r = spawnSync(cmd, args, { cwd: ROOT, stdio: 'inherit', env: childEnv() });
  if (r.error) say(`could not run ${cmd}: ${r.error.message}`);
  return r.status ?? 1;
}

/** Local bin if present, otherwise through npx. */
function tool(name, args) {
  return existsSync(path.join(BIN, name)) ? [path.join(BIN, name), args] : ['npx', ['--no-install', name, ...args]];
}

// ---------------------------------------------------------------------------------------------

function typecheck() {
  say('typecheck: tsc --noEmit -p tsconfig.json');
  const [cmd, args] = tool('tsc', ['--noEmit', '-p', 'tsconfig.json']);
  if (runSync(cmd, args) !== 0) {
    say('typecheck failed');
    return false;
  }
  return true;
}

function listFiles(dir, base = dir) {
  const out = [];
  for (const ent of readdirSync(dir, { withFileTypes: true })) {
    const p = path.join(dir, ent.name);
    if (ent.isDirectory()) out.push(...listFiles(p, base));
    else if (ent.isFile()) out.push(path.relative(base, p));
  }
  return out.sort();
}

/** Regenerates the protobuf code and fails if it differs from what is checked in. */
/**
 * Biome's linter (biome.json): the recommended rules plus the import boundaries —
 * core/ free of I/O modules, database drivers, grpc-js and cron; agent, controller
 * and CLI never importing each other; and its formatter (npm run format rewrites).
 */
function lint() {
  say('lint: biome check (lint + format)');
  const [cmd, args] = tool('biome', ['check', '--max-diagnostics=50']);
  if (runSync(cmd, args) !== 0) {
    say('lint failed: fix the errors above (biome.json says why each import is not allowed; npm run format fixes formatting)');
    return false;
  }
  return true;
}

function generatedCodeDrift() {
  const gen = path.join(ROOT, 'services', 'common', 'gen');
  if (!existsSync(path.join(ROOT, 'buf.gen.yaml')) || !existsSync(gen)) {
    say('drift check: no buf.gen.yaml or services/common/gen; skipped');
    return true;
  }
  say('drift check: buf generate vs services/common/gen');
  const backupRoot = mkdtempSync(path.join(os.tmpdir(), 'flotilla-gen-'));
  const backup = path.join(backupRoot, 'gen');
  cpSync(gen, backup, { recursive: true, preserveTimestamps: true });
  let ok = false;
  try {
    // Generate into an empty directory so stale files are noticed too.
    rmSync(gen, { recursive: true, force: true });
    const [cmd, args] = tool('buf', ['generate']);
    if (runSync(cmd, args) !== 0) {
      say('drift check: buf generate failed');
      return false;
    }
    const fresh = existsSync(gen) ? listFiles(gen) : [];
    const committed = listFiles(backup);
    const differ = [];
    for (const f of new Set([...fresh, ...committed])) {
      if (!fresh.includes(f)) differ.push(`  ${f}: not generated any more (stale)`);
      else if (!committed.includes(f)) differ.push(`  ${f}: generated but missing`);
      else if (!readFileSync(path.join(gen, f)).equals(readFileSync(path.join(backup, f)))) differ.push(`  ${f}: differs`);
    }
    if (differ.length) {
      say('generated code drift: services/common/gen does not match `buf generate` output from proto/:');
      process.stderr.write(`${differ.sort().join('\n')}\n`);
      say('run `npm run generate` and commit the result');
      return false;
    }
    ok = true;
    return true;
  } finally {
    // Restore the originals exactly (content and timestamps), whatever happened.
    rmSync(gen, { recursive: true, force: true });
    cpSync(backup, gen, { recursive: true, preserveTimestamps: true });
    rmSync(backupRoot, { recursive: true, force: true });
    if (ok) say('drift check: ok');
  }
}

function findTestFiles() {
  const files = [];
  const walk = (dir) => {
    let entries;
    try {
      entries = readdirSync(dir, { withFileTypes: true });
    } catch {
      return;
    }
    for (const ent of entries) {
      if (ent.name === 'node_modules' || ent.name.startsWith('.')) continue;
      const p = path.join(dir, ent.name);
      if (ent.isDirectory()) walk(p);
      else if (ent.isFile() && ent.name.endsWith('.test.ts')) files.push(path.relative(ROOT, p));
    }
  };
  walk(path.join(ROOT, 'test'));
  walk(path.join(ROOT, 'services'));
  return files.sort();
}

let currentChild = null;

function runTests(files, env) {
  const concurrency = process.env.FLOTILLA_TEST_CONCURRENCY || '1';
  if (!/^[1-9]\d*$/.test(concurrency)) {
    say(`FLOTILLA_TEST_CONCURRENCY must be a positive integer, got ${JSON.stringify(concurrency)}`);
    return Promise.resolve(2);
  }
  const args = ['--import', 'tsx', '--test', `--test-concurrency=${concurrency}`];
  if (process.stdout.isTTY) args.push('--test-reporter=spec');
  args.push(...files);
  say(`running ${files.length} test file(s) (concurrency ${concurrency})`);
  return new Promise((resolve) => {
    const child = spawn(process.execPath, args, { cwd: ROOT, stdio: 'inherit', env });
    currentChild = child;
    child.on('error', (err) => {
      say(`could not start the test runner: ${err.message}`);
      resolve(1);
    });
    child.on('exit', (code, signal) => resolve(code ?? (signal ? 1 : 0)));
  });
}

// ---------------------------------------------------------------------------------------------

async function main() {
  const given = process.argv.slice(2);
  for (const f of given) {
    if (!existsSync(path.resolve(f)) || !statSync(path.resolve(f)).isFile()) {
      say(`no such test file: ${f}`);
      return 2;
    }
  }

  if (runSync(process.execPath, [path.join(ROOT, 'scripts', 'ensure-deps.mjs'), '--need-pg-server', '--need-browser', '--quiet']) !== 0) return 1;

  let files;
  if (given.length) {
    files = given.map((f) => path.relative(ROOT, path.resolve(f)));
  } else {
    if (!typecheck()) return 1;
    if (!lint()) return 1;
    if (!generatedCodeDrift()) return 1;
    // The end-to-end tests start the bins, which run the compiled dist/ as production does.
    say('build: npm run build (dist/, used by bin/ when newer than the sources)');
    if (runSync('npm', ['run', '--silent', 'build']) !== 0) {
      say('build failed');
      return 1;
    }
    files = findTestFiles();
    if (files.length === 0) {
      say('no test files found under test/ or services/');
      return 1;
    }
  }

  // Ctrl-C reaches the test runner and the throwaway cluster too (same process group); note it
  // so the cluster is still stopped and its directory removed. SIGTERM is forwarded.
  let interrupted = false;
  const onSignal = (sig) => {
    interrupted = true;
    if (sig === 'SIGTERM' && currentChild) currentChild.kill('SIGTERM');
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);

  const { findOrStartPostgres } = await import('./pg-cluster.mjs');
  let pg;
  try {
    pg = await findOrStartPostgres();
  } catch (err) {
    say(`cannot get a PostgreSQL server for the tests: ${err instanceof Error ? err.message : String(err)}`);
    return 1;
  }
  try {
    if (interrupted) return 130;
    process.env.FLOTILLA_TEST_PG_URL = pg.url;
    const code = await runTests(files, { ...childEnv(), FLOTILLA_TEST_PG_URL: pg.url });
    return interrupted && code === 0 ? 130 : code;
  } finally {
    await pg.stop();
  }
}

process.exitCode = await main();
