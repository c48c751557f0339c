/** A tiny element builder: h("td", { class: "num" }, "3"). Text is always set as text, never as HTML. */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs ?? {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on") && typeof v === "function") el.addEventListener(k.slice(2), v);
    else if (k === "class") el.className = v;
    else if (v === true) el.setAttribute(k, "");
    else el.setAttribute(k, String(v));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const c of children) {
    if (c === undefined || c === null || c === false) continue;
    if (Array.isArray(c)) append(el, c);
    else el.append(c instanceof Node ? c : String(c));
  }
}

/** Replaces an element's children. */
export function fill(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

const TONE = {
  succeeded: "ok", ok: "ok", up: "ok", "up-to-date": "ok", restored: "warn", SERVING: "ok",
  failed: "bad", error: "bad", denied: "bad", down: "bad", broken: "bad", halted: "bad", "needs-restore": "bad", interrupted: "bad", unreachable: "bad",
  running: "run", pending: "idle", intent: "idle", skipped: "idle", unknown: "warn", aborted: "warn", "rolled-back": "warn", paused: "warn", waiting: "warn",
};

/** A status word as a coloured badge (the word is always shown: colour is never the only signal). */
export function badge(word) {
  return h("span", { class: `badge s-${TONE[word] ?? "idle"}` }, word || "—");
}

/** "3 min ago" / "in 2 h" for an ISO time; "" for none. */
export function relative(iso, now = Date.now()) {
  if (!iso) return "";
  const t = Date.parse(iso);
  if (Number.isNaN(t)) return "";
  const s = Math.round((t - now) / 1000);
  const a = Math.abs(s);
  if (a < 5) return "just now";
  const text = a < 60 ? `${a} s` : a < 3600 ? `${Math.round(a / 60)} min` : a < 86400 ? `${Math.round(a / 360) / 10} h` : `${Math.round(a / 8640) / 10} d`;
  return s >= 0 ? `in ${text}` : `${text} ago`;
}

/** Local date and time for an ISO time. */
export function when(iso) {
  if (!iso) return "—";
  const t = new Date(iso);
  return Number.isNaN(t.getTime()) ? iso : t.toLocaleString(undefined, { dateStyle: "medium", timeStyle: "medium" });
}

/** A time element: local time, with the exact ISO time for assistive tech and hover. */
export function timeEl(iso, withRelative = true) {
  if (!iso) return h("span", { class: "muted" }, "—");
  return h("time", { datetime: iso, title: iso }, when(iso), withRelative ? h("span", { class: "muted" }, ` (${relative(iso)})`) : null);
}

export function duration(ms) {
  if (ms === undefined || ms === null || Number.isNaN(ms) || ms < 0) return "";
  if (ms < 1000) return `${Math.round(ms)} ms`;
  const s = ms / 1000;
  if (s < 60) return `${s.toFixed(1)} s`;
  const m = Math.floor(s / 60);
  return `${m} min ${Math.round(s - m * 60)} s`;
}

export function bytes(n) {
  const v = Number(n ?? 0);
  if (!v) return "0 B";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  let x = v;
  while (x >= 1024 && i < units.length - 1) { x /= 1024; i++; }
  return `${x.toFixed(i === 0 ? 0 : 1)} ${units[i]}`;
}
