//! `#[derive(Projection)]`.

use proc_macro2::TokenStream;
use quote::{quote, quote_spanned};
use syn::punctuated::Punctuated;
use syn::spanned::Spanned;
use syn::{DeriveInput, LitStr, Path, Token, Type};

use crate::attr::{self, Attr};
use crate::ctxt::Ctxt;
use crate::symbol::{CONTEXT, CRATE, EVENTS, NAME, PROJECTION, VERSION};

struct Input {
    krate: Path,
    name: LitStr,
    version: u64,
    events: Vec<Type>,
    context: Option<Type>,
}

pub(crate) fn derive(input: &DeriveInput) -> TokenStream {
    crate::ctxt::run(input, "Projection", parse, expand, fallback)
}

fn fallback(input: &DeriveInput, errors: &syn::Error) -> TokenStream {
    let ident = &input.ident;
    let errors = errors.to_compile_error();
    let (impl_generics, ty_generics, where_clause) = input.generics.split_for_impl();
    quote! {
        #errors
        #[automatically_derived]
        #[::es_core::__private::async_trait]
        impl #impl_generics ::es_core::Projection for #ident #ty_generics #where_clause {
            type Context = ();
            const NAME: &'static str = "";
            fn event_types() -> ::core::option::Option<::std::vec::Vec<::std::string::String>> { unreachable!() }
            async fn handle(&self, _: &mut (), _: &::es_core::RecordedEvent) -> ::core::result::Result<(), ::es_core::BoxError> { unreachable!() }
            async fn reset(&self, _: &mut ()) -> ::core::result::Result<(), ::es_core::BoxError> { unreachable!() }
        }
    }
}

