#!/usr/bin/env node
// Finds a PostgreSQL server for the tests, or starts a throwaway one.
//
//   import { findOrStartPostgres } from './pg-cluster.mjs';
//   const pg = await findOrStartPostgres();   // { url, started, stop() }
//
// It tries FLOTILLA_TEST_PG_URL (default postgresql://postgres@127.0.0.1:5432/postgres) with
// `psql -Atc 'select 1'`. When nothing answers it runs initdb from the Debian PostgreSQL
// server binaries into a temporary directory (as the `postgres` user when running as root),
// with trust auth, listening on 127.0.0.1 on a free port. stop() shuts it down and removes the
// directory. It never gives up silently: failure to find or start a server throws.
//
// CLI: node scripts/pg-cluster.mjs   prints the URL and keeps a cluster running until Ctrl-C.
import { spawn, spawnSync } from 'node:child_process';
import { chownSync, mkdtempSync, openSync, closeSync, readFileSync, readdirSync, rmSync, existsSync, accessSync, constants } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

export const DEFAULT_TEST_PG_URL = 'postgresql://postgres@127.0.0.1:5432/postgres';

const say = (msg) => process.stderr.write(`flotilla: ${msg}\n`);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

function which(name) {
  for (const dir of (process.env.PATH ?? '').split(path.delimiter)) {
    if (!dir) continue;
    try {
      accessSync(path.join(dir, name), constants.X_OK);
      return path.join(dir, name);
    } catch {
      /* keep looking */
    }
  }
  return null;
}

/** Does a server answer `select 1` at url? */
export function probePostgres(url, timeoutSeconds = 3) {
  const r = spawnSync('psql', ['-w', '-X', url, '-Atc', 'select 1'], {
    env: { ...process.env, PGCONNECT_TIMEOUT: String(timeoutSeconds) },
    stdio: ['ignore', 'pipe', 'pipe'],
    encoding: 'utf8',
    timeout: (timeoutSeconds + 5) * 1000,
  });
  if (r.error) return { ok: false, error: r.error.message };
  return { ok: r.status === 0 && r.stdout.trim() === '1', error: (r.stderr ?? '').trim() };
}

function redact(url) {
  try {
    const u = new URL(url);
    if (u.password) u.password = '***';
    return u.toString();
  } catch {
    return url;
  }
}

function serverBinDir() {
  const base = '/usr/lib/postgresql';
  let versions = [];
  try {
    versions = readdirSync(base);
  } catch {
    /* none */
  }
  const candidates = versions
    .sort((a, b) => Number.parseFloat(b) - Number.parseFloat(a))
    .map((v) => path.join(base, v, 'bin'));
  const onPath = which('initdb');
  if (onPath) candidates.push(path.dirname(onPath));
  return candidates.find((d) => ['initdb', 'postgres', 'pg_ctl'].every((b) => existsSync(path.join(d, b)))) ?? null;
}

function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.unref();
    srv.on('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const addr = srv.address();
      srv.close(() => (addr && typeof addr === 'object' ? resolve(addr.port) : reject(new Error('no port'))));
    });
  });
}

function lookupUser(name) {
  const uid = spawnSync('id', ['-u', name], { encoding: 'utf8' });
  const gid = spawnSync('id', ['-g', name], { encoding: 'utf8' });
  if (uid.status !== 0 || gid.status !== 0) return null;
  return { name, uid: Number(uid.stdout.trim()), gid: Number(gid.stdout.trim()) };
}

/**
 * How to run a command as the unprivileged owner of the cluster. setpriv execs in place (so the
 * pid we hold is postgres itself); runuser is the fallback.
 */
function asUserPrefix(user) {
  if (!user) return [];
  if (which('setpriv')) return ['setpriv', `--reuid=${user.uid}`, `--regid=${user.gid}`, '--clear-groups', '--'];
  if (which('runuser')) return ['runuser', '-u', user.name, '--'];
  throw new Error('running as root but neither setpriv nor runuser is available to drop privileges for PostgreSQL');
}

function tail(file, lines = 30) {
  try {
    return readFileSync(file, 'utf8').trimEnd().split('\n').slice(-lines).join('\n');
  } catch {
    return '(no log)';
  }
}

