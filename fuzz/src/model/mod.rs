//! Reference models: the same policies as the real structures, written the
//! naive way (sets, vectors, linear scans) so they are obviously right. The
//! fuzz targets and the property tests in `tests/models.rs` check the real
//! structures against them.

pub mod dedup;
pub mod replay;
