// The page's safety net for the case the application itself never starts: a
// script that failed to download (a dropped connection, a proxy), or one that
// stopped with an error before it was ready. Without it the person would look
// at a Join button that does nothing. A plain script (not a module), loaded
// before the application, with its two texts inline: it cannot rely on the
// modules it watches.
//
// The application marks itself ready with `<html data-app="ready">` (app.js,
// test.js). If a script fails before that, the page reloads once by itself
// (most failures are one lost request); if it fails again within a minute, or
// the application is not ready 30 s after the page was parsed, the page says
// so, in the person's language, with a button to reload.
(function boot() {
  'use strict';
  var RETRY_KEY = 'spreekkamer-boot-retry';
  var WATCHDOG_MS = 30000;
  var TEXTS = {
    nl: {
      heading: 'De pagina is niet goed geladen',
      text: 'Een deel van deze pagina kwam niet binnen. Controleer uw internetverbinding en laad de pagina opnieuw. Lukt het dan nog niet? Neem contact op met uw zorgverlener.',
      button: 'Pagina opnieuw laden',
    },
    en: {
      heading: 'The page did not load properly',
      text: 'Part of this page did not arrive. Check your internet connection and reload the page. If it still does not work, contact your care provider.',
      button: 'Reload the page',
    },
  };
  var given = false;
  var timer = null;

  function ready() {
    return document.documentElement.getAttribute('data-app') === 'ready';
  }

  function language() {
    // As i18n.js's detectLanguage: the first of nl/en the browser asks for, else English.
    var langs = navigator.languages && navigator.languages.length ? navigator.languages : [navigator.language || ''];
    for (var i = 0; i < langs.length; i++) {
      var l = String(langs[i]).toLowerCase();
      if (l.indexOf('nl') === 0) return 'nl';
      if (l.indexOf('en') === 0) return 'en';
    }
    return 'en';
  }

  function lastRetry() {
    try { return Number(window.sessionStorage.getItem(RETRY_KEY)) || 0; } catch (e) { return Date.now(); }
  }

  function giveUp(why, reload) {
    if (given || ready()) return;
    given = true;
    clearTimeout(timer);
    // One automatic reload a minute after a failed script: a single lost
    // request is the usual cause. Not after the watchdog: on a slow line the
    // scripts may still be arriving (and the application, once it starts,
    // takes this message away).
    if (reload && Date.now() - lastRetry() > 60000) {
      try {
        window.sessionStorage.setItem(RETRY_KEY, String(Date.now()));
        console.warn('spreekkamer: the page did not start (' + why + '); reloading once');
        window.location.reload();
        return;
      } catch (e) { /* no session storage: show the message instead */ }
    }
    console.warn('spreekkamer: the page did not start (' + why + ')');
    var lang = language();
    var texts = TEXTS[lang];
    document.documentElement.lang = lang;
    var views = document.querySelectorAll('.view');
    for (var i = 0; i < views.length; i++) views[i].hidden = true;
    var join = document.getElementById('join-button');
    if (join) join.disabled = true;
    var box = document.getElementById('error');
    if (!box) return;
    document.getElementById('error-heading').textContent = texts.heading;
    document.getElementById('error-text').textContent = texts.text;
    var again = document.getElementById('error-retry');
    again.textContent = texts.button;
    again.hidden = false;
    again.addEventListener('click', function () { window.location.reload(); });
    box.setAttribute('data-code', 'page_load_failed');
    box.hidden = false;
    document.body.setAttribute('data-state', 'error');
    box.tabIndex = -1;
    box.focus();
  }

  // A script of this page that could not be fetched (a module graph that
  // failed fires `error` at its <script>), or an error thrown before ready.
  window.addEventListener('error', function (ev) {
    if (ready()) return;
    var el = ev.target;
    if (el && el.tagName === 'SCRIPT') giveUp('script ' + (el.getAttribute('src') || '') + ' failed to load', true);
    else if (ev.error || ev.message) giveUp('error before start: ' + (ev.message || ev.error), true);
  }, true);

  function watch() {
    timer = setTimeout(function () { giveUp('not ready after ' + WATCHDOG_MS / 1000 + ' s', false); }, WATCHDOG_MS);
  }
  if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', watch);
  else watch();
}());
