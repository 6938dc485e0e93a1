//! How a running deployment is shown: live bars on a terminal (one per wave, plus the
//! serving, healthy and total counts), readable lines without one, or JSON lines.

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use immut::strategy::Decision;
use immut::{Event, InstanceId};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

/// How a command prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Live bars (a terminal).
    Live,
    /// One readable line per event.
    Lines,
    /// One JSON object per event.
    Json,
}

/// What is in flight, for the second Ctrl-C.
#[derive(Debug, Clone, Default)]
pub struct InFlight {
    /// The deployment.
    pub deployment: Option<String>,
    /// Whether it is rolling back.
    pub rolling_back: bool,
    /// Serving healthy, serving, live.
    pub counts: (usize, usize, usize),
    /// New and old live instances.
    pub new_old: (usize, usize),
    /// The last thing the engine waited for or decided.
    pub doing: String,
}

impl InFlight {
    /// A sentence for people.
    pub fn describe(&self) -> String {
        let (healthy, serving, live) = self.counts;
        format!(
            "still in flight: deployment {} {}; {live} live instances ({} new, {} old), {serving} serving, {healthy} of them healthy; now: {}. A rollback always runs to its end; if this process is killed, `immut resume` continues it from the journal",
            self.deployment.as_deref().unwrap_or("(not started)"),
            if self.rolling_back { "is rolling back" } else { "is cancelling (it rolls back at its next step)" },
            self.new_old.0,
            self.new_old.1,
            if self.doing.is_empty() { "starting" } else { &self.doing }
        )
    }
}

/// Prints events as they come.
pub struct Progress {
    mode: Mode,
    start: Instant,
    last_wait: String,
    state: Arc<Mutex<InFlight>>,
    multi: Option<MultiProgress>,
    counts: Option<ProgressBar>,
    waves: BTreeMap<u32, (ProgressBar, Vec<InstanceId>)>,
}

impl Progress {
    /// A printer in `mode`, sharing what is in flight through `state`.
    pub fn new(mode: Mode, state: Arc<Mutex<InFlight>>) -> Self {
        let (multi, counts) = if mode == Mode::Live {
            let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr());
            let counts = multi.add(ProgressBar::new_spinner());
            counts.set_style(ProgressStyle::with_template("{spinner} {elapsed:>4} {wide_msg}").expect("template"));
            counts.enable_steady_tick(std::time::Duration::from_millis(120));
            (Some(multi), Some(counts))
        } else {
            (None, None)
        };
        Progress { mode, start: Instant::now(), last_wait: String::new(), state, multi, counts, waves: BTreeMap::new() }
    }

    /// Shows one event.
    pub fn event(&mut self, event: &Event) {
        self.track(event);
        match self.mode {
            Mode::Json => {
                let line = serde_json::to_string(event).expect("events serialize");
                let _ = writeln!(std::io::stdout().lock(), "{line}");
            }
            Mode::Lines => {
                if let Some(line) = self.line(event) {
                    let t = self.start.elapsed().as_secs_f64();
                    let _ = writeln!(std::io::stdout().lock(), "[{t:6.1}s] {line}");
                }
            }
            Mode::Live => self.live(event),
        }
    }

    /// A line for the event, or `None` for steps that say nothing new.
    fn line(&mut self, event: &Event) -> Option<String> {
        match event {
            Event::Step { decision: Decision::Wait { reason, .. }, .. } => {
                if *reason == self.last_wait {
                    return None;
                }
                self.last_wait = reason.clone();
            }
            Event::Step { .. } => return None,
            _ => {}
        }
        Some(event.to_string())
    }

    fn track(&self, event: &Event) {
        let mut s = self.state.lock().expect("progress state");
        match event {
            Event::Started { deployment, .. } | Event::Resumed { deployment, .. } => {
                s.deployment = Some(deployment.to_string())
            }
            Event::Step { capacity, decision, rolling_back, .. } => {
                s.counts = (capacity.serving_healthy, capacity.serving, capacity.total);
                s.new_old = (capacity.new_live, capacity.old_live);
                s.rolling_back = *rolling_back;
                s.doing = match decision {
                    Decision::Wait { reason, .. } => format!("waiting: {reason}"),
                    other => other.kind().to_owned(),
                };
            }
            Event::RollbackStarted { .. } => s.rolling_back = true,
            _ => {}
        }
    }

    fn live(&mut self, event: &Event) {
        let (Some(multi), Some(counts)) = (self.multi.clone(), self.counts.clone()) else { return };
        match event {
            Event::Step { capacity, rolling_back, .. } => {
                counts.set_message(format!(
                    "serving {} · healthy {} · total {} (new {}, old {}){}",
                    capacity.serving,
                    capacity.serving_healthy,
                    capacity.total,
                    capacity.new_live,
                    capacity.old_live,
                    if *rolling_back { " · ROLLING BACK" } else { "" }
                ));
            }
            Event::Launched { wave, ids, .. } => {
                let bar = multi.add(ProgressBar::new(ids.len() as u64));
                bar.set_style(
                    ProgressStyle::with_template("wave {prefix:>3} [{bar:30}] {pos}/{len} serving  {msg}")
                        .expect("template")
                        .progress_chars("=> "),
                );
                bar.set_prefix(wave.to_string());
                self.waves.insert(*wave, (bar, ids.clone()));
            }
            Event::Attached { ids } | Event::Switched { attached: ids, .. } => {
                for (bar, members) in self.waves.values() {
                    let n = ids.iter().filter(|i| members.contains(i)).count() as u64;
                    bar.inc(n);
                }
            }
            _ => {}
        }
        if let Some(line) = self.line(event) {
            if matches!(event, Event::Step { .. }) {
                return;
            }
            let t = self.start.elapsed().as_secs_f64();
            let _ = multi.println(format!("[{t:6.1}s] {line}"));
        }
        if matches!(event, Event::Finished { .. }) {
            counts.finish_and_clear();
            for (bar, _) in self.waves.values() {
                bar.finish();
            }
        }
    }

    /// Prints a note beside the events (a cancellation, what is in flight).
    pub fn note(mode: Mode, message: &str) {
        match mode {
            Mode::Json => {
                let line = serde_json::json!({ "event": "note", "message": message });
                let _ = writeln!(std::io::stdout().lock(), "{line}");
            }
            _ => eprintln!("{message}"),
        }
    }
}
