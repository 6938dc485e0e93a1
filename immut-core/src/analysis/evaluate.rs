//! Judging one measurement, and a metric's measurements against its limits.

use super::model::{MeasurementPhase, Metric, RunVerdict};
use super::provider::Reading;

/// Classifies a reading by the metric's conditions, with Argo's rules: the failure condition
/// wins; with only a success condition, not meeting it fails; with only a failure condition,
/// not meeting it succeeds; with both, meeting neither is inconclusive. Empty results and errors
/// are never successful. Returns the phase and why.
pub fn classify(metric: &Metric, reading: &Result<Reading, String>) -> (MeasurementPhase, String) {
    let value = match reading {
        Err(e) => return (MeasurementPhase::Error, e.clone()),
        Ok(Reading::Empty) => {
            return (MeasurementPhase::Inconclusive, "no data (an empty result or no traffic)".into());
        }
        Ok(Reading::Undecided(why)) => return (MeasurementPhase::Inconclusive, why.clone()),
        Ok(Reading::Passed) => return (MeasurementPhase::Successful, "the provider passed it".into()),
        Ok(Reading::Refused(why)) => return (MeasurementPhase::Failed, format!("the provider refused it: {why}")),
        Ok(Reading::Value(v)) => *v,
    };
    if !value.is_finite() {
        return (MeasurementPhase::Inconclusive, format!("the value {value} is not a number that can be judged"));
    }
    if let Some(f) = metric.failure
        && f.holds(value)
    {
        return (MeasurementPhase::Failed, format!("{value} meets the failure condition {f}"));
    }
    match (metric.success, metric.failure) {
        (Some(s), _) if s.holds(value) => (MeasurementPhase::Successful, format!("{value} meets {s}")),
        (Some(s), None) => (MeasurementPhase::Failed, format!("{value} misses the success condition {s}")),
        (Some(s), Some(f)) => {
            (MeasurementPhase::Inconclusive, format!("{value} meets neither {s} nor the failure condition {f}"))
        }
        (None, Some(f)) => (MeasurementPhase::Successful, format!("{value} does not meet the failure condition {f}")),
        (None, None) => (MeasurementPhase::Inconclusive, format!("{value}: the metric has no condition")),
    }
}

