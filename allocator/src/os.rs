//! The operating-system layer: every system call the engine makes.
//!
//! Everything above this module is plain logic over memory it was handed.
//! Functions here never allocate, never panic, and report failure with
//! `Option`/`bool` so callers decide what a failure means.

use core::ptr;
use core::sync::atomic::{AtomicUsize, Ordering};

/// The base page size; Linux on x86-64 and aarch64 (4 KiB kernels) use this.
pub const PAGE_SIZE: usize = 4096;

/// Maps `size` bytes of fresh, zeroed, read-write anonymous memory.
pub fn map(size: usize) -> Option<*mut u8> {
    // SAFETY: an anonymous private mapping at a kernel-chosen address has no
    // preconditions; the result is checked against MAP_FAILED.
    let p = unsafe {
        libc::mmap(
            ptr::null_mut(),
            size,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        None
    } else {
        Some(p.cast())
    }
}

/// Where the last aligned mapping starts (0: none yet). The next one is
/// tried just below it, where Linux's top-down layout would put it anyway.
static ALIGNED_HINT: AtomicUsize = AtomicUsize::new(0);

/// Maps `size` bytes whose start is a multiple of `align` (a power of two
/// that is at least a page). First tries the aligned address just below the
/// last such mapping (`MAP_FIXED_NOREPLACE`: exactly there or not at all):
/// one system call. Otherwise maps `size + align` and unmaps the slack:
/// three, each of which takes the process's mapping lock for writing, which
/// stalls the page faults of every other thread meanwhile (`buffer_churn`
/// made 173 aligned mappings and 288 trims in 0.1 s).
pub fn map_aligned(size: usize, align: usize) -> Option<*mut u8> {
    let last = ALIGNED_HINT.load(Ordering::Relaxed);
    if let Some(below) = last.checked_sub(size) {
        let hint = below & !(align - 1);
        if hint != 0 && map_fixed_if_free(hint as *mut u8, size) == FixedMap::Mapped {
            ALIGNED_HINT.store(hint, Ordering::Relaxed);
            return Some(hint as *mut u8);
        }
    }
    let padded = size.checked_add(align)?;
    let raw = map(padded)? as usize;
    let start = (raw + align - 1) & !(align - 1);
    let front = start - raw;
    let back = padded - front - size;
    if front > 0 {
        unmap(raw as *mut u8, front);
    }
    if back > 0 {
        unmap((start + size) as *mut u8, back);
    }
    ALIGNED_HINT.store(start, Ordering::Relaxed);
    Some(start as *mut u8)
}

/// What [`map_fixed_if_free`] did.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum FixedMap {
    Mapped,
    /// Something else is mapped there (or an old kernel, which does not know
    /// `MAP_FIXED_NOREPLACE`, put the mapping elsewhere; it was undone).
    Taken,
    /// The kernel refused (no memory, mapping limit): may work later.
    Failed,
}

/// Maps fresh, zeroed, read-write memory exactly at `[p, p + size)`, only if
/// nothing is mapped there now (`MAP_FIXED_NOREPLACE`).
pub fn map_fixed_if_free(p: *mut u8, size: usize) -> FixedMap {
    // SAFETY: MAP_FIXED_NOREPLACE never replaces an existing mapping, so
    // this cannot affect memory anyone uses; the result is checked.
    let q = unsafe {
        libc::mmap(
            p.cast(),
            size,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED_NOREPLACE,
            -1,
            0,
        )
    };
    if q == libc::MAP_FAILED {
        return if errno() == libc::EEXIST {
            FixedMap::Taken
        } else {
            FixedMap::Failed
        };
    }
    if q.cast::<u8>() != p {
        unmap(q.cast(), size);
        return FixedMap::Taken;
    }
    FixedMap::Mapped
}

/// Returns a mapping (or part of one) to the kernel. False if the kernel
/// refused (splitting a mapping fails at the process's mapping limit).
pub fn unmap(p: *mut u8, size: usize) -> bool {
    // SAFETY: callers pass ranges that they mapped and no longer reference;
    // munmap on such a range cannot affect memory anyone else uses.
    unsafe { libc::munmap(p.cast(), size) == 0 }
}

