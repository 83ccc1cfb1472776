//! The wire format: a 256-byte header plus body, see `PROTOCOL.md`.
//!
//! [`layout`] is the single definition of every offset; [`Header`] and
//! [`Kind`] are its typed view; [`Frame::encode`] and [`FrameDecoder`] move
//! between frames and bytes.

mod command;
mod decoder;
mod error;
mod frame;
mod header;
mod integrity;
pub mod layout;

pub use command::{
    CloseReason, Command, Hello, Kind, Plane, Reject, RejectStatus, ReplyStatus, RequestHeader,
    Welcome,
};
pub use decoder::FrameDecoder;
pub use error::{DecodeError, EncodeError, ErrorClass};
pub use frame::{EncodedFrame, Frame};
pub(crate) use header::check_frame;
pub use header::{APP_AREA_SIZE, AppArea, AppHeader, Header};
pub use integrity::{FrameKeys, Integrity};
pub use layout::HEADER_SIZE;

/// The wire protocol version this build speaks.
pub const PROTOCOL_VERSION: u16 = 1;

/// The `replica` header value of frames not sent by a replica (clients).
pub const REPLICA_NONE: u8 = u8::MAX;

/// Largest `max_message_size` the configuration accepts (64 MiB).
pub const MAX_MESSAGE_SIZE_LIMIT: u32 = 64 << 20;
