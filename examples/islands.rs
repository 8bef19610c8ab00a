//! Eager islands: a forward graphed around what a graph can't hold. Its middle op reads a host
//! value that changes every call (here the longest context of the batch, which a real attention
//! kernel would size its grid by) and synchronises with the host; `islands.eager` runs it
//! eagerly between two graph segments at every replay, and the rest replays as graphs.
//!
//! ```text
//! cargo run --release --example islands
//! CUDAGRAPH_EAGER=1 cargo run --release --example islands   # every call eager, same path
//! ```
use cudagraph::half::bf16;
use cudagraph::{DType, InputSpec, Islands, Result, Runtime, Tensor, cuda_graph, ops};

struct Model {
    w: Tensor,
}

impl Model {
    /// `(x + w)`, then an island that adds the call's longest context to every value after a
    /// download (a synchronisation: no graph can hold it), then `* 2`.
    #[cuda_graph(sizes = [1, 2, 4, 8])]
    fn forward(&self, rt: &Runtime, x: &Tensor, islands: &Islands<(u32,)>) -> Result<Tensor> {
        let h = ops::add_bias(rt, x, &self.w)?;
        let h = islands.eager(rt, [&h], |rt, [h], &(longest,)| {
            let host = rt.download::<bf16>(h)?; // a host sync, every call
            let shifted: Vec<bf16> = host
                .iter()
                .map(|v| bf16::from_f32(v.to_f32() + longest as f32))
                .collect();
            rt.upload(&shifted, h.shape())
        })?;
        ops::scale(rt, &h, 2.0)
    }
}

fn main() -> Result<()> {
    let rt = match Runtime::new(0) {
        Ok(rt) => rt,
        Err(e) => {
            println!("islands: no GPU available ({e}); nothing to run.");
            std::process::exit(1);
        }
    };
    let d = 8;
    let model = Model {
        w: rt.upload(&vec![bf16::from_f32(1.0); d], &[d])?,
    };
    // Built with the live value its warm-ups and captures run with.
    let mut graphs = model.forward_graphs(&rt, [InputSpec::new(DType::BF16, &[d])?], (0,))?;
    let x = rt.zeros(&[3, d], DType::BF16)?;
    for longest in [17u32, 40, 3] {
        let out = graphs.run_live([&x], &(), &(longest,))?; // the value of this call
        let first = rt.download_f32(&out)?[0];
        println!(
            "longest {longest:>2}: first value {first} (= (0 + 1 + {longest}) * 2), {}",
            if out.replayed() {
                "replayed: 2 segments around the island"
            } else {
                "run eagerly"
            }
        );
    }
    println!("{}", graphs.stats());
    Ok(())
}
