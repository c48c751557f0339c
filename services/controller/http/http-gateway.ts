import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import { createServer as createHttpsServer, type Server as HttpsServer } from "node:https";
import type { TLSSocket } from "node:tls";
import { create, fromJson, toJson, type DescMessage, type JsonValue } from "@bufbuild/protobuf";
import { Metadata } from "@grpc/grpc-js";
import { ControllerService } from "../../common/gen/flotilla/v1/controller_pb.js";
import { FlotillaError, httpStatusOf, toFlotillaError } from "../../common/errors.js";
import type { CallContext, ServiceImpl } from "../../common/grpc-bridge.js";
import type { Logger } from "../../common/logger.js";
import { redact } from "../../common/redact.js";
import { isLoopbackHost } from "../../common/tls.js";
import type { AuditLog } from "../audit/audit-log.js";
import type { Caller } from "../service.js";
import { WEB_PAGE } from "./web-page.js";

const MAX_BODY = 1024 * 1024;

type AnyMethod = { name: string; localName: string; methodKind: string; input: DescMessage; output: DescMessage };

function readBody(req: IncomingMessage): Promise<string> {
  return new Promise((resolve, reject) => {
    let size = 0;
    const chunks: Buffer[] = [];
    req.on("data", (c: Buffer) => {
      size += c.length;
      if (size > MAX_BODY) {
        reject(new FlotillaError("INVALID_ARGUMENT", `request body larger than ${MAX_BODY} bytes`));
        req.destroy();
        return;
      }
      chunks.push(c);
    });
    req.on("end", () => resolve(Buffer.concat(chunks).toString("utf8")));
    req.on("error", reject);
  });
}

function sendError(res: ServerResponse, err: unknown): void {
  const fe = toFlotillaError(err);
  if (res.headersSent) {
    res.end(`${JSON.stringify({ code: fe.code, message: redact(fe.message) })}\n`);
    return;
  }
  res.writeHead(httpStatusOf(fe.code), { "content-type": "application/json" });
  res.end(JSON.stringify({ code: fe.code, message: redact(fe.message) }));
}

/**
 * HTTP/JSON gateway over the same ControllerService handlers as gRPC:
 * `POST /v1/<Method>` with the proto3 JSON mapping; server-streaming methods
 * answer NDJSON. `GET /v1/ExportAudit` streams audit rows as JSON lines, `GET /`
 * serves the web page.
 */
export function createHttpGateway(
  impl: ServiceImpl<typeof ControllerService.method>,
  deps: {
    audit: AuditLog; log: Logger; callerOf: (method: string, ctx: CallContext) => Caller; isLeader: () => boolean;
    /** Serve HTTPS with this certificate and key (`httpTls`); replace it later with setSecureContext. */
    tls?: { cert: Buffer; key: Buffer };
  },
): Server | HttpsServer {
  const methods = new Map<string, AnyMethod>();
  for (const m of ControllerService.methods as unknown as AnyMethod[]) methods.set(m.name, m);

  const handler = (req: IncomingMessage, res: ServerResponse): void => {
    void (async () => {
      const url = new URL(req.url ?? "/", "http://localhost");
      const ac = new AbortController();
      res.on("close", () => ac.abort());
      const md = new Metadata();
      if (req.headers.authorization) md.set("authorization", req.headers.authorization);
      const secure = (req.socket as TLSSocket).encrypted === true;
      const ctx: CallContext = { signal: ac.signal, peer: `${req.socket.remoteAddress}:${req.socket.remotePort}`, metadata: md, peerSans: "", secure };
      try {
        // A token sent in clear text to a listener other people can reach is refused before it is even compared.
        if (req.headers.authorization && !secure && !isLoopbackHost(req.socket.localAddress ?? "")) {
          throw new FlotillaError("PERMISSION_DENIED", "tokens are refused over plain HTTP on a non-loopback address: configure httpTls on the controller and use https://");
        }
        if (req.method === "GET" && (url.pathname === "/" || url.pathname === "/index.html")) {
          res.writeHead(200, { "content-type": "text/html; charset=utf-8", "content-security-policy": "default-src 'self'; style-src 'unsafe-inline'; script-src 'unsafe-inline'" });
          res.end(WEB_PAGE);
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
          for (const k of ["since", "until", "target", "actor", "action"]) {
            const v = url.searchParams.get(k);
            if (v) filter[k] = v;
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
        const text = await readBody(req);
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
          input = fromJson(m.input, body as JsonValue, { ignoreUnknownFields: true });
        } catch (err) {
          throw new FlotillaError("INVALID_ARGUMENT", `request does not match ${m.input.typeName}: ${(err as Error).message}`);
        }
        const fn = (impl as unknown as Record<string, (req: unknown, ctx: CallContext) => unknown>)[m.localName]!;
        if (m.methodKind === "unary") {
          const out = await (fn.call(impl, input, ctx) as Promise<object>);
          const json = toJson(m.output, create(m.output, out as never), { alwaysEmitImplicit: true });
          res.writeHead(200, { "content-type": "application/json" });
          res.end(JSON.stringify(json));
          return;
        }
        const stream = fn.call(impl, input, ctx) as AsyncIterable<object>;
        for await (const item of stream) {
          if (!res.headersSent) res.writeHead(200, { "content-type": "application/x-ndjson" });
          res.write(`${JSON.stringify(toJson(m.output, create(m.output, item as never), { alwaysEmitImplicit: true }))}\n`);
        }
        if (!res.headersSent) res.writeHead(200, { "content-type": "application/x-ndjson" });
        res.end();
      } catch (err) {
        sendError(res, err);
      }
    })();
  };
  return deps.tls ? createHttpsServer({ cert: deps.tls.cert, key: deps.tls.key }, handler) : createServer(handler);
}

