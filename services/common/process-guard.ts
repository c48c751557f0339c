import type { Logger } from "./logger.js";
import { toFlotillaError } from "./errors.js";

/**
 * Process-level last resort for a daemon. Every request is answered inside its
 * handler's error boundary; a promise rejection that still escapes is a bug,
 * logged loudly (with its code, redacted) instead of ending the process and
 * every operation it is running. A synchronous exception that reaches the top
 * leaves the process in an unknown state: it is logged and the process exits 1
 * (the process manager restarts it; rollouts and operations resume from their journals).
 */
export function installProcessGuard(log: Logger): void {
  process.on("unhandledRejection", (reason) => {
    log.error({ err: toFlotillaError(reason) }, "bug: a promise rejection escaped its handler (the daemon keeps running)");
  });
  process.on("uncaughtException", (err) => {
    log.fatal({ err: toFlotillaError(err) }, "bug: an uncaught exception; exiting");
    process.exitCode = 1;
    setTimeout(() => process.exit(1), 200).unref();
  });
}
