import { parseArgs } from "node:util";
import { isRecoverAction, type RecoverAction } from "../common/recover-action.js";
import {
  ROLLOUT_FIELDS,
  STRATEGIES,
  type RolloutSpec,
  type Strategy,
  type Checked,
  checkCron,
  checkDuration,
  checkRevision,
  checkSelector,
  checkWaves,
  compileRolloutRequest,
  compileScheduleRequest,
  durationMs,
} from "../common/rollout-request.js";

/** Default controller HTTP address when neither --controller nor FLOTILLA_CONTROLLER is given. */
export const DEFAULT_CONTROLLER = "http://127.0.0.1:7441";

export { STRATEGIES, type Strategy } from "../common/rollout-request.js";

/** The only legitimate reasons to stamp (from the Open WebUI migration guide). */
export const STAMP_REASONS = ["created-with-create-all", "imported-backup", "applied-by-hand"] as const;

/** Options every verb takes. */
export interface GlobalOptions {
  readonly controller: string;
  readonly token: string | undefined;
  /** File of a private CA to trust for an https:// controller (--ca, env FLOTILLA_CA). */
  readonly ca?: string | undefined;
  readonly json: boolean;
}

/** A compiled rollout request as the CLI sends it (a schedule name is only set by the controller). */
export type SpecInput = Omit<RolloutSpec, "schedule">;

/** A schedule as the wire wants it: empty string means "not given". */
export interface ScheduleInput {
  readonly name: string;
  readonly cron: string;
  readonly timeZone: string;
  readonly selector: string;
  /** Ignored for a drill (it runs no migration). */
  readonly strategy: Strategy;
  readonly window: string;
  readonly toRevision: string;
  readonly waves: string;
  readonly gate: string;
  readonly maxFailures: number;
  readonly replace: boolean;
  /** A restore drill of the selected targets instead of a migration. */
  readonly drill?: boolean;
}

/** Audit filters; times already converted to ISO 8601. */
export interface AuditQuery {
  readonly since: string;
  readonly until: string;
  readonly target: string;
  readonly actor: string;
  readonly action: string;
  /** intent | ok | error | denied ("" = any); the controller checks it. */
  readonly outcome: string;
  readonly limit: number;
}

/** One parsed, validated command line. */
export type Command =
  | { readonly verb: "help"; readonly topic: string }
  | { readonly verb: "version" }
  | { readonly verb: "targets"; readonly selector: string }
  | { readonly verb: "diagnose"; readonly target: string }
  | { readonly verb: "backup"; readonly target: string }
  | { readonly verb: "backups"; readonly target: string }
  | { readonly verb: "restore"; readonly target: string; readonly backupId: string }
  | { readonly verb: "drill"; readonly target: string; readonly backupId: string }
  | { readonly verb: "bundle"; readonly target: string; readonly out: string }
  | { readonly verb: "plan"; readonly spec: SpecInput }
  | { readonly verb: "rollout"; readonly spec: SpecInput; readonly wait: boolean }
  | { readonly verb: "rollouts"; readonly limit: number }
  | { readonly verb: "rollout show"; readonly id: string; readonly follow: boolean }
  | { readonly verb: "rollout abort" | "rollout approve" | "rollout retry" | "rollout rollback"; readonly id: string; readonly wait: boolean }
  | { readonly verb: "rollout pause" | "rollout resume"; readonly id: string }
  | { readonly verb: "downgrade"; readonly target: string; readonly toRevision: string }
  | { readonly verb: "stamp"; readonly target: string; readonly revision: string; readonly reason: string }
  | { readonly verb: "recover"; readonly target: string; readonly operationId: string; readonly action: RecoverAction }
  | { readonly verb: "rehearse"; readonly target: string; readonly toRevision: string }
  | { readonly verb: "move"; readonly from: string; readonly to: string; readonly yes: boolean; readonly skipOrphans: boolean; readonly fromBackup: boolean }
  | { readonly verb: "schedule add"; readonly schedule: ScheduleInput }
  | { readonly verb: "schedules" }
  | { readonly verb: "schedule rm"; readonly name: string }
  | { readonly verb: "audit"; readonly query: AuditQuery }
  | { readonly verb: "audit verify" }
  | { readonly verb: "audit export"; readonly query: AuditQuery; readonly out: string }
  | { readonly verb: "demo"; readonly argv: readonly string[] };

/**
 * The result of parsing: a command with its global options and any notes for
 * stderr (e.g. "added 100% to --waves"), or the one problem found, phrased as
 * what was wrong and what to do. Parsing never does I/O.
 */
export type ParseResult =
  | { readonly ok: true; readonly globals: GlobalOptions; readonly command: Command; readonly notes: readonly string[] }
  | { readonly ok: false; readonly message: string; readonly json: boolean };

/** Thrown inside this module only; parseCommandLine turns it into a value. */
class UsageProblem extends Error {}

function problem(message: string): never {
  throw new UsageProblem(message);
}

// ---------------------------------------------------------------------------------------------
// Value validators. Each returns the normalized value or throws a UsageProblem whose message says
// what was wrong and what to use instead. Exported for tests.

/** The request rules live in services/common/rollout-request.ts; these wrap them with the flag's name. */
function checked<T>(flagName: string, c: Checked<T>): T {
  if (!c.ok) problem(`${flagName}: ${c.problem}`);
  return c.value;
}

/** `k=v[,k=v]` (see checkSelector). Returns the normalized selector. */
export function parseSelector(raw: string, flagName = "--selector"): string {
  return checked(flagName, checkSelector(raw));
}

