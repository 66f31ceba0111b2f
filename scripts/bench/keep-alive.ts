// One keep-alive HTTP/1.1 connection that sends one request at a time: the flash-sale bench's load
// generator. The generator shares the box's two cores with the service, so what it spends is taken
// from what it measures. undici's Pool cost 60-69 µs of CPU a request against a bare Node server on
// this machine (200 connections, 40,000 requests); this connection, with each user's request built
// before the clock starts, 30-37 µs. It speaks only what the service answers: a status line,
// headers, and a body framed by Content-Length or chunked; `Connection: close` (a draining web)
// closes it after the answer, and the next request opens a new one. A connection left idle for
// nearly as long as the server keeps it (its `Keep-Alive: timeout=N`) is not reused: a request sent
// just as the server closes it is reset (ECONNRESET), as 24 reserves were when a measured run began
// about 5 s after the warm-up, the web's keep-alive timeout. undici discards connections the same way.
import net from 'node:net';

export interface Answer {
  status: number;
  text: string;
}

/** A request as bytes on the wire: `requestBytes` builds one. */
export type WireRequest = Buffer;

/** The whole request (line, headers, body) as one buffer, built once, before the clock starts. */
export function requestBytes(method: 'GET' | 'POST', url: URL, path: string, headers: Record<string, string>, body?: string): WireRequest {
  const lines = [`${method} ${path} HTTP/1.1`, `host: ${url.host}`];
  for (const [name, value] of Object.entries(headers)) lines.push(`${name}: ${value}`);
  if (body !== undefined) lines.push(`content-length: ${Buffer.byteLength(body)}`);
  return Buffer.from(`${lines.join('\r\n')}\r\n\r\n${body ?? ''}`);
}

const HEAD_END = Buffer.from('\r\n\r\n');
/** How long before the server's keep-alive timeout an idle connection is no longer reused. */
const KEEP_ALIVE_MARGIN_MS = 1_000;
const CRLF = Buffer.from('\r\n');

interface Pending {
  resolve(answer: Answer): void;
  reject(error: Error): void;
  timer: NodeJS.Timeout;
}

/** A parsed head: the status, how the body is framed, and whether the server closes after it. */
interface Head {
  status: number;
  length: number | null;
  chunked: boolean;
  close: boolean;
  /** How long the server keeps the connection idle (`Keep-Alive: timeout=N`), when it says. */
  keepAliveMs: number | null;
  bodyAt: number;
}

function parseHead(buf: Buffer, end: number): Head {
  const head = buf.toString('latin1', 0, end);
  const status = Number(head.slice(9, 12));
  if (!head.startsWith('HTTP/1.') || !Number.isInteger(status)) throw new Error(`not an HTTP answer: ${head.slice(0, 40)}`);
  let length: number | null = null;
  let chunked = false;
  let close = false;
  let keepAliveMs: number | null = null;
  for (const line of head.split('\r\n').slice(1)) {
    const colon = line.indexOf(':');
    const name = line.slice(0, colon).trim().toLowerCase();
    const value = line
      .slice(colon + 1)
      .trim()
      .toLowerCase();
    if (name === 'content-length') length = Number(value);
    else if (name === 'transfer-encoding') chunked = value.includes('chunked');
    else if (name === 'connection') close = value.includes('close');
    else if (name === 'keep-alive') {
      const timeout = /timeout=(\d+)/.exec(value);
      if (timeout) keepAliveMs = Number(timeout[1]) * 1000;
    }
  }
  return { status, length, chunked, close, keepAliveMs, bodyAt: end + HEAD_END.length };
}

/** A chunked body from `at`: its text, or null while incomplete. */
function chunkedBody(buf: Buffer, at: number): string | null {
  const parts: Buffer[] = [];
  let pos = at;
  for (;;) {
    const lineEnd = buf.indexOf(CRLF, pos);
    if (lineEnd < 0) return null;
    const size = parseInt(buf.toString('latin1', pos, lineEnd), 16);
    if (!Number.isFinite(size)) throw new Error('bad chunk size');
    const dataAt = lineEnd + 2;
    if (size === 0) {
      // No trailers from this service: the last chunk is followed by one empty line.
      if (buf.length < dataAt + 2) return null;
      return Buffer.concat(parts).toString('utf8');
    }
    if (buf.length < dataAt + size + 2) return null;
    parts.push(buf.subarray(dataAt, dataAt + size));
    pos = dataAt + size + 2;
  }
}

