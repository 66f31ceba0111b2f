// Security headers on every answer (Hono's secureHeaders): nosniff, no framing, no referrer, HSTS,
// and a content policy. API answers are JSON and need nothing: `default-src 'none'`. The two pages
// get what they use: /docs its one inline stylesheet (by hash), Bull Board its own scripts, styles,
// fonts and images from its static path (and the Google Fonts its page links).
import { Hono, type MiddlewareHandler } from 'hono';
import { secureHeaders } from 'hono/secure-headers';
import { BULL_BOARD_PATH } from '../bull-board';
import { DOCS_STYLE_HASH } from '../routes/docs';

const common = { xContentTypeOptions: 'nosniff', xFrameOptions: 'DENY', referrerPolicy: 'no-referrer' } as const;

const strict = secureHeaders({ ...common, contentSecurityPolicy: { defaultSrc: ["'none'"], frameAncestors: ["'none'"] } });
const docs = secureHeaders({
  ...common,
  contentSecurityPolicy: {
    defaultSrc: ["'none'"],
    styleSrc: [`'${DOCS_STYLE_HASH}'`],
    connectSrc: ["'self'"],
    frameAncestors: ["'none'"],
    baseUri: ["'none'"],
    formAction: ["'none'"],
  },
});
const board = secureHeaders({
  ...common,
  contentSecurityPolicy: {
    defaultSrc: ["'self'"],
    scriptSrc: ["'self'"],
    // The page's React sets style attributes; its stylesheet asks Google Fonts for IBM Plex (without
    // them it falls back to the system fonts and works the same).
    styleSrc: ["'self'", "'unsafe-inline'", 'https://fonts.googleapis.com'],
    imgSrc: ["'self'", 'data:'],
    fontSrc: ["'self'", 'data:', 'https://fonts.gstatic.com'],
    connectSrc: ["'self'"],
    frameAncestors: ["'none'"],
    formAction: ["'self'"],
    baseUri: ["'self'"],
  },
});

/**
 * The headers a secureHeaders middleware sets, read once from a request to a throwaway app: the
 * library stays the one that decides them.
 */
async function headersSetBy(middleware: MiddlewareHandler): Promise<[string, string][]> {
  const probe = new Hono();
  probe.use('*', middleware);
  probe.get('/', (c) => c.body(null, 204));
  return [...(await probe.request('/')).headers];
}

/**
 * The API's headers go on before the handler builds its answer (c.header): secureHeaders sets them
 * on the finished Response, which makes @hono/node-server build a full Web Response for every
 * answer, a tenth of an issue request's CPU (src/web/middleware/trace.ts). The two pages keep the
 * library's middleware as it is.
 */
export function securityHeaders(): MiddlewareHandler {
  const strictHeaders = headersSetBy(strict);
  let ready: [string, string][] | undefined;
  return async (c, next) => {
    const path = c.req.path;
    if (path === '/docs' || path === '/docs/') return docs(c, next);
    if (path === BULL_BOARD_PATH || path.startsWith(`${BULL_BOARD_PATH}/`)) return board(c, next);
    ready ??= await strictHeaders;
    for (const [name, value] of ready) c.header(name, value);
    await next();
  };
}
