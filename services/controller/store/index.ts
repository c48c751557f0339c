import { FlotillaError } from "../../common/errors.js";
import { redact } from "../../common/redact.js";
import type { ControllerStore } from "../core/ports.js";
import { PostgresStore } from "./postgres-store.js";
import { SqliteStore } from "./sqlite-store.js";

export { PostgresStore } from "./postgres-store.js";
export { SqliteStore } from "./sqlite-store.js";

/**
 * Chooses the store adapter for a `store:` URL. Does no I/O: call `init()` on
 * the result.
 *
 * - `sqlite:///var/lib/flotilla/controller.db` and `sqlite:////var/lib/flotilla/controller.db`
 *   both name the absolute file `/var/lib/flotilla/controller.db` (percent-escapes decoded).
 * - `postgresql://…` or `postgres://…` is handed to node-postgres as is.
 *
 * Anything else throws FlotillaError('CONFIG_INVALID') with a message that
 * never contains a password.
 */
export function openStore(url: string): ControllerStore {
  const shown = JSON.stringify(redact(url));
  const scheme = /^([a-z][a-z0-9+.-]*):/i.exec(url)?.[1]?.toLowerCase();
  if (scheme === "sqlite") {
    const m = /^sqlite:\/\/(\/.*)$/i.exec(url);
    const rest = m?.[1];
    if (rest === undefined) {
      throw new FlotillaError("CONFIG_INVALID", `store URL ${shown} is not a SQLite file URL: write sqlite:///absolute/path/controller.db`);
    }
    let file: string;
    try {
      file = decodeURIComponent(rest.replace(/^\/+/, "/"));
    } catch {
      throw new FlotillaError("CONFIG_INVALID", `store URL ${shown} has a malformed percent-escape in its path`);
    }
    if (file === "/" || file.endsWith("/")) {
      throw new FlotillaError("CONFIG_INVALID", `store URL ${shown} names a folder, not a database file`);
    }
    if (file.includes("\0")) throw new FlotillaError("CONFIG_INVALID", `store URL ${shown} contains a NUL byte`);
    return new SqliteStore(file);
  }
  if (scheme === "postgresql" || scheme === "postgres") {
    try {
      new URL(url);
    } catch {
      throw new FlotillaError("CONFIG_INVALID", `store URL ${shown} is not a valid PostgreSQL URL (postgresql://user@host:5432/db)`);
    }
    return new PostgresStore(url);
  }
  throw new FlotillaError("CONFIG_INVALID", `store URL ${shown} is not supported: use sqlite:///absolute/path/controller.db or postgresql://user@host:5432/db`);
}
