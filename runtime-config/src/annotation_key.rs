//! The `wedge.dev/*` annotation keys: their names, and which ones an engine config allows
//! unless it says otherwise.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The prefix every Wedge annotation carries; containerd passes them on when the runtime's
/// `pod_annotations` / `container_annotations` list `wedge.dev/*`.
pub const ANNOTATION_PREFIX: &str = "wedge.dev/";

/// An annotation key after the prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AnnotationKey {
    Features,
    Timeout,
    MaxMemory,
    Fuel,
    HttpPort,
    HttpMaxConcurrency,
    HttpRequestTimeout,
}

impl AnnotationKey {
    pub const ALL: [AnnotationKey; 7] = [
        AnnotationKey::Features,
        AnnotationKey::Timeout,
        AnnotationKey::MaxMemory,
        AnnotationKey::Fuel,
        AnnotationKey::HttpPort,
        AnnotationKey::HttpMaxConcurrency,
        AnnotationKey::HttpRequestTimeout,
    ];

    /// Keys a pod may use unless the operator says otherwise: each is bounded by a maximum in
    /// the config. New wasm features widen what the engine accepts, so they are opt-in.
    pub const ALLOWED_BY_DEFAULT: [AnnotationKey; 6] = [
        AnnotationKey::Timeout,
        AnnotationKey::MaxMemory,
        AnnotationKey::Fuel,
        AnnotationKey::HttpPort,
        AnnotationKey::HttpMaxConcurrency,
        AnnotationKey::HttpRequestTimeout,
    ];

    pub fn name(self) -> &'static str {
        match self {
            AnnotationKey::Features => "features",
            AnnotationKey::Timeout => "timeout",
            AnnotationKey::MaxMemory => "max-memory",
            AnnotationKey::Fuel => "fuel",
            AnnotationKey::HttpPort => "http-port",
            AnnotationKey::HttpMaxConcurrency => "http-max-concurrency",
            AnnotationKey::HttpRequestTimeout => "http-request-timeout",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        AnnotationKey::ALL
            .into_iter()
            .find(|key| key.name() == name)
    }
}

impl fmt::Display for AnnotationKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{ANNOTATION_PREFIX}{}", self.name())
    }
}
