//! The discharge bill. The Stylus edition calls [`compute_bill`]; the EVM
//! edition implements the same formula in Solidity and the conformance suite
//! holds the two to it. `docs/CONTRACT.md` states it in prose.

use alloy_primitives::U256;

use super::status::CATEGORY_COUNT;

/// Seconds in a bed day.
pub const DAY: u64 = 86_400;
/// Coverage is expressed in basis points of the eligible amount.
pub const BPS: u16 = 10_000;

/// An insurance policy as the contract stores it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Policy {
    /// Share of the eligible amount covered, in basis points (0..=10000).
    pub coverage_bps: u16,
    /// Amount of the eligible total the patient pays before coverage starts.
    pub deductible: u64,
    /// Most the insurer pays.
    pub cap: u64,
    /// Bit `i` set: category `i` is eligible.
    pub covered_categories: u8,
}

/// What discharge needs to know.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct BillInput {
    /// Admission time, seconds.
    pub admitted_at: u64,
    /// Discharge time, seconds.
    pub discharged_at: u64,
    /// The ward's bed rate per day, minor units.
    pub daily_rate: u64,
    /// Sum of `quantity * unitPrice` of the charges in each category.
    pub category_totals: [U256; CATEGORY_COUNT],
    /// The patient's policy, if an insurer set one.
    pub policy: Option<Policy>,
}

/// The computed bill; `total == covered + due` always.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Bill {
    /// Bed days charged.
    pub bed_days: u64,
    /// Everything: charges plus bed days.
    pub total: U256,
    /// The insurer's share.
    pub covered: U256,
    /// The patient's share.
    pub due: U256,
}

/// Bed days of a stay: started days, at least one.
pub fn bed_days(admitted_at: u64, discharged_at: u64) -> u64 {
    let stay = discharged_at.saturating_sub(admitted_at);
    let days = stay / DAY + u64::from(stay % DAY != 0);
    days.max(1)
}

/// One charge line: `quantity * unitPrice` (fits in 96 bits).
pub fn charge_amount(quantity: u32, unit_price: u64) -> U256 {
    U256::from(quantity) * U256::from(unit_price)
}

/// Whether a policy's bitmask covers `category`.
pub fn covers(covered_categories: u8, category: usize) -> bool {
    category < CATEGORY_COUNT && covered_categories & (1u8 << category) != 0
}

/// `value / divisor` (rounding down) by schoolbook division over 32-bit
/// digits: every step divides a `u64`, so the Stylus program carries no
/// general 256-bit division (ruint's is about 8 KB of WASM).
pub fn div_small(value: U256, divisor: u32) -> U256 {
    let d = u64::from(divisor);
    let mut limbs = value.into_limbs();
    let mut rem = 0u64;
    for limb in limbs.iter_mut().rev() {
        let (hi, lo) = (*limb >> 32, *limb & 0xffff_ffff);
        let cur = (rem << 32) | hi;
        let q_hi = cur / d;
        let cur = ((cur % d) << 32) | lo;
        *limb = (q_hi << 32) | (cur / d);
        rem = cur % d;
    }
    U256::from_limbs(limbs)
}

