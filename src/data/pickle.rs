//! A small, focused Python pickle reader and writer for numpy object arrays (the payload of
//! `np.save(path, some_dict)`), as used by CALVIN's `auto_lang_ann.npy`.
//! Hand-written because no crate does the job: `serde-pickle` refuses the numpy globals
//! (`_reconstruct`, `dtype`, `_frombuffer`) these files are made of, and writes none.
//!
//! The reader is a stack machine over the opcodes that Python's pickler emits for dicts,
//! lists, tuples, strings, numbers, bytes and numpy arrays/dtypes/scalars (protocols 2 to 5).
//! It produces a generic [`PyValue`] tree; numpy arrays (`_reconstruct` + `BUILD`, or the
//! protocol 5 `_frombuffer`), dtypes
//! and scalars are recognised under both `numpy.core` and `numpy._core` module names.
//! Any other opcode is an error naming the opcode byte and its offset. Objects of other
//! classes are kept as [`PyValue::Object`] (callable, arguments, state) without executing
//! anything.
//!
//! The writer emits protocol 3 (what numpy 1.x `np.save` uses) with `numpy.core.multiarray`
//! globals, which both numpy 1.x and 2.x load.

use super::npy::NpyDtype;
use anyhow::{anyhow, bail, ensure, Result};
use std::collections::HashMap;

/// A Python value decoded from a pickle.
#[derive(Debug, Clone, PartialEq)]
pub enum PyValue {
    /// `None`.
    None,
    /// `True` / `False`.
    Bool(bool),
    /// An `int` that fits in 64 bits (larger ones are a decode error).
    Int(i64),
    /// A `float`.
    Float(f64),
    /// A `str`.
    Str(String),
    /// A `bytes` / `bytearray`.
    Bytes(Vec<u8>),
    /// A `list`.
    List(Vec<PyValue>),
    /// A `tuple`.
    Tuple(Vec<PyValue>),
    /// A `dict`, items in insertion order.
    Dict(Vec<(PyValue, PyValue)>),
    /// A reference to a module attribute (class or function), e.g. `numpy.ndarray`.
    Global {
        /// Module path, e.g. `"numpy._core.multiarray"`.
        module: String,
        /// Attribute name, e.g. `"_reconstruct"`.
        name: String,
    },
    /// A numpy `ndarray`.
    Array(NdArray),
    /// A numpy `dtype`, as its descr string (`"<f4"`, `"|O"`).
    Dtype(String),
    /// Any other object: `callable(*args)` followed by an optional `__setstate__(state)`.
    Object {
        /// The callable (usually a [`PyValue::Global`]).
        callable: Box<PyValue>,
        /// Its argument tuple.
        args: Box<PyValue>,
        /// The state applied by `BUILD`, if any.
        state: Option<Box<PyValue>>,
    },
}

/// A numpy array inside a pickle.
#[derive(Debug, Clone, PartialEq)]
pub struct NdArray {
    /// numpy descr of the elements, e.g. `"<f4"` or `"|O"`.
    pub descr: String,
    /// Shape; empty for a 0-d array.
    pub shape: Vec<usize>,
    /// True when the element data is in Fortran order.
    pub fortran_order: bool,
    /// The elements.
    pub data: NdData,
}

/// Element storage of a pickled numpy array.
#[derive(Debug, Clone, PartialEq)]
pub enum NdData {
    /// Raw element bytes in the byte order of `descr` (numeric dtypes).
    Raw(Vec<u8>),
    /// Python objects, one per element (`dtype=object`).
    Objects(Vec<PyValue>),
}

impl PyValue {
    /// Looks up `key` in a dict with string keys.
    pub fn get(&self, key: &str) -> Option<&PyValue> {
        match self {
            PyValue::Dict(items) => items.iter().find_map(|(k, v)| match k {
                PyValue::Str(s) if s == key => Some(v),
                _ => None,
            }),
            _ => None,
        }
    }

