//! Checks the attribute arguments against the function signature and builds
//! the [`Plan`] that [`crate::expand`] turns into code.
//!
//! Every problem is collected; the macro reports them all at once.

use proc_macro2::Span;
use quote::{ToTokens, format_ident};
use syn::ext::IdentExt;
use syn::spanned::Spanned;
use syn::{
    Attribute, FnArg, GenericParam, Ident, ImplItemFn, Lifetime, LifetimeParam, Pat, ReceiverKind,
    ReturnType, Safety, Type, Visibility, WhereClause,
};

use crate::diag::Errors;
use crate::parse::{Args, CaptureMode, PadNumber};
use crate::sizes;

/// What a parameter of the user's function is, in declaration order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The `&Runtime` parameter: gets the runtime the graph replays on.
    Runtime,
    /// The k-th `&Tensor` parameter: gets `tensors[k]`.
    Tensor(usize),
    /// The j-th static argument: gets (a clone of / a reference to) `statics.j`.
    Static(usize),
    /// The `&Islands<L>` parameter: gets the runner's islands.
    Islands,
}

/// The forward's `islands: &Islands<L>` parameter.
#[derive(Debug, Clone)]
pub struct IslandsParam {
    /// Its name, reused as the generated constructor's parameter of the live arguments' value
    /// during warm-ups and captures.
    pub ident: Ident,
    /// The live arguments' type `L` (`()` when the type names none).
    pub live: Type,
    /// Whether `L` was written (the constructor then takes its capture-time value).
    pub has_live: bool,
    /// The lifetime the macro ties the islands' borrow to the receiver with (`None`: the user
    /// wrote the islands' lifetimes, or there is no receiver).
    pub tie: Option<Lifetime>,
}

/// A host value listed in `static_args`.
#[derive(Debug, Clone)]
pub struct StaticArg {
    /// Parameter name, reused as the generated function's parameter name.
    pub ident: Ident,
    /// Its type with one leading reference stripped: `Config` for `&Config`.
    pub ty: Type,
    /// Whether the original parameter was a reference (`&T`) rather than `T`.
    pub by_ref: bool,
    /// `None` for a static listed in `static_args` (compared at every call); a key of the
    /// graphs for a host value listed in `buckets` or `variants`.
    pub key: Option<KeyRole>,
}

/// How a host argument keys the graphs (`buckets = [..]`, `variants = [..]`).
#[derive(Debug, Clone)]
pub enum KeyRole {
    /// Rounded up to one of `buckets` (ascending, unique, positive): one graph set per bucket,
    /// the forward gets the bucket's value.
    Value {
        /// The buckets.
        buckets: Vec<u64>,
    },
    /// One graph set per listed value.
    Variant {
        /// The values, as patterns (literals or paths), also used as expressions.
        values: Vec<syn::Pat>,
    },
}

/// A non-batch dimension of tensor arguments padded to buckets (`buckets = [x[1] = [..]]`, or
/// `a[1] + b[1] = [..]` for dimensions that share their buckets).
#[derive(Debug, Clone)]
pub struct DimBucket {
    /// `x[1]` or `a[1]+b[1]`, for stats and messages.
    pub label: String,
    /// (index among the tensor arguments, dimension at least 1) of each member.
    pub members: Vec<(usize, usize)>,
    /// The buckets (ascending, unique, positive).
    pub buckets: Vec<u64>,
}

/// Everything the code generator needs, fully checked.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Path of the runtime crate (default `::cudagraph`).
    pub krate: syn::Path,
    /// Visibility of the user's function, reused for the generated one.
    pub vis: Visibility,
    /// `#[cfg(...)]` attributes of the user's function, copied over so the
    /// generated function exists exactly when the original does, and its
    /// `#[allow(...)]` attributes (the generated functions reuse the user's
    /// parameter names, e.g. a static named `__CG_SIZES` under
    /// `#[allow(non_snake_case)]`).
    pub cfg_attrs: Vec<Attribute>,
    /// Name of the user's function.
    pub fn_ident: Ident,
    /// Name of the generated function: `<fn>_graphs`.
    pub graphs_ident: Ident,
    /// Name of the generated memory estimate: `<fn>_graph_memory`.
    pub memory_ident: Ident,
    /// Name of the generated refresh: `<fn>_graphs_refresh`.
    pub refresh_ident: Ident,
    /// Whether the function is a `&self` method (else a free function).
    pub method: bool,
    /// The generated function's lifetime tying runner, model and runtime.
    pub lifetime: Lifetime,
    /// The lifetime of the runner a generated refresh consumes (distinct from `lifetime` and
    /// from the user's lifetimes).
    pub old_lifetime: Lifetime,
    /// Lifetime parameters of the user's function that the generated one
    /// needs (those named by static types or the where clause, and their
    /// bounds); the others are dropped so no unused lifetime is declared.
    pub lifetimes: Vec<LifetimeParam>,
    /// Where clause of the user's function, kept on the generated one.
    pub where_clause: Option<WhereClause>,
    /// The batch sizes, sorted ascending, unique, all in `1..=65535`.
    pub sizes: Vec<usize>,
    /// Dispatch table, see [`sizes::lookup_table`].
    pub lookup: Vec<u16>,
    /// The device type of a foreign backend's forward (`CudaDevice`, `Arc<CudaStream>`), as
    /// written; `None` for `&Runtime` (cudagraph's own tensors).
    pub device_ty: Option<Type>,
    /// Role of each typed parameter, in declaration order.
    pub roles: Vec<Role>,
    /// Names of the tensor parameters, in order (index = input index).
    pub tensors: Vec<Ident>,
    /// Index among the tensors of the batch input.
    pub batch_index: usize,
    /// The static arguments, in declaration order.
    pub statics: Vec<StaticArg>,
    /// The `&Islands<L>` parameter, if the forward has islands.
    pub islands: Option<IslandsParam>,
    /// `pad = [...]`: (index among the tensors, fill value), in the
    /// attribute's order, each tensor at most once.
    pub pads: Vec<(usize, PadNumber)>,
    /// Bucketed dimensions of tensor arguments, in the attribute's order.
    pub dim_buckets: Vec<DimBucket>,
    /// When the runner captures its graphs (`capture = ...`, default `init`).
    pub capture: CaptureMode,
    /// Span of the user's return type, for errors about it.
    pub output_span: Span,
}

