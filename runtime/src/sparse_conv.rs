//! `SparseConv`: a validated layer spec with its weights, and its forward pass.

use sparsegen_codegen::{ConvKind, LayerSpec};

use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::tensor::SparseTensor;

/// One sparse convolution layer: spec, weights in spconv's KRSC layout
/// `[Cout, K0, .., K{dims-1}, Cin/groups]`, optional bias `[Cout]`.
#[derive(Debug, Clone)]
pub struct SparseConv {
    spec: LayerSpec,
    name: String,
    weight: Vec<f32>,
    bias: Option<Vec<f32>>,
}

impl SparseConv {
    /// A layer from a spec and its weights. Validates the spec and the buffer sizes; a spec
    /// with `bias: true` needs a bias and one without must not get one.
    pub fn new(spec: LayerSpec, weight: Vec<f32>, bias: Option<Vec<f32>>) -> Result<Self> {
        spec.validate()?;
        let name = spec.kernel_name();
        if weight.len() != spec.weight_len() {
            return Err(Error::WeightShape {
                layer: name,
                what: "weight",
                expected: spec.weight_len(),
                got: weight.len(),
                shape: spec.weight_shape(),
            });
        }
        let cout = spec.out_channels as usize;
        match (&bias, spec.bias) {
            (Some(b), true) if b.len() == cout => {}
            (None, false) => {}
            (b, _) => {
                return Err(Error::WeightShape {
                    layer: name,
                    what: "bias",
                    expected: if spec.bias { cout } else { 0 },
                    got: b.as_ref().map_or(0, Vec::len),
                    shape: vec![if spec.bias { cout } else { 0 }],
                });
            }
        }
        Ok(SparseConv {
            spec,
            name,
            weight,
            bias,
        })
    }

    /// A layer from weights exactly as spconv 2.3.8 stores them in a checkpoint, computing
    /// what spconv computes with them.
    ///
    /// spconv keeps every weight as KRSC `[Cout, K.., Cin]`, but runs a layer with a single
    /// kernel offset as a plain matrix product (its `conv1x1` path, see
    /// [`spconv_runs_as_matmul`](Self::spconv_runs_as_matmul)) that reads that memory as
    /// `[Cin, Cout]`. A model trained there learned its 1×1 weights under that reading, so
    /// this constructor transposes them into the true KRSC layout; every other layer's
    /// weights are taken as they are. Use [`new`](Self::new) for weights that already mean
    /// KRSC.
    pub fn from_spconv(spec: LayerSpec, weight: Vec<f32>, bias: Option<Vec<f32>>) -> Result<Self> {
        Self::new(spec, Self::spconv_weight_as_krsc(&spec, weight), bias)
    }

    /// spconv 2.3.8's weight memory for `spec` as the KRSC weights that compute the same:
    /// transposed from `[Cin, Cout]` for a layer spconv runs as a matrix product, unchanged
    /// otherwise (and unchanged if its length does not fit the spec, which
    /// [`new`](Self::new) then reports).
    pub fn spconv_weight_as_krsc(spec: &LayerSpec, weight: Vec<f32>) -> Vec<f32> {
        if !Self::spconv_runs_as_matmul(spec) || weight.len() != spec.weight_len() {
            return weight;
        }
        let (cin, cout) = (spec.in_channels as usize, spec.out_channels as usize);
        // spconv's effective matrix is m[i][o] = memory[i · Cout + o]; KRSC is w[o][i].
        (0..cout)
            .flat_map(|o| (0..cin).map(move |i| (o, i)))
            .map(|(o, i)| weight[i * cout + o])
            .collect()
    }

    /// Whether spconv 2.3.8 runs this layer through its `conv1x1` matrix-product path: one
    /// kernel offset, stride 1 unless submanifold, a single group (spconv has no groups).
    pub fn spconv_runs_as_matmul(spec: &LayerSpec) -> bool {
        let unit_stride = spec.stride[..spec.dims()].iter().all(|&s| s == 1);
        spec.kernel_volume() == 1
            && spec.groups == 1
            && match spec.kind {
                ConvKind::Submanifold | ConvKind::Inverse => true,
                ConvKind::Strided | ConvKind::Transposed => unit_stride,
            }
    }

    /// A layer with all-zero weights (and bias), e.g. to fill from a checkpoint later.
    pub fn zeros(spec: LayerSpec) -> Result<Self> {
        let bias = spec.bias.then(|| vec![0.0; spec.out_channels as usize]);
        Self::new(spec, vec![0.0; spec.weight_len()], bias)
    }

