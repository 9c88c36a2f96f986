// A page whose scripts did not all arrive (web/boot.js), in headless Chromium
// against the real release binary: one module of the application is made to
// fail (the browser reports a network error for it, as for a dropped
// connection). Join stays disabled until the application has started; the
// page reloads itself once; when the module fails again the person gets a
// clear message in their language with a reload button, and that button
// brings back a working page once the network does. With JavaScript off
// altogether, the page says so in both languages and Join stays disabled.

import crypto from 'node:crypto';
import { assert, scenario } from './lib/index.mjs';

const newConsult = () => `boot-${crypto.randomBytes(6).toString('hex')}`;

/** What the person sees of the start: the app's mark, the state, Join, the error box. */
function bootView() {
  const join = document.getElementById('join-button');
  const err = document.getElementById('error');
  const retry = document.getElementById('error-retry');
  return {
    app: document.documentElement.dataset.app || null,
    lang: document.documentElement.lang,
    state: document.body.dataset.state || null,
    joinEnabled: !!join && !join.disabled && !join.closest('[hidden]'),
    error: err && !err.hidden ? { code: err.dataset.code || null, heading: document.getElementById('error-heading').textContent, text: document.getElementById('error-text').textContent } : null,
    retry: retry && !retry.hidden ? retry.textContent : null,
    focused: document.activeElement ? document.activeElement.id : null,
  };
}

/** Wait until the page shows its page-load error; returns `bootView()`. */
async function waitForLoadError(p) {
  let view;
  await p.waitFor(async () => {
    view = await p.evaluate(bootView);
    return view.error !== null;
  }, { what: 'the page-load error', timeout: 30_000, describe: () => JSON.stringify(view) });
  return view;
}

scenario('a script that fails to load: Join stays off, the page reloads once, then says so in the person\'s language and its button recovers', { timeout: 120_000 }, async (sc) => {
  const server = await sc.startServer({ args: ['--waiting-room=false'] });
  const link = await server.link({ consult: newConsult(), role: 'patient', name: 'Mevr. de Vries' });
  const p = await sc.chromium('patient', { lang: 'en-US' });

  // present.js is imported by app.js: while it fails, the application cannot start.
  let fail = true;
  const attempts = [];
  await p.page.route(/\/present\.js(\?|$)/, (route) => {
    attempts.push(Date.now());
    return fail ? route.abort('connectionreset') : route.continue();
  });
  // The HTML alone, before any script runs: Join is disabled.
  const raw = await (await fetch(`${server.url}/c`)).text();
  assert.match(raw, /<button id="join-button"[^>]*\sdisabled[\s>]/, 'Join must be disabled in the page until the application enables it');

  // Page loads, counted as navigations of the tab (a load may ask for
  // present.js twice: its <link rel="modulepreload"> and then the import).
  const loads = [];
  p.page.on('request', (r) => { if (r.isNavigationRequest() && r.frame() === p.page.mainFrame()) loads.push(r.url()); });

  await p.page.goto(link, { waitUntil: 'load' });
  let view = await waitForLoadError(p);
  // Two loads: the first and the one automatic reload, each of which tried present.js.
  assert.equal(loads.length, 2, `the page loaded ${loads.length} times (first load + one automatic reload expected): ${loads.join(', ')}`);
  assert.ok(attempts.length >= loads.length, `present.js requested ${attempts.length} times over ${loads.length} loads`);
  assert.equal(view.app, null, 'the application must not have started');
  assert.equal(view.state, 'error');
  assert.equal(view.joinEnabled, false, `Join must not be usable: ${JSON.stringify(view)}`);
  assert.equal(view.error.code, 'page_load_failed');
  assert.equal(view.lang, 'en');
  assert.equal(view.error.heading, 'The page did not load properly');
  assert.match(view.error.text, /Check your internet connection and reload the page/);
  assert.equal(view.retry, 'Reload the page');
  assert.equal(view.focused, 'error', 'the message takes the focus (screen readers announce it)');
  assert.ok(p.consoleLines.some((l) => /REQUEST FAILED: GET .*present\.js/.test(l)), `the harness logs the failed request: ${p.consoleLines.join('\n')}`);

  // A page that stays broken does not reload itself again (no reload loop).
  const triedBefore = attempts.length;
  await new Promise((r) => setTimeout(r, 2_000));
  assert.equal(loads.length, 2, 'no second automatic reload');
  assert.equal(attempts.length, triedBefore, 'and no further try of the script');

  // The network is back; the person presses the button: a working page.
  fail = false;
  await p.page.click('#error-retry');
  await p.waitFor(async () => {
    view = await p.evaluate(bootView);
    return view.app === 'ready' && view.state === 'preview' && view.joinEnabled;
  }, { what: 'the application after "Reload the page"', timeout: 30_000, describe: () => JSON.stringify(view) });
  assert.equal(view.error, null);
  await p.join();
  sc.log(`present.js requests: ${attempts.length}; after the reload button the patient joined (${await p.state()})`);
});

scenario('Dutch: a script that fails to load gives the message in Dutch', { timeout: 90_000 }, async (sc) => {
  const server = await sc.startServer({ args: ['--waiting-room=false'] });
  const link = await server.link({ consult: newConsult(), role: 'patient', name: 'Mevr. de Vries' });
  const p = await sc.chromium('patient', { lang: 'nl-NL' });
  await p.page.route(/\/i18n\.js(\?|$)/, (route) => route.abort('connectionreset'));
  await p.page.goto(link, { waitUntil: 'load' });
  const view = await waitForLoadError(p);
  assert.equal(view.lang, 'nl');
  assert.equal(view.error.heading, 'De pagina is niet goed geladen');
  assert.equal(view.retry, 'Pagina opnieuw laden');
  assert.equal(view.joinEnabled, false);
});

scenario('JavaScript turned off: the page says the call needs it, in Dutch and English, and Join stays disabled', { timeout: 60_000 }, async (sc) => {
  const server = await sc.startServer({ args: ['--waiting-room=false'] });
  const link = await server.link({ consult: newConsult(), role: 'patient', name: 'Mevr. de Vries' });
  const p = await sc.chromium('patient', { lang: 'nl-NL', javaScript: false });
  await p.page.goto(link, { waitUntil: 'load' });
  // No page.evaluate without scripts: read what is rendered through the accessibility-neutral DOM API.
  const notice = p.page.locator('#noscript');
  assert.equal(await notice.isVisible(), true, 'the no-JavaScript notice is shown');
  const text = (await notice.innerText()).replace(/\s+/g, ' ');
  assert.match(text, /Voor het videogesprek is JavaScript nodig/);
  assert.match(text, /The video call needs JavaScript/);
  assert.equal(await p.page.locator('#join-button').isDisabled(), true, 'Join must not look usable');
  const box = await notice.boundingBox();
  assert.ok(box && box.y < 700 && box.height > 20, `the notice is in the first screen: ${JSON.stringify(box)}`);
});
