// A degraded network for one browser: a second network namespace joined to
// the test's own by a veth pair, where a test can drop a share of the UDP
// packets (nf_tables `numgen random`) and cap the rate towards that browser
// (tc tbf on the test's end of the veth). Browsers in it are launched through
// `ip netns exec` (Browsers.newChromium({ netns })); the server listens on
// 0.0.0.0 and announces the veth address, so browsers on either side reach it.
//
// Why not `tc netem`: the CI kernel is built without sch_netem
// (CONFIG_NET_SCH_NETEM is not set; tc answers "Specified qdisc kind is
// unknown"), so neither loss nor delay can come from a qdisc. nf_tables is
// built in, and random drops there are real kernel-side loss on the media path
// (no product code changes). Delay and jitter have no kernel mechanism here
// either, so `delayUdp()` queues the namespace's UDP packets to a small
// userspace program (NFQUEUE, via iptables-legacy because this kernel's
// nf_tables lacks the `queue` expression) that releases each one after
// delay ± jitter. `capabilities()` reports what works.
//
// Everything is removed by `destroy()` (deleting the namespace removes the
// veth pair, its qdiscs and the nft tables); a process 'exit' hook does the
// same if the test process dies first.

import { execFile, execFileSync, spawn } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import { promisify } from 'node:util';
import { waitUntil } from './wait.mjs';

const execFileP = promisify(execFile);

async function run(cmd, args, { input } = {}) {
  if (input !== undefined) {
    return new Promise((resolve, reject) => {
      const p = spawn(cmd, args, { stdio: ['pipe', 'pipe', 'pipe'] });
      let out = '';
      let err = '';
      p.stdout.on('data', (d) => (out += d));
      p.stderr.on('data', (d) => (err += d));
      p.on('error', reject);
      p.on('exit', (code) => (code === 0 ? resolve(out) : reject(new Error(`${cmd} ${args.join(' ')} exited ${code}: ${err.trim()}`))));
      p.stdin.end(input);
    });
  }
  try {
    const { stdout } = await execFileP(cmd, args, { timeout: 20_000 });
    return stdout;
  } catch (e) {
    throw new Error(`${cmd} ${args.join(' ')} failed: ${(e.stderr || e.message).trim()}`);
  }
}

const live = new Set();
const helpers = new Set(); // processes running inside our namespaces
let exitHook = false;
function registerExitHook() {
  if (exitHook) return;
  exitHook = true;
  process.on('exit', () => {
    for (const p of helpers) p.kill('SIGKILL');
    for (const ns of live) {
      try {
        execFileSync('ip', ['netns', 'del', ns], { stdio: 'ignore', timeout: 5_000 });
      } catch {
        // best effort: the process is going away
      }
    }
  });
}

/**
 * Namespaces this module made in a test process that has since died without
 * its exit hook (SIGKILL, a CI timeout) would stay in /run/netns for good:
 * remove those whose creating process is gone. Names are `sk<tag>-<pid>-<hex>`.
 */
async function sweepStale() {
  const list = await run('ip', ['netns', 'list']).catch(() => '');
  for (const line of list.split('\n')) {
    const m = /^(sk[a-z]*-(\d+)-[0-9a-f]{6})\b/.exec(line.trim());
    if (!m || Number(m[2]) === process.pid) continue;
    try {
      process.kill(Number(m[2]), 0);
    } catch (e) {
      if (e.code === 'ESRCH') await run('ip', ['netns', 'del', m[1]]).catch(() => {});
    }
  }
}

let capsCache = null;
/**
 * What this machine can impair, probed in a throwaway namespace:
 * { root, netem, tbf, nftLoss, delay } (booleans) and `missing` (why not, per item).
 */
