//! The comparative judge (Kayenta's idea): the same metric for the canary and for the stable
//! release, measured side by side, and a verdict on the difference rather than on a fixed
//! threshold, so that a background error rate that the whole service shares does not fail a
//! canary, and a regression that a fixed threshold would let through does.
//!
//! The test is the Mann-Whitney U test, one-sided (is the canary worse, that is higher?),
//! with the normal approximation, a continuity correction and the correction for ties
//! (error ratios of quiet intervals are often all zero). It assumes nothing about the shape of
//! the values, only that they are independent samples: per-instance values, or values over
//! intervals that do not overlap.

use serde::{Deserialize, Serialize};

/// What the judge decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JudgeVerdict {
    /// No significant increase.
    Pass,
    /// The canary is significantly higher than the tolerated increase over the stable release.
    Fail,
    /// Too few samples on a side to judge.
    Inconclusive,
}

/// The settings of the test.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Judge {
    /// The one-sided p-value below which the canary fails (default 0.01).
    pub significance: f64,
    /// The relative increase tolerated: each stable value is scaled by `1 + tolerance` before the
    /// comparison (default 0.1, ten percent). Zero tolerates nothing.
    pub tolerance: f64,
    /// The fewest samples on each side for a verdict (default 10); fewer is inconclusive.
    pub min_samples: usize,
}

impl Default for Judge {
    fn default() -> Self {
        Judge { significance: 0.01, tolerance: 0.1, min_samples: 10 }
    }
}

/// A judgement, with what it rests on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Judgement {
    /// The verdict.
    pub verdict: JudgeVerdict,
    /// Canary samples.
    pub canary_samples: usize,
    /// Stable samples.
    pub stable_samples: usize,
    /// The canary's U statistic against the scaled stable values (absent when inconclusive).
    pub u: Option<f64>,
    /// The one-sided p-value (absent when inconclusive).
    pub p_value: Option<f64>,
    /// Median of the canary's values.
    pub canary_median: Option<f64>,
    /// Median of the stable release's values.
    pub stable_median: Option<f64>,
}

impl std::fmt::Display for Judgement {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let median = |m: Option<f64>| m.map_or("-".to_owned(), |m| format!("{m:.6}"));
        let what = match self.verdict {
            JudgeVerdict::Pass => "no significant increase",
            JudgeVerdict::Fail => "the canary is significantly higher",
            JudgeVerdict::Inconclusive => "too few samples",
        };
        write!(
            f,
            "{what}: canary median {} over {} samples, stable median {} over {}",
            median(self.canary_median),
            self.canary_samples,
            median(self.stable_median),
            self.stable_samples
        )?;
        if let (Some(u), Some(p)) = (self.u, self.p_value) {
            write!(f, ", Mann-Whitney U {u}, one-sided p {p:.4}")?;
        }
        Ok(())
    }
}

/// The outcome of a one-sided Mann-Whitney U test of "`x` is higher than `y`".
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MannWhitney {
    /// U of `x`: the number of (x, y) pairs with x > y, ties counting one half.
    pub u: f64,
    /// The standardized statistic, with continuity and tie corrections (0 when every value ties).
    pub z: f64,
    /// The one-sided p-value, from the normal approximation.
    pub p_value: f64,
}

/// Mann-Whitney U of `x` over `y`, one-sided (`x` higher), with the normal approximation,
/// a continuity correction of one half and the tie correction of the variance. Non-finite
/// values are left out. Either side empty gives p = 1.
pub fn mann_whitney(x: &[f64], y: &[f64]) -> MannWhitney {
    let x: Vec<f64> = x.iter().copied().filter(|v| v.is_finite()).collect();
    let y: Vec<f64> = y.iter().copied().filter(|v| v.is_finite()).collect();
    let (n1, n2) = (x.len() as f64, y.len() as f64);
    if x.is_empty() || y.is_empty() {
        return MannWhitney { u: 0.0, z: 0.0, p_value: 1.0 };
    }
    // Ranks of the pooled values, ties sharing their mean rank.
    let mut pooled: Vec<(f64, bool)> = x.iter().map(|&v| (v, true)).chain(y.iter().map(|&v| (v, false))).collect();
    pooled.sort_by(|a, b| a.0.total_cmp(&b.0));
    let (mut rank_sum_x, mut ties) = (0.0, 0.0);
    let mut i = 0;
    while i < pooled.len() {
        let mut j = i;
        while j + 1 < pooled.len() && pooled[j + 1].0 == pooled[i].0 {
            j += 1;
        }
        let mean_rank = (i + j) as f64 / 2.0 + 1.0;
        let t = (j - i + 1) as f64;
        ties += t * t * t - t;
        rank_sum_x += mean_rank * pooled[i..=j].iter().filter(|(_, from_x)| *from_x).count() as f64;
        i = j + 1;
    }
    let u = rank_sum_x - n1 * (n1 + 1.0) / 2.0;
    let n = n1 + n2;
    let variance = n1 * n2 / 12.0 * ((n + 1.0) - ties / (n * (n - 1.0)));
    if variance <= 0.0 {
        return MannWhitney { u, z: 0.0, p_value: 1.0 };
    }
    let z = (u - n1 * n2 / 2.0 - 0.5) / variance.sqrt();
    MannWhitney { u, z, p_value: upper_tail(z) }
}