    /// A short type name for messages (`"dict"`, `"list"`, `"ndarray"`, ...).
    pub fn type_name(&self) -> &'static str {
        match self {
            PyValue::None => "None",
            PyValue::Bool(_) => "bool",
            PyValue::Int(_) => "int",
            PyValue::Float(_) => "float",
            PyValue::Str(_) => "str",
            PyValue::Bytes(_) => "bytes",
            PyValue::List(_) => "list",
            PyValue::Tuple(_) => "tuple",
            PyValue::Dict(_) => "dict",
            PyValue::Global { .. } => "global",
            PyValue::Array(_) => "ndarray",
            PyValue::Dtype(_) => "dtype",
            PyValue::Object { .. } => "object",
        }
    }

    /// The value of a 0-d object array (numpy's `.item()`), or the value itself otherwise.
    pub fn item(&self) -> &PyValue {
        match self {
            PyValue::Array(NdArray {
                shape,
                data: NdData::Objects(objs),
                ..
            }) if shape.is_empty() && objs.len() == 1 => &objs[0],
            v => v,
        }
    }
}

// ---------------------------------------------------------------------------------------
// Reader
// ---------------------------------------------------------------------------------------

/// Internal arena node: containers refer to other nodes by index so that memoized objects
/// stay shared and can be mutated (APPEND/SETITEM/BUILD) after being memoized.
#[derive(Debug, Clone)]
enum Node {
    Leaf(PyValue),
    List(Vec<usize>),
    Tuple(Vec<usize>),
    Dict(Vec<(usize, usize)>),
    Reduce {
        callable: usize,
        args: usize,
        state: Option<usize>,
    },
}

struct Machine<'a> {
    data: &'a [u8],
    pos: usize,
    base: usize,
    arena: Vec<Node>,
    stack: Vec<usize>,
    marks: Vec<usize>,
    memo: HashMap<u64, usize>,
}