/// Makes `[p, p + size)` inaccessible (a guard page); false if refused.
pub fn protect_none(p: *mut u8, size: usize) -> bool {
    // SAFETY: the range is page-aligned memory the engine mapped and that
    // holds no data; any later access faults, which is the point.
    unsafe { libc::mprotect(p.cast(), size, libc::PROT_NONE) == 0 }
}

/// Drops the physical pages behind `[p, p + size)`: RSS falls now and the
/// next touch reads zeros.
pub fn discard(p: *mut u8, size: usize) -> bool {
    // SAFETY: the range is page-aligned memory the engine owns and that holds
    // no live data; MADV_DONTNEED on it only zeroes it.
    unsafe { libc::madvise(p.cast(), size, libc::MADV_DONTNEED) == 0 }
}

/// Asks the kernel not to back `[p, p + size)` with transparent huge pages,
/// so that touching one 4 KiB page never makes 2 MiB resident.
pub fn no_huge_pages(p: *mut u8, size: usize) {
    // SAFETY: advisory only, on memory the engine mapped.
    unsafe {
        libc::madvise(p.cast(), size, libc::MADV_NOHUGEPAGE);
    }
}

/// Grows or shrinks the mapping at `p` without moving it.
pub fn remap_in_place(p: *mut u8, old_size: usize, new_size: usize) -> bool {
    // SAFETY: `p`/`old_size` describe one whole mapping of ours; without
    // MREMAP_MAYMOVE the kernel either resizes it where it is or fails.
    let r = unsafe { libc::mremap(p.cast(), old_size, new_size, 0) };
    r != libc::MAP_FAILED
}

/// Moves the pages of the mapping at `p` to `dest` (which the caller reserved
/// and owns) and resizes it: a copy-free move of a large block.
pub fn remap_to(p: *mut u8, old_size: usize, new_size: usize, dest: *mut u8) -> bool {
    // SAFETY: `dest..dest+new_size` is a reservation of ours that MREMAP_FIXED
    // replaces; the source is one whole mapping of ours.
    let r = unsafe {
        libc::mremap(
            p.cast(),
            old_size,
            new_size,
            libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED,
            dest.cast::<libc::c_void>(),
        )
    };
    r != libc::MAP_FAILED
}

/// Writes all of `bytes` to a file descriptor, retrying short writes.
pub fn write_all(fd: i32, mut bytes: &[u8]) {
    while !bytes.is_empty() {
        // SAFETY: the pointer and length come from a live slice.
        let n = unsafe { libc::write(fd, bytes.as_ptr().cast(), bytes.len()) };
        if n <= 0 {
            if n < 0 && errno() == libc::EINTR {
                continue;
            }
            return;
        }
        bytes = bytes.get(n as usize..).unwrap_or(&[]);
    }
}

/// The calling thread's `errno`.
pub fn errno() -> i32 {
    // SAFETY: __errno_location always returns the thread's errno slot.
    unsafe { *libc::__errno_location() }
}

/// Sets the calling thread's `errno`.
pub fn set_errno(value: i32) {
    // SAFETY: __errno_location always returns the thread's errno slot.
    unsafe { *libc::__errno_location() = value }
}

/// Ends the process at once, without running atexit handlers or unwinding.
pub fn abort() -> ! {
    // SAFETY: abort has no preconditions.
    unsafe { libc::abort() }
}

/// Monotonic time in milliseconds.
pub fn now_ms() -> u64 {
    now_us() / 1000
}

/// Monotonic time in microseconds.
pub fn now_us() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid out-pointer; CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000 + ts.tv_nsec as u64 / 1000
}

/// 64 random bits from the kernel (`getrandom`, which does not block once
/// the system has booted); if that fails, a mix of the clock and an address
/// that depends on where the stack was placed.
pub fn random_u64() -> u64 {
    let mut bytes = [0u8; 8];
    // SAFETY: `bytes` is a valid buffer of the given length.
    let n = unsafe { libc::getrandom(bytes.as_mut_ptr().cast(), bytes.len(), 0) };
    if n == bytes.len() as isize {
        return u64::from_ne_bytes(bytes);
    }
    let stack = &bytes as *const [u8; 8] as u64;
    (now_us() ^ stack.rotate_left(32)).wrapping_mul(0x9e37_79b9_7f4a_7c15)
}

