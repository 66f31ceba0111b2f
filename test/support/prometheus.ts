// Prometheus formats for tests: a strict parser of the text exposition format (0.0.4) and the metric
// names a PromQL expression reads.

export interface Sample {
  name: string;
  labels: Record<string, string>;
  value: number;
}

export interface Family {
  name: string;
  help?: string;
  type?: 'counter' | 'gauge' | 'histogram' | 'summary' | 'untyped';
  samples: Sample[];
}

const NAME = /^[a-zA-Z_:][a-zA-Z0-9_:]*$/;
const LABEL_NAME = /^[a-zA-Z_][a-zA-Z0-9_]*$/;
// Prometheus reads a value with Go's strconv.ParseFloat, which takes NaN in any case; prom-client
// writes "Nan" (nodejs_eventloop_lag_mean_seconds of a scrape that follows another within ~10 ms).
const VALUE = /^(?:[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?|[+-]?Inf|[Nn][Aa][Nn])$/;
const TYPES = new Set(['counter', 'gauge', 'histogram', 'summary', 'untyped']);
const SUFFIXES: Record<string, string[]> = { histogram: ['_bucket', '_sum', '_count'], summary: ['_sum', '_count'] };

function parseValue(text: string, where: string): number {
  if (!VALUE.test(text)) throw new Error(`${where}: bad value ${JSON.stringify(text)}`);
  if (text.endsWith('Inf')) return text.startsWith('-') ? -Infinity : Infinity;
  return Number(text);
}

/** `a="x",b="y\"z"` (the text between the braces) into an object; escapes \\ \" \n only. */
function parseLabels(text: string, where: string): Record<string, string> {
  const labels: Record<string, string> = {};
  let i = 0;
  while (i < text.length) {
    const eq = text.indexOf('=', i);
    if (eq < 0) throw new Error(`${where}: label without value`);
    const name = text.slice(i, eq).trim();
    if (!LABEL_NAME.test(name)) throw new Error(`${where}: bad label name ${JSON.stringify(name)}`);
    if (name in labels) throw new Error(`${where}: label ${name} twice`);
    if (text[eq + 1] !== '"') throw new Error(`${where}: label ${name} value not quoted`);
    let value = '';
    let j = eq + 2;
    for (;;) {
      const ch = text[j];
      if (ch === undefined) throw new Error(`${where}: unterminated label value`);
      if (ch === '"') break;
      if (ch === '\\') {
        const next = text[j + 1];
        if (next === '\\' || next === '"') value += next;
        else if (next === 'n') value += '\n';
        else throw new Error(`${where}: bad escape \\${next}`);
        j += 2;
      } else {
        value += ch;
        j += 1;
      }
    }
    labels[name] = value;
    i = j + 1;
    if (text[i] === ',') i += 1;
    else if (i < text.length) throw new Error(`${where}: expected , after label ${name}`);
  }
  return labels;
}

/**
 * Parses Prometheus text exposition strictly: every line is blank, a comment (# HELP / # TYPE at
 * most once per family, TYPE before its samples) or `name{labels} value [timestamp]`; every sample
 * belongs to a declared family, a family's lines are contiguous, no series appears twice, and every
 * histogram series has its +Inf bucket equal to its count.
 */
export function parseExposition(text: string): Map<string, Family> {
  if (text.length > 0 && !text.endsWith('\n')) throw new Error('exposition does not end with a newline');
  const families = new Map<string, Family>();
  const closed = new Set<string>();
  const seen = new Set<string>();
  let current: Family | undefined;
  const enter = (name: string, where: string): Family => {
    if (current?.name !== name) {
      if (closed.has(name)) throw new Error(`${where}: family ${name} is not contiguous`);
      if (current) closed.add(current.name);
      current = families.get(name) ?? { name, samples: [] };
      families.set(name, current);
    }
    return current;
  };
  const lines = text.split('\n');
  lines.pop();
  lines.forEach((line, n) => {
    const where = `line ${n + 1}`;
    if (line.trim() === '') return;
    if (line.startsWith('#')) {
      const m = /^# (HELP|TYPE) (\S+)(?: (.*))?$/.exec(line);
      if (!m) return; // a plain comment
      const [, kind, name = '', rest = ''] = m;
      if (!NAME.test(name)) throw new Error(`${where}: bad metric name ${name}`);
      const family = enter(name, where);
      if (kind === 'HELP') {
        if (family.help !== undefined) throw new Error(`${where}: second HELP for ${name}`);
        family.help = rest;
      } else {
        if (family.type !== undefined) throw new Error(`${where}: second TYPE for ${name}`);
        if (family.samples.length > 0) throw new Error(`${where}: TYPE of ${name} after its samples`);
        if (!TYPES.has(rest)) throw new Error(`${where}: bad type ${rest}`);
        family.type = rest as Family['type'];
      }
      return;
    }
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)(?: (-?\d+))?$/.exec(line);
    if (!m) throw new Error(`${where}: not a sample line: ${line}`);
    const [, name = '', labelText, valueText = ''] = m;
    const labels = labelText === undefined ? {} : parseLabels(labelText, where);
    const value = parseValue(valueText, where);
    const familyName =
      current && (name === current.name || (SUFFIXES[current.type ?? '']?.some((s) => name === current?.name + s) ?? false))
        ? current.name
        : name;
    const family = enter(familyName, where);
    if (family.type === undefined) throw new Error(`${where}: sample of ${name} without a TYPE`);
    const key = `${name}${JSON.stringify(Object.entries(labels).sort())}`;
    if (seen.has(key)) throw new Error(`${where}: series ${key} twice`);
    seen.add(key);
    if (name.endsWith('_bucket') && family.type === 'histogram' && labels.le === undefined) throw new Error(`${where}: bucket without le`);
    family.samples.push({ name, labels, value });
  });
  for (const family of families.values()) {
    if (family.type !== 'histogram') continue;
    for (const count of family.samples.filter((s) => s.name === `${family.name}_count`)) {
      const inf = family.samples.find(
        (s) => s.name === `${family.name}_bucket` && s.labels.le === '+Inf' && sameLabels(s.labels, count.labels),
      );
      if (!inf || inf.value !== count.value)
        throw new Error(`histogram ${family.name} ${JSON.stringify(count.labels)}: +Inf bucket does not match the count`);
    }
  }
  return families;
}

