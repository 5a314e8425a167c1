//! [`Network`]: a backbone described as a list of named nodes, with its weights read from a
//! spconv checkpoint.
//!
//! A model trained in spconv is a `SparseSequential` of convolutions, `BatchNorm1d` and ReLU,
//! plus residual additions and U-Net concatenations in its `forward`. The same model is
//! described here with a [`NetworkBuilder`] whose node names are the checkpoint's keys
//! (`conv("stem.0", spec)` reads `stem.0.weight`, and `stem.0.bias` when the spec has a
//! bias), and [`NetworkBuilder::load`] reads every weight from a [`Checkpoint`]:
//!
//! - a batch norm directly after a convolution is folded into its weights and bias (in
//!   f64, then rounded once), so inference pays nothing for it;
//! - an activation directly after that is fused into the convolution's epilogue;
//! - sparse max pooling ([`NetworkBuilder::max_pool`]) follows spconv, zero floor included;
//! - loading is strict, like PyTorch's `load_state_dict(strict=True)`: a missing key, a
//!   shape that is not spconv 2.x's `[Cout, K.., Cin/groups]`, or a checkpoint key under
//!   the builder's prefix that no node reads (other than `num_batches_tracked`) is an error
//!   naming the node and the key;
//! - channel counts are checked node by node when loading, not when running.
//!
//! ```
//! use sparsegen_codegen::{ConvKind, LayerSpec};
//! use sparsegen_runtime::io::safetensors::{Checkpoint, Values};
//! use sparsegen_runtime::{Engine, NetworkBuilder, SparseTensor};
//!
//! let subm = |cin, cout| LayerSpec::builder(ConvKind::Submanifold, 3).channels(cin, cout).build();
//! let mut checkpoint = Checkpoint::new(); // normally Checkpoint::read("model.safetensors")?
//! checkpoint.insert("conv.weight", vec![2, 3, 3, 3, 1], Values::Float(vec![0.1; 54]))?;
//! for (key, value) in [("weight", 2.0), ("bias", 0.5), ("running_mean", 0.0), ("running_var", 1.0)] {
//!     checkpoint.insert(format!("bn.{key}"), vec![2], Values::Float(vec![value; 2]))?;
//! }
//! let net = NetworkBuilder::new(1)
//!     .conv("conv", subm(1, 2)?)
//!     .batch_norm("bn", 1e-3)
//!     .relu()
//!     .load(&checkpoint)?;
//! assert_eq!(net.convs().count(), 1); // batch norm and ReLU are folded into the convolution
//! let x = SparseTensor::new(vec![0, 1, 1, 1], vec![1.0], 1, &[4, 4, 4], 1)?;
//! let y = net.forward(&Engine::reference(), &x)?;
//! assert_eq!(y.channels(), 2);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::borrow::Cow;
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use rayon::prelude::*;
use sparsegen_codegen::{Activation, ConvKind, Extent, LayerSpec};

use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::io::safetensors::Checkpoint;
use crate::sparse_conv::SparseConv;
use crate::tensor::SparseTensor;

/// One node of a network description.
#[derive(Debug, Clone)]
enum Node {
    Conv {
        name: String,
        spec: LayerSpec,
    },
    BatchNorm {
        name: String,
        eps: f32,
    },
    Activation(Activation),
    Save(String),
    Add(String),
    Concat {
        tag: String,
        saved_first: bool,
    },
    MaxPool {
        dims: usize,
        kernel: Extent,
        stride: Extent,
        padding: Extent,
    },
}

/// A network description: nodes in execution order, named by their checkpoint keys.
#[derive(Debug, Clone)]
pub struct NetworkBuilder {
    in_channels: usize,
    prefix: String,
    nodes: Vec<Node>,
}

impl NetworkBuilder {
    /// An empty network taking `in_channels` features per site.
    pub fn new(in_channels: usize) -> Self {
        NetworkBuilder {
            in_channels,
            prefix: String::new(),
            nodes: Vec::new(),
        }
    }

    /// Looks every key up as `prefix + name` (e.g. `"backbone."` to load a backbone out of
    /// a whole detector's checkpoint). Strict loading then covers the keys under the prefix.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// A convolution whose weight is `name.weight` in spconv 2.x's layout
    /// `[Cout, K0, .., K{dims-1}, Cin/groups]` (and bias `name.bias` if `spec.bias`).
    pub fn conv(mut self, name: impl Into<String>, spec: LayerSpec) -> Self {
        self.nodes.push(Node::Conv {
            name: name.into(),
            spec,
        });
        self
    }

