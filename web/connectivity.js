// The connection test: does media reach the media server, and how? UDP
// first, then TCP, then through the TURN server if the server offers one
// (docs/PROTOCOL.md, "Connectivity check"; docs/TURN.md). The test page
// (/test) runs it without a token, as an anonymous probe. No DOM here.

import { probeConnectivity } from './protocol.js';

/** The direct UDP check may take this long before TCP is tried. */
export const UDP_PROBE_TIMEOUT_MS = 10000;
/** The TCP and relay checks (the server gives up after 15 s itself). */
export const TCP_PROBE_TIMEOUT_MS = 15000;

/**
 * Run the checks in turn until one connects. Resolves to
 *   {result: 'udp' | 'tcp' | 'relay' | 'failed', ports}
 *   {result: 'unknown', code, ports}   the server refused the check itself
 *                                      (`code`, e.g. rate_limited): says nothing about the network
 *   {result: 'aborted'}                `signal` fired
 * `ports` ({udp: [], tcp: []}) are the ports the server's offer named: what
 * an IT department must open. `probe` is injectable for tests.
 */
export async function checkConnection({ token, signal = null, probe = probeConnectivity } = {}) {
  const run = (transport, timeoutMs) => probe({ token, transport, timeoutMs, signal });
  const udp = await run('udp', UDP_PROBE_TIMEOUT_MS);
  if (udp.outcome === 'aborted' || (signal && signal.aborted)) return { result: 'aborted' };
  // With relay forced by the server, the UDP check already went through TURN.
  if (udp.outcome === 'connected') return { result: udp.relay ? 'relay' : 'udp', ports: udp.ports };
  if (udp.outcome === 'error') return { result: 'unknown', code: udp.code, ports: udp.ports };
  // Relay forced: TCP to the media server cannot be relayed; the TURN check was the one.
  const tcp = udp.relay ? { outcome: 'not-connected', reason: 'failed', ports: udp.ports } : await run('tcp', TCP_PROBE_TIMEOUT_MS);
  if (tcp.outcome === 'aborted' || (signal && signal.aborted)) return { result: 'aborted' };
  const ports = {
    udp: udp.ports.udp.length ? udp.ports.udp : tcp.ports.udp,
    tcp: tcp.ports.tcp.length ? tcp.ports.tcp : udp.ports.tcp,
  };
  if (tcp.outcome === 'connected') return { result: 'tcp', ports };
  if (tcp.outcome === 'error') return { result: 'unknown', code: tcp.code, ports };
  if (udp.turn && !udp.relay) {
    const relay = await run('relay', TCP_PROBE_TIMEOUT_MS);
    if (relay.outcome === 'aborted' || (signal && signal.aborted)) return { result: 'aborted' };
    if (relay.outcome === 'connected') return { result: 'relay', ports };
  }
  return { result: 'failed', ports };
}

/** Ports for people: "3478", "50000–50001", "443, 3478". Pure, for tests. */
export function formatPorts(ports) {
  if (!Array.isArray(ports) || ports.length === 0) return '';
  const contiguous = ports.every((p, i) => i === 0 || p === ports[i - 1] + 1);
  if (ports.length > 2 && contiguous) return `${ports[0]}–${ports[ports.length - 1]}`;
  return ports.join(', ');
}

/**
 * The plain-language failure text with the ports named when known, through
 * the page's `t`: `connectivity.failed` with `{ports}`, else `connectivity.failedNoPorts`.
 */
export function failedText(t, ports) {
  const udp = formatPorts(ports && ports.udp);
  const tcp = formatPorts(ports && ports.tcp);
  const key = udp && tcp ? 'connectivity.ports' : udp ? 'connectivity.portsUdp' : tcp ? 'connectivity.portsTcp' : null;
  return key ? t('connectivity.failed', { ports: t(key, { udp, tcp }) }) : t('connectivity.failedNoPorts');
}