fn parse(cx: &Ctxt, input: &DeriveInput) -> Option<Input> {
    let mut krate = Attr::none(cx, PROJECTION, CRATE);
    let mut name = Attr::none(cx, PROJECTION, NAME);
    let mut version = Attr::none(cx, PROJECTION, VERSION);
    let mut events = Attr::none(cx, PROJECTION, EVENTS);
    let mut context = Attr::none(cx, PROJECTION, CONTEXT);
    let mut found = false;
    for attr in input.attrs.iter().filter(|a| a.path() == &PROJECTION) {
        found = true;
        let result = attr.parse_nested_meta(|meta| {
            if meta.path == CRATE {
                if let Some(path) = attr::crate_path(cx, &meta, PROJECTION)? {
                    krate.set(&meta.path, path);
                }
            } else if meta.path == NAME {
                if let Some(s) = attr::lit_str(cx, &meta, PROJECTION, NAME)? {
                    name.set(&meta.path, s);
                }
            } else if meta.path == VERSION {
                if let Some((lit, n)) = attr::lit_positive(cx, &meta, PROJECTION, VERSION)? {
                    version.set(lit, n);
                }
            } else if meta.path == EVENTS {
                let content;
                syn::parenthesized!(content in meta.input);
                let list = Punctuated::<Type, Token![,]>::parse_terminated(&content)?;
                if list.is_empty() {
                    cx.error_spanned_by(
                        &meta.path,
                        "`events(…)` is empty; list the event families this projection handles, like `events(OrderEvent, PaymentEvent)`",
                    );
                }
                events.set(&meta.path, list.into_iter().collect::<Vec<_>>());
            } else if meta.path == CONTEXT {
                context.set(&meta.path, attr::parse_value::<Type>(&meta)?);
            } else {
                attr::unknown(cx, &meta, PROJECTION, &[NAME, VERSION, EVENTS, CONTEXT, CRATE])?;
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
            "derive(Projection) needs `#[projection(name = \"…\", events(EventFamily, …))]`",
        );
        return None;
    }
    let name = name.get();
    let events = events.get();
    if name.is_none() {
        cx.error_spanned_by(
            ident,
            "missing `name` in `#[projection(…)]`; add `name = \"order_summary\"`",
        );
    }
    if events.is_none() {
        cx.error_spanned_by(
            ident,
            "missing `events(…)` in `#[projection(…)]`; add the event families it handles, like `events(OrderEvent)`",
        );
    }
    Some(Input {
        krate: krate.get().unwrap_or_else(attr::default_crate),
        name: name?,
        version: version.get().unwrap_or(1),
        events: events?,
        context: context.get(),
    })
}

fn expand(input: &DeriveInput, parsed: &Input) -> TokenStream {
    let Input {
        krate,
        name,
        version,
        events,
        context,
    } = parsed;
    let ident = &input.ident;
    let private = quote!(#krate::__private);
    let (impl_generics, ty_generics, where_clause) = input.generics.split_for_impl();
    let version = u32::try_from(*version).unwrap_or(u32::MAX);
    let context = context.as_ref().map_or_else(|| quote!(()), |c| quote!(#c));
    let dispatch = events.iter().map(|family| {
        let handles = quote_spanned! {family.span()=>
            <Self as #krate::Handles<#family>>::handle_event(self, context, envelope).await
        };
        quote! {
            if <#family as #krate::Event>::schema().resolve(&event.event_type).is_some() {
                let envelope = <#family as #krate::Event>::decode(event)?;
                return #handles;
            }
        }
    });
    let runs = events.iter().map(|family| {
        let handles = quote_spanned! {family.span()=>
            <Self as #krate::Handles<#family>>::handle_events(self, context, run).await
        };
        quote! {
            if <#family as #krate::Event>::schema().resolve(&events[start].event_type).is_some() {
                let mut run = ::std::vec::Vec::new();
                let mut end = start;
                let mut undecodable = ::core::option::Option::None;
                while end < events.len()
                    && <#family as #krate::Event>::schema().resolve(&events[end].event_type).is_some()
                {
                    match <#family as #krate::Event>::decode(&events[end]) {
                        ::core::result::Result::Ok(envelope) => run.push(envelope),
                        ::core::result::Result::Err(error) => {
                            undecodable = ::core::option::Option::Some(error);
                            break;
                        }
                    }
                    end += 1;
                }
                #handles.map_err(|failure| #krate::BatchError {
                    handled: start + failure.handled,
                    source: failure.source,
                })?;
                if let ::core::option::Option::Some(error) = undecodable {
                    return ::core::result::Result::Err(#krate::BatchError::at(end, error));
                }
                start = end;
                continue;
            }
        }
    });
    let reset = quote_spanned! {ident.span()=>
        <Self as #krate::ResetProjection>::reset_read_model(self, context).await
    };
    quote! {
        const _: () = {
            #[automatically_derived]
            #[#private::async_trait]
            impl #impl_generics #krate::Projection for #ident #ty_generics #where_clause {
                type Context = #context;
                const NAME: &'static str = #name;
                const VERSION: u32 = #version;

                fn event_types() -> ::core::option::Option<::std::vec::Vec<::std::string::String>> {
                    let mut types = ::std::vec::Vec::new();
                    #( types.extend(<#events as #krate::Event>::stored_types()); )*
                    ::core::option::Option::Some(types)
                }

                async fn handle(
                    &self,
                    context: &mut #context,
                    event: &#krate::RecordedEvent,
                ) -> ::core::result::Result<(), #krate::BoxError> {
                    #( #dispatch )*
                    ::core::result::Result::Ok(())
                }

                async fn handle_batch(
                    &self,
                    context: &mut #context,
                    events: &[#krate::RecordedEvent],
                ) -> ::core::result::Result<(), #krate::BatchError> {
                    // Each run of consecutive events of one family goes to
                    // its `handle_events` at once.
                    let mut start = 0;
                    while start < events.len() {
                        #( #runs )*
                        start += 1;
                    }
                    ::core::result::Result::Ok(())
                }

                async fn reset(&self, context: &mut #context) -> ::core::result::Result<(), #krate::BoxError> {
                    #reset
                }
            }
        };
    }
}
