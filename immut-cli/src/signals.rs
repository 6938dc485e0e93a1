//! Ctrl-C and SIGTERM for the long-running commands.

/// Calls `on_signal` with the count so far (1 for the first) at each SIGINT or SIGTERM, until
/// the returned task is aborted. Without signal handlers (none can be installed), it returns at
/// once and signals keep their default effect.
pub fn on_interrupt(mut on_signal: impl FnMut(usize) + Send + 'static) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        use tokio::signal::unix::{SignalKind, signal};
        let (Ok(mut int), Ok(mut term)) = (signal(SignalKind::interrupt()), signal(SignalKind::terminate())) else {
            return;
        };
        let mut seen = 0;
        loop {
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
            }
            seen += 1;
            on_signal(seen);
        }
    })
}
