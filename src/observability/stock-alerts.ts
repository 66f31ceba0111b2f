// POLICY_90_PERCENT and POLICY_SOLD_OUT alerts from what the admission step already answers: the
// policy's quantity and its admissions counting this one (admit.lua). Admissions count up one at a
// time in Redis, so exactly one request across all workers sees each mark; a SOLD_OUT refusal also
// says so, for a policy that sold out before this process started or while the crossing's worker died.
import { OnceSet, raiseAlert } from '../core/alerts';
import type { Logger } from '../core/logger';

// Per policy and quantity: raising the quantity arms the alerts again.
const raised = new OnceSet();

/** The admission count at which a policy of `total` is 90 % gone; null when that is the last unit. */
export function ninetyPercentMark(total: number): number | null {
  const mark = Math.ceil(total * 0.9);
  return mark < total ? mark : null;
}

export function noteAdmitted(log: Logger, policyId: string, total: number | null, admitted: number | null): void {
  if (total === null || admitted === null) return;
  if (admitted === total) soldOut(log, policyId, total);
  else if (admitted === ninetyPercentMark(total) && raised.first(`90:${policyId}:${total}`)) {
    raiseAlert(log, 'POLICY_90_PERCENT', { policyId, total, admitted }, 'warn', 'policy 90 % issued');
  }
}

export function noteSoldOutRefusal(log: Logger, policyId: string, total: number | null | undefined): void {
  soldOut(log, policyId, total ?? null);
}

function soldOut(log: Logger, policyId: string, total: number | null): void {
  if (raised.first(`out:${policyId}:${total ?? ''}`)) raiseAlert(log, 'POLICY_SOLD_OUT', { policyId, total }, 'warn', 'policy sold out');
}
