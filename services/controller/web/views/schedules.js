import { call } from "../api.js";
import { badge, fill, h, relative, timeEl } from "../dom.js";

/** Scheduled fleet-wide migrations and drills, with their next run in their time zone. */
export async function schedulesView({ root, signal, fail }) {
  const { schedules = [] } = await call("ListSchedules", {}, signal).catch((err) => { fail(err); return {}; });
  const inZone = (iso, zone) => {
    if (!iso) return "";
    try {
      // dateStyle cannot be combined with timeZoneName: spell the parts out.
      return new Date(iso).toLocaleString(undefined, { timeZone: zone || undefined, weekday: "short", year: "numeric", month: "short", day: "numeric", hour: "2-digit", minute: "2-digit", timeZoneName: "short" });
    } catch {
      return iso;
    }
  };
  fill(root, h("h1", {}, "Schedules"), schedules.length === 0 ? h("p", { class: "muted" }, "No schedule. Add one with flotilla schedule add NAME --cron EXPR --selector S --strategy X.") : h("table", { "aria-label": "Schedules" },
    h("thead", {}, h("tr", {}, ["Name", "What", "Cron", "Time zone", "Next run", "Selector", "Strategy", "Window", "Gate", "Last run", "Source"].map((c) => h("th", { scope: "col" }, c)))),
    h("tbody", {}, schedules.map((s) => h("tr", { "data-schedule": s.name },
      h("th", { scope: "row" }, s.name),
      h("td", {}, s.drill ? "restore drill" : `migrate to ${s.toRevision || "head"}`),
      h("td", { class: "mono" }, s.cron),
      h("td", {}, s.timeZone || h("span", { class: "muted" }, "controller's")),
      h("td", { class: "next-run" }, s.nextRun ? [h("time", { datetime: s.nextRun, title: s.nextRun }, inZone(s.nextRun, s.timeZone)), h("div", { class: "muted" }, relative(s.nextRun))] : h("span", { class: "muted" }, "—")),
      h("td", { class: "mono" }, s.selector), h("td", {}, s.strategy), h("td", {}, s.window), h("td", {}, s.gate || "—"),
      h("td", {}, s.lastRun ? [timeEl(s.lastRun), h("div", {}, badge(s.lastResult?.startsWith("started") ? "ok" : s.lastResult?.startsWith("skipped") ? "skipped" : "failed"), ` ${s.lastResult ?? ""}`)] : h("span", { class: "muted" }, "never")),
      h("td", {}, s.source))))));
}
