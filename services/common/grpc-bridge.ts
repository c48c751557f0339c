/**
 * The one place that knows both protobuf-es v2 and grpc-js: it turns generated
 * service descriptors into grpc-js service definitions, typed server
 * implementations and typed clients. protoc-gen-es v2 emits no grpc-js stubs.
 */
import * as grpc from "@grpc/grpc-js";
import { create, fromBinary, toBinary, type DescMessage, type MessageInitShape, type MessageShape } from "@bufbuild/protobuf";
import type { GenService, GenServiceMethods } from "@bufbuild/protobuf/codegenv2";
import { FlotillaError, codeOfGrpcStatus, grpcStatusOf, isErrorCode, toFlotillaError } from "./errors.js";
import { redact } from "./redact.js";

/** Largest message either side accepts (explicit, not grpc-js' implicit 4 MiB). */
export const MAX_MESSAGE_BYTES = 16 * 1024 * 1024;

export interface CallContext {
  readonly signal: AbortSignal;
  readonly peer: string;
  readonly metadata: grpc.Metadata;
  /** Subject alternative names of the client certificate, when mTLS is on. */
  readonly peerSans: string;
}

type UnaryMethod = { methodKind: "unary"; input: DescMessage; output: DescMessage };
type ServerStreamMethod = { methodKind: "server_streaming"; input: DescMessage; output: DescMessage };

type ImplOf<M> = M extends UnaryMethod
  ? (req: MessageShape<M["input"]>, ctx: CallContext) => Promise<MessageInitShape<M["output"]>>
  : M extends ServerStreamMethod
    ? (req: MessageShape<M["input"]>, ctx: CallContext) => AsyncIterable<MessageInitShape<M["output"]>>
    : never;

/** A server-side implementation of every method of a service. */
export type ServiceImpl<S extends GenServiceMethods> = { [K in keyof S]: ImplOf<S[K]> };

type ClientOf<M> = M extends UnaryMethod
  ? (req: MessageInitShape<M["input"]>, options?: CallOptions) => Promise<MessageShape<M["output"]>>
  : M extends ServerStreamMethod
    ? (req: MessageInitShape<M["input"]>, options?: CallOptions) => AsyncIterable<MessageShape<M["output"]>>
    : never;

/** A typed client: unary methods return promises, server-streaming methods async iterables. */
export type ServiceClient<S extends GenServiceMethods> = { [K in keyof S]: ClientOf<S[K]> } & { close(): void };

export interface CallOptions {
  /** Milliseconds from now; every call carries a deadline. */
  readonly timeoutMs?: number;
  readonly signal?: AbortSignal;
  readonly metadata?: Record<string, string>;
}

type AnyMethod = { name: string; localName: string; methodKind: string; input: DescMessage; output: DescMessage };

function methodsOf(service: GenService<GenServiceMethods>): AnyMethod[] {
  return service.methods as unknown as AnyMethod[];
}

function pathOf(service: GenService<GenServiceMethods>, m: AnyMethod): string {
  return `/${service.typeName}/${m.name}`;
}

/** grpc-js service definition for a protobuf-es service. */
export function serviceDefinition(service: GenService<GenServiceMethods>): grpc.ServiceDefinition {
  const def: Record<string, grpc.MethodDefinition<unknown, unknown>> = {};
  for (const m of methodsOf(service)) {
    if (m.methodKind !== "unary" && m.methodKind !== "server_streaming") {
      throw new Error(`grpc bridge: ${m.name}: ${m.methodKind} is not supported`);
    }
    def[m.localName] = {
      path: pathOf(service, m),
      requestStream: false,
      responseStream: m.methodKind === "server_streaming",
      requestSerialize: (v: unknown) => Buffer.from(toBinary(m.input, v as never)),
      requestDeserialize: (b: Buffer) => fromBinary(m.input, b),
      responseSerialize: (v: unknown) => Buffer.from(toBinary(m.output, v as never)),
      responseDeserialize: (b: Buffer) => fromBinary(m.output, b),
    };
  }
  return def as grpc.ServiceDefinition;
}

