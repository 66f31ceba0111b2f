// The reservations table and the checkout transactions: reserve a coupon for an order, apply a
// payment (or an admin's confirm, or a user's cancel), and time out what nobody paid for.
//
// Every change is decided in TypeScript (models/checkout-rules.ts) on rows read without locks, and
// written as a compare-and-set by the batched functions of models/sql/ (reserve_coupons.sql,
// apply_checkout_events.sql): it takes effect only if the rows are still as read, else the worker
// reads and decides again. Lock order: every write that changes a reservation locks its coupon row
// first; one order everywhere means no deadlocks.
import { randomUUID } from 'node:crypto';
import {
  DataTypes,
  Model,
  QueryTypes,
  type CreationOptional,
  type InferAttributes,
  type InferCreationAttributes,
  type Sequelize,
} from 'sequelize';
import { coalescePerTurn, isolatingFailures } from '../core/concurrency';
import { reason, type Reason } from '../core/errors';
import {
  foreignPayer,
  isSameReserveRequest,
  planPayment,
  usability,
  type CouponState,
  type DiscountRule,
  type PaymentEventType,
  type PaymentPlan,
  type ReservationState,
  type Usability,
} from './checkout-rules';
import { invalidateUserCoupons } from './user-coupon-cache';

export class Reservation extends Model<InferAttributes<Reservation>, InferCreationAttributes<Reservation>> {
  declare id: string;
  declare couponId: string;
  declare userId: string;
  declare orderId: string;
  declare orderAmount: number;
  declare discountAmount: number;
  declare status: CreationOptional<ReservationState>;
  declare requestId: string;
  declare requestFingerprint: CreationOptional<string | null>;
  declare expiresAt: Date;
  declare endedAt: CreationOptional<Date | null>;
  declare endReason: CreationOptional<string | null>;
  declare refundedAt: CreationOptional<Date | null>;
  declare createdAt: CreationOptional<Date>;
  declare updatedAt: CreationOptional<Date>;
}

const money = (attribute: 'orderAmount' | 'discountAmount', field: string) => ({
  type: DataTypes.BIGINT,
  allowNull: false,
  field,
  get(this: Reservation) {
    return Number(this.getDataValue(attribute));
  },
});

export function initReservationModel(db: Sequelize): void {
  Reservation.init(
    {
      id: { type: DataTypes.TEXT, primaryKey: true },
      couponId: { type: DataTypes.TEXT, allowNull: false, field: 'coupon_id' },
      userId: { type: DataTypes.TEXT, allowNull: false, field: 'user_id' },
      orderId: { type: DataTypes.TEXT, allowNull: false, field: 'order_id' },
      orderAmount: money('orderAmount', 'order_amount'),
      discountAmount: money('discountAmount', 'discount_amount'),
      status: { type: DataTypes.TEXT, allowNull: false, defaultValue: 'PENDING' },
      requestId: { type: DataTypes.TEXT, allowNull: false, field: 'request_id' },
      requestFingerprint: { type: DataTypes.TEXT, allowNull: true, field: 'request_fingerprint' },
      expiresAt: { type: DataTypes.DATE, allowNull: false, field: 'expires_at' },
      endedAt: { type: DataTypes.DATE, allowNull: true, field: 'ended_at' },
      endReason: { type: DataTypes.TEXT, allowNull: true, field: 'end_reason' },
      refundedAt: { type: DataTypes.DATE, allowNull: true, field: 'refunded_at' },
      createdAt: { type: DataTypes.DATE, field: 'created_at' },
      updatedAt: { type: DataTypes.DATE, field: 'updated_at' },
    },
    { sequelize: db, tableName: 'reservations', underscored: true, timestamps: true },
  );
}

/** The result of a reserve job, as SPEC §5 words it. */
export interface ReservationResult {
  reservationId: string;
  couponId: string;
  orderId: string;
  discountAmount: number;
  expiresAt: string;
}

export function reservationResult(r: Reservation): ReservationResult {
  return { reservationId: r.id, couponId: r.couponId, orderId: r.orderId, discountAmount: r.discountAmount, expiresAt: r.expiresAt.toISOString() };
}