/// The bill at discharge, exactly as `docs/CONTRACT.md` states it.
pub fn compute_bill(input: &BillInput) -> Bill {
    let bed_days = bed_days(input.admitted_at, input.discharged_at);
    let mut totals = input.category_totals;
    totals[0] += U256::from(bed_days) * U256::from(input.daily_rate);
    let total = totals.iter().fold(U256::ZERO, |acc, t| acc + *t);
    let covered = match input.policy {
        None => U256::ZERO,
        Some(p) => {
            let eligible = totals
                .iter()
                .enumerate()
                .filter(|(i, _)| covers(p.covered_categories, *i))
                .fold(U256::ZERO, |acc, (_, t)| acc + *t);
            let above = eligible.saturating_sub(U256::from(p.deductible));
            let share = div_small(above * U256::from(p.coverage_bps), u32::from(BPS));
            share.min(U256::from(p.cap))
        }
    };
    Bill { bed_days, total, covered, due: total - covered }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn input(totals: [u64; 8], rate: u64, days_secs: u64, policy: Option<Policy>) -> BillInput {
        BillInput {
            admitted_at: 1_000,
            discharged_at: 1_000 + days_secs,
            daily_rate: rate,
            category_totals: totals.map(U256::from),
            policy,
        }
    }

    #[test]
    fn bed_days_round_up_and_never_below_one() {
        assert_eq!(bed_days(100, 100), 1);
        assert_eq!(bed_days(100, 99), 1);
        assert_eq!(bed_days(0, 1), 1);
        assert_eq!(bed_days(0, DAY), 1);
        assert_eq!(bed_days(0, DAY + 1), 2);
        assert_eq!(bed_days(0, 7 * DAY), 7);
        assert_eq!(bed_days(0, u64::MAX), u64::MAX / DAY + 1);
    }

    #[test]
    fn no_policy_means_patient_pays_all() {
        let b = compute_bill(&input([0, 5_000, 0, 1_200, 0, 0, 0, 0], 30_000, 3 * DAY, None));
        assert_eq!(b.bed_days, 3);
        assert_eq!(b.total, U256::from(90_000 + 5_000 + 1_200));
        assert_eq!(b.covered, U256::ZERO);
        assert_eq!(b.due, b.total);
    }

    #[test]
    fn deductible_cap_and_categories() {
        let p = Policy { coverage_bps: 8_000, deductible: 1_000, cap: u64::MAX, covered_categories: 0b0000_0011 };
        // eligible = bed 20_000 + consultation 5_000; medication 1_200 not covered.
        let b = compute_bill(&input([0, 5_000, 0, 1_200, 0, 0, 0, 0], 20_000, 10, Some(p)));
        assert_eq!(b.total, U256::from(26_200));
        assert_eq!(b.covered, U256::from((25_000 - 1_000) * 8 / 10));
        assert_eq!(b.due, b.total - b.covered);
        // deductible above eligible: nothing covered.
        let p2 = Policy { deductible: 1_000_000, ..p };
        assert_eq!(compute_bill(&input([0, 5_000, 0, 0, 0, 0, 0, 0], 20_000, 10, Some(p2))).covered, U256::ZERO);
        // cap binds.
        let p3 = Policy { cap: 777, ..p };
        assert_eq!(compute_bill(&input([0, 5_000, 0, 0, 0, 0, 0, 0], 20_000, 10, Some(p3))).covered, U256::from(777));
        // no covered categories.
        let p4 = Policy { covered_categories: 0, ..p };
        assert_eq!(compute_bill(&input([9; 8], 20_000, 10, Some(p4))).covered, U256::ZERO);
    }

    #[test]
    fn values_at_type_limits_do_not_overflow() {
        let max_line = charge_amount(u32::MAX, u64::MAX);
        let mut i = input([0; 8], u64::MAX, u64::MAX - 1_000, None);
        i.admitted_at = 0;
        i.category_totals = [max_line * U256::from(u32::MAX); 8];
        i.policy = Some(Policy { coverage_bps: BPS, deductible: 0, cap: u64::MAX, covered_categories: 0xff });
        let b = compute_bill(&i);
        assert_eq!(b.covered, U256::from(u64::MAX));
        assert_eq!(b.total, b.covered + b.due);
        assert!(b.total > U256::from(u128::MAX));
    }

    proptest! {
        #[test]
        fn div_small_is_division(limbs in proptest::array::uniform4(any::<u64>()), d in 1u32..) {
            let v = U256::from_limbs(limbs);
            prop_assert_eq!(div_small(v, d), v / U256::from(d));
        }

        #[test]
        fn total_is_covered_plus_due_and_covered_is_bounded(
            totals in proptest::array::uniform8(0u64..u64::MAX),
            rate in any::<u64>(), stay in any::<u32>(),
            bps in 0u16..=BPS, deductible in any::<u64>(), cap in any::<u64>(), cats in any::<u8>(),
        ) {
            let p = Policy { coverage_bps: bps, deductible, cap, covered_categories: cats };
            let b = compute_bill(&input(totals, rate, u64::from(stay), Some(p)));
            prop_assert_eq!(b.total, b.covered + b.due);
            prop_assert!(b.covered <= U256::from(cap));
            prop_assert!(b.covered <= b.total);
            // Independent restatement with u128 arithmetic where it fits.
            let days = u128::from(bed_days(1_000, 1_000 + u64::from(stay)));
            let mut t: Vec<u128> = totals.iter().map(|v| u128::from(*v)).collect();
            t[0] += days * u128::from(rate);
            let eligible: u128 = t.iter().enumerate().filter(|(i, _)| cats & (1 << i) != 0).map(|(_, v)| *v).sum();
            let want = (eligible.saturating_sub(u128::from(deductible)) / 10_000 * u128::from(bps)
                + eligible.saturating_sub(u128::from(deductible)) % 10_000 * u128::from(bps) / 10_000)
                .min(u128::from(cap));
            prop_assert_eq!(b.covered, U256::from(want));
        }
    }
}
