//! CRC-framed records, as coord's Raft log and the agent's checkpoint journal store them:
//! a little-endian u32 length, a little-endian u32 CRC-32 of the payload, the payload.
//! A record whose frame is cut short or whose checksum fails is told apart from a good one,
//! so recovery can cut off a torn final write and refuse damage anywhere else.

/// Bytes before each payload.
pub const HEADER_BYTES: usize = 8;

/// Appends `payload`, framed, to `out`.
pub fn push_framed(out: &mut Vec<u8>, payload: &[u8]) {
    out.reserve(HEADER_BYTES + payload.len());
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
    out.extend_from_slice(payload);
}

/// One framed record at the start of `bytes`: its payload and its whole length, or what is
/// wrong with it.
pub fn parse_framed(bytes: &[u8]) -> Result<(&[u8], usize), String> {
    if bytes.len() < HEADER_BYTES {
        return Err("truncated header".into());
    }
    let len = u32::from_le_bytes(bytes[0..4].try_into().expect("4 bytes")) as usize;
    let crc = u32::from_le_bytes(bytes[4..8].try_into().expect("4 bytes"));
    let payload = bytes.get(HEADER_BYTES..HEADER_BYTES + len).ok_or("truncated payload")?;
    if crc32fast::hash(payload) != crc {
        return Err("checksum mismatch".into());
    }
    Ok((payload, HEADER_BYTES + len))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_damage_is_named() {
        let mut bytes = Vec::new();
        push_framed(&mut bytes, b"one");
        push_framed(&mut bytes, b"");
        let (first, len) = parse_framed(&bytes).unwrap();
        assert_eq!((first, len), (&b"one"[..], HEADER_BYTES + 3));
        assert_eq!(parse_framed(&bytes[len..]).unwrap(), (&b""[..], HEADER_BYTES));
        assert_eq!(parse_framed(&bytes[..5]).unwrap_err(), "truncated header");
        assert_eq!(parse_framed(&bytes[..len - 1]).unwrap_err(), "truncated payload");
        bytes[HEADER_BYTES] ^= 0xff;
        assert_eq!(parse_framed(&bytes).unwrap_err(), "checksum mismatch");
    }
}
