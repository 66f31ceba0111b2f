// Makes sure a Kafka broker answers at the first broker address: reuses a running one, or on a
// loopback address runs Apache Kafka in KRaft mode from Maven Central jars on the local JDK
// (the recipe in KAFKA.md), and creates topics up front.
import { createHash, randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { Kafka, logLevel, type Admin } from 'kafkajs';
import { createTopicsIfMissing } from '../../src/core/kafka';
import {
  aptInstall,
  findExecutable,
  freePort,
  isLoopback,
  isPortFree,
  isPortOpen,
  repoRoot,
  runOrThrow,
  spawnService,
  tail,
  terminate,
  waitUntil,
  type Logger,
  type Service,
} from './process';

interface Broker {
  host: string;
  port: number;
}

interface Layout {
  pom: string;
  log4j: string;
  lib: string;
  /** Per-port folder: server.properties, cluster.id, logs/, server.log. */
  dir: string;
}

const READY_TIMEOUT_MS = 90_000;
const STOP_GRACE_MS = 20_000;

export async function ensureKafka(brokers: string[], log: Logger): Promise<Service> {
  const broker = parseBroker(brokers[0]);
  const where = `${broker.host}:${broker.port}`;
  if (await isPortOpen(broker.host, broker.port)) {
    // A broker that another run just started may need a few seconds before it answers.
    await waitUntil(`kafka: ${where} is open but does not answer as a Kafka broker`, () => answers(brokers), {
      timeoutMs: 30_000,
      intervalMs: 1000,
    });
    log.info(`kafka: reusing ${where}`);
    return { name: 'kafka', started: false, stop: async () => {} };
  }
  if (!isLoopback(broker.host)) throw new Error(`kafka: nothing answers at ${where} and it is not a local address`);
  return startBroker(brokers, broker, log);
}

/** Creates the topics, each with its dead-letter topic, that do not exist yet; existing ones are left as they are. */
export async function ensureTopics(brokers: string[], topics: string[], numPartitions: number): Promise<void> {
  await withAdmin(brokers, 10_000, (admin) => createTopicsIfMissing(admin, topics, numPartitions));
}

function parseBroker(address: string | undefined): Broker {
  const match = /^\[?([^\]]+?)\]?:(\d+)$/.exec(address ?? '');
  if (!match) throw new Error(`kafka: "${address}" is not host:port`);
  return { host: match[1] as string, port: Number(match[2]) };
}

async function withAdmin<T>(brokers: string[], requestTimeout: number, use: (admin: Admin) => Promise<T>): Promise<T> {
  const kafka = new Kafka({
    clientId: 'coupon-service-infra',
    brokers,
    logLevel: logLevel.NOTHING,
    connectionTimeout: 2000,
    requestTimeout,
    retry: { retries: 0 },
  });
  const admin = kafka.admin();
  try {
    await admin.connect();
    return await use(admin);
  } finally {
    await admin.disconnect().catch(() => {});
  }
}

/** True when a broker at these addresses answers a metadata request. */
async function answers(brokers: string[]): Promise<boolean> {
  try {
    await withAdmin(brokers, 3000, (admin) => admin.describeCluster());
    return true;
  } catch {
    return false;
  }
}

async function startBroker(brokers: string[], broker: Broker, log: Logger): Promise<Service> {
  const root = repoRoot();
  const layout: Layout = {
    pom: path.join(root, 'scripts', 'kafka', 'pom.xml'),
    log4j: path.join(root, 'scripts', 'kafka', 'log4j.properties'),
    lib: path.join(root, '.data', 'kafka', 'lib'),
    dir: path.join(root, '.data', 'kafka', String(broker.port)),
  };
  const java = await findOrInstall('java', 'openjdk-17-jre-headless', log);
  await ensureJars(layout, log);
  mkdirSync(layout.dir, { recursive: true });
  const controllerPort = await chooseControllerPort(broker);
  const properties = path.join(layout.dir, 'server.properties');
  writeFileSync(properties, serverProperties(broker, controllerPort, path.join(layout.dir, 'logs')));
  await formatStorage(java, layout, properties);

  log.info(`kafka: starting the broker on ${broker.host}:${broker.port} (controller ${controllerPort})...`);
  const logFile = path.join(layout.dir, 'server.log');
  const child = spawnService(java, [...javaArgs(layout), ...BROKER_JVM_OPTIONS, 'kafka.Kafka', properties], {
    cwd: layout.dir,
    logFile,
  });
  const stop = () => terminate(child.pid, { host: broker.host, port: broker.port, graceMs: STOP_GRACE_MS });
  const started = Date.now();
  try {
    await waitUntil('kafka: waiting for the broker', () => answers(brokers), {
      timeoutMs: READY_TIMEOUT_MS,
      intervalMs: 500,
      onProgress: (s) => log.info(`kafka: still starting (${s} s, log in ${logFile})...`),
      abortIf: () => child.exited() && `java ${child.exited()}:\n${tail(readFileSync(logFile, 'utf8'), 20)}`,
    });
  } catch (error) {
    await stop();
    throw error;
  }
  const seconds = ((Date.now() - started) / 1000).toFixed(1);
  log.info(`kafka: started ${broker.host}:${broker.port} in ${seconds} s (pid ${child.pid}, log in ${logFile})`);
  return { name: 'kafka', started: true, stop };
}