/// What a typed parameter's type says it is, before `static_args` is applied.
enum Kind {
    /// `&Runtime` (or `&mut Runtime`, reported), or the device of another backend:
    /// `&CudaDevice` (candle), `&Arc<CudaStream>` (plain cudarc), whose type is kept.
    Runtime(Option<Box<Type>>),
    /// `&Tensor` (or `&mut Tensor`, reported).
    Tensor,
    /// `&Islands<..>`: the forward's islands (the type behind the reference kept).
    Islands(Box<Type>),
    /// Anything else: must be listed in `static_args`.
    Host {
        /// The type with one leading reference stripped.
        ty: Box<Type>,
        /// Whether a reference was stripped.
        by_ref: bool,
        /// Whether that reference was `&mut` (not allowed for statics).
        by_mut: bool,
    },
    /// `Tensor` or `Runtime` (the name) taken by value, or an `impl Trait`
    /// argument (`"impl"`): already reported.
    Misdeclared(&'static str),
}

/// A typed parameter after the first pass.
struct Param {
    /// The parameter name, `None` for a pattern (reported).
    name: Option<Ident>,
    /// What its type says it is.
    kind: Kind,
    /// The type behind the reference, for `&T` parameters (which backend a device or tensor
    /// belongs to).
    elem: Option<Type>,
    /// `name: Type`, to underline the whole parameter in errors.
    span_tokens: proc_macro2::TokenStream,
}

/// Checks `args` against `func` and builds the [`Plan`], or returns every
/// error found.
pub fn validate(args: &Args, func: &ImplItemFn) -> syn::Result<Plan> {
    let mut errors = Errors::new();
    let sig = &func.sig;

    check_header(func, &mut errors);
    let method = check_receiver(func, &mut errors);

    let params = classify_params(func, &mut errors);
    let fn_name = sig.ident.unraw().to_string();

    // Runtime parameter: exactly one.
    let runtimes: Vec<&Param> = params
        .iter()
        .filter(|p| matches!(p.kind, Kind::Runtime(_)))
        .collect();
    let misdeclared = |what: &str| {
        params
            .iter()
            .any(|p| matches!(p.kind, Kind::Misdeclared(w) if w == what))
    };
    match runtimes.as_slice() {
        [] if misdeclared("Runtime") => {}
        [] => errors.at(
            sig.ident.span(),
            format!(
                "`#[cuda_graph]` needs a `&Runtime` argument: the runtime that captures and replays the graphs, e.g. `fn {fn_name}(&self, rt: &Runtime, x: &Tensor)`"
            ),
        ),
        [_] => {}
        [_, extra @ ..] => {
            for param in extra {
                errors.spanned(&param.span_tokens, "only one `&Runtime` (device) argument is allowed");
            }
        }
    }

    // Tensor parameters: at least one.
    let tensors: Vec<Ident> = params
        .iter()
        .filter(|p| matches!(p.kind, Kind::Tensor))
        .map(|p| p.name.clone().unwrap_or_else(|| format_ident!("_")))
        .collect();
    if tensors.is_empty() && !misdeclared("Tensor") && !misdeclared("impl") {
        errors.at(
            sig.ident.span(),
            "`#[cuda_graph]` needs at least one `&Tensor` argument: the batch input",
        );
    }

    check_backend_mix(&params, &mut errors);
    let islands_params: Vec<&Param> = params
        .iter()
        .filter(|p| matches!(p.kind, Kind::Islands(_)))
        .collect();
    for extra in islands_params.iter().skip(1) {
        errors.spanned(
            &extra.span_tokens,
            "only one `&Islands` argument is allowed: every island of the forward runs through it",
        );
    }
    let batch_index = batch_index(args, &params, &fn_name, &mut errors);
    let (roles, statics) = assign_roles(args, &params, &fn_name, &mut errors);
    let pads = pad_indices(args, &params, &fn_name, &mut errors);
    let dim_buckets = dim_buckets(args, &params, &fn_name, &mut errors);

    // Sizes.
    let sizes = match &args.sizes {
        Some(spec) => sizes::resolve(spec, &mut errors),
        None => {
            if !args.incomplete {
                errors.at(
                    Span::call_site(),
                    "`#[cuda_graph]` needs `sizes`: write e.g. `#[cuda_graph(sizes = [1, 2, 4, 8..=256 step 8])]`",
                );
            }
            None
        }
    };

    let mut all_lifetimes: Vec<LifetimeParam> = sig
        .generics
        .params
        .iter()
        .filter_map(|p| match p {
            GenericParam::Lifetime(l) => Some(l.clone()),
            _ => None,
        })
        .collect();
    let mut statics = statics;
    if let Some(named) = name_elided_lifetimes(&mut statics, &all_lifetimes) {
        all_lifetimes.push(LifetimeParam::new(named));
    }
    let islands = islands_params.first().and_then(|p| {
        let (Kind::Islands(ty), Some(name)) = (&p.kind, &p.name) else {
            return None;
        };
        islands_param(func, ty, name, &all_lifetimes, &mut errors)
    });
    let lifetime = pick_lifetime(&all_lifetimes);
    let old_lifetime = pick_named(&all_lifetimes, &["cg_old", "cg_previous", "__cg_old"]);
    let lifetimes = used_lifetimes(all_lifetimes, &statics, sig.generics.where_clause.as_ref());

    let output_span = match &sig.output {
        ReturnType::Type(_, ty) => ty.span(),
        ReturnType::Default => sig.ident.span(),
    };

    let krate = args
        .krate
        .as_ref()
        .map(|k| k.path.clone())
        .unwrap_or_else(|| syn::parse_quote!(::cudagraph));

    let device_ty = runtimes.first().and_then(|p| match &p.kind {
        Kind::Runtime(foreign) => foreign.as_deref().cloned(),
        _ => None,
    });
    let sizes = sizes.unwrap_or_default();
    let plan = Plan {
        device_ty,
        krate,
        vis: func.vis.clone(),
        cfg_attrs: func
            .attrs
            .iter()
            .filter(|a| a.path().is_ident("cfg") || a.path().is_ident("allow"))
            .cloned()
            .collect(),
        fn_ident: sig.ident.clone(),
        // At the attribute: an error about a generated item as a whole (such as
        // E0407 "not a member of trait" when the attribute is on a method of a
        // trait impl) then points at `#[cuda_graph]`, not at the user's code.
        graphs_ident: Ident::new(&format!("{fn_name}_graphs"), Span::call_site()),
        memory_ident: Ident::new(&format!("{fn_name}_graph_memory"), Span::call_site()),
        refresh_ident: Ident::new(&format!("{fn_name}_graphs_refresh"), Span::call_site()),
        method,
        lifetime,
        old_lifetime,
        lifetimes,
        where_clause: sig.generics.where_clause.clone(),
        lookup: sizes::lookup_table(&sizes),
        sizes,
        roles,
        tensors,
        batch_index,
        statics,
        islands,
        pads,
        dim_buckets,
        capture: args.capture.unwrap_or_default(),
        output_span,
    };
    errors.finish(plan)
}

/// Checks what the signature's "header" allows: no `default`, `async`,
/// `unsafe`, type/const generics, variadics; an explicit return type.
fn check_header(func: &ImplItemFn, errors: &mut Errors) {
    let sig = &func.sig;
    if let Err(error) = func.modifiers.require_empty() {
        errors.at(
            error.span(),
            "`#[cuda_graph]` does not support `default fn`",
        );
    }
    if let Some(token) = &sig.asyncness {
        errors.at(
            token.span,
            "CUDA graphs capture synchronous GPU work; `async fn` can't be captured: remove `async`",
        );
    }
    if let Safety::Unsafe(token) = &sig.safety {
        errors.at(
            token.span,
            "`#[cuda_graph]` can't capture an `unsafe fn`: the generated runner would call it from safe code; make it a safe fn with an `unsafe` block inside",
        );
    }
    for param in &sig.generics.params {
        let what = match param {
            GenericParam::Lifetime(_) => continue,
            GenericParam::Type(t) => format!("type parameter `{}`", t.ident),
            GenericParam::Const(c) => format!("const parameter `{}`", c.ident),
        };
        errors.spanned(
            param,
            format!(
                "`#[cuda_graph]` can't capture a generic function: a CUDA graph records one concrete instantiation; remove the {what} (lifetime parameters are fine)"
            ),
        );
    }
    if let Some(variadic) = &sig.variadic {
        errors.spanned(
            variadic,
            "`#[cuda_graph]` can't capture a variadic function",
        );
    }
    if matches!(sig.output, ReturnType::Default) {
        errors.at(
            sig.ident.span(),
            format!(
                "`{}` must return `Result<Tensor>`: add `-> Result<Tensor>` (the output tensor of the graph)",
                sig.ident.unraw()
            ),
        );
    }
}

/// Accepts only `&self` (or `self: &Self`); returns whether there is a receiver.
fn check_receiver(func: &ImplItemFn, errors: &mut Errors) -> bool {
    let Some(receiver) = func.sig.receiver() else {
        return false;
    };
    let shared_ref = match &receiver.kind {
        ReceiverKind::Reference(_, _, mutability) => {
            mutability.is_none() && receiver.mutability.is_none()
        }
        ReceiverKind::Typed(_, ty) => receiver.mutability.is_none() && is_shared_ref_to_self(ty),
        _ => false,
    };
    if !shared_ref {
        errors.spanned(
            receiver,
            "`#[cuda_graph]` methods must take `&self`: the runner borrows the model while its graphs hold pointers into the model's weights, so the model can be neither moved (`self`, `Box<Self>`, ...) nor mutated (`&mut self`)",
        );
    }
    true
}

/// Whether `ty` is `&Self` / `&'a Self`.
fn is_shared_ref_to_self(ty: &Type) -> bool {
    match peel(ty) {
        Type::Reference(r) => {
            r.mutability.is_none()
                && matches!(peel(&r.elem), Type::Path(p) if p.qself.is_none() && p.path.is_ident("Self"))
        }
        _ => false,
    }
}

/// Strips invisible groups and parentheses around a type.
fn peel(ty: &Type) -> &Type {
    match ty {
        Type::Group(g) => peel(&g.elem),
        Type::Paren(p) => peel(&p.elem),
        other => other,
    }
}

/// Last path segment name of a (peeled) path type, if it is one.
fn last_segment(ty: &Type) -> Option<String> {
    match peel(ty) {
        Type::Path(p) if p.qself.is_none() => p.path.segments.last().map(|s| s.ident.to_string()),
        _ => None,
    }
}

/// The role a foreign backend's type plays: `CudaDevice` (candle), `CudaStream` or
/// `Arc<CudaStream>` (plain cudarc) are the device (`"Runtime"`); `CudaTensor` (plain
/// cudarc) is a tensor (`"Tensor"`).
fn foreign_role(ty: &Type) -> Option<&'static str> {
    let Type::Path(p) = peel(ty) else {
        return None;
    };
    let last = p.path.segments.last()?;
    match last.ident.to_string().as_str() {
        "CudaDevice" | "CudaStream" => Some("Runtime"),
        "CudaTensor" => Some("Tensor"),
        "Arc" => match &last.arguments {
            syn::PathArguments::AngleBracketed(args) => match args.args.first()? {
                syn::GenericArgument::Type(inner)
                    if last_segment(inner).as_deref() == Some("CudaStream") =>
                {
                    Some("Runtime")
                }
                _ => None,
            },
            _ => None,
        },
        _ => None,
    }
}

