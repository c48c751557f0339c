import type {
  AuditEntry,
  ListRolloutsResponse,
  ListSchedulesResponse,
  ListTargetsResponse,
  QueryAuditResponse,
  Rollout,
  RolloutLine,
  RolloutPlan,
  RolloutTarget,
  VerifyAuditResponse,
} from "../common/gen/flotilla/v1/controller_pb.js";
import { DEFAULT_STRATEGY, type ProtoStrategy, SIDE_BY_SIDE_STRATEGIES, STRATEGIES, strategyName } from "../common/rollout-request.js";

/** A strategy from the API by name ("" when not given). */
const nameOf = (s: ProtoStrategy | undefined): string => strategyName(s ?? 0);
import type { BackupInfo, DiagnoseResponse, ListBackupsResponse, OperationResult, TargetStatus } from "../common/gen/flotilla/v1/agent_pb.js";

/**
 * Human views of the controller's answers: short, aligned, the important thing
 * first (failures and what to do next), then the detail. Pure functions of
 * their input and `now`; they never print, the caller does.
 */

/** One symbol per state, so a column of states reads at a glance. */
export function stateSymbol(state: string): string {
  switch (state) {
    case "succeeded":
    case "ok":
    case "up":
      return "✓";
    case "failed":
    case "error":
    case "refused":
    case "down":
      return "✗";
    case "running":
      return "▶";
    case "pending":
      return "·";
    case "skipped":
      return "-";
    case "interrupted":
    case "warning":
      return "!";
    case "restored":
    case "rolled-back":
      return "↺";
    case "halted":
    case "aborted":
      return "■";
    case "info":
      return "i";
    default:
      return "?";
  }
}

/** Aligned columns, two spaces apart, no trailing blanks. */
export function renderTable(headers: readonly string[], rows: ReadonlyArray<readonly string[]>): string {
  const all = [headers, ...rows];
  const widths = headers.map((_, c) => Math.max(...all.map((r) => width(r[c] ?? ""))));
  const line = (r: readonly string[]): string =>
    r
      .map((cell, c) => (c === r.length - 1 ? cell : pad(cell, widths[c] ?? 0)))
      .join("  ")
      .trimEnd();
  return `${all.map(line).join("\n")}\n`;
}

function width(s: string): number {
  return [...s].length;
}

function pad(s: string, n: number): string {
  return s + " ".repeat(Math.max(0, n - width(s)));
}

/** 850ms, 2.3s, 4m05s, 2h03m. */
export function formatDuration(ms: number): string {
  if (!Number.isFinite(ms) || ms < 0) return "-";
  if (ms < 1000) return `${Math.round(ms)}ms`;
  if (ms < 60_000) return `${(ms / 1000).toFixed(1)}s`;
  const s = Math.round(ms / 1000);
  if (s < 3600) return `${Math.floor(s / 60)}m${String(s % 60).padStart(2, "0")}s`;
  const m = Math.round(s / 60);
  return `${Math.floor(m / 60)}h${String(m % 60).padStart(2, "0")}m`;
}

/** 512 B, 12.3 MiB. */
export function formatBytes(n: bigint | number): string {
  let v = Number(n);
  if (v < 1024) return `${v} B`;
  for (const unit of ["KiB", "MiB", "GiB", "TiB"]) {
    v /= 1024;
    if (v < 1024 || unit === "TiB") return `${v.toFixed(v < 10 ? 1 : 0)} ${unit}`;
  }
  return `${v} B`;
}

/** "just now", "5m ago", "3h ago", "2d ago"; "-" when unknown. */
export function formatAge(iso: string, now: Date): string {
  const t = Date.parse(iso);
  if (iso === "" || Number.isNaN(t)) return "-";
  const s = Math.round((now.getTime() - t) / 1000);
  if (s < 0) return "in the future";
  if (s < 45) return "just now";
  if (s < 3600) return `${Math.round(s / 60)}m ago`;
  if (s < 86_400 * 2) return `${Math.round(s / 3600)}h ago`;
  return `${Math.round(s / 86_400)}d ago`;
}

