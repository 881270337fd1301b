//! Bounds on what one proxy's requests may make the control plane hold, and the helper that makes a
//! peer-supplied string safe to log. Every peer is hostile until bounded.

/// Largest request message accepted (tonic refuses larger ones while decoding).
pub const MAX_REQUEST_BYTES: usize = 4 << 20;
/// Names one stream may subscribe to per resource type (a sidecar needs one per cluster or route it sees;
/// far below this even in large meshes).
pub const MAX_NAMES_PER_TYPE: usize = 32_768;
/// Longest resource name accepted (Kubernetes names make ours at most a few hundred bytes).
pub const MAX_NAME_BYTES: usize = 1024;
/// Checks the names of a request: `count` names in all (held + subscribed), each short enough.
pub fn check_names<'a>(count: usize, names: impl IntoIterator<Item = &'a String>) -> Result<(), String> {
    if count > MAX_NAMES_PER_TYPE {
        return Err(format!("{count} resource names for one type; the limit is {MAX_NAMES_PER_TYPE}"));
    }
    if let Some(n) = names.into_iter().find(|n| n.len() > MAX_NAME_BYTES) {
        return Err(format!("a resource name of {} bytes; the limit is {MAX_NAME_BYTES}", n.len()));
    }
    Ok(())
}

/// A string from a peer, fit for a log line (shared with the admission webhooks).
pub use messages::ratelog::peer_str;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn name_bounds() {
        let ok = vec!["a".to_owned(); 3];
        assert!(check_names(3, &ok).is_ok());
        assert!(check_names(MAX_NAMES_PER_TYPE + 1, &ok).unwrap_err().contains("limit is 32768"));
        let long = vec!["n".repeat(MAX_NAME_BYTES + 1)];
        assert!(check_names(1, &long).unwrap_err().contains("1025 bytes"));
    }
}
