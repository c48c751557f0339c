import { FlotillaError } from "../../common/errors.js";

/** The refusal when the audit chain is shorter than (or differs from) its anchor. */
export function truncatedAuditError(where: string, anchorSeq: number, tailSeq: number): FlotillaError {
  return new FlotillaError(
    "AUDIT_UNAVAILABLE",
    tailSeq < anchorSeq
      ? `audit log tail truncated: the ${where} says seq ${anchorSeq}, the log ends at ${tailSeq}. Nothing more is appended (every change is refused) until the missing rows are restored; flotilla audit verify shows the damage`
      : `audit log tail rewritten: row ${anchorSeq} differs from the ${where}. Nothing more is appended (every change is refused) until the rows are restored; flotilla audit verify shows the damage`,
  );
}
