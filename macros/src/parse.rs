//! Syntax of `sparse_layer!`: tokens to plain definitions, nothing more.
//!
//! ```text
//! input      := (definition ";")* definition?
//! definition := outer-attribute* visibility NAME "=" CONSTRUCTOR "(" (key ":" value),* ")"
//! ```
//!
//! This module only checks the shape of the input (names, `=`, parentheses, `key: value`
//! pairs); it does not know which keys exist or what their values mean. That is
//! [`crate::resolve`]'s job, so that every key-level mistake gets one spanned message there.
//! A value is parsed as a Rust expression, which keeps every token's span for later errors.

use proc_macro2::{Span, TokenStream};
use syn::ext::IdentExt as _;
use syn::parse::{Parse, ParseStream};
use syn::punctuated::Punctuated;
use syn::{Attribute, Expr, Ident, Token, Visibility};

/// Everything inside one `sparse_layer! { .. }` invocation.
#[derive(Debug, Clone)]
pub struct Input {
    /// The definitions, in source order.
    pub defs: Vec<LayerDef>,
}

/// One `pub Name = ctor(key: value, ..)` definition.
#[derive(Debug, Clone)]
pub struct LayerDef {
    /// Outer attributes, doc comments included; passed through to the generated type.
    pub attrs: Vec<Attribute>,
    /// The visibility of the generated type.
    pub vis: Visibility,
    /// The name of the generated type.
    pub name: Ident,
    /// The constructor, e.g. `subm3d`; names the kind and the dims.
    pub ctor: Ident,
    /// The span of the parenthesised arguments (where "missing key" errors point).
    pub args_span: Span,
    /// The `key: value` arguments, in source order (duplicates kept: resolve reports them).
    pub args: Vec<Arg>,
}

/// One `key: value` argument.
#[derive(Debug, Clone)]
pub struct Arg {
    /// The key; keywords such as `in` are accepted as keys.
    pub key: Ident,
    /// The value, as a Rust expression (literal, array, path or call).
    pub value: Expr,
}

/// Parses a whole invocation.
pub fn parse_input(tokens: TokenStream) -> syn::Result<Input> {
    syn::parse2(tokens)
}

impl Parse for Input {
    fn parse(input: ParseStream<'_>) -> syn::Result<Self> {
        let mut defs = Vec::new();
        while !input.is_empty() {
            defs.push(input.parse::<LayerDef>()?);
            if input.is_empty() {
                break;
            }
            if !input.peek(Token![;]) {
                return Err(input.error(
                    "expected `;` after a layer definition: end each one with `;`, e.g. `pub Stem = subm3d(in: 4, out: 16);`",
                ));
            }
            input.parse::<Token![;]>()?;
        }
        Ok(Input { defs })
    }
}

impl Parse for LayerDef {
    fn parse(input: ParseStream<'_>) -> syn::Result<Self> {
        let attrs = Attribute::parse_outer(input)?;
        let vis: Visibility = input.parse()?;
        if !input.peek(Ident) {
            return Err(input.error(
                "expected a layer definition such as `pub Stem = subm3d(in: 4, out: 16);`",
            ));
        }
        let name: Ident = input.parse()?;
        if !input.peek(Token![=]) {
            return Err(input.error(format!(
                "expected `=` after the layer name: `{name} = subm3d(in: .., out: ..)`"
            )));
        }
        input.parse::<Token![=]>()?;
        if !input.peek(Ident::peek_any) {
            return Err(input.error(
                "expected a layer constructor such as `subm3d`, `conv3d`, `inverse3d` or `deconv3d`",
            ));
        }
        let ctor = Ident::parse_any(input)?;
        if !input.peek(syn::token::Paren) {
            return Err(input.error(format!(
                "expected the layer's settings in parentheses: `{ctor}(in: .., out: ..)`"
            )));
        }
        let content;
        let paren = syn::parenthesized!(content in input);
        let args = Punctuated::<Arg, Token![,]>::parse_terminated(&content)?;
        Ok(LayerDef {
            attrs,
            vis,
            name,
            ctor,
            args_span: paren.span.join(),
            args: args.into_iter().collect(),
        })
    }
}

impl Parse for Arg {
    fn parse(input: ParseStream<'_>) -> syn::Result<Self> {
        if !input.peek(Ident::peek_any) {
            return Err(input.error("expected a setting such as `in: 16` or `kernel: 3`"));
        }
        let key = Ident::parse_any(input)?;
        if input.peek(Token![=]) {
            return Err(input.error(format!(
                "settings are written `{key}: value`, with a colon, not `=`"
            )));
        }
        if !input.peek(Token![:]) {
            return Err(input.error(format!("expected `:` after `{key}`, e.g. `{key}: 3`")));
        }
        input.parse::<Token![:]>()?;
        if input.is_empty() || input.peek(Token![,]) {
            return Err(input.error(format!("`{key}` needs a value after the `:`")));
        }
        let value: Expr = input.parse()?;
        Ok(Arg { key, value })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a test that unwraps fails with the error, which is what we want
mod tests {
    use super::*;
    use quote::quote;

    #[test]
    fn parses_definitions_with_docs_keywords_and_trailing_separators() {
        let input = parse_input(quote! {
            /// The stem.
            pub Stem = subm3d(in: 4, out: 16, kernel: [3, 1, 3],);
            Down = conv3d(in: 16, out: 32, stride: 2);
        })
        .unwrap();
        assert_eq!(input.defs.len(), 2);
        let stem = &input.defs[0];
        assert_eq!(stem.name.to_string(), "Stem");
        assert_eq!(stem.ctor.to_string(), "subm3d");
        assert_eq!(stem.attrs.len(), 1);
        assert!(matches!(stem.vis, Visibility::Public(_)));
        let keys: Vec<String> = stem.args.iter().map(|a| a.key.to_string()).collect();
        assert_eq!(keys, ["in", "out", "kernel"]);
        assert!(matches!(stem.args[2].value, Expr::Array(_)));
        assert!(matches!(input.defs[1].vis, Visibility::Inherited));
    }

    #[test]
    fn empty_input_is_no_layers() {
        assert!(parse_input(quote! {}).unwrap().defs.is_empty());
    }

    #[test]
    fn duplicates_are_kept_for_resolve_to_report() {
        let input = parse_input(quote! { A = subm3d(in: 1, in: 2) }).unwrap();
        assert_eq!(input.defs[0].args.len(), 2);
    }

    fn error(tokens: TokenStream) -> String {
        parse_input(tokens).unwrap_err().to_string()
    }

    #[test]
    fn malformed_input_says_what_was_expected() {
        assert!(error(quote! { A = subm3d(in: 1) B = subm3d(in: 1) }).contains("expected `;`"));
        assert!(error(quote! { A subm3d(in: 1) }).contains("expected `=`"));
        assert!(error(quote! { A = subm3d }).contains("in parentheses"));
        assert!(error(quote! { A = subm3d(in = 1) }).contains("with a colon"));
        assert!(error(quote! { A = subm3d(in 1) }).contains("expected `:`"));
        assert!(error(quote! { A = subm3d(in:) }).contains("needs a value"));
        assert!(error(quote! { = subm3d(in: 1) }).contains("expected a layer definition"));
        assert!(error(quote! { A = 3(in: 1) }).contains("layer constructor"));
    }
}
