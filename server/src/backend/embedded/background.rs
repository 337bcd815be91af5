//! The CPU priority of the store's background work: the checkpoint thread. No send waits
//! for a checkpoint while the active table has room, so the checkpoint yields the cores to
//! the threads that answer clients (the tokio workers and the writer) when both want them.
//! It still gets every idle cycle. If it falls far behind, the writer waits for it
//! (`Writer::make_room`) and, after `checkpoint_wait`, refuses sends with `Unavailable`:
//! back-pressure, not loss. A nice value only weighs the scheduler's choice; a lower-priority
//! thread preempted while it holds a lock the writer wants (redb's, the allocator's) can
//! still delay the writer, which is why it is lowered by 10 and not made `SCHED_IDLE`.
//! BENCHMARKS.md has the measurements.

/// The nice value of background work: a nice-10 thread weighs about a tenth of a
/// nice-0 one when the scheduler divides a busy core.
#[cfg_attr(not(target_os = "linux"), allow(dead_code))]
const BACKGROUND_NICE: i32 = 10;

/// Lowers the calling thread's priority to [`BACKGROUND_NICE`]; a thread whose nice value
/// is already higher keeps it. Best effort: where it cannot be
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
