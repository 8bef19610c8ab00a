//! Parsing of the attribute arguments:
//! `sizes = [...], batch = ident, static_args = [ident, ...],
//! pad = [ident = number, ...], buckets = [ident = [n, ...], ident[dim] = [n, ...]],
//! variants = [ident = [value, ...]], capture = lazy | init, crate = "path"`.
//!
//! Parsing is lenient: a bad option is reported and skipped up to the next
//! top-level `,`, so one compilation shows every mistake in the attribute.
//! Only the syntax is checked here; the meaning (size bounds, duplicates,
//! parameter names) is checked in [`crate::validate`].

use std::fmt::Write as _;

use proc_macro2::{Span, TokenStream, TokenTree};
use quote::ToTokens;
use syn::ext::IdentExt;
use syn::parse::{Parse, ParseStream, Parser};
use syn::{Ident, Lit, Token};

use crate::diag::Errors;

/// Custom keywords of the attribute grammar.
mod kw {
    syn::custom_keyword!(sizes);
    syn::custom_keyword!(batch);
    syn::custom_keyword!(static_args);
    syn::custom_keyword!(pad);
    syn::custom_keyword!(buckets);
    syn::custom_keyword!(variants);
    syn::custom_keyword!(capture);
    syn::custom_keyword!(lazy);
    syn::custom_keyword!(init);
    syn::custom_keyword!(background);
    syn::custom_keyword!(step);
}

/// The option names, in the order they are listed in messages.
pub const OPTIONS: [&str; 8] = [
    "sizes",
    "batch",
    "static_args",
    "pad",
    "buckets",
    "variants",
    "capture",
    "crate",
];

/// The error for a `capture` value other than `lazy` or `init`.
const CAPTURE_VALUES: &str = "`capture` takes `lazy` (capture each size on first use), `background` (serve eagerly at once, capture between calls) or `init` (capture all sizes when the runner is built, the default)";

/// An integer from the attribute, with the span of its literal.
#[derive(Debug, Clone, Copy)]
pub struct Num {
    /// The value of the literal.
    pub value: u64,
    /// Where the literal is.
    pub span: Span,
}

/// One comma-separated element of `sizes = [...]`.
#[derive(Debug, Clone)]
pub enum SizeKind {
    /// A single size: `8`.
    Single(Num),
    /// An inclusive range `start..=end`, optionally `step n` (default 1).
    Range {
        /// First size of the range.
        start: Num,
        /// Last possible size of the range (inclusive).
        end: Num,
        /// Distance between sizes; `None` means 1.
        step: Option<Num>,
    },
}

/// One element of `sizes`, with its tokens so errors can underline all of it.
#[derive(Debug, Clone)]
pub struct SizeElem {
    /// What the element denotes.
    pub kind: SizeKind,
    /// The element's tokens, e.g. `8 ..= 256 step 8`.
    pub tokens: TokenStream,
}

/// The value of `sizes = [...]`.
#[derive(Debug, Clone)]
pub struct Sizes {
    /// The elements that parsed, in source order.
    pub elems: Vec<SizeElem>,
    /// Span of the `[...]` group.
    pub span: Span,
}

/// The value of `static_args = [...]`.
#[derive(Debug, Clone)]
pub struct StaticArgs {
    /// The listed parameter names (each with its span), without duplicates,
    /// in source order.
    pub names: Vec<Ident>,
}

/// A number of `pad = [name = value]`: what rows `n..size` of that input
/// are filled with.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum PadNumber {
    /// An integer literal, e.g. `-1`.
    Int(i64),
    /// A float literal, e.g. `0.5` or `-1e9`; always finite.
    Float(f64),
}

/// One `name = value` entry of `pad = [...]`.
#[derive(Debug, Clone)]
pub struct PadEntry {
    /// The input parameter it applies to (with its span).
    pub name: Ident,
    /// The fill value.
    pub value: PadNumber,
}

/// The value of `pad = [...]`.
#[derive(Debug, Clone)]
pub struct Pads {
    /// The entries, in source order, without repeated names.
    pub entries: Vec<PadEntry>,
}

/// One entry of `buckets = [...]`: a host argument (`max_context = [512, 2048]`) or a
/// dimension of a tensor argument (`block_tables[1] = [64, 256]`) and its buckets.
#[derive(Debug, Clone)]
pub struct BucketEntry {
    /// The argument it applies to.
    pub name: Ident,
    /// The dimension, for a tensor argument.
    pub dim: Option<Num>,
    /// More tensor dimensions padded to the same bucket (`tokens[1] + positions[1] = [..]`).
    pub also: Vec<(Ident, Num)>,
    /// The buckets, as written (checked in `validate`).
    pub buckets: Vec<Num>,
    /// The entry's tokens, for errors.
    pub tokens: TokenStream,
}

/// The value of `buckets = [...]`.
#[derive(Debug, Clone)]
pub struct Buckets {
    /// The entries, in source order, without repeated targets.
    pub entries: Vec<BucketEntry>,
}

/// One entry of `variants = [...]`: a host argument and the values each get a graph set.
#[derive(Debug, Clone)]
pub struct VariantEntry {
    /// The argument.
    pub name: Ident,
    /// The values: literals or paths (a `const`, an enum's unit variant), as patterns.
    pub values: Vec<syn::Pat>,
}

/// The value of `variants = [...]`.
#[derive(Debug, Clone)]
pub struct VariantList {
    /// The entries, in source order, without repeated names.
    pub entries: Vec<VariantEntry>,
}

/// The value of `capture = lazy | background | init`: when the runner captures its graphs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum CaptureMode {
    /// `capture = init` (the default): every size is captured when the runner
    /// is built.
    #[default]
    Init,
    /// `capture = lazy`: each size is captured on its first use.
    Lazy,
    /// `capture = background`: nothing is captured when the runner is built; calls run
    /// eagerly until their size's graph is captured, between calls.
    Background,
}

/// The value of `crate = "..."`.
#[derive(Debug, Clone)]
pub struct CratePath {
    /// The path that replaces `::cudagraph` in the generated code; its
    /// tokens carry the string literal's span.
    pub path: syn::Path,
}

/// Parsed attribute arguments. Each option is `None` when it was not given
/// (or its value did not parse, in which case `incomplete` is set).
#[derive(Debug, Clone, Default)]
pub struct Args {
    /// `sizes = [...]`.
    pub sizes: Option<Sizes>,
    /// `batch = ident`.
    pub batch: Option<Ident>,
    /// `static_args = [ident, ...]`.
    pub static_args: Option<StaticArgs>,
    /// `pad = [ident = number, ...]`.
    pub pad: Option<Pads>,
    /// `buckets = [ident = [n, ...], ident[dim] = [n, ...]]`.
    pub buckets: Option<Buckets>,
    /// `variants = [ident = [value, ...]]`.
    pub variants: Option<VariantList>,
    /// `capture = lazy | init`.
    pub capture: Option<CaptureMode>,
    /// `crate = "path"`.
    pub krate: Option<CratePath>,
    /// Set when some part of the attribute failed to parse. Later stages
    /// then skip the errors that would only be echoes of it (such as
    /// "missing `sizes`" after a misspelled `size = [...]`).
    pub incomplete: bool,
}

