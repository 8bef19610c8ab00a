use cudagraph::Runtime;

fn main() {
    let rt = Runtime::new(0).unwrap();
    // Two threads driving one stream would interleave launches (and one could join the other's
    // capture): a `Runtime` is `Send`, not `Sync`.
    std::thread::scope(|s| {
        s.spawn(|| rt.synchronize());
        s.spawn(|| rt.synchronize());
    });
}
