//! Action head loaded from an ONNX file and evaluated with `candle-onnx`.
//!
//! A VideoWorld 2 policy ends in a small "action head" that maps the code
//! embeddings of the current latent step, visual features and (optionally)
//! proprioception to an action chunk of `C` steps x 7 (xyz, euler, gripper).
//! Users may export that head from PyTorch to ONNX; this module loads it and
//! refuses, at load time and with a message naming the file, every model that
//! `candle-onnx` 0.11.1 cannot evaluate correctly.
//!
//! # ONNX contract
//!
//! | name      | kind            | dtype | shape                                   |
//! |-----------|-----------------|-------|-----------------------------------------|
//! | `codes`   | input           | f32   | `[B, codes_per_step * code_dim]`        |
//! | `visual`  | input           | f32   | `[B, visual_dim]`                       |
//! | `proprio` | optional input  | f32   | `[B, proprio_dim]`                      |
//! | `actions` | output          | f32   | `[B, C, 7]` or `[B, C * 7]`             |
//!
//! Other graph inputs are refused unless they are initializers; extra graph
//! outputs are allowed and ignored.
//!
//! # What is refused at load
//!
//! - a missing, unreadable or undecodable (e.g. truncated) file;
//! - a default-domain (`""` / `ai.onnx`) opset above [`MAX_OPSET`] (17):
//!   candle-onnx reads `ReduceMean` axes only from the attribute, which opset 18
//!   moved to an input, so such models are silently mis-evaluated;
//! - any node whose op is not in [`SUPPORTED_OPS`] (the `op_type` arms of
//!   candle-onnx 0.11.1 `eval.rs`), in [`DENIED_OPS`], outside the opset range
//!   of [`OPSET_BOUNDED_OPS`], or from a non-default domain (subgraphs of `If`
//!   included);
//! - initializers (and `Constant` node tensors) that hold NaN/Inf, use external
//!   data, or cannot be decoded: a NaN weight is refused here, naming the
//!   initializer, rather than surfacing as a NaN action later;
//! - a graph without the `codes`/`visual` inputs or the `actions` output, or
//!   with a declared type/shape that breaks the contract.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};

use super::onnx_gate::{check_graph, default_opset};
pub use super::onnx_gate::{DENIED_OPS, MAX_OPSET, OPSET_BOUNDED_OPS, SUPPORTED_OPS};
use candle_onnx::onnx::{
    tensor_proto::DataType, tensor_shape_proto, type_proto, ModelProto, ValueInfoProto,
};

/// Number of values per action step: xyz (3), euler angles (3), gripper (1).
pub const ACTION_DIM: usize = 7;

/// Name of the graph input holding the flattened code embeddings of the step.
pub const CODES_INPUT: &str = "codes";

/// Name of the graph input holding the visual features.
pub const VISUAL_INPUT: &str = "visual";

/// Name of the optional graph input holding proprioception.
pub const PROPRIO_INPUT: &str = "proprio";

/// Name of the graph output holding the action chunk.
pub const ACTIONS_OUTPUT: &str = "actions";