impl Parse for Args {
    /// Strict parse: fails with every error found in the attribute.
    fn parse(input: ParseStream) -> syn::Result<Self> {
        let (args, errors) = parse_lenient(input);
        errors.finish(args)
    }
}

/// Parses attribute tokens, returning what could be parsed together with the
/// combined errors (if any). Never fails outright.
pub fn parse_args(tokens: TokenStream) -> (Args, Option<syn::Error>) {
    let parser = |input: ParseStream| Ok(parse_lenient(input));
    match parser.parse2(tokens) {
        Ok((args, errors)) => (args, errors.into_error()),
        Err(error) => (
            Args {
                incomplete: true,
                ..Args::default()
            },
            Some(error),
        ),
    }
}

/// The lenient parser behind [`parse_args`] and [`Args`]'s `Parse` impl.
fn parse_lenient(input: ParseStream) -> (Args, Errors) {
    let mut args = Args::default();
    let mut errors = Errors::new();
    while !input.is_empty() {
        if let Err(error) = parse_option(input, &mut args, &mut errors) {
            errors.push(error);
            skip_to_comma(input);
        }
        if input.is_empty() {
            break;
        }
        if input.parse::<Token![,]>().is_err() {
            errors.push(
                input.error("expected `,` between options, e.g. `sizes = [1, 2], batch = x`"),
            );
            skip_to_comma(input);
            let _ = input.parse::<Option<Token![,]>>();
        }
    }
    args.incomplete = !errors.is_empty();
    (args, errors)
}

/// Skips token trees up to (not including) the next `,` of this stream.
fn skip_to_comma(input: ParseStream) {
    let _ = input.step(|cursor| {
        let mut rest = *cursor;
        while let Some((tree, next)) = rest.token_tree() {
            if matches!(&tree, TokenTree::Punct(p) if p.as_char() == ',') {
                break;
            }
            rest = next;
        }
        Ok(((), rest))
    });
}

/// Parses one `key = value` option into `args`.
fn parse_option(input: ParseStream, args: &mut Args, errors: &mut Errors) -> syn::Result<()> {
    if input.peek(kw::sizes) {
        let key: kw::sizes = input.parse()?;
        expect_eq(input, "sizes", "[1, 2, 4, 8..=256 step 8]")?;
        let sizes = parse_sizes(input, errors)?;
        set_once(&mut args.sizes, sizes, "sizes", key.span, errors);
    } else if input.peek(kw::batch) {
        let key: kw::batch = input.parse()?;
        expect_eq(input, "batch", "tokens")?;
        let batch = parse_batch(input)?;
        set_once(&mut args.batch, batch, "batch", key.span, errors);
    } else if input.peek(kw::static_args) {
        let key: kw::static_args = input.parse()?;
        expect_eq(input, "static_args", "[cfg]")?;
        let statics = parse_static_args(input, errors)?;
        set_once(
            &mut args.static_args,
            statics,
            "static_args",
            key.span,
            errors,
        );
    } else if input.peek(kw::pad) {
        let key: kw::pad = input.parse()?;
        expect_eq(input, "pad", "[positions = -1]")?;
        let pads = parse_pads(input, errors)?;
        set_once(&mut args.pad, pads, "pad", key.span, errors);
    } else if input.peek(kw::buckets) {
        let key: kw::buckets = input.parse()?;
        expect_eq(input, "buckets", BUCKETS_EXAMPLE)?;
        let buckets = parse_buckets(input, errors)?;
        set_once(&mut args.buckets, buckets, "buckets", key.span, errors);
    } else if input.peek(kw::variants) {
        let key: kw::variants = input.parse()?;
        expect_eq(input, "variants", VARIANTS_EXAMPLE)?;
        let variants = parse_variants(input, errors)?;
        set_once(&mut args.variants, variants, "variants", key.span, errors);
    } else if input.peek(kw::capture) {
        let key: kw::capture = input.parse()?;
        expect_eq(input, "capture", "lazy")?;
        let mode = parse_capture(input)?;
        set_once(&mut args.capture, mode, "capture", key.span, errors);
    } else if input.peek(Token![crate]) {
        let key: Token![crate] = input.parse()?;
        expect_eq(input, "crate", "\"::cudagraph\"")?;
        let krate = parse_crate(input)?;
        set_once(&mut args.krate, krate, "crate", key.span, errors);
    } else if input.peek(Ident::peek_any) {
        let key = Ident::parse_any(input)?;
        // `lazy = false` and the like: the hint should say what to write.
        let value = input.fork();
        let negated = value.parse::<Token![=]>().is_ok()
            && matches!(value.parse::<syn::LitBool>(), Ok(b) if !b.value);
        return Err(syn::Error::new(
            key.span(),
            unknown_option_message(&key.unraw().to_string(), negated),
        ));
    } else {
        return Err(input.error(format!(
            "expected an option: one of {}, e.g. `sizes = [1, 2, 4, 8]`",
            option_list()
        )));
    }
    Ok(())
}

/// Stores `value` in `slot` unless the option was already given, in which
/// case the repetition is reported at `key_span` and the first value kept.
fn set_once<T>(slot: &mut Option<T>, value: T, key: &str, key_span: Span, errors: &mut Errors) {
    if slot.is_some() {
        errors.at(key_span, format!("`{key}` is given twice; remove this one"));
    } else {
        *slot = Some(value);
    }
}

/// Consumes the `=` after an option name.
fn expect_eq(input: ParseStream, key: &str, example: &str) -> syn::Result<()> {
    if input.peek(Token![=]) {
        input.parse::<Token![=]>()?;
        Ok(())
    } else {
        Err(input.error(format!(
            "expected `=` after `{key}`: write `{key} = {example}`"
        )))
    }
}

/// The known options, quoted, for messages: "`sizes`, `batch`, ...".
fn option_list() -> String {
    OPTIONS.map(|o| format!("`{o}`")).join(", ")
}

/// The message for an unknown option, with a "did you mean" hint when a
/// known option is close. `negated` says the option was set to `false`
/// (`lazy = false`), which flips a hint about the capture mode.
pub fn unknown_option_message(name: &str, negated: bool) -> String {
    let mut message = format!("unknown option `{name}`; expected one of {}", option_list());
    let hint = match suggest_option(name) {
        Some(CAPTURE_LAZY) if negated => Some(CAPTURE_INIT),
        Some(CAPTURE_INIT) if negated => Some(CAPTURE_LAZY),
        hint => hint,
    };
    if let Some(hint) = hint {
        let _ = write!(message, "; did you mean `{hint}`?");
    }
    message
}

/// Hint for a flag-like option that asks for lazy capture (`lazy = true`).
const CAPTURE_LAZY: &str = "capture = lazy";
/// Hint for a flag-like option that asks for capture at init (`eager = true`).
const CAPTURE_INIT: &str = "capture = init";

