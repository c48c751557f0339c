/**
 * The rollout sequencer: a pure state machine. Every change to a rollout —
 * start, a step's result, resume after a controller restart, abort, pause,
 * resume, approve, a gate or window expiring, rollback — is one call of
 * `transition(rollout, event)`, which returns the next rollout document and
 * the commands the driver must carry out (run a step on an agent, ask an
 * agent's journal, wake up at a time, finish). It never does I/O, never reads
 * the clock (events carry `now`) and never throws for an operator's mistake:
 * a control that does not apply comes back as a `refusal` and changes nothing.
 */
import type { ErrorCode } from "../../common/errors.js";
import { durationMs, gateTimeoutMs } from "../../common/rollout-request.js";
import type { RolloutDoc, RolloutTargetDoc, StepDoc } from "./ports.js";

/** Rollout states as stored and shown. */
export type RolloutState = "pending" | "running" | "succeeded" | "failed" | "halted" | "aborted" | "rolled-back";
/** Target states as stored and shown. */
export type TargetState = "pending" | "running" | "succeeded" | "up-to-date" | "failed" | "restored" | "needs-restore" | "skipped" | "aborted" | "rolled-back";
/** Every step a target can take. */
export type StepName =
  | "precheck"
  | "stop"
  | "backup"
  | "migrate"
  | "verify"
  | "start"
  | "health"
  | "restart"
  | "clone"
  | "migrate-green"
  | "start-green"
  | "health-green"
  | "switch"
  | "stop-green"
  | "rollback-switch"
  | "rollback-stop"
  | "rollback-restore"
  | "rollback-start"
  | "rollback-verify";
/** What the agent did to the target (OperationResult.effect). */
export type Effect = "none" | "changed" | "restored" | "needs-restore" | "up-to-date";

/** A step's outcome as a value: what happened, its error code, and the agent's effect. */
export type StepResult =
  | {
      readonly outcome: "succeeded";
      readonly effect: Effect;
      readonly detail: string;
      readonly revisionBefore?: readonly string[];
      readonly revisionAfter?: readonly string[];
      readonly backupId?: string;
    }
  | { readonly outcome: "failed"; readonly code: ErrorCode; readonly effect: Effect; readonly detail: string; readonly revisionAfter?: readonly string[] }
  /** The agent cannot say how the step ended (unreachable, journal lost). */
  | { readonly outcome: "unknown"; readonly code: ErrorCode; readonly detail: string }
  /**
   * The agent's journal proves the step started and was cut off by the agent
   * stopping (kill -9, a crash, a reboot). `operations` are the agent
   * operations it left interrupted, holding the target's lock.
   */
  | { readonly outcome: "interrupted"; readonly code: ErrorCode; readonly detail: string; readonly operations: readonly string[] }
  /** The agent's journal has no record: the step never started and may run again. */
  | { readonly outcome: "not-started"; readonly detail: string };

export type SequencerEvent =
  | { readonly kind: "start"; readonly now: string }
  | { readonly kind: "restarted"; readonly now: string }
  | { readonly kind: "step-finished"; readonly now: string; readonly targetId: string; readonly index: number; readonly result: StepResult }
  | { readonly kind: "tick"; readonly now: string }
  | { readonly kind: "abort"; readonly now: string; readonly actor: string }
  | { readonly kind: "pause"; readonly now: string; readonly actor: string }
  | { readonly kind: "resume"; readonly now: string; readonly actor: string }
  | { readonly kind: "approve"; readonly now: string; readonly actor: string }
  | { readonly kind: "rollback"; readonly now: string; readonly actor: string };

export type SequencerCommand =
  /** Run one step on its agent and report a step-finished event. The document is saved first. */
  | { readonly kind: "run-step"; readonly targetId: string; readonly index: number; readonly step: StepDoc }
  /** Ask the step's agent's journal how the step ended (after a controller restart); report step-finished. */
  | { readonly kind: "resolve-step"; readonly targetId: string; readonly index: number; readonly step: StepDoc }
  /** Send a tick at this time (a gate expiring). */
  | { readonly kind: "wake-at"; readonly at: string }
  /** The rollout ended: release its leases and write the audit row. */
  | { readonly kind: "finish"; readonly status: RolloutState };

