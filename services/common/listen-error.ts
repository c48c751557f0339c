import { FlotillaError } from "./errors.js";

/**
 * A daemon that cannot listen must say why and exit, never stay up half
 * started. Turns a bind failure (grpc-js or node:net) into one clear message.
 */
export function listenError(what: string, address: string, err: unknown): FlotillaError {
  const text = err instanceof Error ? err.message : String(err);
  const code = (err as NodeJS.ErrnoException | undefined)?.code ?? /\b(EADDRINUSE|EACCES|EADDRNOTAVAIL)\b/.exec(text)?.[1];
  const why =
    code === "EADDRINUSE"
      ? "the port is already in use (another process listens there: stop it, or choose another port)"
      : code === "EACCES"
        ? "permission denied (ports below 1024 need privileges: choose a port above 1024)"
        : code === "EADDRNOTAVAIL"
          ? "the address is not one of this host's (use 127.0.0.1, 0.0.0.0 or an address of this host)"
          : text;
  return new FlotillaError("CONFIG_INVALID", `cannot listen for ${what} on ${address}: ${why}`, { cause: err });
}
