import { join } from "node:path";
import { pathToFileURL } from "node:url";
import { packageRoot } from "../common/package-root.js";
import { closeSync, openSync, renameSync, rmSync, writeSync } from "node:fs";
import { readFile } from "node:fs/promises";
import { fromApiJson, toApiJson } from "../common/proto-json.js";
import { ProtoStrategy, strategyName, strategyToProto } from "../common/rollout-request.js";
import type { DescMessage, JsonValue, MessageShape } from "@bufbuild/protobuf";
import { isUsageError } from "../common/errors.js";
import { redact, registerSecret } from "../common/redact.js";
import {
  AuditEntrySchema,
  ListRolloutsRequestSchema,
  ListRolloutsResponseSchema,
  ListSchedulesRequestSchema,
  ListSchedulesResponseSchema,
  ListTargetsRequestSchema,
  ListTargetsResponseSchema,
  QueryAuditRequestSchema,
  QueryAuditResponseSchema,
  RestoreTargetRequestSchema,
  DowngradeTargetRequestSchema,
  StampTargetRequestSchema,
  RecoverTargetRequestSchema,
  RehearseTargetRequestSchema,
  DrillTargetRequestSchema,
  MoveTargetRequestSchema,
  RolloutEventSchema,
  RolloutPlanSchema,
  RolloutRefSchema,
  RolloutSchema,
  RolloutSpecSchema,
  ScheduleRefSchema,
  ScheduleSchema,
  TargetRefSchema,
  VerifyAuditRequestSchema,
  VerifyAuditResponseSchema,
} from "../common/gen/flotilla/v1/controller_pb.js";
import type { AuditEntry, Rollout } from "../common/gen/flotilla/v1/controller_pb.js";
import {
  BundleResponseSchema,
  DiagnoseResponseSchema,
  ListBackupsResponseSchema,
  OperationEventSchema,
  OperationResultSchema,
} from "../common/gen/flotilla/v1/agent_pb.js";
import type { OperationResult } from "../common/gen/flotilla/v1/agent_pb.js";
import { parseCommandLine, usageText, verbHelp } from "./args.js";
import type { AuditQuery, Command, GlobalOptions, SpecInput } from "./args.js";
import { ControllerHttpClient } from "./http-client.js";
import { certsMain } from "./certs.js";
import type { CallFailure, CallOutcome } from "./http-client.js";
import {
  RolloutFollower,
  isRolloutActive,
  renderAudit,
  renderAuditVerify,
  renderBackups,
  renderDiagnosis,
  renderOperationResult,
  renderFinalLines,
  renderPlan,
  renderRollout,
  renderRollouts,
  renderSchedules,
  renderTargets,
} from "./render.js";

/** Where the CLI writes; `process.stdout`/`process.stderr` in the real program. */
export interface TextSink {
  write(chunk: string): unknown;
}

export interface CliIo {
  readonly stdout: TextSink;
  readonly stderr: TextSink;
  readonly env: Readonly<Record<string, string | undefined>>;
}

/** Exit codes of the contract. */
export const EXIT = { ok: 0, failed: 1, usage: 2, unreachable: 3 } as const;

const OPERATION_TIMEOUT_MS = 6 * 3600_000;
const PLAN_TIMEOUT_MS = 30 * 60_000;
const MAX_RECONNECTS = 5;

interface Ctx {
  readonly io: CliIo;
  readonly globals: GlobalOptions;
  readonly client: ControllerHttpClient;
  readonly now: Date;
}

/**
 * Runs one `flotilla` command line and returns its exit code: 0 success; 1 the
 * operation ran and failed (or problems were found); 2 bad usage or a refused
 * request, nothing changed; 3 the controller cannot be reached, or the caller
 * is not authenticated or not allowed. With `--json`, stdout gets exactly one
 * JSON document and nothing else. Messages go to stderr, prefixed `flotilla: `.
 * Never calls process.exit and never prints the token.
 */
