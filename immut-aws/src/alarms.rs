//! CloudWatch alarms as an analysis provider, the way EC2 instance refresh uses them: a
//! release fails its gate while any of the named alarms is in `ALARM`.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use immut_core::analysis::{AnalysisContext, MetricProvider, Reading};
use immut_core::{Error, Result};

use crate::client::{AlarmState, Clients};

/// CloudWatch's limit on an alarm name.
const MAX_NAME: usize = 255;

/// Reads the named alarms with DescribeAlarms (metric and composite alarms) at every
/// measurement: any in `ALARM` fails it ([`Reading::Refused`], with each alarm's reason), all
/// `OK` passes it, and otherwise (some in `INSUFFICIENT_DATA`) it is inconclusive
/// ([`Reading::Empty`]): an alarm without data never reads as a pass. A name CloudWatch does
/// not know is an error measurement that names it, as is a failed call. Built by
/// [`crate::AwsProvider::alarms`]; it shares the provider's clients, pacing and call counts.
#[derive(Debug, Clone)]
pub struct CloudWatchAlarms {
    clients: Arc<Clients>,
    names: Vec<String>,
}

impl CloudWatchAlarms {
    /// Checks the names before any call: at least one, none empty or longer than 255
    /// characters. Repeated names are asked once.
    pub(crate) fn new(clients: Arc<Clients>, names: Vec<String>) -> Result<Self> {
        if names.is_empty() {
            return Err(Error::invalid("alarms", "is empty; name at least one CloudWatch alarm"));
        }
        for name in &names {
            if name.trim().is_empty() {
                return Err(Error::invalid("alarms", "holds an empty name; give each alarm's AlarmName"));
            }
            if name.chars().count() > MAX_NAME {
                return Err(Error::invalid(
                    "alarms",
                    format!("{name:?} is longer than CloudWatch's {MAX_NAME} characters for an alarm name"),
                ));
            }
        }
        let mut names = names;
        names.sort();
        names.dedup();
        Ok(CloudWatchAlarms { clients, names })
    }

    /// The alarms read, sorted.
    pub fn names(&self) -> &[String] {
        &self.names
    }
}

/// The reading for these states of `names` (every name must be among them).
fn judge(names: &[String], states: &BTreeMap<String, AlarmState>) -> std::result::Result<Reading, String> {
    let missing: Vec<&str> = names.iter().filter(|n| !states.contains_key(*n)).map(String::as_str).collect();
    if !missing.is_empty() {
        return Err(format!(
            "no CloudWatch alarm named {} in this account and region (DescribeAlarms, metric and composite alarms); alarm names are case-sensitive: check the name and the region",
            missing.join(", ")
        ));
    }
    let in_alarm: Vec<String> = names
        .iter()
        .filter_map(|n| {
            let s = &states[n];
            (s.state == "ALARM").then(|| match &s.reason {
                Some(r) if !r.is_empty() => format!("{n} ({r})"),
                _ => n.clone(),
            })
        })
        .collect();
    if !in_alarm.is_empty() {
        return Ok(Reading::Refused(format!("in ALARM: {}", in_alarm.join("; "))));
    }
    if names.iter().all(|n| states[n].state == "OK") { Ok(Reading::Passed) } else { Ok(Reading::Empty) }
}

#[async_trait]
impl MetricProvider for CloudWatchAlarms {
    async fn measure(&self, _context: &AnalysisContext) -> std::result::Result<Reading, String> {
        let states = self.clients.alarm_states(&self.names).await.map_err(|e| e.to_string())?;
        judge(&self.names, &states)
    }

    /// The alarms' states decide: a metric on them needs no success or failure condition.
    fn decides(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn states(of: &[(&str, &str)]) -> BTreeMap<String, AlarmState> {
        of.iter()
            .map(|(n, s)| {
                ((*n).to_owned(), AlarmState { state: (*s).to_owned(), reason: Some(format!("{n} says {s}")) })
            })
            .collect()
    }

    #[test]
    fn any_alarm_fails_all_ok_passes_and_no_data_is_inconclusive() {
        let names = vec!["errors".to_owned(), "latency".to_owned()];
        let failed = judge(&names, &states(&[("errors", "ALARM"), ("latency", "INSUFFICIENT_DATA")])).unwrap();
        assert_eq!(failed, Reading::Refused("in ALARM: errors (errors says ALARM)".into()));
        assert_eq!(judge(&names, &states(&[("errors", "OK"), ("latency", "OK")])).unwrap(), Reading::Passed);
        assert_eq!(
            judge(&names, &states(&[("errors", "OK"), ("latency", "INSUFFICIENT_DATA")])).unwrap(),
            Reading::Empty
        );
        let missing = judge(&names, &states(&[("errors", "OK")])).unwrap_err();
        assert!(missing.contains("no CloudWatch alarm named latency"), "{missing}");
    }
}
