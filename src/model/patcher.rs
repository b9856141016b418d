//! The 3-D Haar wavelet patcher of VideoWorld 2 and its exact inverse.
//!
//! Frame 0 is repeated so that it appears `patch` times (4), then a `log2(patch)`
//! level Haar packet transform splits time, height and width. Each level splits
//! t, then h, then w into `(a+b)/√2` and `(a−b)/√2` and divides the result by
//! `2√2`. The channel layout is `[level-2 band][level-1 band][RGB]`, bands
//! ordered lll, llh, …, hhh. `T = 1 + 4k` frames become `1 + k` latent frames.

use candle_core::{bail, Result, Tensor};

const SQRT2: f64 = std::f64::consts::SQRT_2;

/// Haar patcher with a square patch size (a power of two; 4 in VideoWorld 2).
#[derive(Debug, Clone, Copy)]
pub struct HaarPatcher {
    patch: usize,
    levels: usize,
}

impl HaarPatcher {
    /// A patcher for `patch` ∈ {1, 2, 4, 8, …}.
    pub fn new(patch: usize) -> Result<Self> {
        if patch == 0 || !patch.is_power_of_two() {
            bail!("patch size must be a power of two, found {patch}");
        }
        Ok(Self {
            patch,
            levels: patch.trailing_zeros() as usize,
        })
    }

    /// The patch size (spatial and temporal compression of the patcher).
    pub fn patch(&self) -> usize {
        self.patch
    }

    /// Output channels for `c` input channels: `c · 8^levels` (3 → 192).
    pub fn out_channels(&self, c: usize) -> usize {
        c * 8usize.pow(self.levels as u32)
    }

    /// Number of latent frames for `t` input frames (`t = 1 + patch·k` → `1 + k`).
    pub fn latent_frames(&self, t: usize) -> Result<usize> {
        if t == 0 || !(t - 1).is_multiple_of(self.patch) {
            bail!("frame count must be 1 + {}·k, found {t}", self.patch);
        }
        Ok(1 + (t - 1) / self.patch)
    }

    /// `[B, T, C, H, W]` frames → `[B, 1 + (T−1)/p, C·8^levels, H/p, W/p]`.
    pub fn patch_frames(&self, x: &Tensor) -> Result<Tensor> {
        let (_, t, _, h, w) = x.dims5()?;
        self.latent_frames(t)?;
        self.check_size(h, w)?;
        let y = if self.patch > 1 {
            let first = x.narrow(1, 0, 1)?;
            let mut parts = vec![first; self.patch - 1];
            parts.push(x.clone());
            Tensor::cat(&parts, 1)?
        } else {
            x.clone()
        };
        self.transform(y)
    }

    /// Whole groups of `p` frames `[B, p·k, C, H, W]` → `[B, k, C·8^levels, H/p, W/p]`:
    /// each latent frame is the transform of its own `p` frames, so the groups that
    /// follow frame 0 in [`Self::patch_frames`] can be patched on their own (a stream).
    pub fn patch_groups(&self, x: &Tensor) -> Result<Tensor> {
        let (_, t, _, h, w) = x.dims5()?;
        if t == 0 || !t.is_multiple_of(self.patch) {
            bail!(
                "frame count must be a multiple of {}, found {t}",
                self.patch
            );
        }
        self.check_size(h, w)?;
        self.transform(x.clone())
    }

    fn check_size(&self, h: usize, w: usize) -> Result<()> {
        if !h.is_multiple_of(self.patch) || !w.is_multiple_of(self.patch) {
            bail!(
                "frame size must be a multiple of {}, found {h}×{w}",
                self.patch
            );
        }
        Ok(())
    }

    fn transform(&self, mut y: Tensor) -> Result<Tensor> {
        for _ in 0..self.levels {
            y = dwt_level(&y)?;
        }
        Ok(y)
    }

    /// Exact inverse of [`Self::patch_frames`]: latent `[B, L, C', h, w]` →
    /// frames `[B, p·L − (p−1), C'/8^levels, h·p, w·p]` (the repeated copies
    /// of frame 0 are dropped).
    pub fn unpatch_frames(&self, y: &Tensor) -> Result<Tensor> {
        let (_, _, c, _, _) = y.dims5()?;
        let div = 8usize.pow(self.levels as u32);
        if c % div != 0 {
            bail!("unpatcher expects channels divisible by {div}, found {c}");
        }
        let mut x = y.clone();
        for _ in 0..self.levels {
            x = idwt_level(&x)?;
        }
        let t = x.dim(1)?;
        x.narrow(1, self.patch - 1, t - (self.patch - 1))
    }
}

/// Splits dim `d` into even/odd halves `(a, b)`.
fn split_pairs(x: &Tensor, d: usize) -> Result<(Tensor, Tensor)> {
    let mut shape = x.dims().to_vec();
    let n = shape[d];
    shape[d] = n / 2;
    shape.insert(d + 1, 2);
    let r = x.reshape(shape)?;
    Ok((
        r.narrow(d + 1, 0, 1)?.squeeze(d + 1)?,
        r.narrow(d + 1, 1, 1)?.squeeze(d + 1)?,
    ))
}

/// Interleaves `a` and `b` along dim `d` (inverse of [`split_pairs`]).
fn merge_pairs(a: &Tensor, b: &Tensor, d: usize) -> Result<Tensor> {
    let mut shape = a.dims().to_vec();
    shape[d] *= 2;
    Tensor::stack(&[a, b], d + 1)?.reshape(shape)
}