/** A reservation as the API shows it after a cancel, confirm or payment. */
export function reservationView(r: Reservation) {
  return {
    ...reservationResult(r),
    userId: r.userId,
    orderAmount: r.orderAmount,
    status: r.status,
    ...(r.endedAt && { endedAt: r.endedAt.toISOString() }),
    ...(r.endReason && { endReason: r.endReason }),
    ...(r.refundedAt && { refundedAt: r.refundedAt.toISOString() }),
    createdAt: r.createdAt.toISOString(),
  };
}
export type ReservationView = ReturnType<typeof reservationView>;

/** A coupon as a checkout decision needs it, with the rules of its policy. */
interface CouponRow {
  id: string;
  user_id: string;
  status: CouponState;
  expires_at: Date;
  reservation_id: string | null;
  order_id: string | null;
  discount_type: DiscountRule['type'];
  discount_value: string;
  max_discount_amount: string | null;
  min_order_amount: string | null;
  restore_on_refund: boolean;
}

const COUPON_COLUMNS = `c.id, c.user_id, c.status, c.expires_at, c.reservation_id, c.order_id,
  p.discount_type, p.discount_value, p.max_discount_amount, p.min_order_amount, p.restore_on_refund`;

function ruleOf(c: CouponRow): DiscountRule {
  const num = (v: string | null) => (v === null ? null : Number(v));
  return { type: c.discount_type, value: Number(c.discount_value), maxDiscountAmount: num(c.max_discount_amount), minOrderAmount: num(c.min_order_amount) };
}

const db = () => Reservation.sequelize as Sequelize;

/**
 * One statement for every call made in the same turn of the event loop: `sql` takes the items as
 * its one parameter (`bind`) and answers rows, and each call gets the row whose `rowKey` is its
 * item's key, or null. A batch that fails is tried again item by item, so one bad item fails alone.
 */
function batchedQuery<I, R extends object>(sql: string, bind: (items: I[]) => unknown, itemKey: (item: I) => string, rowKey: (row: R) => string) {
  return coalescePerTurn(
    isolatingFailures(async (items: I[]): Promise<(R | null)[]> => {
      const rows = await db().query<R>(sql, { bind: [bind(items)], type: QueryTypes.SELECT });
      const byKey = new Map(rows.map((r) => [rowKey(r), r]));
      return items.map((item) => byKey.get(itemKey(item)) ?? null);
    }),
  );
}

const asJson = (items: unknown[]) => JSON.stringify(items);

/** The coupons asked for in one turn of the event loop, read together. */
const readCoupon = batchedQuery<string, CouponRow>(
  `SELECT ${COUPON_COLUMNS} FROM coupons c JOIN coupon_policies p ON p.id = c.policy_id WHERE c.id = ANY($1)`,
  (ids) => ids,
  (id) => id,
  (row) => row.id,
);

/** A coupon as POST /coupons/validate needs it: its holder, state and discount rule. A plain read. */
export async function readCouponForCheckout(couponId: string): Promise<{ userId: string; status: CouponState; expiresAt: Date; rule: DiscountRule } | null> {
  const c = await readCoupon(couponId);
  return c ? { userId: c.user_id, status: c.status, expiresAt: new Date(c.expires_at), rule: ruleOf(c) } : null;
}

/** A reservations row as to_jsonb gives it, made into a model instance. */
function reservationFromJson(row: Record<string, unknown>): Reservation {
  const at = (v: unknown) => (v === null || v === undefined ? null : new Date(String(v)));
  return Reservation.build(
    {
      id: String(row.id),
      couponId: String(row.coupon_id),
      userId: String(row.user_id),
      orderId: String(row.order_id),
      orderAmount: Number(row.order_amount),
      discountAmount: Number(row.discount_amount),
      status: row.status as ReservationState,
      requestId: String(row.request_id),
      requestFingerprint: (row.request_fingerprint as string | null) ?? null,
      expiresAt: at(row.expires_at) as Date,
      endedAt: at(row.ended_at),
      endReason: (row.end_reason as string | null) ?? null,
      refundedAt: at(row.refunded_at),
      createdAt: at(row.created_at) as Date,
      updatedAt: at(row.updated_at) as Date,
    },
    // raw: the timestamps are the row's own, not values for Sequelize to manage.
    { isNewRecord: false, raw: true },
  );
}

