//! The crate's two small non-cryptographic hashes, both 32-bit FNV:
//! FNV-1a for instruction tokens, and FNV-1 with an explicit seed for CALVIN's
//! `pyhash.fnv1_32()` (the official chains' block placement seeds).

/// FNV-1a (xor, then multiply), 32 bits, from the FNV offset basis.
pub fn fnv1a_32(bytes: &[u8]) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for &b in bytes {
        h ^= b as u32;
        h = h.wrapping_mul(0x0100_0193);
    }
    h
}

/// FNV-1 (multiply, then xor), 32 bits, over `bytes`, starting from `seed`.
/// CALVIN's `pyhash.fnv1_32()` hasher uses seed 0 (not the FNV offset basis).
pub fn fnv1_32(bytes: &[u8], seed: u32) -> u32 {
    let mut h = seed;
    for &b in bytes {
        h = h.wrapping_mul(0x0100_0193);
        h ^= b as u32;
    }
    h
}

/// pyhash's view of a Python `str`: its UTF-16-LE bytes.
pub fn utf16le(s: &str) -> Vec<u8> {
    s.encode_utf16().flat_map(u16::to_le_bytes).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a_reference_values() {
        // Published FNV-1a 32-bit test vectors.
        assert_eq!(fnv1a_32(b""), 0x811c9dc5);
        assert_eq!(fnv1a_32(b"a"), 0xe40c292c);
        assert_eq!(fnv1a_32(b"foobar"), 0xbf9cf968);
    }

    #[test]
    fn fnv1_reference_values() {
        // Published FNV-1 32-bit test vectors (from the offset basis).
        assert_eq!(fnv1_32(b"a", 0x811c9dc5), 0x050c5d7e);
        assert_eq!(fnv1_32(b"foobar", 0x811c9dc5), 0x31f0b262);
    }
}
