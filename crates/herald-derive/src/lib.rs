//! `#[derive(Event)]`: turns a serde struct into a Herald event contract.
//!
//! ```text
//! #[derive(Serialize, Deserialize, Event)]
//! #[event(name = "course.enrolled", version = 2, publisher = "course-service",
//!         consumers = ["notification-service"], schema)]
//! struct CourseEnrolled { /* ... */ }
//!
//! #[derive(Serialize, Deserialize, Event)]
//! #[event(name = "health.reported", exchange = "benalsam.system")]  // not the bus's exchange
//! struct HealthReported { /* ... */ }
//! ```
//!
//! The name and version are checked when the crate compiles: a name is dot-separated words
//! with no wildcards, and versions start at 1.

#![warn(missing_docs)]

use proc_macro::TokenStream;
use quote::quote;
use syn::{parse_macro_input, DeriveInput, Expr, ExprArray, Lit, LitStr};

/// Derive `herald::Event`. See the crate docs for the attribute.
#[proc_macro_derive(Event, attributes(event))]
pub fn derive_event(input: TokenStream) -> TokenStream {
    let input = parse_macro_input!(input as DeriveInput);
    match expand(&input) {
        Ok(ts) => ts.into(),
        Err(e) => e.to_compile_error().into(),
    }
}

#[derive(Default)]
struct Args {
    name: Option<LitStr>,
    version: u32,
    publisher: Option<String>,
    consumers: Vec<String>,
    schema: bool,
    exchange: Option<LitStr>,
}

fn parse_args(input: &DeriveInput) -> syn::Result<Args> {
    let mut args = Args {
        version: 1,
        ..Default::default()
    };
    for attr in input.attrs.iter().filter(|a| a.path().is_ident("event")) {
        attr.parse_nested_meta(|meta| {
            if meta.path.is_ident("name") {
                args.name = Some(meta.value()?.parse()?);
            } else if meta.path.is_ident("version") {
                let lit: syn::LitInt = meta.value()?.parse()?;
                args.version = lit.base10_parse()?;
                if args.version == 0 {
                    return Err(syn::Error::new(lit.span(), "event versions start at 1"));
                }
            } else if meta.path.is_ident("publisher") {
                let lit: LitStr = meta.value()?.parse()?;
                args.publisher = Some(lit.value());
            } else if meta.path.is_ident("consumers") {
                let arr: ExprArray = meta.value()?.parse()?;
                for e in arr.elems {
                    match e {
                        Expr::Lit(syn::ExprLit { lit: Lit::Str(s), .. }) => args.consumers.push(s.value()),
                        other => return Err(syn::Error::new_spanned(other, "consumers are string literals: consumers = [\"svc-a\", \"svc-b\"]")),
                    }
                }
            } else if meta.path.is_ident("schema") {
                args.schema = true;
            } else if meta.path.is_ident("exchange") {
                let lit: LitStr = meta.value()?.parse()?;
                if lit.value().trim().is_empty() || lit.value().contains(['*', '#', ' ']) {
                    return Err(syn::Error::new(lit.span(), "an exchange is a plain name, e.g. \"benalsam.system\""));
                }
                args.exchange = Some(lit);
            } else {
                return Err(meta.error("unknown event attribute; expected name, version, publisher, consumers, exchange or schema"));
            }
            Ok(())
        })?;
    }
    Ok(args)
}

fn validate_name(name: &LitStr) -> syn::Result<String> {
    let value = name.value();
    let ok = !value.is_empty()
        && value.split('.').all(|w| {
            !w.is_empty()
                && w.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        });
    if !ok {
        return Err(syn::Error::new(
            name.span(),
            "an event name is dot-separated words of letters, digits, `_` or `-`, e.g. \"course.enrolled\"",
        ));
    }
    Ok(value)
}

fn doc_comment(input: &DeriveInput) -> String {
    let mut lines = Vec::new();
    for attr in &input.attrs {
        if !attr.path().is_ident("doc") {
            continue;
        }
        if let syn::Meta::NameValue(nv) = &attr.meta {
            if let Expr::Lit(syn::ExprLit {
                lit: Lit::Str(s), ..
            }) = &nv.value
            {
                lines.push(s.value().trim().to_string());
            }
        }
    }
    lines.join("\n")
}