/// P(Z > z) for a standard normal Z.
fn upper_tail(z: f64) -> f64 {
    0.5 * erfc(z / std::f64::consts::SQRT_2)
}

/// The complementary error function, by the Chebyshev fit of Numerical Recipes (`erfcc`):
/// fractional error below 1.2e-7 everywhere, which is far finer than any significance level.
fn erfc(x: f64) -> f64 {
    let z = x.abs();
    let t = 1.0 / (1.0 + 0.5 * z);
    let poly = -z * z - 1.265_512_23
        + t * (1.000_023_68
            + t * (0.374_091_96
                + t * (0.096_784_18
                    + t * (-0.186_288_06
                        + t * (0.278_868_07
                            + t * (-1.135_203_98 + t * (1.488_515_87 + t * (-0.822_152_23 + t * 0.170_872_77))))))));
    let r = t * poly.exp();
    if x >= 0.0 { r } else { 2.0 - r }
}

fn median(values: &[f64]) -> Option<f64> {
    let mut v: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    Some(if v.len().is_multiple_of(2) { (v[mid - 1] + v[mid]) / 2.0 } else { v[mid] })
}

impl Judge {
    /// The default settings: significance 0.01, ten percent tolerated, ten samples a side.
    pub fn new() -> Self {
        Judge::default()
    }

    /// Sets the significance.
    pub fn significance(mut self, significance: f64) -> Self {
        self.significance = significance;
        self
    }

    /// Sets the tolerated relative increase.
    pub fn tolerance(mut self, tolerance: f64) -> Self {
        self.tolerance = tolerance;
        self
    }

    /// Sets the fewest samples a side.
    pub fn min_samples(mut self, min_samples: usize) -> Self {
        self.min_samples = min_samples;
        self
    }

    /// Checks the settings; the error names the field and the fix.
    pub fn validate(&self) -> Result<(), String> {
        if !(self.significance > 0.0 && self.significance < 0.5) {
            return Err(format!(
                "judge.significance: {} must be above 0 and below 0.5 (0.01 is usual)",
                self.significance
            ));
        }
        if !(self.tolerance.is_finite() && self.tolerance >= 0.0) {
            return Err(format!(
                "judge.tolerance: {} must be a relative increase of zero or more (0.1 tolerates ten percent)",
                self.tolerance
            ));
        }
        // Below three a side, even a complete separation cannot reach p < 0.05.
        if self.min_samples < 3 {
            return Err(format!("judge.min_samples: {} must be at least 3 (10 is usual)", self.min_samples));
        }
        Ok(())
    }

    /// Judges the canary's values against the stable release's (higher is worse).
    pub fn judge(&self, canary: &[f64], stable: &[f64]) -> Judgement {
        let finite = |v: &[f64]| v.iter().filter(|x| x.is_finite()).count();
        let (canary_samples, stable_samples) = (finite(canary), finite(stable));
        let mut judgement = Judgement {
            verdict: JudgeVerdict::Inconclusive,
            canary_samples,
            stable_samples,
            u: None,
            p_value: None,
            canary_median: median(canary),
            stable_median: median(stable),
        };
        if canary_samples < self.min_samples || stable_samples < self.min_samples {
            return judgement;
        }
        let scaled: Vec<f64> = stable.iter().map(|v| v * (1.0 + self.tolerance)).collect();
        let test = mann_whitney(canary, &scaled);
        judgement.u = Some(test.u);
        judgement.p_value = Some(test.p_value);
        judgement.verdict = if test.p_value < self.significance { JudgeVerdict::Fail } else { JudgeVerdict::Pass };
        judgement
    }
}

#[cfg(test)]
mod tests {
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    use super::*;

    /// Error ratios of `samples` intervals of `requests` requests each, failing at `rate`.
    fn error_ratios(rng: &mut ChaCha8Rng, samples: usize, requests: u32, rate: f64) -> Vec<f64> {
        (0..samples)
            .map(|_| (0..requests).filter(|_| rng.random_bool(rate)).count() as f64 / f64::from(requests))
            .collect()
    }