function toServiceError(err: unknown): Partial<grpc.StatusObject> {
  const fe = toFlotillaError(err);
  const md = new grpc.Metadata();
  md.set("flotilla-code", fe.code);
  return { code: grpcStatusOf(fe.code), details: redact(fe.message), metadata: md };
}

function contextOf(call: grpc.ServerUnaryCall<unknown, unknown> | grpc.ServerWritableStream<unknown, unknown>): { ctx: CallContext; done: () => void } {
  const ac = new AbortController();
  const onCancel = (): void => ac.abort(new FlotillaError("CANCELLED", "the caller cancelled the call"));
  call.on("cancelled", onCancel);
  let sans = "";
  try {
    const auth = (call as unknown as { getAuthContext?: () => { sslPeerCertificate?: { subjectaltname?: string } } }).getAuthContext?.();
    sans = auth?.sslPeerCertificate?.subjectaltname ?? "";
  } catch {
    sans = "";
  }
  return {
    ctx: { signal: ac.signal, peer: call.getPeer(), metadata: call.metadata, peerSans: sans },
    done: () => call.removeListener("cancelled", onCancel),
  };
}

/**
 * Adds a service to a grpc-js server. A handler's thrown error becomes a gRPC
 * status (FlotillaError code in the `flotilla-code` trailer); the message is redacted.
 * `intercept` runs before every handler (authentication, audit) and may throw.
 */
export function addService<S extends GenServiceMethods>(
  server: grpc.Server,
  service: GenService<S>,
  impl: ServiceImpl<S>,
  intercept?: (method: string, ctx: CallContext) => void | Promise<void>,
): void {
  const handlers: grpc.UntypedServiceImplementation = {};
  for (const m of methodsOf(service as unknown as GenService<GenServiceMethods>)) {
    const fn = (impl as unknown as Record<string, (req: unknown, ctx: CallContext) => unknown>)[m.localName];
    if (typeof fn !== "function") throw new Error(`grpc bridge: no implementation for ${m.name}`);
    if (m.methodKind === "unary") {
      handlers[m.localName] = (call: grpc.ServerUnaryCall<unknown, unknown>, callback: grpc.sendUnaryData<unknown>) => {
        const { ctx, done } = contextOf(call);
        void (async () => {
          try {
            if (intercept) await intercept(m.name, ctx);
            const res = await (fn.call(impl, call.request, ctx) as Promise<MessageInitShape<DescMessage>>);
            callback(null, create(m.output, res));
          } catch (err) {
            callback(toServiceError(err), null);
          } finally {
            done();
          }
        })();
      };
    } else {
      handlers[m.localName] = (call: grpc.ServerWritableStream<unknown, unknown>) => {
        const { ctx, done } = contextOf(call);
        void (async () => {
          try {
            if (intercept) await intercept(m.name, ctx);
            const it = fn.call(impl, call.request, ctx) as AsyncIterable<MessageInitShape<DescMessage>>;
            for await (const item of it) {
              if (call.cancelled) break;
              const ok = call.write(create(m.output, item));
              if (!ok) await new Promise<void>((r) => call.once("drain", () => r()));
            }
            call.end();
          } catch (err) {
            // Ends the call with a status (destroy() would drop the stream without one and
            // leave the caller waiting for its deadline).
            if (!call.cancelled) call.emit("error", toServiceError(err));
          } finally {
            done();
          }
        })();
      };
    }
  }
  server.addService(serviceDefinition(service as unknown as GenService<GenServiceMethods>), handlers);
}

/** Turns a grpc-js client error into a FlotillaError carrying the server's code. */
export function fromServiceError(err: unknown): FlotillaError {
  const e = err as grpc.ServiceError;
  if (e && typeof e.code === "number") {
    const raw = e.metadata?.get("flotilla-code")?.[0];
    const code = typeof raw === "string" && isErrorCode(raw) ? raw : codeOfGrpcStatus(e.code);
    return new FlotillaError(code, e.details || e.message, { cause: err });
  }
  return toFlotillaError(err);
}

