//! Finite scalar quantization (FSQ), VideoWorld 2 levels [8, 5, 5, 5] (1000 codes).

use candle_core::{DType, Device, Result, Tensor};

/// The epsilon that keeps `tanh` bounds strictly inside the level range.
pub const FSQ_EPS: f64 = 1e-3;

/// Finite scalar quantizer: each of `levels.len()` channels is bounded with
/// `tanh`, rounded to one of `levels[i]` values, and scaled to [-1, 1].
#[derive(Debug, Clone)]
pub struct Fsq {
    levels: Vec<u32>,
    basis: Vec<u32>,
}

impl Fsq {
    /// A quantizer for the given levels (VideoWorld 2: `[8, 5, 5, 5]`).
    pub fn new(levels: &[u32]) -> Self {
        let mut basis = Vec::with_capacity(levels.len());
        let mut acc = 1u32;
        for &l in levels {
            basis.push(acc);
            acc *= l;
        }
        Self {
            levels: levels.to_vec(),
            basis,
        }
    }

    /// The quantization levels per channel.
    pub fn levels(&self) -> &[u32] {
        &self.levels
    }

    /// The mixed-radix basis, `[1, 8, 40, 200]` for `[8, 5, 5, 5]`.
    pub fn basis(&self) -> &[u32] {
        &self.basis
    }

    /// Number of channels (the code dimension, 4).
    pub fn dim(&self) -> usize {
        self.levels.len()
    }

    /// Number of distinct codes (the product of the levels, 1000).
    pub fn codebook_size(&self) -> usize {
        self.levels.iter().map(|&l| l as usize).product()
    }

    fn per_channel(&self, f: impl Fn(u32) -> f64, dev: &Device) -> Result<Tensor> {
        let v: Vec<f32> = self.levels.iter().map(|&l| f(l) as f32).collect();
        Tensor::from_vec(v, self.levels.len(), dev)
    }

    /// `tanh(z + shift)·half_l − offset`, with `half_l = (l−1)(1+eps)/2`,
    /// `offset = 0.5` for even `l`, `shift = atanh(offset / half_l)`.
    /// `z` is `[.., dim]`.
    pub fn bound(&self, z: &Tensor) -> Result<Tensor> {
        let dev = z.device();
        let half_l = self.per_channel(|l| (l as f64 - 1.0) * (1.0 + FSQ_EPS) / 2.0, dev)?;
        let offset = self.per_channel(|l| if l % 2 == 0 { 0.5 } else { 0.0 }, dev)?;
        let shift = self.per_channel(
            |l| {
                let half = (l as f64 - 1.0) * (1.0 + FSQ_EPS) / 2.0;
                let off = if l % 2 == 0 { 0.5 } else { 0.0 };
                (off / half).atanh()
            },
            dev,
        )?;
        let z = z.to_dtype(DType::F32)?;
        z.broadcast_add(&shift)?
            .tanh()?
            .broadcast_mul(&half_l)?
            .broadcast_sub(&offset)
    }

    /// Quantizes `z` `[.., dim]` to normalized codes in [-1, 1] (rounding half to
    /// even, as `torch.round`), with a straight-through gradient to `z`.
    pub fn quantize(&self, z: &Tensor) -> Result<Tensor> {
        let bounded = self.bound(z)?;
        let rounded = round_half_even(&bounded.detach())?;
        // Straight-through estimator: forward = rounded, backward = identity.
        let q = (&bounded + (rounded - &bounded)?.detach())?;
        let half_width = self.per_channel(|l| (l / 2) as f64, z.device())?;
        q.broadcast_div(&half_width)
    }

    /// Converts normalized codes `[.., dim]` to indices `[..]` (u32):
    /// `Σ (code·(l//2) + l//2)·basis`.
    pub fn codes_to_indices(&self, codes: &Tensor) -> Result<Tensor> {
        let dev = codes.device();
        let half_width = self.per_channel(|l| (l / 2) as f64, dev)?;
        let basis = Tensor::from_vec(
            self.basis.iter().map(|&b| b as f32).collect::<Vec<_>>(),
            self.dim(),
            dev,
        )?;
        let digits = codes
            .to_dtype(DType::F32)?
            .broadcast_mul(&half_width)?
            .broadcast_add(&half_width)?;
        let digits = round_half_even(&digits)?;
        digits
            .broadcast_mul(&basis)?
            .sum(candle_core::D::Minus1)?
            .round()?
            .to_dtype(DType::U32)
    }

    /// Converts indices `[..]` (any integer dtype) back to normalized codes `[.., dim]`.
    pub fn indices_to_codes(&self, indices: &Tensor) -> Result<Tensor> {
        let dev = indices.device().clone();
        let shape = indices.dims().to_vec();
        let flat: Vec<u32> = indices
            .to_dtype(DType::U32)?
            .flatten_all()?
            .to_vec1::<u32>()?;
        let size = self.codebook_size() as u32;
        let mut out = Vec::with_capacity(flat.len() * self.dim());
        for idx in flat {
            if idx >= size {
                candle_core::bail!("FSQ index {idx} is out of range: expected < {size}");
            }
            for (l, b) in self.levels.iter().zip(&self.basis) {
                let digit = (idx / b) % l;
                let half = (l / 2) as f32;
                out.push((digit as f32 - half) / half);
            }
        }
        let mut out_shape = shape;
        out_shape.push(self.dim());
        Tensor::from_vec(out, out_shape, &dev)
    }

    /// Quantizes `z` `[.., dim]` straight to indices `[..]`.
    pub fn encode(&self, z: &Tensor) -> Result<Tensor> {
        self.codes_to_indices(&self.quantize(z)?)
    }
}

