/**
 * `flotilla-agent --check-config`: the config's content (every problem the
 * loader finds) and, unless --offline, the host: TLS and token files, the
 * folders the agent creates, and for each target the same facts that decide
 * whether the running agent would serve it as broken. Starts nothing.
 */
import { join } from "node:path";
import { creatableDirProblem, fileProblem, runCheck, type CheckReport } from "../common/config-check.js";
import { NodeProcessRunner } from "../common/process-runner.js";
import { readAgentConfig, type AgentConfig, type LoadConfigInput } from "./config.js";
import { NodeSecretSource } from "./adapters/secret-source.js";
import { PostgresDatabase } from "./adapters/postgres-database.js";
import { SqliteDatabase } from "./adapters/sqlite-database.js";
import { commandFound, probeTarget } from "./adapters/target-probe.js";
import { resolveSecrets, type SecretSource } from "./core/secrets.js";
import { targetProblems } from "./core/target-health.js";

/** Host problems of a loaded agent config, one `key: what` line each. */
export async function agentHostProblems(config: AgentConfig, secrets: SecretSource = new NodeSecretSource()): Promise<string[]> {
  const out: string[] = [];
  if (config.tls) {
    for (const key of ["cert", "key", "ca"] as const) {
      const problem = fileProblem(config.tls[key]);
      if (problem) out.push(`tls.${key}: ${problem} (the agent cannot listen without it)`);
    }
  }
  const data = creatableDirProblem(config.dataDir);
  if (data) out.push(`dataDir: ${data}`);
  if (config.controller?.tokenFile) {
    const r = secrets.read({ file: config.controller.tokenFile });
    if (!r.ok)
      out.push(
        `controller.tokenFile: ${config.controller.tokenFile} is ${r.state === "empty" ? "empty" : r.state === "missing" ? "missing" : "unreadable"} (registration would be refused)`,
      );
  }
  if (config.controller?.ca) {
    const problem = fileProblem(config.controller.ca);
    if (problem) out.push(`controller.ca: ${problem}`);
  }
  const runner = new NodeProcessRunner();
  for (const t of config.targets) {
    const resolved = resolveSecrets(t, secrets);
    const db =
      t.kind === "sqlite"
        ? SqliteDatabase.fromUrl(t.database, { scratchDir: join(config.dataDir, "scratch") })
        : new PostgresDatabase({
            url: t.database,
            ...(resolved.password !== undefined ? { password: resolved.password } : {}),
            runner,
            scratchDir: join(config.dataDir, "scratch"),
          });
    const facts = await probeTarget(t, resolved.problems, db);
    for (const p of targetProblems(facts)) out.push(`target ${t.id}: ${p.what} (the agent would serve it as broken); fix: ${p.fix}`);
    const backups = creatableDirProblem(t.backups.dir);
    if (backups) out.push(`target ${t.id}: backups.dir: ${backups}`);
    for (const [i, path] of (t.backups.include ?? []).entries()) {
      if (creatableDirProblem(path) !== undefined && fileProblem(path) !== undefined) out.push(`target ${t.id}: backups.include[${i}]: ${path} does not exist`);
    }
    const sw = t.blueGreen?.switch[0];
    if (sw !== undefined && !commandFound(sw, t.alembic.dir)) out.push(`target ${t.id}: blueGreen.switch: ${sw} is not an executable the agent can find`);
  }
  for (const a of config.apps) {
    for (const which of ["stop", "start"] as const) {
      const argv0 = a[which]?.[0];
      if (argv0 !== undefined && !commandFound(argv0, "/")) out.push(`app ${a.id}: ${which}: ${argv0} is not an executable the agent can find`);
    }
  }
  return out;
}

/** Validates an agent config and prints every problem; exit 0 or 2. Starts nothing. */
export async function checkAgentConfig(input: LoadConfigInput, opts: { offline: boolean }): Promise<CheckReport> {
  let host: string[] = [];
  let loaded: ReturnType<typeof readAgentConfig> | undefined;
  let failure: unknown;
  try {
    loaded = readAgentConfig(input);
    if (!opts.offline) host = await agentHostProblems(loaded.config);
  } catch (err) {
    failure = err;
  }
  const source = loaded?.config.source ?? "agent config";
  return runCheck("flotilla-agent", source, opts.offline, () => {
    if (failure !== undefined || loaded === undefined) throw failure;
    const c = loaded.config;
    return {
      content: loaded.problems.list(),
      host,
      summary: `${c.targets.length} target${c.targets.length === 1 ? "" : "s"}, ${c.apps.length} app${c.apps.length === 1 ? "" : "s"}`,
    };
  });
}
