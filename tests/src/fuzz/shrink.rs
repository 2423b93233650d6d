//! Delta debugging of a diverging sequence: drop chunks of steps, then
//! single steps, then simplify what is left (clock jumps to one second,
//! readings out of a `postReadings` batch), keeping each change only while
//! the sequence still diverges on fresh engines.

use healthsense_abi::bindings::HealthSense::HealthSenseCalls as C;

use super::Step;

/// At most this many replays: shrinking must end in bounded time even on a
/// slow engine (a replay on anvil costs tens of milliseconds per call).
const MAX_TRIALS: usize = 600;

/// The smallest sequence found, by `fails` (true: still diverges), that
/// derives from `steps` by removals and simplifications.
pub fn shrink(mut steps: Vec<Step>, mut fails: impl FnMut(&[Step]) -> bool) -> Vec<Step> {
    let mut trials = 0;
    let mut attempt = |candidate: &[Step], trials: &mut usize| {
        *trials += 1;
        *trials <= MAX_TRIALS && fails(candidate)
    };
    // ddmin over steps: remove chunks of len/n, refining n.
    let mut n = 2;
    while steps.len() >= 2 && trials < MAX_TRIALS {
        let chunk = steps.len().div_ceil(n);
        let mut removed = false;
        let mut start = 0;
        while start < steps.len() {
            let end = (start + chunk).min(steps.len());
            let candidate: Vec<Step> = steps[..start].iter().chain(&steps[end..]).cloned().collect();
            if !candidate.is_empty() && attempt(&candidate, &mut trials) {
                steps = candidate;
                removed = true;
            } else {
                start = end;
            }
        }
        if removed {
            n = n.saturating_sub(1).max(2);
        } else if chunk == 1 {
            break;
        } else {
            n = (n * 2).min(steps.len());
        }
    }
    // Simplify each remaining step.
    for i in 0..steps.len() {
        if steps[i].advance > 1 {
            let mut candidate = steps.clone();
            candidate[i].advance = 1;
            if attempt(&candidate, &mut trials) {
                steps = candidate;
            }
        }
        let mut j = 0;
        while let C::postReadings(c) = &steps[i].call {
            if j >= c.readings.len().max(c.signatures.len()) {
                break;
            }
            let mut smaller = c.clone();
            if j < smaller.readings.len() {
                smaller.readings.remove(j);
            }
            if j < smaller.signatures.len() {
                smaller.signatures.remove(j);
            }
            let mut candidate = steps.clone();
            candidate[i].call = C::postReadings(smaller);
            if attempt(&candidate, &mut trials) {
                steps = candidate;
            } else {
                j += 1;
            }
        }
    }
    steps
}
