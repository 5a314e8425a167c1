//! Code of `sparse_layer!`: validated layers to the items a user's crate compiles.
//!
//! Each layer becomes a struct owning a `::sparsegen::runtime::SparseConv`, an inherent
//! `SPEC` (a struct literal of `::sparsegen::codegen::LayerSpec`, emitted only for a spec
//! that passed `validate()`), `IN` / `OUT`, constructors and a channel-typed `forward`, plus
//! impls of `::sparsegen::typed::Layer`, `Default`, and the conversions to and from the
//! untyped `SparseConv`. Every path is absolute; nothing depends on the caller's imports.
//! The generated code is snapshot-tested (`snapshots/`), so a change to it is reviewed.

use proc_macro2::{Literal, TokenStream};
use quote::{ToTokens as _, quote, quote_spanned};
use sparsegen_codegen::{Activation, ConvKind, DType, LayerSpec};
use syn::spanned::Spanned as _;

use crate::parse::parse_input;
use crate::resolve::{Layer, Partner, resolve};

/// The whole macro: parse, resolve (validate), expand. Valid layers are emitted even when
/// another definition has an error, so the user sees only the errors that matter.
pub fn sparse_layer(input: TokenStream) -> TokenStream {
    let input = match parse_input(input) {
        Ok(input) => input,
        Err(e) => return e.to_compile_error(),
    };
    let (layers, error) = resolve(&input);
    let mut tokens = expand(&layers);
    if let Some(e) = error {
        tokens.extend(e.to_compile_error());
    }
    tokens
}

/// The items of every layer, in order.
pub fn expand(layers: &[Layer]) -> TokenStream {
    layers.iter().map(expand_layer).collect()
}

fn expand_layer(layer: &Layer) -> TokenStream {
    let Layer {
        attrs, vis, name, ..
    } = layer;
    let spec = &layer.spec;
    let cin = Literal::usize_unsuffixed(spec.in_channels as usize);
    let cout = Literal::usize_unsuffixed(spec.out_channels as usize);
    let spec_literal = spec_literal(spec, layer.partner.as_ref());
    let partner_check = match &layer.partner {
        Some(Partner::External(path)) => partner_check(layer, path),
        _ => TokenStream::new(),
    };
    let name_str = name.to_string();
    let docs = docs(layer);
    let weight_doc = match &layer.partner {
        Some(Partner::External(path)) => format!(
            " `weight` is in spconv's KRSC layout `[{}, K.., {}]` with the kernel of `{}`;",
            spec.out_channels,
            spec.in_per_group(),
            path.to_token_stream()
        ),
        _ => format!(
            " `weight` is in spconv's KRSC layout `{:?}`;",
            spec.weight_shape()
        ),
    };
    let bias_doc = if spec.bias {
        format!(" `bias` is `Some` of {} values.", spec.out_channels)
    } else {
        " `bias` is `None` (the layer has no bias).".to_string()
    } + " A buffer of the wrong size is an `Error::WeightShape`.";
    let features = quote!(::sparsegen::typed::Features);
    let conv = quote!(::sparsegen::runtime::SparseConv);
    let result = quote!(::core::result::Result);
    quote! {
        #(#attrs)*
        #docs
        #[derive(Debug, Clone)]
        #vis struct #name {
            conv: #conv,
        }

        impl #name {
            /// The layer's spec, validated when `sparse_layer!` expanded.
            pub const SPEC: ::sparsegen::codegen::LayerSpec = #spec_literal;
            /// Input channels.
            pub const IN: usize = #cin;
            /// Output channels.
            pub const OUT: usize = #cout;

            /// The layer with all-zero weights (and bias), to be filled from a checkpoint.
            pub fn new() -> Self {
                Self { conv: ::sparsegen::typed::__private::zeros(Self::SPEC) }
            }

            /// The layer with the given weights.
            #[doc = #weight_doc]
            #[doc = #bias_doc]
            pub fn from_weights(
                weight: ::std::vec::Vec<f32>,
                bias: ::core::option::Option<::std::vec::Vec<f32>>,
            ) -> ::sparsegen::runtime::Result<Self> {
                #conv::new(Self::SPEC, weight, bias).map(|conv| Self { conv })
            }

            /// The layer with weights exactly as spconv 2.3.8 stores them in a checkpoint
            /// (see `SparseConv::from_spconv`: 1×1 layers' memory is read as spconv reads it).
            pub fn from_spconv(
                weight: ::std::vec::Vec<f32>,
                bias: ::core::option::Option<::std::vec::Vec<f32>>,
            ) -> ::sparsegen::runtime::Result<Self> {
                #conv::from_spconv(Self::SPEC, weight, bias).map(|conv| Self { conv })
            }

            /// Runs the layer on `engine`; channel counts are checked by the types.
            pub fn forward(
                &self,
                engine: &::sparsegen::runtime::Engine,
                input: &#features<#cin>,
            ) -> ::sparsegen::runtime::Result<#features<#cout>> {
                ::sparsegen::typed::__private::forward(&self.conv, engine, input)
            }

            /// The untyped layer.
            pub fn conv(&self) -> &#conv {
                &self.conv
            }

            /// Gives up the channel types: the untyped layer.
            pub fn into_conv(self) -> #conv {
                self.conv
            }
        }

        impl ::core::default::Default for #name {
            fn default() -> Self {
                Self::new()
            }
        }

        impl ::sparsegen::typed::Layer for #name {
            const NAME: &'static str = #name_str;
            const SPEC: ::sparsegen::codegen::LayerSpec = #name::SPEC;
            const IN: usize = #cin;
            const OUT: usize = #cout;
            type Input = #features<#cin>;
            type Output = #features<#cout>;

            fn forward(
                &self,
                engine: &::sparsegen::runtime::Engine,
                input: &#features<#cin>,
            ) -> ::sparsegen::runtime::Result<#features<#cout>> {
                #name::forward(self, engine, input)
            }

            fn conv(&self) -> &#conv {
                &self.conv
            }

            fn into_conv(self) -> #conv {
                self.conv
            }

            fn from_conv(conv: #conv) -> #result<Self, ::sparsegen::typed::TypedError> {
                ::sparsegen::typed::__private::check_conv(#name_str, &#name::SPEC, &conv)?;
                ::core::result::Result::Ok(Self { conv })
            }
        }

        impl ::core::convert::From<#name> for #conv {
            fn from(layer: #name) -> Self {
                layer.conv
            }
        }

        impl ::core::convert::TryFrom<#conv> for #name {
            type Error = ::sparsegen::typed::TypedError;

            fn try_from(conv: #conv) -> #result<Self, Self::Error> {
                <Self as ::sparsegen::typed::Layer>::from_conv(conv)
            }
        }

        #partner_check
    }
}

