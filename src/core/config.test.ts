import { ConfigError, parseConfig } from './config';

describe('configuration', () => {
  it('falls back to the local defaults', () => {
    const cfg = parseConfig({});
    expect(cfg.PORT).toBe(3000);
    expect(cfg.KAFKA_BROKERS).toEqual(['127.0.0.1:9092']);
    expect(cfg.RESERVATION_TTL_SECONDS).toBe(600);
  });

  it('names every malformed variable in one message', () => {
    let error: unknown;
    try {
      parseConfig({ PORT: 'eighty', DATABASE_URL: 'mysql://x', KAFKA_BROKERS: 'nohost', JWT_SECRET: 'short' });
    } catch (e) {
      error = e;
    }
    expect(error).toBeInstanceOf(ConfigError);
    const problems = (error as ConfigError).problems.join('\n');
    for (const name of ['PORT', 'DATABASE_URL', 'KAFKA_BROKERS', 'JWT_SECRET']) expect(problems).toContain(name);
  });

  it('treats an empty variable as unset', () => {
    expect(parseConfig({ PORT: '', LOG_LEVEL: '' }).PORT).toBe(3000);
  });
});
