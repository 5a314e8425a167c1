//! Meaning of `sparse_layer!` definitions: constructor and keys to a validated [`LayerSpec`].
//!
//! Each definition is turned into calls on [`LayerSpec::builder`], the same builder a program
//! uses for layers defined at run time, and [`LayerSpecBuilder::build`] runs the one
//! [`LayerSpec::validate`]. This module adds only what the builder cannot know about: which
//! keys exist, what each value may look like, duplicate and missing keys, and the partner of
//! an inverse layer. A [`SpecError`] is reported at the span of the key its
//! [`SpecError::field`] names, or at the constructor when that key was not written.
//!
//! Errors of all definitions are collected, so one compilation shows every mistake; a
//! definition with an error produces no type.

use std::collections::HashMap;

use proc_macro2::{Span, TokenStream};
use sparsegen_codegen::{
    Activation, ConvKind, DType, Extent, Field, LayerSpec, LayerSpecBuilder, SpecError,
};
use syn::spanned::Spanned as _;
use syn::{Attribute, Expr, Ident, Lit, Visibility};

use crate::parse::{Input, LayerDef};

/// A definition whose spec passed validation.
#[derive(Debug, Clone)]
pub struct Layer {
    /// Attributes passed through to the type.
    pub attrs: Vec<Attribute>,
    /// Visibility of the type.
    pub vis: Visibility,
    /// Name of the type.
    pub name: Ident,
    /// The definition as written (`subm3d(in: 4, out: 16)`), for the generated docs.
    pub written: String,
    /// The validated spec. For an inverse layer whose partner is defined elsewhere
    /// ([`Partner::External`]) its geometry fields are neutral placeholders; the generated code
    /// takes them from the partner's spec.
    pub spec: LayerSpec,
    /// The strided layer an inverse layer undoes.
    pub partner: Option<Partner>,
}

/// The `of:` of an inverse layer.
#[derive(Debug, Clone)]
pub enum Partner {
    /// Defined in the same invocation; its geometry is already copied into the spec.
    Local(Ident),
    /// Defined elsewhere: a path to a type implementing `sparsegen::typed::Layer`, checked by
    /// a generated `const` (kind and dims) because its spec is not known at expansion time.
    External(syn::Path),
}

/// The constructor names, one per kind, as written before the dims (`subm` in `subm3d`).
const CONSTRUCTORS: [(&str, ConvKind); 4] = [
    ("subm", ConvKind::Submanifold),
    ("conv", ConvKind::Strided),
    ("inverse", ConvKind::Inverse),
    ("deconv", ConvKind::Transposed),
];

/// Every key of the DSL, in the order the reference lists them.
pub const KEYS: [&str; 12] = [
    "in",
    "out",
    "kernel",
    "stride",
    "padding",
    "dilation",
    "output_padding",
    "groups",
    "bias",
    "activation",
    "dtype",
    "of",
];

/// Keys an inverse layer takes from its partner instead.
const GEOMETRY_KEYS: [&str; 4] = ["kernel", "stride", "padding", "dilation"];

/// Resolves every definition. Returns the layers that are valid and, if any definition was
/// not, one error combining every message.
pub fn resolve(input: &Input) -> (Vec<Layer>, Option<syn::Error>) {
    let mut errors: Option<syn::Error> = None;
    let mut push = |e: syn::Error| match &mut errors {
        Some(all) => all.combine(e),
        None => errors = Some(e),
    };
    // Non-inverse layers first, so an inverse layer may name a partner defined after it.
    let mut resolved: HashMap<String, Result<Layer, ()>> = HashMap::new();
    let mut layers = Vec::new();
    let mut seen = HashMap::new();
    for def in &input.defs {
        if let Some(first) = seen.insert(def.name.to_string(), def.name.span()) {
            let mut e = syn::Error::new(
                def.name.span(),
                format!(
                    "a layer named `{}` is already defined in this `sparse_layer!`; give each layer its own name",
                    def.name
                ),
            );
            e.combine(syn::Error::new(first, "first defined here"));
            push(e);
        }
    }
    let mut order: Vec<&LayerDef> = input.defs.iter().collect();
    order.sort_by_key(|d| ctor_kind(&d.ctor) == Some(ConvKind::Inverse));
    let local_inverses: Vec<String> = input
        .defs
        .iter()
        .filter(|d| ctor_kind(&d.ctor) == Some(ConvKind::Inverse))
        .map(|d| d.name.to_string())
        .collect();
    for def in order {
        let result = resolve_def(def, &resolved, &local_inverses);
        let entry = match result {
            Ok(layer) => Ok(layer),
            Err(e) => {
                if let Some(e) = e {
                    push(e);
                }
                Err(())
            }
        };
        resolved.insert(def.name.to_string(), entry);
    }
    for def in &input.defs {
        if let Some(Ok(layer)) = resolved.remove(&def.name.to_string()) {
            layers.push(layer);
        }
    }
    (layers, errors)
}

