//! Checkpoints in the safetensors format: named tensors, read without Python.
//!
//! A spconv model's weights leave PyTorch with two lines
//! (`from safetensors.torch import save_file; save_file(model.state_dict(), "model.safetensors")`)
//! and are read here into a [`Checkpoint`]. The format is an 8-byte little-endian header
//! length, a JSON header mapping each name to its dtype, shape and byte range, and the raw
//! little-endian data. Floating-point tensors (F16, BF16, F32, F64) are read as `f32`;
//! integer and boolean tensors as `i64`. Every malformed file is an [`Error::Format`] naming
//! the file and what is wrong; nothing panics on bad input.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use half::{bf16, f16};
use serde_json::{Map, Value};

use crate::error::{Error, Result};
use crate::tensor::SparseTensor;

/// The values of one stored tensor, converted to the two types the runtime computes with.
#[derive(Debug, Clone, PartialEq)]
pub enum Values {
    /// From F16, BF16, F32 or F64 (F64 is rounded to the nearest `f32`).
    Float(Vec<f32>),
    /// From BOOL, U8, I8, U16, I16, U32, I32, I64 or U64 (within `i64`).
    Int(Vec<i64>),
}

/// One named tensor of a checkpoint.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredTensor {
    /// The shape (empty for a scalar).
    pub shape: Vec<usize>,
    /// The dtype as the file names it (`F32`, `BF16`, `I64`, ...).
    pub dtype: String,
    /// The values, in C order.
    pub values: Values,
}

/// Named tensors and the file's `__metadata__`, keyed by name in sorted order.
#[derive(Debug, Clone, PartialEq)]
pub struct Checkpoint {
    origin: PathBuf,
    tensors: BTreeMap<String, StoredTensor>,
    metadata: BTreeMap<String, String>,
}

/// Element size in bytes of a safetensors dtype this reader converts, or `None`.
fn element_size(dtype: &str) -> Option<usize> {
    Some(match dtype {
        "BOOL" | "U8" | "I8" => 1,
        "F16" | "BF16" | "U16" | "I16" => 2,
        "F32" | "U32" | "I32" => 4,
        "F64" | "U64" | "I64" => 8,
        _ => return None,
    })
}

fn convert(dtype: &str, bytes: &[u8]) -> std::result::Result<Values, String> {
    fn chunks<const N: usize>(bytes: &[u8]) -> impl Iterator<Item = [u8; N]> + '_ {
        bytes.chunks_exact(N).map(|c| {
            let mut a = [0u8; N];
            a.copy_from_slice(c);
            a
        })
    }
    Ok(match dtype {
        "F32" => Values::Float(chunks::<4>(bytes).map(f32::from_le_bytes).collect()),
        "F16" => Values::Float(
            chunks::<2>(bytes)
                .map(|b| f16::from_le_bytes(b).to_f32())
                .collect(),
        ),
        "BF16" => Values::Float(
            chunks::<2>(bytes)
                .map(|b| bf16::from_le_bytes(b).to_f32())
                .collect(),
        ),
        "F64" => Values::Float(
            chunks::<8>(bytes)
                .map(|b| f64::from_le_bytes(b) as f32)
                .collect(),
        ),
        "BOOL" | "U8" => Values::Int(bytes.iter().map(|&b| i64::from(b)).collect()),
        "I8" => Values::Int(bytes.iter().map(|&b| i64::from(b as i8)).collect()),
        "U16" => Values::Int(
            chunks::<2>(bytes)
                .map(|b| i64::from(u16::from_le_bytes(b)))
                .collect(),
        ),
        "I16" => Values::Int(
            chunks::<2>(bytes)
                .map(|b| i64::from(i16::from_le_bytes(b)))
                .collect(),
        ),
        "U32" => Values::Int(
            chunks::<4>(bytes)
                .map(|b| i64::from(u32::from_le_bytes(b)))
                .collect(),
        ),
        "I32" => Values::Int(
            chunks::<4>(bytes)
                .map(|b| i64::from(i32::from_le_bytes(b)))
                .collect(),
        ),
        "I64" => Values::Int(chunks::<8>(bytes).map(i64::from_le_bytes).collect()),
        "U64" => Values::Int(
            chunks::<8>(bytes)
                .map(|b| i64::try_from(u64::from_le_bytes(b)))
                .collect::<std::result::Result<_, _>>()
                .map_err(|_| "a U64 value exceeds i64".to_string())?,
        ),
        other => return Err(format!("unsupported dtype {other}")),
    })
}

