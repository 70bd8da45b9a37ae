//! Per-pod engine options: `wedge.dev/<key>` annotations, within what the operator's engine
//! config allows (`allowed_annotations`) and never beyond its maxima.

use std::collections::HashMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::annotation_key::{AnnotationKey, ANNOTATION_PREFIX};
use crate::engine::{EngineConfig, NetworkConfig};
use crate::features::{with_requirements, WasmFeature};
use crate::quantity::{parse_duration, parse_memory, show_duration};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AnnotationError {
    #[error(
        "unknown annotation {ANNOTATION_PREFIX}{key} (Wedge knows: {known})",
        known = AnnotationKey::ALL.map(|key| key.name()).join(", ")
    )]
    Unknown { key: String },
    #[error(
        "annotation {key} is not allowed on this node: the engine config's \
         allowed_annotations does not list \"{name}\"",
        name = key.name()
    )]
    Forbidden { key: AnnotationKey },
    #[error("annotation {key}: {reason}")]
    Malformed { key: AnnotationKey, reason: String },
    #[error("annotation {key} asks for {wanted}, above this node's maximum {maximum} ({config_key} in the engine config)")]
    AboveMaximum {
        key: AnnotationKey,
        wanted: String,
        maximum: String,
        config_key: &'static str,
    },
    #[error("environment variable PORT={0:?} is not a port number")]
    BadPortVariable(String),
}

/// Everything about how one container's wasm runs, settled from the engine config and the
/// container's annotations; the runner applies it as is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WasmOptions {
    /// Proposals enabled, requirements included, sorted.
    pub features: Vec<WasmFeature>,
    /// Bound of any one linear memory (beside the container's memory limit).
    pub max_memory: Option<u64>,
    pub timeout: Option<Duration>,
    pub fuel: Option<u64>,
    pub http: HttpOptions,
    pub pooling_instances: u32,
    pub pooled_memory: Option<u64>,
    pub network: NetworkConfig,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HttpOptions {
    pub port: u16,
    pub max_concurrency: u32,
    pub max_request_body: Option<u64>,
    pub request_timeout: Duration,
    pub header_timeout: Duration,
    pub max_connections: u32,
}

impl EngineConfig {
    /// The options for one container: `annotations` are the container spec's (containerd
    /// copies the pod's allowed ones there); `port_variable` is its `PORT` env, if any.
    pub fn wasm_options(
        &self,
        annotations: &HashMap<String, String>,
        port_variable: Option<&str>,
    ) -> Result<WasmOptions, AnnotationError> {
        let limits = &self.limits;
        let mut options = WasmOptions {
            features: with_requirements(self.wasm.features.iter().copied()),
            max_memory: limits.memory.or(limits.max_memory),
            timeout: limits.timeout.or(limits.max_timeout),
            fuel: limits.fuel.or(limits.max_fuel),
            http: HttpOptions {
                port: self.http.port,
                max_concurrency: self.http.max_concurrency,
                max_request_body: self.http.max_request_body,
                request_timeout: self.http.request_timeout,
                header_timeout: self.http.header_timeout,
                max_connections: self.http.max_connections,
            },
            pooling_instances: self.pooling.instances,
            pooled_memory: self.pooling.memory_per_instance,
            network: self.network.clone(),
        };
        if let Some(text) = port_variable {
            options.http.port = parse_port(text)
                .ok_or_else(|| AnnotationError::BadPortVariable(text.to_string()))?;
        }
        let mut keys: Vec<(&String, &String)> = annotations
            .iter()
            .filter(|(name, _)| name.starts_with(ANNOTATION_PREFIX))
            .collect();
        // Errors name the first bad key in a stable order.
        keys.sort();
        for (name, value) in keys {
            let short = &name[ANNOTATION_PREFIX.len()..];
            let key = AnnotationKey::from_name(short).ok_or_else(|| AnnotationError::Unknown {
                key: short.to_string(),
            })?;
            if !self.allowed_annotations.contains(&key) {
                return Err(AnnotationError::Forbidden { key });
            }
            self.apply(key, value, &mut options)?;
        }
        Ok(options)
    }

