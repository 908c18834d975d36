//! Logging and messages: log lines go through indicatif so they do not garble bars.

use std::sync::OnceLock;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::Global;

static BARS: OnceLock<MultiProgress> = OnceLock::new();

fn bars() -> &'static MultiProgress {
    BARS.get_or_init(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr()))
}

pub fn init_logging(global: Global) {
    let level = match (global.quiet, global.verbose) {
        (true, _) => "error",
        (false, 0) => "warn",
        (false, 1) => "info",
        (false, _) => "debug",
    };
    // Plain text: the daemon's stderr becomes its --log file after it detaches.
    // fuser reports a reply to a client that died mid-request (a database killed with
    // -m immediate) as an error; it is harmless, so it stays quiet.
    let filter = tracing_subscriber::EnvFilter::try_from_env("DOMFS_LOG").unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(format!("{level},fuser::reply=off"))
    });
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(false)
        .with_writer(|| LogWriter)
        .with_target(false)
        .without_time()
        .try_init();
}

struct LogWriter;

impl std::io::Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let text = String::from_utf8_lossy(buf);
        bars().suspend(|| eprint!("{text}"));
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A progress bar over `total` units (hidden with --quiet or when stderr is no terminal).
pub fn progress(global: Global, total: u64, what: &str) -> ProgressBar {
    if global.quiet {
        return ProgressBar::hidden();
    }
    let bar = bars().add(ProgressBar::new(total));
    bar.set_style(
        ProgressStyle::with_template("{msg:12} [{bar:40}] {pos}/{len} {per_sec} eta {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.set_message(what.to_string());
    bar
}

/// "error: context: cause: cause".
pub fn error_chain(e: &anyhow::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if parts.last().is_none_or(|last| !last.contains(&text)) {
            parts.push(text);
        }
    }
    parts.join(": ")
}
