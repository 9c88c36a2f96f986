// Polling, never sleep-then-assert: the CI machine has 2 noisy cores and a
// browser can take seconds to get media flowing. Every wait has a deadline
// and a description, so a timeout says what was being waited for and the
// last value seen.

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Scale for every timeout, e.g. SPREEKKAMER_TEST_SLOWDOWN=2 on a very slow machine. */
export const slowdown = Number(process.env.SPREEKKAMER_TEST_SLOWDOWN || 1) || 1;

/**
 * Call `fn` until it returns a truthy value (which is returned). A thrown
 * error stops the wait unless `retryErrors` is set. On timeout the error
 * names `what` and shows `describe(lastValue)`.
 */
export async function waitUntil(fn, { timeout = 30_000, interval = 250, what = 'condition', describe, retryErrors = false } = {}) {
  const deadline = Date.now() + timeout * slowdown;
  let last;
  let lastErr;
  for (;;) {
    try {
      last = await fn();
      lastErr = undefined;
      if (last) return last;
    } catch (e) {
      if (!retryErrors) throw e;
      lastErr = e;
    }
    if (Date.now() > deadline) {
      const seen = lastErr ? `last error: ${lastErr.message}` : `last value: ${describe ? describe(last) : JSON.stringify(last)}`;
      throw new Error(`timed out after ${timeout * slowdown} ms waiting for ${what}; ${seen}`);
    }
    await sleep(interval);
  }
}
