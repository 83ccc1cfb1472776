//! The typed header and its validation.

use super::command::{Command, Kind, all_zero, array, zeroed};
use super::error::{DecodeError, EncodeError};
use super::integrity::Integrity;
use super::layout::*;
use super::{PROTOCOL_VERSION, REPLICA_NONE};
use alloc::boxed::Box;

/// A decoded, validated header (everything but the integrity fields and size,
/// which are derived from the body when encoding).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    /// Cluster id.
    pub cluster: u128,
    /// View number, opaque to the bus.
    pub view: u32,
    /// Application release, opaque to the bus.
    pub release: u32,
    /// Sender's replica id, or [`REPLICA_NONE`] for clients.
    pub replica: u8,
    /// Per-connection sequence number, set by the connection.
    pub sequence: u64,
    /// Command and command-specific fields.
    pub kind: Kind,
    /// The application's area; data commands only, zero for the others.
    pub app: AppArea,
}

/// Size of the application's area in a data frame's header.
pub const APP_AREA_SIZE: usize = 96;

/// The application's own bytes in a data frame's header (`message`,
/// `request`, `reply`: offsets 160..256), carried unchanged by the bus and
/// covered by the header's checksum or tag. Consensus metadata (an op
/// number, a commit point, the previous message's checksum...) goes here,
/// so a small consensus message is a header-only frame.
///
/// All zeros unless set, and all zeros cost no allocation.
///
/// ```
/// use bus_proto::wire::AppArea;
/// let mut bytes = [0u8; 96];
/// bytes[..8].copy_from_slice(&42u64.to_le_bytes()); // an op number
/// let area = AppArea::new(bytes);
/// assert_eq!(area.bytes()[..8], 42u64.to_le_bytes());
/// assert!(AppArea::default().is_zero());
/// ```
#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub struct AppArea(Option<Box<[u8; APP_AREA_SIZE]>>);

/// What all-zero areas read as.
const ZERO_AREA: [u8; APP_AREA_SIZE] = [0; APP_AREA_SIZE];

impl AppArea {
    /// The all-zero area.
    pub const ZERO: AppArea = AppArea(None);

    /// An area holding `bytes`.
    pub fn new(bytes: [u8; APP_AREA_SIZE]) -> Self {
        if bytes == ZERO_AREA {
            AppArea::ZERO
        } else {
            AppArea(Some(Box::new(bytes)))
        }
    }

    /// Its bytes.
    pub fn bytes(&self) -> &[u8; APP_AREA_SIZE] {
        self.0.as_deref().unwrap_or(&ZERO_AREA)
    }

    /// True if every byte is zero.
    pub fn is_zero(&self) -> bool {
        self.0.is_none()
    }

    /// Reads the area out of a data frame's header; allocates only when a
    /// byte is set.
    fn read(h: &[u8; HEADER_SIZE]) -> AppArea {
        match all_zero(&h[area::APP]) {
            true => AppArea::ZERO,
            false => AppArea(Some(Box::new(array(h, area::APP)))),
        }
    }
}

impl core::fmt::Debug for AppArea {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match &self.0 {
            None => f.write_str("AppArea(zero)"),
            Some(bytes) => {
                f.write_str("AppArea(")?;
                for byte in bytes.iter() {
                    write!(f, "{byte:02x}")?;
                }
                f.write_str(")")
            }
        }
    }
}

/// The header fields an application sets on a data frame it sends and
/// reads on one it receives: `view` and `release` (common header fields,
/// opaque to the bus) and the [`AppArea`].
///
/// ```
/// use bus_proto::wire::{AppArea, AppHeader};
/// let header = AppHeader { view: 7, release: 3, area: AppArea::new([1; 96]) };
/// assert_eq!(AppHeader::default().view, 0);
/// # let _ = header;
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct AppHeader {
    /// View number (a consensus view, an epoch), opaque to the bus.
    pub view: u32,
    /// Application release (the sender's software version), opaque to the
    /// bus.
    pub release: u32,
    /// The application's area.
    pub area: AppArea,
}

impl AppHeader {
    /// All fields zero.
    pub const ZERO: AppHeader = AppHeader {
        view: 0,
        release: 0,
        area: AppArea::ZERO,
    };
}

/// What [`Header::parse`] learns beyond the typed header.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Parsed {
    /// Frame size, header plus body, already checked against the limit.
    pub(crate) size: u32,
    /// Expected body integrity value.
    pub(crate) body_sum: u128,
}

