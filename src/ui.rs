//! What snapckpt tells the operator while it works, on stderr: `-q` silences it, `-v` names
//! each step as it starts and ends, `-vv` also shows CRIU's log (level 4, the most detailed,
//! which CRIU always writes into the image directory) line by line as CRIU writes it, and on a terminal a
//! spinner with the elapsed time shows the long steps (freeze, CRIU dump, snapshots, image
//! write-back) and a byte bar with rate and ETA the data copies of the relink. Nothing of this
//! goes to stdout, which carries only the result (the record with `--json`).

use indicatif::{ProgressBar, ProgressStyle};
use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, AtomicI8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

static LEVEL: AtomicI8 = AtomicI8::new(0);

/// Set the verbosity: `-1` quiet, `0` normal, `1` `-v`, `2` `-vv`.
pub fn set_level(level: i8) {
    LEVEL.store(level, Ordering::Relaxed);
}

/// The verbosity (see [`set_level`]).
pub fn level() -> i8 {
    LEVEL.load(Ordering::Relaxed)
}

/// Print `msg` at `-v`.
pub fn step(msg: &str) {
    if level() >= 1 {
        eprintln!("snapckpt: {msg}");
    }
}

/// Print `msg` at `-vv`.
pub fn detail(msg: &str) {
    if level() >= 2 {
        eprintln!("snapckpt: {msg}");
    }
}

/// Whether progress can be drawn: asked for, not quiet, stderr a terminal, and not `-vv`
/// (whose CRIU log lines would be drawn over).
fn drawable(show: bool) -> bool {
    show && (0..2).contains(&level()) && std::io::stderr().is_terminal()
}

/// At `-vv`, CRIU's log file `path` copied to stderr (each line as `criu: LINE`) while this
/// lives, from a thread of its own that follows the file as it grows; nothing otherwise.
pub struct LogFollow {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// Follow `path` (see [`LogFollow`]); it need not exist yet.
pub fn follow_log(path: &std::path::Path) -> LogFollow {
    let stop = Arc::new(AtomicBool::new(false));
    if level() < 2 {
        return LogFollow { stop, thread: None };
    }
    detail(&format!("CRIU's log (level 4): {}", path.display()));
    let (path, st) = (path.to_path_buf(), stop.clone());
    let thread = std::thread::spawn(move || {
        use std::io::{BufRead, BufReader};
        let mut reader: Option<BufReader<std::fs::File>> = None;
        let mut line = Vec::new();
        loop {
            let last = st.load(Ordering::Relaxed);
            if reader.is_none() {
                reader = std::fs::File::open(&path).ok().map(BufReader::new);
            }
            if let Some(r) = reader.as_mut() {
                // A line without its newline yet is kept until it is complete (or the end).
                while let Ok(n) = r.read_until(b'\n', &mut line) {
                    if n == 0 || !line.ends_with(b"\n") {
                        break;
                    }
                    eprint!("criu: {}", String::from_utf8_lossy(&line));
                    line.clear();
                }
            }
            if last {
                if !line.is_empty() {
                    eprintln!("criu: {}", String::from_utf8_lossy(&line));
                }
                return;
            }
            std::thread::park_timeout(Duration::from_millis(50));
        }
    });
    LogFollow { stop, thread: Some(thread) }
}

impl Drop for LogFollow {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.thread().unpark();
            let _ = t.join();
        }
    }
}

/// A spinner counting the bytes of a stream (export, import) on a terminal, when asked for;
/// hidden otherwise. The caller sets its position.
pub fn byte_spinner(show: bool) -> ProgressBar {
    if !show || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let b = ProgressBar::new_spinner();
    if let Ok(st) = ProgressStyle::with_template("{spinner} {bytes} {binary_bytes_per_sec} {elapsed} {msg}") {
        b.set_style(st);
    }
    b.enable_steady_tick(Duration::from_millis(200));
    b
}

/// A long step: named at `-v`, a spinner with its elapsed time on a terminal.
pub struct Stage {
    what: String,
    bar: ProgressBar,
    t: Instant,
}

/// Start the step `what`.
pub fn stage(show: bool, what: &str) -> Stage {
    step(&format!("{what}..."));
    let bar = if drawable(show) {
        let b = ProgressBar::new_spinner();
        if let Ok(s) = ProgressStyle::with_template("{spinner} {msg} {elapsed}") {
            b.set_style(s);
        }
        b.set_message(what.to_string());
        b.enable_steady_tick(Duration::from_millis(100));
        b
    } else {
        ProgressBar::hidden()
    };
    Stage { what: what.into(), bar, t: Instant::now() }
}

impl Stage {
    /// The step ended.
    pub fn done(self) {
        self.bar.finish_and_clear();
        step(&format!("{}: done in {} ms", self.what, self.t.elapsed().as_millis()));
    }
}

impl Drop for Stage {
    fn drop(&mut self) {
        self.bar.finish_and_clear();
    }
}

/// Bytes copied so far by the relink, as a bar with rate and ETA, fed by
/// [`crate::relink::COPIED_BYTES`] from a thread of its own while it lives.
pub struct CopyProgress {
    bar: ProgressBar,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// Show the copy of up to `total` bytes (a bar only when there is something to copy).
pub fn copy_progress(show: bool, total: u64) -> CopyProgress {
    let stop = Arc::new(AtomicBool::new(false));
    if !drawable(show) || total == 0 {
        return CopyProgress { bar: ProgressBar::hidden(), stop, thread: None };
    }
    let bar = ProgressBar::new(total);
    let tpl = "relink [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta} {elapsed}";
    if let Ok(s) = ProgressStyle::with_template(tpl) {
        bar.set_style(s.progress_chars("=> "));
    }
    let base = crate::relink::COPIED_BYTES.load(Ordering::Relaxed);
    let (b, st) = (bar.clone(), stop.clone());
    let thread = std::thread::spawn(move || {
        while !st.load(Ordering::Relaxed) {
            b.set_position(crate::relink::COPIED_BYTES.load(Ordering::Relaxed).saturating_sub(base));
            std::thread::park_timeout(Duration::from_millis(100));
        }
    });
    CopyProgress { bar, stop, thread: Some(thread) }
}

impl Drop for CopyProgress {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.thread().unpark();
            let _ = t.join();
        }
        self.bar.finish_and_clear();
    }
}