    /// A `BatchNorm1d` in inference mode: `name.weight`, `name.bias`, `name.running_mean`,
    /// `name.running_var`, with the `eps` it was trained with (PyTorch's default is 1e-5;
    /// spconv models often use 1e-3).
    pub fn batch_norm(mut self, name: impl Into<String>, eps: f32) -> Self {
        self.nodes.push(Node::BatchNorm {
            name: name.into(),
            eps,
        });
        self
    }

    /// An element-wise activation.
    pub fn activation(mut self, activation: Activation) -> Self {
        self.nodes.push(Node::Activation(activation));
        self
    }

    /// `max(x, 0)`.
    pub fn relu(self) -> Self {
        self.activation(Activation::Relu)
    }

    /// Remembers the current tensor as `tag`, for a later [`add_saved`](Self::add_saved) or
    /// [`concat_saved`](Self::concat_saved).
    pub fn save(mut self, tag: impl Into<String>) -> Self {
        self.nodes.push(Node::Save(tag.into()));
        self
    }

    /// Adds the tensor saved as `tag` (a residual connection); both must have the same
    /// sites and channels.
    pub fn add_saved(mut self, tag: impl Into<String>) -> Self {
        self.nodes.push(Node::Add(tag.into()));
        self
    }

    /// Concatenates channels `[current, saved]` with the tensor saved as `tag` (a U-Net
    /// skip; `torch.cat([x, skip], 1)`). Both must have the same sites.
    pub fn concat_saved(mut self, tag: impl Into<String>) -> Self {
        self.nodes.push(Node::Concat {
            tag: tag.into(),
            saved_first: false,
        });
        self
    }

    /// Concatenates channels `[saved, current]` (`torch.cat([skip, x], 1)`).
    pub fn concat_saved_before(mut self, tag: impl Into<String>) -> Self {
        self.nodes.push(Node::Concat {
            tag: tag.into(),
            saved_first: true,
        });
        self
    }

    /// spconv's `SparseMaxPool{dims}d(kernel, stride, padding)`: the output sites of a
    /// strided conv of that geometry, each channel the maximum over the site's inputs and
    /// **zero**, as spconv computes it (its pooled features start at 0, so an all-negative
    /// window gives 0, not its maximum; after a ReLU the two agree).
    pub fn max_pool(
        mut self,
        dims: usize,
        kernel: impl Into<Extent>,
        stride: impl Into<Extent>,
        padding: impl Into<Extent>,
    ) -> Self {
        self.nodes.push(Node::MaxPool {
            dims,
            kernel: kernel.into(),
            stride: stride.into(),
            padding: padding.into(),
        });
        self
    }

