// What every request handler can reach: its trace id, logger and the caller.
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
  };
}
