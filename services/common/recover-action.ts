/**
 * The actions that resolve an interrupted or needs-restore operation, one list
 * for the CLI (`flotilla recover --action`), the controller (RecoverTarget) and
 * the agent (Recover):
 * - restore: put back the backup the operation took (loses what was written since);
 * - accept: keep the database, only if it is verifiably at the wanted revision;
 * - forward: an interrupted online (job) migration goes on from the revision the
 *   database reached, keeping the app's writes (the agent refuses it otherwise).
 */
export const RECOVER_ACTIONS = ["restore", "accept", "forward"] as const;
export type RecoverAction = (typeof RECOVER_ACTIONS)[number];

export function isRecoverAction(action: string | undefined): action is RecoverAction {
  return (RECOVER_ACTIONS as readonly (string | undefined)[]).includes(action);
}