export async function capabilities() {
  if (capsCache) return capsCache;
  const caps = { root: process.getuid?.() === 0, netem: false, tbf: false, nftLoss: false, delay: false, missing: {} };
  if (!caps.root) {
    caps.missing.root = 'not root: network namespaces need root';
    capsCache = caps;
    return caps;
  }
  await sweepStale();
  const ns = `skprobe-${process.pid}-${crypto.randomBytes(3).toString('hex')}`;
  try {
    await run('ip', ['netns', 'add', ns]);
    live.add(ns);
    registerExitHook();
    await run('ip', ['-n', ns, 'link', 'set', 'lo', 'up']);
    const tryQdisc = async (key, spec) => {
      try {
        await run('ip', ['netns', 'exec', ns, 'tc', 'qdisc', 'replace', 'dev', 'lo', 'root', ...spec]);
        caps[key] = true;
      } catch (e) {
        caps.missing[key] = e.message;
      }
    };
    await tryQdisc('netem', ['netem', 'loss', '1%']);
    await tryQdisc('tbf', ['tbf', 'rate', '1mbit', 'burst', '10kb', 'latency', '50ms']);
    try {
      await run('ip', ['netns', 'exec', ns, 'iptables-legacy', '-A', 'OUTPUT', '-p', 'udp', '-j', 'NFQUEUE', '--queue-num', '1', '--queue-bypass']);
      await run(PYTHON, ['-c', 'import socket; socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 12).close()']);
      caps.delay = true;
    } catch (e) {
      caps.missing.delay = e.message.includes('ENOENT') ? `iptables-legacy or ${PYTHON} missing (apt-get install iptables python3)` : e.message;
    }
    try {
      await run('ip', ['netns', 'exec', ns, 'nft', '-f', '-'], {
        input: 'table inet probe {\n chain c { type filter hook output priority -300; policy accept; numgen random mod 100 < 1 drop; }\n}\n',
      });
      caps.nftLoss = true;
    } catch (e) {
      caps.missing.nftLoss = e.message.includes('ENOENT') ? 'nft not installed (apt-get install nftables)' : e.message;
    }
  } catch (e) {
    caps.missing.netns = e.message;
  } finally {
    await run('ip', ['netns', 'del', ns]).catch(() => {});
    live.delete(ns);
  }
  capsCache = caps;
  return caps;
}

const PYTHON = fs.existsSync('/usr/bin/python3') ? '/usr/bin/python3' : 'python3';

/**
 * Runs in the peer namespace (python3, standard library only): binds NFQUEUE
 * QUEUE over raw netlink, asks for packet metadata only, and accepts each
 * queued packet DELAY ± JITTER ms (uniform) after it arrived — netem's
 * `delay D J`, reordering included. Fail-open: if it falls behind the kernel
 * passes packets on undelayed rather than dropping them. Prints its count of
 * delayed packets on SIGTERM.
 */
const NFQUEUE_DELAY = String.raw`
import heapq, os, random, select, signal, socket, struct, sys, time
QUEUE, DELAY, JITTER = int(sys.argv[1]), float(sys.argv[2]) / 1000, float(sys.argv[3]) / 1000
SUBSYS_QUEUE, MSG_PACKET, MSG_VERDICT, MSG_CONFIG = 3, 0, 1, 2
NLM_F_REQUEST, NLM_F_ACK, NLMSG_ERROR, NF_ACCEPT = 1, 4, 2, 1
s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 12)
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
s.setsockopt(270, 5, 1)  # SOL_NETLINK, NETLINK_NO_ENOBUFS
s.bind((0, 0))
seq = 0
delayed = 0
def attr(t, payload):
    n = 4 + len(payload)
    return struct.pack('=HH', n, t) + payload + b'\0' * ((4 - n % 4) % 4)
def msg(mtype, attrs, flags=NLM_F_REQUEST):
    global seq
    seq += 1
    body = struct.pack('=BB', 0, 0) + struct.pack('!H', QUEUE) + b''.join(attrs)
    return struct.pack('=IHHII', 16 + len(body), (SUBSYS_QUEUE << 8) | mtype, flags, seq, 0) + body
def config(attrs):
    s.send(msg(MSG_CONFIG, attrs, NLM_F_REQUEST | NLM_F_ACK))
    data = s.recv(65536)
    if struct.unpack_from('=IHHII', data, 0)[1] == NLMSG_ERROR:
        err = struct.unpack_from('=i', data, 16)[0]
        if err:
            raise OSError(-err, 'nfqueue config: ' + os.strerror(-err))
config([attr(1, struct.pack('!BBH', 1, 0, 0))])  # NFQA_CFG_CMD: bind
config([attr(2, struct.pack('!IB', 0, 1))])  # NFQA_CFG_PARAMS: copy metadata only
config([attr(3, struct.pack('!I', 8192))])  # NFQA_CFG_QUEUE_MAXLEN
config([attr(5, struct.pack('!I', 1)), attr(4, struct.pack('!I', 1))])  # NFQA_CFG_FLAGS/MASK: fail open
def stop(*_):
    print('delayed %d' % delayed, flush=True)
    sys.exit(0)
signal.signal(signal.SIGTERM, stop)
print('ready', flush=True)
parent = os.getppid()
pending = []
while True:
    if not pending and os.getppid() != parent:
        sys.exit(0)  # orphaned (the test process was killed): go, or the namespace never dies
    now = time.monotonic()
    while pending and pending[0][0] <= now:
        s.send(msg(MSG_VERDICT, [attr(2, struct.pack('!II', NF_ACCEPT, heapq.heappop(pending)[1]))]))
    r, _, _ = select.select([s], [], [], max(0.0, pending[0][0] - now) if pending else 1.0)
    if not r:
        continue
    data = s.recv(1 << 20)
    off = 0
    while off + 16 <= len(data):
        length, mtype = struct.unpack_from('=IH', data, off)
        if length < 16:
            break
        if mtype == (SUBSYS_QUEUE << 8) | MSG_PACKET:
            a, end = off + 20, off + length
            while a + 4 <= end:
                alen, atype = struct.unpack_from('=HH', data, a)
                if alen < 4:
                    break
                if atype & 0x7fff == 1:  # NFQA_PACKET_HDR: packet id first
                    due = time.monotonic() + max(0.0, random.uniform(DELAY - JITTER, DELAY + JITTER))
                    heapq.heappush(pending, (due, struct.unpack_from('!I', data, a + 4)[0]))
                    delayed += 1
                a += (alen + 3) & ~3
        off += (length + 3) & ~3
`;

