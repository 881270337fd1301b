//! Stable error codes of every user-visible failure: each with a one-line cause and fix. Logged as the
//! `error_code` field, counted in `osm_error_err_code_count{err_code}`, listed by `osm support error-info`
//! and in `docs/error-codes.md` (generated from [`CODES`]; a test keeps the two equal).
//!
//! Ranges follow OSM's: E1000 files and start-up, E2000 traffic policy, E4000 certificates and MeshConfig,
//! E5000 xDS and sidecars, E7000 admission webhooks.

use crate::policy::codes as policy;

/// One code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ErrorCode {
    pub code: &'static str,
    /// What happened.
    pub cause: &'static str,
    /// What to do about it.
    pub fix: &'static str,
}

/// A mesh directory file cannot be read or parsed; what it defined before stays in force.
pub const MESH_FILE_INVALID: &str = "E1001";
/// The mesh CA cannot be used (state directory, `--ca-cert`/`--ca-key`, or the `osm-ca-bundle` Secret).
pub const CA_UNUSABLE: &str = "E4001";
/// A MeshConfig has fields out of range; its last good version stays in force.
pub const MESH_CONFIG_INVALID: &str = "E4152";
/// A set of MeshRootCertificates cannot be put in force; the roots in force stay.
pub const ROOTS_REFUSED: &str = "E4016";
/// A sidecar connected whose proxy UUID matches no pod of the mesh.
pub const PROXY_UNKNOWN: &str = "E5001";
/// A sidecar's certificate names another service account than its pod runs as.
pub const PROXY_IDENTITY_MISMATCH: &str = "E5002";
/// Two pods carry the same proxy UUID.
pub const PROXY_DUPLICATE: &str = "E5003";
/// A sidecar refused (NACKed) configuration.
pub const PROXY_NACK: &str = "E5004";
/// A connection to the ADS port failed its TLS handshake.
pub const ADS_HANDSHAKE_FAILED: &str = "E5005";
/// A built configuration names a resource it does not carry; it is not sent.
pub const SNAPSHOT_INCONSISTENT: &str = "E5006";