impl Machine<'_> {
    fn take(&mut self, n: usize, what: &str) -> Result<&[u8]> {
        let start = self.pos;
        let end = start
            .checked_add(n)
            .filter(|&e| e <= self.data.len())
            .ok_or_else(|| {
                anyhow!(
                    "pickle truncated: {what} needs {n} bytes at byte {}",
                    self.base + start
                )
            })?;
        self.pos = end;
        Ok(&self.data[start..end])
    }
    fn u8(&mut self, what: &str) -> Result<u8> {
        Ok(self.take(1, what)?[0])
    }
    fn u16(&mut self, what: &str) -> Result<u16> {
        Ok(u16::from_le_bytes(self.take(2, what)?.try_into().unwrap()))
    }
    fn u32(&mut self, what: &str) -> Result<u32> {
        Ok(u32::from_le_bytes(self.take(4, what)?.try_into().unwrap()))
    }
    fn u64(&mut self, what: &str) -> Result<u64> {
        Ok(u64::from_le_bytes(self.take(8, what)?.try_into().unwrap()))
    }
    fn line(&mut self, what: &str) -> Result<String> {
        let rest = &self.data[self.pos..];
        let nl = rest.iter().position(|&b| b == b'\n').ok_or_else(|| {
            anyhow!(
                "pickle truncated: {what} line at byte {}",
                self.base + self.pos
            )
        })?;
        let s = String::from_utf8_lossy(&rest[..nl]).into_owned();
        self.pos += nl + 1;
        Ok(s)
    }
    fn push_node(&mut self, n: Node) {
        self.arena.push(n);
        self.stack.push(self.arena.len() - 1);
    }
    fn push(&mut self, v: PyValue) {
        self.push_node(Node::Leaf(v));
    }
    fn pop(&mut self, at: usize) -> Result<usize> {
        if let Some(&m) = self.marks.last() {
            ensure!(
                self.stack.len() > m,
                "malformed pickle: stack underflow (at MARK) at byte {}",
                self.base + at
            );
        }
        self.stack.pop().ok_or_else(|| {
            anyhow!(
                "malformed pickle: stack underflow at byte {}",
                self.base + at
            )
        })
    }
    fn pop_mark(&mut self, at: usize) -> Result<Vec<usize>> {
        let m = self.marks.pop().ok_or_else(|| {
            anyhow!(
                "malformed pickle: no MARK for opcode at byte {}",
                self.base + at
            )
        })?;
        Ok(self.stack.split_off(m))
    }
    fn top(&self, at: usize) -> Result<usize> {
        self.stack
            .last()
            .copied()
            .ok_or_else(|| anyhow!("malformed pickle: empty stack at byte {}", self.base + at))
    }
    fn str_of(&self, id: usize) -> Option<&str> {
        match &self.arena[id] {
            Node::Leaf(PyValue::Str(s)) => Some(s),
            _ => None,
        }
    }
    fn memo_get(&self, key: u64, at: usize) -> Result<usize> {
        self.memo.get(&key).copied().ok_or_else(|| {
            anyhow!(
                "malformed pickle: memo key {key} not defined (byte {})",
                self.base + at
            )
        })
    }
    fn append(&mut self, target: usize, items: Vec<usize>, at: usize) -> Result<()> {
        match &mut self.arena[target] {
            Node::List(v) => {
                v.extend(items);
                Ok(())
            }
            other => bail!(
                "malformed pickle: APPEND(S) to a non-list ({}) at byte {}",
                node_kind(other),
                self.base + at
            ),
        }
    }
    fn set_items(&mut self, target: usize, items: Vec<usize>, at: usize) -> Result<()> {
        ensure!(
            items.len().is_multiple_of(2),
            "malformed pickle: odd number of items for SETITEMS at byte {}",
            self.base + at
        );
        let pairs = items.chunks_exact(2).map(|c| (c[0], c[1]));
        match &mut self.arena[target] {
            Node::Dict(v) => {
                for (k, val) in pairs {
                    v.push((k, val));
                }
                Ok(())
            }
            other => bail!(
                "malformed pickle: SETITEM(S) on a non-dict ({}) at byte {}",
                node_kind(other),
                self.base + at
            ),
        }
    }

    fn run(&mut self) -> Result<usize> {
        loop {
            let at = self.pos;
            let op = self.u8("opcode")?;
            match op {
                0x80 => {
                    let proto = self.u8("PROTO")?;
                    ensure!(
                        proto <= 5,
                        "unsupported pickle protocol {proto} at byte {}",
                        self.base + at
                    );
                }
                0x95 => {
                    self.u64("FRAME")?;
                }
                b'.' => {
                    let top = self.pop(at)?;
                    return Ok(top);
                }
                b'(' => self.marks.push(self.stack.len()),
                b'0' => {
                    self.pop(at)?;
                }
                b'1' => {
                    self.pop_mark(at)?;
                }
                b'2' => {
                    let t = self.top(at)?;
                    self.stack.push(t);
                }
                b'N' => self.push(PyValue::None),
                0x88 => self.push(PyValue::Bool(true)),
                0x89 => self.push(PyValue::Bool(false)),
                b'J' => {
                    let v = self.u32("BININT")? as i32;
                    self.push(PyValue::Int(v as i64));
                }
                b'K' => {
                    let v = self.u8("BININT1")?;
                    self.push(PyValue::Int(v as i64));
                }
                b'M' => {
                    let v = self.u16("BININT2")?;
                    self.push(PyValue::Int(v as i64));
                }
                0x8a | 0x8b => {
                    let n = if op == 0x8a {
                        self.u8("LONG1")? as usize
                    } else {
                        self.u32("LONG4")? as usize
                    };
                    let bytes = self.take(n, "LONG")?.to_vec();
                    let v = long_from_le(&bytes).ok_or_else(|| {
                        anyhow!("integer at byte {} does not fit in 64 bits", self.base + at)
                    })?;
                    self.push(PyValue::Int(v));
                }
                b'G' => {
                    let v = f64::from_be_bytes(self.take(8, "BINFLOAT")?.try_into().unwrap());
                    self.push(PyValue::Float(v));
                }
                b'X' | 0x8c | 0x8d => {
                    let n = match op {
                        b'X' => self.u32("BINUNICODE")? as usize,
                        0x8c => self.u8("SHORT_BINUNICODE")? as usize,
                        _ => usize::try_from(self.u64("BINUNICODE8")?)?,
                    };
                    let base = self.base;
                    let s = std::str::from_utf8(self.take(n, "string")?)
                        .map_err(|_| anyhow!("invalid UTF-8 string at byte {}", base + at))?
                        .to_owned();
                    self.push(PyValue::Str(s));
                }
                b'U' | b'T' => {
                    // Python 2 `str`: decoded as Latin-1, like numpy's encoding='latin1'.
                    let n = if op == b'U' {
                        self.u8("SHORT_BINSTRING")? as usize
                    } else {
                        self.u32("BINSTRING")? as usize
                    };
                    let s = self.take(n, "string")?.iter().map(|&b| b as char).collect();
                    self.push(PyValue::Str(s));
                }
                b'C' | b'B' | 0x8e | 0x96 => {
                    let n = match op {
                        b'C' => self.u8("SHORT_BINBYTES")? as usize,
                        b'B' => self.u32("BINBYTES")? as usize,
                        _ => usize::try_from(self.u64("BINBYTES8")?)?,
                    };
                    let b = self.take(n, "bytes")?.to_vec();
                    self.push(PyValue::Bytes(b));
                }
                b'}' => self.push_node(Node::Dict(Vec::new())),
                b']' => self.push_node(Node::List(Vec::new())),
                b')' => self.push_node(Node::Tuple(Vec::new())),
                b'd' => {
                    let items = self.pop_mark(at)?;
                    self.push_node(Node::Dict(Vec::new()));
                    let d = self.top(at)?;
                    self.set_items(d, items, at)?;
                }
                b'l' => {
                    let items = self.pop_mark(at)?;
                    self.push_node(Node::List(items));
                }
                b't' => {
                    let items = self.pop_mark(at)?;
                    self.push_node(Node::Tuple(items));
                }
                0x85..=0x87 => {
                    let n = (op - 0x84) as usize;
                    let mut items = Vec::with_capacity(n);
                    for _ in 0..n {
                        items.push(self.pop(at)?);
                    }
                    items.reverse();
                    self.push_node(Node::Tuple(items));
                }
                b'a' => {
                    let v = self.pop(at)?;
                    let l = self.top(at)?;
                    self.append(l, vec![v], at)?;
                }
                b'e' => {
                    let items = self.pop_mark(at)?;
                    let l = self.top(at)?;
                    self.append(l, items, at)?;
                }
                b's' => {
                    let v = self.pop(at)?;
                    let k = self.pop(at)?;
                    let d = self.top(at)?;
                    self.set_items(d, vec![k, v], at)?;
                }
                b'u' => {
                    let items = self.pop_mark(at)?;
                    let d = self.top(at)?;
                    self.set_items(d, items, at)?;
                }
                b'c' => {
                    let module = self.line("GLOBAL module")?;
                    let name = self.line("GLOBAL name")?;
                    self.push(PyValue::Global { module, name });
                }
                0x93 => {
                    let name = self.pop(at)?;
                    let module = self.pop(at)?;
                    let (Some(module), Some(name)) = (self.str_of(module), self.str_of(name))
                    else {
                        bail!(
                            "malformed pickle: STACK_GLOBAL needs two strings at byte {}",
                            self.base + at
                        );
                    };
                    let v = PyValue::Global {
                        module: module.to_owned(),
                        name: name.to_owned(),
                    };
                    self.push(v);
                }
                b'R' | 0x81 => {
                    let args = self.pop(at)?;
                    let callable = self.pop(at)?;
                    self.push_node(Node::Reduce {
                        callable,
                        args,
                        state: None,
                    });
                }
                b'b' => {
                    let state = self.pop(at)?;
                    let obj = self.top(at)?;
                    match &mut self.arena[obj] {
                        Node::Reduce { state: s, .. } => *s = Some(state),
                        other => bail!(
                            "malformed pickle: BUILD on a {} at byte {}",
                            node_kind(other),
                            self.base + at
                        ),
                    }
                }
                b'q' | b'r' | 0x94 => {
                    let key = match op {
                        b'q' => self.u8("BINPUT")? as u64,
                        b'r' => self.u32("LONG_BINPUT")? as u64,
                        _ => self.memo.len() as u64,
                    };
                    let t = self.top(at)?;
                    self.memo.insert(key, t);
                }
                b'h' | b'j' => {
                    let key = if op == b'h' {
                        self.u8("BINGET")? as u64
                    } else {
                        self.u32("LONG_BINGET")? as u64
                    };
                    let id = self.memo_get(key, at)?;
                    self.stack.push(id);
                }
                _ => bail!(
                    "unsupported pickle opcode 0x{op:02x} at byte {}",
                    self.base + at
                ),
            }
        }
    }

    /// Converts arena node `id` into a value tree, interpreting numpy objects.
    fn resolve(&self, id: usize, depth: usize) -> Result<PyValue> {
        ensure!(depth < 100, "pickle nesting too deep (or self-referencing)");
        let r = |i: usize| self.resolve(i, depth + 1);
        Ok(match &self.arena[id] {
            Node::Leaf(v) => v.clone(),
            Node::List(items) => PyValue::List(items.iter().map(|&i| r(i)).collect::<Result<_>>()?),
            Node::Tuple(items) => {
                PyValue::Tuple(items.iter().map(|&i| r(i)).collect::<Result<_>>()?)
            }
            Node::Dict(items) => PyValue::Dict(
                items
                    .iter()
                    .map(|&(k, v)| Ok((r(k)?, r(v)?)))
                    .collect::<Result<_>>()?,
            ),
            Node::Reduce {
                callable,
                args,
                state,
            } => {
                let callable = r(*callable)?;
                let args = r(*args)?;
                let state = state.map(r).transpose()?;
                interpret_object(callable, args, state)?
            }
        })
    }
}

