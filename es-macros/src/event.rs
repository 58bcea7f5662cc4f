//! `#[derive(Event)]`.

use std::collections::BTreeMap;

use proc_macro2::TokenStream;
use quote::{quote, quote_spanned, ToTokens};
use syn::spanned::Spanned;
use syn::{Data, DeriveInput, Fields, Ident, LitStr, Path};

use crate::attr::{self, Attr};
use crate::ctxt::Ctxt;
use crate::symbol::{
    Symbol, ALIAS, CRATE, EVENT, FAMILY, FROM, RENAME, UPCAST, UPCAST_FROM, VERSION, WITH,
};

const VARIANT_KEYS: &[Symbol] = &[RENAME, ALIAS, VERSION, UPCAST_FROM, UPCAST];
const ENUM_KEYS: &[Symbol] = &[CRATE, FAMILY];
const STRUCT_KEYS: &[Symbol] = &[CRATE, FAMILY, RENAME, ALIAS, VERSION, UPCAST_FROM, UPCAST];

/// One event type: an enum variant, or the struct itself.
struct TypeSpec {
    /// The Rust name (the variant's, or the struct's).
    ident: Ident,
    /// The stored name.
    name: LitStr,
    aliases: Vec<LitStr>,
    version: u64,
    version_tokens: Option<TokenStream>,
    upcast_from: Vec<Path>,
    upcast_json: Vec<(u64, TokenStream, Path)>,
    /// (field name, field type) for the catalog; a newtype payload is named `0`.
    fields: Vec<(String, String)>,
    /// How to match the variant: `Self::V { .. }`, `Self::V(..)` or `Self::V`.
    pattern: TokenStream,
}

struct Input<'a> {
    ident: &'a Ident,
    krate: Path,
    family: String,
    types: Vec<TypeSpec>,
    is_enum: bool,
}

pub(crate) fn derive(input: &DeriveInput) -> TokenStream {
    crate::ctxt::run(input, "Event", parse, |_, parsed| expand(parsed), fallback)
}

/// The errors plus a stub impl, so that one mistake gives one error.
fn fallback(input: &DeriveInput, errors: &syn::Error) -> TokenStream {
    let ident = &input.ident;
    let errors = errors.to_compile_error();
    if !input.generics.params.is_empty() || matches!(input.data, Data::Union(_)) {
        // A stub would only add errors about bounds the type cannot meet.
        return errors;
    }
    let (impl_generics, ty_generics, where_clause) = input.generics.split_for_impl();
    quote! {
        #errors
        #[automatically_derived]
        impl #impl_generics ::es_core::Event for #ident #ty_generics #where_clause {
            fn event_type(&self) -> &'static str { unreachable!() }
            fn to_payload(&self) -> ::es_core::__private::serde_json::Result<::es_core::Payload> { unreachable!() }
            fn from_payload(_: &str, _: &::es_core::Payload) -> ::es_core::__private::serde_json::Result<Self> { unreachable!() }
            fn schema() -> &'static ::es_core::EventSchema { unreachable!() }
        }
    }
}

