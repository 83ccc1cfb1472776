//! Typed framing errors. Each names the offending value.

use super::command::Command;

/// How an operator should triage a decode failure.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorClass {
    /// The bytes could not be tied to a peer speaking this protocol with this
    /// integrity mode: bad checksum or tag, unknown protocol version or command
    /// (including command 0 from old or foreign peers). Often noise, an old
    /// peer, or an attack; never evidence that an authenticated peer misbehaved.
    Unauthenticated,
    /// The header verified, but its content breaks the protocol rules.
    ProtocolViolation,
}

/// A frame could not be decoded. The decoder that returned it stays failed.
#[non_exhaustive]
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Header checksum mismatch (checksum mode).
    #[error(
        "header checksum mismatch: frame says {received:#034x}, bytes hash to {computed:#034x}"
    )]
    HeaderChecksum {
        /// Value in the frame.
        received: u128,
        /// Value computed over the bytes.
        computed: u128,
    },
    /// Header tag mismatch (authenticated mode). Values are withheld so logs
    /// never hold a valid tag for attacker-chosen bytes.
    #[error("header tag does not verify under the session key")]
    HeaderTag,
    /// Body checksum mismatch (checksum mode).
    #[error(
        "body checksum mismatch: header says {received:#034x}, {size}-byte body hashes to {computed:#034x}"
    )]
    BodyChecksum {
        /// Value in the header.
        received: u128,
        /// Value computed over the body.
        computed: u128,
        /// Body length in bytes.
        size: usize,
    },
    /// Body tag mismatch (authenticated mode).
    #[error("body tag does not verify under the session key ({size}-byte body)")]
    BodyTag {
        /// Body length in bytes.
        size: usize,
    },
    /// The frame's protocol version is not spoken here.
    #[error(
        "unsupported protocol version {version} (command byte {command}); this build speaks {}",
        super::PROTOCOL_VERSION
    )]
    UnsupportedProtocol {
        /// Version in the frame.
        version: u16,
        /// Raw command byte, so a `hello` can still be answered with a `reject`.
        command: u8,
    },
    /// Unknown command number.
    #[error("unknown command {value}")]
    UnknownCommand {
        /// The command byte.
        value: u8,
    },
    /// `size` is smaller than a header.
    #[error(
        "frame size {size} is smaller than the {}-byte header",
        super::HEADER_SIZE
    )]
    SizeTooSmall {
        /// Declared size.
        size: u32,
    },
    /// `size` exceeds the configured maximum message size.
    #[error("frame size {size} exceeds max_message_size {max}")]
    SizeTooLarge {
        /// Declared size.
        size: u32,
        /// The limit in force.
        max: u32,
    },
    /// A reserved byte is not zero.
    #[error(
        "reserved byte at header offset {offset} is {byte:#04x}, must be 0 (command {command})"
    )]
    ReservedNonZero {
        /// Raw command byte.
        command: u8,
        /// Header offset of the first non-zero reserved byte.
        offset: usize,
        /// Its value.
        byte: u8,
    },
    /// The command does not allow a body.
    #[error("{command:?} frames carry no body, this one declares {size} body bytes")]
    BodyNotAllowed {
        /// The command.
        command: Command,
        /// Declared body size.
        size: u32,
    },
    /// Unknown plane number in a `hello`.
    #[error("unknown plane {value}")]
    UnknownPlane {
        /// The plane byte.
        value: u8,
    },
    /// Unknown status in a `reject`.
    #[error("unknown reject status {value}")]
    UnknownRejectStatus {
        /// The status.
        value: u16,
    },
    /// Unknown reason in a `close`.
    #[error("unknown close reason {value}")]
    UnknownCloseReason {
        /// The reason.
        value: u16,
    },
    /// Unknown status in a `reply`.
    #[error("unknown reply status {value}")]
    UnknownReplyStatus {
        /// The status.
        value: u16,
    },
    /// A command-specific field holds a value the protocol forbids.
    #[error("{command:?} field `{field}` has invalid value {value}")]
    InvalidField {
        /// The command.
        command: Command,
        /// The field.
        field: &'static str,
        /// Its value.
        value: u128,
    },
}

impl DecodeError {
    /// The triage bucket of this error.
    pub const fn class(&self) -> ErrorClass {
        match self {
            DecodeError::HeaderChecksum { .. }
            | DecodeError::HeaderTag
            | DecodeError::BodyChecksum { .. }
            | DecodeError::BodyTag { .. }
            | DecodeError::UnsupportedProtocol { .. }
            | DecodeError::UnknownCommand { .. } => ErrorClass::Unauthenticated,
            _ => ErrorClass::ProtocolViolation,
        }
    }
}

/// A frame could not be encoded.
#[non_exhaustive]
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    /// Header plus body would exceed the maximum message size.
    #[error("a {body}-byte body makes the frame exceed max_message_size {max}")]
    TooLarge {
        /// Body length.
        body: usize,
        /// The limit in force.
        max: u32,
    },
    /// The command does not allow a body.
    #[error("{command:?} frames carry no body, got {body} bytes")]
    BodyNotAllowed {
        /// The command.
        command: Command,
        /// Body length.
        body: usize,
    },
    /// A field holds a value the decoder would refuse.
    #[error("{command:?} field `{field}` has invalid value {value}")]
    InvalidField {
        /// The command.
        command: Command,
        /// The field.
        field: &'static str,
        /// Its value.
        value: u128,
    },
}
