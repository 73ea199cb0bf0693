//! Every limit and timing setting of the transport, in one place. Names end with their unit
//! (`_bytes_max`, `_ms`); the modules that enforce them re-export them where they are used.

/// Largest frame payload, in bytes. Checked on the 4-byte header before anything is allocated.
pub const frame_bytes_max: usize = 8 * 1024 * 1024;
/// Largest enrollment bundle file accepted, in bytes (a bundle is about 2 KiB).
pub const bundle_bytes_max: u64 = 64 * 1024;
/// Longest store id, in bytes: it is one DNS label in the store's certificate.
pub const store_id_bytes_max: usize = 63;
/// Most concurrent bidirectional streams a peer may open on one connection.
pub const streams_bidi_max: u32 = 8;
/// Most concurrent unidirectional streams a peer may open: none are used.
pub const streams_uni_max: u32 = 0;
/// Keep-alive on idle links, so NATs keep the mapping and a dead link is noticed quickly.
pub const keep_alive_ms: u64 = 2_000;
/// A link silent for this long is dead (five keep-alives missed).
pub const idle_timeout_ms: u32 = 10_000;

// A frame length must fit the 4-byte header.
const _: () = assert!(frame_bytes_max <= u32::MAX as usize);
// The idle timeout must outlast several keep-alives, or a healthy idle link would be dropped.
const _: () = assert!(keep_alive_ms * 3 <= idle_timeout_ms as u64);