/** 2024-05-01 03:00:01Z (UTC, seconds). */
export function formatTime(iso: string): string {
  const t = Date.parse(iso);
  if (iso === "" || Number.isNaN(t)) return iso === "" ? "-" : iso;
  return `${new Date(t).toISOString().slice(0, 19).replace("T", " ")}Z`;
}

function between(startIso: string, endIso: string): number | undefined {
  const a = Date.parse(startIso);
  const b = Date.parse(endIso);
  return Number.isNaN(a) || Number.isNaN(b) ? undefined : b - a;
}

function revs(list: readonly string[], known = true): string {
  if (!known) return "?";
  return list.length === 0 ? "(empty)" : list.join("+");
}

function indent(text: string, by: string): string {
  return text
    .replace(/\s+$/, "")
    .split("\n")
    .map((l) => (l === "" ? "" : `${by}${l}`))
    .join("\n");
}

function clip(s: string, n: number): string {
  const one = s.replace(/\s+/g, " ").trim();
  return width(one) <= n ? one : `${[...one].slice(0, n - 1).join("")}…`;
}

// ---------------------------------------------------------------------------------------------
// targets

function targetProblems(t: TargetStatus): string[] {
  const out: string[] = [];
  if (t.state === "broken") {
    // The problems say it all, each with its fix (`error` repeats them for older readers).
    for (const p of t.problems) out.push(`broken: ${p}`);
    if (t.problems.length === 0) out.push(`broken; run flotilla diagnose ${t.targetId}`);
  } else if (t.error !== "") out.push(t.error);
  for (const op of t.interruptedOperationIds) out.push(`operation ${op} was interrupted; run flotilla diagnose ${t.targetId}`);
  if (t.heads.length > 1) out.push(`${t.heads.length} Alembic heads (${t.heads.join(", ")}); merge them before migrating`);
  return out;
}

/** The inventory: problems first, then one row per target, then a one-line summary. */
export function renderTargets(resp: ListTargetsResponse, now: Date): string {
  const out: string[] = [];
  for (const w of resp.warnings) out.push(`${stateSymbol("warning")} ${w}`);
  for (const a of resp.agents) {
    if (a.state !== "up") {
      const seen = a.lastSeen === "" ? "" : ` (last seen ${formatAge(a.lastSeen, now)})`;
      out.push(
        `${stateSymbol(a.state === "down" ? "down" : "warning")} agent ${a.id} is ${a.state || "unknown"}${a.error === "" ? "" : `: ${a.error}`}${seen}`,
      );
    }
  }
  const rank = (t: TargetStatus): number => (targetProblems(t).length > 0 ? 0 : t.busyOperationId !== "" ? 1 : t.pending.length > 0 ? 2 : 3);
  const targets = [...resp.targets].sort((a, b) => rank(a) - rank(b) || a.targetId.localeCompare(b.targetId));
  for (const t of targets) for (const p of targetProblems(t)) out.push(`✗ ${t.targetId}: ${p}`);
  if (out.length > 0) out.push("");
  if (targets.length === 0) {
    out.push("no targets match; check the selector, or that the agents are configured and up");
    return `${out.join("\n")}\n`;
  }
  const rows = targets.map((t) => {
    const known = t.currentKnown || t.current.length > 0;
    const running = t.apps.filter((a) => a.state === "running").length;
    const app =
      t.apps.length === 0
        ? "-"
        : running > 0
          ? `${running}/${t.apps.length} running`
          : t.apps.every((a) => a.state === "stopped")
            ? "stopped"
            : t.apps.map((a) => a.state).join(",");
    const b = t.lastVerifiedBackup;
    const backup = b === undefined || b.id === "" ? "none" : `✓ ${formatAge(b.verifiedAt || b.createdAt, now)}`;
    const pending = t.error !== "" && !known ? "?" : t.pending.length === 0 ? "up to date" : String(t.pending.length);
    const state = t.state === "broken" ? "BROKEN" : t.busyOperationId !== "" ? `busy (${t.busyOperationId})` : "";
    const drill = t.lastDrillAt === "" ? "never" : `${t.lastDrillOk ? "✓" : "✗"} ${formatAge(t.lastDrillAt, now)}`;
    return [
      t.targetId,
      t.agentId || "-",
      t.kind || "-",
      revs(t.current, known),
      t.heads.length === 0 ? "?" : t.heads.join("+"),
      pending,
      app,
      backup,
      drill,
      state,
    ];
  });
  out.push(renderTable(["TARGET", "AGENT", "DB", "CURRENT", "HEAD", "PENDING", "APP", "LAST BACKUP", "LAST DRILL", ""], rows).trimEnd());
  const behind = targets.filter((t) => t.pending.length > 0).length;
  const problems = targets.filter((t) => targetProblems(t).length > 0).length;
  const parts = [`${targets.length} target${targets.length === 1 ? "" : "s"}`];
  if (problems > 0) parts.push(`${problems} with problems`);
  if (behind > 0) parts.push(`${behind} behind`);
  parts.push(`${targets.length - behind - problems} up to date`);
  out.push("", parts.join(" · "));
  if (behind > 0) out.push("next: flotilla plan --selector … to see the steps and SQL");
  return `${out.join("\n")}\n`;
}

