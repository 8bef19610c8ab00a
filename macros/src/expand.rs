//! Code generation: turns a checked [`Plan`] into the `<fn>_graphs` item.
//!
//! Locals of the generated code use mixed-site hygiene (and `__cg_` names),
//! so they can never clash with the user's parameter names; every path is
//! fully qualified.

use proc_macro2::{Literal, Span, TokenStream};
use quote::{quote, quote_spanned};
use syn::Ident;
use syn::ext::IdentExt;

use crate::sizes;
use crate::validate::{Plan, Role};

/// A local identifier that can't collide with (or be captured by) the user's
/// identifiers.
fn local(name: &str) -> Ident {
    Ident::new(name, Span::mixed_site())
}

/// The generated `<fn>_graphs` function (emitted next to the original).
pub fn expand(plan: &Plan) -> TokenStream {
    let krate = &plan.krate;
    let vis = &plan.vis;
    let cfg_attrs = &plan.cfg_attrs;
    let graphs_ident = &plan.graphs_ident;
    let lifetime = &plan.lifetime;
    let user_lifetimes = &plan.lifetimes;
    let where_clause = &plan.where_clause;
    let n = Literal::usize_unsuffixed(plan.tensors.len());
    let batch = Literal::usize_unsuffixed(plan.batch_index);
    let name = syn::LitStr::new(&plan.fn_ident.unraw().to_string(), plan.fn_ident.span());

    let rt = local("rt");
    let inputs = local("inputs");
    let graph_plan = local("__cg_plan");
    let closure_rt = local("__cg_rt");
    let tensors = local("__cg_tensors");
    let statics = local("__cg_statics");

    let static_idents: Vec<&Ident> = plan.statics.iter().map(|s| &s.ident).collect();
    let static_tys: Vec<&syn::Type> = plan.statics.iter().map(|s| &s.ty).collect();
    let statics_ty = quote!((#(#static_tys,)*));

    let size_lits = plan.sizes.iter().map(|&s| Literal::usize_unsuffixed(s));
    let lookup_lits = plan
        .lookup
        .iter()
        .skip(1)
        .map(|&i| Literal::u16_unsuffixed(i));

    let receiver = if plan.method {
        quote!(&#lifetime self,)
    } else {
        TokenStream::new()
    };
    let docs = doc_lines(plan);
    let body = forward_call(plan, &closure_rt, &tensors, &statics);

    quote! {
        #(#cfg_attrs)*
        #(#[doc = #docs])*
        #vis fn #graphs_ident<#lifetime #(, #user_lifetimes)*>(
            #receiver
            #rt: &#lifetime #krate::Runtime,
            #inputs: [#krate::InputSpec; #n],
            #(#static_idents: #static_tys,)*
        ) -> ::core::result::Result<#krate::Runner<#lifetime, #n, #statics_ty>, #krate::Error>
        #where_clause
        {
            const __CG_SIZES: &[::core::primitive::usize] = &[#(#size_lits),*];
            const __CG_LOOKUP: &[::core::primitive::u16] =
                &[::core::primitive::u16::MAX #(, #lookup_lits)*];
            let #graph_plan = #krate::GraphPlan::from_static(#name, __CG_SIZES, __CG_LOOKUP, #batch)?;
            #krate::Runner::capture(
                #rt,
                #graph_plan,
                #inputs,
                (#(#static_idents,)*),
                move |#closure_rt: &#krate::Runtime,
                      #tensors: [&#krate::Tensor; #n],
                      #statics: &#statics_ty| {
                    #body
                },
            )
        }
    }
}

/// `forward_result(self.forward(...))`, spanned at the user's return type so
/// a wrong return type is reported there.
fn forward_call(plan: &Plan, rt: &Ident, tensors: &Ident, statics: &Ident) -> TokenStream {
    let krate = &plan.krate;
    let args = plan.roles.iter().map(|role| match *role {
        Role::Runtime => quote!(#rt),
        Role::Tensor(k) => {
            let k = Literal::usize_unsuffixed(k);
            quote!(#tensors[#k])
        }
        Role::Static(j) => {
            let index = syn::Index::from(j);
            match plan.statics.get(j) {
                Some(s) if s.by_ref => quote!(&#statics.#index),
                _ => quote!(::core::clone::Clone::clone(&#statics.#index)),
            }
        }
    });
    // Resolve like the rest of the generated code (call site) but report at
    // the user's return type: a `forward` that doesn't return
    // `Result<Tensor, E>` gets its type error there.
    let span = Span::call_site().located_at(plan.output_span);
    let mut fn_ident = plan.fn_ident.clone();
    fn_ident.set_span(plan.fn_ident.span().located_at(plan.output_span));
    let callee = if plan.method {
        quote_spanned!(span=> self.#fn_ident)
    } else {
        quote!(#fn_ident)
    };
    quote_spanned! {span=>
        #krate::forward_result(#callee(#(#args),*))
    }
}

/// The generated function's documentation, one string per line.
fn doc_lines(plan: &Plan) -> Vec<String> {
    let name = plan.fn_ident.unraw().to_string();
    let inputs: Vec<String> = plan
        .tensors
        .iter()
        .enumerate()
        .map(|(k, t)| {
            if k == plan.batch_index {
                format!("`{t}` (the batch input: its leading dimension is the batch size)")
            } else {
                format!("`{t}`")
            }
        })
        .collect();
    let statics = if plan.statics.is_empty() {
        "none".to_owned()
    } else {
        let names: Vec<String> = plan
            .statics
            .iter()
            .map(|s| format!("`{}`", s.ident))
            .collect();
        format!(
            "{} (baked into the graphs; every run checks them against the captured values)",
            names.join(", ")
        )
    };
    let count = plan.sizes.len();
    let graphs = if count == 1 { "graph" } else { "graphs" };
    [
        format!(" Captures one CUDA graph of `{name}` per batch size and returns a `Runner` that"),
        " replays the smallest captured graph that fits each batch.".to_owned(),
        String::new(),
        format!(
            " Generated by `#[cuda_graph]`; `{name}` itself is unchanged and stays the eager path."
        ),
        String::new(),
        format!(
            " - Batch sizes ({count} {graphs}): `{}`",
            sizes::describe(&plan.sizes)
        ),
        format!(" - Inputs, in order: {}", inputs.join(", ")),
        format!(" - Static arguments: {statics}"),
        String::new(),
        " # Errors".to_owned(),
        String::new(),
        " Fails if the graph plan is invalid or capturing any graph fails.".to_owned(),
    ]
    .into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::validate::validate;
    use proc_macro2::TokenStream;

    fn expand_str(args: TokenStream, func: TokenStream) -> String {
        let (args, error) = crate::parse::parse_args(args);
        assert!(error.is_none(), "{error:?}");
        let func: syn::ImplItemFn = match syn::parse2(func) {
            Ok(f) => f,
            Err(e) => panic!("{e}"),
        };
        match validate(&args, &func) {
            Ok(plan) => expand(&plan).to_string(),
            Err(e) => panic!("{e}"),
        }
    }

    /// Whitespace-insensitive containment check on token strings.
    fn has(haystack: &str, needle: &str) -> bool {
        let squash = |s: &str| s.split_whitespace().collect::<String>();
        squash(haystack).contains(&squash(needle))
    }

    #[test]
    fn method_with_statics_matches_the_documented_shape() {
        let out = expand_str(
            quote!(
                sizes = [1, 2, 4],
                batch = positions,
                static_args = [cfg, scale]
            ),
            quote!(
                pub fn forward(
                    &self,
                    rt: &Runtime,
                    tokens: &Tensor,
                    positions: &Tensor,
                    cfg: &Config,
                    scale: f32,
                ) -> Result<Tensor> {
                    todo!()
                }
            ),
        );
        for needle in [
            "pub fn forward_graphs < 'cg > (& 'cg self , rt : & 'cg :: cudagraph :: Runtime , inputs : [:: cudagraph :: InputSpec ; 2] , cfg : Config , scale : f32 ,)",
            "-> :: core :: result :: Result < :: cudagraph :: Runner < 'cg , 2 , (Config , f32 ,) > , :: cudagraph :: Error >",
            "const __CG_SIZES : & [:: core :: primitive :: usize] = & [1 , 2 , 4] ;",
            "const __CG_LOOKUP : & [:: core :: primitive :: u16] = & [:: core :: primitive :: u16 :: MAX , 0 , 1 , 2 , 2] ;",
            "let __cg_plan = :: cudagraph :: GraphPlan :: from_static (\"forward\" , __CG_SIZES , __CG_LOOKUP , 1) ? ;",
            ":: cudagraph :: Runner :: capture (rt , __cg_plan , inputs , (cfg , scale ,) , move | __cg_rt : & :: cudagraph :: Runtime , __cg_tensors : [& :: cudagraph :: Tensor ; 2] , __cg_statics : & (Config , f32 ,) |",
            ":: cudagraph :: forward_result (self . forward (__cg_rt , __cg_tensors [0] , __cg_tensors [1] , & __cg_statics . 0 , :: core :: clone :: Clone :: clone (& __cg_statics . 1)))",
        ] {
            assert!(has(&out, needle), "missing {needle}\nin {out}");
        }
    }

    #[test]
    fn free_function_has_no_receiver_and_calls_by_path() {
        let out = expand_str(
            quote!(sizes = [8..=32 step 8], crate = "::cg"),
            quote!(
                pub(crate) fn step(x: &Tensor, rt: &Runtime) -> Result<Tensor> {
                    todo!()
                }
            ),
        );
        assert!(
            has(
                &out,
                "pub (crate) fn step_graphs < 'cg > (rt : & 'cg :: cg :: Runtime , inputs : [:: cg :: InputSpec ; 1] ,)"
            ),
            "{out}"
        );
        assert!(has(&out, ":: cg :: Runner < 'cg , 1 , () >"), "{out}");
        assert!(
            has(
                &out,
                ":: cg :: forward_result (step (__cg_tensors [0] , __cg_rt))"
            ),
            "{out}"
        );
        assert!(has(&out, "(rt , __cg_plan , inputs , () ,"), "{out}");
        assert!(!has(&out, "self ."), "{out}");
        assert!(!has(&out, "'cg self"), "{out}");
        // 0..=32: MAX, then 8 x index 0, 8 x 1, 8 x 2, 8 x 3
        let lookup = format!(
            ":: core :: primitive :: u16 :: MAX , {}",
            (1..=32)
                .map(|n| ((n - 1) / 8).to_string())
                .collect::<Vec<_>>()
                .join(" , ")
        );
        assert!(has(&out, &lookup), "{out}");
        assert!(
            has(&out, "Batch sizes (4 graphs): `8..=32 step 8`"),
            "{out}"
        );
    }

    #[test]
    fn generated_item_parses_as_an_impl_method() {
        let out = expand_str(
            quote!(sizes = [1, 2, 4, 8..=256 step 8]),
            quote!(
                fn forward<'a>(&'a self, rt: &Runtime, x: &Tensor) -> Result<Tensor>
                where
                    'a: 'a,
                {
                    todo!()
                }
            ),
        );
        let tokens: TokenStream = out.parse().unwrap_or_default();
        let item: syn::Result<syn::ImplItemFn> = syn::parse2(tokens);
        let item = match item {
            Ok(item) => item,
            Err(e) => panic!("{e}\n{out}"),
        };
        assert_eq!(item.sig.ident, "forward_graphs");
        assert_eq!(item.sig.generics.params.len(), 2);
        assert!(item.sig.generics.where_clause.is_some());
        assert!(item.attrs.iter().any(|a| a.path().is_ident("doc")));
    }

    #[test]
    fn cfg_and_visibility_are_carried() {
        let out = expand_str(
            quote!(sizes = [1]),
            quote!(
                #[cfg(feature = "gpu")]
                pub(super) fn forward(&self, rt: &Runtime, x: &Tensor) -> Result<Tensor> {
                    todo!()
                }
            ),
        );
        assert!(has(&out, "# [cfg (feature = \"gpu\")]"), "{out}");
        assert!(has(&out, "pub (super) fn forward_graphs"), "{out}");
    }

    #[test]
    fn docs_list_sizes_inputs_and_statics() {
        let out = expand_str(
            quote!(sizes = [1, 2, 4, 8..=256 step 8], static_args = [cfg]),
            quote!(
                fn forward(
                    &self,
                    rt: &Runtime,
                    tokens: &Tensor,
                    positions: &Tensor,
                    cfg: Cfg,
                ) -> Result<Tensor> {
                    todo!()
                }
            ),
        );
        assert!(
            out.contains("Batch sizes (35 graphs): `1, 2, 4, 8..=256 step 8`"),
            "{out}"
        );
        assert!(out.contains("`tokens` (the batch input"), "{out}");
        assert!(out.contains("Static arguments: `cfg`"), "{out}");
    }
}