    /// Reads every node's weights from `checkpoint`, folds batch norms and activations into
    /// the convolutions before them, checks channels node by node, and fails on checkpoint
    /// keys under the prefix that no node reads.
    pub fn load(&self, checkpoint: &Checkpoint) -> Result<Network> {
        let mut loader = Loader {
            checkpoint,
            prefix: &self.prefix,
            used: BTreeSet::new(),
        };
        let mut steps = Vec::new();
        let mut channels = self.in_channels;
        let mut saved: HashMap<&str, usize> = HashMap::new();
        let mut nodes = self.nodes.iter().peekable();
        while let Some(node) = nodes.next() {
            match node {
                Node::Conv { name, spec } => {
                    let mut spec = *spec;
                    let mut label = name.clone();
                    if spec.in_channels as usize != channels {
                        return Err(network(
                            name,
                            format!(
                                "takes {} input channels but the network carries {channels} here",
                                spec.in_channels
                            ),
                        ));
                    }
                    // spconv's own reading of its weight memory (1×1 layers), as true KRSC.
                    let mut weight = SparseConv::spconv_weight_as_krsc(
                        &spec,
                        loader.tensor(name, "weight", &spec.weight_shape())?,
                    );
                    let cout = spec.out_channels as usize;
                    let mut bias = match spec.bias {
                        true => Some(loader.tensor(name, "bias", &[cout])?),
                        false => None,
                    };
                    if spec.activation == Activation::Identity
                        && let Some(Node::BatchNorm { name: bn, eps }) = nodes.peek()
                    {
                        let (scale, shift) = loader.batch_norm(bn, *eps, cout)?;
                        let per_out = weight.len() / cout;
                        for (c, w) in weight.chunks_exact_mut(per_out).enumerate() {
                            w.iter_mut()
                                .for_each(|v| *v = (f64::from(*v) * scale[c]) as f32);
                        }
                        bias = Some(
                            (0..cout)
                                .map(|c| {
                                    let b = bias.as_ref().map_or(0.0, |b| f64::from(b[c]));
                                    (b * scale[c] + shift[c]) as f32
                                })
                                .collect(),
                        );
                        spec.bias = true;
                        label = format!("{label}+{bn}");
                        nodes.next();
                    }
                    if spec.activation == Activation::Identity
                        && let Some(Node::Activation(a)) = nodes.peek()
                    {
                        spec.activation = *a;
                        label = format!("{label}+{}", activation_name(*a));
                        nodes.next();
                    }
                    let conv =
                        SparseConv::new(spec, weight, bias).map_err(|e| node_error(name, e))?;
                    channels = cout;
                    steps.push(Step::Conv { label, conv });
                }
                Node::BatchNorm { name, eps } => {
                    let (scale, shift) = loader.batch_norm(name, *eps, channels)?;
                    steps.push(Step::Affine {
                        scale: scale.iter().map(|&s| s as f32).collect(),
                        shift: shift.iter().map(|&s| s as f32).collect(),
                    });
                }
                Node::Activation(a) => steps.push(Step::Activation(*a)),
                Node::Save(tag) => {
                    if saved.insert(tag, channels).is_some() {
                        return Err(network(tag, "this tag is saved twice".into()));
                    }
                    steps.push(Step::Save(tag.clone()));
                }
                Node::Add(tag) => {
                    let &c = saved.get(tag.as_str()).ok_or_else(|| {
                        network(tag, "add of a tag that is not saved before".into())
                    })?;
                    if c != channels {
                        return Err(network(
                            tag,
                            format!("add of {c} saved channels to {channels}"),
                        ));
                    }
                    steps.push(Step::Add(tag.clone()));
                }
                Node::MaxPool {
                    dims,
                    kernel,
                    stride,
                    padding,
                } => {
                    let c = u32::try_from(channels).unwrap_or(u32::MAX);
                    let spec = LayerSpec::builder(ConvKind::Strided, *dims)
                        .channels(c, c)
                        .kernel(kernel.clone())
                        .stride(stride.clone())
                        .padding(padding.clone())
                        .build()
                        .map_err(|e| network("max_pool", e.to_string()))?;
                    steps.push(Step::MaxPool { spec });
                }
                Node::Concat { tag, saved_first } => {
                    let &c = saved.get(tag.as_str()).ok_or_else(|| {
                        network(tag, "concat of a tag that is not saved before".into())
                    })?;
                    channels += c;
                    steps.push(Step::Concat {
                        tag: tag.clone(),
                        saved_first: *saved_first,
                    });
                }
            }
        }
        let unused: Vec<&str> = checkpoint
            .names()
            .filter(|k| k.starts_with(&self.prefix))
            .filter(|k| !loader.used.contains(*k) && !k.ends_with(".num_batches_tracked"))
            .collect();
        if !unused.is_empty() {
            return Err(Error::Format {
                path: checkpoint.origin().into(),
                message: format!(
                    "{} key(s) under prefix {:?} that no node reads: {}{}",
                    unused.len(),
                    self.prefix,
                    unused[..unused.len().min(8)].join(", "),
                    if unused.len() > 8 { ", ..." } else { "" }
                ),
            });
        }
        Ok(Network {
            in_channels: self.in_channels,
            out_channels: channels,
            steps,
        })
    }
}

fn activation_name(a: Activation) -> String {
    match a {
        Activation::Identity => "identity".into(),
        Activation::Relu => "relu".into(),
        Activation::Relu6 => "relu6".into(),
        Activation::LeakyRelu {
            negative_slope_bits,
        } => format!("leaky_relu({})", f32::from_bits(negative_slope_bits)),
    }
}

fn network(node: &str, message: String) -> Error {
    Error::Network {
        node: node.to_string(),
        message,
    }
}

fn node_error(node: &str, source: Error) -> Error {
    Error::Node {
        node: node.to_string(),
        source: Box::new(source),
    }
}

/// Reads tensors by node and records which keys were read.
struct Loader<'a> {
    checkpoint: &'a Checkpoint,
    prefix: &'a str,
    used: BTreeSet<String>,
}