/** Cumulative waves (see checkWaves); "100%" appended with a note when absent. */
export function parseWaves(raw: string): { value: string; note: string | undefined } {
  const c = checkWaves(raw);
  return { value: checked("--waves", c), note: c.ok && c.note !== undefined ? `--${c.note}` : undefined };
}

/** `head` or a revision id (see checkRevision). */
export function parseRevision(raw: string, flagName = "--to"): string {
  return checked(flagName, checkRevision(raw));
}

/** A duration flag (--window): validated, returned as given for the controller. */
export function parseDuration(raw: string, flagName = "--window"): string {
  return checked(flagName, checkDuration(raw));
}

/** ≥ 1 integer (for --limit). */
export function parsePositiveInt(raw: string, flag: string): number {
  if (!/^\d{1,9}$/.test(raw) || Number(raw) < 1) problem(`${flag}: ${JSON.stringify(raw)} is not a whole number ≥ 1; use e.g. ${flag} 50`);
  return Number(raw);
}

/** Five cron fields (see checkCron). */
export function parseCron(raw: string): string {
  return checked("--cron", checkCron(raw));
}

const ISO_TIME = /^\d{4}-\d{2}-\d{2}(?:[T ]\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?(?:Z|[+-]\d{2}:?\d{2})?)?$/;
const RELATIVE = /^(\d+)(s|m|h|d|w)$/;
const UNIT_MS = { s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000, w: 604_800_000 } as const;

/** ISO 8601, or a relative age like `1h`, `7d`, `1h30m` (that long before `now`) → ISO 8601 UTC. */
export function parseTime(raw: string, now: Date, flag: string): string {
  if (ISO_TIME.test(raw)) {
    const t = Date.parse(raw.replace(" ", "T"));
    if (!Number.isNaN(t)) return new Date(t).toISOString();
  }
  const rel = RELATIVE.exec(raw);
  if (rel !== null) return new Date(now.getTime() - Number(rel[1]) * UNIT_MS[rel[2] as keyof typeof UNIT_MS]).toISOString();
  const d = durationMs(raw);
  if (d !== undefined) return new Date(now.getTime() - d).toISOString();
  return problem(`${flag}: ${JSON.stringify(raw)} is not a time; use ISO 8601 like 2024-05-01T03:00:00Z, or an age like 30m, 1h, 7d`);
}

const ID = /^[A-Za-z0-9][A-Za-z0-9._:@+-]{0,199}$/;

function parseId(raw: string, what: string, example: string): string {
  if (!ID.test(raw)) problem(`${what}: ${JSON.stringify(raw)} is not a valid ${what.toLowerCase()}; use letters, digits and . _ : @ + - (e.g. ${example})`);
  return raw;
}

function parseControllerUrl(raw: string, source: string): string {
  let url: URL;
  try {
    url = new URL(raw);
  } catch {
    return problem(`${source}: ${JSON.stringify(raw)} is not a URL; use e.g. ${DEFAULT_CONTROLLER}`);
  }
  if (url.protocol !== "http:" && url.protocol !== "https:") problem(`${source}: ${JSON.stringify(raw)} is not an http(s) URL; use e.g. ${DEFAULT_CONTROLLER}`);
  if (url.username !== "" || url.password !== "") problem(`${source}: put no credentials in the URL; pass the token with --token or FLOTILLA_TOKEN`);
  return url.href;
}

// ---------------------------------------------------------------------------------------------
// Verbs.

interface OptionDef {
  readonly type: "string" | "boolean";
  readonly short?: string;
  /** For help: the value placeholder and what it does. */
  readonly help: string;
}

type Values = ReadonlyMap<string, string | true>;

interface BuildContext {
  readonly values: Values;
  readonly positionals: readonly string[];
  readonly now: Date;
  readonly notes: string[];
}

interface VerbDef {
  readonly name: string;
  readonly usage: string;
  readonly summary: string;
  readonly positionals: readonly string[];
  readonly options: Readonly<Record<string, OptionDef>>;
  readonly build: (ctx: BuildContext) => Command;
}

const GLOBAL_OPTIONS: Readonly<Record<string, OptionDef>> = {
  controller: { type: "string", help: "URL  controller HTTP API (env FLOTILLA_CONTROLLER, default http://127.0.0.1:7441)" },
  token: { type: "string", help: "T  API token (env FLOTILLA_TOKEN)" },
  ca: { type: "string", help: "FILE  CA certificate to trust for an https:// controller (env FLOTILLA_CA)" },
  json: { type: "boolean", help: "print exactly one JSON document on stdout" },
  help: { type: "boolean", short: "h", help: "show help for this verb" },
};

const O = {
  selector: { type: "string", help: "k=v,…  targets whose labels match all pairs" },
  to: { type: "string", help: "REV  revision to migrate to (default head)" },
  strategy: { type: "string", help: `X  ${STRATEGIES.join(", ")}` },
  waves: { type: "string", help: "W  cumulative wave sizes, e.g. 1,25%,100% (first wave is the canary)" },
  window: { type: "string", help: "D  maintenance window length, e.g. 2h, 1h30m" },
  since: { type: "string", help: "T  ISO 8601 time or an age like 1h, 7d" },
  until: { type: "string", help: "T  ISO 8601 time or an age like 1h, 7d" },
  target: { type: "string", help: "X  only entries about this target" },
  actor: { type: "string", help: "X  only entries by this actor" },
  action: { type: "string", help: "X  only entries of this action" },
  limit: { type: "string", help: "N  at most N entries" },
  outcome: { type: "string", help: "O  intent, ok, error or denied (e.g. denied: refused callers)" },
  gate: { type: "string", help: "G  manual (wait for flotilla rollout approve after each wave) or manual:30m (halt if not approved in time)" },
  "max-failures": { type: "string", help: "N  failed targets tolerated before the rollout halts (default 0)" },
  "allow-breaking": { type: "boolean", help: "let job/blue-green run revisions that are not additive (old and new code side by side; audited)" },
} as const satisfies Record<string, OptionDef>;

