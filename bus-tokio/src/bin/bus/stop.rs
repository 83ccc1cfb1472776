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

/// SIGHUP, each time it arrives: the operator asks a running node to read
/// its key file again. Never resolves where there is no SIGHUP.
pub(crate) struct Reload {
    #[cfg(unix)]
    hangup: tokio::signal::unix::Signal,
}

impl Reload {
    /// Listens from now on, so a SIGHUP during start-up is not lost.
    pub(crate) fn new() -> Result<Reload, Failure> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            let hangup = signal(SignalKind::hangup())
                .map_err(|e| Failure(format!("cannot listen for SIGHUP: {e}")))?;
            Ok(Reload { hangup })
        }
        #[cfg(not(unix))]
        Ok(Reload {})
    }

    /// The next SIGHUP.
    pub(crate) async fn next(&mut self) {
        #[cfg(unix)]
        if self.hangup.recv().await.is_some() {
            return;
        }
        // No SIGHUP can come any more (the signal driver is gone): never.
        std::future::pending::<()>().await;
    }
}
