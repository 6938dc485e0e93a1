//! The lease per service: epochs, renewals, fencing and release, as create-only objects.
//!
//! A deployer holds a service while it holds the service's newest **lease epoch**. It takes
//! epoch `e + 1` by creating `lease/<service>/<e+1>/lease.json` create-only, so of two
//! deployers that race for an epoch exactly one wins. It renews by creating
//! `renew-<n>.json` objects under its epoch (a background thread, every third of the lease
//! time), and it releases with `released.json`, so the next deployer starts at once.
//!
//! # The guarantee
//!
//! With `ttl` the lease time, `skew` the clock-skew margin ([`LeaseSettings`]) and `budget`
//! the call budget:
//!
//! - a holder confirms before every provider mutation that no newer epoch exists and that its
//!   lease has at least `budget` left by its own clock (renewing first when it has less);
//! - a newcomer takes over an unreleased epoch only once its expiry, plus `skew`, has passed
//!   by the newcomer's clock (or, on the same machine and boot, once the holder's process is
//!   gone);
//! - so, as long as no two deployers' clocks differ by more than `skew`, a mutation that
//!   starts within `budget` of its check lands before any newcomer acts. A deployer that was
//!   paused (SIGSTOP, a frozen VM) and wakes after losing its lease fails its next check and
//!   stops without mutating anything, saying so.
//!
//! The limits: a call that is held up between its check and the cloud for longer than
//! `budget` (the process paused exactly there) can still land after a takeover; clouds take
//! no fencing token, so nothing downstream can refuse it. Clocks that drift apart by more than
//! `skew` break the guarantee. A holder that cannot reach the store cannot renew, and loses
//! its lease when it expires.

use std::sync::mpsc::{RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{Created, StateStore, check_service, corrupt, nonce, now_ms, seq_key};
use crate::error::{Error, ErrorKind, Result};
use crate::model::DeploymentId;
use crate::process;

/// How long a lease lasts and the margins it keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseSettings {
    /// How long a lease lasts without renewal (default 30 s). The holder renews every third
    /// of it; a crashed holder's service is free after `ttl + clock_skew`.
    pub ttl: Duration,
    /// The most that two deployers' clocks may differ (default 5 s). A newcomer waits this
    /// long past the expiry before it takes over.
    pub clock_skew: Duration,
    /// The time one provider call needs (default 10 s): before every mutation the holder makes
    /// sure its lease has at least this much left.
    pub call_budget: Duration,
}

impl Default for LeaseSettings {
    fn default() -> Self {
        LeaseSettings {
            ttl: Duration::from_secs(30),
            clock_skew: Duration::from_secs(5),
            call_budget: Duration::from_secs(10),
        }
    }
}

impl LeaseSettings {
    /// Settings in milliseconds, for tests and demos.
    pub fn millis(ttl: u64, clock_skew: u64, call_budget: u64) -> Self {
        LeaseSettings {
            ttl: Duration::from_millis(ttl),
            clock_skew: Duration::from_millis(clock_skew),
            call_budget: Duration::from_millis(call_budget),
        }
    }

    /// Checks the settings: the lease must outlast the call budget, with room to renew.
    pub fn validate(&self) -> Result<()> {
        if self.ttl < Duration::from_millis(30) {
            return Err(Error::invalid("lease.ttl", format!("{:?} is too short; use at least 30 ms", self.ttl)));
        }
        if self.call_budget >= self.ttl {
            return Err(Error::invalid(
                "lease.call_budget",
                format!("{:?} must be shorter than the lease time {:?}", self.call_budget, self.ttl),
            ));
        }
        Ok(())
    }

    fn renew_every(&self) -> Duration {
        self.ttl / 3
    }
}