function str(ctx: BuildContext, name: string): string | undefined {
  const v = ctx.values.get(name);
  return typeof v === "string" ? v : undefined;
}

function flag(ctx: BuildContext, name: string): boolean {
  return ctx.values.get(name) === true;
}

function pos(ctx: BuildContext, i: number): string {
  return ctx.positionals[i] ?? "";
}

function requireOption(ctx: BuildContext, name: string, usage: string, example: string): string {
  const v = str(ctx, name);
  if (v === undefined) problem(`--${name} is required (e.g. --${name} ${example}); usage: ${usage}`);
  return v;
}

/** How the CLI spells each request field. */
const FLAG_OF: Readonly<Record<string, string>> = {
  [ROLLOUT_FIELDS.selector]: "--selector",
  [ROLLOUT_FIELDS.toRevision]: "--to",
  [ROLLOUT_FIELDS.strategy]: "--strategy",
  [ROLLOUT_FIELDS.waves]: "--waves",
  [ROLLOUT_FIELDS.maxFailures]: "--max-failures",
  [ROLLOUT_FIELDS.window]: "--window",
  [ROLLOUT_FIELDS.gate]: "--gate",
  [ROLLOUT_FIELDS.cron]: "--cron",
  [ROLLOUT_FIELDS.timeZone]: "--time-zone",
  [ROLLOUT_FIELDS.name]: "NAME",
};

/** Compiles the rollout flags with the shared request contract; the first problem becomes the usage error. */
function specFrom(ctx: BuildContext, usage: string, strategyRequired: boolean): SpecInput {
  const selector = requireOption(ctx, "selector", usage, "env=prod");
  const strategy = strategyRequired ? requireOption(ctx, "strategy", usage, "maintenance") : str(ctx, "strategy");
  const compiled = compileRolloutRequest(
    {
      selector,
      strategy: strategy ?? "",
      toRevision: str(ctx, "to") ?? "",
      waves: str(ctx, "waves") ?? "",
      maxFailures: str(ctx, "max-failures") ?? 0,
      window: str(ctx, "window") ?? "",
      gate: str(ctx, "gate") ?? "",
      allowBreaking: flag(ctx, "allow-breaking"),
    },
    { strategyRequired },
  );
  if (!compiled.ok) {
    const first = compiled.problems[0]!;
    return problem(`${FLAG_OF[first.field] ?? first.field}: ${first.message}`);
  }
  for (const note of compiled.notes) ctx.notes.push(`--${note}`);
  const { schedule: _schedule, ...spec } = compiled.value;
  return spec;
}

function auditQueryFrom(ctx: BuildContext): AuditQuery {
  const since = str(ctx, "since");
  const until = str(ctx, "until");
  const q: AuditQuery = {
    since: since === undefined ? "" : parseTime(since, ctx.now, "--since"),
    until: until === undefined ? "" : parseTime(until, ctx.now, "--until"),
    target: str(ctx, "target") ?? "",
    actor: str(ctx, "actor") ?? "",
    action: str(ctx, "action") ?? "",
    outcome: str(ctx, "outcome") ?? "",
    limit: str(ctx, "limit") === undefined ? 0 : parsePositiveInt(str(ctx, "limit") ?? "", "--limit"),
  };
  if (q.since !== "" && q.until !== "" && q.since > q.until) {
    problem(`--since (${q.since}) is after --until (${q.until}); swap them`);
  }
  return q;
}

const target = (ctx: BuildContext): string => parseId(pos(ctx, 0), "TARGET", "webui-1");

const WAIT: OptionDef = { type: "boolean", help: "follow the rollout to its end; exit 0 only if it ended as asked" };

function control(name: "rollout abort" | "rollout approve" | "rollout pause" | "rollout resume" | "rollout retry", summary: string, wait: boolean): VerbDef {
  return {
    name,
    usage: `flotilla ${name} ID${wait ? " [--wait]" : ""}`,
    summary,
    positionals: ["ID"],
    options: wait ? { wait: WAIT } : {},
    build: (ctx) => {
      const id = parseId(pos(ctx, 0), "ID", "r-0001");
      if (name === "rollout pause" || name === "rollout resume") return { verb: name, id };
      return { verb: name, id, wait: flag(ctx, "wait") };
    },
  };
}

