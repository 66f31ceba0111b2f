// Every migration, in order. A new one is appended here; applied ones are never edited.
import { createCouponPolicies } from './0001-coupon-policies';
import { createCoupons } from './0002-coupons';
import { guardStatusAndLimits } from './0003-guard-status-and-limits';
import { insertIssuedCoupons } from './0004-insert-issued-coupons';
import { createReservations } from './0005-reservations';
import { checkoutFunctions } from './0006-checkout-functions';
import { createCouponCodes } from './0007-coupon-codes';
import { createCodeBatches } from './0008-code-batches';
import { eventStateProbes } from './0009-event-state-probes';
import { orderOwners } from './0010-order-owners';
import { policyCounters } from './0011-policy-counters';
import { codeDelivery } from './0012-code-delivery';
import { eventInbox } from './0013-event-inbox';
import { inboxWithoutOrderIndex } from './0014-inbox-without-order-index';
import type { Migration } from './types';

export const migrations: Migration[] = [
  createCouponPolicies,
  createCoupons,
  guardStatusAndLimits,
  insertIssuedCoupons,
  createReservations,
  checkoutFunctions,
  createCouponCodes,
  createCodeBatches,
  eventStateProbes,
  orderOwners,
  policyCounters,
  codeDelivery,
  eventInbox,
  inboxWithoutOrderIndex,
];