export interface ReserveInput {
  couponId: string;
  userId: string;
  orderId: string;
  orderAmount: number;
  /** The user's Idempotency-Key (reserveRequestId): a rerun, or a replay, finds the reservation it made. */
  requestId: string;
  /** The body's digest (reserveFingerprint): another body under the same request id is refused (I8). */
  fingerprint: string;
  ttlSeconds: number;
  now?: Date;
}

export type ReserveOutcome =
  | { kind: 'reserved'; reservation: Reservation; replay: boolean }
  /** `boundTo`: for IDEMPOTENCY_KEY_REUSED, the reservation the key made. */
  | { kind: 'refused'; reason: Reason; boundTo?: Reservation };

type ReserveRow = { req: string; outcome: string; reservation: Record<string, unknown> | null };

/** The reservations decided in one turn, written by one call of reserve_coupons (models/sql). */
const writeReservation = batchedQuery<{ req: string } & Record<string, unknown>, ReserveRow>(
  'SELECT req, outcome, reservation FROM reserve_coupons($1::jsonb)',
  asJson,
  (item) => item.req,
  (row) => row.req,
);

/** How often a decision is made again when the rows changed between the read and the write. */
const MAX_DECISIONS = 5;

/** The refusals reserve_coupons names by their constraint. */
const REFUSED_BY: Record<string, Reason['code']> = {
  uq_reservations_pending_coupon: 'COUPON_NOT_AVAILABLE',
  uq_reservations_live_order: 'ORDER_ALREADY_HAS_COUPON',
  fk_reservations_order_owner: 'ORDER_NOT_OWNED',
};

/** A reservation its request id made before: the answer for the same body, a refusal for another (I8). */
async function answerEarlier(input: ReserveInput, earlier: Reservation): Promise<ReserveOutcome> {
  const made = { couponId: earlier.couponId, orderId: earlier.orderId, orderAmount: earlier.orderAmount, fingerprint: earlier.requestFingerprint ?? null };
  if (!isSameReserveRequest(made, input)) {
    return { kind: 'refused', reason: reason('IDEMPOTENCY_KEY_REUSED', 'This Idempotency-Key reserved a coupon for another request.'), boundTo: earlier };
  }
  // The earlier run may have died before invalidating.
  await invalidateUserCoupons([earlier.userId]);
  return { kind: 'reserved', reservation: earlier, replay: true };
}

/**
 * A coupon the rules refuse: the answer is still a reservation when this request made it before,
 * or when the coupon is reserved for this very order and amount already (another key, same ask).
 */
async function answerUnusable(input: ReserveInput, coupon: CouponRow | null, refusal: Reason): Promise<ReserveOutcome> {
  const earlier = await Reservation.findOne({ where: { requestId: input.requestId } });
  if (earlier) return answerEarlier(input, earlier);
  if (coupon?.status === 'RESERVED' && coupon.user_id === input.userId && coupon.order_id === input.orderId && coupon.reservation_id) {
    const live = await Reservation.findByPk(coupon.reservation_id);
    if (live?.status === 'PENDING' && live.orderAmount === input.orderAmount) return { kind: 'reserved', reservation: live, replay: true };
  }
  return { kind: 'refused', reason: refusal };
}

/**
 * Moves an ISSUED coupon to RESERVED for an order. The coupon is read, the rules decide
 * (usability, discount), and the write takes effect only if the coupon is still ISSUED, valid and
 * the user's; otherwise it is read and decided again. Postgres refuses whatever happens above it:
 * a second PENDING reservation of the coupon (I4), a second live coupon on the order, and an order
 * that another user reserved on first (I10).
 */