function scheduleVerb(name: "schedule add" | "schedule replace", summary: string): VerbDef {
  const usage = `flotilla ${name} NAME --cron EXPR --selector S --strategy X [--time-zone TZ] [--window 2h] [--to REV] [--waves W] [--gate manual[:D]] [--max-failures N]${name === "schedule add" ? " [--replace]" : ""}`;
  return {
    name,
    usage,
    summary,
    positionals: ["NAME"],
    options: {
      cron: { type: "string", help: 'EXPR  five cron fields, e.g. "0 3 * * 0"' },
      "time-zone": { type: "string", help: "TZ  IANA time zone the cron is read in (default: the controller's)" },
      selector: O.selector,
      strategy: O.strategy,
      window: O.window,
      to: O.to,
      waves: O.waves,
      gate: O.gate,
      "max-failures": O["max-failures"],
      ...(name === "schedule add" ? { replace: { type: "boolean", help: "replace a schedule of the same name instead of refusing" } } : {}),
      drill: { type: "boolean", help: "a restore drill of each selected target (its newest verified backup) instead of a migration; --strategy not needed" },
    } as Record<string, OptionDef>,
    build: (ctx) => {
      const cronRaw = requireOption(ctx, "cron", usage, '"0 3 * * 0"');
      const drill = flag(ctx, "drill");
      const spec = specFrom(ctx, usage, !drill);
      const compiled = compileScheduleRequest({ ...spec, name: pos(ctx, 0), cron: cronRaw, timeZone: str(ctx, "time-zone") ?? "" });
      if (!compiled.ok) {
        const first = compiled.problems[0]!;
        return problem(`${FLAG_OF[first.field] ?? first.field}: ${first.message}`);
      }
      const v = compiled.value;
      return {
        verb: "schedule add",
        schedule: {
          name: v.name,
          cron: v.cron,
          timeZone: v.timeZone,
          selector: v.rollout.selector,
          strategy: v.rollout.strategy,
          window: v.rollout.window,
          toRevision: v.rollout.toRevision,
          waves: v.rollout.waves,
          gate: v.rollout.gate,
          maxFailures: v.rollout.maxFailures,
          replace: name === "schedule replace" || flag(ctx, "replace"),
          ...(drill ? { drill: true } : {}),
        },
      };
    },
  };
}