/// Why an ONNX action head was refused or failed to run; every variant names the file.
#[derive(Debug, thiserror::Error)]
pub enum OnnxHeadError {
    /// The file is missing or unreadable.
    #[error("{}: cannot read ONNX file: {source}", .file.display())]
    Io {
        /// The ONNX file.
        file: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The bytes are not a valid ONNX protobuf (e.g. a truncated file).
    #[error("{}: not a valid ONNX model (truncated or corrupt protobuf?): {source}", .file.display())]
    Decode {
        /// The ONNX file.
        file: PathBuf,
        /// The decoding error.
        #[source]
        source: candle_core::Error,
    },
    /// The model holds no graph.
    #[error("{}: the ONNX model has no graph", .file.display())]
    NoGraph {
        /// The ONNX file.
        file: PathBuf,
    },
    /// No opset is declared for the default ONNX domain.
    #[error(
        "{}: no opset_import for the default ONNX domain (\"\" or \"ai.onnx\"); found domains: [{}]",
        .file.display(), .found.join(", ")
    )]
    MissingOpset {
        /// The ONNX file.
        file: PathBuf,
        /// The domains that do have an opset_import.
        found: Vec<String>,
    },
    /// The default-domain opset is too new for candle-onnx.
    #[error(
        "{}: default-domain opset {found} is not supported: expected opset <= {expected_max} \
         (candle-onnx mis-evaluates ReduceMean at opset >= 18); re-export with opset_version={expected_max}",
        .file.display()
    )]
    Opset {
        /// The ONNX file.
        file: PathBuf,
        /// Highest accepted opset ([`MAX_OPSET`]).
        expected_max: i64,
        /// The opset the model declares.
        found: i64,
    },
    /// A node uses an op that candle-onnx cannot evaluate.
    #[error(
        "{}: node '{node}' uses op '{op}', which candle-onnx cannot evaluate{}; supported ops: {}",
        .file.display(),
        .reason.as_deref().map(|r| format!(" ({r})")).unwrap_or_default(),
        SUPPORTED_OPS.join(", ")
    )]
    UnsupportedOp {
        /// The ONNX file.
        file: PathBuf,
        /// The node name (or `#index` when unnamed).
        node: String,
        /// The op type.
        op: String,
        /// Why the op is denied, for ops in [`DENIED_OPS`].
        reason: Option<String>,
    },
    /// A node uses an op at an opset where candle-onnx gives wrong results.
    #[error(
        "{}: node '{node}' uses op '{op}' at opset {found}, which candle-onnx mis-evaluates: \
         {reason}; expected opset {min}..={max}",
        .file.display()
    )]
    OpAtOpset {
        /// The ONNX file.
        file: PathBuf,
        /// The node name (or `#index` when unnamed).
        node: String,
        /// The op type.
        op: String,
        /// The model's default-domain opset.
        found: i64,
        /// Lowest opset at which candle-onnx evaluates the op correctly.
        min: i64,
        /// Highest accepted opset at which candle-onnx evaluates the op correctly.
        max: i64,
        /// What candle-onnx does differently (from [`OPSET_BOUNDED_OPS`]).
        reason: &'static str,
    },
    /// A node uses an op from a non-default domain (e.g. `com.microsoft`).
    #[error(
        "{}: node '{node}' uses op '{op}' from domain '{domain}'; candle-onnx evaluates only \
         the default ONNX domain",
        .file.display()
    )]
    CustomDomain {
        /// The ONNX file.
        file: PathBuf,
        /// The node name (or `#index` when unnamed).
        node: String,
        /// The op type.
        op: String,
        /// The node's domain.
        domain: String,
    },
    /// A required graph input is missing.
    #[error(
        "{}: the graph has no input named '{input}' (found inputs: [{}]); expected inputs: \
         codes, visual and optionally proprio",
        .file.display(), .found.join(", ")
    )]
    MissingInput {
        /// The ONNX file.
        file: PathBuf,
        /// The missing input.
        input: String,
        /// The graph inputs that are not initializers.
        found: Vec<String>,
    },
    /// The graph has an input outside the contract.
    #[error(
        "{}: graph input '{input}' is not part of the action-head contract (codes, visual, \
         optionally proprio); found inputs: [{}]",
        .file.display(), .found.join(", ")
    )]
    UnexpectedInput {
        /// The ONNX file.
        file: PathBuf,
        /// The unexpected input.
        input: String,
        /// The graph inputs that are not initializers.
        found: Vec<String>,
    },
    /// The `actions` output is missing.
    #[error(
        "{}: the graph has no output named '{output}' (found outputs: [{}])",
        .file.display(), .found.join(", ")
    )]
    MissingOutput {
        /// The ONNX file.
        file: PathBuf,
        /// The missing output.
        output: String,
        /// The graph outputs.
        found: Vec<String>,
    },
    /// A graph input or output declares a type or shape that breaks the contract.
    #[error("{}: '{name}' is declared as {found}, expected {expected}", .file.display())]
    Signature {
        /// The ONNX file.
        file: PathBuf,
        /// The input or output name.
        name: String,
        /// What the contract wants.
        expected: String,
        /// What the graph declares.
        found: String,
    },
    /// A weight (initializer or `Constant` tensor) or the output holds NaN/Inf.
    #[error("{}: {what} contains {count} NaN/Inf value(s) out of {total}", .file.display())]
    NonFinite {
        /// The ONNX file.
        file: PathBuf,
        /// What holds the values, e.g. `initializer 'fc0.weight'` or `output 'actions'`.
        what: String,
        /// Number of non-finite values.
        count: usize,
        /// Number of values.
        total: usize,
    },
    /// A weight cannot be loaded by candle-onnx.
    #[error("{}: {what} cannot be loaded: {reason}", .file.display())]
    BadTensor {
        /// The ONNX file.
        file: PathBuf,
        /// The tensor, e.g. `initializer 'fc0.weight'`.
        what: String,
        /// Why.
        reason: String,
    },
    /// A tensor given to [`OnnxActionHead::forward`] has the wrong shape or dtype.
    #[error("{}: input '{input}' has {found}, expected {expected}", .file.display())]
    Input {
        /// The ONNX file.
        file: PathBuf,
        /// The input name.
        input: String,
        /// What the head expects.
        expected: String,
        /// What was given.
        found: String,
    },
    /// The `actions` output cannot be read as `[B, C, 7]`.
    #[error("{}: output '{output}' has shape {found:?}, expected {expected}", .file.display())]
    OutputShape {
        /// The ONNX file.
        file: PathBuf,
        /// The output name.
        output: String,
        /// What the contract wants.
        expected: String,
        /// The shape produced.
        found: Vec<usize>,
    },
    /// Evaluation failed inside candle / candle-onnx.
    #[error("{}: {stage} failed: {source}", .file.display())]
    Eval {
        /// The ONNX file.
        file: PathBuf,
        /// What was being done.
        stage: &'static str,
        /// The candle error.
        #[source]
        source: candle_core::Error,
    },
}

/// An action head loaded from ONNX, validated for candle-onnx, ready to run on the CPU.
#[derive(Debug, Clone)]
pub struct OnnxActionHead {
    file: PathBuf,
    model: ModelProto,
    opset: i64,
    input_names: Vec<String>,
    output_name: String,
    codes_dim: Option<usize>,
    visual_dim: Option<usize>,
    proprio_dim: Option<Option<usize>>,
    chunk: Option<usize>,
}

impl OnnxActionHead {
    /// Reads and validates an ONNX action head; see the module docs for what is refused.
    pub fn load(path: &Path) -> Result<Self, OnnxHeadError> {
        let model = candle_onnx::read_file(path).map_err(|e| match e {
            candle_core::Error::Io(source) => OnnxHeadError::Io {
                file: path.to_path_buf(),
                source,
            },
            source => OnnxHeadError::Decode {
                file: path.to_path_buf(),
                source,
            },
        })?;
        Self::from_model(model, path)
    }