/// Reads an environment variable without allocating (libc's `getenv` returns
/// a pointer into the environment block).
pub fn env_var(name: &core::ffi::CStr) -> Option<&'static [u8]> {
    // SAFETY: getenv reads the environment; the returned string lives as long
    // as nobody calls setenv for this name, which is how every C allocator
    // treats its settings.
    let p = unsafe { libc::getenv(name.as_ptr()) };
    if p.is_null() {
        return None;
    }
    // SAFETY: getenv returned a NUL-terminated string.
    Some(unsafe { core::ffi::CStr::from_ptr(p) }.to_bytes())
}

/// Resident set size of this process in bytes, from `/proc/self/statm`.
pub fn resident_bytes() -> Option<usize> {
    let mut buf = [0u8; 128];
    // SAFETY: the path is NUL-terminated; the fd is closed below.
    let fd = unsafe { libc::open(c"/proc/self/statm".as_ptr(), libc::O_RDONLY) };
    if fd < 0 {
        return None;
    }
    // SAFETY: reading into a stack buffer of the given length.
    let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
    // SAFETY: fd is ours.
    unsafe { libc::close(fd) };
    if n <= 0 {
        return None;
    }
    let text = buf.get(..n as usize)?;
    let mut fields = text.split(|&c| c == b' ');
    fields.next()?;
    let pages = parse_decimal(fields.next()?)?;
    Some(pages * PAGE_SIZE)
}

pub fn process_id() -> usize {
    // SAFETY: getpid has no preconditions.
    unsafe { libc::getpid() as usize }
}

/// The most this process has ever had resident, in bytes (`ru_maxrss`).
pub fn peak_resident_bytes() -> Option<usize> {
    // SAFETY: all-zero is a valid `rusage`.
    let mut usage: libc::rusage = unsafe { core::mem::zeroed() };
    // SAFETY: `usage` is a valid out-pointer.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } != 0 {
        return None;
    }
    usize::try_from(usage.ru_maxrss).ok().map(|kib| kib * 1024)
}

/// Parses an unsigned decimal number (no sign, no spaces).
pub fn parse_decimal(digits: &[u8]) -> Option<usize> {
    if digits.is_empty() {
        return None;
    }
    let mut value: usize = 0;
    for &d in digits {
        if !d.is_ascii_digit() {
            return None;
        }
        value = value.checked_mul(10)?.checked_add((d - b'0') as usize)?;
    }
    Some(value)
}

/// The calling thread's pthread handle, as a number: an identity that
/// needs no state of the allocator's.
pub fn pthread_id() -> usize {
    // SAFETY: pthread_self has no preconditions and always succeeds.
    unsafe { libc::pthread_self() as usize }
}

/// Gives up the CPU to another runnable thread.
pub fn yield_now() {
    // SAFETY: sched_yield has no preconditions.
    unsafe {
        libc::sched_yield();
    }
}

/// Bytes of `[p, p + size)` (page-aligned, mapped) resident now, counted with
/// `mincore` through a stack buffer.
///
/// # Safety
/// `[p, p + size)` is one mapping of ours.
pub unsafe fn resident_bytes_in(p: *mut u8, size: usize) -> usize {
    const CHUNK_PAGES: usize = 1024;
    let mut vec = [0u8; CHUNK_PAGES];
    let mut resident = 0;
    let mut offset = 0;
    while offset < size {
        let len = (size - offset).min(CHUNK_PAGES * PAGE_SIZE);
        // SAFETY: the range lies in a mapping of ours; `vec` holds one byte
        // per page of `len` (at most CHUNK_PAGES pages).
        let rc = unsafe { libc::mincore(p.add(offset).cast(), len, vec.as_mut_ptr()) };
        if rc == 0 {
            let pages = len.div_ceil(PAGE_SIZE);
            resident += vec.iter().take(pages).filter(|&&b| b & 1 != 0).count() * PAGE_SIZE;
        }
        offset += len;
    }
    resident
}

