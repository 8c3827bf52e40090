//! A partition's processor entitlement (`cpu` in its definition; the
//! partition manager acts on it, the VMM ignores it): PowerVM's shared
//! processor partitions, in processing units (1.0 = one core of the host),
//! docs/workload.md.
//!
//! ```json
//! "cpu": {"entitled": 0.5, "mode": "capped", "weight": 128, "min": 0.1, "max": 1.0}
//! ```
//!
//! Without `cpu` a partition has no limit (its vCPU threads run as any
//! thread of the host), as before.

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Default uncapped weight (PowerVM's; 0-255).
pub const DEFAULT_CPU_WEIGHT: u8 = 128;
/// The least entitlement per virtual processor (PowerVM's 0.05).
pub const MIN_UNITS_PER_VCPU: ProcUnits = ProcUnits(5);

/// Processing units in hundredths of a core (JSON: a number such as 0.25;
/// 0 is a valid figure, e.g. what an idle partition used, and refused
/// where it makes no sense by the check of what holds it).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ProcUnits(pub u32);

impl ProcUnits {
    /// Whole cores.
    pub fn cores(n: u64) -> Self {
        ProcUnits(u32::try_from(n.saturating_mul(100)).unwrap_or(u32::MAX))
    }

    /// Parses `0.25`-style text, as `parctl set` takes it.
    pub fn parse(text: &str) -> Result<Self, String> {
        let v: f64 = text
            .trim()
            .parse()
            .map_err(|_| format!("`{text}` is not a number of processing units"))?;
        Self::from_f64(v)
    }

    fn from_f64(v: f64) -> Result<Self, String> {
        if !v.is_finite() || !(0.0..=1000.0).contains(&v) {
            return Err(format!(
                "{v} processing units: give a number from 0 to 1000 (1.0 is one core)"
            ));
        }
        let hundredths = (v * 100.0).round();
        if (hundredths - v * 100.0).abs() > 1e-6 {
            return Err(format!(
                "{v} processing units: at most two decimals (0.01 is the unit)"
            ));
        }
        Ok(ProcUnits(hundredths as u32))
    }

    /// As a fraction of one core.
    pub fn as_f64(self) -> f64 {
        f64::from(self.0) / 100.0
    }
}

impl std::fmt::Display for ProcUnits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{:02}", self.0 / 100, self.0 % 100)
    }
}

impl Serialize for ProcUnits {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.as_f64().serialize(s)
    }
}

impl<'de> Deserialize<'de> for ProcUnits {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = f64::deserialize(d)?;
        ProcUnits::from_f64(v).map_err(serde::de::Error::custom)
    }
}

/// Capped partitions never use more than their entitlement; uncapped ones
/// also take idle cycles, shared by weight.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CpuMode {
    Capped,
    #[default]
    Uncapped,
}

impl std::fmt::Display for CpuMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            CpuMode::Capped => "capped",
            CpuMode::Uncapped => "uncapped",
        })
    }
}

/// `cpu` as written in JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CpuSpec {
    /// Processing units the partition is entitled to.
    pub entitled: ProcUnits,
    #[serde(default)]
    pub mode: CpuMode,
    /// Share of idle cycles among uncapped partitions, 0-255.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<u8>,
    /// The range `parctl set` and the policy may move `entitled` in
    /// (default: `entitled` itself).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<ProcUnits>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<ProcUnits>,
}

impl CpuSpec {
    pub fn weight(&self) -> u8 {
        self.weight.unwrap_or(DEFAULT_CPU_WEIGHT)
    }

    pub fn min(&self) -> ProcUnits {
        self.min.unwrap_or(self.entitled)
    }

    pub fn max(&self) -> ProcUnits {
        self.max.unwrap_or(self.entitled)
    }

    /// Checks the section against the partition's `vcpus`: at least 0.05
    /// per vCPU, `min <= entitled <= max <= vcpus`.
    pub fn check(&self, vcpus: u64) -> Result<(), String> {
        let floor = ProcUnits(MIN_UNITS_PER_VCPU.0.saturating_mul(vcpus as u32));
        let ceiling = ProcUnits::cores(vcpus);
        let (min, max) = (self.min(), self.max());
        if min < floor {
            return Err(format!(
                "{} processing units for {vcpus} vCPU(s): at least {floor} (0.05 per vCPU)",
                min
            ));
        }
        if max > ceiling {
            return Err(format!(
                "{max} processing units for {vcpus} vCPU(s): at most {ceiling} (one core per vCPU)"
            ));
        }
        if !(min <= self.entitled && self.entitled <= max) {
            return Err(format!(
                "entitled {} is outside min {min} .. max {max}",
                self.entitled
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn units_parse_and_print_in_hundredths() {
        assert_eq!(ProcUnits::parse("0.25"), Ok(ProcUnits(25)));
        assert_eq!(ProcUnits::parse("2"), Ok(ProcUnits(200)));
        assert_eq!(ProcUnits(5).to_string(), "0.05");
        assert_eq!(ProcUnits(150).to_string(), "1.50");
        assert_eq!(ProcUnits::parse("0"), Ok(ProcUnits(0)));
        for bad in ["-1", "0.001", "x", "", "NaN", "inf", "1e9"] {
            assert!(ProcUnits::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn sections_are_checked_against_the_vcpus() {
        let spec = |json: &str| serde_json::from_str::<CpuSpec>(json);
        let s = spec(r#"{"entitled":0.5,"mode":"capped","weight":3,"min":0.1,"max":1}"#).unwrap();
        assert_eq!(
            (s.entitled, s.mode, s.weight()),
            (ProcUnits(50), CpuMode::Capped, 3)
        );
        assert!(s.check(1).is_ok());
        let s = spec(r#"{"entitled":0.25}"#).unwrap();
        assert_eq!(
            (s.mode, s.weight(), s.min(), s.max()),
            (CpuMode::Uncapped, 128, ProcUnits(25), ProcUnits(25))
        );
        for (json, vcpus, says) in [
            (r#"{"entitled":1.5}"#, 1, "at most 1.00"),
            (r#"{"entitled":0.05}"#, 2, "at least 0.10"),
            (r#"{"entitled":0}"#, 1, "at least 0.05"),
            (r#"{"entitled":0.5,"min":0.6}"#, 1, "outside"),
            (r#"{"entitled":0.5,"max":0.4}"#, 1, "outside"),
        ] {
            let e = spec(json).unwrap().check(vcpus).unwrap_err();
            assert!(e.contains(says), "{json}: {e}");
        }
        for (json, says) in [
            (r#"{"entitled":0.333}"#, "two decimals"),
            (r#"{"entitled":0.5,"mode":"dedicated"}"#, "unknown variant"),
            (r#"{"entitled":0.5,"weight":300}"#, "u8"),
            (r#"{"entitled":0.5,"cap":1}"#, "unknown field"),
            (r#"{"mode":"capped"}"#, "entitled"),
            (r#"{"entitled":"half"}"#, "invalid type"),
        ] {
            let e = spec(json).unwrap_err().to_string();
            assert!(e.contains(says), "{json}: {e}");
        }
    }
}
