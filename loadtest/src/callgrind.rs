//! Instruction counts of the server under test from callgrind: the
//! noise-free figure next to CPU time. The server runs under
//! `valgrind --tool=callgrind --instr-atstart=no` (run-bench.sh starts it
//! so); for the measurement window we zero its counters and switch
//! instrumentation on, and at the end read the totals of every thread
//! with `callgrind_control -e` and switch it off again. Each command takes
//! a few hundred ms (vgdb); the generator takes its packet counts right
//! after `-i on` and right after `-e`, so the two windows line up within
//! that, a few per cent of a 10 s window at most, less for longer ones.

use std::process::Command;

/// Sum of the first event column (Ir) over the `Th N  <count>` lines that
/// `callgrind_control -e` prints:
///
/// ```text
/// PID 24538: ./server
///
///   Totals:         Ir
///    Th 1  179,032,421
///    Th 2      1,234
/// ```
///
/// `None` when no thread line is there (not a callgrind process, or it
/// ended).
pub fn parse_totals(out: &str) -> Option<u64> {
    let mut total: Option<u64> = None;
    for line in out.lines() {
        let mut f = line.split_whitespace();
        if f.next() != Some("Th") {
            continue;
        }
        // The thread number, then the counts.
        if f.next().and_then(|t| t.parse::<u32>().ok()).is_none() {
            continue;
        }
        let Some(count) = f
            .next()
            .and_then(|c| c.replace(',', "").parse::<u64>().ok())
        else {
            continue;
        };
        total = Some(total.unwrap_or(0).saturating_add(count));
    }
    total
}

fn control(args: &[&str], pid: u32) -> Result<String, String> {
    let out = Command::new("callgrind_control")
        .args(args)
        .arg(pid.to_string())
        .output()
        .map_err(|e| format!("callgrind_control: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() || text.contains("Error") {
        return Err(format!(
            "callgrind_control {} {pid} failed: {}{}",
            args.join(" "),
            text.trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(text)
}

/// Start counting: zero the counters and switch instrumentation on.
pub fn start(pid: u32) -> Result<(), String> {
    control(&["-z"], pid)?;
    control(&["-i", "on"], pid)?;
    Ok(())
}

/// Instructions executed since `start`, all threads (counting goes on).
pub fn totals(pid: u32) -> Result<u64, String> {
    let out = control(&["-e"], pid)?;
    parse_totals(&out).ok_or_else(|| format!("no totals in callgrind_control -e output: {out}"))
}

/// Stop counting.
pub fn off(pid: u32) -> Result<(), String> {
    control(&["-i", "off"], pid).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn totals_of_all_threads_are_summed() {
        let out = "PID 24538: bash -c i=0\n\n  Totals:         Ir \n   Th 1  179,032,421 \n   Th 3        1,000 \n\n";
        assert_eq!(parse_totals(out), Some(179_033_421));
        // With several events, the first column (Ir) counts.
        let two = "  Totals:   Ir   Dr\n   Th 1  2,000  700\n";
        assert_eq!(parse_totals(two), Some(2_000));
    }

    #[test]
    fn output_without_threads_has_no_total() {
        assert_eq!(parse_totals(""), None);
        assert_eq!(
            parse_totals("Error: Callgrind task with PID 1 not detected\n"),
            None
        );
        assert_eq!(parse_totals("   Th x 12\n   Th 1 many\n"), None);
    }
}