    /// Validates an already decoded model; `file` is the name used in messages.
    pub fn from_model(model: ModelProto, file: &Path) -> Result<Self, OnnxHeadError> {
        let opset = default_opset(&model, file)?;
        if opset > MAX_OPSET {
            return Err(OnnxHeadError::Opset {
                file: file.to_path_buf(),
                expected_max: MAX_OPSET,
                found: opset,
            });
        }
        let graph = model.graph.as_ref().ok_or_else(|| OnnxHeadError::NoGraph {
            file: file.to_path_buf(),
        })?;
        check_graph(graph, opset, file)?;

        let initializers: BTreeSet<&str> =
            graph.initializer.iter().map(|t| t.name.as_str()).collect();
        let inputs: Vec<&ValueInfoProto> = graph
            .input
            .iter()
            .filter(|v| !initializers.contains(v.name.as_str()))
            .collect();
        let found: Vec<String> = inputs.iter().map(|v| v.name.clone()).collect();
        if let Some(extra) = inputs
            .iter()
            .find(|v| ![CODES_INPUT, VISUAL_INPUT, PROPRIO_INPUT].contains(&v.name.as_str()))
        {
            return Err(OnnxHeadError::UnexpectedInput {
                file: file.to_path_buf(),
                input: extra.name.clone(),
                found,
            });
        }
        let find_input = |name: &str| inputs.iter().copied().find(|v| v.name == name);
        let required = |name: &str| {
            find_input(name).ok_or_else(|| OnnxHeadError::MissingInput {
                file: file.to_path_buf(),
                input: name.to_string(),
                found: found.clone(),
            })
        };
        let codes_dim = feature_dim(required(CODES_INPUT)?, file)?;
        let visual_dim = feature_dim(required(VISUAL_INPUT)?, file)?;
        let proprio_dim = find_input(PROPRIO_INPUT)
            .map(|v| feature_dim(v, file))
            .transpose()?;

        let output = graph
            .output
            .iter()
            .find(|v| v.name == ACTIONS_OUTPUT)
            .ok_or_else(|| OnnxHeadError::MissingOutput {
                file: file.to_path_buf(),
                output: ACTIONS_OUTPUT.to_string(),
                found: graph.output.iter().map(|v| v.name.clone()).collect(),
            })?;
        let chunk = output_chunk(output, file)?;

        Ok(Self {
            file: file.to_path_buf(),
            opset,
            input_names: found,
            output_name: output.name.clone(),
            codes_dim,
            visual_dim,
            proprio_dim,
            chunk,
            model,
        })
    }

    /// Runs the head: `codes` [B, Dc], `visual` [B, Dv], `proprio` [B, Dp] (exactly when the
    /// graph has a `proprio` input) to actions [B, C, 7] (f32).
    ///
    /// Inputs may be any float dtype on any device; candle-onnx keeps the weights on the CPU,
    /// so evaluation runs there and the result is moved back to the device of `codes`.
    /// Errors on wrong shapes or dtypes, NaN/Inf inputs, an output that cannot be read as
    /// [B, C, 7], or NaN/Inf actions.
    pub fn forward(
        &self,
        codes: &Tensor,
        visual: &Tensor,
        proprio: Option<&Tensor>,
    ) -> Result<Tensor, OnnxHeadError> {
        let batch = self.check_input(CODES_INPUT, codes, self.codes_dim, None)?;
        self.check_input(VISUAL_INPUT, visual, self.visual_dim, Some(batch))?;
        let mut inputs = HashMap::new();
        inputs.insert(
            CODES_INPUT.to_string(),
            self.to_cpu_f32(CODES_INPUT, codes)?,
        );
        inputs.insert(
            VISUAL_INPUT.to_string(),
            self.to_cpu_f32(VISUAL_INPUT, visual)?,
        );
        match (self.proprio_dim, proprio) {
            (Some(dim), Some(p)) => {
                self.check_input(PROPRIO_INPUT, p, dim, Some(batch))?;
                inputs.insert(
                    PROPRIO_INPUT.to_string(),
                    self.to_cpu_f32(PROPRIO_INPUT, p)?,
                );
            }
            (None, None) => {}
            (Some(dim), None) => {
                return Err(self.input_error(
                    PROPRIO_INPUT,
                    format!("a [B, {}] tensor (the graph takes proprio)", fmt_dim(dim)),
                    "none".to_string(),
                ))
            }
            (None, Some(p)) => {
                return Err(self.input_error(
                    PROPRIO_INPUT,
                    "none (the graph has no proprio input)".to_string(),
                    format!("a tensor of shape {:?}", p.dims()),
                ))
            }
        }

        let mut outputs = candle_onnx::simple_eval(&self.model, inputs)
            .map_err(|e| self.eval_error("candle-onnx evaluation", e))?;
        let out =
            outputs
                .remove(&self.output_name)
                .ok_or_else(|| OnnxHeadError::MissingOutput {
                    file: self.file.clone(),
                    output: self.output_name.clone(),
                    found: outputs.keys().cloned().collect(),
                })?;

        let dims = out.dims().to_vec();
        let shape_error = |expected: String| OnnxHeadError::OutputShape {
            file: self.file.clone(),
            output: self.output_name.clone(),
            expected,
            found: dims.clone(),
        };
        let chunk = match dims.as_slice() {
            [b, c, 7] if *b == batch => *c,
            [b, k] if *b == batch && k % ACTION_DIM == 0 => k / ACTION_DIM,
            [_, k] if k % ACTION_DIM != 0 => {
                return Err(shape_error(format!(
                    "[{batch}, C * 7]: {k} values per sample is not a multiple of 7"
                )))
            }
            _ => return Err(shape_error(format!("[{batch}, C, 7] or [{batch}, C * 7]"))),
        };
        if let Some(expected) = self.chunk.filter(|&c| c != chunk) {
            return Err(shape_error(format!(
                "[{batch}, {expected}, 7] (chunk {expected} as declared by the graph)"
            )));
        }

        let out = out
            .to_dtype(DType::F32)
            .and_then(|t| t.reshape((batch, chunk, ACTION_DIM)))
            .map_err(|e| self.eval_error("reading the output", e))?;
        let values = out
            .flatten_all()
            .and_then(|t| t.to_vec1::<f32>())
            .map_err(|e| self.eval_error("reading the output", e))?;
        let count = values.iter().filter(|v| !v.is_finite()).count();
        if count > 0 {
            return Err(OnnxHeadError::NonFinite {
                file: self.file.clone(),
                what: format!("output '{}'", self.output_name),
                count,
                total: values.len(),
            });
        }
        out.to_device(codes.device())
            .map_err(|e| self.eval_error("moving the output to the input device", e))
    }