impl Header {
    /// A header with zeroed common fields and no replica.
    pub const fn new(cluster: u128, kind: Kind) -> Self {
        Header {
            cluster,
            view: 0,
            release: 0,
            replica: REPLICA_NONE,
            sequence: 0,
            kind,
            app: AppArea::ZERO,
        }
    }

    /// A data frame's header carrying the application's fields.
    pub fn with_app(mut self, app: AppHeader) -> Self {
        self.view = app.view;
        self.release = app.release;
        self.app = app.area;
        self
    }

    /// Moves the application's fields out of this header (its area is
    /// left zero): what a received data frame delivers.
    pub fn take_app(&mut self) -> AppHeader {
        AppHeader {
            view: self.view,
            release: self.release,
            area: core::mem::take(&mut self.app),
        }
    }

    /// The command number.
    pub const fn command(&self) -> Command {
        self.kind.command()
    }

    /// Checks that a frame with this header and `body_len` body bytes is valid.
    pub fn check(&self, body_len: usize, max_message_size: u32) -> Result<u32, EncodeError> {
        check_frame(&self.kind, &self.app, body_len, max_message_size)
    }

    /// Encodes this header for `body`, computing size and integrity fields.
    pub fn encode(
        &self,
        body: &[u8],
        integrity: &Integrity,
        max_message_size: u32,
    ) -> Result<[u8; HEADER_SIZE], EncodeError> {
        let mut h = [0u8; HEADER_SIZE];
        self.encode_into(&mut h, body, integrity, max_message_size)?;
        Ok(h)
    }

    /// [`Header::encode`] into `h`, which must be all zeros: the bytes no
    /// field covers stay as they are. Lets a batch encode headers in place.
    pub(crate) fn encode_into(
        &self,
        h: &mut [u8; HEADER_SIZE],
        body: &[u8],
        integrity: &Integrity,
        max_message_size: u32,
    ) -> Result<(), EncodeError> {
        self.encode_unsealed(h, body.len(), max_message_size)?;
        Header::seal(h, body, integrity);
        Ok(())
    }

    /// Writes every field of the header for a body of `body_len` bytes
    /// into zeroed bytes, but the two integrity fields: [`Header::seal`]
    /// fills those in, perhaps later and elsewhere.
    pub(crate) fn encode_unsealed(
        &self,
        h: &mut [u8; HEADER_SIZE],
        body_len: usize,
        max_message_size: u32,
    ) -> Result<(), EncodeError> {
        debug_assert!(h.iter().all(|&b| b == 0), "encoding over a used header");
        let size = self.check(body_len, max_message_size)?;
        h[CLUSTER].copy_from_slice(&self.cluster.to_le_bytes());
        h[SIZE].copy_from_slice(&size.to_le_bytes());
        h[VIEW].copy_from_slice(&self.view.to_le_bytes());
        h[RELEASE].copy_from_slice(&self.release.to_le_bytes());
        h[PROTOCOL].copy_from_slice(&PROTOCOL_VERSION.to_le_bytes());
        h[COMMAND][0] = self.command().to_wire();
        h[REPLICA][0] = self.replica;
        h[SEQUENCE].copy_from_slice(&self.sequence.to_le_bytes());
        self.kind.write_area(h);
        if let Some(area) = &self.app.0 {
            h[area::APP].copy_from_slice(&area[..]);
        }
        Ok(())
    }

    /// Fills in the integrity fields of a header whose other fields are
    /// written ([`Header::encode_unsealed`]), for `body`.
    pub(crate) fn seal(h: &mut [u8; HEADER_SIZE], body: &[u8], integrity: &Integrity) {
        Header::seal_with(h, integrity.body_sum(body), integrity);
    }

    /// [`Header::seal`] with the body's checksum or tag already computed.
    pub(crate) fn seal_with(h: &mut [u8; HEADER_SIZE], body_sum: u128, integrity: &Integrity) {
        h[CHECKSUM_BODY].copy_from_slice(&body_sum.to_le_bytes());
        let sum = integrity.header_sum(&h[CHECKSUMMED]);
        h[CHECKSUM].copy_from_slice(&sum.to_le_bytes());
    }

    /// Verifies and parses a header. Checks run in this order, so nothing the
    /// peer declares is used before the header's integrity is established:
    /// integrity, protocol version, size bounds, reserved area, command, then
    /// the command-specific fields.
    pub(crate) fn parse(
        h: &[u8; HEADER_SIZE],
        integrity: &Integrity,
        max_message_size: u32,
    ) -> Result<(Header, Parsed), DecodeError> {
        Header::verify(h, integrity)?;
        Header::parse_verified(h, max_message_size)
    }

