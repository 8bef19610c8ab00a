//! Host-side weights of a [`Llama`](super::llama::Llama) in the layout its forward uses
//! (q/k/v and gate/up concatenated), bf16: what a checkpoint loader produces and
//! [`Llama::from_weights`](super::llama::Llama::from_weights) uploads.

use half::bf16;

use super::llama_config::LlamaConfig;
use cudagraph::{Error, Result};

/// A bf16 tensor on the host: row-major values and their dimensions.
#[derive(Debug, Clone, PartialEq)]
pub struct HostTensor {
    /// The dimensions.
    pub dims: Vec<usize>,
    /// The values, row-major; `dims.iter().product()` of them.
    pub data: Vec<bf16>,
}

impl HostTensor {
    /// A tensor from its dimensions and values; an error when the counts differ.
    pub fn new(dims: &[usize], data: Vec<bf16>) -> Result<Self> {
        let numel: usize = dims.iter().product();
        if numel != data.len() {
            return Err(Error::invalid(
                "HostTensor",
                format!(
                    "{} values for dimensions {dims:?} ({numel} elements)",
                    data.len()
                ),
            ));
        }
        Ok(Self {
            dims: dims.to_vec(),
            data,
        })
    }

    /// Concatenates tensors along their first dimension (their other dimensions must agree).
    pub fn concat_rows(parts: &[HostTensor]) -> Result<Self> {
        let Some(first) = parts.first() else {
            return Err(Error::invalid(
                "HostTensor::concat_rows",
                "nothing to concatenate",
            ));
        };
        let tail = first.dims.get(1..).unwrap_or(&[]);
        let mut rows = 0;
        let mut data = Vec::with_capacity(parts.iter().map(|p| p.data.len()).sum());
        for part in parts {
            if part.dims.is_empty() || part.dims.get(1..).unwrap_or(&[]) != tail {
                return Err(Error::invalid(
                    "HostTensor::concat_rows",
                    format!(
                        "dimensions {:?} and {:?} differ past the first",
                        first.dims, part.dims
                    ),
                ));
            }
            rows += part.dims[0];
            data.extend_from_slice(&part.data);
        }
        let mut dims = vec![rows];
        dims.extend_from_slice(tail);
        Self::new(&dims, data)
    }

    /// The values as f32.
    pub fn to_f32(&self) -> Vec<f32> {
        self.data.iter().map(|v| v.to_f32()).collect()
    }
}

/// One decoder layer's weights.
#[derive(Debug, Clone, PartialEq)]
pub struct LayerWeights {
    /// `input_layernorm`: `[hidden]`.
    pub attn_norm: HostTensor,
    /// `q_proj`, `k_proj`, `v_proj` stacked: `[(q_heads + 2 kv_heads) head_dim, hidden]`.
    pub qkv: HostTensor,
    /// Their biases, stacked likewise: `[(q_heads + 2 kv_heads) head_dim]` (when
    /// [`LlamaConfig::qkv_bias`]).
    pub qkv_bias: Option<HostTensor>,
    /// `q_norm`: `[head_dim]` (when [`LlamaConfig::qk_norm`]).
    pub q_norm: Option<HostTensor>,
    /// `k_norm`: `[head_dim]` (when [`LlamaConfig::qk_norm`]).
    pub k_norm: Option<HostTensor>,
    /// `o_proj`: `[hidden, q_heads head_dim]`.
    pub o_proj: HostTensor,
    /// Its bias: `[hidden]` (when [`LlamaConfig::o_bias`]).
    pub o_bias: Option<HostTensor>,
    /// `post_attention_layernorm`: `[hidden]`.
    pub mlp_norm: HostTensor,
    /// `gate_proj` then `up_proj`: `[2 intermediate, hidden]`.
    pub gate_up: HostTensor,
    /// `down_proj`: `[hidden, intermediate]`.
    pub down: HostTensor,
}

/// Every weight of a model, on the host.
#[derive(Debug, Clone, PartialEq)]
pub struct LlamaWeights {
    /// `embed_tokens`: `[vocab, hidden]`.
    pub embed: HostTensor,
    /// The decoder layers, in order.
    pub layers: Vec<LayerWeights>,
    /// The final norm: `[hidden]`.
    pub final_norm: HostTensor,
    /// `lm_head`: `[vocab, hidden]`, `None` when the embedding is tied
    /// ([`LlamaConfig::tie_embeddings`]).
    pub lm_head: Option<HostTensor>,
}

