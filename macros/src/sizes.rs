//! The batch-size set: expansion of `sizes = [...]` into a sorted list, the
//! dispatch lookup table and a compact description for docs.

use std::collections::BTreeMap;

use crate::diag::Errors;
use crate::parse::{Num, SizeElem, SizeKind, Sizes};

/// Largest allowed batch size: the lookup table is indexed by the batch size
/// and stores `u16` indices, with `u16::MAX` reserved for "no graph".
pub const MAX_SIZE: u64 = u16::MAX as u64;

/// Expands `sizes` into a sorted, duplicate-free list.
///
/// Reports, all at once: zero sizes, sizes above [`MAX_SIZE`], ranges whose
/// start exceeds their end, `step 0`, sizes produced twice (at the later
/// element) and an empty list. Returns `None` when anything was reported.
pub fn resolve(sizes: &Sizes, errors: &mut Errors) -> Option<Vec<usize>> {
    let mut seen: BTreeMap<u64, usize> = BTreeMap::new();
    let mut ok = true;
    for (index, elem) in sizes.elems.iter().enumerate() {
        let Some(values) = elem_values(elem, errors) else {
            ok = false;
            continue;
        };
        let mut duplicates = Vec::new();
        for value in values {
            if seen.insert(value, index).is_some() {
                duplicates.push(value);
            }
        }
        if !duplicates.is_empty() {
            ok = false;
            errors.spanned(&elem.tokens, duplicate_message(&duplicates));
        }
    }
    if !ok {
        return None;
    }
    if seen.is_empty() {
        errors.at(
            sizes.span,
            "`sizes` must not be empty: write e.g. `sizes = [1, 2, 4, 8]`",
        );
        return None;
    }
    // Every value is <= MAX_SIZE, so the conversion cannot fail.
    Some(
        seen.keys()
            .filter_map(|&v| usize::try_from(v).ok())
            .collect(),
    )
}

/// The sizes one element denotes, or `None` after reporting why it is bad.
fn elem_values(elem: &SizeElem, errors: &mut Errors) -> Option<Vec<u64>> {
    match &elem.kind {
        SizeKind::Single(n) => check_bounds(*n, errors).then(|| vec![n.value]),
        SizeKind::Range { start, end, step } => {
            let mut ok = check_bounds(*start, errors) & check_bounds(*end, errors);
            let step_value = step.map_or(1, |s| s.value);
            if let (Some(step), 0) = (step, step_value) {
                errors.at(
                    step.span,
                    format!(
                        "`step` must be at least 1: write e.g. `{}..={} step 8`",
                        start.value, end.value
                    ),
                );
                ok = false;
            }
            if start.value > end.value {
                errors.spanned(
                    &elem.tokens,
                    format!(
                        "empty range `{a}..={b}`: the start must not exceed the end; did you mean `{b}..={a}`?",
                        a = start.value,
                        b = end.value
                    ),
                );
                ok = false;
            }
            if !ok {
                return None;
            }
            let step = usize::try_from(step_value).unwrap_or(usize::MAX);
            Some((start.value..=end.value).step_by(step).collect())
        }
    }
}

/// Checks `1 <= n <= MAX_SIZE`, reporting at the literal otherwise.
fn check_bounds(n: Num, errors: &mut Errors) -> bool {
    if n.value == 0 {
        errors.at(
            n.span,
            "size 0 is not allowed: every batch size must be at least 1",
        );
        false
    } else if n.value > MAX_SIZE {
        errors.at(
            n.span,
            format!(
                "size {} is too large: the largest batch size is {MAX_SIZE}",
                n.value
            ),
        );
        false
    } else {
        true
    }
}

/// Message for sizes that an earlier element already produced.
fn duplicate_message(duplicates: &[u64]) -> String {
    match duplicates {
        [one] => format!("duplicate size {one}: an earlier element of `sizes` already lists it"),
        many => {
            let shown: Vec<String> = many.iter().take(8).map(u64::to_string).collect();
            let more = if many.len() > 8 {
                format!(" and {} more", many.len() - 8)
            } else {
                String::new()
            };
            format!(
                "duplicate sizes {}{more}: earlier elements of `sizes` already list them; make the ranges disjoint",
                shown.join(", ")
            )
        }
    }
}

