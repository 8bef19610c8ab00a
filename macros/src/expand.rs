//! Code generation: turns a checked [`Plan`] into the `<fn>_graphs`,
//! `<fn>_graph_memory` and `<fn>_graphs_refresh` items.
//!
//! Locals of the generated code use mixed-site hygiene (and `__cg_` names),
//! so they can never clash with the user's parameter names; every path is
//! fully qualified.

use proc_macro2::{Literal, Span, TokenStream};
use quote::{quote, quote_spanned};
use syn::Ident;
use syn::ext::IdentExt;

use crate::parse::{CaptureMode, PadNumber};
use crate::sizes;
use crate::validate::{KeyRole, Plan, Role};

/// A local identifier that can't collide with (or be captured by) the user's
/// identifiers.
fn local(name: &str) -> Ident {
    Ident::new(name, Span::mixed_site())
}

/// The plan statements and the eager closure, shared by every generated item.
struct Shared {
    /// `let __cg_plan = GraphPlan::from_static(NAME, &[sizes], &[lookup], BATCH)?...;`
    /// (the slices are promoted constants, so `&'static`).
    plan_stmts: TokenStream,
    /// The local the plan statements bind.
    graph_plan: Ident,
    /// `move |__cg_rt, __cg_tensors, __cg_statics| forward_result(self.f(...))`.
    eager: TokenStream,
}