/// Checks one tensor's presence and dimensions; `what` names it.
fn check_one(what: &str, t: Option<&HostTensor>, expected: Option<&[usize]>) -> Result<()> {
    match (t, expected) {
        (None, None) => Ok(()),
        (Some(t), Some(dims)) if t.dims == dims => Ok(()),
        (Some(t), Some(dims)) => Err(Error::invalid(
            "LlamaWeights",
            format!("`{what}` has dimensions {:?}, expected {dims:?}", t.dims),
        )),
        (None, Some(_)) => Err(Error::invalid(
            "LlamaWeights",
            format!("`{what}` is missing: the configuration needs it"),
        )),
        (Some(_), None) => Err(Error::invalid(
            "LlamaWeights",
            format!("`{what}` is present, but the configuration has no place for it"),
        )),
    }
}

impl LlamaWeights {
    /// Checks every tensor's presence and dimensions against `cfg`; the error names the first
    /// tensor that differs.
    pub fn check(&self, cfg: &LlamaConfig) -> Result<()> {
        let h = cfg.hidden;
        let d = cfg.head_dim;
        check_one("embed", Some(&self.embed), Some(&[cfg.vocab, h]))?;
        check_one("final_norm", Some(&self.final_norm), Some(&[h]))?;
        let head = [cfg.vocab, h];
        let head = (!cfg.tie_embeddings).then_some(&head[..]);
        check_one("lm_head", self.lm_head.as_ref(), head)?;
        if self.layers.len() != cfg.layers {
            return Err(Error::invalid(
                "LlamaWeights",
                format!(
                    "{} layers, the configuration has {}",
                    self.layers.len(),
                    cfg.layers
                ),
            ));
        }
        let qkv = cfg.qkv_width();
        for (i, l) in self.layers.iter().enumerate() {
            let name = |t: &str| format!("layers.{i}.{t}");
            check_one(&name("attn_norm"), Some(&l.attn_norm), Some(&[h]))?;
            check_one(&name("qkv"), Some(&l.qkv), Some(&[qkv, h]))?;
            let qkv_bias = [qkv];
            check_one(
                &name("qkv_bias"),
                l.qkv_bias.as_ref(),
                cfg.qkv_bias.then_some(&qkv_bias[..]),
            )?;
            let norm = [d];
            let qk_norm = cfg.qk_norm.then_some(&norm[..]);
            check_one(&name("q_norm"), l.q_norm.as_ref(), qk_norm)?;
            check_one(&name("k_norm"), l.k_norm.as_ref(), qk_norm)?;
            check_one(&name("o_proj"), Some(&l.o_proj), Some(&[h, cfg.q_width()]))?;
            let hidden = [h];
            check_one(
                &name("o_bias"),
                l.o_bias.as_ref(),
                cfg.o_bias.then_some(&hidden[..]),
            )?;
            check_one(&name("mlp_norm"), Some(&l.mlp_norm), Some(&[h]))?;
            check_one(
                &name("gate_up"),
                Some(&l.gate_up),
                Some(&[2 * cfg.intermediate, h]),
            )?;
            check_one(&name("down"), Some(&l.down), Some(&[h, cfg.intermediate]))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(dims: &[usize], start: f32) -> HostTensor {
        let n: usize = dims.iter().product();
        let data = (0..n).map(|i| bf16::from_f32(start + i as f32)).collect();
        HostTensor::new(dims, data).unwrap()
    }

    #[test]
    fn new_checks_the_count() {
        assert!(HostTensor::new(&[2, 3], vec![bf16::ZERO; 6]).is_ok());
        assert!(HostTensor::new(&[2, 3], vec![bf16::ZERO; 5]).is_err());
    }

    #[test]
    fn concat_rows_stacks() {
        let c = HostTensor::concat_rows(&[t(&[1, 2], 0.0), t(&[2, 2], 10.0)]).unwrap();
        assert_eq!(c.dims, vec![3, 2]);
        assert_eq!(c.to_f32(), vec![0.0, 1.0, 10.0, 11.0, 12.0, 13.0]);
        let b = HostTensor::concat_rows(&[t(&[2], 0.0), t(&[3], 5.0)]).unwrap();
        assert_eq!(b.dims, vec![5]);
        assert!(HostTensor::concat_rows(&[t(&[1, 2], 0.0), t(&[1, 3], 0.0)]).is_err());
        assert!(HostTensor::concat_rows(&[]).is_err());
    }
}
