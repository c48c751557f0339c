/**
 * The one rollout request contract: the rules for strategy, selector, waves,
 * window and other durations, revision, gate, failure limit, cron, time zone
 * and names live here and nowhere else. Every entry (CLI, HTTP, gRPC,
 * schedules, the controller's config file) compiles its input with this
 * module into one frozen RolloutSpec.
 *
 * Pure: no I/O, no clock. Problems are values ({ field, message }); the
 * message never names the field, so each entry prefixes its own spelling
 * (`--to` in the CLI, `to_revision` on the API, `schedules[0].to` in config).
 */
import { FlotillaError } from "./errors.js";
import { Strategy as ProtoStrategy, StrategySchema } from "./gen/flotilla/v1/controller_pb.js";
import { enumShortName, enumShortNames } from "./proto-json.js";

export { ProtoStrategy };

type Kebab<S extends string> = S extends `${infer A}_${infer B}` ? `${A}-${Kebab<B>}` : S;

/**
 * A strategy as users write it. The names come from the proto enum
 * flotilla.v1.Strategy, the only list of them: STRATEGY_BLUE_GREEN is
 * "blue-green" (proto-json.ts's short name), here and in the HTTP API.
 */
export type Strategy = Kebab<Lowercase<Exclude<keyof typeof ProtoStrategy, "UNSPECIFIED">>>;

/** The rollout strategies' names, in the proto's order. */
export const STRATEGIES: readonly Strategy[] = Object.freeze(enumShortNames(StrategySchema) as Strategy[]);

/** What a plan (or a drill schedule, which runs no migration) assumes when no strategy is given. */
export const DEFAULT_STRATEGY: Strategy = "maintenance";

/** Strategies that run old and new application code side by side (need additive revisions). */
export const SIDE_BY_SIDE_STRATEGIES: readonly Strategy[] = ["job", "blue-green"];

/** A validated value, or what was wrong with it (phrased without the field name). */
export type Checked<T> = { readonly ok: true; readonly value: T; readonly note?: string } | { readonly ok: false; readonly problem: string };

/** One problem with one field of a request; `field` is the API's field path (proto spelling). */
export interface FieldProblem {
  readonly field: string;
  readonly message: string;
}

const good = <T>(value: T, note?: string): Checked<T> => (note === undefined ? { ok: true, value } : { ok: true, value, note });
const bad = <T>(problem: string): Checked<T> => ({ ok: false, problem });
const q = (s: string): string => JSON.stringify(s);

// ------------------------------------------------------------------ single values

const LABEL = /^[A-Za-z0-9._/-]+$/;

/** `k=v[,k=v]`: keys and values [A-Za-z0-9._/-]+, each key once; `id=X` names one target. Returns it normalized. */
export function checkSelector(raw: string): Checked<string> {
  const parts = raw.split(",").map((p) => p.trim());
  const seen = new Set<string>();
  for (const part of parts) {
    const eq = part.indexOf("=");
    const key = eq < 0 ? part : part.slice(0, eq);
    const value = eq < 0 ? "" : part.slice(eq + 1);
    if (eq < 0 || !LABEL.test(key) || !LABEL.test(value)) {
      return bad(
        `${q(raw)} is not a selector; use key=value pairs separated by commas, like env=prod,region=eu (letters, digits and . _ / - only; id=TARGET for one target)`,
      );
    }
    if (seen.has(key)) return bad(`${q(raw)} gives ${key} twice; give each label once`);
    seen.add(key);
  }
  return good(parts.join(","));
}

/** The pairs of a selector that passed checkSelector. */
export function selectorPairs(selector: string): Array<[string, string]> {
  return selector.split(",").map((part) => {
    const eq = part.indexOf("=");
    return [part.slice(0, eq).trim(), part.slice(eq + 1).trim()];
  });
}

/** True when every pair matches the target's labels (`id` matches the target id). */
export function matchesSelector(
  target: { readonly id: string; readonly labels: Readonly<Record<string, string>> },
  pairs: ReadonlyArray<readonly [string, string]>,
): boolean {
  return pairs.every(([k, v]) => (k === "id" ? target.id === v : target.labels[k] === v));
}

