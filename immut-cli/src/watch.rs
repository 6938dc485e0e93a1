//! `immut watch`: audits the service at the `[watch]` interval and repairs by replacement
//! ([`immut::watch::Watch`]), printing one line per finding, repair and cycle. Ctrl-C or
//! SIGTERM stops it: a repair in flight is cancelled safely (what it launched that does not
//! serve is terminated, what serves stays), the lease is released, and it exits 0.

use std::io::Write;
use std::time::{Duration, Instant};

use immut::watch::{Cycle, UnmanagedAction, UnmanagedScope, Watch};
use immut::{Deployer, Event, Release, Result};

use crate::exit::Exit;
use crate::progress::Mode;
use crate::spec::Spec;

/// The watch the spec describes; `interval` overrides `[watch] interval`.
pub fn build(spec: &Spec, deployer: Deployer, expected: Release, interval: Option<Duration>) -> Result<Watch> {
    let w = &spec.watch;
    let interval = interval.unwrap_or(w.interval);
    let mut b = Watch::builder(deployer, expected)
        .interval(interval)
        .max_repairs(w.max_repairs)
        .breaker_threshold(w.breaker_threshold)
        .unmanaged(w.unmanaged)
        .unmanaged_scope(w.unmanaged_scope);
    if let Some(grace) = w.grace {
        b = b.grace(grace);
    }
    b.build()
}

/// Prints a watch's events: readable lines (engine steps left out), or one JSON object each.
pub struct Printer {
    mode: Mode,
    start: Instant,
}

impl Printer {
    /// A printer for `mode` (live bars print lines here: a watch runs for hours).
    pub fn new(mode: Mode) -> Self {
        Printer { mode, start: Instant::now() }
    }

    /// Prints one event.
    pub fn event(&self, event: &Event) {
        let mut out = std::io::stdout().lock();
        match self.mode {
            Mode::Json => {
                let _ = writeln!(out, "{}", serde_json::to_string(event).expect("events serialize"));
            }
            Mode::Lines | Mode::Live => {
                if matches!(event, Event::Step { .. }) {
                    return;
                }
                let t = self.start.elapsed().as_secs_f64();
                let _ = writeln!(out, "[{t:7.1}s] {event}");
            }
        }
        let _ = out.flush();
    }

    /// Prints a note beside the events.
    pub fn note(&self, message: &str) {
        crate::progress::Progress::note(self.mode, message);
    }
}

/// The exit code of `immut watch --once`: 0 when nothing is left open, 1 when findings stay
/// open (reported only, within their grace period, beyond the rate, or the breaker is open),
/// the repair's code when it failed.
pub fn once_exit(cycle: &Cycle) -> Exit {
    if let Some(repair) = &cycle.repair
        && !repair.outcome.succeeded()
    {
        return Exit::of_outcome(&repair.outcome, false);
    }
    if cycle.yielded.is_some() {
        return Exit::Refused;
    }
    if cycle.findings.is_empty() || (cycle.repair.is_some() && !cycle.breaker_open) {
        Exit::Success
    } else {
        Exit::Findings
    }
}

/// Runs the watch until SIGINT or SIGTERM; a second signal says what is still in flight.
pub async fn run(mut watch: Watch, printer: Printer) -> Exit {
    let cancel = watch.cancel_handle();
    let mode = printer.mode;
    let signals = crate::signals::on_interrupt(move |seen| {
        let note = if seen == 1 {
            "stopping: a repair in flight is cancelled (what it launched that does not serve is terminated), then the lease is released"
        } else {
            "still stopping: the repair in flight finishes its rollback first; killing this process leaves it to the next `immut watch` or `immut resume`"
        };
        crate::progress::Progress::note(mode, note);
        cancel.cancel();
    });
    let s = watch.settings();
    let unmanaged = match s.unmanaged {
        UnmanagedAction::Report => "reported",
        UnmanagedAction::Replace => "replaced",
        UnmanagedAction::Terminate => "terminated",
    };
    let scope = match s.unmanaged_scope {
        UnmanagedScope::Serving => "when they serve",
        UnmanagedScope::Service => "anywhere in the service",
    };
    printer.note(&format!(
        "watching every {:?}: unhealthy instances replaced after {:?}, at most {} replacements per interval, the breaker opens after {} failed repairs, unmanaged instances {unmanaged} {scope}; Ctrl-C stops",
        s.interval, s.grace, s.max_repairs, s.breaker_threshold
    ));
    watch.run(|e| printer.event(e)).await;
    signals.abort();
    printer.note("watch stopped; the lease is released");
    Exit::Success
}
