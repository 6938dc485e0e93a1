//! Process identity on this machine: a pid plus its start time, so that a reused pid is never
//! taken for the process that was recorded. Linux reads `/proc`; elsewhere every pid is treated
//! as alive (a conservative answer for locks).

/// The start time (clock ticks since boot) of a live, non-zombie process.
pub fn process_start(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: the fields start after the last ')'.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    if matches!(fields.first(), Some(&"Z") | Some(&"X")) {
        return None;
    }
    fields.get(19)?.parse().ok()
}

/// Whether the process recorded as (`pid`, `start_ticks`) still runs.
pub fn is_alive(pid: i32, start_ticks: Option<u64>) -> bool {
    if !std::path::Path::new("/proc/self/stat").exists() {
        return true;
    }
    match (process_start(pid), start_ticks) {
        (Some(now), Some(then)) => now == then,
        (Some(_), None) => true,
        (None, _) => false,
    }
}

/// This process's pid and start time.
pub fn current() -> (i32, Option<u64>) {
    let pid = std::process::id() as i32;
    (pid, process_start(pid))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_alive_and_identified_by_its_start_time() {
        let (pid, start) = current();
        assert!(start.is_some());
        assert!(is_alive(pid, start));
        assert!(!is_alive(pid, start.map(|s| s + 1)), "a reused pid must not pass for the recorded process");
    }
}