/** Runs in the peer namespace: 127.0.0.1:PORT → TARGET:PORT, so pages there keep a secure (loopback) origin. */
const TCP_FORWARDER = `
const net = require('node:net');
const [port, target] = process.argv.slice(1);
const srv = net.createServer((c) => {
  const u = net.connect(Number(port), target);
  c.pipe(u); u.pipe(c);
  const end = () => { c.destroy(); u.destroy(); };
  c.on('error', end); u.on('error', end); c.on('close', end); u.on('close', end);
});
srv.listen(Number(port), '127.0.0.1', () => console.log('ready'));
// Orphaned (the test process was killed): go, or the namespace never dies.
const parent = process.ppid;
setInterval(() => process.ppid !== parent && process.exit(0), 1000);
`;

/**
 * A network namespace for one or more browsers, linked to the caller's
 * namespace by a veth pair: `hostIp` is the caller's end (the server
 * announces it), `peerIp` the namespace's end.
 */
export class PeerNamespace {
  static async create({ tag = 'sknet' } = {}) {
    if (!/^sk[a-z]{0,8}$/.test(tag)) throw new Error(`netns tag ${tag} must match sk[a-z]{0,8}`);
    const caps = await capabilities();
    if (!caps.root) throw new Error(caps.missing.root);
    const rnd = crypto.randomBytes(3);
    const hex = rnd.toString('hex');
    const ns = new PeerNamespace();
    ns.name = `${tag}-${process.pid}-${hex}`;
    // Interface names are at most 15 bytes; the random part keeps parallel runs apart.
    ns.hostIf = `sk${hex}h`;
    ns.peerIf = `sk${hex}p`;
    // A random /30 in 10.213.0.0/16 (unlikely to meet anything else on a test machine).
    const base = (rnd[1] << 8) | (rnd[2] & 0xfc);
    ns.hostIp = `10.213.${base >> 8}.${(base & 0xff) + 1}`;
    ns.peerIp = `10.213.${base >> 8}.${(base & 0xff) + 2}`;
    ns.forwarders = [];
    ns.destroyed = false;
    await run('ip', ['netns', 'add', ns.name]);
    live.add(ns.name);
    registerExitHook();
    try {
      // No IPv6 on the pair: its link-local address would finish duplicate address detection
      // ~1 s after the link came up, and Chromium, started in the namespace by then, takes that
      // for a network change and aborts the page's loads (net::ERR_NETWORK_CHANGED: a guest page
      // never started in CI). Best effort: a kernel without IPv6 has nothing to disable.
      const noIpv6 = 'for f in /proc/sys/net/ipv6/conf/all/disable_ipv6 /proc/sys/net/ipv6/conf/default/disable_ipv6; do [ -e $f ] && echo 1 > $f; done; true';
      await run('ip', ['netns', 'exec', ns.name, 'sh', '-c', noIpv6]);
      await run('ip', ['-n', ns.name, 'link', 'set', 'lo', 'up']);
      await run('ip', ['link', 'add', ns.hostIf, 'type', 'veth', 'peer', 'name', ns.peerIf, 'netns', ns.name]);
      await run('sh', ['-c', `f=/proc/sys/net/ipv6/conf/${ns.hostIf}/disable_ipv6; [ -e $f ] && echo 1 > $f; true`]);
      await run('ip', ['addr', 'add', `${ns.hostIp}/30`, 'dev', ns.hostIf]);
      await run('ip', ['-n', ns.name, 'addr', 'add', `${ns.peerIp}/30`, 'dev', ns.peerIf]);
      await run('ip', ['link', 'set', ns.hostIf, 'up']);
      await run('ip', ['-n', ns.name, 'link', 'set', ns.peerIf, 'up']);
      // Settled before any browser starts: no address still tentative on either side.
      for (let i = 0; i < 50; i += 1) {
        const addrs = (await run('ip', ['-n', ns.name, '-o', 'addr', 'show'])) + (await run('ip', ['-o', 'addr', 'show', 'dev', ns.hostIf]));
        if (!addrs.includes('tentative')) break;
        await new Promise((r) => setTimeout(r, 100));
      }
    } catch (e) {
      await ns.destroy().catch(() => {});
      throw e;
    }
    return ns;
  }

