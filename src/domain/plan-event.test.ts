import fc from 'fast-check';
import { PAYMENT_EVENT_TYPES, type PaymentEventType } from './checkout-rules';
import { planEvent, type CheckoutEvent, type EventPlan, type EventState, type EventWrite } from './plan-event';

const now = new Date('2026-01-01T00:00:00Z');
const valid = new Date('2026-02-01T00:00:00Z');

/** alice's PENDING reservation r1 of coupon c1 on her order o1, as checkout_event_states reads it. */
const pending = (extra: Partial<EventState> = {}): EventState => ({
  done: null,
  pendingForOrder: 1,
  orderOwner: 'alice',
  reservation: { id: 'r1', status: 'PENDING', refunded: false, userId: 'alice', orderId: 'o1' },
  coupon: { id: 'c1', status: 'RESERVED', expiresAt: valid, reservationId: 'r1', restoreOnRefund: true },
  orderTaken: false,
  ...extra,
});
/** The same reservation after it timed out: the coupon is free again. */
const expired = (extra: Partial<EventState> = {}): EventState =>
  pending({
    pendingForOrder: 0,
    reservation: { id: 'r1', status: 'EXPIRED', refunded: false, userId: 'alice', orderId: 'o1' },
    coupon: { id: 'c1', status: 'ISSUED', expiresAt: valid, reservationId: null, restoreOnRefund: true },
    ...extra,
  });
const payment = (type: PaymentEventType, extra: Partial<CheckoutEvent> = {}): CheckoutEvent => ({
  source: 'payments',
  eventId: 'e1',
  type,
  orderId: 'o1',
  endReason: type,
  ...extra,
});

function writeOf(plan: EventPlan): EventWrite {
  if (plan.kind !== 'write') throw new Error(`expected a write, got ${plan.kind}`);
  return plan.write;
}