export interface Refusal {
  readonly code: ErrorCode;
  readonly message: string;
}

export interface Transition {
  readonly doc: RolloutDoc;
  readonly commands: readonly SequencerCommand[];
  /** Set when the event does not apply; `doc` is then the unchanged input. */
  readonly refusal?: Refusal;
}

/** Targets worked on at once within a wave. */
export const TARGET_CONCURRENCY = 8;

const TERMINAL: ReadonlySet<string> = new Set(["succeeded", "failed", "halted", "aborted", "rolled-back"]);
const TARGET_DONE: ReadonlySet<string> = new Set(["succeeded", "up-to-date", "failed", "restored", "needs-restore", "skipped", "aborted", "rolled-back"]);
const TARGET_BAD: ReadonlySet<string> = new Set(["failed", "restored", "needs-restore"]);
/** Steps after which the target's database (or its traffic) has changed. */
const CHANGING_STEPS: ReadonlySet<string> = new Set(["migrate", "migrate-green", "switch"]);
/**
 * Steps that are safe to run again from the start after their agent was
 * interrupted in them. `restart` (the job strategy's rolling stop + start of
 * app instances) is idempotent: stopping stopped instances and starting them
 * again leaves them running on the new code, whatever point the previous run
 * reached, and it never touches the database. So an interrupted restart is
 * re-run — after the agent completes the operations the cut-off run left
 * interrupted — instead of failing the target and waiting for a person.
 * Database-changing steps are not here: see `isRerunnable`.
 */
const RERUNNABLE_STEPS: ReadonlySet<string> = new Set(["restart"]);

/**
 * Whether an interrupted step runs again. Besides RERUNNABLE_STEPS, the `migrate`
 * of a job rollout: it ran online, so the app kept writing and restoring the
 * backup would drop those rows; the re-run goes forward instead (the agent's
 * Recover "forward": from the revision the database reached, when its safety
 * policy finds it on the path, else needs-restore naming what a restore loses).
 * A maintenance migrate is never re-run: the apps were stopped, and its
 * interruption is resolved by restoring the backup taken before it.
 */
function isRerunnable(doc: RolloutDoc, s: StepDoc): boolean {
  return RERUNNABLE_STEPS.has(s.name) || (s.name === "migrate" && doc.spec.strategy === "job");
}
/** Runs of one step at most (the first and two re-runs), so an agent that dies every time cannot loop a rollout forever. */
export const MAX_STEP_ATTEMPTS = 3;

export function isTerminal(status: string): boolean {
  return TERMINAL.has(status);
}

/** Deterministic operation id of a step's run (journal key on the agent); every re-run gets its own. */
export function operationIdOf(rolloutId: string, targetId: string, index: number, step: StepDoc): string {
  const attempt = step.attempt ?? 1;
  return `${rolloutId}.${targetId}.${index}.${step.name}.${step.agentId}${attempt > 1 ? `.a${attempt}` : ""}`;
}

/** A re-run of an interrupted step: it finishes what a started step began, so it runs even when paused or aborting. */
function isRerun(s: StepDoc): boolean {
  return (s.attempt ?? 1) > 1;
}

