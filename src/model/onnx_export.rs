//! ONNX export of an MLP action head (`Concat → (Gemm, Relu)* → Gemm → Reshape`):
//! test support. The product only reads ONNX heads ([`super::onnx_head`]); the
//! tests use this to make real ONNX files, including ones the gate must refuse.

use std::path::Path;

use anyhow::{bail, ensure, Context};
use candle_core::{DType, Device, Tensor};
use candle_onnx::onnx::{
    attribute_proto::AttributeType, tensor_proto::DataType, tensor_shape_proto, type_proto,
    AttributeProto, GraphProto, ModelProto, NodeProto, OperatorSetIdProto, StringStringEntryProto,
    TensorProto, TensorShapeProto, TypeProto, ValueInfoProto,
};

use super::onnx_head::{ACTIONS_OUTPUT, ACTION_DIM, CODES_INPUT, PROPRIO_INPUT, VISUAL_INPUT};

/// Writes an MLP action head as a real ONNX file, atomically (`<path>.onnx.tmp` then rename):
/// `Concat(codes, visual[, proprio]) -> (Gemm, Relu)* -> Gemm -> Reshape [B, chunk, 7]`.
///
/// `layers` are PyTorch-style `(weight [out, in], bias [out])`; the first layer takes
/// `codes_dim + visual_dim + proprio_dim` features and the last gives `chunk * 7`.
/// Refuses NaN/Inf weights, naming the layer.
pub fn export_mlp_head_onnx(
    path: &Path,
    layers: &[(Tensor, Tensor)],
    codes_dim: usize,
    visual_dim: usize,
    proprio_dim: Option<usize>,
    chunk: usize,
    opset: i64,
) -> anyhow::Result<()> {
    let model = mlp_head_model(layers, codes_dim, visual_dim, proprio_dim, chunk, opset)?;
    write_model(path, &model)
}

/// Builds (without writing) the ONNX model that [`export_mlp_head_onnx`] writes.
pub fn mlp_head_model(
    layers: &[(Tensor, Tensor)],
    codes_dim: usize,
    visual_dim: usize,
    proprio_dim: Option<usize>,
    chunk: usize,
    opset: i64,
) -> anyhow::Result<ModelProto> {
    ensure!(!layers.is_empty(), "an MLP head needs at least one layer");
    ensure!(chunk > 0, "chunk must be positive");
    ensure!(
        codes_dim > 0 && visual_dim > 0 && proprio_dim != Some(0),
        "input widths must be positive (codes {codes_dim}, visual {visual_dim}, proprio {proprio_dim:?})"
    );
    ensure!(
        opset >= 11,
        "opset {opset} is too old for this exporter (need >= 11)"
    );

    let mut inputs = vec![
        f32_value_info(CODES_INPUT, &[Dim::Param("batch"), Dim::Value(codes_dim)]),
        f32_value_info(VISUAL_INPUT, &[Dim::Param("batch"), Dim::Value(visual_dim)]),
    ];
    if let Some(p) = proprio_dim {
        inputs.push(f32_value_info(
            PROPRIO_INPUT,
            &[Dim::Param("batch"), Dim::Value(p)],
        ));
    }
    let mut nodes = vec![node(
        "concat_inputs",
        "Concat",
        &inputs.iter().map(|v| v.name.as_str()).collect::<Vec<_>>(),
        "features",
        vec![int_attr("axis", 1)],
    )];
    let mut initializers = Vec::new();
    let mut x = "features".to_string();
    let mut width = codes_dim + visual_dim + proprio_dim.unwrap_or(0);
    for (i, (w, b)) in layers.iter().enumerate() {
        let (out, inp) = w
            .dims2()
            .with_context(|| format!("layer {i}: weight must be [out, in]"))?;
        ensure!(
            inp == width,
            "layer {i}: weight is [{out}, {inp}] but its input has {width} features"
        );
        ensure!(
            b.dims() == [out],
            "layer {i}: bias has shape {:?}, expected [{out}]",
            b.dims()
        );
        let (wn, bn) = (format!("fc{i}.weight"), format!("fc{i}.bias"));
        initializers.push(f32_initializer(&wn, w)?);
        initializers.push(f32_initializer(&bn, b)?);
        let y = format!("fc{i}_out");
        nodes.push(node(
            &format!("fc{i}"),
            "Gemm",
            &[&x, &wn, &bn],
            &y,
            vec![int_attr("transB", 1)],
        ));
        x = y;
        if i + 1 < layers.len() {
            let y = format!("relu{i}_out");
            nodes.push(node(&format!("relu{i}"), "Relu", &[&x], &y, vec![]));
            x = y;
        }
        width = out;
    }
    ensure!(
        width == chunk * ACTION_DIM,
        "the last layer gives {width} features, expected chunk * 7 = {}",
        chunk * ACTION_DIM
    );
    let shape = [-1i64, chunk as i64, ACTION_DIM as i64];
    initializers.push(TensorProto {
        name: "actions_shape".to_string(),
        dims: vec![3],
        data_type: DataType::Int64 as i32,
        raw_data: shape.iter().flat_map(|v| v.to_le_bytes()).collect(),
        ..Default::default()
    });
    nodes.push(node(
        "reshape_actions",
        "Reshape",
        &[&x, "actions_shape"],
        ACTIONS_OUTPUT,
        vec![],
    ));

    let graph = GraphProto {
        name: "vw2_action_head".to_string(),
        node: nodes,
        initializer: initializers,
        input: inputs,
        output: vec![f32_value_info(
            ACTIONS_OUTPUT,
            &[
                Dim::Param("batch"),
                Dim::Value(chunk),
                Dim::Value(ACTION_DIM),
            ],
        )],
        ..Default::default()
    };
    let ir_version = match opset {
        ..=12 => 7,
        13..=18 => 8,
        19..=20 => 9,
        _ => 10,
    };
    Ok(ModelProto {
        ir_version,
        opset_import: vec![OperatorSetIdProto {
            domain: String::new(),
            version: opset,
        }],
        producer_name: "vw2_policy".to_string(),
        producer_version: env!("CARGO_PKG_VERSION").to_string(),
        doc_string: "VideoWorld 2 MLP action head: codes, visual[, proprio] -> actions [B, C, 7]"
            .to_string(),
        graph: Some(graph),
        metadata_props: vec![StringStringEntryProto {
            key: "vw2.chunk".to_string(),
            value: chunk.to_string(),
        }],
        ..Default::default()
    })
}

