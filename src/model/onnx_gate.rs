//! The op/opset gate of ONNX action heads: what candle-onnx 0.11.1 evaluates
//! correctly, and the checks that refuse everything else at load, naming the
//! file, the node and the reason (see [`super::onnx_head`] for the contract).

use std::path::Path;

use candle_core::DType;

use candle_onnx::onnx::{
    tensor_proto::DataLocation, tensor_proto::DataType, GraphProto, ModelProto, NodeProto,
    TensorProto,
};

use super::onnx_head::OnnxHeadError;

/// Highest default-domain opset accepted (candle-onnx mis-evaluates `ReduceMean` at opset >= 18).
pub const MAX_OPSET: i64 = 17;

/// Ops that candle-onnx 0.11.1 evaluates: the `op_type` match arms of its `eval.rs`.
pub const SUPPORTED_OPS: &[&str] = &[
    "Abs",
    "Add",
    "And",
    "ArgMax",
    "ArgMin",
    "AveragePool",
    "BatchNormalization",
    "Cast",
    "Ceil",
    "Clip",
    "Concat",
    "Constant",
    "ConstantOfShape",
    "Conv",
    "Cos",
    "CumSum",
    "Div",
    "Dropout",
    "Equal",
    "Erf",
    "Exp",
    "Expand",
    "Flatten",
    "Floor",
    "Gather",
    "GatherElements",
    "Gelu",
    "Gemm",
    "Greater",
    "GreaterOrEqual",
    "HardSwish",
    "Identity",
    "If",
    "LSTM",
    "LeakyRelu",
    "Less",
    "LessOrEqual",
    "Log",
    "LogSoftmax",
    "MatMul",
    "MaxPool",
    "Min",
    "Mul",
    "Neg",
    "Not",
    "OneHot",
    "Or",
    "PRelu",
    "Pad",
    "Pow",
    "RNN",
    "Range",
    "ReduceL2",
    "ReduceMax",
    "ReduceMean",
    "ReduceMin",
    "ReduceSum",
    "Relu",
    "Reshape",
    "Resize",
    "ScatterND",
    "Selu",
    "Shape",
    "Sigmoid",
    "Sign",
    "Sin",
    "Size",
    "Slice",
    "Softmax",
    "Split",
    "Sqrt",
    "Squeeze",
    "Sub",
    "Tanh",
    "Tile",
    "Transpose",
    "Trilu",
    "Unsqueeze",
    "Where",
    "Xor",
];

/// Ops refused whatever the opset, with the reason and the fix shown to the user.
pub const DENIED_OPS: &[(&str, &str)] = &[(
    "LayerNormalization",
    "candle-onnx 0.11.1 has no LayerNormalization; re-export with opset_version=16 so that \
     PyTorch decomposes layer norm into ReduceMean/Sub/Pow/Sqrt/Div",
)];

/// Ops that candle-onnx evaluates correctly only within an inclusive opset range:
/// `(op, min_opset, max_opset, reason)`. Outside it the op runs but gives wrong results.
pub const OPSET_BOUNDED_OPS: &[(&str, i64, i64, &str)] = &[
    (
        "ReduceMean",
        1,
        17,
        "candle-onnx reads `axes` only from the attribute, which opset 18 moved to an input",
    ),
    (
        "ReduceSum",
        13,
        i64::MAX,
        "candle-onnx reads `axes` only from the second input (opset >= 13)",
    ),
    (
        "Squeeze",
        13,
        i64::MAX,
        "candle-onnx reads `axes` only from the second input (opset >= 13)",
    ),
    (
        "Split",
        13,
        i64::MAX,
        "candle-onnx reads split sizes only from the second input (opset >= 13)",
    ),
    (
        "Clip",
        11,
        i64::MAX,
        "candle-onnx reads min/max only from inputs (opset >= 11)",
    ),
];

fn is_default_domain(domain: &str) -> bool {
    domain.is_empty() || domain == "ai.onnx"
}