    #[test]
    fn u_and_p_match_the_worked_example() {
        // Complete separation of three and three: U = 9, mean 4.5, variance 9 * 7 / 12 = 5.25,
        // z = (9 - 4.5 - 0.5) / sqrt(5.25) = 1.7457, p = 0.04043.
        let t = mann_whitney(&[4.0, 5.0, 6.0], &[1.0, 2.0, 3.0]);
        assert_eq!(t.u, 9.0);
        assert!((t.z - 1.745_743).abs() < 1e-5, "{t:?}");
        assert!((t.p_value - 0.040_43).abs() < 1e-4, "{t:?}");
        // The other way round the canary is not higher.
        assert!(mann_whitney(&[1.0, 2.0, 3.0], &[4.0, 5.0, 6.0]).p_value > 0.95);
    }

    #[test]
    fn ties_share_their_rank_and_shrink_the_variance() {
        // x = [0, 0, 1], y = [0, 0, 0]: the five zeros share rank 3; x's ranks 3 + 3 + 6.
        // U = 12 - 6 = 6; ties: 5^3 - 5 = 120; variance = 9 / 12 * (7 - 120 / 30) = 2.25.
        let t = mann_whitney(&[0.0, 0.0, 1.0], &[0.0, 0.0, 0.0]);
        assert_eq!(t.u, 6.0);
        assert!((t.z - (6.0 - 4.5 - 0.5) / 1.5).abs() < 1e-12, "{t:?}");
        // Every value tied: no evidence at all.
        assert_eq!(mann_whitney(&[0.0; 5], &[0.0; 5]).p_value, 1.0);
    }

    #[test]
    fn the_normal_tail_is_accurate() {
        for (z, tail) in [(0.0, 0.5), (1.644_854, 0.05), (2.326_348, 0.01), (-1.959_964, 0.975), (3.090_232, 0.001)] {
            assert!((upper_tail(z) - tail).abs() < 1e-6, "P(Z > {z}) = {}", upper_tail(z));
        }
    }

    #[test]
    fn it_flags_five_percent_errors_over_a_half_percent_baseline_and_passes_identical_releases() {
        let mut rng = ChaCha8Rng::seed_from_u64(17);
        let judge = Judge::new();
        let stable = error_ratios(&mut rng, 12, 200, 0.005);
        let bad = error_ratios(&mut rng, 12, 200, 0.05);
        let same = error_ratios(&mut rng, 12, 200, 0.005);
        let flagged = judge.judge(&bad, &stable);
        assert_eq!(flagged.verdict, JudgeVerdict::Fail, "{flagged}");
        assert!(flagged.p_value.unwrap() < 0.001, "{flagged}");
        let passed = judge.judge(&same, &stable);
        assert_eq!(passed.verdict, JudgeVerdict::Pass, "{passed}");
        assert!(passed.p_value.unwrap() > 0.05, "{passed}");
    }

    #[test]
    fn the_tolerance_lets_a_small_increase_through_and_few_samples_are_inconclusive() {
        let stable = [0.010, 0.011, 0.009, 0.010, 0.012, 0.010, 0.011, 0.009, 0.010, 0.010];
        let five_percent_higher: Vec<f64> = stable.iter().map(|v| v * 1.05).collect();
        assert_eq!(Judge::new().judge(&five_percent_higher, &stable).verdict, JudgeVerdict::Pass);
        let doubled: Vec<f64> = stable.iter().map(|v| v * 2.0).collect();
        assert_eq!(Judge::new().tolerance(0.5).judge(&doubled, &stable).verdict, JudgeVerdict::Fail);
        assert_eq!(Judge::new().tolerance(1.5).judge(&doubled, &stable).verdict, JudgeVerdict::Pass);
        let few = Judge::new().judge(&doubled[..9], &stable);
        assert_eq!(few.verdict, JudgeVerdict::Inconclusive);
        assert!(few.to_string().contains("too few samples"), "{few}");
    }

    #[test]
    fn settings_are_validated_naming_the_field() {
        assert!(Judge::new().validate().is_ok());
        assert!(Judge::new().significance(0.0).validate().unwrap_err().starts_with("judge.significance"));
        assert!(Judge::new().significance(f64::NAN).validate().unwrap_err().starts_with("judge.significance"));
        assert!(Judge::new().tolerance(-0.1).validate().unwrap_err().starts_with("judge.tolerance"));
        assert!(Judge::new().min_samples(2).validate().unwrap_err().starts_with("judge.min_samples"));
    }
}
