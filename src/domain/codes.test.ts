import fc from 'fast-check';
import { CODE_ALPHABET, codeHash, codeRequestSchema, generateCodes, normalizeCode, openCodes, sealCodes } from './codes';

const SECRET = 'unit-test-code-secret-0123456789abcdef';

describe('generateCodes', () => {
  it('draws only from the alphabet without look-alikes, after the prefix, at the asked length', () => {
    fc.assert(
      fc.property(
        fc.integer({ min: 1, max: 50 }),
        fc.integer({ min: 8, max: 32 }),
        fc.stringMatching(/^[A-Z0-9-]{0,16}$/),
        (count, length, prefix) => {
          const codes = generateCodes(count, length, prefix);
          expect(codes).toHaveLength(count);
          for (const code of codes) {
            expect(code.startsWith(prefix)).toBe(true);
            const body = code.slice(prefix.length);
            expect(body).toHaveLength(length);
            for (const ch of body) expect(CODE_ALPHABET).toContain(ch);
          }
        },
      ),
    );
    expect(CODE_ALPHABET).not.toMatch(/[01OIL]/);
    expect(new Set(CODE_ALPHABET).size).toBe(CODE_ALPHABET.length);
  });

  it('uses every symbol about equally often (no modulo bias)', () => {
    const counts = new Map<string, number>();
    for (const code of generateCodes(10_000, 31)) for (const ch of code) counts.set(ch, (counts.get(ch) ?? 0) + 1);
    // 310,000 draws over 31 symbols: 10,000 each expected; a biased mapping would skew some by ~3 %.
    expect(counts.size).toBe(31);
    for (const n of counts.values()) expect(Math.abs(n - 10_000)).toBeLessThan(500);
  });

  it('does not repeat itself across 100,000 codes of 12 symbols', () => {
    const codes = generateCodes(100_000, 12);
    expect(new Set(codes).size).toBe(100_000);
  });
});

describe('codeHash', () => {
  it('matches codes case-insensitively and ignores surrounding spaces', () => {
    expect(codeHash(SECRET, ' welcome10 ')).toBe(codeHash(SECRET, 'WELCOME10'));
    expect(normalizeCode('  AbC-9 ')).toBe('ABC-9');
  });

  it('depends on the secret, and a hash is not the hash of itself', () => {
    const hash = codeHash(SECRET, 'SALE-ABCDEFGH');
    expect(hash).toMatch(/^[0-9a-f]{64}$/);
    expect(codeHash(`${SECRET}x`, 'SALE-ABCDEFGH')).not.toBe(hash);
    expect(codeHash(SECRET, hash)).not.toBe(hash);
  });
});

describe('codeRequestSchema', () => {
  it('takes count 1..100,000, length 8..32 (12 by default) and a short prefix in capitals', () => {
    expect(codeRequestSchema.parse({ count: 5 })).toEqual({ count: 5, length: 12 });
    expect(codeRequestSchema.parse({ count: 5, prefix: 'sale-' })).toEqual({ count: 5, length: 12, prefix: 'SALE-' });
    for (const bad of [
      { count: 0 },
      { count: 100_001 },
      { count: 1, length: 7 },
      { count: 1, length: 33 },
      { count: 1, prefix: 'a b' },
      { count: 1, prefix: '' },
      { count: 1.5 },
      { count: 1, x: 1 },
    ]) {
      expect(codeRequestSchema.safeParse(bad).success).toBe(false);
    }
  });
});

describe('sealCodes and openCodes', () => {
  const secret = 'a-deployment-code-secret-of-32-chars!';
  const codes = generateCodes(100, 12, 'SALE-');

  it('opens what it sealed, for the same batch and secret only', () => {
    const sealed = sealCodes(secret, 'cod_1', codes);
    expect(openCodes(secret, 'cod_1', sealed)).toEqual(codes);
    expect(() => openCodes(secret, 'cod_2', sealed)).toThrow();
    expect(() => openCodes(`${secret}x`, 'cod_1', sealed)).toThrow();
  });

  it('holds no code in the clear, and seals the same codes differently each time', () => {
    const one = sealCodes(secret, 'cod_1', codes);
    const two = sealCodes(secret, 'cod_1', codes);
    expect(one.equals(two)).toBe(false);
    for (const code of codes) expect(one.includes(Buffer.from(code))).toBe(false);
  });

  it('refuses a blob with any byte altered', () => {
    fc.assert(
      fc.property(fc.nat(), fc.integer({ min: 1, max: 255 }), (at, flip) => {
        const sealed = sealCodes(secret, 'cod_1', codes.slice(0, 3));
        const i = at % sealed.length;
        sealed[i] = (sealed[i] as number) ^ flip;
        expect(() => openCodes(secret, 'cod_1', sealed)).toThrow();
      }),
      { numRuns: 200 },
    );
  });
});