/// A lease epoch as stored in `lease/<service>/<epoch>/lease.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseRecord {
    /// The writer that created it.
    pub writer: String,
    /// Its nonce.
    pub nonce: String,
    /// The service.
    pub service: String,
    /// The epoch, from 1, with no gaps.
    pub epoch: u64,
    /// The deployment that holds it.
    pub deployment: DeploymentId,
    /// The holder's hostname.
    pub host: String,
    /// The holder's boot id (empty when unknown).
    pub boot_id: String,
    /// The holder's pid.
    pub pid: i32,
    /// The holder's process start time, in clock ticks since boot.
    pub start_ticks: Option<u64>,
    /// When it was taken, by the holder's clock (ms since the Unix epoch).
    pub acquired_at_ms: u64,
    /// When it expires unless renewed, by the holder's clock.
    pub expires_at_ms: u64,
    /// The holder's clock-skew margin, in milliseconds.
    pub clock_skew_ms: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Renewal {
    writer: String,
    nonce: String,
    epoch: u64,
    n: u64,
    at_ms: u64,
    expires_at_ms: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Released {
    writer: String,
    nonce: String,
    epoch: u64,
    at_ms: u64,
}

/// What the store says about a service's newest lease epoch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseState {
    /// The epoch's record.
    pub lease: LeaseRecord,
    /// Its expiry after its newest renewal, by the holder's clock.
    pub expires_at_ms: u64,
    /// How many renewals it has.
    pub renewals: u64,
    /// Whether its holder released it.
    pub released: bool,
}

impl LeaseState {
    /// Until when it blocks a newcomer: its expiry plus the larger of the two clock-skew
    /// margins.
    pub fn free_at_ms(&self, skew: Duration) -> u64 {
        self.expires_at_ms + self.lease.clock_skew_ms.max(skew.as_millis() as u64)
    }

    fn on_this_machine(&self, store: &StateStore) -> bool {
        let me = store.host();
        !me.boot_id.is_empty() && self.lease.host == me.hostname && self.lease.boot_id == me.boot_id
    }

    /// On this machine and boot, the holder's process is gone: it holds nothing.
    fn holder_is_dead_here(&self, store: &StateStore) -> bool {
        self.on_this_machine(store) && !process::is_alive(self.lease.pid, self.lease.start_ticks)
    }

    /// On this machine and boot, the holder's process still runs (it may be stopped).
    fn holder_is_alive_here(&self, store: &StateStore) -> bool {
        self.on_this_machine(store) && process::is_alive(self.lease.pid, self.lease.start_ticks)
    }

    fn describe(&self) -> String {
        format!(
            "deployment {} (lease epoch {}, host {}, pid {})",
            self.lease.deployment, self.lease.epoch, self.lease.host, self.lease.pid
        )
    }
}

fn epoch_dir(service: &str, epoch: u64) -> String {
    format!("lease/{service}/{}", seq_key(epoch))
}

fn lease_key(service: &str, epoch: u64) -> String {
    format!("{}/lease.json", epoch_dir(service, epoch))
}

async fn read_lease(store: &StateStore, service: &str, epoch: u64) -> Result<Option<LeaseRecord>> {
    let key = lease_key(service, epoch);
    match store.get(&key).await? {
        None => Ok(None),
        Some(bytes) => {
            let record: LeaseRecord =
                serde_json::from_slice(&bytes).map_err(|e| corrupt(store, &key, format!("not a lease record: {e}")))?;
            if record.epoch != epoch || record.service != service {
                return Err(corrupt(store, &key, format!("it names epoch {} of {}", record.epoch, record.service)));
            }
            Ok(Some(record))
        }
    }
}

/// The newest lease epoch of `service` on the store, with its renewals and release.
pub async fn newest(store: &StateStore, service: &str) -> Result<Option<LeaseState>> {
    check_service(service)?;
    let dirs = store.list_dirs(&format!("lease/{service}")).await?;
    let mut epochs: Vec<u64> = Vec::new();
    for name in &dirs {
        let epoch =
            name.parse().map_err(|_| corrupt(store, &format!("lease/{service}/{name}"), "not a lease epoch"))?;
        epochs.push(epoch);
    }
    epochs.sort_unstable();
    // A folder without its lease.json is a create that never finished (a local crash between
    // the staging file and the link): the epoch was never taken.
    for epoch in epochs.into_iter().rev() {
        let Some(lease) = read_lease(store, service, epoch).await? else { continue };
        let dir = epoch_dir(service, epoch);
        let keys = store.list(&dir).await?;
        let mut renewals: Vec<&String> =
            keys.iter().filter(|k| k.rsplit('/').next().is_some_and(|f| f.starts_with("renew-"))).collect();
        renewals.sort();
        let mut expires_at_ms = lease.expires_at_ms;
        let count = renewals.len() as u64;
        if let Some(last) = renewals.last() {
            let bytes = store.get(last).await?.ok_or_else(|| corrupt(store, last, "listed but missing"))?;
            let renewal: Renewal = serde_json::from_slice(&bytes)
                .map_err(|e| corrupt(store, last, format!("not a lease renewal: {e}")))?;
            if renewal.epoch != epoch {
                return Err(corrupt(store, last, format!("it renews epoch {}", renewal.epoch)));
            }
            expires_at_ms = expires_at_ms.max(renewal.expires_at_ms);
        }
        let released = keys.iter().any(|k| k.ends_with("/released.json"));
        return Ok(Some(LeaseState { lease, expires_at_ms, renewals: count, released }));
    }
    Ok(None)
}

