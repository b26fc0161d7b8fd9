//! The log's output path: lines are appended to one in-memory buffer and a writer thread
//! hands them to stdout, so no runtime thread ever waits on a slow terminal, pipe or journal.
//!
//! Why: writing each access line straight to stdout is a `write(2)` per request under
//! stdout's lock, on the request path. Here a line costs a copy under an uncontended lock;
//! the writer swaps the buffer out and writes it whole, at least every `FLUSH_EVERY`, at
//! once for warnings, errors and start-up lines, and when `flush()` is called at shutdown,
//! so every line is written before the process exits.
//!
//! When stdout stops taking lines (a blocked pipe), the buffer grows to `MAX_PENDING` and
//! further lines are dropped and counted (`dropped()`, a metric), rather than growing
//! without bound or blocking requests.

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::thread::Thread;
use std::time::Duration;

const FLUSH_EVERY: Duration = Duration::from_millis(50);
/// A buffer this full wakes the writer at once (a burst of access lines).
const WAKE_AT: usize = 64 * 1024;
const MAX_PENDING: usize = 64 * 1024 * 1024;

struct Shared {
    pending: Mutex<Vec<u8>>,
    /// Held while a swapped-out buffer is written, so `flush()` returns only after every line
    /// appended before it has reached stdout.
    writing: Mutex<Vec<u8>>,
    writer: OnceLock<Thread>,
    dropped: AtomicU64,
}

static SHARED: OnceLock<Shared> = OnceLock::new();

/// Start the writer thread. Until this is called (tests that run the gate in-process),
/// `is_on()` is false and callers log through `tracing` directly.
pub fn start() {
    let shared = SHARED.get_or_init(|| Shared {
        pending: Mutex::new(Vec::with_capacity(WAKE_AT * 2)),
        writing: Mutex::new(Vec::with_capacity(WAKE_AT * 2)),
        writer: OnceLock::new(),
        dropped: AtomicU64::new(0),
    });
    if shared.writer.get().is_some() {
        return;
    }
    let spawned = std::thread::Builder::new()
        .name("jwt-gate-log".into())
        .spawn(|| loop {
            std::thread::park_timeout(FLUSH_EVERY);
            flush();
        });
    if let Ok(handle) = spawned {
        let _ = shared.writer.set(handle.thread().clone());
    }
}

pub fn is_on() -> bool {
    SHARED.get().is_some_and(|s| s.writer.get().is_some())
}

/// Lines dropped because stdout did not take them (`MAX_PENDING` buffered).
pub fn dropped() -> u64 {
    SHARED
        .get()
        .map_or(0, |s| s.dropped.load(Ordering::Relaxed))
}

/// Append whole lines. `urgent` wakes the writer now instead of within `FLUSH_EVERY`.
pub fn append(bytes: &[u8], urgent: bool) {
    let Some(shared) = SHARED.get() else {
        let _ = std::io::stdout().write_all(bytes);
        return;
    };
    let wake = {
        let Ok(mut pending) = shared.pending.lock() else {
            return;
        };
        if pending.len() + bytes.len() > MAX_PENDING {
            shared.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let was = pending.len();
        pending.extend_from_slice(bytes);
        urgent || (was < WAKE_AT && pending.len() >= WAKE_AT)
    };
    if wake {
        if let Some(t) = shared.writer.get() {
            t.unpark();
        }
    }
}

/// Write everything appended so far to stdout, and wait until it is written.
pub fn flush() {
    let Some(shared) = SHARED.get() else {
        return;
    };
    let Ok(mut out) = shared.writing.lock() else {
        return;
    };
    if let Ok(mut pending) = shared.pending.lock() {
        std::mem::swap(&mut *pending, &mut *out);
    }
    if out.is_empty() {
        return;
    }
    let mut stdout = std::io::stdout().lock();
    let _ = stdout.write_all(&out);
    let _ = stdout.flush();
    out.clear();
    // a burst left a large buffer behind; give the memory back
    if out.capacity() > WAKE_AT * 16 {
        out.shrink_to(WAKE_AT * 2);
    }
}

/// `tracing_subscriber`'s writer: each event becomes one `append`, urgent unless it is an
/// access or audit line at info or below.
pub struct MakeBuffered;

pub struct LineWriter {
    line: Vec<u8>,
    urgent: bool,
}

impl Write for LineWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.line.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for LineWriter {
    fn drop(&mut self) {
        append(&self.line, self.urgent);
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for MakeBuffered {
    type Writer = LineWriter;

    fn make_writer(&'a self) -> LineWriter {
        LineWriter {
            line: Vec::with_capacity(256),
            urgent: true,
        }
    }

    fn make_writer_for(&'a self, meta: &tracing::Metadata<'_>) -> LineWriter {
        let routine = *meta.level() >= tracing::Level::INFO
            && matches!(meta.target(), "jwt_gate::access" | "jwt_gate::audit");
        LineWriter {
            line: Vec::with_capacity(256),
            urgent: !routine,
        }
    }
}