/// Whether a type's tokens contain `impl` (an `impl Trait` anywhere in it:
/// the keyword can appear in a type in no other way).
fn mentions_impl_trait(tokens: proc_macro2::TokenStream) -> bool {
    tokens.into_iter().any(|tree| match tree {
        proc_macro2::TokenTree::Ident(ident) => ident == "impl",
        proc_macro2::TokenTree::Group(group) => mentions_impl_trait(group.stream()),
        _ => false,
    })
}

/// For `&T` with `T` a path other than a primitive: the hint that a type
/// alias of `Tensor` is not recognised (empty otherwise).
fn alias_hint(ty: &Type, by_ref: bool) -> String {
    const PRIMITIVES: [&str; 17] = [
        "bool", "char", "str", "u8", "u16", "u32", "u64", "u128", "usize", "i8", "i16", "i32",
        "i64", "i128", "isize", "f32", "f64",
    ];
    match last_segment(ty) {
        Some(name) if by_ref && !PRIMITIVES.contains(&name.as_str()) => format!(
            "; if `{name}` is an alias of `Tensor`, write `&Tensor` (the macro recognises tensor arguments by the type name `Tensor`)"
        ),
        _ => String::new(),
    }
}

/// First pass over typed parameters: names and what their types say.
fn classify_params(func: &ImplItemFn, errors: &mut Errors) -> Vec<Param> {
    let mut params = Vec::new();
    for arg in &func.sig.inputs {
        let FnArg::Typed(pat_type) = arg else {
            continue;
        };
        let name = match &*pat_type.pat {
            Pat::Ident(p) if p.by_ref.is_none() && p.subpat.is_none() => Some(p.ident.clone()),
            other => {
                errors.spanned(
                    other,
                    "`#[cuda_graph]` needs plain argument names: write e.g. `x: &Tensor` instead of a pattern",
                );
                None
            }
        };
        let shown = name
            .as_ref()
            .map_or_else(|| "_".to_owned(), |n| n.unraw().to_string());
        let ty = &*pat_type.ty;
        if mentions_impl_trait(ty.to_token_stream()) {
            errors.spanned(
                pat_type,
                "`impl Trait` arguments are not supported by #[cuda_graph]: take `&Tensor` for a batch input, or list a concrete type in `static_args`",
            );
            params.push(Param {
                name,
                kind: Kind::Misdeclared("impl"),
                elem: None,
                span_tokens: pat_type.to_token_stream(),
            });
            continue;
        }
        let kind = match peel(ty) {
            Type::Reference(r) if last_segment(&r.elem).as_deref() == Some("Islands") => {
                if let Some(token) = &r.mutability {
                    errors.at(
                        token.span,
                        format!("take `{shown}` as `&Islands<..>`, not `&mut`: islands are run through a shared reference"),
                    );
                }
                Kind::Islands(r.elem.clone())
            }
            Type::Reference(r) => {
                let segment = last_segment(&r.elem);
                let foreign = foreign_role(&r.elem);
                match foreign.or(segment.as_deref()) {
                    Some(s @ ("Runtime" | "Tensor")) => {
                        if let Some(token) = &r.mutability {
                            errors.at(
                                token.span,
                                format!("take `{shown}` as `&{s}`, not `&mut {s}`: the graph only reads its inputs and the runtime"),
                            );
                        }
                        if s == "Runtime" {
                            Kind::Runtime(foreign.map(|_| r.elem.clone()))
                        } else {
                            Kind::Tensor
                        }
                    }
                    _ => Kind::Host {
                        ty: r.elem.clone(),
                        by_ref: true,
                        by_mut: r.mutability.is_some(),
                    },
                }
            }
            other => {
                if let Some(s @ ("Runtime" | "Tensor")) = last_segment(other).as_deref() {
                    errors.spanned(ty, format!("take `{shown}` by reference: `{shown}: &{s}`"));
                    Kind::Misdeclared(if s == "Runtime" { "Runtime" } else { "Tensor" })
                } else {
                    Kind::Host {
                        ty: Box::new(other.clone()),
                        by_ref: false,
                        by_mut: false,
                    }
                }
            }
        };
        let elem = match peel(ty) {
            Type::Reference(r) => Some((*r.elem).clone()),
            _ => None,
        };
        params.push(Param {
            name,
            kind,
            elem,
            span_tokens: pat_type.to_token_stream(),
        });
    }
    params
}

/// The backends the device and tensor types of a signature name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Family {
    /// `&Runtime` with cudagraph's `&Tensor`.
    Native,
    /// `&Arc<CudaStream>` with `&CudaTensor` (plain cudarc).
    Raw,
    /// `&CudaDevice` with candle's `&Tensor`.
    Candle,
}

impl Family {
    /// The device argument's type as a user writes it.
    fn device(self) -> &'static str {
        match self {
            Family::Native => "`&Runtime`",
            Family::Raw => "`&Arc<CudaStream>`",
            Family::Candle => "`&CudaDevice`",
        }
    }

    /// The tensor inputs' type as a user writes it.
    fn tensor(self) -> &'static str {
        match self {
            Family::Native => "`&Tensor` (cudagraph's)",
            Family::Raw => "`&CudaTensor`",
            Family::Candle => "`&Tensor` (candle's)",
        }
    }
}

/// One error, on the offending parameter, when the device and the tensors name different
/// backends (`&Runtime` with `&CudaTensor`, `&Arc<CudaStream>` with `&Tensor`, `&CudaDevice`
/// with `&CudaTensor`) or the device is a bare `&CudaStream`: the generated code would
/// otherwise fail in a dozen places, all at the attribute. Returns whether one was reported.
fn check_backend_mix(params: &[Param], errors: &mut Errors) -> bool {
    let Some(device) = params.iter().find(|p| matches!(p.kind, Kind::Runtime(_))) else {
        return false;
    };
    let family = match (&device.kind, device.elem.as_ref().and_then(last_segment)) {
        (Kind::Runtime(None), _) => Family::Native,
        (Kind::Runtime(Some(_)), Some(name)) if name == "CudaDevice" => Family::Candle,
        (Kind::Runtime(Some(_)), Some(name)) if name == "CudaStream" => {
            errors.spanned(
                &device.span_tokens,
                "a plain-cudarc forward takes its stream as `&Arc<CudaStream>` (the runner keeps a clone of the `Arc`), not `&CudaStream`: write e.g. `stream: &Arc<CudaStream>`, with `&CudaTensor` inputs",
            );
            return true;
        }
        _ => Family::Raw,
    };
    for param in params.iter().filter(|p| matches!(p.kind, Kind::Tensor)) {
        let raw = param.elem.as_ref().and_then(last_segment).as_deref() == Some("CudaTensor");
        let tensor_family = match (raw, family) {
            (true, _) => Family::Raw,
            (false, Family::Raw) => Family::Native,
            (false, other) => other,
        };
        if tensor_family != family {
            let shown = param
                .name
                .as_ref()
                .map_or_else(|| "_".to_owned(), |n| n.unraw().to_string());
            let want = tensor_family;
            errors.spanned(
                &param.span_tokens,
                format!(
                    "`{shown}` is a {} input, but the device argument is {}: one forward uses one backend, {} with {}, or {} with {}; change the device argument to {}, or take `{shown}` as {}",
                    want.tensor(),
                    family.device(),
                    family.device(),
                    family.tensor(),
                    want.device(),
                    want.tensor(),
                    want.device(),
                    family.tensor(),
                ),
            );
            return true;
        }
    }
    false
}

/// Resolves `batch = name` (default: the first tensor) to a tensor index.
fn batch_index(args: &Args, params: &[Param], fn_name: &str, errors: &mut Errors) -> usize {
    let Some(batch) = &args.batch else { return 0 };
    let mut tensor_index = 0;
    for param in params {
        let is_tensor = matches!(param.kind, Kind::Tensor);
        if param.name.as_ref() == Some(batch) {
            if is_tensor {
                return tensor_index;
            }
            let what = match param.kind {
                Kind::Runtime(_) => "the runtime",
                Kind::Misdeclared(_) => return 0,
                _ => "a host value",
            };
            errors.at(
                batch.span(),
                format!(
                    "`batch` must name a `&Tensor` argument, but `{batch}` is {what}{}",
                    tensor_list_hint(params)
                ),
            );
            return 0;
        }
        if is_tensor {
            tensor_index += 1;
        }
    }
    errors.at(
        batch.span(),
        format!(
            "`{fn_name}` has no argument named `{batch}`{}",
            tensor_list_hint(params)
        ),
    );
    0
}

/// "; `batch` must name one of its `&Tensor` arguments: `a`, `b`" (or empty).
fn tensor_list_hint(params: &[Param]) -> String {
    let names: Vec<String> = params
        .iter()
        .filter(|p| matches!(p.kind, Kind::Tensor))
        .filter_map(|p| p.name.as_ref().map(|n| format!("`{n}`")))
        .collect();
    if names.is_empty() {
        String::new()
    } else {
        format!(
            "; `batch` must name one of its `&Tensor` arguments: {}",
            names.join(", ")
        )
    }
}

