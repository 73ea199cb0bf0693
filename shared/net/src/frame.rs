//! Frames on a QUIC stream: a 4-byte big-endian payload length, then that many bytes. A stream
//! carries any number of frames and ends (FIN) between two frames. The length is checked against
//! [`frame_bytes_max`] before anything is allocated or read further, so a peer cannot make us
//! allocate more than that by announcing a large frame.

pub use crate::limits::frame_bytes_max;

/// Bytes in a frame header.
pub const frame_header_bytes: usize = 4;

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("frame of {len} bytes is larger than the {frame_bytes_max} allowed")]
    TooLarge { len: usize },
    #[error("stream ended inside a frame")]
    Truncated,
    #[error("stream error: {0}")]
    Read(#[from] quinn::ReadExactError),
    #[error("stream error: {0}")]
    Write(#[from] quinn::WriteError),
}

/// The payload length a frame header announces, if acceptable. Pure: no I/O, no allocation.
pub fn decode_frame_header(header: &[u8; frame_header_bytes]) -> Result<usize, FrameError> {
    let len = u32::from_be_bytes(*header) as usize;
    if len > frame_bytes_max {
        return Err(FrameError::TooLarge { len });
    }
    Ok(len)
}

/// The header for a payload of `len` bytes, if acceptable.
pub fn encode_frame_header(len: usize) -> Result<[u8; frame_header_bytes], FrameError> {
    if len > frame_bytes_max {
        return Err(FrameError::TooLarge { len });
    }
    // Cannot truncate: frame_bytes_max fits in a u32 (asserted in `limits`).
    Ok((len as u32).to_be_bytes())
}

/// Writes one frame. An oversize payload is refused before anything is written.
pub async fn write_frame(send: &mut quinn::SendStream, payload: &[u8]) -> Result<(), FrameError> {
    let header = encode_frame_header(payload.len())?;
    send.write_all(&header).await?;
    send.write_all(payload).await?;
    Ok(())
}

/// The next frame, or `None` if the stream ended cleanly between frames. A stream that ends
/// inside a header or a payload gives [`FrameError::Truncated`]; an oversize length gives
/// [`FrameError::TooLarge`] without reading or allocating the payload.
pub async fn read_frame(recv: &mut quinn::RecvStream) -> Result<Option<Vec<u8>>, FrameError> {
    let mut header = [0u8; frame_header_bytes];
    match recv.read_exact(&mut header).await {
        Ok(()) => {}
        Err(quinn::ReadExactError::FinishedEarly(0)) => return Ok(None),
        Err(quinn::ReadExactError::FinishedEarly(_)) => return Err(FrameError::Truncated),
        Err(e) => return Err(e.into()),
    }
    let len = decode_frame_header(&header)?;
    let mut payload = vec![0u8; len];
    match recv.read_exact(&mut payload).await {
        Ok(()) => Ok(Some(payload)),
        Err(quinn::ReadExactError::FinishedEarly(_)) => Err(FrameError::Truncated),
        Err(e) => Err(e.into()),
    }
}

/// Frames waiting to be handled, per stream.
pub const reader_queue_max: usize = 8;

/// Read frames on a task of their own and hand them over a channel, so that waiting for the
/// next frame can sit in a `select!` safely (a partly read frame is never lost). The channel
/// ends after the stream ends; an error is the last item.
pub fn spawn_reader(
    mut recv: quinn::RecvStream,
) -> (
    tokio::sync::mpsc::Receiver<Result<Vec<u8>, String>>,
    tokio::task::JoinHandle<()>,
) {
    let (frames, incoming) = tokio::sync::mpsc::channel(reader_queue_max);
    let task = tokio::spawn(async move {
        loop {
            match read_frame(&mut recv).await {
                Ok(Some(frame)) => {
                    if frames.send(Ok(frame)).await.is_err() {
                        break;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    let _ = frames.send(Err(e.to_string())).await;
                    break;
                }
            }
        }
    });
    (incoming, task)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_round_trip_and_oversize_lengths_are_refused() {
        assert_eq!(decode_frame_header(&12u32.to_be_bytes()).unwrap(), 12);
        assert_eq!(decode_frame_header(&[0; 4]).unwrap(), 0);
        let largest = encode_frame_header(frame_bytes_max).unwrap();
        assert_eq!(decode_frame_header(&largest).unwrap(), frame_bytes_max);
        assert!(matches!(
            decode_frame_header(&[0xff; 4]),
            Err(FrameError::TooLarge { len }) if len == u32::MAX as usize
        ));
        let one_over = (frame_bytes_max as u32 + 1).to_be_bytes();
        assert!(matches!(
            decode_frame_header(&one_over),
            Err(FrameError::TooLarge { .. })
        ));
        assert!(encode_frame_header(frame_bytes_max + 1).is_err());
        assert!(encode_frame_header(usize::MAX).is_err());
    }

    #[test]
    fn every_header_decodes_without_panicking() {
        // A spread of header values, including every single-byte and boundary pattern.
        for high in 0..=255u8 {
            for low in [0u8, 1, 0x7f, 0x80, 0xfe, 0xff] {
                for header in [[high, low, low, low], [low, high, 0, 0], [0, 0, low, high]] {
                    let len = u32::from_be_bytes(header) as usize;
                    match decode_frame_header(&header) {
                        Ok(decoded) => assert_eq!(decoded, len),
                        Err(FrameError::TooLarge { len: refused }) => {
                            assert_eq!(refused, len);
                            assert!(len > frame_bytes_max);
                        }
                        Err(other) => panic!("unexpected {other}"),
                    }
                }
            }
        }
    }
}
