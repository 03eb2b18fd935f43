//! Heap bytes per service in one process: a global allocator that tags each allocation with
//! the service whose thread made it, so `placement` can say what coord, the master, the
//! gateway and the agents each hold though they share one process (and one RSS).
//!
//! Threads are tagged by the runtime they belong to ([`set_thread_service`] in each service
//! runtime's `on_thread_start`); untagged threads (the bench's own) count as [`Service::Bench`].
//! Each block carries its tag in a small header in front of it, so a block freed on another
//! thread (the coord log writer frees entries the Raft tasks allocated) is taken off the
//! service that allocated it. The header (16 bytes, or the alignment if larger) is not
//! counted: the figures are what the services asked for, not the allocator's overhead.
//! Peaks are sampled (every [`SAMPLE_EVERY`]), not exact.
//!
//! It is the global allocator only with the `heap-profile` feature: the header and the
//! shared counters cost the services time (a 100,000-task placement run was markedly slower
//! with it), so rates are measured without it and memory with it.

// A global allocator is unsafe by nature: it hands out raw memory.
#![allow(unsafe_code)]
// Without `heap-profile` the allocator is compiled (and unit-tested) but not installed.
#![cfg_attr(not(feature = "heap-profile"), allow(dead_code))]

use std::alloc::{GlobalAlloc, Layout};

/// What the blocks come from: the allocator the benchmark otherwise runs on (mimalloc, as
/// the control plane's binaries), so the process's resident size in a heap-profile run is
/// what a plain run's would be.
use marina_daemon::Allocator as Underlying;
use std::cell::Cell;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::Duration;

/// Whose allocation a block is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Service {
    Bench = 0,
    Coord = 1,
    Master = 2,
    Gateway = 3,
    Agents = 4,
}

impl Service {
    pub const ALL: [Service; 5] = [Service::Bench, Service::Coord, Service::Master, Service::Gateway, Service::Agents];

    pub fn name(self) -> &'static str {
        match self {
            Service::Bench => "bench",
            Service::Coord => "coord",
            Service::Master => "master",
            Service::Gateway => "gateway",
            Service::Agents => "agents",
        }
    }
}

/// Live bytes of one service, on a cache line of its own (services allocate concurrently).
#[repr(align(64))]
struct Counter(AtomicI64);

static LIVE: [Counter; 5] = [const { Counter(AtomicI64::new(0)) }; 5];

thread_local! {
    static THREAD_SERVICE: Cell<u8> = const { Cell::new(Service::Bench as u8) };
}

/// Tags the calling thread's allocations as `service`'s.
pub fn set_thread_service(service: Service) {
    THREAD_SERVICE.with(|tag| tag.set(service as u8));
}

/// Live heap bytes of each service now.
pub fn live() -> [i64; 5] {
    std::array::from_fn(|index| LIVE[index].0.load(Ordering::Relaxed))
}

/// The allocator: the system's, with a tag in front of every block.
#[derive(Clone, Copy)]
pub struct TaggingAllocator;

/// Room in front of a block: its tag in the last 8 bytes, and enough to keep the block
/// aligned as asked.
fn header(align: usize) -> usize {
    align.max(16)
}

/// The layout asked of the system for `layout` with its header.
fn with_header(layout: Layout) -> Option<Layout> {
    Layout::from_size_align(layout.size().checked_add(header(layout.align()))?, layout.align().max(16)).ok()
}

fn current_tag() -> u8 {
    // During thread teardown the thread local may be gone: count as the bench's.
    THREAD_SERVICE.try_with(Cell::get).unwrap_or(Service::Bench as u8)
}

fn account(tag: u8, bytes: i64) {
    if let Some(counter) = LIVE.get(usize::from(tag)) {
        counter.0.fetch_add(bytes, Ordering::Relaxed);
    }
}

