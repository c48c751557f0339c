/**
 * Certificate facts both daemons and the CLI need: who a certificate names
 * (SAN DNS / IP / URI), whether a peer's names satisfy an allow-list, when a
 * certificate expires. It never opens a connection; grpc-bridge.ts applies
 * these rules to gRPC, the HTTP gateway to HTTPS.
 */
import { X509Certificate } from "node:crypto";
import { isIP } from "node:net";

/** The names a certificate carries in its subjectAltName extension. */
export interface SubjectNames {
  readonly dns: readonly string[];
  readonly ip: readonly string[];
  readonly uri: readonly string[];
}

/** The SPIFFE id the controller's certificate carries (`flotilla certs init`). */
export const CONTROLLER_SPIFFE_ID = "spiffe://flotilla/controller";

/** The SPIFFE id `flotilla certs init` gives the agent with this id. */
export function agentSpiffeId(agentId: string): string {
  return `spiffe://flotilla/agent/${agentId}`;
}

/** Days before expiry from which both daemons warn. */
export const EXPIRY_WARNING_DAYS = 30;

/**
 * Parses Node's `subjectaltname` text (`DNS:a, IP Address:1.2.3.4, URI:spiffe://x`).
 * Quoted entries (Node quotes names with commas or other special characters)
 * are unquoted; unknown kinds are ignored.
 */
export function parseSubjectAltName(text: string | undefined): SubjectNames {
  const dns: string[] = [];
  const ip: string[] = [];
  const uri: string[] = [];
  if (!text) return { dns, ip, uri };
  const re = /(DNS|IP Address|URI|email|DirName|othername|Registered ID):("(?:[^"\\]|\\.)*"|[^,]*)(?:,\s*|$)/g;
  for (const m of text.matchAll(re)) {
    const kind = m[1]!;
    let value = m[2]!.trim();
    if (value.startsWith('"')) {
      try {
        value = JSON.parse(value) as string;
      } catch {
        continue;
      }
    }
    if (kind === "DNS") dns.push(value.toLowerCase());
    else if (kind === "IP Address") ip.push(value.toLowerCase());
    else if (kind === "URI") uri.push(value);
  }
  return { dns, ip, uri };
}

/** `DNS:a, IP:1.2.3.4, URI:spiffe://x` for messages. */
export function describeNames(names: SubjectNames): string {
  const parts = [...names.dns.map((n) => `DNS:${n}`), ...names.ip.map((n) => `IP:${n}`), ...names.uri.map((n) => `URI:${n}`)];
  return parts.length === 0 ? "no subject alternative names" : parts.join(", ");
}

/**
 * Whether an identity from config (`spiffe://…` or another URI: SAN URI; a
 * DNS name: SAN DNS; an IP address: SAN IP) is one of the certificate's names.
 * Exact matches only: no wildcards, DNS case-insensitive.
 */
export function namesInclude(names: SubjectNames, identity: string): boolean {
  if (/^[a-z][a-z0-9+.-]*:\/\//i.test(identity)) return names.uri.includes(identity);
  const want = identity.toLowerCase().replace(/^\[|\]$/g, "");
  if (isIP(want)) return names.ip.includes(want);
  return names.dns.includes(want);
}

/** A valid identity for `identity:` / `tls.allow:` entries: a URI such as spiffe://…, a DNS name or an IP address. */
export function identityProblem(identity: string): string | undefined {
  if (/^spiffe:\/\/[A-Za-z0-9._-]+(\/[A-Za-z0-9._~%!$&'()*+,;=:@-]+)*$/.test(identity)) return undefined;
  if (/^[a-z][a-z0-9+.-]*:\/\//i.test(identity)) {
    try {
      new URL(identity);
      return undefined;
    } catch {
      return `"${identity}" is not a valid URI`;
    }
  }
  if (isIP(identity)) return undefined;
  if (/^(?=.{1,253}$)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$/.test(identity)) return undefined;
  return `"${identity}" is neither a URI (spiffe://flotilla/controller) nor a DNS name nor an IP address`;
}

/** True for names that only reach this machine. */
export function isLoopbackHost(host: string): boolean {
  const h = host.toLowerCase().replace(/^\[|\]$/g, "");
  return h === "localhost" || h === "::1" || /^127\.\d{1,3}\.\d{1,3}\.\d{1,3}$/.test(h) || h === "::ffff:127.0.0.1";
}

/** The host part of `host:port` (brackets of an IPv6 literal removed). */
export function hostOf(address: string): string {
  return address.replace(/:\d+$/, "").replace(/^\[|\]$/g, "");
}

/** What `flotilla certs check` and the expiry warnings show about one certificate. */
export interface CertificateFacts {
  readonly subject: string;
  readonly issuer: string;
  readonly names: SubjectNames;
  readonly notBefore: Date;
  readonly notAfter: Date;
  readonly isCa: boolean;
  readonly fingerprint256: string;
}

/** Facts of every certificate in a PEM text (a chain gives several). Throws on text that holds none. */
export function certificateFacts(pem: string | Buffer): CertificateFacts[] {
  const text = pem.toString();
  const blocks = text.match(/-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----/g) ?? [];
  return blocks.map((block) => {
    const cert = new X509Certificate(block);
    return {
      subject: cert.subject.replace(/\n/g, ", "),
      issuer: cert.issuer.replace(/\n/g, ", "),
      names: parseSubjectAltName(cert.subjectAltName),
      notBefore: new Date(cert.validFrom),
      notAfter: new Date(cert.validTo),
      isCa: cert.ca,
      fingerprint256: cert.fingerprint256,
    };
  });
}

/** Whole days from `now` until `notAfter` (negative once expired). */
export function daysLeft(notAfter: Date, now: Date): number {
  return Math.floor((notAfter.getTime() - now.getTime()) / 86_400_000);
}

/**
 * A warning sentence when a certificate expires within EXPIRY_WARNING_DAYS (or
 * has expired), else undefined. `what` names it for the operator.
 */
export function expiryWarning(what: string, notAfter: Date, now: Date): string | undefined {
  const left = daysLeft(notAfter, now);
  if (notAfter.getTime() <= now.getTime()) return `${what} expired on ${notAfter.toISOString()}: renew it (flotilla certs init) and send SIGHUP`;
  if (left < EXPIRY_WARNING_DAYS) return `${what} expires in ${left} day(s), on ${notAfter.toISOString()}: renew it (flotilla certs init) and send SIGHUP`;
  return undefined;
}

/** Expiry warnings for the first certificate of each named PEM text; unreadable ones are skipped (start-up reports those). */
export function expiryWarnings(certs: readonly { what: string; pem: string | Buffer }[], now: Date): string[] {
  const out: string[] = [];
  for (const c of certs) {
    let facts: CertificateFacts[];
    try {
      facts = certificateFacts(c.pem);
    } catch {
      continue;
    }
    const first = facts[0];
    if (!first) continue;
    const w = expiryWarning(c.what, first.notAfter, now);
    if (w) out.push(w);
  }
  return out;
}
