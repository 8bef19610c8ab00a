//! What a serving run is judged by: output tokens per second, time to first token and time
//! per output token (p50 and p99), and how the steps ran.

use super::scheduler::Finished;

/// The `p`-th percentile (0 to 100) of `values`, nearest rank; `None` for no values.
///
/// ```
/// use cudagraph_models::serving::percentile;
/// assert_eq!(percentile(&[3.0, 1.0, 2.0], 50.0), Some(2.0));
/// assert_eq!(percentile(&[1.0, 2.0, 3.0, 4.0], 99.0), Some(4.0));
/// assert_eq!(percentile(&[], 50.0), None);
/// ```
pub fn percentile(values: &[f64], p: f64) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// The figures of one run of a trace in one mode.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RunReport {
    /// The mode's name.
    pub mode: String,
    /// Wall time of the run, idle gaps skipped (seconds).
    pub wall_s: f64,
    /// Output tokens generated.
    pub output_tokens: u64,
    /// Steps run.
    pub steps: u64,
    /// Steps that replayed a graph.
    pub replayed_steps: u64,
    /// Steps the runner sent to its eager fallback (a step no graph covers).
    pub fallbacks: u64,
    /// Padded rows over real rows, across the replayed steps.
    pub padding_waste: f64,
    /// Time to first token of each request (seconds).
    pub ttft_s: Vec<f64>,
    /// Time per output token of each request with two tokens or more (seconds).
    pub tpot_s: Vec<f64>,
    /// The run's floor: each step's weight and KV bytes streamed at the measured memory
    /// bandwidth, summed (seconds).
    pub bound_s: f64,
}

impl RunReport {
    /// Adds the finished requests' timelines.
    pub fn add_requests(&mut self, finished: &[Finished]) {
        for f in finished {
            if let Some(&first) = f.token_times.first() {
                self.ttft_s.push(first - f.arrival_s);
            }
            if let (Some(&first), Some(&last)) = (f.token_times.first(), f.token_times.last())
                && f.token_times.len() >= 2
            {
                self.tpot_s
                    .push((last - first) / (f.token_times.len() - 1) as f64);
            }
            self.output_tokens += f.token_times.len() as u64;
        }
    }

    /// Output tokens per second.
    pub fn tokens_per_s(&self) -> f64 {
        if self.wall_s > 0.0 {
            self.output_tokens as f64 / self.wall_s
        } else {
            0.0
        }
    }

    /// The share of steps that replayed a graph.
    pub fn replayed_share(&self) -> f64 {
        if self.steps == 0 {
            0.0
        } else {
            self.replayed_steps as f64 / self.steps as f64
        }
    }

    /// The table's header (markdown), matching [`row`](Self::row).
    pub fn header() -> String {
        "| mode | output tok/s | TTFT p50 ms | TTFT p99 ms | TPOT p50 ms | TPOT p99 ms | steps | replayed | padding | fallbacks | wall s | floor s | wall / floor |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|".to_string()
    }

    /// One markdown row of the table.
    pub fn row(&self) -> String {
        let ms = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{:.1}", v * 1e3));
        format!(
            "| {} | {:.0} | {} | {} | {} | {} | {} | {:.1}% | {:.1}% | {} | {:.2} | {:.2} | {:.2}x |",
            self.mode,
            self.tokens_per_s(),
            ms(percentile(&self.ttft_s, 50.0)),
            ms(percentile(&self.ttft_s, 99.0)),
            ms(percentile(&self.tpot_s, 50.0)),
            ms(percentile(&self.tpot_s, 99.0)),
            self.steps,
            self.replayed_share() * 100.0,
            self.padding_waste * 100.0,
            self.fallbacks,
            self.wall_s,
            self.bound_s,
            if self.bound_s > 0.0 {
                self.wall_s / self.bound_s
            } else {
                0.0
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_timelines_make_ttft_and_tpot() {
        let mut r = RunReport::default();
        r.add_requests(&[
            Finished {
                request: 0,
                arrival_s: 1.0,
                token_times: vec![1.5, 1.6, 1.8],
                tokens: vec![1, 2, 3],
            },
            Finished {
                request: 1,
                arrival_s: 0.0,
                token_times: vec![0.25],
                tokens: vec![1],
            },
        ]);
        assert_eq!(r.output_tokens, 4);
        assert_eq!(r.ttft_s, [0.5, 0.25]);
        assert_eq!(r.tpot_s.len(), 1, "one token: no time per output token");
        assert!((r.tpot_s[0] - 0.15).abs() < 1e-12);
        r.wall_s = 2.0;
        assert_eq!(r.tokens_per_s(), 2.0);
        assert!(r.row().starts_with("| "));
        assert_eq!(RunReport::header().lines().count(), 2);
    }
}