const VERBS: readonly VerbDef[] = [
  {
    name: "targets",
    usage: "flotilla targets [--selector k=v,…]",
    summary: "inventory: revisions, pending migrations, app state, last verified backup",
    positionals: [],
    options: { selector: O.selector },
    build: (ctx) => {
      const s = str(ctx, "selector");
      return { verb: "targets", selector: s === undefined ? "" : parseSelector(s) };
    },
  },
  {
    name: "diagnose",
    usage: "flotilla diagnose TARGET",
    summary: "the whole diagnostic checklist; exit 1 when a problem is found",
    positionals: ["TARGET"],
    options: {},
    build: (ctx) => ({ verb: "diagnose", target: target(ctx) }),
  },
  {
    name: "backup",
    usage: "flotilla backup TARGET",
    summary: "take and verify a backup; prints its id, size and checksum",
    positionals: ["TARGET"],
    options: {},
    build: (ctx) => ({ verb: "backup", target: target(ctx) }),
  },
  {
    name: "backups",
    usage: "flotilla backups TARGET",
    summary: "list backups with their verification state",
    positionals: ["TARGET"],
    options: {},
    build: (ctx) => ({ verb: "backups", target: target(ctx) }),
  },
  {
    name: "restore",
    usage: "flotilla restore TARGET BACKUP --yes",
    summary: "stop the app, restore the backup, verify, start the app",
    positionals: ["TARGET", "BACKUP"],
    options: { yes: { type: "boolean", help: "confirm: the database is replaced by the backup" } },
    build: (ctx) => {
      const t = target(ctx);
      const b = parseId(pos(ctx, 1), "BACKUP", "an id from flotilla backups");
      if (!flag(ctx, "yes")) {
        problem(
          `restore replaces the database of ${t} with backup ${b} (its app is stopped meanwhile; changes since the backup are lost). Nothing was done; to go ahead, run: flotilla restore ${t} ${b} --yes`,
        );
      }
      return { verb: "restore", target: t, backupId: b };
    },
  },
  {
    name: "drill",
    usage: "flotilla drill TARGET [--backup ID]",
    summary: "restore a verified backup (the newest by default) into scratch and check it; exit 1 when it fails",
    positionals: ["TARGET"],
    options: { backup: { type: "string", help: "ID  the backup to drill (default: the newest verified)" } },
    build: (ctx) => {
      const b = str(ctx, "backup");
      return { verb: "drill", target: target(ctx), backupId: b === undefined ? "" : parseId(b, "--backup", "an id from flotilla backups") };
    },
  },
  {
    name: "bundle",
    usage: "flotilla bundle TARGET [--out FILE]",
    summary: "the diagnostics bundle (.tar.gz): never the database, never a secret",
    positionals: ["TARGET"],
    options: { out: { type: "string", help: "FILE  where to write it (default: the bundle's name in the current folder)" } },
    build: (ctx) => {
      const out = str(ctx, "out");
      if (out === "") problem("--out needs a file name, e.g. --out bundle.tar.gz");
      return { verb: "bundle", target: target(ctx), out: out ?? "" };
    },
  },
  {
    name: "plan",
    usage: "flotilla plan --selector S [--to REV] [--strategy X] [--waves W]",
    summary: "dry run: the steps and the SQL per target; changes nothing",
    positionals: [],
    options: { selector: O.selector, to: O.to, strategy: O.strategy, waves: O.waves, window: O.window, "allow-breaking": O["allow-breaking"] },
    build: (ctx) => ({ verb: "plan", spec: specFrom(ctx, "flotilla plan --selector S [--to REV] [--strategy X] [--waves W]", false) }),
  },
  {
    name: "rollout",
    usage:
      "flotilla rollout --selector S --strategy X [--to REV] [--waves 1,25%,100%] [--max-failures N] [--window D] [--gate manual[:D]] [--allow-breaking] [--wait]",
    summary: "start a rollout (REV defaults to head); --wait follows it and exits 0 only if it succeeded",
    positionals: [],
    options: {
      selector: O.selector,
      to: O.to,
      strategy: O.strategy,
      waves: O.waves,
      "max-failures": O["max-failures"],
      window: O.window,
      gate: O.gate,
      "allow-breaking": O["allow-breaking"],
      wait: { type: "boolean", help: "follow the rollout to its end; exit 0 only if it succeeded" },
    },
    build: (ctx) => ({
      verb: "rollout",
      spec: specFrom(ctx, "flotilla rollout --selector S --strategy X [--to REV] [--waves W]", true),
      wait: flag(ctx, "wait"),
    }),
  },
  {
    name: "rollouts",
    usage: "flotilla rollouts [--limit N]",
    summary: "recent rollouts with per-target states",
    positionals: [],
    options: { limit: O.limit },
    build: (ctx) => {
      const l = str(ctx, "limit");
      return { verb: "rollouts", limit: l === undefined ? 0 : parsePositiveInt(l, "--limit") };
    },
  },
  {
    name: "rollout show",
    usage: "flotilla rollout show ID [--follow]",
    summary: "one rollout with per-target step states; --follow streams it to the end",
    positionals: ["ID"],
    options: { follow: { type: "boolean", help: "keep printing step changes and Alembic output until it ends" } },
    build: (ctx) => ({ verb: "rollout show", id: parseId(pos(ctx, 0), "ID", "r-0001"), follow: flag(ctx, "follow") }),
  },
  control("rollout abort", "stop a rollout: running steps finish, no new step starts; stopped apps are started again", true),
  control("rollout approve", "let a rollout waiting at a manual gate start its next wave", true),
  control("rollout pause", "running steps finish, no new step starts; leases are kept (resume with rollout resume)", false),
  control("rollout resume", "continue a paused rollout", false),
  control("rollout retry", "a new rollout with the same spec over exactly the targets that failed, were restored or were skipped", true),
  {
    name: "rollout rollback",
    usage: "flotilla rollout rollback ID --yes [--wait]",
    summary: "undo a finished rollout (switch blue-green back, or restore the pre-migration backups: data written since is lost)",
    positionals: ["ID"],
    options: { yes: { type: "boolean", help: "confirm: data written since the pre-migration backups is lost" }, wait: WAIT },
    build: (ctx) => {
      const id = parseId(pos(ctx, 0), "ID", "r-0001");
      if (!flag(ctx, "yes"))
        problem(
          `rollback restores each target's pre-migration backup (blue-green: switches back to blue); data written since is lost. Nothing was done; to go ahead, run: flotilla rollout rollback ${id} --yes`,
        );
      return { verb: "rollout rollback", id, wait: flag(ctx, "wait") };
    },
  },
  {
    name: "downgrade",
    usage: "flotilla downgrade TARGET --to REV --accept-data-loss",
    summary: "take a backup, then downgrade",
    positionals: ["TARGET"],
    options: {
      to: { type: "string", help: "REV  revision to downgrade to" },
      "accept-data-loss": { type: "boolean", help: "confirm: data in columns/tables the downgrade drops is lost" },
    },
    build: (ctx) => {
      const t = target(ctx);
      const to = parseRevision(requireOption(ctx, "to", "flotilla downgrade TARGET --to REV --accept-data-loss", "c3d2e1f00d42"));
      if (!flag(ctx, "accept-data-loss")) {
        problem(
          `a downgrade drops the columns and tables the newer revisions added: the data in them is lost. Flotilla takes a backup first; keep it (see flotilla backups ${t}). Nothing was done; to go ahead, run: flotilla downgrade ${t} --to ${to} --accept-data-loss`,
        );
      }
      return { verb: "downgrade", target: t, toRevision: to };
    },
  },
  {
    name: "stamp",
    usage: `flotilla stamp TARGET REV --reason ${STAMP_REASONS.join("|")}`,
    summary: "record a revision without running migrations; only for the three legitimate reasons, never to repair a failed migration",
    positionals: ["TARGET", "REV"],
    options: { reason: { type: "string", help: `R  one of ${STAMP_REASONS.join(", ")}` } },
    build: (ctx) => {
      const t = target(ctx);
      const rev = parseRevision(pos(ctx, 1), "REV");
      const reason = str(ctx, "reason");
      if (reason === undefined || !(STAMP_REASONS as readonly string[]).includes(reason)) {
        problem(
          `stamp needs --reason, one of: ${STAMP_REASONS.join(", ")}${reason === undefined ? "" : ` (not ${JSON.stringify(reason)})`}. Stamping is never a fix for a failed migration: restore the backup and run flotilla diagnose ${t}`,
        );
      }
      return { verb: "stamp", target: t, revision: rev, reason };
    },
  },
  {
    name: "rehearse",
    usage: "flotilla rehearse TARGET [--to REV]",
    summary: "migrate a throwaway copy of the target (never the target itself): per-revision timings and go/no-go; exit 1 on no-go",
    positionals: ["TARGET"],
    options: { to: { type: "string", help: "REV  revision to rehearse up to (default head)" } },
    build: (ctx) => {
      const t = target(ctx);
      const to = str(ctx, "to");
      return { verb: "rehearse", target: t, toRevision: to === undefined ? "head" : parseRevision(to) };
    },
  },
  {
    name: "recover",
    usage: "flotilla recover TARGET [OPERATION] --action restore|accept|forward",
    summary:
      "resolve an operation interrupted by an agent crash or left needs-restore (default: the one holding the target): restore its pre-operation backup, accept a database verifiably at its target revision, or go forward with an online (job) migration from the revision it reached",
    positionals: ["TARGET", "[OPERATION]"],
    options: {
      action: {
        type: "string",
        help: "A  restore (put back the backup taken before it), accept (keep the database if it is verifiably at the target revision) or forward (an interrupted online migration: run it on from the revision the database reached, keeping the app's writes)",
      },
    },
    build: (ctx) => {
      const t = target(ctx);
      const op = pos(ctx, 1);
      if (op !== "" && !/^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$/.test(op))
        problem(`"${op}" is not an operation id: flotilla diagnose ${t} names the interrupted operation`);
      const action = str(ctx, "action");
      if (!isRecoverAction(action))
        problem(`recover needs --action restore, accept or forward${action === undefined ? "" : ` (not ${JSON.stringify(action)})`}`);
      return { verb: "recover", target: t, operationId: op, action };
    },
  },
  {
    name: "move",
    usage: "flotilla move FROM TO [--yes] [--skip-orphans] [--from-backup]",
    summary:
      "copy a target into an empty target of the other engine (SQLite <-> PostgreSQL) on the same agent at the same revision, verified; FROM is kept untouched",
    positionals: ["FROM", "TO"],
    options: {
      yes: { type: "boolean", help: "moving back: go back although FROM changed since the move (those changes are lost)" },
      "skip-orphans": { type: "boolean", help: "leave rows whose foreign key points at no row out (listed in a report file) instead of refusing" },
      "from-backup": { type: "boolean", help: "copy from a verified backup while the app keeps running (writes after it are missed)" },
    },
    build: (ctx) => {
      const from = target(ctx);
      const to = parseId(pos(ctx, 1), "TO", "a target id from flotilla targets");
      if (from === to) problem(`FROM and TO are both ${from}: name two targets of the same agent, one SQLite and one PostgreSQL`);
      return { verb: "move", from, to, yes: flag(ctx, "yes"), skipOrphans: flag(ctx, "skip-orphans"), fromBackup: flag(ctx, "from-backup") };
    },
  },
  scheduleVerb("schedule add", "a fleet-wide migration on a cron, within a maintenance window; refused if NAME exists (use --replace)"),
  scheduleVerb("schedule replace", "replace the schedule NAME (same options as schedule add)"),
  {
    name: "schedules",
    usage: "flotilla schedules",
    summary: "list schedules with their last run",
    positionals: [],
    options: {},
    build: () => ({ verb: "schedules" }),
  },
  {
    name: "schedule rm",
    usage: "flotilla schedule rm NAME",
    summary: "remove a schedule",
    positionals: ["NAME"],
    options: {},
    build: (ctx) => ({ verb: "schedule rm", name: parseId(pos(ctx, 0), "NAME", "sunday-prod") }),
  },
  {
    name: "audit",
    usage: "flotilla audit [--since T] [--until T] [--target X] [--actor X] [--action X] [--outcome O] [--limit N]",
    summary: "review the audit log",
    positionals: [],
    options: { since: O.since, until: O.until, target: O.target, actor: O.actor, action: O.action, outcome: O.outcome, limit: O.limit },
    build: (ctx) => ({ verb: "audit", query: auditQueryFrom(ctx) }),
  },
  {
    name: "audit verify",
    usage: "flotilla audit verify",
    summary: "check the hash chain; exit 1 and show the first broken entry when tampered",
    positionals: [],
    options: {},
    build: () => ({ verb: "audit verify" }),
  },
  {
    name: "audit export",
    usage: "flotilla audit export [--out FILE] [--since T] [--until T] [--target X] [--actor X] [--action X] [--outcome O]",
    summary: "export the audit log as JSON lines (to stdout without --out)",
    positionals: [],
    options: {
      out: { type: "string", help: "FILE  write here instead of stdout" },
      since: O.since,
      until: O.until,
      target: O.target,
      actor: O.actor,
      action: O.action,
      outcome: O.outcome,
    },
    build: (ctx) => {
      const out = str(ctx, "out");
      if (out === "") problem("--out needs a file name, e.g. --out audit.jsonl");
      return { verb: "audit export", query: auditQueryFrom(ctx), out: out ?? "" };
    },
  },
  {
    name: "help",
    usage: "flotilla help [VERB]",
    summary: "this help, or the help of one verb",
    positionals: [],
    options: {},
    build: () => ({ verb: "help", topic: "" }),
  },
];

