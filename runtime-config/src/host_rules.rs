//! Hostname rules of the `[network]` policy: which names a guest may ask to reach, checked
//! before any lookup, so that a name the policy refuses never reaches a resolver (a lookup
//! of `<secret>.attacker.example` is itself a way out).
//!
//! A pattern is `NAME`, `*.SUFFIX` (any name below SUFFIX, not SUFFIX itself) or `*` (any
//! name), optionally followed by `:PORT`; without a port it holds for every port. Names
//! compare without case and without a trailing dot. An IP literal given as a destination is
//! held to these rules as its text: only `*` or the literal itself matches it.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// One `allow_hosts` / `deny_hosts` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPattern {
    name: NamePattern,
    port: Option<u16>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum NamePattern {
    Any,
    Below(String),
    Exactly(String),
}

impl HostPattern {
    /// `*`: every name, every port.
    pub fn any() -> Self {
        HostPattern {
            name: NamePattern::Any,
            port: None,
        }
    }

    pub fn matches(&self, host: &str, port: u16) -> bool {
        if self.port.is_some_and(|wanted| wanted != port) {
            return false;
        }
        let host = normalised(host);
        match &self.name {
            NamePattern::Any => true,
            NamePattern::Exactly(name) => host == *name,
            NamePattern::Below(suffix) => host
                .strip_suffix(suffix.as_str())
                .is_some_and(|label| !label.is_empty()),
        }
    }

    /// True for `*` on every port: the pattern that lets any name through.
    pub fn is_any(&self) -> bool {
        self.name == NamePattern::Any && self.port.is_none()
    }
}

fn normalised(host: &str) -> String {
    host.trim_end_matches('.').to_ascii_lowercase()
}

impl FromStr for HostPattern {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let refuse = |why: &str| Err(format!("host pattern {text:?}: {why}"));
        // An IPv6 literal in brackets, as in a URL, may carry a port after them.
        let (host, port) = match text.strip_prefix('[') {
            Some(rest) => match rest.split_once(']') {
                Some((literal, "")) => (literal, None),
                Some((literal, port)) => match port.strip_prefix(':') {
                    Some(port) => (literal, Some(port)),
                    None => return refuse("expected :PORT after the bracketed address"),
                },
                None => return refuse("an opening [ without its ]"),
            },
            None => match text.rsplit_once(':') {
                Some((host, port)) if !host.contains(':') => (host, Some(port)),
                _ => (text, None),
            },
        };
        let port = match port {
            None | Some("*") => None,
            Some(port) => match port.parse::<u16>() {
                Ok(port) if port > 0 => Some(port),
                _ => return refuse("the port must be a number from 1 to 65535, or *"),
            },
        };
        if host.starts_with('*') && host.ends_with('.') {
            return refuse("a wildcard pattern names no dot-terminated name");
        }
        let host = normalised(host);
        let plain = |name: &str| {
            !name.is_empty()
                && name.split('.').all(|label| {
                    !label.is_empty()
                        && label.len() <= 63
                        && label.bytes().all(|byte| {
                            byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'_'
                        })
                })
        };
        let name = if host == "*" {
            NamePattern::Any
        } else if let Some(suffix) = host.strip_prefix("*.") {
            if !plain(suffix) {
                return refuse("expected *.NAME with a plain name after *.");
            }
            NamePattern::Below(format!(".{suffix}"))
        } else if plain(&host) || host.parse::<std::net::IpAddr>().is_ok() {
            NamePattern::Exactly(host)
        } else {
            return refuse("expected NAME, *.NAME or *, with an optional :PORT");
        };
        Ok(HostPattern { name, port })
    }
}

impl fmt::Display for HostPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.name {
            NamePattern::Any => f.write_str("*")?,
            NamePattern::Below(suffix) => write!(f, "*{suffix}")?,
            NamePattern::Exactly(name) if name.contains(':') => write!(f, "[{name}]")?,
            NamePattern::Exactly(name) => f.write_str(name)?,
        }
        match self.port {
            Some(port) => write!(f, ":{port}"),
            None => Ok(()),
        }
    }
}

impl<'de> Deserialize<'de> for HostPattern {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

impl Serialize for HostPattern {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pattern(text: &str) -> HostPattern {
        text.parse().unwrap()
    }

    #[test]
    fn names_suffixes_and_ports() {
        let api = pattern("api.example.com:443");
        assert!(api.matches("API.example.com.", 443));
        assert!(!api.matches("api.example.com", 80));
        let below = pattern("*.example.com");
        assert!(below.matches("a.b.example.com", 80));
        assert!(!below.matches("example.com", 80));
        assert!(!below.matches("badexample.com", 80));
        assert!(pattern("*").matches("anything.at.all", 1));
        assert!(pattern("*").is_any() && !pattern("*:443").is_any());
        assert!(pattern("10.0.0.5").matches("10.0.0.5", 8080));
        assert!(pattern("[::1]:8080").matches("::1", 8080));
        assert!(!pattern("*.example.com").matches("10.0.0.5", 80));
        assert_eq!(pattern("*.Example.com:*").to_string(), "*.example.com");
        assert_eq!(pattern("[::1]:80").to_string(), "[::1]:80");
    }

    #[test]
    fn malformed_patterns_are_refused_by_name() {
        for bad in [
            "",
            "a..b",
            "*example.com",
            "ex*ample.com",
            "a.com:0",
            "a.com:http",
            "[::1",
            "a b",
            "*.",
            "[::1]x",
        ] {
            let err = bad.parse::<HostPattern>().unwrap_err();
            assert!(err.contains(&format!("{bad:?}")), "{bad}: {err}");
        }
    }
}
