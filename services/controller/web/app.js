import { ApiError, setToken, whoami } from "./api.js";
import { fill, h } from "./dom.js";
import { auditView } from "./views/audit.js";
import { fleetView } from "./views/fleet.js";
import { planView } from "./views/plan.js";
import { rolloutView, rolloutsView } from "./views/rollouts.js";
import { schedulesView } from "./views/schedules.js";

/** What every view gets: who is signed in, what they may do, and the shared page parts. */
const session = { actor: "", role: "", methods: new Set(), leader: true, strategies: [] };

const $ = (id) => document.getElementById(id);

/** Shows a message at the top of the page (errors in red). Cleared on navigation. */
export function notify(text, bad = false) {
  const n = $("notice");
  n.textContent = text;
  n.className = bad ? "notice bad" : "notice";
  n.hidden = !text;
}

/** Asks before an action; resolves true only when the user confirms. */
export function confirmAction(title, text, okLabel) {
  const dialog = $("confirm");
  $("confirm-title").textContent = title;
  $("confirm-text").textContent = text;
  $("confirm-ok").textContent = okLabel;
  dialog.returnValue = "";
  dialog.showModal();
  $("confirm-cancel").focus();
  return new Promise((resolve) => dialog.addEventListener("close", () => resolve(dialog.returnValue === "ok"), { once: true }));
}

/** Whether the signed-in role may call a method (the API refuses it anyway). */
export function may(method) {
  return session.methods.has(method);
}

/** Reports an API failure; a rejected token sends the user back to sign-in. */
export function fail(err) {
  if (err?.name === "AbortError") return;
  if (err instanceof ApiError && err.status === 401) {
    signOut("Your token was not accepted any more: sign in again.");
    return;
  }
  notify(err instanceof Error ? err.message : String(err), true);
}

let current = { abort: new AbortController() };

const ROUTES = [
  [/^#\/fleet$/, "fleet", () => fleetView],
  [/^#\/rollouts$/, "rollouts", () => rolloutsView],
  [/^#\/rollouts\/([^/]+)$/, "rollouts", (m) => (ctx) => rolloutView(ctx, decodeURIComponent(m[1]))],
  [/^#\/audit$/, "audit", () => auditView],
  [/^#\/schedules$/, "schedules", () => schedulesView],
  [/^#\/plan$/, "plan", () => planView],
];

function route() {
  if (!session.role) return;
  current.abort.abort();
  current = { abort: new AbortController() };
  notify("");
  const hash = location.hash || "#/fleet";
  let hit;
  for (const [re, name, make] of ROUTES) {
    const m = re.exec(hash);
    if (m) { hit = { name, view: make(m) }; break; }
  }
  if (!hit) { location.hash = "#/fleet"; return; }
  for (const a of document.querySelectorAll("#nav a")) {
    if (a.dataset.view === hit.name) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
  const root = fill($("view"));
  Promise.resolve(hit.view({ root, signal: current.abort.signal, may, notify, fail, confirmAction, session })).catch(fail);
}

function showSignedIn(who) {
  session.actor = who.actor;
  session.role = who.role;
  session.methods = new Set(who.methods);
  session.leader = who.leader;
  session.strategies = who.strategies ?? [];
  $("sign-in").hidden = true;
  $("nav").hidden = false;
  $("who").hidden = false;
  fill($("who-text"), h("span", {}, `${who.actor} · `), h("strong", { id: "role" }, who.role), who.leader ? "" : h("span", {}, " · standby replica (read-only)"));
  route();
}

function signOut(message = "") {
  current.abort.abort();
  setToken("");
  session.role = "";
  session.methods = new Set();
  fill($("view"));
  $("nav").hidden = true;
  $("who").hidden = true;
  $("sign-in").hidden = false;
  const err = $("sign-in-error");
  err.textContent = message;
  err.hidden = !message;
  $("token").value = "";
  $("token").focus();
}

async function start() {
  $("sign-out").addEventListener("click", () => signOut());
  $("sign-in-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const value = $("token").value.trim();
    setToken(value);
    try {
      showSignedIn(await whoami(true));
    } catch (err) {
      setToken("");
      const e = $("sign-in-error");
      e.textContent = err instanceof ApiError && err.status === 401 ? "That token is not valid for this controller." : String(err.message ?? err);
      e.hidden = false;
    }
  });
  window.addEventListener("hashchange", route);
  try {
    // A token kept in this tab, or a controller without tokens (loopback only).
    showSignedIn(await whoami(false));
  } catch {
    signOut();
  }
}

start();
