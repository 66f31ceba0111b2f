// Small concurrency tools the hot path, the ops endpoints and the tests share: bounded parallel map,
// the coalescing of calls made in one turn of the event loop into one batched call (or one write),
// the writes nobody awaits kept until they settle, a timeout, a run-then-wait loop, and the coalescing of
// concurrent loads of one key (single flight).

/** Runs fn over items with at most `limit` in flight; results keep the input order. */
export async function mapLimit<T, R>(items: readonly T[], limit: number, fn: (item: T, index: number) => Promise<R>): Promise<R[]> {
  const results = new Array<R>(items.length);
  let next = 0;
  const lanes = Array.from({ length: Math.min(limit, items.length) }, async () => {
    while (next < items.length) {
      const index = next;
      next += 1;
      results[index] = await fn(items[index] as T, index);
    }
  });
  await Promise.all(lanes);
  return results;
}

/**
 * Turns a batch operation into a per-item call: the items asked for in the same turn of the event
 * loop (at most maxBatch at a time) go to `run` together once the turn's I/O is handled; nobody
 * waits on a timer. `run` answers one result per item, in order, or an Error for that item alone;
 * if `run` throws, every item of its batch fails with that error.
 */
export function coalescePerTurn<T, R>(
  run: (items: T[]) => Promise<(R | Error)[]>,
  maxBatch = Number.POSITIVE_INFINITY,
): (item: T) => Promise<R> {
  const waiting: { item: T; resolve: (value: R) => void; reject: (error: unknown) => void }[] = [];
  let scheduled = false;

  const flush = () => {
    scheduled = false;
    while (waiting.length > 0) {
      const batch = waiting.splice(0, maxBatch);
      run(batch.map((w) => w.item)).then(
        (results) =>
          batch.forEach((w, i) => {
            const result = results[i];
            if (result instanceof Error) w.reject(result);
            else w.resolve(result as R);
          }),
        (error: unknown) => batch.forEach((w) => w.reject(error)),
      );
    }
  };

  return (item) =>
    new Promise<R>((resolve, reject) => {
      waiting.push({ item, resolve, reject });
      if (!scheduled) {
        scheduled = true;
        setImmediate(flush);
      }
    });
}

/**
 * coalescePerTurn for a write with no answer per item: the calls of one turn go to `write` together,
 * and each resolves once the write has landed, or rejects with its error. With `isolate`, a write
 * that fails is tried again call by call (isolatingFailures), so only the calls that fail alone fail.
 */
export function writePerTurn<T>(write: (items: T[]) => Promise<unknown>, opts: { isolate?: boolean } = {}): (item: T) => Promise<void> {
  const run = async (items: T[]): Promise<void[]> => {
    await write(items);
    return items.map(() => undefined);
  };
  return coalescePerTurn(opts.isolate ? isolatingFailures(run) : run);
}

/**
 * Writes nobody awaits (made behind an answer, often through coalescePerTurn), each kept until it
 * settles, so that a process stopping can wait for them before it disconnects. A write handed in
 * handles its own errors.
 */
export function writesBehind(): { add(write: Promise<void>): void; flushed(): Promise<void> } {
  const pending = new Set<Promise<void>>();
  return {
    add(write) {
      pending.add(write);
      void write.finally(() => pending.delete(write));
    },
    async flushed() {
      await Promise.allSettled([...pending]);
    },
  };
}

/**
 * Wraps a batch operation so one bad item cannot fail the others: when the batch call throws, each
 * item is tried again on its own, and only the items that fail alone get an error.
 */
export function isolatingFailures<T, R>(run: (items: T[]) => Promise<(R | Error)[]>): (items: T[]) => Promise<(R | Error)[]> {
  return async (items) => {
    try {
      return await run(items);
    } catch (error) {
      if (items.length <= 1) throw error;
      return Promise.all(
        items.map((item) =>
          run([item]).then(
            (results) => results[0] as R | Error,
            (failure: unknown) => (failure instanceof Error ? failure : new Error(String(failure))),
          ),
        ),
      );
    }
  };
}

/** `promise`, or a rejection once `ms` pass without an answer (the work itself is not cancelled). */
export function withTimeout<T>(promise: Promise<T>, ms: number, what = 'no answer'): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  return Promise.race([
    promise,
    new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`${what} in ${ms} ms`)), ms);
    }),
  ]).finally(() => clearTimeout(timer));
}

/**
 * Runs `work` now, then again `everyMs` after each run ends (never two at once); a failure goes to
 * `onError` and the next run comes as usual. The returned stop waits for a run in progress.
 */
export function repeatAfter(work: () => Promise<unknown>, everyMs: number, onError: (error: unknown) => void): () => Promise<void> {
  let stopped = false;
  let timer: NodeJS.Timeout | undefined;
  let current: Promise<unknown> = Promise.resolve();
  const tick = () => {
    current = work()
      .catch(onError)
      .finally(() => {
        if (!stopped) timer = setTimeout(tick, everyMs);
      });
  };
  tick();
  return async () => {
    stopped = true;
    if (timer) clearTimeout(timer);
    await current;
  };
}

/**
 * Coalesces concurrent loads of the same key (single flight): while a load of a key runs, every
 * call for that key gets its promise, value or failure alike; nothing is kept once it settles, so
 * a failure is not cached and the next call loads again. `forget(key)` lets the next call start a
 * load of its own while one runs (its callers still get its result): for a cache emptied meanwhile.
 */
export function singleFlight<K, V = unknown>() {
  const running = new Map<K, Promise<V>>();
  return {
    run<T extends V>(key: K, load: () => Promise<T>): Promise<T> {
      let flight = running.get(key) as Promise<T> | undefined;
      if (!flight) {
        const started: Promise<T> = load().finally(() => {
          if (running.get(key) === started) running.delete(key);
        });
        running.set(key, started);
        flight = started;
      }
      return flight;
    },
    forget(key: K): void {
      running.delete(key);
    },
  };
}
