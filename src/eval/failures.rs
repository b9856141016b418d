//! `--save-failures`: for each failed subtask a PNG strip of static-camera
//! frames (evenly spaced over the attempt, half resolution), under
//! `DIR/failures/`. The PNG encoder here is small and dependency-free
//! (fixed-Huffman DEFLATE with greedy LZ77 matching; "Up" row filter).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::io::RgbImage;

/// Frames kept per failed subtask in the strip.
pub const STRIP_FRAMES: usize = 12;
/// Keep one frame every this many steps while a subtask runs.
pub const KEEP_EVERY: usize = 4;

/// The static-camera frames of one subtask attempt.
#[derive(Debug, Clone, Default)]
pub struct FrameLog {
    frames: Vec<RgbImage>,
    seen: usize,
}

impl FrameLog {
    /// Forgets the frames.
    pub fn clear(&mut self) {
        self.frames.clear();
        self.seen = 0;
    }

    /// Offers a frame; one in [`KEEP_EVERY`] is kept (the first always).
    pub fn offer(&mut self, img: &RgbImage) {
        if self.seen.is_multiple_of(KEEP_EVERY) {
            self.frames.push(half(img));
        }
        self.seen += 1;
    }

    /// Offers the last frame of an attempt (kept unless it was just kept).
    pub fn offer_last(&mut self, img: &RgbImage) {
        if !(self.seen.saturating_sub(1)).is_multiple_of(KEEP_EVERY) {
            self.frames.push(half(img));
        }
    }

    /// Up to `n` frames evenly spaced from first to last, side by side.
    pub fn strip(&self, n: usize) -> Option<RgbImage> {
        if self.frames.is_empty() {
            return None;
        }
        let m = self.frames.len();
        let k = n.min(m).max(1);
        let picks: Vec<&RgbImage> = (0..k)
            .map(|i| {
                let j = if k == 1 { 0 } else { i * (m - 1) / (k - 1) };
                &self.frames[j]
            })
            .collect();
        let h = picks[0].height;
        let w: usize = picks.iter().map(|p| p.width).sum();
        let mut data = vec![0u8; h * w * 3];
        let mut x0 = 0;
        for p in picks {
            for y in 0..h.min(p.height) {
                let src = &p.data[y * p.width * 3..(y + 1) * p.width * 3];
                data[(y * w + x0) * 3..(y * w + x0 + p.width) * 3].copy_from_slice(src);
            }
            x0 += p.width;
        }
        Some(RgbImage {
            height: h,
            width: w,
            data,
        })
    }
}

/// 2×2 box downsampling.
fn half(img: &RgbImage) -> RgbImage {
    let (h, w) = (img.height / 2, img.width / 2);
    let mut data = vec![0u8; h * w * 3];
    for y in 0..h {
        for x in 0..w {
            for c in 0..3 {
                let p = |yy: usize, xx: usize| img.data[(yy * img.width + xx) * 3 + c] as u32;
                let s = p(2 * y, 2 * x)
                    + p(2 * y, 2 * x + 1)
                    + p(2 * y + 1, 2 * x)
                    + p(2 * y + 1, 2 * x + 1);
                data[(y * w + x) * 3 + c] = ((s + 2) / 4) as u8;
            }
        }
    }
    RgbImage {
        height: h,
        width: w,
        data,
    }
}

/// The strip file of a failed subtask.
pub fn failure_path(dir: &Path, chain: usize, subtask: usize, task: &str) -> PathBuf {
    dir.join("failures")
        .join(format!("chain{chain:04}_sub{}_{task}.png", subtask + 1))
}

/// Writes `img` as an RGB PNG (atomically).
pub fn save_png(path: &Path, img: &RgbImage) -> Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("{}: cannot create", parent.display()))?;
    }
    super::store::write_atomic(path, &encode_png(img))
}

// ------------------------------------------------------------------ PNG

// PNG chunks use the same CRC-32 as zip, and deflate's length/distance tables
// are shared with the dataset module's decoder.
use crate::data::inflate::{DIST_BASE, DIST_EXTRA, LEN_BASE, LEN_EXTRA};
use crate::data::npz::crc32;

fn adler32(bytes: &[u8]) -> u32 {
    let (mut a, mut b) = (1u32, 0u32);
    for chunk in bytes.chunks(5552) {
        for &x in chunk {
            a += x as u32;
            b += a;
        }
        a %= 65521;
        b %= 65521;
    }
    (b << 16) | a
}

struct BitWriter {
    out: Vec<u8>,
    acc: u64,
    n: u32,
}

