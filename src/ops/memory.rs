//! The allocator, and giving its free memory back to the operating system.
//!
//! keyless allocates with jemalloc, not glibc's malloc. The controller's live memory is mostly
//! long-lived small records (the stores) between which every list and every pass allocates and
//! frees; glibc returns memory only in whole free pages and kept ~30 MiB more resident for the
//! same live objects at issue 18's population (10,000 OpenAIAccess, 20,000 ServiceAccounts, 2,000
//! Namespaces: 110.9 MiB steady against 94.5 MiB with jemalloc in the same benchmark; mimalloc
//! kept 121.8 MiB). jemalloc's size-class slabs keep short- and long-lived objects apart, and its
//! purge hands back the pages no live object uses.
//!
//! Two arenas (`narenas:2`): jemalloc's default is four per CPU of the node, not of the pod's
//! limit, and each arena holds freed memory of its own. The stores allocate from a third arena of their
//! own, on a thread of their own ([`spawn_on_the_stores_thread`]), apart from the passes. A background thread purges on jemalloc's
//! decay timeline; [`purge_periodically`] (`--memory-trim-interval`) also empties everything freed
//! at once, so a quiet controller's RSS is its live memory.

use std::time::Duration;

#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc reads its options from this symbol (the crate's prefixed build names it
/// `_rjem_malloc_conf`) at its first allocation; the `_RJEM_MALLOC_CONF` environment variable
/// still overrides each one.
#[allow(unsafe_code)]
#[unsafe(export_name = "_rjem_malloc_conf")]
pub static MALLOC_CONF: &[u8; 33] = b"narenas:2,background_thread:true\0";

/// `MALLCTL_ARENAS_ALL`: the arena index that addresses every arena at once.
const ALL_ARENAS: &str = "arena.4096.purge\0";

/// Hands free heap memory back to the kernel every `interval` until `shutdown`.
pub async fn purge_periodically(
    interval: Duration,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => return,
            _ = tokio::time::sleep(interval) => {}
        }
        // It takes the arenas' locks and madvises: off the reactor's threads.
        let purged = tokio::task::spawn_blocking(release_free_memory).await;
        tracing::trace!(?purged, "returned free heap memory to the OS");
    }
}

/// Runs `task` on the stores' thread (`stores_runtime`) for as long as the runtime it is spawned
/// from runs: it ends with its own future, or when that runtime shuts down, as a task spawned there
/// would (a test's runtime, or the process's at exit, takes its stores' tasks with it).
pub fn spawn_on_the_stores_thread(task: impl std::future::Future<Output = ()> + Send + 'static) {
    let (caller_alive, caller_gone) = tokio::sync::oneshot::channel::<()>();
    let (task_running, task_ended) = tokio::sync::oneshot::channel::<()>();
    // A keeper on the calling runtime: dropped with that runtime's tasks, which resolves
    // `caller_gone`; it ends itself when the task does.
    tokio::spawn(async move {
        let _caller_alive = caller_alive;
        let _ = task_ended.await;
    });
    stores_runtime().spawn(async move {
        let _task_running = task_running;
        tokio::select! {
            () = task => {}
            _ = caller_gone => {}
        }
    });
}

/// The runtime the stores' reflectors run on: one thread of its own, whose allocations come from
/// a jemalloc arena of its own.
///
/// What the stores keep lives for as long as its object does; what a pass allocates lives for the
/// pass. Allocated side by side, each pass's transient records and statuses shared slabs with the
/// long-lived ones, and when a pass ended its slabs stayed pinned by the few records kept: after
/// issue 18's memory population arrived during passes, the heap was ~21 MiB larger than its
/// ~31 MiB of live data, and no purge could hand those pages back (steady RSS 63.4 MiB). In an
/// arena of their own the stores' records pack together and the passes' slabs empty whole
/// (52.6-54.4 MiB in three runs of the same benchmark).
///
/// One per process, shared by every controller term (and every test's controller); when the
/// thread or the arena cannot be had, the reflectors run where they are spawned from, as before.
fn stores_runtime() -> tokio::runtime::Handle {
    static STORES: std::sync::OnceLock<Option<tokio::runtime::Handle>> = std::sync::OnceLock::new();
    let dedicated = STORES.get_or_init(|| {
        let (handle_sender, handle) = std::sync::mpsc::channel();
        let spawned = std::thread::Builder::new()
            .name("keyless-stores".into())
            .spawn(move || {
                if let Err(status) = use_an_arena_of_its_own() {
                    tracing::warn!(status, "the stores share the allocator's arenas");
                }
                match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(runtime) => {
                        let _ = handle_sender.send(Some(runtime.handle().clone()));
                        // The thread lives as long as the process; its tasks end with their
                        // callers ([`spawn_on_the_stores_thread`]).
                        runtime.block_on(std::future::pending::<()>());
                    }
                    Err(error) => {
                        tracing::warn!(%error, "no runtime of their own for the stores");
                        let _ = handle_sender.send(None);
                    }
                }
            });
        match spawned {
            Ok(_) => handle.recv().ok().flatten(),
            Err(error) => {
                tracing::warn!(%error, "no thread of their own for the stores");
                None
            }
        }
    });
    dedicated
        .clone()
        .unwrap_or_else(tokio::runtime::Handle::current)
}

