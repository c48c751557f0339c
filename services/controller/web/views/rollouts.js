import { call, watchRollout } from "../api.js";
import { badge, bytes, duration, fill, h, timeEl } from "../dom.js";

const ACTIVE = new Set(["pending", "running"]);
const TERMINAL = new Set(["succeeded", "failed", "halted", "aborted", "rolled-back"]);
const MAX_LINES = 400;

function counts(r) {
  const by = {};
  for (const t of r.targets ?? []) by[t.status] = (by[t.status] ?? 0) + 1;
  return Object.entries(by).map(([k, v]) => `${v} ${k}`).join(", ");
}

/** Rollouts, newest first, and a form to start one. */
export async function rolloutsView({ root, signal, may, fail, confirmAction, session }) {
  const list = h("div", { id: "rollout-list" });
  const parts = [h("h1", {}, "Rollouts")];
  if (may("StartRollout")) parts.push(startForm());
  parts.push(h("div", { class: "row" }, h("h2", {}, "Recent"), h("button", { type: "button", onclick: () => load() }, "Refresh")), list);
  fill(root, parts);

  function startForm() {
    const field = (id, label, attrs = {}) => h("div", {}, h("label", { for: id }, label), h("input", { id, name: id, ...attrs }));
    const strategy = h("select", { id: "start-strategy", name: "strategy" }, session.strategies.map((s) => h("option", { value: s }, s)));
    const form = h("form", { class: "card", "aria-labelledby": "start-title" },
      h("h2", { id: "start-title" }, "Start a rollout"),
      h("div", { class: "row" },
        field("start-selector", "Selector", { required: true, placeholder: "env=prod" }),
        field("start-to", "To revision", { placeholder: "head" }),
        h("div", {}, h("label", { for: "start-strategy" }, "Strategy"), strategy),
        field("start-waves", "Waves", { placeholder: "1,25%,100%" }),
        field("start-gate", "Gate", { placeholder: "manual or manual:2h" }),
        h("button", { type: "submit", class: "primary" }, "Start…")));
    form.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      const spec = {
        selector: form.elements["start-selector"].value.trim(), toRevision: form.elements["start-to"].value.trim() || "head",
        strategy: strategy.value, waves: form.elements["start-waves"].value.trim(), gate: form.elements["start-gate"].value.trim(),
      };
      if (!(await confirmAction("Start a rollout", `Migrate every target matching ${spec.selector} to ${spec.toRevision} with the ${spec.strategy} strategy${spec.gate ? `, gated (${spec.gate})` : ""}?`, "Start rollout"))) return;
      try {
        const r = await call("StartRollout", spec, signal);
        location.hash = `#/rollouts/${encodeURIComponent(r.id)}`;
      } catch (err) {
        fail(err);
      }
    });
    return form;
  }

  async function load() {
    try {
      const { rollouts = [] } = await call("ListRollouts", { limit: 50 }, signal);
      fill(list, rollouts.length === 0 ? h("p", { class: "muted" }, "No rollout yet.") : h("table", { "aria-label": "Rollouts" },
        h("thead", {}, h("tr", {}, ["Rollout", "Status", "Strategy", "Selector", "To", "Started", "By", "Targets"].map((c) => h("th", { scope: "col" }, c)))),
        h("tbody", {}, rollouts.map((r) => h("tr", {},
          h("th", { scope: "row" }, h("a", { href: `#/rollouts/${encodeURIComponent(r.id)}`, class: "mono" }, r.id)),
          h("td", {}, badge(r.status), r.paused ? [" ", badge("paused")] : null, r.waitingFor ? [" ", badge("waiting")] : null),
          h("td", {}, r.spec?.strategy), h("td", { class: "mono" }, r.spec?.selector), h("td", { class: "mono" }, r.spec?.toRevision),
          h("td", {}, timeEl(r.createdAt)), h("td", {}, r.actor), h("td", {}, counts(r)))))));
    } catch (err) {
      fail(err);
    }
  }
  await load();
}

function stepDuration(s, now) {
  if (!s.startedAt) return "";
  const end = s.finishedAt ? Date.parse(s.finishedAt) : now;
  return duration(end - Date.parse(s.startedAt));
}

