//! The on-disk record format of the durable queue, and the scan that verifies a segment.
//!
//! A segment file is a run of records, each a 32-byte header followed by the payload
//! (little endian):
//!
//! ```text
//! magic "CXQ" + format u8 | payload_len u32 | samples u64 | oldest_timestamp_ms i64 | header_crc u32 | payload_crc u32 | payload
//! ```
//!
//! The magic's last byte is the record's format, a small version flag: `1` a remote-write
//! 1.0 payload (every record written before 2.0 existed), `2` a 2.0 payload; the layout is
//! the same.
//!
//! The header has its own checksum so that a damaged payload behind an intact header still
//! says how many samples were lost and where the next record starts; a damaged header is
//! passed over by searching for the next position that holds a valid header.

use std::ops::Range;

use crate::push::remote_write::negotiate::Protocol;

/// The magic without its format byte.
pub(crate) const MAGIC: [u8; 3] = *b"CXQ";
const FORMAT_V1: u8 = b'1';
const FORMAT_V2: u8 = b'2';
pub(crate) const HEADER_LEN: usize = 32;

/// Segment files are `<sequence, 20 digits>.seg`, so names sort in queue order.
pub(crate) fn file_name(seq: u64) -> String {
    format!("{seq:020}.seg")
}

pub(crate) fn parse_file_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(".seg")?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Header {
    pub(crate) payload_len: u32,
    pub samples: u64,
    pub(crate) oldest_timestamp_ms: i64,
    pub(crate) payload_crc: u32,
    /// The payload's protocol, in the magic's format byte.
    pub(crate) protocol: Protocol,
}

impl Header {
    pub(crate) fn for_payload(
        payload: &[u8],
        samples: u64,
        oldest_timestamp_ms: i64,
    ) -> Option<Header> {
        Some(Header {
            payload_len: u32::try_from(payload.len()).ok()?,
            samples,
            oldest_timestamp_ms,
            payload_crc: crc32fast::hash(payload),
            protocol: Protocol::V1,
        })
    }

    pub(crate) fn with_protocol(self, protocol: Protocol) -> Header {
        Header { protocol, ..self }
    }

    /// Header plus payload.
    pub(crate) fn record_len(&self) -> u64 {
        HEADER_LEN as u64 + u64::from(self.payload_len)
    }

    pub(crate) fn encode(&self) -> [u8; HEADER_LEN] {
        let mut out = [0u8; HEADER_LEN];
        out[0..3].copy_from_slice(&MAGIC);
        out[3] = match self.protocol {
            Protocol::V1 => FORMAT_V1,
            Protocol::V2 => FORMAT_V2,
        };
        out[4..8].copy_from_slice(&self.payload_len.to_le_bytes());
        out[8..16].copy_from_slice(&self.samples.to_le_bytes());
        out[16..24].copy_from_slice(&self.oldest_timestamp_ms.to_le_bytes());
        let header_crc = crc32fast::hash(&out[0..24]);
        out[24..28].copy_from_slice(&header_crc.to_le_bytes());
        out[28..32].copy_from_slice(&self.payload_crc.to_le_bytes());
        out
    }

    /// The header at the start of `bytes`, or `None` when the magic or its checksum is wrong.
    pub(crate) fn decode(bytes: &[u8]) -> Option<Header> {
        let bytes = bytes.get(..HEADER_LEN)?;
        let u32_at =
            |i: usize| u32::from_le_bytes([bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]]);
        let u64_at = |i: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&bytes[i..i + 8]);
            u64::from_le_bytes(b)
        };
        if bytes[0..3] != MAGIC || u32_at(24) != crc32fast::hash(&bytes[0..24]) {
            return None;
        }
        let protocol = match bytes[3] {
            FORMAT_V1 => Protocol::V1,
            FORMAT_V2 => Protocol::V2,
            _ => return None,
        };
        Some(Header {
            payload_len: u32_at(4),
            samples: u64_at(8),
            oldest_timestamp_ms: u64_at(16) as i64,
            payload_crc: u32_at(28),
            protocol,
        })
    }

    pub(crate) fn payload_matches(&self, payload: &[u8]) -> bool {
        payload.len() == self.payload_len as usize && crc32fast::hash(payload) == self.payload_crc
    }
}

/// What a scan finds, in file order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Found {
    /// A verified record starting at `offset`.
    Record { offset: u64, header: Header },
    /// Bytes that hold no verifiable record: a torn tail, a damaged header or payload.
    /// `samples` is known when the damaged record's header was intact.
    Corrupt { range: Range<u64>, samples: u64 },
}

/// Where a scan reads a segment's bytes: the file at open, a slice in tests.
pub(crate) trait ReadAt {
    /// Reads at `offset` into `buf`; fewer bytes only at the end.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<usize>;
}

impl ReadAt for [u8] {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
        let start = usize::try_from(offset)
            .unwrap_or(usize::MAX)
            .min(self.len());
        let n = buf.len().min(self.len() - start);
        buf[..n].copy_from_slice(&self[start..start + n]);
        Ok(n)
    }
}