impl Loader<'_> {
    fn tensor(&mut self, node: &str, field: &str, shape: &[usize]) -> Result<Vec<f32>> {
        let key = format!("{}{node}.{field}", self.prefix);
        let (got, values) = self.checkpoint.float(&key)?;
        if got != shape {
            let hint = if field == "weight" && got.len() == shape.len() {
                " (spconv 2.x stores convolution weights as [Cout, K.., Cin/groups])"
            } else {
                ""
            };
            return Err(Error::Format {
                path: self.checkpoint.origin().into(),
                message: format!(
                    "node {node}: {key} has shape {got:?}, the layer needs {shape:?}{hint}"
                ),
            });
        }
        self.used.insert(key);
        Ok(values.to_vec())
    }

    /// A batch norm as `y = x·scale + shift` per channel, in f64.
    fn batch_norm(
        &mut self,
        node: &str,
        eps: f32,
        channels: usize,
    ) -> Result<(Vec<f64>, Vec<f64>)> {
        let gamma = self.tensor(node, "weight", &[channels])?;
        let beta = self.tensor(node, "bias", &[channels])?;
        let mean = self.tensor(node, "running_mean", &[channels])?;
        let var = self.tensor(node, "running_var", &[channels])?;
        self.used
            .insert(format!("{}{node}.num_batches_tracked", self.prefix));
        if !eps.is_finite() || eps < 0.0 || var.iter().any(|&v| v.is_nan() || v < 0.0) {
            return Err(network(
                node,
                format!("batch norm needs eps ≥ 0 and running_var ≥ 0 (eps {eps})"),
            ));
        }
        let scale: Vec<f64> = (0..channels)
            .map(|c| f64::from(gamma[c]) / (f64::from(var[c]) + f64::from(eps)).sqrt())
            .collect();
        let shift = (0..channels)
            .map(|c| f64::from(beta[c]) - f64::from(mean[c]) * scale[c])
            .collect();
        Ok((scale, shift))
    }
}

/// One step of a loaded network.
#[derive(Debug, Clone)]
enum Step {
    Conv {
        label: String,
        conv: SparseConv,
    },
    Affine {
        scale: Vec<f32>,
        shift: Vec<f32>,
    },
    Activation(Activation),
    Save(String),
    Add(String),
    Concat {
        tag: String,
        saved_first: bool,
    },
    /// Geometry only: a strided spec with the pooled channels in and out.
    MaxPool {
        spec: LayerSpec,
    },
}

/// A loaded network: convolutions with folded batch norms and fused activations, and the
/// element-wise, residual and concatenation steps between them.
#[derive(Debug, Clone)]
pub struct Network {
    in_channels: usize,
    out_channels: usize,
    steps: Vec<Step>,
}

impl Network {
    /// Input channels.
    pub fn in_channels(&self) -> usize {
        self.in_channels
    }

    /// Output channels.
    pub fn out_channels(&self) -> usize {
        self.out_channels
    }

    /// The convolutions, labelled by their node names and what was folded into them
    /// (`"stem.0+stem.1+relu"`), e.g. to warm a GPU backend up before the first call.
    pub fn convs(&self) -> impl Iterator<Item = (&str, &SparseConv)> {
        self.steps.iter().filter_map(|s| match s {
            Step::Conv { label, conv } => Some((label.as_str(), conv)),
            _ => None,
        })
    }

    /// Runs the network on `input` with `engine` (its rulebook cache serves every layer of
    /// the same geometry on the same sites, and each inverse convolution finds its strided
    /// partner there).
    pub fn forward(&self, engine: &Engine, input: &SparseTensor) -> Result<SparseTensor> {
        self.forward_all(engine, input).map(|(y, _)| y)
    }