    /// The file the head was loaded from.
    pub fn path(&self) -> &Path {
        &self.file
    }

    /// The parsed ONNX model.
    pub fn model(&self) -> &ModelProto {
        &self.model
    }

    /// The model's default-domain opset (at most [`MAX_OPSET`]).
    pub fn opset(&self) -> i64 {
        self.opset
    }

    /// The graph inputs that are not initializers (`codes`, `visual`, maybe `proprio`).
    pub fn input_names(&self) -> &[String] {
        &self.input_names
    }

    /// The name of the output read by [`Self::forward`] (always [`ACTIONS_OUTPUT`]).
    pub fn output_name(&self) -> &str {
        &self.output_name
    }

    /// Width of `codes` when the graph declares it.
    pub fn codes_dim(&self) -> Option<usize> {
        self.codes_dim
    }

    /// Width of `visual` when the graph declares it.
    pub fn visual_dim(&self) -> Option<usize> {
        self.visual_dim
    }

    /// Whether the graph takes a `proprio` input (then [`Self::forward`] requires one).
    pub fn expects_proprio(&self) -> bool {
        self.proprio_dim.is_some()
    }

    /// Width of `proprio` when the graph takes and declares it.
    pub fn proprio_dim(&self) -> Option<usize> {
        self.proprio_dim.flatten()
    }

    /// Chunk length `C` when the graph declares the output shape.
    pub fn chunk(&self) -> Option<usize> {
        self.chunk
    }

    fn check_input(
        &self,
        name: &str,
        t: &Tensor,
        dim: Option<usize>,
        batch: Option<usize>,
    ) -> Result<usize, OnnxHeadError> {
        let b = batch.map_or("B".to_string(), |b| b.to_string());
        let expected = format!("shape [{b}, {}] (float)", fmt_dim(dim));
        if !t.dtype().is_float() {
            return Err(self.input_error(name, expected, format!("dtype {:?}", t.dtype())));
        }
        match *t.dims() {
            [tb, td] if batch.is_none_or(|b| b == tb) && dim.is_none_or(|d| d == td) => Ok(tb),
            _ => Err(self.input_error(name, expected, format!("shape {:?}", t.dims()))),
        }
    }

    /// Moves an input to the CPU as f32, refusing NaN/Inf (candle's Relu maps NaN to 0, so a
    /// NaN input could otherwise come out as plausible-looking actions).
    fn to_cpu_f32(&self, name: &str, t: &Tensor) -> Result<Tensor, OnnxHeadError> {
        let t = t
            .to_device(&Device::Cpu)
            .and_then(|t| t.to_dtype(DType::F32))
            .map_err(|e| self.eval_error("moving inputs to the CPU as f32", e))?;
        let values = t
            .flatten_all()
            .and_then(|t| t.to_vec1::<f32>())
            .map_err(|e| self.eval_error("reading the inputs", e))?;
        let count = values.iter().filter(|v| !v.is_finite()).count();
        if count > 0 {
            return Err(OnnxHeadError::NonFinite {
                file: self.file.clone(),
                what: format!("input '{name}'"),
                count,
                total: values.len(),
            });
        }
        Ok(t)
    }

    fn input_error(&self, input: &str, expected: String, found: String) -> OnnxHeadError {
        OnnxHeadError::Input {
            file: self.file.clone(),
            input: input.to_string(),
            expected,
            found,
        }
    }

    fn eval_error(&self, stage: &'static str, source: candle_core::Error) -> OnnxHeadError {
        OnnxHeadError::Eval {
            file: self.file.clone(),
            stage,
            source,
        }
    }
}

fn fmt_dim(dim: Option<usize>) -> String {
    dim.map_or("?".to_string(), |d| d.to_string())
}

/// Declared dims of a graph value: `None` when no shape is declared, `Some(None)` entries
/// for symbolic dims. Refuses non-f32 or non-tensor declarations.
#[allow(clippy::type_complexity)]
fn declared_dims(
    v: &ValueInfoProto,
    file: &Path,
) -> Result<Option<Vec<Option<i64>>>, OnnxHeadError> {
    let Some(ty) = v.r#type.as_ref().and_then(|t| t.value.as_ref()) else {
        return Ok(None);
    };
    let signature_error = |found: String| OnnxHeadError::Signature {
        file: file.to_path_buf(),
        name: v.name.clone(),
        expected: "an f32 tensor".to_string(),
        found,
    };
    let type_proto::Value::TensorType(tensor) = ty else {
        return Err(signature_error("a non-tensor value".to_string()));
    };
    if tensor.elem_type != DataType::Float as i32 {
        let name = DataType::try_from(tensor.elem_type).map_or_else(
            |_| tensor.elem_type.to_string(),
            |d| d.as_str_name().to_string(),
        );
        return Err(signature_error(format!("a {name} tensor")));
    }
    Ok(tensor.shape.as_ref().map(|s| {
        s.dim
            .iter()
            .map(|d| match d.value {
                Some(tensor_shape_proto::dimension::Value::DimValue(v)) if v > 0 => Some(v),
                _ => None,
            })
            .collect()
    }))
}

fn fmt_declared(dims: &[Option<i64>]) -> String {
    let dims: Vec<String> = dims
        .iter()
        .map(|d| d.map_or("?".to_string(), |d| d.to_string()))
        .collect();
    format!("shape [{}]", dims.join(", "))
}

