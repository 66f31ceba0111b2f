// What every request handler can reach: its trace id, logger, the caller and where it called from.
import type { Logger } from '../core/logger';

export interface AuthUser {
  id: string;
  role: 'user' | 'admin';
}

export interface AppEnv {
  Variables: {
    traceId: string;
    log: Logger;
    user: AuthUser;
    /** The client's address as budgets count it: the socket's, or the last X-Forwarded-For entry with TRUST_PROXY; an IPv6 address as its /64. */
    clientIp: string;
    /** What the handler added to its request's log line with logWith (src/web/middleware/trace.ts). */
    logFields?: Record<string, unknown>;
  };
}
