import { spawn } from "node:child_process";
import { Readable } from "node:stream";
import { pipeline } from "node:stream/promises";
import { redact } from "./redact.js";

export type OutputStream = "stdout" | "stderr";

export interface RunOptions {
  /** Executable and arguments. Never a shell string. */
  readonly argv: readonly string[];
  readonly cwd?: string;
  /** The child's whole environment besides a minimal base (PATH, HOME, LANG). */
  readonly env?: Readonly<Record<string, string>>;
  readonly timeoutMs?: number;
  readonly signal?: AbortSignal;
  /** Each complete output line, redacted, as it arrives. */
  readonly onLine?: (line: string, stream: OutputStream) => void;
  /** Bytes of each stream kept for the result (the tail is kept). Default 256 KiB. */
  readonly maxOutputBytes?: number;
  /** Bytes fed to the child's stdin, which is otherwise ignored; a child that stops reading just ends the feed. */
  readonly input?: AsyncIterable<Uint8Array>;
}

export interface RunResult {
  /** Exit code, or null when killed by a signal or never started. */
  readonly exitCode: number | null;
  readonly signal: string | null;
  readonly stdout: string;
  readonly stderr: string;
  readonly timedOut: boolean;
  readonly cancelled: boolean;
  /** Set when the program could not be started (e.g. not installed). */
  readonly spawnError?: string;
  readonly durationMs: number;
  readonly truncated: boolean;
  readonly pid?: number;
}

/** Runs external programs. Adapters take this port so tests can pass a fake. */
export interface ProcessRunner {
  run(options: RunOptions): Promise<RunResult>;
}

const KILL_GRACE_MS = 3000;

function baseEnv(): Record<string, string> {
  const env: Record<string, string> = {
    PATH: process.env.PATH ?? "/usr/local/bin:/usr/bin:/bin",
    LANG: process.env.LANG ?? "C.UTF-8",
    // Alembic wraps to the terminal width when it thinks it has one.
    COLUMNS: "1000",
    PYTHONUNBUFFERED: "1",
  };
  if (process.env.HOME !== undefined) env.HOME = process.env.HOME;
  return env;
}

class TailBuffer {
  private chunks: string[] = [];
  private size = 0;
  truncated = false;
  constructor(private readonly cap: number) {}
  push(s: string): void {
    this.chunks.push(s);
    this.size += s.length;
    // Keep exactly the last `cap` characters: drop whole chunks while the rest still fills the cap, then cut the oldest one.
    while (this.chunks.length > 1 && this.size - this.chunks[0]!.length >= this.cap) {
      this.size -= this.chunks.shift()!.length;
      this.truncated = true;
    }
    if (this.size > this.cap) {
      const first = this.chunks[0]!;
      this.chunks[0] = first.slice(this.size - this.cap);
      this.size = this.cap;
      this.truncated = true;
    }
  }
  toString(): string {
    return this.chunks.join("");
  }
}

/**
 * Spawns children with `shell: false`, stdin ignored (or fed from `input`), an explicit env, in their
 * own process group so a timeout or an abort kills the whole tree (SIGTERM, then
 * SIGKILL after a grace period). Never throws for a failing program: the result
 * says what happened.
 */
export class NodeProcessRunner implements ProcessRunner {
  run(options: RunOptions): Promise<RunResult> {
    const started = performance.now();
    const [cmd, ...args] = options.argv;
    if (cmd === undefined) throw new Error("process runner: empty argv");
    const cap = options.maxOutputBytes ?? 256 * 1024;
    const out = new TailBuffer(cap);
    const err = new TailBuffer(cap);
    return new Promise((resolve) => {
      let timedOut = false;
      let cancelled = false;
      let settled = false;
      let killTimer: NodeJS.Timeout | undefined;
      const child = spawn(cmd, args, {
        cwd: options.cwd,
        env: { ...baseEnv(), ...options.env },
        stdio: [options.input !== undefined ? "pipe" : "ignore", "pipe", "pipe"],
        shell: false,
        detached: true,
      });
      // EPIPE when the child exits early is its own business: its exit status tells what happened.
      if (options.input !== undefined && child.stdin !== null) void pipeline(Readable.from(options.input), child.stdin).catch(() => undefined);
      const killGroup = (sig: NodeJS.Signals): void => {
        if (child.pid === undefined) return;
        try {
          process.kill(-child.pid, sig);
        } catch {
          try {
            child.kill(sig);
          } catch {
            /* already gone */
          }
        }
      };
      const stop = (): void => {
        killGroup("SIGTERM");
        killTimer = setTimeout(() => killGroup("SIGKILL"), KILL_GRACE_MS);
        killTimer.unref();
      };
      const timer =
        options.timeoutMs !== undefined && options.timeoutMs > 0
          ? setTimeout(() => {
              timedOut = true;
              stop();
            }, options.timeoutMs)
          : undefined;
      const onAbort = (): void => {
        cancelled = true;
        stop();
      };
      if (options.signal?.aborted) onAbort();
      else options.signal?.addEventListener("abort", onAbort, { once: true });

      const pump = (stream: NodeJS.ReadableStream, buf: TailBuffer, name: OutputStream): Promise<void> =>
        new Promise((done) => {
          let partial = "";
          stream.setEncoding("utf8");
          stream.on("data", (chunk: string) => {
            buf.push(chunk);
            if (!options.onLine) return;
            partial += chunk;
            let nl: number;
            while ((nl = partial.indexOf("\n")) >= 0) {
              const line = partial.slice(0, nl).replace(/\r$/, "");
              partial = partial.slice(nl + 1);
              options.onLine(redact(line), name);
            }
            if (partial.length > 64 * 1024) {
              options.onLine(redact(partial), name);
              partial = "";
            }
          });
          stream.on("end", () => {
            if (partial && options.onLine) options.onLine(redact(partial), name);
            done();
          });
          stream.on("error", () => done());
        });
      const pumps = Promise.all([pump(child.stdout!, out, "stdout"), pump(child.stderr!, err, "stderr")]);

      const finish = (exitCode: number | null, signal: string | null, spawnError?: string): void => {
        if (settled) return;
        settled = true;
        if (timer) clearTimeout(timer);
        if (killTimer) clearTimeout(killTimer);
        options.signal?.removeEventListener("abort", onAbort);
        const result: RunResult = {
          exitCode,
          signal,
          stdout: redact(out.toString()),
          stderr: redact(err.toString()),
          timedOut,
          cancelled,
          durationMs: Math.round(performance.now() - started),
          truncated: out.truncated || err.truncated,
          ...(spawnError !== undefined ? { spawnError } : {}),
          ...(child.pid !== undefined ? { pid: child.pid } : {}),
        };
        resolve(result);
      };
      child.on("error", (e) => finish(null, null, `${cmd}: ${e.message}`));
      child.on("close", (code, signal) => {
        void pumps.then(() => finish(code, signal));
      });
    });
  }
}

/** One line describing how a run ended, for error messages. */
export function describeRun(argv0: string, r: RunResult): string {
  if (r.spawnError) return `could not start ${argv0}: ${r.spawnError}`;
  if (r.timedOut) return `${argv0} timed out after ${r.durationMs} ms and was killed`;
  if (r.cancelled) return `${argv0} was cancelled`;
  if (r.signal) return `${argv0} was killed by ${r.signal}`;
  return `${argv0} exited with code ${r.exitCode}`;
}
