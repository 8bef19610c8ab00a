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
    if budget == 0 {
        return Err(Error::invalid(
            "advise_sizes",
            "the budget must allow at least one graph",
        ));
    }
    let mut points: Vec<(usize, u64)> = histogram
        .iter()
        .copied()
        .filter(|&(n, c)| n > 0 && c > 0)
        .collect();
    if points.is_empty() {
        return Err(Error::invalid(
            "advise_sizes",
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
    if let Some(&(n, _)) = points.iter().find(|&&(n, _)| n > MAX_CAPTURE_SIZE) {
        return Err(Error::invalid(
            "advise_sizes",
            format!("batch {n} exceeds the largest capturable size {MAX_CAPTURE_SIZE}"),
        ));
    }
    let m = points.len();
    let k_max = budget.min(m);
    // Prefix sums: calls and calls·n, so the cost of serving points i..j (exclusive of j) by
    // size v is v·calls(i..j) − Σ calls·n over i..j.
    let mut calls = vec![0u64; m + 1];
    let mut weighted = vec![0u64; m + 1];
    for (i, &(n, c)) in points.iter().enumerate() {
        calls[i + 1] = calls[i] + c;
        weighted[i + 1] = weighted[i] + c * n as u64;
    }
    let cost = |i: usize, j: usize| -> u64 {
        let v = points[j - 1].0 as u64;
        v * (calls[j] - calls[i]) - (weighted[j] - weighted[i])
    };
    // best[k][j]: least cost of covering points[..j] with k sizes, the last at points[j-1].
    const INF: u64 = u64::MAX;
    let mut best = vec![vec![INF; m + 1]; k_max + 1];
    let mut from = vec![vec![0usize; m + 1]; k_max + 1];
    best[0][0] = 0;
    for k in 1..=k_max {
        for j in 1..=m {
            for i in (k - 1)..j {
                if best[k - 1][i] == INF {
                    continue;
                }
                let c = best[k - 1][i] + cost(i, j);
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
        .ok_or_else(|| Error::invalid("advise_sizes", "no solution"))?;
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
        padded_rows: padded,
        real_rows: weighted[m],
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
