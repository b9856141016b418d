//! A small, self-contained raw DEFLATE (RFC 1951) decoder, used for `np.savez_compressed`
//! archives (zip method 8). Table-driven for codes up to [`FAST_BITS`] bits, with a
//! canonical bit-by-bit fallback for longer codes.

use anyhow::{bail, ensure, Result};

const FAST_BITS: u32 = 10;
const MAX_BITS: usize = 15;

pub(crate) const LEN_BASE: [u16; 29] = [
    3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 15, 17, 19, 23, 27, 31, 35, 43, 51, 59, 67, 83, 99, 115, 131,
    163, 195, 227, 258,
];
pub(crate) const LEN_EXTRA: [u8; 29] = [
    0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3, 4, 4, 4, 4, 5, 5, 5, 5, 0,
];
pub(crate) const DIST_BASE: [u16; 30] = [
    1, 2, 3, 4, 5, 7, 9, 13, 17, 25, 33, 49, 65, 97, 129, 193, 257, 385, 513, 769, 1025, 1537,
    2049, 3073, 4097, 6145, 8193, 12289, 16385, 24577,
];
pub(crate) const DIST_EXTRA: [u8; 30] = [
    0, 0, 0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7, 8, 8, 9, 9, 10, 10, 11, 11, 12, 12, 13,
    13,
];
const CLEN_ORDER: [usize; 19] = [
    16, 17, 18, 0, 8, 7, 9, 6, 10, 5, 11, 4, 12, 3, 13, 2, 14, 1, 15,
];

struct Bits<'a> {
    data: &'a [u8],
    pos: usize,
    buf: u64,
    cnt: u32,
}

impl<'a> Bits<'a> {
    fn new(data: &'a [u8]) -> Self {
        Bits {
            data,
            pos: 0,
            buf: 0,
            cnt: 0,
        }
    }

    /// Tops the bit buffer up with as many whole bytes as fit (or are left).
    #[inline]
    fn refill(&mut self) {
        while self.cnt <= 56 && self.pos < self.data.len() {
            self.buf |= (self.data[self.pos] as u64) << self.cnt;
            self.pos += 1;
            self.cnt += 8;
        }
    }

    #[inline]
    fn bits(&mut self, n: u32) -> Result<u32> {
        if n == 0 {
            return Ok(0);
        }
        if self.cnt < n {
            self.refill();
            ensure!(self.cnt >= n, "deflate stream truncated");
        }
        let v = (self.buf & ((1u64 << n) - 1)) as u32;
        self.buf >>= n;
        self.cnt -= n;
        Ok(v)
    }

    /// Drops the bits up to the next byte boundary and hands buffered whole bytes back.
    fn align_to_byte(&mut self) {
        let drop = self.cnt % 8;
        self.buf >>= drop;
        self.cnt -= drop;
        self.pos -= (self.cnt / 8) as usize;
        self.buf = 0;
        self.cnt = 0;
    }
}

struct Huffman {
    /// Number of codes of each length 0..=15.
    count: [u16; MAX_BITS + 1],
    /// Symbols in canonical order.
    symbol: Vec<u16>,
    /// Fast table indexed by the next FAST_BITS (bit-reversed) input bits:
    /// `(symbol << 4) | length`, 0 when the code is longer than FAST_BITS.
    fast: Vec<u16>,
}