// SAFETY (all methods): every block handed out is `header` bytes into a system block of
// `with_header(layout)`, whose first `header` bytes are ours; the tag sits just before the
// block, 8-byte aligned because the underlying block is at least 16-aligned and `header` is a
// multiple of 16.
unsafe impl GlobalAlloc for TaggingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let Some(outer) = with_header(layout) else { return std::ptr::null_mut() };
        let base = unsafe { Underlying.alloc(outer) };
        if base.is_null() {
            return base;
        }
        let tag = current_tag();
        unsafe {
            let block = base.add(header(layout.align()));
            block.sub(8).cast::<u64>().write(u64::from(tag));
            account(tag, layout.size() as i64);
            block
        }
    }

    unsafe fn dealloc(&self, block: *mut u8, layout: Layout) {
        let Some(outer) = with_header(layout) else { return };
        unsafe {
            let tag = block.sub(8).cast::<u64>().read() as u8;
            account(tag, -(layout.size() as i64));
            Underlying.dealloc(block.sub(header(layout.align())), outer);
        }
    }

    unsafe fn realloc(&self, block: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let Some(outer) = with_header(layout) else { return std::ptr::null_mut() };
        let offset = header(layout.align());
        let Some(new_outer_size) = new_size.checked_add(offset) else { return std::ptr::null_mut() };
        unsafe {
            // The header moves with the block: the tag stays the allocating service's.
            let tag = block.sub(8).cast::<u64>().read() as u8;
            let base = Underlying.realloc(block.sub(offset), outer, new_outer_size);
            if base.is_null() {
                return base;
            }
            account(tag, new_size as i64 - layout.size() as i64);
            base.add(offset)
        }
    }
}

/// How often [`PeakSampler`] reads the counters.
pub const SAMPLE_EVERY: Duration = Duration::from_millis(10);

/// The largest live bytes of each service seen since it started, read every
/// [`SAMPLE_EVERY`] on a thread of its own until dropped.
pub struct PeakSampler {
    peaks: Arc<[AtomicI64; 5]>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl PeakSampler {
    pub fn start() -> std::io::Result<Self> {
        let peaks: Arc<[AtomicI64; 5]> = Arc::new(std::array::from_fn(|_| AtomicI64::new(0)));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = std::thread::Builder::new().name("heap-peaks".into()).spawn({
            let (peaks, stop) = (peaks.clone(), stop.clone());
            move || {
                while !stop.load(Ordering::Relaxed) {
                    for (peak, now) in peaks.iter().zip(live()) {
                        peak.fetch_max(now, Ordering::Relaxed);
                    }
                    std::thread::sleep(SAMPLE_EVERY);
                }
            }
        })?;
        Ok(Self { peaks, stop, thread: Some(thread) })
    }

    pub fn peaks(&self) -> [i64; 5] {
        std::array::from_fn(|index| self.peaks[index].load(Ordering::Relaxed))
    }
}

impl Drop for PeakSampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_are_counted_to_the_thread_that_made_them_wherever_they_are_freed() {
        // Called directly, not as the global allocator: only this block counts as the agents'.
        let allocator = TaggingAllocator;
        let before = live();
        let layout = Layout::from_size_align(1000, 64).unwrap();
        let block = std::thread::spawn(move || {
            set_thread_service(Service::Agents);
            // SAFETY: a non-zero layout; freed below with the same layout.
            let block = unsafe { allocator.alloc(layout) };
            assert!(!block.is_null());
            assert_eq!(block as usize % 64, 0, "the block keeps its alignment");
            block as usize
        })
        .join()
        .unwrap() as *mut u8;
        let agents = Service::Agents as usize;
        assert_eq!(live()[agents] - before[agents], 1000);
        // SAFETY: allocated above with `layout`.
        let block = unsafe { allocator.realloc(block, layout, 3000) };
        assert_eq!(live()[agents] - before[agents], 3000, "grown on another thread, still the agents'");
        let grown = Layout::from_size_align(3000, 64).unwrap();
        // SAFETY: reallocated above to `grown`.
        unsafe { allocator.dealloc(block, grown) };
        assert_eq!(live()[agents], before[agents], "freed here, taken off the agents");
    }
}