/// Who holds `service`: the newest unexpired, unreleased lease epoch (unexpired counting the
/// clock-skew margin). A pid and start-time check is used only on the same machine and boot
/// (hostname and boot id match): there it confirms a holder whose lease has expired (a
/// stopped process) and dismisses one whose process is gone, as [`acquire`] does; it never
/// declares a holder on another machine dead.
pub fn holder(store: &StateStore, service: &str, skew: Duration) -> Result<Option<LeaseState>> {
    let service_owned = service.to_owned();
    let state = store.block(move |s| async move { newest(&s, &service_owned).await })?;
    Ok(state.filter(|st| {
        !st.released
            && !st.holder_is_dead_here(store)
            && (now_ms() < st.free_at_ms(skew) || st.holder_is_alive_here(store))
    }))
}

/// A held lease: confirms, renews (in the background) and releases it. Cheap to clone.
#[derive(Clone)]
pub struct Lease {
    inner: Arc<LeaseInner>,
}

struct LeaseInner {
    store: StateStore,
    service: String,
    epoch: u64,
    deployment: DeploymentId,
    settings: LeaseSettings,
    local: Mutex<Local>,
    stop: Mutex<Option<Sender<()>>>,
}

#[derive(Debug)]
struct Local {
    expires_at_ms: u64,
    renewals: u64,
    lost: Option<String>,
    released: bool,
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lease")
            .field("service", &self.inner.service)
            .field("epoch", &self.inner.epoch)
            .field("deployment", &self.inner.deployment)
            .field("local", &*self.inner.local.lock().expect("lease state poisoned"))
            .finish()
    }
}

/// Takes the lease of `service` for `deployment`, or refuses with [`ErrorKind::Conflict`]
/// naming the holder and when its lease frees up. Blocks on the store.
pub fn acquire(store: &StateStore, service: &str, deployment: &DeploymentId, settings: LeaseSettings) -> Result<Lease> {
    settings.validate()?;
    check_service(service)?;
    let service_owned = service.to_owned();
    let newest = store.block(move |s| async move { newest(&s, &service_owned).await })?;
    let epoch = match &newest {
        None => 1,
        Some(st) if st.released => st.epoch() + 1,
        Some(st) if st.holder_is_dead_here(store) => {
            tracing::warn!(service, holder = %st.describe(), "taking over the lease of a process that is gone");
            st.epoch() + 1
        }
        Some(st) => {
            let now = now_ms();
            let free_at = st.free_at_ms(settings.clock_skew);
            if now < free_at {
                return Err(Error::new(
                    ErrorKind::Conflict,
                    format!(
                        "service {service} is being deployed by {}; its lease runs until {} and frees at {} unless renewed (expiry plus the clock-skew margin, {} ms from now); wait for it to finish, or cancel it",
                        st.describe(),
                        rfc3339(st.expires_at_ms),
                        rfc3339(free_at),
                        free_at - now
                    ),
                ));
            }
            tracing::warn!(service, holder = %st.describe(), "taking over an expired lease");
            st.epoch() + 1
        }
    };
    let (pid, start_ticks) = process::current();
    let now = now_ms();
    let record = LeaseRecord {
        writer: store.writer().to_owned(),
        nonce: nonce(),
        service: service.to_owned(),
        epoch,
        deployment: deployment.clone(),
        host: store.host().hostname.clone(),
        boot_id: store.host().boot_id.clone(),
        pid,
        start_ticks,
        acquired_at_ms: now,
        expires_at_ms: now + settings.ttl.as_millis() as u64,
        clock_skew_ms: settings.clock_skew.as_millis() as u64,
    };
    let bytes = serde_json::to_vec(&record).expect("lease records serialize");
    let (key, nonce) = (lease_key(service, epoch), record.nonce.clone());
    match store.block(move |s| async move { s.create(&key, bytes, &nonce).await })? {
        Created::Mine => {
            tracing::info!(service, epoch, deployment = %deployment, "lease taken");
            Ok(Lease::start(store.clone(), record, settings))
        }
        Created::Theirs(bytes) => {
            let theirs: LeaseRecord = serde_json::from_slice(&bytes)
                .map_err(|e| corrupt(store, &lease_key(service, epoch), format!("not a lease record: {e}")))?;
            Err(Error::new(
                ErrorKind::Conflict,
                format!(
                    "service {service} was taken first by deployment {} (lease epoch {epoch}, host {}, pid {}); wait for it to finish, or cancel it",
                    theirs.deployment, theirs.host, theirs.pid
                ),
            ))
        }
    }
}