/// Every code, in order.
pub const CODES: &[ErrorCode] = &[
    ErrorCode {
        code: MESH_FILE_INVALID,
        cause: "A file of the mesh directory cannot be read or parsed (YAML syntax, an unknown field or kind, an invalid name); its previous objects stay in force.",
        fix: "Fix the file: the log line names it and what is wrong. Write files by renaming a complete temporary file into place.",
    },
    ErrorCode {
        code: policy::ROUTE_GROUP_NOT_FOUND,
        cause: "A TrafficTarget rule names an HTTPRouteGroup that does not exist in the TrafficTarget's namespace.",
        fix: "Create the HTTPRouteGroup in that namespace, or correct the rule's name.",
    },
    ErrorCode {
        code: policy::ROUTE_GROUP_NO_MATCH,
        cause: "An HTTPRouteGroup has no matches, so it allows nothing.",
        fix: "Add matches (pathRegex, methods, headers) to the HTTPRouteGroup.",
    },
    ErrorCode {
        code: policy::MULTIPLE_SPLITS,
        cause: "More than one TrafficSplit names the same apex Service; only the first by name is used.",
        fix: "Keep one TrafficSplit per apex Service.",
    },
    ErrorCode {
        code: policy::INVALID_DESTINATION_KIND,
        cause: "A TrafficTarget's destination is not a ServiceAccount.",
        fix: "Set spec.destination.kind to ServiceAccount.",
    },
    ErrorCode {
        code: policy::INVALID_SOURCE_KIND,
        cause: "A TrafficTarget source is not a ServiceAccount.",
        fix: "Set each spec.sources[].kind to ServiceAccount.",
    },
    ErrorCode {
        code: policy::TARGET_NAMESPACE_MISMATCH,
        cause: "A TrafficTarget lives in another namespace than its destination ServiceAccount, or names no destination namespace (never read as its own).",
        fix: "Move the TrafficTarget into the destination's namespace.",
    },
    ErrorCode {
        code: policy::TARGET_NO_RULES,
        cause: "A TrafficTarget has no rules, so it allows nothing.",
        fix: "Add an HTTPRouteGroup or TCPRoute rule.",
    },
    ErrorCode {
        code: policy::UNKNOWN_ROUTE_KIND,
        cause: "A TrafficTarget rule's kind is neither HTTPRouteGroup nor TCPRoute.",
        fix: "Use kind HTTPRouteGroup or TCPRoute.",
    },
    ErrorCode {
        code: policy::TCP_ROUTE_NOT_FOUND,
        cause: "A TrafficTarget rule names a TCPRoute that does not exist in the TrafficTarget's namespace.",
        fix: "Create the TCPRoute in that namespace, or correct the rule's name.",
    },
    ErrorCode {
        code: policy::MATCH_NOT_FOUND,
        cause: "A TrafficTarget rule names a match its HTTPRouteGroup does not have.",
        fix: "Add the match to the HTTPRouteGroup, or remove it from the rule's matches.",
    },
    ErrorCode {
        code: policy::INVALID_REGEX,
        cause: "A path or header regex is not a valid RE2 expression; the match is left out (policy fails closed).",
        fix: "Correct the expression (RE2 syntax: no look-around, no back-references).",
    },
    ErrorCode {
        code: policy::INVALID_METHOD,
        cause: "An HTTP method is not one of *, GET, HEAD, PUT, POST, DELETE, CONNECT, OPTIONS, TRACE, PATCH.",
        fix: "Use one of those methods.",
    },
    ErrorCode {
        code: policy::INVALID_PORT,
        cause: "A TCPRoute port is not in 1-65535.",
        fix: "Use a port number from 1 to 65535.",
    },
    ErrorCode {
        code: policy::INVALID_WEIGHTS,
        cause: "A TrafficSplit's weights are all zero, or one is negative; the split is ignored.",
        fix: "Give the backends non-negative weights, at least one above zero.",
    },
    ErrorCode {
        code: policy::SPLIT_SERVICE_NOT_FOUND,
        cause: "A TrafficSplit's apex or backend Service does not exist; the split (or that backend) is inert.",
        fix: "Create the Service, or correct its name in the TrafficSplit.",
    },
    ErrorCode {
        code: policy::SOURCE_NO_NAMESPACE,
        cause: "A TrafficTarget source ServiceAccount names no namespace; that source is ignored (it is not read as the TrafficTarget's namespace).",
        fix: "Set spec.sources[].namespace to the source ServiceAccount's namespace.",
    },
    ErrorCode {
        code: policy::UPSTREAM_HOST_NOT_FOUND,
        cause: "An UpstreamTrafficSetting's host names no Service of its own namespace; its connection settings and rate limits are not in force.",
        fix: "Set spec.host to <service>.<namespace>.svc.cluster.local of a Service in the object's namespace (or create the Service).",
    },
    ErrorCode {
        code: policy::UPSTREAM_HOST_DUPLICATE,
        cause: "Two UpstreamTrafficSettings of one namespace set the same host; only the first by name is in force.",
        fix: "Merge them into one object per host (the validating webhook refuses the second on a cluster).",
    },
    ErrorCode {
        code: policy::INGRESS_BACKEND_DUPLICATE,
        cause: "Two IngressBackends of one namespace name the same backend Service and port; only the first by name is in force for it.",
        fix: "Keep one IngressBackend per backend port (merge their sources); the validating webhook refuses the second on a cluster.",
    },
    ErrorCode {
        code: policy::INGRESS_SERVICE_NOT_FOUND,
        cause: "An IngressBackend names a backend Service, or a source Service, that does not exist; that backend admits nothing (a source Service admits no address).",
        fix: "Create the Service, or correct its name (backends are Services of the IngressBackend's namespace; a Service source needs its namespace).",
    },
    ErrorCode {
        code: CA_UNUSABLE,
        cause: "The mesh CA cannot be used: unreadable, a key that is not the certificate's, not a CA, not valid now, or a key in PKCS#1/SEC1 form.",
        fix: "Restore the matching certificate and key (the error names the file); convert keys with: openssl pkcs8 -topk8 -nocrypt -in <key> -out <key>.pk8",
    },
    ErrorCode {
        code: ROOTS_REFUSED,
        cause: "The MeshRootCertificates cannot be put in force (none active, more than two in use, another trust domain, a root that cannot be loaded, or a root made active before it was trusted); the roots in force stay.",
        fix: "Follow the rotation steps: add the new root as passive, make it active, then retire the old one (README, \"Rotating the mesh root\").",
    },
    ErrorCode {
        code: policy::MULTIPLE_MESH_CONFIGS,
        cause: "More than one MeshConfig; only the first by namespace and name is used.",
        fix: "Keep one MeshConfig.",
    },
    ErrorCode {
        code: policy::MESH_CONFIG_DELETED,
        cause: "The MeshConfig in force was deleted; its last settings stay in force (deleting it never falls back to the command line's defaults). On a cluster the leader re-creates it with those settings.",
        fix: "Create the MeshConfig again (kubectl apply, or the file in the mesh directory) with the settings you want.",
    },
    ErrorCode {
        code: MESH_CONFIG_INVALID,
        cause: "A MeshConfig has fields out of range (a log level, TLS version, duration, validity beyond ten years, port, CIDR or key size); it is refused whole and its last good version stays in force.",
        fix: "Correct every field the message lists (all of them are listed at once).",
    },
    ErrorCode {
        code: PROXY_UNKNOWN,
        cause: "A sidecar connected whose proxy UUID matches no pod of the mesh; it gets no configuration.",
        fix: "Describe the pod in the mesh (or on the cluster) and bootstrap the sidecar for it; a pod removed from the mesh loses its sidecar's stream.",
    },
    ErrorCode {
        code: PROXY_IDENTITY_MISMATCH,
        cause: "A sidecar's certificate names another service account than its pod runs as; it gets no configuration.",
        fix: "Bootstrap the sidecar again (osm-controller bootstrap, or restart the pod on a cluster).",
    },
    ErrorCode {
        code: PROXY_DUPLICATE,
        cause: "Two pods carry the same proxy UUID; neither sidecar is served.",
        fix: "Give each pod its own osm-proxy-uuid label.",
    },
    ErrorCode {
        code: PROXY_NACK,
        cause: "A sidecar refused configuration (NACK); it keeps running on its last good configuration.",
        fix: "Run osm proxy status: it shows Envoy's reason (a port already taken in the pod, say).",
    },
    ErrorCode {
        code: ADS_HANDSHAKE_FAILED,
        cause: "A connection to the ADS port failed its TLS handshake (no client certificate, another mesh root, expired, not TLS).",
        fix: "The log gives the reason: bootstrap the sidecar again against this controller's --state-dir, or refresh its bundle after a root rotation.",
    },
    ErrorCode {
        code: SNAPSHOT_INCONSISTENT,
        cause: "A proxy's configuration, as built, names a cluster, endpoint assignment, route configuration or secret it does not carry; it is not sent and the proxy keeps its last good configuration.",
        fix: "A defect of the control plane: report the log line (it names the proxy, the missing resource and what names it).",
    },
    ErrorCode {
        code: "E7001",
        cause: "Sidecar injection: an injection annotation has a value that is not enabled, yes, true, disabled, no or false.",
        fix: "Correct the annotation's value.",
    },
    ErrorCode {
        code: "E7002",
        cause: "Sidecar injection: an annotation (port or IP range exclusions, say) cannot be read.",
        fix: "Correct the annotation (the message says what is wrong).",
    },
    ErrorCode {
        code: "E7003",
        cause: "Sidecar injection failed: the sidecar or the patch could not be built.",
        fix: "Read the message; check the controller's CA and the MeshConfig.",
    },
    ErrorCode {
        code: "E7004",
        cause: "Sidecar injection: a container's probe cannot be rewritten to pass through the sidecar.",
        fix: "Correct the probe (the message names the container and probe).",
    },
    ErrorCode {
        code: "E7005",
        cause: "Sidecar injection: the MeshConfig cannot be used.",
        fix: "Correct the MeshConfig (the message names the field).",
    },
    ErrorCode {
        code: "E7006",
        cause: "Sidecar injection: the pod has neither a name nor a generateName.",
        fix: "Give the pod a name or generateName.",
    },
    ErrorCode {
        code: "E7007",
        cause: "Sidecar injection: the pod already carries a sidecar and a proxy UUID (a copy of an injected pod); it would share that pod's proxy identity.",
        fix: "Create the pod from its original spec (without the envoy and osm-init containers and the osm-proxy-uuid label).",
    },
    ErrorCode {
        code: "E7008",
        cause: "Sidecar injection: the pod runs on Windows (nodeSelector kubernetes.io/os=windows), for which the mesh has no sidecar.",
        fix: "Disable injection for the pod (annotation openservicemesh.io/sidecar-injection: disabled).",
    },
    ErrorCode {
        code: "E7010",
        cause: "An admission webhook received a request that is not an AdmissionReview v1.",
        fix: "Point only Kubernetes admission webhook configurations (admissionReviewVersions: [v1]) at it.",
    },
    ErrorCode {
        code: "E7011",
        cause: "Sidecar injection: the pod's namespace or the MeshConfig could not be read from the API server.",
        fix: "Check the controller's RBAC and the API server's health.",
    },
    ErrorCode {
        code: "E7012",
        cause: "Sidecar injection: the pod's bootstrap Secret could not be created.",
        fix: "Check the controller's RBAC for Secrets in the pod's namespace.",
    },
    ErrorCode {
        code: "E7013",
        cause: "An admission webhook received a body whose Content-Type is not application/json (answered 415).",
        fix: "Send AdmissionReviews as application/json, as the API server does.",
    },
    ErrorCode {
        code: "E7014",
        cause: "An admission review carries an object the webhook cannot read as its kind (a pod whose containers is not a list, a misspelt field, another kind than the webhook reviews); denied with the review's uid.",
        fix: "Correct the object (the message names the field), or the webhook configuration's rules.",
    },
];

