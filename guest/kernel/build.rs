//! Relink when the linker script changes (it is passed as a link argument, which cargo does
//! not track by itself).
fn main() {
    println!("cargo:rerun-if-changed=link.ld");
}
