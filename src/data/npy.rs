//! Minimal reader and writer for the numpy `.npy` array format (versions 1, 2 and 3).
//!
//! Only what dataset files need: plain (non-structured) dtypes `b1`, `u1`, `i1`, `u2`, `i2`,
//! `u4`, `i4`, `u8`, `i8`, `f4`, `f8` in C order (either byte order), and detection of object
//! arrays (`|O`, whose payload is a pickle; see [`super::pickle`]). Errors carry no file name;
//! callers prefix it.

use anyhow::{anyhow, bail, ensure, Result};

/// The magic bytes every `.npy` file starts with.
pub const NPY_MAGIC: &[u8] = b"\x93NUMPY";

/// Element type of an `.npy` array.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NpyDtype {
    /// `b1` / `?`: numpy bool, one byte per element.
    Bool,
    /// `u1`: unsigned 8-bit integer.
    U8,
    /// `i1`: signed 8-bit integer.
    I8,
    /// `u2`: unsigned 16-bit integer.
    U16,
    /// `i2`: signed 16-bit integer.
    I16,
    /// `u4`: unsigned 32-bit integer.
    U32,
    /// `i4`: signed 32-bit integer.
    I32,
    /// `u8`: unsigned 64-bit integer.
    U64,
    /// `i8`: signed 64-bit integer.
    I64,
    /// `f4`: IEEE 754 single precision float.
    F32,
    /// `f8`: IEEE 754 double precision float.
    F64,
    /// `O`: Python objects; the payload is a pickle, not raw elements.
    Object,
}

impl NpyDtype {
    /// Size of one element in bytes (8 for [`NpyDtype::Object`], like numpy's `O8`).
    pub fn size(self) -> usize {
        match self {
            NpyDtype::Bool | NpyDtype::U8 | NpyDtype::I8 => 1,
            NpyDtype::U16 | NpyDtype::I16 => 2,
            NpyDtype::U32 | NpyDtype::I32 | NpyDtype::F32 => 4,
            NpyDtype::U64 | NpyDtype::I64 | NpyDtype::F64 | NpyDtype::Object => 8,
        }
    }

    /// numpy's name for the dtype (`"float64"`, `"uint8"`, `"object"`, ...), for messages.
    pub fn name(self) -> &'static str {
        match self {
            NpyDtype::Bool => "bool",
            NpyDtype::U8 => "uint8",
            NpyDtype::I8 => "int8",
            NpyDtype::U16 => "uint16",
            NpyDtype::I16 => "int16",
            NpyDtype::U32 => "uint32",
            NpyDtype::I32 => "int32",
            NpyDtype::U64 => "uint64",
            NpyDtype::I64 => "int64",
            NpyDtype::F32 => "float32",
            NpyDtype::F64 => "float64",
            NpyDtype::Object => "object",
        }
    }

    /// Little-endian `descr` string as numpy writes it (`"<f8"`, `"|u1"`, `"|O"`).
    pub fn descr(self) -> &'static str {
        match self {
            NpyDtype::Bool => "|b1",
            NpyDtype::U8 => "|u1",
            NpyDtype::I8 => "|i1",
            NpyDtype::U16 => "<u2",
            NpyDtype::I16 => "<i2",
            NpyDtype::U32 => "<u4",
            NpyDtype::I32 => "<i4",
            NpyDtype::U64 => "<u8",
            NpyDtype::I64 => "<i8",
            NpyDtype::F32 => "<f4",
            NpyDtype::F64 => "<f8",
            NpyDtype::Object => "|O",
        }
    }

    /// Parses a numpy `descr` string such as `"<f8"`, `"|u1"`, `">i4"`, `"|O"`.
    /// Returns the dtype and whether the data is big-endian.
    pub fn parse_descr(descr: &str) -> Result<(NpyDtype, bool)> {
        let (order, code) = match descr.chars().next() {
            Some(c @ ('<' | '>' | '|' | '=')) => (c, &descr[1..]),
            _ => ('=', descr),
        };
        let dtype = match code {
            "b1" | "?" => NpyDtype::Bool,
            "u1" | "B" => NpyDtype::U8,
            "i1" | "b" => NpyDtype::I8,
            "u2" | "H" => NpyDtype::U16,
            "i2" | "h" => NpyDtype::I16,
            "u4" | "I" => NpyDtype::U32,
            "i4" | "i" => NpyDtype::I32,
            "u8" | "Q" => NpyDtype::U64,
            "i8" | "q" => NpyDtype::I64,
            "f4" | "f" => NpyDtype::F32,
            "f8" | "d" => NpyDtype::F64,
            "O" | "O8" => NpyDtype::Object,
            _ => bail!("unsupported dtype descr '{descr}'"),
        };
        Ok((dtype, order == '>' && dtype.size() > 1))
    }
}