/** The one transition function. The input is not modified. */
export function transition(input: RolloutDoc, event: SequencerEvent): Transition {
  const doc = structuredClone(input);
  const refuse = (code: ErrorCode, message: string): Transition => ({ doc: input, commands: [], refusal: { code, message } });
  const commands: SequencerCommand[] = [];
  switch (event.kind) {
    case "start":
      if (doc.status !== "pending") return refuse("PRECONDITION_FAILED", `rollout ${doc.id} is ${doc.status}, not pending`);
      doc.status = "running";
      break;
    case "restarted":
      if (isTerminal(doc.status)) return { doc: input, commands: [] };
      if (doc.status === "pending") doc.status = "running";
      for (const t of doc.targets) {
        t.steps.forEach((s, index) => {
          if (s.state === "running") commands.push({ kind: "resolve-step", targetId: t.targetId, index, step: { ...s } });
        });
      }
      break;
    case "step-finished": {
      const t = doc.targets.find((x) => x.targetId === event.targetId);
      const s = t?.steps[event.index];
      if (t === undefined || s === undefined || s.state !== "running")
        return refuse("PRECONDITION_FAILED", `no running step ${event.index} on ${event.targetId}`);
      applyResult(doc, t, s, event.result, event.now);
      break;
    }
    case "tick":
      if (isTerminal(doc.status)) return { doc: input, commands: [] };
      break;
    case "abort":
      if (isTerminal(doc.status) || doc.phase === "rollback")
        return refuse(
          "PRECONDITION_FAILED",
          `rollout ${doc.id} is ${doc.phase === "rollback" ? "rolling back" : doc.status}; only a pending or running rollout can be aborted`,
        );
      doc.abortRequested = true;
      doc.message = `abort requested by ${event.actor}: running steps finish, no new step starts`;
      break;
    case "pause":
      if (isTerminal(doc.status)) return refuse("PRECONDITION_FAILED", `rollout ${doc.id} is ${doc.status}; only a running rollout can be paused`);
      if (doc.paused) return refuse("PRECONDITION_FAILED", `rollout ${doc.id} is already paused; resume it with flotilla rollout resume ${doc.id}`);
      doc.paused = true;
      doc.message = `paused by ${event.actor}: running steps finish, no new step starts; resume with flotilla rollout resume ${doc.id}`;
      break;
    case "resume":
      if (isTerminal(doc.status)) return refuse("PRECONDITION_FAILED", `rollout ${doc.id} is ${doc.status}; there is nothing to resume`);
      if (!doc.paused) return refuse("PRECONDITION_FAILED", `rollout ${doc.id} is not paused`);
      doc.paused = false;
      doc.message = `resumed by ${event.actor}`;
      break;
    case "approve": {
      if (isTerminal(doc.status) || !doc.waitingFor) return refuse("PRECONDITION_FAILED", `rollout ${doc.id} is ${doc.status} and waits for no approval`);
      const wave = nextWave(doc);
      if (wave !== undefined) doc.approvedWaves = [...(doc.approvedWaves ?? []), wave];
      doc.message = `wave ${(wave ?? 0) + 1} approved by ${event.actor}`;
      doc.waitingFor = "";
      delete doc.gateExpiresAt;
      break;
    }
    case "rollback":
      return startRollback(doc, input, event.actor, event.now);
  }
  commands.push(...advance(doc, event.now));
  return { doc, commands };
}

// ------------------------------------------------------------------ results

