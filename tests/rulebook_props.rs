//! Property tests: rulebook + reference executor against the dense reference convolution,
//! over random dims (1–4), kinds, kernels, strides, paddings, dilations, groups, bias,
//! activations, batch sizes, sparsity and row order.

#![allow(clippy::unwrap_used)] // tests state their expectations with unwrap

use std::sync::Arc;

use proptest::prelude::*;
use sparsegen::prelude::*;
use sparsegen::runtime::dense;

/// One random layer and input.
#[derive(Debug, Clone)]
struct Case {
    spec: LayerSpec,
    shape: Vec<u32>,
    batch: u32,
    /// Distinct cell ids (flat over batch × grid), in row order.
    cells: Vec<u32>,
    seed: u64,
}

fn per_axis(dims: usize, range: std::ops::RangeInclusive<u32>) -> impl Strategy<Value = Vec<u32>> {
    prop::collection::vec(range, dims)
}

fn case() -> impl Strategy<Value = Case> {
    (1usize..=4, 0usize..4).prop_flat_map(|(dims, kind)| {
        let kind = [
            ConvKind::Submanifold,
            ConvKind::Strided,
            ConvKind::Inverse,
            ConvKind::Transposed,
        ][kind];
        let max_side = [0, 40, 14, 9, 6][dims];
        (
            per_axis(dims, 1..=3),
            per_axis(dims, 1..=3),
            per_axis(dims, 0..=2),
            per_axis(dims, 1..=2),
            per_axis(dims, 2..=max_side),
            1u32..=2,
            (1u32..=3, 1u32..=3, 1u32..=2),
            (any::<bool>(), 0usize..4, any::<u64>()),
            0.05f64..0.9,
        )
            .prop_flat_map(
                move |(
                    kernel,
                    stride,
                    padding,
                    dilation,
                    shape,
                    batch,
                    (cin_g, cout_g, groups),
                    (bias, act, seed),
                    density,
                )| {
                    let cells_total: u32 = shape.iter().product::<u32>() * batch;
                    let n_max = ((f64::from(cells_total) * density) as usize).max(1);
                    let cells =
                        prop::sample::subsequence((0..cells_total).collect::<Vec<_>>(), 0..=n_max)
                            .prop_shuffle();
                    let mut kernel = kernel;
                    let (stride, padding) = match kind {
                        ConvKind::Submanifold => {
                            for k in &mut kernel {
                                *k |= 1;
                            }
                            (vec![1; dims], vec![0; dims])
                        }
                        _ => (stride, padding),
                    };
                    let activation = [
                        Activation::Identity,
                        Activation::Relu,
                        Activation::Relu6,
                        Activation::leaky_relu(0.1),
                    ][act];
                    let spec = LayerSpec::builder(kind, dims)
                        .channels(cin_g * groups, cout_g * groups)
                        .groups(groups)
                        .kernel(kernel)
                        .stride(stride)
                        .padding(padding)
                        .dilation(dilation)
                        .bias(bias)
                        .activation(activation)
                        .build();
                    let shape = shape.clone();
                    (Just(spec), Just(shape), Just(batch), cells, Just(seed))
                },
            )
            .prop_filter_map("valid spec", |(spec, shape, batch, cells, seed)| {
                Some(Case {
                    spec: spec.ok()?,
                    shape,
                    batch,
                    cells,
                    seed,
                })
            })
    })
}

/// Deterministic values in [-1, 1) (the data need not be random in proptest's sense).
fn values(n: usize, seed: u64) -> Vec<f32> {
    sparsegen::runtime::init::uniform(seed, n, 1.0)
}

fn coords_of(cells: &[u32], shape: &[u32]) -> Vec<i32> {
    let mut coords = Vec::new();
    for &cell in cells {
        let mut rest = cell;
        let mut c = vec![0i32; shape.len() + 1];
        for axis in (0..shape.len()).rev() {
            c[axis + 1] = (rest % shape[axis]) as i32;
            rest /= shape[axis];
        }
        c[0] = rest as i32;
        coords.extend(c);
    }
    coords
}

