// Every migration, in order. A new one is appended here; applied ones are never edited.
import { createCouponPolicies } from './0001-coupon-policies';
import { createCoupons } from './0002-coupons';
import { guardStatusAndLimits } from './0003-guard-status-and-limits';
import { insertIssuedCoupons } from './0004-insert-issued-coupons';
import { createReservations } from './0005-reservations';
import { checkoutBatches } from './0006-checkout-batches';
import { checkoutEventStates } from './0007-checkout-event-states';
import { checkoutReviewFixes } from './0008-checkout-review-fixes';
import { pendingByOrder } from './0009-pending-by-order';
import { leanerCheckoutWrites } from './0010-leaner-checkout-writes';
import { hotCouponUpdates } from './0011-hot-coupon-updates';
import type { Migration } from './types';

export const migrations: Migration[] = [createCouponPolicies, createCoupons, guardStatusAndLimits, insertIssuedCoupons, createReservations, checkoutBatches, checkoutEventStates, checkoutReviewFixes, pendingByOrder, leanerCheckoutWrites, hotCouponUpdates];