impl Huffman {
    fn new(lengths: &[u8]) -> Result<Huffman> {
        let mut count = [0u16; MAX_BITS + 1];
        for &l in lengths {
            count[l as usize] += 1;
        }
        count[0] = 0;
        // Check the code is not over-subscribed (incomplete codes are tolerated; an unused
        // code then decodes as an error).
        let mut left: i32 = 1;
        for &c in &count[1..] {
            left <<= 1;
            left -= c as i32;
            ensure!(
                left >= 0,
                "invalid deflate stream: over-subscribed Huffman code"
            );
        }
        let mut offs = [0u16; MAX_BITS + 2];
        for len in 1..=MAX_BITS {
            offs[len + 1] = offs[len] + count[len];
        }
        let mut symbol = vec![0u16; offs[MAX_BITS + 1] as usize];
        for (sym, &l) in lengths.iter().enumerate() {
            if l != 0 {
                symbol[offs[l as usize] as usize] = sym as u16;
                offs[l as usize] += 1;
            }
        }
        // Build the fast table from canonical codes.
        let mut fast = vec![0u16; 1 << FAST_BITS];
        let mut code: u32 = 0;
        let mut idx = 0usize;
        for len in 1..=MAX_BITS as u32 {
            for _ in 0..count[len as usize] {
                if len <= FAST_BITS {
                    let rev = code.reverse_bits() >> (32 - len);
                    let entry = (symbol[idx] << 4) | len as u16;
                    let mut k = rev as usize;
                    while k < (1 << FAST_BITS) {
                        fast[k] = entry;
                        k += 1 << len;
                    }
                }
                code += 1;
                idx += 1;
            }
            code <<= 1;
        }
        Ok(Huffman {
            count,
            symbol,
            fast,
        })
    }

    #[inline]
    fn decode(&self, b: &mut Bits) -> Result<u16> {
        if b.cnt < MAX_BITS as u32 {
            b.refill();
        }
        let e = self.fast[(b.buf & ((1 << FAST_BITS) - 1)) as usize];
        if e != 0 {
            let len = (e & 15) as u32;
            ensure!(len <= b.cnt, "deflate stream truncated");
            b.buf >>= len;
            b.cnt -= len;
            return Ok(e >> 4);
        }
        // Slow canonical decode, one bit at a time.
        let (mut code, mut first, mut index) = (0i32, 0i32, 0i32);
        for len in 1..=MAX_BITS {
            code |= b.bits(1)? as i32;
            let count = self.count[len] as i32;
            if code - count < first {
                return Ok(self.symbol[(index + (code - first)) as usize]);
            }
            index += count;
            first += count;
            first <<= 1;
            code <<= 1;
        }
        bail!("invalid deflate stream: bad Huffman code")
    }
}

fn fixed_tables() -> Result<(Huffman, Huffman)> {
    let mut l = [0u8; 288];
    l[..144].fill(8);
    l[144..256].fill(9);
    l[256..280].fill(7);
    l[280..].fill(8);
    Ok((Huffman::new(&l)?, Huffman::new(&[5u8; 30])?))
}

fn dynamic_tables(b: &mut Bits) -> Result<(Huffman, Huffman)> {
    let nlen = b.bits(5)? as usize + 257;
    let ndist = b.bits(5)? as usize + 1;
    let ncode = b.bits(4)? as usize + 4;
    ensure!(
        nlen <= 286 && ndist <= 30,
        "invalid deflate stream: bad table sizes"
    );
    let mut lengths = [0u8; 320];
    for &i in CLEN_ORDER.iter().take(ncode) {
        lengths[i] = b.bits(3)? as u8;
    }
    let lencode = Huffman::new(&lengths[..19])?;
    let mut idx = 0;
    while idx < nlen + ndist {
        let sym = lencode.decode(b)?;
        if sym < 16 {
            lengths[idx] = sym as u8;
            idx += 1;
            continue;
        }
        let (val, rep) = match sym {
            16 => {
                ensure!(
                    idx > 0,
                    "invalid deflate stream: repeat with no first length"
                );
                (lengths[idx - 1], 3 + b.bits(2)? as usize)
            }
            17 => (0, 3 + b.bits(3)? as usize),
            _ => (0, 11 + b.bits(7)? as usize),
        };
        ensure!(
            idx + rep <= nlen + ndist,
            "invalid deflate stream: too many code lengths"
        );
        lengths[idx..idx + rep].fill(val);
        idx += rep;
    }
    ensure!(
        lengths[256] != 0,
        "invalid deflate stream: no end-of-block code"
    );
    Ok((
        Huffman::new(&lengths[..nlen])?,
        Huffman::new(&lengths[nlen..nlen + ndist])?,
    ))
}

