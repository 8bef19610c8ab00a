//! What a runner's static arguments (`static_args = [...]`: host values a graph bakes in) must
//! be: comparable, and free of unsynchronised shared mutability.

/// The bound on a runner's statics type (the static arguments as a tuple): `PartialEq`, so each
/// call can be compared with the captured values, and `Sync`.
///
/// `Sync` rules out the commonest statics that would compare equal to the captured value
/// whatever the caller did: a runner keeps the value the graphs were captured with, and a
/// shared cell (`Rc<Cell<f32>>`, `&RefCell<Config>`) is the same cell on both sides of the
/// comparison, so after a `set` the graph would replay the value it baked in, silently.
///
/// It does not rule out every shared handle: `Arc<OnceLock<f32>>`, an `Arc` of atomics, or a
/// reference to either, are `Sync`, and one compares equal to itself after a `set` just the
/// same (the bound that would say "no interior mutability", `Freeze`, is unstable). **A static
/// must be a value** (a number, a `Copy` config, an owned struct), not a handle to state that
/// changes: the comparison is the type's own, and a graph replays whatever it captured.
#[diagnostic::on_unimplemented(
    message = "the static arguments `{Self}` must be `PartialEq + Sync`",
    label = "static arguments compared at every call",
    note = "a runner compares each call's statics with the values its graphs baked in; a shared cell (`Rc<Cell<_>>`, `RefCell`) compares equal to itself after `set`, so the graphs would replay a stale value: pass the value itself (`f32`, a `Copy` config)"
)]
pub trait StaticArgs: PartialEq + Sync {}

impl<T: PartialEq + Sync> StaticArgs for T {}

/// One static argument's type: `PartialEq + Sync`, as [`StaticArgs`] asks of the tuple of
/// them. The code `#[cuda_graph]` generates checks each static's type with it, so that the
/// error points at the type as written.
#[diagnostic::on_unimplemented(
    message = "the static argument type `{Self}` must be `PartialEq + Sync`",
    label = "a static argument is compared with the captured value at every call",
    note = "a shared cell (`Rc<Cell<_>>`, `RefCell`) compares equal to itself after `set`, so the graphs would replay a stale value: pass the value itself (`f32`, a `Copy` config)"
)]
pub trait StaticArg: PartialEq + Sync {}

impl<T: PartialEq + Sync + ?Sized> StaticArg for T {}

/// Compiles only for a [`StaticArg`] type (the generated code's check of each static).
pub const fn assert_static_arg<T: StaticArg + ?Sized>() {}
