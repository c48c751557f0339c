/**
 * The host half of `--check-config` for both daemons: whether the files and
 * folders a config names exist here, and the one report every problem goes
 * into. The config's content is checked by the pure loaders.
 */
import { accessSync, constants, readFileSync, statSync } from "node:fs";
import { dirname } from "node:path";
import { toFlotillaError } from "./errors.js";

export interface CheckReport {
  /** 0: no problems; 2: at least one. */
  readonly exitCode: 0 | 2;
  /** The human report (stdout). */
  readonly text: string;
}

/** A readable, non-empty file; otherwise what is wrong with it. */
export function fileProblem(path: string): string | undefined {
  try {
    if (!statSync(path).isFile()) return `${path} is not a file`;
    const text = readFileSync(path, "utf8");
    return text.trim() === "" ? `${path} is empty` : undefined;
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    return code === "ENOENT" || code === "ENOTDIR" ? `${path} does not exist` : `${path} cannot be read (${code ?? "error"})`;
  }
}

/**
 * A folder the daemon creates when missing (data, backups): fine when it is a
 * writable folder, or when its nearest existing parent is one.
 */
export function creatableDirProblem(path: string): string | undefined {
  let p = path;
  for (;;) {
    try {
      const st = statSync(p);
      if (!st.isDirectory()) return p === path ? `${path} is not a folder` : `${path} cannot be created: ${p} is not a folder`;
      accessSync(p, constants.W_OK | constants.X_OK);
      return undefined;
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (code !== "ENOENT")
        return p === path ? `${path} is not writable by this user (${code ?? "error"})` : `${path} cannot be created: ${p} is not writable by this user`;
    }
    const up = dirname(p);
    if (up === p) return `${path} cannot be created`;
    p = up;
  }
}

/**
 * Runs a check: `content` returns the config's problems (the loader's) and
 * then the host's (unless offline). Anything thrown (no file, YAML syntax) is
 * one problem. Prints every problem, one per line, and the exit code 0 or 2.
 */
export function runCheck(
  program: string,
  source: string,
  offline: boolean,
  check: () => { content: readonly string[]; host: readonly string[]; summary: string },
): CheckReport {
  let result: { content: readonly string[]; host: readonly string[]; summary: string };
  try {
    result = check();
  } catch (err) {
    return { exitCode: 2, text: `${program} --check-config: ${toFlotillaError(err).message}\n` };
  }
  const all = [...result.content, ...(offline ? [] : result.host)];
  if (all.length === 0) {
    return { exitCode: 0, text: `${source}: ok (${result.summary})${offline ? "; files and folders on this host not checked (--offline)" : ""}\n` };
  }
  const lines = [`${source}: ${all.length} problem${all.length === 1 ? "" : "s"}`, ...all.map((p) => `  - ${p}`)];
  if (!offline && result.host.length > 0) {
    lines.push("", `${result.host.length} of them concern files or folders on this host; to check only the config's content elsewhere, add --offline`);
  }
  return { exitCode: 2, text: `${lines.join("\n")}\n` };
}
