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
