//! Properties of the parsers of input-derived data: pod annotations, the quantities and
//! durations they and engine configs carry, and engine configs themselves. Each parser must
//! answer every input (never panic), accept what it documents, and refuse by name.

use std::collections::HashMap;
use std::time::Duration;

use proptest::prelude::*;
use wedge_runtime_config::quantity::{parse_duration, parse_memory, show_duration};
use wedge_runtime_config::{AnnotationError, AnnotationKey, EngineConfig, ANNOTATION_PREFIX};

/// Enough cases to find edge cases, few enough for `make test`.
fn config() -> ProptestConfig {
    ProptestConfig::with_cases(512)
}

/// An engine config that lets pods set every annotation.
fn permissive_config() -> EngineConfig {
    let names: Vec<String> = AnnotationKey::ALL
        .iter()
        .map(|key| format!("\"{}\"", key.name()))
        .collect();
    EngineConfig::parse(
        &format!("allowed_annotations = [{}]\n", names.join(", ")),
        "test",
    )
    .expect("a valid engine config")
}

/// Annotation values as people and tools write them, and as attackers do.
fn annotation_value() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "[0-9]{0,25}(ms|s|m|h|Ki|Mi|Gi|k|M|G|Ei|x)?",
        "-?[0-9]{1,5}",
        "[a-z-]{0,20}(,[a-z-]{0,20}){0,3}",
    ]
}

fn annotation_name() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(AnnotationKey::ALL.map(|key| key.name()).to_vec())
            .prop_map(|name| format!("{ANNOTATION_PREFIX}{name}")),
        "wedge\\.dev/[a-z-]{0,12}",
        "[a-z.]{1,10}/[a-z-]{1,10}",
    ]
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn durations_answer_every_input(text in any::<String>()) {
        let _ = parse_duration(&text);
    }

    #[test]
    fn durations_read_what_they_document(value in 0u64..1_000_000, unit in 0usize..4) {
        let (suffix, millis) = [("ms", 1), ("s", 1_000), ("m", 60_000), ("h", 3_600_000)][unit];
        let parsed = parse_duration(&format!("{value}{suffix}"));
        prop_assert_eq!(parsed, Ok(Duration::from_millis(value * millis)));
    }

    #[test]
    fn a_shown_duration_reads_back(millis in 0u64..(1 << 40)) {
        let duration = Duration::from_millis(millis);
        prop_assert_eq!(parse_duration(&show_duration(duration)), Ok(duration));
    }

    #[test]
    fn memory_sizes_answer_every_input(text in any::<String>()) {
        let _ = parse_memory(&text);
    }

    #[test]
    fn memory_sizes_read_what_they_document(value in any::<u64>(), unit in 0usize..7) {
        let (suffix, multiplier) = [
            ("", 1u64), ("Ki", 1 << 10), ("Mi", 1 << 20), ("Gi", 1 << 30),
            ("k", 1_000), ("M", 1_000_000), ("G", 1_000_000_000),
        ][unit];
        let parsed = parse_memory(&format!("{value}{suffix}"));
        match value.checked_mul(multiplier) {
            Some(bytes) => prop_assert_eq!(parsed, Ok(bytes)),
            // An overflow is refused, never wrapped.
            None => prop_assert!(parsed.is_err()),
        }
    }

    /// Any set of annotations gets options or an error naming a `wedge.dev/` key (or the
    /// PORT variable); foreign annotations are never looked at.
    #[test]
    fn annotations_answer_every_input_and_name_the_key_at_fault(
        annotations in prop::collection::hash_map(annotation_name(), annotation_value(), 0..6),
        port in prop::option::of(annotation_value()),
    ) {
        let config = permissive_config();
        let annotations: HashMap<String, String> = annotations;
        match config.wasm_options(&annotations, port.as_deref()) {
            Ok(_) => {}
            Err(AnnotationError::BadPortVariable(value)) => {
                prop_assert_eq!(Some(value), port);
            }
            Err(err) => {
                let message = err.to_string();
                prop_assert!(message.contains(ANNOTATION_PREFIX), "{}", message);
                let named = annotations
                    .keys()
                    .filter(|key| key.starts_with(ANNOTATION_PREFIX))
                    .any(|key| message.contains(key.as_str()));
                prop_assert!(named, "{} names none of {:?}", message, annotations.keys());
            }
        }
    }

    #[test]
    fn foreign_annotations_are_ignored(
        annotations in prop::collection::hash_map("[a-v][a-z.]{0,8}/[a-z-]{1,10}", any::<String>(), 0..6),
    ) {
        let config = permissive_config();
        prop_assert_eq!(
            config.wasm_options(&annotations, None),
            config.wasm_options(&HashMap::new(), None)
        );
    }

    #[test]
    fn engine_configs_answer_every_input(text in any::<String>()) {
        let _ = EngineConfig::parse(&text, "property");
    }

    #[test]
    fn engine_configs_answer_every_value_of_known_keys(
        section in prop::sample::select(vec!["", "[limits]\n", "[http]\n", "[cache]\n", "[network]\n", "[wasm]\n"]),
        key in prop::sample::select(vec![
            "timeout", "max_memory", "memory", "fuel", "header_timeout", "max_connections",
            "max_size_mb", "allow", "deny", "features", "log_level", "request_timeout",
        ]),
        value in prop_oneof![
            "\"[^\"\\\\]{0,20}\"",
            "-?[0-9]{1,22}",
            "\\[\"[^\"\\\\]{0,12}\"\\]",
            Just("true".to_string()),
        ],
    ) {
        let _ = EngineConfig::parse(&format!("{section}{key} = {value}\n"), "property");
    }
}
