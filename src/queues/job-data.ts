// Reads a job's payload through its schema. A payload no worker can read will never succeed, so the
// job fails at once (UnrecoverableError) instead of being retried.
import { UnrecoverableError, type Job } from 'bullmq';
import type { z } from 'zod';

export function jobData<S extends z.ZodType>(job: Job, schema: S): z.infer<S> {
  const parsed = schema.safeParse(job.data);
  if (!parsed.success) throw new UnrecoverableError(`malformed ${job.name} job: ${parsed.error.issues[0]?.message ?? 'invalid'}`);
  return parsed.data;
}