/// Compares f32 results with the f64 dense reference. Each element's tolerance scales with
/// the sum of the magnitudes of its products (`magnitude`: the dense conv of |x|, |w| and
/// |bias|), which is what f32 accumulation error scales with; a tolerance relative to the
/// largest output is too tight when products cancel (outputs near 0 from terms near 1).
fn assert_close(got: &[f32], want: &[f64], magnitude: &[f64], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    assert_eq!(magnitude.len(), want.len(), "{what}: magnitude lengths");
    for (i, ((&g, &w), &m)) in got.iter().zip(want).zip(magnitude).enumerate() {
        assert!(
            (f64::from(g) - w).abs() <= 1e-5 * m.max(1e-30),
            "{what}: element {i}: got {g}, want {w} (sum of |products| {m})"
        );
    }
}

/// The dense conv of |x|, |weight| and |bias| with no activation: per output element, the
/// sum of the magnitudes of the products that f32 accumulates.
fn magnitudes(
    spec: &LayerSpec,
    x: &SparseTensor,
    weight: &[f32],
    bias: Option<&[f32]>,
    partner: Option<&SparseTensor>,
) -> Vec<f64> {
    let abs = |v: &[f32]| v.iter().map(|a| a.abs()).collect::<Vec<f32>>();
    let linear = LayerSpec {
        activation: Activation::Identity,
        ..*spec
    };
    let x_abs = SparseTensor::on(x.coord_set().clone(), abs(x.features()), x.channels())
        .expect("same shape");
    let bias_abs = bias.map(abs);
    dense::conv(&linear, &x_abs, &abs(weight), bias_abs.as_deref(), partner)
        .expect("the dense reference accepted this layer once")
        .features
}

fn check(case: &Case) -> Result<(), TestCaseError> {
    let spec = case.spec;
    let engine = Engine::reference();
    let weight = values(spec.weight_len(), case.seed);
    let bias = spec
        .bias
        .then(|| values(spec.out_channels as usize, case.seed ^ 0xB1A5));
    let conv = SparseConv::new(spec, weight.clone(), bias.clone()).expect("valid layer");
    let cin = spec.in_channels as usize;

    if spec.kind == ConvKind::Inverse {
        // The partner strided conv runs first on the same engine; the inverse maps back.
        let partner_input = SparseTensor::new(
            coords_of(&case.cells, &case.shape),
            vec![0.0; case.cells.len()],
            1,
            &case.shape,
            case.batch,
        )
        .expect("valid input");
        let strided = spec.geometry().as_strided();
        let rb =
            match engine
                .rulebooks()
                .get_or_build(partner_input.coord_set(), &strided, "partner")
            {
                Ok(rb) => rb,
                Err(Error::Geometry { .. }) => return Ok(()), // kernel larger than the grid
                Err(e) => panic!("{e}"),
            };
        let x = SparseTensor::on(
            rb.output().clone(),
            values(rb.n_out() * cin, case.seed ^ 7),
            cin,
        )
        .expect("features");
        let y = conv.forward(&engine, &x).expect("inverse forward");
        prop_assert!(Arc::ptr_eq(y.coord_set(), partner_input.coord_set()));
        let want =
            dense::conv(&spec, &x, &weight, bias.as_deref(), Some(&partner_input)).expect("dense");
        prop_assert_eq!(y.coords(), &want.coords[..]);
        let magnitude = magnitudes(&spec, &x, &weight, bias.as_deref(), Some(&partner_input));
        assert_close(y.features(), &want.features, &magnitude, "inverse");
        return Ok(());
    }

    let x = SparseTensor::new(
        coords_of(&case.cells, &case.shape),
        values(case.cells.len() * cin, case.seed ^ 3),
        cin,
        &case.shape,
        case.batch,
    )
    .expect("valid input");
    let want = match dense::conv(&spec, &x, &weight, bias.as_deref(), None) {
        Ok(w) => w,
        Err(Error::Geometry { .. }) => {
            let refused = matches!(conv.forward(&engine, &x), Err(Error::Geometry { .. }));
            prop_assert!(
                refused,
                "the rulebook builder must refuse what the dense reference refuses"
            );
            return Ok(());
        }
        Err(e) => panic!("{e}"),
    };
    let y = conv.forward(&engine, &x).expect("forward");
    prop_assert_eq!(y.coords(), &want.coords[..], "output sites of {}", spec);
    // The fan-out bound that sizes the device's output key set holds: no input site feeds
    // more outputs than `max_outputs_per_input`.
    let rb = engine
        .rulebooks()
        .get_or_build(x.coord_set(), &spec.geometry(), "fan-out")
        .expect("cached rulebook");
    let mut fan_out = vec![0usize; rb.n_in()];
    for o in 0..rb.n_out() {
        let mut seen: Vec<i32> = rb
            .neighbors_of(o)
            .iter()
            .copied()
            .filter(|&i| i >= 0)
            .collect();
        seen.sort_unstable();
        seen.dedup();
        for i in seen {
            fan_out[i as usize] += 1;
        }
    }
    let bound = spec.geometry().max_outputs_per_input();
    prop_assert!(
        fan_out.iter().all(|&f| f <= bound),
        "{}: an input feeds {} outputs, above the bound {}",
        spec,
        fan_out.iter().max().copied().unwrap_or(0),
        bound
    );
    let magnitude = magnitudes(&spec, &x, &weight, bias.as_deref(), None);
    assert_close(
        y.features(),
        &want.features,
        &magnitude,
        &spec.kernel_name(),
    );
    // Same geometry again: the cache answers, and the answer is the same.
    let again = conv.forward(&engine, &x).expect("forward");
    prop_assert_eq!(again.features(), y.features());
    prop_assert!(engine.rulebooks().stats().hits >= 1);
    Ok(())
}