fn expand(input: &DeriveInput) -> syn::Result<proc_macro2::TokenStream> {
    let args = parse_args(input)?;
    let ident = &input.ident;
    let name_lit = args.name.clone().ok_or_else(|| {
        syn::Error::new_spanned(
            ident,
            "missing #[event(name = \"domain.action\")] on an Event",
        )
    })?;
    let name = validate_name(&name_lit)?;
    let version = args.version;
    let routing_key = if version <= 1 {
        name.clone()
    } else {
        format!("{name}.v{version}")
    };
    let publisher = match &args.publisher {
        Some(p) => quote!(::core::option::Option::Some(#p)),
        None => quote!(::core::option::Option::None),
    };
    let consumers = &args.consumers;
    let description = doc_comment(input);
    let type_name = ident.to_string();
    let (impl_generics, ty_generics, where_clause) = input.generics.split_for_impl();
    let schema = if args.schema {
        quote! {
            fn event_schema() -> ::core::option::Option<::herald::__private::serde_json::Value> {
                ::core::option::Option::Some(::herald::__private::json_schema::<Self>())
            }
        }
    } else {
        quote!()
    };
    let exchange = match &args.exchange {
        Some(x) => {
            quote!(const EXCHANGE: ::core::option::Option<&'static str> = ::core::option::Option::Some(#x);)
        }
        None => quote!(),
    };
    Ok(quote! {
        impl #impl_generics ::herald::Event for #ident #ty_generics #where_clause {
            const NAME: &'static str = #name;
            const VERSION: u32 = #version;
            const ROUTING_KEY: &'static str = #routing_key;
            #exchange

            fn descriptor() -> ::herald::EventDescriptor {
                ::herald::EventDescriptor {
                    name: #name,
                    version: #version,
                    routing_key: #routing_key,
                    type_name: #type_name,
                    publisher: #publisher,
                    consumers: &[#(#consumers),*],
                    description: #description,
                }
            }

            #schema
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn expand_src(src: &str) -> Result<String, String> {
        let input: DeriveInput = syn::parse_str(src).map_err(|e| e.to_string())?;
        expand(&input)
            .map(|t| t.to_string())
            .map_err(|e| e.to_string())
    }

    #[test]
    fn routing_key_follows_the_version() {
        let out =
            expand_src(r#"#[event(name = "course.enrolled", version = 2)] struct A { x: u8 }"#)
                .unwrap();
        assert!(out.contains("\"course.enrolled.v2\""), "{out}");
        let out = expand_src(r#"#[event(name = "course.enrolled")] struct A;"#).unwrap();
        assert!(
            out.contains("const ROUTING_KEY : & 'static str = \"course.enrolled\""),
            "{out}"
        );
    }

    #[test]
    fn doc_comment_and_consumers_reach_the_descriptor() {
        let out = expand_src(
            r#"/// A fact.
            #[event(name = "a.b", publisher = "svc", consumers = ["x", "y"])] struct A;"#,
        )
        .unwrap();
        assert!(
            out.contains("\"A fact.\"")
                && out.contains("\"x\" , \"y\"")
                && out.contains("Some (\"svc\")"),
            "{out}"
        );
    }

    #[test]
    fn an_exchange_of_its_own() {
        let out = expand_src(
            r#"#[event(name = "health.reported", exchange = "benalsam.system")] struct A;"#,
        )
        .unwrap();
        assert!(out.contains("const EXCHANGE"), "{out}");
        assert!(out.contains("Some (\"benalsam.system\")"), "{out}");
        let out = expand_src(r#"#[event(name = "a.b")] struct A;"#).unwrap();
        assert!(!out.contains("EXCHANGE"), "{out}");
    }

    #[test]
    fn bad_contracts_fail_to_compile_with_a_reason() {
        let cases = [
            (r#"struct A;"#, "missing #[event(name"),
            (
                r#"#[event(name = "course.*")] struct A;"#,
                "dot-separated words",
            ),
            (
                r#"#[event(name = "course..x")] struct A;"#,
                "dot-separated words",
            ),
            (
                r#"#[event(name = "a.b", version = 0)] struct A;"#,
                "versions start at 1",
            ),
            (
                r#"#[event(name = "a.b", colour = "red")] struct A;"#,
                "unknown event attribute",
            ),
            (
                r#"#[event(name = "a.b", consumers = [1])] struct A;"#,
                "string literals",
            ),
            (
                r#"#[event(name = "a.b", exchange = "x.#")] struct A;"#,
                "a plain name",
            ),
        ];
        for (src, want) in cases {
            let err = expand_src(src).unwrap_err();
            assert!(err.contains(want), "{src}: {err}");
        }
    }
}