fn parse<'a>(cx: &Ctxt, input: &'a DeriveInput) -> Option<Input<'a>> {
    if !input.generics.params.is_empty() {
        cx.error_spanned_by(
            &input.generics,
            "derive(Event) does not support generic event types; use concrete types in the event",
        );
    }
    reject_serde_representation(cx, &input.attrs, "the enum");
    let is_enum = matches!(input.data, Data::Enum(_));
    let mut krate = Attr::none(cx, EVENT, CRATE);
    let mut family = Attr::none(cx, EVENT, FAMILY);
    let mut own = Partial::new(cx);
    for attr in input.attrs.iter().filter(|a| a.path() == &EVENT) {
        let result = attr.parse_nested_meta(|meta| {
            if meta.path == CRATE {
                if let Some(path) = attr::crate_path(cx, &meta, EVENT)? {
                    krate.set(&meta.path, path);
                }
            } else if meta.path == FAMILY {
                if let Some(s) = attr::lit_str(cx, &meta, EVENT, FAMILY)? {
                    family.set(&meta.path, s.value());
                }
            } else if !is_enum && own.parse_key(&meta)? {
            } else {
                let expected = if is_enum { ENUM_KEYS } else { STRUCT_KEYS };
                attr::unknown(cx, &meta, EVENT, expected)?;
            }
            Ok(())
        });
        if let Err(e) = result {
            cx.syn_error(e);
        }
    }
    let krate = krate.get().unwrap_or_else(attr::default_crate);
    let family = family.get().unwrap_or_else(|| input.ident.to_string());
    let types = match &input.data {
        Data::Enum(data) => {
            if data.variants.is_empty() {
                cx.error_spanned_by(
                    &input.ident,
                    "derive(Event) needs at least one variant: each variant is an event type",
                );
            }
            data.variants
                .iter()
                .filter_map(|variant| {
                    reject_serde_representation(cx, &variant.attrs, "a variant");
                    let mut partial = Partial::new(cx);
                    for attr in variant.attrs.iter().filter(|a| a.path() == &EVENT) {
                        let result = attr.parse_nested_meta(|meta| {
                            if !partial.parse_key(&meta)? {
                                attr::unknown(cx, &meta, EVENT, VARIANT_KEYS)?;
                            }
                            Ok(())
                        });
                        if let Err(e) = result {
                            cx.syn_error(e);
                        }
                    }
                    let ident = &variant.ident;
                    let (pattern, fields) = match &variant.fields {
                        Fields::Named(named) => (
                            quote!(Self::#ident { .. }),
                            named
                                .named
                                .iter()
                                .map(|f| {
                                    let name = f.ident.as_ref().map(ToString::to_string);
                                    (name.unwrap_or_default(), attr::type_text(&f.ty))
                                })
                                .collect(),
                        ),
                        Fields::Unnamed(unnamed) if unnamed.unnamed.len() == 1 => (
                            quote!(Self::#ident(..)),
                            vec![("0".to_owned(), attr::type_text(&unnamed.unnamed[0].ty))],
                        ),
                        Fields::Unnamed(unnamed) => {
                            cx.error_spanned_by(
                                unnamed,
                                "an event variant has named fields or exactly one unnamed field; \
                                 name the fields, or wrap them in a struct",
                            );
                            return None;
                        }
                        Fields::Unit => (quote!(Self::#ident), Vec::new()),
                    };
                    Some(partial.finish(ident.clone(), pattern, fields))
                })
                .collect()
        }
        Data::Struct(data) => {
            let fields = match &data.fields {
                Fields::Named(named) => named
                    .named
                    .iter()
                    .map(|f| {
                        let name = f.ident.as_ref().map(ToString::to_string);
                        (name.unwrap_or_default(), attr::type_text(&f.ty))
                    })
                    .collect(),
                Fields::Unnamed(unnamed) => unnamed
                    .unnamed
                    .iter()
                    .enumerate()
                    .map(|(i, f)| (i.to_string(), attr::type_text(&f.ty)))
                    .collect(),
                Fields::Unit => Vec::new(),
            };
            vec![own.finish(input.ident.clone(), quote!(_), fields)]
        }
        Data::Union(data) => {
            cx.error_spanned_by(
                data.union_token,
                "derive(Event) supports enums (one event type per variant) and structs, not unions",
            );
            return None;
        }
    };
    check_names(cx, &types);
    Some(Input {
        ident: &input.ident,
        krate,
        family,
        types,
        is_enum,
    })
}

/// Serde attributes that change how an enum or variant is tagged would break
/// the payload mapping; the event's own attributes do that job.
fn reject_serde_representation(cx: &Ctxt, attrs: &[syn::Attribute], what: &str) {
    for attr in attrs.iter().filter(|a| a.path().is_ident("serde")) {
        let _ = attr.parse_nested_meta(|meta| {
            for key in ["tag", "content", "untagged", "rename", "rename_all", "alias"] {
                if meta.path.is_ident(key) {
                    cx.error_spanned_by(
                        &meta.path,
                        format!(
                            "`#[serde({key})]` on {what} changes the stored event names or payloads; \
                             use `#[event(rename = \"…\")]` or `#[event(alias = \"…\")]` instead"
                        ),
                    );
                }
            }
            attr::skip_value(&meta)
        });
    }
}

/// The per-type attributes while they are parsed.
struct Partial<'c> {
    cx: &'c Ctxt,
    rename: Attr<'c, LitStr>,
    version: Attr<'c, u64>,
    aliases: Vec<LitStr>,
    upcast_from: Vec<Path>,
    upcast_json: Vec<(u64, TokenStream, Path)>,
}

impl<'c> Partial<'c> {
    fn new(cx: &'c Ctxt) -> Self {
        Self {
            cx,
            rename: Attr::none(cx, EVENT, RENAME),
            version: Attr::none(cx, EVENT, VERSION),
            aliases: Vec::new(),
            upcast_from: Vec::new(),
            upcast_json: Vec::new(),
        }
    }

    /// Parses one key; returns whether it was one of the type keys.
    fn parse_key(&mut self, meta: &syn::meta::ParseNestedMeta<'_>) -> syn::Result<bool> {
        let cx = self.cx;
        if meta.path == RENAME {
            if let Some(s) = attr::lit_str(cx, meta, EVENT, RENAME)? {
                self.rename.set(&meta.path, s);
            }
        } else if meta.path == ALIAS {
            if let Some(s) = attr::lit_str(cx, meta, EVENT, ALIAS)? {
                self.aliases.push(s);
            }
        } else if meta.path == VERSION {
            if let Some((lit, n)) = attr::lit_positive(cx, meta, EVENT, VERSION)? {
                self.version.set(lit, n);
            }
        } else if meta.path == UPCAST_FROM {
            self.upcast_from.push(attr::parse_value::<Path>(meta)?);
        } else if meta.path == UPCAST {
            self.parse_upcast(meta)?;
        } else {
            return Ok(false);
        }
        Ok(true)
    }

    /// `upcast(from = N, with = path::to::function)`.
    fn parse_upcast(&mut self, meta: &syn::meta::ParseNestedMeta<'_>) -> syn::Result<()> {
        let cx = self.cx;
        let mut from = Attr::none(cx, UPCAST, FROM);
        let mut with = Attr::none(cx, UPCAST, WITH);
        let outer = meta.path.clone();
        meta.parse_nested_meta(|inner| {
            if inner.path == FROM {
                if let Some((lit, n)) = attr::lit_positive(cx, &inner, UPCAST, FROM)? {
                    from.set(lit, n);
                }
            } else if inner.path == WITH {
                with.set(&inner.path, attr::parse_value::<Path>(&inner)?);
            } else {
                attr::unknown(cx, &inner, UPCAST, &[FROM, WITH])?;
            }
            Ok(())
        })?;
        match (from.get_with_tokens(), with.get()) {
            (Some((tokens, n)), Some(path)) => self.upcast_json.push((n, tokens, path)),
            _ => cx.error_spanned_by(
                outer,
                "`upcast` needs both keys: `upcast(from = 1, with = path::to::function)`",
            ),
        }
        Ok(())
    }

    fn finish(self, ident: Ident, pattern: TokenStream, fields: Vec<(String, String)>) -> TypeSpec {
        let name = self
            .rename
            .get()
            .unwrap_or_else(|| LitStr::new(&ident.to_string(), ident.span()));
        let (version_tokens, version) = match self.version.get_with_tokens() {
            Some((tokens, v)) => (Some(tokens), v),
            None => (None, 1),
        };
        TypeSpec {
            ident,
            name,
            aliases: self.aliases,
            version,
            version_tokens,
            upcast_from: self.upcast_from,
            upcast_json: self.upcast_json,
            fields,
            pattern,
        }
    }
}

/// Names unique across the family; upcasters within each type's versions.
fn check_names(cx: &Ctxt, types: &[TypeSpec]) {
    let mut seen: BTreeMap<String, &Ident> = BTreeMap::new();
    for t in types {
        for (lit, is_alias) in
            std::iter::once((&t.name, false)).chain(t.aliases.iter().map(|a| (a, true)))
        {
            let value = lit.value();
            if let Some(other) = seen.get(&value) {
                let what = if is_alias { "alias" } else { "event type" };
                cx.error_spanned_by(
                    lit,
                    format!(
                        "{what} `{value}` is already the name or an alias of `{other}`; each stored name must be unique in the family"
                    ),
                );
            } else {
                seen.insert(value, &t.ident);
            }
        }
        let typed = t.upcast_from.len() as u64;
        if typed >= t.version {
            let span = t
                .version_tokens
                .clone()
                .unwrap_or_else(|| t.upcast_from[0].to_token_stream());
            cx.error_spanned_by(
                span,
                format!(
                    "`{}` lists {typed} `upcast_from` shape(s), but version {} has only {} older version(s); \
                     raise `version` to {}",
                    t.ident,
                    t.version,
                    t.version - 1,
                    typed + 1
                ),
            );
        }
        let typed_from: Vec<u64> = (t.version.saturating_sub(typed)..t.version).collect();
        let mut json_from = BTreeMap::new();
        for (from, tokens, _) in &t.upcast_json {
            if *from >= t.version {
                cx.error_spanned_by(
                    tokens,
                    format!(
                        "`upcast(from = {from})` must start below the current version {}",
                        t.version
                    ),
                );
            } else if typed_from.contains(from) || json_from.insert(*from, ()).is_some() {
                cx.error_spanned_by(
                    tokens,
                    format!("`{}` has two upcasters from version {from}", t.ident),
                );
            }
        }
    }
}

fn expand(input: &Input<'_>) -> TokenStream {
    let Input {
        ident,
        krate,
        family,
        types,
        is_enum,
    } = input;
    let private = quote!(#krate::__private);
    let json = quote!(#private::serde_json);
    let names: Vec<&LitStr> = types.iter().map(|t| &t.name).collect();
    let patterns: Vec<&TokenStream> = types.iter().map(|t| &t.pattern).collect();
    let (to_payload, from_json) = if *is_enum {
        let variants: Vec<String> = types.iter().map(|t| t.ident.to_string()).collect();
        (
            quote!(#private::variant_payload(self)),
            quote! {
                match event_type {
                    #( #names => #private::from_variant(#variants, json), )*
                    other => ::core::result::Result::Err(<#json::Error as #private::serde::de::Error>::unknown_variant(other, &[#(#names),*])),
                }
            },
        )
    } else {
        (
            quote!(#krate::Payload::encode(self)),
            quote! {
                let _ = event_type;
                #json::from_str::<Self>(json)
            },
        )
    };
    let schema_types = types.iter().map(|t| schema_type(input, t));
    quote! {
        const _: () = {
            #[automatically_derived]
            impl #krate::Event for #ident {
                fn event_type(&self) -> &'static str {
                    match self {
                        #( #patterns => #names, )*
                    }
                }

                fn to_payload(&self) -> #json::Result<#krate::Payload> {
                    #to_payload
                }

                fn from_payload(event_type: &str, payload: &#krate::Payload) -> #json::Result<Self> {
                    Self::from_json(event_type, payload.as_str())
                }

                fn from_json(event_type: &str, json: &str) -> #json::Result<Self> {
                    #from_json
                }

                fn schema() -> &'static #krate::EventSchema {
                    static SCHEMA: #private::OnceLock<#krate::EventSchema> = #private::OnceLock::new();
                    SCHEMA.get_or_init(|| {
                        #krate::EventSchema::builder(#family)
                            #( #schema_types )*
                            .build()
                    })
                }
            }
        };
    }
}

/// The builder calls of one type: name, version, aliases, fields, upcasters.
fn schema_type(input: &Input<'_>, t: &TypeSpec) -> TokenStream {
    let ident = input.ident;
    let name = &t.name;
    let version = u32::try_from(t.version).unwrap_or(u32::MAX);
    let aliases = &t.aliases;
    let field_names = t.fields.iter().map(|(n, _)| n);
    let field_types = t.fields.iter().map(|(_, ty)| ty);
    let first_typed = t.version.saturating_sub(t.upcast_from.len() as u64);
    let typed = t.upcast_from.iter().enumerate().map(|(i, old)| {
        let from = u32::try_from(first_typed + i as u64).unwrap_or(u32::MAX);
        match t.upcast_from.get(i + 1) {
            Some(next) => quote_spanned!(old.span()=> .upcast::<#old, #next>(#from)),
            None => quote_spanned!(old.span()=> .upcast_to_event::<#old, #ident>(#from)),
        }
    });
    let json = t.upcast_json.iter().map(|(from, _, path)| {
        let from = u32::try_from(*from).unwrap_or(u32::MAX);
        quote!(.upcast_json(#from, #path))
    });
    quote! {
        .event(#name, #version)
        #( .alias(#aliases) )*
        #( .field(#field_names, #field_types) )*
        #( #typed )*
        #( #json )*
    }
}