/**
 * Waves: positive counts or 1–100%, cumulative, each kind ascending. The
 * last wave must cover every target: "100%" is appended (with a note) when absent.
 */
export function checkWaves(raw: string): Checked<string> {
  const hint = "use counts or percentages like 1,25%,100%";
  const items = raw.split(",").map((w) => w.trim());
  let lastCount = 0;
  let lastPercent = 0;
  for (const item of items) {
    const pct = /^(\d{1,3})%$/.exec(item);
    if (pct !== null) {
      const n = Number(pct[1]);
      if (n < 1 || n > 100) return bad(`${q(raw)} has ${item}; a percentage must be 1% to 100%; ${hint}`);
      if (n <= lastPercent) return bad(`${q(raw)} is not ascending (${item} after ${lastPercent}%); waves are cumulative, ${hint}`);
      lastPercent = n;
    } else if (/^\d{1,6}$/.test(item)) {
      const n = Number(item);
      if (n < 1) return bad(`${q(raw)} has an empty wave (0); ${hint}`);
      if (n <= lastCount) return bad(`${q(raw)} is not ascending (${item} after ${lastCount}); waves are cumulative, ${hint}`);
      lastCount = n;
    } else {
      return bad(`${q(raw)} is not a wave list; ${hint}`);
    }
  }
  if (items[items.length - 1] === "100%") return good(items.join(","));
  const value = [...items, "100%"].join(",");
  return good(value, `waves ${raw}: added a last wave of 100% so every selected target is included (${value})`);
}

/** Wave sizes for `total` targets from waves that passed checkWaves ("" = one wave). Never an empty wave. */
export function waveSizes(waves: string, total: number): number[] {
  const cumulative = (waves === "" ? ["100%"] : waves.split(",")).map((item) =>
    item.endsWith("%") ? Math.ceil((total * Number(item.slice(0, -1))) / 100) : Math.min(Number(item), total),
  );
  const sizes: number[] = [];
  let done = 0;
  for (const c of cumulative) {
    if (c > done) {
      sizes.push(c - done);
      done = c;
    }
  }
  if (done < total) sizes.push(total - done);
  return sizes;
}

export function isStrategy(raw: string): raw is Strategy {
  return (STRATEGIES as readonly string[]).includes(raw);
}

/** The proto enum value of a strategy name. */
export function strategyToProto(name: Strategy): ProtoStrategy {
  return StrategySchema.values.find((v) => enumShortName(v) === name)?.number ?? ProtoStrategy.UNSPECIFIED;
}

/** The name of a proto enum value; "" for UNSPECIFIED or a number this build does not know. */
export function strategyName(value: ProtoStrategy): Strategy | "" {
  const v = StrategySchema.values.find((x) => x.number === value);
  return v === undefined ? "" : (enumShortName(v) as Strategy | "");
}

/** A strategy by name (CLI, config, HTTP) or by proto enum number (gRPC). */
export function checkStrategy(raw: string | ProtoStrategy): Checked<Strategy> {
  if (typeof raw === "number") {
    const name = strategyName(raw);
    return name === "" ? bad(`${raw} is not a strategy number; use one of ${STRATEGIES.map((s) => `${s} (${strategyToProto(s)})`).join(", ")}`) : good(name);
  }
  return isStrategy(raw) ? good(raw) : bad(`${q(raw)} is not a strategy; use one of ${STRATEGIES.join(", ")}`);
}

/** `head`, or an Alembic revision id [A-Za-z0-9_]{1,64}. */
export function checkRevision(raw: string): Checked<string> {
  if (raw === "head" || /^[A-Za-z0-9_]{1,64}$/.test(raw)) return good(raw);
  return bad(`${q(raw)} is not a revision; use head or a revision id like 1b8c9d0e1f2a (letters, digits, _; at most 64)`);
}