const BY_NAME = new Map(VERBS.map((v) => [v.name, v]));
const SUBVERBS: Readonly<Record<string, readonly string[]>> = {
  rollout: ["show", "abort", "approve", "pause", "resume", "retry", "rollback"],
  schedule: ["add", "replace", "rm"],
  audit: ["verify", "export"],
};

const GROUPS: ReadonlyArray<readonly [string, readonly string[]]> = [
  ["inventory and health", ["targets", "diagnose"]],
  ["backups", ["backup", "backups", "restore", "drill", "bundle"]],
  [
    "migrations",
    [
      "plan",
      "rehearse",
      "rollout",
      "rollouts",
      "rollout show",
      "rollout approve",
      "rollout pause",
      "rollout resume",
      "rollout abort",
      "rollout retry",
      "rollout rollback",
      "downgrade",
      "stamp",
      "recover",
      "move",
    ],
  ],
  ["schedules", ["schedule add", "schedule replace", "schedules", "schedule rm"]],
  ["audit", ["audit", "audit verify", "audit export"]],
];

/** The full usage text (every verb, global options, exit codes). */
export function usageText(): string {
  const lines = [
    "flotilla — safe Alembic migrations across a fleet of databases",
    "",
    "usage: flotilla VERB [ARGS] [OPTIONS]      every verb takes --json",
    "",
  ];
  for (const [group, names] of GROUPS) {
    lines.push(`${group}:`);
    for (const n of names) {
      const v = BY_NAME.get(n);
      if (v === undefined) continue;
      lines.push(`  ${v.usage.replace(/^flotilla /, "")}`);
      lines.push(`      ${v.summary}`);
    }
  }
  lines.push(
    "other:",
    "  demo [--keep]      run the embedded demo end to end",
    "  certs init DIR --controller HOST --agent ID=HOST …   a CA and per-host certificates; certs check PATH shows them",
    "  help [VERB]        this help, or one verb's",
    "  --version          print the version",
    "",
  );
  lines.push("global options:");
  for (const [name, def] of Object.entries(GLOBAL_OPTIONS)) lines.push(`  ${optionHelp(name, def)}`);
  lines.push(
    "",
    "exit codes: 0 ok · 1 ran and failed, or problems found · 2 bad usage, nothing changed · 3 controller unreachable, or not authenticated/allowed",
  );
  return `${lines.join("\n")}\n`;
}