/// Reads the jemalloc control `name`, an integer of `T`'s size (jemalloc's `unsigned` is u32,
/// its `size_t` usize); the mallctl status when it cannot.
#[allow(unsafe_code)]
fn read_control<T: Copy + Default>(name: &std::ffi::CStr) -> Result<T, i32> {
    let mut value = T::default();
    let mut size = std::mem::size_of::<T>();
    // SAFETY: `name` is NUL-terminated; `value` and `size` are valid for a write of `size` bytes,
    // and jemalloc refuses (EINVAL) a control whose type is of another size; no new value is
    // given (null, 0). Only integers are read, for which any bytes are a value.
    let status = unsafe {
        tikv_jemalloc_sys::mallctl(
            name.as_ptr(),
            (&raw mut value).cast(),
            &raw mut size,
            std::ptr::null_mut(),
            0,
        )
    };
    if status == 0 { Ok(value) } else { Err(status) }
}

/// Binds the calling thread to a new jemalloc arena; the mallctl status when it cannot.
#[allow(unsafe_code)]
fn use_an_arena_of_its_own() -> Result<(), i32> {
    let mut arena: u32 = read_control(c"arenas.create")?;
    // SAFETY: `thread.arena` takes an unsigned (u32) arena index: a pointer to `arena` and its
    // size; no old value is read (null pointers).
    let bound = unsafe {
        tikv_jemalloc_sys::mallctl(
            c"thread.arena".as_ptr(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            (&raw mut arena).cast(),
            std::mem::size_of::<u32>(),
        )
    };
    if bound != 0 {
        return Err(bound);
    }
    Ok(())
}

/// The allocator's own account of the heap, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeapStats {
    /// Bytes the program has allocated and not freed: its live data.
    pub allocated: u64,
    /// Bytes of the heap resident in memory: live data, the allocator's metadata, and freed
    /// pages not yet purged. `resident - allocated` is what the allocator costs.
    pub resident: u64,
}

impl HeapStats {
    /// Now (jemalloc's statistics are refreshed first: they are cached per `epoch`).
    #[allow(unsafe_code)]
    pub fn read() -> Option<HeapStats> {
        let mut epoch: u64 = 1;
        let mut size = std::mem::size_of::<u64>();
        // SAFETY: `epoch` is a u64 control read and written with pointers to a valid u64 and its
        // size; the names are NUL-terminated C strings.
        let refreshed = unsafe {
            tikv_jemalloc_sys::mallctl(
                c"epoch".as_ptr(),
                (&raw mut epoch).cast(),
                &raw mut size,
                (&raw mut epoch).cast(),
                std::mem::size_of::<u64>(),
            )
        };
        if refreshed != 0 {
            return None;
        }
        let read = |name| read_control::<usize>(name).ok().map(|v| v as u64);
        Some(HeapStats {
            allocated: read(c"stats.allocated")?,
            resident: read(c"stats.resident")?,
        })
    }
}

