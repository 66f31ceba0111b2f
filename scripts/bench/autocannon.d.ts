// The part of autocannon 9's programmatic API the flash-sale bench uses (the package ships no types).
declare module 'autocannon' {
  import type { EventEmitter } from 'node:events';

  namespace autocannon {
    /** What setupRequest receives and returns: the request about to be encoded. */
    interface RequestData {
      method?: string;
      path?: string;
      headers?: Record<string, string>;
      body?: string | Buffer;
      [key: string]: unknown;
    }

    interface Request extends RequestData {
      /** Called before each request is encoded; a falsy return restarts the request sequence. */
      setupRequest?: (request: RequestData, context: Record<string, unknown>) => RequestData | null | undefined;
      onResponse?: (status: number, body: string, context: Record<string, unknown>, headers: Record<string, string | string[]>) => void;
    }

    /** The hdr-histogram-js histogram autocannon records latencies into (milliseconds). */
    interface Histogram {
      recordValue(value: number): void;
      getValueAtPercentile(percentile: number): number;
      readonly totalCount: number;
      readonly mean: number;
      readonly maxValue: number;
      readonly minNonZeroValue: number;
      destroy(): void;
    }

    interface Options {
      url: string | string[];
      connections?: number;
      pipelining?: number;
      /** Seconds before a request counts as timed out. */
      timeout?: number;
      amount?: number;
      duration?: number;
      sampleInt?: number;
      method?: string;
      headers?: Record<string, string>;
      body?: string | Buffer;
      requests?: Request[];
      excludeErrorStats?: boolean;
      bailout?: number;
      /** Histograms to record into instead of fresh ones (undocumented, read by lib/run.js). */
      histograms?: { latencies?: Histogram; requests?: Histogram; throughput?: Histogram };
    }

    interface HistogramSummary {
      average: number;
      mean: number;
      stddev: number;
      min: number;
      max: number;
      total?: number;
      totalCount?: number;
      sent?: number;
      p2_5: number;
      p50: number;
      p75: number;
      p90: number;
      p97_5: number;
      p99: number;
      p99_9: number;
      p99_99: number;
      p99_999: number;
    }

    interface Result {
      url: string;
      connections: number;
      pipelining: number;
      duration: number;
      start: Date;
      finish: Date;
      errors: number;
      timeouts: number;
      mismatches: number;
      non2xx: number;
      resets: number;
      '1xx': number;
      '2xx': number;
      '3xx': number;
      '4xx': number;
      '5xx': number;
      statusCodeStats: Record<string, { count: number }>;
      latency: HistogramSummary;
      requests: HistogramSummary;
      throughput: HistogramSummary;
    }

    interface Instance extends EventEmitter {
      stop(): void;
    }
  }

  function autocannon(opts: autocannon.Options, cb: (error: Error | null, result: autocannon.Result) => void): autocannon.Instance;

  export = autocannon;
}