function optionHelp(name: string, def: OptionDef): string {
  const sp = def.help.indexOf("  ");
  const head = def.type === "string" && sp > 0 ? `--${name} ${def.help.slice(0, sp)}` : `--${name}${def.short === undefined ? "" : `, -${def.short}`}`;
  const text = def.type === "string" && sp > 0 ? def.help.slice(sp + 2) : def.help;
  return `${head.padEnd(26)} ${text}`;
}

/** Help for one verb (`rollout`, `rollout show`, `schedule`, …); undefined when unknown. */
export function verbHelp(topic: string): string | undefined {
  const v = BY_NAME.get(topic);
  if (v === undefined) {
    const subs = Object.hasOwn(SUBVERBS, topic) ? SUBVERBS[topic] : undefined;
    if (subs === undefined)
      return topic === "demo"
        ? "usage: flotilla demo [--keep]\n  run the embedded demo end to end; --keep leaves the fleet running so you can explore it\n"
        : undefined;
    return `${subs.map((s) => verbHelp(`${topic} ${s}`) ?? "").join("\n")}`;
  }
  const lines = [`usage: ${v.usage}`, `  ${v.summary}`];
  const opts = Object.entries(v.options);
  if (opts.length > 0) {
    lines.push("", "options:");
    for (const [name, def] of opts) lines.push(`  ${optionHelp(name, def)}`);
  }
  lines.push("", "global options: --controller URL, --token T, --ca FILE, --json (see flotilla help)");
  return `${lines.join("\n")}\n`;
}

// ---------------------------------------------------------------------------------------------

/**
 * Parses and validates a whole command line (argv without node and the script).
 * Global options may come before or after the verb. Never does I/O; `now`
 * anchors relative times (`--since 1h`).
 */
export function parseCommandLine(argv: readonly string[], env: Readonly<Record<string, string | undefined>>, now: Date): ParseResult {
  const jsonWanted = wantsJson(argv);
  try {
    return parseOrThrow(argv, env, now);
  } catch (err) {
    if (err instanceof UsageProblem) return { ok: false, message: err.message, json: jsonWanted };
    throw err;
  }
}

/** True when --json appears among the options (before any `--`). */
export function wantsJson(argv: readonly string[]): boolean {
  for (const a of argv) {
    if (a === "--") return false;
    if (a === "--json") return true;
  }
  return false;
}

function parseOrThrow(argv: readonly string[], env: Readonly<Record<string, string | undefined>>, now: Date): ParseResult {
  // Global options may precede the verb: skip them (with their values) to find it.
  const lead: string[] = [];
  let i = 0;
  while (i < argv.length) {
    const a = argv[i] ?? "";
    if (!a.startsWith("-") || a === "-" || a === "--") break;
    const name = a.replace(/^--?/, "").split("=")[0] ?? "";
    const takesValue = Object.hasOwn(GLOBAL_OPTIONS, name) && GLOBAL_OPTIONS[name]?.type === "string" && !a.includes("=");
    lead.push(a);
    if (takesValue && argv[i + 1] !== undefined) lead.push(argv[i + 1] ?? "");
    i += takesValue ? 2 : 1;
  }
  const first = argv[i];

  if (first === undefined || first === "version" || first === "demo") {
    const leadOnly = scan(lead, { ...GLOBAL_OPTIONS, version: { type: "boolean", help: "print the version" } }, "flotilla");
    if (leadOnly.positionals.length > 0) problem(`unexpected argument ${JSON.stringify(leadOnly.positionals[0])}; run flotilla help`);
    const globals = globalsFrom(leadOnly.values, env);
    // The demo parses its own options (--keep, …).
    if (first === "demo") return ok(globals, { verb: "demo", argv: argv.slice(i + 1) }, []);
    if (first === "version" || leadOnly.values.get("version") === true) return ok(globals, { verb: "version" }, []);
    if (leadOnly.values.get("help") === true) return ok(globals, { verb: "help", topic: "" }, []);
    problem(`no verb given; run flotilla help for the list (e.g. flotilla targets)`);
  }

  let name = first;
  let rest = argv.slice(i + 1);
  const subs = Object.hasOwn(SUBVERBS, first) ? SUBVERBS[first] : undefined;
  if (subs !== undefined && rest[0] !== undefined && subs.includes(rest[0])) {
    name = `${first} ${rest[0]}`;
    rest = rest.slice(1);
  } else if (first === "schedule") {
    if (rest.includes("--help") || rest.includes("-h")) return ok(globalsFrom(new Map(), env), { verb: "help", topic: "schedule" }, []);
    problem(
      `schedule needs add or rm (e.g. flotilla schedule add NAME --cron "0 3 * * 0" --selector env=prod --strategy maintenance); list them with flotilla schedules`,
    );
  }
  const def = BY_NAME.get(name);
  if (def === undefined) {
    problem(`unknown verb ${JSON.stringify(first)}; run flotilla help for the list`);
  }

  const options: Record<string, OptionDef> = { ...GLOBAL_OPTIONS, ...def.options };
  const { values, positionals } = scan([...lead, ...rest], options, def.name);

  if (def.name === "help") {
    const topic = positionals.join(" ");
    if (topic !== "" && verbHelp(topic) === undefined) problem(`no help for ${JSON.stringify(topic)}; run flotilla help for the list`);
    return ok(globalsFrom(values, env), { verb: "help", topic }, []);
  }
  if (values.get("help") === true) return ok(globalsFrom(values, env), { verb: "help", topic: def.name }, []);

  // Positionals written "[NAME]" are optional (only at the end).
  const required = def.positionals.filter((p) => !p.startsWith("[")).length;
  if (positionals.length < required) {
    const missing = def.positionals.slice(positionals.length, required).join(" ");
    problem(`${def.name}: missing ${missing}; usage: ${def.usage}`);
  }
  if (positionals.length > def.positionals.length) {
    const extra = positionals[def.positionals.length] ?? "";
    problem(`${def.name}: unexpected argument ${JSON.stringify(extra)}; usage: ${def.usage}`);
  }

  const globals = globalsFrom(values, env);
  const notes: string[] = [];
  const command = def.build({ values, positionals, now, notes });
  return ok(globals, command, notes);
}

