import { pino, type Logger } from "pino";
import { redact } from "./redact.js";

export type { Logger };

/**
 * The root logger: JSON to stdout (or the given stream), secret paths removed,
 * every string passed through the redactor. Built once in each main.ts.
 */
export function createLogger(options: { name: string; level?: string; destination?: NodeJS.WritableStream }): Logger {
  return pino(
    {
      name: options.name,
      level: options.level ?? process.env.FLOTILLA_LOG_LEVEL ?? "info",
      redact: {
        paths: ["password", "*.password", "token", "*.token", "secret", "*.secret", "env.*", "*.env.*", "headers.authorization"],
        censor: "***",
      },
      formatters: {
        log(obj) {
          return JSON.parse(redact(JSON.stringify(obj))) as Record<string, unknown>;
        },
      },
      hooks: {
        logMethod(args, method) {
          const redacted = args.map((a) => (typeof a === "string" ? redact(a) : a)) as Parameters<typeof method>;
          method.apply(this, redacted);
        },
      },
      serializers: {
        err: (err: unknown) => {
          const e = err as { name?: string; message?: string; code?: string; stack?: string };
          return { type: e?.name, code: e?.code, message: redact(String(e?.message ?? err)), stack: e?.stack ? redact(e.stack) : undefined };
        },
      },
    },
    options.destination ?? process.stdout,
  );
}

/** A logger that writes nothing (tests, library use). */
export function silentLogger(): Logger {
  return pino({ level: "silent" });
}
