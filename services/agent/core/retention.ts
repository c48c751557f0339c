/**
 * Which backups retention may delete: a pure decision over the catalog's
 * manifests. A backup is kept when it is among the newest `keep`, younger
 * than `keepDays` (when set: the union of the two rules, like restic's
 * --keep-last and --keep-within), the newest verified backup (never deleted,
 * whatever the rules say), or protected (an operation or an unfinished
 * rollout still needs it).
 */

export interface RetentionBackup {
  readonly id: string;
  /** RFC 3339. */
  readonly createdAt: string;
  readonly verified: boolean;
}

export interface RetentionRules {
  readonly keep: number;
  readonly keepDays?: number;
  readonly nowMs: number;
  readonly protect: ReadonlySet<string>;
}

const DAY_MS = 24 * 60 * 60 * 1000;

/** Ids to delete, oldest last; never the newest verified backup nor a protected one. */
export function backupsToDelete(backups: readonly RetentionBackup[], rules: RetentionRules): string[] {
  const newestFirst = [...backups].sort((a, b) => b.createdAt.localeCompare(a.createdAt));
  const lastVerified = newestFirst.find((b) => b.verified)?.id;
  const out: string[] = [];
  newestFirst.forEach((b, i) => {
    if (i < rules.keep) return;
    if (b.id === lastVerified || rules.protect.has(b.id)) return;
    if (rules.keepDays !== undefined) {
      const created = Date.parse(b.createdAt);
      if (Number.isFinite(created) && rules.nowMs - created < rules.keepDays * DAY_MS) return;
    }
    out.push(b.id);
  });
  return out;
}
