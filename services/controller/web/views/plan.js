import { call } from "../api.js";
import { badge, fill, h } from "../dom.js";

/** A dry run for a selector: per target the steps and the SQL that would run. Changes nothing. */
export async function planView({ root, signal, fail, session }) {
  const input = (id, label, attrs = {}) => h("div", {}, h("label", { for: id }, label), h("input", { id, name: id, ...attrs }));
  const strategy = h("select", { id: "plan-strategy", name: "strategy" }, session.strategies.map((s) => h("option", { value: s }, s)));
  const out = h("div", { id: "plan-result", "aria-live": "polite" });
  const form = h("form", { class: "card", "aria-label": "Plan a rollout" },
    h("div", { class: "row" },
      input("plan-selector", "Selector", { required: true, placeholder: "env=prod", value: sessionStorage.getItem("flotilla.selector") ?? "" }),
      input("plan-to", "To revision", { placeholder: "head" }),
      h("div", {}, h("label", { for: "plan-strategy" }, "Strategy"), strategy),
      input("plan-waves", "Waves", { placeholder: "1,25%,100%" }),
      h("button", { type: "submit", class: "primary" }, "Plan")));
  fill(root, h("h1", {}, "Plan"), h("p", { class: "muted" }, "A dry run: what a rollout would do on each target, and the SQL it would run. Nothing is changed."), form, out);
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    fill(out, h("p", { class: "muted" }, "planning…"));
    try {
      const p = await call("PlanRollout", {
        selector: form.elements["plan-selector"].value.trim(), toRevision: form.elements["plan-to"].value.trim() || "head",
        strategy: strategy.value, waves: form.elements["plan-waves"].value.trim(),
      }, signal);
      fill(out,
        h("p", {}, `${(p.targets ?? []).length} target(s) in ${p.waveCount} wave(s).`),
        (p.warnings ?? []).length ? h("ul", { class: "findings" }, p.warnings.map((w) => h("li", {}, badge("unknown"), ` ${w}`))) : null,
        (p.targets ?? []).map((t) => h("section", { class: "card", "data-target": t.targetId, "aria-label": `Plan for ${t.targetId}` },
          h("h2", {}, t.targetId, h("span", { class: "muted" }, ` · wave ${t.wave + 1} · agent ${t.agentId}`)),
          h("p", { class: "mono" }, `${(t.current ?? []).join(",") || "?"} → ${(t.pending ?? []).length} pending: ${(t.pending ?? []).map((r) => r.id).join(", ") || "none"}`),
          h("ol", {}, (t.steps ?? []).map((s) => h("li", {}, h("strong", {}, s.name), s.detail ? ` — ${s.detail}` : "", h("span", { class: "muted" }, ` (on ${s.agentId})`)))),
          [...(t.warnings ?? []).map((w) => h("p", { class: "error" }, w)), ...(t.notes ?? []).map((n) => h("p", { class: "muted" }, n))],
          t.sql ? h("details", {}, h("summary", {}, `SQL${t.sqlComplete ? "" : " (incomplete: some revisions cannot be rendered offline)"}`), h("pre", {}, t.sql)) : null)));
    } catch (err) {
      fill(out);
      fail(err);
    }
  });
}