export async function reserveCoupon(input: ReserveInput): Promise<ReserveOutcome> {
  for (let decision = 0; decision < MAX_DECISIONS; decision += 1) {
    const now = input.now ?? new Date();
    const coupon = await readCoupon(input.couponId);
    // Someone else's coupon reads as missing: its existence is not this user's business.
    const verdict: Usability =
      !coupon || coupon.user_id !== input.userId
        ? { usable: false, discountAmount: 0, reason: reason('COUPON_NOT_FOUND') }
        : usability({ status: coupon.status, expiresAt: coupon.expires_at }, ruleOf(coupon), input.orderAmount, now);
    if (!verdict.usable) return answerUnusable(input, coupon, verdict.reason);
    const written = await writeReservation({
      req: input.requestId,
      id: randomUUID(),
      coupon: input.couponId,
      user: input.userId,
      order: input.orderId,
      amount: input.orderAmount,
      discount: verdict.discountAmount,
      fingerprint: input.fingerprint,
      at: now.toISOString(),
      expires: new Date(now.getTime() + input.ttlSeconds * 1000).toISOString(),
    });
    const refusal = REFUSED_BY[written?.outcome ?? ''];
    if (refusal) return { kind: 'refused', reason: reason(refusal) };
    switch (written?.outcome) {
      case 'reserved':
        await invalidateUserCoupons([input.userId]);
        return { kind: 'reserved', reservation: reservationFromJson(written.reservation ?? {}), replay: false };
      case 'duplicate-request':
        return answerEarlier(input, reservationFromJson(written.reservation ?? {}));
      case 'stale':
        continue; // the coupon changed since it was read: decide again on what it is now
      default:
        throw new Error(`reserve_coupons answered ${written?.outcome ?? 'nothing'} for ${input.requestId}`);
    }
  }
  throw new Error(`coupon ${input.couponId} changed under ${MAX_DECISIONS} decisions in a row`);
}

/** What a payment, confirm or cancel asks for. `source` + `eventId` is recorded once (I5). */
export interface CheckoutEvent {
  source: string;
  eventId: string;
  type: PaymentEventType;
  orderId?: string;
  reservationId?: string;
  /** Recorded as the reservation's end_reason when this event ends it. */
  endReason: string;
  /** Set for a user's own request: a reservation of anyone else reads as missing. */
  ownerId?: string;
  /** The user a payment event names: an order's reservations are narrowed to theirs. */
  userId?: string;
  /** The event has waited long enough: what still does not apply is recorded as ignored. */
  noWait?: boolean;
  now?: Date;
}

export type CheckoutOutcome =
  | { kind: 'applied'; action: Exclude<PaymentPlan['action'], 'none' | 'wait'>; reservation: Reservation }
  | { kind: 'ignored'; conflict: boolean; reason: Reason; reservation: Reservation | null }
  | { kind: 'duplicate'; outcome: string; reasonCode: string | null }
  | { kind: 'wait'; why: string };

interface EventState {
  key: string;
  done_outcome: string | null;
  done_reason: string | null;
  pending_for_order: number | null;
  r_id: string | null;
  r_status: ReservationState | null;
  r_refunded: boolean | null;
  r_user: string | null;
  r_order: string | null;
  c_id: string | null;
  c_status: CouponState | null;
  c_expires: Date | null;
  c_reservation: string | null;
  restore_on_refund: boolean | null;
  /** The owner of the event's order; null when nobody reserved on it. */
  o_user: string | null;
}

/**
 * The state the events of one turn are about, in one query: whether each was processed already,
 * the reservation it names (or its order's pending, else newest, one), and that reservation's coupon.
 */
interface EventRef {
  key: string;
  source: string;
  eventId: string;
  reservationId: string | null;
  orderId: string | null;
  userId: string | null;
}

const readEventState = batchedQuery<EventRef, EventState>('SELECT * FROM checkout_event_states($1::jsonb)', asJson, (e) => e.key, (row) => row.key);

type EventWrite = { key: string; outcome: string; reservation: Record<string, unknown> | null };