fn butterfly(a: &Tensor, b: &Tensor) -> Result<(Tensor, Tensor)> {
    Ok((((a + b)? / SQRT2)?, ((a - b)? / SQRT2)?))
}

/// One Haar level on `[B, T, C, H, W]` → `[B, T/2, 8C, H/2, W/2]`.
fn dwt_level(x: &Tensor) -> Result<Tensor> {
    let mut bands = vec![x.clone()];
    // Split t (dim 1), then h (dim 3), then w (dim 4); low before high.
    for d in [1usize, 3, 4] {
        let mut next = Vec::with_capacity(bands.len() * 2);
        for band in &bands {
            let (a, b) = split_pairs(band, d)?;
            let (lo, hi) = butterfly(&a, &b)?;
            next.push(lo);
            next.push(hi);
        }
        bands = next;
    }
    Tensor::cat(&bands, 2)? / (2.0 * SQRT2)
}

/// Inverse of [`dwt_level`].
fn idwt_level(y: &Tensor) -> Result<Tensor> {
    let c8 = y.dim(2)?;
    let c = c8 / 8;
    let y = (y * (2.0 * SQRT2))?;
    let mut bands: Vec<Tensor> = (0..8)
        .map(|i| y.narrow(2, i * c, c))
        .collect::<Result<_>>()?;
    for d in [4usize, 3, 1] {
        let mut prev = Vec::with_capacity(bands.len() / 2);
        for pair in bands.chunks(2) {
            let (a, b) = butterfly(&pair[0], &pair[1])?;
            prev.push(merge_pairs(&a, &b, d)?);
        }
        bands = prev;
    }
    Ok(bands.remove(0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Tensor};

    #[test]
    fn groups_after_frame_zero_patch_on_their_own() {
        let p = HaarPatcher::new(4).unwrap();
        let x = Tensor::randn(0f32, 1.0, (1, 9, 3, 8, 8), &Device::Cpu).unwrap();
        let whole = p.patch_frames(&x).unwrap().narrow(1, 1, 2).unwrap();
        let groups = p.patch_groups(&x.narrow(1, 1, 8).unwrap()).unwrap();
        let d = (whole - groups)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(d < 1e-6, "{d}");
        let e = p.patch_groups(&x.narrow(1, 0, 6).unwrap()).unwrap_err();
        assert!(e.to_string().contains("multiple of 4, found 6"), "{e}");
    }

    #[test]
    fn shapes() {
        let p = HaarPatcher::new(4).unwrap();
        let x = Tensor::zeros((1, 9, 3, 16, 8), candle_core::DType::F32, &Device::Cpu).unwrap();
        let y = p.patch_frames(&x).unwrap();
        assert_eq!(y.dims(), &[1, 3, 192, 4, 2]);
        assert_eq!(p.out_channels(3), 192);
        assert_eq!(p.latent_frames(93).unwrap(), 24);
        assert!(p.latent_frames(92).is_err());
    }

    #[test]
    fn round_trip_is_exact() {
        let p = HaarPatcher::new(4).unwrap();
        let x = Tensor::randn(0f32, 1.0, (2, 9, 3, 8, 12), &Device::Cpu).unwrap();
        let back = p.unpatch_frames(&p.patch_frames(&x).unwrap()).unwrap();
        assert_eq!(back.dims(), x.dims());
        let err = (back - &x).unwrap().abs().unwrap().max_all().unwrap();
        assert!(err.to_scalar::<f32>().unwrap() < 1e-5);
    }

    #[test]
    fn constant_video_lands_in_the_lowest_band() {
        // A constant video c: every level's lll band is the mean, so after two
        // levels the first RGB channels hold c and every other band is 0.
        let p = HaarPatcher::new(4).unwrap();
        let x = (Tensor::ones((1, 5, 3, 4, 4), candle_core::DType::F32, &Device::Cpu).unwrap()
            * 0.5)
            .unwrap();
        let y = p.patch_frames(&x).unwrap();
        let v = y.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        // y is [1, 2, 192, 1, 1]: channel 0..3 of each latent frame = 0.5.
        for (i, val) in v.iter().enumerate() {
            let ch = i % 192;
            let expect = if ch < 3 { 0.5 } else { 0.0 };
            assert!((val - expect).abs() < 1e-6, "channel {ch}: {val}");
        }
    }

    #[test]
    fn band_layout_is_level2_level1_rgb() {
        // A video that only varies along w with period 2 (+1, −1, …) in the
        // red channel puts all its energy in level-1 band "llh" (index 1),
        // which level 2 leaves in its lll band (index 0): channel 0·24 + 1·3 + 0.
        let p = HaarPatcher::new(4).unwrap();
        let (t, h, w) = (5, 4, 4);
        let mut data = vec![0f32; t * 3 * h * w];
        for ti in 0..t {
            for y in 0..h {
                for x in 0..w {
                    data[((ti * 3) * h + y) * w + x] = if x % 2 == 0 { 1.0 } else { -1.0 };
                }
            }
        }
        let vid = Tensor::from_vec(data, (1, t, 3, h, w), &Device::Cpu).unwrap();
        let y = p.patch_frames(&vid).unwrap();
        let v = y.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        for (i, val) in v.iter().enumerate() {
            if i % 192 != 3 {
                assert!(val.abs() < 1e-6, "channel {} = {val}", i % 192);
            } else {
                assert!(val.abs() > 0.1, "channel 3 should carry the signal");
            }
        }
    }
}
