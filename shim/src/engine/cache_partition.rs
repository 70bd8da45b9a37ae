//! Which part of the compiled-module cache a container's runner uses.

use std::path::PathBuf;

use super::cache::sha256_hex;

/// The part of the cache one tenant's containers use: `<containerd namespace>/<Kubernetes
/// namespace>` (`_node` outside Kubernetes) under the cache directory.
///
/// What a compiler returns is native code, trusted no further than the tenant whose module it
/// compiled: an artifact made while handling one tenant's module is never mapped for
/// another's, even for the very same module bytes. The cost is one compile (and one copy on
/// disk and in the page cache) per tenant and module, and the size cap holds per partition.
pub fn partition(containerd_namespace: &str, kubernetes_namespace: Option<&str>) -> PathBuf {
    PathBuf::from(partition_name(containerd_namespace))
        .join(kubernetes_namespace.map_or_else(|| "_node".to_string(), partition_name))
}

/// A namespace name as a directory name when it is a plain one (as containerd and Kubernetes
/// require), else its digest: a name from an annotation may hold anything.
fn partition_name(name: &str) -> String {
    let plain = !name.is_empty()
        && name.len() <= 128
        && !name.starts_with(['.', '_'])
        && name
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || b"._-".contains(&byte));
    if plain {
        name.to_string()
    } else {
        format!("sha256-{}", &sha256_hex(name.as_bytes())[..32])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_tenant_has_a_partition_of_its_own() {
        assert_eq!(
            partition("k8s.io", Some("team-a")),
            PathBuf::from("k8s.io/team-a")
        );
        assert_eq!(partition("default", None), PathBuf::from("default/_node"));
        let tenants = [
            partition("k8s.io", Some("team-a")),
            partition("k8s.io", Some("team-b")),
            partition("default", Some("team-a")),
            partition("k8s.io", None),
            partition("k8s.io", Some("_node")),
        ];
        for (index, one) in tenants.iter().enumerate() {
            for other in &tenants[index + 1..] {
                assert_ne!(one, other);
            }
        }
    }

    #[test]
    fn a_name_that_is_not_plain_cannot_reach_out_of_the_cache() {
        for hostile in [
            "..",
            "../../etc",
            "a/b",
            "",
            ".hidden",
            "x\ny",
            &"n".repeat(200),
        ] {
            let part = partition("k8s.io", Some(hostile));
            let last = part.file_name().and_then(|name| name.to_str()).unwrap();
            assert!(last.starts_with("sha256-"), "{hostile:?} -> {part:?}");
            assert_eq!(part.components().count(), 2, "{part:?}");
        }
        assert_ne!(
            partition("k8s.io", Some("../x")),
            partition("k8s.io", Some("../y"))
        );
    }
}
