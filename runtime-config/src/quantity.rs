//! The two kinds of quantity operators write by hand in configs and pod annotations:
//! durations ("500ms", "30s", "2m") and memory sizes ("64Mi", "1Gi", or plain bytes), both in
//! the spellings Kubernetes users already know.

use std::time::Duration;

use serde::{Deserialize, Deserializer};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuantityError {
    #[error("{0:?} is not a duration (write it like 500ms, 30s, 2m or 1h)")]
    Duration(String),
    #[error("{0:?} is not a memory size (write it like 64Mi, 1Gi or a number of bytes)")]
    Memory(String),
}

/// Parses "500ms", "30s", "2m", "1h"; a bare number is seconds.
pub fn parse_duration(text: &str) -> Result<Duration, QuantityError> {
    let trimmed = text.trim();
    let bad = || QuantityError::Duration(text.to_string());
    let split = trimmed
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(trimmed.len());
    let (digits, unit) = trimmed.split_at(split);
    let value: u64 = digits.parse().map_err(|_| bad())?;
    let millis_per_unit: u64 = match unit {
        "ms" => 1,
        "" | "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        _ => return Err(bad()),
    };
    value
        .checked_mul(millis_per_unit)
        .map(Duration::from_millis)
        .ok_or_else(bad)
}

/// Parses "512Ki", "64Mi", "1Gi", "64M", "1G" or bytes.
pub fn parse_memory(text: &str) -> Result<u64, QuantityError> {
    let trimmed = text.trim();
    let bad = || QuantityError::Memory(text.to_string());
    let split = trimmed
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(trimmed.len());
    let (digits, unit) = trimmed.split_at(split);
    let value: u64 = digits.parse().map_err(|_| bad())?;
    let multiplier: u64 = match unit {
        "" => 1,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "k" => 1_000,
        "M" => 1_000_000,
        "G" => 1_000_000_000,
        _ => return Err(bad()),
    };
    value.checked_mul(multiplier).ok_or_else(bad)
}

/// Shows a duration the way it would be written in a config.
pub fn show_duration(duration: Duration) -> String {
    let millis = duration.as_millis();
    if millis % 1000 != 0 {
        format!("{millis}ms")
    } else {
        format!("{}s", millis / 1000)
    }
}

/// serde: a duration string in a config file; "0s" (or 0) means none.
pub(crate) fn optional_duration<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<Duration>, D::Error> {
    let text = StringOrNumber::deserialize(deserializer)?.into_text();
    let duration = parse_duration(&text).map_err(serde::de::Error::custom)?;
    Ok((!duration.is_zero()).then_some(duration))
}

/// serde: a duration string that must not be zero.
pub(crate) fn duration<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
    optional_duration(deserializer)?
        .ok_or_else(|| serde::de::Error::custom("must be longer than zero"))
}

/// serde: a memory size in a config file; "0" means none.
pub(crate) fn optional_memory<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<u64>, D::Error> {
    let text = StringOrNumber::deserialize(deserializer)?.into_text();
    let bytes = parse_memory(&text).map_err(serde::de::Error::custom)?;
    Ok((bytes != 0).then_some(bytes))
}

#[derive(Deserialize)]
#[serde(untagged)]
enum StringOrNumber {
    Text(String),
    Number(u64),
}

impl StringOrNumber {
    fn into_text(self) -> String {
        match self {
            StringOrNumber::Text(text) => text,
            StringOrNumber::Number(number) => number.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("1h").unwrap(), Duration::from_secs(3600));
        assert_eq!(parse_duration("7").unwrap(), Duration::from_secs(7));
        for bad in [
            "",
            "s",
            "1.5s",
            "-1s",
            "10 parsecs",
            "99999999999999999999h",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
        assert_eq!(show_duration(Duration::from_millis(1500)), "1500ms");
        assert_eq!(show_duration(Duration::from_secs(2)), "2s");
    }

    #[test]
    fn memory_sizes() {
        assert_eq!(parse_memory("64Mi").unwrap(), 64 << 20);
        assert_eq!(parse_memory("1Gi").unwrap(), 1 << 30);
        assert_eq!(parse_memory("512Ki").unwrap(), 512 << 10);
        assert_eq!(parse_memory("4096").unwrap(), 4096);
        assert_eq!(parse_memory("2M").unwrap(), 2_000_000);
        for bad in ["", "Mi", "64MB", "-1", "1.5Gi"] {
            assert!(parse_memory(bad).is_err(), "{bad}");
        }
    }
}