/// Builds the dispatch table for sorted, non-empty, duplicate-free `sizes`:
/// `table.len() == max + 1`, `table[0] == u16::MAX`, and for `1 <= n <= max`,
/// `table[n]` is the index in `sizes` of the smallest size `>= n`.
pub fn lookup_table(sizes: &[usize]) -> Vec<u16> {
    let Some(&max) = sizes.last() else {
        return vec![u16::MAX];
    };
    let mut table = Vec::with_capacity(max + 1);
    table.push(u16::MAX);
    let mut index = 0;
    for n in 1..=max {
        while index < sizes.len() && sizes[index] < n {
            index += 1;
        }
        table.push(u16::try_from(index).unwrap_or(u16::MAX));
    }
    table
}

/// Describes sorted sizes compactly, folding arithmetic runs of three or more
/// into ranges: `[1, 2, 4, 8, 16, 24]` -> `1, 2, 4, 8..=24 step 8`.
pub fn describe(sizes: &[usize]) -> String {
    let mut parts = Vec::new();
    let mut i = 0;
    while i < sizes.len() {
        let mut j = i + 1;
        if let Some(step) = sizes.get(i + 1).map(|next| next - sizes[i]) {
            while j < sizes.len() && sizes[j] - sizes[j - 1] == step {
                j += 1;
            }
            if j - i >= 3 {
                let (first, last) = (sizes[i], sizes[j - 1]);
                parts.push(if step == 1 {
                    format!("{first}..={last}")
                } else {
                    format!("{first}..={last} step {step}")
                });
                i = j;
                continue;
            }
        }
        parts.push(sizes[i].to_string());
        i += 1;
    }
    parts.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse::Args;
    use proc_macro2::TokenStream;
    use proptest::prelude::*;
    use quote::quote;

    fn resolve_tokens(tokens: TokenStream) -> Result<Vec<usize>, Vec<String>> {
        let args: Args = syn::parse2(tokens).map_err(|e| vec![e.to_string()])?;
        let sizes = args.sizes.ok_or_else(|| vec!["no sizes".to_owned()])?;
        let mut errors = Errors::new();
        match resolve(&sizes, &mut errors) {
            Some(sizes) if errors.is_empty() => Ok(sizes),
            _ => Err(errors
                .into_error()
                .map(|e| e.into_iter().map(|m| m.to_string()).collect())
                .unwrap_or_default()),
        }
    }

    #[test]
    fn spec_example_expands_sorted() {
        let sizes = resolve_tokens(quote!(sizes = [8..=256 step 8, 4, 2, 1]));
        let mut expected = vec![1, 2, 4];
        expected.extend((8..=256).step_by(8));
        assert_eq!(sizes, Ok(expected));
    }

    #[test]
    fn range_end_not_on_step_stops_before() {
        assert_eq!(
            resolve_tokens(quote!(sizes = [8..=30 step 8])),
            Ok(vec![8, 16, 24])
        );
        assert_eq!(resolve_tokens(quote!(sizes = [3..=3])), Ok(vec![3]));
    }

    #[test]
    fn every_bad_element_is_reported() {
        let errors =
            resolve_tokens(quote!(sizes = [0, 70000, 9..=2, 1..=4 step 0, 0..=3, 1..=65536]));
        let errors = errors.err().unwrap_or_default();
        assert_eq!(errors.len(), 6, "{errors:?}");
        assert!(errors[0].starts_with("size 0 is not allowed"));
        assert!(errors[1].starts_with("size 70000 is too large"));
        assert!(errors[2].contains("did you mean `2..=9`?"));
        assert!(errors[3].starts_with("`step` must be at least 1"));
        assert!(errors[4].starts_with("size 0 is not allowed"));
        assert!(errors[5].starts_with("size 65536 is too large"));
    }

    #[test]
    fn duplicates_point_at_the_later_element() {
        let errors = resolve_tokens(quote!(sizes = [1..=8, 4, 2..=16 step 2]));
        let errors = errors.err().unwrap_or_default();
        assert_eq!(
            errors,
            vec![
                "duplicate size 4: an earlier element of `sizes` already lists it".to_owned(),
                "duplicate sizes 2, 4, 6, 8: earlier elements of `sizes` already list them; make the ranges disjoint"
                    .to_owned(),
            ]
        );
        let errors = resolve_tokens(quote!(sizes = [1..=100, 1..=100]))
            .err()
            .unwrap_or_default();
        assert!(errors[0].contains("and 92 more"), "{errors:?}");
    }

    #[test]
    fn empty_list_is_an_error_with_example() {
        let errors = resolve_tokens(quote!(sizes = [])).err().unwrap_or_default();
        assert_eq!(
            errors,
            vec!["`sizes` must not be empty: write e.g. `sizes = [1, 2, 4, 8]`"]
        );
    }

    #[test]
    fn max_size_is_accepted() {
        let sizes = resolve_tokens(quote!(sizes = [65535])).unwrap_or_default();
        assert_eq!(sizes, vec![65535]);
        assert_eq!(lookup_table(&sizes).len(), 65536);
    }

    #[test]
    fn size_limit_is_exactly_u16_max() {
        // The runtime accepts sizes up to `u16::MAX`: the table stores slot
        // indices, at most 65535 sizes exist, so index 65535 (no slot) is
        // never a real one.
        assert_eq!(MAX_SIZE, 65535);
        assert_eq!(resolve_tokens(quote!(sizes = [65535])), Ok(vec![65535]));
        assert_eq!(
            resolve_tokens(quote!(sizes = [65534..=65535])),
            Ok(vec![65534, 65535])
        );
        assert_eq!(
            resolve_tokens(quote!(sizes = [65536])),
            Err(vec![
                "size 65536 is too large: the largest batch size is 65535".to_owned()
            ])
        );
        assert_eq!(
            resolve_tokens(quote!(sizes = [65530..=65536])),
            Err(vec![
                "size 65536 is too large: the largest batch size is 65535".to_owned()
            ])
        );
    }

    #[test]
    fn every_size_up_to_the_limit_has_a_real_slot() {
        let sizes: Vec<usize> = (1..=65535).collect();
        let table = lookup_table(&sizes);
        assert_eq!(table.len(), 65536);
        assert_eq!(table[0], u16::MAX);
        assert_eq!(table[65535], 65534);
        assert!(table[1..].iter().all(|&i| i != u16::MAX));
    }

    #[test]
    fn lookup_table_matches_spec_example() {
        let table = lookup_table(&[1, 2, 4, 8]);
        assert_eq!(table, vec![u16::MAX, 0, 1, 2, 2, 3, 3, 3, 3]);
        assert_eq!(lookup_table(&[3]), vec![u16::MAX, 0, 0, 0]);
        assert_eq!(lookup_table(&[]), vec![u16::MAX]);
    }

    #[test]
    fn describe_folds_runs() {
        let mut sizes = vec![1, 2, 4];
        sizes.extend((8..=256).step_by(8));
        assert_eq!(describe(&sizes), "1, 2, 4, 8..=256 step 8");
        assert_eq!(describe(&[1, 2, 3, 4]), "1..=4");
        assert_eq!(describe(&[5]), "5");
        assert_eq!(describe(&[1, 3]), "1, 3");
        assert_eq!(describe(&[]), "");
    }

    proptest! {
        #[test]
        fn lookup_table_picks_smallest_fitting_size(
            set in proptest::collection::btree_set(1usize..=600, 1..40)
        ) {
            let sizes: Vec<usize> = set.into_iter().collect();
            let table = lookup_table(&sizes);
            let max = sizes[sizes.len() - 1];
            prop_assert_eq!(table.len(), max + 1);
            prop_assert_eq!(table[0], u16::MAX);
            for (n, &entry) in table.iter().enumerate().skip(1) {
                let index = usize::from(entry);
                prop_assert!(sizes[index] >= n);
                prop_assert!(index == 0 || sizes[index - 1] < n);
            }
        }

        #[test]
        fn describe_round_trips_through_the_parser(
            set in proptest::collection::btree_set(1usize..=300, 1..40)
        ) {
            let sizes: Vec<usize> = set.into_iter().collect();
            let text = format!("sizes = [{}]", describe(&sizes));
            let tokens: TokenStream = text.parse().map_err(|e| TestCaseError::fail(format!("{e:?}")))?;
            prop_assert_eq!(resolve_tokens(tokens), Ok(sizes));
        }

        #[test]
        fn random_ranges_resolve_to_their_union(
            ranges in proptest::collection::vec((0u64..300, 0u64..300, 0u64..5), 1..6)
        ) {
            let text = ranges
                .iter()
                .map(|(a, b, s)| format!("{a}..={b} step {s}"))
                .collect::<Vec<_>>()
                .join(", ");
            let tokens: TokenStream = format!("sizes = [{text}]").parse()
                .map_err(|e| TestCaseError::fail(format!("{e:?}")))?;
            let mut expected = std::collections::BTreeSet::new();
            let mut valid = true;
            for &(a, b, s) in &ranges {
                if a == 0 || s == 0 || a > b {
                    valid = false;
                    continue;
                }
                for v in (a..=b).step_by(s as usize) {
                    valid &= expected.insert(v as usize);
                }
            }
            let got = resolve_tokens(tokens);
            if valid {
                prop_assert_eq!(got, Ok(expected.into_iter().collect::<Vec<_>>()));
            } else {
                prop_assert!(got.is_err());
            }
        }
    }
}
