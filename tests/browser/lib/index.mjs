// The browser-test harness, one import for test files:
//   import { scenario, assert, ... } from './lib/index.mjs';
export { default as assert } from 'node:assert/strict';
export * from './jwt.mjs';
export * from './server.mjs';
export * from './wait.mjs';
export { Browsers, CHROMIUM_ARGS, CHROMIUM_PATH, FIREFOX_PATH, firefoxPrefs } from './browsers.mjs';
export { Participant } from './participant.mjs';
export { scenario, Scenario, DEFAULT_TIMEOUT } from './scenario.mjs';
export * from './checks.mjs';
export { axeScan, formatViolations } from './axe.mjs';
