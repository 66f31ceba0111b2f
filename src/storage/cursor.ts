// Keyset paging: opaque cursors ((timestamp, id) of a page's last row, base64url) and the query parts that use them.
import { Op, type Order, type WhereOptions } from 'sequelize';
import { instantInBounds } from '../core/bounds';
import { idSchema } from '../queues/jobs';

export interface Cursor {
  at: Date;
  id: string;
}

export function encodeCursor(at: Date, id: string): string {
  return Buffer.from(JSON.stringify([at.toISOString(), id])).toString('base64url');
}

/**
 * The cursor a client sent back, or null when it is not one this service could have made. A client
 * can write any cursor, so both parts are held to what the API accepts (a date within the years
 * 2000..2099, an id as idSchema says) before they reach a query: a year-0000 date or a NUL byte
 * would make Postgres fail the request.
 */
export function decodeCursor(cursor: string): Cursor | null {
  try {
    if (!/^[A-Za-z0-9_-]*$/.test(cursor)) return null;
    const parsed: unknown = JSON.parse(Buffer.from(cursor, 'base64url').toString('utf8'));
    if (!Array.isArray(parsed) || parsed.length !== 2) return null;
    const [at, id] = parsed as unknown[];
    if (typeof at !== 'string' || typeof id !== 'string' || !idSchema.safeParse(id).success) return null;
    const ms = Date.parse(at);
    if (!instantInBounds(ms)) return null;
    return { at: new Date(ms), id };
  } catch {
    return null;
  }
}

/** Rows strictly after the cursor in (column DESC, id DESC) order. */
export function afterCursor(column: string, cursor: Cursor): WhereOptions {
  return {
    [Op.or]: [{ [column]: { [Op.lt]: cursor.at } }, { [column]: cursor.at, id: { [Op.lt]: cursor.id } }],
  };
}

export const newestFirst = (column: string): Order => [
  [column, 'DESC'],
  ['id', 'DESC'],
];

/** Cuts the limit+1 rows a query fetched into a page and the cursor of the next one. */
export function pageOf<T extends { id: string }>(rows: T[], limit: number, at: (row: T) => Date): { page: T[]; nextCursor: string | null } {
  const page = rows.slice(0, limit);
  const last = page[page.length - 1];
  return { page, nextCursor: rows.length > limit && last ? encodeCursor(at(last), last.id) : null };
}