fn node_kind(n: &Node) -> &'static str {
    match n {
        Node::Leaf(v) => v.type_name(),
        Node::List(_) => "list",
        Node::Tuple(_) => "tuple",
        Node::Dict(_) => "dict",
        Node::Reduce { .. } => "object",
    }
}

fn long_from_le(bytes: &[u8]) -> Option<i64> {
    if bytes.is_empty() {
        return Some(0);
    }
    if bytes.len() > 8 {
        // Allow redundant sign-extension bytes.
        let sign = if bytes[bytes.len() - 1] & 0x80 != 0 {
            0xff
        } else {
            0
        };
        if bytes[8..].iter().any(|&b| b != sign) {
            return None;
        }
        let v = long_from_le(&bytes[..8])?;
        return ((v < 0) == (sign == 0xff)).then_some(v);
    }
    let mut buf = if bytes[bytes.len() - 1] & 0x80 != 0 {
        [0xffu8; 8]
    } else {
        [0u8; 8]
    };
    buf[..bytes.len()].copy_from_slice(bytes);
    Some(i64::from_le_bytes(buf))
}

fn is_numpy_global(v: &PyValue, names: &[&str]) -> bool {
    matches!(v, PyValue::Global { module, name }
        if names.contains(&name.as_str())
            && matches!(module.as_str(),
                "numpy.core.multiarray" | "numpy._core.multiarray" | "numpy"
                    | "numpy.core.numeric" | "numpy._core.numeric"))
}