describe('planEvent', () => {
  it('confirms a pending reservation on COMPLETED, expecting the rows as read', () => {
    const plan = planEvent(pending(), payment('PAYMENT_COMPLETED'), now);
    expect(plan).toEqual({
      kind: 'write',
      payment: { action: 'confirm' },
      write: {
        key: 'payments/e1',
        source: 'payments',
        eventId: 'e1',
        type: 'PAYMENT_COMPLETED',
        orderId: 'o1',
        reservationId: 'r1',
        couponId: 'c1',
        outcome: 'APPLIED',
        reasonCode: null,
        detail: null,
        action: 'confirm',
        endReason: 'PAYMENT_COMPLETED',
        at: now.toISOString(),
        expect: { reservation: 'PENDING', refunded: false, coupon: 'RESERVED', couponReservation: 'r1' },
      },
    });
  });

  it('answers an event processed before as a duplicate, writing nothing, and drops the user list only after an applied one', () => {
    expect(planEvent(pending({ done: { outcome: 'APPLIED', reasonCode: null } }), payment('PAYMENT_COMPLETED'), now)).toEqual({
      kind: 'duplicate',
      outcome: 'APPLIED',
      reasonCode: null,
      invalidate: 'alice',
    });
    expect(
      planEvent(pending({ done: { outcome: 'IGNORED', reasonCode: 'RESERVATION_NOT_PENDING' } }), payment('PAYMENT_FAILED'), now),
    ).toEqual({
      kind: 'duplicate',
      outcome: 'IGNORED',
      reasonCode: 'RESERVATION_NOT_PENDING',
      invalidate: null,
    });
    expect(
      planEvent(
        pending({ done: { outcome: 'APPLIED', reasonCode: null }, reservation: null, coupon: null }),
        payment('PAYMENT_COMPLETED'),
        now,
      ),
    ).toMatchObject({
      kind: 'duplicate',
      invalidate: null,
    });
  });

  it("records a payment naming someone other than the order's owner as a conflict that touches nothing (I10)", () => {
    const write = writeOf(planEvent(pending(), payment('PAYMENT_COMPLETED', { userId: 'mallory' }), now));
    expect(write).toMatchObject({
      outcome: 'CONFLICT',
      reasonCode: 'ORDER_NOT_OWNED',
      action: 'none',
      orderId: 'o1',
      reservationId: null,
      couponId: null,
      expect: null,
    });
  });

  it('never guesses among several PENDING reservations of an order', () => {
    const write = writeOf(planEvent(pending({ pendingForOrder: 2 }), payment('PAYMENT_COMPLETED'), now));
    expect(write).toMatchObject({
      outcome: 'CONFLICT',
      reasonCode: 'RESERVATION_NOT_FOUND',
      action: 'none',
      reservationId: null,
      couponId: null,
      expect: null,
    });
    expect(write.detail).toContain('2 PENDING reservations');
  });

  it("ignores an event that matches no reservation, and reads someone else's reservation as none", () => {
    expect(writeOf(planEvent(pending({ reservation: null, coupon: null }), payment('PAYMENT_COMPLETED'), now))).toMatchObject({
      outcome: 'IGNORED',
      reasonCode: 'RESERVATION_NOT_FOUND',
      reservationId: null,
    });
    const cancel: CheckoutEvent = {
      source: 'api.cancel',
      eventId: 'j1',
      type: 'PAYMENT_CANCELLED',
      reservationId: 'r1',
      ownerId: 'bob',
      endReason: 'CANCELLED_BY_USER',
    };
    expect(writeOf(planEvent(pending({ pendingForOrder: 0, orderOwner: null }), cancel, now))).toMatchObject({
      outcome: 'IGNORED',
      reasonCode: 'RESERVATION_NOT_FOUND',
      reservationId: null,
      couponId: null,
      orderId: null,
    });
  });

  it('ignores an event whose reservation is for another order, on the rows as read', () => {
    const write = writeOf(planEvent(pending(), payment('PAYMENT_COMPLETED', { orderId: 'o2', reservationId: 'r1' }), now));
    expect(write).toMatchObject({
      outcome: 'IGNORED',
      reasonCode: 'RESERVATION_NOT_FOUND',
      action: 'none',
      orderId: 'o1',
      reservationId: 'r1',
      couponId: 'c1',
    });
    expect(write.detail).toBe('Reservation r1 is for another order.');
    expect(write.expect).toEqual({ reservation: 'PENDING', refunded: false, coupon: 'RESERVED', couponReservation: 'r1' });
  });

  it('confirms a late payment with a _LATE end reason, unless Postgres said the order holds another coupon now', () => {
    expect(writeOf(planEvent(expired(), payment('PAYMENT_COMPLETED'), now))).toMatchObject({
      outcome: 'APPLIED',
      action: 'confirm-late',
      endReason: 'PAYMENT_COMPLETED_LATE',
    });
    const taken = planEvent(expired({ orderTaken: true }), payment('PAYMENT_COMPLETED'), now);
    expect(taken).toMatchObject({ kind: 'write', payment: { action: 'none', conflict: true } });
    expect(writeOf(taken)).toMatchObject({
      outcome: 'CONFLICT',
      reasonCode: 'ORDER_ALREADY_HAS_COUPON',
      action: 'none',
      endReason: 'PAYMENT_COMPLETED',
      reservationId: 'r1',
    });
  });

  it('makes a refund ahead of its payment wait, and records it as ignored once it has waited long enough', () => {
    expect(planEvent(pending(), payment('PAYMENT_REFUNDED'), now)).toMatchObject({ kind: 'wait' });
    expect(planEvent(expired(), payment('PAYMENT_REFUNDED'), now)).toMatchObject({ kind: 'wait' });
    const gaveUp = writeOf(planEvent(pending(), payment('PAYMENT_REFUNDED', { noWait: true }), now));
    expect(gaveUp).toMatchObject({ outcome: 'IGNORED', reasonCode: 'RESERVATION_NOT_PENDING', action: 'none', reservationId: 'r1' });
    expect(gaveUp.detail).toMatch(/^Gave up waiting: a refund arrived while the reservation is PENDING/);
  });

  it('restores a refunded coupon through its reservation', () => {
    const confirmed = pending({
      pendingForOrder: 0,
      reservation: { id: 'r1', status: 'CONFIRMED', refunded: false, userId: 'alice', orderId: 'o1' },
      coupon: { id: 'c1', status: 'USED', expiresAt: valid, reservationId: 'r1', restoreOnRefund: true },
    });
    expect(writeOf(planEvent(confirmed, payment('PAYMENT_REFUNDED'), now))).toMatchObject({
      outcome: 'APPLIED',
      action: 'restore',
      expect: { reservation: 'CONFIRMED', refunded: false, coupon: 'USED', couponReservation: 'r1' },
    });
  });
});

