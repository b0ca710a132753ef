//! Links the shim with `-z nodelete`: a host's `dlclose` must never unmap code that the sender
//! thread (or an atexit/atfork handler we registered) may still run.
fn main() {
    println!("cargo:rustc-cdylib-link-arg=-Wl,-z,nodelete");
    println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,libp11trace_shim.so");
}