    /// Checks the header's checksum or tag.
    pub(crate) fn verify(h: &[u8; HEADER_SIZE], integrity: &Integrity) -> Result<(), DecodeError> {
        let received = u128::from_le_bytes(array(h, CHECKSUM));
        let computed = integrity.header_sum(&h[CHECKSUMMED]);
        if !integrity.matches(received, computed) {
            return Err(match integrity {
                Integrity::Checksum => DecodeError::HeaderChecksum { received, computed },
                Integrity::Authenticated(_) => DecodeError::HeaderTag,
            });
        }
        Ok(())
    }

    /// The frame size and body checksum or tag a header declares, unchecked.
    pub(crate) fn declared(h: &[u8; HEADER_SIZE]) -> Parsed {
        Parsed {
            size: u32::from_le_bytes(array(h, SIZE)),
            body_sum: u128::from_le_bytes(array(h, CHECKSUM_BODY)),
        }
    }

    /// [`Header::parse`] of a header whose checksum or tag [`Header::verify`]
    /// already checked.
    pub(crate) fn parse_verified(
        h: &[u8; HEADER_SIZE],
        max_message_size: u32,
    ) -> Result<(Header, Parsed), DecodeError> {
        let raw_command = h[COMMAND][0];
        let version = u16::from_le_bytes(array(h, PROTOCOL));
        if version != PROTOCOL_VERSION {
            return Err(DecodeError::UnsupportedProtocol {
                version,
                command: raw_command,
            });
        }
        let size = u32::from_le_bytes(array(h, SIZE));
        if size < HEADER_SIZE_U32 {
            return Err(DecodeError::SizeTooSmall { size });
        }
        if size > max_message_size {
            return Err(DecodeError::SizeTooLarge {
                size,
                max: max_message_size,
            });
        }
        let command = Command::from_wire(raw_command)?;
        zeroed(command, h, RESERVED_FRAME)?;
        let body_size = size - HEADER_SIZE_U32;
        if body_size > 0 && !command.allows_body() {
            return Err(DecodeError::BodyNotAllowed {
                command,
                size: body_size,
            });
        }
        let header = Header {
            cluster: u128::from_le_bytes(array(h, CLUSTER)),
            view: u32::from_le_bytes(array(h, VIEW)),
            release: u32::from_le_bytes(array(h, RELEASE)),
            replica: h[REPLICA][0],
            sequence: u64::from_le_bytes(array(h, SEQUENCE)),
            kind: Kind::read_area(command, h)?,
            app: match command.allows_body() {
                true => AppArea::read(h),
                false => AppArea::ZERO,
            },
        };
        let body_sum = u128::from_le_bytes(array(h, CHECKSUM_BODY));
        Ok((header, Parsed { size, body_sum }))
    }

    /// Verifies and parses a standalone header (e.g. in tests and fuzzers).
    /// Returns the header and the frame size it declares.
    pub fn decode(
        h: &[u8; HEADER_SIZE],
        integrity: &Integrity,
        max_message_size: u32,
    ) -> Result<(Header, u32), DecodeError> {
        Header::parse(h, integrity, max_message_size).map(|(header, p)| (header, p.size))
    }
}

/// [`Header::check`] on a header's parts: a frame of `kind` with `app` and
/// `body_len` body bytes. Returns the frame's size.
pub(crate) fn check_frame(
    kind: &Kind,
    app: &AppArea,
    body_len: usize,
    max_message_size: u32,
) -> Result<u32, EncodeError> {
    let command = kind.command();
    if body_len > 0 && !command.allows_body() {
        return Err(EncodeError::BodyNotAllowed {
            command,
            body: body_len,
        });
    }
    if !app.is_zero() && !command.allows_body() {
        return Err(EncodeError::InvalidField {
            command,
            field: "app",
            value: 1,
        });
    }
    if let Kind::Request(r) | Kind::Reply { request: r, .. } = kind
        && r.request == u64::MAX
    {
        return Err(EncodeError::InvalidField {
            command,
            field: "request",
            value: u128::from(r.request),
        });
    }
    u32::try_from(body_len)
        .ok()
        .and_then(|b| b.checked_add(HEADER_SIZE_U32))
        .filter(|&size| size <= max_message_size)
        .ok_or(EncodeError::TooLarge {
            body: body_len,
            max: max_message_size,
        })
}
