//! Size advice: from a histogram of batch sizes seen in real traffic and a budget of K graphs,
//! the size list that minimises the expected padded rows (exact dynamic programming).
//!
//! Padding a batch of `n` to a captured size `s >= n` computes `s - n` rows for nothing. Only
//! sizes equal to an observed `n` can be optimal (a size between two observed values can be
//! lowered to the one below without making any batch pad more), so the search runs over the
//! `m` distinct observed values: O(m² · K) time, O(m · K) memory.

use std::fmt;

use crate::dispatch::MAX_CAPTURE_SIZE;
use crate::error::{Error, Result};

/// The advised sizes and what they would have cost on the histogram.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SizeAdvice {
    /// The sizes, ascending; the largest is the largest batch observed.
    pub sizes: Vec<usize>,
    /// Padded rows the histogram's calls would compute with these sizes.
    pub padded_rows: u64,
    /// Real rows of the histogram's calls.
    pub real_rows: u64,
}

impl SizeAdvice {
    /// Padded rows over real rows.
    pub fn waste(&self) -> f64 {
        if self.real_rows == 0 {
            0.0
        } else {
            self.padded_rows as f64 / self.real_rows as f64
        }
    }

    /// The attribute to paste: `#[cuda_graph(sizes = [...])]`.
    pub fn attribute(&self) -> String {
        let list: Vec<String> = self.sizes.iter().map(usize::to_string).collect();
        format!("#[cuda_graph(sizes = [{}])]", list.join(", "))
    }
}

impl fmt::Display for SizeAdvice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}  // {} graphs, padding waste {:.2}% on the recorded traffic",
            self.attribute(),
            self.sizes.len(),
            self.waste() * 100.0
        )
    }
}

/// Padded rows of `histogram` (`(n, calls)` pairs) under `sizes` (ascending); `None` if some
/// `n` with calls exceeds the largest size.
pub fn padded_rows(histogram: &[(usize, u64)], sizes: &[usize]) -> Option<u64> {
    let mut total = 0u64;
    for &(n, calls) in histogram.iter().filter(|h| h.1 > 0) {
        let s = sizes.iter().copied().find(|&s| s >= n)?;
        total += calls * (s - n) as u64;
    }
    Some(total)
}

/// The at most `budget` sizes minimising padded rows over `histogram` (`(n, calls)` pairs; any
/// order, repeated `n` are summed, zero counts ignored).
pub fn advise_sizes(histogram: &[(usize, u64)], budget: usize) -> Result<SizeAdvice> {
    advise_points("advise_sizes", histogram, budget, 1, Some(MAX_CAPTURE_SIZE))
}

/// The buckets of a bucketed host value or input dimension (`buckets = [name = [..]]`) that
/// minimise the rounding up over `histogram` (`(value, calls)` pairs, e.g.
/// [`KeyHistogram::pairs`](crate::KeyHistogram::pairs)), at most `budget` of them: the same
/// search as [`advise_sizes`], over values from 0 up and with no capture-size limit.
pub fn advise_buckets(
    name: &'static str,
    histogram: &[(usize, u64)],
    budget: usize,
) -> Result<BucketAdvice> {
    let advice = advise_points("advise_buckets", histogram, budget, 0, None)?;
    Ok(BucketAdvice { name, advice })
}

/// Advised buckets of one key component: [`advise_buckets`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BucketAdvice {
    /// The component as the attribute names it (`max_context`, `block_tables[1]`).
    pub name: &'static str,
    /// The buckets (in `sizes`) and their rounding on the histogram (`padded_rows`: the sum
    /// of `bucket - value` over calls; `real_rows`: the sum of the values).
    pub advice: SizeAdvice,
}

impl BucketAdvice {
    /// The attribute option to paste: `buckets = [name = [...]]`.
    pub fn attribute(&self) -> String {
        let list: Vec<String> = self.advice.sizes.iter().map(usize::to_string).collect();
        format!("buckets = [{} = [{}]]", self.name, list.join(", "))
    }
}

