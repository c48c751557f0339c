#!/usr/bin/env node
// Installs what Flotilla needs when it is missing: npm dependencies (when node_modules is
// missing or stale) and the system tools it drives (alembic + SQLAlchemy + psycopg2, sqlite3,
// the PostgreSQL client, and with --need-pg-server the PostgreSQL server binaries).
// Plain JavaScript with no dependencies: it runs before node_modules exists.
//
// Usage: node scripts/ensure-deps.mjs [--need-pg-server] [--need-browser] [--need-pgloader] [--quiet]
// (--need-pgloader: the move benchmark's baseline, `npm run bench` only.)
import { spawnSync } from 'node:child_process';
import { existsSync, readFileSync, readdirSync, accessSync, constants } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');

const say = (msg) => process.stderr.write(`flotilla: ${msg}\n`);

function run(cmd, args, opts = {}) {
  const r = spawnSync(cmd, args, { stdio: 'inherit', cwd: ROOT, ...opts });
  if (r.error) return { ok: false, status: null, error: r.error };
  return { ok: r.status === 0, status: r.status };
}

function quiet(cmd, args, opts = {}) {
  const r = spawnSync(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'], cwd: ROOT, encoding: 'utf8', timeout: 60_000, ...opts });
  return { ok: !r.error && r.status === 0, stdout: r.stdout ?? '', stderr: r.stderr ?? '' };
}

/** Full path of an executable on PATH, or null. */
export function which(name) {
  for (const dir of (process.env.PATH ?? '').split(path.delimiter)) {
    if (!dir) continue;
    const p = path.join(dir, name);
    try {
      accessSync(p, constants.X_OK);
      return p;
    } catch {
      /* keep looking */
    }
  }
  return null;
}

function readJson(p) {
  try {
    return JSON.parse(readFileSync(p, 'utf8'));
  } catch {
    return null;
  }
}

// ---------------------------------------------------------------------------------------------
// npm dependencies

/** Why node_modules needs (re)installing, or null when it is up to date. */
function nodeModulesStaleReason() {
  const nm = path.join(ROOT, 'node_modules');
  if (!existsSync(nm)) return 'node_modules is missing';
  const pkg = readJson(path.join(ROOT, 'package.json')) ?? {};
  for (const name of Object.keys({ ...pkg.dependencies, ...pkg.devDependencies })) {
    if (!existsSync(path.join(nm, name, 'package.json'))) return `dependency ${name} is not installed`;
  }
  const lock = readJson(path.join(ROOT, 'package-lock.json'));
  if (!lock) return null; // no lockfile: every direct dependency is present, good enough
  const hidden = readJson(path.join(nm, '.package-lock.json'));
  if (!hidden) return 'node_modules/.package-lock.json is missing';
  // Compare contents rather than timestamps: `npm install` may rewrite package-lock.json after
  // node_modules/.package-lock.json, and a checkout resets mtimes.
  const want = lock.packages ?? {};
  const have = hidden.packages ?? {};
  for (const [key, entry] of Object.entries(want)) {
    if (key === '' || !key.startsWith('node_modules/')) continue;
    if (entry.optional || entry.link) continue; // platform-specific optional packages
    const got = have[key];
    if (!got) return `${key.slice('node_modules/'.length)} is not installed`;
    if (entry.version && got.version !== entry.version) {
      return `${key.slice('node_modules/'.length)} is ${got.version}, package-lock.json wants ${entry.version}`;
    }
  }
  return null;
}

function betterSqliteLoads() {
  return quiet(process.execPath, ['-e', "require('better-sqlite3')(':memory:').close()"]).ok;
}

function ensureNodeModules() {
  const reason = nodeModulesStaleReason();
  if (reason) {
    const hasLock = existsSync(path.join(ROOT, 'package-lock.json'));
    const args = hasLock ? ['ci', '--no-audit', '--no-fund', '--loglevel=notice'] : ['install', '--no-audit', '--no-fund', '--loglevel=notice'];
    say(`${reason}; running npm ${args[0]} ...`);
    const r = run('npm', args);
    if (!r.ok) {
      say(`npm ${args[0]} failed${r.error ? ` (${r.error.message})` : ''}.`);
      if (hasLock) say('if package.json changed without updating package-lock.json, run `npm install` once.');
      process.exit(1);
    }
  }
  if (!betterSqliteLoads()) {
    say('better-sqlite3 does not load (native module not built for this Node); running npm rebuild better-sqlite3 ...');
    const r = run('npm', ['rebuild', 'better-sqlite3']);
    if (!r.ok || !betterSqliteLoads()) {
      say('better-sqlite3 still does not load. It needs a prebuilt binary for your Node version or a C++');
      say('toolchain to build one: `sudo apt-get install -y build-essential python3` then `npm rebuild better-sqlite3`.');
      process.exit(1);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// system tools

/** The python interpreter alembic runs under (from its shebang), falling back to /usr/bin/python3. */
function alembicPython(alembicPath) {
  try {
    const first = readFileSync(alembicPath, 'utf8').split('\n', 1)[0] ?? '';
    if (first.startsWith('#!')) {
      const parts = first.slice(2).trim().split(/\s+/);
      if (parts[0] && path.basename(parts[0]) === 'env' && parts[1]) return which(parts[1]) ?? parts[1];
      if (parts[0] && /python/.test(path.basename(parts[0]))) return parts[0];
    }
  } catch {
    /* not readable: fall through */
  }
  return existsSync('/usr/bin/python3') ? '/usr/bin/python3' : which('python3') ?? 'python3';
}

/** PostgreSQL server bin dirs (newest first) holding initdb, postgres and pg_ctl. */
export function pgServerBinDirs() {
  const base = '/usr/lib/postgresql';
  let versions = [];
  try {
    versions = readdirSync(base);
  } catch {
    /* none */
  }
  const dirs = versions
    .sort((a, b) => Number.parseFloat(b) - Number.parseFloat(a))
    .map((v) => path.join(base, v, 'bin'))
    .filter((d) => ['initdb', 'postgres', 'pg_ctl'].every((b) => existsSync(path.join(d, b))));
  const onPath = which('initdb');
  if (onPath && existsSync(path.join(path.dirname(onPath), 'postgres'))) dirs.push(path.dirname(onPath));
  return dirs;
}

/** Missing system tools as [{ what, pkgs }]. */
function missingTools(needPgServer, needBrowser, needPgloader = false) {
  const missing = [];
  const alembic = which('alembic');
  if (!alembic) {
    missing.push({ what: 'alembic', pkgs: ['alembic', 'python3-sqlalchemy', 'python3-psycopg2'] });
  } else {
    const py = alembicPython(alembic);
    const r = quiet(py, ['-c', 'import psycopg2, sqlalchemy, alembic']);
    if (!r.ok) {
      const detail = (r.stderr.trim().split('\n').pop() ?? '').trim();
      missing.push({ what: `python modules for alembic (${py}${detail ? `: ${detail}` : ''})`, pkgs: ['alembic', 'python3-sqlalchemy', 'python3-psycopg2'] });
    }
  }
  if (!which('sqlite3')) missing.push({ what: 'sqlite3', pkgs: ['sqlite3'] });
  const pgClient = ['psql', 'pg_dump', 'pg_restore'].filter((b) => !which(b));
  if (pgClient.length) missing.push({ what: pgClient.join(', '), pkgs: ['postgresql-client'] });
  // The web page's browser tests drive Debian's Chromium through playwright-core (never a downloaded browser).
  if (needBrowser && !which('chromium')) missing.push({ what: 'chromium (for the web page tests)', pkgs: ['chromium'] });
  // The move benchmark compares `flotilla move` with pgloader on the same database.
  if (needPgloader && !which('pgloader')) missing.push({ what: 'pgloader (baseline of the move benchmark)', pkgs: ['pgloader'] });
  if (needPgServer && pgServerBinDirs().length === 0) {
    missing.push({ what: 'PostgreSQL server (initdb, postgres)', pkgs: ['postgresql'] });
  }
  return missing;
}

function ensureSystemTools(needPgServer, needBrowser, needPgloader = false) {
  let missing = missingTools(needPgServer, needBrowser, needPgloader);
  if (missing.length === 0) return;
  const pkgs = [...new Set(missing.flatMap((m) => m.pkgs))];
  for (const m of missing) say(`missing: ${m.what}`);
  const isRoot = typeof process.getuid === 'function' && process.getuid() === 0;
  const apt = which('apt-get');
  if (!isRoot || !apt) {
    say(isRoot ? 'apt-get is not available; install the equivalents of these Debian packages:' : 'please install them, then run this again:');
    process.stderr.write(`\n    sudo apt-get install -y ${pkgs.join(' ')}\n\n`);
    process.exit(1);
  }
  const env = { ...process.env, DEBIAN_FRONTEND: 'noninteractive' };
  say('running apt-get update ...');
  if (!run(apt, ['update'], { env }).ok) {
    say('apt-get update failed.');
    process.exit(1);
  }
  say(`installing ${pkgs.join(' ')} ...`);
  if (!run(apt, ['install', '-y', ...pkgs], { env }).ok) {
    say(`apt-get install failed; try: apt-get install -y ${pkgs.join(' ')}`);
    process.exit(1);
  }
  missing = missingTools(needPgServer, needBrowser);
  if (missing.length) {
    for (const m of missing) say(`still missing after install: ${m.what}`);
    process.exit(1);
  }
  say('system tools installed');
}

// ---------------------------------------------------------------------------------------------

export function ensureDeps({ needPgServer = false, needBrowser = false, needPgloader = false, quietOk = false } = {}) {
  ensureNodeModules();
  ensureSystemTools(needPgServer, needBrowser, needPgloader);
  if (!quietOk) say('dependencies ok');
}

if (process.argv[1] && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  const args = process.argv.slice(2);
  const unknown = args.filter((a) => a !== '--need-pg-server' && a !== '--need-browser' && a !== '--need-pgloader' && a !== '--quiet');
  if (unknown.length) {
    say(`unknown argument(s): ${unknown.join(' ')} (usage: ensure-deps.mjs [--need-pg-server] [--need-browser] [--need-pgloader] [--quiet])`);
    process.exit(2);
  }
  ensureDeps({ needPgServer: args.includes('--need-pg-server'), needBrowser: args.includes('--need-browser'), needPgloader: args.includes('--need-pgloader'), quietOk: args.includes('--quiet') });
}
