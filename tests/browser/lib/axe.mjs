// Accessibility scans with axe-core inside the page under test (issue 4:
// "an axe-core scan of each page reports no serious or critical violation").
//
// The page's CSP (script-src 'self', no eval) would block a <script> tag or an
// in-page eval of axe's source, so the source is handed to the driver as a
// string expression: both drivers evaluate that through the DevTools/BiDi
// protocol, which CSP does not govern. The page itself is not modified
// otherwise.

import fs from 'node:fs';
import { createRequire } from 'node:module';

const require = createRequire(import.meta.url);
let axeSource = null;

function source() {
  axeSource ??= fs.readFileSync(require.resolve('axe-core/axe.min.js'), 'utf8');
  return axeSource;
}

/**
 * Run axe on the participant's current page (WCAG 2.0/2.1 A and AA rules).
 * Returns { violations, blocking } where `blocking` holds the serious and
 * critical ones, each summarised as { id, impact, help, targets }.
 */
export async function axeScan(p, { tags = ['wcag2a', 'wcag2aa', 'wcag21a', 'wcag21aa'] } = {}) {
  const loaded = await p.evaluate(`(() => { ${source()}\n; return typeof window.axe === 'object'; })()`);
  if (!loaded) throw new Error(`${p.name}: axe-core did not load in the page`);
  const result = await p.evaluate(
    `window.axe.run(document, { runOnly: { type: 'tag', values: ${JSON.stringify(tags)} }, resultTypes: ['violations'] })
       .then((r) => r.violations.map((v) => ({ id: v.id, impact: v.impact, help: v.help,
         targets: v.nodes.slice(0, 5).map((n) => n.target.join(' ')) })))`,
  );
  const blocking = result.filter((v) => v.impact === 'serious' || v.impact === 'critical');
  return { violations: result, blocking };
}

/** A readable list for an assertion message. */
export function formatViolations(vs) {
  return vs.map((v) => `- [${v.impact}] ${v.id}: ${v.help} (${v.targets.join(', ')})`).join('\n');
}