function metadataOf(options?: CallOptions): grpc.Metadata {
  const md = new grpc.Metadata();
  for (const [k, v] of Object.entries(options?.metadata ?? {})) md.set(k, v);
  return md;
}

const DEFAULT_UNARY_TIMEOUT_MS = 30_000;

/** A typed client for a protobuf-es service over grpc-js. Constructing it does no I/O. */
export function createClient<S extends GenServiceMethods>(
  service: GenService<S>,
  address: string,
  credentials: grpc.ChannelCredentials,
  channelOptions: grpc.ChannelOptions = {},
): ServiceClient<S> {
  const Ctor = grpc.makeGenericClientConstructor(serviceDefinition(service as unknown as GenService<GenServiceMethods>), service.typeName);
  const raw = new Ctor(address, credentials, {
    "grpc.max_receive_message_length": MAX_MESSAGE_BYTES,
    "grpc.max_send_message_length": MAX_MESSAGE_BYTES,
    ...channelOptions,
  }) as unknown as grpc.Client & Record<string, (...args: unknown[]) => unknown>;
  const client: Record<string, unknown> = { close: () => raw.close() };
  for (const m of methodsOf(service as unknown as GenService<GenServiceMethods>)) {
    const method = raw[m.localName]!.bind(raw);
    if (m.methodKind === "unary") {
      client[m.localName] = (req: MessageInitShape<DescMessage>, options?: CallOptions) =>
        new Promise((resolve, reject) => {
          const deadline = new Date(Date.now() + (options?.timeoutMs ?? DEFAULT_UNARY_TIMEOUT_MS));
          const call = method(create(m.input, req), metadataOf(options), { deadline }, (err: unknown, res: unknown) => {
            options?.signal?.removeEventListener("abort", cancel);
            if (err) reject(fromServiceError(err));
            else resolve(res);
          }) as grpc.ClientUnaryCall;
          const cancel = (): void => call.cancel();
          options?.signal?.addEventListener("abort", cancel, { once: true });
        });
    } else {
      client[m.localName] = (req: MessageInitShape<DescMessage>, options?: CallOptions) => ({
        async *[Symbol.asyncIterator]() {
          const callOpts: grpc.CallOptions = options?.timeoutMs ? { deadline: new Date(Date.now() + options.timeoutMs) } : {};
          const call = method(create(m.input, req), metadataOf(options), callOpts) as grpc.ClientReadableStream<unknown>;
          const cancel = (): void => call.cancel();
          options?.signal?.addEventListener("abort", cancel, { once: true });
          try {
            for await (const item of call) yield item;
          } catch (err) {
            throw fromServiceError(err);
          } finally {
            options?.signal?.removeEventListener("abort", cancel);
            call.cancel();
          }
        },
      });
    }
  }
  return client as ServiceClient<S>;
}

export interface TlsFiles {
  readonly cert: Buffer;
  readonly key: Buffer;
  readonly ca: Buffer;
}

/** Server credentials: mTLS (client certificate required) when files are given, else insecure. */
export function serverCredentials(tls?: TlsFiles): grpc.ServerCredentials {
  if (!tls) return grpc.ServerCredentials.createInsecure();
  return grpc.ServerCredentials.createSsl(tls.ca, [{ private_key: tls.key, cert_chain: tls.cert }], true);
}

/** Client credentials: mTLS with our certificate when files are given, else insecure. */
export function channelCredentials(tls?: TlsFiles): grpc.ChannelCredentials {
  if (!tls) return grpc.credentials.createInsecure();
  return grpc.credentials.createSsl(tls.ca, tls.key, tls.cert);
}

/** Binds a server and resolves the port actually bound (port 0 picks a free one). */
export function bindServer(server: grpc.Server, address: string, creds: grpc.ServerCredentials): Promise<number> {
  return new Promise((resolve, reject) => {
    server.bindAsync(address, creds, (err, port) => (err ? reject(err) : resolve(port)));
  });
}

export function newServer(): grpc.Server {
  return new grpc.Server({
    "grpc.max_receive_message_length": MAX_MESSAGE_BYTES,
    "grpc.max_send_message_length": MAX_MESSAGE_BYTES,
  });
}
