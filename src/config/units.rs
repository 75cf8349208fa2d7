//! The units a config is written in: durations (`"10s"`) and byte sizes (`"64KiB"`).

use std::time::Duration;

use serde::Deserialize;

/// A humantime duration written as a string: `"10s"`, `"1m 30s"`, `"250ms"`, `"0s"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HumanDuration(pub Duration);

impl HumanDuration {
    /// The longest duration a config may give: every deadline and rotation computed from
    /// one stays far from overflowing.
    pub const MAX: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        let d = humantime::parse_duration(s.trim())
            .map_err(|e| serde::de::Error::custom(format!("invalid duration {s:?}: {e}")))?;
        if d > HumanDuration::MAX {
            return Err(serde::de::Error::custom(format!("duration {s:?} is too long: at most 10 years")));
        }
        Ok(HumanDuration(d))
    }
}

/// A byte size: an integer, or a string such as `"64KiB"`, `"100 MiB"`, `"1GB"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteSize(pub u64);

impl ByteSize {
    /// Parses `"64KiB"`, `"1 MB"`, `"100"`; the error says what is wrong.
    pub fn parse(s: &str) -> Result<ByteSize, String> {
        let s = s.trim();
        let digits = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        let (num, unit) = s.split_at(digits);
        let num: u64 = num
            .parse()
            .map_err(|_| format!("invalid byte size {s:?}: expected a number and a unit such as \"64KiB\""))?;
        let mult: u64 = match unit.trim() {
            "" | "B" => 1,
            "KiB" => 1 << 10,
            "MiB" => 1 << 20,
            "GiB" => 1 << 30,
            "TiB" => 1 << 40,
            "KB" | "kB" => 1_000,
            "MB" => 1_000_000,
            "GB" => 1_000_000_000,
            "TB" => 1_000_000_000_000,
            other => {
                return Err(format!(
                    "invalid byte size {s:?}: unknown unit {other:?} (use B, KiB, MiB, GiB, TiB, KB, MB, GB, TB)"
                ))
            }
        };
        num.checked_mul(mult).map(ByteSize).ok_or_else(|| format!("invalid byte size {s:?}: too large"))
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Int(u64),
            Str(String),
        }
        match Raw::deserialize(d)? {
            Raw::Int(n) => Ok(ByteSize(n)),
            Raw::Str(s) => ByteSize::parse(&s).map_err(serde::de::Error::custom),
        }
    }
}