/**
 * The local broker's JVM: a small heap, and the client compiler only (TieredStopAtLevel=1). With
 * HotSpot's default tiered compilation the C2 compiler thread spent about 7 s of CPU in the broker's
 * first 85 s under the checkout bench's load, a third of the broker's CPU, taken from the service on
 * this 2-core box; with C1 alone the broker cost 0.19-0.24 ms of CPU a checkout against 0.29-0.38 (4
 * runs alternated at 600 checkouts a second). C2's faster code would pay back only after many minutes
 * of heavy load, which a broker on a development box or in a test run rarely sees; a production
 * cluster is the platform's, with its own settings.
 */
const BROKER_JVM_OPTIONS = ['-Xms256m', '-Xmx512m', '-XX:+UseG1GC', '-XX:TieredStopAtLevel=1'];

function javaArgs(layout: Layout): string[] {
  // Java expands the `*` in a class path itself, so no shell is needed.
  return ['-cp', `${layout.lib}${path.sep}*`, `-Dlog4j.configuration=file:${layout.log4j}`];
}

async function findOrInstall(binary: string, debianPackage: string, log: Logger): Promise<string> {
  const found = findExecutable(binary);
  if (found) return found;
  await aptInstall(debianPackage, log);
  const installed = findExecutable(binary);
  if (!installed) throw new Error(`kafka: ${binary} still not found after installing ${debianPackage}`);
  return installed;
}

/**
 * Copies the broker's jars into .data/kafka/lib unless a marker says the folder already
 * holds a complete copy for this very pom.xml (an interrupted download leaves no marker).
 */
async function ensureJars(layout: Layout, log: Logger): Promise<void> {
  const marker = path.join(layout.lib, '.complete');
  const pomHash = createHash('sha1').update(readFileSync(layout.pom)).digest('hex');
  if (existsSync(marker) && readFileSync(marker, 'utf8').trim() === pomHash) return;

  const mvn = await findOrInstall('mvn', 'maven', log);
  log.info('kafka: downloading broker jars (first run, ~30 s)...');
  const started = Date.now();
  rmSync(layout.lib, { recursive: true, force: true });
  mkdirSync(layout.lib, { recursive: true });
  await runOrThrow(mvn, [
    '-B',
    '-q',
    '-f',
    layout.pom,
    'dependency:copy-dependencies',
    `-DoutputDirectory=${layout.lib}`,
    '-DincludeScope=runtime',
  ]);
  const jars = readdirSync(layout.lib).filter((f) => f.endsWith('.jar')).length;
  writeFileSync(marker, `${pomHash}\n`);
  log.info(`kafka: ${jars} jars in ${layout.lib} (${Math.round((Date.now() - started) / 1000)} s)`);
}

/**
 * The controller listens next to the broker (port + 1) unless that port is taken. With a
 * static voter list the controller address may change between runs of a formatted node.
 */
async function chooseControllerPort(broker: Broker): Promise<number> {
  const next = broker.port + 1;
  return (await isPortFree(bindHost(broker), next)) ? next : freePort(bindHost(broker));
}

/** Kafka binds the IPv4 loopback for `localhost`, matching what it advertises. */
function bindHost(broker: Broker): string {
  return broker.host === 'localhost' ? '127.0.0.1' : broker.host;
}

function serverProperties(broker: Broker, controllerPort: number, logDir: string): string {
  const host = bindHost(broker).includes(':') ? `[${bindHost(broker)}]` : bindHost(broker);
  return [
    '# Written by scripts/infra/kafka.ts on every start; edit that file, not this one.',
    '# A single node is both broker and KRaft controller.',
    'process.roles=broker,controller',
    'node.id=1',
    `controller.quorum.voters=1@${host}:${controllerPort}`,
    `listeners=PLAINTEXT://${host}:${broker.port},CONTROLLER://${host}:${controllerPort}`,
    `advertised.listeners=PLAINTEXT://${host}:${broker.port}`,
    'inter.broker.listener.name=PLAINTEXT',
    'controller.listener.names=CONTROLLER',
    'listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT',
    `log.dirs=${logDir}`,
    // Six partitions: the bridge consumes partitions concurrently, one order per key.
    'num.partitions=6',
    // One node cannot hold more than one replica of its internal topics.
    'offsets.topic.replication.factor=1',
    'offsets.topic.num.partitions=1',
    'transaction.state.log.replication.factor=1',
    'transaction.state.log.min.isr=1',
    // A consumer group starts at once instead of waiting 3 s for more members.
    'group.initial.rebalance.delay.ms=0',
    // The KRaft controller appends a no-op record to the metadata log this often when nothing else
    // happens (default 500 ms), which the broker then replays: an idle cost, and one node has no
    // follower that needs its high watermark moved that often.
    'metadata.max.idle.interval.ms=5000',
    '',
  ].join('\n');
}

/**
 * A cluster id as Kafka makes them: 16 random bytes in base64url, drawn again when it starts with
 * '-', which the storage tool's argument parser would take for an option (Kafka's Uuid does the same).
 */
export function newClusterId(): string {
  for (;;) {
    const id = randomBytes(16).toString('base64url');
    if (!id.startsWith('-')) return id;
  }
}

/** Formats the log dir with a cluster id kept next to it; `-g` skips an already formatted dir. */
async function formatStorage(java: string, layout: Layout, properties: string): Promise<void> {
  const idFile = path.join(layout.dir, 'cluster.id');
  if (!existsSync(idFile)) writeFileSync(idFile, `${newClusterId()}\n`);
  const clusterId = readFileSync(idFile, 'utf8').trim();
  await runOrThrow(java, [...javaArgs(layout), 'kafka.tools.StorageTool', 'format', '-t', clusterId, '-c', properties, '-g'], {
    cwd: layout.dir,
  });
}
