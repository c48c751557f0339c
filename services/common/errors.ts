/**
 * The closed set of error codes Flotilla reports. Every refusal and failure a
 * user can meet carries one of these; the CLI maps them to exit codes, the
 * gRPC layer (grpc-bridge.ts) and the HTTP layer (httpStatusOf) map them to
 * status codes in exactly one place each.
 */
export const ERROR_CODES = [
  "INVALID_ARGUMENT",
  "NOT_FOUND",
  "TARGET_BUSY",
  "APP_STILL_RUNNING",
  "MULTIPLE_HEADS",
  "UNKNOWN_REVISION",
  "BACKUP_UNVERIFIED",
  "BACKUP_FAILED",
  "VERIFY_FAILED",
  "RESTORE_FAILED",
  "ALEMBIC_FAILED",
  "MIGRATION_FAILED",
  /** An operator's hook (a switch script) exited non-zero: an outside failure, not a bad request. */
  "HOOK_FAILED",
  "DATA_LOSS_NOT_ACCEPTED",
  "STAMP_REFUSED",
  "INTERRUPTED",
  "CONFIG_INVALID",
  "AGENT_UNAVAILABLE",
  "UNAUTHENTICATED",
  "PERMISSION_DENIED",
  "AUDIT_UNAVAILABLE",
  "LEASE_HELD",
  "PRECONDITION_FAILED",
  "TARGET_BROKEN",
  "TIMEOUT",
  "CANCELLED",
  "INTERNAL",
] as const;

export type ErrorCode = (typeof ERROR_CODES)[number];

export function isErrorCode(value: string): value is ErrorCode {
  return (ERROR_CODES as readonly string[]).includes(value);
}

/** The one error class. `message` says what was wrong and what to do. */
export class FlotillaError extends Error {
  readonly code: ErrorCode;
  constructor(code: ErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options?.cause === undefined ? undefined : { cause: options.cause });
    this.name = "FlotillaError";
    this.code = code;
  }
}

/** Turns anything thrown into a FlotillaError; system errors map to codes here and only here. */
export function toFlotillaError(err: unknown): FlotillaError {
  if (err instanceof FlotillaError) return err;
  if (err instanceof Error) {
    const sys = (err as NodeJS.ErrnoException).code;
    if (sys === "ENOENT") return new FlotillaError("NOT_FOUND", err.message, { cause: err });
    if (sys === "ENOSPC") return new FlotillaError("INTERNAL", `disk full: ${err.message}`, { cause: err });
    if (sys === "ETIMEDOUT") return new FlotillaError("TIMEOUT", err.message, { cause: err });
    if (sys === "ECONNREFUSED") return new FlotillaError("AGENT_UNAVAILABLE", err.message, { cause: err });
    if (err.name === "AbortError") return new FlotillaError("CANCELLED", err.message, { cause: err });
    return new FlotillaError("INTERNAL", err.message, { cause: err });
  }
  return new FlotillaError("INTERNAL", String(err));
}

/** FlotillaError → HTTP status. The only such mapping. */
export function httpStatusOf(code: ErrorCode): number {
  switch (code) {
    case "INVALID_ARGUMENT":
    case "CONFIG_INVALID":
    case "DATA_LOSS_NOT_ACCEPTED":
    case "STAMP_REFUSED":
      return 400;
    case "UNAUTHENTICATED":
      return 401;
    case "PERMISSION_DENIED":
      return 403;
    case "NOT_FOUND":
      return 404;
    case "TARGET_BUSY":
    case "LEASE_HELD":
    case "APP_STILL_RUNNING":
    case "MULTIPLE_HEADS":
    case "UNKNOWN_REVISION":
    case "BACKUP_UNVERIFIED":
    case "PRECONDITION_FAILED":
    case "INTERRUPTED":
    case "TARGET_BROKEN":
      return 409;
    case "AGENT_UNAVAILABLE":
    case "AUDIT_UNAVAILABLE":
      return 503;
    case "TIMEOUT":
      return 504;
    case "CANCELLED":
      return 499;
    default:
      return 500;
  }
}

/**
 * Codes that mean "the request itself was wrong or not allowed now; nothing
 * changed": the CLI exits 2 on these.
 */
export function isUsageError(code: ErrorCode): boolean {
  return [
    "INVALID_ARGUMENT",
    "CONFIG_INVALID",
    "NOT_FOUND",
    "TARGET_BUSY",
    "LEASE_HELD",
    "APP_STILL_RUNNING",
    "MULTIPLE_HEADS",
    "UNKNOWN_REVISION",
    "BACKUP_UNVERIFIED",
    "DATA_LOSS_NOT_ACCEPTED",
    "STAMP_REFUSED",
    "PRECONDITION_FAILED",
  ].includes(code);
}
