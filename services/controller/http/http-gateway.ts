import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import { createServer as createHttpsServer, type Server as HttpsServer } from "node:https";
import type { TLSSocket } from "node:tls";
import { create, type DescMessage, type JsonValue } from "@bufbuild/protobuf";
import { EnumValueError, fromApiJson, toApiJson } from "../../common/proto-json.js";
import { Metadata } from "@grpc/grpc-js";
import { ControllerService, RolloutEventSchema } from "../../common/gen/flotilla/v1/controller_pb.js";
import { FlotillaError, httpStatusOf, toFlotillaError } from "../../common/errors.js";
import type { CallContext, ServiceImpl } from "../../common/grpc-bridge.js";
import type { Logger } from "../../common/logger.js";
import { redact } from "../../common/redact.js";
import { isLoopbackHost } from "../../common/tls.js";
import { type AuditLog, outcomeFilter } from "../audit/audit-log.js";
import { deniedActor, permittedMethods, type Caller } from "../service.js";
import { staticAsset, type StaticAsset } from "./static-assets.js";
import { STRATEGIES } from "../../common/rollout-request.js";

/** Largest request body accepted; larger ones are answered 413 without being read. */
export const MAX_BODY = 1024 * 1024;

/** Bounds on how long a client may take to send its request (slow clients are cut off before any parsing). */
export interface GatewayLimits {
  readonly maxBodyBytes?: number;
  /** Time to receive the request headers. */
  readonly headersTimeoutMs?: number;
  /** Time to receive the whole request (headers and body). */
  readonly requestTimeoutMs?: number;
}

type AnyMethod = { name: string; localName: string; methodKind: string; input: DescMessage; output: DescMessage };

/** Reads the body up to `max` bytes; beyond that it stops reading and fails with PAYLOAD_TOO_LARGE. */
function readBody(req: IncomingMessage, max: number): Promise<string> {
  return new Promise((resolve, reject) => {
    let size = 0;
    const chunks: Buffer[] = [];
    const onData = (c: Buffer): void => {
      size += c.length;
      if (size > max) {
        req.off("data", onData);
        chunks.length = 0;
        reject(tooLarge(max));
        return;
      }
      chunks.push(c);
    };
    req.on("data", onData);
    req.on("end", () => resolve(Buffer.concat(chunks).toString("utf8")));
    req.on("error", reject);
    req.on("aborted", () => reject(new FlotillaError("CANCELLED", "the client went away while sending the request")));
  });
}

class TooLarge extends FlotillaError {}

function tooLarge(max: number): FlotillaError {
  return new TooLarge("INVALID_ARGUMENT", `request body larger than ${max} bytes: send less (one request per change)`);
}

/** HTTP status of an error; a body over the limit is 413. */
function statusOf(err: unknown): number {
  return err instanceof TooLarge ? 413 : httpStatusOf(toFlotillaError(err).code);
}

function sendError(res: ServerResponse, err: unknown): void {
  const fe = toFlotillaError(err);
  const body = JSON.stringify({ code: fe.code, message: redact(fe.message) });
  if (res.writableEnded || res.destroyed) return;
  if (res.headersSent) {
    res.end(`${body}\n`);
    return;
  }
  const headers: Record<string, string> = { "content-type": "application/json", "content-length": String(Buffer.byteLength(body)) };
  // The rest of an oversized body is not read: close the connection after answering.
  if (err instanceof TooLarge) headers.connection = "close";
  res.writeHead(statusOf(err), headers);
  res.end(body);
}

/** A header value a bearer token can be carried in: printable ASCII only (grpc metadata rejects the rest). */
const PRINTABLE = /^[\x20-\x7e]*$/;

/** Validates the time filters of ExportAudit before any output is written. */
function auditTime(name: string, v: string): string {
  if (v.length > 64 || Number.isNaN(Date.parse(v))) {
    throw new FlotillaError("INVALID_ARGUMENT", `${name} is not a time: use an ISO time like 2026-01-31T12:00:00Z`);
  }
  return v;
}

/** Every ControllerService method name (the page asks which of them the caller may use). */
const METHOD_NAMES = (ControllerService.methods as unknown as AnyMethod[]).map((m) => m.name);