impl LeaseState {
    fn epoch(&self) -> u64 {
        self.lease.epoch
    }
}

impl Lease {
    fn start(store: StateStore, record: LeaseRecord, settings: LeaseSettings) -> Lease {
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let lease = Lease {
            inner: Arc::new(LeaseInner {
                store,
                service: record.service.clone(),
                epoch: record.epoch,
                deployment: record.deployment.clone(),
                settings,
                local: Mutex::new(Local {
                    expires_at_ms: record.expires_at_ms,
                    renewals: 0,
                    lost: None,
                    released: false,
                }),
                stop: Mutex::new(Some(tx)),
            }),
        };
        let weak: Weak<LeaseInner> = Arc::downgrade(&lease.inner);
        let every = settings.renew_every();
        let spawned = std::thread::Builder::new().name("immut-lease".to_owned()).spawn(move || {
            loop {
                match rx.recv_timeout(every) {
                    Err(RecvTimeoutError::Timeout) => {}
                    _ => return,
                }
                let Some(inner) = weak.upgrade() else { return };
                let lease = Lease { inner };
                if lease.is_released() || lease.lost().is_some() {
                    return;
                }
                if let Err(e) = lease.renew_blocking() {
                    if lease.lost().is_some() {
                        tracing::error!(error = %e, "lease lost");
                        return;
                    }
                    tracing::warn!(error = %e, "cannot renew the lease; trying again");
                }
            }
        });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start the lease renewal thread; the lease is renewed before mutations only");
        }
        lease
    }

    /// The service.
    pub fn service(&self) -> &str {
        &self.inner.service
    }

    /// The epoch held.
    pub fn epoch(&self) -> u64 {
        self.inner.epoch
    }

    /// The deployment that holds it.
    pub fn deployment(&self) -> &DeploymentId {
        &self.inner.deployment
    }

    /// The settings it was taken with.
    pub fn settings(&self) -> LeaseSettings {
        self.inner.settings
    }

    /// Its expiry as last written, by this machine's clock (ms since the Unix epoch).
    pub fn expires_at_ms(&self) -> u64 {
        self.local().expires_at_ms
    }

    /// How many renewals it has written.
    pub fn renewals(&self) -> u64 {
        self.local().renewals
    }

    /// Why it was lost, once it was.
    pub fn lost(&self) -> Option<String> {
        self.local().lost.clone()
    }

    fn is_released(&self) -> bool {
        self.local().released
    }

    fn local(&self) -> std::sync::MutexGuard<'_, Local> {
        self.inner.local.lock().expect("lease state poisoned")
    }

    fn lost_error(&self, why: &str) -> Error {
        Error::new(
            ErrorKind::Conflict,
            format!(
                "deployment {} lost its lease on service {} (epoch {}): {why}; it stopped without changing anything more",
                self.inner.deployment, self.inner.service, self.inner.epoch
            ),
        )
    }

    fn mark_lost(&self, why: String) -> Error {
        let mut local = self.local();
        let why = local.lost.get_or_insert(why).clone();
        drop(local);
        self.lost_error(&why)
    }

    /// The error of a lease that was lost, or `None` while it is held.
    pub fn lost_err(&self) -> Option<Error> {
        self.lost().map(|why| self.lost_error(&why))
    }

    /// Confirms, before a provider mutation, that this lease is still the newest epoch and has
    /// at least the call budget left by this machine's clock, renewing it first when it has
    /// less. Fails with [`ErrorKind::Conflict`] ("lost its lease") once it is lost, or with a
    /// retryable error when the store cannot be reached.
    pub async fn confirm(&self) -> Result<()> {
        let lease = self.clone();
        self.inner.store.run(move |_| async move { lease.confirm_inner().await }).await
    }

    /// [`Lease::confirm`], blocking this thread.
    pub fn confirm_blocking(&self) -> Result<()> {
        let lease = self.clone();
        self.inner.store.block(move |_| async move { lease.confirm_inner().await })
    }

    async fn confirm_inner(&self) -> Result<()> {
        if let Some(e) = self.lost_err() {
            return Err(e);
        }
        if self.is_released() {
            return Err(self.lost_error("it was released already"));
        }
        let budget = self.inner.settings.call_budget.as_millis() as u64;
        if now_ms() + budget >= self.expires_at_ms() {
            self.renew_inner().await?;
            if now_ms() + budget >= self.expires_at_ms() {
                return Err(self.mark_lost("its lease runs out before a call could finish".to_owned()));
            }
        }
        self.check_newer().await
    }

    /// Fails once a newer epoch exists: someone took the service over.
    async fn check_newer(&self) -> Result<()> {
        let store = &self.inner.store;
        let next = self.inner.epoch + 1;
        if store.exists(&lease_key(&self.inner.service, next)).await? {
            let taker = read_lease(store, &self.inner.service, next).await.ok().flatten();
            let who = taker.map_or_else(
                || format!("lease epoch {next} exists"),
                |t| {
                    format!("deployment {} took it over as epoch {next} (host {}, pid {})", t.deployment, t.host, t.pid)
                },
            );
            return Err(self.mark_lost(who));
        }
        Ok(())
    }

    fn renew_blocking(&self) -> Result<()> {
        let lease = self.clone();
        self.inner.store.block(move |_| async move { lease.renew_inner().await })
    }

    async fn renew_inner(&self) -> Result<()> {
        if let Some(e) = self.lost_err() {
            return Err(e);
        }
        let now = now_ms();
        let (expires, n) = {
            let local = self.local();
            (local.expires_at_ms, local.renewals + 1)
        };
        if now >= expires {
            // Name the deployer that took over, when one did.
            self.check_newer().await?;
            return Err(self.mark_lost(format!(
                "it expired at {} before it was renewed (the process was paused, or the store unreachable)",
                rfc3339(expires)
            )));
        }
        self.check_newer().await?;
        let renewal = Renewal {
            writer: self.inner.store.writer().to_owned(),
            nonce: nonce(),
            epoch: self.inner.epoch,
            n,
            at_ms: now,
            expires_at_ms: now + self.inner.settings.ttl.as_millis() as u64,
        };
        let key = format!("{}/renew-{}.json", epoch_dir(&self.inner.service, self.inner.epoch), seq_key(n));
        let bytes = serde_json::to_vec(&renewal).expect("renewals serialize");
        match self.inner.store.create(&key, bytes, &renewal.nonce).await? {
            Created::Mine => {
                let mut local = self.local();
                local.expires_at_ms = local.expires_at_ms.max(renewal.expires_at_ms);
                local.renewals = local.renewals.max(n);
                Ok(())
            }
            Created::Theirs(_) => {
                Err(self.mark_lost(format!("another writer renewed epoch {} as {key}", self.inner.epoch)))
            }
        }
    }

    /// Releases the lease with a create-only release record, so the next deployer starts at
    /// once. Idempotent; a lost lease is not released (it is no longer this deployer's).
    pub fn release(&self) -> Result<()> {
        if let Some(stop) = self.inner.stop.lock().expect("lease stop poisoned").take() {
            let _ = stop.send(());
        }
        {
            let mut local = self.local();
            if local.released || local.lost.is_some() {
                return Ok(());
            }
            local.released = true;
        }
        let record = Released {
            writer: self.inner.store.writer().to_owned(),
            nonce: nonce(),
            epoch: self.inner.epoch,
            at_ms: now_ms(),
        };
        let key = format!("{}/released.json", epoch_dir(&self.inner.service, self.inner.epoch));
        let bytes = serde_json::to_vec(&record).expect("releases serialize");
        let nonce = record.nonce.clone();
        match self.inner.store.block(move |s| async move { s.create(&key, bytes, &nonce).await })? {
            Created::Mine => {
                tracing::info!(service = %self.inner.service, epoch = self.inner.epoch, "lease released");
                Ok(())
            }
            Created::Theirs(_) => Ok(()),
        }
    }
}

