//! `config.json`'s RoPE fields: the base and the scaling, read as transformers 5.17 reads them
//! (`standardize_rope_params` and the `_compute_*_parameters` of `modeling_rope_utils.py`).
//!
//! * The parameters are the `rope_scaling` object (transformers 4's name) when it is present and
//!   not empty, else `rope_parameters` (transformers 5's), else none (plain RoPE).
//! * The base is the object's `rope_theta`, else the top-level `rope_theta`, else 10000.
//! * The type is the object's `rope_type`, else its legacy `type`, else `default`.
//! * `llama3` and `yarn` read the original context from a top-level
//!   `original_max_position_embeddings` first (transformers gives that priority), then the
//!   object's, then `max_position_embeddings`; `dynamic` from `max_position_embeddings`.
//!
//! Keys a type does not use are ignored with a warning, as transformers does. `longrope` and
//! any other type are rejected naming the field, as are per-layer-type parameters.

use serde_json::{Map, Value};

use super::error::LoadError;
use super::fields::Fields;
use cudagraph::ops::{RopeScaling, YarnParams};

/// The RoPE of a configuration: its base and its scaling.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Rope {
    pub(super) theta: f32,
    pub(super) scaling: RopeScaling,
}

/// Reads the RoPE fields of `f` for heads of `head_dim`; `max_positions` is
/// `max_position_embeddings` (the family's default when absent).
pub(super) fn parse_rope(
    f: &Fields<'_>,
    head_dim: usize,
    max_positions: usize,
) -> Result<Rope, LoadError> {
    let (name, params) = match (f.get("rope_scaling"), f.get("rope_parameters")) {
        (Some(s), _) if !is_empty_object(s) => ("rope_scaling", Some(s)),
        (_, Some(p)) => ("rope_parameters", Some(p)),
        _ => ("rope_parameters", None),
    };
    let Some(params) = params else {
        return Ok(Rope {
            theta: theta(f, f.f64_opt("rope_theta")?)?,
            scaling: RopeScaling::None,
        });
    };
    let Some(obj) = params.as_object() else {
        return Err(f.err(name, format!("must be an object, got {params}")));
    };
    if obj.values().any(Value::is_object) {
        return Err(f.err(
            name,
            format!("per-layer-type RoPE parameters are not supported (found {params})"),
        ));
    }
    let p = Params {
        outer: f,
        name,
        fields: Fields { path: f.path, obj },
        obj,
    };
    let kind = match p.fields.str_opt("rope_type")? {
        Some(k) => k,
        None => p.fields.str_opt("type")?.unwrap_or("default"),
    };
    if let Some(pr) = p
        .fields
        .f64_opt("partial_rotary_factor")?
        .filter(|&v| v != 1.0)
    {
        return Err(p.err(
            "partial_rotary_factor",
            format!("partial RoPE ({pr}) is not supported"),
        ));
    }
    let theta = match p.fields.f64_opt("rope_theta")? {
        Some(t) => theta(f, Some(t))
            .map_err(|_| p.err("rope_theta", format!("must be finite and > 0, got {t}")))?,
        None => theta(f, f.f64_opt("rope_theta")?)?,
    };
    // The original (pre-training) context of llama3 and yarn.
    let original = || -> Result<f64, LoadError> {
        Ok(match f.usize_opt("original_max_position_embeddings")? {
            Some(top) => top as f64,
            None => match p.fields.usize_opt("original_max_position_embeddings")? {
                Some(v) => v as f64,
                None => max_positions as f64,
            },
        })
    };
    let scaling = match kind {
        "default" => {
            p.warn_unused(kind, &[]);
            RopeScaling::None
        }
        "linear" => {
            p.warn_unused(kind, &["factor"]);
            RopeScaling::Linear {
                factor: p.factor()? as f32,
            }
        }
        "dynamic" => {
            p.warn_unused(kind, &["factor"]);
            RopeScaling::Dynamic {
                factor: p.factor()? as f32,
                original_max_positions: max_positions as f32,
            }
        }
        "llama3" => {
            p.warn_unused(
                kind,
                &[
                    "factor",
                    "low_freq_factor",
                    "high_freq_factor",
                    "original_max_position_embeddings",
                ],
            );
            RopeScaling::Llama3 {
                factor: p.factor()? as f32,
                low_freq_factor: p.required("low_freq_factor")? as f32,
                high_freq_factor: p.required("high_freq_factor")? as f32,
                original_max_positions: original()? as f32,
            }
        }
        "yarn" => {
            p.warn_unused(
                kind,
                &[
                    "factor",
                    "original_max_position_embeddings",
                    "attention_factor",
                    "beta_fast",
                    "beta_slow",
                    "mscale",
                    "mscale_all_dim",
                    "truncate",
                ],
            );
            let original = original()?;
            // transformers: a null factor is the ratio of the two contexts.
            let factor = match p.fields.f64_opt("factor")? {
                Some(v) => v,
                None => max_positions as f64 / original,
            };
            let yarn = YarnParams {
                factor,
                original_max_positions: original,
                beta_fast: p.fields.f64_opt("beta_fast")?,
                beta_slow: p.fields.f64_opt("beta_slow")?,
                mscale: p.fields.f64_opt("mscale")?,
                mscale_all_dim: p.fields.f64_opt("mscale_all_dim")?,
                attention_factor: p.fields.f64_opt("attention_factor")?,
                // Python's `.get("truncate", True)`: absent truncates, an explicit null does not.
                truncate: match p.obj.get("truncate") {
                    Some(Value::Null) => Some(false),
                    _ => p.fields.bool_opt("truncate")?,
                },
            };
            RopeScaling::yarn(&yarn, f64::from(theta), head_dim)
        }
        "longrope" => {
            return Err(p.err(
                "rope_type",
                "RoPE type `longrope` (per-dimension factors, Phi-3) is not supported; supported: default, linear, dynamic, llama3, yarn",
            ));
        }
        other => {
            return Err(p.err(
                "rope_type",
                format!(
                    "RoPE type `{other}` is not supported; supported: default, linear, dynamic, llama3, yarn"
                ),
            ));
        }
    };
    scaling
        .validate("config.json")
        .map_err(|e| p.err("rope_type", e.to_string()))?;
    Ok(Rope { theta, scaling })
}

