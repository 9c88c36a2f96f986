// `scenario()` wraps a node:test test with what every browser test needs:
// its own server(s) and browsers, a hard time limit, and on failure the
// evidence (screenshots, console logs, page state, server output and audit
// log) saved under tests/browser/out/ with the path printed. Everything it
// started is stopped afterwards; each server must then exit 0 on SIGTERM
// within a few seconds (graceful shutdown), or the test fails.

import fs from 'node:fs';
import path from 'node:path';
import { test } from 'node:test';
import { Browsers } from './browsers.mjs';
import { outDir, startServer, tail } from './server.mjs';
import { slowdown } from './wait.mjs';

export const DEFAULT_TIMEOUT = 180_000;

const slug = (s) => s.replace(/[^a-zA-Z0-9]+/g, '-').replace(/^-|-$/g, '').slice(0, 60);

export class Scenario {
  constructor(t, name) {
    this.t = t;
    this.name = name;
    this.browsers = new Browsers();
    this.servers = [];
    this.shutdownChecked = new Set();
    this.deferred = [];
  }

  /**
   * Run `fn` at cleanup, after browsers and servers have stopped (so nothing
   * still uses what it tears down, e.g. a network namespace), also on failure;
   * last registered runs first.
   */
  defer(fn) {
    this.deferred.push(fn);
  }

  log(msg) {
    this.t.diagnostic(msg);
  }

  async startServer(opts = {}) {
    const s = await startServer({ name: slug(this.name).slice(0, 20), ...opts });
    this.servers.push(s);
    return s;
  }

  chromium(name, opts = {}) {
    return this.browsers.newChromium({ name, ...opts });
  }

  firefox(name, opts = {}) {
    return this.browsers.newFirefox({ name, ...opts });
  }

  participant(kind, name, opts = {}) {
    return this.browsers.newParticipant(kind, { name, ...opts });
  }

  /**
   * SIGTERM a server now and return how it ended; the test asserts on it.
   * (Servers not stopped by the test are stopped and checked at cleanup.)
   */
  async stopServer(server, opts) {
    this.shutdownChecked.add(server);
    return server.stop(opts);
  }

  /** SIGKILL a server (a crash); it is not checked for a graceful exit at cleanup. */
  async killServer(server) {
    this.shutdownChecked.add(server);
    return server.kill();
  }

  async saveArtifacts(reason) {
    const dir = path.join(outDir, `${slug(this.name)}-${new Date().toISOString().replace(/[:.]/g, '-')}`);
    fs.mkdirSync(dir, { recursive: true });
    fs.writeFileSync(path.join(dir, 'failure.txt'), `${reason && reason.stack ? reason.stack : reason}\n`);
    for (const p of this.browsers.participants) {
      await p.saveArtifacts(dir, 'browser').catch(() => {});
    }
    this.servers.forEach((s, i) => {
      fs.writeFileSync(path.join(dir, `server${i}.log`), s.logs());
      fs.writeFileSync(path.join(dir, `server${i}.audit.log`), s.auditText());
      fs.writeFileSync(path.join(dir, `server${i}.args.txt`), s.args.join(' ').replace(s.secret, '<secret>') + '\n');
    });
    return dir;
  }

  async cleanup(failed) {
    const problems = [];
    const errs = await this.browsers.close();
    if (errs.length && !failed) this.log(`browser close errors (ignored): ${errs.map((e) => e.message).join('; ')}`);
    for (const s of this.servers) {
      if (this.shutdownChecked.has(s)) continue;
      const r = await s.stop({ timeoutMs: 8_000 });
      if (r.killed) problems.push(`server on ${s.url} did not exit within 8 s of SIGTERM (killed)`);
      else if (r.code !== 0) problems.push(`server on ${s.url} exited with ${JSON.stringify(r)} on SIGTERM, expected code 0`);
    }
    for (const fn of this.deferred.reverse()) {
      try {
        await fn();
      } catch (e) {
        problems.push(`cleanup failed: ${e.message}`);
      }
    }
    this.deferred = [];
    return problems;
  }
}

/**
 * Define a browser test. `fn(sc)` gets a Scenario. Time limit: `timeout` ms
 * (default 3 min) times SPREEKKAMER_TEST_SLOWDOWN.
 */
export function scenario(name, opts, fn) {
  if (typeof opts === 'function') [fn, opts] = [opts, {}];
  const limit = (opts.timeout ?? DEFAULT_TIMEOUT) * slowdown;
  // node:test's own timeout is only a backstop: ours fires first so evidence is saved and things are closed.
  test(name, { ...opts, timeout: limit + 60_000 }, async (t) => {
    const sc = new Scenario(t, name);
    let timer;
    let failure = null;
    try {
      await Promise.race([
        fn(sc),
        new Promise((_, reject) => {
          timer = setTimeout(() => reject(new Error(`scenario "${name}" exceeded its ${limit} ms limit`)), limit);
        }),
      ]);
    } catch (e) {
      failure = e;
    } finally {
      clearTimeout(timer);
    }
    if (!failure && process.env.SPREEKKAMER_TEST_KEEP_EVIDENCE === '1') {
      const dir = await sc.saveArtifacts(new Error('passed (evidence kept on request)')).catch((e) => `(not saved: ${e.message})`);
      sc.log(`evidence kept in ${dir}`);
    }
    if (failure) {
      const dir = await sc.saveArtifacts(failure).catch((e) => `(could not save artifacts: ${e.message})`);
      const msg = [`FAILED: ${name}`, `evidence saved in ${dir}`];
      sc.servers.forEach((s, i) => msg.push(`--- server${i} output (last lines; full: ${s.logFile}) ---`, tail(s.logs(), 40)));
      console.error(msg.join('\n'));
      sc.log(`evidence saved in ${dir}`);
    }
    const problems = await sc.cleanup(!!failure);
    if (failure) throw failure;
    if (problems.length) {
      const dir = await sc.saveArtifacts(problems.join('\n')).catch(() => '');
      throw new Error(`${problems.join('\n')}\nevidence: ${dir}`);
    }
  });
}
