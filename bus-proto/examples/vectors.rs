//! Prints the test vectors in the block format `PROTOCOL.md` uses.
//!
//! `cargo run -p bus-proto --example vectors` after a deliberate wire change;
//! paste the output over the blocks in `PROTOCOL.md` (the `vectors` test then
//! checks the document against the code).

#[path = "../tests/support/vectors.rs"]
#[allow(dead_code, unreachable_pub)]
mod vectors;

fn main() {
    for v in vectors::all() {
        println!("{}", vectors::render(&v));
    }
}
