/**
 * A push-based async iterable: producers push and finally end (or fail);
 * one consumer iterates. Used to turn progress callbacks into streams.
 */
export class AsyncQueue<T> implements AsyncIterable<T> {
  private items: T[] = [];
  private waiting: ((r: IteratorResult<T>) => void) | undefined;
  private failWaiting: ((e: unknown) => void) | undefined;
  private ended = false;
  private error: unknown;

  push(item: T): void {
    if (this.ended) return;
    if (this.waiting) {
      const w = this.waiting;
      this.waiting = undefined;
      this.failWaiting = undefined;
      w({ value: item, done: false });
    } else this.items.push(item);
  }

  end(): void {
    this.ended = true;
    if (this.waiting) {
      const w = this.waiting;
      this.waiting = undefined;
      w({ value: undefined as never, done: true });
    }
  }

  fail(err: unknown): void {
    this.error = err;
    this.ended = true;
    if (this.failWaiting) {
      const f = this.failWaiting;
      this.waiting = undefined;
      this.failWaiting = undefined;
      f(err);
    }
  }

  [Symbol.asyncIterator](): AsyncIterator<T> {
    return {
      next: () => {
        const item = this.items.shift();
        if (item !== undefined) return Promise.resolve({ value: item, done: false });
        if (this.error !== undefined) return Promise.reject(this.error);
        if (this.ended) return Promise.resolve({ value: undefined as never, done: true });
        return new Promise((resolve, reject) => {
          this.waiting = resolve;
          this.failWaiting = reject;
        });
      },
      return: () => {
        this.ended = true;
        return Promise.resolve({ value: undefined as never, done: true });
      },
    };
  }
}

/** Runs `work(push)` and streams what it pushes; the stream ends when work settles. */
export function streamOf<T>(work: (push: (item: T) => void) => Promise<unknown>): AsyncIterable<T> {
  const q = new AsyncQueue<T>();
  work((i) => q.push(i)).then(
    () => q.end(),
    (e: unknown) => q.fail(e),
  );
  return q;
}
