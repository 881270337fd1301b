//! Embeds the Helm chart the repository ships (`deploy/chart/osm`) so `osm install` and `osm mesh
//! upgrade` install exactly the chart of this version. Written as a file list of `include_bytes!` rather
//! than through a directory-embedding macro: the `rerun-if-changed` on the directory makes cargo rebuild
//! whenever any chart file changes, which such macros cannot promise on a stable compiler.

use std::path::{Path, PathBuf};

fn files(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            files(&path, out)?;
        } else {
            out.push(path);
        }
    }
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?);
    let chart = manifest.join("../deploy/chart/osm").canonicalize()?;
    println!("cargo:rerun-if-changed={}", chart.display());
    let mut list = Vec::new();
    files(&chart, &mut list)?;
    list.sort();
    let mut code = String::from(
        "/// The chart's files: path inside the chart, contents.\npub static CHART: &[(&str, &[u8])] = &[\n",
    );
    for path in list {
        let rel = path.strip_prefix(&chart)?.to_string_lossy().into_owned();
        code.push_str(&format!("    ({rel:?}, include_bytes!({:?})),\n", path.display().to_string()));
    }
    code.push_str("];\n");
    std::fs::write(PathBuf::from(std::env::var("OUT_DIR")?).join("chart.rs"), code)?;
    Ok(())
}
