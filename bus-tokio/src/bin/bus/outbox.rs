//! `bus client --identity`'s outbox: the request in flight, stored beside
//! the identity file before it is sent, so that a client restarted after a
//! crash resends it under its number and the node answers it from its
//! dedup window instead of running it again.
//!
//! The file (`IDENTITY.outbox`) holds one request: `BUSOUTBX`, the
//! reservation (32 bytes), the operation (`u32`, little-endian), the body.
//! It is written atomically and removed once the request is answered.

use crate::Failure;
use bus_tokio::Reservation;
use bus_tokio::bus_proto::client::identity::file::{OsFilesystem, write_atomically};
use bytes::Bytes;
use std::path::{Path, PathBuf};

const MAGIC: &[u8; 8] = b"BUSOUTBX";
const HEAD: usize = 8 + Reservation::LEN + 4;

/// A request recorded before it was sent.
pub(crate) struct Entry {
    pub(crate) reservation: Reservation,
    pub(crate) operation: u32,
    pub(crate) body: Bytes,
}

/// The outbox file beside an identity.
pub(crate) struct Outbox {
    path: PathBuf,
}

impl Outbox {
    pub(crate) fn beside(identity: &Path) -> Outbox {
        let mut path = identity.as_os_str().to_owned();
        path.push(".outbox");
        Outbox { path: path.into() }
    }

    /// The request a previous process left unanswered, if any.
    pub(crate) fn load(&self) -> Result<Option<Entry>, Failure> {
        let bytes = match std::fs::read(&self.path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Failure(format!("outbox {}: {e}", self.path.display()))),
        };
        let (Some(head), Some(body)) = (bytes.get(..HEAD), bytes.get(HEAD..)) else {
            return Err(self.bad(&format!("{} bytes, shorter than {HEAD}", bytes.len())));
        };
        let (magic, rest) = head.split_at(8);
        if magic != MAGIC {
            return Err(self.bad("not a bus client outbox"));
        }
        let (reservation, operation) = rest.split_at(Reservation::LEN);
        let mut r = [0u8; Reservation::LEN];
        r.copy_from_slice(reservation);
        let mut op = [0u8; 4];
        op.copy_from_slice(operation);
        Ok(Some(Entry {
            reservation: Reservation::from_bytes(r),
            operation: u32::from_le_bytes(op),
            body: Bytes::copy_from_slice(body),
        }))
    }

    /// Records `entry` durably; call before sending it.
    pub(crate) fn store(&self, entry: &Entry) -> Result<(), Failure> {
        let mut bytes = Vec::with_capacity(HEAD + entry.body.len());
        bytes.extend_from_slice(MAGIC);
        bytes.extend_from_slice(&entry.reservation.to_bytes());
        bytes.extend_from_slice(&entry.operation.to_le_bytes());
        bytes.extend_from_slice(&entry.body);
        write_atomically(&mut OsFilesystem, &self.path, &bytes)
            .map_err(|e| Failure(format!("outbox {}: {e}", self.path.display())))
    }

    /// The request is answered (or given up): forget it.
    pub(crate) fn clear(&self) -> Result<(), Failure> {
        match std::fs::remove_file(&self.path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Failure(format!("outbox {}: {e}", self.path.display()))),
        }
    }

    fn bad(&self, what: &str) -> Failure {
        Failure(format!(
            "outbox {}: {what}; remove it to start without it",
            self.path.display()
        ))
    }
}
