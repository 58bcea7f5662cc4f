//! Snapshots of the generated code, so every change to it is reviewed.

use quote::quote;

fn pretty(tokens: &proc_macro2::TokenStream) -> String {
    let file: syn::File = syn::parse2(tokens.clone()).expect("generated code parses");
    prettyplease::unparse(&file)
}

fn expand(
    derive: fn(&syn::DeriveInput) -> proc_macro2::TokenStream,
    input: proc_macro2::TokenStream,
) -> String {
    let input: syn::DeriveInput = syn::parse2(input).expect("test input parses");
    pretty(&derive(&input))
}

#[test]
fn event_enum() {
    insta::assert_snapshot!(expand(
        crate::event::derive,
        quote! {
            pub enum OrderEvent {
                #[event(version = 3, upcast_from = PlacedV1, upcast_from = PlacedV2)]
                Placed { customer: CustomerId, lines: Vec<Line> },
                #[event(version = 2, upcast(from = 1, with = upcasts::paid_v1))]
                Paid(Payment),
                Shipped,
                #[event(rename = "OrderCancelled", alias = "OrderAborted")]
                Cancelled { reason: String },
            }
        }
    ));
}

#[test]
fn event_struct_with_crate_path() {
    insta::assert_snapshot!(expand(
        crate::event::derive,
        quote! {
            #[event(crate = "core_renamed", rename = "CustomerRegistered", version = 2, upcast(from = 1, with = add_tier))]
            pub struct Registered { name: String, tier: Tier }
        }
    ));
}

#[test]
fn aggregate_with_snapshots() {
    insta::assert_snapshot!(expand(
        crate::aggregate::derive,
        quote! {
            #[aggregate(name = "order", event = OrderEvent, command = OrderCommand, error = OrderError,
                        snapshot(every = 100, version = 2))]
            pub struct Order { status: Status }
        }
    ));
}

#[test]
fn projection_over_two_families() {
    insta::assert_snapshot!(expand(
        crate::projection::derive,
        quote! {
            #[projection(name = "order_summary", version = 3, events(OrderEvent, PaymentEvent), context = SqliteTx)]
            pub struct OrderSummary;
        }
    ));
}

#[test]
fn errors_come_with_a_stub_impl() {
    insta::assert_snapshot!(expand(
        crate::event::derive,
        quote! {
            pub enum Broken {
                #[event(version = 0, colour = "red")]
                A,
            }
        }
    )
    .replace("::core::compile_error!", "compile_error!"));
}