// --- properties -------------------------------------------------------------------------------

// Mostly alice and her order o1, so that many events match their reservation; bob and o2 now and then.
const users = fc.oneof({ arbitrary: fc.constant('alice'), weight: 4 }, { arbitrary: fc.constant('bob'), weight: 1 });
const orders = fc.oneof({ arbitrary: fc.constant('o1'), weight: 4 }, { arbitrary: fc.constant('o2'), weight: 1 });
const maybe = <T>(arb: fc.Arbitrary<T>) => fc.option(arb, { nil: undefined });

const events: fc.Arbitrary<CheckoutEvent> = fc.record({
  source: fc.constantFrom('payments', 'api.cancel', 'api.confirm'),
  eventId: fc.constantFrom('e1', 'e2'),
  type: fc.constantFrom(...PAYMENT_EVENT_TYPES),
  orderId: maybe(orders),
  reservationId: maybe(fc.constantFrom('r1', 'r2')),
  endReason: fc.constantFrom('PAYMENT_COMPLETED', 'CANCELLED_BY_USER'),
  ownerId: maybe(users),
  userId: maybe(users),
  noWait: maybe(fc.boolean()),
});

/** The coupon as its reservation's state leaves it (most reads), or as anything else left it. */
const couponsFor = (reservation: NonNullable<EventState['reservation']>): fc.Arbitrary<NonNullable<EventState['coupon']>> => {
  const held = {
    PENDING: ['RESERVED', reservation.id],
    CONFIRMED: [reservation.refunded ? 'ISSUED' : 'USED', reservation.refunded ? null : reservation.id],
  } as const;
  const [heldStatus, heldBy] = held[reservation.status as keyof typeof held] ?? (['ISSUED', null] as const);
  return fc.record({
    id: fc.constant('c1'),
    status: fc.oneof(
      { arbitrary: fc.constant(heldStatus), weight: 2 },
      { arbitrary: fc.constantFrom('ISSUED' as const, 'RESERVED' as const, 'USED' as const, 'EXPIRED' as const), weight: 1 },
    ),
    expiresAt: fc.oneof(
      { arbitrary: fc.constant(valid), weight: 3 },
      { arbitrary: fc.constantFrom(new Date(now.getTime() - 1), now), weight: 1 },
    ),
    reservationId: fc.oneof({ arbitrary: fc.constant(heldBy), weight: 2 }, { arbitrary: fc.constantFrom(null, 'r1', 'r2'), weight: 1 }),
    restoreOnRefund: fc.boolean(),
  });
};

/** Any state the read could answer for `event`: the reservation it names, when it names one, or none. */
const statesFor = (event: CheckoutEvent): fc.Arbitrary<EventState> =>
  fc
    .record({
      done: fc.oneof(
        { arbitrary: fc.constant(null), weight: 3 },
        {
          arbitrary: fc.record({
            outcome: fc.constantFrom('APPLIED', 'IGNORED', 'CONFLICT'),
            reasonCode: fc.option(fc.constant('RESERVATION_NOT_PENDING'), { nil: null }),
          }),
          weight: 1,
        },
      ),
      pendingForOrder:
        event.reservationId === undefined
          ? fc.oneof({ arbitrary: fc.integer({ min: 0, max: 1 }), weight: 3 }, { arbitrary: fc.integer({ min: 2, max: 3 }), weight: 1 })
          : fc.constant(0),
      orderOwner: fc.option(users, { nil: null }),
      // The coupon is the reservation's: no reservation, no coupon.
      found: fc.option(
        fc
          .record({
            id: event.reservationId === undefined ? fc.constantFrom('r1', 'r2') : fc.constant(event.reservationId),
            status: fc.constantFrom('PENDING' as const, 'CONFIRMED' as const, 'CANCELLED' as const, 'EXPIRED' as const),
            refunded: fc.oneof({ arbitrary: fc.constant(false), weight: 3 }, { arbitrary: fc.constant(true), weight: 1 }),
            userId: users,
            orderId: orders,
          })
          .chain((reservation) => couponsFor(reservation).map((coupon) => ({ reservation, coupon }))),
        { nil: null },
      ),
      orderTaken: fc.boolean(),
    })
    .map(({ found, ...rest }) => ({ ...rest, reservation: found?.reservation ?? null, coupon: found?.coupon ?? null }));