proptest! {
    // 400 cases by default; PROPTEST_CASES overrides for a longer soak.
    #![proptest_config(ProptestConfig { cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(400), ..ProptestConfig::default() })]

    #[test]
    fn rulebook_and_reference_match_dense(case in case()) {
        check(&case)?;
    }
}

#[test]
fn f64_accumulation_is_the_closest() {
    let spec = LayerSpec::builder(ConvKind::Submanifold, 3)
        .channels(64, 64)
        .build()
        .unwrap();
    let shape = [6, 6, 6];
    let cells: Vec<u32> = (0..216).step_by(2).collect();
    let coords = coords_of(&cells, &shape);
    let x = SparseTensor::new(coords, values(cells.len() * 64, 1), 64, &shape, 1).unwrap();
    let weight = values(spec.weight_len(), 2);
    let conv = SparseConv::new(spec, weight.clone(), None).unwrap();
    let exact = dense::conv(&spec, &x, &weight, None, None).unwrap();
    let f64_engine = Engine::with_backend(Arc::new(ReferenceBackend {
        accumulate: Accumulate::F64,
    }));
    let y64 = conv.forward(&f64_engine, &x).unwrap();
    for (&g, &w) in y64.features().iter().zip(&exact.features) {
        assert_eq!(g, w as f32, "f64 accumulation rounds the exact sum once");
    }
}

#[test]
fn rulebooks_do_not_depend_on_the_thread_count() {
    // ~30k sites in shuffled row order: many work chunks, mirror writes across chunks.
    let shape = [40u32, 48, 48];
    let cells_total = shape.iter().product::<u32>();
    let keep = sparsegen::runtime::init::uniform(5, cells_total as usize, 1.0);
    let mut cells: Vec<u32> = (0..cells_total)
        .filter(|&c| keep[c as usize] > 0.4)
        .collect();
    let order = sparsegen::runtime::init::uniform(6, cells.len(), 1.0);
    let mut keyed: Vec<(u32, u32)> = cells
        .iter()
        .zip(&order)
        .map(|(&c, &o)| (o.to_bits(), c))
        .collect();
    keyed.sort_unstable();
    cells = keyed.into_iter().map(|(_, c)| c).collect();
    let coords = coords_of(&cells, &shape);
    let specs = [
        LayerSpec::builder(ConvKind::Submanifold, 3)
            .channels(1, 1)
            .kernel(5)
            .build()
            .unwrap(),
        LayerSpec::builder(ConvKind::Strided, 3)
            .channels(1, 1)
            .stride(2)
            .padding(1)
            .build()
            .unwrap(),
        LayerSpec::builder(ConvKind::Transposed, 3)
            .channels(1, 1)
            .stride(2)
            .build()
            .unwrap(),
    ];
    let build = |threads: usize| {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        pool.install(|| {
            let set = Arc::new(CoordSet::new(coords.clone(), &shape, 1).unwrap());
            specs
                .iter()
                .map(|spec| {
                    let rb = Rulebook::build(&set, &spec.geometry(), "t").unwrap();
                    let inverse = rb.inverse().neighbors().to_vec();
                    (
                        rb.output().coords().to_vec(),
                        rb.neighbors().to_vec(),
                        inverse,
                    )
                })
                .collect::<Vec<_>>()
        })
    };
    assert!(cells.len() > 25_000, "{}", cells.len());
    assert_eq!(build(1), build(2));
    assert_eq!(build(2), build(4));
}