/** One rollout, live: waves, per-target steps, Alembic lines and progress, the gate, and the controls the role may use. */
export async function rolloutView({ root, signal, may, notify, fail, confirmAction }, id) {
  const head = h("div", { id: "rollout-head" });
  const controls = h("div", { class: "actions", id: "rollout-controls", role: "group", "aria-label": "Rollout controls" });
  const waves = h("div", { id: "waves" });
  const live = h("p", { id: "live-state", class: "muted", role: "status" }, "connecting…");
  const log = h("pre", { id: "live-lines", role: "log", "aria-label": "Live Alembic and step output", tabindex: "0" });
  fill(root, h("p", {}, h("a", { href: "#/rollouts" }, "← Rollouts")), h("h1", {}, "Rollout ", h("span", { class: "mono" }, id)), head, controls, waves, h("h2", {}, "Live output"), live, log);

  let doc;
  const progress = new Map();
  const lines = [];

  function renderAll() {
    if (!doc) return;
    const now = Date.now();
    const spec = doc.spec ?? {};
    fill(head, h("dl", { class: "kv card" },
      h("dt", {}, "Status"), h("dd", { id: "rollout-status" }, badge(doc.status), doc.paused ? [" ", badge("paused")] : null, doc.message ? h("span", {}, ` ${doc.message}`) : null),
      h("dt", {}, "Started by"), h("dd", {}, doc.actor || "—", " at ", timeEl(doc.createdAt)),
      h("dt", {}, "Finished"), h("dd", {}, timeEl(doc.finishedAt)),
      h("dt", {}, "What"), h("dd", { class: "mono" }, `${spec.selector} → ${spec.toRevision} · ${spec.strategy}${spec.waves ? ` · waves ${spec.waves}` : ""}${spec.gate ? ` · gate ${spec.gate}` : ""}${spec.schedule ? ` · schedule ${spec.schedule}` : ""}`),
      (doc.warnings ?? []).length ? [h("dt", {}, "Warnings"), h("dd", {}, h("ul", {}, doc.warnings.map((w) => h("li", {}, w))))] : null),
      doc.waitingFor ? h("div", { class: "gate", id: "gate", role: "status" }, h("strong", {}, "Waiting for "), doc.waitingFor,
        doc.gateExpiresAt ? h("span", {}, " — the gate expires ", timeEl(doc.gateExpiresAt)) : null) : null);
    renderControls();
    const byWave = new Map();
    for (const t of doc.targets ?? []) {
      const w = t.wave ?? 0;
      if (!byWave.has(w)) byWave.set(w, []);
      byWave.get(w).push(t);
    }
    fill(waves, [...byWave.keys()].sort((a, b) => a - b).map((w) => h("section", { "aria-label": `Wave ${w + 1}` },
      h("h2", {}, `Wave ${w + 1}`, w === doc.currentWave && ACTIVE.has(doc.status) ? h("span", { class: "muted" }, " (current)") : ""),
      h("table", {},
        h("thead", {}, h("tr", {}, ["Target", "Agent", "Status", "Revision", "Progress", "Steps", "Backup"].map((c) => h("th", { scope: "col" }, c)))),
        h("tbody", {}, byWave.get(w).map((t) => {
          const p = progress.get(t.targetId);
          return h("tr", { "data-target": t.targetId },
            h("th", { scope: "row" }, t.targetId),
            h("td", {}, t.agentId),
            h("td", {}, badge(t.status), t.message ? h("div", { class: "muted" }, t.message) : null),
            h("td", { class: "mono" }, `${(t.revisionBefore ?? []).join(",") || "?"} → ${(t.revisionAfter ?? []).join(",") || "…"}`),
            h("td", {}, progressCell(p, t)),
            h("td", {}, h("ul", { class: "steps" }, (t.steps ?? []).map((s) => h("li", { title: s.detail || s.name }, `${s.name} `, badge(s.state), s.startedAt ? h("span", { class: "muted" }, ` ${stepDuration(s, now)}`) : null)))),
            h("td", { class: "mono" }, t.backupId || "—"));
        }))))));
  }

  function progressCell(p, t) {
    if (!p || !(Number(p.revisionCount) > 0)) return t.status === "running" ? h("span", { class: "muted" }, "running") : "";
    const n = Number(p.revisionIndex);
    const total = Number(p.revisionCount);
    const done = TERMINAL.has(t.status) || ["succeeded", "up-to-date"].includes(t.status);
    return h("div", {},
      h("progress", { max: total, value: done ? total : Math.max(0, n - 1), "aria-label": `${t.targetId} revision ${n} of ${total}` }),
      h("div", { class: "muted" }, `revision ${n}/${total}`, Number(p.etaMs) > 0 && !done ? ` · about ${duration(Number(p.etaMs))} left` : "",
        Number(p.bytesTotal) > 0 ? ` · ${bytes(p.bytesDone)} of ${bytes(p.bytesTotal)}` : ""));
  }

  function button(method, label, question, body = {}, danger = false) {
    if (!may(method)) return null;
    return h("button", { type: "button", class: danger ? "danger" : "", "data-action": method, onclick: async (ev) => {
      if (!(await confirmAction(label, question, label))) return;
      ev.target.disabled = true;
      try {
        const r = await call(method, { id, ...body }, signal);
        if (r.id && r.id !== id) {
          location.hash = `#/rollouts/${encodeURIComponent(r.id)}`;
          return;
        }
        doc = r;
        notify(`${label}: done.`);
        renderAll();
      } catch (err) {
        fail(err);
      } finally {
        ev.target.disabled = false;
      }
    } }, label);
  }

  function renderControls() {
    const active = ACTIVE.has(doc.status);
    fill(controls,
      doc.waitingFor ? button("ApproveRollout", "Approve", `Let rollout ${id} go on: ${doc.waitingFor}?`) : null,
      active && !doc.paused ? button("PauseRollout", "Pause", `Pause rollout ${id}? Running steps finish; no new step starts until it is resumed.`) : null,
      doc.paused ? button("ResumeRollout", "Resume", `Resume rollout ${id}?`) : null,
      active ? button("AbortRollout", "Abort", `Abort rollout ${id}? It stops before its next step; targets already migrated stay migrated.`, {}, true) : null,
      ["failed", "halted", "aborted"].includes(doc.status) ? button("RetryRollout", "Retry", `Start a new rollout over the targets of ${id} that did not succeed?`) : null,
      TERMINAL.has(doc.status) && doc.status !== "rolled-back" ? button("RollbackRollout", "Roll back", `Roll back rollout ${id}? Blue-green switches back; other strategies restore the pre-migration backups and LOSE data written since.`, { yes: true }, true) : null);
    if (controls.childElementCount === 0) controls.append(h("span", { class: "muted" }, TERMINAL.has(doc.status) ? "This rollout has ended." : "No control available to your role."));
  }

  function addLine(l) {
    if (Number(l.revisionCount) > 0) progress.set(l.targetId, l);
    lines.push(`[${l.targetId}] ${l.step ? `${l.step}: ` : ""}${l.line}`);
    if (lines.length > MAX_LINES) lines.splice(0, lines.length - MAX_LINES);
    const atBottom = log.scrollTop + log.clientHeight >= log.scrollHeight - 20;
    log.textContent = lines.join("\n");
    if (atBottom) log.scrollTop = log.scrollHeight;
  }

  let pending = false;
  function scheduleRender() {
    if (pending) return;
    pending = true;
    requestAnimationFrame(() => { pending = false; renderAll(); });
  }

  try {
    await watchRollout(id, (kind, data) => {
      if (kind === "snapshot") { doc = data; live.textContent = TERMINAL.has(doc.status) ? `ended: ${doc.status}` : "live"; scheduleRender(); }
      else if (kind === "line") { addLine(data); scheduleRender(); }
      else if (kind === "failure") fail(new Error(data.message));
    }, signal);
    if (doc) live.textContent = `ended: ${doc.status}`;
  } catch (err) {
    live.textContent = "not live";
    fail(err);
  }
}
