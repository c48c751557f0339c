import { call, exportAudit } from "../api.js";
import { badge, fill, h, timeEl } from "../dom.js";

const PAGE = 50;

/** The audit log: filters, paging back from the newest, export as JSON lines, chain verification. */
export async function auditView({ root, signal, fail, notify }) {
  const chain = h("p", { id: "chain", role: "status" }, "audit chain: checking…");
  const input = (id, label, attrs = {}) => h("div", {}, h("label", { for: id }, label), h("input", { id, name: id, ...attrs }));
  const outcome = h("select", { id: "audit-outcome", name: "outcome" }, ["", "ok", "error", "denied", "intent"].map((o) => h("option", { value: o }, o || "any")));
  const form = h("form", { class: "card", role: "search", "aria-label": "Filter the audit log" },
    h("div", { class: "row" },
      input("audit-since", "From", { type: "datetime-local", step: 1 }),
      input("audit-until", "Until", { type: "datetime-local", step: 1 }),
      input("audit-actor", "Actor", { placeholder: "alice" }),
      input("audit-action", "Action", { placeholder: "api.StartRollout", list: "audit-actions" }),
      input("audit-target", "Target", { placeholder: "webui-1" }),
      h("div", {}, h("label", { for: "audit-outcome" }, "Outcome"), outcome),
      h("button", { type: "submit", class: "primary" }, "Apply"),
      h("button", { type: "button", id: "audit-export", onclick: () => doExport() }, "Export JSON lines")),
    h("datalist", { id: "audit-actions" }, ["api.StartRollout", "api.AbortRollout", "api.RollbackRollout", "api.ApproveRollout", "api.SignIn", "api.ExportAudit", "step.migrate", "step.backup", "schedule.fire"].map((a) => h("option", { value: a }))));
  const table = h("div", { id: "audit-entries" });
  const pager = h("div", { class: "actions" });
  fill(root, h("h1", {}, "Audit log"), chain, form, table, pager);

  const pages = []; // beforeSeq of each page shown, for "Newer"
  let before = 0;

  function filter() {
    const val = (id) => form.elements[id].value.trim();
    const time = (id) => (val(id) ? new Date(val(id)).toISOString() : "");
    return { since: time("audit-since"), until: time("audit-until"), actor: val("audit-actor"), action: val("audit-action"), target: val("audit-target"), outcome: outcome.value };
  }

  async function load() {
    try {
      const f = filter();
      const body = Object.fromEntries(Object.entries(f).filter(([, v]) => v));
      const { entries = [] } = await call("QueryAudit", { ...body, limit: PAGE, ...(before ? { beforeSeq: String(before) } : {}) }, signal);
      const newest = [...entries].reverse();
      fill(table, newest.length === 0 ? h("p", { class: "muted" }, "No entry matches.") : h("table", { "aria-label": "Audit entries" },
        h("thead", {}, h("tr", {}, ["#", "Time", "Actor", "Action", "Target", "Outcome", "Detail"].map((c) => h("th", { scope: "col" }, c)))),
        h("tbody", {}, newest.map((e) => h("tr", {},
          h("td", { class: "num" }, e.seq), h("td", {}, timeEl(e.time, false)), h("td", {}, e.actor), h("td", { class: "mono" }, e.action),
          h("td", {}, e.target), h("td", {}, badge(e.outcome)), h("td", {}, e.detail, e.args && e.args !== "{}" && e.args !== "null" ? h("div", { class: "mono muted" }, e.args) : null))))));
      const oldest = newest.at(-1);
      fill(pager,
        pages.length ? h("button", { type: "button", onclick: () => { before = pages.pop(); load(); } }, "← Newer") : null,
        pages.length ? h("button", { type: "button", onclick: () => { pages.length = 0; before = 0; load(); } }, "Newest") : null,
        newest.length === PAGE && oldest ? h("button", { type: "button", onclick: () => { pages.push(before); before = Number(oldest.seq); load(); } }, "Older →") : null);
    } catch (err) {
      fail(err);
    }
  }

  async function doExport() {
    try {
      const text = await exportAudit(filter());
      const url = URL.createObjectURL(new Blob([text], { type: "application/x-ndjson" }));
      const a = h("a", { href: url, download: `flotilla-audit-${new Date().toISOString().replace(/[:.]/g, "-")}.jsonl` });
      document.body.append(a);
      a.click();
      a.remove();
      setTimeout(() => URL.revokeObjectURL(url), 10_000);
      notify(`Exported ${text.split("\n").filter(Boolean).length} entries (the export is recorded in the audit log).`);
    } catch (err) {
      fail(err);
    }
  }

  form.addEventListener("submit", (ev) => { ev.preventDefault(); pages.length = 0; before = 0; load(); });
  call("VerifyAudit", {}, signal).then((v) => {
    fill(chain, "audit chain: ", v.ok ? badge("ok") : badge("broken"), v.ok ? ` verified (${v.checked} entries)` : ` broken at entry ${v.firstBadSeq}: ${v.reason}`);
  }, fail);
  await load();
}