function applyResult(doc: RolloutDoc, t: RolloutTargetDoc, s: StepDoc, result: StepResult, now: string): void {
  s.finishedAt = now;
  if (result.outcome === "not-started") {
    s.state = "pending";
    s.detail = result.detail;
    delete s.startedAt;
    delete s.finishedAt;
    return;
  }
  if (result.outcome === "interrupted" && isRerunnable(doc, s) && (s.attempt ?? 1) < MAX_STEP_ATTEMPTS) {
    // Safe to repeat (see isRerunnable): run it again, completing what the cut-off run left first.
    const attempt = (s.attempt ?? 1) + 1;
    s.state = "pending";
    s.attempt = attempt;
    s.resumes = [...result.operations];
    const how = s.name === "migrate" ? "the online migration goes forward from the revision the database reached" : `${s.name} is safe to repeat`;
    s.detail = `run ${attempt - 1} was interrupted on agent ${s.agentId} (${result.detail}); ${how}: run ${attempt} of at most ${MAX_STEP_ATTEMPTS}${result.operations.length ? `, completing ${result.operations.join(", ")} first` : ""}`;
    delete s.startedAt;
    delete s.finishedAt;
    return;
  }
  s.detail = result.detail;
  if (result.outcome === "succeeded") {
    s.state = "succeeded";
    if (isRerun(s)) s.detail = `${result.detail} (run ${s.attempt}: the agent was interrupted in the earlier run${(s.attempt ?? 1) > 2 ? "s" : ""})`;
    if (result.revisionBefore !== undefined && s.name === "precheck") t.revisionBefore = [...result.revisionBefore];
    if (result.revisionAfter !== undefined) t.revisionAfter = [...result.revisionAfter];
    if (result.backupId) t.backupId = result.backupId;
    if (s.name === "precheck" && result.effect === "up-to-date" && t.status === "running") {
      // Nothing pending: no further step runs for this target.
      t.steps = t.steps.filter((x) => x === s);
      t.status = "up-to-date";
      t.revisionAfter = [...t.revisionBefore];
      t.message = `already at ${revs(t.revisionBefore)}: nothing to do`;
    }
    return;
  }
  s.state = result.outcome === "unknown" || result.outcome === "interrupted" ? "interrupted" : "failed";
  if (result.outcome === "failed" && result.revisionAfter !== undefined && result.revisionAfter.length > 0) t.revisionAfter = [...result.revisionAfter];
  if (s.compensation) return; // a failed clean-up step is reported in its detail; the target keeps its outcome
  for (const x of t.steps) if (x.state === "pending") x.state = "skipped";
  const effect = result.outcome === "failed" ? result.effect : "none";
  const code = result.code;
  const where = t.revisionAfter.length > 0 ? t.revisionAfter : t.revisionBefore;
  if (doc.phase === "rollback") {
    t.status = "failed";
    t.message = `rollback ${s.name} failed (${code}): ${result.detail}; check the database with flotilla diagnose ${t.targetId}`;
  } else if (result.outcome === "unknown") {
    t.status = "failed";
    t.message = `${s.name} (operation ${s.operationId}) ended unseen: agent ${s.agentId} cannot say how (${result.detail}); run flotilla diagnose ${t.targetId}`;
  } else if (result.outcome === "interrupted") {
    t.status = "failed";
    t.message = `${s.name} (operation ${s.operationId}) was interrupted on agent ${s.agentId}${(s.attempt ?? 1) > 1 ? ` in each of ${s.attempt} runs` : ""} (${result.detail}); run flotilla diagnose ${t.targetId}`;
  } else if (effect === "restored") {
    t.status = "restored";
    t.message = `${s.name} failed (${code}) and the database was restored to ${revs(t.revisionBefore)}; fix the cause, then: flotilla rollout retry ${doc.id}`;
    t.revisionAfter = [...t.revisionBefore];
  } else if (effect === "needs-restore") {
    t.status = "needs-restore";
    t.message =
      `${s.name} failed (${code}) and the database is NOT restored${t.backupId ? `: restore it with flotilla restore ${t.targetId} ${t.backupId} --yes` : `: run flotilla diagnose ${t.targetId}`}` +
      // The job strategy migrates while the app serves: say what a restore costs.
      (doc.spec.strategy === "job" && t.backupId
        ? ` (the app kept writing during the migration: restoring loses every row it wrote since backup ${t.backupId})`
        : "");
  } else {
    t.status = "failed";
    t.message = `${s.name} failed (${code}): ${result.detail}; database at ${revs(where)}`;
  }
  compensate(t, `after ${s.name} failed`);
}

/** Appends steps that start app instances this rollout stopped, and stop green instances never switched to. */
function compensate(t: RolloutTargetDoc, why: string): void {
  const done = (name: string): StepDoc[] => t.steps.filter((s) => s.name === name && s.state === "succeeded");
  const started = new Set(done("start").map((s) => s.agentId));
  const extra: StepDoc[] = [];
  for (const agentId of new Set(done("stop").map((s) => s.agentId))) {
    if (!started.has(agentId))
      extra.push({ name: "start", state: "pending", agentId, operationId: "", detail: `restart app instances ${why}`, compensation: true });
  }
  if (done("switch").length === 0) {
    for (const agentId of new Set(done("start-green").map((s) => s.agentId))) {
      extra.push({
        name: "stop-green",
        state: "pending",
        agentId,
        operationId: "",
        detail: `stop green instances ${why}; blue keeps serving`,
        compensation: true,
      });
    }
  }
  t.steps.push(...extra);
}