/// The default-domain opset (the highest, should the model list several).
pub(crate) fn default_opset(model: &ModelProto, file: &Path) -> Result<i64, OnnxHeadError> {
    model
        .opset_import
        .iter()
        .filter(|o| is_default_domain(&o.domain))
        .map(|o| o.version)
        .max()
        .ok_or_else(|| OnnxHeadError::MissingOpset {
            file: file.to_path_buf(),
            found: model
                .opset_import
                .iter()
                .map(|o| format!("'{}' v{}", o.domain, o.version))
                .collect(),
        })
}

/// Checks nodes, initializers and `Constant` tensors of a graph and of its subgraphs.
pub(crate) fn check_graph(
    graph: &GraphProto,
    opset: i64,
    file: &Path,
) -> Result<(), OnnxHeadError> {
    for t in &graph.initializer {
        check_tensor(t, format!("initializer '{}'", t.name), file)?;
    }
    for (index, node) in graph.node.iter().enumerate() {
        let name = if node.name.is_empty() {
            format!("#{index}")
        } else {
            node.name.clone()
        };
        check_op(node, &name, opset, file)?;
        for attr in &node.attribute {
            let what = format!("node '{name}' attribute '{}'", attr.name);
            if let Some(t) = &attr.t {
                check_tensor(t, what.clone(), file)?;
            }
            for t in &attr.tensors {
                check_tensor(t, what.clone(), file)?;
            }
            for g in attr.g.iter().chain(&attr.graphs) {
                check_graph(g, opset, file)?;
            }
        }
    }
    Ok(())
}

fn check_op(node: &NodeProto, name: &str, opset: i64, file: &Path) -> Result<(), OnnxHeadError> {
    let op = node.op_type.as_str();
    if !is_default_domain(&node.domain) {
        return Err(OnnxHeadError::CustomDomain {
            file: file.to_path_buf(),
            node: name.to_string(),
            op: op.to_string(),
            domain: node.domain.clone(),
        });
    }
    let denied = DENIED_OPS.iter().find(|(d, _)| *d == op);
    if denied.is_some() || !SUPPORTED_OPS.contains(&op) {
        return Err(OnnxHeadError::UnsupportedOp {
            file: file.to_path_buf(),
            node: name.to_string(),
            op: op.to_string(),
            reason: denied.map(|(_, r)| r.to_string()),
        });
    }
    if let Some(&(_, min, max, reason)) = OPSET_BOUNDED_OPS
        .iter()
        .find(|(o, min, max, _)| *o == op && !(*min..=*max).contains(&opset))
    {
        return Err(OnnxHeadError::OpAtOpset {
            file: file.to_path_buf(),
            node: name.to_string(),
            op: op.to_string(),
            found: opset,
            min,
            max: max.min(MAX_OPSET),
            reason,
        });
    }
    Ok(())
}

/// Refuses external data, tensors candle-onnx cannot decode, and float tensors with NaN/Inf.
fn check_tensor(t: &TensorProto, what: String, file: &Path) -> Result<(), OnnxHeadError> {
    let bad = |reason: String| OnnxHeadError::BadTensor {
        file: file.to_path_buf(),
        what: what.clone(),
        reason,
    };
    if t.data_location == DataLocation::External as i32 || !t.external_data.is_empty() {
        return Err(bad(
            "it uses external data, which candle-onnx cannot load; export with all weights \
             inside the .onnx file"
                .to_string(),
        ));
    }
    let data_type = DataType::try_from(t.data_type)
        .map_err(|_| bad(format!("unknown data type {}", t.data_type)))?;
    if data_type != DataType::Int32 && candle_onnx::dtype(data_type).is_none() {
        return Err(bad(format!(
            "data type {} is not supported by candle-onnx",
            data_type.as_str_name()
        )));
    }
    if !matches!(
        data_type,
        DataType::Float | DataType::Double | DataType::Float16
    ) {
        return Ok(());
    }
    let values = candle_onnx::eval::get_tensor(t, &t.name)
        .and_then(|x| x.flatten_all()?.to_dtype(DType::F64)?.to_vec1::<f64>())
        .map_err(|e| bad(e.to_string()))?;
    let count = values.iter().filter(|v| !v.is_finite()).count();
    if count > 0 {
        return Err(OnnxHeadError::NonFinite {
            file: file.to_path_buf(),
            what,
            count,
            total: values.len(),
        });
    }
    Ok(())
}
