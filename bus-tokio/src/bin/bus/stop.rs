//! Stop requests from the service manager or the terminal.

use crate::Failure;

/// Resolves with the signal's name once SIGTERM (systemd, containers) or
/// SIGINT (Ctrl-C) arrives. Create it once, before the work starts, so a
/// signal that arrives meanwhile is not missed.
pub(crate) fn stop_signal() -> Result<impl Future<Output = &'static str>, Failure> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let listen =
            |kind| signal(kind).map_err(|e| Failure(format!("cannot listen for signals: {e}")));
        let mut term = listen(SignalKind::terminate())?;
        let mut int = listen(SignalKind::interrupt())?;
        Ok(async move {
            tokio::select! {
                _ = term.recv() => "SIGTERM",
                _ = int.recv() => "SIGINT",
            }
        })
    }
    #[cfg(not(unix))]
    {
        Ok(async {
            let _ = tokio::signal::ctrl_c().await;
            "Ctrl-C"
        })
    }
}
