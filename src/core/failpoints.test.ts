import { parseFailpointAction } from './failpoints';

describe('parseFailpointAction', () => {
  it('reads hang, exit, hang@N and exit@N, and nothing else', () => {
    expect(parseFailpointAction('hang')).toEqual({ kind: 'hang', atHit: 1, once: false });
    expect(parseFailpointAction('exit')).toEqual({ kind: 'exit', atHit: 1, once: false });
    expect(parseFailpointAction('exit@25')).toEqual({ kind: 'exit', atHit: 25, once: true });
    expect(parseFailpointAction('hang@3')).toEqual({ kind: 'hang', atHit: 3, once: true });
    for (const bad of ['exit@0', 'exit@', 'exit@-1', 'exit@1.5', 'Exit', 'crash', '', 'hang@x'])
      expect(parseFailpointAction(bad)).toBeNull();
  });
});
