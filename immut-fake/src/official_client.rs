//! Checking a fake against a cloud's official client: a script run by the pinned test Python
//! (`scripts/python/requirements.txt`) with the fake's URL, which fails on any client error.

use std::path::PathBuf;
use std::process::{Command, Stdio};

/// Runs `python script args...` without standard input, off the async runtime's threads, and
/// answers what it printed; when it cannot start or exits non-zero, a message with everything
/// it printed on both outputs.
pub async fn run_script(python: PathBuf, script: &str, args: Vec<String>) -> Result<String, String> {
    let script = script.to_owned();
    let shown = format!("{} {script}", python.display());
    let out = tokio::task::spawn_blocking(move || {
        Command::new(&python).arg(&script).args(&args).stdin(Stdio::null()).output()
    })
    .await
    .map_err(|e| format!("{shown} did not finish: {e}"))?
    .map_err(|e| format!("cannot run {shown}: {e}"))?;
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    if out.status.success() {
        Ok(stdout.into_owned())
    } else {
        Err(format!("{shown} failed ({}):\n{stdout}\n{stderr}", out.status))
    }
}