impl Default for Checkpoint {
    fn default() -> Self {
        Self::new()
    }
}

impl Checkpoint {
    /// An empty checkpoint (to fill with [`insert`](Self::insert) and [`write`](Self::write)).
    pub fn new() -> Self {
        Checkpoint {
            origin: PathBuf::from("<memory>"),
            tensors: BTreeMap::new(),
            metadata: BTreeMap::new(),
        }
    }

    /// Reads a `.safetensors` file.
    pub fn read(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|source| Error::Io {
            path: path.into(),
            source,
        })?;
        Self::from_bytes(&bytes, path)
    }

    /// Parses the bytes of a `.safetensors` file; `origin` names it in errors.
    pub fn from_bytes(bytes: &[u8], origin: impl AsRef<Path>) -> Result<Self> {
        let origin = origin.as_ref().to_path_buf();
        let bad = |message: String| Error::Format {
            path: origin.clone(),
            message,
        };
        let Some((len_bytes, rest)) = bytes.split_first_chunk::<8>() else {
            return Err(bad(format!(
                "{} bytes: too short for a safetensors header",
                bytes.len()
            )));
        };
        let header_len = u64::from_le_bytes(*len_bytes);
        let header_len = usize::try_from(header_len)
            .ok()
            .filter(|&n| n <= rest.len())
            .ok_or_else(|| {
                bad(format!(
                    "header length {header_len} exceeds the {} bytes that follow it",
                    rest.len()
                ))
            })?;
        let (header, data) = rest.split_at(header_len);
        let header: Map<String, Value> = serde_json::from_slice(header)
            .map_err(|e| bad(format!("the header is not a JSON object: {e}")))?;
        let mut checkpoint = Checkpoint {
            origin: origin.clone(),
            ..Checkpoint::new()
        };
        let mut ranges = Vec::with_capacity(header.len());
        for (name, entry) in header {
            if name == "__metadata__" {
                let Value::Object(meta) = entry else {
                    return Err(bad("__metadata__ is not an object".into()));
                };
                for (k, v) in meta {
                    let Value::String(v) = v else {
                        return Err(bad(format!("__metadata__.{k} is not a string")));
                    };
                    checkpoint.metadata.insert(k, v);
                }
                continue;
            }
            let field = |key: &str| {
                entry
                    .get(key)
                    .ok_or_else(|| bad(format!("tensor {name}: no {key}")))
            };
            let dtype = field("dtype")?
                .as_str()
                .ok_or_else(|| bad(format!("tensor {name}: dtype is not a string")))?
                .to_string();
            let numbers = |key: &str| -> Result<Vec<usize>> {
                field(key)?
                    .as_array()
                    .and_then(|a| {
                        a.iter()
                            .map(|v| v.as_u64().and_then(|n| usize::try_from(n).ok()))
                            .collect::<Option<Vec<usize>>>()
                    })
                    .ok_or_else(|| {
                        bad(format!(
                            "tensor {name}: {key} is not a list of non-negative integers"
                        ))
                    })
            };
            let shape = numbers("shape")?;
            let offsets = numbers("data_offsets")?;
            let &[begin, end] = offsets.as_slice() else {
                return Err(bad(format!(
                    "tensor {name}: data_offsets has {} entries, not 2",
                    offsets.len()
                )));
            };
            let size = element_size(&dtype)
                .ok_or_else(|| bad(format!("tensor {name}: unsupported dtype {dtype}")))?;
            let expected = shape
                .iter()
                .try_fold(size, |acc, &d| acc.checked_mul(d))
                .ok_or_else(|| bad(format!("tensor {name}: shape {shape:?} overflows")))?;
            if begin > end || end > data.len() || end - begin != expected {
                return Err(bad(format!(
                    "tensor {name}: bytes {begin}..{end} do not hold {dtype} {shape:?} ({expected} bytes) within the {} data bytes",
                    data.len()
                )));
            }
            ranges.push((begin, end, name.clone()));
            let values = convert(&dtype, &data[begin..end])
                .map_err(|m| bad(format!("tensor {name}: {m}")))?;
            checkpoint.tensors.insert(
                name,
                StoredTensor {
                    shape,
                    dtype,
                    values,
                },
            );
        }
        ranges.sort();
        for pair in ranges.windows(2) {
            if pair[1].0 < pair[0].1 {
                return Err(bad(format!(
                    "tensors {} and {} overlap",
                    pair[0].2, pair[1].2
                )));
            }
        }
        Ok(checkpoint)
    }

    /// Where the checkpoint came from (`<memory>` for one built in memory).
    pub fn origin(&self) -> &Path {
        &self.origin
    }

    /// Every tensor name, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.tensors.keys().map(String::as_str)
    }

    /// The file's `__metadata__` (string pairs).
    pub fn metadata(&self) -> &BTreeMap<String, String> {
        &self.metadata
    }

    /// The tensor called `name`, if any.
    pub fn get(&self, name: &str) -> Option<&StoredTensor> {
        self.tensors.get(name)
    }

    fn error(&self, message: String) -> Error {
        Error::Format {
            path: self.origin.clone(),
            message,
        }
    }

    /// The floating-point tensor `name` with its shape; an error names the file and the key
    /// when it is missing or holds integers.
    pub fn float(&self, name: &str) -> Result<(&[usize], &[f32])> {
        self.typed(name, "a floating-point", |v| match v {
            Values::Float(v) => Some(v),
            Values::Int(_) => None,
        })
    }

    /// The integer tensor `name` with its shape.
    pub fn int(&self, name: &str) -> Result<(&[usize], &[i64])> {
        self.typed(name, "an integer", |v| match v {
            Values::Int(v) => Some(v),
            Values::Float(_) => None,
        })
    }

    fn typed<'a, T>(
        &'a self,
        name: &str,
        kind: &str,
        pick: impl Fn(&'a Values) -> Option<&'a Vec<T>>,
    ) -> Result<(&'a [usize], &'a [T])> {
        let t = self
            .tensors
            .get(name)
            .ok_or_else(|| self.error(format!("no tensor {name}")))?;
        let values = pick(&t.values).ok_or_else(|| {
            self.error(format!("tensor {name} is {}, not {kind} tensor", t.dtype))
        })?;
        Ok((&t.shape, values))
    }

    /// Adds (or replaces) a tensor; stored as F32 or I64 by [`write`](Self::write). The
    /// number of values must match the shape.
    pub fn insert(
        &mut self,
        name: impl Into<String>,
        shape: Vec<usize>,
        values: Values,
    ) -> Result<()> {
        let name = name.into();
        let count = match &values {
            Values::Float(v) => v.len(),
            Values::Int(v) => v.len(),
        };
        let numel: usize = shape.iter().product();
        if count != numel {
            return Err(self.error(format!(
                "tensor {name}: {count} values do not fill shape {shape:?}"
            )));
        }
        let dtype = match values {
            Values::Float(_) => "F32",
            Values::Int(_) => "I64",
        }
        .to_string();
        self.tensors.insert(
            name,
            StoredTensor {
                shape,
                dtype,
                values,
            },
        );
        Ok(())
    }

    /// Sets a `__metadata__` entry.
    pub fn set_metadata(&mut self, key: impl Into<String>, value: impl Into<String>) {
        self.metadata.insert(key.into(), value.into());
    }

    /// The file's bytes: floats as F32, integers as I64, names in sorted order, the header
    /// padded with spaces to a multiple of 8 bytes (as the reference implementation does).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut header = Map::new();
        if !self.metadata.is_empty() {
            header.insert(
                "__metadata__".into(),
                Value::Object(
                    self.metadata
                        .iter()
                        .map(|(k, v)| (k.clone(), Value::String(v.clone())))
                        .collect(),
                ),
            );
        }
        let mut data = Vec::new();
        for (name, t) in &self.tensors {
            let begin = data.len();
            let dtype = match &t.values {
                Values::Float(v) => {
                    v.iter().for_each(|x| data.extend(x.to_le_bytes()));
                    "F32"
                }
                Values::Int(v) => {
                    v.iter().for_each(|x| data.extend(x.to_le_bytes()));
                    "I64"
                }
            };
            header.insert(
                name.clone(),
                serde_json::json!({
                    "dtype": dtype,
                    "shape": t.shape,
                    "data_offsets": [begin, data.len()],
                }),
            );
        }
        let mut header = Value::Object(header).to_string().into_bytes();
        header.resize(header.len().next_multiple_of(8), b' ');
        let mut bytes = Vec::with_capacity(8 + header.len() + data.len());
        bytes.extend((header.len() as u64).to_le_bytes());
        bytes.extend(header);
        bytes.extend(data);
        bytes
    }

    /// Stores a sparse tensor as `{name}.coords` (I64 `[N, 1 + dims]`, batch first) and
    /// `{name}.features` (`[N, C]`), with its spatial shape and batch size in the metadata
    /// (`spatial_shape` as `"z,y,x"`, `batch_size`): the layout spconv-side scripts read
    /// with `safetensors` and [`sparse_tensor`](Self::sparse_tensor) reads back.
    pub fn insert_sparse_tensor(&mut self, name: &str, x: &SparseTensor) -> Result<()> {
        let coords = x.coords().iter().map(|&c| i64::from(c)).collect();
        self.insert(
            format!("{name}.coords"),
            vec![x.len(), x.dims() + 1],
            Values::Int(coords),
        )?;
        self.insert(
            format!("{name}.features"),
            vec![x.len(), x.channels()],
            Values::Float(x.features().to_vec()),
        )?;
        let shape: Vec<String> = x.spatial_shape().iter().map(u32::to_string).collect();
        self.set_metadata("spatial_shape", shape.join(","));
        self.set_metadata("batch_size", x.batch_size().to_string());
        Ok(())
    }

    /// The sparse tensor stored as `{name}.coords` and `{name}.features` with the
    /// `spatial_shape` and `batch_size` metadata (see
    /// [`insert_sparse_tensor`](Self::insert_sparse_tensor)); validated like any input.
    pub fn sparse_tensor(&self, name: &str) -> Result<SparseTensor> {
        let meta = |key: &str| {
            self.metadata
                .get(key)
                .ok_or_else(|| self.error(format!("no {key} in the metadata")))
        };
        let bad = |key: &str| self.error(format!("the metadata's {key} is not a number list"));
        let shape = meta("spatial_shape")?
            .split(',')
            .map(|v| v.trim().parse::<u32>())
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|_| bad("spatial_shape"))?;
        let batch = meta("batch_size")?
            .trim()
            .parse::<u32>()
            .map_err(|_| bad("batch_size"))?;
        let (_, coords) = self.int(&format!("{name}.coords"))?;
        let coords = coords
            .iter()
            .map(|&c| i32::try_from(c))
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|_| self.error(format!("{name}.coords holds values beyond i32")))?;
        let (fshape, features) = self.float(&format!("{name}.features"))?;
        let channels = match fshape {
            [_, c] => *c,
            other => {
                return Err(self.error(format!("{name}.features has shape {other:?}, not [N, C]")));
            }
        };
        Ok(SparseTensor::new(
            coords,
            features.to_vec(),
            channels,
            &shape,
            batch,
        )?)
    }

    /// Writes the checkpoint as a `.safetensors` file.
    pub fn write(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        std::fs::write(path, self.to_bytes()).map_err(|source| Error::Io {
            path: path.into(),
            source,
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn sample() -> Checkpoint {
        let mut c = Checkpoint::new();
        c.insert(
            "conv.weight",
            vec![2, 1, 3],
            Values::Float(vec![1.0, -2.5, 3.0, 0.0, f32::MIN_POSITIVE, 7.0]),
        )
        .unwrap();
        c.insert("bn.num_batches_tracked", vec![], Values::Int(vec![12]))
            .unwrap();
        c.set_metadata("format", "pt");
        c
    }

    #[test]
    fn round_trips_through_bytes() {
        let c = sample();
        let bytes = c.to_bytes();
        let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        assert_eq!(header_len % 8, 0, "header padded to 8 bytes");
        let back = Checkpoint::from_bytes(&bytes, "x.safetensors").unwrap();
        assert_eq!(back.tensors, c.tensors);
        assert_eq!(back.metadata, c.metadata);
        assert_eq!(back.float("conv.weight").unwrap().0, &[2, 1, 3]);
        assert_eq!(back.int("bn.num_batches_tracked").unwrap().1, &[12]);
    }

    /// A file as PyTorch's `save_file` writes it, with half-precision and int32 tensors.
    #[test]
    fn reads_other_dtypes() {
        let mut data = Vec::new();
        for x in [1.5f32, -0.25] {
            data.extend(f16::from_f32(x).to_le_bytes());
        }
        for x in [3.0f32, -4.0] {
            data.extend(bf16::from_f32(x).to_le_bytes());
        }
        data.extend(0.1f64.to_le_bytes());
        data.extend((-7i32).to_le_bytes());
        data.extend([1u8, 0u8]);
        let header = r#"{"h":{"dtype":"F16","shape":[2],"data_offsets":[0,4]},"b":{"dtype":"BF16","shape":[2],"data_offsets":[4,8]},"d":{"dtype":"F64","shape":[],"data_offsets":[8,16]},"i":{"dtype":"I32","shape":[1,1],"data_offsets":[16,20]},"m":{"dtype":"BOOL","shape":[2],"data_offsets":[20,22]}}"#;
        let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
        bytes.extend(header.as_bytes());
        bytes.extend(data);
        let c = Checkpoint::from_bytes(&bytes, "t").unwrap();
        assert_eq!(c.float("h").unwrap().1, &[1.5, -0.25]);
        assert_eq!(c.float("b").unwrap().1, &[3.0, -4.0]);
        assert_eq!(c.float("d").unwrap(), (&[][..], &[0.1f32][..]));
        assert_eq!(c.int("i").unwrap(), (&[1, 1][..], &[-7i64][..]));
        assert_eq!(c.int("m").unwrap().1, &[1, 0]);
        assert_eq!(c.names().collect::<Vec<_>>(), ["b", "d", "h", "i", "m"]);
    }

    #[test]
    fn sparse_tensors_round_trip() {
        let x = SparseTensor::new(
            vec![0, 1, 2, 1, 0, 3],
            vec![1.5, -2.0, 0.25, 4.0],
            2,
            &[4, 5],
            2,
        )
        .unwrap();
        let mut c = Checkpoint::new();
        c.insert_sparse_tensor("io", &x).unwrap();
        let back = Checkpoint::from_bytes(&c.to_bytes(), "t").unwrap();
        let y = back.sparse_tensor("io").unwrap();
        assert_eq!(
            (y.coords(), y.features(), y.spatial_shape(), y.batch_size()),
            (x.coords(), x.features(), x.spatial_shape(), 2)
        );
        assert!(back.sparse_tensor("other").is_err());
        assert!(
            Checkpoint::new()
                .sparse_tensor("io")
                .unwrap_err()
                .to_string()
                .contains("no spatial_shape")
        );
    }

    #[test]
    fn malformed_files_are_errors_not_panics() {
        let good = sample().to_bytes();
        let header_len = u64::from_le_bytes(good[..8].try_into().unwrap()) as usize;
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (vec![1, 2, 3], "too short"),
            (
                [u64::MAX.to_le_bytes().as_slice(), b"{}"].concat(),
                "exceeds",
            ),
            (
                [8u64.to_le_bytes().as_slice(), b"not json"].concat(),
                "JSON",
            ),
            (good[..good.len() - 1].to_vec(), "do not hold"),
            (
                {
                    let h = br#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,4]}}"#;
                    [&(h.len() as u64).to_le_bytes()[..], h, &[0; 8]].concat()
                },
                "do not hold",
            ),
            (
                {
                    let h = br#"{"a":{"dtype":"C64","shape":[1],"data_offsets":[0,8]}}"#;
                    [&(h.len() as u64).to_le_bytes()[..], h, &[0; 8]].concat()
                },
                "unsupported dtype",
            ),
            (
                {
                    let h = br#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"b":{"dtype":"F32","shape":[1],"data_offsets":[2,6]}}"#;
                    [&(h.len() as u64).to_le_bytes()[..], h, &[0; 8]].concat()
                },
                "overlap",
            ),
            (
                {
                    let h = br#"{"a":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}}"#;
                    [&(h.len() as u64).to_le_bytes()[..], h, &[0; 4]].concat()
                },
                "non-negative",
            ),
        ];
        assert!(header_len > 0);
        for (bytes, want) in cases {
            let e = Checkpoint::from_bytes(&bytes, "bad.safetensors").unwrap_err();
            let text = e.to_string();
            assert!(
                text.starts_with("bad.safetensors: ") && text.contains(want),
                "{text:?} should mention {want:?}"
            );
        }
        let c = sample();
        assert!(
            c.float("bn.num_batches_tracked")
                .unwrap_err()
                .to_string()
                .contains("not a floating-point")
        );
        assert!(
            c.float("missing")
                .unwrap_err()
                .to_string()
                .contains("no tensor missing")
        );
        assert!(
            Checkpoint::new()
                .insert("x", vec![2, 2], Values::Float(vec![0.0; 3]))
                .is_err()
        );
    }
}