/// `membarrier` registration: 0 not tried, 1 registered, 2 unavailable.
static MEMBARRIER_STATE: core::sync::atomic::AtomicU8 = core::sync::atomic::AtomicU8::new(0);
const MEMBARRIER_CMD_PRIVATE_EXPEDITED: libc::c_long = 1 << 3;
const MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED: libc::c_long = 1 << 4;

/// Registers the process for [`membarrier`] if that has not been tried.
/// The registration waits for the kernel to synchronise every CPU (several
/// milliseconds here), so callers make it before they take a lock.
pub fn membarrier_register() {
    use core::sync::atomic::Ordering;
    if MEMBARRIER_STATE.load(Ordering::Acquire) == 0 {
        // SAFETY: membarrier registration has no memory preconditions.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_membarrier,
                MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED,
                0,
            )
        };
        MEMBARRIER_STATE.store(if rc == 0 { 1 } else { 2 }, Ordering::Release);
    }
}

/// Makes every thread of the process pass a full memory barrier before this
/// returns (`membarrier`), so plain stores made before it are seen by any
/// thread's next plain load. Returns false where the kernel lacks the call
/// (then only a local fence was made: callers that need the process-wide
/// barrier must not rely on it).
pub fn membarrier() -> bool {
    use core::sync::atomic::Ordering;
    membarrier_register();
    if MEMBARRIER_STATE.load(Ordering::Acquire) == 1 {
        // SAFETY: registered, so the command is allowed; no memory
        // preconditions.
        let rc =
            unsafe { libc::syscall(libc::SYS_membarrier, MEMBARRIER_CMD_PRIVATE_EXPEDITED, 0) };
        if rc == 0 {
            return true;
        }
    }
    core::sync::atomic::fence(Ordering::SeqCst);
    false
}

/// Sleeps for `ms` milliseconds (restarted after signals).
pub fn sleep_ms(ms: u64) {
    let mut ts = libc::timespec {
        tv_sec: (ms / 1000) as libc::time_t,
        tv_nsec: ((ms % 1000) * 1_000_000) as libc::c_long,
    };
    loop {
        let mut left = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: both are valid timespecs.
        let rc = unsafe { libc::nanosleep(&ts, &mut left) };
        if rc == 0 || errno() != libc::EINTR {
            return;
        }
        ts = left;
    }
}

/// Starts a detached thread running `main`, with every signal blocked in it
/// (signals are the application's business) and a small stack. False if it
/// could not be created.
pub fn spawn_thread(main: extern "C" fn(*mut libc::c_void) -> *mut libc::c_void) -> bool {
    const STACK_SIZE: usize = 256 * 1024;
    // SAFETY: plain C calls on local, initialised out-parameters; the
    // attribute and signal set live across the calls that use them, and the
    // old mask is restored before returning.
    unsafe {
        let mut attr: libc::pthread_attr_t = core::mem::zeroed();
        if libc::pthread_attr_init(&mut attr) != 0 {
            return false;
        }
        libc::pthread_attr_setdetachstate(&mut attr, libc::PTHREAD_CREATE_DETACHED);
        libc::pthread_attr_setstacksize(&mut attr, STACK_SIZE);
        let mut all: libc::sigset_t = core::mem::zeroed();
        let mut old: libc::sigset_t = core::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut old);
        let mut thread: libc::pthread_t = 0;
        let rc = libc::pthread_create(&mut thread, &attr, main, core::ptr::null_mut());
        libc::pthread_sigmask(libc::SIG_SETMASK, &old, core::ptr::null_mut());
        libc::pthread_attr_destroy(&mut attr);
        rc == 0
    }
}

/// Names the calling thread (as `ps` and `top -H` show it).
pub fn name_this_thread(name: &core::ffi::CStr) {
    // SAFETY: PR_SET_NAME reads a NUL-terminated string of at most 16 bytes.
    unsafe {
        libc::prctl(libc::PR_SET_NAME, name.as_ptr());
    }
}
