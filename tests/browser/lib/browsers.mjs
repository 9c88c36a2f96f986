// Real browsers with fake camera and microphone: Debian's Chromium driven by
// playwright-core, Debian's Firefox ESR driven by puppeteer-core over
// WebDriver BiDi. Both sit behind the same small `Participant` wrapper so a
// test reads the same whichever browser a participant uses. No browser is
// ever downloaded: the system binaries are used (and must exist).

import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { chromium as pwChromium } from 'playwright-core';
import puppeteer from 'puppeteer-core';
import { Participant } from './participant.mjs';

export const CHROMIUM_PATH = process.env.CHROMIUM_PATH || '/usr/bin/chromium';
export const FIREFOX_PATH = process.env.FIREFOX_PATH || '/usr/bin/firefox-esr';

export const CHROMIUM_ARGS = [
  '--headless=new',
  '--no-sandbox',
  '--disable-gpu',
  '--use-fake-device-for-media-stream',
  '--use-fake-ui-for-media-stream',
  '--allow-loopback-in-peer-connection',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
  '--no-first-run',
  // Several participants share one browser: none of their pages may be
  // throttled as a "background" tab while the test watches another.
  '--disable-renderer-backgrounding',
  '--disable-background-timer-throttling',
  '--disable-backgrounding-occluded-windows',
];

/** Prefs for a headless, offline, quiet Firefox with fake media and loopback ICE. */
export function firefoxPrefs({ lang = 'en-US' } = {}) {
  return {
    'media.navigator.streams.fake': true,
    'media.navigator.permission.disabled': true,
    'media.peerconnection.ice.loopback': true,
    // Measured trap: with only `permission.disabled`, Firefox treats the page as
    // having no camera permission and gathers only its "default route" address —
    // none exists in the loopback-only test namespace, so ICE fails at once
    // ("failed to find default addresses"). A granted default permission lifts
    // that, exactly as a person clicking "allow" would.
    'permissions.default.camera': 1,
    'permissions.default.microphone': 1,
    // The test network has only loopback: no mDNS obfuscation of host candidates, no proxy.
    'media.peerconnection.ice.obfuscate_host_addresses': false,
    'network.proxy.type': 0,
    'intl.accept_languages': lang,
    'intl.locale.requested': lang,
    // Remote audio/video must play without a gesture on the test's behalf.
    'media.autoplay.default': 0,
    'media.autoplay.blocking_policy': 0,
    // Nothing phones home (puppeteer sets most of these; repeated to be explicit).
    'app.update.enabled': false,
    'app.update.auto': false,
    'browser.shell.checkDefaultBrowser': false,
    'datareporting.policy.dataSubmissionEnabled': false,
    'datareporting.healthreport.uploadEnabled': false,
    'toolkit.telemetry.enabled': false,
    'browser.safebrowsing.malware.enabled': false,
    'browser.safebrowsing.phishing.enabled': false,
    'extensions.update.enabled': false,
    'browser.search.update': false,
    'network.captive-portal-service.enabled': false,
    'network.connectivity-service.enabled': false,
    'browser.newtabpage.enabled': false,
    'browser.startup.homepage': 'about:blank',
  };
}

/**
 * A browser "pool" for one test: Chromium is launched once and every
 * participant gets its own fresh context (separate storage, like a separate
 * person); Firefox is launched once per participant with its own profile.
 * `close()` ends everything it started.
 */
export class Browsers {
  constructor() {
    this.chromium = null;
    // netns name → a Chromium launched inside that network namespace (see newChromium's `netns`).
    this.nsChromiums = new Map();
    // Chromiums with a camera setup of their own (see newChromium's `cameras`).
    this.ownChromiums = [];
    this.firefoxes = [];
    this.participants = [];
    this.tmpDirs = [];
  }