// ---------------------------------------------------------------------------------------------
// diagnose

const SEVERITY_RANK: Readonly<Record<string, number>> = { error: 0, warning: 1, info: 2, ok: 3 };

/** Findings worst first, each with why and fix; passed checks listed after. */
export function renderDiagnosis(resp: DiagnoseResponse): string {
  const findings = [...resp.findings].sort((a, b) => (SEVERITY_RANK[a.severity] ?? 2) - (SEVERITY_RANK[b.severity] ?? 2));
  const bad = findings.filter((f) => f.severity === "error" || f.severity === "warning");
  const passed = findings.filter((f) => f.severity === "ok");
  const errors = findings.filter((f) => f.severity === "error").length;
  const warnings = findings.filter((f) => f.severity === "warning").length;
  const out: string[] = [];
  const counts = [errors > 0 ? `${errors} error${errors === 1 ? "" : "s"}` : "", warnings > 0 ? `${warnings} warning${warnings === 1 ? "" : "s"}` : ""]
    .filter((s) => s !== "")
    .join(", ");
  out.push(
    resp.problems || bad.length > 0
      ? `✗ ${resp.targetId}: ${counts || "problems found"} · ${passed.length} check${passed.length === 1 ? "" : "s"} passed`
      : `✓ ${resp.targetId}: no problems · ${passed.length} check${passed.length === 1 ? "" : "s"} passed`,
  );
  for (const f of findings.filter((x) => x.severity !== "ok")) {
    out.push("", `${stateSymbol(f.severity)} ${pad(f.severity, 8)} ${f.what}`);
    if (f.why !== "") out.push(`  why: ${f.why}`);
    if (f.fix !== "") out.push(`  fix: ${f.fix}`);
  }
  if (passed.length > 0) {
    out.push("");
    for (const f of passed) out.push(`✓ ${f.what}`);
  }
  return `${out.join("\n")}\n`;
}

// ---------------------------------------------------------------------------------------------
// operations and backups

function backupLines(b: BackupInfo): string[] {
  return [
    `  id        ${b.id}`,
    `  size      ${formatBytes(b.sizeBytes)}`,
    `  sha256    ${b.sha256 || "-"}`,
    `  revision  ${revs(b.revisions)}`,
    `  verified  ${b.verified ? "✓ yes" : "✗ NO"}${b.verification === "" ? "" : ` (${b.verification})`}`,
    ...(b.companionPaths > 0
      ? [
          `  files     ${b.companionPaths} companion path(s), ${formatBytes(b.companionBytes)} (${formatBytes(b.companionNewBytes)} new, the rest shared with earlier backups)`,
        ]
      : []),
    ...(b.appVersion !== "" ? [`  app       ${b.appVersion}`] : []),
  ];
}

