import { traceIdFrom } from './trace';

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/;

describe('traceIdFrom', () => {
  it('keeps a sane trace id as it is', () => {
    for (const given of [
      '0b7e3c2a-5d1f-4e8a-9c6b-2f4d8e1a3b5c',
      '01HZX3K4M5N6P7Q8R9S0T1V2W3',
      'req.2024:abc_DEF-9',
      'a'.repeat(128),
      '12345678',
    ]) {
      expect(traceIdFrom(given)).toBe(given);
    }
  });

  it('makes a fresh UUID for a missing, short, long or odd one', () => {
    for (const given of [
      undefined,
      null,
      '',
      '1234567',
      'a'.repeat(129),
      'has space in it',
      'new\nline-1234',
      'quote"1234',
      'ünïcode-1234',
      '{tagged}-1234',
    ]) {
      const traceId = traceIdFrom(given);
      expect(traceId).toMatch(UUID);
      expect(traceId).not.toBe(given);
    }
    expect(traceIdFrom(undefined)).not.toBe(traceIdFrom(undefined));
  });
});
