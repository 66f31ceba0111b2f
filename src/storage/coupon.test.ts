import { apiStatus } from './coupon';

describe('coupon status as the API shows it', () => {
  const now = new Date('2026-01-10T00:00:00Z');

  it('shows an unexpired ISSUED coupon as AVAILABLE and an expired one as EXPIRED', () => {
    expect(apiStatus({ status: 'ISSUED', expiresAt: new Date('2026-01-11T00:00:00Z') }, now)).toBe('AVAILABLE');
    expect(apiStatus({ status: 'ISSUED', expiresAt: now }, now)).toBe('EXPIRED');
  });

  it('shows RESERVED, USED and EXPIRED as stored', () => {
    for (const status of ['RESERVED', 'USED', 'EXPIRED'] as const) {
      expect(apiStatus({ status, expiresAt: new Date('2030-01-01T00:00:00Z') }, now)).toBe(status);
    }
  });
});
