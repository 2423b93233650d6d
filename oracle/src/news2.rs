//! NEWS2, the National Early Warning Score 2 (Royal College of Physicians,
//! 2017): the one definition the oracle's alerts, the API, the dashboard and
//! the ward simulator use.
//!
//! Scored from a [`Reading`] as the chart scores it: respiration rate, SpO2 on
//! scale 1, systolic blood pressure, pulse, consciousness and temperature.
//! Two things the chart asks for are not in a reading and are not scored:
//! whether the patient breathes supplemental oxygen (+2 on the chart) and
//! SpO2 scale 2 (for hypercapnic respiratory failure, a clinician's choice per
//! patient). A vital the device did not measure (`0`) scores nothing; so does
//! consciousness code `0` (not reported).
//!
//! Temperature is charted to 0.1 °C, so the reading's 0.01 °C value is
//! rounded to the nearest 0.1 °C (half up) before its band is looked up:
//! 35.04 °C is charted 35.0 (scores 3), 35.05 °C is charted 35.1 (scores 1).

use healthsense_abi::Reading;
use serde::Serialize;

/// Per-parameter scores of one reading (each 0..=3), and their sum.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Score {
    /// Respiration rate.
    pub resp_rate: u8,
    /// SpO2, scale 1.
    pub spo2: u8,
    /// Systolic blood pressure.
    pub systolic: u8,
    /// Pulse.
    pub heart_rate: u8,
    /// Consciousness (ACVPU): Alert 0, new confusion, Voice, Pain or Unresponsive 3.
    pub consciousness: u8,
    /// Temperature.
    pub temperature: u8,
    /// The aggregate score.
    pub total: u8,
}

/// Clinical risk from a score, in increasing order (RCP 2017, "NEWS
/// thresholds and triggers").
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Risk {
    /// Aggregate 0.
    None,
    /// Aggregate 1-4 with no single parameter scoring 3: ward-based response.
    Low,
    /// A single parameter scoring 3 (aggregate below 5): urgent ward-based response.
    LowMedium,
    /// Aggregate 5 or 6: key threshold for an urgent response.
    Medium,
    /// Aggregate 7 or more: emergency response.
    High,
}

impl Risk {
    /// Whether this risk raises an alert (low-medium and above).
    pub fn alerts(self) -> bool {
        self >= Risk::LowMedium
    }

    /// The name used on the alert topic, in the API and in the store.
    pub fn name(self) -> &'static str {
        match self {
            Risk::None => "none",
            Risk::Low => "low",
            Risk::LowMedium => "low-medium",
            Risk::Medium => "medium",
            Risk::High => "high",
        }
    }

    /// The risk of a stored name (the inverse of [`Risk::name`]).
    pub fn from_name(name: &str) -> Option<Risk> {
        [Risk::None, Risk::Low, Risk::LowMedium, Risk::Medium, Risk::High].into_iter().find(|r| r.name() == name)
    }
}

/// Looks `v` up in ascending bands of `(upper bound inclusive, score)`;
/// above the last bound scores `above`.
fn band(v: u16, bands: &[(u16, u8)], above: u8) -> u8 {
    bands.iter().find(|(max, _)| v <= *max).map_or(above, |b| b.1)
}

/// Respiration rate, breaths/min: <=8: 3, 9-11: 1, 12-20: 0, 21-24: 2, >=25: 3.
pub fn resp_rate(v: u16) -> u8 {
    band(v, &[(8, 3), (11, 1), (20, 0), (24, 2)], 3)
}

/// SpO2 scale 1, %: <=91: 3, 92-93: 2, 94-95: 1, >=96: 0.
pub fn spo2(v: u16) -> u8 {
    band(v, &[(91, 3), (93, 2), (95, 1)], 0)
}

/// Systolic blood pressure, mmHg: <=90: 3, 91-100: 2, 101-110: 1, 111-219: 0, >=220: 3.
pub fn systolic(v: u16) -> u8 {
    band(v, &[(90, 3), (100, 2), (110, 1), (219, 0)], 3)
}

/// Pulse, beats/min: <=40: 3, 41-50: 1, 51-90: 0, 91-110: 1, 111-130: 2, >=131: 3.
pub fn heart_rate(v: u16) -> u8 {
    band(v, &[(40, 3), (50, 1), (90, 0), (110, 1), (130, 2)], 3)
}

/// Temperature in 0.01 °C, charted to 0.1 °C: <=35.0: 3, 35.1-36.0: 1,
/// 36.1-38.0: 0, 38.1-39.0: 1, >=39.1: 2.
pub fn temperature(centi_celsius: u16) -> u8 {
    band(temperature_tenths(centi_celsius), &[(350, 3), (360, 1), (380, 0), (390, 1)], 2)
}

/// A temperature in 0.01 °C as charted, in 0.1 °C (nearest, half up): the
/// one rounding rule of temperature for scores, the API's display values and
/// the dashboard (39.05 °C is 39.1).
pub fn temperature_tenths(centi_celsius: u16) -> u16 {
    ((u32::from(centi_celsius) + 5) / 10).min(u32::from(u16::MAX)) as u16
}

/// ACVPU code (1 Alert, 2 new Confusion, 3 Voice, 4 Pain, 5 Unresponsive):
/// Alert 0, anything else 3.
pub fn consciousness(code: u8) -> u8 {
    if code > 1 {
        3
    } else {
        0
    }
}

impl Score {
    /// The largest single-parameter score.
    pub fn max_parameter(&self) -> u8 {
        [self.resp_rate, self.spo2, self.systolic, self.heart_rate, self.consciousness, self.temperature]
            .into_iter()
            .max()
            .unwrap_or(0)
    }