/// Applies `static_args`: gives every parameter its [`Role`] and collects the
/// static arguments; reports host values not listed and bad listed names.
fn assign_roles(
    args: &Args,
    params: &[Param],
    fn_name: &str,
    errors: &mut Errors,
) -> (Vec<Role>, Vec<StaticArg>) {
    let listed: Vec<Ident> = args
        .static_args
        .as_ref()
        .map(|s| s.names.clone())
        .unwrap_or_default();
    let keyed = host_keys(args, params, fn_name, &listed, errors);
    let mut roles = Vec::new();
    let mut statics = Vec::new();
    let mut tensor_index = 0;
    for param in params {
        match &param.kind {
            Kind::Runtime(_) => roles.push(Role::Runtime),
            // Already reported; the placeholder role is never expanded.
            Kind::Misdeclared(_) => roles.push(Role::Static(statics.len())),
            Kind::Tensor => {
                roles.push(Role::Tensor(tensor_index));
                tensor_index += 1;
            }
            Kind::Islands(_) => roles.push(Role::Islands),
            Kind::Host { ty, by_ref, by_mut } => {
                let Some(name) = &param.name else {
                    // Already reported: a pattern instead of a name.
                    roles.push(Role::Static(statics.len()));
                    continue;
                };
                let key = keyed
                    .iter()
                    .find(|(n, _)| n == name)
                    .map(|(_, k)| k.clone());
                if listed.contains(name) || key.is_some() {
                    check_static_type(name, &param.span_tokens, ty, *by_mut, errors);
                    if key.is_some() && *by_ref {
                        errors.spanned(
                            &param.span_tokens,
                            format!("`{name}` keys the graphs (`buckets`, `variants`): take it by value, not by reference"),
                        );
                    }
                    roles.push(Role::Static(statics.len()));
                    statics.push(StaticArg {
                        ident: name.clone(),
                        ty: (**ty).clone(),
                        by_ref: *by_ref,
                        key,
                    });
                } else {
                    if !args.incomplete {
                        let mut suggestion: Vec<String> =
                            listed.iter().map(ToString::to_string).collect();
                        suggestion.push(name.to_string());
                        errors.spanned(
                            &param.span_tokens,
                            format!(
                                "argument `{name}` is a host value: a CUDA graph bakes it in at capture time and would silently replay the stale value. Pass it as a device `&Tensor`, or list it in `static_args = [{}]` so each run checks it against the captured value{}",
                                suggestion.join(", "),
                                alias_hint(ty, *by_ref)
                            ),
                        );
                    }
                    roles.push(Role::Static(statics.len()));
                }
            }
        }
    }
    // Every listed name must be a host-valued parameter.
    for name in &listed {
        match params.iter().find(|p| p.name.as_ref() == Some(name)) {
            Some(Param {
                kind: Kind::Host { .. } | Kind::Misdeclared(_),
                ..
            }) => {}
            Some(Param { kind, .. }) => {
                let what = if matches!(kind, Kind::Runtime(_)) {
                    "the `&Runtime` argument"
                } else {
                    "a `&Tensor` argument: it is already a graph input"
                };
                errors.at(
                    name.span(),
                    format!("`{name}` is {what}; `static_args` lists host values only, remove it"),
                );
            }
            None => {
                let hosts: Vec<String> = params
                    .iter()
                    .filter(|p| matches!(p.kind, Kind::Host { .. }))
                    .filter_map(|p| p.name.as_ref().map(|n| format!("`{n}`")))
                    .collect();
                let hint = if hosts.is_empty() {
                    String::new()
                } else {
                    format!("; its host-value arguments are {}", hosts.join(", "))
                };
                errors.at(
                    name.span(),
                    format!("`static_args` names `{name}`, but `{fn_name}` has no argument `{name}`{hint}"),
                );
            }
        }
    }
    (roles, statics)
}

/// Checks a bucket list (ascending, unique, positive); reports at its entry.
fn check_bucket_list(
    values: &[crate::parse::Num],
    what: &str,
    errors: &mut Errors,
) -> Option<Vec<u64>> {
    if values.is_empty() {
        errors.at(
            Span::call_site(),
            format!("`{what}` lists no bucket: give at least one"),
        );
        return None;
    }
    let mut ok = true;
    for v in values.iter().filter(|v| v.value == 0) {
        errors.at(v.span, format!("a bucket of `{what}` must be at least 1"));
        ok = false;
    }
    for pair in values.windows(2) {
        if pair[0].value >= pair[1].value {
            errors.at(
                pair[1].span,
                format!(
                    "the buckets of `{what}` must be ascending and unique: {} comes after {}",
                    pair[1].value, pair[0].value
                ),
            );
            ok = false;
        }
    }
    ok.then(|| values.iter().map(|v| v.value).collect())
}

/// The host arguments `buckets` (without a dimension) and `variants` name, with their
/// [`KeyRole`]; reports names that are not host arguments, names also in `static_args`, and
/// names in both lists.
fn host_keys(
    args: &Args,
    params: &[Param],
    fn_name: &str,
    statics: &[Ident],
    errors: &mut Errors,
) -> Vec<(Ident, KeyRole)> {
    let mut keyed: Vec<(Ident, KeyRole)> = Vec::new();
    let host = |name: &Ident| {
        params
            .iter()
            .find(|p| p.name.as_ref() == Some(name))
            .map(|p| &p.kind)
    };
    let check_target = |name: &Ident, option: &str, errors: &mut Errors| -> bool {
        match host(name) {
            Some(Kind::Host { .. }) => {
                if statics.contains(name) {
                    errors.at(
                        name.span(),
                        format!("`{name}` is in `static_args` and in `{option}`: a keyed argument picks its graphs, a static is compared with the captured value; keep one"),
                    );
                    return false;
                }
                true
            }
            Some(Kind::Misdeclared(_)) => false,
            Some(Kind::Tensor) if option == "buckets" => {
                errors.at(
                    name.span(),
                    format!("`{name}` is a `&Tensor` argument: bucket one of its dimensions after the batch, e.g. `{name}[1] = [64, 256]`"),
                );
                false
            }
            Some(_) => {
                errors.at(
                    name.span(),
                    format!(
                        "`{option}` keys the graphs by a host argument, but `{name}` is not one"
                    ),
                );
                false
            }
            None => {
                errors.at(
                    name.span(),
                    format!("`{option}` names `{name}`, but `{fn_name}` has no argument `{name}`"),
                );
                false
            }
        }
    };
    if let Some(buckets) = &args.buckets {
        for entry in buckets.entries.iter().filter(|e| e.dim.is_none()) {
            if !check_target(&entry.name, "buckets", errors) {
                continue;
            }
            // A bad list is reported; the argument stays keyed (no second error about it).
            let list = check_bucket_list(&entry.buckets, &entry.name.to_string(), errors)
                .unwrap_or_else(|| vec![1]);
            keyed.push((entry.name.clone(), KeyRole::Value { buckets: list }));
        }
    }
    if let Some(variants) = &args.variants {
        for entry in &variants.entries {
            if keyed.iter().any(|(n, _)| n == &entry.name) {
                errors.at(
                    entry.name.span(),
                    format!(
                        "`{}` is in `buckets` and in `variants`; keep one",
                        entry.name
                    ),
                );
                continue;
            }
            if !check_target(&entry.name, "variants", errors) {
                continue;
            }
            if entry.values.is_empty() {
                errors.at(
                    entry.name.span(),
                    format!("`variants` lists no value of `{}`", entry.name),
                );
                continue;
            }
            let texts: Vec<String> = entry
                .values
                .iter()
                .map(|v| v.to_token_stream().to_string())
                .collect();
            if let Some((i, _)) = texts
                .iter()
                .enumerate()
                .find(|(i, t)| texts[..*i].contains(t))
            {
                errors.spanned(&entry.values[i], "this value is listed twice");
                continue;
            }
            keyed.push((
                entry.name.clone(),
                KeyRole::Variant {
                    values: entry.values.clone(),
                },
            ));
        }
    }
    keyed
}