/** Milliseconds between comment lines on an idle event stream (keeps proxies from closing it). */
const SSE_KEEPALIVE_MS = 15_000;

function sendAsset(res: ServerResponse, asset: StaticAsset): void {
  res.writeHead(200, {
    "content-type": asset.contentType,
    "cache-control": "no-cache",
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "x-frame-options": "DENY",
    "content-security-policy":
      "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
  });
  res.end(asset.body);
}

function sendJson(res: ServerResponse, body: unknown): void {
  res.writeHead(200, { "content-type": "application/json", "cache-control": "no-store" });
  res.end(JSON.stringify(body));
}

/**
 * HTTP/JSON gateway over the same ControllerService handlers as gRPC:
 * `POST /v1/<Method>` with the proto3 JSON mapping; server-streaming methods
 * answer NDJSON. Besides: `GET /v1/ExportAudit` streams audit rows as JSON
 * lines (audited); `GET /v1/rollouts/ID/events` is a server-sent event stream
 * of WatchRollout (the page's live view; not audited, it only reads);
 * `GET /v1/whoami` names the caller's role and permitted methods, `POST
 * /v1/SignIn` does the same and is audited; `GET /metrics` is the Prometheus
 * exposition; `GET /` and `/web/*` serve the page.
 */
export function createHttpGateway(
  impl: ServiceImpl<typeof ControllerService.method>,
  deps: {
    audit: AuditLog;
    log: Logger;
    callerOf: (method: string, ctx: CallContext) => Caller;
    isLeader: () => boolean;
    /** Serve HTTPS with this certificate and key (`httpTls`); replace it later with setSecureContext. */
    tls?: { cert: Buffer; key: Buffer };
    limits?: GatewayLimits;
    metrics?: { text(): Promise<string>; contentType: string };
  },
): Server | HttpsServer {
  const maxBody = deps.limits?.maxBodyBytes ?? MAX_BODY;
  const methods = new Map<string, AnyMethod>();
  for (const m of ControllerService.methods as unknown as AnyMethod[]) methods.set(m.name, m);

  /** Authenticates any valid token (every role may read); a refused token is audited. */
  async function reader(ctx: CallContext, action: string): Promise<Caller> {
    try {
      return deps.callerOf("ListTargets", ctx);
    } catch (err) {
      const fe = toFlotillaError(err);
      // A page asking "am I signed in?" without any token is not a denied call, just the sign-in form coming up.
      const anonymousQuestion = action === "api.WhoAmI" && ctx.metadata.get("authorization").length === 0;
      if (!anonymousQuestion) await deps.audit.append({ actor: deniedActor(err), action, outcome: "denied", detail: fe.message }).catch(() => undefined);
      throw fe;
    }
  }

  const handle = async (req: IncomingMessage, res: ServerResponse): Promise<void> => {
    const ac = new AbortController();
    res.on("close", () => ac.abort());
    try {
      // Everything the client sent is parsed inside this boundary: a bad request target or
      // header is answered 400/401, never thrown past the handler.
      let url: URL;
      try {
        url = new URL(req.url ?? "/", "http://localhost");
      } catch {
        throw new FlotillaError("INVALID_ARGUMENT", "the request target is not a valid path: use POST /v1/<Method>");
      }
      const md = new Metadata();
      const auth = req.headers.authorization;
      if (auth !== undefined) {
        if (auth.length > 8192 || !PRINTABLE.test(auth)) {
          throw new FlotillaError("UNAUTHENTICATED", 'the Authorization header holds characters no token has: send "Bearer <token>"');
        }
        md.set("authorization", auth);
      }
      const secure = (req.socket as TLSSocket).encrypted === true;
      const ctx: CallContext = { signal: ac.signal, peer: `${req.socket.remoteAddress}:${req.socket.remotePort}`, metadata: md, peerSans: "", secure };
      // A token sent in clear text to a listener other people can reach is refused before it is even compared.
      if (req.headers.authorization && !secure && !isLoopbackHost(req.socket.localAddress ?? "")) {
        throw new FlotillaError(
          "PERMISSION_DENIED",
          "tokens are refused over plain HTTP on a non-loopback address: configure httpTls on the controller and use https://",
        );
      }
      if (req.method === "GET" && (url.pathname === "/" || url.pathname === "/index.html" || url.pathname.startsWith("/web/"))) {
        const asset = await staticAsset(url.pathname === "/" ? "/index.html" : url.pathname.replace(/^\/web\//, "/"));
        if (!asset) throw new FlotillaError("NOT_FOUND", `no such page ${url.pathname}`);
        sendAsset(res, asset);
        return;
      }
      if (req.method === "GET" && url.pathname === "/metrics" && deps.metrics) {
        await reader(ctx, "api.Metrics");
        const text = await deps.metrics.text();
        res.writeHead(200, { "content-type": deps.metrics.contentType });
        res.end(text);
        return;
      }
      if ((req.method === "GET" && url.pathname === "/v1/whoami") || (req.method === "POST" && url.pathname === "/v1/SignIn")) {
        const signIn = req.method === "POST";
        const caller = await reader(ctx, signIn ? "api.SignIn" : "api.WhoAmI");
        if (signIn) {
          await deps.audit.append({
            actor: caller.actor,
            action: "api.SignIn",
            outcome: "ok",
            detail: `role ${caller.role}, from ${req.socket.remoteAddress ?? "?"}`,
          });
        }
        // The page builds its strategy choices from this list (the proto enum Strategy, by short name).
        sendJson(res, {
          actor: caller.actor,
          role: caller.role,
          methods: permittedMethods(caller.role, METHOD_NAMES),
          leader: deps.isLeader(),
          strategies: STRATEGIES,
        });
        return;
      }
      const events = req.method === "GET" ? /^\/v1\/rollouts\/([^/]{1,128})\/events$/.exec(url.pathname) : null;
      if (events) {
        const stream = impl.watchRollout(create(ControllerService.method.watchRollout.input, { id: decodeURIComponent(events[1]!) }), ctx);
        const it = stream[Symbol.asyncIterator]();
        // The first event answers authentication and NOT_FOUND before the stream is committed.
        const first = await it.next();
        res.writeHead(200, { "content-type": "text/event-stream", "cache-control": "no-store", "x-accel-buffering": "no" });
        const keepalive = setInterval(() => res.write(": keepalive\n\n"), SSE_KEEPALIVE_MS);
        try {
          for (let item = first; !item.done; item = await it.next()) {
            const ev = create(RolloutEventSchema, item.value);
            const json = toApiJson(RolloutEventSchema, ev) as Record<string, unknown>;
            const kind = ev.event.case ?? "snapshot";
            res.write(`event: ${kind}\ndata: ${JSON.stringify(json[kind] ?? json)}\n\n`);
          }
          res.write("event: end\ndata: {}\n\n");
        } catch (err) {
          const fe = toFlotillaError(err);
          res.write(`event: failure\ndata: ${JSON.stringify({ code: fe.code, message: redact(fe.message) })}\n\n`);
        } finally {
          clearInterval(keepalive);
          res.end();
        }
        return;
      }
      if (req.method === "GET" && url.pathname === "/healthz") {
        res.writeHead(200, { "content-type": "text/plain" });
        res.end("ok\n");
        return;
      }
      if (req.method === "GET" && url.pathname === "/readyz") {
        // Ready = this replica leads: a load balancer then sends every call to the leader.
        const leading = deps.isLeader();
        res.writeHead(leading ? 200 : 503, { "content-type": "text/plain" });
        res.end(leading ? "leader\n" : "standby\n");
        return;
      }
      if (req.method === "GET" && url.pathname === "/v1/ExportAudit") {
        const caller = deps.callerOf("QueryAudit", ctx);
        const filter: Record<string, string> = {};
        for (const k of ["since", "until", "target", "actor", "action", "outcome"]) {
          const v = url.searchParams.get(k);
          if (v) filter[k] = k === "since" || k === "until" ? auditTime(k, v) : k === "outcome" ? (outcomeFilter(v) ?? "") : v;
        }
        await deps.audit.append({ actor: caller.actor, action: "api.ExportAudit", args: filter, outcome: "ok" });
        res.writeHead(200, { "content-type": "application/x-ndjson" });
        await deps.audit.exportJsonLines((line) => {
          res.write(line.endsWith("\n") ? line : `${line}\n`);
        }, filter);
        res.end();
        return;
      }
      const name = url.pathname.startsWith("/v1/") ? url.pathname.slice(4) : "";
      const m = methods.get(name);
      if (!m || req.method !== "POST") {
        throw new FlotillaError("NOT_FOUND", `no such endpoint ${req.method} ${url.pathname}: use POST /v1/<Method> (e.g. /v1/ListTargets)`);
      }
      // Who is calling is settled before a byte of the body is read or parsed.
      try {
        deps.callerOf(m.name, ctx);
      } catch (err) {
        const fe = toFlotillaError(err);
        await deps.audit.append({ actor: deniedActor(err), action: `api.${m.name}`, outcome: "denied", detail: fe.message }).catch(() => undefined);
        throw fe;
      }
      const declared = Number(req.headers["content-length"] ?? "0");
      if (Number.isFinite(declared) && declared > maxBody) throw tooLarge(maxBody);
      const text = await readBody(req, maxBody);
      let body: unknown = {};
      if (text.trim() !== "") {
        try {
          body = JSON.parse(text);
        } catch {
          throw new FlotillaError("INVALID_ARGUMENT", "request body is not valid JSON");
        }
      }
      let input;
      try {
        input = fromApiJson(m.input, body as JsonValue);
      } catch (err) {
        if (err instanceof EnumValueError) throw new FlotillaError("INVALID_ARGUMENT", `${err.message}; nothing was changed`);
        throw new FlotillaError("INVALID_ARGUMENT", `request does not match ${m.input.typeName}: ${(err as Error).message}`);
      }
      const fn = (impl as unknown as Record<string, (req: unknown, ctx: CallContext) => unknown>)[m.localName]!;
      if (m.methodKind === "unary") {
        const out = await (fn.call(impl, input, ctx) as Promise<object>);
        const json = toApiJson(m.output, create(m.output, out as never));
        res.writeHead(200, { "content-type": "application/json" });
        res.end(JSON.stringify(json));
        return;
      }
      const stream = fn.call(impl, input, ctx) as AsyncIterable<object>;
      for await (const item of stream) {
        if (!res.headersSent) res.writeHead(200, { "content-type": "application/x-ndjson" });
        res.write(`${JSON.stringify(toApiJson(m.output, create(m.output, item as never)))}\n`);
      }
      if (!res.headersSent) res.writeHead(200, { "content-type": "application/x-ndjson" });
      res.end();
    } catch (err) {
      sendError(res, err);
    }
  };

  const handler = (req: IncomingMessage, res: ServerResponse): void => {
    handle(req, res).catch((err: unknown) => {
      deps.log.error({ err: toFlotillaError(err) }, "HTTP handler failed");
      try {
        sendError(res, err);
      } catch {
        res.destroy();
      }
    });
  };
  // Slow clients are cut off before their request is parsed: headers and the whole request have deadlines.
  const bounds = {
    headersTimeout: deps.limits?.headersTimeoutMs ?? 15_000,
    requestTimeout: deps.limits?.requestTimeoutMs ?? 60_000,
    connectionsCheckingInterval: Math.min(1_000, deps.limits?.headersTimeoutMs ?? 1_000),
    maxHeaderSize: 32 * 1024,
  };
  const server = deps.tls ? createHttpsServer({ cert: deps.tls.cert, key: deps.tls.key, ...bounds }, handler) : createServer(bounds, handler);
  // A malformed request (bad header bytes, a timeout) is answered 400/408 by Node; never an exception.
  server.on("clientError", (err: NodeJS.ErrnoException, socket) => {
    if (!socket.writable) {
      socket.destroy();
      return;
    }
    const status = err.code === "ERR_HTTP_REQUEST_TIMEOUT" ? 408 : err.code === "HPE_HEADER_OVERFLOW" ? 431 : 400;
    const body = JSON.stringify({
      code: status === 408 ? "DEADLINE_EXCEEDED" : "INVALID_ARGUMENT",
      message: status === 408 ? "request not received in time" : "malformed HTTP request",
    });
    socket.end(
      `HTTP/1.1 ${status} ${status === 408 ? "Request Timeout" : status === 431 ? "Request Header Fields Too Large" : "Bad Request"}\r\ncontent-type: application/json\r\ncontent-length: ${Buffer.byteLength(body)}\r\nconnection: close\r\n\r\n${body}`,
    );
  });
  return server;
}
