/**
 * Whether a target's config can be satisfied on this host right now, decided
 * from facts the agent collected (files, folders, secrets, one connection
 * attempt). A target that cannot is served as `broken` with these problems:
 * every operation on it is refused with them, while every other target of the
 * agent keeps working. Pure: no I/O, the same facts give the same problems.
 */
import { FlotillaError } from "../../common/errors.js";
import type { Finding } from "./diagnose.js";
import type { DatabaseKind } from "./ports.js";
import { describeRef, type SecretProblem } from "./secrets.js";

/** What a path turned out to be. */
export type PathKind = "file" | "dir" | "missing" | "unreadable" | "other";

export interface TargetFacts {
  readonly targetId: string;
  readonly kind: DatabaseKind;
  /** Secrets that could not be read now. */
  readonly secretProblems: readonly SecretProblem[];
  readonly alembicDir: { readonly path: string; readonly kind: PathKind };
  /** The ini file Alembic will read (alembic.ini or alembic.config). */
  readonly alembicIni: { readonly path: string; readonly kind: PathKind; readonly configured: boolean };
  /** The first word of alembic.command and whether it resolves to an executable. */
  readonly command: { readonly argv0: string; readonly found: boolean };
  /** SQLite: the folder holding the database file. */
  readonly databaseFolder?: { readonly path: string; readonly kind: PathKind };
  /** PostgreSQL: one connection attempt (undefined when not tried). */
  readonly database?: { readonly reachable: boolean; readonly detail: string };
}

/** One reason a target cannot be served, with what to do about it. */
export interface TargetProblem {
  /** Stable code, e.g. `secret-empty`, `alembic-dir-missing`, `database-unreachable`. */
  readonly code: string;
  /** The config key involved, e.g. `alembic.env.WEBUI_SECRET_KEY`. */
  readonly key: string;
  readonly what: string;
  readonly fix: string;
}

export type TargetState = "ok" | "broken";

export interface TargetHealth {
  readonly state: TargetState;
  readonly problems: readonly TargetProblem[];
}

const NO_RESTART = "the agent reads it at each operation, no restart needed";

function secretProblem(t: string, s: SecretProblem): TargetProblem {
  const where = describeRef(s.ref);
  const what = s.key === "passwordFile" ? "the database password" : `the secret ${s.key.replace(/^alembic\.env\./, "")}`;
  const check = `then \`flotilla diagnose ${t}\``;
  if ("env" in s.ref) {
    return {
      code: "secret-unset",
      key: s.key,
      what: `${s.key}: ${where} is not set or empty in the agent's environment`,
      fix: `set ${s.ref.env} in the agent's environment (systemd: Environment= or EnvironmentFile= of flotilla-agent.service) and restart the agent, ${check}`,
    };
  }
  const file = s.ref.file;
  switch (s.state) {
    case "empty":
      return {
        code: "secret-empty",
        key: s.key,
        what: `${s.key}: secret file ${file} is empty`,
        fix: `write ${what} into ${file} (for WEBUI_SECRET_KEY the same key the app itself uses); ${NO_RESTART}; ${check}`,
      };
    case "unreadable":
      return {
        code: "secret-unreadable",
        key: s.key,
        what: `${s.key}: secret file ${file} cannot be read by the agent (${s.detail})`,
        fix: `let the agent's user read it (e.g. \`chown root:flotilla ${file} && chmod 0640 ${file}\`); ${NO_RESTART}; ${check}`,
      };
    default:
      return {
        code: "secret-missing",
        key: s.key,
        what: `${s.key}: secret file ${file} does not exist`,
        fix: `create ${file} holding ${what} (${NO_RESTART}), or point ${s.key}${s.key === "passwordFile" ? "" : ".file"} in the agent config at the right file and restart the agent; ${check}`,
      };
  }
}

/**
 * The problems that make a target unservable, in config order (secrets,
 * Alembic folder and ini, Alembic command, database). Empty when it is fine.
 */
