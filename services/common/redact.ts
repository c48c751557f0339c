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

const KV_PASSWORD = /\b(password|passwd|pwd|sslpassword|secret|token)(\s*=\s*)('[^']*'|"[^"]*"|[^\s&;,]+)/gi;

const isSpace = (c: number): boolean =>
  c === 32 ||
  (c >= 9 && c <= 13) ||
  c === 0xa0 ||
  c === 0x1680 ||
  (c >= 0x2000 && c <= 0x200a) ||
  c === 0x2028 ||
  c === 0x2029 ||
  c === 0x202f ||
  c === 0x205f ||
  c === 0x3000 ||
  c === 0xfeff;
const isSchemeChar = (c: number): boolean => (c >= 97 && c <= 122) || (c >= 65 && c <= 90) || (c >= 48 && c <= 57) || c === 43 || c === 46 || c === 45;
const isLetter = (c: number): boolean => (c >= 97 && c <= 122) || (c >= 65 && c <= 90);
const isUpperWord = (c: number): boolean => (c >= 65 && c <= 90) || (c >= 48 && c <= 57) || c === 95;
const isWord = (c: number): boolean => isUpperWord(c) || (c >= 97 && c <= 122);

/**
 * Masks the password of every `scheme://user:password@` in one pass (linear in
 * the text: a regular expression for this shape backtracks quadratically on
 * long runs without an "@", which a hostile request can send).
 */
function maskUrlPasswords(text: string): string {
  if (!text.includes("://")) return text;
  const n = text.length;
  // nextAt[i]: first j >= i holding "@" or a space; nextUser[i]: first j >= i holding one of ":/?#@" or a space.
  const nextAt = new Int32Array(n + 1);
  const nextUser = new Int32Array(n + 1);
  nextAt[n] = n;
  nextUser[n] = n;
  for (let i = n - 1; i >= 0; i--) {
    const c = text.charCodeAt(i);
    nextAt[i] = c === 64 || isSpace(c) ? i : nextAt[i + 1]!;
    nextUser[i] = c === 64 || c === 58 || c === 47 || c === 63 || c === 35 || isSpace(c) ? i : nextUser[i + 1]!;
  }
  // letterInRun[i]: the run of scheme characters ending at i holds a letter (a scheme starts with one).
  const letterInRun = new Uint8Array(n);
  for (let i = 0; i < n; i++) {
    const c = text.charCodeAt(i);
    letterInRun[i] = isSchemeChar(c) ? (isLetter(c) || (i > 0 && letterInRun[i - 1] === 1) ? 1 : 0) : 0;
  }
  let out = "";
  let emitted = 0;
  let from = 0;
  for (;;) {
    const k = text.indexOf("://", from);
    if (k < 0) break;
    from = k + 1;
    if (k === 0 || letterInRun[k - 1] !== 1) continue;
    const colon = nextUser[k + 3]!;
    if (colon >= n || text.charCodeAt(colon) !== 58) continue;
    const at = nextAt[colon + 1]!;
    if (at >= n || text.charCodeAt(at) !== 64) continue;
    out += `${text.slice(emitted, colon + 1)}${MASK}@`;
    emitted = at + 1;
    from = at + 1;
  }
  return emitted === 0 ? text : out + text.slice(emitted);
}

/** Masks the value of every `NAME=value` whose upper-case NAME says SECRET, PASSWORD, TOKEN or _KEY (one pass). */
function maskSecretEnv(text: string): string {
  let out = "";
  let emitted = 0;
  let from = 0;
  for (;;) {
    const e = text.indexOf("=", from);
    if (e < 0) break;
    from = e + 1;
    let s = e;
    while (s > 0 && isUpperWord(text.charCodeAt(s - 1))) s--;
    if (s === e || s < emitted || (s > 0 && isWord(text.charCodeAt(s - 1)))) continue;
    const name = text.slice(s, e);
    if (!/SECRET|PASSWORD|TOKEN|_KEY/.test(name)) continue;
    let v = e + 1;
    while (v < text.length && !isSpace(text.charCodeAt(v))) v++;
    if (v === e + 1) continue;
    out += `${text.slice(emitted, e + 1)}${MASK}`;
    emitted = v;
    from = v;
  }
  return emitted === 0 ? text : out + text.slice(emitted);
}

/** Masks secrets in a string. Idempotent, and linear in the length of the text. */
export function redact(text: string): string {
  let out = text;
  for (const s of registered) {
    if (out.includes(s)) out = out.split(s).join(MASK);
  }
  out = maskUrlPasswords(out);
  out = out.replace(KV_PASSWORD, (_m, k: string, eq: string) => `${k}${eq}${MASK}`);
  out = maskSecretEnv(out);
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
