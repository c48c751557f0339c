import { randomUUID } from "node:crypto";
import { toFlotillaError } from "../common/errors.js";
import { flagValue } from "../common/config-helpers.js";
import { InstanceLock } from "./adapters/instance-lock.js";
import { SqliteJournal } from "./adapters/sqlite-journal.js";
import { loadAgentConfig } from "./config.js";
import { resetFencing } from "./rpc/fencing.js";

export const RESET_FENCING_USAGE =
  "flotilla-agent --config agent.yaml --reset-fencing (--target ID ... | --all-targets) --reason TEXT\n" +
  "  offline, with the agent stopped: forget the controller epochs this agent obeys for the named targets,\n" +
  "  after its controller was legitimately replaced by one with a lower epoch (e.g. moved to a fresh store).\n" +
  "  Stop every old controller replica first: the next controller to command a target sets its epoch afresh.\n" +
  "  Refused while the agent runs; each reset is recorded in the target's journal (kind reset-fencing).\n";

export interface ResetFencingIo {
  readonly env: NodeJS.ProcessEnv;
  readonly readFile: (path: string) => string;
  readonly hostname: string;
  /** Who runs it (the operating-system user), for the journal. */
  readonly actor: string;
  readonly out: (text: string) => void;
  readonly err: (text: string) => void;
}

/** Every value of a repeatable flag (`--target a --target b`, `--target=a`). */
function flagValues(argv: readonly string[], name: string): string[] {
  const out: string[] = [];
  argv.forEach((a, i) => {
    if (a === `--${name}` && argv[i + 1] !== undefined) out.push(argv[i + 1]!);
    else if (a.startsWith(`--${name}=`)) out.push(a.slice(name.length + 3));
  });
  return out;
}

/**
 * `flotilla-agent --reset-fencing`: the offline, audited way to make an agent
 * accept a legitimately replaced controller again. Exit 0 done, 1 refused
 * (the agent is running) or failed, 2 usage or config error.
 */
export function resetFencingCommand(argv: readonly string[], io: ResetFencingIo): number {
  const targets = flagValues(argv, "target");
  const all = argv.includes("--all-targets");
  const reason = (flagValue(argv, "reason") ?? "").trim();
  const problems: string[] = [];
  if (all === targets.length > 0) problems.push("name the targets with --target ID (repeatable) or give --all-targets, not both");
  if (targets.some((t) => t === "" || t.startsWith("--"))) problems.push("--target needs a target id");
  if (reason === "") problems.push("--reason TEXT is required: it is recorded in the journal with the reset");
  if (problems.length > 0) {
    io.err(`flotilla-agent: ${problems.join("; ")}\nusage: ${RESET_FENCING_USAGE}`);
    return 2;
  }
  let dataDir: string;
  try {
    dataDir = loadAgentConfig({ argv, env: io.env, readFile: io.readFile, hostname: io.hostname }).dataDir;
  } catch (err) {
    io.err(`flotilla-agent: ${toFlotillaError(err).message}\n`);
    return 2;
  }
  let lock: InstanceLock;
  try {
    lock = InstanceLock.acquire(dataDir);
  } catch (err) {
    io.err(
      `flotilla-agent: refused: ${toFlotillaError(err).message}. Stop the agent first (e.g. systemctl stop flotilla-agent), then run --reset-fencing again; nothing was changed\n`,
    );
    return 1;
  }
  const journal = new SqliteJournal(dataDir);
  try {
    journal.open();
    const stamp = new Date().toISOString().replace(/[-:.]/g, "");
    const r = resetFencing(journal, { targets: all ? "all" : targets, reason, actor: io.actor }, () => `reset-fencing.${stamp}.${randomUUID().slice(0, 8)}`);
    for (const c of r.cleared) io.out(`${c.targetId}: forgot controller epoch ${c.epoch} (last seen ${c.seenAt}); recorded as operation ${c.operationId}\n`);
    for (const t of r.unfenced) io.out(`${t}: no controller epoch recorded; nothing to forget\n`);
    if (r.cleared.length > 0) io.out("the next controller to command these targets sets their epoch afresh; start the agent again\n");
    return 0;
  } catch (err) {
    io.err(`flotilla-agent: ${toFlotillaError(err).message}\n`);
    return 1;
  } finally {
    journal.close();
    lock.release();
  }
}