const cases = events.chain((event) => statesFor(event).map((state) => ({ event, state })));
/** Refunds not processed before. */
const refunds = cases.map(({ event, state }) => ({
  event: { ...event, type: 'PAYMENT_REFUNDED' as const },
  state: { ...state, done: null },
}));

describe('planEvent (properties)', () => {
  it('never changes a reservation, or its coupon, that does not match the event (I10)', () => {
    const seen = new Set<string>();
    fc.assert(
      fc.property(cases, ({ event, state }) => {
        const plan = planEvent(state, event, now);
        if (plan.kind !== 'write' || plan.write.action === 'none') return;
        seen.add(plan.write.action);
        const { reservation, coupon } = state;
        expect(state.done).toBeNull();
        expect(reservation && coupon).toBeTruthy();
        expect(plan.write.reservationId).toBe(reservation?.id);
        expect(plan.write.couponId).toBe(coupon?.id);
        if (event.ownerId !== undefined) expect(reservation?.userId).toBe(event.ownerId);
        if (event.orderId !== undefined) expect(reservation?.orderId).toBe(event.orderId);
        if (event.userId !== undefined && state.orderOwner !== null) expect(event.userId).toBe(state.orderOwner);
        expect(state.pendingForOrder).toBeLessThanOrEqual(1);
        if (plan.write.action === 'confirm' || plan.write.action === 'confirm-late') {
          // Marks the coupon USED: only a payment, and never a late one of an order taken since.
          expect(event.type).toBe('PAYMENT_COMPLETED');
          if (plan.write.action === 'confirm-late') expect(state.orderTaken).toBe(false);
        }
      }),
      // Enough runs to reach every change a plan can make, a refund's restore being the rarest (~1 in 400).
      { numRuns: 10_000 },
    );
    expect([...seen].sort()).toEqual(['confirm', 'confirm-late', 'release', 'restore']);
  });

  it('plans nothing the second time the same event is applied (I5)', () => {
    fc.assert(
      fc.property(cases, ({ event, state }) => {
        const first = planEvent(state, event, now);
        if (first.kind !== 'write') return;
        // Whatever the write did to the rows, the event is recorded with it.
        const again = planEvent({ ...state, done: { outcome: first.write.outcome, reasonCode: first.write.reasonCode } }, event, now);
        expect(again).toEqual({
          kind: 'duplicate',
          outcome: first.write.outcome,
          reasonCode: first.write.reasonCode,
          invalidate: first.write.outcome === 'APPLIED' ? state.reservation?.userId : null,
        });
      }),
      { numRuns: 2000 },
    );
  });

  it("records a foreign payer's event as a conflict that names no reservation (I10)", () => {
    fc.assert(
      fc.property(cases, ({ event, state }) => {
        fc.pre(state.done === null && event.userId !== undefined && state.orderOwner !== null && event.userId !== state.orderOwner);
        const write = writeOf(planEvent(state, event, now));
        expect(write).toMatchObject({
          outcome: 'CONFLICT',
          reasonCode: 'ORDER_NOT_OWNED',
          action: 'none',
          reservationId: null,
          couponId: null,
          expect: null,
        });
      }),
    );
  });

  it('makes REFUNDED before PAYMENT_COMPLETED wait, or, once it has waited, change nothing', () => {
    fc.assert(
      fc.property(refunds, ({ event, state }) => {
        const { reservation } = state;
        fc.pre(reservation !== null && reservation.status !== 'CONFIRMED');
        const plan = planEvent(state, event, now);
        expect(plan.kind === 'wait' || (plan.kind === 'write' && plan.write.action === 'none')).toBe(true);
        // A refund of the reservation the event is about waits, unless it has waited long enough.
        const matches =
          state.pendingForOrder <= 1 &&
          !(event.userId !== undefined && state.orderOwner !== null && event.userId !== state.orderOwner) &&
          (event.ownerId === undefined || event.ownerId === reservation.userId) &&
          (event.orderId === undefined || event.orderId === reservation.orderId);
        if (matches) {
          if (event.noWait)
            expect(writeOf(plan)).toMatchObject({
              outcome: 'IGNORED',
              reasonCode: 'RESERVATION_NOT_PENDING',
              reservationId: reservation.id,
            });
          else expect(plan.kind).toBe('wait');
        }
      }),
      { numRuns: 2000 },
    );
  });

  it('writes only on the rows as read: a write that names a coupon expects them as they were (compare-and-set)', () => {
    fc.assert(
      fc.property(cases, ({ event, state }) => {
        const plan = planEvent(state, event, now);
        if (plan.kind !== 'write') return;
        const { write } = plan;
        expect(write.couponId === null).toBe(write.reservationId === null);
        expect(write.expect === null).toBe(write.reservationId === null);
        if (write.expect) {
          expect(write.expect).toEqual({
            reservation: state.reservation?.status,
            refunded: state.reservation?.refunded,
            coupon: state.coupon?.status,
            couponReservation: state.coupon?.reservationId,
          });
        }
        // The outcome says what the plan does, and why when it does nothing.
        expect(write.outcome === 'APPLIED').toBe(write.action !== 'none');
        expect(write.reasonCode === null).toBe(write.outcome === 'APPLIED');
        expect(write.outcome === 'CONFLICT').toBe(plan.payment.action === 'none' && plan.payment.conflict);
        expect(write.at).toBe(now.toISOString());
        expect(write.key).toBe(`${event.source}/${event.eventId}`);
      }),
      { numRuns: 2000 },
    );
  });

  it('changes only a late confirm when Postgres said the order is taken', () => {
    let late = 0;
    fc.assert(
      fc.property(cases, ({ event, state }) => {
        const free = planEvent({ ...state, orderTaken: false }, event, now);
        const taken = planEvent({ ...state, orderTaken: true }, event, now);
        if (free.kind === 'write' && free.payment.action === 'confirm-late') {
          late += 1;
          expect(writeOf(taken)).toMatchObject({
            outcome: 'CONFLICT',
            reasonCode: 'ORDER_ALREADY_HAS_COUPON',
            reservationId: free.write.reservationId,
          });
        } else {
          expect(taken).toEqual(free);
        }
      }),
      { numRuns: 2000 },
    );
    expect(late).toBeGreaterThan(0);
  });

  /**
   * One reservation's rows, and the events recorded, changed the way apply_checkout_events changes
   * them. Deliveries run one at a time (as a compare-and-set leaves them), an event may be
   * delivered twice, and one that waits is delivered again after the others (as BullMQ retries it).
   */
  type World = { state: EventState; recorded: Map<string, string>; applied: string[] };

  function run(deliveries: CheckoutEvent[], start: EventState): World {
    const world: World = { state: start, recorded: new Map(), applied: [] };
    const queue = deliveries.map((event) => ({ event, waited: 0 }));
    for (let next = queue.shift(); next; next = queue.shift()) {
      const { event } = next;
      const key = `${event.source}/${event.eventId}`;
      const doneOutcome = world.recorded.get(key);
      const s = world.state;
      const read: EventState = {
        ...s,
        done: doneOutcome === undefined ? null : { outcome: doneOutcome, reasonCode: null },
        // The order's PENDING reservations, counted when the event names none.
        pendingForOrder: event.reservationId === undefined && s.reservation?.status === 'PENDING' ? 1 : 0,
      };
      const plan = planEvent(read, { ...event, noWait: next.waited >= 3 }, now);
      if (plan.kind === 'duplicate') continue;
      if (plan.kind === 'wait') {
        queue.push({ event, waited: next.waited + 1 });
        continue;
      }
      const { write } = plan;
      world.recorded.set(key, write.outcome);
      if (write.action === 'none') continue;
      // Nothing ran in between: the rows are as the plan expects them.
      expect(write.expect).toEqual({
        reservation: s.reservation?.status,
        refunded: s.reservation?.refunded,
        coupon: s.coupon?.status,
        couponReservation: s.coupon?.reservationId,
      });
      const r = s.reservation as NonNullable<EventState['reservation']>;
      const c = s.coupon as NonNullable<EventState['coupon']>;
      world.applied.push(write.action);
      switch (write.action) {
        case 'confirm':
        case 'confirm-late':
          world.state = { ...s, reservation: { ...r, status: 'CONFIRMED' }, coupon: { ...c, status: 'USED', reservationId: r.id } };
          break;
        case 'release':
          world.state = { ...s, reservation: { ...r, status: 'CANCELLED' }, coupon: { ...c, status: 'ISSUED', reservationId: null } };
          break;
        case 'restore':
          world.state = { ...s, reservation: { ...r, refunded: true }, coupon: { ...c, status: 'ISSUED', reservationId: null } };
          break;
      }
    }
    return world;
  }

  const deliveriesOf = (types: PaymentEventType[]) =>
    fc
      .tuple(
        fc.constant(types.map((type, i) => payment(type, { eventId: `e${i}`, userId: 'alice' }))),
        fc.array(fc.nat({ max: types.length - 1 }), { maxLength: types.length }),
      )
      // Every event once, some twice (redeliveries), in any order.
      .chain(([once, again]) =>
        fc.shuffledSubarray([...once, ...again.map((i) => once[i] as CheckoutEvent)], { minLength: once.length + again.length }),
      );

  it('takes effect once per event and ends the same whatever order COMPLETED, FAILED and CANCELLED arrive in, redelivered or not (I4, I5)', () => {
    const kinds = fc.uniqueArray(fc.constantFrom<PaymentEventType>('PAYMENT_COMPLETED', 'PAYMENT_FAILED', 'PAYMENT_CANCELLED'), {
      minLength: 1,
      maxLength: 3,
    });
    fc.assert(
      fc.property(
        kinds.chain((types) => deliveriesOf(types).map((deliveries) => ({ types, deliveries }))),
        ({ types, deliveries }) => {
          const world = run(deliveries, pending());
          const paid = types.includes('PAYMENT_COMPLETED');
          expect(world.state.coupon?.status).toBe(paid ? 'USED' : 'ISSUED');
          expect(world.state.reservation?.status).toBe(paid ? 'CONFIRMED' : 'CANCELLED');
          // Every event recorded, and at most one confirm and one release ever applied.
          expect(world.recorded.size).toBe(types.length);
          expect(world.applied.filter((a) => a === 'confirm' || a === 'confirm-late').length).toBe(paid ? 1 : 0);
          expect(world.applied.filter((a) => a === 'release').length).toBeLessThanOrEqual(1);
        },
      ),
      { numRuns: 500 },
    );
  });

  it('applies a refund that overtook its payment once the payment lands (REFUNDED before PAYMENT_COMPLETED waits)', () => {
    const kinds = fc.constantFrom<PaymentEventType[]>(
      ['PAYMENT_COMPLETED', 'PAYMENT_REFUNDED'],
      ['PAYMENT_COMPLETED', 'PAYMENT_FAILED', 'PAYMENT_REFUNDED'],
    );
    fc.assert(
      fc.property(
        kinds.chain((types) => deliveriesOf(types)),
        (deliveries) => {
          const world = run(deliveries, pending());
          expect(world.state.reservation).toMatchObject({ status: 'CONFIRMED', refunded: true });
          expect(world.state.coupon).toMatchObject({ status: 'ISSUED', reservationId: null });
          expect(world.applied.filter((a) => a === 'restore')).toHaveLength(1);
        },
      ),
      { numRuns: 500 },
    );
  });
});