fn ctor_kind(ctor: &Ident) -> Option<ConvKind> {
    parse_ctor(ctor).map(|(kind, _)| kind)
}

/// `subm3d` → (Submanifold, 3). Dims are parsed as written; the builder checks their range.
fn parse_ctor(ctor: &Ident) -> Option<(ConvKind, usize)> {
    let name = ctor.to_string();
    let rest = name.strip_suffix('d')?;
    CONSTRUCTORS.iter().find_map(|&(prefix, kind)| {
        let digits = rest.strip_prefix(prefix)?;
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        Some((kind, digits.parse().unwrap_or(usize::MAX)))
    })
}

/// The keys a definition wrote, with their tokens (for spans), in one place.
struct Keys<'a> {
    values: HashMap<&'static str, &'a Expr>,
    written: HashMap<&'static str, TokenStream>,
}

impl Keys<'_> {
    /// An error spanning `key: value` as written, or `or` when the key was not written.
    fn error(&self, key: &str, or: Span, message: String) -> syn::Error {
        match self.written.get(key) {
            Some(tokens) => syn::Error::new_spanned(tokens, message),
            None => syn::Error::new(or, message),
        }
    }

    fn has(&self, key: &str) -> bool {
        self.written.contains_key(key)
    }
}

/// `Err(None)`: the definition is invalid but its error was reported elsewhere (its partner's).
fn resolve_def(
    def: &LayerDef,
    resolved: &HashMap<String, Result<Layer, ()>>,
    local_inverses: &[String],
) -> Result<Layer, Option<syn::Error>> {
    let ctor = def.ctor.to_string();
    let Some((kind, dims)) = parse_ctor(&def.ctor) else {
        return Err(Some(syn::Error::new(
            def.ctor.span(),
            format!(
                "unknown layer constructor `{ctor}`: use `subm3d` (submanifold), `conv3d` (strided), `inverse3d` (undoes a strided conv) or `deconv3d` (transposed), with 1d to 4d for the dimensions"
            ),
        )));
    };
    let keys = collect_keys(def, kind)?;
    let ctor_span = def.ctor.span();
    let missing = |key: &str, what: &str| {
        syn::Error::new(
            def.args_span,
            format!("`{ctor}` needs `{key}`: add `{key}: <{what}>`"),
        )
    };
    let mut builder = LayerSpec::builder(kind, dims);
    let in_channels = keys
        .values
        .get("in")
        .ok_or_else(|| missing("in", "input channels"))?;
    let out_channels = keys
        .values
        .get("out")
        .ok_or_else(|| missing("out", "output channels"))?;
    builder = builder
        .in_channels(int(in_channels, "in")?)
        .out_channels(int(out_channels, "out")?);
    if let Some(v) = keys.values.get("groups") {
        builder = builder.groups(int(v, "groups")?);
    }
    if let Some(v) = keys.values.get("bias") {
        builder = builder.bias(boolean(v, "bias")?);
    }
    if let Some(v) = keys.values.get("activation") {
        builder = builder.activation(activation(v)?);
    }
    if let Some(v) = keys.values.get("dtype") {
        builder = builder.dtype(dtype(v)?);
    }
    let mut partner = None;
    if kind == ConvKind::Inverse {
        let Some(of) = keys.values.get("of") else {
            return Err(Some(missing("of", "the strided layer this one undoes")));
        };
        let (p, geometry) = inverse_partner(of, &ctor, dims, resolved, local_inverses)?;
        partner = Some(p);
        match geometry {
            Some(g) => {
                let axes = |v: [u32; 4]| Extent::PerAxis(v[..dims.min(4)].to_vec());
                builder = builder
                    .kernel(axes(g.kernel))
                    .stride(axes(g.stride))
                    .padding(axes(g.padding))
                    .dilation(axes(g.dilation));
            }
            // Placeholder geometry; the generated code copies the partner's.
            None => builder = builder.kernel(1),
        }
    } else {
        for key in GEOMETRY_KEYS.into_iter().chain(["output_padding"]) {
            if let Some(v) = keys.values.get(key) {
                let e = extent(v, key)?;
                builder = match key {
                    "kernel" => builder.kernel(e),
                    "stride" => builder.stride(e),
                    "padding" => builder.padding(e),
                    "dilation" => builder.dilation(e),
                    _ => builder.output_padding(e),
                };
            }
        }
    }
    let spec = build(&builder, &keys, ctor_span)?;
    Ok(Layer {
        attrs: def.attrs.clone(),
        vis: def.vis.clone(),
        name: def.name.clone(),
        written: written(def),
        spec,
        partner,
    })
}