/// Guesses which known option a misspelled one stands for: an option name,
/// or for a flag-like name of a capture mode (`lazy`), the whole
/// `capture = ...` to write.
pub fn suggest_option(name: &str) -> Option<&'static str> {
    let lower = name.to_ascii_lowercase();
    let alias = match lower.as_str() {
        "size" | "batch_sizes" | "batches" | "graph_sizes" | "shapes" => Some("sizes"),
        "bucket" | "bucketed" | "bucket_args" | "bins" | "dims" | "dim_buckets" => Some("buckets"),
        "variant" | "graph_sets" | "modes" | "flags" | "switches" => Some("variants"),
        "batch_size" | "batch_arg" | "batch_input" | "batch_dim" | "batch_tensor" => Some("batch"),
        "static" | "statics" | "static_arg" | "static_params" | "host_args" | "consts" => {
            Some("static_args")
        }
        "padding" | "pads" | "pad_value" | "pad_values" | "fill" | "fill_value" | "padded" => {
            Some("pad")
        }
        "krate" | "crate_path" | "path" | "cudagraph" => Some("crate"),
        "lazy"
        | "lazy_capture"
        | "capture_lazy"
        | "lazily"
        | "capture_lazily"
        | "on_first_use"
        | "capture_on_first_use"
        | "deferred"
        | "defer_capture" => Some(CAPTURE_LAZY),
        "eager" | "eager_capture" | "capture_eager" | "init" | "capture_at_init"
        | "capture_on_init" => Some(CAPTURE_INIT),
        "capture_mode" | "mode" | "captures" | "capturing" => Some("capture"),
        _ => None,
    };
    alias.or_else(|| {
        OPTIONS
            .iter()
            .map(|option| (edit_distance(&lower, option), *option))
            .filter(|(distance, option)| *distance <= option.len() / 3)
            .min_by_key(|(distance, _)| *distance)
            .map(|(_, option)| option)
    })
}

/// Levenshtein distance between two short strings.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut current = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let substitution = previous[j] + usize::from(ca != *cb);
            current[j + 1] = substitution.min(previous[j + 1] + 1).min(current[j] + 1);
        }
        previous = current;
    }
    previous[b.len()]
}

/// Parses `[elem, elem, ...]` for `sizes`; bad elements are reported and
/// skipped.
fn parse_sizes(input: ParseStream, errors: &mut Errors) -> syn::Result<Sizes> {
    if !input.peek(syn::token::Bracket) {
        return Err(input.error(
            "`sizes` takes a bracketed list: write e.g. `sizes = [1, 2, 4, 8..=256 step 8]`",
        ));
    }
    let content;
    let bracket = syn::bracketed!(content in input);
    let mut elems = Vec::new();
    while !content.is_empty() {
        match parse_size_elem(&content) {
            Ok(elem) => elems.push(elem),
            Err(error) => {
                errors.push(error);
                skip_to_comma(&content);
            }
        }
        if content.is_empty() {
            break;
        }
        if content.parse::<Token![,]>().is_err() {
            errors.push(
                content.error("expected `,` between sizes, e.g. `sizes = [1, 2, 8..=64 step 8]`"),
            );
            skip_to_comma(&content);
            let _ = content.parse::<Option<Token![,]>>();
        }
    }
    Ok(Sizes {
        elems,
        span: bracket.span.join(),
    })
}

/// Parses one element of `sizes`: `8`, `8..=256` or `8..=256 step 8`.
fn parse_size_elem(input: ParseStream) -> syn::Result<SizeElem> {
    let mut tokens = TokenStream::new();
    let start = parse_num(input, &mut tokens)?;
    let kind = if input.peek(Token![...]) {
        let dots: Token![...] = input.parse()?;
        return Err(syn::Error::new(
            dots.spans[0],
            format!(
                "write inclusive ranges with `..=`, e.g. `{}..=256`",
                start.value
            ),
        ));
    } else if input.peek(Token![..=]) {
        let dots: Token![..=] = input.parse()?;
        dots.to_tokens(&mut tokens);
        let end = parse_num(input, &mut tokens)?;
        let step = if input.peek(kw::step) {
            let step: kw::step = input.parse()?;
            step.to_tokens(&mut tokens);
            Some(parse_num(input, &mut tokens)?)
        } else {
            None
        };
        SizeKind::Range { start, end, step }
    } else if input.peek(Token![..]) {
        let dots: Token![..] = input.parse()?;
        dots.to_tokens(&mut tokens);
        if !input.peek(Lit) {
            return Err(syn::Error::new_spanned(
                tokens,
                format!(
                    "a range in `sizes` needs an end: write e.g. `{}..=256`",
                    start.value
                ),
            ));
        }
        let end = parse_num(input, &mut tokens)?;
        let suggestion = match end.value.checked_sub(1) {
            Some(last) => format!("write `{}..={last}`", start.value),
            None => "write an inclusive range such as `1..=8`".to_owned(),
        };
        return Err(syn::Error::new_spanned(
            tokens,
            format!("ranges in `sizes` are inclusive (`..=`): {suggestion}"),
        ));
    } else {
        SizeKind::Single(start)
    };
    if input.peek(kw::step) {
        let step: kw::step = input.parse()?;
        let message = match kind {
            SizeKind::Single(_) => "`step` only applies to a range: write e.g. `8..=256 step 8`",
            SizeKind::Range { .. } => "`step` is given twice in this range; keep one",
        };
        return Err(syn::Error::new(step.span, message));
    }
    Ok(SizeElem { kind, tokens })
}

/// Parses an integer literal (unsuffixed or `usize`) and appends its tokens.
fn parse_num(input: ParseStream, tokens: &mut TokenStream) -> syn::Result<Num> {
    if input.peek(Token![-]) {
        let minus: Token![-] = input.parse()?;
        let mut span_tokens = minus.to_token_stream();
        if input.peek(Lit) {
            let lit: Lit = input.parse()?;
            lit.to_tokens(&mut span_tokens);
        }
        return Err(syn::Error::new_spanned(
            span_tokens,
            "batch sizes must be positive integers, e.g. `8`",
        ));
    }
    if !input.peek(Lit) {
        return Err(input.error(
            "expected an integer literal, e.g. `8`, or an inclusive range such as `8..=256 step 8`",
        ));
    }
    let lit: Lit = input.parse()?;
    lit.to_tokens(tokens);
    match &lit {
        Lit::Int(int) => {
            if !matches!(int.suffix(), "" | "usize") {
                return Err(syn::Error::new(
                    int.span(),
                    format!(
                        "batch sizes are `usize`: write `{}` without the `{}` suffix",
                        int.base10_digits(),
                        int.suffix()
                    ),
                ));
            }
            if int.base10_digits().starts_with('-') {
                return Err(syn::Error::new(
                    int.span(),
                    "batch sizes must be positive integers, e.g. `8`",
                ));
            }
            match int.base10_parse::<u64>() {
                Ok(value) => Ok(Num {
                    value,
                    span: int.span(),
                }),
                Err(_) => Err(syn::Error::new(
                    int.span(),
                    format!(
                        "size {} is too large: the largest batch size is {}",
                        int.base10_digits(),
                        u16::MAX
                    ),
                )),
            }
        }
        Lit::Str(s) => Err(syn::Error::new(
            s.span(),
            format!(
                "expected an integer literal: write the size without quotes, e.g. `{}`",
                s.value().trim()
            ),
        )),
        other => Err(syn::Error::new_spanned(
            other,
            "expected an integer literal: batch sizes are whole numbers, e.g. `8`",
        )),
    }
}

