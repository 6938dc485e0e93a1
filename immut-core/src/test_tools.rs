//! The Python test tools (moto and what later tests add) that `./scripts/test.sh --setup`
//! installs into a virtual environment of the repository's own, `target/test-venv`, found the
//! same way by every test and example that starts one of them.

use std::path::PathBuf;

/// The interpreter of the test tools' environment: `IMMUT_TEST_PYTHON` when set (the test
/// script sets it), else `target/test-venv/bin/python` of this workspace. It must exist and be
/// able to import `module` (for example `moto.server`); otherwise the error says which command
/// sets it up. Never a Python traceback.
pub fn python_with(module: &str) -> Result<PathBuf, String> {
    let python = std::env::var_os("IMMUT_TEST_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../target/test-venv/bin/python")));
    let setup = "run ./scripts/test.sh --setup in the repository (it creates target/test-venv from \
                 scripts/python/requirements.txt), or set IMMUT_TEST_PYTHON to a Python that has it";
    if !python.exists() {
        return Err(format!("the test tools are not set up: {} does not exist; {setup}", python.display()));
    }
    let imported = std::process::Command::new(&python)
        .args(["-c", &format!("import {module}")])
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {}: {e}; {setup}", python.display()))?;
    if !imported.status.success() {
        return Err(format!("{} cannot import {module}; {setup}", python.display()));
    }
    Ok(python)
}
