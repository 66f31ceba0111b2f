// The command line of `npm start` and what it makes of the Procfile: how many of each process
// (a formation, as foreman's `-m web=2,worker=3`), their names (worker.1, worker.2, ...) and the
// ports each instance gets so that several of one kind can run on one host. Pure.

/** Instances of one process type at most: keeps each type's ports in a range of its own (below). */
export const MAX_INSTANCES = 10;
/** Consecutive workers (and bridges) are this many ports apart: 9464, 9474, ... and 9465, 9475, ... */
export const OPS_PORT_STRIDE = 10;

export class UsageError extends Error {}

export interface StartArgs {
  /** Counts asked for on the command line; a type left out runs once. */
  formation: Record<string, number>;
  /** Another Procfile than the repository's (`-f FILE`). */
  procfile?: string;
  help: boolean;
}

export const USAGE = `usage: npm start -- [TYPE=N ...] [-m TYPE=N,TYPE=N] [-f PROCFILE]
  TYPE=N        run N (0-${MAX_INSTANCES}) instances of the Procfile process TYPE, e.g. worker=3 web=2 bridge=1;
                a type left out runs once
  -m LIST       the same as a comma-separated list (foreman's --formation)
  -f PROCFILE   read the processes from PROCFILE instead of ./Procfile`;

/** Parses the arguments after `npm start --`. */
export function parseStartArgs(argv: string[]): StartArgs {
  const args: StartArgs = { formation: {}, help: false };
  for (let i = 0; i < argv.length; i += 1) {
    const arg = argv[i] as string;
    const [flag, inline] =
      arg.startsWith('--') && arg.includes('=') ? [arg.slice(0, arg.indexOf('=')), arg.slice(arg.indexOf('=') + 1)] : [arg, undefined];
    const value = () => {
      if (inline !== undefined) return inline;
      const next = argv[i + 1];
      if (next === undefined) throw new UsageError(`${flag} needs a value`);
      i += 1;
      return next;
    };
    if (flag === '-h' || flag === '--help') args.help = true;
    else if (flag === '-m' || flag === '--formation') addCounts(args.formation, value());
    else if (flag === '-f' || flag === '--procfile') args.procfile = value();
    else if (!arg.startsWith('-')) addCounts(args.formation, arg);
    else throw new UsageError(`unknown option ${arg}`);
  }
  return args;
}

/** `worker=3,web=2` into counts; a type given twice is an error rather than a silent override. */
function addCounts(into: Record<string, number>, list: string): void {
  for (const part of list
    .split(',')
    .map((p) => p.trim())
    .filter(Boolean)) {
    const match = /^([A-Za-z0-9_-]+)=(\d+)$/.exec(part);
    if (!match) throw new UsageError(`"${part}" is not TYPE=N (e.g. worker=3)`);
    const [, type, count] = match as unknown as [string, string, string];
    const n = Number(count);
    if (n > MAX_INSTANCES) throw new UsageError(`${type}=${n}: at most ${MAX_INSTANCES} instances of a process type`);
    if (type in into) throw new UsageError(`${type} is given twice`);
    into[type] = n;
  }
}

/** The ports the app would use as one process of each type (from its configuration). */
export interface BasePorts {
  /** PORT: the web's API. */
  web: number;
  /** OPS_PORT: the web's ops server, when it has one of its own. */
  webOps?: number;
  /** WORKER_OPS_PORT and BRIDGE_OPS_PORT; 0 means any free port. */
  worker: number;
  bridge: number;
}

export interface Instance {
  /** type.index, as foreman names them: web.1, worker.2. */
  name: string;
  type: string;
  index: number;
  command: string;
  /** What this instance's environment differs in from the others': its ports. */
  env: Record<string, string>;
  /** Where it listens, for the log. */
  listens: string;
}

/**
 * The instances to run: every Procfile type in Procfile order, as many times as the formation says
 * (once when it does not say). Webs take consecutive ports from PORT (and OPS_PORT), as foreman
 * gives them; workers and bridges take ops ports OPS_PORT_STRIDE apart from their base, so worker
 * and bridge ranges stay apart for up to MAX_INSTANCES each. A base of 0 stays 0 (any free port).
 */
export function planInstances(procfile: [string, string][], formation: Record<string, number>, ports: BasePorts): Instance[] {
  const types = new Set(procfile.map(([type]) => type));
  const unknown = Object.keys(formation).filter((type) => !types.has(type));
  if (unknown.length > 0) throw new UsageError(`no process type ${unknown.join(', ')} in the Procfile (it has ${[...types].join(', ')})`);
  const instances = procfile.flatMap(([type, command]) =>
    Array.from({ length: formation[type] ?? 1 }, (_, i) => {
      const env = portEnv(type, i + 1, ports);
      return { name: `${type}.${i + 1}`, type, index: i + 1, command, env, listens: describeListening(type, env) };
    }),
  );
  if (instances.length === 0) throw new UsageError('the formation runs no process at all');
  return instances;
}

/** The port variables of instance `index` (from 1) of `type`. */
export function portEnv(type: string, index: number, ports: BasePorts): Record<string, string> {
  const nth = (base: number, stride: number) => String(base === 0 ? 0 : base + stride * (index - 1));
  if (type === 'web') {
    const env: Record<string, string> = { PORT: nth(ports.web, 1) };
    if (ports.webOps !== undefined) env.OPS_PORT = nth(ports.webOps, 1);
    return env;
  }
  if (type === 'worker') return { WORKER_OPS_PORT: nth(ports.worker, OPS_PORT_STRIDE) };
  if (type === 'bridge') return { BRIDGE_OPS_PORT: nth(ports.bridge, OPS_PORT_STRIDE) };
  return {};
}

function describeListening(type: string, env: Record<string, string>): string {
  const at = (port: string | undefined) => (port === '0' ? 'a free port (logged "ops server listening")' : `http://localhost:${port}`);
  if (type === 'web') return `API on http://localhost:${env.PORT}${env.OPS_PORT ? `, ops on ${at(env.OPS_PORT)}` : ''}`;
  const ops = env.WORKER_OPS_PORT ?? env.BRIDGE_OPS_PORT;
  return ops === undefined ? '' : `ops (/metrics, /health) on ${at(ops)}`;
}