    /// A layer with seeded uniform weights in `±1/√(K·Cin/groups)` (PyTorch's default bound)
    /// and, if the spec has one, a seeded bias in the same range: deterministic weights for
    /// examples, tests and benchmarks.
    pub fn seeded(spec: LayerSpec, seed: u64) -> Result<Self> {
        let bound = 1.0 / ((spec.kernel_volume() * spec.in_per_group() as usize) as f32).sqrt();
        let weight = crate::init::uniform(seed, spec.weight_len(), bound);
        let bias = spec
            .bias
            .then(|| crate::init::uniform(seed ^ 0xB1A5, spec.out_channels as usize, bound));
        Self::new(spec, weight, bias)
    }

    /// The spec.
    pub fn spec(&self) -> &LayerSpec {
        &self.spec
    }

    /// The kernel name of the spec (used in errors).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Weights, KRSC.
    pub fn weight(&self) -> &[f32] {
        &self.weight
    }

    /// Bias, if any.
    pub fn bias(&self) -> Option<&[f32]> {
        self.bias.as_deref()
    }

    /// Runs the layer on `input` with `engine`'s rulebook cache and backend.
    pub fn forward(&self, engine: &Engine, input: &SparseTensor) -> Result<SparseTensor> {
        let spec = &self.spec;
        if input.dims() != spec.dims() {
            return Err(Error::Dims {
                layer: self.name.clone(),
                expected: spec.dims(),
                got: input.dims(),
            });
        }
        if input.channels() != spec.in_channels as usize {
            return Err(Error::Channels {
                layer: self.name.clone(),
                expected: spec.in_channels as usize,
                got: input.channels(),
            });
        }
        let rulebook =
            engine
                .rulebooks()
                .get_or_build(input.coord_set(), &spec.geometry(), &self.name)?;
        let features = engine.backend().conv(self, &rulebook, input.features())?;
        let stride: Vec<u32> = input
            .tensor_stride()
            .iter()
            .zip(&spec.stride)
            .map(|(&t, &s)| match spec.kind {
                ConvKind::Submanifold => t,
                ConvKind::Strided => t * s,
                ConvKind::Inverse | ConvKind::Transposed => (t / s).max(1),
            })
            .collect();
        Ok(SparseTensor::on(
            rulebook.output().clone(),
            features,
            spec.out_channels as usize,
        )?
        .with_tensor_stride(stride))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use sparsegen_codegen::{ConvKind, LayerSpec};

    use super::SparseConv;

    fn spec(kind: ConvKind, kernel: u32, stride: u32) -> LayerSpec {
        let b = LayerSpec::builder(kind, 3).channels(2, 3).kernel(kernel);
        match kind {
            ConvKind::Submanifold => b,
            _ => b.stride(stride),
        }
        .build()
        .unwrap()
    }

    /// spconv 2.3.8's `conv1x1` rule: one offset, and stride 1 unless submanifold.
    #[test]
    fn which_layers_spconv_runs_as_a_matrix_product() {
        assert!(SparseConv::spconv_runs_as_matmul(&spec(
            ConvKind::Submanifold,
            1,
            1
        )));
        assert!(SparseConv::spconv_runs_as_matmul(&spec(
            ConvKind::Strided,
            1,
            1
        )));
        assert!(!SparseConv::spconv_runs_as_matmul(&spec(
            ConvKind::Strided,
            1,
            2
        )));
        assert!(!SparseConv::spconv_runs_as_matmul(&spec(
            ConvKind::Submanifold,
            3,
            1
        )));
        assert!(!SparseConv::spconv_runs_as_matmul(&spec(
            ConvKind::Strided,
            2,
            2
        )));
    }

    /// spconv's memory `[Cin, Cout]` = 0..6 becomes KRSC `w[o][i] = memory[i·Cout + o]`.
    #[test]
    fn spconv_1x1_memory_is_transposed_into_krsc() {
        let memory: Vec<f32> = (0..6).map(|v| v as f32).collect();
        let subm = spec(ConvKind::Submanifold, 1, 1);
        let conv = SparseConv::from_spconv(subm, memory.clone(), None).unwrap();
        assert_eq!(conv.weight(), &[0.0, 3.0, 1.0, 4.0, 2.0, 5.0]);
        // A strided 1×1 conv with stride 2 goes through spconv's gather path: unchanged.
        let strided = spec(ConvKind::Strided, 1, 2);
        let conv = SparseConv::from_spconv(strided, memory.clone(), None).unwrap();
        assert_eq!(conv.weight(), &memory[..]);
        // A wrong length is reported by `new`, not hidden by the transposition.
        assert!(SparseConv::from_spconv(subm, vec![0.0; 5], None).is_err());
    }
}
