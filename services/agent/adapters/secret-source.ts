import { readFileSync } from "node:fs";
import type { SecretRead, SecretRef, SecretSource } from "../core/secrets.js";

/**
 * Reads secrets from files and from the agent's environment at the moment
 * they are needed (each operation), so a rotated file takes effect at once.
 * Surrounding whitespace (the newline `echo` adds) is dropped; an empty value
 * is a problem, never a silent empty secret. Never throws.
 */
export class NodeSecretSource implements SecretSource {
  constructor(
    private readonly env: Readonly<Record<string, string | undefined>> = process.env,
    private readonly readFile: (path: string) => string = (p) => readFileSync(p, "utf8"),
  ) {}

  read(ref: SecretRef): SecretRead {
    if ("env" in ref) {
      const v = this.env[ref.env]?.trim();
      return v ? { ok: true, value: v } : { ok: false, state: "unset", detail: `${ref.env} is not set` };
    }
    let text: string;
    try {
      text = this.readFile(ref.file);
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code ?? "";
      if (code === "ENOENT" || code === "ENOTDIR") return { ok: false, state: "missing", detail: code };
      return { ok: false, state: "unreadable", detail: code || "read failed" };
    }
    const value = text.trim();
    return value === "" ? { ok: false, state: "empty", detail: "empty" } : { ok: true, value };
  }
}