/// Resolves `buckets = [x[dim] = [...]]` entries to [`DimBucket`]s; reports names that are not
/// tensor arguments and dimension 0.
fn dim_buckets(
    args: &Args,
    params: &[Param],
    fn_name: &str,
    errors: &mut Errors,
) -> Vec<DimBucket> {
    let Some(buckets) = &args.buckets else {
        return Vec::new();
    };
    let tensor_index = |name: &Ident| {
        let mut index = 0;
        for param in params {
            if param.name.as_ref() == Some(name) {
                return Some((&param.kind, index));
            }
            if matches!(param.kind, Kind::Tensor) {
                index += 1;
            }
        }
        None
    };
    let mut out: Vec<DimBucket> = Vec::new();
    for entry in &buckets.entries {
        let Some(dim) = entry.dim else {
            continue;
        };
        let mut members: Vec<(usize, usize)> = Vec::new();
        let mut labels = Vec::new();
        let mut ok = true;
        let named =
            std::iter::once((&entry.name, dim)).chain(entry.also.iter().map(|(n, d)| (n, *d)));
        for (name, dim) in named {
            match tensor_index(name) {
                Some((Kind::Tensor, input)) => {
                    if dim.value == 0 {
                        errors.at(
                            dim.span,
                            format!("dimension 0 of `{name}` is the batch, which `sizes` buckets; bucket a dimension after it, e.g. `{name}[1]`"),
                        );
                        ok = false;
                        continue;
                    }
                    let mut taken = members.iter().chain(out.iter().flat_map(|d| &d.members));
                    if taken.any(|&(i, _)| i == input) {
                        errors.at(
                            name.span(),
                            format!(
                                "`{name}` has a bucketed dimension already: one per tensor argument"
                            ),
                        );
                        ok = false;
                        continue;
                    }
                    members.push((input, dim.value as usize));
                    labels.push(format!("{name}[{}]", dim.value));
                }
                Some((Kind::Misdeclared(_), _)) => ok = false,
                Some(_) => {
                    errors.spanned(
                        &entry.tokens,
                        format!("`{name}[..]` buckets a dimension of a `&Tensor` argument, but `{name}` is not one; a host value is bucketed without a dimension: `{name} = [..]`"),
                    );
                    ok = false;
                }
                None => {
                    errors.at(
                        name.span(),
                        format!(
                            "`buckets` names `{name}`, but `{fn_name}` has no argument `{name}`"
                        ),
                    );
                    ok = false;
                }
            }
        }
        let label = labels.join("+");
        if let (true, Some(list)) = (ok, check_bucket_list(&entry.buckets, &label, errors)) {
            out.push(DimBucket {
                label,
                members,
                buckets: list,
            });
        }
    }
    out
}

/// Resolves `pad = [name = value, ...]` to (tensor index, value); reports
/// names that are not `&Tensor` parameters.
fn pad_indices(
    args: &Args,
    params: &[Param],
    fn_name: &str,
    errors: &mut Errors,
) -> Vec<(usize, PadNumber)> {
    let Some(pad) = &args.pad else {
        return Vec::new();
    };
    let tensor_names: Vec<String> = params
        .iter()
        .filter(|p| matches!(p.kind, Kind::Tensor))
        .filter_map(|p| p.name.as_ref().map(|n| format!("`{n}`")))
        .collect();
    let hint = if tensor_names.is_empty() {
        String::new()
    } else {
        format!(
            "; `pad` must name one of its `&Tensor` arguments: {}",
            tensor_names.join(", ")
        )
    };
    let mut pads = Vec::new();
    for entry in &pad.entries {
        let name = &entry.name;
        let mut tensor_index = 0;
        let mut found = None;
        for param in params {
            if param.name.as_ref() == Some(name) {
                found = Some((&param.kind, tensor_index));
                break;
            }
            if matches!(param.kind, Kind::Tensor) {
                tensor_index += 1;
            }
        }
        match found {
            Some((Kind::Tensor, index)) => pads.push((index, entry.value)),
            // Already reported at the parameter.
            Some((Kind::Misdeclared(_), _)) => {}
            Some((kind, _)) => {
                let what = match kind {
                    Kind::Runtime(_) => "the runtime",
                    _ if args
                        .static_args
                        .as_ref()
                        .is_some_and(|s| s.names.contains(name)) =>
                    {
                        "a static argument"
                    }
                    _ => "a host value",
                };
                errors.at(
                    name.span(),
                    format!("`pad` fills rows of a graph input, but `{name}` is {what}{hint}"),
                );
            }
            None => errors.at(
                name.span(),
                format!("`pad` names `{name}`, but `{fn_name}` has no argument `{name}`{hint}"),
            ),
        }
    }
    pads
}

/// Rejects static types the generated code can't hold by value.
fn check_static_type(
    name: &Ident,
    span_tokens: &proc_macro2::TokenStream,
    ty: &Type,
    by_mut: bool,
    errors: &mut Errors,
) {
    match peel(ty) {
        _ if by_mut => errors.spanned(
            span_tokens,
            format!("static argument `{name}` can't be `&mut`: a graph can't write back to host memory; take `&T` or `T`"),
        ),
        Type::Reference(r) if r.mutability.is_some() => errors.spanned(
            span_tokens,
            format!("static argument `{name}` can't be `&mut`: a graph can't write back to host memory; take `&T` or `T`"),
        ),
        Type::Slice(_) | Type::TraitObject(_) => errors.spanned(
            span_tokens,
            format!("static argument `{name}` must have a sized type the runner can own, e.g. `Vec<T>` instead of `[T]`"),
        ),
        Type::Path(p) if p.qself.is_none() && p.path.is_ident("str") => errors.spanned(
            span_tokens,
            format!("static argument `{name}` must have a sized type the runner can own: use `String` instead of `str`"),
        ),
        _ => {}
    }
}

/// The lifetime parameters among `params` that the generated signature
/// mentions: in static types or the where clause, closed over the bounds of
/// the kept parameters. Keeps the user's order.
fn used_lifetimes(
    params: Vec<LifetimeParam>,
    statics: &[StaticArg],
    where_clause: Option<&WhereClause>,
) -> Vec<LifetimeParam> {
    let mut used = Vec::new();
    for s in statics {
        lifetime_names(s.ty.to_token_stream(), &mut used);
    }
    if let Some(where_clause) = where_clause {
        lifetime_names(where_clause.to_token_stream(), &mut used);
    }
    loop {
        let before = used.len();
        for param in &params {
            if used.contains(&param.lifetime.ident.to_string()) {
                for bound in &param.bounds {
                    let name = bound.ident.to_string();
                    if !used.contains(&name) {
                        used.push(name);
                    }
                }
            }
        }
        if used.len() == before {
            break;
        }
    }
    params
        .into_iter()
        .filter(|p| used.contains(&p.lifetime.ident.to_string()))
        .collect()
}

/// Appends the names of the lifetimes (`'a` -> `a`) found in `tokens`.
fn lifetime_names(tokens: proc_macro2::TokenStream, names: &mut Vec<String>) {
    let mut after_apostrophe = false;
    for tree in tokens {
        match tree {
            proc_macro2::TokenTree::Punct(p) if p.as_char() == '\'' => {
                after_apostrophe = true;
                continue;
            }
            proc_macro2::TokenTree::Ident(ident) if after_apostrophe => {
                let name = ident.to_string();
                if !names.contains(&name) {
                    names.push(name);
                }
            }
            proc_macro2::TokenTree::Group(group) => lifetime_names(group.stream(), names),
            _ => {}
        }
        after_apostrophe = false;
    }
}

/// The generated function's lifetime: `'cg`, unless the user already uses it.
/// The forward's `&Islands<L>` parameter `name` of type `ty`: its live arguments' type, its
/// backend if written, and the lifetime that ties the islands' borrow to `&self` (so an
/// island's closure may borrow the model) when the user wrote no lifetime on `Islands`.
fn islands_param(
    func: &ImplItemFn,
    ty: &Type,
    name: &Ident,
    existing: &[LifetimeParam],
    errors: &mut Errors,
) -> Option<IslandsParam> {
    let Type::Path(path) = peel(ty) else {
        return None;
    };
    let last = path.path.segments.last()?;
    let mut lifetimes = 0;
    let mut types = Vec::new();
    if let syn::PathArguments::AngleBracketed(args) = &last.arguments {
        for arg in &args.args {
            match arg {
                syn::GenericArgument::Lifetime(_) => lifetimes += 1,
                syn::GenericArgument::Type(t) => types.push(t.clone()),
                other => {
                    errors.spanned(
                        other,
                        "`Islands` takes the live arguments' type and the backend: `&Islands<(u32,)>`, `&Islands<(), Candle>`",
                    );
                    return None;
                }
            }
        }
    }
    if types.len() > 2 {
        errors.spanned(
            ty,
            "`Islands` takes at most two types: the live arguments' and the backend",
        );
        return None;
    }
    // `Islands<(), Candle>` names no live arguments: the generated functions take none.
    let has_live = types
        .first()
        .is_some_and(|t| !matches!(t, Type::Tuple(tuple) if tuple.elems.is_empty()));
    let live = types
        .first()
        .cloned()
        .unwrap_or_else(|| syn::parse_quote!(()));
    let tie = match (lifetimes, func.sig.receiver()) {
        (0, Some(receiver)) => match &receiver.kind {
            ReceiverKind::Reference(_, Some(lifetime), _) => Some(lifetime.clone()),
            _ => Some(pick_named(existing, &["cg_i", "cg_islands", "__cg_i"])),
        },
        _ => None,
    };
    Some(IslandsParam {
        ident: name.clone(),
        live,
        has_live,
        tie,
    })
}

