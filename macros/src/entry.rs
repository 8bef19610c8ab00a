//! The glue between the compiler and the stages: parse the item and the
//! attribute, validate, expand. On any error the user's function is emitted
//! unchanged, followed by the `compile_error!`s, so the rest of the crate
//! (and IDE support) keeps working.

use proc_macro2::TokenStream;
use quote::quote;
use syn::ImplItemFn;

use crate::diag::Errors;
use crate::{expand, parse, validate};

/// `#[cuda_graph(args)] item` -> `item` followed by `item_graphs`,
/// `item_graph_memory` and `item_graphs_refresh` (or by the errors).
pub fn cuda_graph(args: TokenStream, item: TokenStream) -> TokenStream {
    match generate(args, item.clone()) {
        Ok((item, generated)) => quote!(#item #generated),
        Err(error) => {
            let errors = error.into_compile_error();
            quote!(#item #errors)
        }
    }
}

/// The function as emitted and the generated sibling items, or every error found.
fn generate(args: TokenStream, item: TokenStream) -> syn::Result<(TokenStream, TokenStream)> {
    let salt = expand::function_salt(&args, &item);
    let (args, arg_error) = parse::parse_args(args);
    let mut errors = Errors::new();
    let func = match parse_item(item) {
        Ok(func) => func,
        Err(error) => {
            errors.push(error);
            errors.extend(arg_error);
            return errors.finish((TokenStream::new(), TokenStream::new()));
        }
    };
    errors.extend(arg_error);
    match validate::validate(&args, &func) {
        Ok(plan) => errors.finish((expand::item(&func, &plan), expand::expand(&plan, salt))),
        Err(error) => {
            errors.push(error);
            errors.finish((TokenStream::new(), TokenStream::new()))
        }
    }
}

/// Parses the annotated item as a function with a body (a free function or
/// an impl method; both have the same shape), explaining what is wrong with
/// anything else.
fn parse_item(item: TokenStream) -> syn::Result<ImplItemFn> {
    let error = match syn::parse2::<ImplItemFn>(item.clone()) {
        Ok(func) => return Ok(func),
        Err(error) => error,
    };
    if syn::parse2::<syn::TraitItemFn>(item.clone()).is_ok() {
        return Err(syn::Error::new_spanned(
            item,
            "`#[cuda_graph]` needs a function body: put it on the method in the `impl` block, not on a trait declaration",
        ));
    }
    match syn::parse2::<syn::Item>(item.clone()) {
        Ok(syn::Item::Fn(_)) | Err(_) => Err(error),
        Ok(_) => Err(syn::Error::new_spanned(
            item,
            "`#[cuda_graph]` goes on a function or method, e.g. `fn forward(&self, rt: &Runtime, x: &Tensor) -> Result<Tensor>`",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proc_macro2::{Delimiter, Group, Ident, Literal, Punct, Spacing, Span, TokenTree};
    use proptest::prelude::*;

    const METHOD: &str = "pub fn forward(&self, rt: &Runtime, x: &Tensor) -> Result<Tensor> { let _ = rt; Ok(x.clone()) }";

    fn tokens(s: &str) -> TokenStream {
        s.parse().unwrap_or_default()
    }

    fn compile_errors(out: &TokenStream) -> usize {
        out.to_string().matches("compile_error").count()
    }

    #[test]
    fn success_emits_original_then_generated() {
        let out = cuda_graph(tokens("sizes = [1, 2, 4]"), tokens(METHOD));
        let text = out.to_string();
        let original = tokens(METHOD).to_string();
        assert!(text.starts_with(&original), "{text}");
        assert!(text.contains("forward_graphs"), "{text}");
        assert_eq!(compile_errors(&out), 0, "{text}");
        // All items parse as impl methods: the original, `forward_graphs`,
        // `forward_graph_memory` and `forward_graphs_refresh`.
        let items: syn::Result<syn::ItemImpl> = syn::parse2(quote!(impl M { #out }));
        let items = items.map(|i| i.items.len());
        assert_eq!(items.ok(), Some(4));
    }

    #[test]
    fn free_function_output_is_a_valid_file() {
        let out = cuda_graph(
            tokens("sizes = [1, 8..=64 step 8], static_args = [cfg]"),
            tokens("fn step(rt: &Runtime, x: &Tensor, cfg: &Cfg) -> Result<Tensor> { todo!() }"),
        );
        let file: syn::Result<syn::File> = syn::parse2(out.clone());
        let names = file.map(|f| {
            f.items
                .iter()
                .filter_map(|i| match i {
                    syn::Item::Fn(f) => Some(f.sig.ident.to_string()),
                    _ => None,
                })
                .collect::<Vec<_>>()
        });
        assert_eq!(
            names.ok(),
            Some(vec![
                "step".to_owned(),
                "step_graphs".to_owned(),
                "step_graph_memory".to_owned(),
                "step_graphs_refresh".to_owned(),
            ]),
            "{out}"
        );
    }

    #[test]
    fn errors_keep_the_original_item() {
        let out = cuda_graph(tokens("sizes = [], bogus = 1"), tokens(METHOD));
        let text = out.to_string();
        assert!(text.starts_with(&tokens(METHOD).to_string()), "{text}");
        assert!(!text.contains("forward_graphs"), "{text}");
        assert_eq!(compile_errors(&out), 2, "{text}");
        // Attribute errors and signature errors are reported together.
        let out = cuda_graph(
            tokens("sizes = [0]"),
            tokens("async fn f(&mut self, x: &Tensor) -> Result<Tensor> { todo!() }"),
        );
        assert_eq!(compile_errors(&out), 4, "{out}");
    }

    #[test]
    fn non_function_items_get_a_clear_error() {
        let out = cuda_graph(tokens("sizes = [1]"), tokens("struct S;"));
        let text = out.to_string();
        assert!(text.starts_with("struct S ;"), "{text}");
        assert!(text.contains("goes on a function or method"), "{text}");
        let out = cuda_graph(
            tokens("sizes = [1]"),
            tokens("fn f(&self, rt: &Runtime, x: &Tensor) -> Result<Tensor>;"),
        );
        assert!(out.to_string().contains("needs a function body"), "{out}");
        let out = cuda_graph(tokens("sizes = [1]"), TokenStream::new());
        assert_eq!(compile_errors(&out), 1, "{out}");
    }

    #[test]
    fn generated_names_cannot_clash_with_user_names() {
        // Statics named like the generated parameters and locals.
        let out = cuda_graph(
            tokens("sizes = [1], static_args = [inputs, plan, SIZES]"),
            tokens(
                "fn f(&self, rt: &Runtime, x: &Tensor, inputs: u32, plan: u8, SIZES: i8) -> Result<Tensor> { todo!() }",
            ),
        );
        assert_eq!(compile_errors(&out), 0, "{out}");
        let text = out.to_string();
        assert!(text.contains("inputs : u32"), "{text}");
    }

    #[test]
    fn statics_named_like_old_generated_consts() {
        let out = cuda_graph(
            tokens("sizes = [1, 2], static_args = [__CG_SIZES, __CG_LOOKUP]"),
            tokens(
                "fn f(&self, rt: &Runtime, x: &Tensor, __CG_SIZES: u32, __CG_LOOKUP: &[u16; 2]) -> Result<Tensor> { todo!() }",
            ),
        );
        assert_eq!(compile_errors(&out), 0, "{out}");
        assert!(!out.to_string().contains("const __CG"), "{out}");
    }

    #[test]
    fn salt_depends_on_item_and_attribute() {
        let id_of = |args: &str, item: &str| {
            let out = cuda_graph(tokens(args), tokens(item)).to_string();
            // `function_id (:: core :: module_path ! () , "forward" , SALTu64)`
            out.split("function_id")
                .nth(1)
                .and_then(|rest| rest.split("u64").next())
                .and_then(|rest| rest.rsplit(' ').next().map(str::to_owned))
                .unwrap_or_default()
        };
        let a = id_of("sizes = [1]", METHOD);
        assert!(a.parse::<u64>().is_ok(), "{a}");
        assert_eq!(a, id_of("sizes = [1]", METHOD));
        assert_ne!(a, id_of("sizes = [1, 2]", METHOD));
        assert_ne!(
            a,
            id_of(
                "sizes = [1]",
                &METHOD.replace("Ok(x.clone())", "Ok(x.to_owned())")
            )
        );
    }

    /// A random token tree:    /// A random token tree: identifiers that matter to the grammar, random
    /// punctuation, literals of every kind and nested groups.
    fn token_tree() -> impl Strategy<Value = TokenTree> {
        let ident = prop::sample::select(vec![
            "sizes",
            "batch",
            "static_args",
            "capture",
            "lazy",
            "init",
            "crate",
            "step",
            "self",
            "fn",
            "async",
            "pub",
            "impl",
            "Tensor",
            "Runtime",
            "Result",
            "x",
            "rt",
            "cfg",
            "forward",
            "_",
            "r#type",
            "mut",
            "default",
            "unsafe",
        ])
        .prop_map(|s| TokenTree::Ident(Ident::new_raw_or(s)));
        let punct = (
            prop::sample::select(vec![
                '=', ',', '.', '&', '-', '>', '<', ':', ';', '#', '!', '\'', '+', '*',
            ]),
            any::<bool>(),
        )
            .prop_map(|(c, joint)| {
                TokenTree::Punct(Punct::new(
                    c,
                    if joint {
                        Spacing::Joint
                    } else {
                        Spacing::Alone
                    },
                ))
            });
        let literal = prop_oneof![
            any::<u64>().prop_map(Literal::u64_unsuffixed),
            (0u64..300).prop_map(Literal::u64_unsuffixed),
            any::<i64>().prop_map(Literal::i64_unsuffixed),
            any::<u32>().prop_map(Literal::u32_suffixed),
            any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(Literal::f64_unsuffixed),
            ".{0,6}".prop_map(|s: String| Literal::string(&s)),
            any::<char>().prop_map(Literal::character),
        ]
        .prop_map(TokenTree::Literal);
        let leaf = prop_oneof![4 => ident, 4 => punct, 3 => literal];
        leaf.prop_recursive(3, 24, 6, |inner| {
            (
                prop::sample::select(vec![
                    Delimiter::Parenthesis,
                    Delimiter::Bracket,
                    Delimiter::Brace,
                    Delimiter::None,
                ]),
                prop::collection::vec(inner, 0..6),
            )
                .prop_map(|(delimiter, trees)| {
                    TokenTree::Group(Group::new(delimiter, trees.into_iter().collect()))
                })
        })
    }

    fn token_stream() -> impl Strategy<Value = TokenStream> {
        prop::collection::vec(token_tree(), 0..12).prop_map(|trees| trees.into_iter().collect())
    }

    /// Helper: `Ident::new` that accepts `r#name`.
    trait NewRawOr {
        fn new_raw_or(s: &str) -> Ident;
    }
    impl NewRawOr for Ident {
        fn new_raw_or(s: &str) -> Ident {
            match s.strip_prefix("r#") {
                Some(raw) => Ident::new_raw(raw, Span::call_site()),
                None => Ident::new(s, Span::call_site()),
            }
        }
    }

    /// Structured but randomly broken attribute arguments.
    fn attribute_like() -> impl Strategy<Value = TokenStream> {
        let value = prop_oneof![
            "\\[[0-9, .=step]{0,20}\\]",
            "[a-z_]{1,6}",
            "\\[[a-z, ]{0,12}\\]",
            "\"[:a-z]{0,8}\"",
            "lazy|init",
        ];
        let option = (
            prop::sample::select(vec![
                "sizes",
                "batch",
                "static_args",
                "capture",
                "crate",
                "size",
                "lazy",
                "x",
            ]),
            value,
        )
            .prop_map(|(k, v)| format!("{k} = {v}"));
        prop::collection::vec(option, 0..5)
            .prop_map(|opts| opts.join(", ").parse().unwrap_or_default())
    }

    proptest! {
        #[test]
        fn parser_never_panics_on_random_tokens(args in token_stream()) {
            let _ = syn::parse2::<parse::Args>(args.clone());
            let _ = parse::parse_args(args);
        }

        #[test]
        fn entry_never_panics_and_keeps_the_item(args in token_stream(), item in token_stream()) {
            let out = cuda_graph(args, item.clone());
            prop_assert!(out.to_string().starts_with(&item.to_string()));
        }

        #[test]
        fn entry_never_panics_on_random_args_for_a_real_method(args in token_stream()) {
            let out = cuda_graph(args, tokens(METHOD));
            prop_assert!(out.to_string().starts_with(&tokens(METHOD).to_string()));
        }

        #[test]
        fn entry_never_panics_on_attribute_like_args(args in attribute_like()) {
            let out = cuda_graph(args, tokens(METHOD));
            // Either the expansion succeeded or errors were emitted; never both missing.
            let text = out.to_string();
            prop_assert!(text.contains("forward_graphs") || text.contains("compile_error"));
        }

        #[test]
        fn entry_never_panics_on_random_signatures(params in token_stream(), ret in token_stream()) {
            let item = quote!(fn forward(#params) -> #ret { });
            let out = cuda_graph(tokens("sizes = [1, 2]"), item.clone());
            prop_assert!(out.to_string().starts_with(&item.to_string()));
        }
    }
}
