//! Instruction embedding: a deterministic hashed bag of words.
//!
//! Bundles carry no text encoder, so an instruction is embedded by hashing its
//! lower-cased words (and word bigrams) into `dim` signed buckets (FNV-1a, 32
//! bit) and normalizing to unit length. The same sentence always gives the same
//! vector, and sentences sharing words are close; the AR learns the rest.

/// Embeds `text` into a unit vector of width `dim` (all zeros for empty text).
pub fn embed_instruction(text: &str, dim: usize) -> Vec<f32> {
    let mut v = vec![0f32; dim];
    if dim == 0 {
        return v;
    }
    let words: Vec<String> = text
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(|w| w.to_lowercase())
        .collect();
    let mut add = |token: &str| {
        let h = crate::base::hash::fnv1a_32(token.as_bytes());
        let bucket = (h % dim as u32) as usize;
        let sign = if (h >> 31) & 1 == 1 { -1.0 } else { 1.0 };
        v[bucket] += sign;
    };
    for w in &words {
        add(w);
    }
    for pair in words.windows(2) {
        add(&format!("{} {}", pair[0], pair[1]));
    }
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 {
        v.iter_mut().for_each(|x| *x /= norm);
    }
    v
}

/// [`embed_instruction`] as a `[1, dim]` tensor on `device`, the shape the AR and
/// the head take at run time.
pub fn instruction_tensor(
    text: &str,
    dim: usize,
    device: &candle_core::Device,
) -> candle_core::Result<candle_core::Tensor> {
    candle_core::Tensor::from_vec(embed_instruction(text, dim), (1, dim), device)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_unit_and_case_insensitive() {
        let a = embed_instruction("Open the drawer", 32);
        let b = embed_instruction("open the DRAWER!", 32);
        assert_eq!(a, b);
        let n: f32 = a.iter().map(|x| x * x).sum();
        assert!((n - 1.0).abs() < 1e-5);
        assert_ne!(a, embed_instruction("close the drawer", 32));
        assert!(embed_instruction("", 8).iter().all(|&x| x == 0.0));
    }
}
