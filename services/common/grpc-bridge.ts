/**
 * The one place that knows both protobuf-es v2 and grpc-js: it turns generated
 * service descriptors into grpc-js service definitions, typed server
 * implementations and typed clients. protoc-gen-es v2 emits no grpc-js stubs.
 */
import * as grpc from "@grpc/grpc-js";
import { create, fromBinary, toBinary, type DescMessage, type MessageInitShape, type MessageShape } from "@bufbuild/protobuf";
import type { GenService, GenServiceMethods } from "@bufbuild/protobuf/codegenv2";
import { type ErrorCode, FlotillaError, isErrorCode, toFlotillaError } from "./errors.js";
import { redact } from "./redact.js";
import { isIP } from "node:net";
import { checkServerIdentity as checkTlsServerIdentity, type PeerCertificate } from "node:tls";
import { describeNames, namesInclude, parseSubjectAltName } from "./tls.js";

/** Largest message either side accepts (explicit, not grpc-js' implicit 4 MiB). */
export const MAX_MESSAGE_BYTES = 16 * 1024 * 1024;

export interface CallContext {
  readonly signal: AbortSignal;
  readonly peer: string;
  readonly metadata: grpc.Metadata;
  /** Subject alternative names of the client certificate, when mTLS is on. */
  readonly peerSans: string;
  /** Whether the call came over TLS (gRPC with certificates, or HTTPS). */
  readonly secure?: boolean;
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

/** A request that did not decode: handed to the handler wrapper, which answers INVALID_ARGUMENT (grpc-js would say INTERNAL). */
class UndecodableRequest {
  constructor(readonly reason: string) {}
}

function decodeRequest(schema: DescMessage, bytes: Buffer): unknown {
  try {
    return fromBinary(schema, bytes);
  } catch (err) {
    return new UndecodableRequest((err as Error).message);
  }
}

function assertDecoded(request: unknown, typeName: string): void {
  if (request instanceof UndecodableRequest) {
    throw new FlotillaError("INVALID_ARGUMENT", `the request is not a valid ${typeName} message: ${request.reason}`);
  }
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
      requestDeserialize: (b: Buffer) => decodeRequest(m.input, b),
      responseSerialize: (v: unknown) => Buffer.from(toBinary(m.output, v as never)),
      responseDeserialize: (b: Buffer) => fromBinary(m.output, b),
    };
  }
  return def as grpc.ServiceDefinition;
}

/**
 * Longest status message sent. The message travels in an HTTP/2 trailer: one
 * echoing a 70 kB hostile value exceeded the peer's header-list limit and made
 * it drop the whole connection, failing every other call on it.
 */
const MAX_DETAILS_CHARS = 2000;

function toServiceError(err: unknown): Partial<grpc.StatusObject> {
  const fe = toFlotillaError(err);
  const md = new grpc.Metadata();
  md.set("flotilla-code", fe.code);
  const details = redact(fe.message);
  return { code: grpcStatusOf(fe.code), details: details.length > MAX_DETAILS_CHARS ? `${details.slice(0, MAX_DETAILS_CHARS)}… (cut)` : details, metadata: md };
}

