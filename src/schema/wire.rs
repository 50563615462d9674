//! The Confluent wire format: magic byte `0`, a 4-byte big-endian schema id, then the encoded data.

/// The magic byte that starts a wire-format value.
pub const MAGIC: u8 = 0;

/// Length of the header (magic byte and schema id).
pub const HEADER_LEN: usize = 5;

/// Why bytes are not a wire-format value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// Fewer bytes than the header.
    #[error(
        "value is {0} bytes, shorter than the 5-byte wire-format header (magic byte, schema id)"
    )]
    TooShort(usize),
    /// The first byte is not the magic byte.
    #[error("magic byte is {0:#04x}, expected 0x00")]
    BadMagic(u8),
}

/// Whether `value` claims to be wire format (starts with the magic byte). JSON never does.
pub fn looks_like_wire(value: &[u8]) -> bool {
    value.first() == Some(&MAGIC)
}

/// Splits a wire-format value into its schema id and payload.
pub fn split(value: &[u8]) -> Result<(u32, &[u8]), WireError> {
    if value.len() < HEADER_LEN {
        return Err(WireError::TooShort(value.len()));
    }
    if value[0] != MAGIC {
        return Err(WireError::BadMagic(value[0]));
    }
    let id = u32::from_be_bytes([value[1], value[2], value[3], value[4]]);
    Ok((id, &value[HEADER_LEN..]))
}

/// Prefixes `payload` with the wire-format header for `id`.
pub fn frame(id: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
    out.push(MAGIC);
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_errors() {
        let framed = frame(258, b"abc");
        assert_eq!(framed[..5], [0, 0, 0, 1, 2]);
        assert_eq!(split(&framed), Ok((258, &b"abc"[..])));
        assert_eq!(split(&[0, 0, 1]), Err(WireError::TooShort(3)));
        assert_eq!(split(&[1, 0, 0, 0, 1]), Err(WireError::BadMagic(1)));
        assert_eq!(split(&frame(7, b"")), Ok((7, &b""[..])));
        assert!(looks_like_wire(&framed) && !looks_like_wire(b"{}"));
    }
}
