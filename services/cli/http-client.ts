import http from "node:http";
import https from "node:https";
import tls from "node:tls";
import { isLoopbackHost } from "../common/tls.js";
import type { IncomingMessage } from "node:http";
import { create } from "@bufbuild/protobuf";
import { fromApiJson, toApiJson } from "../common/proto-json.js";
import type { DescMessage, JsonValue, MessageInitShape, MessageShape } from "@bufbuild/protobuf";
import { isErrorCode } from "../common/errors.js";
import type { ErrorCode } from "../common/errors.js";

/**
 * Why a call to the controller did not produce an answer:
 * - `unreachable`: no answer at all (connection refused, DNS, TLS, timeout, connection lost);
 * - `rejected`: the controller answered with a non-2xx status and a Flotilla error code.
 */
export type CallFailure =
  | { readonly kind: "unreachable"; readonly message: string }
  | { readonly kind: "rejected"; readonly httpStatus: number; readonly code: ErrorCode; readonly message: string };

/** The outcome of one call: a value, or why there is none. Calls never throw for these. */
export type CallOutcome<T> = { readonly ok: true; readonly value: T } | { readonly ok: false; readonly failure: CallFailure };

export interface ControllerClientOptions {
  /** Base URL of the controller's HTTP API, e.g. http://127.0.0.1:7441. */
  readonly baseUrl: string;
  /** Sent as `Authorization: Bearer …`; never logged or put in a message. */
  readonly token?: string | undefined;
  /** How long to wait for the TCP/TLS connection (default 10 s). */
  readonly connectTimeoutMs?: number;
  /** Deadline for a whole unary call, answer included (default 5 min). */
  readonly timeoutMs?: number;
  /** Sent as User-Agent. */
  readonly userAgent?: string;
  /** PEM of a private CA to trust for https:// (besides the system's). */
  readonly ca?: Buffer | undefined;
}

/** Per-call overrides. */
export interface CallOptions {
  readonly timeoutMs?: number;
}

const DEFAULT_CONNECT_TIMEOUT_MS = 10_000;
const DEFAULT_TIMEOUT_MS = 5 * 60_000;
const MAX_BODY_BYTES = 256 * 1024 * 1024;
const MAX_ERROR_BODY_BYTES = 1024 * 1024;

/**
 * Client of the controller's HTTP/JSON API: `POST /v1/<Method>` with proto3 JSON
 * bodies, NDJSON for server streams, `GET /v1/ExportAudit` for the audit export.
 * It knows nothing of the controller's code, only the wire contract. Every call
 * carries a connect timeout; unary calls also carry a deadline. No keep-alive:
 * each call has its own connection, so a finished CLI exits at once.
 */
export class ControllerHttpClient {
  readonly baseUrl: URL;
  readonly #token: string | undefined;
  readonly #connectTimeoutMs: number;
  readonly #timeoutMs: number;
  readonly #userAgent: string;
  readonly #ca: Buffer | undefined;

  constructor(options: ControllerClientOptions) {
    this.#ca = options.ca;
    this.baseUrl = new URL(options.baseUrl);
    this.#token = options.token === undefined || options.token === "" ? undefined : options.token;
    this.#connectTimeoutMs = options.connectTimeoutMs ?? DEFAULT_CONNECT_TIMEOUT_MS;
    this.#timeoutMs = options.timeoutMs ?? DEFAULT_TIMEOUT_MS;
    this.#userAgent = options.userAgent ?? "flotilla-cli";
  }

