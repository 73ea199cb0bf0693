//! Deflate and inflate of packed batches with one compressor state per thread.
//!
//! A fresh deflate state is a few hundred KiB of tables that the allocator maps anew, zeroes
//! and page-faults in for every message; a hub relaying to 50 stores did that for every batch
//! (about 5 % of its CPU in a profile). Resetting the thread's state instead keeps its memory.

use std::cell::RefCell;

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

thread_local! {
    static deflater: RefCell<Option<Compress>> = const { RefCell::new(None) };
    static inflater: RefCell<Option<Decompress>> = const { RefCell::new(None) };
}

/// `plain` deflated (raw deflate, fast level), if that is shorter than `plain`; `None` when
/// it would not be (the caller sends `plain` as it is).
pub fn deflate_if_smaller(plain: &[u8]) -> Option<Vec<u8>> {
    deflater.with(|cell| {
        let mut cell = cell.try_borrow_mut().ok()?;
        let compress = cell.get_or_insert_with(|| Compress::new(Compression::fast(), false));
        compress.reset();
        // Room for the whole output at once (deflate's worst case is a few bytes per 16 KiB
        // block more than the input): short output buffers are where zlib ports have had
        // their corner-case bugs.
        let mut out = Vec::with_capacity(plain.len() + plain.len() / 8 + 1024);
        loop {
            let consumed = usize::try_from(compress.total_in()).ok()?;
            let input = plain.get(consumed..)?;
            let before = (compress.total_in(), compress.total_out());
            let status = compress
                .compress_vec(input, &mut out, FlushCompress::Finish)
                .ok()?;
            if status == Status::StreamEnd {
                return (out.len() < plain.len()).then_some(out);
            }
            if out.len() == out.capacity() {
                out.reserve(out.capacity());
            } else if (compress.total_in(), compress.total_out()) == before {
                return None;
            }
        }
    })
}

/// `deflated` inflated; stops as soon as the output is longer than `limit` bytes (returning
/// what it has, which the caller then refuses as too large).
pub fn inflate_at_most(deflated: &[u8], limit: usize) -> Result<Vec<u8>, String> {
    inflater.with(|cell| {
        let mut cell = cell
            .try_borrow_mut()
            .map_err(|_| "inflater in use".to_string())?;
        let decompress = cell.get_or_insert_with(|| Decompress::new(false));
        decompress.reset(false);
        let mut out = Vec::with_capacity(deflated.len().saturating_mul(4).min(limit));
        loop {
            let consumed = usize::try_from(decompress.total_in()).map_err(|e| e.to_string())?;
            let input = deflated
                .get(consumed..)
                .ok_or_else(|| "inflate went past its input".to_string())?;
            let before = (decompress.total_in(), decompress.total_out());
            let status = decompress
                .decompress_vec(input, &mut out, FlushDecompress::Finish)
                .map_err(|e| e.to_string())?;
            if status == Status::StreamEnd {
                return Ok(out);
            }
            if out.len() > limit {
                return Ok(out);
            }
            if out.len() == out.capacity() {
                // Room for more, up to one byte past the limit so that passing it shows.
                out.reserve(out.capacity().max(4096).min(limit + 1 - out.len()));
            } else if (decompress.total_in(), decompress.total_out()) == before {
                return Err("deflate stream ends early".into());
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(len: usize, seed: u64) -> Vec<u8> {
        let mut state = seed | 1;
        (0..len)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                b"0123456789,-"[(state % 12) as usize]
            })
            .collect()
    }

    #[test]
    fn the_reused_state_packs_each_message_on_its_own() {
        // Different sizes one after another on the same thread: each one inflates back to
        // itself alone (nothing of the previous message leaks into the next).
        for (n, len) in [5_000, 70_000, 600, 300_000, 5_000].into_iter().enumerate() {
            let plain = text(len, n as u64 + 7);
            let deflated = deflate_if_smaller(&plain).expect("text compresses");
            assert!(deflated.len() < plain.len());
            assert_eq!(inflate_at_most(&deflated, 1 << 20).unwrap(), plain);
            // The standard decoder reads it too (the format did not change).
            let mut standard = Vec::new();
            std::io::Read::read_to_end(
                &mut flate2::read::DeflateDecoder::new(deflated.as_slice()),
                &mut standard,
            )
            .unwrap();
            assert_eq!(standard, plain);
        }
    }

    #[test]
    fn what_does_not_shrink_is_not_packed_and_a_cut_stream_is_refused() {
        // Bytes deflate cannot shrink (already deflated ones).
        let incompressible = deflate_if_smaller(&text(50_000, 3)).unwrap();
        assert_eq!(deflate_if_smaller(&incompressible), None);
        let deflated = deflate_if_smaller(&text(50_000, 9)).unwrap();
        let cut = &deflated[..deflated.len() / 2];
        assert!(inflate_at_most(cut, 1 << 20).is_err());
        // Past the limit: stops there, returning more than the limit for the caller to refuse.
        let long = inflate_at_most(&deflated, 1_000).unwrap();
        assert!(long.len() > 1_000 && long.len() < 50_000);
    }
}
