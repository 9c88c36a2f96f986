// Every figure an attack measured, printed (stderr, so the test reporter
// shows it) and appended to out/results.jsonl for the run's record.

import fs from 'node:fs';
import path from 'node:path';
import { outDir } from './server.mjs';

export function record(finding, figures) {
  const line = { finding, at: new Date().toISOString(), ...figures };
  fs.mkdirSync(outDir, { recursive: true });
  fs.appendFileSync(path.join(outDir, 'results.jsonl'), `${JSON.stringify(line)}\n`);
  console.error(`[attack ${finding}] ${JSON.stringify(figures)}`);
}