export async function main(argv: string[], io: CliIo): Promise<number> {
  const now = new Date();
  // `certs` is local work (no controller): its own small parser, where --controller names a host.
  if (argv[0] === "certs") return certsMain(argv.slice(1), io);
  const parsed = parseCommandLine(argv, io.env, now);
  if (!parsed.ok) {
    say(io, parsed.message);
    if (parsed.json) printJson(io, { error: { kind: "usage", code: "INVALID_ARGUMENT", message: parsed.message } });
    return EXIT.usage;
  }
  const { globals, command, notes } = parsed;
  if (globals.token !== undefined) registerSecret(globals.token);
  for (const n of notes) say(io, `note: ${n}`);

  switch (command.verb) {
    case "help":
      return help(io, globals, command.topic);
    case "version":
      return version(io, globals);
    case "demo":
      return demo(io, command.argv);
    default:
      break;
  }
  let ca: Buffer | undefined;
  if (globals.ca !== undefined) {
    try {
      ca = await readFile(globals.ca);
    } catch (err) {
      say(io, `cannot read the CA file ${globals.ca} (--ca / FLOTILLA_CA): ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
      return EXIT.usage;
    }
  }
  const client = new ControllerHttpClient({ baseUrl: globals.controller, token: globals.token, userAgent: "flotilla-cli", ca });
  const ctx: Ctx = { io, globals, client, now };
  try {
    return await run(ctx, command);
  } catch (err) {
    // A bug, not an outcome: say so plainly, without the token.
    say(io, `internal error: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}`);
    return EXIT.failed;
  }
}

async function run(ctx: Ctx, command: Command): Promise<number> {
  const { client } = ctx;
  switch (command.verb) {
    case "targets": {
      const r = await client.unary("ListTargets", ListTargetsRequestSchema, { selector: command.selector }, ListTargetsResponseSchema);
      if (!r.ok) return fail(ctx, r.failure);
      output(ctx, ListTargetsResponseSchema, r.value, () => renderTargets(r.value, ctx.now));
      return EXIT.ok;
    }
    case "diagnose": {
      const r = await client.unary("DiagnoseTarget", TargetRefSchema, { targetId: command.target }, DiagnoseResponseSchema, { timeoutMs: PLAN_TIMEOUT_MS });
      if (!r.ok) return fail(ctx, r.failure);
      output(ctx, DiagnoseResponseSchema, r.value, () => renderDiagnosis(r.value));
      const problems = r.value.problems || r.value.findings.some((f) => f.severity === "error");
      return problems ? EXIT.failed : EXIT.ok;
    }
    case "backup": {
      const r = await client.unary("BackupTarget", TargetRefSchema, { targetId: command.target }, OperationResultSchema, { timeoutMs: OPERATION_TIMEOUT_MS });
      if (!r.ok) return fail(ctx, r.failure);
      output(ctx, OperationResultSchema, r.value, () => renderOperationResult("backup", command.target, r.value));
      const code = operationExit(r.value);
      if (code === EXIT.ok && r.value.backup !== undefined && !r.value.backup.verified) return EXIT.failed;
      return code;
    }
    case "backups": {
      const r = await client.unary("ListTargetBackups", TargetRefSchema, { targetId: command.target }, ListBackupsResponseSchema);
      if (!r.ok) return fail(ctx, r.failure);
      output(ctx, ListBackupsResponseSchema, r.value, () => renderBackups(command.target, r.value, ctx.now));
      return EXIT.ok;
    }
    case "restore": {
      const req = { targetId: command.target, backupId: command.backupId, yes: true };
      const r = await client.unary("RestoreTarget", RestoreTargetRequestSchema, req, OperationResultSchema, { timeoutMs: OPERATION_TIMEOUT_MS });
      if (!r.ok) return fail(ctx, r.failure);
      output(ctx, OperationResultSchema, r.value, () => renderOperationResult("restore", command.target, r.value));
      return operationExit(r.value);
    }
    case "drill": {
      const r = await client.unary("DrillTarget", DrillTargetRequestSchema, { targetId: command.target, backupId: command.backupId }, OperationResultSchema, {
        timeoutMs: OPERATION_TIMEOUT_MS,
      });
      if (!r.ok) return fail(ctx, r.failure);
      output(ctx, OperationResultSchema, r.value, () => renderOperationResult("drill", command.target, r.value));
      return operationExit(r.value);
    }
    case "bundle":
      return writeBundle(ctx, command.target, command.out);
    case "downgrade": {
      const req = { targetId: command.target, toRevision: command.toRevision, acceptDataLoss: true };
      const r = await client.unary("DowngradeTarget", DowngradeTargetRequestSchema, req, OperationResultSchema, { timeoutMs: OPERATION_TIMEOUT_MS });
      if (!r.ok) return fail(ctx, r.failure);
      output(ctx, OperationResultSchema, r.value, () => renderOperationResult("downgrade", command.target, r.value));
      return operationExit(r.value);
    }
    case "stamp": {
      const req = { targetId: command.target, revision: command.revision, reason: command.reason };
      const r = await client.unary("StampTarget", StampTargetRequestSchema, req, OperationResultSchema, { timeoutMs: OPERATION_TIMEOUT_MS });
      if (!r.ok) return fail(ctx, r.failure);
      output(ctx, OperationResultSchema, r.value, () => renderOperationResult("stamp", command.target, r.value));
      return operationExit(r.value);
    }
    case "rehearse": {
      const req = { targetId: command.target, toRevision: command.toRevision };
      const r = await client.unary("RehearseTarget", RehearseTargetRequestSchema, req, OperationResultSchema, { timeoutMs: OPERATION_TIMEOUT_MS });
      if (!r.ok) return fail(ctx, r.failure);
      output(ctx, OperationResultSchema, r.value, () => renderOperationResult("rehearsal", command.target, r.value));
      return operationExit(r.value);
    }
    case "recover": {
      const req = { targetId: command.target, operationId: command.operationId, action: command.action };
      const r = await client.unary("RecoverTarget", RecoverTargetRequestSchema, req, OperationResultSchema, { timeoutMs: OPERATION_TIMEOUT_MS });
      if (!r.ok) return fail(ctx, r.failure);
      output(ctx, OperationResultSchema, r.value, () => renderOperationResult("recover", command.target, r.value));
      return operationExit(r.value);
    }
    case "move":
      return moveTarget(ctx, command);
    case "plan": {
      const r = await client.unary("PlanRollout", RolloutSpecSchema, { ...command.spec, strategy: strategyToProto(command.spec.strategy) }, RolloutPlanSchema, {
        timeoutMs: PLAN_TIMEOUT_MS,
      });
      if (!r.ok) return fail(ctx, r.failure);
      output(ctx, RolloutPlanSchema, r.value, () => renderPlan(r.value));
      return EXIT.ok;
    }
    case "rollout":
      return startRollout(ctx, command.spec, command.wait);
    case "rollouts": {
      const r = await client.unary("ListRollouts", ListRolloutsRequestSchema, { limit: command.limit }, ListRolloutsResponseSchema);
      if (!r.ok) return fail(ctx, r.failure);
      output(ctx, ListRolloutsResponseSchema, r.value, () => renderRollouts(r.value, ctx.now));
      return EXIT.ok;
    }
    case "rollout show": {
      if (command.follow) return followToEnd(ctx, command.id, undefined, SUCCESS.show);
      const r = await client.unary("GetRollout", RolloutRefSchema, { id: command.id }, RolloutSchema);
      if (!r.ok) return fail(ctx, r.failure);
      output(ctx, RolloutSchema, r.value, () => renderRollout(r.value, ctx.now));
      return EXIT.ok;
    }
    case "rollout abort":
    case "rollout approve":
    case "rollout pause":
    case "rollout resume":
    case "rollout retry":
    case "rollout rollback":
      return control(ctx, command);
    case "schedule add": {
      const s = command.schedule;
      const r = await client.unary("AddSchedule", ScheduleSchema, { ...s, strategy: strategyToProto(s.strategy) }, ScheduleSchema);
      if (!r.ok) return fail(ctx, r.failure);
      const v = r.value;
      output(ctx, ScheduleSchema, v, () =>
        v.drill
          ? `✓ schedule ${v.name} ${s.replace ? "saved" : "added"}: ${v.cron} · ${v.selector} · restore drill of the newest verified backup${v.nextRun === "" ? "" : ` · next run ${v.nextRun} (${v.timeZone})`}\n`
          : `✓ schedule ${v.name} ${s.replace ? "saved" : "added"}: ${v.cron} · ${v.selector} · ${strategyName(v.strategy)}${v.window === "" ? "" : ` · window ${v.window}`} · to ${v.toRevision || "head"}${v.waves === "" ? "" : ` · waves ${v.waves}`}${v.nextRun === "" ? "" : ` · next run ${v.nextRun} (${v.timeZone})`}\n`,
      );
      return EXIT.ok;
    }
    case "schedules": {
      const r = await client.unary("ListSchedules", ListSchedulesRequestSchema, {}, ListSchedulesResponseSchema);
      if (!r.ok) return fail(ctx, r.failure);
      output(ctx, ListSchedulesResponseSchema, r.value, () => renderSchedules(r.value, ctx.now));
      return EXIT.ok;
    }
    case "schedule rm": {
      const r = await client.unary("RemoveSchedule", ScheduleRefSchema, { name: command.name }, ListSchedulesResponseSchema);
      if (!r.ok) return fail(ctx, r.failure);
      output(ctx, ListSchedulesResponseSchema, r.value, () => `✓ schedule ${command.name} removed\n\n${renderSchedules(r.value, ctx.now)}`);
      return EXIT.ok;
    }
    case "audit": {
      const r = await client.unary("QueryAudit", QueryAuditRequestSchema, { ...command.query }, QueryAuditResponseSchema);
      if (!r.ok) return fail(ctx, r.failure);
      output(ctx, QueryAuditResponseSchema, r.value, () => renderAudit(r.value));
      return EXIT.ok;
    }
    case "audit verify":
      return verifyAudit(ctx);
    case "audit export":
      return exportAudit(ctx, command.query, command.out);
    case "help":
    case "version":
    case "demo":
      return EXIT.usage;
  }
}

// ---------------------------------------------------------------------------------------------
// rollouts

async function startRollout(ctx: Ctx, s: SpecInput, wait: boolean): Promise<number> {
  const r = await ctx.client.unary("StartRollout", RolloutSpecSchema, { ...s, strategy: strategyToProto(s.strategy) }, RolloutSchema, {
    timeoutMs: PLAN_TIMEOUT_MS,
  });
  if (!r.ok) return fail(ctx, r.failure);
  const started = r.value;
  if (!wait) {
    output(ctx, RolloutSchema, started, () => renderRollout(started, ctx.now));
    return started.status === "failed" ? EXIT.failed : EXIT.ok;
  }
  if (!ctx.globals.json) {
    const waves = Math.max(0, ...started.targets.map((t) => t.wave)) + 1;
    human(
      ctx,
      `rollout ${started.id} started: ${started.targets.length} target${started.targets.length === 1 ? "" : "s"} in ${waves} wave${waves === 1 ? "" : "s"} · ${strategyName(started.spec?.strategy ?? ProtoStrategy.UNSPECIFIED) || s.strategy} → ${started.spec?.toRevision || s.toRevision || "head"}\n` +
        `(Ctrl-C stops following only; the rollout goes on. Stop it with: flotilla rollout abort ${started.id})\n`,
    );
  }
  return followToEnd(ctx, started.id, started, SUCCESS.rollout);
}

/** The end states each follow counts as success. */
const SUCCESS = {
  rollout: ["succeeded"],
  show: ["succeeded", "rolled-back"],
  "rollout abort": ["aborted"],
  "rollout approve": ["succeeded"],
  "rollout retry": ["succeeded"],
  "rollout rollback": ["rolled-back"],
} as const satisfies Record<string, readonly string[]>;

const CONTROL_METHOD = {
  "rollout abort": "AbortRollout",
  "rollout approve": "ApproveRollout",
  "rollout pause": "PauseRollout",
  "rollout resume": "ResumeRollout",
  "rollout retry": "RetryRollout",
  "rollout rollback": "RollbackRollout",
} as const;

/** abort, approve, pause, resume, retry, rollback: one call; with --wait, follow the rollout to its end. */
async function control(ctx: Ctx, command: Extract<Command, { verb: keyof typeof CONTROL_METHOD }>): Promise<number> {
  const yes = command.verb === "rollout rollback";
  const r = await ctx.client.unary(CONTROL_METHOD[command.verb], RolloutRefSchema, { id: command.id, yes }, RolloutSchema, { timeoutMs: PLAN_TIMEOUT_MS });
  if (!r.ok) return fail(ctx, r.failure);
  const doc = r.value;
  const wait = "wait" in command && command.wait;
  if (!wait) {
    output(ctx, RolloutSchema, doc, () => renderRollout(doc, ctx.now));
    return doc.status === "failed" ? EXIT.failed : EXIT.ok;
  }
  if (command.verb === "rollout retry") human(ctx, `rollout ${doc.id} retries ${command.id} over ${doc.targets.map((t) => t.targetId).join(", ")}\n`);
  return followToEnd(ctx, doc.id, doc, SUCCESS[command.verb], command.verb === "rollout approve");
}

/**
 * Follows a rollout over WatchRollout until it ends, printing step transitions
 * and Alembic lines as they come; reconnects when the stream breaks. Exit 0
 * only when the rollout succeeded.
 */
async function followToEnd(ctx: Ctx, id: string, started: Rollout | undefined, success: readonly string[], stopAtGate = false): Promise<number> {
  const follower = new RolloutFollower();
  let last: Rollout | undefined = started;
  let shownFull = started !== undefined;
  if (started !== undefined) follower.prime(started);
  let attempts = 0;
  for (;;) {
    const streamed = await ctx.client.serverStream("WatchRollout", RolloutRefSchema, { id }, RolloutEventSchema, (ev) => {
      if (ev.event.case === "snapshot") {
        const snap = ev.event.value;
        if (!shownFull) {
          human(ctx, `${renderRollout(snap, new Date())}\n`);
          follower.prime(snap);
          shownFull = true;
        } else {
          for (const line of follower.snapshot(snap)) human(ctx, `${line}\n`);
        }
        last = snap;
        if (stopAtGate && snap.waitingFor !== "") return false;
      } else if (ev.event.case === "line") {
        human(ctx, `${follower.line(ev.event.value)}\n`);
      }
    });
    const final: Rollout | undefined = last;
    const atGate = stopAtGate && final !== undefined && final.waitingFor !== "";
    if ((streamed.ok || atGate) && final !== undefined && (!isRolloutActive(final.status) || atGate)) {
      if (ctx.globals.json) printJson(ctx.io, toDoc(RolloutSchema, final));
      else human(ctx, `\n${renderRollout(final, new Date())}\n${renderFinalLines(final)}`);
      if (atGate) return EXIT.ok;
      return success.includes(final.status) ? EXIT.ok : EXIT.failed;
    }
    if (!streamed.ok && streamed.failure.kind === "rejected") return fail(ctx, streamed.failure);
    attempts++;
    const why = streamed.ok ? `the stream ended while the rollout was ${final?.status || "unknown"}` : streamed.failure.message;
    if (attempts > MAX_RECONNECTS) {
      return fail(ctx, { kind: "unreachable", message: `stopped following rollout ${id}: ${why}; it may still be running (flotilla rollout show ${id})` });
    }
    say(ctx.io, `note: ${why}; reconnecting (${attempts}/${MAX_RECONNECTS})`);
    await sleep(Math.min(1000 * 2 ** (attempts - 1), 10_000));
  }
}

// ---------------------------------------------------------------------------------------------
// move

/** Streams a move: each step and progress line as it comes, then the result. */
async function moveTarget(ctx: Ctx, c: Extract<Command, { verb: "move" }>): Promise<number> {
  let result: OperationResult | undefined;
  const req = { fromTargetId: c.from, toTargetId: c.to, yes: c.yes, skipOrphans: c.skipOrphans, fromBackup: c.fromBackup };
  human(ctx, `move ${c.from} → ${c.to}${c.fromBackup ? " (from a verified backup, the app keeps running)" : ""}\n`);
  const streamed = await ctx.client.serverStream("MoveTarget", MoveTargetRequestSchema, req, OperationEventSchema, (ev) => {
    if (ev.event.case === "step") {
      const s = ev.event.value;
      const took = s.durationMs > 0n ? ` (${(Number(s.durationMs) / 1000).toFixed(1)}s)` : "";
      human(
        ctx,
        s.state === "running"
          ? `  … ${s.name}\n`
          : `  ${s.state === "succeeded" ? "✓" : s.state === "skipped" ? "–" : "✗"} ${s.name}${took}${s.detail === "" ? "" : `: ${s.detail}`}\n`,
      );
    } else if (ev.event.case === "progress") {
      if (ev.event.value.source !== "alembic") human(ctx, `      ${ev.event.value.line}\n`);
    } else if (ev.event.case === "result") {
      result = ev.event.value;
    }
  });
  if (!streamed.ok) return fail(ctx, streamed.failure);
  const r = result;
  if (r === undefined) return fail(ctx, { kind: "unreachable", message: `the move stream ended without a result; see flotilla audit --target ${c.from}` });
  output(ctx, OperationResultSchema, r, () => {
    const d = r.details;
    const extra = [
      d["rows"] !== undefined ? `  copied    ${d["tables"]} tables, ${d["rows"]} rows, ${(Number(d["bytes"] ?? 0) / 1e6).toFixed(1)} MB` : "",
      d["orphans_report"] !== undefined ? `  orphans   ${d["skipped_rows"]} row(s) left out: ${d["orphans_report"]}` : "",
      d["missed_writes_since"] !== undefined ? `  note      writes to ${c.from} after ${d["missed_writes_since"]} are not in ${c.to}` : "",
    ].filter((x) => x !== "");
    return renderOperationResult("move", c.from, r) + (extra.length > 0 ? `${extra.join("\n")}\n` : "");
  });
  return operationExit(r);
}

// ---------------------------------------------------------------------------------------------
// audit

async function verifyAudit(ctx: Ctx): Promise<number> {
  const r = await ctx.client.unary("VerifyAudit", VerifyAuditRequestSchema, {}, VerifyAuditResponseSchema, { timeoutMs: PLAN_TIMEOUT_MS });
  if (!r.ok) return fail(ctx, r.failure);
  const verdict = r.value;
  let firstBad: AuditEntry | undefined;
  if (!verdict.ok && verdict.firstBadSeq > 0n) {
    // Best effort: show the broken entry itself, found by streaming the export.
    await ctx.client.exportAudit({}, (line) => {
      try {
        const entry = fromApiJson(AuditEntrySchema, JSON.parse(line) as JsonValue);
        if (entry.seq === verdict.firstBadSeq) {
          firstBad = entry;
          return false;
        }
      } catch {
        // a line we cannot read is reported by verify itself
      }
      return true;
    });
  }
  if (ctx.globals.json) {
    const doc = toDoc(VerifyAuditResponseSchema, verdict) as Record<string, JsonValue>;
    if (firstBad !== undefined) doc["firstBadEntry"] = toDoc(AuditEntrySchema, firstBad);
    printJson(ctx.io, doc);
  } else {
    human(ctx, renderAuditVerify(verdict, firstBad));
  }
  return verdict.ok ? EXIT.ok : EXIT.failed;
}

/** Fetches a target's diagnostics bundle and writes it (temp name, then rename). */
async function writeBundle(ctx: Ctx, targetId: string, out: string): Promise<number> {
  const r = await ctx.client.unary("BundleTarget", TargetRefSchema, { targetId }, BundleResponseSchema, { timeoutMs: PLAN_TIMEOUT_MS });
  if (!r.ok) return fail(ctx, r.failure);
  const file = out || r.value.fileName;
  const tmp = `${file}.partial-${process.pid}`;
  try {
    const fd = openSync(tmp, "wx", 0o600);
    try {
      writeSync(fd, r.value.data);
    } finally {
      closeSync(fd);
    }
    renameSync(tmp, file);
  } catch (err) {
    rmSync(tmp, { force: true });
    say(ctx.io, `--out: cannot write ${file}: ${(err as Error).message}; choose a writable path`);
    return EXIT.usage;
  }
  if (ctx.globals.json) printJson(ctx.io, { file, bytes: r.value.data.length, entries: r.value.entries });
  else
    human(
      ctx,
      `✓ diagnostics bundle of ${targetId} written to ${file} (${r.value.data.length} bytes, ${r.value.entries.length} files; no database, no secrets)\n`,
    );
  return EXIT.ok;
}

async function exportAudit(ctx: Ctx, q: AuditQuery, out: string): Promise<number> {
  const query = { since: q.since, until: q.until, target: q.target, actor: q.actor, action: q.action, outcome: q.outcome };
  if (out === "") {
    if (ctx.globals.json) {
      const entries: JsonValue[] = [];
      const r = await ctx.client.exportAudit(query, (line) => {
        entries.push(JSON.parse(line) as JsonValue);
      });
      if (!r.ok) return fail(ctx, r.failure);
      printJson(ctx.io, { entries });
      return EXIT.ok;
    }
    const r = await ctx.client.exportAudit(query, (line) => {
      ctx.io.stdout.write(`${line}\n`);
    });
    return r.ok ? EXIT.ok : fail(ctx, r.failure);
  }
  // Written to a temporary name and renamed at the end: a half export never looks complete.
  const tmp = `${out}.partial-${process.pid}`;
  let fd: number;
  try {
    fd = openSync(tmp, "w", 0o600);
  } catch (err) {
    say(ctx.io, `--out: cannot write ${out}: ${(err as Error).message}; choose a writable path`);
    return EXIT.usage;
  }
  let r: CallOutcome<number>;
  try {
    r = await ctx.client.exportAudit(query, (line) => {
      writeSync(fd, `${line}\n`);
    });
  } finally {
    closeSync(fd);
  }
  if (!r.ok) {
    rmSync(tmp, { force: true });
    return fail(ctx, r.failure);
  }
  renameSync(tmp, out);
  if (ctx.globals.json) printJson(ctx.io, { out, entries: r.value });
  else human(ctx, `✓ exported ${r.value} audit entr${r.value === 1 ? "y" : "ies"} to ${out} (JSON lines)\n`);
  return EXIT.ok;
}

// ---------------------------------------------------------------------------------------------
// help, version, demo

function help(io: CliIo, globals: GlobalOptions, topic: string): number {
  const text = topic === "" ? usageText() : (verbHelp(topic) ?? usageText());
  if (globals.json) printJson(io, { usage: text });
  else io.stdout.write(text);
  return EXIT.ok;
}

async function version(io: CliIo, globals: GlobalOptions): Promise<number> {
  let v = "unknown";
  try {
    const pkg = JSON.parse(await readFile(join(packageRoot(), "package.json"), "utf8")) as { version?: unknown };
    if (typeof pkg.version === "string") v = pkg.version;
  } catch {
    // running from an unusual layout: the version stays unknown
  }
  if (globals.json) printJson(io, { version: v });
  else io.stdout.write(`flotilla ${v}\n`);
  return EXIT.ok;
}

type DemoModule = { runDemo?: (options: { argv: string[]; stdout: TextSink; stderr: TextSink; env: CliIo["env"] }) => Promise<number> };

async function demo(io: CliIo, argv: readonly string[]): Promise<number> {
  // Resolved at run time: the demo lives with the tests and is loaded only when asked for.
  const url = pathToFileURL(join(packageRoot(), "test/demo/demo.ts")).href;
  let mod: DemoModule;
  try {
    // The demo is TypeScript; the CLI itself may be running compiled.
    const tsx = (await import("tsx/esm/api")) as { register: () => unknown };
    tsx.register();
    mod = (await import(url)) as DemoModule;
  } catch (err) {
    say(io, `the demo cannot be loaded (${err instanceof Error ? err.message : String(err)}); run it from a full checkout with npm run demo`);
    return EXIT.failed;
  }
  if (typeof mod.runDemo !== "function") {
    say(io, "the demo module has no runDemo(); this checkout is incomplete");
    return EXIT.failed;
  }
  return mod.runDemo({ argv: [...argv], stdout: io.stdout, stderr: io.stderr, env: io.env });
}

// ---------------------------------------------------------------------------------------------
// output and failures

function say(io: CliIo, message: string): void {
  io.stderr.write(`flotilla: ${redact(message)}\n`);
}

function human(ctx: Ctx, text: string): void {
  if (!ctx.globals.json) ctx.io.stdout.write(hideToken(ctx, text));
}

function hideToken(ctx: Ctx, text: string): string {
  const t = ctx.globals.token;
  return t === undefined || t === "" ? text : text.split(t).join("***");
}

function toDoc<D extends DescMessage>(schema: D, message: MessageShape<D>): JsonValue {
  return toApiJson(schema, message);
}

function printJson(io: CliIo, doc: JsonValue): void {
  io.stdout.write(`${JSON.stringify(doc, null, 2)}\n`);
}

/** Prints the message's JSON (with --json) or its human view. */
function output<D extends DescMessage>(ctx: Ctx, schema: D, message: MessageShape<D>, view: () => string): void {
  if (ctx.globals.json) printJson(ctx.io, JSON.parse(hideToken(ctx, JSON.stringify(toDoc(schema, message)))) as JsonValue);
  else ctx.io.stdout.write(hideToken(ctx, view()));
}

/** The contract's exit code for a call that got no answer or a refusal. */
export function exitCodeOf(failure: CallFailure): number {
  if (failure.kind === "unreachable") return EXIT.unreachable;
  if (failure.code === "UNAUTHENTICATED" || failure.code === "PERMISSION_DENIED") return EXIT.unreachable;
  return isUsageError(failure.code) ? EXIT.usage : EXIT.failed;
}

/** Exit code of an operation that answered: succeeded 0, refused for a usage reason 2, else 1. */
function operationExit(r: OperationResult): number {
  if (r.status === "succeeded") return EXIT.ok;
  if (r.status === "refused" && r.errorCode !== "" && isUsageError(r.errorCode as Parameters<typeof isUsageError>[0])) return EXIT.usage;
  return EXIT.failed;
}

const HINTS: Readonly<Record<string, string>> = {
  UNAUTHENTICATED: "pass a valid API token with --token or FLOTILLA_TOKEN",
  PERMISSION_DENIED: "your token's role does not allow this; ask an admin for an operator or admin token",
  TARGET_BUSY: "another operation holds the target; see flotilla rollouts, wait, then retry",
  LEASE_HELD: "another controller replica leads; retry in a moment",
  AGENT_UNAVAILABLE: "the target's agent does not answer; check flotilla targets",
  TARGET_BROKEN: "flotilla diagnose TARGET lists each reason with its fix",
};

function fail(ctx: Ctx, failure: CallFailure): number {
  const code = exitCodeOf(failure);
  if (failure.kind === "unreachable") {
    say(ctx.io, failure.message);
  } else {
    const hint = HINTS[failure.code];
    say(ctx.io, `${failure.code}: ${failure.message}${hint === undefined || failure.message.includes(hint) ? "" : ` (${hint})`}`);
  }
  if (ctx.globals.json) {
    const error: Record<string, JsonValue> = { kind: failure.kind, message: redact(failure.message), exitCode: code };
    if (failure.kind === "rejected") {
      error["code"] = failure.code;
      error["httpStatus"] = failure.httpStatus;
    }
    printJson(ctx.io, { error });
  }
  return code;
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}