    /// Like [`forward`](Self::forward), and also returns every tensor the network saved,
    /// by tag (the multi-scale features a detector's heads read, e.g. `x_conv1`..`x_conv4`
    /// of [`models::voxel_backbone_8x`](crate::models::voxel_backbone_8x)).
    pub fn forward_all(
        &self,
        engine: &Engine,
        input: &SparseTensor,
    ) -> Result<(SparseTensor, HashMap<String, SparseTensor>)> {
        if input.channels() != self.in_channels {
            return Err(Error::Channels {
                layer: "network input".into(),
                expected: self.in_channels,
                got: input.channels(),
            });
        }
        let mut x: Cow<'_, SparseTensor> = Cow::Borrowed(input);
        let mut saved: HashMap<String, SparseTensor> = HashMap::new();
        for step in &self.steps {
            x = Cow::Owned(match step {
                Step::Conv { label, conv } => {
                    conv.forward(engine, &x).map_err(|e| node_error(label, e))?
                }
                Step::Affine { scale, shift } => {
                    map_features(x.into_owned(), |f, c| f.mul_add(scale[c], shift[c]))?
                }
                Step::Activation(a) => map_features(x.into_owned(), |f, _| a.apply(f))?,
                Step::Save(tag) => {
                    saved.insert(tag.clone(), x.as_ref().clone());
                    continue;
                }
                Step::Add(tag) => {
                    let skip = &saved[tag.as_str()];
                    same_sites(tag, &x, skip)?;
                    let sum = x.into_owned();
                    let (set, stride, c) = parts(&sum);
                    let mut f = sum.into_features();
                    f.iter_mut()
                        .zip(skip.features())
                        .for_each(|(a, &b)| *a += b);
                    SparseTensor::on(set, f, c)?.with_tensor_stride(stride)
                }
                Step::MaxPool { spec } => max_pool(engine, spec, &x)?,
                Step::Concat { tag, saved_first } => {
                    let skip = &saved[tag.as_str()];
                    same_sites(tag, &x, skip)?;
                    let (first, second) = match saved_first {
                        true => (skip, x.as_ref()),
                        false => (x.as_ref(), skip),
                    };
                    let (c1, c2) = (first.channels(), second.channels());
                    let mut f = Vec::with_capacity(x.len() * (c1 + c2));
                    for row in 0..x.len() {
                        f.extend_from_slice(&first.features()[row * c1..(row + 1) * c1]);
                        f.extend_from_slice(&second.features()[row * c2..(row + 1) * c2]);
                    }
                    let (set, stride, _) = parts(&x);
                    SparseTensor::on(set, f, c1 + c2)?.with_tensor_stride(stride)
                }
            });
        }
        Ok((x.into_owned(), saved))
    }
}

fn parts(x: &SparseTensor) -> (Arc<crate::tensor::CoordSet>, Vec<u32>, usize) {
    (
        x.coord_set().clone(),
        x.tensor_stride().to_vec(),
        x.channels(),
    )
}

/// spconv's sparse max pooling: per output site and channel, the maximum of 0 and the
/// site's inputs.
fn max_pool(engine: &Engine, spec: &LayerSpec, x: &SparseTensor) -> Result<SparseTensor> {
    let label = spec.kernel_name();
    let rulebook = engine
        .rulebooks()
        .get_or_build(x.coord_set(), &spec.geometry(), &label)
        .map_err(|e| node_error("max_pool", e))?;
    let c = x.channels();
    let mut out = vec![0f32; rulebook.n_out() * c];
    if c > 0 {
        out.par_chunks_mut(c).enumerate().for_each(|(o, row)| {
            for &i in rulebook.neighbors_of(o).iter().filter(|&&i| i >= 0) {
                let src = &x.features()[i as usize * c..(i as usize + 1) * c];
                for (m, &v) in row.iter_mut().zip(src) {
                    if v > *m {
                        *m = v;
                    }
                }
            }
        });
    }
    let stride = x
        .tensor_stride()
        .iter()
        .zip(&spec.stride)
        .map(|(&t, &s)| t * s)
        .collect();
    Ok(SparseTensor::on(rulebook.output().clone(), out, c)?.with_tensor_stride(stride))
}

/// Applies `f(value, channel)` to every feature.
fn map_features(x: SparseTensor, f: impl Fn(f32, usize) -> f32) -> Result<SparseTensor> {
    let (set, stride, c) = parts(&x);
    let mut features = x.into_features();
    if c > 0 {
        for row in features.chunks_exact_mut(c) {
            row.iter_mut().enumerate().for_each(|(i, v)| *v = f(*v, i));
        }
    }
    Ok(SparseTensor::on(set, features, c)?.with_tensor_stride(stride))
}

/// A residual or concatenation needs the same sites in the same row order.
fn same_sites(tag: &str, a: &SparseTensor, b: &SparseTensor) -> Result<()> {
    let same = Arc::ptr_eq(a.coord_set(), b.coord_set())
        || (a.coords() == b.coords()
            && a.spatial_shape() == b.spatial_shape()
            && a.batch_size() == b.batch_size());
    match same {
        true => Ok(()),
        false => Err(network(
            tag,
            format!(
                "the saved tensor has other sites ({} rows) than the current one ({} rows)",
                b.len(),
                a.len()
            ),
        )),
    }
}
