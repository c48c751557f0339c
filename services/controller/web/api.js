/** The page's client of the controller's HTTP API (POST /v1/<Method>, proto3 JSON). */
const KEY = "flotilla.token";

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

export function token() {
  return sessionStorage.getItem(KEY) ?? "";
}

export function setToken(value) {
  if (value) sessionStorage.setItem(KEY, value);
  else sessionStorage.removeItem(KEY);
}

function headers(extra = {}) {
  const t = token();
  return { ...extra, ...(t ? { authorization: `Bearer ${t}` } : {}) };
}

async function failure(res) {
  let body = {};
  try { body = await res.json(); } catch { /* not JSON */ }
  return new ApiError(res.status, body.code ?? `HTTP_${res.status}`, body.message ?? `${res.status} ${res.statusText}`);
}

/** Calls one ControllerService method. */
export async function call(method, body = {}, signal) {
  const res = await fetch(`/v1/${method}`, { method: "POST", headers: headers({ "content-type": "application/json" }), body: JSON.stringify(body), signal });
  if (!res.ok) throw await failure(res);
  return res.json();
}

/** Who the token belongs to: { actor, role, methods, leader, strategies }. signIn=true records a sign-in in the audit log. */
export async function whoami(signIn = false) {
  const res = signIn
    ? await fetch("/v1/SignIn", { method: "POST", headers: headers() })
    : await fetch("/v1/whoami", { headers: headers() });
  if (!res.ok) throw await failure(res);
  return res.json();
}

/** The audit export (JSON lines) as text; the controller records the export. */
export async function exportAudit(filter) {
  const q = new URLSearchParams(Object.entries(filter).filter(([, v]) => v));
  const res = await fetch(`/v1/ExportAudit?${q}`, { headers: headers() });
  if (!res.ok) throw await failure(res);
  return res.text();
}

/**
 * Follows a rollout's server-sent event stream (fetch, so the bearer header
 * goes along; EventSource cannot send one). Calls onEvent(kind, data) for
 * snapshot, line, end and failure; resolves when the stream ends.
 */
export async function watchRollout(id, onEvent, signal) {
  const res = await fetch(`/v1/rollouts/${encodeURIComponent(id)}/events`, { headers: headers({ accept: "text/event-stream" }), signal });
  if (!res.ok) throw await failure(res);
  const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += value;
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      let kind = "message";
      const data = [];
      for (const line of block.split("\n")) {
        if (line.startsWith("event: ")) kind = line.slice(7);
        else if (line.startsWith("data: ")) data.push(line.slice(6));
      }
      if (data.length) onEvent(kind, JSON.parse(data.join("\n")));
    }
  }
}