export class KeepAliveConnection {
  private socket: net.Socket | null = null;
  private buf: Buffer = Buffer.alloc(0);
  private pending: Pending | null = null;
  /** Past this moment the idle connection is closed before the next request rather than reused. */
  private reuseUntil = Infinity;

  constructor(
    private readonly url: URL,
    private readonly timeoutMs = 15_000,
  ) {}

  /** Sends one request and resolves with its answer; a network error or timeout rejects (and closes the connection). */
  send(request: WireRequest): Promise<Answer> {
    if (this.pending) return Promise.reject(new Error('one request at a time'));
    return new Promise<Answer>((resolve, reject) => {
      const timer = setTimeout(() => this.fail(new Error(`no answer in ${this.timeoutMs} ms`)), this.timeoutMs);
      this.pending = { resolve, reject, timer };
      if (this.socket && Date.now() > this.reuseUntil) this.close();
      this.open().write(request);
    });
  }

  close(): void {
    this.socket?.destroy();
    this.socket = null;
  }

  private open(): net.Socket {
    if (this.socket) return this.socket;
    const socket = net.connect(Number(this.url.port || 80), this.url.hostname);
    socket.setNoDelay(true);
    // Events of a socket this connection has since replaced (closed after `Connection: close`) are not the current request's.
    socket.on('data', (data: Buffer) => this.socket === socket && this.received(data));
    socket.on('error', (error) => this.socket === socket && this.fail(error));
    socket.on('close', () => {
      if (this.socket !== socket) return;
      // Closed while idle too (a server's keep-alive timeout): the next request opens a new one.
      this.socket = null;
      this.fail(new Error('connection closed before the answer'));
    });
    this.socket = socket;
    this.buf = Buffer.alloc(0);
    return socket;
  }

  private received(data: Buffer): void {
    this.buf = this.buf.length === 0 ? data : Buffer.concat([this.buf, data]);
    const end = this.buf.indexOf(HEAD_END);
    if (end < 0 || !this.pending) return;
    let head: Head;
    let text: string;
    try {
      head = parseHead(this.buf, end);
      if (head.chunked) {
        const body = chunkedBody(this.buf, head.bodyAt);
        if (body === null) return;
        text = body;
      } else {
        const length = head.length ?? 0;
        if (this.buf.length < head.bodyAt + length) return;
        text = this.buf.toString('utf8', head.bodyAt, head.bodyAt + length);
      }
    } catch (error) {
      this.fail(error as Error);
      return;
    }
    this.buf = Buffer.alloc(0);
    const { resolve, timer } = this.pending;
    clearTimeout(timer);
    this.pending = null;
    this.reuseUntil = head.keepAliveMs === null ? Infinity : Date.now() + head.keepAliveMs - KEEP_ALIVE_MARGIN_MS;
    if (head.close) this.close();
    resolve({ status: head.status, text });
  }

  private fail(error: Error): void {
    const pending = this.pending;
    if (!pending) return;
    this.pending = null;
    clearTimeout(pending.timer);
    this.close();
    pending.reject(error);
  }
}

/**
 * Up to `max` keep-alive connections to one server, shared by many callers at once (the checkout
 * bench's open loop, where hundreds of requests are in flight): a call takes an idle connection,
 * else opens one while fewer than `max` are open, else waits its turn in order. The connection goes
 * back after the answer; one that failed opens a fresh socket for its next request.
 */
export class KeepAlivePool {
  private readonly all: KeepAliveConnection[] = [];
  private readonly idle: KeepAliveConnection[] = [];
  private readonly waiting: ((connection: KeepAliveConnection) => void)[] = [];

  constructor(
    readonly url: URL,
    private readonly max: number,
    private readonly timeoutMs = 15_000,
  ) {}

  /** Connections opened so far (at most `max`). */
  get size(): number {
    return this.all.length;
  }

  async send(request: WireRequest): Promise<Answer> {
    const connection = await this.take();
    try {
      return await connection.send(request);
    } finally {
      this.give(connection);
    }
  }

  close(): void {
    for (const connection of this.all) connection.close();
  }

  private take(): KeepAliveConnection | Promise<KeepAliveConnection> {
    const idle = this.idle.pop();
    if (idle) return idle;
    if (this.all.length < this.max) {
      const connection = new KeepAliveConnection(this.url, this.timeoutMs);
      this.all.push(connection);
      return connection;
    }
    return new Promise((resolve) => this.waiting.push(resolve));
  }

  private give(connection: KeepAliveConnection): void {
    const next = this.waiting.shift();
    if (next) next(connection);
    else this.idle.push(connection);
  }
}