/// Decompresses a raw DEFLATE stream. `expected_len` is the declared uncompressed size
/// (used to pre-allocate and as a hard limit against malformed data).
pub fn inflate(data: &[u8], expected_len: usize) -> Result<Vec<u8>> {
    let mut out: Vec<u8> = Vec::with_capacity(expected_len);
    let mut b = Bits::new(data);
    let mut fixed: Option<(Huffman, Huffman)> = None;
    loop {
        let last = b.bits(1)? == 1;
        match b.bits(2)? {
            0 => {
                b.align_to_byte();
                let p = b.pos;
                ensure!(p + 4 <= data.len(), "deflate stream truncated");
                let len = u16::from_le_bytes([data[p], data[p + 1]]) as usize;
                let nlen = u16::from_le_bytes([data[p + 2], data[p + 3]]) as usize;
                ensure!(
                    len == (!nlen & 0xffff),
                    "invalid deflate stream: stored block length check failed"
                );
                ensure!(p + 4 + len <= data.len(), "deflate stream truncated");
                ensure!(
                    out.len() + len <= expected_len,
                    "deflate data longer than the declared {expected_len} bytes"
                );
                out.extend_from_slice(&data[p + 4..p + 4 + len]);
                b.pos = p + 4 + len;
            }
            t @ (1 | 2) => {
                let dynamic;
                let (lit, dist) = if t == 1 {
                    if fixed.is_none() {
                        fixed = Some(fixed_tables()?);
                    }
                    let f = fixed.as_ref().unwrap();
                    (&f.0, &f.1)
                } else {
                    dynamic = dynamic_tables(&mut b)?;
                    (&dynamic.0, &dynamic.1)
                };
                loop {
                    let sym = lit.decode(&mut b)? as usize;
                    if sym < 256 {
                        ensure!(
                            out.len() < expected_len,
                            "deflate data longer than the declared {expected_len} bytes"
                        );
                        out.push(sym as u8);
                    } else if sym == 256 {
                        break;
                    } else {
                        let s = sym - 257;
                        ensure!(s < 29, "invalid deflate stream: bad length symbol");
                        let len = LEN_BASE[s] as usize + b.bits(LEN_EXTRA[s] as u32)? as usize;
                        let ds = dist.decode(&mut b)? as usize;
                        ensure!(ds < 30, "invalid deflate stream: bad distance symbol");
                        let d = DIST_BASE[ds] as usize + b.bits(DIST_EXTRA[ds] as u32)? as usize;
                        ensure!(
                            d <= out.len(),
                            "invalid deflate stream: distance {d} too far back"
                        );
                        ensure!(
                            out.len() + len <= expected_len,
                            "deflate data longer than the declared {expected_len} bytes"
                        );
                        let start = out.len() - d;
                        if d >= len {
                            out.extend_from_within(start..start + len);
                        } else {
                            for k in 0..len {
                                let v = out[start + k];
                                out.push(v);
                            }
                        }
                    }
                }
            }
            _ => bail!("invalid deflate stream: reserved block type 3"),
        }
        if last {
            break;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_and_fixed_blocks() {
        // Stored block: BFINAL=1, BTYPE=00, LEN=3, NLEN=!3, "abc".
        let stored = [0x01, 0x03, 0x00, 0xfc, 0xff, b'a', b'b', b'c'];
        assert_eq!(inflate(&stored, 3).unwrap(), b"abc");
        // Python: zlib.compressobj(9, zlib.DEFLATED, -15).compress(b"a"*20) + flush()
        let fixed = [0x4b, 0x4c, 0xc4, 0x04, 0x00];
        assert_eq!(inflate(&fixed, 20).unwrap(), vec![b'a'; 20]);
        assert!(inflate(&fixed, 19).is_err());
        assert!(inflate(&fixed[..3], 20).is_err());
    }
}
