//! The two units a configuration file writes as strings: durations (`"15s"`) and sizes
//! (`"256MiB"`). Each parses what it formats, so `check-config` output reads back.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A duration in Prometheus' syntax: one or more `<number><unit>` from the largest unit
/// down, each unit at most once: `"250ms"`, `"15s"`, `"1m30s"`, `"1h"`, `"2d"`, `"1w"`,
/// `"1y"` (365 days). A number may have a fraction (`"1.5s"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct HumanDuration(pub Duration);

/// Units from the largest down, in milliseconds.
const UNITS: [(&str, f64); 7] = [
    ("y", 365.0 * 86_400e3),
    ("w", 7.0 * 86_400e3),
    ("d", 86_400e3),
    ("h", 3_600e3),
    ("m", 60e3),
    ("s", 1e3),
    ("ms", 1.0),
];

impl FromStr for HumanDuration {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let expected = || format!("`{s}` is not a duration like 250ms, 15s, 1m30s, 1h");
        if s.is_empty() {
            return Err(expected());
        }
        let mut rest = s;
        let mut ms = 0.0;
        // Index into UNITS of the next unit allowed: each must be smaller than the last.
        let mut next = 0;
        while !rest.is_empty() {
            let digits = rest
                .find(|c: char| !(c.is_ascii_digit() || c == '.'))
                .ok_or_else(|| format!("`{s}` has no unit (ms, s, m, h, d, w, y)"))?;
            let n: f64 = rest[..digits].parse().map_err(|_| expected())?;
            rest = &rest[digits..];
            let unit_len = rest
                .find(|c: char| c.is_ascii_digit() || c == '.')
                .unwrap_or(rest.len());
            let unit = &rest[..unit_len];
            rest = &rest[unit_len..];
            let Some(i) = UNITS.iter().position(|(u, _)| *u == unit) else {
                return Err(format!(
                    "`{s}`: unknown unit `{unit}` (ms, s, m, h, d, w, y)"
                ));
            };
            if i < next {
                return Err(format!(
                    "`{s}`: units must go from the largest down, each once"
                ));
            }
            next = i + 1;
            ms += n * UNITS[i].1;
        }
        if !ms.is_finite() || !(0.0..=1e13).contains(&ms) {
            return Err(format!("`{s}` is out of range"));
        }
        Ok(HumanDuration(Duration::from_micros((ms * 1e3) as u64)))
    }
}

impl fmt::Display for HumanDuration {
    /// Prometheus' own form, in hours and smaller units (`"1m30s"`, `"36h"`, `"0s"`);
    /// below a millisecond is not shown.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut ms = self.0.as_millis();
        if ms == 0 {
            return f.write_str("0s");
        }
        for (unit, size) in [("h", 3_600_000), ("m", 60_000), ("s", 1000), ("ms", 1)] {
            if ms >= size {
                write!(f, "{}{unit}", ms / size)?;
                ms %= size;
            }
        }
        Ok(())
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl Serialize for HumanDuration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// A size written as `"256MiB"`, `"64KiB"`, `"1GB"` or a plain number of bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct ByteSize(pub u64);

impl FromStr for ByteSize {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        let (num, unit) = s.split_at(split);
        let n: u64 = num
            .parse()
            .map_err(|_| format!("`{s}` is not a size like 256MiB"))?;
        let mult: u64 = match unit.trim() {
            "" | "B" => 1,
            "KiB" => 1 << 10,
            "MiB" => 1 << 20,
            "GiB" => 1 << 30,
            "KB" | "kB" => 1_000,
            "MB" => 1_000_000,
            "GB" => 1_000_000_000,
            other => return Err(format!("`{s}`: unknown unit `{other}` (B, KiB, MiB, GiB)")),
        };
        n.checked_mul(mult)
            .map(ByteSize)
            .ok_or_else(|| format!("`{s}` is too large"))
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        for (unit, m) in [("GiB", 1u64 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)] {
            if b >= m && b.is_multiple_of(m) {
                return write!(f, "{}{unit}", b / m);
            }
        }
        write!(f, "{b}B")
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            N(u64),
            S(String),
        }
        match Raw::deserialize(d)? {
            Raw::N(n) => Ok(ByteSize(n)),
            Raw::S(s) => s.parse().map_err(serde::de::Error::custom),
        }
    }
}

impl Serialize for ByteSize {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_sizes_parse() {
        assert_eq!(
            "250ms".parse::<HumanDuration>().unwrap().0,
            Duration::from_millis(250)
        );
        assert_eq!(
            "1.5s".parse::<HumanDuration>().unwrap().0,
            Duration::from_millis(1500)
        );
        assert_eq!(
            "5m".parse::<HumanDuration>().unwrap().0,
            Duration::from_secs(300)
        );
        assert!("5".parse::<HumanDuration>().is_err());
        assert!("".parse::<HumanDuration>().is_err());
        assert!("s".parse::<HumanDuration>().is_err());
        assert_eq!("256MiB".parse::<ByteSize>().unwrap().0, 256 << 20);
        assert_eq!("100".parse::<ByteSize>().unwrap().0, 100);
        assert!("12 parsecs".parse::<ByteSize>().is_err());
    }

    #[test]
    fn durations_take_the_prometheus_syntax() {
        let d = |text: &str| text.parse::<HumanDuration>().map(|d| d.0);
        assert_eq!(d("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(d("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(d("1h30m15s250ms"), Ok(Duration::from_millis(5_415_250)));
        assert_eq!(d("2d"), Ok(Duration::from_secs(2 * 86_400)));
        assert_eq!(d("1w"), Ok(Duration::from_secs(7 * 86_400)));
        assert_eq!(d("1y"), Ok(Duration::from_secs(365 * 86_400)));
        for bad in ["30s1m", "1m1m", "1m 30s", "1x", "m1", "1.2.3s"] {
            assert!(d(bad).is_err(), "{bad}");
        }
        let shown = |ms: u64| HumanDuration(Duration::from_millis(ms)).to_string();
        assert_eq!(shown(90_000), "1m30s");
        assert_eq!(shown(1_500), "1s500ms");
        assert_eq!(shown(300_000), "5m");
        assert_eq!(shown(86_400_000), "24h");
    }

    #[test]
    fn formatted_units_parse_back_to_the_same_value() {
        for text in [
            "250ms", "1500ms", "15s", "5m", "2h", "0s", "1m30s", "1d", "1h0m5s",
        ] {
            let d: HumanDuration = text.parse().unwrap();
            assert_eq!(d.to_string().parse::<HumanDuration>().unwrap(), d, "{text}");
        }
        for text in ["1", "1KiB", "256MiB", "3GiB", "1GB", "1500"] {
            let b: ByteSize = text.parse().unwrap();
            assert_eq!(b.to_string().parse::<ByteSize>().unwrap(), b, "{text}");
        }
    }
}
