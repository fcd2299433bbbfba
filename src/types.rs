//! The etcd data model without protobuf: the values every layer shares
//! (the engine in `mvcc`, persistence in `sql`, the gRPC services). A leaf:
//! it imports nothing of the crate.

use bytes::Bytes;

/// A store revision. Revision 1 is the empty store.
pub type Revision = i64;
/// A lease id; 0 means "no lease".
pub type LeaseId = i64;

/// A change's position in the log: its revision (etcd's `main`) and its
/// place within the revision (etcd's `sub`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Rev {
    pub main: Revision,
    pub sub: i64,
}

/// One version of one key, as etcd's `mvccpb.KeyValue`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct KeyValue {
    pub key: Bytes,
    pub create_revision: Revision,
    pub mod_revision: Revision,
    pub version: i64,
    pub value: Bytes,
    pub lease: LeaseId,
}

/// A committed change to one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub kind: EventKind,
    /// For a put, the new version; for a delete, the key with `mod_revision`
    /// set to the deleting revision and everything else empty.
    pub kv: KeyValue,
    /// The version before this change, if the key existed.
    pub prev_kv: Option<KeyValue>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    Put,
    Delete,
}

/// A key interval as etcd defines it: `end` empty means the single key
/// `start`; `end == [0]` means every key `>= start`; otherwise `[start, end)`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct KeyRange {
    pub start: Bytes,
    /// Exclusive upper bound; `None` means unbounded.
    pub end: Option<Bytes>,
}

impl KeyRange {
    /// Builds the interval from etcd's `(key, range_end)` pair.
    pub fn from_etcd(key: &Bytes, range_end: &Bytes) -> KeyRange {
        if range_end.is_empty() {
            let mut end = Vec::with_capacity(key.len() + 1);
            end.extend_from_slice(key);
            end.push(0);
            KeyRange {
                start: key.clone(),
                end: Some(end.into()),
            }
        } else if range_end.as_ref() == [0] {
            KeyRange {
                start: key.clone(),
                end: None,
            }
        } else {
            KeyRange {
                start: key.clone(),
                end: Some(range_end.clone()),
            }
        }
    }

    /// The one key the interval holds, when it is etcd's single-key form
    /// (`end` is `start` followed by a zero byte).
    pub fn single_key(&self) -> Option<&[u8]> {
        let end = self.end.as_ref()?;
        (end.len() == self.start.len() + 1 && end.ends_with(&[0]) && end.starts_with(&self.start))
            .then_some(self.start.as_ref())
    }

    /// True when the interval is provably empty (`end <= start`).
    pub fn is_empty(&self) -> bool {
        matches!(&self.end, Some(end) if end <= &self.start)
    }

    pub fn contains(&self, key: &[u8]) -> bool {
        key >= self.start.as_ref() && self.end.as_ref().is_none_or(|end| key < end.as_ref())
    }
}

/// CRC-32C (Castagnoli), the checksum etcd's hashes use.
#[derive(Clone)]
pub struct Crc32c(u32);

impl Crc32c {
    const TABLE: [u32; 256] = {
        let mut t = [0u32; 256];
        let mut i = 0;
        while i < 256 {
            let mut c = i as u32;
            let mut k = 0;
            while k < 8 {
                c = if c & 1 != 0 {
                    0x82F6_3B78 ^ (c >> 1)
                } else {
                    c >> 1
                };
                k += 1;
            }
            t[i] = c;
            i += 1;
        }
        t
    };

    pub fn new() -> Crc32c {
        Crc32c(!0)
    }

    pub fn update(&mut self, data: &[u8]) {
        for &b in data {
            self.0 = Self::TABLE[((self.0 ^ b as u32) & 0xff) as usize] ^ (self.0 >> 8);
        }
    }

    pub fn finish(&self) -> u32 {
        !self.0
    }
}

impl Default for Crc32c {
    fn default() -> Self {
        Crc32c::new()
    }
}

#[cfg(test)]
mod crc_tests {
    #[test]
    fn crc32c_matches_the_standard_check_value() {
        let mut c = super::Crc32c::new();
        c.update(b"123456789");
        assert_eq!(c.finish(), 0xE306_9283);
    }
}

#[cfg(test)]
mod key_range_tests {
    use super::KeyRange;
    use bytes::Bytes;

    fn range(key: &'static [u8], end: &'static [u8]) -> KeyRange {
        KeyRange::from_etcd(&Bytes::from_static(key), &Bytes::from_static(end))
    }

    #[test]
    fn single_key_is_only_etcds_one_key_form() {
        assert_eq!(range(b"a", b"").single_key(), Some(&b"a"[..]));
        assert_eq!(range(b"a", b"a\0").single_key(), Some(&b"a"[..]));
        assert_eq!(range(b"", b"").single_key(), Some(&b""[..]));
        // A prefix, everything from a key, and a longer interval.
        assert_eq!(range(b"a", b"b").single_key(), None);
        assert_eq!(range(b"a", b"\0").single_key(), None);
        assert_eq!(range(b"a", b"a\0\0").single_key(), None);
        assert_eq!(range(b"ab", b"b\0").single_key(), None);
    }
}