// ------------------------------------------------------------------ advancing

/** The lowest wave that still has work, or undefined. */
function nextWave(doc: RolloutDoc): number | undefined {
  const open = doc.targets.filter((t) => !TARGET_DONE.has(t.status)).map((t) => t.wave);
  return open.length === 0 ? undefined : Math.min(...open);
}

function skipUnstarted(doc: RolloutDoc, why: string): void {
  for (const t of doc.targets) {
    if (t.status !== "pending") continue;
    t.status = "skipped";
    t.message = `not started: ${why}`;
    for (const s of t.steps) if (s.state === "pending") s.state = "skipped";
  }
}

function hasRunning(t: RolloutTargetDoc): boolean {
  return t.steps.some((s) => s.state === "running");
}

/** Decides what runs next; mutates `doc`, returns the commands. */
function advance(doc: RolloutDoc, now: string): SequencerCommand[] {
  const commands: SequencerCommand[] = [];
  if (doc.finishedAt !== undefined) return commands;

  if (doc.abortRequested) {
    skipUnstarted(doc, "the rollout was aborted");
    doc.waitingFor = "";
    delete doc.gateExpiresAt;
    for (const t of doc.targets) {
      if (t.status !== "running" || hasRunning(t)) continue;
      const changed = t.steps.some((s) => CHANGING_STEPS.has(s.name) && s.state === "succeeded");
      const last = t.steps.filter((s) => s.state === "succeeded" && !s.compensation).at(-1)?.name ?? "";
      for (const s of t.steps) if (s.state === "pending" && !s.compensation && !isRerun(s)) s.state = "skipped";
      if (!t.abortHandled) {
        t.abortHandled = true;
        compensate(t, "after the abort");
      }
      if (!t.steps.some((s) => s.state === "pending")) {
        t.status = changed ? "aborted" : "skipped";
        t.message = changed
          ? `aborted after ${last}: the database is at ${revs(t.revisionAfter)}; remaining steps were not run`
          : "aborted before any change to this target";
      }
    }
  }

  // Work within started targets (and compensation) continues while paused; nothing new starts.
  const dispatch = (t: RolloutTargetDoc): void => {
    if (hasRunning(t)) return;
    const index = t.steps.findIndex((s) => s.state === "pending");
    if (index < 0) {
      if (t.status === "running") {
        t.status = doc.phase === "rollback" ? "rolled-back" : "succeeded";
        t.message = doc.phase === "rollback" ? `rolled back: the database is at ${revs(t.revisionAfter)} (verified)` : successLine(doc, t);
      }
      return;
    }
    const s = t.steps[index]!;
    if (!s.compensation && !(isRerun(s) && t.status === "running") && (doc.paused || doc.abortRequested || t.status !== "running")) return;
    s.state = "running";
    s.operationId = operationIdOf(doc.id, t.targetId, index, s);
    s.startedAt = now;
    commands.push({ kind: "run-step", targetId: t.targetId, index, step: { ...s } });
  };
  // Clean-up steps of failed targets run too, whatever the rollout's state.
  for (const t of doc.targets) if (t.status === "running" || t.steps.some((s) => s.compensation && s.state === "pending")) dispatch(t);

  if (doc.status === "running" && !doc.abortRequested && !doc.paused) {
    const wave = nextWave(doc);
    if (wave !== undefined && doc.targets.some((t) => t.wave === wave && t.status === "pending")) {
      const entering = wave !== doc.currentWave || !doc.targets.some((t) => t.wave === wave && t.status !== "pending");
      const gate = entering ? checkBeforeWave(doc, wave, now) : "go";
      if (gate === "go") {
        doc.currentWave = wave;
        let running = doc.targets.filter(hasRunning).length;
        for (const t of doc.targets) {
          if (t.wave !== wave || t.status !== "pending" || running >= TARGET_CONCURRENCY) continue;
          t.status = "running";
          dispatch(t);
          if (hasRunning(t)) running++;
        }
      } else if (gate === "wait" && doc.gateExpiresAt) {
        commands.push({ kind: "wake-at", at: doc.gateExpiresAt });
      }
    }
  }

  const idle = !doc.targets.some((t) => t.steps.some((s) => s.state === "running" || (s.compensation && s.state === "pending")));
  if (idle && (doc.status === "halted" || doc.targets.every((t) => TARGET_DONE.has(t.status)))) {
    finish(doc, now);
    commands.push({ kind: "finish", status: doc.status as RolloutState });
  }
  return commands;
}