function ok(globals: GlobalOptions, command: Command, notes: readonly string[]): ParseResult {
  return { ok: true, globals, command, notes };
}

function globalsFrom(values: Values, env: Readonly<Record<string, string | undefined>>): GlobalOptions {
  const flagUrl = values.get("controller");
  const envUrl = env["FLOTILLA_CONTROLLER"];
  const controller =
    typeof flagUrl === "string"
      ? parseControllerUrl(flagUrl, "--controller")
      : envUrl !== undefined && envUrl !== ""
        ? parseControllerUrl(envUrl, "FLOTILLA_CONTROLLER")
        : DEFAULT_CONTROLLER;
  const flagToken = values.get("token");
  const envToken = env["FLOTILLA_TOKEN"];
  const token = typeof flagToken === "string" ? flagToken : envToken !== undefined && envToken !== "" ? envToken : undefined;
  if (token !== undefined && /[\s\u0000-\u001f]/.test(token))
    problem("the token contains whitespace or control characters; check --token or FLOTILLA_TOKEN (a token file with a trailing newline?)");
  const flagCa = values.get("ca");
  const envCa = env["FLOTILLA_CA"];
  const ca = typeof flagCa === "string" && flagCa !== "" ? flagCa : envCa !== undefined && envCa !== "" ? envCa : undefined;
  return { controller, token, json: values.get("json") === true, ...(ca !== undefined ? { ca } : {}) };
}

/**
 * Runs node:util parseArgs (non-strict, with tokens) and checks every token
 * itself, so each mistake gets a message that says what to do.
 */
function scan(args: readonly string[], options: Readonly<Record<string, OptionDef>>, verb: string): { values: Values; positionals: string[] } {
  const config: Record<string, { type: "string" | "boolean"; short?: string }> = {};
  for (const [name, def] of Object.entries(options)) config[name] = def.short === undefined ? { type: def.type } : { type: def.type, short: def.short };
  const { tokens } = parseArgs({ args: [...args], options: config, strict: false, allowPositionals: true, tokens: true });
  const values = new Map<string, string | true>();
  const positionals: string[] = [];
  for (const token of tokens) {
    if (token.kind === "positional") {
      positionals.push(token.value);
      continue;
    }
    if (token.kind !== "option") continue;
    // Own keys only: `--constructor` is not an option because every object has one.
    const def = Object.hasOwn(options, token.name) ? options[token.name] : undefined;
    if (def === undefined) {
      problem(
        verb === "flotilla"
          ? `unknown option ${token.rawName}; run flotilla help`
          : `${verb}: unknown option ${token.rawName}; run flotilla ${verb} --help for its options`,
      );
    }
    if (def.type === "boolean") {
      if (token.value !== undefined) problem(`${token.rawName} takes no value (got ${JSON.stringify(token.value)}); write just ${token.rawName}`);
      values.set(token.name, true);
      continue;
    }
    const v = token.value;
    const looksLikeOption = v !== undefined && !token.inlineValue && v.startsWith("-") && !/^-\d/.test(v);
    if (v === undefined || looksLikeOption) {
      problem(`${token.rawName} needs a value (${def.help.split("  ")[0] ?? "VALUE"}); e.g. ${token.rawName} ${exampleFor(token.name)}`);
    }
    values.set(token.name, v);
  }
  return { values, positionals };
}

function exampleFor(name: string): string {
  switch (name) {
    case "selector":
      return "env=prod";
    case "to":
      return "head";
    case "strategy":
      return "maintenance";
    case "waves":
      return "1,25%,100%";
    case "window":
      return "2h";
    case "max-failures":
      return "0";
    case "cron":
      return '"0 3 * * 0"';
    case "since":
    case "until":
      return "1h";
    case "limit":
      return "50";
    case "controller":
      return DEFAULT_CONTROLLER;
    case "reason":
      return STAMP_REASONS[0];
    case "out":
      return "audit.jsonl";
    default:
      return "VALUE";
  }
}