/**
 * The result of one target operation (backup, restore, downgrade, stamp):
 * outcome first, then the facts, the Alembic output tail on failure, and what
 * to do next.
 */
export function renderOperationResult(what: string, targetId: string, r: OperationResult): string {
  const ok = r.status === "succeeded";
  const took = r.durationMs > 0n ? ` in ${formatDuration(Number(r.durationMs))}` : "";
  const why = [r.errorCode, r.failureClass].filter((s) => s !== "").join(", ");
  const out = [`${stateSymbol(r.status || "failed")} ${what} of ${targetId} ${r.status || "failed"}${why === "" ? "" : ` (${why})`}${took}`];
  if (r.message !== "") out.push(`  ${r.message}`);
  if (r.restored) out.push(`  ↺ the database was restored from the backup taken before; it is at its old revision with its old data`);
  if (r.effect === "none" && !ok && r.status !== "refused") out.push("  the database is unchanged: the failed run rolled back, no restore was needed");
  if (r.effect === "needs-restore") {
    out.push(`  ⚠ NEEDS RESTORE: the database changed and could not be restored yet; ${targetId} stays locked`);
    for (const s of r.blockingSessions) out.push(`    blocking: ${s}`);
    out.push(`  end those sessions, then run: flotilla recover ${targetId} --action restore`);
  }
  if (r.revisionBefore.length > 0 || r.revisionAfter.length > 0) out.push(`  revision  ${revs(r.revisionBefore)} → ${revs(r.revisionAfter)}`);
  if (r.backup !== undefined && r.backup.id !== "") {
    out.push(...backupLines(r.backup));
  }
  for (const t of r.timings)
    out.push(`  ${t.fromRevision || "base"} → ${t.toRevision}  ${formatDuration(Number(t.durationMs))}${t.message === "" ? "" : `  ${t.message}`}`);
  if (!ok && r.outputTail.trim() !== "") out.push("  output (last lines):", indent(r.outputTail, "    │ "));
  if (!ok) out.push(`next: flotilla diagnose ${targetId}`);
  return `${out.join("\n")}\n`;
}

/** Backups newest first with their verification state. */
export function renderBackups(targetId: string, resp: ListBackupsResponse, now: Date): string {
  if (resp.backups.length === 0) return `no backups of ${targetId}; take one with flotilla backup ${targetId}\n`;
  const backups = [...resp.backups].sort((a, b) => b.createdAt.localeCompare(a.createdAt));
  const rows = backups.map((b) => [
    b.id,
    `${formatTime(b.createdAt)} (${formatAge(b.createdAt, now)})`,
    formatBytes(b.sizeBytes),
    revs(b.revisions),
    b.verified ? "✓ verified" : `✗ not verified${b.verification === "" ? "" : `: ${clip(b.verification, 60)}`}`,
  ]);
  return renderTable(["BACKUP", "CREATED", "SIZE", "REVISION", "VERIFIED"], rows);
}

// ---------------------------------------------------------------------------------------------
// plan

