//! A seeded request trace that resembles chat traffic: Poisson arrivals, and prompt and output
//! lengths drawn log-uniformly between their bounds (many short, a long tail of long ones).

use cudagraph::{Error, Result};

/// One request of a trace.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    /// Its index in the trace.
    pub id: usize,
    /// When it arrives, in seconds from the start of the run.
    pub arrival_s: f64,
    /// The prompt's token ids.
    pub prompt: Vec<u32>,
    /// How many tokens to generate (the first one comes from the prompt's last row).
    pub output_len: usize,
}

impl Request {
    /// The positions the request occupies in its KV-cache slot at most: prompt + output - 1
    /// (the last generated token is never fed back). A request always generates at least one
    /// token (the prompt's last row gives it), so an `output_len` of 0 counts as 1.
    pub fn max_positions(&self) -> usize {
        self.prompt
            .len()
            .saturating_add(self.output_len.max(1))
            .saturating_sub(1)
    }
}

/// What [`chat_trace`] draws.
#[derive(Debug, Clone, PartialEq)]
pub struct TraceConfig {
    /// How many requests.
    pub requests: usize,
    /// Mean arrivals per second (Poisson); `f64::INFINITY`: all at time 0.
    pub rate_per_s: f64,
    /// Prompt lengths, inclusive bounds.
    pub prompt: (usize, usize),
    /// Output lengths, inclusive bounds.
    pub output: (usize, usize),
    /// Token ids are drawn from `0..vocab`.
    pub vocab: usize,
    /// The seed: one seed, one trace.
    pub seed: u64,
}

impl Default for TraceConfig {
    /// 256 requests at 32 per second, prompts of 16 to 2048 tokens, outputs of 16 to 512.
    fn default() -> Self {
        Self {
            requests: 256,
            rate_per_s: 32.0,
            prompt: (16, 2048),
            output: (16, 512),
            vocab: 32_000,
            seed: 0,
        }
    }
}

/// SplitMix64 (Steele, Lea, Flood 2014). Written here rather than taken from `rand`: the
/// project does not depend on `rand`, and a benchmark trace must stay the same across
/// versions for a seed, which `rand` does not promise for its generators.
#[derive(Debug, Clone)]
pub(crate) struct SplitMix64(u64);

impl SplitMix64 {
    /// A generator from `seed`.
    pub(crate) fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// The next 64 random bits.
    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)` (53 bits).
    pub(crate) fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Log-uniform integer in `lo..=hi` (`1 <= lo <= hi`).
    fn log_uniform(&mut self, lo: usize, hi: usize) -> usize {
        let (a, b) = ((lo as f64).ln(), ((hi + 1) as f64).ln());
        let v = (a + (b - a) * self.next_f64()).exp().floor() as usize;
        v.clamp(lo, hi)
    }
}

/// The requests of `cfg`, by arrival time. Errors on bounds that make no trace.
///
/// ```
/// use cudagraph_models::serving::{TraceConfig, chat_trace};
/// let cfg = TraceConfig { requests: 8, ..TraceConfig::default() };
/// let trace = chat_trace(&cfg).unwrap();
/// assert_eq!(trace.len(), 8);
/// assert_eq!(trace, chat_trace(&cfg).unwrap(), "one seed, one trace");
/// assert!(trace.windows(2).all(|w| w[0].arrival_s <= w[1].arrival_s));
/// ```
pub fn chat_trace(cfg: &TraceConfig) -> Result<Vec<Request>> {
    const OP: &str = "chat_trace";
    let bounds_ok = |(lo, hi): (usize, usize)| lo >= 1 && lo <= hi;
    if !bounds_ok(cfg.prompt) || !bounds_ok(cfg.output) {
        return Err(Error::invalid(
            OP,
            format!(
                "prompt {:?} and output {:?} lengths must be 1 <= lo <= hi",
                cfg.prompt, cfg.output
            ),
        ));
    }
    if cfg.vocab == 0 || u32::try_from(cfg.vocab).is_err() {
        return Err(Error::invalid(
            OP,
            format!("vocab {} must be in 1..=u32::MAX", cfg.vocab),
        ));
    }
    if cfg.rate_per_s.is_nan() || cfg.rate_per_s <= 0.0 {
        return Err(Error::invalid(
            OP,
            format!(
                "rate {} must be > 0 (infinite: all at once)",
                cfg.rate_per_s
            ),
        ));
    }
    let mut rng = SplitMix64::new(cfg.seed);
    let mut t = 0.0f64;
    let mut out = Vec::with_capacity(cfg.requests);
    for id in 0..cfg.requests {
        if cfg.rate_per_s.is_finite() {
            // Exponential gap: -ln(1 - u) / rate, u in [0, 1).
            t += -(1.0 - rng.next_f64()).ln() / cfg.rate_per_s;
        }
        let prompt_len = rng.log_uniform(cfg.prompt.0, cfg.prompt.1);
        let output_len = rng.log_uniform(cfg.output.0, cfg.output.1);
        let prompt = (0..prompt_len)
            .map(|_| (rng.next_u64() % cfg.vocab as u64) as u32)
            .collect();
        out.push(Request {
            id,
            arrival_s: t,
            prompt,
            output_len,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lengths_stay_in_bounds_and_have_a_long_tail() {
        let cfg = TraceConfig {
            requests: 2000,
            ..TraceConfig::default()
        };
        let trace = chat_trace(&cfg).unwrap();
        let prompts: Vec<usize> = trace.iter().map(|r| r.prompt.len()).collect();
        assert!(prompts.iter().all(|&p| (16..=2048).contains(&p)));
        assert!(trace.iter().all(|r| (16..=512).contains(&r.output_len)));
        let mut sorted = prompts.clone();
        sorted.sort_unstable();
        let (median, p99) = (sorted[1000], sorted[1980]);
        assert!(median < 300, "most prompts are short: median {median}");
        assert!(p99 > 1200, "a long tail: p99 {p99}");
        let span = trace.last().unwrap().arrival_s;
        let rate = 2000.0 / span;
        assert!((24.0..40.0).contains(&rate), "about 32 per second: {rate}");
        let other = chat_trace(&TraceConfig { seed: 1, ..cfg }).unwrap();
        assert_ne!(trace, other, "another seed, another trace");
    }

    #[test]
    fn bad_bounds_are_errors() {
        let bad = [
            TraceConfig {
                prompt: (0, 4),
                ..TraceConfig::default()
            },
            TraceConfig {
                output: (9, 4),
                ..TraceConfig::default()
            },
            TraceConfig {
                vocab: 0,
                ..TraceConfig::default()
            },
            TraceConfig {
                rate_per_s: 0.0,
                ..TraceConfig::default()
            },
            TraceConfig {
                rate_per_s: f64::NAN,
                ..TraceConfig::default()
            },
        ];
        for cfg in bad {
            assert!(chat_trace(&cfg).is_err(), "{cfg:?}");
        }
        let burst = TraceConfig {
            rate_per_s: f64::INFINITY,
            requests: 4,
            ..TraceConfig::default()
        };
        assert!(
            chat_trace(&burst)
                .unwrap()
                .iter()
                .all(|r| r.arrival_s == 0.0)
        );
    }
}