  async #chromium() {
    if (!this.chromium) {
      if (!fs.existsSync(CHROMIUM_PATH)) throw new Error(`${CHROMIUM_PATH} missing (apt-get install chromium)`);
      this.chromium = await pwChromium.launch({
        executablePath: CHROMIUM_PATH,
        headless: true,
        args: CHROMIUM_ARGS,
        timeout: 60_000,
      });
    }
    return this.chromium;
  }

  /**
   * A Chromium running inside network namespace `netns` (lib/netem.mjs makes
   * them): launched through `ip netns exec`, so its sockets see only that
   * namespace's links — which a test can shape or make lossy for this browser
   * alone. playwright talks to it over inherited pipes, which survive the exec.
   */
  async #nsChromium(netns) {
    if (!/^[A-Za-z0-9_.-]{1,64}$/.test(netns)) throw new Error(`bad netns name ${JSON.stringify(netns)}`);
    let browser = this.nsChromiums.get(netns);
    if (!browser) {
      if (!fs.existsSync(CHROMIUM_PATH)) throw new Error(`${CHROMIUM_PATH} missing (apt-get install chromium)`);
      const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'spreekkamer-nsch-'));
      this.tmpDirs.push(dir);
      const wrapper = path.join(dir, 'chromium-in-netns');
      fs.writeFileSync(wrapper, `#!/bin/sh\nexec ip netns exec '${netns}' '${CHROMIUM_PATH}' "$@"\n`, { mode: 0o755 });
      browser = await pwChromium.launch({ executablePath: wrapper, headless: true, args: CHROMIUM_ARGS, timeout: 60_000 });
      this.nsChromiums.set(netns, browser);
    }
    return browser;
  }

  /** A Chromium of its own whose fake capture offers `cameras` cameras (fake_device_0, _1, ...). */
  async #camerasChromium(cameras) {
    if (!Number.isInteger(cameras) || cameras < 1 || cameras > 4) throw new Error(`bad camera count ${cameras}`);
    const args = CHROMIUM_ARGS.map((a) => (a === '--use-fake-device-for-media-stream' ? `${a}=device-count=${cameras}` : a));
    const browser = await pwChromium.launch({ executablePath: CHROMIUM_PATH, headless: true, args, timeout: 60_000 });
    this.ownChromiums.push(browser);
    return browser;
  }

  /**
   * A participant in a fresh Chromium context. `lang` sets navigator.languages;
   * `javaScript: false` turns scripts off (what a locked-down browser does);
   * `netns` runs it in a Chromium inside that network namespace; `cameras`
   * (other than 1) in a Chromium of its own with that many fake cameras.
   */
  async newChromium({ name = 'chromium', lang = 'en-US', netns = null, viewport = { width: 1000, height: 700 }, deviceScaleFactor = 1, phone = false, cameras = 1, javaScript = true } = {}) {
    let browser;
    if (netns) browser = await this.#nsChromium(netns);
    else if (cameras !== 1) browser = await this.#camerasChromium(cameras);
    else browser = await this.#chromium();
    // `phone`: a touch screen that reports itself as mobile (meta viewport honoured).
    const mobile = phone ? { isMobile: true, hasTouch: true } : {};
    const context = await browser.newContext({ locale: lang, viewport, deviceScaleFactor, ...mobile, javaScriptEnabled: javaScript });
    const page = await context.newPage();
    const p = new Participant({ page, name, kind: 'chromium', close: () => context.close() });
    this.participants.push(p);
    return p;
  }

  /** A participant in its own headless Firefox ESR (WebDriver BiDi). */
  async newFirefox({ name = 'firefox', lang = 'en-US' } = {}) {
    if (!fs.existsSync(FIREFOX_PATH)) throw new Error(`${FIREFOX_PATH} missing (apt-get install firefox-esr)`);
    const userDataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'spreekkamer-ff-'));
    this.tmpDirs.push(userDataDir);
    const browser = await puppeteer.launch({
      browser: 'firefox',
      executablePath: FIREFOX_PATH,
      headless: true,
      userDataDir,
      extraPrefsFirefox: firefoxPrefs({ lang }),
      defaultViewport: { width: 1000, height: 700 },
      timeout: 90_000,
      protocolTimeout: 120_000,
    });
    this.firefoxes.push(browser);
    const pages = await browser.pages();
    const page = pages[0] ?? (await browser.newPage());
    const p = new Participant({ page, name, kind: 'firefox', close: () => browser.close() });
    this.participants.push(p);
    return p;
  }

  /** Create a participant in the named browser ('chromium' | 'firefox'). */
  async newParticipant(kind, opts) {
    if (kind === 'chromium') return this.newChromium(opts);
    if (kind === 'firefox') return this.newFirefox(opts);
    throw new Error(`unknown browser ${kind}`);
  }

  async close() {
    const errs = [];
    for (const p of this.participants) await p.close().catch((e) => errs.push(e));
    for (const b of this.firefoxes) await b.close().catch(() => {});
    if (this.chromium) await this.chromium.close().catch((e) => errs.push(e));
    for (const b of this.nsChromiums.values()) await b.close().catch((e) => errs.push(e));
    this.nsChromiums.clear();
    for (const b of this.ownChromiums) await b.close().catch((e) => errs.push(e));
    this.ownChromiums = [];
    for (const d of this.tmpDirs) fs.rmSync(d, { recursive: true, force: true });
    this.participants = [];
    this.firefoxes = [];
    this.chromium = null;
    return errs;
  }
}