fn interpret_object(callable: PyValue, args: PyValue, state: Option<PyValue>) -> Result<PyValue> {
    let generic = |callable, args, state: Option<PyValue>| PyValue::Object {
        callable: Box::new(callable),
        args: Box::new(args),
        state: state.map(Box::new),
    };
    let args_vec = match &args {
        PyValue::Tuple(a) => a.clone(),
        _ => return Ok(generic(callable, args, state)),
    };
    if let PyValue::Global { module, name } = &callable {
        match (module.as_str(), name.as_str()) {
            ("numpy", "dtype") => return dtype_from(&args_vec, state.as_ref()),
            ("_codecs", "encode") => {
                // Protocol 2 encodes bytes as _codecs.encode(str, 'latin1').
                if let Some(PyValue::Str(s)) = args_vec.first() {
                    return Ok(PyValue::Bytes(s.chars().map(|c| c as u32 as u8).collect()));
                }
            }
            ("builtins" | "__builtin__", "bytearray") => {
                if let Some(PyValue::Bytes(b)) = args_vec.first() {
                    return Ok(PyValue::Bytes(b.clone()));
                }
            }
            _ => {}
        }
    }
    if is_numpy_global(&callable, &["_reconstruct"]) {
        if let Some(PyValue::Tuple(st)) = &state {
            return array_from_state(st);
        }
    }
    if is_numpy_global(&callable, &["_frombuffer"]) {
        // Protocol 5: _frombuffer(buffer, dtype, shape, order).
        if let [PyValue::Bytes(b), PyValue::Dtype(d), PyValue::Tuple(shape), PyValue::Str(order)] =
            args_vec.as_slice()
        {
            let state = [
                PyValue::Int(1),
                PyValue::Tuple(shape.clone()),
                PyValue::Dtype(d.clone()),
                PyValue::Bool(order == "F"),
                PyValue::Bytes(b.clone()),
            ];
            return array_from_state(&state);
        }
    }
    if is_numpy_global(&callable, &["scalar"]) {
        if let (Some(PyValue::Dtype(d)), Some(PyValue::Bytes(b))) =
            (args_vec.first(), args_vec.get(1))
        {
            return scalar_from(d, b);
        }
    }
    Ok(generic(callable, args, state))
}