/// Parses the parameter name of `batch = name`.
fn parse_batch(input: ParseStream) -> syn::Result<Ident> {
    if input.peek(Ident) {
        return input.parse();
    }
    if input.peek(syn::LitStr) {
        let lit: syn::LitStr = input.parse()?;
        return Err(syn::Error::new(
            lit.span(),
            format!(
                "write the parameter name without quotes: `batch = {}`",
                lit.value()
            ),
        ));
    }
    Err(input.error("expected the name of a `&Tensor` parameter, e.g. `batch = tokens`"))
}

/// Parses `[name, name, ...]` for `static_args`.
fn parse_static_args(input: ParseStream, errors: &mut Errors) -> syn::Result<StaticArgs> {
    if !input.peek(syn::token::Bracket) {
        let hint = if input.peek(Ident) {
            input
                .fork()
                .parse::<Ident>()
                .map(|i| i.to_string())
                .unwrap_or_else(|_| "cfg".to_owned())
        } else {
            "cfg".to_owned()
        };
        return Err(input.error(format!(
            "`static_args` takes a bracketed list of parameter names: write e.g. `static_args = [{hint}]`"
        )));
    }
    let content;
    syn::bracketed!(content in input);
    let mut names: Vec<Ident> = Vec::new();
    while !content.is_empty() {
        if content.peek(Ident) {
            let name: Ident = content.parse()?;
            if names.contains(&name) {
                errors.at(
                    name.span(),
                    format!("`{name}` is listed twice in `static_args`"),
                );
            } else {
                names.push(name);
            }
        } else {
            errors.push(content.error("expected a parameter name, e.g. `static_args = [cfg]`"));
            skip_to_comma(&content);
        }
        if content.is_empty() {
            break;
        }
        if content.parse::<Token![,]>().is_err() {
            errors.push(content.error("expected `,` between parameter names"));
            skip_to_comma(&content);
            let _ = content.parse::<Option<Token![,]>>();
        }
    }
    Ok(StaticArgs { names })
}

/// An example of `pad`, for messages.
const PAD_EXAMPLE: &str = "`pad = [positions = -1]`";

/// Parses `[name = number, ...]` for `pad`. A bad entry is reported and
/// skipped; a name listed twice is reported at the second one.
fn parse_pads(input: ParseStream, errors: &mut Errors) -> syn::Result<Pads> {
    if !input.peek(syn::token::Bracket) {
        return Err(input.error(format!(
            "`pad` takes a bracketed list of `input = value` entries: write e.g. {PAD_EXAMPLE}"
        )));
    }
    let content;
    syn::bracketed!(content in input);
    let mut entries: Vec<PadEntry> = Vec::new();
    while !content.is_empty() {
        match parse_pad_entry(&content) {
            Ok(entry) => {
                if entries.iter().any(|e| e.name == entry.name) {
                    errors.at(
                        entry.name.span(),
                        format!("`{}` is listed twice in `pad`; keep one value", entry.name),
                    );
                } else {
                    entries.push(entry);
                }
            }
            Err(error) => {
                errors.push(error);
                skip_to_comma(&content);
            }
        }
        if content.is_empty() {
            break;
        }
        if content.parse::<Token![,]>().is_err() {
            errors.push(content.error("expected `,` between `pad` entries"));
            skip_to_comma(&content);
            let _ = content.parse::<Option<Token![,]>>();
        }
    }
    Ok(Pads { entries })
}

/// An example of `buckets`, for messages.
const BUCKETS_EXAMPLE: &str = "[max_context = [512, 2048, 8192], block_tables[1] = [64, 256]]";

/// An example of `variants`, for messages.
const VARIANTS_EXAMPLE: &str = "[lora = [false, true]]";

/// Parses `[entry, entry, ...]` of `buckets`; bad entries are reported and skipped.
fn parse_buckets(input: ParseStream, errors: &mut Errors) -> syn::Result<Buckets> {
    if !input.peek(syn::token::Bracket) {
        return Err(input.error(format!(
            "`buckets` takes a bracketed list of `argument = [buckets]` entries: write e.g. `buckets = {BUCKETS_EXAMPLE}`"
        )));
    }
    let content;
    syn::bracketed!(content in input);
    let mut entries: Vec<BucketEntry> = Vec::new();
    while !content.is_empty() {
        match parse_bucket_entry(&content) {
            Ok(entry) => {
                let same = |e: &BucketEntry| {
                    e.name == entry.name && e.dim.map(|d| d.value) == entry.dim.map(|d| d.value)
                };
                if entries.iter().any(same) {
                    errors.spanned(&entry.tokens, "this is bucketed twice; keep one list");
                } else {
                    entries.push(entry);
                }
            }
            Err(error) => {
                errors.push(error);
                skip_to_comma(&content);
            }
        }
        if content.is_empty() {
            break;
        }
        if content.parse::<Token![,]>().is_err() {
            errors.push(content.error("expected `,` between `buckets` entries"));
            skip_to_comma(&content);
            let _ = content.parse::<Option<Token![,]>>();
        }
    }
    Ok(Buckets { entries })
}

