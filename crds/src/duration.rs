//! Durations as Kubernetes users write them (`500ms`, `2s`, `1m30s`), typed in the CRD schema
//! as strings with a pattern so that the API server rejects malformed values.

use schemars::{JsonSchema, Schema, SchemaGenerator};
use serde::{Deserialize, Serialize};
use std::borrow::Cow;

/// The pattern the API server checks: one to four `<number><unit>` parts, units h, m, s, ms.
pub const DURATION_PATTERN: &str = r"^([0-9]{1,5}(h|m|s|ms)){1,4}$";

/// A duration such as `250ms`, `2s` or `1h30m`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Hash)]
#[serde(transparent)]
pub struct Duration(pub String);

/// Why a duration string is malformed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DurationError(pub String);

impl std::fmt::Display for DurationError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:?} is not a duration: write one to four <number><unit> parts with units h, m, s or ms, e.g. 500ms, 2s or 1m30s",
            self.0
        )
    }
}

impl std::error::Error for DurationError {}

impl Duration {
    /// Parses the value, checking the same rules as [`DURATION_PATTERN`].
    pub fn to_std(&self) -> Result<std::time::Duration, DurationError> {
        let err = || DurationError(self.0.clone());
        let mut rest = self.0.as_str();
        let mut total = std::time::Duration::ZERO;
        let mut parts = 0;
        while !rest.is_empty() {
            let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
            if digits == 0 || digits > 5 {
                return Err(err());
            }
            let n: u64 = rest[..digits].parse().map_err(|_| err())?;
            rest = &rest[digits..];
            let (unit, len) = if rest.starts_with("ms") {
                (std::time::Duration::from_millis(n), 2)
            } else if rest.starts_with('h') {
                (std::time::Duration::from_secs(n * 3600), 1)
            } else if rest.starts_with('m') {
                (std::time::Duration::from_secs(n * 60), 1)
            } else if rest.starts_with('s') {
                (std::time::Duration::from_secs(n), 1)
            } else {
                return Err(err());
            };
            total += unit;
            rest = &rest[len..];
            parts += 1;
        }
        if parts == 0 || parts > 4 {
            return Err(err());
        }
        Ok(total)
    }
}

impl JsonSchema for Duration {
    fn schema_name() -> Cow<'static, str> {
        "Duration".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        schemars::json_schema!({
            "type": "string",
            "pattern": DURATION_PATTERN,
            "description": "A duration such as 250ms, 2s or 1m30s (units h, m, s, ms)"
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> Result<std::time::Duration, DurationError> {
        Duration(s.to_string()).to_std()
    }

    #[test]
    fn parses_units_and_compounds() {
        assert_eq!(d("250ms").unwrap().as_millis(), 250);
        assert_eq!(d("2s").unwrap().as_secs(), 2);
        assert_eq!(d("1m30s").unwrap().as_secs(), 90);
        assert_eq!(d("1h").unwrap().as_secs(), 3600);
    }

    #[test]
    fn rejects_what_the_pattern_rejects() {
        let pattern = regex::Regex::new(DURATION_PATTERN).unwrap();
        for bad in [
            "",
            "2",
            "s",
            "1.5s",
            "-1s",
            "1d",
            "123456s",
            "1s1s1s1s1s",
            "2 s",
        ] {
            assert!(d(bad).is_err(), "{bad:?} should be rejected");
            assert!(
                !pattern.is_match(bad),
                "{bad:?} should fail the schema pattern too"
            );
        }
        for good in ["250ms", "2s", "1m30s", "1h"] {
            assert!(pattern.is_match(good));
            assert!(d(good).is_ok());
        }
    }
}