/// Releases the lease when dropped.
#[derive(Debug)]
pub(crate) struct ReleaseOnDrop(pub(crate) Lease);

impl Drop for ReleaseOnDrop {
    fn drop(&mut self) {
        if let Err(e) = self.0.release() {
            tracing::warn!(error = %e, "cannot release the lease; it frees when it expires");
        }
    }
}

/// A wall-clock time in ms as RFC 3339 (UTC, millisecond precision).
pub(crate) fn rfc3339(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (h, m, s) = (rem / 3600, rem % 3600 / 60, rem % 60);
    // Civil from days (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let mo = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if mo <= 2 { y + 1 } else { y };
    format!("{y:04}-{mo:02}-{d:02}T{h:02}:{m:02}:{s:02}.{:03}Z", ms % 1000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_print_as_rfc3339() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(1_700_000_000_123), "2023-11-14T22:13:20.123Z");
        assert_eq!(rfc3339(951_782_400_000), "2000-02-29T00:00:00.000Z");
    }

    #[test]
    fn settings_must_leave_room_for_a_call() {
        assert!(LeaseSettings::default().validate().is_ok());
        let e = LeaseSettings::millis(1000, 100, 1000).validate().unwrap_err();
        assert!(e.message().starts_with("lease.call_budget"), "{e}");
        assert!(LeaseSettings::millis(10, 0, 1).validate().is_err());
    }

    #[test]
    fn one_epoch_at_a_time_and_a_release_frees_the_service_at_once() {
        let store = StateStore::memory();
        let settings = LeaseSettings::millis(60_000, 1000, 1000);
        let a = acquire(&store, "web", &DeploymentId::new("d-a"), settings).unwrap();
        assert_eq!(a.epoch(), 1);
        let e = acquire(&store, "web", &DeploymentId::new("d-b"), settings).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Conflict);
        assert!(e.message().contains("d-a") && e.message().contains("epoch 1"), "{e}");
        let held = holder(&store, "web", settings.clock_skew).unwrap().unwrap();
        assert_eq!(held.lease.deployment, DeploymentId::new("d-a"));
        a.confirm_blocking().unwrap();
        a.release().unwrap();
        assert!(holder(&store, "web", settings.clock_skew).unwrap().is_none());
        let b = acquire(&store, "web", &DeploymentId::new("d-b"), settings).unwrap();
        assert_eq!(b.epoch(), 2);
        // A released lease confirms nothing any more.
        assert!(a.confirm_blocking().unwrap_err().message().contains("released"));
        b.release().unwrap();
    }

    #[test]
    fn a_holder_whose_lease_ran_out_is_fenced_and_the_newcomer_waits_out_the_skew() {
        // Two writers on "different machines" (no boot id, so no pid shortcut).
        let store = StateStore::memory();
        let (a_store, b_store) = (store.clone().with_host("machine-a"), store.with_host("machine-b"));
        let settings = LeaseSettings::millis(300, 200, 50);
        let a = acquire(&a_store, "web", &DeploymentId::new("d-a"), settings).unwrap();
        // Stop renewing, as SIGSTOP would: the renewal thread is told to stop.
        a.inner.stop.lock().unwrap().take();
        std::thread::sleep(Duration::from_millis(350));
        // Expired, but within the skew margin: still refused.
        let e = acquire(&b_store, "web", &DeploymentId::new("d-b"), settings).unwrap_err();
        assert!(e.message().contains("frees at"), "{e}");
        std::thread::sleep(Duration::from_millis(250));
        let b = acquire(&b_store, "web", &DeploymentId::new("d-b"), settings).unwrap();
        assert_eq!(b.epoch(), 2);
        let lost = a.confirm_blocking().unwrap_err();
        assert!(lost.message().contains("lost its lease") && lost.message().contains("d-a"), "{lost}");
        assert!(a.lost().is_some());
        b.confirm_blocking().unwrap();
        // A lost lease writes no release record.
        a.release().unwrap();
        let held = holder(&b_store, "web", settings.clock_skew).unwrap().unwrap();
        assert_eq!(held.lease.epoch, 2);
        b.release().unwrap();
    }

    #[test]
    fn renewals_keep_a_lease_alive_past_its_first_expiry() {
        let store = StateStore::memory().with_host("machine-a");
        let settings = LeaseSettings::millis(150, 50, 20);
        let a = acquire(&store, "web", &DeploymentId::new("d-a"), settings).unwrap();
        let first = a.expires_at_ms();
        std::thread::sleep(Duration::from_millis(400));
        a.confirm_blocking().unwrap();
        assert!(a.renewals() >= 2, "{} renewals", a.renewals());
        assert!(a.expires_at_ms() > first + 200);
        let other = store.clone().with_host("machine-b");
        assert!(acquire(&other, "web", &DeploymentId::new("d-b"), settings).is_err());
        a.release().unwrap();
    }
}
