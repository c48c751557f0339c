/**
 * PostgreSQL connection URLs, parsed into parts so that child processes get
 * their connection settings through libpq environment variables and never
 * through argv. Pure: no I/O, no globals.
 *
 * libpq does not parse a URL given as PGDATABASE, so handing a URL around as a
 * database name silently connects to the wrong place; and a URL in argv is
 * readable by every user through /proc/<pid>/cmdline. Hence: parse once, pass
 * parts.
 */
import { FlotillaError } from "../../common/errors.js";

export type PgSslMode = "disable" | "allow" | "prefer" | "require" | "verify-ca" | "verify-full";

const SSL_MODES: readonly PgSslMode[] = ["disable", "allow", "prefer", "require", "verify-ca", "verify-full"];

/** The parts of a PostgreSQL URL the agent uses. */
export interface PgUrlParts {
  /** Host name, IP address (IPv6 without brackets), or a Unix-socket directory (starts with `/`). */
  readonly host: string;
  readonly port: number;
  readonly user: string;
  readonly database: string;
  /** Decoded password, when the URL carries one. */
  readonly password?: string;
  readonly sslmode?: PgSslMode;
  readonly sslrootcert?: string;
  readonly sslcert?: string;
  readonly sslkey?: string;
  /** libpq connect_timeout in seconds. */
  readonly connectTimeoutSeconds?: number;
}

/** Query parameters accepted in a URL; anything else is refused rather than silently ignored. */
const QUERY_KEYS = ["host", "port", "user", "password", "dbname", "sslmode", "sslrootcert", "sslcert", "sslkey", "connect_timeout"] as const;
type QueryKey = (typeof QUERY_KEYS)[number];