/// Parsed `.npy` header.
#[derive(Debug, Clone, PartialEq)]
pub struct NpyHeader {
    /// Element type.
    pub dtype: NpyDtype,
    /// True when multi-byte elements are stored big-endian (`'>'` descr).
    pub big_endian: bool,
    /// True for Fortran (column-major) element order.
    pub fortran_order: bool,
    /// Array shape; empty for a 0-d array.
    pub shape: Vec<usize>,
    /// Byte offset of the payload from the start of the `.npy` data.
    pub data_offset: usize,
}

impl NpyHeader {
    /// Number of elements (product of the shape; 1 for a 0-d array).
    pub fn elem_count(&self) -> usize {
        self.shape.iter().product()
    }
}

/// A numeric `.npy` array: header plus raw payload bytes converted to little-endian.
#[derive(Debug, Clone, PartialEq)]
pub struct NpyArray {
    /// Element type (never [`NpyDtype::Object`]).
    pub dtype: NpyDtype,
    /// Array shape (C order).
    pub shape: Vec<usize>,
    /// Raw little-endian element bytes, `elem_count * dtype.size()` long.
    pub data: Vec<u8>,
}

/// Python-literal values that occur in `.npy` header dicts.
#[derive(Debug, Clone, PartialEq)]
enum Lit {
    Str(String),
    Bool(bool),
    Int(usize),
    Tuple(Vec<Lit>),
    Other,
}

struct LitParser<'a> {
    s: &'a [u8],
    i: usize,
}

impl LitParser<'_> {
    fn ws(&mut self) {
        while self.i < self.s.len() && (self.s[self.i] as char).is_ascii_whitespace() {
            self.i += 1;
        }
    }
    fn peek(&mut self) -> Option<u8> {
        self.ws();
        self.s.get(self.i).copied()
    }
    fn expect(&mut self, c: u8) -> Result<()> {
        match self.peek() {
            Some(x) if x == c => {
                self.i += 1;
                Ok(())
            }
            other => bail!(
                "malformed header: expected '{}' at char {}, found {:?}",
                c as char,
                self.i,
                other.map(|b| b as char)
            ),
        }
    }
    fn value(&mut self, depth: usize) -> Result<Lit> {
        ensure!(depth < 16, "malformed header: nesting too deep");
        match self.peek() {
            Some(q @ (b'\'' | b'"')) => {
                self.i += 1;
                let start = self.i;
                while self.i < self.s.len() && self.s[self.i] != q {
                    self.i += 1;
                }
                ensure!(
                    self.i < self.s.len(),
                    "malformed header: unterminated string"
                );
                let v = String::from_utf8_lossy(&self.s[start..self.i]).into_owned();
                self.i += 1;
                Ok(Lit::Str(v))
            }
            Some(open @ (b'(' | b'[')) => {
                let close = if open == b'(' { b')' } else { b']' };
                self.i += 1;
                let mut items = Vec::new();
                loop {
                    if self.peek() == Some(close) {
                        self.i += 1;
                        break;
                    }
                    items.push(self.value(depth + 1)?);
                    match self.peek() {
                        Some(b',') => self.i += 1,
                        Some(c) if c == close => {}
                        other => bail!(
                            "malformed header: expected ',' or '{}', found {:?}",
                            close as char,
                            other.map(|b| b as char)
                        ),
                    }
                }
                Ok(if open == b'(' {
                    Lit::Tuple(items)
                } else {
                    Lit::Other
                })
            }
            Some(c) if c.is_ascii_alphanumeric() => {
                let start = self.i;
                while self.i < self.s.len()
                    && (self.s[self.i].is_ascii_alphanumeric() || self.s[self.i] == b'_')
                {
                    self.i += 1;
                }
                let word = std::str::from_utf8(&self.s[start..self.i]).unwrap_or("");
                Ok(match word {
                    "True" => Lit::Bool(true),
                    "False" => Lit::Bool(false),
                    w => match w.trim_end_matches('L').parse::<usize>() {
                        Ok(n) => Lit::Int(n),
                        Err(_) => Lit::Other,
                    },
                })
            }
            Some(b'{') => {
                // Nested dicts only occur in structured dtypes, which are unsupported.
                let mut level = 0usize;
                while self.i < self.s.len() {
                    match self.s[self.i] {
                        b'{' => level += 1,
                        b'}' => {
                            level -= 1;
                            if level == 0 {
                                self.i += 1;
                                break;
                            }
                        }
                        _ => {}
                    }
                    self.i += 1;
                }
                Ok(Lit::Other)
            }
            other => bail!(
                "malformed header: unexpected {:?} at char {}",
                other.map(|b| b as char),
                self.i
            ),
        }
    }
}