/** Before a later wave starts: failure budget, maintenance window, manual gate. */
function checkBeforeWave(doc: RolloutDoc, wave: number, now: string): "go" | "wait" | "halted" {
  const first = Math.min(...doc.targets.map((t) => t.wave));
  const bad = doc.targets.filter((t) => TARGET_BAD.has(t.status));
  if (doc.targets.some(hasRunning) && wave !== first) return "wait";
  if (wave !== first && bad.length > doc.spec.maxFailures) {
    halt(
      doc,
      `halted before wave ${wave + 1}: ${bad.map((t) => `${t.targetId} ${t.status}`).join(", ")} (more than ${doc.spec.maxFailures} failure${doc.spec.maxFailures === 1 ? "" : "s"} allowed)`,
    );
    return "halted";
  }
  const windowMs = doc.spec.window ? durationMs(doc.spec.window) : undefined;
  if (windowMs !== undefined && Date.parse(now) > Date.parse(doc.createdAt) + windowMs) {
    halt(doc, `the maintenance window of ${doc.spec.window} ended before wave ${wave + 1}`);
    return "halted";
  }
  if (doc.spec.gate && wave !== first && !(doc.approvedWaves ?? []).includes(wave)) {
    if (!doc.waitingFor) {
      doc.waitingFor = `approval of wave ${wave + 1}: flotilla rollout approve ${doc.id}`;
      const timeout = gateTimeoutMs(doc.spec.gate);
      if (timeout !== undefined) doc.gateExpiresAt = new Date(Date.parse(now) + timeout).toISOString();
      doc.message = `wave ${wave} done; waiting for approval of wave ${wave + 1}`;
    }
    if (doc.gateExpiresAt && Date.parse(now) >= Date.parse(doc.gateExpiresAt)) {
      halt(doc, `the gate expired at ${doc.gateExpiresAt} without approval of wave ${wave + 1}`);
      return "halted";
    }
    return "wait";
  }
  return "go";
}

function halt(doc: RolloutDoc, why: string): void {
  skipUnstarted(doc, why);
  doc.status = "halted";
  doc.waitingFor = "";
  delete doc.gateExpiresAt;
  doc.message = `${why}; later targets were not touched (retry them with flotilla rollout retry ${doc.id})`;
}

function finish(doc: RolloutDoc, now: string): void {
  doc.finishedAt = now;
  doc.waitingFor = "";
  delete doc.gateExpiresAt;
  if (doc.status === "halted") return;
  const count = (st: string): number => doc.targets.filter((t) => t.status === st).length;
  const total = doc.targets.length;
  if (doc.phase === "rollback") {
    const failed = doc.targets.filter((t) => t.status === "failed" && t.rollback);
    doc.status = failed.length === 0 ? "rolled-back" : "failed";
    doc.message =
      failed.length === 0
        ? `rolled back ${count("rolled-back")} target${count("rolled-back") === 1 ? "" : "s"}`
        : `rollback failed on ${failed.map((t) => t.targetId).join(", ")}`;
    return;
  }
  if (doc.abortRequested) {
    doc.status = "aborted";
    doc.message = `aborted: ${count("aborted")} target(s) changed before the abort, ${count("skipped")} not touched, ${count("succeeded")} completed`;
    return;
  }
  const notOk = doc.targets.filter((t) => t.status !== "succeeded" && t.status !== "up-to-date");
  doc.status = notOk.length === 0 ? "succeeded" : "failed";
  const parts = [`${count("succeeded")} migrated`, `${count("up-to-date")} already up to date`];
  for (const st of ["failed", "restored", "needs-restore", "skipped"]) if (count(st) > 0) parts.push(`${count(st)} ${st}`);
  doc.message = `${total} target${total === 1 ? "" : "s"}: ${parts.join(", ")}`;
}

