//! The CPU priority of the store's background work: the checkpoint thread. No client waits
//! on a checkpoint, so it yields the cores to the threads that answer clients (the tokio
//! workers and the writer) when both want them, as RocksDB lowers the priority of its
//! compaction threads. It still gets every idle cycle, and a checkpoint that falls behind
//! makes the writer wait for room, so it cannot fall behind without bound.

/// The nice value of background work: a nice-10 thread weighs about a tenth of a
/// nice-0 one when the scheduler divides a busy core.
const BACKGROUND_NICE: i32 = 10;

/// Lowers the calling thread's priority to [`BACKGROUND_NICE`] (never raises it: a
/// process started with a higher nice value keeps it). Best effort: where it cannot be
/// done the thread runs at the process's priority, which costs latency, not data.
pub(super) fn lower_this_thread() {
    // On Linux `setpriority(PRIO_PROCESS, tid)` sets one thread's nice value.
    #[cfg(target_os = "linux")]
    {
        use rustix::process::{getpriority_process, setpriority_process};
        let me = Some(rustix::thread::gettid());
        let lowered = getpriority_process(me).and_then(|nice| {
            if nice < BACKGROUND_NICE {
                setpriority_process(me, BACKGROUND_NICE)
            } else {
                Ok(())
            }
        });
        if let Err(e) = lowered {
            tracing::debug!(error = %e, "message store: cannot lower the checkpoint thread's priority");
        }
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    /// The nice value of the calling thread, from `/proc/thread-self/stat` (field 19).
    fn own_nice() -> i32 {
        let stat = std::fs::read_to_string("/proc/thread-self/stat").expect("read own stat");
        // Fields after the command name, which is in parentheses and may hold spaces.
        let after_name = &stat[stat.rfind(')').expect("comm") + 2..];
        after_name
            .split(' ')
            .nth(16)
            .expect("nice field")
            .parse()
            .expect("numeric nice")
    }

    #[test]
    fn lowers_only_the_calling_thread() {
        let before = std::thread::spawn(own_nice).join().unwrap();
        let lowered = std::thread::spawn(|| {
            super::lower_this_thread();
            own_nice()
        })
        .join()
        .unwrap();
        assert_eq!(
            lowered,
            super::BACKGROUND_NICE.max(before),
            "nice before: {before}"
        );
        assert_eq!(
            own_nice(),
            before,
            "the caller's other threads keep their priority"
        );
    }
}