  /** One request message in, one response message out. */
  async unary<I extends DescMessage, O extends DescMessage>(
    method: string,
    input: I,
    request: MessageInitShape<I>,
    output: O,
    options: CallOptions = {},
  ): Promise<CallOutcome<MessageShape<O>>> {
    const body = JSON.stringify(toApiJson(input, create(input, request), { alwaysEmitImplicit: false }));
    const deadlineMs = options.timeoutMs ?? this.#timeoutMs;
    const opened = await this.#open("POST", `/v1/${method}`, body, "application/json", deadlineMs);
    if (!opened.ok) return opened;
    const { res, cancelDeadline } = opened.value;
    try {
      const text = await readBody(res, MAX_BODY_BYTES);
      if (text === undefined) return unreachable(`the answer to ${method} was larger than ${MAX_BODY_BYTES} bytes`);
      let json: unknown;
      try {
        // An empty 200 body is the empty message.
        json = text.trim() === "" ? {} : JSON.parse(text);
      } catch {
        return unreachable(`the controller answered ${method} with something that is not JSON; is ${this.baseUrl.origin} a Flotilla controller?`);
      }
      try {
        return { ok: true, value: fromApiJson(output, json as JsonValue) };
      } catch (err) {
        return unreachable(`the controller's answer to ${method} does not match the API: ${(err as Error).message}`);
      }
    } catch (err) {
      return unreachable(this.#describe(err, `reading the answer to ${method}`));
    } finally {
      cancelDeadline();
    }
  }

  /**
   * A server stream as NDJSON: `onMessage` gets each message in order (and may
   * return false to stop reading). Resolves
   * when the stream ends; `ok: false` with `unreachable` when the connection was
   * lost before the end (the caller may reconnect).
   */
  async serverStream<I extends DescMessage, O extends DescMessage>(
    method: string,
    input: I,
    request: MessageInitShape<I>,
    output: O,
    onMessage: (message: MessageShape<O>) => boolean | void,
  ): Promise<CallOutcome<number>> {
    const body = JSON.stringify(toApiJson(input, create(input, request), { alwaysEmitImplicit: false }));
    const opened = await this.#open("POST", `/v1/${method}`, body, "application/x-ndjson", undefined);
    if (!opened.ok) return opened;
    let count = 0;
    let bad: string | undefined;
    let refused: CallFailure | undefined;
    const streamed = await readLines(opened.value.res, (line) => {
      let json: unknown;
      try {
        json = JSON.parse(line);
      } catch {
        bad = `the controller sent a line of ${method} that is not JSON`;
        return false;
      }
      // An error after the stream started arrives as one {"code","message"} line.
      const failure = streamError(json);
      if (failure !== undefined) {
        refused = failure;
        return false;
      }
      let message: MessageShape<O>;
      try {
        message = fromApiJson(output, json as JsonValue);
      } catch (err) {
        bad = `a message of ${method} does not match the API: ${(err as Error).message}`;
        return false;
      }
      count++;
      return onMessage(message) !== false;
    });
    if (refused !== undefined) return { ok: false, failure: refused };
    if (bad !== undefined) return unreachable(bad);
    if (!streamed.ok) return unreachable(this.#describe(streamed.error, `following ${method}`));
    return { ok: true, value: count };
  }

  /**
   * `GET /v1/ExportAudit?…`: each JSON line is handed over verbatim (after a JSON
   * syntax check), so hashes can be re-checked on the exact bytes. `onLine`
   * returns false to stop early. The value is the number of lines handed over.
   */
  async exportAudit(query: Readonly<Record<string, string | undefined>>, onLine: (line: string) => boolean | void): Promise<CallOutcome<number>> {
    const params = new URLSearchParams();
    for (const [k, v] of Object.entries(query)) if (v !== undefined && v !== "") params.set(k, v);
    const qs = params.toString();
    const opened = await this.#open("GET", `/v1/ExportAudit${qs === "" ? "" : `?${qs}`}`, undefined, "application/x-ndjson", undefined);
    if (!opened.ok) return opened;
    let count = 0;
    let bad: string | undefined;
    const streamed = await readLines(opened.value.res, (line) => {
      try {
        JSON.parse(line);
      } catch {
        bad = "the controller sent an audit line that is not JSON";
        return false;
      }
      count++;
      return onLine(line) !== false;
    });
    if (bad !== undefined) return unreachable(bad);
    if (!streamed.ok) return unreachable(this.#describe(streamed.error, "exporting the audit log"));
    return { ok: true, value: count };
  }

  /**
   * Sends the request and waits for the status line. A 2xx answer is handed back
   * unread; any other answer is read and turned into a `rejected` failure.
   */
  #open(
    verb: "GET" | "POST",
    path: string,
    body: string | undefined,
    accept: string,
    deadlineMs: number | undefined,
  ): Promise<CallOutcome<{ res: IncomingMessage; cancelDeadline: () => void }>> {
    // Keeps any path prefix of the base URL (a controller behind a reverse proxy).
    const url = new URL(`${this.baseUrl.href.replace(/\/+$/, "")}${path}`);
    const headers: Record<string, string> = { accept, "user-agent": this.#userAgent };
    if (body !== undefined) {
      headers["content-type"] = "application/json";
      headers["content-length"] = String(Buffer.byteLength(body));
    }
    if (this.#token !== undefined) {
      // Never put a token on the wire in clear text to another machine.
      if (url.protocol === "http:" && !isLoopbackHost(url.hostname)) {
        return Promise.resolve(
          unreachable(
            `refusing to send the token over plain HTTP to ${url.origin}: use https:// (the controller's httpTls), with --ca FILE or FLOTILLA_CA for a private CA`,
          ),
        );
      }
      headers["authorization"] = `Bearer ${this.#token}`;
    }
    const transport = url.protocol === "https:" ? https : http;

    return new Promise((resolve) => {
      let settled = false;
      let connectTimer: NodeJS.Timeout | undefined;
      let deadlineTimer: NodeJS.Timeout | undefined;
      const clearTimers = (): void => {
        if (connectTimer !== undefined) clearTimeout(connectTimer);
        if (deadlineTimer !== undefined) clearTimeout(deadlineTimer);
      };
      const settle = (outcome: CallOutcome<{ res: IncomingMessage; cancelDeadline: () => void }>): void => {
        if (settled) return;
        settled = true;
        resolve(outcome);
      };

      const req = transport.request(url, {
        method: verb,
        headers,
        agent: false,
        ...(url.protocol === "https:" && this.#ca ? { ca: [...tls.rootCertificates, this.#ca.toString()] } : {}),
      });
      connectTimer = setTimeout(() => {
        req.destroy(Object.assign(new Error("connect timeout"), { code: "ETIMEDOUT" }));
      }, this.#connectTimeoutMs);
      if (deadlineMs !== undefined) {
        deadlineTimer = setTimeout(() => {
          req.destroy(Object.assign(new Error("deadline"), { code: "FLOTILLA_DEADLINE", deadlineMs }));
        }, deadlineMs);
      }
      req.on("socket", (socket) => {
        const connected = (): void => {
          if (connectTimer !== undefined) clearTimeout(connectTimer);
          connectTimer = undefined;
        };
        if (socket.connecting) socket.once(url.protocol === "https:" ? "secureConnect" : "connect", connected);
        else connected();
      });
      req.on("error", (err) => {
        clearTimers();
        settle(unreachable(this.#describe(err, "connecting")));
      });
      req.on("response", (res) => {
        const status = res.statusCode ?? 0;
        if (status >= 200 && status < 300) {
          settle({ ok: true, value: { res, cancelDeadline: clearTimers } });
          return;
        }
        readBody(res, MAX_ERROR_BODY_BYTES)
          .then((text) => {
            clearTimers();
            settle({ ok: false, failure: rejectionOf(status, text ?? "") });
          })
          .catch((err: unknown) => {
            clearTimers();
            settle(unreachable(this.#describe(err, "reading the error")));
          });
      });
      req.end(body);
    });
  }

  /** A human sentence for a transport error; never contains the token. */
  #describe(err: unknown, doing: string): string {
    const where = this.baseUrl.origin;
    const e = err as NodeJS.ErrnoException & { deadlineMs?: number };
    switch (e?.code) {
      case "ECONNREFUSED":
        return `cannot reach the controller at ${where}: connection refused; is flotilla-controller running? (set --controller or FLOTILLA_CONTROLLER)`;
      case "ENOTFOUND":
      case "EAI_AGAIN":
        return `cannot reach the controller at ${where}: host not found; check --controller or FLOTILLA_CONTROLLER`;
      case "ETIMEDOUT":
        return `cannot reach the controller at ${where}: no connection within ${Math.round(this.#connectTimeoutMs / 1000)}s`;
      case "FLOTILLA_DEADLINE":
        return `the controller at ${where} gave no answer within ${Math.round((e.deadlineMs ?? this.#timeoutMs) / 1000)}s`;
      case "ECONNRESET":
      case "EPIPE":
        return `lost the connection to the controller at ${where} while ${doing}`;
      case "UNABLE_TO_VERIFY_LEAF_SIGNATURE":
      case "UNABLE_TO_GET_ISSUER_CERT_LOCALLY":
      case "SELF_SIGNED_CERT_IN_CHAIN":
      case "DEPTH_ZERO_SELF_SIGNED_CERT":
        return `cannot trust the controller's certificate at ${where}: it is not signed by a known CA; pass the CA with --ca FILE or FLOTILLA_CA`;
      case "CERT_HAS_EXPIRED":
        return `the controller's certificate at ${where} has expired; renew it (flotilla certs init) and send the controller SIGHUP`;
      case "ERR_TLS_CERT_ALTNAME_INVALID":
        return `the controller's certificate does not name ${this.baseUrl.hostname}: ${e.message}`;
      case "EHOSTUNREACH":
      case "ENETUNREACH":
        return `cannot reach the controller at ${where}: no route to host`;
      default:
        return `cannot reach the controller at ${where} (${doing}): ${e instanceof Error ? e.message : String(err)}`;
    }
  }
}

function unreachable(message: string): { ok: false; failure: CallFailure } {
  return { ok: false, failure: { kind: "unreachable", message } };
}

/** Turns a non-2xx answer into a rejection; the code comes from the body, or else from the status. */
export function rejectionOf(httpStatus: number, body: string): CallFailure {
  let code: ErrorCode | undefined;
  let message: string | undefined;
  try {
    const parsed = JSON.parse(body) as unknown;
    if (parsed !== null && typeof parsed === "object") {
      const c = (parsed as { code?: unknown }).code;
      const m = (parsed as { message?: unknown }).message;
      if (typeof c === "string" && isErrorCode(c)) code = c;
      if (typeof m === "string" && m !== "") message = m;
    }
  } catch {
    // not JSON: the status decides
  }
  code ??= codeOfHttpStatus(httpStatus);
  message ??= body.trim() !== "" && body.length < 500 && !body.includes("<") ? body.trim() : `HTTP ${httpStatus}`;
  return { kind: "rejected", httpStatus, code, message };
}

function streamError(json: unknown): CallFailure | undefined {
  if (json === null || typeof json !== "object" || Array.isArray(json)) return undefined;
  const keys = Object.keys(json);
  const { code, message } = json as { code?: unknown; message?: unknown };
  if (typeof code !== "string" || !isErrorCode(code) || keys.some((k) => k !== "code" && k !== "message")) return undefined;
  return { kind: "rejected", httpStatus: 200, code, message: typeof message === "string" ? message : code };
}

function codeOfHttpStatus(status: number): ErrorCode {
  switch (status) {
    case 400:
      return "INVALID_ARGUMENT";
    case 401:
      return "UNAUTHENTICATED";
    case 403:
      return "PERMISSION_DENIED";
    case 404:
      return "NOT_FOUND";
    case 409:
      return "PRECONDITION_FAILED";
    case 503:
      return "AGENT_UNAVAILABLE";
    case 504:
      return "TIMEOUT";
    default:
      return "INTERNAL";
  }
}

/** Reads a whole body as UTF-8; undefined when it exceeds `max` bytes. */
function readBody(res: IncomingMessage, max: number): Promise<string | undefined> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    let over = false;
    res.on("data", (chunk: Buffer) => {
      if (over) return;
      size += chunk.length;
      if (size > max) {
        over = true;
        res.destroy();
        resolve(undefined);
        return;
      }
      chunks.push(chunk);
    });
    res.on("end", () => {
      if (!over) resolve(Buffer.concat(chunks).toString("utf8"));
    });
    res.on("error", (err) => {
      if (!over) reject(err);
    });
    res.on("aborted", () => {
      if (!over) reject(Object.assign(new Error("aborted"), { code: "ECONNRESET" }));
    });
  });
}

/**
 * Splits a body into non-empty lines and hands each over in order. `onLine`
 * returning false stops reading (the connection is closed).
 */
function readLines(res: IncomingMessage, onLine: (line: string) => boolean): Promise<{ ok: true } | { ok: false; error: unknown }> {
  return new Promise((resolve) => {
    let buffer = "";
    let done = false;
    const finish = (result: { ok: true } | { ok: false; error: unknown }): void => {
      if (done) return;
      done = true;
      resolve(result);
    };
    const deliver = (line: string): boolean => {
      const trimmed = line.replace(/\r$/, "");
      if (trimmed.trim() === "") return true;
      return onLine(trimmed);
    };
    res.setEncoding("utf8");
    res.on("data", (chunk: string) => {
      if (done) return;
      buffer += chunk;
      let nl = buffer.indexOf("\n");
      while (nl >= 0) {
        const line = buffer.slice(0, nl);
        buffer = buffer.slice(nl + 1);
        if (!deliver(line)) {
          res.destroy();
          finish({ ok: true });
          return;
        }
        nl = buffer.indexOf("\n");
      }
    });
    res.on("end", () => {
      if (done) return;
      if (buffer !== "") deliver(buffer);
      finish({ ok: true });
    });
    res.on("aborted", () => finish({ ok: false, error: Object.assign(new Error("aborted"), { code: "ECONNRESET" }) }));
    res.on("error", (err) => finish({ ok: false, error: err }));
    res.on("close", () => {
      if (!res.complete) finish({ ok: false, error: Object.assign(new Error("closed"), { code: "ECONNRESET" }) });
    });
  });
}
