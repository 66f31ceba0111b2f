// The process logger: pino JSON on stdout. Request and job code log through children that carry a traceId.
import pino, { type Logger } from 'pino';
import { config } from './config';

let root: Logger | undefined;

export function logger(): Logger {
  if (!root) {
    const cfg = config();
    root = pino({
      level: cfg.LOG_LEVEL,
      base: { service: 'coupon-service', pid: process.pid },
      timestamp: pino.stdTimeFunctions.isoTime,
      formatters: { level: (label) => ({ level: label }) },
      // ioredis errors carry their command with its arguments (a generation job's codes, say).
      redact: {
        paths: ['req.headers.authorization', 'authorization', 'password', 'err.command', 'err.previousErrors[*].command'],
        censor: '[redacted]',
      },
    });
  }
  return root;
}

export type { Logger };