/// Parses the header of `.npy` data (`bytes` starts at the magic string).
pub fn parse_header(bytes: &[u8]) -> Result<NpyHeader> {
    ensure!(
        bytes.len() >= 10 && bytes.starts_with(NPY_MAGIC),
        "not a .npy array (missing \\x93NUMPY magic; {} bytes)",
        bytes.len()
    );
    let major = bytes[6];
    let (len, start): (usize, usize) = match major {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 => {
            ensure!(bytes.len() >= 12, "truncated .npy header");
            (
                u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
                12,
            )
        }
        v => bail!("unsupported .npy format version {v}"),
    };
    let end = start
        .checked_add(len)
        .filter(|&e| e <= bytes.len())
        .ok_or_else(|| anyhow!("truncated .npy header (needs {len} bytes)"))?;
    let mut p = LitParser {
        s: &bytes[start..end],
        i: 0,
    };
    p.expect(b'{')?;
    let (mut descr, mut fortran, mut shape) = (None, None, None);
    loop {
        if p.peek() == Some(b'}') {
            break;
        }
        let key = p.value(0)?;
        p.expect(b':')?;
        let val = p.value(0)?;
        match (key, val) {
            (Lit::Str(k), Lit::Str(v)) if k == "descr" => descr = Some(v),
            (Lit::Str(k), Lit::Other) if k == "descr" => {
                bail!("structured dtypes are not supported")
            }
            (Lit::Str(k), Lit::Bool(b)) if k == "fortran_order" => fortran = Some(b),
            (Lit::Str(k), Lit::Tuple(items)) if k == "shape" => {
                let dims = items
                    .into_iter()
                    .map(|l| match l {
                        Lit::Int(n) => Ok(n),
                        other => Err(anyhow!("malformed header: shape entry {other:?}")),
                    })
                    .collect::<Result<Vec<_>>>()?;
                shape = Some(dims);
            }
            (k, v) => bail!("malformed header: unexpected entry {k:?}: {v:?}"),
        }
        match p.peek() {
            Some(b',') => p.i += 1,
            Some(b'}') => {}
            other => bail!(
                "malformed header: expected ',' or '}}', found {:?}",
                other.map(|b| b as char)
            ),
        }
    }
    let descr = descr.ok_or_else(|| anyhow!("malformed header: no 'descr'"))?;
    let (dtype, big_endian) = NpyDtype::parse_descr(&descr)?;
    Ok(NpyHeader {
        dtype,
        big_endian,
        fortran_order: fortran.ok_or_else(|| anyhow!("malformed header: no 'fortran_order'"))?,
        shape: shape.ok_or_else(|| anyhow!("malformed header: no 'shape'"))?,
        data_offset: end,
    })
}

