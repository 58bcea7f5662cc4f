//! Collects every error of one derive before giving up, so a user with three
//! mistakes sees three errors.

use std::cell::RefCell;
use std::fmt::Display;

use proc_macro2::{Span, TokenStream};
use quote::ToTokens;
use syn::DeriveInput;

/// The error collector of one derive invocation.
#[derive(Default)]
pub(crate) struct Ctxt {
    errors: RefCell<Vec<syn::Error>>,
}

impl Ctxt {
    /// Records an error spanned at `tokens`.
    pub(crate) fn error_spanned_by<T: ToTokens, M: Display>(&self, tokens: T, message: M) {
        self.errors
            .borrow_mut()
            .push(syn::Error::new_spanned(tokens.into_token_stream(), message));
    }

    /// Records an error from syn.
    pub(crate) fn syn_error(&self, error: syn::Error) {
        self.errors.borrow_mut().push(error);
    }

    /// Consumes the collector: `Ok` without errors, else all of them combined.
    pub(crate) fn check(self) -> syn::Result<()> {
        let mut errors = self.errors.into_inner().into_iter();
        let Some(mut combined) = errors.next() else {
            return Ok(());
        };
        for rest in errors {
            combined.combine(rest);
        }
        Err(combined)
    }
}

/// The shape of every derive: parse with a collector, then expand, or emit
/// the errors next to a stub impl when anything was wrong.
pub(crate) fn run<'a, T>(
    input: &'a DeriveInput,
    derive: &str,
    parse: impl FnOnce(&Ctxt, &'a DeriveInput) -> Option<T>,
    expand: impl FnOnce(&'a DeriveInput, &T) -> TokenStream,
    fallback: impl FnOnce(&'a DeriveInput, &syn::Error) -> TokenStream,
) -> TokenStream {
    let cx = Ctxt::default();
    let parsed = parse(&cx, input);
    match (cx.check(), parsed) {
        (Ok(()), Some(parsed)) => expand(input, &parsed),
        (Err(errors), _) => fallback(input, &errors),
        (Ok(()), None) => fallback(
            input,
            &syn::Error::new(
                Span::call_site(),
                format!("derive({derive}) could not read its input"),
            ),
        ),
    }
}
