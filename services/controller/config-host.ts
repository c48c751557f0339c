/**
 * `flotilla-controller --check-config`: every problem of the config's content
 * and, unless --offline, of this host (TLS files, token files, the folders of
 * the store, the data and the audit key). Starts nothing, opens no store.
 */
import { dirname } from "node:path";
import { creatableDirProblem, fileProblem, runCheck, type CheckReport } from "../common/config-check.js";
import { flagValue } from "../common/config-helpers.js";
import { readControllerConfig, type ControllerConfig, type LoadControllerConfigInput } from "./config.js";

/** Host problems of a loaded controller config, one `key: what` line each. */
export function controllerHostProblems(config: ControllerConfig): string[] {
  const out: string[] = [];
  for (const [name, files] of [
    ["tls", config.tls],
    ["httpTls", config.httpTls],
  ] as const) {
    if (files === undefined) continue;
    for (const key of ["cert", "key", "ca"] as const) {
      const path = (files as Partial<Record<typeof key, string>>)[key];
      if (path === undefined) continue;
      const problem = fileProblem(path);
      if (problem) out.push(`${name}.${key}: ${problem} (the controller cannot start without it)`);
    }
  }
  const data = creatableDirProblem(config.dataDir);
  if (data) out.push(`dataDir: ${data}`);
  const key = creatableDirProblem(dirname(config.auditKeyFile));
  if (key) out.push(`auditKeyFile: ${key}`);
  if (config.store.startsWith("sqlite:///")) {
    const folder = creatableDirProblem(dirname(config.store.slice("sqlite:///".length).replace(/\?.*$/, "")));
    if (folder) out.push(`store: ${folder}`);
  }
  return out;
}

/**
 * Validates a controller config and prints every problem; exit 0 or 2.
 * Offline, the token files are not read (a placeholder stands in), so a
 * config can be checked away from the host that holds its secrets.
 */
export function checkControllerConfig(input: LoadControllerConfigInput, opts: { offline: boolean }): CheckReport {
  const configPath = flagValue(input.argv, "config") ?? input.env.FLOTILLA_CONTROLLER_CONFIG ?? "controller config";
  const readFile = opts.offline ? (p: string): string => (p === configPath ? input.readFile(p) : "offline-placeholder-token-0123456789") : input.readFile;
  return runCheck("flotilla-controller", configPath, opts.offline, () => {
    const { config, problems } = readControllerConfig({ ...input, readFile });
    return {
      content: problems.list(),
      host: opts.offline ? [] : controllerHostProblems(config),
      summary: `${config.agents.length} agent${config.agents.length === 1 ? "" : "s"}, ${config.tokens.length} token${config.tokens.length === 1 ? "" : "s"}, ${config.schedules.length} schedule${config.schedules.length === 1 ? "" : "s"}`,
    };
  });
}
