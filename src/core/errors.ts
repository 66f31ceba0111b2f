// The one error type and the catalogue of codes shared by HTTP answers and job results.

export const errorCatalogue = {
  VALIDATION_FAILED: { status: 400, message: 'The request is not valid.' },
  UNAUTHENTICATED: { status: 401, message: 'A valid bearer token is required.' },
  FORBIDDEN: { status: 403, message: 'You may not do this.' },
  NOT_FOUND: { status: 404, message: 'Not found.' },
  METHOD_NOT_ALLOWED: { status: 405, message: 'Method not allowed.' },
  IDEMPOTENCY_KEY_REUSED: { status: 409, message: 'This Idempotency-Key was used with another request.' },
  CONFLICT: { status: 409, message: 'The change conflicts with the current state.' },
  PAYLOAD_TOO_LARGE: { status: 413, message: 'The request body is too large.' },
  UNSUPPORTED_MEDIA_TYPE: { status: 415, message: 'Send application/json.' },
  RATE_LIMITED: { status: 429, message: 'Too many requests.' },
  INTERNAL: { status: 500, message: 'Something went wrong on our side.' },
  UNAVAILABLE: { status: 503, message: 'The service cannot take this request right now; retry later.' },
  // Business refusals: the outcome of a job, never an HTTP error of the ingress.
  POLICY_NOT_FOUND: { status: 404, message: 'No such coupon policy.' },
  POLICY_NOT_ACTIVE: { status: 409, message: 'The coupon policy is not active.' },
  OUTSIDE_ISSUE_WINDOW: { status: 409, message: 'The coupon policy is not issuing at this time.' },
  SOLD_OUT: { status: 409, message: 'All coupons of this policy have been issued.' },
  USER_LIMIT_REACHED: { status: 409, message: 'You already hold the most coupons of this policy allowed.' },
  METHOD_NOT_SUPPORTED: { status: 409, message: 'This policy is not issued this way.' },
  CODE_NOT_FOUND: { status: 404, message: 'No such coupon code.' },
  CODE_ALREADY_USED: { status: 409, message: 'This coupon code was already used.' },
  COUPON_NOT_FOUND: { status: 404, message: 'No such coupon.' },
  COUPON_NOT_AVAILABLE: { status: 409, message: 'The coupon cannot be used now.' },
  COUPON_EXPIRED: { status: 409, message: 'The coupon has expired.' },
  ORDER_AMOUNT_TOO_LOW: { status: 409, message: 'The order amount is below the coupon minimum.' },
  ORDER_NOT_OWNED: { status: 403, message: 'The order belongs to another user.' },
  ORDER_ALREADY_HAS_COUPON: { status: 409, message: 'The order already holds a coupon.' },
  RESERVATION_NOT_FOUND: { status: 404, message: 'No such reservation.' },
  RESERVATION_NOT_PENDING: { status: 409, message: 'The reservation is no longer pending.' },
} as const;

export type ErrorCode = keyof typeof errorCatalogue;

export class AppError extends Error {
  readonly status: number;

  constructor(
    readonly code: ErrorCode,
    message?: string,
    readonly details?: unknown,
    cause?: unknown,
  ) {
    super(message ?? errorCatalogue[code].message, cause === undefined ? undefined : { cause });
    this.name = 'AppError';
    this.status = errorCatalogue[code].status;
  }
}

export interface Reason {
  code: ErrorCode;
  message: string;
}

export function reason(code: ErrorCode, message?: string): Reason {
  return { code, message: message ?? errorCatalogue[code].message };
}
