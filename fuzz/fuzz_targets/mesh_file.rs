//! Fuzzes the mesh-file parser: any bytes must give objects or an error, never a panic, a hang or a blow-up
//! in memory. Run from `fuzz/`:
//! `mkdir -p corpus/mesh_file && RUSTC_BOOTSTRAP=1 cargo fuzz run mesh_file corpus/mesh_file seeds -- -max_total_time=300`.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = k8s::yaml_dir::parse_file(text);
    }
});