/// Purges every arena's unused dirty pages (returned to the kernel with `madvise`); whether
/// jemalloc accepted the request.
#[allow(unsafe_code)]
pub fn release_free_memory() -> bool {
    // SAFETY: `ALL_ARENAS` is NUL-terminated; `arena.<i>.purge` is a void control, which takes no
    // old value (null pointers) and no new one (null, length 0), so jemalloc reads and writes no
    // caller memory. mallctl is thread-safe.
    let status = unsafe {
        tikv_jemalloc_sys::mallctl(
            ALL_ARENAS.as_ptr().cast(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            0,
        )
    };
    status == 0
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn anonymous_rss_kib() -> u64 {
        std::fs::read_to_string("/proc/self/status")
            .unwrap()
            .lines()
            .find_map(|l| l.strip_prefix("RssAnon:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap()
    }

    /// The arena the calling thread allocates from.
    fn arena_of_this_thread() -> u32 {
        read_control(c"thread.arena").unwrap()
    }

    #[tokio::test]
    async fn the_stores_allocate_on_their_own_thread_from_an_arena_of_their_own() {
        let (sender, seen) = tokio::sync::oneshot::channel();
        spawn_on_the_stores_thread(async move {
            let thread = std::thread::current().name().map(str::to_owned);
            let _ = sender.send((thread, arena_of_this_thread()));
        });
        let (thread, arena) = seen.await.unwrap();
        assert_eq!(thread.as_deref(), Some("keyless-stores"));
        // Arenas 0 and 1 are `narenas:2`'s, shared by every other thread; a created one comes
        // after them.
        assert!(arena >= 2, "the stores' arena is {arena}");
        assert_ne!(arena, arena_of_this_thread());
    }

    #[test]
    fn the_stores_tasks_end_with_the_runtime_that_spawned_them() {
        struct SaysWhenDropped(std::sync::mpsc::Sender<()>);
        impl Drop for SaysWhenDropped {
            fn drop(&mut self) {
                let _ = self.0.send(());
            }
        }
        let (sender, dropped) = std::sync::mpsc::channel();
        let caller = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        caller.block_on(async {
            let guard = SaysWhenDropped(sender);
            spawn_on_the_stores_thread(async move {
                let _guard = guard;
                std::future::pending::<()>().await;
            });
        });
        assert!(
            dropped.recv_timeout(Duration::from_millis(100)).is_err(),
            "the task runs while its caller's runtime does"
        );
        drop(caller);
        dropped
            .recv_timeout(Duration::from_secs(10))
            .expect("the task ended with its caller's runtime");
    }

    #[tokio::test]
    async fn nothing_is_left_on_the_calling_runtime_once_the_task_ends() {
        let (sender, ran) = tokio::sync::oneshot::channel();
        spawn_on_the_stores_thread(async move {
            let _ = sender.send(());
        });
        ran.await.unwrap();
        let metrics = tokio::runtime::Handle::current().metrics();
        for _ in 0..1000 {
            if metrics.num_alive_tasks() == 0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the keeper task is still alive after its task ended");
    }

    #[test]
    fn the_configuration_is_read() {
        assert_eq!(read_control::<u32>(c"opt.narenas"), Ok(2));
    }

    #[test]
    fn the_heap_statistics_follow_what_is_allocated() {
        let before = HeapStats::read().unwrap();
        let block = vec![7u8; 64 << 20];
        let during = HeapStats::read().unwrap();
        // Other tests allocate at the same time, but not 64 MiB.
        assert!(
            during.allocated >= before.allocated + (48 << 20),
            "{before:?} → {during:?}"
        );
        assert!(during.resident >= during.allocated / 2, "{during:?}");
        assert_eq!(block[1 << 20], 7);
    }

    #[test]
    fn freed_memory_between_live_allocations_is_returned() {
        // 64 MiB in small blocks with one block in 64 kept alive: what a list leaves behind
        // between the records a store keeps.
        let mut blocks: Vec<Vec<u8>> = (0..256 * 1024).map(|_| vec![1u8; 256]).collect();
        let pinned: Vec<Vec<u8>> = blocks.iter_mut().step_by(64).map(std::mem::take).collect();
        drop(blocks);
        let before = anonymous_rss_kib();
        assert!(release_free_memory(), "jemalloc purged");
        let after = anonymous_rss_kib();
        // Other tests allocate at the same time; the freed blocks alone are ~63 MiB.
        assert!(
            before.saturating_sub(after) > 24 * 1024,
            "RssAnon {before} KiB → {after} KiB"
        );
        assert!(pinned.iter().all(|b| b[0] == 1));
    }
}
