//! Procedural macros of `cudagraph`. Use them through the `cudagraph` crate,
//! which re-exports [`macro@cuda_graph`].
//!
//! The crate is split so the logic is testable without a compiler session:
//! `parse` (attribute grammar), `validate` (signature rules, batch-size set),
//! `expand` (code generation) and `entry` (the glue), all on
//! `proc_macro2::TokenStream`.

mod diag;
mod entry;
mod expand;
mod parse;
mod sizes;
mod validate;

use proc_macro::TokenStream;

/// Captures a model's forward function as one CUDA graph per batch size.
///
/// The annotated function is kept unchanged (it stays the eager, callable
/// path) and three siblings are added next to it, with the same visibility:
///
/// - `<name>_graphs` captures one graph per listed batch size and returns a
///   `Runner` that dispatches each batch to the smallest captured size that
///   fits it and replays that graph;
/// - `<name>_graph_memory` takes the same arguments and returns the
///   `MemoryEstimate` of what `<name>_graphs` would hold on the device (graph
///   pool + static inputs), found by capturing the largest size alone and
///   releasing it: size a KV cache from the memory left before committing;
/// - `<name>_graphs_refresh` takes a runner built by `<name>_graphs` and
///   rebuilds every graph for this model (e.g. new weights of the same shapes
///   in new buffers), updating each executable graph in place
///   (`cuGraphExecUpdate`); the old runner is consumed and the new one keeps
///   its static arguments. A runner built by another annotated function is a
///   type error (see "Function identity" below).
///
/// ```rust,ignore
/// use cudagraph::{cuda_graph, InputSpec, Result, Runtime, Tensor};
///
/// impl Model {
///     #[cuda_graph(sizes = [1, 2, 4, 8..=256 step 8])]
///     pub fn forward(&self, rt: &Runtime, tokens: &Tensor, positions: &Tensor) -> Result<Tensor> {
///         // ... launch kernels on `rt` ...
///     }
/// }
///
/// // Eager: `model.forward(&rt, &tokens, &positions)?`
/// // Memory: let bytes = model.forward_graph_memory(&rt, [tokens_spec, positions_spec])?.total();
/// // Graphs: let runner = model.forward_graphs(&rt, [tokens_spec, positions_spec])?;
/// // New weights: let (runner, report) = new_model.forward_graphs_refresh(&rt, runner)?;
/// ```
///
/// # Attribute grammar
///
/// ```text
/// #[cuda_graph(
///     sizes = [ELEM, ...],          // required
///     batch = PARAM,                // optional, default: the first `&Tensor` parameter
///     static_args = [PARAM, ...],   // optional
///     pad = [PARAM = NUM, ...],     // optional
///     capture = lazy | background | init, // optional, default: init
///     crate = "PATH",               // optional, default: "::cudagraph"
/// )]
/// ELEM := INT | INT..=INT | INT..=INT step INT
/// NUM  := [-]INT | [-]FLOAT         // unsuffixed literals
/// ```
///
/// - `sizes`: the batch sizes to capture. Each element is an integer literal
///   (unsuffixed or `usize`), or an inclusive range with an optional `step`
///   (`8..=256 step 8` is 8, 16, ..., 256; without `step` the step is 1).
///   The set is sorted; it must be non-empty, every size must be in
///   `1..=65535` (`u16::MAX`: the dispatch table stores slot indices, and
///   with at most 65535 sizes the index `u16::MAX`, "no slot", is never a real
///   one), and no size may be listed twice (also not by two overlapping
///   ranges).
/// - `batch`: the `&Tensor` parameter whose leading dimension is the batch
///   size.
/// - `static_args`: host-value parameters that are baked into the graphs.
///   The runner keeps the values given to `<name>_graphs` and checks each run
///   against them: `f32` and `f64` statics (and references to them) by their
///   bits, so a NaN static matches itself (and `0.0` differs from `-0.0`),
///   every other type with `PartialEq`.
/// - `pad`: the value each listed `&Tensor` input is padded with. A batch of
///   `n` rows runs the graph of the smallest size `size >= n`; rows `n..size`
///   of that input's static buffer are filled with the value on every
///   replay, and the whole static buffer before every warm-up run. The value
///   is an integer or float literal, possibly negative, converted to the
///   input's element type by the runtime. E.g. `pad = [positions = -1]`
///   makes a decoder's KV-cache write and attention kernels skip the padded
///   rows (and the warm-ups) instead of writing garbage at position 0. Inputs
///   not listed keep whatever their padded rows held.
/// - `capture`: when the graphs are captured. `init` (the default) captures
///   every size when `<name>_graphs` builds the runner, so it fails early and
///   every run replays; `lazy` captures each size on its first use (the
///   generated code calls `GraphPlan::with_lazy_capture(true)`): the runner
///   is built at once, and the first run of each size pays for its capture;
///   `background` (`GraphPlan::with_background_capture(true)`) builds the
///   runner at once and serves every size eagerly until its graph exists:
///   after a call whose size had none, that size is captured before the call
///   returns (the eager output is unaffected), and `Runner::capture_pending`
///   captures the rest in idle time, largest first.
/// - `crate`: the path of the `cudagraph` crate, for crates that rename it
///   (like tokio's `crate = "..."`).
///
/// # Signature rules
///
/// Each parameter is classified by its type:
/// - `&Runtime` (any path ending in `Runtime`): the runtime; exactly one.
/// - `&Tensor` (any path ending in `Tensor`): a graph input; at least one.
///   Their number `N` and order define the runner's inputs. The macro
///   recognises them by the type *name*: a type alias of `Tensor`
///   (`h: &Activations`) is a host value; write `&Tensor`.
/// - anything else: a host value, which must be listed in `static_args`.
///   `impl Trait` arguments (`x: &impl AsRef<Tensor>`, `f: impl Fn()`) are
///   not supported: take `&Tensor`, or a concrete static type.
///
/// The receiver, if any, must be `&self`: the runner borrows the model while
/// its graphs hold pointers into the model's weights. The function may not
/// be `async`, `unsafe`, variadic, or generic over types or consts (lifetime
/// parameters are fine), and must spell out its return type,
/// `Result<Tensor>` (any `Result<Tensor, E>`).
///
/// The function may be an `&self` method in an inherent `impl` block or a
/// free function. (An associated function without `self` is treated as a
/// free function and does not work: the generated code calls it by its bare
/// name.)
///
/// Put `#[cuda_graph]` on an inherent method; to graph a trait method, call
/// an inherent method from it. The macro sees only the method, not the `impl`
/// around it, so on a method of a trait impl the generated siblings are not
/// members of the trait: the compiler reports E0407 ("method
/// `forward_graphs` is not a member of trait ...") at the attribute.
///
/// # What is generated
///
/// For `#[cuda_graph(sizes = [1, 2, 4], static_args = [cfg])]` on
/// `pub fn forward(&self, rt: &Runtime, tokens: &Tensor, positions: &Tensor, cfg: &Config) -> Result<Tensor>`:
///
/// ```rust,ignore
/// /// Captures one CUDA graph of `forward` per batch size ... (lists sizes, inputs, statics)
/// pub fn forward_graphs<'cg>(
///     &'cg self,
///     rt: &'cg ::cudagraph::Runtime,
///     inputs: [::cudagraph::InputSpec; 2],
///     cfg: Config, // each static argument, reference stripped
/// ) -> ::core::result::Result<::cudagraph::FnRunner<'cg, ID, 2, (Config,)>, ::cudagraph::Error> {
///     // Each static's type is `PartialEq + Sync` (the error points at the type).
///     ::cudagraph::__private::assert_static_arg::<Config>();
///     // The slices are promoted constants (`&'static`); the lookup table maps
///     // a batch size n to the index of the smallest size >= n.
///     let __cg_plan = ::cudagraph::GraphPlan::from_static(
///         "forward", &[1, 2, 4], &[::core::primitive::u16::MAX, 0, 1, 2, 2], 0)?;
///     // Floats by bits, everything else by `PartialEq` (autoref specialization).
///     let __cg_statics_eq: fn(&(Config,), &(Config,)) -> bool = |a, b| {
///         use ::cudagraph::__private::{ViaBits as _, ViaPartialEq as _};
///         (&::cudagraph::__private::StaticCmp(&a.0)).cg_same(&&::cudagraph::__private::StaticCmp(&b.0))
///     };
///     ::cudagraph::Runner::capture(rt, __cg_plan, inputs, (cfg,),
///         move |__cg_rt: &::cudagraph::Runtime, __cg_tensors: [&::cudagraph::Tensor; 2], __cg_statics: &(Config,)| {
///             ::cudagraph::forward_result(self.forward(__cg_rt, __cg_tensors[0], __cg_tensors[1], &__cg_statics.0))
///         })
///         .map(|r| ::cudagraph::__private::identify(r.with_statics_eq(__cg_statics_eq)))
/// }
///
/// /// What `forward_graphs` would hold on the device (graph pool + static inputs), ...
/// pub fn forward_graph_memory(
///     &self,
///     rt: &::cudagraph::Runtime,
///     inputs: [::cudagraph::InputSpec; 2],
///     cfg: Config,
/// ) -> ::core::result::Result<::cudagraph::MemoryEstimate, ::cudagraph::Error> {
///     // ... the same `__cg_plan` ...
///     ::cudagraph::Runner::estimate(rt, __cg_plan, inputs, (cfg,), /* the same closure */)
/// }
///
/// /// Rebuilds every graph of `runner` for this model ...
/// pub fn forward_graphs_refresh<'cg, 'cg_old>(
///     &'cg self,
///     rt: &'cg ::cudagraph::Runtime,
///     runner: ::cudagraph::FnRunner<'cg_old, ID, 2, (Config,)>,
/// ) -> ::core::result::Result<
///     (::cudagraph::FnRunner<'cg, ID, 2, (Config,)>, ::cudagraph::RefreshReport),
///     ::cudagraph::RefreshError<::cudagraph::FnRunner<'cg_old, ID, 2, (Config,)>>,
/// > {
///     ::cudagraph::__private::refresh(runner, rt, /* the same closure */)
/// }
/// ```
///
/// where `ID` is the type
/// `::cudagraph::FunctionId<{ ::cudagraph::__private::function_id(::core::module_path!(), "forward", SALTu64) }, Self>`
/// (without `, Self` for a free function).
///
/// The three share one plan and one closure: the refreshed runner keeps the
/// statics captured in `runner` (the closure reads them from `__cg_statics`),
/// so `<name>_graphs_refresh` takes none. A user item already named like one
/// of the generated ones is reported by the compiler as a duplicate definition.
///
/// With `capture = lazy` the plan line becomes
/// `let __cg_plan = ::cudagraph::GraphPlan::from_static(...)?.with_lazy_capture(true);`
/// (in `<name>_graph_memory` too, where it changes nothing: the estimate
/// captures the largest size either way) and the documentation says the
/// graphs are captured on first use. Each `pad` entry appends
/// `.with_pad(INDEX, ::cudagraph::PadValue::Int(-1i64))` (or
/// `PadValue::Float(0.5f64)`), INDEX being the input's position among the
/// `&Tensor` parameters, in the attribute's order.
///
/// The generated code declares no items of its own inside the generated
/// functions (no `const`s), so any name of the user's, a static argument
/// named `__CG_SIZES` included, is fine. The generated functions declare the
/// lifetimes `'cg` and `'cg_old` (and `'cg_s` for a static whose type elides a
/// lifetime), each replaced by another name when the annotated function
/// declares one of these itself; the `impl` around a method is out of the
/// macro's sight, so an impl must not declare lifetimes of these names (E0496).
/// A lifetime hidden in a path type (`pair: Pair` for `Pair<'a>`) is not seen
/// either: write `Pair<'_>`.
///
/// # Function identity
///
/// The runner type carries a fourth parameter, the identity of the function
/// that captured it: `<name>_graphs` returns and `<name>_graphs_refresh` takes
/// and returns `Runner<'_, N, S, ID>`. `ID` is the type `FunctionId<H, Self>`:
/// `H` a `const fn` hash of the module path, the function name and a salt the
/// macro computes (64-bit FNV-1a of the annotated item's tokens and the
/// attribute's tokens), `Self` the method's receiver type, impl parameters
/// included. So passing a runner of `forward_a` to `forward_b_graphs_refresh`
/// is a compile error even when arity and statics match, and so is passing
/// `Model<u8>`'s runner to `Model<String>`'s refresh. Code that names the
/// runner's type leaves the identity generic (`fn f<F>(r: &mut Runner<'_, 2, (), F>)`)
/// or inferred, or calls `into_untyped()`. Only the generated constructor types
/// a runner as a function's (through `__private::identify`, which is the
/// generated code's, not an API).
///
/// A static parameter taken by value (`cfg: Config`) is passed to each call as
/// `Clone::clone(&statics.j)`, so its type must be `Clone`. For a free
/// function there is no receiver (the three are free functions too) and the
/// closure calls `forward(...)`. `#[cfg(...)]` and `#[allow(...)]`
/// attributes of the function are copied onto the generated ones.
///
/// # Errors
///
/// All problems are reported at once, each pointing at the offending tokens;
/// the annotated function is still emitted unchanged, so the rest of the
/// crate keeps compiling. The compile errors are:
///
/// - `sizes` missing, empty (`sizes = []`), or not a bracketed list;
/// - an element that is not an integer literal (float, string, ...), has a
///   suffix other than `usize`, is negative, or is an exclusive (`8..256`) or
///   open (`8..`) range;
/// - a size of 0 or above 65535; a range whose start exceeds its end; `step 0`;
///   `step` after a single size;
/// - a size listed twice, directly or through overlapping ranges (reported at
///   the later element);
/// - an unknown option (with a "did you mean" hint, e.g. `capture = lazy` for
///   `lazy = true`), an option given twice (reported at the second), a
///   missing `=` or `,`;
/// - a `capture` value other than `lazy` or `init` (reported at the value);
/// - `batch` naming no parameter, or a parameter that is not a `&Tensor`;
/// - `static_args` naming no parameter, the `&Runtime` or a `&Tensor`
///   parameter, a name twice, or a parameter whose type can't be owned by the
///   runner (`&mut T`, `[T]`, `str`, `dyn Trait`);
/// - `pad` not a bracketed list, an entry naming no parameter, a parameter
///   that is not a `&Tensor` (a static argument, a host value, the runtime),
///   a name listed twice, or a value that is not an unsuffixed integer or
///   float literal (or does not fit an `i64` / `f64`);
/// - a host-value parameter not listed in `static_args` (a graph would
///   silently replay its captured value); for `&T` with `T` a path, the
///   message adds that a type alias of `Tensor` must be written `&Tensor`;
/// - an `impl Trait` argument (anywhere in its type);
/// - no `&Runtime` parameter, or more than one; no `&Tensor` parameter;
///   `&mut Runtime` / `&mut Tensor`; `Runtime` / `Tensor` taken by value;
/// - a parameter that is a pattern rather than a plain name;
/// - a receiver other than `&self` (`self`, `mut self`, `&mut self`,
///   `self: Box<Self>`, ...);
/// - `async fn`, `unsafe fn`, `default fn`, type or const generic parameters,
///   variadic parameters, or a missing return type;
/// - the attribute placed on something other than a function with a body.
///
/// Type errors in the return type (not a `Result<Tensor, E>`) are reported by
/// the compiler at the function's return type.
#[proc_macro_attribute]
pub fn cuda_graph(args: TokenStream, item: TokenStream) -> TokenStream {
    entry::cuda_graph(args.into(), item.into()).into()
}