/// The generated doc lines, after the user's own.
fn docs(layer: &Layer) -> TokenStream {
    let spec = &layer.spec;
    let kind = match spec.kind {
        ConvKind::Submanifold => "submanifold convolution",
        ConvKind::Strided => "strided convolution",
        ConvKind::Inverse => "inverse convolution",
        ConvKind::Transposed => "transposed convolution",
    };
    let has_docs = layer.attrs.iter().any(|a| a.path().is_ident("doc"));
    let separator = has_docs.then(|| quote!(#[doc = ""]));
    let summary = format!(
        " A {}-D {kind}, {} → {} channels: `{}`.",
        spec.dims, spec.in_channels, spec.out_channels, layer.written
    );
    let name = if matches!(layer.partner, Some(Partner::External(_))) {
        " Generated".to_string()
    } else {
        format!(" Kernel name `{}`; generated", spec.kernel_name())
    };
    let partner = match &layer.partner {
        Some(Partner::Local(p)) => {
            format!(" It undoes [`{p}`], which must run first on the same engine.")
        }
        Some(Partner::External(p)) => format!(
            " It undoes [`{}`], which must run first on the same engine.",
            p.to_token_stream().to_string().replace(' ', "")
        ),
        None => String::new(),
    };
    let generated = format!(
        "{name} by `sparse_layer!`, see [`{}::SPEC`](Self::SPEC).{partner}",
        layer.name
    );
    quote! {
        #separator
        #[doc = #summary]
        #[doc = ""]
        #[doc = #generated]
    }
}

/// `LayerSpec { .. }` with every field written out. For an inverse layer whose partner is
/// defined elsewhere, the geometry is read from the partner's `SPEC` in the const itself.
fn spec_literal(spec: &LayerSpec, partner: Option<&Partner>) -> TokenStream {
    let dims = Literal::u8_unsuffixed(spec.dims);
    let kind = match spec.kind {
        ConvKind::Submanifold => quote!(Submanifold),
        ConvKind::Strided => quote!(Strided),
        ConvKind::Inverse => quote!(Inverse),
        ConvKind::Transposed => quote!(Transposed),
    };
    let u = |v: u32| Literal::u32_unsuffixed(v);
    let axes = |v: &[u32; 4]| {
        let v = v.iter().map(|&x| u(x));
        quote!([#(#v),*])
    };
    let (in_channels, out_channels, groups) =
        (u(spec.in_channels), u(spec.out_channels), u(spec.groups));
    let geometry = match partner {
        Some(Partner::External(path)) => {
            let of = quote_spanned!(path.span()=> <#path as ::sparsegen::typed::Layer>::SPEC);
            quote! {
                kernel: #of.kernel,
                stride: #of.stride,
                padding: #of.padding,
                dilation: #of.dilation,
            }
        }
        _ => {
            let (kernel, stride, padding, dilation) = (
                axes(&spec.kernel),
                axes(&spec.stride),
                axes(&spec.padding),
                axes(&spec.dilation),
            );
            quote! {
                kernel: #kernel,
                stride: #stride,
                padding: #padding,
                dilation: #dilation,
            }
        }
    };
    let output_padding = axes(&spec.output_padding);
    let bias = spec.bias;
    let activation = match spec.activation {
        Activation::Identity => quote!(Identity),
        Activation::Relu => quote!(Relu),
        Activation::Relu6 => quote!(Relu6),
        Activation::LeakyRelu {
            negative_slope_bits,
        } => {
            let bits = u(negative_slope_bits);
            quote!(LeakyRelu { negative_slope_bits: #bits })
        }
    };
    let dtype = match spec.dtype {
        DType::F32 => quote!(F32),
        DType::F16 => quote!(F16),
        DType::Bf16 => quote!(Bf16),
    };
    quote! {
        ::sparsegen::codegen::LayerSpec {
            dims: #dims,
            kind: ::sparsegen::codegen::ConvKind::#kind,
            in_channels: #in_channels,
            out_channels: #out_channels,
            groups: #groups,
            #geometry
            output_padding: #output_padding,
            bias: #bias,
            activation: ::sparsegen::codegen::Activation::#activation,
            dtype: ::sparsegen::codegen::DType::#dtype,
        }
    }
}

/// For a partner defined elsewhere: a `const` that fails to compile, with a message that says
/// what is wrong, unless the partner is a strided convolution of the same dims.
fn partner_check(layer: &Layer, path: &syn::Path) -> TokenStream {
    let span = path.span();
    let of = path.to_token_stream().to_string().replace(' ', "");
    let dims = Literal::u8_unsuffixed(layer.spec.dims);
    let not_strided = format!(
        "`{}`: `of: {of}` is not a strided convolution, but an inverse convolution undoes a strided one: point `of` at a `conv{}d` layer",
        layer.name, layer.spec.dims
    );
    let wrong_dims = format!(
        "`{}`: `of: {of}` does not have {} spatial dimensions: pair an `inverseNd` with a `convNd` of the same N",
        layer.name, layer.spec.dims
    );
    quote_spanned! {span=>
        const _: () = {
            let partner = <#path as ::sparsegen::typed::Layer>::SPEC;
            if !::core::matches!(partner.kind, ::sparsegen::codegen::ConvKind::Strided) {
                ::core::panic!(#not_strided);
            }
            if partner.dims != #dims {
                ::core::panic!(#wrong_dims);
            }
        };
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a test that unwraps fails with the error, which is what we want
mod tests {
    use super::*;
    use quote::quote;

    fn pretty(tokens: TokenStream) -> String {
        let file: syn::File = syn::parse2(tokens).expect("the expansion is valid Rust");
        prettyplease::unparse(&file)
    }

    #[test]
    fn representative_layer_expansion() {
        insta::assert_snapshot!(pretty(sparse_layer(quote! {
            /// Stem of a SECOND-style backbone.
            pub Stem = subm3d(in: 4, out: 16, kernel: 3, activation: relu);
        })));
    }

    #[test]
    fn inverse_of_an_outside_layer_expansion() {
        insta::assert_snapshot!(pretty(sparse_layer(quote! {
            pub(crate) Up1 = inverse3d(of: super::Down1, in: 32, out: 16, bias: true);
        })));
    }

    #[test]
    fn spec_literal_writes_every_field() {
        let spec = LayerSpec::builder(ConvKind::Transposed, 2)
            .channels(8, 4)
            .kernel([3, 2])
            .stride(2)
            .output_padding([1, 0])
            .groups(2)
            .bias(true)
            .activation(Activation::leaky_relu(0.5))
            .dtype(DType::Bf16)
            .build()
            .unwrap();
        let text = spec_literal(&spec, None).to_string();
        for part in [
            "dims : 2",
            "ConvKind :: Transposed",
            "in_channels : 8",
            "out_channels : 4",
            "groups : 2",
            "kernel : [3 , 2 , 1 , 1]",
            "stride : [2 , 2 , 1 , 1]",
            "padding : [0 , 0 , 0 , 0]",
            "dilation : [1 , 1 , 1 , 1]",
            "output_padding : [1 , 0 , 0 , 0]",
            "bias : true",
            &format!("LeakyRelu {{ negative_slope_bits : {} }}", 0.5f32.to_bits()),
            "DType :: Bf16",
        ] {
            assert!(text.contains(part), "`{part}` missing from {text}");
        }
    }

    #[test]
    fn valid_layers_are_emitted_next_to_errors() {
        let text = sparse_layer(quote! {
            A = subm3d(in: 4, out: 4);
            B = subm3d(in: 4, out: 4, kernel: 2);
        })
        .to_string();
        assert!(text.contains("struct A"));
        assert!(!text.contains("struct B"));
        assert!(text.contains("compile_error"));
    }

    #[test]
    fn a_parse_error_is_only_an_error() {
        let text = sparse_layer(quote! { A = subm3d(in 4) }).to_string();
        assert!(text.starts_with(":: core :: compile_error !"), "{text}");
    }
}