/** The decisions about the events of one turn, applied by one call of apply_checkout_events. */
const writeEvent = batchedQuery<{ key: string } & Record<string, unknown>, EventWrite>(
  'SELECT key, outcome, reservation FROM apply_checkout_events($1::jsonb)',
  asJson,
  (e) => e.key,
  (row) => row.key,
);

async function earlierOutcome(event: CheckoutEvent): Promise<CheckoutOutcome> {
  const [row] = await db().query<{ outcome: string; reason_code: string | null }>('SELECT outcome, reason_code FROM processed_events WHERE source = $1 AND event_id = $2', {
    bind: [event.source, event.eventId],
    type: QueryTypes.SELECT,
  });
  return { kind: 'duplicate', outcome: row?.outcome ?? 'APPLIED', reasonCode: row?.reason_code ?? null };
}

/**
 * What an event does to the rows as read: the plan, and the reservation it is about (null: none it
 * may touch). `orderTaken`: Postgres refused a late confirm because the order holds another coupon.
 */
function decideEvent(event: CheckoutEvent, state: EventState | null, now: Date, orderTaken: boolean): { plan: PaymentPlan; found: EventState | null } {
  // Someone who does not own the order touches nothing of it (I10).
  const foreign = foreignPayer(event.userId, state?.o_user ?? null);
  if (foreign) return { plan: foreign, found: null };
  if ((state?.pending_for_order ?? 0) > 1) {
    // Rows from before one coupon per order: never guess which of them a payment paid for.
    const message = `Order ${event.orderId} has ${state?.pending_for_order} PENDING reservations; the event must name its reservationId.`;
    return { plan: { action: 'none', conflict: true, reason: reason('RESERVATION_NOT_FOUND', message) }, found: null };
  }
  const found = state?.r_id && state.c_id && !(event.ownerId !== undefined && state.r_user !== event.ownerId) ? state : null;
  if (!found) return { plan: { action: 'none', conflict: false, reason: reason('RESERVATION_NOT_FOUND', 'No reservation matches this event.') }, found };
  if (event.orderId !== undefined && found.r_order !== event.orderId) {
    return { plan: { action: 'none', conflict: false, reason: reason('RESERVATION_NOT_FOUND', `Reservation ${found.r_id} is for another order.`) }, found };
  }
  const plan = planPayment(
    event.type,
    { id: found.r_id as string, status: found.r_status as ReservationState, refundedAt: found.r_refunded ? now : null },
    { status: found.c_status as CouponState, expiresAt: new Date(found.c_expires as Date), reservationId: found.c_reservation },
    { restoreOnRefund: Boolean(found.restore_on_refund), now },
  );
  if (orderTaken && plan.action === 'confirm-late') {
    return { plan: { action: 'none', conflict: true, reason: reason('ORDER_ALREADY_HAS_COUPON', 'The payment completed after its reservation ended; the order holds another coupon now.') }, found };
  }
  return { plan, found };
}

/**
 * Applies one payment event (or a confirm or cancel) exactly once in effect: its id is recorded in
 * processed_events by the same statement that makes the change, so a redelivery finds the row and
 * stops. The rules decide on the rows as read; the write takes effect only if they are unchanged.
 * Conflicts (a late payment for a coupon now held by another order) are recorded, never applied.
 */
