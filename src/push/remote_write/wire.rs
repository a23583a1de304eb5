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