/** The dry run: per target its wave, current → target, pending revisions, steps, notes and SQL. */
export function renderPlan(plan: RolloutPlan): string {
  const spec = plan.spec;
  const to = spec?.toRevision || "head";
  const waves = plan.waveCount || new Set(plan.targets.map((t) => t.wave)).size;
  const out = [
    `plan: ${plan.targets.length} target${plan.targets.length === 1 ? "" : "s"} in ${waves} wave${waves === 1 ? "" : "s"} · strategy ${nameOf(spec?.strategy) || DEFAULT_STRATEGY} · to ${to} · nothing was changed`,
  ];
  for (const w of plan.warnings) out.push(`! ${w}`);
  if (plan.targets.length === 0) {
    out.push("no targets match the selector");
    return `${out.join("\n")}\n`;
  }
  const targets = [...plan.targets].sort((a, b) => a.wave - b.wave || a.targetId.localeCompare(b.targetId));
  for (const t of targets) {
    const dest = t.pending.length > 0 ? (t.pending[t.pending.length - 1]?.id ?? to) : to;
    out.push("", `wave ${t.wave + 1}  ${t.targetId}${t.agentId === "" ? "" : `  (agent ${t.agentId})`}`);
    out.push(
      t.pending.length === 0 ? `  revision  ${revs(t.current)} (up to date)` : `  revision  ${revs(t.current)} → ${dest}  (${t.pending.length} pending)`,
    );
    for (const w of t.warnings) out.push(`  ! ${w}`);
    if (t.pending.length > 0) {
      const cls = new Map(t.revisions.map((r) => [r.id, r]));
      const rows = t.pending.map((p) => {
        const c = cls.get(p.id);
        return [p.id, c === undefined ? "-" : `${c.compatibility}${c.compatibilityReason === "" ? "" : ` (${c.compatibilityReason})`}`, p.message];
      });
      out.push(indent(renderTable(["PENDING", "COMPATIBILITY", "MESSAGE"], rows), "  "));
      if (t.allowedStrategies.length > 0)
        out.push(
          `  allows    ${t.allowedStrategies.map(nameOf).join(", ")}${t.allowedStrategies.length < STRATEGIES.length ? ` (${SIDE_BY_SIDE_STRATEGIES.join(" and ")} run old and new code side by side: they need additive revisions, or --allow-breaking)` : ""}`,
        );
    }
    if (t.steps.length > 0) out.push(`  steps     ${t.steps.map((s) => s.name).join(" → ")}`);
    for (const n of t.notes) out.push(`  note: ${n}`);
    if (t.sql.trim() !== "") {
      out.push(t.sqlComplete ? "  SQL:" : "  SQL (incomplete: some revisions run code offline mode cannot show):");
      out.push(indent(t.sql, "      "));
    }
  }
  const strategy = plan.refused ? DEFAULT_STRATEGY : nameOf(spec?.strategy) || DEFAULT_STRATEGY;
  const allow = !plan.refused && spec?.allowBreaking ? " --allow-breaking" : "";
  const lead = plan.refused ? `${nameOf(spec?.strategy) || "this strategy"} is refused for these revisions (see above); with ${DEFAULT_STRATEGY}` : "to run it";
  out.push(
    "",
    `${lead}: flotilla rollout --selector ${spec?.selector || "…"} --strategy ${strategy}${to === "head" ? "" : ` --to ${to}`}${spec?.waves ? ` --waves ${spec.waves}` : ""}${allow} --wait`,
  );
  return `${out.join("\n")}\n`;
}

// ---------------------------------------------------------------------------------------------
// rollouts

const ACTIVE = new Set(["pending", "running", ""]);

/** True while a rollout may still change (pending or running). */
export function isRolloutActive(status: string): boolean {
  return ACTIVE.has(status);
}

function targetRank(t: RolloutTarget): number {
  switch (t.status) {
    case "failed":
      return 0;
    case "restored":
      return 1;
    case "running":
      return 2;
    default:
      return 3;
  }
}

function stepsCompact(t: RolloutTarget): string {
  return t.steps.map((s) => `${stateSymbol(s.state)}${s.name}`).join(" ");
}

