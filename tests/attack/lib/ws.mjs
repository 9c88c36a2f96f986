// A deliberately small WebSocket client on a raw TCP socket, so an attack
// controls every byte and can stop reading (a library client always reads).
// Speaks just enough of RFC 6455 for docs/PROTOCOL.md: masked text, ping and
// close frames out; unmasked text, pong and close frames in.

import crypto from 'node:crypto';
import net from 'node:net';

/** One masked client frame. */
export function frame(opcode, payload = Buffer.alloc(0)) {
  const body = Buffer.isBuffer(payload) ? payload : Buffer.from(payload, 'utf8');
  const mask = crypto.randomBytes(4);
  let header;
  if (body.length < 126) {
    header = Buffer.from([0x80 | opcode, 0x80 | body.length]);
  } else if (body.length < 65536) {
    header = Buffer.alloc(4);
    header[0] = 0x80 | opcode;
    header[1] = 0x80 | 126;
    header.writeUInt16BE(body.length, 2);
  } else {
    header = Buffer.alloc(10);
    header[0] = 0x80 | opcode;
    header[1] = 0x80 | 127;
    header.writeBigUInt64BE(BigInt(body.length), 2);
  }
  const masked = Buffer.alloc(body.length);
  for (let i = 0; i < body.length; i++) masked[i] = body[i] ^ mask[i & 3];
  return Buffer.concat([header, mask, masked]);
}

export const OP = { text: 1, binary: 2, close: 8, ping: 9, pong: 10 };

/** The HTTP upgrade request for `path` on `host:port`. */
export function upgradeRequest(host, port, path = '/ws') {
  const key = crypto.randomBytes(16).toString('base64');
  return (
    `GET ${path} HTTP/1.1\r\nHost: ${host}:${port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n` +
    `Sec-WebSocket-Key: ${key}\r\nSec-WebSocket-Version: 13\r\nUser-Agent: spreekkamer-attack\r\n\r\n`
  );
}

/**
 * A connected, upgraded WebSocket. `messages` collects parsed JSON text
 * messages; `closed` resolves when the socket ends. `localAddress` picks the
 * source address (any 127.0.0.0/8 address works on loopback).
 */
export class Ws {
  constructor(socket) {
    this.socket = socket;
    this.messages = [];
    this.waiters = [];
    this.buf = Buffer.alloc(0);
    this.closed = new Promise((resolve) => socket.once('close', resolve));
    this.isClosed = false;
    socket.once('close', () => {
      this.isClosed = true;
      for (const w of this.waiters.splice(0)) w.check();
    });
    socket.on('error', () => {});
    socket.on('data', (d) => this.onData(d));
  }

  static connect({ host = '127.0.0.1', port, path = '/ws', localAddress, timeout = 10_000 }) {
    return new Promise((resolve, reject) => {
      const socket = net.connect({ host, port, localAddress });
      let head = Buffer.alloc(0);
      const timer = setTimeout(() => {
        socket.destroy();
        reject(new Error(`WebSocket upgrade to ${host}:${port} timed out after ${timeout} ms`));
      }, timeout);
      const onData = (d) => {
        head = Buffer.concat([head, d]);
        const end = head.indexOf('\r\n\r\n');
        if (end < 0) return;
        clearTimeout(timer);
        socket.off('data', onData);
        socket.off('error', onError);
        const status = head.subarray(0, end).toString('latin1').split('\r\n')[0];
        if (!/^HTTP\/1\.1 101/.test(status)) {
          socket.destroy();
          reject(new Error(`upgrade refused: ${status}`));
          return;
        }
        const ws = new Ws(socket);
        const rest = head.subarray(end + 4);
        if (rest.length) ws.onData(rest);
        resolve(ws);
      };
      const onError = (e) => {
        clearTimeout(timer);
        reject(e);
      };
      socket.on('data', onData);
      socket.once('error', onError);
      socket.once('connect', () => socket.write(upgradeRequest(host, port, path)));
    });
  }

  onData(d) {
    this.buf = this.buf.length ? Buffer.concat([this.buf, d]) : d;
    for (;;) {
      if (this.buf.length < 2) return;
      const opcode = this.buf[0] & 0x0f;
      let len = this.buf[1] & 0x7f;
      let off = 2;
      if (len === 126) {
        if (this.buf.length < 4) return;
        len = this.buf.readUInt16BE(2);
        off = 4;
      } else if (len === 127) {
        if (this.buf.length < 10) return;
        len = Number(this.buf.readBigUInt64BE(2));
        off = 10;
      }
      if (this.buf.length < off + len) return;
      const payload = this.buf.subarray(off, off + len);
      this.buf = this.buf.subarray(off + len);
      if (opcode === OP.text) {
        try {
          this.messages.push(JSON.parse(payload.toString('utf8')));
        } catch {
          this.messages.push({ type: '(not json)', raw: payload.toString('utf8') });
        }
        for (const w of this.waiters.slice()) w.check();
      }
    }
  }

  send(obj) {
    if (!this.isClosed) this.socket.write(frame(OP.text, JSON.stringify(obj)));
  }

  /**
   * The first message (from index `from` on) that `pred` accepts; rejects on
   * timeout or when the socket closes first.
   */
  next(pred, { timeout = 10_000, from = 0, what = 'message' } = {}) {
    return new Promise((resolve, reject) => {
      const w = {
        check: () => {
          const m = this.messages.slice(from).find(pred);
          if (m) {
            done();
            resolve(m);
          } else if (this.isClosed) {
            done();
            reject(new Error(`socket closed while waiting for ${what}; got ${JSON.stringify(this.messages.map((x) => x.type))}`));
          }
        },
      };
      const timer = setTimeout(() => {
        done();
        reject(new Error(`no ${what} within ${timeout} ms; got ${JSON.stringify(this.messages.map((x) => x.type))}`));
      }, timeout);
      const done = () => {
        clearTimeout(timer);
        this.waiters = this.waiters.filter((x) => x !== w);
      };
      this.waiters.push(w);
      w.check();
    });
  }

  ofType(type, opts = {}) {
    return this.next((m) => m.type === type, { what: `'${type}'`, ...opts });
  }

  close() {
    this.socket.destroy();
  }
}

/** Open a WebSocket and `join` with `token`; resolves with { ws, welcome } or rejects with the error message. */
export async function join({ port, token, localAddress, timeout = 10_000 }) {
  const ws = await Ws.connect({ port, localAddress, timeout });
  ws.send({ type: 'join', v: 1, token });
  const first = await ws.next((m) => m.type === 'welcome' || m.type === 'error', { timeout, what: 'welcome or error' });
  if (first.type === 'error') {
    ws.close();
    const e = new Error(`join refused: ${first.code}`);
    e.code = first.code;
    throw e;
  }
  return { ws, welcome: first };
}
