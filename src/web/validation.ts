// Reads request bodies and query strings through zod schemas; every failure is a 400 with the field paths.
import type { Context } from 'hono';
import type { z } from 'zod';
import { AppError } from '../core/errors';

function fail(error: z.ZodError): never {
  throw new AppError(
    'VALIDATION_FAILED',
    'The request is not valid.',
    error.issues.map((i) => ({ path: i.path.join('.'), message: i.message })),
  );
}

export function parseWith<S extends z.ZodType>(schema: S, input: unknown): z.infer<S> {
  const parsed = schema.safeParse(input);
  if (!parsed.success) fail(parsed.error);
  return parsed.data;
}

export async function jsonBody<S extends z.ZodType>(c: Context, schema: S): Promise<z.infer<S>> {
  const type = c.req.header('content-type') ?? '';
  if (!/^application\/(?:[\w.+-]+\+)?json\b/i.test(type)) {
    throw new AppError('UNSUPPORTED_MEDIA_TYPE', 'Send the body as application/json.');
  }
  let body: unknown;
  try {
    body = await c.req.json();
  } catch (error) {
    if (error instanceof AppError) throw error;
    throw new AppError('VALIDATION_FAILED', 'The request body is not valid JSON.');
  }
  return parseWith(schema, body);
}

export function query<S extends z.ZodType>(c: Context, schema: S): z.infer<S> {
  return parseWith(schema, c.req.query());
}
