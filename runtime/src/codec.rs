//! postcard, exactly: every value Weir stores has one encoding, and a decoder accepts that
//! one only. postcard itself ignores bytes after a value and reads an integer written in
//! more bytes than it needs; a decoder that accepted those would let two different byte
//! strings stand for one state, so "re-encodes to the same bytes" (what the fuzz targets
//! assert) would not hold, and damage could hide in the slack.

use serde::{Deserialize, Serialize};

/// Why bytes are not exactly one encoded value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExactError {
    /// postcard could not read a value.
    #[error("{0}")]
    Decode(String),
    /// Bytes follow the value.
    #[error("{0} trailing bytes")]
    Trailing(usize),
    /// The value decodes, but Weir would have written it in fewer bytes.
    #[error("not in canonical form ({len} bytes, {canonical} as written by weir)")]
    NotCanonical {
        /// Bytes read.
        len: usize,
        /// Bytes the encoder writes for the same value.
        canonical: usize,
    },
}

/// The one value `bytes` encode, exactly (see the module docs).
pub fn decode_exact<'a, T: Deserialize<'a> + Serialize>(bytes: &'a [u8]) -> Result<T, ExactError> {
    let (value, rest): (T, _) =
        postcard::take_from_bytes(bytes).map_err(|e| ExactError::Decode(e.to_string()))?;
    if !rest.is_empty() {
        return Err(ExactError::Trailing(rest.len()));
    }
    let len = bytes.len();
    let canonical = postcard::serialize_with_flavor(&value, postcard::ser_flavors::Size::default())
        .map_err(|e| ExactError::Decode(e.to_string()))?;
    if canonical != len {
        return Err(ExactError::NotCanonical { len, canonical });
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_encoders_bytes_decode() {
        let bytes = postcard::to_allocvec(&(3u32, vec![1u8, 2])).unwrap();
        assert_eq!(decode_exact::<(u32, Vec<u8>)>(&bytes), Ok((3, vec![1, 2])));
        let mut longer = bytes.clone();
        longer.push(0);
        assert_eq!(decode_exact::<(u32, Vec<u8>)>(&longer), Err(ExactError::Trailing(1)));
        // 3 written in two bytes: postcard reads it, Weir never writes it.
        let mut padded = bytes.clone();
        padded.splice(0..1, [0x83, 0x00]);
        assert_eq!(
            decode_exact::<(u32, Vec<u8>)>(&padded),
            Err(ExactError::NotCanonical { len: 5, canonical: 4 })
        );
    }
}
