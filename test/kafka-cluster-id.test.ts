// The local broker's cluster id goes to Kafka's storage tool as an argument: one starting with '-'
// is taken for an option and the broker never starts (1 in 64 random ids would).
import { newClusterId } from '../scripts/infra/kafka';

it('makes base64url cluster ids of 16 bytes that never start with a dash', () => {
  const ids = Array.from({ length: 20_000 }, () => newClusterId());
  for (const id of ids) expect(id).toMatch(/^[A-Za-z0-9_][A-Za-z0-9_-]{21}$/);
  expect(new Set(ids).size).toBe(ids.length);
});
