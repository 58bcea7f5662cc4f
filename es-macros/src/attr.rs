//! Attribute parsing helpers shared by the derives.

use proc_macro2::TokenStream;
use quote::ToTokens;
use syn::meta::ParseNestedMeta;
use syn::{Expr, ExprLit, Lit, LitInt, LitStr};

use crate::ctxt::Ctxt;
use crate::symbol::{one_of, Symbol};

/// A value that may be given once.
pub(crate) struct Attr<'c, T> {
    cx: &'c Ctxt,
    attr: Symbol,
    key: Symbol,
    tokens: TokenStream,
    value: Option<T>,
}

impl<'c, T> Attr<'c, T> {
    pub(crate) fn none(cx: &'c Ctxt, attr: Symbol, key: Symbol) -> Self {
        Attr {
            cx,
            attr,
            key,
            tokens: TokenStream::new(),
            value: None,
        }
    }

    /// Sets the value, or reports a duplicate at `tokens`.
    pub(crate) fn set<A: ToTokens>(&mut self, tokens: A, value: T) {
        let tokens = tokens.into_token_stream();
        if self.value.is_some() {
            self.cx.error_spanned_by(
                tokens,
                format!("duplicate `{}` attribute `{}`", self.attr, self.key),
            );
        } else {
            self.tokens = tokens;
            self.value = Some(value);
        }
    }

    pub(crate) fn get(self) -> Option<T> {
        self.value
    }

    pub(crate) fn get_with_tokens(self) -> Option<(TokenStream, T)> {
        let tokens = self.tokens;
        self.value.map(|v| (tokens, v))
    }
}

/// Reports an unknown key and skips its value so parsing can go on.
pub(crate) fn unknown(
    cx: &Ctxt,
    meta: &ParseNestedMeta<'_>,
    attr: Symbol,
    expected: &[Symbol],
) -> syn::Result<()> {
    let key = meta.path.to_token_stream().to_string().replace(' ', "");
    cx.error_spanned_by(
        &meta.path,
        format!(
            "unknown `{attr}` attribute `{key}`; expected {}",
            one_of(expected)
        ),
    );
    skip_value(meta)
}

/// Consumes `= value` or `(...)` after a key.
pub(crate) fn skip_value(meta: &ParseNestedMeta<'_>) -> syn::Result<()> {
    if meta.input.peek(syn::Token![=]) {
        meta.value()?.parse::<Expr>()?;
    } else if meta.input.peek(syn::token::Paren) {
        let content;
        syn::parenthesized!(content in meta.input);
        content.parse::<TokenStream>()?;
    }
    Ok(())
}

/// The expression after `key =`.
fn value_expr(meta: &ParseNestedMeta<'_>) -> syn::Result<Expr> {
    meta.value()?.parse::<Expr>()
}

/// A string literal after `key =`, or an error naming the key.
pub(crate) fn lit_str(
    cx: &Ctxt,
    meta: &ParseNestedMeta<'_>,
    attr: Symbol,
    key: Symbol,
) -> syn::Result<Option<LitStr>> {
    let expr = value_expr(meta)?;
    if let Expr::Lit(ExprLit {
        lit: Lit::Str(s), ..
    }) = &expr
    {
        if s.value().is_empty() {
            cx.error_spanned_by(s, format!("`{attr}` attribute `{key}` must not be empty"));
            return Ok(None);
        }
        return Ok(Some(s.clone()));
    }
    cx.error_spanned_by(
        &expr,
        format!("`{attr}` attribute `{key}` takes a string literal, like `{key} = \"Name\"`"),
    );
    Ok(None)
}

/// A positive integer literal after `key =`, or an error naming the key.
pub(crate) fn lit_positive(
    cx: &Ctxt,
    meta: &ParseNestedMeta<'_>,
    attr: Symbol,
    key: Symbol,
) -> syn::Result<Option<(LitInt, u64)>> {
    let expr = value_expr(meta)?;
    if let Expr::Lit(ExprLit {
        lit: Lit::Int(int), ..
    }) = &expr
    {
        return match int.base10_parse::<u32>() {
            Ok(0) => {
                cx.error_spanned_by(int, format!("`{key}` starts at 1"));
                Ok(None)
            }
            Ok(n) => Ok(Some((int.clone(), u64::from(n)))),
            Err(e) => {
                cx.syn_error(e);
                Ok(None)
            }
        };
    }
    cx.error_spanned_by(
        &expr,
        format!("`{attr}` attribute `{key}` takes an integer literal, like `{key} = 2`"),
    );
    Ok(None)
}

/// A path or type after `key =` (`event = OrderEvent`).
pub(crate) fn parse_value<T: syn::parse::Parse>(meta: &ParseNestedMeta<'_>) -> syn::Result<T> {
    meta.value()?.parse::<T>()
}

/// The `crate = "path"` override.
pub(crate) fn crate_path(
    cx: &Ctxt,
    meta: &ParseNestedMeta<'_>,
    attr: Symbol,
) -> syn::Result<Option<syn::Path>> {
    let Some(s) = lit_str(cx, meta, attr, crate::symbol::CRATE)? else {
        return Ok(None);
    };
    match s.parse::<syn::Path>() {
        Ok(path) => Ok(Some(path)),
        Err(_) => {
            cx.error_spanned_by(&s, format!("`{}` is not a path to a crate", s.value()));
            Ok(None)
        }
    }
}

/// The crate path generated code uses: `::es_core` unless overridden.
pub(crate) fn default_crate() -> syn::Path {
    syn::parse_quote!(::es_core)
}

/// A type written as text for the catalog: `Vec<Line>`, not `Vec < Line >`.
pub(crate) fn type_text(ty: &syn::Type) -> String {
    let raw = ty.to_token_stream().to_string();
    let mut out = String::with_capacity(raw.len());
    for part in raw.split(' ') {
        let joins = out.ends_with(['<', '&', ':', '(', '[']) && !out.ends_with("mut")
            || part.starts_with(['<', '>', ':', ',', ')', ']', ';'])
            || out.is_empty();
        if !joins {
            out.push(' ');
        }
        out.push_str(part);
    }
    out.replace("& '", "&'")
}

#[cfg(test)]
mod tests {
    use super::type_text;

    #[test]
    fn type_text_is_readable() {
        let cases = [
            ("Vec<Line>", "Vec<Line>"),
            (
                "std::collections::BTreeMap<String, Vec<u32>>",
                "std::collections::BTreeMap<String, Vec<u32>>",
            ),
            ("Option<&'static str>", "Option<&'static str>"),
            ("(u32, String)", "(u32, String)"),
            ("[u8; 4]", "[u8; 4]"),
        ];
        for (input, expected) in cases {
            let ty: syn::Type = syn::parse_str(input).unwrap();
            assert_eq!(type_text(&ty), expected);
        }
    }
}
