//! The one retry layer: retryable errors are retried with backoff and jitter, each retry an event.

use super::*;

impl Deployment {
    /// Runs `f` under the retry policy and records its retries as events.
    pub(super) async fn retrying<T, F, Fut>(&mut self, operation: &'static str, f: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        let attempt = retry_call(&self.inner.settings, operation, f).await;
        self.absorb(attempt)
    }

    pub(super) fn absorb<T>(&mut self, (result, retries): (Result<T>, Vec<Event>)) -> Result<T> {
        self.calls.retries += retries.len() as u64;
        self.pending.extend(retries);
        result
    }
}

/// Runs `f`, retrying retryable errors with backoff and jitter; returns the result and one
/// event per retry. Each attempt is bounded by the progress deadline.
pub(super) async fn retry_call<T, F, Fut>(
    settings: &Settings,
    operation: &'static str,
    mut f: F,
) -> (Result<T>, Vec<Event>)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T>>,
{
    let policy = settings.retry;
    let deadline = settings.progress_deadline;
    let retries = Mutex::new(Vec::new());
    let attempt = || {
        let fut = f();
        async move {
            tokio::time::timeout(deadline, fut).await.unwrap_or_else(|_| {
                Err(Error::new(
                    ErrorKind::DeadlineExceeded,
                    format!("{operation} took longer than the progress deadline"),
                ))
            })
        }
    };
    let result = attempt
        .retry(
            ExponentialBuilder::default()
                .with_min_delay(policy.min_delay)
                .with_max_delay(policy.max_delay)
                .with_max_times(policy.max_retries)
                .with_jitter(),
        )
        .when(|e: &Error| e.is_retryable())
        .notify(|e: &Error, delay: Duration| {
            let mut r = retries.lock().expect("retry log lock poisoned");
            let attempt = r.len() as u32 + 1;
            tracing::warn!(operation, attempt, error = %e, "retrying");
            r.push(Event::Retrying {
                operation: operation.to_owned(),
                attempt,
                error: e.to_string(),
                delay_ms: delay.as_millis() as u64,
            });
        })
        .await;
    let result = result.map_err(|e| if e.operation().is_none() { e.with_operation(operation) } else { e });
    (result, retries.into_inner().expect("retry log lock poisoned"))
}