function sameLabels(withLe: Record<string, string>, other: Record<string, string>): boolean {
  const { le: _le, ...rest } = withLe;
  return JSON.stringify(Object.entries(rest).sort()) === JSON.stringify(Object.entries(other).sort());
}

/** The value of the one sample named `name` whose labels include `labels`, or undefined. */
export function sampleValue(families: Map<string, Family>, name: string, labels: Record<string, string> = {}): number | undefined {
  for (const family of families.values()) {
    for (const s of family.samples) {
      if (s.name === name && Object.entries(labels).every(([k, v]) => s.labels[k] === v)) return s.value;
    }
  }
  return undefined;
}

const GROUPING = new Set(['by', 'without', 'on', 'ignoring', 'group_left', 'group_right']);
const KEYWORDS = new Set([...GROUPING, 'and', 'or', 'unless', 'bool', 'offset', 'inf', 'nan']);

/**
 * The metric names a PromQL expression reads. Strings, label matchers and ranges go first (a label
 * value may look like anything); then an identifier is a function or aggregation when `(`, `by` or
 * `without` follows, a keyword, a label list after by/without/on/ignoring/group_left/group_right, or
 * else a metric.
 */
export function metricNamesIn(expr: string): string[] {
  const stripped = expr
    .replace(/"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`/g, '""')
    .replace(/#.*$/gm, ' ')
    .replace(/\{[^}]*\}/g, ' ')
    .replace(/\[[^\]]*\]/g, ' ');
  const tokens: string[] =
    stripped.match(/[A-Za-z_:][A-Za-z0-9_:]*|\d+(?:\.\d+)?(?:[eE][+-]?\d+)?[a-z]*|\.\d+|[()]|[^\sA-Za-z0-9_:()]+/g) ?? [];
  const names = new Set<string>();
  for (let i = 0; i < tokens.length; i += 1) {
    const token = tokens[i] as string;
    if (!/^[A-Za-z_:]/.test(token)) continue;
    const word = token.toLowerCase();
    if (GROUPING.has(word) && tokens[i + 1] === '(') {
      const close = tokens.indexOf(')', i + 1);
      if (close < 0) throw new Error(`unbalanced label list in ${expr}`);
      i = close;
      continue;
    }
    const next = tokens[i + 1]?.toLowerCase();
    // A function call, or an aggregation whose grouping comes first: `sum by (queue) (...)`.
    if (KEYWORDS.has(word) || next === '(' || next === 'by' || next === 'without') continue;
    names.add(token);
  }
  return [...names];
}
