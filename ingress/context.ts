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
    /** The client's address: the socket's, or the first X-Forwarded-For entry with TRUST_PROXY. */
    clientIp: string;
    /** What the handler added to its request's log line with logWith (ingress/middleware/trace.ts). */
    logFields?: Record<string, unknown>;
  };
}