/// The RoPE base: finite and > 0 (default 10000).
fn theta(f: &Fields<'_>, value: Option<f64>) -> Result<f32, LoadError> {
    let theta = value.unwrap_or(10_000.0);
    if !(theta > 0.0 && (theta as f32).is_finite()) {
        return Err(f.err("rope_theta", format!("must be finite and > 0, got {theta}")));
    }
    Ok(theta as f32)
}

fn is_empty_object(v: &Value) -> bool {
    v.as_object().is_some_and(Map::is_empty)
}

/// The parameters object, with errors naming `rope_scaling.<key>` or `rope_parameters.<key>`.
struct Params<'a> {
    outer: &'a Fields<'a>,
    name: &'static str,
    fields: Fields<'a>,
    obj: &'a Map<String, Value>,
}

impl Params<'_> {
    fn err(&self, key: &str, message: impl Into<String>) -> LoadError {
        self.outer.err(&format!("{}.{key}", self.name), message)
    }

    /// A required number.
    fn required(&self, key: &str) -> Result<f64, LoadError> {
        self.fields
            .f64_opt(key)
            .map_err(|_| self.err(key, "must be a finite number"))?
            .ok_or_else(|| self.err(key, "missing (a number is required for this RoPE type)"))
    }

    /// `factor`: required, > 0.
    fn factor(&self) -> Result<f64, LoadError> {
        let factor = self.required("factor")?;
        if factor <= 0.0 {
            return Err(self.err("factor", format!("must be > 0, got {factor}")));
        }
        Ok(factor)
    }

    /// Warns (as transformers does) about keys the RoPE type does not read.
    fn warn_unused(&self, kind: &str, used: &[&str]) {
        let always = ["rope_type", "type", "rope_theta", "partial_rotary_factor"];
        let unused: Vec<&str> = self
            .obj
            .keys()
            .map(String::as_str)
            .filter(|k| !used.contains(k) && !always.contains(k))
            .collect();
        if !unused.is_empty() {
            tracing::warn!(
                "{}: keys a `{kind}` RoPE does not use, ignored as transformers ignores them: {}",
                self.name,
                unused.join(", ")
            );
        }
    }
}

