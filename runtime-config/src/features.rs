//! WebAssembly proposals an operator can turn on, by the names the proposals go by.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A wasm proposal beyond the MVP that the engine can be told to accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum WasmFeature {
    BulkMemory,
    ReferenceTypes,
    MultiValue,
    Simd,
    RelaxedSimd,
    TailCall,
    ExtendedConst,
    MultiMemory,
    Threads,
    FunctionReferences,
    Gc,
    Exceptions,
    Memory64,
    WideArithmetic,
    CustomPageSizes,
}

impl WasmFeature {
    pub const ALL: [WasmFeature; 15] = [
        WasmFeature::BulkMemory,
        WasmFeature::ReferenceTypes,
        WasmFeature::MultiValue,
        WasmFeature::Simd,
        WasmFeature::RelaxedSimd,
        WasmFeature::TailCall,
        WasmFeature::ExtendedConst,
        WasmFeature::MultiMemory,
        WasmFeature::Threads,
        WasmFeature::FunctionReferences,
        WasmFeature::Gc,
        WasmFeature::Exceptions,
        WasmFeature::Memory64,
        WasmFeature::WideArithmetic,
        WasmFeature::CustomPageSizes,
    ];

    /// What every toolchain emits today (wasm 2.0 plus the small finished proposals): on
    /// unless the operator's config says otherwise.
    pub const DEFAULTS: [WasmFeature; 7] = [
        WasmFeature::BulkMemory,
        WasmFeature::ReferenceTypes,
        WasmFeature::MultiValue,
        WasmFeature::Simd,
        WasmFeature::RelaxedSimd,
        WasmFeature::TailCall,
        WasmFeature::ExtendedConst,
    ];

    pub fn name(self) -> &'static str {
        match self {
            WasmFeature::BulkMemory => "bulk-memory",
            WasmFeature::ReferenceTypes => "reference-types",
            WasmFeature::MultiValue => "multi-value",
            WasmFeature::Simd => "simd",
            WasmFeature::RelaxedSimd => "relaxed-simd",
            WasmFeature::TailCall => "tail-call",
            WasmFeature::ExtendedConst => "extended-const",
            WasmFeature::MultiMemory => "multi-memory",
            WasmFeature::Threads => "threads",
            WasmFeature::FunctionReferences => "function-references",
            WasmFeature::Gc => "gc",
            WasmFeature::Exceptions => "exceptions",
            WasmFeature::Memory64 => "memory64",
            WasmFeature::WideArithmetic => "wide-arithmetic",
            WasmFeature::CustomPageSizes => "custom-page-sizes",
        }
    }

    /// Proposals this one builds on: turning it on turns them on too.
    pub fn requires(self) -> &'static [WasmFeature] {
        match self {
            WasmFeature::RelaxedSimd => &[WasmFeature::Simd],
            WasmFeature::FunctionReferences => &[WasmFeature::ReferenceTypes],
            WasmFeature::Gc => &[WasmFeature::FunctionReferences, WasmFeature::ReferenceTypes],
            WasmFeature::Exceptions => &[WasmFeature::ReferenceTypes],
            _ => &[],
        }
    }
}

impl fmt::Display for WasmFeature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown wasm feature {0:?} (known: {known})", known = known_names())]
pub struct UnknownFeature(pub String);

fn known_names() -> String {
    WasmFeature::ALL.map(WasmFeature::name).join(", ")
}

impl FromStr for WasmFeature {
    type Err = UnknownFeature;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let wanted = text.trim();
        WasmFeature::ALL
            .into_iter()
            .find(|feature| feature.name() == wanted)
            .ok_or_else(|| UnknownFeature(wanted.to_string()))
    }
}

/// Adds what each feature in `features` requires, sorted and without repeats.
pub fn with_requirements(features: impl IntoIterator<Item = WasmFeature>) -> Vec<WasmFeature> {
    let mut all: Vec<WasmFeature> = Vec::new();
    for feature in features {
        all.push(feature);
        all.extend_from_slice(feature.requires());
    }
    all.sort();
    all.dedup();
    all
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_unknown_ones_list_the_known() {
        for feature in WasmFeature::ALL {
            assert_eq!(feature.name().parse::<WasmFeature>().unwrap(), feature);
        }
        let err = "multimemory"
            .parse::<WasmFeature>()
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("multimemory") && err.contains("multi-memory"),
            "{err}"
        );
    }

    #[test]
    fn requirements_come_along() {
        assert_eq!(
            with_requirements([WasmFeature::Gc]),
            [
                WasmFeature::ReferenceTypes,
                WasmFeature::FunctionReferences,
                WasmFeature::Gc
            ]
        );
    }
}
