// A fix for kafkajs 2.2.4's idle loop, loaded before the bridge makes its first client. Every broker
// connection's request queue reschedules its "pending requests" check after each check, and with no
// request pending and no throttle it schedules it at a negative delay, which Node runs after 1 ms:
// each connection the bridge has had (consumer, group coordinator, DLQ producer, lag and readiness
// admins) woke its process about a thousand times a second with nothing to do. Measured with
// `npm run bench:idle` on 2 cores, the idle bridge went from 3.9 to 1.4 % of a core. Upstream: tulios/kafkajs
// issues #1556 and #1704, unmerged fix #1667.
// The replacement schedules a check only when there is something to check: a pending request (the
// same timing as before), or a throttle to wait out. A request pushed later is sent at once or, when
// it cannot be, schedules its own check (RequestQueue.push), and a fulfilled request checks the queue
// itself, so nothing waits for the removed wake-ups. Applied to kafkajs 2.2.4 only: another version
// is left as it is (check whether it still needs this, and remove this file when it does not).
import { createRequire } from 'node:module';

const CHECK_PENDING_REQUESTS_INTERVAL = 10; // as in kafkajs/src/network/requestQueue/index.js

interface RequestQueueLike {
  throttledUntil: number;
  throttleCheckTimeoutId: NodeJS.Timeout | null;
  pending: unknown[];
  checkPendingRequests(): void;
}

/** Patches kafkajs's RequestQueue once; answers whether it did (false for another kafkajs version). */
export function fixKafkajsIdleLoop(): boolean {
  const load = createRequire(require.resolve('kafkajs'));
  const version = (load('./package.json') as { version: string }).version;
  if (version !== '2.2.4') return false;
  const RequestQueue = load('./src/network/requestQueue/index.js') as {
    prototype: RequestQueueLike & { scheduleCheckPendingRequests(): void };
  };
  RequestQueue.prototype.scheduleCheckPendingRequests = function scheduleCheckPendingRequests(this: RequestQueueLike) {
    if (this.throttleCheckTimeoutId) return;
    const throttledFor = this.throttledUntil - Date.now();
    let scheduleAt: number;
    if (this.pending.length > 0) scheduleAt = throttledFor > 0 ? throttledFor : CHECK_PENDING_REQUESTS_INTERVAL;
    else if (throttledFor > 0) scheduleAt = throttledFor;
    else return; // nothing pending, no throttle: nothing to check until a request comes
    this.throttleCheckTimeoutId = setTimeout(() => {
      this.throttleCheckTimeoutId = null;
      this.checkPendingRequests();
    }, scheduleAt);
  };
  return true;
}
