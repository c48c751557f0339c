import { createHash } from "node:crypto";
import { registerSecret } from "../common/redact.js";
import type { AgentTarget, TargetConfig } from "./config.js";
import type { DatabaseAdapter } from "./core/ports.js";
import { resolveSecrets, type ResolvedSecrets, type SecretProblem, type SecretSource } from "./core/secrets.js";
import { targetHealth, type TargetFacts, type TargetHealth } from "./core/target-health.js";
import type { TargetRuntime } from "./operations/index.js";

export interface TargetRegistryDeps {
  /** Reads a secret now (the per-operation resolver). */
  readonly secrets: SecretSource;
  /** Builds a target's runtime (database adapter, Alembic port, catalog) from its resolved config. No I/O. */
  build(target: AgentTarget): TargetRuntime;
  /** Collects the facts that decide whether the target is servable. */
  probe(target: TargetConfig, secretProblems: readonly SecretProblem[], db: DatabaseAdapter): Promise<TargetFacts>;
}

/** A target's config with the secrets of this moment filled in. */
export function resolvedTarget(t: TargetConfig, s: ResolvedSecrets): AgentTarget {
  const { passwordFile: _passwordFile, alembic, ...rest } = t;
  const { secrets: _secrets, ...plain } = alembic;
  return {
    ...rest,
    ...(s.password !== undefined ? { password: s.password } : {}),
    alembic: { ...plain, env: { ...alembic.env, ...s.env }, secretEnvNames: Object.keys(s.env) },
  };
}

function fingerprint(s: ResolvedSecrets): string {
  return createHash("sha256")
    .update(JSON.stringify([Object.entries(s.env).sort(), s.password ?? null]))
    .digest("hex");
}

/**
 * The agent's targets at run time. Secrets are read again every time a
 * target's runtime is asked for (each operation), and the runtime is rebuilt
 * when they changed, so a rotated WEBUI_SECRET_KEY or database password takes
 * effect on the next operation without a restart. `check` decides whether a
 * target is servable (ok | broken) from fresh facts. Read as a map by the
 * operations.
 */
export class TargetRegistry implements ReadonlyMap<string, TargetRuntime> {
  private readonly configs = new Map<string, TargetConfig>();
  private readonly runtimes = new Map<string, { readonly fingerprint: string; readonly runtime: TargetRuntime }>();

  constructor(
    targets: readonly TargetConfig[],
    private readonly deps: TargetRegistryDeps,
  ) {
    for (const t of targets) this.configs.set(t.id, t);
  }

  /** The config of a target (undefined when this agent has none of that id). */
  config(id: string): TargetConfig | undefined {
    return this.configs.get(id);
  }

  /** Reads the target's secrets now and returns a runtime that uses them. */
  private current(t: TargetConfig): { runtime: TargetRuntime; secrets: ResolvedSecrets } {
    const secrets = resolveSecrets(t, this.deps.secrets);
    registerSecret(secrets.password);
    for (const v of Object.values(secrets.env)) registerSecret(v);
    const fp = fingerprint(secrets);
    const cached = this.runtimes.get(t.id);
    if (cached !== undefined && cached.fingerprint === fp) return { runtime: cached.runtime, secrets };
    const runtime = this.deps.build(resolvedTarget(t, secrets));
    this.runtimes.set(t.id, { fingerprint: fp, runtime });
    return { runtime, secrets };
  }

  /**
   * Whether the target can be served right now, from fresh facts (secrets
   * re-read, folders and files checked, PostgreSQL tried once). Undefined for
   * an id this agent does not have.
   */
  async check(id: string): Promise<TargetHealth | undefined> {
    const t = this.configs.get(id);
    if (t === undefined) return undefined;
    const { runtime, secrets } = this.current(t);
    return targetHealth(await this.deps.probe(t, secrets.problems, runtime.db));
  }

  // ------------------------------------------------------------------ ReadonlyMap

  get(id: string): TargetRuntime | undefined {
    const t = this.configs.get(id);
    return t === undefined ? undefined : this.current(t).runtime;
  }

  has(id: string): boolean {
    return this.configs.has(id);
  }

  get size(): number {
    return this.configs.size;
  }

  keys(): MapIterator<string> {
    return this.configs.keys();
  }

  private snapshot(): Map<string, TargetRuntime> {
    return new Map([...this.configs.keys()].map((id) => [id, this.get(id)!]));
  }

  values(): MapIterator<TargetRuntime> {
    return this.snapshot().values();
  }

  entries(): MapIterator<[string, TargetRuntime]> {
    return this.snapshot().entries();
  }

  [Symbol.iterator](): MapIterator<[string, TargetRuntime]> {
    return this.entries();
  }

  forEach(fn: (value: TargetRuntime, key: string, map: ReadonlyMap<string, TargetRuntime>) => void): void {
    for (const [k, v] of this.entries()) fn(v, k, this);
  }
}
