// Trace ids: the one a request or an event came with when it is sane, else a fresh one. The web takes
// it from X-Request-Id, the bridge from a Kafka message's trace-id header; jobs carry it on.
import { randomUUID } from 'node:crypto';

/** What a caller's trace id may look like: 8-128 letters, digits and `._:-` (UUIDs, ULIDs and the like). */
const SANE_TRACE_ID = /^[A-Za-z0-9._:-]{8,128}$/;

/** `given` when it is a sane trace id, else a fresh random UUID. */
export function traceIdFrom(given: string | null | undefined): string {
  return given && SANE_TRACE_ID.test(given) ? given : randomUUID();
}