impl ReadAt for std::fs::File {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
        use std::os::unix::fs::FileExt;
        let mut done = 0;
        while done < buf.len() {
            match FileExt::read_at(self, &mut buf[done..], offset + done as u64) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(done)
    }
}

/// Bytes a scan reads at a time: opening a queue costs this much memory, however large
/// its segments and records are.
const SCAN_CHUNK: usize = 64 * 1024;

/// Verifies every record of a segment's contents.
#[cfg(test)]
pub(crate) fn scan(buf: &[u8]) -> Vec<Found> {
    let mut found = Vec::new();
    scan_stream(buf, buf.len() as u64, |f| found.push(f));
    found
}

/// Verifies every record of a segment of `len` bytes, reading it in chunks, and reports
/// each record and damaged region in file order. A read error makes the rest of the
/// segment one damaged region.
pub(crate) fn scan_stream<R: ReadAt + ?Sized>(src: &R, len: u64, mut on: impl FnMut(Found)) {
    let mut chunk = vec![0u8; SCAN_CHUNK];
    let mut corrupt: Option<(Range<u64>, u64)> = None;
    let mut offset = 0u64;
    while offset < len {
        let mut head = [0u8; HEADER_LEN];
        let header = match src.read_at(&mut head, offset) {
            Ok(n) if n == HEADER_LEN => Header::decode(&head),
            Ok(_) => None,
            Err(_) => {
                add_corrupt(&mut on, &mut corrupt, offset..len, 0);
                break;
            }
        };
        match header {
            Some(header) => {
                let end = offset.saturating_add(header.record_len());
                if end <= len && payload_matches(src, offset, header, &mut chunk) {
                    if let Some((range, samples)) = corrupt.take() {
                        on(Found::Corrupt { range, samples });
                    }
                    on(Found::Record { offset, header });
                    offset = end;
                } else {
                    // Intact header, damaged or cut payload: its length says where to go on.
                    let end = end.min(len);
                    add_corrupt(&mut on, &mut corrupt, offset..end, header.samples);
                    offset = end;
                }
            }
            None => {
                let end = next_header_after(src, len, offset, &mut chunk);
                add_corrupt(&mut on, &mut corrupt, offset..end, 0);
                offset = end;
            }
        }
    }
    if let Some((range, samples)) = corrupt {
        on(Found::Corrupt { range, samples });
    }
}

/// Adjacent damage is one corrupt region (one torn write is one loss, not several).
fn add_corrupt(
    on: &mut impl FnMut(Found),
    corrupt: &mut Option<(Range<u64>, u64)>,
    range: Range<u64>,
    samples: u64,
) {
    match corrupt {
        Some((last, n)) if last.end == range.start => {
            last.end = range.end;
            *n += samples;
        }
        _ => {
            if let Some((range, samples)) = corrupt.take() {
                on(Found::Corrupt { range, samples });
            }
            *corrupt = Some((range, samples));
        }
    }
}

/// Whether the payload behind `header` at `offset` has the header's checksum, read in
/// chunks.
fn payload_matches<R: ReadAt + ?Sized>(
    src: &R,
    offset: u64,
    header: Header,
    chunk: &mut [u8],
) -> bool {
    let mut hasher = crc32fast::Hasher::new();
    let mut at = offset + HEADER_LEN as u64;
    let mut left = u64::from(header.payload_len);
    while left > 0 {
        let n = chunk.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        match src.read_at(&mut chunk[..n], at) {
            Ok(got) if got == n => hasher.update(&chunk[..n]),
            _ => return false,
        }
        at += n as u64;
        left -= n as u64;
    }
    hasher.finalize() == header.payload_crc
}