/** One rollout: headline, failed targets with next steps, then every target with its step states. */
export function renderRollout(r: Rollout, now: Date): string {
  const spec = r.spec;
  const waves = Math.max(0, ...r.targets.map((t) => t.wave)) + 1;
  const head = [`rollout ${r.id}  ${stateSymbol(r.status)} ${r.status || "pending"}`];
  if (spec !== undefined) head.push(`${nameOf(spec.strategy) || DEFAULT_STRATEGY} → ${spec.toRevision || "head"}`, `selector ${spec.selector}`);
  if (waves > 1) head.push(`wave ${r.currentWave + 1}/${waves}`);
  if (r.createdAt !== "") head.push(`started ${formatAge(r.createdAt, now)}${r.actor === "" ? "" : ` by ${r.actor}`}`);
  const out = [head.join(" · ")];
  if (r.paused) out.push(`paused: running steps finish, no new step starts · resume: flotilla rollout resume ${r.id}`);
  if (r.waitingFor !== "")
    out.push(`waiting for ${r.waitingFor}${r.gateExpiresAt === "" ? "" : ` (the gate expires ${r.gateExpiresAt}; then the rollout halts)`}`);
  if (r.message !== "") out.push(r.message);
  for (const w of r.warnings) out.push(`! ${w}`);

  const told = r.targets.filter((t) => t.message !== "");
  if (told.length > 0) {
    out.push("");
    for (const t of told) out.push(`  ${stateSymbol(t.status)} ${t.targetId}: ${t.message}`);
  }
  if (r.targets.length > 0) {
    const targets = [...r.targets].sort((a, b) => targetRank(a) - targetRank(b) || a.wave - b.wave || a.targetId.localeCompare(b.targetId));
    const rows = targets.map((t) => {
      const after = t.revisionAfter.length > 0 ? ` → ${revs(t.revisionAfter)}` : "";
      const rev = t.revisionBefore.length > 0 || after !== "" ? `${revs(t.revisionBefore)}${after}` : "-";
      return [t.targetId, String(t.wave + 1), `${stateSymbol(t.status)} ${t.status || "pending"}`, rev, stepsCompact(t)];
    });
    out.push("", renderTable(["TARGET", "WAVE", "STATUS", "REVISION", "STEPS"], rows).trimEnd());
  } else {
    out.push("", "no targets");
  }
  const next = nextSteps(r);
  if (next !== "") out.push("", next);
  return `${out.join("\n")}\n`;
}

function nextSteps(r: Rollout): string {
  switch (r.status) {
    case "pending":
    case "running":
      if (r.waitingFor !== "") return `approve: flotilla rollout approve ${r.id} · stop: flotilla rollout abort ${r.id}`;
      return `follow: flotilla rollout show ${r.id} --follow · pause: flotilla rollout pause ${r.id} · stop: flotilla rollout abort ${r.id}`;
    case "failed":
    case "halted": {
      const migrated = r.targets.some((t) => t.status === "succeeded");
      const retryable = r.targets.some((t) => t.status === "failed" || t.status === "restored" || t.status === "skipped");
      const steps = [
        retryable ? `retry what did not complete: flotilla rollout retry ${r.id}` : "",
        migrated ? `undo the migrated ones: flotilla rollout rollback ${r.id} --yes` : "",
      ]
        .filter((x) => x !== "")
        .join(" · ");
      return steps === "" ? "" : `next: ${steps}`;
    }
    case "aborted":
      return `targets already migrated stay migrated · undo them: flotilla rollout rollback ${r.id} --yes`;
    case "succeeded":
      return nameOf(r.spec?.strategy) === "blue-green" ? `undo within the rollback window: flotilla rollout rollback ${r.id} --yes` : "";
    default:
      return "";
  }
}

/** The last lines of a followed rollout: where each target's database really is now. */
export function renderFinalLines(r: Rollout): string {
  if (r.targets.length === 0) return "";
  const rows = r.targets.map((t) => [t.targetId, t.revisionAfter.length > 0 ? revs(t.revisionAfter) : revs(t.revisionBefore), t.status || "pending"]);
  return `where each database is now:\n${renderTable(["TARGET", "REVISION", "STATUS"], rows)}`;
}