function contextOf(call: grpc.ServerUnaryCall<unknown, unknown> | grpc.ServerWritableStream<unknown, unknown>): { ctx: CallContext; done: () => void } {
  const ac = new AbortController();
  const onCancel = (): void => ac.abort(new FlotillaError("CANCELLED", "the caller cancelled the call"));
  call.on("cancelled", onCancel);
  let sans = "";
  let secure = false;
  try {
    const auth = (
      call as unknown as { getAuthContext?: () => { transportSecurityType?: string; sslPeerCertificate?: { subjectaltname?: string } } }
    ).getAuthContext?.();
    sans = auth?.sslPeerCertificate?.subjectaltname ?? "";
    secure = auth?.transportSecurityType === "ssl";
  } catch {
    sans = "";
  }
  return {
    ctx: { signal: ac.signal, peer: call.getPeer(), metadata: call.metadata, peerSans: sans, secure },
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
            assertDecoded(call.request, m.input.typeName);
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
            assertDecoded(call.request, m.input.typeName);
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

type CaListener = (update: { caCertificate: Buffer } | null) => void;
type IdentityListener = (update: { certificate: Buffer; privateKey: Buffer } | null) => void;

/**
 * Certificate, key and CA that can be replaced while the process runs (SIGHUP):
 * servers and channels built on it use the new files for new connections;
 * connections already open, and the calls on them, go on undisturbed.
 */
export class ReloadableCertificates {
  #files: TlsFiles;
  readonly #ca = new Set<CaListener>();
  readonly #identity = new Set<IdentityListener>();

  constructor(files: TlsFiles) {
    this.#files = files;
  }

  get files(): TlsFiles {
    return this.#files;
  }

  /** Swaps in new files; new handshakes use them from now on. */
  update(files: TlsFiles): void {
    this.#files = files;
    for (const l of this.#ca) l({ caCertificate: files.ca });
    for (const l of this.#identity) l({ certificate: files.cert, privateKey: files.key });
  }

  // grpc-js registers its own watcher only after adding these listeners: answer on the next tick so it hears it.
  addCaCertificateListener(listener: CaListener): void {
    this.#ca.add(listener);
    queueMicrotask(() => {
      if (this.#ca.has(listener)) listener({ caCertificate: this.#files.ca });
    });
  }

  removeCaCertificateListener(listener: CaListener): void {
    this.#ca.delete(listener);
  }

  addIdentityCertificateListener(listener: IdentityListener): void {
    this.#identity.add(listener);
    queueMicrotask(() => {
      if (this.#identity.has(listener)) listener({ certificate: this.#files.cert, privateKey: this.#files.key });
    });
  }

  removeIdentityCertificateListener(listener: IdentityListener): void {
    this.#identity.delete(listener);
  }
}

function reloadable(tls: TlsFiles | ReloadableCertificates): ReloadableCertificates {
  return tls instanceof ReloadableCertificates ? tls : new ReloadableCertificates(tls);
}

/**
 * Server credentials: mTLS when certificates are given (a client certificate
 * signed by the CA is required at the handshake; who may call is checked per
 * call by `peerIdentityGuard`), else insecure.
 */
export function serverCredentials(tls?: TlsFiles | ReloadableCertificates): grpc.ServerCredentials {
  if (!tls) return grpc.ServerCredentials.createInsecure();
  const provider = reloadable(tls);
  // The same provider for CA and identity (grpc-js' factory names its two arguments in the opposite order of its class).
  return grpc.experimental.createCertificateProviderServerCredentials(provider, provider, true);
}

/** What a channel must see in the server's certificate. */
export interface ServerIdentity {
  /**
   * An explicit identity (SAN URI such as spiffe://flotilla/agent/host-a, DNS
   * name or IP). Absent: standard hostname verification against the host of
   * the address the channel dials.
   */
  readonly identity?: string;
  /** Told the server certificate's expiry at every handshake (for warnings). */
  readonly onCertificate?: (notAfter: Date) => void;
}

/**
 * Client credentials: mTLS with our certificate when given, checking the
 * server's certificate as `expect` says (never a shared override name); else
 * insecure. A mismatch fails the connection with a message naming the
 * expected name and the names the certificate carries.
 */
export function channelCredentials(tls?: TlsFiles | ReloadableCertificates, expect: ServerIdentity = {}): grpc.ChannelCredentials {
  if (!tls) return grpc.credentials.createInsecure();
  const provider = reloadable(tls);
  const checkServerIdentity = (host: string, cert: PeerCertificate): Error | undefined => {
    if (cert.valid_to) expect.onCertificate?.(new Date(cert.valid_to));
    const names = parseSubjectAltName(cert.subjectaltname);
    if (expect.identity !== undefined) {
      if (namesInclude(names, expect.identity)) return undefined;
      return new Error(`the server's certificate does not name the expected identity ${expect.identity} (it names ${describeNames(names)})`);
    }
    if (!checkTlsServerIdentity(host, cert)) return undefined;
    const expected = isIP(host) ? `IP:${host}` : `DNS:${host}`;
    return new Error(
      `the server's certificate does not match the host of its address: expected ${expected} in its subject alternative names, it names ${describeNames(names)} (or set identity: for this agent)`,
    );
  };
  return grpc.experimental.createCertificateProviderChannelCredentials(provider, provider, { checkServerIdentity });
}

/**
 * An interceptor for `addService` that lets a call through only when the
 * client's certificate names one of `allow` (SAN URI, DNS or IP). Any other
 * client, even one whose certificate the CA signed, gets PERMISSION_DENIED and
 * `onRefused` is told who it was.
 */
export function peerIdentityGuard(
  allow: readonly string[],
  onRefused: (refusal: { method: string; peer: string; names: string }) => void,
): (method: string, ctx: CallContext) => void {
  return (method, ctx) => {
    const names = parseSubjectAltName(ctx.peerSans);
    if (allow.some((identity) => namesInclude(names, identity))) return;
    const described = describeNames(names);
    onRefused({ method, peer: ctx.peer, names: described });
    throw new FlotillaError("PERMISSION_DENIED", `this client's certificate (${described}) is not allowed to call; allowed: ${allow.join(", ")}`);
  };
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

// ------------------------------------------------------------ status codes

const GRPC_BY_CODE: Record<ErrorCode, grpc.status> = {
  INVALID_ARGUMENT: grpc.status.INVALID_ARGUMENT,
  NOT_FOUND: grpc.status.NOT_FOUND,
  TARGET_BUSY: grpc.status.ABORTED,
  APP_STILL_RUNNING: grpc.status.FAILED_PRECONDITION,
  MULTIPLE_HEADS: grpc.status.FAILED_PRECONDITION,
  UNKNOWN_REVISION: grpc.status.FAILED_PRECONDITION,
  BACKUP_UNVERIFIED: grpc.status.FAILED_PRECONDITION,
  BACKUP_FAILED: grpc.status.INTERNAL,
  VERIFY_FAILED: grpc.status.DATA_LOSS,
  RESTORE_FAILED: grpc.status.INTERNAL,
  ALEMBIC_FAILED: grpc.status.INTERNAL,
  MIGRATION_FAILED: grpc.status.INTERNAL,
  HOOK_FAILED: grpc.status.INTERNAL,
  DATA_LOSS_NOT_ACCEPTED: grpc.status.FAILED_PRECONDITION,
  STAMP_REFUSED: grpc.status.FAILED_PRECONDITION,
  INTERRUPTED: grpc.status.ABORTED,
  CONFIG_INVALID: grpc.status.INVALID_ARGUMENT,
  AGENT_UNAVAILABLE: grpc.status.UNAVAILABLE,
  UNAUTHENTICATED: grpc.status.UNAUTHENTICATED,
  PERMISSION_DENIED: grpc.status.PERMISSION_DENIED,
  AUDIT_UNAVAILABLE: grpc.status.UNAVAILABLE,
  LEASE_HELD: grpc.status.ABORTED,
  PRECONDITION_FAILED: grpc.status.FAILED_PRECONDITION,
  TARGET_BROKEN: grpc.status.FAILED_PRECONDITION,
  TIMEOUT: grpc.status.DEADLINE_EXCEEDED,
  CANCELLED: grpc.status.CANCELLED,
  INTERNAL: grpc.status.INTERNAL,
};

/** FlotillaError → gRPC status. The only such mapping. */
export function grpcStatusOf(code: ErrorCode): grpc.status {
  return GRPC_BY_CODE[code];
}

/** gRPC status → FlotillaError code, for errors that carry no Flotilla code. */
export function codeOfGrpcStatus(status: number): ErrorCode {
  switch (status) {
    case grpc.status.INVALID_ARGUMENT:
      return "INVALID_ARGUMENT";
    case grpc.status.NOT_FOUND:
      return "NOT_FOUND";
    case grpc.status.UNAVAILABLE:
      return "AGENT_UNAVAILABLE";
    case grpc.status.DEADLINE_EXCEEDED:
      return "TIMEOUT";
    case grpc.status.CANCELLED:
      return "CANCELLED";
    case grpc.status.UNAUTHENTICATED:
      return "UNAUTHENTICATED";
    case grpc.status.PERMISSION_DENIED:
      return "PERMISSION_DENIED";
    case grpc.status.FAILED_PRECONDITION:
      return "PRECONDITION_FAILED";
    case grpc.status.ABORTED:
      return "TARGET_BUSY";
    default:
      return "INTERNAL";
  }
}
