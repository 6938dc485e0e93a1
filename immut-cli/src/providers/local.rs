//! The local provider: real processes behind the balancer. Every use of `immut::local` is in
//! this module, so a change of its API changes this file only.

use std::path::PathBuf;

use immut::local::{LocalProvider, sample};
use immut::{ArtifactSpec, Error, Result};

use super::{Access, Backend};
use crate::spec::{LocalSettings, Spec};

/// The image that names the sample service built into this binary.
pub const BUILTIN_SAMPLE: &str = "builtin:sample";

/// Serves as the sample service or as a service's balancer process when this process was
/// launched as one; returns otherwise. `main` calls it first, so `immut init --provider local`
/// can deploy the built-in sample, and the balancer that outlives each command is this binary.
pub fn serve_if_requested() {
    immut::local::serve_if_requested();
}

/// The artifact of a local spec (the executable's digest computed now) and the arguments to
/// put before the baseline's own.
pub(super) fn artifact(spec: &Spec) -> Result<(ArtifactSpec, Vec<String>)> {
    let a = &spec.artifact;
    let (path, args) = if a.image == BUILTIN_SAMPLE {
        let exe = std::env::current_exe().map_err(|e| {
            Error::invalid("artifact.image", format!("cannot find this executable for {BUILTIN_SAMPLE}: {e}"))
        })?;
        (exe, vec![sample::SAMPLE_FLAG.to_owned()])
    } else {
        let p = PathBuf::from(&a.image);
        let p = if p.is_absolute() { p } else { spec.file.parent().map(|d| d.join(&p)).unwrap_or(p) };
        (p, Vec::new())
    };
    let artifact = immut::local::artifact(&a.name, a.version.clone(), &path)?;
    if let Some(want) = &a.digest
        && artifact.digest.as_deref() != Some(want)
    {
        return Err(Error::invalid(
            "artifact.digest",
            format!(
                "{} has digest {}, the spec says {want}: the file changed; rebuild it or update the digest",
                path.display(),
                artifact.digest.as_deref().unwrap_or("?")
            ),
        ));
    }
    Ok((artifact, args))
}

pub(super) async fn retire(spec: &Spec, s: &LocalSettings) -> Result<Option<String>> {
    let stopped = immut::local::LocalBalancer::stop_service(&s.state_dir, &spec.service).await?;
    Ok(stopped.map(|pid| format!("stopped the balancer of {} (pid {pid})", spec.service)))
}

pub(super) async fn connect(
    spec: &Spec,
    s: &LocalSettings,
    access: Access,
    crash: Option<immut::local::SpawnCrash>,
) -> Result<Backend> {
    let mut builder = LocalProvider::builder().state_dir(&s.state_dir).term_timeout(s.term_timeout);
    if let Some(at) = crash {
        builder = builder.crash_at_spawn(at);
    }
    let provider = builder.build()?;
    // The balancer is a process of its own per service, found (or started on first use) at
    // the address kept in the state directory, so it outlives every command; `listen` only
    // matters when it is first started. A command that only reads never starts one: it reads
    // the serving set the stopped balancer kept.
    let traffic: std::sync::Arc<dyn immut::Traffic> = match access {
        Access::Read => match immut::local::LocalBalancer::find(&s.state_dir, &spec.service)? {
            Some(info) if info.running => std::sync::Arc::new(
                provider.balancer(&spec.service).listen(s.listen).drain_timeout(s.drain_timeout).build().await?,
            ),
            info => std::sync::Arc::new(Stopped(info.map(|i| i.serving).unwrap_or_default())),
        },
        Access::Write => std::sync::Arc::new(
            provider.balancer(&spec.service).listen(s.listen).drain_timeout(s.drain_timeout).build().await?,
        ),
    };
    let health = super::health(&spec.health, Vec::new());
    Ok(Backend {
        provider: std::sync::Arc::new(provider.clone()),
        traffic,
        health,
        adopt: Some(std::sync::Arc::new(provider)),
        alarms: None,
    })
}

/// A balancer that is not running, as a command that only reads sees it: the serving set it
/// kept, and no changes.
#[derive(Debug)]
struct Stopped(Vec<immut::InstanceId>);

#[async_trait::async_trait]
impl immut::Traffic for Stopped {
    async fn serving(&self) -> Result<Vec<immut::InstanceId>> {
        Ok(self.0.clone())
    }

    async fn attach(&self, _: &[immut::Instance]) -> Result<()> {
        Err(read_only())
    }

    async fn detach(&self, _: &[immut::InstanceId]) -> Result<()> {
        Err(read_only())
    }
}

fn read_only() -> Error {
    Error::new(immut::ErrorKind::Unsupported, "the balancer is not running and this command only reads")
}