fn dtype_from(args: &[PyValue], state: Option<&PyValue>) -> Result<PyValue> {
    let Some(PyValue::Str(code)) = args.first() else {
        bail!("numpy dtype without a type code");
    };
    // State tuple (version, byteorder, ...); byteorder is '<', '>', '|' or '='.
    let order = match state {
        Some(PyValue::Tuple(st)) => match st.get(1) {
            Some(PyValue::Str(o)) => o.clone(),
            _ => "|".to_owned(),
        },
        _ => "|".to_owned(),
    };
    let order = if order == "=" { "<".to_owned() } else { order };
    let code = if code == "O8" || code == "O4" {
        "O"
    } else {
        code
    };
    Ok(PyValue::Dtype(format!("{order}{code}")))
}

fn array_from_state(st: &[PyValue]) -> Result<PyValue> {
    // (version, shape, dtype, is_fortran, data)
    ensure!(
        st.len() == 5,
        "numpy array state has {} fields, expected 5",
        st.len()
    );
    let shape = match &st[1] {
        PyValue::Tuple(dims) => dims
            .iter()
            .map(|d| match d {
                PyValue::Int(n) if *n >= 0 => Ok(*n as usize),
                other => Err(anyhow!("bad numpy array dimension {other:?}")),
            })
            .collect::<Result<Vec<_>>>()?,
        other => bail!("numpy array shape is a {}", other.type_name()),
    };
    let PyValue::Dtype(descr) = &st[2] else {
        bail!("numpy array dtype is a {}", st[2].type_name());
    };
    let fortran_order = matches!(st[3], PyValue::Bool(true));
    let n: usize = shape.iter().product();
    let data = match &st[4] {
        PyValue::Bytes(b) => {
            let (dt, _) = NpyDtype::parse_descr(descr)?;
            ensure!(
                b.len() == n * dt.size(),
                "numpy array {descr} {shape:?} has {} data bytes, expected {}",
                b.len(),
                n * dt.size()
            );
            NdData::Raw(b.clone())
        }
        PyValue::List(items) => {
            ensure!(
                items.len() == n,
                "numpy object array {shape:?} has {} elements",
                items.len()
            );
            NdData::Objects(items.clone())
        }
        other => bail!("numpy array data is a {}", other.type_name()),
    };
    Ok(PyValue::Array(NdArray {
        descr: descr.clone(),
        shape,
        fortran_order,
        data,
    }))
}

fn scalar_from(descr: &str, b: &[u8]) -> Result<PyValue> {
    let (dt, big) = NpyDtype::parse_descr(descr)?;
    ensure!(
        b.len() == dt.size(),
        "numpy scalar {descr} has {} bytes",
        b.len()
    );
    let mut le = b.to_vec();
    if big {
        le.reverse();
    }
    let arr = super::npy::NpyArray {
        dtype: dt,
        shape: vec![],
        data: le,
    };
    Ok(match dt {
        NpyDtype::F32 | NpyDtype::F64 => PyValue::Float(arr.to_f64_vec()?[0]),
        NpyDtype::Bool => PyValue::Bool(arr.data[0] != 0),
        _ => PyValue::Int(arr.to_i64_vec()?[0]),
    })
}

