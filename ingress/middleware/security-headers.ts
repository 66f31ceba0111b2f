// Security headers on every answer (Hono's secureHeaders): nosniff, no framing, no referrer, HSTS,
// and a content policy. API answers are JSON and need nothing: `default-src 'none'`. The two pages
// get what they use: /docs its one inline stylesheet (by hash), Bull Board its own scripts, styles,
// fonts and images from its static path (and the Google Fonts its page links).
import type { MiddlewareHandler } from 'hono';
import { secureHeaders } from 'hono/secure-headers';
import { BULL_BOARD_PATH } from '../bull-board';
import { DOCS_STYLE_HASH } from '../routes/docs';

const common = { xContentTypeOptions: 'nosniff', xFrameOptions: 'DENY', referrerPolicy: 'no-referrer' } as const;

const strict = secureHeaders({ ...common, contentSecurityPolicy: { defaultSrc: ["'none'"], frameAncestors: ["'none'"] } });
const docs = secureHeaders({
  ...common,
  contentSecurityPolicy: { defaultSrc: ["'none'"], styleSrc: [`'${DOCS_STYLE_HASH}'`], connectSrc: ["'self'"], frameAncestors: ["'none'"], baseUri: ["'none'"], formAction: ["'none'"] },
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

export function securityHeaders(): MiddlewareHandler {
  return (c, next) => {
    const path = c.req.path;
    if (path === '/docs' || path === '/docs/') return docs(c, next);
    if (path === BULL_BOARD_PATH || path.startsWith(`${BULL_BOARD_PATH}/`)) return board(c, next);
    return strict(c, next);
  };
}
