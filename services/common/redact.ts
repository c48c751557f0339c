/**
 * Secret redaction for every string that leaves a process: log lines, error
 * messages, audit rows, streamed child output. Registered secret values are
 * replaced wherever they appear; URL passwords, key=value DSN passwords and
 * query-string passwords are masked by shape.
 */

const MASK = "***";
const registered = new Set<string>();

/** Remembers a secret value (a password, a token, WEBUI_SECRET_KEY) so it is masked everywhere. */
export function registerSecret(value: string | undefined): void {
  if (value === undefined) return;
  const v = value.trim();
  if (v.length >= 4) registered.add(v);
  if (v !== value && value.length >= 4) registered.add(value);
  try {
    const enc = encodeURIComponent(v);
    if (enc !== v) registered.add(enc);
  } catch {
    // not encodable: nothing more to register
  }
}

const URL_PASSWORD = /([a-z][a-z0-9+.-]*:\/\/[^:/?#@\s]*:)([^@\s]*)@/gi;
const KV_PASSWORD = /\b(password|passwd|pwd|sslpassword|secret|token)(\s*=\s*)('[^']*'|"[^"]*"|[^\s&;,]+)/gi;
const SECRET_ENV = /\b([A-Z0-9_]*(?:SECRET|PASSWORD|TOKEN|_KEY)[A-Z0-9_]*)(=)(\S+)/g;

/** Masks secrets in a string. Idempotent. */
export function redact(text: string): string {
  let out = text;
  for (const s of registered) {
    if (out.includes(s)) out = out.split(s).join(MASK);
  }
  out = out.replace(URL_PASSWORD, (_m, pre: string) => `${pre}${MASK}@`);
  out = out.replace(KV_PASSWORD, (_m, k: string, eq: string) => `${k}${eq}${MASK}`);
  out = out.replace(SECRET_ENV, (_m, k: string, eq: string) => `${k}${eq}${MASK}`);
  return out;
}

/** Deep copy of a JSON-like value with every string redacted and secret-named keys masked. */
export function redactValue(value: unknown): unknown {
  if (typeof value === "string") return redact(value);
  if (Array.isArray(value)) return value.map(redactValue);
  if (value !== null && typeof value === "object") {
    const out: Record<string, unknown> = {};
    for (const [k, v] of Object.entries(value as Record<string, unknown>)) {
      out[k] = isSecretKey(k) && v !== "" && v !== undefined && v !== null ? MASK : redactValue(v);
    }
    return out;
  }
  return value;
}

/** True for keys that hold secrets by name (password, token, *_SECRET_KEY, …). */
export function isSecretKey(key: string): boolean {
  return /password|passwd|secret|token|api[_-]?key|private[_-]?key|^authorization$/i.test(key);
}