/// Encodes `model` as ONNX protobuf and writes it atomically: to `path.with_extension
/// ("onnx.tmp")`, synced, checked to decode, then renamed over `path`.
pub fn write_model(path: &Path, model: &ModelProto) -> anyhow::Result<()> {
    let bytes = prost::Message::encode_to_vec(model);
    let tmp = path.with_extension("onnx.tmp");
    let result = (|| -> anyhow::Result<()> {
        {
            use std::io::Write;
            let mut f = std::fs::File::create(&tmp)
                .with_context(|| format!("{}: cannot create", tmp.display()))?;
            f.write_all(&bytes)
                .and_then(|()| f.sync_all())
                .with_context(|| format!("{}: cannot write", tmp.display()))?;
        }
        let back = candle_onnx::read_file(&tmp)
            .with_context(|| format!("{}: written model does not decode", tmp.display()))?;
        ensure!(
            back.graph.as_ref().map(|g| g.node.len()) == model.graph.as_ref().map(|g| g.node.len()),
            "{}: written model does not decode to the same graph",
            tmp.display()
        );
        std::fs::rename(&tmp, path)
            .with_context(|| format!("cannot rename {} to {}", tmp.display(), path.display()))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

pub(crate) enum Dim<'a> {
    Param(&'a str),
    Value(usize),
}

pub(crate) fn f32_value_info(name: &str, dims: &[Dim]) -> ValueInfoProto {
    let dim = dims
        .iter()
        .map(|d| tensor_shape_proto::Dimension {
            value: Some(match d {
                Dim::Param(p) => tensor_shape_proto::dimension::Value::DimParam(p.to_string()),
                Dim::Value(v) => tensor_shape_proto::dimension::Value::DimValue(*v as i64),
            }),
            ..Default::default()
        })
        .collect();
    ValueInfoProto {
        name: name.to_string(),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: DataType::Float as i32,
                shape: Some(TensorShapeProto { dim }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn f32_initializer(name: &str, t: &Tensor) -> anyhow::Result<TensorProto> {
    let values = t
        .to_device(&Device::Cpu)?
        .to_dtype(DType::F32)?
        .flatten_all()?
        .to_vec1::<f32>()?;
    if let Some(bad) = values.iter().find(|v| !v.is_finite()) {
        bail!("{name} contains a non-finite value ({bad}); refusing to export it");
    }
    Ok(TensorProto {
        name: name.to_string(),
        dims: t.dims().iter().map(|&d| d as i64).collect(),
        data_type: DataType::Float as i32,
        raw_data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        ..Default::default()
    })
}

fn int_attr(name: &str, value: i64) -> AttributeProto {
    AttributeProto {
        name: name.to_string(),
        r#type: AttributeType::Int as i32,
        i: value,
        ..Default::default()
    }
}

pub(crate) fn node(
    name: &str,
    op: &str,
    inputs: &[&str],
    output: &str,
    attribute: Vec<AttributeProto>,
) -> NodeProto {
    NodeProto {
        name: name.to_string(),
        op_type: op.to_string(),
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: vec![output.to_string()],
        attribute,
        ..Default::default()
    }
}