/** Recent rollouts, one line each. */
export function renderRollouts(resp: ListRolloutsResponse, now: Date): string {
  if (resp.rollouts.length === 0) return "no rollouts yet; start one with flotilla rollout --selector S --strategy X\n";
  const rows = resp.rollouts.map((r) => {
    const ok = r.targets.filter((t) => t.status === "succeeded").length;
    const bad = r.targets.filter((t) => t.status === "failed" || t.status === "restored").length;
    const counts = `${ok}✓${bad > 0 ? ` ${bad}✗` : ""} /${r.targets.length}`;
    const state = r.paused ? `${r.status}, paused` : r.waitingFor !== "" ? `${r.status}, waiting for ${r.waitingFor.split(":")[0]}` : r.status;
    return [
      r.id,
      `${stateSymbol(r.status)} ${state}`,
      nameOf(r.spec?.strategy),
      r.spec?.toRevision || "head",
      r.spec?.selector ?? "",
      counts,
      formatAge(r.createdAt, now),
      r.actor || "-",
    ];
  });
  return renderTable(["ROLLOUT", "STATUS", "STRATEGY", "TO", "SELECTOR", "TARGETS", "STARTED", "BY"], rows);
}

/**
 * Turns a stream of rollout snapshots and Alembic lines into printable lines:
 * only what changed since the previous snapshot (step transitions, target
 * outcomes, wave and rollout status changes).
 */
export class RolloutFollower {
  readonly #clock: () => Date;
  #prev: Rollout | undefined;
  #targetWidth = 8;

  constructor(clock: () => Date = () => new Date()) {
    this.#clock = clock;
  }

  /** Sets the baseline without printing anything (e.g. the rollout just started). */
  prime(r: Rollout): void {
    this.#prev = r;
    this.#widen(r);
  }

  /** Lines describing what changed since the previous snapshot. */
  snapshot(r: Rollout): string[] {
    this.#widen(r);
    const prev = this.#prev;
    this.#prev = r;
    const out: string[] = [];
    const stamp = this.#stamp();
    if (prev !== undefined && r.currentWave !== prev.currentWave && r.currentWave > 0) {
      const waves = Math.max(0, ...r.targets.map((t) => t.wave)) + 1;
      out.push(`${stamp}  ── wave ${r.currentWave + 1} of ${waves} ──`);
    }
    for (const t of r.targets) {
      const before = prev?.targets.find((x) => x.targetId === t.targetId);
      t.steps.forEach((s, i) => {
        const old = before?.steps[i];
        const oldState = old !== undefined && old.name === s.name ? old.state : "pending";
        if (s.state === oldState || s.state === "pending") return;
        const took = s.state !== "running" ? between(s.startedAt, s.finishedAt) : undefined;
        const extra = [took === undefined ? "" : formatDuration(took), s.state === "failed" || s.state === "interrupted" ? s.detail : ""]
          .filter((x) => x !== "")
          .join("  ");
        out.push(`${stamp}  ${pad(t.targetId, this.#targetWidth)}  ${pad(s.name, 13)}  ${stateSymbol(s.state)} ${s.state}${extra === "" ? "" : `  ${extra}`}`);
      });
      if (before !== undefined && before.status !== t.status && !isRolloutActive(t.status)) {
        out.push(`${stamp}  ${stateSymbol(t.status)} ${t.targetId} ${t.status}${this.#targetOutcome(t)}`);
      }
    }
    if (prev !== undefined && prev.status !== r.status) {
      out.push(`${stamp}  rollout ${r.id}: ${stateSymbol(r.status)} ${r.status}${r.message === "" ? "" : ` — ${r.message}`}`);
    }
    return out;
  }

  /** One streamed Alembic (or agent) output line. */
  line(l: RolloutLine): string {
    return `${this.#stamp()}  ${pad(l.targetId, this.#targetWidth)}  ${pad(l.step, 13)}  │ ${l.line}`;
  }

