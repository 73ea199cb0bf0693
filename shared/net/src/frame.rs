//! Frames on a QUIC stream: a 4-byte big-endian length, then that many bytes. The length is
//! checked against `frame_bytes_max` before anything is allocated.

/// Largest frame payload, in bytes.
pub const frame_bytes_max: usize = 8 * 1024 * 1024;

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

/// The payload length a frame header announces, if acceptable.
pub fn decode_frame_header(header: [u8; 4]) -> Result<usize, FrameError> {
    let len = u32::from_be_bytes(header) as usize;
    if len > frame_bytes_max {
        return Err(FrameError::TooLarge { len });
    }
    Ok(len)
}

pub fn encode_frame_header(len: usize) -> Result<[u8; 4], FrameError> {
    if len > frame_bytes_max {
        return Err(FrameError::TooLarge { len });
    }
    Ok((len as u32).to_be_bytes())
}

pub async fn write_frame(send: &mut quinn::SendStream, payload: &[u8]) -> Result<(), FrameError> {
    let header = encode_frame_header(payload.len())?;
    send.write_all(&header).await?;
    send.write_all(payload).await?;
    Ok(())
}

/// The next frame, or `None` if the stream ended cleanly between frames.
pub async fn read_frame(recv: &mut quinn::RecvStream) -> Result<Option<Vec<u8>>, FrameError> {
    let mut header = [0u8; 4];
    match recv.read_exact(&mut header).await {
        Ok(()) => {}
        Err(quinn::ReadExactError::FinishedEarly(0)) => return Ok(None),
        Err(quinn::ReadExactError::FinishedEarly(_)) => return Err(FrameError::Truncated),
        Err(e) => return Err(e.into()),
    }
    let len = decode_frame_header(header)?;
    let mut payload = vec![0u8; len];
    match recv.read_exact(&mut payload).await {
        Ok(()) => Ok(Some(payload)),
        Err(quinn::ReadExactError::FinishedEarly(_)) => Err(FrameError::Truncated),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oversize_lengths_are_refused_before_allocation() {
        assert_eq!(decode_frame_header(12u32.to_be_bytes()).unwrap(), 12);
        assert!(matches!(
            decode_frame_header([0xff; 4]),
            Err(FrameError::TooLarge { .. })
        ));
        assert!(encode_frame_header(frame_bytes_max + 1).is_err());
    }
}
