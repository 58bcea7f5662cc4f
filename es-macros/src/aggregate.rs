//! `#[derive(Aggregate)]`.

use proc_macro2::TokenStream;
use quote::{quote, quote_spanned};
use syn::{Data, DeriveInput, LitStr, Path, Type};

use crate::attr::{self, Attr};
use crate::ctxt::Ctxt;
use crate::symbol::{AGGREGATE, COMMAND, CRATE, ERROR, EVENT, EVERY, NAME, SNAPSHOT, VERSION};

struct Input {
    krate: Path,
    name: LitStr,
    event: Type,
    command: Type,
    error: Type,
    every: Option<u64>,
    state_version: u64,
}

pub(crate) fn derive(input: &DeriveInput) -> TokenStream {
    crate::ctxt::run(input, "Aggregate", parse, expand, fallback)
}

fn fallback(input: &DeriveInput, errors: &syn::Error) -> TokenStream {
    let ident = &input.ident;
    let errors = errors.to_compile_error();
    if !matches!(input.data, Data::Struct(_)) {
        // A stub would only add errors about the enum's missing supertraits.
        return errors;
    }
    let (impl_generics, ty_generics, where_clause) = input.generics.split_for_impl();
    quote! {
        #errors
        #[automatically_derived]
        impl #impl_generics ::es_core::Aggregate for #ident #ty_generics #where_clause {
            const NAME: &'static str = "";
            type Event = ::es_core::__private::Never;
            type Command = ::es_core::__private::Never;
            type Error = ::es_core::__private::Never;
            fn decide(&self, _: Self::Command) -> ::core::result::Result<::std::vec::Vec<Self::Event>, Self::Error> { unreachable!() }
            fn evolve(&mut self, _: &Self::Event) { unreachable!() }
        }
    }
}

fn parse(cx: &Ctxt, input: &DeriveInput) -> Option<Input> {
    match &input.data {
        Data::Struct(_) => {}
        Data::Enum(data) => cx.error_spanned_by(
            data.enum_token,
            "derive(Aggregate) supports structs; hold the enum in a struct field (`struct Order { status: Status }`)",
        ),
        Data::Union(data) => cx.error_spanned_by(
            data.union_token,
            "derive(Aggregate) supports structs, not unions",
        ),
    }
    let mut krate = Attr::none(cx, AGGREGATE, CRATE);
    let mut name = Attr::none(cx, AGGREGATE, NAME);
    let mut event = Attr::none(cx, AGGREGATE, EVENT);
    let mut command = Attr::none(cx, AGGREGATE, COMMAND);
    let mut error = Attr::none(cx, AGGREGATE, ERROR);
    let mut every = Attr::none(cx, SNAPSHOT, EVERY);
    let mut version = Attr::none(cx, SNAPSHOT, VERSION);
    let mut snapshot_seen = Attr::none(cx, AGGREGATE, SNAPSHOT);
    let mut found = false;
    for attr in input.attrs.iter().filter(|a| a.path() == &AGGREGATE) {
        found = true;
        let result = attr.parse_nested_meta(|meta| {
            if meta.path == CRATE {
                if let Some(path) = attr::crate_path(cx, &meta, AGGREGATE)? {
                    krate.set(&meta.path, path);
                }
            } else if meta.path == NAME {
                if let Some(s) = attr::lit_str(cx, &meta, AGGREGATE, NAME)? {
                    name.set(&meta.path, s);
                }
            } else if meta.path == EVENT {
                event.set(&meta.path, attr::parse_value::<Type>(&meta)?);
            } else if meta.path == COMMAND {
                command.set(&meta.path, attr::parse_value::<Type>(&meta)?);
            } else if meta.path == ERROR {
                error.set(&meta.path, attr::parse_value::<Type>(&meta)?);
            } else if meta.path == SNAPSHOT {
                snapshot_seen.set(&meta.path, ());
                meta.parse_nested_meta(|inner| {
                    if inner.path == EVERY {
                        if let Some((lit, n)) = attr::lit_positive(cx, &inner, SNAPSHOT, EVERY)? {
                            every.set(lit, n);
                        }
                    } else if inner.path == VERSION {
                        if let Some((lit, n)) = attr::lit_positive(cx, &inner, SNAPSHOT, VERSION)? {
                            version.set(lit, n);
                        }
                    } else {
                        attr::unknown(cx, &inner, SNAPSHOT, &[EVERY, VERSION])?;
                    }
                    Ok(())
                })?;
            } else {
                attr::unknown(
                    cx,
                    &meta,
                    AGGREGATE,
                    &[NAME, EVENT, COMMAND, ERROR, SNAPSHOT, CRATE],
                )?;
            }
            Ok(())
        });
        if let Err(e) = result {
            cx.syn_error(e);
        }
    }
    let ident = &input.ident;
    if !found {
        cx.error_spanned_by(
            ident,
            "derive(Aggregate) needs `#[aggregate(name = \"…\", event = EventType, command = CommandType, error = ErrorType)]`",
        );
        return None;
    }
    let missing = |key: &str, example: &str| {
        cx.error_spanned_by(
            ident,
            format!("missing `{key}` in `#[aggregate(…)]`; add `{key} = {example}`"),
        );
    };
    let name = name.get();
    let event = event.get();
    let command = command.get();
    let error = error.get();
    if name.is_none() {
        missing("name", "\"order\"");
    }
    if event.is_none() {
        missing("event", "OrderEvent");
    }
    if command.is_none() {
        missing("command", "OrderCommand");
    }
    if error.is_none() {
        missing("error", "OrderError");
    }
    let every = every.get();
    if snapshot_seen.get().is_some() && every.is_none() {
        cx.error_spanned_by(
            ident,
            "`snapshot(…)` needs `every = N`: the number of events between snapshots",
        );
    }
    Some(Input {
        krate: krate.get().unwrap_or_else(attr::default_crate),
        name: name?,
        event: event?,
        command: command?,
        error: error?,
        every,
        state_version: version.get().unwrap_or(1),
    })
}

fn expand(input: &DeriveInput, parsed: &Input) -> TokenStream {
    let Input {
        krate,
        name,
        event,
        command,
        error,
        every,
        state_version,
    } = parsed;
    let ident = &input.ident;
    let private = quote!(#krate::__private);
    let (impl_generics, ty_generics, where_clause) = input.generics.split_for_impl();
    let state_version = u32::try_from(*state_version).unwrap_or(u32::MAX);
    let policy = match every {
        Some(n) => quote!(#krate::SnapshotPolicy::Every(#n)),
        None => quote!(#krate::SnapshotPolicy::Never),
    };
    let span = ident.span();
    let handle = quote_spanned! {span=>
        #private::handle_with::<Self, #command, #event, #error, _>(<Self>::handle, self, command)
    };
    let apply = quote_spanned! {span=>
        #private::apply_with::<Self, #event, _>(<Self>::apply, self, event)
    };
    quote! {
        const _: () = {
            #[allow(unused_imports)]
            use #private::{MissingApply as _, MissingHandle as _};

            #[automatically_derived]
            impl #impl_generics #krate::Aggregate for #ident #ty_generics #where_clause {
                const NAME: &'static str = #name;
                const STATE_VERSION: u32 = #state_version;
                type Event = #event;
                type Command = #command;
                type Error = #error;

                fn decide(&self, command: #command) -> ::core::result::Result<::std::vec::Vec<#event>, #error> {
                    #handle
                }

                fn evolve(&mut self, event: &#event) {
                    #apply
                }

                fn snapshot_policy() -> #krate::SnapshotPolicy {
                    #policy
                }
            }
        };
    }
}