    /// The clinical risk this score means.
    pub fn risk(&self) -> Risk {
        match self.total {
            7.. => Risk::High,
            5..=6 => Risk::Medium,
            _ if self.max_parameter() == 3 => Risk::LowMedium,
            1..=4 => Risk::Low,
            0 => Risk::None,
        }
    }
}

/// Scores a reading (unmeasured vitals score 0).
pub fn score(r: &Reading) -> Score {
    let measured = |v: u16, f: fn(u16) -> u8| if v == 0 { 0 } else { f(v) };
    let mut s = Score {
        resp_rate: measured(r.respRate, resp_rate),
        spo2: measured(r.spo2, spo2),
        systolic: measured(r.systolic, systolic),
        heart_rate: measured(r.heartRate, heart_rate),
        consciousness: consciousness(r.consciousness),
        temperature: measured(r.temperature, temperature),
        total: 0,
    };
    s.total = s.resp_rate + s.spo2 + s.systolic + s.heart_rate + s.consciousness + s.temperature;
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every band edge of the RCP 2017 chart: (last value of a band, its
    /// score, first value of the next band, its score).
    #[test]
    fn every_band_edge_of_the_chart() {
        type Chart<'a> = (&'a str, fn(u16) -> u8, &'a [(u16, u8)]);
        let edges: [Chart; 5] = [
            ("respiration", resp_rate, &[(1, 3), (8, 3), (9, 1), (11, 1), (12, 0), (20, 0), (21, 2), (24, 2), (25, 3), (80, 3)]),
            ("spo2 scale 1", spo2, &[(50, 3), (91, 3), (92, 2), (93, 2), (94, 1), (95, 1), (96, 0), (100, 0)]),
            ("systolic", systolic, &[(40, 3), (90, 3), (91, 2), (100, 2), (101, 1), (110, 1), (111, 0), (219, 0), (220, 3), (300, 3)]),
            ("pulse", heart_rate, &[(20, 3), (40, 3), (41, 1), (50, 1), (51, 0), (90, 0), (91, 1), (110, 1), (111, 2), (130, 2), (131, 3), (300, 3)]),
            // Temperature in 0.01 °C, charted to 0.1 °C.
            ("temperature", temperature, &[
                (2_500, 3), (3_500, 3), (3_504, 3), (3_505, 1), (3_510, 1), (3_600, 1), (3_604, 1), (3_605, 0), (3_610, 0),
                (3_800, 0), (3_804, 0), (3_805, 1), (3_810, 1), (3_900, 1), (3_904, 1), (3_905, 2), (3_910, 2), (4_500, 2),
            ]),
        ];
        for (name, f, cases) in edges {
            for &(v, want) in cases {
                assert_eq!(f(v), want, "{name} {v}");
            }
        }
        assert_eq!([0, 1, 2, 3, 4, 5].map(consciousness), [0, 0, 3, 3, 3, 3], "not reported, A, C, V, P, U");
    }

    fn reading(hr: u16, rr: u16, spo2: u16, sys: u16, temp: u16, acvpu: u8) -> Reading {
        Reading { heartRate: hr, respRate: rr, spo2, systolic: sys, diastolic: 60, temperature: temp, consciousness: acvpu, ..Default::default() }
    }

    #[test]
    fn aggregates_and_risk_follow_the_thresholds() {
        let normal = score(&reading(75, 16, 97, 124, 3_680, 1));
        assert_eq!((normal.total, normal.risk()), (0, Risk::None));
        // RR 22 (2) + SpO2 93 (2) + SBP 98 (2) + HR 118 (2) + new confusion (3) + 38.6 °C (1).
        let s = score(&reading(118, 22, 93, 98, 3_860, 2));
        assert_eq!((s.resp_rate, s.spo2, s.systolic, s.heart_rate, s.consciousness, s.temperature), (2, 2, 2, 2, 3, 1));
        assert_eq!((s.total, s.risk()), (12, Risk::High));
        assert_eq!(score(&reading(40, 8, 91, 90, 3_500, 1)).total, 15);
        assert_eq!(score(&Reading::default()), Score::default(), "nothing measured, nothing scored");
        // Thresholds: 1-4 low; a single 3 low-medium; 5-6 medium; 7+ high.
        assert_eq!(score(&reading(95, 16, 97, 124, 3_680, 1)).risk(), Risk::Low, "pulse 1");
        assert_eq!(score(&reading(115, 22, 97, 124, 3_680, 1)).risk(), Risk::Low, "4 without a 3");
        assert_eq!(score(&reading(75, 16, 97, 124, 3_680, 3)).risk(), Risk::LowMedium, "voice alone");
        assert_eq!(score(&reading(75, 26, 97, 124, 3_680, 1)).risk(), Risk::LowMedium, "RR 26 alone");
        assert_eq!(score(&reading(95, 26, 97, 124, 3_680, 1)).risk(), Risk::LowMedium, "3 + 1 = 4");
        assert_eq!(score(&reading(115, 22, 95, 124, 3_680, 1)).risk(), Risk::Medium, "2 + 2 + 1 = 5");
        assert_eq!(score(&reading(115, 26, 97, 124, 3_680, 1)).risk(), Risk::Medium, "3 + 2 = 5 with a single 3");
        assert_eq!(score(&reading(115, 22, 93, 124, 3_680, 1)).risk(), Risk::Medium, "6");
        assert_eq!(score(&reading(115, 22, 93, 105, 3_680, 1)).risk(), Risk::High, "7");
        assert!(!Risk::Low.alerts() && Risk::LowMedium.alerts() && Risk::High.alerts());
        for r in [Risk::None, Risk::Low, Risk::LowMedium, Risk::Medium, Risk::High] {
            assert_eq!(Risk::from_name(r.name()), Some(r));
        }
    }
}
