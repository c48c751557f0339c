import { call } from "../api.js";
import { badge, bytes, fill, h, relative, timeEl } from "../dom.js";

/** The fleet: agents with their health, every target with revisions, apps, backups and problems. */
export async function fleetView({ root, signal, may, fail }) {
  const selector = h("input", { id: "fleet-selector", name: "selector", placeholder: "env=prod,region=eu", value: sessionStorage.getItem("flotilla.selector") ?? "" });
  const agentsBox = h("div", { id: "agents" });
  // Certificates expiring within 30 days (the controller's own, and agents' as last seen).
  const warningsBox = h("div", { id: "cert-warnings" });
  const table = h("div", { id: "targets" });
  const stamp = h("span", { class: "muted", role: "status" });
  const form = h("form", { class: "row", role: "search", "aria-label": "Filter targets" },
    h("div", {}, h("label", { for: "fleet-selector" }, "Selector"), selector),
    h("button", { type: "submit" }, "Apply"),
    h("button", { type: "button", onclick: () => { selector.value = ""; load(); } }, "Clear"),
    stamp);
  form.addEventListener("submit", (ev) => { ev.preventDefault(); load(); });
  fill(root, h("h1", {}, "Fleet"), form, warningsBox, h("h2", {}, "Agents"), agentsBox, h("h2", {}, "Targets"), table);

  async function load() {
    sessionStorage.setItem("flotilla.selector", selector.value.trim());
    stamp.textContent = "loading…";
    try {
      const res = await call("ListTargets", { selector: selector.value.trim() }, signal);
      render(res);
      stamp.textContent = `as of ${new Date().toLocaleTimeString()}`;
    } catch (err) {
      stamp.textContent = "";
      fail(err);
    }
  }

  function render({ targets = [], agents = [], warnings = [] }) {
    fill(warningsBox, ...warnings.map((w) => h("p", { class: "notice", role: "status" }, w)));
    const health = new Map(agents.map((a) => [a.id, a]));
    fill(agentsBox, h("table", { "aria-label": "Agents" },
      h("thead", {}, h("tr", {}, h("th", { scope: "col" }, "Agent"), h("th", { scope: "col" }, "Health"), h("th", { scope: "col" }, "Address"), h("th", { scope: "col" }, "Last seen"), h("th", { scope: "col" }, "Error"))),
      h("tbody", {}, agents.map((a) => h("tr", {},
        h("th", { scope: "row" }, a.id), h("td", {}, badge(a.state)), h("td", { class: "mono" }, a.address),
        h("td", {}, timeEl(a.lastSeen)), h("td", {}, a.error))))));
    const rows = targets.map((t) => {
      const agent = health.get(t.agentId);
      const unreachable = Boolean(t.error) && !("current" in t && t.currentKnown) && agent?.state !== "up";
      const state = unreachable ? "unreachable" : t.state === "broken" ? "broken" : t.error ? "error" : "ok";
      const b = t.lastVerifiedBackup;
      // A broken target repeats its problems in error (for older readers): show them once.
      const problems = [...(t.problems ?? []), ...(t.error && t.state !== "broken" ? [t.error] : []), ...((t.interruptedOperationIds ?? []).map((id) => `interrupted operation ${id}: recover it (flotilla diagnose ${t.targetId})`))];
      const findings = h("td", { colspan: 11 });
      const findingsRow = h("tr", { hidden: true }, findings);
      const diagnose = may("DiagnoseTarget")
        ? h("button", { type: "button", "aria-label": `Diagnose ${t.targetId}`, onclick: async (ev) => {
          ev.target.disabled = true;
          findingsRow.hidden = false;
          fill(findings, "diagnosing…");
          try {
            const d = await call("DiagnoseTarget", { targetId: t.targetId }, signal);
            const bad = (d.findings ?? []).filter((f) => f.severity !== "ok");
            fill(findings, bad.length === 0 ? h("span", {}, badge("ok"), " no problem found") : h("ul", { class: "findings" }, bad.map((f) => h("li", {}, badge(f.severity === "error" ? "error" : "unknown"), " ", h("strong", {}, f.what), f.why ? ` — ${f.why}` : "", f.fix ? h("div", { class: "muted" }, `Fix: ${f.fix}`) : ""))));
          } catch (err) {
            fill(findings, h("span", { class: "error" }, err.message));
          } finally {
            ev.target.disabled = false;
          }
        } }, "Diagnose")
        : null;
      return [h("tr", { "data-target": t.targetId },
        h("th", { scope: "row" }, t.targetId, h("div", { class: "muted" }, Object.entries(t.labels ?? {}).map(([k, v]) => `${k}=${v}`).join(", "))),
        h("td", {}, t.agentId, " ", agent ? badge(agent.state) : null),
        h("td", {}, t.kind || "—"),
        h("td", { class: "mono" }, (t.current ?? []).join(", ") || "—"),
        h("td", { class: "mono" }, (t.heads ?? []).join(", ") || "—"),
        h("td", { class: "num", title: (t.pending ?? []).map((p) => `${p.id} ${p.message}`).join("\n") }, String((t.pending ?? []).length)),
        h("td", {}, (t.apps ?? []).length === 0 ? h("span", { class: "muted" }, "none") : h("ul", { class: "steps" }, t.apps.map((a) => h("li", {}, `${a.id} `, badge(a.state || "unknown"))))),
        h("td", {}, b ? [h("span", { class: "mono" }, b.id), h("div", { class: "muted" }, `${bytes(b.sizeBytes)} · ${relative(b.createdAt)}`)] : badge("none")),
        h("td", { title: t.lastDrillMessage || "" }, t.lastDrillAt
          ? [badge(t.lastDrillOk ? "ok" : "failed"), h("div", { class: "muted" }, `${relative(t.lastDrillAt)}${t.lastDrillBackupId ? ` · ${t.lastDrillBackupId}` : ""}`)]
          : h("span", { class: "muted" }, "never")),
        h("td", {}, badge(state), problems.length ? h("ul", { class: "findings" }, problems.map((p) => h("li", {}, p))) : null),
        h("td", {}, diagnose)),
      findingsRow];
    });
    fill(table, targets.length === 0 ? h("p", { class: "muted" }, "No target matches.") : h("table", { "aria-label": "Targets" },
      h("thead", {}, h("tr", {}, ["Target", "Agent", "Kind", "Current", "Head", "Pending", "Apps", "Last verified backup", "Last drill", "State and problems", ""].map((c) => h("th", { scope: "col" }, c)))),
      h("tbody", {}, rows)));
  }

  await load();
}
