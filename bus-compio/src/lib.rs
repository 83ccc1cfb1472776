//! The bus on the `compio` runtime.
//!
//! **Placeholder.** This crate compiles so the workspace has its final shape,
//! but the adapter itself lands with its own issue. Until then it only
//! re-exports the protocol core, [`bus_proto`], which is where all protocol
//! logic lives; an adapter will move bytes between compio sockets and the core's
//! state machines and sleep until the core's deadlines.

#![forbid(unsafe_code)]

pub use bus_proto;