/// Builds the [`Shared`] tokens: the `GraphPlan` (with `capture = lazy`
/// applied) and the closure that calls the user's function with the
/// runner's tensors and its captured statics.
fn shared(plan: &Plan) -> Shared {
    let krate = &plan.krate;
    let n = Literal::usize_unsuffixed(plan.tensors.len());
    let batch = Literal::usize_unsuffixed(plan.batch_index);
    let name = syn::LitStr::new(&plan.fn_ident.unraw().to_string(), plan.fn_ident.span());
    let graph_plan = local("__cg_plan");
    let closure_rt = local("__cg_rt");
    let tensors = local("__cg_tensors");
    let statics = local("__cg_statics");
    let statics_ty = statics_ty(plan);

    let size_lits = plan.sizes.iter().map(|&s| Literal::usize_unsuffixed(s));
    let lookup_lits = plan
        .lookup
        .iter()
        .skip(1)
        .map(|&i| Literal::u16_unsuffixed(i));
    let lazy = match plan.capture {
        CaptureMode::Lazy => quote!(.with_lazy_capture(true)),
        CaptureMode::Background => quote!(.with_background_capture(true)),
        CaptureMode::Init => TokenStream::new(),
    };
    let pads = plan.pads.iter().map(|(index, value)| {
        let index = Literal::usize_unsuffixed(*index);
        let value = pad_value(krate, *value);
        quote!(.with_pad(#index, #value))
    });
    let islands = local("__cg_islands");
    let body = forward_call(plan, &closure_rt, &tensors, &statics, &islands);

    let keys = key_space(plan);
    let fits = plan.statics.iter().filter_map(|s| match &s.key {
        Some(KeyRole::Value { buckets }) => {
            let (ty, name) = (&s.ty, s.ident.unraw().to_string());
            let lits = buckets.iter().map(|&b| Literal::u64_suffixed(b));
            Some(quote!(#krate::__private::check_buckets_fit::<#ty>(#name, &[#(#lits),*])?;))
        }
        _ => None,
    });

    // Inline literals rather than named consts: no generated item name can
    // clash with (or shadow) a user's static argument or constant.
    let plan_stmts = quote! {
        #(#fits)*
        let #graph_plan = #krate::GraphPlan::from_static(
            #name,
            &[#(#size_lits),*],
            &[::core::primitive::u16::MAX #(, #lookup_lits)*],
            #batch
        )?#lazy #(#pads)* #keys;
    };
    let types = BackendTypes::of(plan);
    let (dev_ty, tensor_ty) = (&types.device, &types.tensor);
    // The islands' type is left to inference (from `capture_live`'s bound): it names the
    // runner's borrow, which `<fn>_graph_memory` has no name for.
    let eager = quote! {
        move |#closure_rt: &#dev_ty,
              #tensors: [&#tensor_ty; #n],
              #statics: &#statics_ty,
              #islands| {
            #body
        }
    };
    Shared {
        plan_stmts,
        graph_plan,
        eager,
    }
}

/// `.with_keys(KeySpace::new().with_value_buckets(..)?...)` for a plan keyed by more than
/// the batch (empty otherwise): bucketed values and variants in declaration order, then the
/// bucketed dimensions in the attribute's order (the order [`host_keys`] reads them in).
fn key_space(plan: &Plan) -> TokenStream {
    let krate = &plan.krate;
    let values = plan.statics.iter().filter_map(|s| match &s.key {
        Some(KeyRole::Value { buckets }) => {
            let name = s.ident.unraw().to_string();
            let lits = buckets.iter().map(|&b| Literal::u64_suffixed(b));
            Some(quote!(.with_value_buckets(#name, &[#(#lits),*][..])?))
        }
        _ => None,
    });
    let variants = plan.statics.iter().filter_map(|s| match &s.key {
        Some(KeyRole::Variant { values }) => {
            let name = s.ident.unraw().to_string();
            let labels = values.iter().map(|v| {
                quote::ToTokens::to_token_stream(v)
                    .to_string()
                    .replace(" :: ", "::")
            });
            Some(quote!(.with_variants(#name, &[#(#labels),*][..])?))
        }
        _ => None,
    });
    let dims = plan.dim_buckets.iter().map(|d| {
        let label = &d.label;
        let members = d.members.iter().map(|&(input, dim)| {
            let (input, dim) = (
                Literal::usize_unsuffixed(input),
                Literal::usize_unsuffixed(dim),
            );
            quote!((#input, #dim))
        });
        let lits = d
            .buckets
            .iter()
            .map(|&b| Literal::usize_suffixed(b as usize));
        quote!(.with_dim_buckets(#label, &[#(#members),*], &[#(#lits),*][..])?)
    });
    let any = plan.statics.iter().any(|s| s.key.is_some()) || !plan.dim_buckets.is_empty();
    if !any {
        return TokenStream::new();
    }
    quote!(.with_keys(#krate::KeySpace::new() #(#values)* #(#variants)* #(#dims)*))
}

/// Whether the statics carry keys (bucketed values, variants): the runner is then built with
/// [`host_keys`].
fn has_host_keys(plan: &Plan) -> bool {
    plan.statics.iter().any(|s| s.key.is_some())
}

/// The statics' value the runner is built with: each plain static's parameter, each bucketed
/// value's first bucket, each variant's first value.
fn statics_template(plan: &Plan) -> TokenStream {
    let krate = &plan.krate;
    let fields = plan.statics.iter().map(|s| {
        let (ident, ty) = (&s.ident, &s.ty);
        match &s.key {
            None => quote!(#ident),
            Some(KeyRole::Value { buckets }) => {
                let first = Literal::u64_suffixed(buckets.first().copied().unwrap_or(1));
                quote! {
                    <#ty as #krate::__private::BucketValue>::from_bucket(#first).ok_or_else(|| {
                        #krate::Error::invalid("buckets", "a bucket does not fit its argument's type")
                    })?
                }
            }
            Some(KeyRole::Variant { values }) => {
                let first = &values[0];
                quote!(#first)
            }
        }
    });
    quote!((#(#fields,)*))
}

/// `HostKeys { of, at }` for the statics: `of` writes each bucketed value (as `u64`) and each
/// variant's index (a `match` on the listed values; another value: `UnlistedVariant`); `at`
/// puts a key's bucket values and variants into a copy of the statics (plain statics cloned).
fn host_keys(plan: &Plan) -> TokenStream {
    let krate = &plan.krate;
    let statics_ty = statics_ty(plan);
    let s = local("__cg_s");
    let out = local("__cg_out");
    let index = local("__cg_i");
    let mut writes = Vec::new();
    let mut component = 0usize;
    for (j, st) in plan.statics.iter().enumerate() {
        if let Some(KeyRole::Value { .. }) = &st.key {
            let (field, k) = (syn::Index::from(j), Literal::usize_unsuffixed(component));
            writes.push(quote! {
                if let ::core::option::Option::Some(__cg_slot) = #out.get_mut(#k) {
                    *__cg_slot = #krate::__private::BucketValue::key_value(#s.#field);
                }
            });
            component += 1;
        }
    }
    let values = component;
    for (j, st) in plan.statics.iter().enumerate() {
        if let Some(KeyRole::Variant { values }) = &st.key {
            let (field, k) = (syn::Index::from(j), Literal::usize_unsuffixed(component));
            let arms = values.iter().enumerate().map(|(i, v)| {
                let i = Literal::u64_suffixed(i as u64);
                quote!(#v => #i,)
            });
            writes.push(quote! {
                let __cg_variant: u64 = {
                    #[allow(unreachable_patterns)]
                    match #s.#field {
                        #(#arms)*
                        _ => return ::core::result::Result::Err(#krate::__private::KeyMiss::UnlistedVariant),
                    }
                };
                if let ::core::option::Option::Some(__cg_slot) = #out.get_mut(#k) {
                    *__cg_slot = __cg_variant;
                }
            });
            component += 1;
        }
    }
    // `at`: component indices in the same order.
    let mut value_k = 0usize;
    let mut variant_k = values;
    let fields = plan.statics.iter().enumerate().map(|(j, st)| {
        let field = syn::Index::from(j);
        match &st.key {
            None => quote!(::core::clone::Clone::clone(&#s.#field)),
            Some(KeyRole::Value { buckets }) => {
                let ty = &st.ty;
                let k = Literal::usize_unsuffixed(value_k);
                value_k += 1;
                let lits = buckets.iter().map(|&b| Literal::u64_suffixed(b));
                quote! {
                    #index
                        .get(#k)
                        .and_then(|&__cg_b| [#(#lits),*].get(__cg_b).copied())
                        .and_then(<#ty as #krate::__private::BucketValue>::from_bucket)
                        .unwrap_or(#s.#field)
                }
            }
            Some(KeyRole::Variant { values }) => {
                let k = Literal::usize_unsuffixed(variant_k);
                variant_k += 1;
                quote! {
                    #index
                        .get(#k)
                        .and_then(|&__cg_v| [#(#values),*].get(__cg_v).copied())
                        .unwrap_or(#s.#field)
                }
            }
        }
    });
    quote! {
        #krate::HostKeys::<#statics_ty> {
            of: |#s: &#statics_ty, #out: &mut [u64]| -> ::core::result::Result<(), #krate::__private::KeyMiss> {
                #(#writes)*
                ::core::result::Result::Ok(())
            },
            at: |#s: &#statics_ty, #index: &[usize]| -> #statics_ty {
                (#(#fields,)*)
            },
        }
    }
}

/// `PadValue::Int(-1i64)` / `PadValue::Float(0.5f64)`.
fn pad_value(krate: &syn::Path, value: PadNumber) -> TokenStream {
    match value {
        PadNumber::Int(v) => {
            let magnitude = match i64::try_from(v.unsigned_abs()) {
                Ok(m) => Literal::i64_suffixed(m),
                // Only `i64::MIN`: write it by name.
                Err(_) => return quote!(#krate::PadValue::Int(::core::primitive::i64::MIN)),
            };
            let sign = (v < 0).then(|| quote!(-));
            quote!(#krate::PadValue::Int(#sign #magnitude))
        }
        PadNumber::Float(v) => {
            // The parser only accepts finite values; fall back to 0 defensively.
            let magnitude = if v.is_finite() { v.abs() } else { 0.0 };
            let magnitude = Literal::f64_suffixed(magnitude);
            let sign = v.is_sign_negative().then(|| quote!(-));
            quote!(#krate::PadValue::Float(#sign #magnitude))
        }
    }
}

/// The comparator the runner checks each run's statics with: floats (`f32`,
/// `f64`, and references to them) by bits, so a NaN static matches itself;
/// every other type with `PartialEq`. The choice is made per static at its
/// concrete type by autoref specialization: `(&StaticCmp(&a, &b)).cg_same()`
/// finds `ViaBits` (implemented for `StaticCmp<f32>`, ...) at the first
/// probe, and `ViaPartialEq` (implemented for `&StaticCmp<T>`) only after an
/// autoref.
fn statics_eq(plan: &Plan, ident: &Ident) -> TokenStream {
    let krate = &plan.krate;
    let statics_ty = statics_ty(plan);
    // Keys (bucketed values, variants) pick graphs; only the plain statics are compared.
    let plain: Vec<usize> = (0..plan.statics.len())
        .filter(|&j| plan.statics[j].key.is_none())
        .collect();
    if plain.is_empty() {
        return quote! {
            let #ident: fn(&#statics_ty, &#statics_ty) -> ::core::primitive::bool = |_, _| true;
        };
    }
    let a = local("__cg_a");
    let b = local("__cg_b");
    let compares = plain.iter().map(|&j| {
        let index = syn::Index::from(j);
        quote! {
            (&#krate::__private::StaticCmp(&#a.#index, &#b.#index)).cg_same()
        }
    });
    quote! {
        let #ident: fn(&#statics_ty, &#statics_ty) -> ::core::primitive::bool = |#a, #b| {
            #[allow(unused_imports)]
            use #krate::__private::{ViaBits as _, ViaPartialEq as _};
            #(#compares)&&*
        };
    }
}

/// The identity of the annotated function as a type:
/// `FunctionId<{ function_id(module_path!(), "NAME", SALT) }, Self>` for a method (`Self`
/// carries the impl's generic parameters, so `Model<u8>` and `Model<String>` differ) and
/// `FunctionId<{ ... }>` for a free function; identical in every generated signature of one
/// expansion and different between functions.
fn function_id(plan: &Plan, salt: u64) -> TokenStream {
    let krate = &plan.krate;
    let name = plan.fn_ident.unraw().to_string();
    let salt = Literal::u64_suffixed(salt);
    let hash = quote! {
        { #krate::__private::function_id(::core::module_path!(), #name, #salt) }
    };
    if plan.method {
        quote!(#krate::FunctionId<#hash, Self>)
    } else {
        quote!(#krate::FunctionId<#hash>)
    }
}

/// The annotated function as it is emitted: unchanged, except that a method taking
/// `islands: &Islands<..>` without a lifetime on `Islands` gets one lifetime for `&self` and the
/// islands' borrow (declared when `&self` had none), so that an island's closure may borrow the
/// model: `fn forward<'cg_i>(&'cg_i self, .., islands: &Islands<'cg_i, '_, ..>)`. Callers see
/// no difference.
pub fn item(func: &syn::ImplItemFn, plan: &Plan) -> TokenStream {
    use quote::ToTokens;
    let Some(tie) = plan.islands.as_ref().and_then(|i| i.tie.clone()) else {
        return func.to_token_stream();
    };
    let mut func = func.clone();
    let declared = func
        .sig
        .generics
        .params
        .iter()
        .any(|p| matches!(p, syn::GenericParam::Lifetime(l) if l.lifetime == tie));
    let mut on_receiver = false;
    if let Some(syn::FnArg::Receiver(receiver)) = func.sig.inputs.first_mut() {
        if let syn::ReceiverKind::Reference(_, lifetime @ None, _) = &mut receiver.kind {
            *lifetime = Some(tie.clone());
            on_receiver = true;
        } else if let syn::ReceiverKind::Reference(_, Some(existing), _) = &receiver.kind {
            on_receiver = *existing == tie;
        }
    }
    if !on_receiver {
        return func.to_token_stream();
    }
    if !declared {
        func.sig.generics.params.insert(
            0,
            syn::GenericParam::Lifetime(syn::LifetimeParam::new(tie.clone())),
        );
    }
    for arg in func.sig.inputs.iter_mut() {
        let syn::FnArg::Typed(pat_type) = arg else {
            continue;
        };
        let syn::Type::Reference(r) = &mut *pat_type.ty else {
            continue;
        };
        let syn::Type::Path(path) = &mut *r.elem else {
            continue;
        };
        let Some(last) = path.path.segments.last_mut() else {
            continue;
        };
        if last.ident != "Islands" {
            continue;
        }
        let borrow: syn::GenericArgument = syn::GenericArgument::Lifetime(tie.clone());
        let call: syn::GenericArgument =
            syn::GenericArgument::Lifetime(syn::Lifetime::new("'_", Span::call_site()));
        match &mut last.arguments {
            syn::PathArguments::AngleBracketed(args) => {
                args.args.insert(0, call);
                args.args.insert(0, borrow);
            }
            arguments @ syn::PathArguments::None => {
                *arguments =
                    syn::PathArguments::AngleBracketed(syn::parse_quote!(<#borrow, #call>));
            }
            syn::PathArguments::Parenthesized(_) => {}
        }
    }
    func.to_token_stream()
}

/// The salt of [`function_id`]: 64-bit FNV-1a over the annotated item's
/// tokens, a separator and the attribute's tokens (as strings), so two
/// annotated functions of one module get different identities.
pub fn function_salt(args: &TokenStream, item: &TokenStream) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let item = item.to_string();
    let args = args.to_string();
    item.bytes()
        .chain([0xff])
        .chain(args.bytes())
        .fold(OFFSET, |hash, byte| {
            (hash ^ u64::from(byte)).wrapping_mul(PRIME)
        })
}

/// The types the generated code names for the function's backend: cudagraph's own
/// (`Runtime`, `Tensor`) or, for a forward on another backend's device type `D` (candle's
/// `CudaDevice`, plain cudarc's `Arc<CudaStream>`), those of `<D as Device>::Backend`.
struct BackendTypes {
    /// The device argument's type.
    device: TokenStream,
    /// The tensor inputs' type.
    tensor: TokenStream,
    /// The input spec type.
    spec: TokenStream,
    /// `, Backend` after the runner's other parameters (empty for the default).
    runner_param: TokenStream,
    /// The backend type, always spelled (`Native` for cudagraph's own).
    backend: TokenStream,
}

impl BackendTypes {
    fn of(plan: &Plan) -> Self {
        let krate = &plan.krate;
        match &plan.device_ty {
            None => Self {
                device: quote!(#krate::Runtime),
                tensor: quote!(#krate::Tensor),
                spec: quote!(#krate::InputSpec),
                runner_param: TokenStream::new(),
                backend: quote!(#krate::Native),
            },
            Some(device) => {
                let backend = quote!(<#device as #krate::Device>::Backend);
                Self {
                    device: quote!(#device),
                    tensor: quote!(<#backend as #krate::Backend>::Tensor),
                    spec: quote!(#krate::InputSpec<<#backend as #krate::Backend>::DType>),
                    runner_param: quote!(, #backend),
                    backend: backend.clone(),
                }
            }
        }
    }
}

/// The runner's statics type: the static arguments' types as a tuple.
fn statics_ty(plan: &Plan) -> TokenStream {
    let static_tys = plan.statics.iter().map(|s| &s.ty);
    quote!((#(#static_tys,)*))
}

/// The generated items, emitted next to the original: `<fn>_graphs`,
/// `<fn>_graph_memory` and `<fn>_graphs_refresh`. `salt` (see
/// [`function_salt`]) goes into the function identity that ties a runner to
/// the function that captured it.
pub fn expand(plan: &Plan, salt: u64) -> TokenStream {
    let krate = &plan.krate;
    let vis = &plan.vis;
    let cfg_attrs = &plan.cfg_attrs;
    let graphs_ident = &plan.graphs_ident;
    let memory_ident = &plan.memory_ident;
    let refresh_ident = &plan.refresh_ident;
    let lifetime = &plan.lifetime;
    let user_lifetimes = &plan.lifetimes;
    let where_clause = &plan.where_clause;
    let n = Literal::usize_unsuffixed(plan.tensors.len());

    let rt = local("rt");
    let inputs = local("inputs");
    let runner = local("runner");
    let statics_eq_ident = local("__cg_statics_eq");
    let new_runner = local("__cg_runner");
    // The lifetime of the runner a refresh consumes (it comes back in the error, holding the
    // statics, so every user lifetime outlives it too).
    let old_lifetime = plan.old_lifetime.clone();
    let id = function_id(plan, salt);

    // The generated functions take the plain statics; keyed ones (bucketed values, variants)
    // take every listed value, one graph set each.
    let static_idents: Vec<&Ident> = plan
        .statics
        .iter()
        .filter(|s| s.key.is_none())
        .map(|s| &s.ident)
        .collect();
    let static_tys: Vec<&syn::Type> = plan
        .statics
        .iter()
        .filter(|s| s.key.is_none())
        .map(|s| &s.ty)
        .collect();
    let statics_ty = statics_ty(plan);
    let template = statics_template(plan);

    let (receiver, plain_receiver) = if plan.method {
        (quote!(&#lifetime self,), quote!(&self,))
    } else {
        (TokenStream::new(), TokenStream::new())
    };
    // The runner lives for `'cg` and holds the statics, so every user lifetime outlives `'cg`.
    let bounded_lifetimes: Vec<syn::LifetimeParam> = user_lifetimes
        .iter()
        .map(|param| {
            let mut param = param.clone();
            param.bounds.push(lifetime.clone());
            param
        })
        .collect();
    let refresh_lifetimes: Vec<syn::LifetimeParam> = bounded_lifetimes
        .iter()
        .map(|param| {
            let mut param = param.clone();
            param.bounds.push(old_lifetime.clone());
            param
        })
        .collect();
    // The estimate borrows nothing past the call: only the user's lifetimes.
    let memory_generics = if user_lifetimes.is_empty() {
        TokenStream::new()
    } else {
        quote!(<#(#user_lifetimes),*>)
    };
    let graphs_docs = doc_lines(plan);
    let memory_docs = memory_doc_lines(plan);
    let refresh_docs = refresh_doc_lines(plan);
    let Shared {
        plan_stmts,
        graph_plan,
        eager,
    } = shared(plan);
    let statics_eq = statics_eq(plan, &statics_eq_ident);
    // Each static's type is `PartialEq + Sync` (see `StaticArgs`), checked at the type as
    // written, so the error names it there.
    let static_checks = plan.statics.iter().map(|s| {
        let ty = &s.ty;
        let span = Span::call_site().located_at(syn::spanned::Spanned::span(ty));
        match &s.key {
            None => quote_spanned!(span=> #krate::__private::assert_static_arg::<#ty>();),
            Some(KeyRole::Value { .. }) => {
                quote_spanned!(span=> #krate::__private::assert_bucket_arg::<#ty>();)
            }
            Some(KeyRole::Variant { .. }) => {
                quote_spanned!(span=> #krate::__private::assert_variant_arg::<#ty>();)
            }
        }
    });
    // A plan keyed by host values is built with `capture_keyed`/`estimate_keyed` and the
    // generated `HostKeys`; otherwise `capture_live`/`estimate_live`.
    let (capture_fn, estimate_fn, keys_arg) = if has_host_keys(plan) {
        let keys = host_keys(plan);
        (
            quote!(capture_keyed),
            quote!(estimate_keyed),
            quote!(#keys,),
        )
    } else {
        (
            quote!(capture_live),
            quote!(estimate_live),
            TokenStream::new(),
        )
    };

    let BackendTypes {
        device,
        spec,
        runner_param,
        backend,
        ..
    } = BackendTypes::of(plan);
    // A forward with islands of live arguments `L`: the runner's last type parameter, and the
    // constructor's (and the estimate's) parameter of their value during warm-ups and captures.
    let (runner_tail, live_param, live_value) = match &plan.islands {
        Some(islands) if islands.has_live => {
            let (ident, live) = (&islands.ident, &islands.live);
            (
                quote!(, #backend, #live),
                quote!(#ident: #live,),
                quote!(#ident),
            )
        }
        _ => (runner_param, TokenStream::new(), quote!(())),
    };
    // The runner types the three name: this function's runner for the borrow `'cg` (or `'cg_old`).
    let fn_runner =
        |life: &syn::Lifetime| quote!(#krate::FnRunner<#life, #id, #n, #statics_ty #runner_tail>);
    let runner_ty = fn_runner(lifetime);
    let old_runner_ty = fn_runner(&old_lifetime);

    quote! {
        #(#cfg_attrs)*
        #(#[doc = #graphs_docs])*
        #vis fn #graphs_ident<#lifetime #(, #bounded_lifetimes)*>(
            #receiver
            #rt: &#lifetime #device,
            #inputs: [#spec; #n],
            #(#static_idents: #static_tys,)*
            #live_param
        ) -> ::core::result::Result<#runner_ty, #krate::Error>
        #where_clause
        {
            #(#static_checks)*
            #plan_stmts
            #statics_eq
            #krate::Runner::#capture_fn(
                #rt,
                #graph_plan,
                #inputs,
                #template,
                #live_value,
                #keys_arg
                #eager,
            )
            .map(|#new_runner| {
                #krate::__private::identify(#new_runner.with_statics_eq(#statics_eq_ident))
            })
        }

        #(#cfg_attrs)*
        #(#[doc = #memory_docs])*
        #vis fn #memory_ident #memory_generics(
            #plain_receiver
            #rt: &#device,
            #inputs: [#spec; #n],
            #(#static_idents: #static_tys,)*
            #live_param
        ) -> ::core::result::Result<#krate::MemoryEstimate, #krate::Error>
        #where_clause
        {
            #plan_stmts
            #krate::Runner::#estimate_fn(
                #rt,
                #graph_plan,
                #inputs,
                #template,
                #live_value,
                #keys_arg
                #eager,
            )
        }

        #(#cfg_attrs)*
        #(#[doc = #refresh_docs])*
        #vis fn #refresh_ident<#lifetime, #old_lifetime #(, #refresh_lifetimes)*>(
            #receiver
            #rt: &#lifetime #device,
            #runner: #old_runner_ty,
        ) -> ::core::result::Result<
            (#runner_ty, #krate::RefreshReport),
            #krate::RefreshError<#old_runner_ty>,
        >
        #where_clause
        {
            #krate::__private::refresh(#runner, #rt, #eager)
        }
    }
}

/// `forward_result(self.forward(...))`, spanned at the user's return type so
/// a wrong return type is reported there.
fn forward_call(
    plan: &Plan,
    rt: &Ident,
    tensors: &Ident,
    statics: &Ident,
    islands: &Ident,
) -> TokenStream {
    let krate = &plan.krate;
    let args = plan.roles.iter().map(|role| match *role {
        Role::Runtime => quote!(#rt),
        Role::Islands => quote!(#islands),
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
    let plain: Vec<&crate::validate::StaticArg> =
        plan.statics.iter().filter(|s| s.key.is_none()).collect();
    let statics = if plain.is_empty() {
        "none".to_owned()
    } else {
        let names: Vec<String> = plain.iter().map(|s| format!("`{}`", s.ident)).collect();
        format!(
            "{} (baked into the graphs; every run checks them against the captured values)",
            names.join(", ")
        )
    };
    let count = plan.sizes.len();
    let graphs = if count == 1 { "graph" } else { "graphs" };
    let (intro, errors) = match plan.capture {
        CaptureMode::Init => (
            [
                format!(
                    " Captures one CUDA graph of `{name}` per batch size and returns a `Runner` that"
                ),
                " replays the smallest captured graph that fits each batch.".to_owned(),
            ],
            vec![" Fails if the graph plan is invalid or capturing any graph fails.".to_owned()],
        ),
        CaptureMode::Lazy => (
            [
                format!(
                    " Returns a `Runner` that replays one CUDA graph of `{name}` per batch size, each"
                ),
                " captured on first use: a batch runs the smallest size that fits it.".to_owned(),
            ],
            vec![
                " Fails if the graph plan is invalid. Graphs are captured on first use".to_owned(),
                " (`capture = lazy`), so a failed capture is reported by the run that needed it."
                    .to_owned(),
            ],
        ),
        CaptureMode::Background => (
            [
                format!(
                    " Returns a `Runner` of `{name}` at once, capturing nothing: each batch runs eagerly"
                ),
                " until its size's graph is captured, between calls (`capture = background`)."
                    .to_owned(),
            ],
            vec![
                " Fails if the graph plan is invalid. A failed background capture leaves its size"
                    .to_owned(),
                " eager and shows in `stats()`.".to_owned(),
            ],
        ),
    };
    let mut lines: Vec<String> = intro.into();
    lines.extend([
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
    ]);
    let keys = key_doc(plan);
    if !keys.is_empty() {
        lines.push(format!(
            " - Keys beyond the batch (one graph per size and combination): {keys}"
        ));
    }
    lines.extend([String::new(), " # Errors".to_owned(), String::new()]);
    lines.extend(errors);
    lines
}

/// The keys beyond the batch, for the docs: "`max_context` (buckets 512, 2048),
/// `lora` (variants false, true), `tables[1]` (buckets 64, 256)"; empty without.
fn key_doc(plan: &Plan) -> String {
    let join = |v: Vec<String>| v.join(", ");
    let mut parts = Vec::new();
    for s in &plan.statics {
        match &s.key {
            Some(KeyRole::Value { buckets }) => parts.push(format!(
                "`{}` (buckets {})",
                s.ident,
                join(buckets.iter().map(u64::to_string).collect())
            )),
            Some(KeyRole::Variant { values }) => parts.push(format!(
                "`{}` (variants {})",
                s.ident,
                join(
                    values
                        .iter()
                        .map(|v| quote::ToTokens::to_token_stream(v).to_string())
                        .collect()
                )
            )),
            None => {}
        }
    }
    for d in &plan.dim_buckets {
        parts.push(format!(
            "`{}` (buckets {})",
            d.label,
            join(d.buckets.iter().map(u64::to_string).collect())
        ));
    }
    join(parts)
}

/// Documentation of `<fn>_graph_memory`, one string per line.
fn memory_doc_lines(plan: &Plan) -> Vec<String> {
    let graphs = &plan.graphs_ident;
    vec![
        format!(" What `{graphs}` would hold on the device (graph pool + static inputs), found by"),
        " capturing the largest size alone and releasing it: size a KV cache from the memory"
            .to_owned(),
        " left before committing.".to_owned(),
        String::new(),
        format!(" Generated by `#[cuda_graph]`; takes the same arguments as `{graphs}`."),
        String::new(),
        " # Errors".to_owned(),
        String::new(),
        " Fails if the graph plan is invalid or capturing the largest size fails.".to_owned(),
    ]
}

/// Documentation of `<fn>_graphs_refresh`, one string per line.
fn refresh_doc_lines(plan: &Plan) -> Vec<String> {
    let graphs = &plan.graphs_ident;
    let from = if plan.method {
        format!(
            " Generated by `#[cuda_graph]`. `runner` comes from `{graphs}` (on this model or another)"
        )
    } else {
        format!(" Generated by `#[cuda_graph]`. `runner` comes from `{graphs}`")
    };
    let mut lines = vec![
        " Rebuilds every graph of `runner` for this model (e.g. new weights of the same shapes"
            .to_owned(),
        " loaded into new buffers): each size re-recorded and its executable graph updated in"
            .to_owned(),
        " place with cuGraphExecUpdate, re-instantiated only where the driver refuses. The old"
            .to_owned(),
        " runner is consumed, so nothing replays pointers into the old weights.".to_owned(),
        String::new(),
    ];
    lines.push(from);
    lines.extend(match plan.capture {
        CaptureMode::Init => {
            vec![" and the refreshed runner keeps its static arguments.".to_owned()]
        }
        CaptureMode::Lazy => vec![
            " and the refreshed runner keeps its static arguments; sizes not captured yet"
                .to_owned(),
            " (`capture = lazy`) are still captured on first use.".to_owned(),
        ],
        CaptureMode::Background => vec![
            " and the refreshed runner keeps its static arguments; sizes not captured yet"
                .to_owned(),
            " (`capture = background`) are still captured between calls.".to_owned(),
        ],
    });
    lines.extend([
        String::new(),
        " # Errors".to_owned(),
        String::new(),
        " Fails if `rt` is not the runtime `runner` was captured on, if the runner's memory is"
            .to_owned(),
        " released, or if re-recording a size fails.".to_owned(),
    ]);
    lines
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::validate::validate;
    use proc_macro2::TokenStream;
    use quote::ToTokens;

    fn expand_str(args: TokenStream, func: TokenStream) -> String {
        let (args, error) = crate::parse::parse_args(args);
        assert!(error.is_none(), "{error:?}");
        let func: syn::ImplItemFn = match syn::parse2(func) {
            Ok(f) => f,
            Err(e) => panic!("{e}"),
        };
        match validate(&args, &func) {
            Ok(plan) => expand(&plan, 0x1234).to_string(),
            Err(e) => panic!("{e}"),
        }
    }

    /// The generated items, parsed as methods of an `impl` block.
    fn impl_items(out: &str) -> Vec<syn::ImplItemFn> {
        let tokens: TokenStream = out.parse().unwrap_or_default();
        let block: syn::Result<syn::ItemImpl> = syn::parse2(quote!(impl M { #tokens }));
        let block = match block {
            Ok(block) => block,
            Err(e) => panic!("{e}\n{out}"),
        };
        block
            .items
            .into_iter()
            .map(|item| match item {
                syn::ImplItem::Fn(f) => f,
                other => panic!("not a method: {}", other.to_token_stream()),
            })
            .collect()
    }

    /// The generated items, parsed as free functions of a file.
    fn file_items(out: &str) -> Vec<syn::ItemFn> {
        let file: syn::Result<syn::File> = syn::parse_str(out);
        let file = match file {
            Ok(file) => file,
            Err(e) => panic!("{e}\n{out}"),
        };
        file.items
            .into_iter()
            .map(|item| match item {
                syn::Item::Fn(f) => f,
                other => panic!("not a function: {}", other.to_token_stream()),
            })
            .collect()
    }

    /// The `#[doc]` lines of a generated item, joined.
    fn doc_of(item: &syn::ItemFn) -> String {
        item.attrs
            .iter()
            .filter(|a| a.path().is_ident("doc"))
            .map(|a| a.to_token_stream().to_string())
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Whitespace-insensitive containment check on token strings.
    fn has(haystack: &str, needle: &str) -> bool {
        let squash = |s: &str| s.split_whitespace().collect::<String>();
        squash(haystack).contains(&squash(needle))
    }

    /// A forward keyed by buckets and variants: the generated functions take only the plain
    /// statics; the plan carries the key space; the runner is built with `capture_keyed` and
    /// the generated `HostKeys` (a `match` per variant, the bucket lists as literals); only the
    /// plain statics are compared at each call.
    #[test]
    fn keys_build_a_keyed_runner() {
        let out = expand_str(
            quote!(
                sizes = [1, 2],
                buckets = [ctx = [512, 2048], tables[1] = [4, 16]],
                variants = [lora = [false, true]],
                static_args = [scale]
            ),
            quote!(
                fn forward(
                    &self,
                    rt: &Runtime,
                    x: &Tensor,
                    tables: &Tensor,
                    ctx: usize,
                    lora: bool,
                    scale: f32,
                ) -> Result<Tensor> {
                    todo!()
                }
            ),
        );
        for needle in [
            "inputs : [:: cudagraph :: InputSpec ; 2] , scale : f32 ,)",
            ". with_keys (:: cudagraph :: KeySpace :: new () . with_value_buckets (\"ctx\" , & [512u64 , 2048u64] [..]) ? . with_variants (\"lora\" , & [\"false\" , \"true\"] [..]) ? . with_dim_buckets (\"tables[1]\" , & [(1 , 1)] , & [4usize , 16usize] [..]) ?)",
            ":: cudagraph :: __private :: check_buckets_fit :: < usize > (\"ctx\" , & [512u64 , 2048u64]) ? ;",
            ":: cudagraph :: Runner :: capture_keyed (rt , __cg_plan , inputs ,",
            ":: cudagraph :: Runner :: estimate_keyed (rt , __cg_plan , inputs ,",
            "false => 0u64 , true => 1u64 ,",
            "__private :: KeyMiss :: UnlistedVariant",
            ":: cudagraph :: __private :: assert_bucket_arg :: < usize > () ;",
            ":: cudagraph :: __private :: assert_variant_arg :: < bool > () ;",
            ":: cudagraph :: __private :: assert_static_arg :: < f32 > () ;",
            "(& :: cudagraph :: __private :: StaticCmp (& __cg_a . 2 , & __cg_b . 2)) . cg_same ()",
        ] {
            assert!(has(&out, needle), "missing {needle}\nin {out}");
        }
        // The keyed statics are not compared.
        assert!(!has(&out, "StaticCmp (& __cg_a . 0"), "{out}");
        assert!(!has(&out, "StaticCmp (& __cg_a . 1"), "{out}");
        assert!(
            !has(&out, "ctx : usize ,"),
            "keys are not parameters: {out}"
        );
    }

    /// A forward with `islands: &Islands<L>`: the live arguments become the generated functions'
    /// last parameter, passed to `capture_live`/`estimate_live` and named in the runner type;
    /// the forward itself gets one lifetime for `&self` and the islands' borrow.
    #[test]
    fn islands_take_live_arguments_and_tie_the_borrow() {
        let func: syn::ImplItemFn = syn::parse_quote!(
            fn forward(
                &self,
                rt: &Runtime,
                x: &Tensor,
                islands: &Islands<(u32,)>,
            ) -> Result<Tensor> {
                todo!()
            }
        );
        let (args, error) = crate::parse::parse_args(quote!(sizes = [1, 2]));
        assert!(error.is_none(), "{error:?}");
        let plan = validate(&args, &func).unwrap_or_else(|e| panic!("{e}"));
        let out = expand(&plan, 0x1234).to_string();
        for needle in [
            "inputs : [:: cudagraph :: InputSpec ; 1] , islands : (u32 ,) ,)",
            ":: cudagraph :: Runner :: capture_live (rt , __cg_plan , inputs , () , islands ,",
            ":: cudagraph :: Runner :: estimate_live (rt , __cg_plan , inputs , () , islands ,",
            ", 1 , () , :: cudagraph :: Native , (u32 ,) >",
            "self . forward (__cg_rt , __cg_tensors [0] , __cg_islands)",
        ] {
            assert!(has(&out, needle), "missing {needle}\nin {out}");
        }
        let emitted = item(&func, &plan).to_string();
        for needle in [
            "fn forward < 'cg_i > (& 'cg_i self , rt : & Runtime , x : & Tensor ,",
            "islands : & Islands < 'cg_i , '_ , (u32 ,) >",
        ] {
            assert!(has(&emitted, needle), "missing {needle}\nin {emitted}");
        }
        // Without islands the forward is emitted as written.
        let plain: syn::ImplItemFn = syn::parse_quote!(
            fn forward(&self, rt: &Runtime, x: &Tensor) -> Result<Tensor> {
                todo!()
            }
        );
        let plan = validate(&args, &plain).unwrap_or_else(|e| panic!("{e}"));
        use quote::ToTokens;
        assert_eq!(
            item(&plain, &plan).to_string(),
            plain.to_token_stream().to_string()
        );
    }

    /// A forward on another backend's device type (candle's `CudaDevice`, plain cudarc's
    /// `Arc<CudaStream>` with `CudaTensor`s) names its backend through `Device` and is built
    /// with the same `capture` / `estimate`; the native spelling names no backend.
    #[test]
    fn foreign_device_types_name_their_backend() {
        for (device, tensor) in [
            (quote!(&CudaDevice), quote!(&Tensor)),
            (
                quote!(&candle_core::CudaDevice),
                quote!(&candle_core::Tensor),
            ),
            (quote!(&Arc<CudaStream>), quote!(&CudaTensor)),
        ] {
            let out = expand_str(
                quote!(sizes = [1, 2]),
                quote!(
                    fn forward(&self, dev: #device, x: #tensor) -> Result<Tensor> {
                        todo!()
                    }
                ),
            );
            let device = device.to_string().trim_start_matches('&').trim().to_owned();
            let backend = format!("< {device} as :: cudagraph :: Device > :: Backend");
            assert!(has(&out, &format!("rt : & 'cg {device}")), "{out}");
            assert!(has(&out, &backend), "{out}");
            assert!(
                has(&out, ":: cudagraph :: Runner :: capture_live ("),
                "{out}"
            );
            assert!(
                has(&out, ":: cudagraph :: Runner :: estimate_live ("),
                "{out}"
            );
            assert!(has(&out, &format!(", 1 , () , {backend} >")), "{out}");
            assert!(
                has(
                    &out,
                    &format!(
                        "[:: cudagraph :: InputSpec < < {backend} as :: cudagraph :: Backend > :: DType > ; 1]"
                    )
                ),
                "{out}"
            );
            impl_items(&out);
        }
        let native = expand_str(
            quote!(sizes = [1, 2]),
            quote!(
                fn forward(&self, rt: &Runtime, x: &Tensor) -> Result<Tensor> {
                    todo!()
                }
            ),
        );
        assert!(!has(&native, "capture_on"), "{native}");
        assert!(!has(&native, ":: cudagraph :: Device"), "{native}");
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
            "-> :: core :: result :: Result < :: cudagraph :: FnRunner < 'cg , :: cudagraph :: FunctionId < { :: cudagraph :: __private :: function_id (:: core :: module_path ! () , \"forward\" , 4660u64) } , Self > , 2 , (Config , f32 ,) > , :: cudagraph :: Error >",
            "let __cg_plan = :: cudagraph :: GraphPlan :: from_static (\"forward\" , & [1 , 2 , 4] , & [:: core :: primitive :: u16 :: MAX , 0 , 1 , 2 , 2] , 1) ? ;",
            "let __cg_statics_eq : fn (& (Config , f32 ,) , & (Config , f32 ,)) -> :: core :: primitive :: bool = | __cg_a , __cg_b | { # [allow (unused_imports)] use :: cudagraph :: __private :: { ViaBits as _ , ViaPartialEq as _ } ; (& :: cudagraph :: __private :: StaticCmp (& __cg_a . 0 , & __cg_b . 0)) . cg_same () && (& :: cudagraph :: __private :: StaticCmp (& __cg_a . 1 , & __cg_b . 1)) . cg_same () } ;",
            ":: cudagraph :: Runner :: capture_live (rt , __cg_plan , inputs , (cfg , scale ,) , () , move | __cg_rt : & :: cudagraph :: Runtime , __cg_tensors : [& :: cudagraph :: Tensor ; 2] , __cg_statics : & (Config , f32 ,) , __cg_islands |",
            ". map (| __cg_runner | { :: cudagraph :: __private :: identify (__cg_runner . with_statics_eq (__cg_statics_eq)) })",
            ":: cudagraph :: __private :: assert_static_arg :: < Config > () ; :: cudagraph :: __private :: assert_static_arg :: < f32 > () ;",
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
        assert!(
            has(
                &out,
                ":: cg :: FnRunner < 'cg , :: cg :: FunctionId < { :: cg :: __private :: function_id (:: core :: module_path ! () , \"step\" , 4660u64) } > , 1 , () >"
            ),
            "{out}"
        );
        assert!(
            has(
                &out,
                "let __cg_statics_eq : fn (& () , & ()) -> :: core :: primitive :: bool = | _ , _ | true ;"
            ),
            "{out}"
        );
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
        let items = impl_items(&out);
        let names: Vec<String> = items.iter().map(|f| f.sig.ident.to_string()).collect();
        assert_eq!(
            names,
            [
                "forward_graphs",
                "forward_graph_memory",
                "forward_graphs_refresh"
            ]
        );
        let generics: Vec<usize> = items.iter().map(|f| f.sig.generics.params.len()).collect();
        // `'cg` + the user's `'a` (named by the where clause); the estimate
        // borrows nothing past the call, so it has no `'cg`; the refresh also
        // names the old runner's lifetime (its error gives that runner back).
        assert_eq!(generics, [2, 1, 3]);
        // The runner holds the statics for `'cg`: every user lifetime outlives it (not needed
        // by the estimate, which returns nothing borrowed).
        let bounds = |f: &syn::ImplItemFn| -> Vec<String> {
            f.sig
                .generics
                .lifetimes()
                .map(|l| quote!(#l).to_string())
                .collect()
        };
        assert_eq!(bounds(&items[0]), ["'cg", "'a : 'cg"]);
        assert_eq!(bounds(&items[1]), ["'a"]);
        assert_eq!(bounds(&items[2]), ["'cg", "'cg_old", "'a : 'cg + 'cg_old"]);
        for item in &items {
            assert!(item.sig.generics.where_clause.is_some(), "{out}");
            assert!(item.attrs.iter().any(|a| a.path().is_ident("doc")), "{out}");
        }
    }

    #[test]
    fn lazy_capture_only_when_asked() {
        let func = quote!(
            fn forward(&self, rt: &Runtime, x: &Tensor) -> Result<Tensor> {
                todo!()
            }
        );
        let lazy = expand_str(quote!(sizes = [1, 2], capture = lazy), func.clone());
        assert!(
            has(
                &lazy,
                "let __cg_plan = :: cudagraph :: GraphPlan :: from_static (\"forward\" , & [1 , 2] , & [:: core :: primitive :: u16 :: MAX , 0 , 1] , 0) ? . with_lazy_capture (true) ;"
            ),
            "{lazy}"
        );
        assert!(lazy.contains("captured on first use"), "{lazy}");
        for args in [
            quote!(sizes = [1, 2]),
            quote!(sizes = [1, 2], capture = init),
        ] {
            let init = expand_str(args, func.clone());
            assert!(!init.contains("with_lazy_capture"), "{init}");
            assert!(!init.contains("first use"), "{init}");
            assert!(
                has(
                    &init,
                    "let __cg_plan = :: cudagraph :: GraphPlan :: from_static (\"forward\" , & [1 , 2] , & [:: core :: primitive :: u16 :: MAX , 0 , 1] , 0) ? ;"
                ),
                "{init}"
            );
        }
    }

    #[test]
    fn lazy_docs_still_parse_as_an_item() {
        let out = expand_str(
            quote!(sizes = [1], capture = lazy, crate = "::cg"),
            quote!(
                fn step(rt: &Runtime, x: &Tensor) -> Result<Tensor> {
                    todo!()
                }
            ),
        );
        let items = file_items(&out);
        let graphs = &items[0];
        assert!(has(&out, ":: cg :: GraphPlan :: from_static"), "{out}");
        assert!(has(&out, ". with_lazy_capture (true)"), "{out}");
        assert_eq!(graphs.sig.ident, "step_graphs");
        assert!(has(&doc_of(&items[2]), "captured on first use"), "{out}");
    }

    #[test]
    fn estimate_and_refresh_are_generated_next_to_graphs() {
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
        let items = impl_items(&out);
        assert_eq!(items.len(), 3, "{out}");
        let [graphs, memory, refresh] = [0, 1, 2].map(|i| items[i].to_token_stream().to_string());
        let plan_stmt = "let __cg_plan = :: cudagraph :: GraphPlan :: from_static (\"forward\" , & [1 , 2 , 4] , & [:: core :: primitive :: u16 :: MAX , 0 , 1 , 2 , 2] , 1) ? ;";
        let id = ":: cudagraph :: FunctionId < { :: cudagraph :: __private :: function_id (:: core :: module_path ! () , \"forward\" , 4660u64) } , Self >";
        let closure = "move | __cg_rt : & :: cudagraph :: Runtime , __cg_tensors : [& :: cudagraph :: Tensor ; 2] , __cg_statics : & (Config , f32 ,) , __cg_islands | { :: cudagraph :: forward_result (self . forward (__cg_rt , __cg_tensors [0] , __cg_tensors [1] , & __cg_statics . 0 , :: core :: clone :: Clone :: clone (& __cg_statics . 1))) }";

        // `<fn>_graph_memory`: the same arguments and plan, `Runner::estimate`.
        for needle in [
            "pub fn forward_graph_memory (& self , rt : & :: cudagraph :: Runtime , inputs : [:: cudagraph :: InputSpec ; 2] , cfg : Config , scale : f32 ,)",
            "-> :: core :: result :: Result < :: cudagraph :: MemoryEstimate , :: cudagraph :: Error >",
            plan_stmt,
            ":: cudagraph :: Runner :: estimate_live (rt , __cg_plan , inputs , (cfg , scale ,) , () ,",
            closure,
        ] {
            assert!(has(&memory, needle), "missing {needle}\nin {memory}");
        }
        assert!(!has(&memory, "'cg"), "{memory}");
        assert!(!has(&memory, "Runner :: capture"), "{memory}");
        // The estimate keeps no runner: no comparator, no identity.
        assert!(!has(&memory, "statics_eq"), "{memory}");
        assert!(!has(&memory, "function_id"), "{memory}");

        // `<fn>_graphs_refresh`: takes a runner, no inputs or statics, `Runner::refresh`.
        let refresh_sig = format!(
            "pub fn forward_graphs_refresh < 'cg , 'cg_old > (& 'cg self , rt : & 'cg :: cudagraph :: Runtime , runner : :: cudagraph :: FnRunner < 'cg_old , {id} , 2 , (Config , f32 ,) > ,)"
        );
        let refresh_ret = format!(
            "-> :: core :: result :: Result < (:: cudagraph :: FnRunner < 'cg , {id} , 2 , (Config , f32 ,) > , :: cudagraph :: RefreshReport) , :: cudagraph :: RefreshError < :: cudagraph :: FnRunner < 'cg_old , {id} , 2 , (Config , f32 ,) > > , >"
        );
        for needle in [
            refresh_sig.as_str(),
            refresh_ret.as_str(),
            ":: cudagraph :: __private :: refresh (runner , rt ,",
            closure,
        ] {
            assert!(has(&refresh, needle), "missing {needle}\nin {refresh}");
        }
        for absent in [
            "inputs",
            "__cg_plan",
            "statics_eq",
            "Runner :: capture",
            "Runner :: estimate",
        ] {
            assert!(!has(&refresh, absent), "{absent} in {refresh}");
        }

        // `<fn>_graphs` returns a runner of this function's identity, the same one
        // `<fn>_graphs_refresh` takes and returns; the three share one closure.
        assert!(has(&graphs, plan_stmt), "{graphs}");
        assert!(
            has(
                &graphs,
                &format!(
                    "FnRunner < 'cg , {id} , 2 , (Config , f32 ,) > , :: cudagraph :: Error >"
                )
            ),
            "{graphs}"
        );
        assert_eq!(graphs.matches("function_id").count(), 1, "{graphs}");
        assert_eq!(refresh.matches("function_id").count(), 3, "{refresh}");
        assert!(
            has(
                &graphs,
                ":: cudagraph :: Runner :: capture_live (rt , __cg_plan , inputs , (cfg , scale ,) , () ,"
            ),
            "{graphs}"
        );
        for item in [&graphs, &memory, &refresh] {
            assert!(has(item, closure), "{item}");
        }

        // Docs, with the user's names.
        let docs = |i: usize| {
            items[i]
                .attrs
                .iter()
                .filter(|a| a.path().is_ident("doc"))
                .map(|a| a.to_token_stream().to_string())
                .collect::<Vec<_>>()
                .join("\n")
        };
        assert!(
            docs(1).contains("What `forward_graphs` would hold on the device"),
            "{}",
            docs(1)
        );
        assert!(
            docs(1).contains("size a KV cache from the memory"),
            "{}",
            docs(1)
        );
        assert!(
            docs(2).contains("Rebuilds every graph of `runner`"),
            "{}",
            docs(2)
        );
        assert!(docs(2).contains("cuGraphExecUpdate"), "{}", docs(2));
        assert!(
            docs(2).contains("`runner` comes from `forward_graphs`"),
            "{}",
            docs(2)
        );
        assert!(!docs(2).contains("first use"), "{}", docs(2));
    }

    #[test]
    fn free_function_estimate_and_refresh_have_no_receiver() {
        let out = expand_str(
            quote!(sizes = [1, 2], static_args = [cfg], crate = "::cg"),
            quote!(
                pub(crate) fn step(x: &Tensor, rt: &Runtime, cfg: Cfg) -> Result<Tensor> {
                    todo!()
                }
            ),
        );
        let items = file_items(&out);
        let names: Vec<String> = items.iter().map(|f| f.sig.ident.to_string()).collect();
        assert_eq!(
            names,
            ["step_graphs", "step_graph_memory", "step_graphs_refresh"]
        );
        for item in &items {
            assert!(item.sig.receiver().is_none(), "{out}");
            assert!(matches!(item.vis, syn::Visibility::Restricted(_)), "{out}");
        }
        let memory = items[1].to_token_stream().to_string();
        let refresh = items[2].to_token_stream().to_string();
        assert!(
            has(
                &memory,
                "(rt : & :: cg :: Runtime , inputs : [:: cg :: InputSpec ; 1] , cfg : Cfg ,) -> :: core :: result :: Result < :: cg :: MemoryEstimate , :: cg :: Error >"
            ),
            "{memory}"
        );
        assert!(
            has(
                &memory,
                ":: cg :: Runner :: estimate_live (rt , __cg_plan , inputs , (cfg ,) , () ,"
            ),
            "{memory}"
        );
        assert!(
            has(
                &refresh,
                "step_graphs_refresh < 'cg , 'cg_old > (rt : & 'cg :: cg :: Runtime , runner : :: cg :: FnRunner < 'cg_old , :: cg :: FunctionId < { :: cg :: __private :: function_id (:: core :: module_path ! () , \"step\" , 4660u64) } > , 1 , (Cfg ,) > ,)"
            ),
            "{refresh}"
        );
        assert!(
            has(&refresh, ":: cg :: __private :: refresh (runner , rt ,"),
            "{refresh}"
        );
        let call = ":: cg :: forward_result (step (__cg_tensors [0] , __cg_rt , :: core :: clone :: Clone :: clone (& __cg_statics . 0)))";
        assert!(has(&memory, call), "{memory}");
        assert!(has(&refresh, call), "{refresh}");
        assert!(!has(&out, "self ."), "{out}");
        assert!(!has(&out, "& self"), "{out}");
        assert!(
            has(&memory, "pub (crate) fn step_graph_memory (rt"),
            "{memory}"
        );
        assert!(
            !doc_of(&items[2]).contains("this model or another"),
            "{out}"
        );
    }

    #[test]
    fn estimate_uses_the_same_lazy_plan() {
        let out = expand_str(
            quote!(sizes = [1, 2], capture = lazy),
            quote!(
                fn forward(&self, rt: &Runtime, x: &Tensor) -> Result<Tensor> {
                    todo!()
                }
            ),
        );
        let items = impl_items(&out);
        let memory = items[1].to_token_stream().to_string();
        assert!(
            has(
                &memory,
                "from_static (\"forward\" , & [1 , 2] , & [:: core :: primitive :: u16 :: MAX , 0 , 1] , 0) ? . with_lazy_capture (true) ;"
            ),
            "{memory}"
        );
        assert!(has(&memory, "Runner :: estimate"), "{memory}");
    }

    #[test]
    fn background_capture_is_chained_and_documented() {
        let out = expand_str(
            quote!(sizes = [1, 2], capture = background),
            quote!(
                fn forward(&self, rt: &Runtime, x: &Tensor) -> Result<Tensor> {
                    todo!()
                }
            ),
        );
        let items = impl_items(&out);
        let graphs = items[0].to_token_stream().to_string();
        assert!(
            has(&graphs, ". with_background_capture (true) ;"),
            "{graphs}"
        );
        assert!(!has(&graphs, "with_lazy_capture"), "{graphs}");
        assert!(
            has(&graphs, "capture = background"),
            "the docs say so: {graphs}"
        );
    }

    #[test]
    fn pads_are_chained_after_the_plan_and_lazy_capture() {
        let func = quote!(
            fn forward(&self, rt: &Runtime, tokens: &Tensor, positions: &Tensor) -> Result<Tensor> {
                todo!()
            }
        );
        let out = expand_str(
            quote!(sizes = [1, 2], pad = [positions = -1, tokens = 0.5]),
            func.clone(),
        );
        let plan = "let __cg_plan = :: cudagraph :: GraphPlan :: from_static (\"forward\" , & [1 , 2] , & [:: core :: primitive :: u16 :: MAX , 0 , 1] , 0) ? . with_pad (1 , :: cudagraph :: PadValue :: Int (- 1i64)) . with_pad (0 , :: cudagraph :: PadValue :: Float (0.5f64)) ;";
        // In `<fn>_graphs` and `<fn>_graph_memory`.
        assert_eq!(out.matches(plan).count(), 2, "{out}");
        let lazy = expand_str(
            quote!(
                sizes = [1, 2],
                capture = lazy,
                pad = [tokens = -2.25, positions = 7]
            ),
            func,
        );
        assert!(
            has(
                &lazy,
                "? . with_lazy_capture (true) . with_pad (0 , :: cudagraph :: PadValue :: Float (- 2.25f64)) . with_pad (1 , :: cudagraph :: PadValue :: Int (7i64)) ;"
            ),
            "{lazy}"
        );
    }

    #[test]
    fn pad_values_at_the_edges() {
        let krate: syn::Path = syn::parse_quote!(::cg);
        let text = |v| pad_value(&krate, v).to_string();
        assert_eq!(
            text(PadNumber::Int(i64::MIN)),
            ":: cg :: PadValue :: Int (:: core :: primitive :: i64 :: MIN)"
        );
        assert_eq!(
            text(PadNumber::Int(i64::MAX)),
            ":: cg :: PadValue :: Int (9223372036854775807i64)"
        );
        assert_eq!(text(PadNumber::Int(0)), ":: cg :: PadValue :: Int (0i64)");
        assert_eq!(
            text(PadNumber::Float(-0.0)),
            ":: cg :: PadValue :: Float (- 0f64)"
        );
        assert_eq!(
            text(PadNumber::Float(1e-9)),
            ":: cg :: PadValue :: Float (0.000000001f64)"
        );
    }

    #[test]
    fn statics_comparator_covers_every_static() {
        let out = expand_str(
            quote!(sizes = [1], static_args = [a, b, c]),
            quote!(
                fn step(rt: &Runtime, x: &Tensor, a: f32, b: &Cfg, c: f64) -> Result<Tensor> {
                    todo!()
                }
            ),
        );
        let items = file_items(&out);
        let graphs = items[0].to_token_stream().to_string();
        for j in 0..3 {
            let needle = format!(
                "(& :: cudagraph :: __private :: StaticCmp (& __cg_a . {j} , & __cg_b . {j})) . cg_same ()"
            );
            assert!(has(&graphs, &needle), "missing {needle}\nin {graphs}");
        }
        assert!(
            has(
                &graphs,
                "let __cg_statics_eq : fn (& (f32 , Cfg , f64 ,) , & (f32 , Cfg , f64 ,)) -> :: core :: primitive :: bool"
            ),
            "{graphs}"
        );
        assert_eq!(graphs.matches(" && ").count(), 2, "{graphs}");
        assert!(
            has(&graphs, ". with_statics_eq (__cg_statics_eq)"),
            "{graphs}"
        );
    }

    #[test]
    fn function_salt_is_stable_and_tells_functions_apart() {
        let args = quote!(sizes = [1]);
        let a = quote!(
            fn forward_a(rt: &Runtime, x: &Tensor) -> Result<Tensor> {
                todo!()
            }
        );
        let b = quote!(
            fn forward_b(rt: &Runtime, x: &Tensor) -> Result<Tensor> {
                todo!()
            }
        );
        assert_eq!(function_salt(&args, &a), function_salt(&args, &a));
        assert_ne!(function_salt(&args, &a), function_salt(&args, &b));
        assert_ne!(
            function_salt(&args, &a),
            function_salt(&quote!(sizes = [2]), &a)
        );
        // FNV-1a of the empty input and the separator alone.
        assert_eq!(
            function_salt(&TokenStream::new(), &TokenStream::new()),
            (0xcbf2_9ce4_8422_2325_u64 ^ 0xff).wrapping_mul(0x0000_0100_0000_01b3)
        );
    }

    #[test]
    fn no_generated_item_names_in_the_body() {
        let out = expand_str(
            quote!(sizes = [1, 2], static_args = [__CG_SIZES, __CG_LOOKUP]),
            quote!(
                fn forward(
                    &self,
                    rt: &Runtime,
                    x: &Tensor,
                    __CG_SIZES: u8,
                    __CG_LOOKUP: &u16,
                ) -> Result<Tensor> {
                    todo!()
                }
            ),
        );
        assert!(!out.split_whitespace().any(|w| w == "const"), "{out}");
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
        assert_eq!(out.matches("cfg (feature = \"gpu\")").count(), 3, "{out}");
        assert!(has(&out, "pub (super) fn forward_graphs <"), "{out}");
        assert!(has(&out, "pub (super) fn forward_graph_memory"), "{out}");
        assert!(has(&out, "pub (super) fn forward_graphs_refresh"), "{out}");
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