/// Parses one `name = [n, ...]` or `name[dim] = [n, ...]` entry of `buckets`.
fn parse_bucket_entry(input: ParseStream) -> syn::Result<BucketEntry> {
    if !input.peek(Ident) {
        return Err(input.error(format!(
            "expected the name of an argument, e.g. `buckets = {BUCKETS_EXAMPLE}`"
        )));
    }
    let mut tokens = TokenStream::new();
    let name: Ident = input.parse()?;
    name.to_tokens(&mut tokens);
    let dim = if input.peek(syn::token::Bracket) {
        let content;
        let bracket = syn::bracketed!(content in input);
        let mut dim_tokens = TokenStream::new();
        let dim = drain_on_error(&content, |c| {
            let dim = parse_plain_num(c, &mut dim_tokens, "a dimension")?;
            if !c.is_empty() {
                return Err(c.error("expected one dimension, e.g. `block_tables[1]`"));
            }
            Ok(dim)
        })?;
        tokens.extend(quote::quote_spanned!(bracket.span.join()=> [#dim_tokens]));
        Some(dim)
    } else {
        None
    };
    // `a[1] + b[1] = [..]`: dimensions that go together.
    let mut also = Vec::new();
    while dim.is_some() && input.peek(Token![+]) {
        let plus: Token![+] = input.parse()?;
        plus.to_tokens(&mut tokens);
        let other: Ident = input
            .parse()
            .map_err(|e| syn::Error::new(e.span(), "expected another `name[dim]` after `+`"))?;
        other.to_tokens(&mut tokens);
        if !input.peek(syn::token::Bracket) {
            return Err(input.error(format!(
                "expected the dimension of `{other}`: `{other}[1]` (dimensions joined by `+` share their buckets)"
            )));
        }
        let content;
        let bracket = syn::bracketed!(content in input);
        let mut dim_tokens = TokenStream::new();
        let other_dim = drain_on_error(&content, |c| {
            let d = parse_plain_num(c, &mut dim_tokens, "a dimension")?;
            if !c.is_empty() {
                return Err(c.error("expected one dimension, e.g. `positions[1]`"));
            }
            Ok(d)
        })?;
        tokens.extend(quote::quote_spanned!(bracket.span.join()=> [#dim_tokens]));
        also.push((other, other_dim));
    }
    if !input.peek(Token![=]) {
        return Err(input.error(format!(
            "expected `=` after `{name}`: write `{name} = [512, 2048]` (the buckets, ascending)"
        )));
    }
    input.parse::<Token![=]>()?;
    if !input.peek(syn::token::Bracket) {
        return Err(input.error(format!(
            "the buckets of `{name}` are a bracketed list: write `{name} = [512, 2048]`"
        )));
    }
    let content;
    syn::bracketed!(content in input);
    let buckets = drain_on_error(&content, |c| {
        let mut buckets = Vec::new();
        while !c.is_empty() {
            buckets.push(parse_plain_num(c, &mut tokens, "a bucket")?);
            if c.is_empty() {
                break;
            }
            c.parse::<Token![,]>()?;
        }
        Ok(buckets)
    })?;
    Ok(BucketEntry {
        name,
        dim,
        also,
        buckets,
        tokens,
    })
}

/// Runs `f` on the contents of a bracket; on an error, consumes what `f` left, so that the
/// error reported is `f`'s (a bracket dropped with tokens left reports "unexpected token"
/// instead).
fn drain_on_error<T>(
    content: ParseStream,
    f: impl FnOnce(ParseStream) -> syn::Result<T>,
) -> syn::Result<T> {
    let result = f(content);
    if result.is_err() {
        let _ = content.parse::<TokenStream>();
    }
    result
}

/// Parses a non-negative integer literal without suffix (a bucket, a dimension).
fn parse_plain_num(input: ParseStream, tokens: &mut TokenStream, what: &str) -> syn::Result<Num> {
    if input.peek(Token![-]) {
        let minus: Token![-] = input.parse()?;
        return Err(syn::Error::new(
            minus.span,
            format!("{what} is a positive integer, e.g. `64`"),
        ));
    }
    let lit: syn::LitInt = input.parse().map_err(|e| {
        syn::Error::new(
            e.span(),
            format!("expected {what}: an integer literal, e.g. `64`"),
        )
    })?;
    lit.to_tokens(tokens);
    let value = lit.base10_parse::<u64>()?;
    Ok(Num {
        value,
        span: lit.span(),
    })
}

/// Parses `[name = [value, ...], ...]` of `variants`; bad entries are reported and skipped.
fn parse_variants(input: ParseStream, errors: &mut Errors) -> syn::Result<VariantList> {
    if !input.peek(syn::token::Bracket) {
        return Err(input.error(format!(
            "`variants` takes a bracketed list of `argument = [values]` entries: write e.g. `variants = {VARIANTS_EXAMPLE}`"
        )));
    }
    let content;
    syn::bracketed!(content in input);
    let mut entries: Vec<VariantEntry> = Vec::new();
    while !content.is_empty() {
        match parse_variant_entry(&content) {
            Ok(entry) => {
                if entries.iter().any(|e| e.name == entry.name) {
                    errors.at(
                        entry.name.span(),
                        format!(
                            "`{}` is listed twice in `variants`; keep one list",
                            entry.name
                        ),
                    );
                } else {
                    entries.push(entry);
                }
            }
            Err(error) => {
                errors.push(error);
                skip_to_comma(&content);
            }
        }
        if content.is_empty() {
            break;
        }
        if content.parse::<Token![,]>().is_err() {
            errors.push(content.error("expected `,` between `variants` entries"));
            skip_to_comma(&content);
            let _ = content.parse::<Option<Token![,]>>();
        }
    }
    Ok(VariantList { entries })
}

/// Parses one `name = [value, ...]` entry of `variants`: each value a literal or a path.
fn parse_variant_entry(input: ParseStream) -> syn::Result<VariantEntry> {
    if !input.peek(Ident) {
        return Err(input.error(format!(
            "expected the name of a host argument, e.g. `variants = {VARIANTS_EXAMPLE}`"
        )));
    }
    let name: Ident = input.parse()?;
    if !input.peek(Token![=]) {
        return Err(input.error(format!(
            "expected `=` after `{name}`: write `{name} = [false, true]` (the values that get graphs)"
        )));
    }
    input.parse::<Token![=]>()?;
    if !input.peek(syn::token::Bracket) {
        return Err(input.error(format!(
            "the values of `{name}` are a bracketed list: write `{name} = [false, true]`"
        )));
    }
    let content;
    syn::bracketed!(content in input);
    let values = drain_on_error(&content, |c| {
        let mut values = Vec::new();
        while !c.is_empty() {
            let pat = syn::Pat::parse_single(c)?;
            match &pat {
                syn::Pat::Lit(_) | syn::Pat::Path(_) => values.push(pat),
                syn::Pat::Ident(ident)
                    if ident.subpat.is_none()
                        && ident.by_ref.is_none()
                        && ident.mutability.is_none() =>
                {
                    values.push(pat)
                }
                other => {
                    return Err(syn::Error::new_spanned(
                        other,
                        "a variant's value is a literal (`true`, `2`) or a path (`Mode::Fast`, a `const`)",
                    ));
                }
            }
            if c.is_empty() {
                break;
            }
            c.parse::<Token![,]>()?;
        }
        Ok(values)
    })?;
    Ok(VariantEntry { name, values })
}

/// Parses one `name = number` entry of `pad`.
fn parse_pad_entry(input: ParseStream) -> syn::Result<PadEntry> {
    if !input.peek(Ident) {
        return Err(input.error(format!(
            "expected the name of a `&Tensor` argument, e.g. {PAD_EXAMPLE}"
        )));
    }
    let name: Ident = input.parse()?;
    if !input.peek(Token![=]) {
        return Err(input.error(format!(
            "expected `=` after `{name}`: write `{name} = -1` (the value rows past the batch are filled with)"
        )));
    }
    input.parse::<Token![=]>()?;
    let value = parse_pad_number(input, &name)?;
    Ok(PadEntry { name, value })
}

/// Parses an optionally negated integer or float literal.
fn parse_pad_number(input: ParseStream, name: &Ident) -> syn::Result<PadNumber> {
    let not_a_number = |tokens: &dyn ToTokens| {
        syn::Error::new_spanned(
            tokens,
            format!(
                "the value of `{name}` in `pad` must be an integer or float literal, e.g. `{name} = -1` or `{name} = 0.0`"
            ),
        )
    };
    let minus: Option<Token![-]> = input.parse()?;
    let negative = minus.is_some();
    if input.is_empty() || input.peek(Token![,]) {
        return Err(match minus {
            Some(minus) => not_a_number(&minus),
            None => input.error(format!(
                "expected the value for `{name}`, e.g. `{name} = -1` or `{name} = 0.0`"
            )),
        });
    }
    let tree: TokenTree = input.parse()?;
    let tokens = quote::quote!(#minus #tree);
    let TokenTree::Literal(literal) = &tree else {
        return Err(not_a_number(&tokens));
    };
    let sign = if negative { "-" } else { "" };
    let suffix_error = |suffix: &str, digits: &str| {
        syn::Error::new_spanned(
            &tokens,
            format!(
                "write `{sign}{digits}` without the `{suffix}` suffix: the runtime converts the value to the input's element type"
            ),
        )
    };
    let too_large = |what: &str| {
        syn::Error::new_spanned(
            &tokens,
            format!("this `pad` value does not fit in an `{what}`"),
        )
    };
    match Lit::new(literal.clone()) {
        Lit::Int(int) => {
            if !int.suffix().is_empty() {
                return Err(suffix_error(int.suffix(), int.base10_digits()));
            }
            let magnitude = int
                .base10_parse::<u64>()
                .map(i128::from)
                .map_err(|_| too_large("i64"))?;
            let value = if negative { -magnitude } else { magnitude };
            i64::try_from(value)
                .map(PadNumber::Int)
                .map_err(|_| too_large("i64"))
        }
        Lit::Float(float) => {
            if !float.suffix().is_empty() {
                return Err(suffix_error(float.suffix(), float.base10_digits()));
            }
            let magnitude: f64 = float.base10_parse().map_err(|_| too_large("f64"))?;
            if !magnitude.is_finite() {
                return Err(too_large("f64"));
            }
            Ok(PadNumber::Float(if negative {
                -magnitude
            } else {
                magnitude
            }))
        }
        _ => Err(not_a_number(&tokens)),
    }
}

/// Parses the value of `capture = lazy | init`; anything else is reported at
/// the value's token.
fn parse_capture(input: ParseStream) -> syn::Result<CaptureMode> {
    if input.peek(kw::lazy) {
        input.parse::<kw::lazy>()?;
        return Ok(CaptureMode::Lazy);
    }
    if input.peek(kw::init) {
        input.parse::<kw::init>()?;
        return Ok(CaptureMode::Init);
    }
    if input.peek(kw::background) {
        input.parse::<kw::background>()?;
        return Ok(CaptureMode::Background);
    }
    if input.is_empty() || input.peek(Token![,]) {
        return Err(input.error(CAPTURE_VALUES));
    }
    let value: TokenTree = input.parse()?;
    Err(syn::Error::new(value.span(), CAPTURE_VALUES))
}

/// Parses the string literal of `crate = "path"` into a path.
fn parse_crate(input: ParseStream) -> syn::Result<CratePath> {
    if !input.peek(syn::LitStr) {
        return Err(input.error(
            "expected a string literal holding a path: write e.g. `crate = \"::cudagraph\"`",
        ));
    }
    let lit: syn::LitStr = input.parse()?;
    match lit.parse::<syn::Path>() {
        Ok(path) => Ok(CratePath { path }),
        Err(_) => Err(syn::Error::new(
            lit.span(),
            format!(
                "`crate` must be a path such as \"::cudagraph\", not {:?}",
                lit.value()
            ),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use quote::quote;

    fn parse_ok(tokens: TokenStream) -> Args {
        match syn::parse2::<Args>(tokens) {
            Ok(args) => args,
            Err(error) => panic!("unexpected error: {error}"),
        }
    }

    fn messages(tokens: TokenStream) -> Vec<String> {
        let (_, error) = parse_args(tokens);
        error
            .map(|e| e.into_iter().map(|m| m.to_string()).collect())
            .unwrap_or_default()
    }

    fn values(elem: &SizeElem) -> (u64, Option<u64>, Option<u64>) {
        match &elem.kind {
            SizeKind::Single(n) => (n.value, None, None),
            SizeKind::Range { start, end, step } => {
                (start.value, Some(end.value), step.map(|s| s.value))
            }
        }
    }

    #[test]
    fn parses_all_options() {
        let args = parse_ok(quote!(
            sizes = [1, 2usize, 4, 8..=256 step 8, 300..=302],
            batch = tokens,
            static_args = [cfg, opts],
            capture = lazy,
            crate = "::my::cg",
        ));
        let sizes = args
            .sizes
            .as_ref()
            .map(|s| s.elems.iter().map(values).collect::<Vec<_>>());
        assert_eq!(
            sizes,
            Some(vec![
                (1, None, None),
                (2, None, None),
                (4, None, None),
                (8, Some(256), Some(8)),
                (300, Some(302), None),
            ])
        );
        assert_eq!(args.batch.map(|b| b.to_string()), Some("tokens".into()));
        let statics = args
            .static_args
            .map(|s| s.names.iter().map(|n| n.to_string()).collect::<Vec<_>>());
        assert_eq!(statics, Some(vec!["cfg".to_owned(), "opts".to_owned()]));
        assert_eq!(args.capture, Some(CaptureMode::Lazy));
        let krate = args.krate.map(|k| k.path.to_token_stream().to_string());
        assert_eq!(krate, Some(":: my :: cg".into()));
        assert!(!args.incomplete);
    }

    #[test]
    fn empty_attribute_parses_to_nothing() {
        let args = parse_ok(quote!());
        assert!(args.sizes.is_none() && args.batch.is_none());
        assert!(args.static_args.is_none() && args.krate.is_none());
        assert!(args.capture.is_none());
    }

    #[test]
    fn capture_modes() {
        let args = parse_ok(quote!(sizes = [1], capture = lazy));
        assert_eq!(args.capture, Some(CaptureMode::Lazy));
        let args = parse_ok(quote!(capture = init, sizes = [1]));
        assert_eq!(args.capture, Some(CaptureMode::Init));
        let args = parse_ok(quote!(sizes = [1], capture = background));
        assert_eq!(args.capture, Some(CaptureMode::Background));
        assert_eq!(CaptureMode::default(), CaptureMode::Init);
    }

    #[test]
    fn bad_capture_values_are_reported_at_the_value() {
        let expected = CAPTURE_VALUES;
        for tokens in [
            quote!(sizes = [1], capture = eager),
            quote!(sizes = [1], capture = true),
            quote!(sizes = [1], capture = "lazy"),
            quote!(sizes = [1], capture = [lazy]),
            quote!(sizes = [1], capture =),
            quote!(capture = , sizes = [1]),
        ] {
            let (args, error) = parse_args(tokens.clone());
            let errors: Vec<String> = error
                .into_iter()
                .flat_map(|e| e.into_iter().map(|m| m.to_string()))
                .collect();
            assert_eq!(errors.len(), 1, "{tokens}: {errors:?}");
            assert!(errors[0].ends_with(expected), "{tokens}: {errors:?}");
            assert!(args.capture.is_none() && args.incomplete, "{tokens}");
            // The rest of the attribute still parses.
            assert!(args.sizes.is_some(), "{tokens}");
        }
    }

    #[test]
    fn capture_without_eq_or_with_trailing_tokens() {
        let errors = messages(quote!(capture lazy));
        assert_eq!(
            errors,
            vec!["expected `=` after `capture`: write `capture = lazy`"]
        );
        let errors = messages(quote!(capture = lazy init));
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(
            errors[0].contains("expected `,` between options"),
            "{errors:?}"
        );
    }

    #[test]
    fn element_tokens_cover_the_whole_range() {
        let args = parse_ok(quote!(sizes = [8..=64 step 8]));
        let tokens = args.sizes.map(|s| s.elems[0].tokens.to_string());
        assert_eq!(tokens, Some("8 ..= 64 step 8".into()));
    }

    #[test]
    fn empty_list_parses_and_is_left_to_validation() {
        let args = parse_ok(quote!(sizes = []));
        assert_eq!(args.sizes.map(|s| s.elems.len()), Some(0));
    }

    #[test]
    fn float_and_string_are_not_integers() {
        let errors = messages(quote!(sizes = [1.5, "8"]));
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(
            errors[0].contains("expected an integer literal"),
            "{errors:?}"
        );
        assert!(
            errors[1].contains("expected an integer literal"),
            "{errors:?}"
        );
        assert!(errors[1].contains("`8`"), "{errors:?}");
    }

    #[test]
    fn wrong_suffix_and_negative_and_huge() {
        let errors = messages(quote!(sizes = [8u32, -1, 99999999999999999999999]));
        assert_eq!(errors.len(), 3, "{errors:?}");
        assert!(errors[0].contains("without the `u32` suffix"));
        assert!(errors[1].contains("positive"));
        assert!(errors[2].contains("too large"));
    }

    #[test]
    fn exclusive_and_open_ranges_are_rejected_with_fix() {
        let errors = messages(quote!(sizes = [8..256, 8.., 1...4]));
        assert_eq!(errors.len(), 3, "{errors:?}");
        assert!(errors[0].contains("`8..=255`"), "{errors:?}");
        assert!(errors[1].contains("needs an end"), "{errors:?}");
        assert!(errors[2].contains("`..=`"), "{errors:?}");
    }

    #[test]
    fn step_on_single_size_is_rejected() {
        let errors = messages(quote!(sizes = [8 step 2]));
        assert_eq!(errors.len(), 1);
        assert!(errors[0].contains("only applies to a range"));
    }

    #[test]
    fn unknown_options_get_hints() {
        let errors = messages(quote!(
            size = [1],
            batch_size = x,
            statics = [c],
            sizs = [2],
            bogus = 1
        ));
        assert_eq!(errors.len(), 5, "{errors:?}");
        let expected = "unknown option `size`; expected one of `sizes`, `batch`, `static_args`, `pad`, `buckets`, `variants`, `capture`, `crate`; did you mean `sizes`?";
        assert_eq!(errors[0], expected);
        assert!(errors[1].ends_with("did you mean `batch`?"));
        assert!(errors[2].ends_with("did you mean `static_args`?"));
        assert!(errors[3].ends_with("did you mean `sizes`?"));
        assert!(!errors[4].contains("did you mean"));
    }

    #[test]
    fn capture_flags_get_a_capture_hint() {
        let errors = messages(quote!(
            lazy = true,
            lazy_capture,
            eager = true,
            lazy = false,
            eager = false,
            capture_mode = lazy,
            captur = lazy
        ));
        assert_eq!(errors.len(), 7, "{errors:?}");
        assert_eq!(
            errors[0],
            "unknown option `lazy`; expected one of `sizes`, `batch`, `static_args`, `pad`, `buckets`, `variants`, `capture`, `crate`; did you mean `capture = lazy`?"
        );
        assert!(
            errors[1].ends_with("did you mean `capture = lazy`?"),
            "{errors:?}"
        );
        assert!(
            errors[2].ends_with("did you mean `capture = init`?"),
            "{errors:?}"
        );
        assert!(
            errors[3].ends_with("did you mean `capture = init`?"),
            "{errors:?}"
        );
        assert!(
            errors[4].ends_with("did you mean `capture = lazy`?"),
            "{errors:?}"
        );
        assert!(errors[5].ends_with("did you mean `capture`?"), "{errors:?}");
        assert!(errors[6].ends_with("did you mean `capture`?"), "{errors:?}");
    }

    #[test]
    fn keyword_as_option_name_is_unknown_not_a_crash() {
        let errors = messages(quote!(type = 1, self = 2));
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(errors[0].starts_with("unknown option `type`"));
    }

    #[test]
    fn repeated_option_is_reported_once_and_first_value_kept() {
        let (args, error) = parse_args(quote!(
            sizes = [1],
            batch = a,
            capture = lazy,
            sizes = [2],
            batch = b,
            capture = init
        ));
        let errors: Vec<String> = error
            .into_iter()
            .flat_map(|e| e.into_iter().map(|m| m.to_string()))
            .collect();
        assert_eq!(
            errors,
            vec![
                "`sizes` is given twice; remove this one",
                "`batch` is given twice; remove this one",
                "`capture` is given twice; remove this one"
            ]
        );
        assert_eq!(args.batch.map(|b| b.to_string()), Some("a".into()));
        assert_eq!(args.capture, Some(CaptureMode::Lazy));
        assert!(args.incomplete);
    }

    #[test]
    fn errors_are_collected_across_options() {
        let errors = messages(quote!(
            sizes = [1, x, 2.0],
            batch = "x",
            static_args = cfg,
            crate = 5,
            nope
        ));
        assert_eq!(errors.len(), 6, "{errors:?}");
        assert!(
            errors[2].contains("without quotes: `batch = x`"),
            "{errors:?}"
        );
        assert!(errors[3].contains("`static_args = [cfg]`"), "{errors:?}");
        assert!(errors[4].contains("string literal"), "{errors:?}");
        assert!(errors[5].starts_with("unknown option `nope`"), "{errors:?}");
    }

    #[test]
    fn missing_eq_and_missing_comma() {
        let errors = messages(quote!(sizes [1] batch = x));
        assert!(
            errors[0].contains("expected `=` after `sizes`"),
            "{errors:?}"
        );
        let errors = messages(quote!(sizes = [1] batch = x));
        assert!(
            errors[0].contains("expected `,` between options"),
            "{errors:?}"
        );
        let errors = messages(quote!(sizes = [1 2]));
        assert!(
            errors[0].contains("expected `,` between sizes"),
            "{errors:?}"
        );
    }

    #[test]
    fn duplicate_static_arg_name() {
        let errors = messages(quote!(sizes = [1], static_args = [a, b, a]));
        assert_eq!(errors, vec!["`a` is listed twice in `static_args`"]);
    }

    #[test]
    fn bad_crate_path() {
        let errors = messages(quote!(sizes = [1], crate = "not a path"));
        assert_eq!(errors.len(), 1);
        assert!(errors[0].contains("must be a path"), "{errors:?}");
        let args = parse_ok(quote!(sizes = [1], crate = "crate"));
        assert!(args.krate.is_some());
    }

    fn pads(tokens: TokenStream) -> Vec<(String, PadNumber)> {
        parse_ok(tokens)
            .pad
            .map(|p| {
                p.entries
                    .into_iter()
                    .map(|e| (e.name.to_string(), e.value))
                    .collect()
            })
            .unwrap_or_default()
    }

    #[test]
    fn buckets_and_variants_parse() {
        let args = parse_ok(quote!(
            sizes = [1],
            buckets = [max_context = [512, 2048, 8192], tables[1] = [64, 256],],
            variants = [
                lora = [false, true],
                mode = [Mode::Fast, Mode::Exact],
                q = [1, 2, 4]
            ]
        ));
        let buckets = args.buckets.expect("buckets");
        let seen: Vec<(String, Option<u64>, Vec<u64>)> = buckets
            .entries
            .iter()
            .map(|e| {
                (
                    e.name.to_string(),
                    e.dim.map(|d| d.value),
                    e.buckets.iter().map(|b| b.value).collect(),
                )
            })
            .collect();
        assert_eq!(
            seen,
            vec![
                ("max_context".to_owned(), None, vec![512, 2048, 8192]),
                ("tables".to_owned(), Some(1), vec![64, 256]),
            ]
        );
        let variants = args.variants.expect("variants");
        let seen: Vec<(String, Vec<String>)> = variants
            .entries
            .iter()
            .map(|e| {
                (
                    e.name.to_string(),
                    e.values
                        .iter()
                        .map(|v| v.to_token_stream().to_string())
                        .collect(),
                )
            })
            .collect();
        assert_eq!(
            seen,
            vec![
                (
                    "lora".to_owned(),
                    vec!["false".to_owned(), "true".to_owned()]
                ),
                (
                    "mode".to_owned(),
                    vec!["Mode :: Fast".to_owned(), "Mode :: Exact".to_owned()]
                ),
                (
                    "q".to_owned(),
                    vec!["1".to_owned(), "2".to_owned(), "4".to_owned()]
                ),
            ]
        );
    }

    #[test]
    fn bad_buckets_and_variants_are_reported() {
        for (tokens, want) in [
            (
                quote!(buckets = max_context),
                "bracketed list of `argument = [buckets]`",
            ),
            (
                quote!(buckets = [max_context]),
                "expected `=` after `max_context`",
            ),
            (
                quote!(buckets = [max_context = 512]),
                "are a bracketed list",
            ),
            (quote!(buckets = [max_context = [-1]]), "a positive integer"),
            (quote!(buckets = [x[a] = [1]]), "expected a dimension"),
            (quote!(buckets = [x[1, 2] = [1]]), "expected one dimension"),
            (quote!(buckets = [a = [1], a = [2]]), "bucketed twice"),
            (quote!(variants = [lora]), "expected `=` after `lora`"),
            (
                quote!(variants = [lora = [x @ 1]]),
                "a literal (`true`, `2`) or a path",
            ),
            (
                quote!(variants = [a = [1], a = [2]]),
                "listed twice in `variants`",
            ),
            (
                quote!(variants = lora),
                "bracketed list of `argument = [values]`",
            ),
        ] {
            let errors = messages(quote!(sizes = [1], #tokens));
            assert_eq!(errors.len(), 1, "{tokens}: {errors:?}");
            assert!(errors[0].contains(want), "{tokens}: {errors:?}");
        }
        // A misspelling is pointed at the option.
        let errors = messages(quote!(sizes = [1], bucket = [a = [1]]));
        assert!(errors[0].contains("did you mean `buckets`"), "{errors:?}");
        let errors = messages(quote!(sizes = [1], variant = [a = [1]]));
        assert!(errors[0].contains("did you mean `variants`"), "{errors:?}");
    }

    #[test]
    fn pad_values_parse_with_sign() {
        assert_eq!(
            pads(quote!(
                sizes = [1],
                pad = [positions = -1, tokens = 0, mask = -0.5, x = 2.5e3,]
            )),
            vec![
                ("positions".to_owned(), PadNumber::Int(-1)),
                ("tokens".to_owned(), PadNumber::Int(0)),
                ("mask".to_owned(), PadNumber::Float(-0.5)),
                ("x".to_owned(), PadNumber::Float(2500.0)),
            ]
        );
        assert_eq!(
            pads(quote!(
                pad = [a = -9223372036854775808, b = 9223372036854775807]
            )),
            vec![
                ("a".to_owned(), PadNumber::Int(i64::MIN)),
                ("b".to_owned(), PadNumber::Int(i64::MAX)),
            ]
        );
        assert!(pads(quote!(pad = [])).is_empty());
    }

    #[test]
    fn bad_pad_entries_are_all_reported() {
        let errors = messages(quote!(
            sizes = [1],
            pad = [a = x, b = "1", c = -, d, e = 1u8, f = 9223372036854775808, k = 1, k = 2, g = 1.0f32, h = 1e999]
        ));
        assert_eq!(errors.len(), 9, "{errors:?}");
        assert_eq!(
            errors[0],
            "the value of `a` in `pad` must be an integer or float literal, e.g. `a = -1` or `a = 0.0`"
        );
        assert!(
            errors[1].starts_with("the value of `b` in `pad`"),
            "{errors:?}"
        );
        assert!(
            errors[2].starts_with("the value of `c` in `pad`"),
            "{errors:?}"
        );
        assert!(
            errors[3].starts_with("expected `=` after `d`"),
            "{errors:?}"
        );
        assert!(
            errors[4].starts_with("write `1` without the `u8` suffix"),
            "{errors:?}"
        );
        assert!(errors[5].contains("does not fit in an `i64`"), "{errors:?}");
        assert_eq!(errors[6], "`k` is listed twice in `pad`; keep one value");
        assert!(
            errors[7].starts_with("write `1.0` without the `f32` suffix"),
            "{errors:?}"
        );
        assert_eq!(errors[8], "this `pad` value does not fit in an `f64`");
    }

    #[test]
    fn pad_needs_a_bracketed_list_and_once() {
        let errors = messages(quote!(sizes = [1], pad = positions));
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(errors[0].contains("`pad = [positions = -1]`"), "{errors:?}");
        let (args, error) = parse_args(quote!(sizes = [1], pad = [x = 1], pad = [x = 2]));
        let errors: Vec<String> = error
            .into_iter()
            .flat_map(|e| e.into_iter().map(|m| m.to_string()))
            .collect();
        assert_eq!(errors, vec!["`pad` is given twice; remove this one"]);
        let kept = args.pad.map(|p| p.entries[0].value);
        assert_eq!(kept, Some(PadNumber::Int(1)));
        let errors = messages(quote!(padding = [x = 1]));
        assert!(errors[0].ends_with("did you mean `pad`?"), "{errors:?}");
    }

    #[test]
    fn edit_distance_basics() {
        assert_eq!(edit_distance("sizes", "sizes"), 0);
        assert_eq!(edit_distance("size", "sizes"), 1);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(suggest_option("batc"), Some("batch"));
        assert_eq!(suggest_option("xyz"), None);
        assert_eq!(suggest_option("SIZES"), Some("sizes"));
        assert_eq!(suggest_option("capure"), Some("capture"));
        assert_eq!(suggest_option("Lazy"), Some("capture = lazy"));
    }
}