/// Decodes a pickle stream. `base_offset` is added to byte offsets in error messages (pass
/// the offset of the pickle inside its file so that messages point into the file).
pub fn read_pickle(data: &[u8], base_offset: usize) -> Result<PyValue> {
    let mut m = Machine {
        data,
        pos: 0,
        base: base_offset,
        arena: Vec::new(),
        stack: Vec::new(),
        marks: Vec::new(),
        memo: HashMap::new(),
    };
    let top = m.run()?;
    m.resolve(top, 0)
}

// ---------------------------------------------------------------------------------------
// Writer
// ---------------------------------------------------------------------------------------

fn write_global(out: &mut Vec<u8>, module: &str, name: &str) {
    out.push(b'c');
    out.extend_from_slice(module.as_bytes());
    out.push(b'\n');
    out.extend_from_slice(name.as_bytes());
    out.push(b'\n');
}

fn write_str(out: &mut Vec<u8>, s: &str) {
    out.push(b'X');
    out.extend_from_slice(&(s.len() as u32).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn write_int(out: &mut Vec<u8>, v: i64) {
    if (0..256).contains(&v) {
        out.extend_from_slice(&[b'K', v as u8]);
    } else if (0..65536).contains(&v) {
        out.push(b'M');
        out.extend_from_slice(&(v as u16).to_le_bytes());
    } else if i32::try_from(v).is_ok() {
        out.push(b'J');
        out.extend_from_slice(&(v as i32).to_le_bytes());
    } else {
        out.extend_from_slice(&[0x8a, 8]);
        out.extend_from_slice(&v.to_le_bytes());
    }
}

fn write_dtype(out: &mut Vec<u8>, descr: &str) -> Result<()> {
    let (dt, big) = NpyDtype::parse_descr(descr)?;
    let code = if dt == NpyDtype::Object {
        "O8".to_owned()
    } else {
        dt.descr()[1..].to_owned()
    };
    let order = if dt.size() == 1 || dt == NpyDtype::Object {
        "|"
    } else if big {
        ">"
    } else {
        "<"
    };
    write_global(out, "numpy", "dtype");
    write_str(out, &code);
    out.extend_from_slice(&[0x89, 0x88, 0x87, b'R']); // (code, False, True) -> dtype(...)
    out.push(b'(');
    write_int(out, 3);
    write_str(out, order);
    out.extend_from_slice(b"NNN");
    write_int(out, -1);
    write_int(out, -1);
    write_int(out, if dt == NpyDtype::Object { 63 } else { 0 });
    out.extend_from_slice(b"tb");
    Ok(())
}

fn write_value(out: &mut Vec<u8>, v: &PyValue, depth: usize) -> Result<()> {
    ensure!(depth < 100, "value nesting too deep to pickle");
    match v {
        PyValue::None => out.push(b'N'),
        PyValue::Bool(b) => out.push(if *b { 0x88 } else { 0x89 }),
        PyValue::Int(i) => write_int(out, *i),
        PyValue::Float(f) => {
            out.push(b'G');
            out.extend_from_slice(&f.to_be_bytes());
        }
        PyValue::Str(s) => write_str(out, s),
        PyValue::Bytes(b) => {
            if b.len() < 256 {
                out.extend_from_slice(&[b'C', b.len() as u8]);
            } else {
                out.push(b'B');
                out.extend_from_slice(&u32::try_from(b.len())?.to_le_bytes());
            }
            out.extend_from_slice(b);
        }
        PyValue::List(items) => {
            out.push(b']');
            if !items.is_empty() {
                out.push(b'(');
                for it in items {
                    write_value(out, it, depth + 1)?;
                }
                out.push(b'e');
            }
        }
        PyValue::Tuple(items) => {
            if items.is_empty() {
                out.push(b')');
            } else if items.len() <= 3 {
                for it in items {
                    write_value(out, it, depth + 1)?;
                }
                out.push(0x84 + items.len() as u8);
            } else {
                out.push(b'(');
                for it in items {
                    write_value(out, it, depth + 1)?;
                }
                out.push(b't');
            }
        }
        PyValue::Dict(items) => {
            out.push(b'}');
            if !items.is_empty() {
                out.push(b'(');
                for (k, val) in items {
                    write_value(out, k, depth + 1)?;
                    write_value(out, val, depth + 1)?;
                }
                out.push(b'u');
            }
        }
        PyValue::Global { module, name } => write_global(out, module, name),
        PyValue::Dtype(descr) => write_dtype(out, descr)?,
        PyValue::Array(a) => {
            // numpy.core.multiarray._reconstruct(numpy.ndarray, (0,), b'b'), then
            // BUILD with (1, shape, dtype, is_fortran, data).
            write_global(out, "numpy.core.multiarray", "_reconstruct");
            write_global(out, "numpy", "ndarray");
            write_int(out, 0);
            out.push(0x85);
            out.extend_from_slice(&[b'C', 1, b'b']);
            out.extend_from_slice(&[0x87, b'R']);
            out.push(b'(');
            write_int(out, 1);
            let dims = PyValue::Tuple(a.shape.iter().map(|&d| PyValue::Int(d as i64)).collect());
            write_value(out, &dims, depth + 1)?;
            write_dtype(out, &a.descr)?;
            out.push(if a.fortran_order { 0x88 } else { 0x89 });
            let n: usize = a.shape.iter().product();
            match &a.data {
                NdData::Raw(b) => {
                    let (dt, _) = NpyDtype::parse_descr(&a.descr)?;
                    ensure!(
                        b.len() == n * dt.size(),
                        "array {:?} {} needs {} data bytes, has {}",
                        a.shape,
                        a.descr,
                        n * dt.size(),
                        b.len()
                    );
                    write_value(out, &PyValue::Bytes(b.clone()), depth + 1)?;
                }
                NdData::Objects(objs) => {
                    ensure!(
                        objs.len() == n,
                        "object array {:?} needs {n} elements, has {}",
                        a.shape,
                        objs.len()
                    );
                    write_value(out, &PyValue::List(objs.clone()), depth + 1)?;
                }
            }
            out.extend_from_slice(b"tb");
        }
        PyValue::Object {
            callable,
            args,
            state,
        } => {
            write_value(out, callable, depth + 1)?;
            write_value(out, args, depth + 1)?;
            out.push(b'R');
            if let Some(s) = state {
                write_value(out, s, depth + 1)?;
                out.push(b'b');
            }
        }
    }
    Ok(())
}

/// Encodes `value` as a protocol 3 pickle (what numpy 1.x `np.save` writes).
pub fn write_pickle(value: &PyValue) -> Result<Vec<u8>> {
    let mut out = vec![0x80, 3];
    write_value(&mut out, value, 0)?;
    out.push(b'.');
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let v = PyValue::Array(NdArray {
            descr: "|O".into(),
            shape: vec![],
            fortran_order: false,
            data: NdData::Objects(vec![PyValue::Dict(vec![
                (
                    PyValue::Str("a".into()),
                    PyValue::List(vec![PyValue::Int(-5)]),
                ),
                (
                    PyValue::Str("b".into()),
                    PyValue::Tuple(vec![PyValue::Int(1 << 40), PyValue::Float(0.5)]),
                ),
                (
                    PyValue::Str("e".into()),
                    PyValue::Array(NdArray {
                        descr: "<f4".into(),
                        shape: vec![2, 1, 2],
                        fortran_order: false,
                        data: NdData::Raw(vec![0; 16]),
                    }),
                ),
            ])]),
        });
        let bytes = write_pickle(&v).unwrap();
        assert_eq!(read_pickle(&bytes, 0).unwrap(), v);
    }

    #[test]
    fn unsupported_opcode_offset() {
        let err = read_pickle(&[0x80, 3, b'I', b'1', b'\n', b'.'], 100).unwrap_err();
        assert_eq!(
            err.to_string(),
            "unsupported pickle opcode 0x49 at byte 102"
        );
    }

    #[test]
    fn long_decoding() {
        assert_eq!(long_from_le(&[0xff]), Some(-1));
        assert_eq!(long_from_le(&[0x00, 0x01]), Some(256));
        assert_eq!(long_from_le(&[0, 0, 0, 0, 0, 0, 0, 0x80, 0]), None);
        assert_eq!(
            long_from_le(&[0, 0, 0, 0, 0, 0, 0, 0x80, 0xff]),
            Some(i64::MIN)
        );
    }
}