  #targetOutcome(t: RolloutTarget): string {
    if (t.status === "succeeded") return t.revisionAfter.length > 0 ? `: ${revs(t.revisionBefore)} → ${revs(t.revisionAfter)}` : "";
    if (t.status === "restored")
      return `: restored from backup${t.backupId === "" ? "" : ` ${t.backupId}`}, back at ${revs(t.revisionBefore)}${t.message === "" ? "" : ` — ${t.message}`}`;
    return t.message === "" ? "" : `: ${t.message}`;
  }

  #widen(r: Rollout): void {
    this.#targetWidth = Math.max(this.#targetWidth, ...r.targets.map((t) => width(t.targetId)));
  }

  #stamp(): string {
    const d = this.#clock();
    return [d.getHours(), d.getMinutes(), d.getSeconds()].map((n) => String(n).padStart(2, "0")).join(":");
  }
}

// ---------------------------------------------------------------------------------------------
// schedules and audit

export function renderSchedules(resp: ListSchedulesResponse, now: Date): string {
  if (resp.schedules.length === 0)
    return 'no schedules; add one with flotilla schedule add NAME --cron "0 3 * * 0" --selector env=prod --strategy maintenance\n';
  const rows = resp.schedules.map((s) => [
    s.name,
    s.cron,
    s.timeZone || "-",
    s.nextRun === "" ? "-" : s.nextRun,
    s.selector,
    s.drill ? "drill" : nameOf(s.strategy),
    s.drill ? "-" : s.window || "-",
    s.drill ? "-" : s.toRevision || "head",
    s.lastRun === "" ? "never" : formatAge(s.lastRun, now),
    s.lastResult || "-",
    s.source || "-",
  ]);
  return renderTable(["SCHEDULE", "CRON", "TIME ZONE", "NEXT RUN", "SELECTOR", "STRATEGY", "WINDOW", "TO", "LAST RUN", "RESULT", "SOURCE"], rows);
}

export function renderAudit(resp: QueryAuditResponse): string {
  if (resp.entries.length === 0) return "no audit entries match\n";
  const rows = resp.entries.map((e) => [
    String(e.seq),
    formatTime(e.time),
    e.actor,
    e.action,
    e.target || "-",
    `${stateSymbol(outcomeState(e.outcome))} ${e.outcome}`,
    clip(e.detail, 70),
  ]);
  return renderTable(["SEQ", "TIME", "ACTOR", "ACTION", "TARGET", "OUTCOME", "DETAIL"], rows);
}

function outcomeState(outcome: string): string {
  switch (outcome) {
    case "ok":
      return "ok";
    case "error":
    case "denied":
      return "error";
    case "intent":
      return "running";
    default:
      return outcome;
  }
}

/** The verification verdict; when broken, the first bad entry in full. */
export function renderAuditVerify(resp: VerifyAuditResponse, firstBad: AuditEntry | undefined): string {
  if (resp.ok) return `✓ audit log intact: ${resp.checked} entries checked, hash chain unbroken\n`;
  const out = [`✗ audit log BROKEN at entry #${resp.firstBadSeq}: ${resp.reason || "hash mismatch"}`];
  if (firstBad !== undefined) {
    out.push(
      `  time       ${formatTime(firstBad.time)}`,
      `  actor      ${firstBad.actor}`,
      `  action     ${firstBad.action}${firstBad.target === "" ? "" : ` on ${firstBad.target}`}`,
      `  outcome    ${firstBad.outcome}`,
      `  args       ${firstBad.args || "-"}`,
      `  detail     ${firstBad.detail || "-"}`,
      `  prev_hash  ${firstBad.prevHash}`,
      `  hash       ${firstBad.hash}`,
    );
  }
  const before = resp.firstBadSeq > 1n ? ` entries before #${resp.firstBadSeq} are intact;` : "";
  out.push(`${resp.checked} entries checked;${before} the log was edited outside Flotilla: keep an export (flotilla audit export --out FILE) and investigate`);
  return `${out.join("\n")}\n`;
}