function successLine(doc: RolloutDoc, t: RolloutTargetDoc): string {
  const from = revs(t.revisionBefore);
  const to = revs(t.revisionAfter.length ? t.revisionAfter : [doc.spec.toRevision]);
  if (doc.spec.strategy === "blue-green") return `green migrated ${from} → ${to} and serving; blue kept for rollback`;
  return `migrated ${from} → ${to} (verified); app instances started and healthy`;
}

function revs(list: readonly string[]): string {
  return list.length === 0 ? "no revision" : list.join(",");
}

/** Targets a retry covers: exactly those that failed, were restored or were skipped. */
export function retryTargets(doc: RolloutDoc): string[] {
  return doc.targets.filter((t) => t.status === "failed" || t.status === "restored" || t.status === "skipped").map((t) => t.targetId);
}

// ------------------------------------------------------------------ rollback

/** Targets a rollback undoes: those whose database or traffic this rollout changed. */
export function rollbackTargets(doc: RolloutDoc): RolloutTargetDoc[] {
  return doc.targets.filter(
    (t) => t.status !== "rolled-back" && t.status !== "restored" && t.steps.some((s) => CHANGING_STEPS.has(s.name) && s.state === "succeeded"),
  );
}

function startRollback(doc: RolloutDoc, input: RolloutDoc, actor: string, now: string): Transition {
  const refuse = (code: ErrorCode, message: string): Transition => ({ doc: input, commands: [], refusal: { code, message } });
  if (!isTerminal(doc.status))
    return refuse("PRECONDITION_FAILED", `rollout ${doc.id} is still ${doc.status}: abort it first (flotilla rollout abort ${doc.id} --wait)`);
  if (doc.status === "rolled-back") return refuse("PRECONDITION_FAILED", `rollout ${doc.id} was already rolled back`);
  const targets = rollbackTargets(doc);
  if (targets.length === 0) return refuse("PRECONDITION_FAILED", `rollout ${doc.id} changed no target: there is nothing to roll back`);
  const step = (name: StepName, agentId: string, detail: string): StepDoc => ({ name, state: "pending", agentId, operationId: "", detail });
  for (const t of targets) {
    t.status = "running";
    t.rollback = true;
    if (doc.spec.strategy === "blue-green") {
      t.steps.push(step("rollback-switch", t.agentId, "switch traffic back to blue"));
      for (const a of new Set(t.steps.filter((s) => s.name === "start-green").map((s) => s.agentId)))
        t.steps.push(step("stop-green", a, "stop green instances"));
    } else {
      const hosts = [...new Set(t.steps.filter((s) => s.name === "stop" || s.name === "restart" || s.name === "start").map((s) => s.agentId))];
      for (const a of hosts) t.steps.push(step("rollback-stop", a, "stop app instances"));
      t.steps.push(step("rollback-restore", t.agentId, `restore pre-migration backup ${t.backupId}`));
      for (const a of hosts) t.steps.push(step("rollback-start", a, "start app instances"));
    }
    t.steps.push(step("rollback-verify", t.agentId, "read the revision the database is really at"));
  }
  doc.phase = "rollback";
  doc.status = "running";
  doc.abortRequested = false;
  doc.paused = false;
  delete doc.finishedAt;
  doc.message = `rollback requested by ${actor}`;
  return { doc, commands: advance(doc, now) };
}