  exec(cmd, args, opts) {
    return run('ip', ['netns', 'exec', this.name, cmd, ...args], opts);
  }

  /**
   * Make 127.0.0.1:`port` inside the namespace reach `hostIp`:`port` (the
   * server's HTTP/WebSocket port), so a page opened there from a 127.0.0.1
   * link is a secure context exactly as in the caller's namespace.
   */
  async forwardTcp(port) {
    const p = spawn('ip', ['netns', 'exec', this.name, process.execPath, '-e', TCP_FORWARDER, String(port), this.hostIp], {
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    this.forwarders.push(p);
    helpers.add(p);
    p.once('exit', () => helpers.delete(p));
    let out = '';
    p.stdout.on('data', (d) => (out += d));
    p.stderr.on('data', (d) => (out += d));
    await waitUntil(
      () => {
        if (p.exitCode !== null) throw new Error(`TCP forwarder in ${this.name} exited ${p.exitCode}: ${out}`);
        return out.includes('ready');
      },
      { timeout: 15_000, interval: 50, what: `TCP forwarder 127.0.0.1:${port} → ${this.hostIp}:${port} in ${this.name}` },
    );
  }

  /**
   * Drop `percent` % of the UDP packets entering and (separately) leaving the
   * namespace — both directions of every browser's media path in it; TCP
   * (signalling) is left alone. Counted, so a test can prove loss happened.
   */
  async udpLoss(percent) {
    const perMille = Math.round(percent * 10);
    if (!(perMille > 0 && perMille < 1000)) throw new Error(`loss ${percent} % out of range`);
    const chain = (name, hook) =>
      ` chain ${name} {\n  type filter hook ${hook} priority -300; policy accept;\n` +
      `  meta l4proto udp counter\n  meta l4proto udp numgen random mod 1000 < ${perMille} counter drop\n }\n`;
    await this.exec('nft', ['-f', '-'], { input: `table inet sk_loss {\n${chain('down', 'prerouting')}${chain('up', 'output')}}\n` });
  }

  /**
   * Drop every DTLS record (a UDP datagram whose first byte is 20–63, RFC 7983)
   * entering or leaving the namespace; STUN and media pass. ICE connects, the
   * DTLS handshake never completes. Counted; `unblockDtls()` lifts it.
   */
  async blockDtls() {
    const chain = (name, hook) =>
      ` chain ${name} {\n  type filter hook ${hook} priority -300; policy accept;\n` +
      `  meta l4proto udp @th,64,8 20-63 counter drop\n }\n`;
    await this.exec('nft', ['-f', '-'], { input: `table inet sk_dtls {\n${chain('down', 'prerouting')}${chain('up', 'output')}}\n` });
  }
  /** DTLS datagrams `blockDtls` dropped so far, per direction ({ down, up }). */
  async dtlsDropped() {
    const out = await this.exec('nft', ['-j', 'list', 'table', 'inet', 'sk_dtls']);
    const res = {};
    for (const item of JSON.parse(out).nftables || []) {
      const counter = item.rule && item.rule.expr.find((e) => e.counter)?.counter;
      if (counter) res[item.rule.chain] = counter.packets;
    }
    return res;
  }
  async unblockDtls() {
    await this.exec('nft', ['delete', 'table', 'inet', 'sk_dtls']);
  }
  /**
   * Delay every UDP packet entering and leaving the namespace by `ms` ±
   * `jitterMs` (uniform), each way: the round trip of its browsers' media
   * grows by about 2 × `ms`.
   */
  async delayUdp({ ms = 20, jitterMs = 5 } = {}) {
    const queue = 7;
    const p = spawn('ip', ['netns', 'exec', this.name, PYTHON, '-c', NFQUEUE_DELAY, String(queue), String(ms), String(jitterMs)], {
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    this.delayer = p;
    this.forwarders.push(p);
    helpers.add(p);
    p.once('exit', () => helpers.delete(p));
    this.delayerOut = '';
    p.stdout.on('data', (d) => (this.delayerOut += d));
    p.stderr.on('data', (d) => (this.delayerOut += d));
    await waitUntil(
      () => {
        if (p.exitCode !== null) throw new Error(`NFQUEUE delayer in ${this.name} exited ${p.exitCode}: ${this.delayerOut}`);
        return this.delayerOut.includes('ready');
      },
      { timeout: 15_000, interval: 50, what: `NFQUEUE delayer in ${this.name}` },
    );
    // INPUT/OUTPUT run after udpLoss's chains (priority -300), so dropped packets are never queued.
    for (const chain of ['INPUT', 'OUTPUT']) {
      await this.exec('iptables-legacy', ['-A', chain, '-p', 'udp', '-j', 'NFQUEUE', '--queue-num', String(queue), '--queue-bypass']);
    }
  }

  /** Packets through `delayUdp`'s queue rules so far, and whether the delayer still runs (bypass would hide its death). */
  async delayStats() {
    const out = await this.exec('iptables-legacy', ['-L', '-n', '-v', '-x']);
    let queued = 0;
    for (const line of out.split('\n')) {
      if (line.includes('NFQUEUE')) queued += Number(line.trim().split(/\s+/)[0]) || 0;
    }
    return { queued, delayerRunning: !!this.delayer && this.delayer.exitCode === null && this.delayer.signalCode === null };
  }

  /** Per direction: { seen, dropped } UDP packets counted by `udpLoss`'s rules. */
  async lossCounters() {
    const out = await this.exec('nft', ['-j', 'list', 'table', 'inet', 'sk_loss']);
    const res = {};
    for (const item of JSON.parse(out).nftables || []) {
      const rule = item.rule;
      if (!rule) continue;
      const counter = rule.expr.find((e) => e.counter)?.counter;
      if (!counter) continue;
      const dir = (res[rule.chain] ||= { seen: 0, dropped: 0 });
      if (rule.expr.some((e) => 'drop' in e)) dir.dropped = counter.packets;
      else dir.seen = counter.packets;
    }
    return res;
  }

  /**
   * Cap everything sent towards the namespace (its browsers' downlink) at
   * `rate` with a token bucket; excess is queued up to `latency`, then dropped.
   */
  async capDownlink({ rate = '350kbit', burst = '10kb', latency = '200ms' } = {}) {
    await run('tc', ['qdisc', 'replace', 'dev', this.hostIf, 'root', 'tbf', 'rate', rate, 'burst', burst, 'latency', latency]);
  }

  /** tc's counters for the downlink cap: { sentBytes, sentPackets, dropped, overlimits }. */
  async capStats() {
    const out = await run('tc', ['-s', '-j', 'qdisc', 'show', 'dev', this.hostIf]);
    const q = JSON.parse(out).find((x) => x.kind === 'tbf');
    if (!q) return null;
    return { sentBytes: q.bytes, sentPackets: q.packets, dropped: q.drops, overlimits: q.overlimits };
  }

  /** Stop its helper processes and delete the namespace (with it the veth pair, qdiscs, nft and iptables rules). Idempotent. */
  async destroy() {
    if (this.destroyed) return;
    this.destroyed = true;
    for (const p of this.forwarders) {
      if (p.exitCode === null && p.signalCode === null) {
        const gone = new Promise((r) => p.once('exit', r));
        p.kill('SIGTERM');
        await Promise.race([gone, new Promise((r) => setTimeout(r, 3_000).unref())]);
        if (p.exitCode === null && p.signalCode === null) p.kill('SIGKILL');
      }
    }
    await run('ip', ['netns', 'del', this.name]);
    live.delete(this.name);
    // The host end goes with its peer once the kernel has torn the namespace
    // down (asynchronously); make sure, and say so if it lingers.
    const gone = async () => !(await run('ip', ['-o', 'link', 'show', 'dev', this.hostIf]).catch(() => '')).trim();
    const isGone = await waitUntil(gone, { timeout: 10_000, interval: 100, what: `${this.hostIf} gone` }).catch(() => false);
    if (!isGone) {
      await run('ip', ['link', 'del', this.hostIf]).catch(() => {});
      throw new Error(`veth ${this.hostIf} outlived namespace ${this.name} (deleted now)`);
    }
  }
}

/** A PeerNamespace that the scenario removes at cleanup (after its browsers and servers). */
export async function peerNamespace(sc, opts) {
  const ns = await PeerNamespace.create(opts);
  sc.defer(() => ns.destroy());
  return ns;
}