export function targetProblems(f: TargetFacts): TargetProblem[] {
  const t = f.targetId;
  const out: TargetProblem[] = f.secretProblems.map((s) => secretProblem(t, s));
  const restart = `restart the agent, then \`flotilla diagnose ${t}\``;
  if (f.alembicDir.kind !== "dir") {
    out.push({
      code: "alembic-dir-missing",
      key: "alembic.dir",
      what:
        f.alembicDir.kind === "missing"
          ? `alembic.dir ${f.alembicDir.path} does not exist`
          : f.alembicDir.kind === "unreadable"
            ? `alembic.dir ${f.alembicDir.path} cannot be read by the agent`
            : `alembic.dir ${f.alembicDir.path} is not a folder`,
      fix: `set alembic.dir in the agent config to the folder that holds the app's alembic.ini (Open WebUI: the installed open_webui package folder), or install the app there; ${restart}`,
    });
  } else if (f.alembicIni.kind !== "file") {
    const name = f.alembicIni.path.split("/").at(-1) ?? "alembic.ini";
    out.push({
      code: "alembic-ini-missing",
      key: f.alembicIni.configured ? "alembic.config" : "alembic.dir",
      what: f.alembicIni.kind === "unreadable" ? `${f.alembicIni.path} cannot be read by the agent` : `no ${name} in ${f.alembicDir.path}`,
      fix: f.alembicIni.configured
        ? `set alembic.config to the ini file that exists in ${f.alembicDir.path}, or alembic.dir to the folder holding ${name}; ${restart}`
        : `set alembic.dir to the folder that holds alembic.ini (or alembic.config to the ini's name); ${restart}`,
    });
  }
  if (!f.command.found) {
    out.push({
      code: "alembic-command-missing",
      key: "alembic.command",
      what: `alembic.command: ${f.command.argv0} is not an executable the agent can find${f.command.argv0.includes("/") ? "" : " on its PATH"}`,
      fix: `install Alembic in the app's environment, or set alembic.command to the app's own Python (e.g. [/opt/open-webui/venv/bin/python, -m, alembic]); ${restart}`,
    });
  }
  if (f.databaseFolder !== undefined && f.databaseFolder.kind !== "dir") {
    out.push({
      code: "database-folder-missing",
      key: "database",
      what: `the folder of the SQLite database, ${f.databaseFolder.path}, ${f.databaseFolder.kind === "missing" ? "does not exist" : "is not a readable folder"}`,
      fix: `check database in the agent config (sqlite:////absolute/path/webui.db: four slashes) and that the app's data volume is mounted; ${restart}`,
    });
  }
  if (f.database !== undefined && !f.database.reachable) {
    out.push({
      code: "database-unreachable",
      key: "database",
      what: `the PostgreSQL database cannot be reached: ${f.database.detail}`,
      fix:
        "check that PostgreSQL runs and accepts the agent (host and port in database, the password in passwordFile, pg_hba.conf); " +
        `the agent tries again at each operation, no restart needed; then \`flotilla diagnose ${t}\``,
    });
  }
  return out;
}

/** The target's state from its facts. */
export function targetHealth(f: TargetFacts): TargetHealth {
  const problems = targetProblems(f);
  return { state: problems.length === 0 ? "ok" : "broken", problems };
}

/** One line per problem for TargetStatus.problems: what is wrong, then what to do. */
export function problemLines(problems: readonly TargetProblem[]): string[] {
  return problems.map((p) => `${p.what}; fix: ${p.fix}`);
}

/** The refusal of an operation on a broken target: names every reason and its fix. */
export function brokenTargetError(targetId: string, problems: readonly TargetProblem[]): FlotillaError {
  const reasons = problems.map((p) => `${p.what} (fix: ${p.fix})`).join("; ");
  return new FlotillaError(
    "TARGET_BROKEN",
    `target ${targetId} is broken, so the agent refuses operations on it until its config can be satisfied: ${reasons}`,
  );
}

/** The diagnose findings of a broken target: one error per problem, then a note that the rest of the checklist waits. */
export function brokenFindings(targetId: string, problems: readonly TargetProblem[]): Finding[] {
  return [
    ...problems.map((p) => ({
      code: p.code,
      severity: "error" as const,
      what: p.what,
      why: `the target is served as broken: every operation on ${targetId} is refused until this is fixed (the agent's other targets are not affected)`,
      fix: p.fix,
    })),
    {
      code: "checklist-deferred",
      severity: "info" as const,
      what: "the rest of the checklist (revisions, schema, locks, disk, backups) runs once the problems above are fixed",
      why: "it needs the target's secrets, Alembic project and database",
      fix: `fix the problems above, then \`flotilla diagnose ${targetId}\``,
    },
  ];
}
