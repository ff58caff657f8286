//! `e2b-emulator`: placeholder while the emulator is being written.
fn main() {}
