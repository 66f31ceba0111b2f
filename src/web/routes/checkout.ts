// Checkout: validate a coupon for an order (a read), reserve it (a job, with an Idempotency-Key),
// cancel or confirm a reservation (jobs). Reads go to Postgres; every change goes through a job.
import { Hono, type Context } from 'hono';
import { z } from 'zod';
import { AppError } from '../../core/errors';
import { sequelize } from '../../core/postgres';
import { readCouponForCheckout } from '../../storage/checkout-coupon';
import { usability } from '../../domain/checkout-rules';
import { Reservation } from '../../storage/reservation';
import type { Queues } from '../../queues/connection';
import { addJob } from '../../queues/enqueue';
import { idSchema, moneySchema, reserveFingerprint } from '../../queues/jobs';
import { derivedJobId, reserveJobId, reserveRequestId } from '../../queues/names';
import type { AppEnv } from '../context';
import { claimIdempotencyKey, idempotencyKeySchema } from '../idempotency';
import { assertSelfOrAdmin, requireAdmin } from '../middleware/auth';
import { logWith } from '../middleware/trace';
import { jsonBody, parseWith } from '../validation';
import type { OutcomeHub } from '../outcome-hub';
import { answerJob, awaitPush } from './jobs';

export const reserveBody = z.object({ couponId: idSchema, orderId: idSchema, orderAmount: moneySchema }).strict();
export const validateBody = z.object({ couponId: idSchema, orderAmount: moneySchema }).strict();

export function checkoutRoutes(queues: Queues, hub: OutcomeHub) {
  const app = new Hono<AppEnv>();

  app.post('/validate', async (c) => {
    const body = await jsonBody(c, validateBody);
    const coupon = await readCouponForCheckout(sequelize(), body.couponId);
    if (!coupon) throw new AppError('NOT_FOUND', 'No such coupon.');
    assertSelfOrAdmin(c.get('user'), coupon.userId);
    const verdict = usability(coupon, coupon.rule, body.orderAmount, new Date());
    return c.json(verdict.usable ? { usable: true, discountAmount: verdict.discountAmount } : verdict);
  });

  app.post('/reserve', async (c) => {
    const key = c.req.header('idempotency-key');
    if (key === undefined)
      throw new AppError('VALIDATION_FAILED', 'The Idempotency-Key header is required.', [
        { path: 'Idempotency-Key', message: 'required' },
      ]);
    parseWith(idempotencyKeySchema, key);
    const body = await jsonBody(c, reserveBody);
    const user = c.get('user');
    const bodyFingerprint = reserveFingerprint(body);
    const first = await claimIdempotencyKey(queues.connection, sequelize(), user.id, key, { ...body, fingerprint: bodyFingerprint });
    // The same job id for the same (user, key, body): a replay re-adds it, which is a no-op while it
    // exists and queues it when the first request's add failed (that one heard 503; the key stays
    // claimed, so a retry with the same body goes through and another body is still refused). Should
    // the key's record be gone, Postgres decided above; a body racing that lookup is refused by the worker.
    const jobId = reserveJobId(user.id, key, bodyFingerprint);
    const requestId = reserveRequestId(user.id, key);
    const job = { ...body, requestId, userId: user.id, traceId: c.get('traceId'), requestedAt: new Date().toISOString() };
    // A first request's job is new: its push is awaited from before the add, and the job is not read
    // first. A replay's job may have finished long ago, so it is read first (answerJob).
    const pushed = first === 'first' ? awaitPush(c, hub, jobId) : undefined;
    const added = await addJob(queues, 'reserve', job, jobId);
    logWith(c, { enqueued: 'reserve', jobId, couponId: body.couponId, orderId: body.orderId, replay: first === 'replay' });
    return answerJob(c, queues, jobId, first === 'first' ? { added, hub, pushed } : { hub });
  });

  const reservationAction = (kind: 'cancel' | 'confirm') => async (c: Context<AppEnv>) => {
    const reservationId = parseWith(idSchema, c.req.param('id'));
    const reservation = await Reservation.findByPk(reservationId, { attributes: ['id', 'userId'] });
    if (!reservation) throw new AppError('NOT_FOUND', 'No such reservation.');
    const user = c.get('user');
    assertSelfOrAdmin(user, reservation.userId);
    const jobId = derivedJobId(kind, reservationId);
    await addJob(
      queues,
      kind,
      { reservationId, userId: reservation.userId, actorId: user.id, traceId: c.get('traceId'), requestedAt: new Date().toISOString() },
      jobId,
    );
    logWith(c, { enqueued: kind, jobId, reservationId });
    // One job per reservation and action: a second cancel finds the first one's job, so it is read first.
    return answerJob(c, queues, jobId, { hub });
  };
  app.post('/reservations/:id/cancel', reservationAction('cancel'));
  app.post('/reservations/:id/confirm', requireAdmin, reservationAction('confirm'));

  return app;
}
