/**
 * Secrets of a target (WEBUI_SECRET_KEY, the PostgreSQL password) are read
 * through a SecretSource at each operation, so a rotated key file takes effect
 * on the next operation without a restart. Pure: the source is a port.
 */

/** Where a secret comes from (the config's `{ file: … }` or `{ env: … }`). */
export type SecretRef = { readonly file: string } | { readonly env: string };

/** What reading one secret gave. Values never leave through messages or logs. */
export type SecretRead =
  | { readonly ok: true; readonly value: string }
  | { readonly ok: false; readonly state: "missing" | "unreadable" | "empty" | "unset"; readonly detail: string };

/** The port: reads one secret now. Never throws. */
export interface SecretSource {
  read(ref: SecretRef): SecretRead;
}

/** One secret of a target that could not be read, with the config key that names it. */
export interface SecretProblem {
  /** Config key, e.g. `alembic.env.WEBUI_SECRET_KEY` or `passwordFile`. */
  readonly key: string;
  readonly ref: SecretRef;
  readonly state: "missing" | "unreadable" | "empty" | "unset";
  readonly detail: string;
}

/** The secrets a target's config names. */
export interface TargetSecretRefs {
  readonly passwordFile?: string;
  readonly alembic: { readonly secrets: Readonly<Record<string, SecretRef>> };
}

export interface ResolvedSecrets {
  /** Secret env values by name (only those that could be read). */
  readonly env: Readonly<Record<string, string>>;
  readonly password?: string;
  readonly problems: readonly SecretProblem[];
}

/** Reads every secret of a target now; an unreadable one is a problem, never an exception. */
export function resolveSecrets(target: TargetSecretRefs, source: SecretSource): ResolvedSecrets {
  const env: Record<string, string> = {};
  const problems: SecretProblem[] = [];
  let password: string | undefined;
  for (const [name, ref] of Object.entries(target.alembic.secrets)) {
    const r = source.read(ref);
    if (r.ok) env[name] = r.value;
    else problems.push({ key: `alembic.env.${name}`, ref, state: r.state, detail: r.detail });
  }
  if (target.passwordFile !== undefined) {
    const ref = { file: target.passwordFile };
    const r = source.read(ref);
    if (r.ok) password = r.value;
    else problems.push({ key: "passwordFile", ref, state: r.state, detail: r.detail });
  }
  return { env, ...(password !== undefined ? { password } : {}), problems };
}

/** Where a secret lives, for messages: `file /run/secrets/x` or `environment variable X`. */
export function describeRef(ref: SecretRef): string {
  return "file" in ref ? `file ${ref.file}` : `environment variable ${ref.env}`;
}