    fn apply(
        &self,
        key: AnnotationKey,
        value: &str,
        options: &mut WasmOptions,
    ) -> Result<(), AnnotationError> {
        let malformed = |reason: String| AnnotationError::Malformed { key, reason };
        let limits = &self.limits;
        match key {
            AnnotationKey::Features => {
                let mut wanted = Vec::new();
                for name in value.split(',').filter(|name| !name.trim().is_empty()) {
                    let feature: WasmFeature =
                        name.parse().map_err(|err| malformed(format!("{err}")))?;
                    wanted.push(feature);
                }
                let on_anyway = with_requirements(self.wasm.features.iter().copied());
                let allowed = with_requirements(self.wasm.allowed_features.iter().copied());
                for feature in with_requirements(wanted.iter().copied()) {
                    if !on_anyway.contains(&feature) && !allowed.contains(&feature) {
                        return Err(AnnotationError::AboveMaximum {
                            key,
                            wanted: feature.to_string(),
                            maximum: listing(&allowed),
                            config_key: "wasm.allowed_features",
                        });
                    }
                }
                options.features =
                    with_requirements(options.features.iter().copied().chain(wanted));
            }
            AnnotationKey::Timeout => {
                let wanted = parse_duration(value).map_err(|err| malformed(err.to_string()))?;
                check_ceiling(key, wanted, limits.max_timeout, "limits.max_timeout", |d| {
                    show_duration(*d)
                })?;
                options.timeout = (!wanted.is_zero()).then_some(wanted);
                if wanted.is_zero() && limits.max_timeout.is_some() {
                    return Err(AnnotationError::AboveMaximum {
                        key,
                        wanted: "no deadline".into(),
                        maximum: limits.max_timeout.map(show_duration).unwrap_or_default(),
                        config_key: "limits.max_timeout",
                    });
                }
            }
            AnnotationKey::MaxMemory => {
                let wanted = parse_memory(value).map_err(|err| malformed(err.to_string()))?;
                if wanted == 0 {
                    return Err(malformed("must be more than zero".into()));
                }
                check_ceiling(key, wanted, limits.max_memory, "limits.max_memory", |b| {
                    format!("{b} bytes")
                })?;
                options.max_memory = Some(wanted);
            }
            AnnotationKey::Fuel => {
                let wanted: u64 = parse_positive(value)
                    .ok_or_else(|| malformed(format!("{value:?} is not a positive number")))?;
                check_ceiling(
                    key,
                    wanted,
                    limits.max_fuel,
                    "limits.max_fuel",
                    u64::to_string,
                )?;
                options.fuel = Some(wanted);
            }
            AnnotationKey::HttpPort => {
                options.http.port = parse_port(value)
                    .ok_or_else(|| malformed(format!("{value:?} is not a port number")))?;
            }
            AnnotationKey::HttpMaxConcurrency => {
                let wanted: u32 = parse_positive(value)
                    .ok_or_else(|| malformed(format!("{value:?} is not a positive number")))?;
                check_ceiling(
                    key,
                    wanted,
                    Some(self.http.max_concurrency),
                    "http.max_concurrency",
                    u32::to_string,
                )?;
                options.http.max_concurrency = wanted;
            }
            AnnotationKey::HttpRequestTimeout => {
                let wanted = parse_duration(value).map_err(|err| malformed(err.to_string()))?;
                if wanted.is_zero() {
                    return Err(malformed("must be longer than zero".into()));
                }
                check_ceiling(
                    key,
                    wanted,
                    Some(self.http.request_timeout),
                    "http.request_timeout",
                    |d| show_duration(*d),
                )?;
                options.http.request_timeout = wanted;
            }
        }
        Ok(())
    }
}

fn check_ceiling<T: PartialOrd>(
    key: AnnotationKey,
    wanted: T,
    maximum: Option<T>,
    config_key: &'static str,
    show: impl Fn(&T) -> String,
) -> Result<(), AnnotationError> {
    match maximum {
        Some(maximum) if wanted > maximum => Err(AnnotationError::AboveMaximum {
            key,
            wanted: show(&wanted),
            maximum: show(&maximum),
            config_key,
        }),
        _ => Ok(()),
    }
}

fn parse_positive<T: std::str::FromStr + PartialOrd + Default>(text: &str) -> Option<T> {
    text.trim()
        .parse::<T>()
        .ok()
        .filter(|number| *number > T::default())
}

fn parse_port(text: &str) -> Option<u16> {
    parse_positive(text)
}