#[cfg(test)]
pub(super) mod tests {
    use std::path::Path;

    use serde_json::{Value, json};

    use crate::hf::{HfConfig, LoadError, LoadOptions, parse_config};
    use cudagraph::ops::RopeScaling;

    /// A Llama `config.json` with `extra`'s fields added (shared with `generation`'s tests).
    pub(in crate::hf) fn llama(extra: Value) -> Value {
        let mut config = json!({
            "architectures": ["LlamaForCausalLM"],
            "hidden_size": 256,
            "intermediate_size": 512,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "num_hidden_layers": 2,
            "vocab_size": 1000,
            "max_position_embeddings": 4096,
        });
        for (k, v) in extra.as_object().unwrap() {
            config[k] = v.clone();
        }
        config
    }

    /// Parses `config` as `config.json` with the default load options.
    pub(in crate::hf) fn parse(config: &Value) -> Result<HfConfig, LoadError> {
        parse_config(
            Path::new("config.json"),
            &config.to_string(),
            &LoadOptions::default(),
        )
    }

    #[track_caller]
    fn scaling(extra: Value) -> (f32, RopeScaling) {
        let cfg = parse(&llama(extra)).unwrap();
        (cfg.model.rope_theta, cfg.model.rope_scaling)
    }

    /// The field and message of the error `llama(extra)` is rejected with.
    #[track_caller]
    pub(in crate::hf) fn rejected(extra: Value) -> (String, String) {
        match parse(&llama(extra)) {
            Err(LoadError::Config { field, message, .. }) => (field, message),
            other => panic!("expected a config error, got {other:?}"),
        }
    }

    #[test]
    fn llama3_as_llama_3_1_writes_it() {
        let (theta, s) = scaling(json!({
            "rope_theta": 500000.0,
            "rope_scaling": {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                             "original_max_position_embeddings": 8192, "rope_type": "llama3"},
        }));
        assert_eq!(theta, 500_000.0);
        assert_eq!(
            s,
            RopeScaling::Llama3 {
                factor: 8.0,
                low_freq_factor: 1.0,
                high_freq_factor: 4.0,
                original_max_positions: 8192.0
            }
        );
    }

    #[test]
    fn both_spellings_and_the_legacy_type_key_are_read() {
        let linear = RopeScaling::Linear { factor: 2.0 };
        assert_eq!(
            scaling(
                json!({"rope_parameters": {"rope_type": "linear", "factor": 2.0, "rope_theta": 1e6}})
            ),
            (1e6, linear)
        );
        assert_eq!(
            scaling(json!({"rope_scaling": {"type": "linear", "factor": 2.0}})),
            (10_000.0, linear)
        );
        // transformers: `rope_scaling` wins over `rope_parameters`; an empty one does not.
        assert_eq!(
            scaling(json!({"rope_scaling": {"type": "linear", "factor": 2.0},
                           "rope_parameters": {"rope_type": "default"}}))
            .1,
            linear
        );
        assert_eq!(
            scaling(json!({"rope_scaling": {}, "rope_parameters": {"rope_type": "linear", "factor": 2.0}})).1,
            linear
        );
        assert_eq!(scaling(json!({"rope_scaling": null})).1, RopeScaling::None);
        assert_eq!(
            scaling(json!({"rope_parameters": {"rope_type": "default", "rope_theta": 5e5}})),
            (5e5, RopeScaling::None)
        );
    }