/// Gives the lifetimes a static argument's type elides (`Option<&Cfg>`, `Pair<'_>`) one name
/// of their own, a lifetime parameter of the generated functions: the runner holds the statics,
/// so their type must name what it borrows (an elided lifetime in the runner type is E0106, and
/// the borrow would not be tied to the runner: E0621). Returns the name, if any was elided.
fn name_elided_lifetimes(
    statics: &mut [StaticArg],
    existing: &[LifetimeParam],
) -> Option<Lifetime> {
    use syn::visit_mut::VisitMut;

    struct Namer {
        name: Lifetime,
        used: bool,
    }
    impl VisitMut for Namer {
        fn visit_type_reference_mut(&mut self, r: &mut syn::TypeReference) {
            if r.lifetime.is_none() {
                r.lifetime = Some(self.name.clone());
                self.used = true;
            }
            syn::visit_mut::visit_type_reference_mut(self, r);
        }
        fn visit_lifetime_mut(&mut self, l: &mut Lifetime) {
            if l.ident == "_" {
                *l = self.name.clone();
                self.used = true;
            }
        }
        // A `dyn Trait`'s elided object lifetime has its own defaults (`'static` in a `Box`):
        // left alone, as is anything inside a bare fn type (its own binder).
        fn visit_type_fn_ptr_mut(&mut self, _: &mut syn::TypeFnPtr) {}
    }

    let taken = |name: &str| existing.iter().any(|l| l.lifetime.ident == name);
    let name = ["cg_s", "cg_statics", "__cg_s"]
        .into_iter()
        .find(|n| !taken(n))
        .unwrap_or("__cg_statics");
    let mut namer = Namer {
        name: Lifetime::new(&format!("'{name}"), Span::call_site()),
        used: false,
    };
    for s in statics.iter_mut() {
        namer.visit_type_mut(&mut s.ty);
    }
    namer.used.then_some(namer.name)
}

fn pick_lifetime(existing: &[LifetimeParam]) -> Lifetime {
    pick_named(existing, &["cg", "cg_graphs", "__cg"])
}