/// Builds (and so validates) the spec, pointing a rule's error at the key it is about.
fn build(builder: &LayerSpecBuilder, keys: &Keys<'_>, ctor: Span) -> Result<LayerSpec, syn::Error> {
    builder.build().map_err(|e| {
        let message = spec_message(&e);
        match &e {
            SpecError::Dims(_) => syn::Error::new(ctor, message),
            // A divisibility error is about the pair; point at `groups` when it was written.
            SpecError::Groups { .. } if keys.has("groups") => keys.error("groups", ctor, message),
            _ => keys.error(e.field().key(), ctor, message),
        }
    })
}

/// The validation message, with the DSL's spelling where the builder's differs.
fn spec_message(e: &SpecError) -> String {
    match e {
        SpecError::Dims(_) => format!("{e}: use a constructor from `subm1d` to `subm4d`"),
        SpecError::Zero(Field::InChannels | Field::OutChannels) => {
            format!("{e}: a layer has at least one channel")
        }
        SpecError::OutputPaddingKind => {
            format!("{e}: remove it, or make the layer a `deconvNd`")
        }
        SpecError::OutputPaddingTooLarge { .. } => {
            format!("{e}: lower `output_padding`, or raise `stride`")
        }
        _ => e.to_string(),
    }
}

fn collect_keys(def: &LayerDef, kind: ConvKind) -> Result<Keys<'_>, Option<syn::Error>> {
    let ctor = def.ctor.to_string();
    let mut values = HashMap::new();
    let mut written: HashMap<&str, TokenStream> = HashMap::new();
    for arg in &def.args {
        let name = arg.key.to_string();
        let Some(&key) = KEYS.iter().find(|&&k| k == name) else {
            let keys = keys_for(kind);
            let help = match closest(&name) {
                Some(k) => format!("did you mean `{k}`? The keys are {keys}"),
                None => format!("the keys are {keys}"),
            };
            return Err(Some(syn::Error::new(
                arg.key.span(),
                format!("unknown key `{name}` in `{ctor}`: {help}"),
            )));
        };
        if let Some(first) = written.get(key) {
            let mut e = syn::Error::new(
                arg.key.span(),
                format!("duplicate key `{key}`: it is already set in this `{ctor}`; keep one"),
            );
            e.combine(syn::Error::new_spanned(
                first,
                format!("`{key}` first set here"),
            ));
            return Err(Some(e));
        }
        if kind == ConvKind::Inverse && GEOMETRY_KEYS.contains(&key) {
            return Err(Some(syn::Error::new(
                arg.key.span(),
                format!(
                    "an inverse convolution takes `{key}` from the strided layer named by `of`; remove `{key}` here"
                ),
            )));
        }
        if kind == ConvKind::Inverse && key == "output_padding" {
            return Err(Some(syn::Error::new(
                arg.key.span(),
                "`output_padding` only applies to a transposed convolution (`deconv3d`); remove it",
            )));
        }
        if kind != ConvKind::Inverse && key == "of" {
            return Err(Some(syn::Error::new(
                arg.key.span(),
                format!(
                    "`of` names the strided layer an inverse convolution undoes; only `inverseNd` takes it, not `{ctor}`"
                ),
            )));
        }
        values.insert(key, &arg.value);
        let (k, v) = (&arg.key, &arg.value);
        written.insert(key, quote::quote!(#k: #v));
    }
    Ok(Keys { values, written })
}

/// The keys a kind accepts, for messages.
fn keys_for(kind: ConvKind) -> String {
    KEYS.iter()
        .filter(|k| match kind {
            ConvKind::Inverse => !GEOMETRY_KEYS.contains(k) && **k != "output_padding",
            _ => **k != "of",
        })
        .map(|k| format!("`{k}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The key closest to a misspelt one (edit distance ≤ 2), if any.
fn closest(name: &str) -> Option<&'static str> {
    KEYS.iter()
        .map(|k| (edit_distance(name, k), *k))
        .filter(|&(d, _)| d <= 2)
        .min_by_key(|&(d, _)| d)
        .map(|(_, k)| k)
        .or_else(|| {
            // `strides`, `kernel_size`, `in_channels`: a known key as a prefix.
            KEYS.iter()
                .filter(|k| k.len() > 2 && name.starts_with(*k))
                .max_by_key(|k| k.len())
                .copied()
        })
        .or(match name {
            "in_channels" | "input" => Some("in"),
            "out_channels" | "output" => Some("out"),
            _ => None,
        })
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut row = vec![i + 1];
        for (j, &cb) in b.iter().enumerate() {
            let cost = usize::from(ca != cb);
            row.push((prev[j] + cost).min(prev[j + 1] + 1).min(row[j] + 1));
        }
        prev = row;
    }
    prev[b.len()]
}

/// The geometry of a partner defined in the same invocation, as the spec fields it copies.
struct PartnerGeometry {
    kernel: [u32; 4],
    stride: [u32; 4],
    padding: [u32; 4],
    dilation: [u32; 4],
}

fn inverse_partner(
    of: &Expr,
    ctor: &str,
    dims: usize,
    resolved: &HashMap<String, Result<Layer, ()>>,
    local_inverses: &[String],
) -> Result<(Partner, Option<PartnerGeometry>), Option<syn::Error>> {
    let path = match strip(of) {
        Expr::Path(p) if p.qself.is_none() => p.path.clone(),
        other => {
            return Err(Some(syn::Error::new_spanned(
                other,
                "`of` takes the name of the strided layer this inverse layer undoes, e.g. `of: Down1`",
            )));
        }
    };
    let Some(ident) = path.get_ident() else {
        return Ok((Partner::External(path), None));
    };
    let Some(partner) = resolved.get(&ident.to_string()) else {
        if local_inverses.iter().any(|name| ident == name) {
            return Err(Some(syn::Error::new_spanned(
                of,
                format!(
                    "`{ident}` is an inverse convolution, but an inverse convolution undoes a strided one: point `of` at a `conv{dims}d` layer"
                ),
            )));
        }
        return Ok((Partner::External(path), None));
    };
    // The partner's own error is already reported; do not add a second one here.
    let partner = partner.as_ref().map_err(|()| None)?;
    let spec = partner.spec;
    if spec.kind != ConvKind::Strided {
        let what = match spec.kind {
            ConvKind::Submanifold => "a submanifold convolution",
            ConvKind::Inverse => "an inverse convolution",
            ConvKind::Transposed => "a transposed convolution",
            ConvKind::Strided => "a strided convolution",
        };
        return Err(Some(syn::Error::new(
            of.span(),
            format!(
                "`{ident}` is {what}, but an inverse convolution undoes a strided one: point `of` at a `conv{}d` layer",
                spec.dims
            ),
        )));
    }
    if spec.dims() != dims {
        return Err(Some(syn::Error::new(
            of.span(),
            format!(
                "`{ident}` is {}-dimensional but `{ctor}` is {dims}-dimensional: use `inverse{}d`",
                spec.dims, spec.dims
            ),
        )));
    }
    Ok((
        Partner::Local(ident.clone()),
        Some(PartnerGeometry {
            kernel: spec.kernel,
            stride: spec.stride,
            padding: spec.padding,
            dilation: spec.dilation,
        }),
    ))
}

/// Looks through invisible groups and parentheses (values passed in by `macro_rules!`).
fn strip(expr: &Expr) -> &Expr {
    match expr {
        Expr::Group(g) => strip(&g.expr),
        Expr::Paren(p) => strip(&p.expr),
        e => e,
    }
}

fn int(expr: &Expr, key: &str) -> syn::Result<u32> {
    match strip(expr) {
        Expr::Lit(lit) => match &lit.lit {
            Lit::Int(i) => i.base10_parse::<u32>().map_err(|_| {
                syn::Error::new(
                    i.span(),
                    format!("`{key}` = {} does not fit in 32 bits", i.base10_digits()),
                )
            }),
            other => Err(syn::Error::new(
                other.span(),
                format!(
                    "`{key}` takes a whole number, e.g. `{key}: {}`",
                    example(key)
                ),
            )),
        },
        Expr::Unary(u) if matches!(u.op, syn::UnOp::Neg(_)) => Err(syn::Error::new_spanned(
            expr,
            format!("`{key}` cannot be negative: use 0 or more"),
        )),
        other => Err(syn::Error::new_spanned(
            other,
            format!(
                "`{key}` takes an integer literal, e.g. `{key}: {}`: the layer is checked when it compiles, so its sizes must be written out",
                example(key)
            ),
        )),
    }
}

fn example(key: &str) -> &'static str {
    match key {
        "in" | "out" => "16",
        "groups" => "2",
        "kernel" => "3",
        "stride" | "dilation" => "2",
        _ => "1",
    }
}

fn extent(expr: &Expr, key: &str) -> syn::Result<Extent> {
    match strip(expr) {
        Expr::Array(array) => array
            .elems
            .iter()
            .map(|e| int(e, key))
            .collect::<syn::Result<Vec<u32>>>()
            .map(Extent::PerAxis),
        Expr::Lit(_) | Expr::Unary(_) => int(expr, key).map(Extent::Uniform),
        other => Err(syn::Error::new_spanned(
            other,
            format!(
                "`{key}` takes one integer for every axis or one per axis, e.g. `{key}: {0}` or `{key}: [{0}, 1, {0}]`",
                example(key)
            ),
        )),
    }
}

fn boolean(expr: &Expr, key: &str) -> syn::Result<bool> {
    match strip(expr) {
        Expr::Lit(syn::ExprLit {
            lit: Lit::Bool(b), ..
        }) => Ok(b.value),
        other => Err(syn::Error::new_spanned(
            other,
            format!("`{key}` takes `true` or `false`"),
        )),
    }
}

fn activation(expr: &Expr) -> syn::Result<Activation> {
    let names = Activation::NAMES
        .iter()
        .map(|n| format!("`{n}`"))
        .collect::<Vec<_>>()
        .join(", ");
    let unknown = |span: Span, what: String| {
        syn::Error::new(
            span,
            format!(
                "unknown activation {what}: use one of {names}, or `leaky_relu(<negative slope>)`"
            ),
        )
    };
    match strip(expr) {
        Expr::Path(p) => {
            let Some(ident) = p.path.get_ident() else {
                return Err(unknown(p.span(), "path".into()));
            };
            Activation::from_name(&ident.to_string())
                .ok_or_else(|| unknown(ident.span(), format!("`{ident}`")))
        }
        Expr::Call(call) => {
            let is_leaky =
                matches!(strip(&call.func), Expr::Path(p) if p.path.is_ident("leaky_relu"));
            if !is_leaky {
                return Err(unknown(
                    call.func.span(),
                    format!("`{}`", quote::ToTokens::to_token_stream(&call.func)),
                ));
            }
            let slope_error = || {
                syn::Error::new(
                    call.paren_token.span.join(),
                    "`leaky_relu` takes one non-negative slope literal, e.g. `leaky_relu(0.1)`",
                )
            };
            let [arg] = call.args.iter().collect::<Vec<_>>()[..] else {
                return Err(slope_error());
            };
            let slope: f32 = match strip(arg) {
                Expr::Lit(syn::ExprLit {
                    lit: Lit::Float(f), ..
                }) => f.base10_parse().map_err(|_| slope_error())?,
                Expr::Lit(syn::ExprLit {
                    lit: Lit::Int(i), ..
                }) => i.base10_parse().map_err(|_| slope_error())?,
                _ => return Err(slope_error()),
            };
            if !slope.is_finite() {
                return Err(slope_error());
            }
            Ok(Activation::leaky_relu(slope))
        }
        other => Err(unknown(
            other.span(),
            format!("`{}`", quote::ToTokens::to_token_stream(other)),
        )),
    }
}

fn dtype(expr: &Expr) -> syn::Result<DType> {
    let unknown = |span: Span, what: String| {
        syn::Error::new(
            span,
            format!("unknown dtype {what}: use `f32`, `f16` or `bf16`"),
        )
    };
    match strip(expr) {
        Expr::Path(p) => match p.path.get_ident() {
            Some(ident) => DType::from_name(&ident.to_string())
                .ok_or_else(|| unknown(ident.span(), format!("`{ident}`"))),
            None => Err(unknown(p.span(), "path".into())),
        },
        other => Err(unknown(
            other.span(),
            format!("`{}`", quote::ToTokens::to_token_stream(other)),
        )),
    }
}

/// The definition as the user wrote it, normalised by the token printer.
fn written(def: &LayerDef) -> String {
    let args = def
        .args
        .iter()
        .map(|a| format!("{}: {}", a.key, quote::ToTokens::to_token_stream(&a.value)))
        .collect::<Vec<_>>()
        .join(", ");
    let args = [
        (" :: ", "::"),
        (":: ", "::"),
        (" ,", ","),
        ("[ ", "["),
        (" ]", "]"),
        ("( ", "("),
        (" )", ")"),
        ("leaky_relu (", "leaky_relu("),
    ]
    .iter()
    .fold(args, |text, (from, to)| text.replace(from, to));
    format!("{}({args})", def.ctor)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a test that unwraps fails with the error, which is what we want
mod tests {
    use super::*;
    use crate::parse::parse_input;
    use quote::quote;

    fn layers(tokens: TokenStream) -> Vec<Layer> {
        let (layers, error) = resolve(&parse_input(tokens).unwrap());
        if let Some(e) = error {
            panic!("unexpected error: {e}");
        }
        layers
    }

    fn error(tokens: TokenStream) -> String {
        let (_, error) = resolve(&parse_input(tokens).unwrap());
        error.expect("must be rejected").to_string()
    }

    #[test]
    fn constructor_names_kind_and_dims() {
        let id = |s: &str| Ident::new(s, Span::call_site());
        assert_eq!(parse_ctor(&id("subm3d")), Some((ConvKind::Submanifold, 3)));
        assert_eq!(parse_ctor(&id("conv1d")), Some((ConvKind::Strided, 1)));
        assert_eq!(parse_ctor(&id("inverse4d")), Some((ConvKind::Inverse, 4)));
        assert_eq!(parse_ctor(&id("deconv2d")), Some((ConvKind::Transposed, 2)));
        assert_eq!(parse_ctor(&id("subm5d")), Some((ConvKind::Submanifold, 5)));
        assert_eq!(parse_ctor(&id("subm_d")), None);
        assert_eq!(parse_ctor(&id("subm3")), None);
        assert_eq!(parse_ctor(&id("dense3d")), None);
    }

    #[test]
    fn specs_equal_the_builders() {
        let got = layers(quote! {
            pub Stem = subm3d(in: 4, out: 16, kernel: 3, bias: false);
            pub Down1 = conv3d(in: 16, out: 32, kernel: 3, stride: 2, padding: 1);
            pub Wide = subm3d(in: 64, out: 64, kernel: [3, 1, 3], dilation: 2, groups: 4, activation: relu);
            Up = deconv2d(in: 8, out: 4, kernel: 2, stride: [2, 1], output_padding: [1, 0], bias: true, activation: leaky_relu(0.2), dtype: f16);
            Line = subm1d(in: 2, out: 2, kernel: 5, activation: relu6, dtype: bf16);
        });
        let b = LayerSpec::builder;
        let expected = [
            b(ConvKind::Submanifold, 3)
                .channels(4, 16)
                .kernel(3)
                .build(),
            b(ConvKind::Strided, 3)
                .channels(16, 32)
                .kernel(3)
                .stride(2)
                .padding(1)
                .build(),
            b(ConvKind::Submanifold, 3)
                .channels(64, 64)
                .kernel([3, 1, 3])
                .dilation(2)
                .groups(4)
                .activation(Activation::Relu)
                .build(),
            b(ConvKind::Transposed, 2)
                .channels(8, 4)
                .kernel(2)
                .stride([2, 1])
                .output_padding([1, 0])
                .bias(true)
                .activation(Activation::leaky_relu(0.2))
                .dtype(DType::F16)
                .build(),
            b(ConvKind::Submanifold, 1)
                .channels(2, 2)
                .kernel(5)
                .activation(Activation::Relu6)
                .dtype(DType::Bf16)
                .build(),
        ];
        assert_eq!(got.len(), expected.len());
        for (layer, spec) in got.iter().zip(expected) {
            assert_eq!(layer.spec, spec.unwrap(), "{}", layer.name);
            assert!(layer.partner.is_none());
        }
        assert_eq!(
            got[0].written,
            "subm3d(in: 4, out: 16, kernel: 3, bias: false)"
        );
        assert_eq!(
            got[3].written,
            "deconv2d(in: 8, out: 4, kernel: 2, stride: [2, 1], output_padding: [1, 0], bias: true, activation: leaky_relu(0.2), dtype: f16)"
        );
    }

    #[test]
    fn inverse_copies_a_local_partners_geometry_in_any_order() {
        let got = layers(quote! {
            Up = inverse3d(of: Down, in: 32, out: 16, bias: true);
            Down = conv3d(in: 16, out: 32, kernel: [3, 3, 2], stride: 2, padding: 1, dilation: [1, 2, 1]);
        });
        assert_eq!(got[0].name.to_string(), "Up", "source order is kept");
        let down = got[1].spec;
        let up = got[0].spec;
        assert_eq!(up.kind, ConvKind::Inverse);
        assert_eq!(
            (up.kernel, up.stride, up.padding, up.dilation),
            (down.kernel, down.stride, down.padding, down.dilation)
        );
        assert_eq!((up.in_channels, up.out_channels, up.bias), (32, 16, true));
        assert!(matches!(&got[0].partner, Some(Partner::Local(p)) if p == "Down"));
    }

    #[test]
    fn inverse_of_an_outside_layer_is_checked_by_the_expansion() {
        let got = layers(quote! { Up = inverse2d(of: super::Down, in: 8, out: 4, groups: 2); });
        assert!(matches!(&got[0].partner, Some(Partner::External(_))));
        assert_eq!(got[0].spec.groups, 2);
    }

    #[test]
    fn every_mistake_has_its_message() {
        let cases: &[(TokenStream, &str)] = &[
            (
                quote! { A = subm3d(in: 4, out: 4, strides: 2) },
                "unknown key `strides` in `subm3d`: did you mean `stride`?",
            ),
            (
                quote! { A = subm3d(in: 4, out: 4, kernel_size: 3) },
                "did you mean `kernel`?",
            ),
            (
                quote! { A = subm3d(in: 4, out: 4, colour: 3) },
                "unknown key `colour` in `subm3d`: the keys are `in`, `out`",
            ),
            (
                quote! { A = inverse3d(of: B, in: 4, out: 4, colour: 3) },
                "the keys are `in`, `out`, `groups`, `bias`, `activation`, `dtype`, `of`",
            ),
            (
                quote! { A = subm3d(in: 4, out: 4, in: 5) },
                "duplicate key `in`",
            ),
            (
                quote! { A = subm3d(out: 4) },
                "`subm3d` needs `in`: add `in: <input channels>`",
            ),
            (quote! { A = subm3d(in: 4) }, "`subm3d` needs `out`"),
            (
                quote! { A = subm3d(in: 4, out: 4, stride: 2) },
                "stride must be 1",
            ),
            (
                quote! { A = subm3d(in: 4, out: 4, kernel: 2) },
                "kernel sizes must be odd (axis 0 has 2); use 1 or 3",
            ),
            (
                quote! { A = subm3d(in: 0, out: 4) },
                "`in` must be at least 1",
            ),
            (
                quote! { A = conv3d(in: 4, out: 4, kernel: [3, 0, 3]) },
                "`kernel` must be at least 1 on every axis, but axis 1 is 0",
            ),
            (
                quote! { A = subm3d(in: 6, out: 4, groups: 4) },
                "`in` = 6 is not divisible by `groups` = 4",
            ),
            (
                quote! { A = subm3d(in: 4, out: 4, kernel: [3, 3]) },
                "`kernel` has 2 values but the layer has 3 spatial dimensions",
            ),
            (
                quote! { A = subm3d(in: 4, out: 4); B = inverse3d(of: A, in: 4, out: 4) },
                "`A` is a submanifold convolution, but an inverse convolution undoes a strided one",
            ),
            (
                quote! { A = conv2d(in: 4, out: 4); B = inverse3d(of: A, in: 4, out: 4) },
                "`A` is 2-dimensional but `inverse3d` is 3-dimensional",
            ),
            (
                quote! { B = inverse3d(in: 4, out: 4) },
                "`inverse3d` needs `of`",
            ),
            (
                quote! { B = inverse3d(of: A, in: 4, out: 4, kernel: 3) },
                "takes `kernel` from the strided layer named by `of`",
            ),
            (
                quote! { B = inverse3d(of: 3, in: 4, out: 4) },
                "`of` takes the name of the strided layer",
            ),
            (
                quote! { A = conv3d(in: 4, out: 4, of: B) },
                "only `inverseNd` takes it",
            ),
            (
                quote! { A = subm3d(in: 4, out: 4, activation: gelu) },
                "unknown activation `gelu`: use one of `identity`, `relu`, `relu6`, `leaky_relu`, or `leaky_relu(<negative slope>)`",
            ),
            (
                quote! { A = subm3d(in: 4, out: 4, activation: leaky_relu(x)) },
                "`leaky_relu` takes one non-negative slope literal",
            ),
            (
                quote! { A = subm3d(in: 4, out: 4, dtype: f64) },
                "unknown dtype `f64`: use `f32`, `f16` or `bf16`",
            ),
            (
                quote! { A = dense3d(in: 4, out: 4) },
                "unknown layer constructor `dense3d`",
            ),
            (
                quote! { A = subm5d(in: 4, out: 4) },
                "a layer has 1 to 4 spatial dimensions, not 5: use a constructor from `subm1d` to `subm4d`",
            ),
            (
                quote! { A = subm3d(in: C, out: 4) },
                "`in` takes an integer literal",
            ),
            (
                quote! { A = subm3d(in: 4, out: 4, padding: -1) },
                "`padding` cannot be negative: use 0 or more",
            ),
            (
                quote! { A = subm3d(in: 4, out: 4, kernel: (3, 3)) },
                "`kernel` takes one integer for every axis or one per axis",
            ),
            (
                quote! { A = subm3d(in: 4, out: 4, bias: 1) },
                "`bias` takes `true` or `false`",
            ),
            (
                quote! { A = subm3d(in: 4294967296, out: 4) },
                "does not fit in 32 bits",
            ),
            (
                quote! { A = subm3d(in: 4, out: 4, padding: 1) },
                "remove `padding`",
            ),
            (
                quote! { A = conv3d(in: 4, out: 4, output_padding: 1) },
                "`output_padding` only applies to a transposed convolution",
            ),
            (
                quote! { A = subm3d(in: 4, out: 4); A = subm3d(in: 4, out: 4) },
                "a layer named `A` is already defined",
            ),
        ];
        for (tokens, message) in cases {
            let got = error(tokens.clone());
            assert!(
                got.contains(message),
                "for `{tokens}`:\n  got  {got}\n  want {message}"
            );
        }
    }

    #[test]
    fn errors_of_all_definitions_are_reported_and_valid_layers_kept() {
        let (layers, error) = resolve(
            &parse_input(quote! {
                A = subm3d(in: 4, out: 4, kernel: 2);
                B = subm3d(in: 4, out: 4);
                C = subm3d(in: 4, out: 4, stride: 2);
            })
            .unwrap(),
        );
        assert_eq!(layers.len(), 1);
        assert_eq!(error.unwrap().into_iter().count(), 2);
    }

    #[test]
    fn an_inverse_of_a_broken_partner_adds_no_second_error() {
        let (layers, error) = resolve(
            &parse_input(quote! {
                A = conv3d(in: 4, out: 0);
                B = inverse3d(of: A, in: 4, out: 4);
            })
            .unwrap(),
        );
        assert!(layers.is_empty());
        assert_eq!(error.unwrap().into_iter().count(), 1);
    }
}
