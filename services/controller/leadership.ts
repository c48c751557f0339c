import pg from "pg";
import type { Logger } from "../common/logger.js";

/** Advisory lock key shared by every controller replica of one PostgreSQL store. */
const LEADER_LOCK_KEY = 7_441_001;

/**
 * Which controller replica acts. With the embedded SQLite store there is one
 * controller and it always leads. With the PostgreSQL store, the replica that
 * holds a session advisory lock on a dedicated connection leads; the others
 * serve reads and poll for the lock. A leader that loses its connection stops
 * acting at once (the lock died with the session) and exits so it restarts as
 * a follower.
 */
export class Leadership {
  private leader = false;
  private client: pg.Client | undefined;
  private timer: NodeJS.Timeout | undefined;
  private closed = false;

  constructor(
    private readonly storeUrl: string,
    private readonly log: Logger,
    private readonly onElected: () => Promise<void>,
    private readonly onLost: () => void,
    private readonly pollMs = 2000,
  ) {}

  get isLeader(): boolean {
    return this.leader;
  }

  /**
   * The fencing epoch of this replica's leadership: 1 with the SQLite store;
   * with PostgreSQL, one more than the previous leader's, taken while holding
   * the leader lock. 0 while not leading. Every command to an agent carries it
   * (`flotilla-epoch`): an agent refuses an epoch lower than one it has seen,
   * so a replica paused past the loss of its leadership cannot act.
   */
  get epoch(): number {
    return this.leader ? this.currentEpoch : 0;
  }

  private currentEpoch = 0;

  async start(): Promise<void> {
    if (!/^postgres(ql)?:\/\//.test(this.storeUrl)) {
      this.currentEpoch = 1;
      this.leader = true;
      await this.onElected();
      return;
    }
    await this.tryAcquire();
    if (!this.leader) this.log.info("another controller replica leads: standing by, serving reads");
  }

  private async tryAcquire(): Promise<void> {
    if (this.closed) return;
    try {
      if (!this.client) {
        const c = new pg.Client({ connectionString: this.storeUrl, application_name: "flotilla-controller-leader" });
        c.on("error", (err) => this.lose(err));
        c.on("end", () => this.lose(new Error("leader connection closed")));
        await c.connect();
        this.client = c;
      }
      const r = await this.client.query<{ ok: boolean }>("SELECT pg_try_advisory_lock($1) AS ok", [LEADER_LOCK_KEY]);
      if (r.rows[0]?.ok) {
        await this.client.query("CREATE TABLE IF NOT EXISTS leader_epoch (id INTEGER PRIMARY KEY CHECK (id = 1), epoch BIGINT NOT NULL)");
        const e = await this.client.query<{ epoch: string }>(
          // Never below the clock in seconds: epochs keep rising even if the store is replaced by a fresh one.
          "INSERT INTO leader_epoch (id, epoch) VALUES (1, extract(epoch from now())::bigint) " +
            "ON CONFLICT (id) DO UPDATE SET epoch = GREATEST(leader_epoch.epoch + 1, extract(epoch from now())::bigint) RETURNING epoch",
        );
        this.currentEpoch = Number(e.rows[0]!.epoch);
        this.leader = true;
        this.log.info({ epoch: this.currentEpoch }, "this controller replica now leads");
        await this.onElected();
        return;
      }
    } catch (err) {
      this.log.warn({ err }, "leader election: cannot reach the store; retrying");
      await this.client?.end().catch(() => undefined);
      this.client = undefined;
    }
    this.timer = setTimeout(() => void this.tryAcquire(), this.pollMs);
    this.timer.unref();
  }

  private lose(err: Error): void {
    if (this.closed) return;
    if (this.leader) {
      this.leader = false;
      this.log.error({ err }, "lost the leader lock: stopping");
      this.onLost();
    }
    this.client = undefined;
  }

  async close(): Promise<void> {
    this.closed = true;
    if (this.timer) clearTimeout(this.timer);
    const c = this.client;
    this.client = undefined;
    this.leader = false;
    await c?.end().catch(() => undefined);
  }
}