/// Encodes a version 1.0 `.npy` header (padded to a multiple of 64 bytes like numpy does).
pub fn encode_header(dtype: NpyDtype, shape: &[usize]) -> Vec<u8> {
    let shape_str = match shape.len() {
        0 => String::new(),
        1 => format!("{},", shape[0]),
        _ => shape
            .iter()
            .map(|d| d.to_string())
            .collect::<Vec<_>>()
            .join(", "),
    };
    let mut dict = format!(
        "{{'descr': '{}', 'fortran_order': False, 'shape': ({}), }}",
        dtype.descr(),
        shape_str
    );
    let total = NPY_MAGIC.len() + 4 + dict.len() + 1;
    let padded = total.div_ceil(64) * 64;
    dict.push_str(&" ".repeat(padded - total));
    dict.push('\n');
    let mut out = Vec::with_capacity(padded);
    out.extend_from_slice(NPY_MAGIC);
    out.extend_from_slice(&[1, 0]);
    out.extend_from_slice(&(dict.len() as u16).to_le_bytes());
    out.extend_from_slice(dict.as_bytes());
    out
}

impl NpyArray {
    /// Parses complete `.npy` data (header and payload) of a numeric array.
    pub fn parse(bytes: &[u8]) -> Result<NpyArray> {
        let h = parse_header(bytes)?;
        ensure!(
            h.dtype != NpyDtype::Object,
            "object arrays (dtype '|O') hold a pickle, not numbers"
        );
        let n = h.elem_count();
        let size = h.dtype.size();
        let need = n
            .checked_mul(size)
            .ok_or_else(|| anyhow!("shape {:?} too large", h.shape))?;
        let avail = bytes.len() - h.data_offset;
        ensure!(
            avail >= need,
            "truncated array data: shape {:?} {} needs {need} bytes, found {avail}",
            h.shape,
            h.dtype.name()
        );
        let mut data = bytes[h.data_offset..h.data_offset + need].to_vec();
        if h.big_endian {
            for chunk in data.chunks_exact_mut(size) {
                chunk.reverse();
            }
        }
        if h.fortran_order && h.shape.iter().filter(|&&d| d > 1).count() > 1 {
            data = fortran_to_c(&data, &h.shape, size);
        }
        Ok(NpyArray {
            dtype: h.dtype,
            shape: h.shape,
            data,
        })
    }