impl fmt::Display for BucketAdvice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}  // {} buckets, rounding waste {:.2}% on the recorded calls",
            self.attribute(),
            self.advice.sizes.len(),
            self.advice.waste() * 100.0
        )
    }
}

/// The search behind [`advise_sizes`] and [`advise_buckets`]: `op` names the caller in
/// errors, values below `least` are ignored, values above `most` refused.
fn advise_points(
    op: &'static str,
    histogram: &[(usize, u64)],
    budget: usize,
    least: usize,
    most: Option<usize>,
) -> Result<SizeAdvice> {
    if budget == 0 {
        return Err(Error::invalid(
            op,
            "the budget must allow at least one graph",
        ));
    }
    let mut points: Vec<(usize, u64)> = histogram
        .iter()
        .copied()
        .filter(|&(n, c)| n >= least && c > 0)
        .collect();
    if points.is_empty() {
        return Err(Error::invalid(
            op,
            "no calls recorded: run some traffic first",
        ));
    }
    points.sort_unstable();
    points.dedup_by(|b, a| {
        if a.0 == b.0 {
            a.1 += b.1;
            true
        } else {
            false
        }
    });
    if let Some(most) = most
        && let Some(&(n, _)) = points.iter().find(|&&(n, _)| n > most)
    {
        return Err(Error::invalid(
            op,
            format!("batch {n} exceeds the largest capturable size {most}"),
        ));
    }
    let m = points.len();
    let k_max = budget.min(m);
    // Prefix sums: calls and calls·n, so the cost of serving points i..j (exclusive of j) by
    // size v is v·calls(i..j) − Σ calls·n over i..j. In u128 (a bucketed value may be any
    // usize), saturating: only absurd histograms (sums past 2^128) reach the limit, and they get
    // an approximate answer rather than a panic.
    let mut calls = vec![0u128; m + 1];
    let mut weighted = vec![0u128; m + 1];
    for (i, &(n, c)) in points.iter().enumerate() {
        calls[i + 1] = calls[i].saturating_add(u128::from(c));
        weighted[i + 1] = weighted[i].saturating_add(u128::from(c) * n as u128);
    }
    let cost = |i: usize, j: usize| -> u128 {
        let v = points[j - 1].0 as u128;
        v.saturating_mul(calls[j] - calls[i])
            .saturating_sub(weighted[j].saturating_sub(weighted[i]))
    };
    // best[k][j]: least cost of covering points[..j] with k sizes, the last at points[j-1].
    const INF: u128 = u128::MAX;
    let mut best = vec![vec![INF; m + 1]; k_max + 1];
    let mut from = vec![vec![0usize; m + 1]; k_max + 1];
    best[0][0] = 0;
    for k in 1..=k_max {
        for j in 1..=m {
            for i in (k - 1)..j {
                if best[k - 1][i] == INF {
                    continue;
                }
                let c = best[k - 1][i].saturating_add(cost(i, j));
                if c < best[k][j] {
                    best[k][j] = c;
                    from[k][j] = i;
                }
            }
        }
    }
    let (k_best, padded) = (1..=k_max)
        .map(|k| (k, best[k][m]))
        .min_by_key(|&(k, c)| (c, k))
        .ok_or_else(|| Error::invalid(op, "no solution"))?;
    let mut sizes = Vec::with_capacity(k_best);
    let (mut k, mut j) = (k_best, m);
    while k > 0 {
        sizes.push(points[j - 1].0);
        j = from[k][j];
        k -= 1;
    }
    sizes.reverse();
    Ok(SizeAdvice {
        sizes,
        padded_rows: u64::try_from(padded).unwrap_or(u64::MAX),
        real_rows: u64::try_from(weighted[m]).unwrap_or(u64::MAX),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Every subset of the observed values (containing the largest) of at most `budget`
    /// elements: the exhaustive optimum.
    fn brute_force(histogram: &[(usize, u64)], budget: usize) -> u64 {
        let mut values: Vec<usize> = histogram.iter().filter(|h| h.1 > 0).map(|h| h.0).collect();
        values.sort_unstable();
        values.dedup();
        let top = *values.last().unwrap();
        let rest = &values[..values.len() - 1];
        let mut best = u64::MAX;
        for mask in 0u32..(1 << rest.len()) {
            if mask.count_ones() as usize + 1 > budget {
                continue;
            }
            let mut sizes: Vec<usize> = (0..rest.len())
                .filter(|i| mask & (1 << i) != 0)
                .map(|i| rest[i])
                .collect();
            sizes.push(top);
            best = best.min(padded_rows(histogram, &sizes).unwrap());
        }
        best
    }

    #[test]
    fn single_graph_is_the_largest_batch() {
        let advice = advise_sizes(&[(3, 10), (7, 1)], 1).unwrap();
        assert_eq!(advice.sizes, [7]);
        assert_eq!(advice.padded_rows, 40);
        assert_eq!(advice.real_rows, 37);
        assert_eq!(advice.attribute(), "#[cuda_graph(sizes = [7])]");
    }

    #[test]
    fn enough_budget_means_no_padding() {
        let advice = advise_sizes(&[(1, 5), (33, 2), (9, 4)], 8).unwrap();
        assert_eq!(advice.sizes, [1, 9, 33]);
        assert_eq!(advice.padded_rows, 0);
    }

    #[test]
    fn buckets_take_zero_and_values_past_the_capture_limit() {
        // 0 is a value (a context of nothing cached yet); 1 << 20 is past any batch size.
        let hist = [(0, 5), (512, 10), (700, 1), (1 << 20, 2)];
        let advice = advise_buckets("max_context", &hist, 3).unwrap();
        assert_eq!(
            advice.advice.sizes,
            [0, 700, 1 << 20],
            "0 is a bucket of its own"
        );
        assert_eq!(advice.advice.padded_rows, 10 * 188);
        assert_eq!(
            advice.attribute(),
            "buckets = [max_context = [0, 700, 1048576]]"
        );
        let two = advise_buckets("max_context", &hist, 2).unwrap();
        assert_eq!(
            two.advice.sizes,
            [700, 1 << 20],
            "one bucket less: 512 and 700 merge"
        );
        assert_eq!(two.advice.padded_rows, 5 * 700 + 10 * 188);
        // Huge values and counts do not overflow the search.
        let huge = advise_buckets("x", &[(usize::MAX, u64::MAX), (1, u64::MAX)], 1).unwrap();
        assert_eq!(huge.advice.sizes, [usize::MAX]);
        assert_eq!(huge.advice.padded_rows, u64::MAX, "saturates");
        assert!(advise_buckets("x", &[], 2).is_err());
        assert!(advise_buckets("x", &[(4, 1)], 0).is_err());
    }

    #[test]
    fn bad_input_is_an_error() {
        assert!(advise_sizes(&[(3, 1)], 0).is_err());
        assert!(advise_sizes(&[], 4).is_err());
        assert!(advise_sizes(&[(0, 9)], 4).is_err());
        assert!(advise_sizes(&[(MAX_CAPTURE_SIZE + 1, 1)], 4).is_err());
    }

    proptest! {
        #[test]
        fn matches_brute_force(
            histogram in prop::collection::vec((1usize..300, 0u64..50), 1..11),
            budget in 1usize..6,
        ) {
            prop_assume!(histogram.iter().any(|h| h.1 > 0));
            let advice = advise_sizes(&histogram, budget).unwrap();
            prop_assert!(advice.sizes.len() <= budget);
            prop_assert!(advice.sizes.windows(2).all(|w| w[0] < w[1]));
            prop_assert_eq!(padded_rows(&histogram, &advice.sizes), Some(advice.padded_rows));
            prop_assert_eq!(advice.padded_rows, brute_force(&histogram, budget));
        }
    }
}
