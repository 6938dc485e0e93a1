//! Semver policy: what a version change means for a deployment.

use std::sync::Arc;

use semver::Version;

use crate::strategy::{BlueGreen, Canary, Count, Promotion, ReplacementStrategy, Rolling};

/// How two artifact versions relate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// The same version (a baseline change, or a redeploy).
    Same,
    /// Only the patch number (or pre-release) went up.
    Patch,
    /// The minor number went up.
    Minor,
    /// The major number went up.
    Major,
    /// The version went down.
    Downgrade,
}

impl Change {
    /// Classifies `from` → `to`.
    pub fn between(from: &Version, to: &Version) -> Change {
        if to < from {
            Change::Downgrade
        } else if to == from {
            Change::Same
        } else if to.major != from.major {
            Change::Major
        } else if to.minor != from.minor {
            Change::Minor
        } else {
            Change::Patch
        }
    }
}

/// Picks the strategy from the version change. The default: patch (and same) → rolling with a
/// 25% surge; minor → canary through 1 instance, 25% and 50%; major (and first deployments) →
/// blue/green with a manual promotion gate.
#[derive(Debug, Clone)]
pub struct ChangePolicy {
    /// For patch changes and redeploys of the same version.
    pub patch: Arc<dyn ReplacementStrategy>,
    /// For minor changes.
    pub minor: Arc<dyn ReplacementStrategy>,
    /// For major changes and first deployments.
    pub major: Arc<dyn ReplacementStrategy>,
}

impl Default for ChangePolicy {
    fn default() -> Self {
        ChangePolicy {
            patch: Arc::new(Rolling::new().max_surge(Count::Percent(25))),
            minor: Arc::new(Canary::new([Count::Count(1), Count::Percent(25), Count::Percent(50)])),
            major: Arc::new(BlueGreen::new().promotion(Promotion::Manual)),
        }
    }
}

impl ChangePolicy {
    /// The strategy for going from `from` (none for a first deployment) to `to`. A downgrade
    /// (an explicit rollback) goes as fast as a major change allows: blue/green.
    pub fn pick(&self, from: Option<&Version>, to: &Version) -> Arc<dyn ReplacementStrategy> {
        match from.map(|f| Change::between(f, to)) {
            Some(Change::Same | Change::Patch) => self.patch.clone(),
            Some(Change::Minor) => self.minor.clone(),
            Some(Change::Major | Change::Downgrade) | None => self.major.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_are_classified_and_pick_their_strategy() {
        let v = |s: &str| Version::parse(s).unwrap();
        assert_eq!(Change::between(&v("1.2.3"), &v("1.2.4")), Change::Patch);
        assert_eq!(Change::between(&v("1.2.3"), &v("1.3.0")), Change::Minor);
        assert_eq!(Change::between(&v("1.2.3"), &v("2.0.0")), Change::Major);
        assert_eq!(Change::between(&v("1.2.3"), &v("1.2.3-rc.1")), Change::Downgrade);
        assert_eq!(Change::between(&v("1.2.3"), &v("1.2.3")), Change::Same);
        let p = ChangePolicy::default();
        assert_eq!(p.pick(Some(&v("1.2.3")), &v("1.2.4")).name(), "rolling");
        assert_eq!(p.pick(Some(&v("1.2.3")), &v("1.3.0")).name(), "canary");
        assert_eq!(p.pick(Some(&v("1.2.3")), &v("2.0.0")).name(), "blue_green");
        assert_eq!(p.pick(None, &v("1.0.0")).name(), "blue_green");
    }
}