/// Feature width of a `[B, D]` input, when declared.
fn feature_dim(v: &ValueInfoProto, file: &Path) -> Result<Option<usize>, OnnxHeadError> {
    match declared_dims(v, file)? {
        None => Ok(None),
        Some(dims) => match dims.as_slice() {
            [_, d] => Ok(d.map(|d| d as usize)),
            _ => Err(OnnxHeadError::Signature {
                file: file.to_path_buf(),
                name: v.name.clone(),
                expected: "shape [B, D]".to_string(),
                found: fmt_declared(&dims),
            }),
        },
    }
}

/// Chunk length of an `actions` output declared as `[B, C, 7]` or `[B, C * 7]`, when known.
fn output_chunk(v: &ValueInfoProto, file: &Path) -> Result<Option<usize>, OnnxHeadError> {
    let Some(dims) = declared_dims(v, file)? else {
        return Ok(None);
    };
    let seven = ACTION_DIM as i64;
    match dims.as_slice() {
        [_, c, Some(7)] | [_, c, None] => Ok(c.map(|c| c as usize)),
        [_, Some(k)] if k % seven == 0 => Ok(Some((k / seven) as usize)),
        [_, None] => Ok(None),
        _ => Err(OnnxHeadError::Signature {
            file: file.to_path_buf(),
            name: v.name.clone(),
            expected: "shape [B, C, 7] or [B, C * 7]".to_string(),
            found: fmt_declared(&dims),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::onnx_export::*;
    use candle_onnx::onnx::{
        attribute_proto::AttributeType, AttributeProto, GraphProto, NodeProto, TensorProto,
        TypeProto,
    };
    use rand::{Rng, SeedableRng};

    const CODES: usize = 12;
    const VISUAL: usize = 10;
    const PROPRIO: usize = 5;
    const HIDDEN: usize = 16;
    const CHUNK: usize = 4;

    fn rand_tensor(rng: &mut rand::rngs::StdRng, dims: &[usize]) -> Tensor {
        let n = dims.iter().product();
        let v: Vec<f32> = (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect();
        Tensor::from_vec(v, dims, &Device::Cpu).unwrap()
    }

    /// A 2-layer MLP head: in -> HIDDEN -> CHUNK * 7.
    fn layers(seed: u64, proprio: bool) -> Vec<(Tensor, Tensor)> {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let input = CODES + VISUAL + if proprio { PROPRIO } else { 0 };
        vec![
            (
                rand_tensor(&mut rng, &[HIDDEN, input]),
                rand_tensor(&mut rng, &[HIDDEN]),
            ),
            (
                rand_tensor(&mut rng, &[CHUNK * 7, HIDDEN]),
                rand_tensor(&mut rng, &[CHUNK * 7]),
            ),
        ]
    }

    fn model(opset: i64) -> ModelProto {
        mlp_head_model(&layers(1, true), CODES, VISUAL, Some(PROPRIO), CHUNK, opset).unwrap()
    }

    fn graph_mut(m: &mut ModelProto) -> &mut GraphProto {
        m.graph.as_mut().unwrap()
    }

    fn write(dir: &tempfile::TempDir, name: &str, m: &ModelProto) -> PathBuf {
        let path = dir.path().join(name);
        write_model(&path, m).unwrap();
        path
    }

    fn load_err(path: &Path) -> OnnxHeadError {
        match OnnxActionHead::load(path) {
            Ok(_) => panic!("{} should have been refused", path.display()),
            Err(e) => e,
        }
    }

    #[test]
    fn mlp_head_matches_direct_candle() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("head.onnx");
        let layers = layers(7, true);
        export_mlp_head_onnx(&path, &layers, CODES, VISUAL, Some(PROPRIO), CHUNK, 17).unwrap();
        assert!(!path.with_extension("onnx.tmp").exists());

        let head = OnnxActionHead::load(&path).unwrap();
        assert_eq!(head.opset(), 17);
        assert_eq!(head.input_names(), ["codes", "visual", "proprio"]);
        assert_eq!(head.output_name(), "actions");
        assert_eq!(head.codes_dim(), Some(CODES));
        assert_eq!(head.visual_dim(), Some(VISUAL));
        assert_eq!(head.proprio_dim(), Some(PROPRIO));
        assert!(head.expects_proprio());
        assert_eq!(head.chunk(), Some(CHUNK));

        let mut rng = rand::rngs::StdRng::seed_from_u64(99);
        let b = 3;
        let codes = rand_tensor(&mut rng, &[b, CODES]);
        let visual = rand_tensor(&mut rng, &[b, VISUAL]);
        let proprio = rand_tensor(&mut rng, &[b, PROPRIO]);
        let got = head.forward(&codes, &visual, Some(&proprio)).unwrap();
        assert_eq!(got.dims(), [b, CHUNK, 7]);
        assert_eq!(got.dtype(), DType::F32);

        let mut x = Tensor::cat(&[&codes, &visual, &proprio], 1).unwrap();
        for (i, (w, bias)) in layers.iter().enumerate() {
            x = x
                .matmul(&w.t().unwrap())
                .unwrap()
                .broadcast_add(bias)
                .unwrap();
            if i + 1 < layers.len() {
                x = x.relu().unwrap();
            }
        }
        let want = x.reshape((b, CHUNK, 7)).unwrap();
        let diff = (got - &want)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(diff < 1e-5, "max abs diff {diff}");
        // The outputs are not trivially zero: the comparison means something.
        let scale = want.abs().unwrap().flatten_all().unwrap().max(0).unwrap();
        assert!(scale.to_scalar::<f32>().unwrap() > 0.1);
    }

    #[test]
    fn head_without_proprio_runs_and_checks_inputs() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("noprop.onnx");
        export_mlp_head_onnx(&path, &layers(3, false), CODES, VISUAL, None, CHUNK, 13).unwrap();
        let head = OnnxActionHead::load(&path).unwrap();
        assert!(!head.expects_proprio());
        let codes = Tensor::ones((2, CODES), DType::F64, &Device::Cpu).unwrap();
        let visual = Tensor::ones((2, VISUAL), DType::F32, &Device::Cpu).unwrap();
        let out = head.forward(&codes, &visual, None).unwrap();
        assert_eq!(out.dims(), [2, CHUNK, 7]);

        // An unexpected proprio, a wrong width, a wrong batch and an integer dtype are refused.
        let proprio = Tensor::ones((2, PROPRIO), DType::F32, &Device::Cpu).unwrap();
        let err = head.forward(&codes, &visual, Some(&proprio)).unwrap_err();
        assert!(matches!(&err, OnnxHeadError::Input { input, .. } if input == "proprio"));
        let narrow = Tensor::ones((2, VISUAL - 1), DType::F32, &Device::Cpu).unwrap();
        let err = head.forward(&codes, &narrow, None).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("'visual'") && msg.contains("[2, 9]"), "{msg}");
        let other_batch = Tensor::ones((3, VISUAL), DType::F32, &Device::Cpu).unwrap();
        assert!(head.forward(&codes, &other_batch, None).is_err());
        let ints = Tensor::ones((2, CODES), DType::U32, &Device::Cpu).unwrap();
        let msg = head.forward(&ints, &visual, None).unwrap_err().to_string();
        assert!(msg.contains("'codes'") && msg.contains("dtype"), "{msg}");
    }

    #[test]
    fn opset_18_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("head18.onnx");
        export_mlp_head_onnx(
            &path,
            &layers(1, true),
            CODES,
            VISUAL,
            Some(PROPRIO),
            CHUNK,
            18,
        )
        .unwrap();
        let err = load_err(&path);
        assert!(matches!(
            err,
            OnnxHeadError::Opset {
                expected_max: 17,
                found: 18,
                ..
            }
        ));
        let msg = err.to_string();
        assert!(msg.starts_with(&path.display().to_string()), "{msg}");
        assert!(
            msg.contains("opset") && msg.contains("18") && msg.contains("<= 17"),
            "{msg}"
        );
    }

    #[test]
    fn missing_default_opset_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut m = model(17);
        m.opset_import[0].domain = "com.microsoft".to_string();
        let path = write(&dir, "noopset.onnx", &m);
        let msg = load_err(&path).to_string();
        assert!(
            msg.contains("no opset_import") && msg.contains("com.microsoft"),
            "{msg}"
        );
    }

    #[test]
    fn layer_normalization_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut m = model(17);
        graph_mut(&mut m).node.insert(
            1,
            node(
                "ln0",
                "LayerNormalization",
                &["features", "fc0.bias"],
                "ln_out",
                vec![],
            ),
        );
        let path = write(&dir, "ln.onnx", &m);
        let err = load_err(&path);
        assert!(matches!(
            &err,
            OnnxHeadError::UnsupportedOp { node, op, reason: Some(_), .. }
                if node == "ln0" && op == "LayerNormalization"
        ));
        let msg = err.to_string();
        assert!(
            msg.starts_with(&format!(
                "{}: node 'ln0' uses op 'LayerNormalization', which candle-onnx cannot evaluate",
                path.display()
            )),
            "{msg}"
        );
        assert!(msg.contains("supported ops: Abs, Add"), "{msg}");
    }

    #[test]
    fn op_outside_allow_list_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut m = model(17);
        graph_mut(&mut m).node.push(NodeProto {
            op_type: "NonMaxSuppression".to_string(),
            input: vec!["features".to_string(), "fc0_out".to_string()],
            output: vec!["nms".to_string()],
            ..Default::default()
        });
        let path = write(&dir, "nms.onnx", &m);
        let err = load_err(&path);
        // The node is unnamed, so it is named by its index.
        assert!(matches!(
            &err,
            OnnxHeadError::UnsupportedOp { node, op, reason: None, .. }
                if node == "#5" && op == "NonMaxSuppression"
        ));
        assert!(err.to_string().contains("'NonMaxSuppression'"));
    }

    #[test]
    fn unsupported_op_inside_if_subgraph_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut m = model(17);
        let branch = GraphProto {
            node: vec![node(
                "deep_ln",
                "LayerNormalization",
                &["features"],
                "y",
                vec![],
            )],
            ..Default::default()
        };
        graph_mut(&mut m).node.push(node(
            "cond",
            "If",
            &["features"],
            "z",
            vec![AttributeProto {
                name: "then_branch".to_string(),
                r#type: AttributeType::Graph as i32,
                g: Some(branch),
                ..Default::default()
            }],
        ));
        let path = write(&dir, "if.onnx", &m);
        assert!(matches!(
            load_err(&path),
            OnnxHeadError::UnsupportedOp { node, .. } if node == "deep_ln"
        ));
    }

    #[test]
    fn op_at_wrong_opset_and_custom_domain_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut m = model(11);
        graph_mut(&mut m)
            .node
            .push(node("sq", "Squeeze", &["actions"], "sq_out", vec![]));
        let path = write(&dir, "squeeze11.onnx", &m);
        let err = load_err(&path);
        assert!(matches!(
            &err,
            OnnxHeadError::OpAtOpset { node, op, found: 11, min: 13, max: 17, .. }
                if node == "sq" && op == "Squeeze"
        ));
        let msg = err.to_string();
        assert!(msg.contains("expected opset 13..=17"), "{msg}");

        let mut m = model(17);
        graph_mut(&mut m).node[2].domain = "com.microsoft".to_string();
        let path = write(&dir, "ms.onnx", &m);
        let msg = load_err(&path).to_string();
        assert!(
            msg.contains("node 'relu0'") && msg.contains("'com.microsoft'"),
            "{msg}"
        );
    }

    #[test]
    fn truncated_and_missing_files_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let good = write(&dir, "good.onnx", &model(17));
        let bytes = std::fs::read(&good).unwrap();
        let path = dir.path().join("truncated.onnx");
        std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
        let err = load_err(&path);
        assert!(matches!(err, OnnxHeadError::Decode { .. }), "{err:?}");
        let msg = err.to_string();
        assert!(msg.starts_with(&path.display().to_string()), "{msg}");
        assert!(msg.contains("not a valid ONNX model"), "{msg}");

        let missing = dir.path().join("missing.onnx");
        let err = load_err(&missing);
        assert!(matches!(err, OnnxHeadError::Io { .. }), "{err:?}");
        assert!(err.to_string().contains("missing.onnx"));
    }

    #[test]
    fn missing_visual_input_lists_found_inputs() {
        let dir = tempfile::tempdir().unwrap();
        let mut m = model(17);
        graph_mut(&mut m).input.retain(|v| v.name != "visual");
        let path = write(&dir, "novisual.onnx", &m);
        let err = load_err(&path);
        assert!(matches!(
            &err,
            OnnxHeadError::MissingInput { input, found, .. }
                if input == "visual" && found == &["codes", "proprio"]
        ));
        let msg = err.to_string();
        assert!(
            msg.contains("'visual'") && msg.contains("[codes, proprio]"),
            "{msg}"
        );
    }

    #[test]
    fn contract_violations_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        // An extra (non-initializer) input.
        let mut m = model(17);
        graph_mut(&mut m).input.push(f32_value_info(
            "mask",
            &[Dim::Param("batch"), Dim::Value(3)],
        ));
        let msg = load_err(&write(&dir, "mask.onnx", &m)).to_string();
        assert!(
            msg.contains("'mask'") && msg.contains("not part of"),
            "{msg}"
        );
        // A renamed output.
        let mut m = model(17);
        graph_mut(&mut m).output[0].name = "act".to_string();
        let msg = load_err(&write(&dir, "act.onnx", &m)).to_string();
        assert!(msg.contains("'actions'") && msg.contains("[act]"), "{msg}");
        // An output whose last dim is not 7.
        let mut m = model(17);
        graph_mut(&mut m).output[0] = f32_value_info(
            ACTIONS_OUTPUT,
            &[Dim::Param("batch"), Dim::Value(7), Dim::Value(4)],
        );
        let msg = load_err(&write(&dir, "out74.onnx", &m)).to_string();
        assert!(msg.contains("[?, 7, 4]"), "{msg}");
        // A rank-3 codes input.
        let mut m = model(17);
        graph_mut(&mut m).input[0] = f32_value_info(
            CODES_INPUT,
            &[Dim::Param("batch"), Dim::Value(3), Dim::Value(4)],
        );
        let msg = load_err(&write(&dir, "codes3.onnx", &m)).to_string();
        assert!(msg.contains("'codes'") && msg.contains("[B, D]"), "{msg}");
    }

    #[test]
    fn nan_weight_is_refused_at_load() {
        let dir = tempfile::tempdir().unwrap();
        let mut m = model(17);
        let w = graph_mut(&mut m)
            .initializer
            .iter_mut()
            .find(|t| t.name == "fc1.weight")
            .unwrap();
        w.raw_data[4..8].copy_from_slice(&f32::NAN.to_le_bytes());
        let path = write(&dir, "nan.onnx", &m);
        let err = load_err(&path);
        assert!(matches!(
            &err,
            OnnxHeadError::NonFinite { what, count: 1, .. } if what == "initializer 'fc1.weight'"
        ));
        let msg = err.to_string();
        assert!(
            msg.contains("'fc1.weight'") && msg.contains("NaN/Inf"),
            "{msg}"
        );

        // The exporter refuses to write such weights in the first place.
        let mut bad = layers(1, true);
        bad[0].1 = Tensor::full(f32::INFINITY, HIDDEN, &Device::Cpu).unwrap();
        let path = dir.path().join("inf.onnx");
        let err = export_mlp_head_onnx(&path, &bad, CODES, VISUAL, Some(PROPRIO), CHUNK, 17);
        assert!(err.unwrap_err().to_string().contains("fc0.bias"));
        assert!(!path.exists() && !path.with_extension("onnx.tmp").exists());
    }

    #[test]
    fn nan_input_and_non_finite_output_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(&dir, "head.onnx", &model(17));
        let head = OnnxActionHead::load(&path).unwrap();
        let z = |d| Tensor::zeros((1, d), DType::F32, &Device::Cpu).unwrap();
        let nan = Tensor::full(f32::NAN, (1, VISUAL), &Device::Cpu).unwrap();
        let err = head
            .forward(&z(CODES), &nan, Some(&z(PROPRIO)))
            .unwrap_err();
        assert!(matches!(
            &err,
            OnnxHeadError::NonFinite { what, count: 10, .. } if what == "input 'visual'"
        ));

        // Finite but huge inputs through all-ones weights overflow to +Inf in every action.
        let width = CODES + VISUAL + PROPRIO;
        let ones = vec![(
            Tensor::ones((CHUNK * 7, width), DType::F32, &Device::Cpu).unwrap(),
            Tensor::zeros(CHUNK * 7, DType::F32, &Device::Cpu).unwrap(),
        )];
        let path = dir.path().join("ones.onnx");
        export_mlp_head_onnx(&path, &ones, CODES, VISUAL, Some(PROPRIO), CHUNK, 17).unwrap();
        let head = OnnxActionHead::load(&path).unwrap();
        let big = |d| Tensor::full(1e38f32, (1, d), &Device::Cpu).unwrap();
        let err = head
            .forward(&big(CODES), &big(VISUAL), Some(&big(PROPRIO)))
            .unwrap_err();
        assert!(matches!(
            &err,
            OnnxHeadError::NonFinite { what, count: 28, total: 28, .. }
                if what == "output 'actions'"
        ));
        assert!(err.to_string().contains("NaN/Inf"));
    }

    #[test]
    fn output_not_multiple_of_seven_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let mut m = model(17);
        // Drop the Reshape and expose a [B, 27] slice of the last Gemm as `actions`.
        let g = graph_mut(&mut m);
        g.node.pop();
        g.initializer.push(TensorProto {
            name: "starts".to_string(),
            dims: vec![1],
            data_type: DataType::Int64 as i32,
            int64_data: vec![1],
            ..Default::default()
        });
        g.initializer.push(TensorProto {
            name: "ends".to_string(),
            dims: vec![1],
            data_type: DataType::Int64 as i32,
            int64_data: vec![i64::MAX],
            ..Default::default()
        });
        g.initializer.push(TensorProto {
            name: "axes".to_string(),
            dims: vec![1],
            data_type: DataType::Int64 as i32,
            int64_data: vec![1],
            ..Default::default()
        });
        g.node.push(node(
            "slice",
            "Slice",
            &["fc1_out", "starts", "ends", "axes"],
            ACTIONS_OUTPUT,
            vec![],
        ));
        g.output[0] = f32_value_info(ACTIONS_OUTPUT, &[Dim::Param("batch"), Dim::Param("k")]);
        let path = write(&dir, "k27.onnx", &m);
        let head = OnnxActionHead::load(&path).unwrap();
        assert_eq!(head.chunk(), None);
        let z = |d| Tensor::zeros((2, d), DType::F32, &Device::Cpu).unwrap();
        let err = head
            .forward(&z(CODES), &z(VISUAL), Some(&z(PROPRIO)))
            .unwrap_err();
        assert!(matches!(
            &err,
            OnnxHeadError::OutputShape { output, found, .. } if output == "actions" && found == &[2, 27]
        ));
        let msg = err.to_string();
        assert!(
            msg.contains("'actions'") && msg.contains("[2, 27]"),
            "{msg}"
        );
    }

    /// The encoder round-trips every field it writes through prost's decoder.
    #[test]
    fn encoder_round_trips_through_prost() {
        let dir = tempfile::tempdir().unwrap();
        let mut m = model(17);
        m.model_version = 3;
        m.domain = "vw2".to_string();
        let g = graph_mut(&mut m);
        g.doc_string = "doc".to_string();
        g.value_info.push(ValueInfoProto {
            name: "seq".to_string(),
            r#type: Some(TypeProto {
                denotation: "d".to_string(),
                value: Some(type_proto::Value::SequenceType(Box::new(
                    type_proto::Sequence {
                        elem_type: Some(Box::new(TypeProto::default())),
                    },
                ))),
            }),
            doc_string: "vi".to_string(),
        });
        g.output[0] = f32_value_info(ACTIONS_OUTPUT, &[Dim::Value(0), Dim::Param("")]);
        g.initializer.push(TensorProto {
            name: "mixed".to_string(),
            dims: vec![2],
            data_type: DataType::Int32 as i32,
            int32_data: vec![-1, 300],
            int64_data: vec![-5, 1 << 40],
            float_data: vec![-0.0, 1.5],
            double_data: vec![2.5],
            uint64_data: vec![u64::MAX],
            string_data: vec![vec![], b"s".to_vec()],
            segment: Some(candle_onnx::onnx::tensor_proto::Segment { begin: 0, end: 2 }),
            doc_string: "t".to_string(),
            ..Default::default()
        });
        g.node[0].input.push(String::new());
        g.node[0].doc_string = "n".to_string();
        g.node[0].attribute.push(AttributeProto {
            name: "misc".to_string(),
            ref_attr_name: "r".to_string(),
            doc_string: "a".to_string(),
            r#type: AttributeType::Floats as i32,
            f: -2.5,
            i: -7,
            s: b"bytes".to_vec(),
            floats: vec![1.0, -1.0],
            ints: vec![-1, 0, 1],
            strings: vec![b"x".to_vec()],
            tensors: vec![TensorProto::default()],
            graphs: vec![GraphProto::default()],
            ..Default::default()
        });
        let path = write(&dir, "rt.onnx", &m);
        assert_eq!(candle_onnx::read_file(&path).unwrap(), m);
    }

    /// `SUPPORTED_OPS` must match candle-onnx: each listed op is dispatched (it fails on the
    /// missing inputs, not as unsupported), and unlisted ones are not.
    #[test]
    fn supported_ops_match_candle_onnx() {
        fn eval_single(op: &str) -> Option<String> {
            let model = ModelProto {
                graph: Some(GraphProto {
                    node: vec![NodeProto {
                        op_type: op.to_string(),
                        input: (0..5).map(|i| format!("missing{i}")).collect(),
                        output: vec!["y".to_string()],
                        ..Default::default()
                    }],
                    ..Default::default()
                }),
                ..Default::default()
            };
            let run = std::panic::catch_unwind(|| {
                candle_onnx::simple_eval(&model, HashMap::new())
                    .err()
                    .map(|e| e.to_string())
            });
            run.unwrap_or(None)
        }
        for op in SUPPORTED_OPS {
            let err = eval_single(op).unwrap_or_default();
            assert!(
                !err.contains("unsupported op_type"),
                "{op} is listed but candle-onnx says: {err}"
            );
        }
        for op in ["LayerNormalization", "NonMaxSuppression", "Max", "Einsum"] {
            let err = eval_single(op).unwrap_or_default();
            assert!(err.contains("unsupported op_type"), "{op}: {err}");
        }
        for (op, _) in DENIED_OPS {
            assert!(!SUPPORTED_OPS.contains(op));
        }
    }
}