fn listing(features: &[WasmFeature]) -> String {
    if features.is_empty() {
        "none".into()
    } else {
        features
            .iter()
            .map(|feature| feature.name())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn annotations(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(key, value)| (format!("{ANNOTATION_PREFIX}{key}"), value.to_string()))
            .collect()
    }

    fn config(text: &str) -> EngineConfig {
        EngineConfig::parse(text, "t").unwrap()
    }

    #[test]
    fn defaults_without_annotations() {
        let options = EngineConfig::default()
            .wasm_options(&HashMap::new(), None)
            .unwrap();
        assert!(options.features.contains(&WasmFeature::Simd));
        assert!(!options.features.contains(&WasmFeature::MultiMemory));
        assert_eq!(options.http.port, 8080);
        assert_eq!(options.timeout, None);
        let options = EngineConfig::default()
            .wasm_options(&HashMap::new(), Some("9000"))
            .unwrap();
        assert_eq!(options.http.port, 9000);
        let err = EngineConfig::default()
            .wasm_options(&HashMap::new(), Some("http"))
            .unwrap_err();
        assert!(err.to_string().contains("PORT"), "{err}");
    }

    #[test]
    fn features_need_the_operator_on_both_counts() {
        let wanted = annotations(&[("features", "multi-memory")]);
        let err = EngineConfig::default()
            .wasm_options(&wanted, None)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("wedge.dev/features") && err.contains("allowed_annotations"),
            "{err}"
        );

        let allowed_key = config("allowed_annotations = [\"features\"]\n");
        let err = allowed_key
            .wasm_options(&wanted, None)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("multi-memory") && err.contains("wasm.allowed_features"),
            "{err}"
        );

        let allowed = config(
            "allowed_annotations = [\"features\"]\n[wasm]\nallowed_features = [\"multi-memory\", \"gc\"]\n",
        );
        let options = allowed.wasm_options(&wanted, None).unwrap();
        assert!(options.features.contains(&WasmFeature::MultiMemory));
        let options = allowed
            .wasm_options(&annotations(&[("features", "gc,simd")]), None)
            .unwrap();
        assert!(options.features.contains(&WasmFeature::FunctionReferences));
        let err = allowed
            .wasm_options(&annotations(&[("features", "multimemory")]), None)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("unknown wasm feature \"multimemory\""),
            "{err}"
        );
    }

    #[test]
    fn unknown_keys_are_named() {
        let err = EngineConfig::default()
            .wasm_options(&annotations(&[("timeuot", "5s")]), None)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("wedge.dev/timeuot") && err.contains("timeout"),
            "{err}"
        );
        // Other prefixes are none of Wedge's business.
        let mut other = HashMap::new();
        other.insert("example.com/x".to_string(), "y".to_string());
        assert!(EngineConfig::default().wasm_options(&other, None).is_ok());
    }

    #[test]
    fn maxima_bound_the_annotations() {
        let bounded = config(
            "[limits]\ntimeout = \"10s\"\nmax_timeout = \"1m\"\nmax_memory = \"128Mi\"\nmax_fuel = 1000\n",
        );
        let options = bounded.wasm_options(&HashMap::new(), None).unwrap();
        assert_eq!(options.timeout, Some(Duration::from_secs(10)));
        assert_eq!(options.max_memory, Some(128 << 20));
        assert_eq!(options.fuel, Some(1000));

        let options = bounded
            .wasm_options(
                &annotations(&[("timeout", "30s"), ("max-memory", "64Mi")]),
                None,
            )
            .unwrap();
        assert_eq!(options.timeout, Some(Duration::from_secs(30)));
        assert_eq!(options.max_memory, Some(64 << 20));

        for (key, value, config_key) in [
            ("timeout", "2m", "limits.max_timeout"),
            ("timeout", "0s", "limits.max_timeout"),
            ("max-memory", "1Gi", "limits.max_memory"),
            ("fuel", "5000", "limits.max_fuel"),
            ("http-max-concurrency", "1000", "http.max_concurrency"),
        ] {
            let err = bounded
                .wasm_options(&annotations(&[(key, value)]), None)
                .unwrap_err()
                .to_string();
            assert!(err.contains(key) && err.contains(config_key), "{err}");
        }
        let err = bounded
            .wasm_options(&annotations(&[("timeout", "soon")]), None)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("wedge.dev/timeout") && err.contains("soon"),
            "{err}"
        );
    }

    #[test]
    fn the_port_annotation_wins_over_the_variable() {
        let options = EngineConfig::default()
            .wasm_options(&annotations(&[("http-port", "3000")]), Some("9000"))
            .unwrap();
        assert_eq!(options.http.port, 3000);
        assert!(EngineConfig::default()
            .wasm_options(&annotations(&[("http-port", "0")]), None)
            .is_err());
    }

    #[test]
    fn forbidden_when_the_operator_empties_the_list() {
        let closed = config("allowed_annotations = []\n");
        let err = closed
            .wasm_options(&annotations(&[("timeout", "5s")]), None)
            .unwrap_err();
        assert_eq!(
            err,
            AnnotationError::Forbidden {
                key: AnnotationKey::Timeout
            }
        );
    }
}