    #[test]
    fn dynamic_scales_from_max_position_embeddings() {
        assert_eq!(
            scaling(json!({"rope_scaling": {"rope_type": "dynamic", "factor": 4.0}})).1,
            RopeScaling::Dynamic {
                factor: 4.0,
                original_max_positions: 4096.0
            }
        );
        // Absent: the family's default (Llama: 2048), as transformers' LlamaConfig has it.
        let mut config = llama(json!({"rope_scaling": {"rope_type": "dynamic", "factor": 4.0}}));
        config
            .as_object_mut()
            .unwrap()
            .remove("max_position_embeddings");
        assert_eq!(
            parse(&config).unwrap().model.rope_scaling,
            RopeScaling::Dynamic {
                factor: 4.0,
                original_max_positions: 2048.0
            }
        );
    }

    #[test]
    fn yarn_reads_the_original_context_with_transformers_priority() {
        let params =
            json!({"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 1024});
        let RopeScaling::Yarn {
            factor,
            attention_factor,
            ..
        } = scaling(json!({"rope_scaling": params.clone()})).1
        else {
            panic!()
        };
        assert_eq!(factor, 4.0);
        assert!((attention_factor - (0.1 * 4f32.ln() + 1.0)).abs() < 1e-6);
        // A top-level original_max_position_embeddings has priority over the object's.
        let inner = scaling(json!({"rope_scaling": params.clone()})).1;
        let top =
            scaling(json!({"rope_scaling": params, "original_max_position_embeddings": 64})).1;
        assert_ne!(inner, top);
        // No factor: the ratio of the two contexts (4096 / 1024).
        let ratio = scaling(json!({"rope_scaling": {"rope_type": "yarn", "factor": null,
                                                     "original_max_position_embeddings": 1024}}));
        assert!(matches!(ratio.1, RopeScaling::Yarn { factor, .. } if factor == 4.0));
    }

    #[test]
    fn unsupported_or_malformed_rope_is_named() {
        let (field, message) = rejected(json!({"rope_scaling": {"rope_type": "longrope",
            "short_factor": [1.0], "long_factor": [1.0], "original_max_position_embeddings": 4096}}));
        assert_eq!(field, "rope_scaling.rope_type");
        assert!(message.contains("longrope"), "{message}");
        let (field, _) = rejected(json!({"rope_parameters": {"rope_type": "su"}}));
        assert_eq!(field, "rope_parameters.rope_type");
        let (field, message) = rejected(json!({"rope_scaling": {"rope_type": "linear"}}));
        assert_eq!(field, "rope_scaling.factor");
        assert!(message.contains("missing"), "{message}");
        let (field, _) = rejected(
            json!({"rope_scaling": {"rope_type": "llama3", "factor": 8.0,
            "low_freq_factor": 1.0, "original_max_position_embeddings": 8192}}),
        );
        assert_eq!(field, "rope_scaling.high_freq_factor");
        let (field, _) = rejected(json!({"rope_scaling": {"rope_type": "linear", "factor": -1.0}}));
        assert_eq!(field, "rope_scaling.factor");
        let (field, _) = rejected(
            json!({"rope_scaling": {"rope_type": "llama3", "factor": 8.0,
            "low_freq_factor": 4.0, "high_freq_factor": 1.0, "original_max_position_embeddings": 8192}}),
        );
        assert_eq!(field, "rope_scaling.rope_type");
        let (field, _) =
            rejected(json!({"rope_parameters": {"full_attention": {"rope_type": "default"}}}));
        assert_eq!(field, "rope_parameters");
        let (field, _) = rejected(
            json!({"rope_parameters": {"rope_type": "default", "partial_rotary_factor": 0.5}}),
        );
        assert_eq!(field, "rope_parameters.partial_rotary_factor");
        let (field, _) = rejected(json!({"rope_scaling": "linear"}));
        assert_eq!(field, "rope_scaling");
        let (field, _) = rejected(json!({"rope_theta": -1.0}));
        assert_eq!(field, "rope_theta");
    }

    /// transformers' own frequencies (`scripts/rope_golden.py`, run on the GPU machine with
    /// transformers 5.17) against the loader's parse and [`RopeScaling::inv_freq`]: a config as
    /// a checkpoint writes it, every frequency and the attention factor.
    #[test]
    fn frequencies_match_transformers_own_numbers() {
        let golden: Value =
            serde_json::from_str(include_str!("testdata/rope_golden.json")).unwrap();
        let base = |arch: &str, hidden: usize, head_dim: usize, max_pos: usize| {
            json!({
                "architectures": [arch], "hidden_size": hidden, "intermediate_size": 512,
                "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": head_dim,
                "num_hidden_layers": 1, "vocab_size": 1000, "max_position_embeddings": max_pos,
            })
        };
        let configs = [
            ("llama3_3_1", {
                let mut c = base("LlamaForCausalLM", 4096, 128, 131072);
                c["rope_theta"] = json!(500000.0);
                c["rope_scaling"] = json!({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                    "high_freq_factor": 4.0, "original_max_position_embeddings": 8192});
                c
            }),
            ("yarn_qwen3", {
                let mut c = base("Qwen3ForCausalLM", 4096, 128, 131072);
                c["rope_parameters"] = json!({"rope_type": "yarn", "factor": 4.0,
                    "original_max_position_embeddings": 32768, "rope_theta": 1e6});
                c
            }),
            ("yarn_mscale_untruncated", {
                let mut c = base("Qwen3ForCausalLM", 2048, 64, 163840);
                c["rope_parameters"] = json!({"rope_type": "yarn", "factor": 40.0,
                    "original_max_position_embeddings": 4096, "rope_theta": 10000.0, "mscale": 0.707,
                    "mscale_all_dim": 1.0, "truncate": false, "beta_fast": 16, "beta_slow": 2});
                c
            }),
            ("dynamic_4096", {
                let mut c = base("LlamaForCausalLM", 2048, 64, 2048);
                c["rope_scaling"] = json!({"type": "dynamic", "factor": 2.0});
                c
            }),
            ("linear_4", {
                let mut c = base("LlamaForCausalLM", 2048, 64, 2048);
                c["rope_scaling"] = json!({"rope_type": "linear", "factor": 4.0});
                c
            }),
        ];
        let cases = golden["cases"].as_array().unwrap();
        assert_eq!(cases.len(), configs.len());
        for (name, config) in configs {
            let case = cases.iter().find(|c| c["name"] == name).unwrap();
            let cfg = parse(&config).unwrap_or_else(|e| panic!("{name}: {e}"));
            let (theta, scaling) = (cfg.model.rope_theta, cfg.model.rope_scaling);
            let head_dim = cfg.model.head_dim;
            let want: Vec<f64> = case["inv_freq"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap())
                .collect();
            assert_eq!(want.len(), head_dim / 2, "{name}");
            // The frequency at the golden sequence length (dynamic), else any position.
            let pos = case["seq_len"].as_u64().map_or(0, |l| l as usize - 1);
            for (i, &w) in want.iter().enumerate() {
                let got = f64::from(scaling.inv_freq(theta, i, head_dim, pos, 0));
                assert!(
                    (got - w).abs() <= 2e-6 * w.abs(),
                    "{name}: pair {i}: ours {got:e}, transformers {w:e}"
                );
            }
            let attn = case["attention_factor"].as_f64().unwrap();
            assert!(
                (f64::from(scaling.attention_factor()) - attn).abs() <= 1e-6,
                "{name}: attention factor {} vs transformers {attn}",
                scaling.attention_factor()
            );
        }
    }
}