/// The code's entry.
pub fn lookup(code: &str) -> Option<&'static ErrorCode> {
    CODES.iter().find(|c| c.code.eq_ignore_ascii_case(code))
}

/// The table of `docs/error-codes.md`.
pub fn markdown_table() -> String {
    let mut out = String::from(
        "# Error codes\n\nGenerated from `messages::errcode` (`osm support error-info` prints the same); every code \
         is logged as the `error_code` field and counted in `osm_error_err_code_count{err_code}`.\n\n\
         | Code | Cause | Fix |\n|---|---|---|\n",
    );
    for c in CODES {
        out.push_str(&format!("| {} | {} | {} |\n", c.code, c.cause.replace('|', "\\|"), c.fix.replace('|', "\\|")));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_unique_ordered_and_the_docs_table_is_current() {
        let codes: Vec<&str> = CODES.iter().map(|c| c.code).collect();
        let mut sorted = codes.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(codes, sorted, "unique, in order");
        assert!(CODES.iter().all(|c| c.code.len() == 5 && !c.cause.is_empty() && !c.fix.is_empty()));
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/error-codes.md");
        let docs = std::fs::read_to_string(&path).unwrap_or_default();
        if std::env::var_os("UPDATE_DOCS").is_some() {
            std::fs::write(&path, markdown_table()).unwrap();
            return;
        }
        assert_eq!(docs, markdown_table(), "regenerate with UPDATE_DOCS=1 cargo test -p messages errcode");
        assert_eq!(lookup("e2025").map(|c| c.code), Some(policy::INVALID_REGEX));
    }
}
