//! Protobuf wire primitives shared by the 1.0 and 2.0 encoders (`encode.rs`,
//! `encode_v2.rs`): field keys, varints and the `Sample` message, which both protocols
//! lay out alike. Both encoders depend on this module and neither on the other's internals.

use prost::encoding::WireType;

/// A field key as its single byte: `(field << 3) | wire type`, for fields below 16.
pub(crate) const fn key(field: u32, wire_type: WireType) -> u8 {
    ((field << 3) | wire_type as u32) as u8
}

/// `TimeSeries.samples` (field 2 in 1.0 and 2.0 alike).
pub(crate) const SAMPLE_KEY: u8 = key(2, WireType::LengthDelimited);
/// `Sample.value` (double), `Sample.timestamp` (int64), in 1.0 and 2.0 alike.
pub(crate) const SAMPLE_VALUE_KEY: u8 = key(1, WireType::SixtyFourBit);
pub(crate) const SAMPLE_TIMESTAMP_KEY: u8 = key(2, WireType::Varint);

/// The length of a `Sample` whose timestamp varint is `timestamp_len` bytes: both fields
/// are always written, so that -0.0 and the stale NaN keep their exact bits.
#[inline]
pub(crate) const fn sample_len(timestamp_len: usize) -> usize {
    1 + 8 + 1 + timestamp_len
}

/// Appends the `TimeSeries.samples` field holding one `Sample`; `timestamp` is its varint.
#[inline]
pub(crate) fn put_sample(body: &mut Vec<u8>, value: f64, timestamp: &[u8]) {
    body.push(SAMPLE_KEY);
    put_varint(sample_len(timestamp.len()) as u64, body);
    body.push(SAMPLE_VALUE_KEY);
    body.extend_from_slice(&value.to_bits().to_le_bytes());
    body.push(SAMPLE_TIMESTAMP_KEY);
    body.extend_from_slice(timestamp);
}

/// Appends `n` as a protobuf varint: seven bits a byte, low bits first.
#[inline]
pub(crate) fn put_varint(mut n: u64, out: &mut Vec<u8>) {
    if n < 0x80 {
        out.push(n as u8);
        return;
    }
    // A series' length: most take two bytes.
    if n < 0x4000 {
        out.extend_from_slice(&[(n as u8) | 0x80, (n >> 7) as u8]);
        return;
    }
    let mut bytes = [0u8; 10];
    let mut i = 0;
    while n >= 0x80 {
        bytes[i] = (n as u8) | 0x80;
        n >>= 7;
        i += 1;
    }
    bytes[i] = n as u8;
    out.extend_from_slice(&bytes[..=i]);
}

/// The protobuf varint at the start of `bytes`: its value and how many bytes it took;
/// `None` when it does not end within the slice or within ten bytes.
#[inline]
pub(crate) fn read_varint(bytes: &[u8]) -> Option<(u64, usize)> {
    let mut n = 0u64;
    for (i, &b) in bytes.iter().take(10).enumerate() {
        n |= u64::from(b & 0x7f) << (7 * i);
        if b < 0x80 {
            return Some((n, i + 1));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_varint_reads_what_put_varint_wrote_and_refuses_an_unending_one() {
        for n in [
            0,
            1,
            127,
            128,
            16_383,
            16_384,
            u64::from(u32::MAX),
            u64::MAX,
        ] {
            let mut bytes = Vec::new();
            put_varint(n, &mut bytes);
            let len = bytes.len();
            bytes.push(0x55); // what follows is not read
            assert_eq!(read_varint(&bytes), Some((n, len)), "{n}");
        }
        assert_eq!(read_varint(&[0x80, 0x80]), None);
        assert_eq!(read_varint(&[0xff; 11]), None);
        assert_eq!(read_varint(&[]), None);
    }
}
