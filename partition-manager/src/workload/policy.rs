//! The workload policy (docs/workload.md, "Policy"): moves processor
//! entitlement from partitions that leave theirs unused to partitions that
//! are starved, within each partition's min and max and the pool, with
//! hysteresis. Pure logic: [`Policy::plan`] looks at one sample of every
//! movable partition and returns the moves; the manager applies them.

use parvm_config::ProcUnits;
pub use parvm_protocol::{Policy, PolicyMove as Move};

/// One movable partition as a sample shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct View {
    pub name: String,
    /// Its entitlement now, and the definition's (where it returns to).
    pub current: ProcUnits,
    pub desired: ProcUnits,
    pub min: ProcUnits,
    pub max: ProcUnits,
    /// Processing units used over the last sample.
    pub used: ProcUnits,
}

/// Per-partition memory of the policy between samples.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Track {
    starved: u32,
    idle: u32,
    cooldown: u32,
}

/// The policy's logic (its settings are the protocol's [`Policy`]).
pub trait Plan {
    fn plan(
        &self,
        parts: &[View],
        tracks: &mut std::collections::BTreeMap<String, Track>,
        pool: ProcUnits,
    ) -> Vec<Move>;
}

impl Plan for Policy {
    /// The moves for one sample of `parts` (`tracks` holds each one's
    /// counters, updated here; `pool` the units the entitlements may add
    /// up to). Sources for a starved partition below its max, in order:
    /// the pool's free units; partitions idle for `hold_samples`, down to
    /// their min; and, for a starved partition below its desired
    /// entitlement, partitions above theirs (so a partition that was
    /// drained gets back what it lent once it is busy again). Both sides
    /// of a move cool down.
    fn plan(
        &self,
        parts: &[View],
        tracks: &mut std::collections::BTreeMap<String, Track>,
        pool: ProcUnits,
    ) -> Vec<Move> {
        tracks.retain(|n, _| parts.iter().any(|p| &p.name == n));
        // % of its entitlement a partition used (none entitled: starved).
        let pct = |p: &View| (p.used.0 * 100).checked_div(p.current.0).unwrap_or(100);
        for p in parts {
            let t = tracks.entry(p.name.clone()).or_default();
            t.cooldown = t.cooldown.saturating_sub(1);
            let u = pct(p);
            t.starved = if u >= self.starved_pct {
                t.starved + 1
            } else {
                0
            };
            t.idle = if u < self.idle_pct { t.idle + 1 } else { 0 };
        }
        if !self.enabled {
            return Vec::new();
        }
        let mut current: Vec<u32> = parts.iter().map(|p| p.current.0).collect();
        let mut moves = Vec::new();
        let ready = |t: &Track, n: u32| t.cooldown == 0 && n >= self.hold_samples;
        for (i, p) in parts.iter().enumerate() {
            let t = tracks[&p.name];
            if !ready(&t, t.starved) || current[i] >= p.max.0 {
                continue;
            }
            let mut want = self.step.0.min(p.max.0 - current[i]);
            let mut sources: Vec<(Option<usize>, u32, &str)> = Vec::new();
            let total: u32 = current.iter().sum();
            let free = pool.0.saturating_sub(total);
            if free > 0 {
                sources.push((None, free.min(want), "free pool capacity"));
                want -= free.min(want);
            }
            for (j, d) in parts.iter().enumerate() {
                if want == 0 {
                    break;
                }
                let td = tracks[&d.name];
                let give = if j != i && ready(&td, td.idle) && current[j] > d.min.0 {
                    (current[j] - d.min.0, "left unused")
                } else if j != i
                    && current[i] < p.desired.0
                    && current[j] > d.desired.0
                    && td.cooldown == 0
                {
                    (
                        (current[j] - d.desired.0).min(p.desired.0 - current[i]),
                        "above its desired entitlement",
                    )
                } else {
                    continue;
                };
                let n = give.0.min(want);
                if n > 0 {
                    sources.push((Some(j), n, give.1));
                    want -= n;
                }
            }
            for (src, n, why) in sources {
                let before_i = current[i];
                current[i] += n;
                moves.push(Move {
                    at: 0,
                    partition: p.name.clone(),
                    from: ProcUnits(before_i),
                    to: ProcUnits(current[i]),
                    reason: match src {
                        None => format!("starved ({}% of its entitlement used); {why}", pct(p)),
                        Some(j) => format!(
                            "starved ({}% of its entitlement used); from {}, {why}",
                            pct(p),
                            parts[j].name
                        ),
                    },
                });
                if let Some(j) = src {
                    let before_j = current[j];
                    current[j] -= n;
                    moves.push(Move {
                        at: 0,
                        partition: parts[j].name.clone(),
                        from: ProcUnits(before_j),
                        to: ProcUnits(current[j]),
                        reason: format!("to {}, which is starved; {why}", p.name),
                    });
                    if let Some(t) = tracks.get_mut(&parts[j].name) {
                        *t = Track {
                            cooldown: self.cooldown_samples,
                            ..Track::default()
                        };
                    }
                }
                if let Some(t) = tracks.get_mut(&p.name) {
                    *t = Track {
                        cooldown: self.cooldown_samples,
                        ..Track::default()
                    };
                }
            }
        }
        moves
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::collections::BTreeMap;

    fn view(name: &str, current: u32, used: u32) -> View {
        View {
            name: name.into(),
            current: ProcUnits(current),
            desired: ProcUnits(50),
            min: ProcUnits(10),
            max: ProcUnits(90),
            used: ProcUnits(used),
        }
    }

    /// Runs the policy over `samples` with the partitions using `use_of`
    /// (by name, given the current entitlement); returns the entitlements
    /// after each sample and the moves.
    fn simulate(
        policy: &Policy,
        pool: u32,
        samples: usize,
        start: &[(&str, u32)],
        use_of: impl Fn(&str, u32) -> u32,
    ) -> (Vec<BTreeMap<String, u32>>, usize) {
        let mut tracks = BTreeMap::new();
        let mut cur: BTreeMap<String, u32> =
            start.iter().map(|(n, c)| (n.to_string(), *c)).collect();
        let mut history = Vec::new();
        let mut moves = 0;
        for _ in 0..samples {
            let parts: Vec<View> = cur.iter().map(|(n, &c)| view(n, c, use_of(n, c))).collect();
            for m in policy.plan(&parts, &mut tracks, ProcUnits(pool)) {
                cur.insert(m.partition.clone(), m.to.0);
                moves += 1;
            }
            history.push(cur.clone());
        }
        (history, moves)
    }

    fn on() -> Policy {
        Policy {
            enabled: true,
            hold_samples: 2,
            cooldown_samples: 1,
            step: ProcUnits(20),
            ..Policy::default()
        }
    }

    #[test]
    fn an_idle_partition_lends_to_a_starved_one_and_gets_it_back() {
        let p = on();
        // A idle, B busy (uses all it may): B grows to its max, A
        // shrinks to its min, the pool (1.0) never exceeded.
        let (h, _) = simulate(&p, 100, 30, &[("a", 50), ("b", 50)], |n, c| {
            if n == "a" {
                0
            } else {
                c
            }
        });
        let end = h.last().unwrap();
        assert_eq!((end["a"], end["b"]), (10, 90), "{h:?}");
        assert!(h.iter().all(|s| s.values().sum::<u32>() <= 100), "{h:?}");
        // Both busy from there: back to the desired split, then still.
        let p2 = on();
        let (h, moves) = simulate(&p2, 100, 60, &[("a", 10), ("b", 90)], |_, c| c);
        let end = h.last().unwrap();
        assert_eq!((end["a"], end["b"]), (50, 50), "{h:?}");
        assert!(h[40..].iter().all(|s| s == end), "oscillates: {h:?}");
        assert!(moves <= 8, "{moves} moves");
    }

    #[test]
    fn off_or_without_need_nothing_moves() {
        let (_, moves) = simulate(
            &Policy::default(),
            100,
            20,
            &[("a", 50), ("b", 50)],
            |n, c| {
                if n == "a" {
                    0
                } else {
                    c
                }
            },
        );
        assert_eq!(moves, 0);
        // Both at half use: neither starved.
        let (_, moves) = simulate(&on(), 100, 20, &[("a", 50), ("b", 50)], |_, c| c / 2);
        assert_eq!(moves, 0);
    }

    #[test]
    fn free_pool_capacity_goes_first_and_bad_policies_are_refused() {
        let (h, _) = simulate(&on(), 200, 10, &[("a", 50), ("b", 50)], |n, c| {
            if n == "a" {
                0
            } else {
                c
            }
        });
        // Room in the pool: B grows without taking from A.
        assert_eq!((h.last().unwrap()["a"], h.last().unwrap()["b"]), (50, 90));
        let bad = Policy {
            idle_pct: 95,
            ..Policy::default()
        };
        assert!(bad.check().unwrap_err().contains("idle_pct"));
        let e = serde_json::from_str::<Policy>(r#"{"enabled":true,"speed":3}"#).unwrap_err();
        assert!(e.to_string().contains("unknown field"), "{e}");
        let p: Policy = serde_json::from_str(r#"{"enabled":true,"step":0.05}"#).unwrap();
        assert_eq!((p.enabled, p.step, p.hold_samples), (true, ProcUnits(5), 3));
    }
}