    /// Serializes the array as version 1.0 `.npy` data.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = encode_header(self.dtype, &self.shape);
        out.extend_from_slice(&self.data);
        out
    }

    /// Number of elements.
    pub fn elem_count(&self) -> usize {
        self.shape.iter().product()
    }

    /// A 1-D or N-D `float64` array from values (shape must match `values.len()`).
    pub fn from_f64(shape: &[usize], values: &[f64]) -> NpyArray {
        assert_eq!(shape.iter().product::<usize>(), values.len());
        NpyArray {
            dtype: NpyDtype::F64,
            shape: shape.to_vec(),
            data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        }
    }

    /// A `float32` array from values (shape must match `values.len()`).
    pub fn from_f32(shape: &[usize], values: &[f32]) -> NpyArray {
        assert_eq!(shape.iter().product::<usize>(), values.len());
        NpyArray {
            dtype: NpyDtype::F32,
            shape: shape.to_vec(),
            data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        }
    }

    /// An `int64` array from values (shape must match `values.len()`).
    pub fn from_i64(shape: &[usize], values: &[i64]) -> NpyArray {
        assert_eq!(shape.iter().product::<usize>(), values.len());
        NpyArray {
            dtype: NpyDtype::I64,
            shape: shape.to_vec(),
            data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        }
    }

    /// A `uint8` array (shape must match `values.len()`).
    pub fn from_u8(shape: &[usize], values: Vec<u8>) -> NpyArray {
        assert_eq!(shape.iter().product::<usize>(), values.len());
        NpyArray {
            dtype: NpyDtype::U8,
            shape: shape.to_vec(),
            data: values,
        }
    }

    /// Elements as `f64`; only for `float32`/`float64` arrays (exact conversion).
    pub fn to_f64_vec(&self) -> Result<Vec<f64>> {
        Ok(match self.dtype {
            NpyDtype::F64 => self
                .data
                .chunks_exact(8)
                .map(|c| f64::from_le_bytes(c.try_into().unwrap()))
                .collect(),
            NpyDtype::F32 => self
                .data
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().unwrap()) as f64)
                .collect(),
            other => bail!("expected a float64 array, found {}", other.name()),
        })
    }

    /// Elements as `i64`; only for integer and bool arrays (`uint64` values above
    /// `i64::MAX` are an error).
    pub fn to_i64_vec(&self) -> Result<Vec<i64>> {
        let d = &self.data;
        Ok(match self.dtype {
            NpyDtype::Bool | NpyDtype::U8 => d.iter().map(|&b| b as i64).collect(),
            NpyDtype::I8 => d.iter().map(|&b| b as i8 as i64).collect(),
            NpyDtype::U16 => d
                .chunks_exact(2)
                .map(|c| u16::from_le_bytes([c[0], c[1]]) as i64)
                .collect(),
            NpyDtype::I16 => d
                .chunks_exact(2)
                .map(|c| i16::from_le_bytes([c[0], c[1]]) as i64)
                .collect(),
            NpyDtype::U32 => d
                .chunks_exact(4)
                .map(|c| u32::from_le_bytes(c.try_into().unwrap()) as i64)
                .collect(),
            NpyDtype::I32 => d
                .chunks_exact(4)
                .map(|c| i32::from_le_bytes(c.try_into().unwrap()) as i64)
                .collect(),
            NpyDtype::I64 => d
                .chunks_exact(8)
                .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
                .collect(),
            NpyDtype::U64 => d
                .chunks_exact(8)
                .map(|c| {
                    let v = u64::from_le_bytes(c.try_into().unwrap());
                    i64::try_from(v).map_err(|_| anyhow!("uint64 value {v} exceeds int64"))
                })
                .collect::<Result<_>>()?,
            other => bail!("expected an integer array, found {}", other.name()),
        })
    }
}

/// Reorders Fortran-order element bytes into C order.
fn fortran_to_c(data: &[u8], shape: &[usize], size: usize) -> Vec<u8> {
    let n: usize = shape.iter().product();
    let mut out = vec![0u8; data.len()];
    let nd = shape.len();
    // Fortran strides (in elements): first axis fastest.
    let mut fstride = vec![1usize; nd];
    for k in 1..nd {
        fstride[k] = fstride[k - 1] * shape[k - 1];
    }
    let mut idx = vec![0usize; nd];
    for c in 0..n {
        let f: usize = idx.iter().zip(&fstride).map(|(i, s)| i * s).sum();
        out[c * size..(c + 1) * size].copy_from_slice(&data[f * size..(f + 1) * size]);
        // Increment the C-order multi-index (last axis fastest).
        for k in (0..nd).rev() {
            idx[k] += 1;
            if idx[k] < shape[k] {
                break;
            }
            idx[k] = 0;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trip() {
        for shape in [vec![], vec![7], vec![200, 200, 3]] {
            let a = NpyArray {
                dtype: NpyDtype::U8,
                shape: shape.clone(),
                data: vec![1; shape.iter().product()],
            };
            let b = a.to_bytes();
            assert_eq!(parse_header(&b).unwrap().data_offset % 64, 0);
            assert_eq!(NpyArray::parse(&b).unwrap(), a);
        }
    }

    #[test]
    fn fortran_reorder() {
        // 2x3 array [[0,1,2],[3,4,5]] in Fortran order is 0,3,1,4,2,5.
        let f = [0u8, 3, 1, 4, 2, 5];
        assert_eq!(fortran_to_c(&f, &[2, 3], 1), vec![0, 1, 2, 3, 4, 5]);
    }
}