const DURATION = /^(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?$/;

/** "90s", "30m", "2h", "1h30m", "1d" → milliseconds (> 0); undefined when malformed. */
export function durationMs(raw: string): number | undefined {
  const text = raw.trim();
  const m = DURATION.exec(text);
  if (m === null || text === "") return undefined;
  const [d, h, min, s] = [m[1], m[2], m[3], m[4]].map((x) => (x === undefined ? 0 : Number(x))) as [number, number, number, number];
  const ms = (((d * 24 + h) * 60 + min) * 60 + s) * 1000;
  return ms > 0 ? ms : undefined;
}

export function checkDuration(raw: string): Checked<string> {
  return durationMs(raw) === undefined ? bad(`${q(raw)} is not a duration; use forms like 30m, 2h, 1h30m`) : good(raw.trim());
}

/** Failed targets tolerated before a rollout halts: a whole number 0…10000. */
export function checkMaxFailures(raw: number | string): Checked<number> {
  const text = String(raw).trim();
  if (!/^\d{1,5}$/.test(text) || Number(text) > 10_000) return bad(`${q(text)} is not a whole number ≥ 0; use e.g. 0 (halt at the first failure)`);
  return good(Number(text));
}

/** `""` (no gate), `manual`, or `manual:DURATION` (the approval expires after DURATION and the rollout halts). */
export function checkGate(raw: string): Checked<string> {
  const text = raw.trim();
  if (text === "" || text === "manual") return good(text);
  const m = /^manual:(.+)$/.exec(text);
  if (m !== null && durationMs(m[1]!) !== undefined) return good(text);
  return bad(
    `${q(raw)} is not a gate; use manual (wait for flotilla rollout approve after each wave) or manual:DURATION like manual:30m (halt when nobody approves in time)`,
  );
}

/** How long a gate waits before it expires; undefined: no expiry (or no gate). */
export function gateTimeoutMs(gate: string): number | undefined {
  return gate.startsWith("manual:") ? durationMs(gate.slice("manual:".length)) : undefined;
}

const ID = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/;

/** A schedule or target name: letters, digits, . _ - (at most 64, starting with a letter or digit). */
export function checkName(raw: string): Checked<string> {
  return ID.test(raw) ? good(raw) : bad(`${q(raw)} is not a name; use letters, digits, . _ - (at most 64, e.g. sunday-prod)`);
}

const CRON_FIELDS = [
  { name: "minute", min: 0, max: 59, names: [] as string[] },
  { name: "hour", min: 0, max: 23, names: [] as string[] },
  { name: "day-of-month", min: 1, max: 31, names: [] as string[] },
  { name: "month", min: 1, max: 12, names: ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"] },
  { name: "day-of-week", min: 0, max: 7, names: ["sun", "mon", "tue", "wed", "thu", "fri", "sat"] },
] as const;

function cronValue(text: string, field: (typeof CRON_FIELDS)[number]): number | undefined {
  if (/^\d{1,2}$/.test(text)) {
    const n = Number(text);
    return n >= field.min && n <= field.max ? n : undefined;
  }
  const i = (field.names as readonly string[]).indexOf(text.toLowerCase());
  if (i < 0) return undefined;
  return field.name === "month" ? i + 1 : i;
}

/** Five cron fields (minute hour day-of-month month day-of-week): *, N, A-B, lists, steps (/N), month and weekday names. Returns it normalized. */
export function checkCron(raw: string): Checked<string> {
  const fields = raw
    .trim()
    .split(/\s+/)
    .filter((f) => f !== "");
  const example = 'e.g. "0 3 * * 0" (Sundays at 03:00); quote it';
  if (fields.length !== 5) {
    return bad(
      `${q(raw)} has ${fields.length} field${fields.length === 1 ? "" : "s"}; a cron expression has 5: minute hour day-of-month month day-of-week, ${example}`,
    );
  }
  for (let i = 0; i < 5; i++) {
    const text = fields[i]!;
    const field = CRON_FIELDS[i]!;
    for (const item of text.split(",")) {
      const m = /^(\*|[A-Za-z0-9]+(?:-[A-Za-z0-9]+)?)(?:\/(\d{1,2}))?$/.exec(item);
      let okItem = m !== null;
      if (m !== null) {
        const [range, step] = [m[1]!, m[2]];
        if (step !== undefined && Number(step) < 1) okItem = false;
        if (range !== "*") {
          const [a, b] = range.split("-");
          const lo = cronValue(a!, field);
          const hi = b === undefined ? lo : cronValue(b, field);
          if (lo === undefined || hi === undefined || hi < lo) okItem = false;
        }
      }
      if (!okItem)
        return bad(
          `${q(text)} is not a valid ${field.name} field (${field.min}-${field.max}${field.names.length ? ` or names like ${field.names.slice(0, 3).join(",")}` : ""}; *, lists, ranges and /steps allowed); ${example}`,
        );
    }
  }
  return good(fields.join(" "));
}

/** An IANA time zone like Europe/Berlin or UTC ("" = the controller's own). */
export function checkTimeZone(raw: string): Checked<string> {
  if (raw === "") return good("");
  try {
    new Intl.DateTimeFormat("en-US", { timeZone: raw });
    return good(raw);
  } catch {
    return bad(`${q(raw)} is not a time zone; use an IANA name like UTC or Europe/Berlin`);
  }
}

// ------------------------------------------------------------------ whole requests

/** A rollout request as it arrives from any entry; empty string / 0 / undefined mean "not given". */
export interface RolloutRequestInput {
  readonly selector?: string;
  readonly toRevision?: string;
  /** A name (CLI, config, HTTP JSON) or the proto enum (gRPC); "" / UNSPECIFIED: not given. */
  readonly strategy?: string | ProtoStrategy;
  readonly waves?: string;
  readonly maxFailures?: number | string;
  readonly window?: string;
  readonly gate?: string;
  readonly allowBreaking?: boolean;
  /** Name of the schedule that started it. */
  readonly schedule?: string;
}

/** A compiled rollout request: every field valid and normalized, frozen. */
export interface RolloutSpec {
  readonly selector: string;
  readonly toRevision: string;
  readonly strategy: Strategy;
  /** Normalized cumulative waves ending in 100%, or "" for one wave. */
  readonly waves: string;
  readonly maxFailures: number;
  /** Maintenance window length ("" = none). */
  readonly window: string;
  /** "" | manual | manual:DURATION */
  readonly gate: string;
  readonly allowBreaking: boolean;
  readonly schedule: string;
}

export type Compiled<T> =
  | { readonly ok: true; readonly value: T; readonly notes: readonly string[] }
  | { readonly ok: false; readonly problems: readonly FieldProblem[] };

/** Field paths of the rollout request (the proto's spelling). */
export const ROLLOUT_FIELDS = {
  selector: "selector",
  toRevision: "to_revision",
  strategy: "strategy",
  waves: "waves",
  maxFailures: "max_failures",
  window: "window",
  gate: "gate",
  schedule: "schedule",
  name: "name",
  cron: "cron",
  timeZone: "time_zone",
} as const;

class Collector {
  readonly problems: FieldProblem[] = [];
  readonly notes: string[] = [];
  take<T>(field: string, checked: Checked<T>): T | undefined {
    if (!checked.ok) {
      this.problems.push({ field, message: checked.problem });
      return undefined;
    }
    if (checked.note !== undefined) this.notes.push(checked.note);
    return checked.value;
  }
  missing(field: string, message: string): undefined {
    this.problems.push({ field, message });
    return undefined;
  }
}

function collectSpec(c: Collector, input: RolloutRequestInput, opts: { strategyRequired: boolean; defaultWindow?: string }): RolloutSpec | undefined {
  const F = ROLLOUT_FIELDS;
  const selectorRaw = input.selector ?? "";
  const selector =
    selectorRaw.trim() === ""
      ? c.missing(F.selector, "is required, e.g. env=prod (use id=TARGET for one target)")
      : c.take(F.selector, checkSelector(selectorRaw));
  const toRevision = c.take(F.toRevision, checkRevision(input.toRevision || "head"));
  const strategyRaw = input.strategy ?? "";
  const strategy =
    strategyRaw === "" || strategyRaw === ProtoStrategy.UNSPECIFIED
      ? opts.strategyRequired
        ? c.missing(F.strategy, `is required; use one of ${STRATEGIES.join(", ")}`)
        : DEFAULT_STRATEGY
      : c.take(F.strategy, checkStrategy(strategyRaw));
  const waves = input.waves ? c.take(F.waves, checkWaves(input.waves)) : "";
  const maxFailures = c.take(F.maxFailures, checkMaxFailures(input.maxFailures ?? 0));
  const windowRaw = input.window || opts.defaultWindow || "";
  const window = windowRaw === "" ? "" : c.take(F.window, checkDuration(windowRaw));
  const gate = c.take(F.gate, checkGate(input.gate ?? ""));
  const schedule = input.schedule ? c.take(F.schedule, checkName(input.schedule)) : "";
  if (
    selector === undefined ||
    toRevision === undefined ||
    strategy === undefined ||
    waves === undefined ||
    maxFailures === undefined ||
    window === undefined ||
    gate === undefined ||
    schedule === undefined
  )
    return undefined;
  return { selector, toRevision, strategy, waves, maxFailures, window, gate, allowBreaking: input.allowBreaking === true, schedule };
}

/**
 * Compiles a rollout request. `strategyRequired` (start) or not (plan, which
 * defaults to maintenance). Every problem is reported at once.
 */
export function compileRolloutRequest(input: RolloutRequestInput, opts: { strategyRequired: boolean }): Compiled<RolloutSpec> {
  const c = new Collector();
  const spec = collectSpec(c, input, opts);
  if (spec === undefined || c.problems.length > 0) return { ok: false, problems: c.problems };
  return { ok: true, value: Object.freeze(spec), notes: c.notes };
}

/** A schedule request: a rollout request plus when it fires. */
export interface ScheduleRequestInput extends RolloutRequestInput {
  readonly name?: string;
  readonly cron?: string;
  readonly timeZone?: string;
}

export interface ScheduleSpec {
  readonly name: string;
  readonly cron: string;
  readonly timeZone: string;
  readonly rollout: RolloutSpec;
}

/** Default maintenance window of a scheduled rollout. */
export const DEFAULT_SCHEDULE_WINDOW = "2h";

/** Compiles a schedule request (name, cron, time zone and its rollout; window defaults to 2h). */
export function compileScheduleRequest(input: ScheduleRequestInput): Compiled<ScheduleSpec> {
  const c = new Collector();
  const F = ROLLOUT_FIELDS;
  const name = c.take(F.name, checkName(input.name ?? ""));
  const cron =
    (input.cron ?? "").trim() === "" ? c.missing(F.cron, 'is required, e.g. "0 3 * * 0" (Sundays at 03:00)') : c.take(F.cron, checkCron(input.cron ?? ""));
  const timeZone = c.take(F.timeZone, checkTimeZone(input.timeZone ?? ""));
  const rollout = collectSpec(c, { ...input, schedule: "" }, { strategyRequired: true, defaultWindow: DEFAULT_SCHEDULE_WINDOW });
  if (name === undefined || cron === undefined || timeZone === undefined || rollout === undefined || c.problems.length > 0)
    return { ok: false, problems: c.problems };
  return { ok: true, value: Object.freeze({ name, cron, timeZone, rollout: Object.freeze({ ...rollout, schedule: name }) }), notes: c.notes };
}

/** "field: message; field: message" — how the API reports problems. */
export function describeProblems(problems: readonly FieldProblem[], label: (field: string) => string = (f) => f): string {
  return problems.map((p) => `${label(p.field)}: ${p.message}`).join("; ");
}

/** The value, or FlotillaError INVALID_ARGUMENT naming every field that was wrong. */
export function orInvalidArgument<T>(compiled: Compiled<T>): { value: T; notes: readonly string[] } {
  if (!compiled.ok) throw new FlotillaError("INVALID_ARGUMENT", `${describeProblems(compiled.problems)}; nothing was changed`);
  return { value: compiled.value, notes: compiled.notes };
}