/// The first of `candidates` (names without the tick) that none of the function's lifetime
/// parameters uses, else the last with `_` appended until free. The impl's lifetimes are out of
/// the macro's sight: the README asks impls not to declare `'cg`, `'cg_old` or `'cg_s`.
fn pick_named(existing: &[LifetimeParam], candidates: &[&str]) -> Lifetime {
    let taken = |name: &str| existing.iter().any(|l| l.lifetime.ident == name);
    let mut name = candidates
        .iter()
        .find(|n| !taken(n))
        .map(|n| n.to_string())
        .unwrap_or_else(|| candidates[candidates.len() - 1].to_string());
    while taken(&name) {
        name.push('_');
    }
    Lifetime::new(&format!("'{name}"), Span::call_site())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse::PadNumber;
    use proc_macro2::TokenStream;
    use quote::quote;

    fn run(args: TokenStream, func: TokenStream) -> Result<Plan, Vec<String>> {
        let (args, arg_error) = crate::parse::parse_args(args);
        let func: ImplItemFn = syn::parse2(func).map_err(|e| vec![format!("item: {e}")])?;
        let mut errors = Errors::new();
        errors.extend(arg_error);
        match validate(&args, &func) {
            Ok(plan) if errors.is_empty() => Ok(plan),
            Ok(_) => Err(collect(errors.into_error())),
            Err(error) => {
                errors.push(error);
                Err(collect(errors.into_error()))
            }
        }
    }

    fn collect(error: Option<syn::Error>) -> Vec<String> {
        error
            .map(|e| e.into_iter().map(|m| m.to_string()).collect())
            .unwrap_or_default()
    }

    fn errors_of(args: TokenStream, func: TokenStream) -> Vec<String> {
        run(args, func).err().unwrap_or_default()
    }

    fn assert_one(errors: &[String], needle: &str) {
        assert_eq!(
            errors.len(),
            1,
            "expected one error containing {needle:?}, got {errors:?}"
        );
        assert!(
            errors[0].contains(needle),
            "expected {needle:?} in {errors:?}"
        );
    }

    #[test]
    fn plan_for_method_with_statics() {
        let plan = run(
            quote!(
                sizes = [1, 2, 4],
                batch = positions,
                static_args = [cfg, scale]
            ),
            quote!(
                pub fn forward(
                    &self,
                    tokens: &Tensor,
                    cfg: &Config,
                    rt: &cudagraph::Runtime,
                    positions: &Tensor,
                    scale: f32,
                ) -> Result<Tensor> {
                    todo!()
                }
            ),
        );
        let plan = match plan {
            Ok(plan) => plan,
            Err(errors) => panic!("{errors:?}"),
        };
        assert!(plan.method);
        assert_eq!(plan.sizes, vec![1, 2, 4]);
        assert_eq!(plan.lookup, vec![u16::MAX, 0, 1, 2, 2]);
        assert_eq!(
            plan.roles,
            vec![
                Role::Tensor(0),
                Role::Static(0),
                Role::Runtime,
                Role::Tensor(1),
                Role::Static(1)
            ]
        );
        assert_eq!(plan.batch_index, 1);
        assert_eq!(plan.graphs_ident.to_string(), "forward_graphs");
        assert_eq!(plan.statics.len(), 2);
        assert_eq!(plan.statics[0].ty.to_token_stream().to_string(), "Config");
        assert!(plan.statics[0].by_ref);
        assert_eq!(plan.statics[1].ty.to_token_stream().to_string(), "f32");
        assert!(!plan.statics[1].by_ref);
        assert_eq!(plan.krate.to_token_stream().to_string(), ":: cudagraph");
        assert_eq!(plan.lifetime.to_string(), "'cg");
        assert_eq!(plan.capture, CaptureMode::Init);
    }

    #[test]
    fn free_function_and_defaults() {
        let plan = run(
            quote!(sizes = [8], crate = "crate::cg"),
            quote!(
                fn step(rt: &Runtime, x: &Tensor) -> Result<Tensor> {
                    todo!()
                }
            ),
        );
        let plan = plan.unwrap_or_else(|e| panic!("{e:?}"));
        assert!(!plan.method);
        assert_eq!(plan.batch_index, 0);
        assert_eq!(plan.krate.to_token_stream().to_string(), "crate :: cg");
        assert!(plan.statics.is_empty());
        assert_eq!(plan.capture, CaptureMode::Init);
        let plan = run(
            quote!(sizes = [8], capture = lazy),
            quote!(
                fn step(rt: &Runtime, x: &Tensor) -> Result<Tensor> {
                    todo!()
                }
            ),
        );
        assert_eq!(
            plan.map(|p| p.capture).map_err(|e| format!("{e:?}")),
            Ok(CaptureMode::Lazy)
        );
    }

    #[test]
    fn raw_ident_name_and_lifetimes_kept() {
        let plan = run(
            quote!(sizes = [1]),
            quote!(
                fn r#move<'a, 'cg: 'a>(
                    &'a self,
                    rt: &Runtime,
                    x: &(Tensor),
                    c: &'a Cfg<'cg>,
                ) -> Result<Tensor>
                where
                    'cg: 'a,
                {
                    todo!()
                }
            ),
        );
        let errors = plan.err().unwrap_or_default();
        assert_one(&errors, "argument `c` is a host value");
        let plan = run(
            quote!(sizes = [1], static_args = [c]),
            quote!(
                fn r#move<'a, 'cg: 'a>(
                    &'a self,
                    rt: &Runtime,
                    x: &(Tensor),
                    c: &'a Cfg<'cg>,
                ) -> Result<Tensor>
                where
                    'cg: 'a,
                {
                    todo!()
                }
            ),
        )
        .unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(plan.graphs_ident.to_string(), "move_graphs");
        assert_eq!(plan.memory_ident.to_string(), "move_graph_memory");
        assert_eq!(plan.refresh_ident.to_string(), "move_graphs_refresh");
        assert_eq!(plan.lifetimes.len(), 2);
        assert_eq!(plan.lifetime.to_string(), "'cg_graphs");
        assert!(plan.where_clause.is_some());
        assert_eq!(
            plan.statics[0].ty.to_token_stream().to_string(),
            "Cfg < 'cg >"
        );
    }

    #[test]
    fn unused_lifetimes_are_dropped() {
        let plan = run(
            quote!(sizes = [1], static_args = [c, d]),
            quote!(
                fn f<'a, 'b: 'c, 'c, 'd>(
                    &'a self,
                    rt: &'a Runtime,
                    x: &'a Tensor,
                    c: &'a Cfg<'b>,
                    d: (u8, [&'d u8; 2]),
                ) -> Result<Tensor> {
                    todo!()
                }
            ),
        )
        .unwrap_or_else(|e| panic!("{e:?}"));
        let kept: Vec<String> = plan
            .lifetimes
            .iter()
            .map(|l| l.lifetime.to_string())
            .collect();
        assert_eq!(kept, vec!["'b", "'c", "'d"]);
    }

    #[test]
    fn cfg_attributes_are_copied() {
        let plan = run(
            quote!(sizes = [1]),
            quote!(
                #[cfg(feature = "gpu")]
                #[inline]
                #[allow(non_snake_case)]
                #[expect(unused)]
                fn f(rt: &Runtime, x: &Tensor) -> Result<Tensor> {
                    todo!()
                }
            ),
        )
        .unwrap_or_else(|e| panic!("{e:?}"));
        let kept: Vec<String> = plan
            .cfg_attrs
            .iter()
            .map(|a| a.to_token_stream().to_string())
            .collect();
        assert_eq!(
            kept,
            ["# [cfg (feature = \"gpu\")]", "# [allow (non_snake_case)]"]
        );
    }

    const GOOD: &str = "fn forward(&self, rt: &Runtime, x: &Tensor) -> Result<Tensor> { todo!() }";

    fn good() -> TokenStream {
        GOOD.parse().unwrap_or_default()
    }

    #[test]
    fn missing_sizes() {
        assert_one(&errors_of(quote!(), good()), "needs `sizes`");
        assert_one(&errors_of(quote!(batch = x), good()), "needs `sizes`");
    }

    #[test]
    fn misspelled_sizes_reports_only_the_option() {
        let errors = errors_of(quote!(size = [1]), good());
        assert_one(&errors, "did you mean `sizes`?");
    }

    #[test]
    fn empty_and_zero_and_duplicate_sizes() {
        assert_one(&errors_of(quote!(sizes = []), good()), "must not be empty");
        assert_one(
            &errors_of(quote!(sizes = [0, 1]), good()),
            "size 0 is not allowed",
        );
        assert_one(
            &errors_of(quote!(sizes = [1, 2, 2]), good()),
            "duplicate size 2",
        );
    }

    #[test]
    fn async_fn() {
        let errors = errors_of(
            quote!(sizes = [1]),
            quote!(
                async fn forward(&self, rt: &Runtime, x: &Tensor) -> Result<Tensor> {
                    todo!()
                }
            ),
        );
        assert_one(&errors, "`async fn` can't be captured");
    }

    #[test]
    fn unsafe_fn() {
        let errors = errors_of(
            quote!(sizes = [1]),
            quote!(
                unsafe fn forward(&self, rt: &Runtime, x: &Tensor) -> Result<Tensor> {
                    todo!()
                }
            ),
        );
        assert_one(&errors, "`unsafe fn`");
    }

    #[test]
    fn default_fn() {
        let errors = errors_of(
            quote!(sizes = [1]),
            quote!(default fn forward(&self, rt: &Runtime, x: &Tensor) -> Result<Tensor> { todo!() }),
        );
        assert_one(&errors, "`default fn`");
    }

    #[test]
    fn generic_params() {
        let errors = errors_of(
            quote!(sizes = [1]),
            quote!(
                fn forward<'a, T: Clone, const N: usize>(
                    &'a self,
                    rt: &Runtime,
                    x: &Tensor,
                ) -> Result<Tensor> {
                    todo!()
                }
            ),
        );
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(errors[0].contains("type parameter `T`"));
        assert!(errors[1].contains("const parameter `N`"));
    }

    #[test]
    fn variadic() {
        let errors = errors_of(
            quote!(sizes = [1]),
            quote!(
                fn forward(rt: &Runtime, x: &Tensor, ...) -> Result<Tensor> {
                    todo!()
                }
            ),
        );
        assert_one(&errors, "variadic");
    }

    #[test]
    fn missing_return_type() {
        let errors = errors_of(
            quote!(sizes = [1]),
            quote!(
                fn forward(&self, rt: &Runtime, x: &Tensor) {}
            ),
        );
        assert_one(&errors, "must return `Result<Tensor>`");
    }

    #[test]
    fn bad_receivers() {
        for receiver in [
            quote!(self),
            quote!(mut self),
            quote!(&mut self),
            quote!(self: Box<Self>),
            quote!(&'a mut self),
            quote!(self: &mut Self),
        ] {
            let errors = errors_of(
                quote!(sizes = [1]),
                quote!(fn forward(#receiver, rt: &Runtime, x: &Tensor) -> Result<Tensor> { todo!() }),
            );
            assert_one(&errors, "must take `&self`");
        }
        for receiver in [
            quote!(&self),
            quote!(&'a self),
            quote!(self: &Self),
            quote!(self: &'a Self),
        ] {
            let ok = run(
                quote!(sizes = [1]),
                quote!(fn forward(#receiver, rt: &Runtime, x: &Tensor) -> Result<Tensor> { todo!() }),
            );
            assert!(ok.is_ok(), "{receiver}: {:?}", ok.err());
        }
    }

    #[test]
    fn runtime_missing_or_twice_or_mut() {
        let errors = errors_of(
            quote!(sizes = [1]),
            quote!(
                fn forward(&self, x: &Tensor) -> Result<Tensor> {
                    todo!()
                }
            ),
        );
        assert_one(&errors, "needs a `&Runtime` argument");
        let errors = errors_of(
            quote!(sizes = [1]),
            quote!(
                fn forward(&self, a: &Runtime, x: &Tensor, b: &Runtime) -> Result<Tensor> {
                    todo!()
                }
            ),
        );
        assert_one(&errors, "only one `&Runtime`");
        let errors = errors_of(
            quote!(sizes = [1]),
            quote!(
                fn forward(&self, rt: &mut Runtime, x: &mut Tensor) -> Result<Tensor> {
                    todo!()
                }
            ),
        );
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(errors[0].contains("not `&mut Runtime`"));
        assert!(errors[1].contains("not `&mut Tensor`"));
    }

    #[test]
    fn no_tensor() {
        let errors = errors_of(
            quote!(sizes = [1]),
            quote!(
                fn forward(&self, rt: &Runtime) -> Result<Tensor> {
                    todo!()
                }
            ),
        );
        assert_eq!(
            errors,
            vec!["`#[cuda_graph]` needs at least one `&Tensor` argument: the batch input"]
        );
    }

    #[test]
    fn tensor_or_runtime_by_value() {
        let errors = errors_of(
            quote!(sizes = [1]),
            quote!(
                fn forward(&self, rt: &Runtime, x: &Tensor, y: Tensor) -> Result<Tensor> {
                    todo!()
                }
            ),
        );
        assert_one(&errors, "take `y` by reference: `y: &Tensor`");
        let errors = errors_of(
            quote!(sizes = [1], static_args = [y]),
            quote!(
                fn forward(&self, rt: Runtime, x: &Tensor) -> Result<Tensor> {
                    todo!()
                }
            ),
        );
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(errors[0].contains("`rt: &Runtime`"), "{errors:?}");
        assert!(errors[1].contains("no argument `y`"), "{errors:?}");
    }

    #[test]
    fn host_value_arg_exact_message() {
        let errors = errors_of(
            quote!(sizes = [1]),
            quote!(
                fn forward(&self, rt: &Runtime, x: &Tensor, foo: usize) -> Result<Tensor> {
                    todo!()
                }
            ),
        );
        assert_eq!(
            errors,
            vec![
                "argument `foo` is a host value: a CUDA graph bakes it in at capture time and would silently replay the stale value. Pass it as a device `&Tensor`, or list it in `static_args = [foo]` so each run checks it against the captured value"
            ]
        );
        let errors = errors_of(
            quote!(sizes = [1], static_args = [a]),
            quote!(
                fn forward(&self, rt: &Runtime, x: &Tensor, a: u8, b: &Cfg) -> Result<Tensor> {
                    todo!()
                }
            ),
        );
        assert_one(&errors, "`static_args = [a, b]`");
    }

    #[test]
    fn pattern_params() {
        let errors = errors_of(
            quote!(sizes = [1]),
            quote!(
                fn forward(&self, rt: &Runtime, _: &Tensor, (a, b): (u8, u8)) -> Result<Tensor> {
                    todo!()
                }
            ),
        );
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(errors.iter().all(|e| e.contains("plain argument names")));
    }

    #[test]
    fn bad_static_arg_names() {
        let errors = errors_of(quote!(sizes = [1], static_args = [cfg]), good());
        assert_one(
            &errors,
            "`static_args` names `cfg`, but `forward` has no argument `cfg`",
        );
        let errors = errors_of(quote!(sizes = [1], static_args = [x, rt]), good());
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(errors[0].contains("`x` is a `&Tensor` argument"));
        assert!(errors[1].contains("`rt` is the `&Runtime` argument"));
    }

    #[test]
    fn bad_static_types() {
        let errors = errors_of(
            quote!(sizes = [1], static_args = [a, b, c, d]),
            quote!(
                fn forward(
                    &self,
                    rt: &Runtime,
                    x: &Tensor,
                    a: &mut Cfg,
                    b: &[u8],
                    c: &str,
                    d: impl Copy,
                ) -> Result<Tensor> {
                    todo!()
                }
            ),
        );
        // The `impl Trait` argument is reported when the parameters are
        // classified, before the static types are checked.
        assert_eq!(errors.len(), 4, "{errors:?}");
        assert!(errors[0].starts_with("`impl Trait` arguments are not supported"));
        assert!(errors[1].contains("`&mut`"));
        assert!(errors[2].contains("`Vec<T>`"));
        assert!(errors[3].contains("`String`"));
    }

    #[test]
    fn bad_batch_names() {
        let errors = errors_of(quote!(sizes = [1], batch = y), good());
        assert_one(
            &errors,
            "`forward` has no argument named `y`; `batch` must name one of its `&Tensor` arguments: `x`",
        );
        let errors = errors_of(quote!(sizes = [1], batch = rt), good());
        assert_one(
            &errors,
            "`batch` must name a `&Tensor` argument, but `rt` is the runtime",
        );
        let errors = errors_of(
            quote!(sizes = [1], batch = n, static_args = [n]),
            quote!(
                fn forward(&self, rt: &Runtime, x: &Tensor, n: usize) -> Result<Tensor> {
                    todo!()
                }
            ),
        );
        assert_one(&errors, "but `n` is a host value");
    }

    const TWO_INPUTS: &str = "fn forward(&self, rt: &Runtime, tokens: &Tensor, positions: &Tensor, cfg: u32, n: usize) -> Result<Tensor> { todo!() }";

    fn two_inputs() -> TokenStream {
        TWO_INPUTS.parse().unwrap_or_default()
    }

    #[test]
    fn pad_resolves_to_tensor_indices_in_attribute_order() {
        let plan = run(
            quote!(
                sizes = [1],
                static_args = [cfg, n],
                pad = [positions = -1, tokens = 0.5]
            ),
            two_inputs(),
        )
        .unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(
            plan.pads,
            vec![(1, PadNumber::Int(-1)), (0, PadNumber::Float(0.5))]
        );
        let plan = run(quote!(sizes = [1], static_args = [cfg, n]), two_inputs())
            .unwrap_or_else(|e| panic!("{e:?}"));
        assert!(plan.pads.is_empty());
    }

    #[test]
    fn pad_names_must_be_tensor_arguments() {
        let errors = errors_of(
            quote!(
                sizes = [1],
                static_args = [cfg, n],
                pad = [cfg = 0, rt = 1, nope = 2, positions = -1]
            ),
            two_inputs(),
        );
        assert_eq!(
            errors,
            vec![
                "`pad` fills rows of a graph input, but `cfg` is a static argument; `pad` must name one of its `&Tensor` arguments: `tokens`, `positions`",
                "`pad` fills rows of a graph input, but `rt` is the runtime; `pad` must name one of its `&Tensor` arguments: `tokens`, `positions`",
                "`pad` names `nope`, but `forward` has no argument `nope`; `pad` must name one of its `&Tensor` arguments: `tokens`, `positions`",
            ]
        );
        // A name listed twice is reported by the parser, once.
        let errors = errors_of(
            quote!(
                sizes = [1],
                static_args = [cfg, n],
                pad = [tokens = 0, tokens = 1]
            ),
            two_inputs(),
        );
        assert_eq!(
            errors,
            vec!["`tokens` is listed twice in `pad`; keep one value"]
        );
    }

    #[test]
    fn impl_trait_arguments_get_one_clear_error() {
        let expected = "`impl Trait` arguments are not supported by #[cuda_graph]: take `&Tensor` for a batch input, or list a concrete type in `static_args`";
        let errors = errors_of(
            quote!(sizes = [1], static_args = [g]),
            quote!(
                fn forward(
                    &self,
                    rt: &Runtime,
                    x: &impl AsRef<Tensor>,
                    f: impl Fn(),
                    g: Vec<impl Copy>,
                ) -> Result<Tensor> {
                    todo!()
                }
            ),
        );
        // No "needs a `&Tensor`" or "host value" echoes.
        assert_eq!(errors, vec![expected; 3], "{errors:?}");
    }

    #[test]
    fn reference_to_other_path_hints_at_tensor_aliases() {
        let errors = errors_of(
            quote!(sizes = [1]),
            quote!(
                fn forward(
                    &self,
                    rt: &Runtime,
                    x: &Tensor,
                    y: &MyTensor,
                    z: &u32,
                    w: Cfg,
                ) -> Result<Tensor> {
                    todo!()
                }
            ),
        );
        assert_eq!(errors.len(), 3, "{errors:?}");
        assert_eq!(
            errors[0],
            "argument `y` is a host value: a CUDA graph bakes it in at capture time and would silently replay the stale value. Pass it as a device `&Tensor`, or list it in `static_args = [y]` so each run checks it against the captured value; if `MyTensor` is an alias of `Tensor`, write `&Tensor` (the macro recognises tensor arguments by the type name `Tensor`)"
        );
        // Primitives and by-value types get the plain message.
        assert!(!errors[1].contains("alias"), "{errors:?}");
        assert!(
            errors[1].starts_with("argument `z` is a host value"),
            "{errors:?}"
        );
        assert!(!errors[2].contains("alias"), "{errors:?}");
        assert!(
            errors[2].ends_with("against the captured value"),
            "{errors:?}"
        );
    }

    #[test]
    fn generated_names_are_spanned_at_the_attribute() {
        // `Span::call_site()` is the `#[cuda_graph(...)]` attribute, so errors
        // about a generated item as a whole (E0407 in a trait impl) point there.
        let plan = run(quote!(sizes = [1]), good()).unwrap_or_else(|e| panic!("{e:?}"));
        let call_site = format!("{:?}", Span::call_site());
        for ident in [&plan.graphs_ident, &plan.memory_ident, &plan.refresh_ident] {
            assert_eq!(format!("{:?}", ident.span()), call_site);
        }
    }

    #[test]
    fn many_errors_at_once() {
        let errors = errors_of(
            quote!(sizes = [0], batch = nope),
            quote!(
                async fn forward<T>(self, n: usize) {}
            ),
        );
        // async, generic, return type, receiver, host value, no runtime, no tensor, batch, size 0
        assert_eq!(errors.len(), 9, "{errors:?}");
    }

    /// A device of one backend with tensors of another, or a bare `&CudaStream`, is one error
    /// naming the fix; a consistent signature of each backend is none.
    #[test]
    fn backend_mixes_are_one_error() {
        let args = quote!(sizes = [1, 2]);
        let cases = [
            (
                quote!(
                    fn f(rt: &Runtime, x: &CudaTensor) -> Result<Tensor> {}
                ),
                "`x` is a `&CudaTensor` input, but the device argument is `&Runtime`",
            ),
            (
                quote!(
                    fn f(s: &Arc<CudaStream>, x: &Tensor) -> Result<CudaTensor> {}
                ),
                "change the device argument to `&Runtime`, or take `x` as `&CudaTensor`",
            ),
            (
                quote!(
                    fn f(d: &CudaDevice, x: &Tensor, y: &CudaTensor) -> Result<Tensor> {}
                ),
                "`y` is a `&CudaTensor` input, but the device argument is `&CudaDevice`",
            ),
            (
                quote!(
                    fn f(s: &CudaStream, x: &CudaTensor) -> Result<CudaTensor> {}
                ),
                "not `&CudaStream`",
            ),
        ];
        for (func, needle) in cases {
            assert_one(&errors_of(args.clone(), func), needle);
        }
        for func in [
            quote!(
                fn f(rt: &Runtime, x: &Tensor) -> Result<Tensor> {}
            ),
            quote!(
                fn f(s: &Arc<CudaStream>, x: &CudaTensor) -> Result<CudaTensor> {}
            ),
            quote!(
                fn f(d: &candle_core::CudaDevice, x: &Tensor) -> Result<Tensor> {}
            ),
        ] {
            assert!(run(args.clone(), func).is_ok());
        }
    }

    /// Elided lifetimes in a static's type get one name, declared on the generated functions;
    /// a `dyn` object's and a fn pointer's own lifetimes are left alone.
    #[test]
    fn elided_static_lifetimes_are_named() {
        let plan = run(
            quote!(sizes = [1], static_args = [cfg, pair, f]),
            quote!(
                fn f(
                    rt: &Runtime,
                    x: &Tensor,
                    cfg: Option<&Cfg>,
                    pair: &Pair<'_>,
                    f: fn(&u8),
                ) -> Result<Tensor> {
                }
            ),
        )
        .unwrap();
        let tys: Vec<String> = plan
            .statics
            .iter()
            .map(|s| s.ty.to_token_stream().to_string())
            .collect();
        assert_eq!(
            tys,
            ["Option < & 'cg_s Cfg >", "Pair < 'cg_s >", "fn (& u8)"]
        );
        let names: Vec<String> = plan
            .lifetimes
            .iter()
            .map(|l| l.lifetime.to_string())
            .collect();
        assert_eq!(names, ["'cg_s"]);
        let plain = run(
            quote!(sizes = [1], static_args = [eps]),
            quote!(
                fn f(rt: &Runtime, x: &Tensor, eps: f32) -> Result<Tensor> {}
            ),
        )
        .unwrap();
        assert!(plain.lifetimes.is_empty());
    }
}