/// The first offset after `from` holding a valid header, or `len`.
fn next_header_after<R: ReadAt + ?Sized>(src: &R, len: u64, from: u64, chunk: &mut [u8]) -> u64 {
    let mut at = from + 1;
    while at < len {
        let Ok(n) = src.read_at(chunk, at) else {
            return len;
        };
        if n == 0 {
            return len;
        }
        let window = &chunk[..n];
        for i in 0..n {
            if window[i..].starts_with(&MAGIC)
                || (n - i < MAGIC.len() && MAGIC.starts_with(&window[i..]))
            {
                let candidate = at + i as u64;
                let mut head = [0u8; HEADER_LEN];
                if matches!(src.read_at(&mut head, candidate), Ok(HEADER_LEN))
                    && Header::decode(&head).is_some()
                {
                    return candidate;
                }
            }
        }
        at += n as u64;
    }
    len
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(payload: &[u8], samples: u64, ts: i64) -> Vec<u8> {
        let header = Header::for_payload(payload, samples, ts).unwrap();
        let mut out = header.encode().to_vec();
        out.extend_from_slice(payload);
        out
    }

    #[test]
    fn header_round_trips_and_rejects_any_flipped_bit() {
        let header = Header::for_payload(b"payload", 7, -5).unwrap();
        let bytes = header.encode();
        assert_eq!(Header::decode(&bytes), Some(header));
        for i in 0..24 {
            let mut damaged = bytes;
            damaged[i] ^= 0x10;
            assert_eq!(
                Header::decode(&damaged),
                None,
                "flip in byte {i} went unnoticed"
            );
        }
    }

    #[test]
    fn the_format_byte_carries_the_protocol_and_old_records_read_as_1_0() {
        let v2 = Header::for_payload(b"p", 1, 2)
            .unwrap()
            .with_protocol(Protocol::V2);
        let bytes = v2.encode();
        assert_eq!(&bytes[0..4], b"CXQ2");
        assert_eq!(
            Header::decode(&bytes).map(|h| h.protocol),
            Some(Protocol::V2)
        );
        // A record written before the format byte meant anything.
        let old = Header::for_payload(b"p", 1, 2).unwrap().encode();
        assert_eq!(&old[0..4], b"CXQ1");
        assert_eq!(Header::decode(&old).map(|h| h.protocol), Some(Protocol::V1));
        // An unknown format is not a record.
        let mut unknown = old;
        unknown[3] = b'9';
        let crc = crc32fast::hash(&unknown[0..24]);
        unknown[24..28].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(Header::decode(&unknown), None);
    }

    #[test]
    fn file_names_sort_in_sequence_order_and_parse_back() {
        assert!(file_name(9) < file_name(10));
        assert_eq!(parse_file_name(&file_name(42)), Some(42));
        assert_eq!(parse_file_name("42.seg"), None);
        assert_eq!(parse_file_name("ack"), None);
    }

    #[test]
    fn scan_finds_every_intact_record() {
        let mut buf = record(b"one", 1, 10);
        buf.extend(record(b"two", 2, 20));
        let found = scan(&buf);
        assert_eq!(found.len(), 2);
        assert!(matches!(found[1], Found::Record { offset: 35, header } if header.samples == 2));
    }

    #[test]
    fn a_damaged_payload_is_skipped_by_its_length_and_its_samples_are_known() {
        let mut buf = record(b"one", 1, 10);
        buf.extend(record(b"two", 2, 20));
        buf.extend(record(b"three", 3, 30));
        buf[35 + HEADER_LEN] ^= 1; // first byte of "two"
        let found = scan(&buf);
        assert_eq!(
            found,
            vec![
                Found::Record {
                    offset: 0,
                    header: Header::for_payload(b"one", 1, 10).unwrap()
                },
                Found::Corrupt {
                    range: 35..70,
                    samples: 2
                },
                Found::Record {
                    offset: 70,
                    header: Header::for_payload(b"three", 3, 30).unwrap()
                },
            ]
        );
    }

    #[test]
    fn a_damaged_header_is_passed_over_to_the_next_valid_header() {
        let mut buf = record(b"one", 1, 10);
        buf.extend(record(b"two", 2, 20));
        buf[2] ^= 1;
        let found = scan(&buf);
        assert_eq!(
            found[0],
            Found::Corrupt {
                range: 0..35,
                samples: 0
            }
        );
        assert!(matches!(found[1], Found::Record { offset: 35, .. }));
    }

    #[test]
    fn records_and_damage_larger_than_a_read_chunk_scan_the_same() {
        let big: Vec<u8> = (0..3 * SCAN_CHUNK).map(|i| (i % 251) as u8).collect();
        let mut buf = record(&big, 1, 10);
        let first_len = buf.len() as u64;
        // A damaged header, then garbage longer than a chunk holding a stray magic.
        let mut garbage = record(b"lost", 2, 20);
        garbage[1] ^= 1;
        garbage.extend(vec![7u8; SCAN_CHUNK + 3]);
        garbage.extend_from_slice(&MAGIC);
        garbage.extend(vec![7u8; 100]);
        buf.extend(&garbage);
        let third_at = buf.len() as u64;
        buf.extend(record(&big[..SCAN_CHUNK + 1], 3, 30));
        let found = scan(&buf);
        assert_eq!(found.len(), 3, "{found:?}");
        assert!(matches!(found[0], Found::Record { offset: 0, header } if header.samples == 1));
        assert_eq!(
            found[1],
            Found::Corrupt {
                range: first_len..third_at,
                samples: 0
            }
        );
        assert!(
            matches!(found[2], Found::Record { offset, header } if offset == third_at && header.samples == 3)
        );
    }

    #[test]
    fn a_torn_tail_is_one_corrupt_region_to_the_end() {
        let mut buf = record(b"one", 1, 10);
        let second = record(b"two-two-two", 4, 20);
        buf.extend_from_slice(&second[..HEADER_LEN + 3]);
        assert_eq!(
            scan(&buf)[1],
            Found::Corrupt {
                range: 35..(35 + HEADER_LEN as u64 + 3),
                samples: 4
            }
        );
        let mut cut_header = record(b"one", 1, 10);
        cut_header.extend_from_slice(&second[..10]);
        assert_eq!(
            scan(&cut_header)[1],
            Found::Corrupt {
                range: 35..45,
                samples: 0
            }
        );
    }
}
