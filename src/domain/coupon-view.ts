// A coupon as the API shows it: the result of an issue request, and each entry of a user's coupon
// list. The schema is the contract of that answer (the OpenAPI document's Coupon) and reads it back
// where it was stored as a job result or an outcome record (src/queues/results.ts, src/queues/outcomes.ts).
import { z } from 'zod';

export const couponViewSchema = z.object({
  id: z.string(),
  policyId: z.string(),
  userId: z.string(),
  status: z.enum(['AVAILABLE', 'RESERVED', 'USED', 'EXPIRED']),
  issuedAt: z.string(),
  expiresAt: z.string(),
  reservedAt: z.string().optional(),
  usedAt: z.string().optional(),
  orderId: z.string().optional(),
  reservationId: z.string().optional(),
});
export type CouponView = z.infer<typeof couponViewSchema>;