/// A metric's standing after these measurements (in order), with Argo's limits: failed once
/// more than `failure_limit` failed or more than `consecutive_error_limit` errors came in a row;
/// inconclusive once more than `inconclusive_limit` were; successful after `count` measurements
/// that crossed no limit.
pub fn verdict(metric: &Metric, phases: &[MeasurementPhase]) -> RunVerdict {
    let (mut failed, mut inconclusive, mut errors_in_a_row) = (0u32, 0u32, 0u32);
    for phase in phases {
        match phase {
            MeasurementPhase::Successful => errors_in_a_row = 0,
            MeasurementPhase::Failed => {
                failed += 1;
                errors_in_a_row = 0;
            }
            MeasurementPhase::Inconclusive => {
                inconclusive += 1;
                errors_in_a_row = 0;
            }
            MeasurementPhase::Error => errors_in_a_row += 1,
        }
        if failed > metric.failure_limit {
            return RunVerdict::Failed(format!(
                "metric {:?}: {failed} measurements failed (failure_limit {})",
                metric.name, metric.failure_limit
            ));
        }
        if errors_in_a_row > metric.consecutive_error_limit {
            return RunVerdict::Failed(format!(
                "metric {:?}: {errors_in_a_row} measurements in a row were errors (consecutive_error_limit {})",
                metric.name, metric.consecutive_error_limit
            ));
        }
        if inconclusive > metric.inconclusive_limit {
            return RunVerdict::Inconclusive(format!(
                "metric {:?}: {inconclusive} measurements were inconclusive (inconclusive_limit {})",
                metric.name, metric.inconclusive_limit
            ));
        }
    }
    // Errors are retried: they do not count toward `count`, as in Argo.
    let taken = phases.iter().filter(|p| **p != MeasurementPhase::Error).count() as u32;
    if taken >= metric.count {
        // Tolerated failures and inconclusive measurements do not make a pass on their own:
        // a run in which nothing succeeded never promotes.
        if phases.contains(&MeasurementPhase::Successful) {
            RunVerdict::Successful
        } else {
            RunVerdict::Inconclusive(format!(
                "metric {:?}: none of its {taken} measurements succeeded, so the run cannot pass",
                metric.name
            ))
        }
    } else {
        RunVerdict::Running(format!("metric {:?}: {taken} of {} measurements", metric.name, metric.count))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::analysis::model::Threshold;
    use MeasurementPhase::{Error as E, Failed as F, Inconclusive as I, Successful as S};

    fn metric() -> Metric {
        Metric::new("error-ratio", Duration::from_secs(10), 3)
    }

    #[test]
    fn readings_are_classified_by_argos_rules() {
        let only_success = metric().success(Threshold::below(0.01));
        let only_failure = metric().failure(Threshold::at_least(0.05));
        let both = metric().success(Threshold::below(0.01)).failure(Threshold::at_least(0.05));
        let cases: Vec<(&str, &Metric, Result<Reading, String>, MeasurementPhase)> = vec![
            ("success met", &only_success, Ok(Reading::Value(0.0)), S),
            ("success missed", &only_success, Ok(Reading::Value(0.02)), F),
            ("failure not met", &only_failure, Ok(Reading::Value(0.02)), S),
            ("failure met", &only_failure, Ok(Reading::Value(0.05)), F),
            ("both: success", &both, Ok(Reading::Value(0.001)), S),
            ("both: failure", &both, Ok(Reading::Value(0.5)), F),
            ("both: between", &both, Ok(Reading::Value(0.02)), I),
            ("empty is never successful", &only_failure, Ok(Reading::Empty), I),
            ("undecided is never successful", &only_failure, Ok(Reading::Undecided("3 samples".into())), I),
            ("NaN is never successful", &only_failure, Ok(Reading::Value(f64::NAN)), I),
            ("unreachable is an error", &only_success, Err("connection refused".into()), E),
            ("webhook passes", &only_success, Ok(Reading::Passed), S),
            ("webhook refuses", &only_success, Ok(Reading::Refused("frozen".into())), F),
        ];
        for (case, metric, reading, expected) in cases {
            assert_eq!(classify(metric, &reading).0, expected, "{case}");
        }
    }

    #[test]
    fn limits_decide_the_metric() {
        let m = metric().failure_limit(1).inconclusive_limit(1).consecutive_error_limit(2);
        let running = |v: &RunVerdict| matches!(v, RunVerdict::Running(_));
        let failed = |v: &RunVerdict| matches!(v, RunVerdict::Failed(_));
        let inconclusive = |v: &RunVerdict| matches!(v, RunVerdict::Inconclusive(_));
        let successful = |v: &RunVerdict| *v == RunVerdict::Successful;
        type Check = fn(&RunVerdict) -> bool;
        let cases: Vec<(&str, Vec<MeasurementPhase>, Check)> = vec![
            ("nothing yet", vec![], running),
            ("two of three", vec![S, S], running),
            ("count reached", vec![S, S, S], successful),
            ("one failure within the limit", vec![S, F, S], successful),
            ("two failures cross it", vec![F, S, F], failed),
            ("one inconclusive within the limit", vec![I, S, S], successful),
            ("two inconclusive cross it", vec![I, I], inconclusive),
            ("two errors in a row are within the limit", vec![E, E, S], running),
            ("three errors in a row cross it", vec![S, E, E, E], failed),
            ("errors apart do not add up", vec![E, E, S, E, E, S], running),
            ("errors do not count toward count", vec![E, S, E, S, E, S], successful),
            ("only errors never succeed", vec![E, E], running),
        ];
        // With more room in the limits: a run of tolerated failures and inconclusive
        // measurements alone reaches its count but never passes.
        let lenient = metric().failure_limit(5).inconclusive_limit(5);
        assert!(inconclusive(&verdict(&lenient, &[I, I, I])), "{:?}", verdict(&lenient, &[I, I, I]));
        assert!(inconclusive(&verdict(&lenient, &[F, I, F])), "{:?}", verdict(&lenient, &[F, I, F]));
        assert!(successful(&verdict(&lenient, &[I, S, I])));
        for (case, phases, check) in cases {
            let v = verdict(&m, &phases);
            assert!(check(&v), "{case}: {v:?}");
        }
    }

    #[test]
    fn default_limits_fail_on_the_first_failure() {
        let m = metric().success(Threshold::below(0.01));
        assert!(matches!(verdict(&m, &[F]), RunVerdict::Failed(why) if why.contains("failure_limit 0")));
        assert!(matches!(verdict(&m, &[E, E, E, E]), RunVerdict::Running(_)));
        assert!(
            matches!(verdict(&m, &[E, E, E, E, E]), RunVerdict::Failed(why) if why.contains("consecutive_error_limit 4"))
        );
    }
}
