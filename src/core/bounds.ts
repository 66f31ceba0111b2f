// The bounds every date and number from outside (HTTP, Kafka) is held to at the edge, so nothing a
// client sends can reach Postgres out of the range of a column or of what the service means by it
// (a window starting in year 0000 is a typo, and Postgres has no year 0). Checked by zod schemas.
import { z } from 'zod';

/** The first instant the API accepts: 2000-01-01T00:00:00Z. */
export const MIN_INSTANT = Date.UTC(2000, 0, 1);
/** The first instant past what the API accepts: 2100-01-01T00:00:00Z. */
export const MAX_INSTANT = Date.UTC(2100, 0, 1);

/** The largest amount of money (smallest currency unit) the API takes: beyond any real order, far inside bigint and double precision. */
export const MAX_MONEY = 1_000_000_000_000;

/** Whether an instant (ms since the epoch) is within [MIN_INSTANT, MAX_INSTANT). */
export function instantInBounds(ms: number): boolean {
  return Number.isFinite(ms) && ms >= MIN_INSTANT && ms < MAX_INSTANT;
}

const RANGE = 'between 2000-01-01T00:00:00Z and 2099-12-31T23:59:59Z';

/** An ISO-8601 date-time with an offset, within the years 2000..2099. */
export const boundedDateTime = () =>
  z.iso
    .datetime({ offset: true })
    .refine((value) => instantInBounds(Date.parse(value)), `must be ${RANGE}`)
    .describe(`ISO-8601 date-time, ${RANGE}`);
