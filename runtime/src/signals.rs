//! The daemons' signals: SIGTERM/SIGINT stop gracefully with a deadline (the fourth SIGINT
//! exits at once), SIGHUP reloads, SIGUSR2 writes a state summary to the log (seed 004's
//! operator signals).

use std::time::Duration;

use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;
use tracing::{info, warn};

/// What the daemon's signal handler asks of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    Running,
    /// SIGTERM or SIGINT: stop gracefully.
    Stop,
}

/// Spawns the signal handler: the first SIGTERM/SIGINT flips the returned watch to `Stop`;
/// the process then exits on its own after `deadline` if still alive, or at once on the fourth
/// SIGINT. Each SIGHUP calls `on_reload`.
pub fn handle_signals(
    deadline: Duration,
    on_reload: impl Fn() + Send + 'static,
) -> std::io::Result<watch::Receiver<Signal>> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    let (tx, rx) = watch::channel(Signal::Running);
    tokio::spawn(async move {
        let mut interrupts = 0u32;
        loop {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {
                    interrupts += 1;
                    if interrupts >= 4 {
                        warn!("fourth SIGINT: exiting at once");
                        std::process::exit(130);
                    }
                }
                _ = hup.recv() => {
                    on_reload();
                    continue;
                }
            }
            if *tx.borrow() == Signal::Running {
                info!(
                    "stopping gracefully (deadline {deadline:?}; SIGINT four times exits at once)"
                );
                crate::notify_stopping();
                let _ = tx.send(Signal::Stop);
                tokio::spawn(async move {
                    tokio::time::sleep(deadline).await;
                    warn!("graceful stop took longer than {deadline:?}: exiting");
                    std::process::exit(1);
                });
            }
        }
    });
    Ok(rx)
}

/// Resolves when `rx` says stop.
pub async fn stopped(mut rx: watch::Receiver<Signal>) {
    let _ = rx.wait_for(|s| *s == Signal::Stop).await;
}

/// Spawns the SIGUSR2 handler: each SIGUSR2 calls `summary` and logs what it returns, the
/// daemon's state (links, jobs in flight, queue depths, memory), for an operator wondering what
/// a running daemon is doing without restarting it.
/// `summary` runs on a blocking thread: it may read the disk or the database.
pub fn on_state_dump(summary: impl Fn() -> String + Send + Sync + 'static) -> std::io::Result<()> {
    let mut usr2 = signal(SignalKind::user_defined2())?;
    let summary = std::sync::Arc::new(summary);
    tokio::spawn(async move {
        while usr2.recv().await.is_some() {
            let summary = summary.clone();
            match tokio::task::spawn_blocking(move || summary()).await {
                Ok(text) => info!("SIGUSR2: state summary: {text}"),
                Err(e) => warn!("SIGUSR2: the state summary failed: {e}"),
            }
        }
    });
    Ok(())
}

/// The process's resident memory (VmRSS) as text, e.g. `12.3 MiB`, or `unknown` off Linux.
pub fn resident_memory() -> String {
    let kib = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status.lines().find_map(|line| {
                line.strip_prefix("VmRSS:")?
                    .trim()
                    .strip_suffix("kB")?
                    .trim()
                    .parse::<u64>()
                    .ok()
            })
        });
    match kib {
        Some(kib) => format!("{:.1} MiB", kib as f64 / 1024.0),
        None => "unknown".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn resident_memory_is_read_from_proc() {
        let rss = super::resident_memory();
        assert!(rss.ends_with(" MiB"), "{rss}");
    }
}