/// Rounds to the nearest integer, ties to even (like `torch.round`).
pub fn round_half_even(x: &Tensor) -> Result<Tensor> {
    let fl = x.floor()?;
    let frac = (x - &fl)?;
    let up = frac.gt(0.5)?.to_dtype(x.dtype())?;
    let tie = frac.eq(0.5)?.to_dtype(x.dtype())?;
    // fl is odd when fl − 2·floor(fl/2) == 1.
    let odd = (&fl - ((&fl / 2.0)?.floor()? * 2.0)?)?;
    fl + up + (tie * odd)?
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(v: &[f32], shape: &[usize]) -> Tensor {
        Tensor::from_vec(v.to_vec(), shape, &Device::Cpu).unwrap()
    }

    #[test]
    fn basis_and_size() {
        let f = Fsq::new(&[8, 5, 5, 5]);
        assert_eq!(f.basis(), &[1, 8, 40, 200]);
        assert_eq!(f.codebook_size(), 1000);
    }

    #[test]
    fn bound_hand_worked() {
        // l=8: half_l = 7·1.001/2 = 3.5035, offset .5, shift = atanh(.5/3.5035).
        // z = 0 → tanh(shift)·3.5035 − .5 = .5 − .5 = 0.
        // l=5: half_l = 2.002, offset 0, shift 0; z = 1 → tanh(1)·2.002.
        let f = Fsq::new(&[8, 5, 5, 5]);
        let b = f
            .bound(&t(&[0.0, 1.0, -1.0, 0.0], &[1, 4]))
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        let e = 1.0f64.tanh() * 2.002;
        assert!(b[0][0].abs() < 1e-6, "{b:?}");
        assert!((b[0][1] as f64 - e).abs() < 1e-5, "{b:?}");
        assert!((b[0][2] as f64 + e).abs() < 1e-5, "{b:?}");
    }

    #[test]
    fn quantize_hand_worked() {
        // Large positive z saturates: l=8 → bound ≈ 3.0035 → 3 → 3/4 = .75;
        // l=5 → ≈ 2.002 → 2 → 2/2 = 1. Large negative: l=8 → −4.0035 → −4 → −1.
        let f = Fsq::new(&[8, 5, 5, 5]);
        let q = f
            .quantize(&t(&[10.0, 10.0, -10.0, 0.0], &[1, 4]))
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        assert_eq!(q[0], vec![0.75, 1.0, -1.0, 0.0]);
        let q = f
            .quantize(&t(&[-10.0, -10.0, 0.3, 0.6], &[1, 4]))
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        // 0.3 → tanh(.3)·2.002 = .5840 → 1 → .5; .6 → tanh(.6)·2.002 = 1.0771 → 1 → .5
        assert_eq!(q[0], vec![-1.0, -1.0, 0.5, 0.5]);
    }

    #[test]
    fn indices_hand_worked() {
        let f = Fsq::new(&[8, 5, 5, 5]);
        // codes (.75, 1, −1, 0) → digits (3+4, 2+2, −2+2, 0+2) = (7, 4, 0, 2)
        // index = 7·1 + 4·8 + 0·40 + 2·200 = 439.
        let idx = f
            .codes_to_indices(&t(&[0.75, 1.0, -1.0, 0.0], &[1, 4]))
            .unwrap()
            .to_vec1::<u32>()
            .unwrap();
        assert_eq!(idx, vec![439]);
        let back = f
            .indices_to_codes(&Tensor::new(&[439u32, 0, 999], &Device::Cpu).unwrap())
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        assert_eq!(back[0], vec![0.75, 1.0, -1.0, 0.0]);
        assert_eq!(back[1], vec![-1.0, -1.0, -1.0, -1.0]);
        assert_eq!(back[2], vec![0.75, 1.0, 1.0, 1.0]);
    }

    #[test]
    fn every_index_round_trips() {
        let f = Fsq::new(&[8, 5, 5, 5]);
        let all: Vec<u32> = (0..1000).collect();
        let idx = Tensor::new(all.as_slice(), &Device::Cpu).unwrap();
        let back = f
            .codes_to_indices(&f.indices_to_codes(&idx).unwrap())
            .unwrap()
            .to_vec1::<u32>()
            .unwrap();
        assert_eq!(back, all);
    }

    #[test]
    fn out_of_range_index_is_an_error() {
        let f = Fsq::new(&[8, 5, 5, 5]);
        let err = f
            .indices_to_codes(&Tensor::new(&[1000u32], &Device::Cpu).unwrap())
            .unwrap_err()
            .to_string();
        assert!(err.contains("1000"), "{err}");
    }

    #[test]
    fn rounding_is_half_to_even() {
        let r = round_half_even(&t(&[0.5, 1.5, 2.5, -0.5, -1.5, 2.4, 2.6], &[7]))
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        assert_eq!(r, vec![0.0, 2.0, 2.0, 0.0, -2.0, 2.0, 3.0]);
    }

    #[test]
    fn straight_through_gradient() {
        let f = Fsq::new(&[8, 5, 5, 5]);
        let z = candle_core::Var::from_tensor(&t(&[0.1, 0.2, 0.3, 0.4], &[1, 4])).unwrap();
        let loss = f.quantize(z.as_tensor()).unwrap().sum_all().unwrap();
        let g = loss.backward().unwrap();
        let gz = g
            .get(z.as_tensor())
            .unwrap()
            .abs()
            .unwrap()
            .sum_all()
            .unwrap();
        assert!(gz.to_scalar::<f32>().unwrap() > 0.0);
    }
}