export async function applyCheckoutEvent(event: CheckoutEvent): Promise<CheckoutOutcome> {
  const key = `${event.source}/${event.eventId}`;
  let orderTaken = false;
  for (let decision = 0; decision < MAX_DECISIONS; decision += 1) {
    const now = event.now ?? new Date();
    const state = await readEventState({
      key,
      source: event.source,
      eventId: event.eventId,
      reservationId: event.reservationId ?? null,
      orderId: event.orderId ?? null,
      userId: event.userId ?? null,
    });
    if (state?.done_outcome) {
      // Applied before: that run may have died before invalidating.
      if (state.done_outcome === 'APPLIED' && state.r_user) await invalidateUserCoupons([state.r_user]);
      return { kind: 'duplicate', outcome: state.done_outcome, reasonCode: state.done_reason };
    }

    const { plan: decided, found } = decideEvent(event, state, now, orderTaken);
    let plan = decided;
    if (plan.action === 'wait') {
      if (!event.noWait) return { kind: 'wait', why: plan.why };
      plan = { action: 'none', conflict: false, reason: reason('RESERVATION_NOT_PENDING', `Gave up waiting: ${plan.why}.`) };
    }

    const written = await writeEvent({
      key,
      source: event.source,
      eventId: event.eventId,
      type: event.type,
      orderId: found?.r_order ?? event.orderId ?? null,
      reservationId: found?.r_id ?? null,
      couponId: found?.c_id ?? null,
      outcome: plan.action === 'none' ? (plan.conflict ? 'CONFLICT' : 'IGNORED') : 'APPLIED',
      reasonCode: plan.action === 'none' ? plan.reason.code : null,
      detail: plan.action === 'none' ? plan.reason.message : null,
      action: plan.action,
      endReason: plan.action === 'confirm-late' ? `${event.endReason}_LATE` : event.endReason,
      at: now.toISOString(),
      expect: found && { reservation: found.r_status, refunded: Boolean(found.r_refunded), coupon: found.c_status, couponReservation: found.c_reservation },
    });
    if (written?.outcome === 'stale') continue;
    if (written?.outcome === 'uq_reservations_live_order') {
      orderTaken = true; // decide again: the late payment is now a conflict
      continue;
    }
    if (written?.outcome === 'duplicate') return earlierOutcome(event);
    if (written?.outcome !== 'done') throw new Error(`apply_checkout_events answered ${written?.outcome ?? 'nothing'} for ${key}`);
    const reservation = written.reservation ? reservationFromJson(written.reservation) : null;
    if (plan.action === 'none') return { kind: 'ignored', conflict: plan.conflict, reason: plan.reason, reservation };
    await invalidateUserCoupons([(reservation as Reservation).userId]);
    return { kind: 'applied', action: plan.action, reservation: reservation as Reservation };
  }
  throw new Error(`the reservation of ${key} changed under ${MAX_DECISIONS} decisions in a row`);
}

export interface SweepReport {
  expired: number;
  released: number;
}

/**
 * Ends up to `limit` PENDING reservations whose time is up and gives their coupons back, in one
 * statement. Coupons are locked first (the lock order above) and those another transaction holds
 * are skipped for the next pass, so sweepers on many workers share the backlog without waiting.
 */
export async function expireDueReservations(limit: number): Promise<SweepReport> {
  const [row] = await db().query<{ expired: string; released: string; users: string[] | null }>(
    `WITH due AS (
       -- Coupons first (the lock order); SKIP LOCKED before the LIMIT, so concurrent sweepers
       -- take different reservations instead of the same hundred.
       SELECT r.id, r.coupon_id FROM reservations r JOIN coupons c ON c.id = r.coupon_id
        WHERE r.status = 'PENDING' AND r.expires_at <= now()
        ORDER BY r.expires_at LIMIT $1
          FOR UPDATE OF c SKIP LOCKED
     ), expired AS (
       UPDATE reservations r SET status = 'EXPIRED', ended_at = now(), end_reason = 'TIMEOUT'
         FROM due
        WHERE r.id = due.id AND r.status = 'PENDING'
        RETURNING r.id, r.coupon_id
     ), released AS (
       UPDATE coupons c SET status = 'ISSUED', reserved_at = NULL, order_id = NULL, reservation_id = NULL
         FROM expired
        WHERE c.id = expired.coupon_id AND c.status = 'RESERVED' AND c.reservation_id = expired.id
        RETURNING c.user_id
     )
     SELECT (SELECT count(*) FROM expired) AS expired, (SELECT count(*) FROM released) AS released,
            (SELECT array_agg(DISTINCT user_id) FROM released) AS users`,
    { bind: [limit], type: QueryTypes.SELECT },
  );
  // Called on every sweep, even an empty one: it also retries the invalidations a failed one owes.
  await invalidateUserCoupons(row?.users ?? []);
  return { expired: Number(row?.expired ?? 0), released: Number(row?.released ?? 0) };
}