impl BitWriter {
    fn bits(&mut self, v: u32, n: u32) {
        self.acc |= (v as u64) << self.n;
        self.n += n;
        while self.n >= 8 {
            self.out.push(self.acc as u8);
            self.acc >>= 8;
            self.n -= 8;
        }
    }
    /// A Huffman code, most significant bit first.
    fn code(&mut self, code: u32, len: u32) {
        let rev = code.reverse_bits() >> (32 - len);
        self.bits(rev, len);
    }
    fn finish(mut self) -> Vec<u8> {
        if self.n > 0 {
            self.out.push(self.acc as u8);
        }
        self.out
    }
}

fn lit(w: &mut BitWriter, sym: u32) {
    match sym {
        0..=143 => w.code(0x30 + sym, 8),
        144..=255 => w.code(0x190 + sym - 144, 9),
        256..=279 => w.code(sym - 256, 7),
        _ => w.code(0xc0 + sym - 280, 8),
    }
}

/// Raw DEFLATE, one fixed-Huffman block, greedy LZ77 over a 32 KiB window.
pub fn deflate_fixed(data: &[u8]) -> Vec<u8> {
    const HASH_BITS: u32 = 15;
    const WINDOW: usize = 32768;
    let mut w = BitWriter {
        out: Vec::with_capacity(data.len() / 2),
        acc: 0,
        n: 0,
    };
    w.bits(1, 1); // final block
    w.bits(1, 2); // fixed Huffman
    let mut head = vec![usize::MAX; 1 << HASH_BITS];
    let hash = |i: usize| {
        let v = (data[i] as u32) | ((data[i + 1] as u32) << 8) | ((data[i + 2] as u32) << 16);
        (v.wrapping_mul(2_654_435_761) >> (32 - HASH_BITS)) as usize
    };
    let mut i = 0;
    while i < data.len() {
        let mut best = 0;
        let mut dist = 0;
        if i + 3 <= data.len() {
            let h = hash(i);
            let j = head[h];
            head[h] = i;
            if j != usize::MAX && i - j <= WINDOW {
                let max = (data.len() - i).min(258);
                let mut l = 0;
                while l < max && data[j + l] == data[i + l] {
                    l += 1;
                }
                if l >= 3 {
                    best = l;
                    dist = i - j;
                }
            }
        }
        if best >= 3 {
            let li = LEN_BASE
                .iter()
                .rposition(|&b| b as usize <= best)
                .unwrap_or(0);
            lit(&mut w, 257 + li as u32);
            w.bits((best - LEN_BASE[li] as usize) as u32, LEN_EXTRA[li] as u32);
            let di = DIST_BASE
                .iter()
                .rposition(|&b| b as usize <= dist)
                .unwrap_or(0);
            w.code(di as u32, 5);
            w.bits(
                (dist - DIST_BASE[di] as usize) as u32,
                DIST_EXTRA[di] as u32,
            );
            // Index a few positions inside the match for later matches.
            for k in (i + 1)..(i + best).min(data.len().saturating_sub(2)) {
                if (k - i) % 4 == 0 {
                    head[hash(k)] = k;
                }
            }
            i += best;
        } else {
            lit(&mut w, data[i] as u32);
            i += 1;
        }
    }
    lit(&mut w, 256);
    w.finish()
}

/// An 8-bit RGB PNG of `img`.
pub fn encode_png(img: &RgbImage) -> Vec<u8> {
    let stride = img.width * 3;
    let mut raw = Vec::with_capacity((stride + 1) * img.height);
    for y in 0..img.height {
        let row = &img.data[y * stride..(y + 1) * stride];
        if y == 0 {
            raw.push(0);
            raw.extend_from_slice(row);
        } else {
            let up = &img.data[(y - 1) * stride..y * stride];
            raw.push(2);
            raw.extend(row.iter().zip(up).map(|(a, b)| a.wrapping_sub(*b)));
        }
    }
    let mut z = vec![0x78, 0x01];
    z.extend(deflate_fixed(&raw));
    z.extend(adler32(&raw).to_be_bytes());
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut chunk = |kind: &[u8; 4], body: &[u8]| {
        png.extend((body.len() as u32).to_be_bytes());
        let mut c = kind.to_vec();
        c.extend_from_slice(body);
        png.extend_from_slice(&c);
        png.extend(crc32(&c).to_be_bytes());
    };
    let mut ihdr = Vec::with_capacity(13);
    ihdr.extend((img.width as u32).to_be_bytes());
    ihdr.extend((img.height as u32).to_be_bytes());
    ihdr.extend([8, 2, 0, 0, 0]);
    chunk(b"IHDR", &ihdr);
    chunk(b"IDAT", &z);
    chunk(b"IEND", &[]);
    png
}