// scheme :// [user [: password] @] host [: port] [/ database] [? query]
const URL_SHAPE = /^(postgres|postgresql):\/\/(?:([^:@/?#]*)(?::([^@/?#]*))?@)?(\[[^\]/?#]*\]|[^:/?#]*)(?::([^/?#]*))?(?:\/([^?#]*))?(?:\?([^#]*))?$/;
const HOST_NAME = /^[A-Za-z0-9._-]+$/;
const IPV6 = /^[0-9A-Fa-f:.]+(?:%[A-Za-z0-9_.-]+)?$/;

function invalid(reason: string): FlotillaError {
  // Never echo the URL: it may carry a password.
  return new FlotillaError("CONFIG_INVALID", `PostgreSQL URL is not valid: ${reason}`);
}

function decode(part: string, what: string): string {
  try {
    return decodeURIComponent(part);
  } catch {
    throw invalid(`${what} has a malformed %-escape`);
  }
}

function parsePort(raw: string): number {
  if (!/^\d{1,5}$/.test(raw)) throw invalid("port must be a number from 1 to 65535");
  const port = Number(raw);
  if (port < 1 || port > 65535) throw invalid("port must be a number from 1 to 65535");
  return port;
}

function checkHost(host: string): void {
  if (host.startsWith("/")) return;
  if (host.includes(":")) {
    if (!IPV6.test(host)) throw invalid("IPv6 host is malformed");
    return;
  }
  if (!HOST_NAME.test(host)) {
    throw invalid("host contains characters that are not allowed (percent-encode '@', ':' and '/' in the user and password; several hosts are not supported)");
  }
}

/**
 * Parses `postgresql://user[:password]@host[:port]/database[?sslmode=…]` (or
 * `postgres://…`). The password is %-decoded. Port defaults to 5432 and the
 * database to the user name (as libpq does); the user is required. Throws
 * FlotillaError("CONFIG_INVALID") whose message never contains the URL.
 */
export function parsePgUrl(url: string): PgUrlParts {
  const m = URL_SHAPE.exec(url.trim());
  if (m === null) {
    if (!/^postgres(?:ql)?:\/\//i.test(url.trim())) throw invalid("it must start with postgresql:// or postgres://");
    throw invalid("expected postgresql://user[:password]@host[:port]/database");
  }
  const [, , rawUser, rawPassword, rawHost, rawPort, rawDb, rawQuery] = m;
  let user = rawUser !== undefined && rawUser !== "" ? decode(rawUser, "user") : undefined;
  let password = rawPassword !== undefined ? decode(rawPassword, "password") : undefined;
  let host = rawHost !== undefined && rawHost !== "" ? decode(rawHost, "host") : undefined;
  if (host?.startsWith("[")) host = host.slice(1, -1);
  let port = rawPort !== undefined && rawPort !== "" ? parsePort(rawPort) : undefined;
  let database = rawDb !== undefined && rawDb !== "" ? decode(rawDb, "database") : undefined;
  const query = new Map<QueryKey, string>();
  if (rawQuery !== undefined && rawQuery !== "") {
    for (const pair of rawQuery.split("&")) {
      if (pair === "") continue;
      const eq = pair.indexOf("=");
      const key = decode(eq < 0 ? pair : pair.slice(0, eq), "query key");
      const value = eq < 0 ? "" : decode(pair.slice(eq + 1).replace(/\+/g, " "), "query value");
      if (!(QUERY_KEYS as readonly string[]).includes(key)) {
        // Never echo the key: a '?' inside a password makes the rest of the password look like a query.
        throw invalid(`it has a query parameter that is not supported (supported: ${QUERY_KEYS.join(", ")}); percent-encode '?' in a password as %3F`);
      }
      query.set(key as QueryKey, value);
    }
  }
  // libpq lets query parameters fill in (or override) the authority parts.
  if (query.has("host")) host = query.get("host");
  if (query.has("port")) port = parsePort(query.get("port") ?? "");
  if (query.has("user")) user = query.get("user");
  if (query.has("password")) password = query.get("password");
  if (query.has("dbname")) database = query.get("dbname");

  if (host === undefined || host === "") host = "localhost";
  checkHost(host);
  if (user === undefined || user === "") throw invalid("it must name a user (postgresql://user@host/database)");
  if (database === undefined || database === "") database = user;
  if (database.includes("\0") || user.includes("\0")) throw invalid("NUL characters are not allowed");

  const sslmode = query.get("sslmode");
  if (sslmode !== undefined && !(SSL_MODES as readonly string[]).includes(sslmode)) {
    throw invalid(`sslmode must be one of ${SSL_MODES.join(", ")}`);
  }
  const timeout = query.get("connect_timeout");
  if (timeout !== undefined && !/^\d{1,6}$/.test(timeout)) throw invalid("connect_timeout must be a number of seconds");

  return {
    host,
    port: port ?? 5432,
    user,
    database,
    ...(password !== undefined && password !== "" ? { password } : {}),
    ...(sslmode !== undefined ? { sslmode: sslmode as PgSslMode } : {}),
    ...(query.get("sslrootcert") !== undefined ? { sslrootcert: query.get("sslrootcert")! } : {}),
    ...(query.get("sslcert") !== undefined ? { sslcert: query.get("sslcert")! } : {}),
    ...(query.get("sslkey") !== undefined ? { sslkey: query.get("sslkey")! } : {}),
    ...(timeout !== undefined ? { connectTimeoutSeconds: Number(timeout) } : {}),
  };
}

/** The same parts pointed at another database on the same server. */
export function withDatabase(parts: PgUrlParts, database: string): PgUrlParts {
  return { ...parts, database };
}

/** The same parts with the password replaced (or removed when `password` is undefined). */
export function withPassword(parts: PgUrlParts, password: string | undefined): PgUrlParts {
  const { password: _old, ...rest } = parts;
  return password === undefined || password === "" ? rest : { ...rest, password };
}

/**
 * libpq environment for a child process: PGHOST, PGPORT, PGUSER, PGDATABASE and
 * the SSL settings. Never contains the password (give that through a
 * PGPASSFILE, see pgpass.ts) and never a URL.
 */
export function libpqEnv(parts: PgUrlParts): Record<string, string> {
  const env: Record<string, string> = {
    PGHOST: parts.host,
    PGPORT: String(parts.port),
    PGUSER: parts.user,
    PGDATABASE: parts.database,
  };
  if (parts.sslmode !== undefined) env.PGSSLMODE = parts.sslmode;
  if (parts.sslrootcert !== undefined) env.PGSSLROOTCERT = parts.sslrootcert;
  if (parts.sslcert !== undefined) env.PGSSLCERT = parts.sslcert;
  if (parts.sslkey !== undefined) env.PGSSLKEY = parts.sslkey;
  if (parts.connectTimeoutSeconds !== undefined) env.PGCONNECT_TIMEOUT = String(parts.connectTimeoutSeconds);
  return env;
}

const enc = (s: string): string => encodeURIComponent(s);

/**
 * Formats the parts as `postgresql://user[:password]@host:port/database[?…]`.
 * The password is included (URL-encoded) only when `withPassword` is true:
 * such a string goes into a child's environment and nowhere else.
 */
export function formatPgUrl(parts: PgUrlParts, options: { withPassword: boolean }): string {
  const socket = parts.host.startsWith("/");
  const query: string[] = [];
  // A socket directory cannot sit in the authority; libpq and psycopg2 both take ?host=.
  if (socket) query.push(`host=${enc(parts.host)}`, `port=${parts.port}`);
  if (parts.sslmode !== undefined) query.push(`sslmode=${parts.sslmode}`);
  if (parts.sslrootcert !== undefined) query.push(`sslrootcert=${enc(parts.sslrootcert)}`);
  if (parts.sslcert !== undefined) query.push(`sslcert=${enc(parts.sslcert)}`);
  if (parts.sslkey !== undefined) query.push(`sslkey=${enc(parts.sslkey)}`);
  if (parts.connectTimeoutSeconds !== undefined) query.push(`connect_timeout=${parts.connectTimeoutSeconds}`);
  const authority = socket ? "" : `${parts.host.includes(":") ? `[${parts.host}]` : parts.host}:${parts.port}`;
  const secret = options.withPassword && parts.password !== undefined ? `:${enc(parts.password)}` : "";
  const q = query.length > 0 ? `?${query.join("&")}` : "";
  return `postgresql://${enc(parts.user)}${secret}@${authority}/${enc(parts.database)}${q}`;
}

/** The URL without any password, for display and logs. */
export function displayPgUrl(parts: PgUrlParts): string {
  return formatPgUrl(parts, { withPassword: false });
}