/** Start a throwaway cluster. Resolves to { url, dir, stop() }. */
export async function startThrowawayCluster({ log = say } = {}) {
  const bin = serverBinDir();
  if (!bin) {
    throw new Error(
      'no PostgreSQL server answers and no server binaries were found under /usr/lib/postgresql/*/bin; ' +
        'install them with `sudo apt-get install -y postgresql` or set FLOTILLA_TEST_PG_URL',
    );
  }
  const isRoot = typeof process.getuid === 'function' && process.getuid() === 0;
  let user = null;
  if (isRoot) {
    user = lookupUser('postgres') ?? lookupUser('nobody');
    if (!user) throw new Error('running as root but there is no `postgres` (or `nobody`) user to run PostgreSQL as');
  }
  const prefix = asUserPrefix(user);
  // As root, use /tmp (world-traversable) rather than a TMPDIR that may live under /root.
  const base = isRoot ? '/tmp' : os.tmpdir();
  const dir = mkdtempSync(path.join(base, 'flotilla-pg-'));
  if (user) chownSync(dir, user.uid, user.gid);
  const data = path.join(dir, 'data');
  const logFile = path.join(dir, 'postgres.log');
  const runAs = (cmd, args, opts = {}) => {
    const argv = [...prefix, cmd, ...args];
    return spawnSync(argv[0], argv.slice(1), { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'], ...opts });
  };

  let child = null;
  let exited = null;
  const cleanupDir = () => rmSync(dir, { recursive: true, force: true });

  try {
    log(`no PostgreSQL server answers; starting a throwaway cluster (${bin}) in ${dir} ...`);
    const init = runAs(path.join(bin, 'initdb'), ['-D', data, '-U', 'postgres', '-A', 'trust', '-E', 'UTF8', '--locale=C', '--no-sync'], {
      timeout: 120_000,
    });
    if (init.error || init.status !== 0) {
      throw new Error(`initdb failed: ${init.error?.message ?? ''}\n${init.stdout ?? ''}${init.stderr ?? ''}`);
    }

    for (let attempt = 1; ; attempt++) {
      const port = await freePort();
      const fd = openSync(logFile, 'a');
      const argv = [
        ...prefix,
        path.join(bin, 'postgres'),
        '-D', data,
        '-h', '127.0.0.1',
        '-p', String(port),
        '-k', dir,
        '-c', 'fsync=off',
        '-c', 'synchronous_commit=off',
        '-c', 'full_page_writes=off',
        '-c', 'max_connections=200',
        '-c', 'logging_collector=off',
      ];
      exited = null;
      child = spawn(argv[0], argv.slice(1), { stdio: ['ignore', fd, fd] });
      closeSync(fd);
      child.on('exit', (code, signal) => {
        exited = { code, signal };
      });
      child.on('error', (err) => {
        exited = { code: null, signal: null, error: err };
      });
      const url = `postgresql://postgres@127.0.0.1:${port}/postgres`;
      const deadline = Date.now() + 60_000;
      let ready = false;
      while (!exited && Date.now() < deadline) {
        await sleep(150);
        if (exited) break;
        if (probePostgres(url, 2).ok) {
          ready = true;
          break;
        }
      }
      if (ready) {
        log(`throwaway PostgreSQL ready at ${url}`);
        return { url, dir, stop: makeStop(url) };
      }
      if (!exited) {
        child.kill('SIGKILL');
        throw new Error(`PostgreSQL did not become ready within 60s; log:\n${tail(logFile)}`);
      }
      const logText = tail(logFile);
      if (attempt < 3 && /could not (bind|create listen socket)|address already in use/i.test(logText)) continue;
      throw new Error(`PostgreSQL exited during start-up (${JSON.stringify(exited)}); log:\n${logText}`);
    }
  } catch (err) {
    if (child && !exited) child.kill('SIGKILL');
    cleanupDir();
    throw err;
  }

  function makeStop(url) {
    let stopped = null;
    return () => {
      stopped ??= (async () => {
        if (child && !exited) {
          // SIGINT = fast shutdown. With setpriv the pid is postgres itself; pg_ctl covers runuser.
          child.kill('SIGINT');
          if (prefix[0] === 'runuser') runAs(path.join(bin, 'pg_ctl'), ['-D', data, '-m', 'fast', '-w', 'stop'], { timeout: 30_000 });
          const deadline = Date.now() + 20_000;
          while (!exited && Date.now() < deadline) await sleep(100);
          if (!exited) {
            child.kill('SIGKILL');
            await sleep(200);
          }
        }
        cleanupDir();
        say(`throwaway PostgreSQL at ${url} stopped and ${dir} removed`);
      })();
      return stopped;
    };
  }
}

/**
 * A PostgreSQL server for the tests: the one at FLOTILLA_TEST_PG_URL (or the default) if it
 * answers, else a throwaway cluster. Resolves to { url, started, stop() }.
 */
export async function findOrStartPostgres({ url = process.env.FLOTILLA_TEST_PG_URL || DEFAULT_TEST_PG_URL, log = say } = {}) {
  const probe = probePostgres(url);
  if (probe.ok) return { url, started: false, stop: async () => {} };
  log(`no PostgreSQL answers at ${redact(url)}${probe.error ? ` (${probe.error.split('\n')[0]})` : ''}`);
  const cluster = await startThrowawayCluster({ log });
  return { url: cluster.url, started: true, stop: cluster.stop, dir: cluster.dir };
}

if (process.argv[1] && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  try {
    const pg = await findOrStartPostgres();
    process.stdout.write(`${pg.url}\n`);
    if (pg.started) {
      say('press Ctrl-C to stop it');
      const stop = () => pg.stop().then(() => process.exit(0));
      process.on('SIGINT', stop);
      process.on('SIGTERM', stop);
      setInterval(() => {}, 1 << 30);
    }
  } catch (err) {
    say(err instanceof Error ? err.message : String(err));
    process.exit(1);
  }
}
