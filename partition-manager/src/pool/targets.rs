//! The pool's arithmetic, pure functions of pages (docs/ams.md, "The pool
//! and targets"):
//!
//! - [`water_fill`]: each partition's *goal*, the pool split by weight
//!   (`pool * w / Σw`), each between its minimum and its cap (its logical
//!   size, or less when it is idle: [`idle_cap`]), what a capped partition
//!   leaves redistributed to the others by weight. Weight 0: the minimum.
//! - [`settle`]: the *targets* the VMMs are told on the way to the goals,
//!   keeping the budget strict: lowered targets first; a target is raised
//!   only into room that no partition holds or may hold (a partition above
//!   a lowered target still holds what it reported resident).

/// What one partition may get, pages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Claim {
    pub weight: u8,
    /// Never less (the pager needs it to make progress).
    pub min: u64,
    /// Never more (its logical size, or its idle cap).
    pub max: u64,
}

/// The goals for `claims` out of `budget` pages: `max(min, min(max, λw))`
/// with the largest level λ whose sum fits, then the pages rounding left
/// over handed out by weight. The caller admits partitions only while the
/// minimums fit (`Σ min ≤ budget`); if they did not, each gets its minimum.
pub fn water_fill(budget: u64, claims: &[Claim]) -> Vec<u64> {
    let clamp = |c: &Claim, v: u64| v.min(c.max).max(c.min);
    let level = |lambda: f64| -> Vec<u64> {
        claims
            .iter()
            .map(|c| clamp(c, (lambda * f64::from(c.weight)).floor() as u64))
            .collect()
    };
    let sum = |v: &[u64]| v.iter().sum::<u64>();
    // Weight 0 gets its minimum even when the pool has room.
    let everything: Vec<u64> = claims
        .iter()
        .map(|c| match c.weight {
            0 => c.min,
            _ => c.max.max(c.min),
        })
        .collect();
    if sum(&everything) <= budget {
        return everything;
    }
    let floors = level(0.0);
    if sum(&floors) >= budget {
        return floors;
    }
    // g(λ) is monotone: bisect for the largest λ with g(λ) ≤ budget.
    let (mut lo, mut hi) = (
        0.0f64,
        claims.iter().map(|c| c.max).max().unwrap_or(0) as f64,
    );
    for _ in 0..100 {
        let mid = (lo + hi) / 2.0;
        if sum(&level(mid)) <= budget {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    let mut goals = level(lo);
    // The rounding's leftover, by weight, to those not at their cap.
    let mut left = budget - sum(&goals);
    while left > 0 {
        let open: Vec<usize> = (0..claims.len())
            .filter(|&i| claims[i].weight > 0 && goals[i] < claims[i].max)
            .collect();
        let total: u64 = open.iter().map(|&i| u64::from(claims[i].weight)).sum();
        if total == 0 {
            break;
        }
        let round = left;
        for &i in &open {
            let share = (round * u64::from(claims[i].weight) / total).max(1);
            let give = share.min(claims[i].max - goals[i]).min(left);
            goals[i] += give;
            left -= give;
            if left == 0 {
                break;
            }
        }
    }
    goals
}

/// One partition on its way to its goal, pages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slot {
    pub goal: u64,
    /// What its VMM was told (may not exceed: its pager keeps resident
    /// under it).
    pub target: u64,
    /// What its VMM last reported resident (may be above a target just
    /// lowered, until the pager has evicted).
    pub resident: u64,
}

/// What a partition may hold: its target, or more while it is still above
/// a target just lowered.
pub fn holds(s: &Slot) -> u64 {
    s.target.max(s.resident)
}

/// The new targets: every target above its goal comes down to it; then,
/// in the order given (the caller puts a starting partition first), targets
/// below their goals go up into the room nobody holds. So the sum of what
/// partitions hold never grows past `budget` (and shrinks to it as lowered
/// pagers report).
pub fn settle(budget: u64, slots: &[Slot]) -> Vec<u64> {
    let mut targets: Vec<u64> = slots.iter().map(|s| s.target.min(s.goal)).collect();
    let held: u64 = slots
        .iter()
        .zip(&targets)
        .map(|(s, &t)| t.max(s.resident))
        .sum();
    let mut free = budget.saturating_sub(held);
    for (s, t) in slots.iter().zip(targets.iter_mut()) {
        if *t >= s.goal || free == 0 {
            continue;
        }
        let holds_now = (*t).max(s.resident);
        let raised = s.goal.min(holds_now + free);
        if raised > *t {
            free -= raised.max(s.resident) - holds_now;
            *t = raised;
        }
    }
    targets
}

/// The cap of a partition that has been idle (no page-ins, no first
/// touches) for a while: what it holds plus `slack`, so the pool does not
/// keep room for pages it does not use; never under its minimum nor over
/// its logical size.
pub fn idle_cap(resident: u64, slack: u64, min: u64, logical: u64) -> u64 {
    resident.saturating_add(slack).max(min).min(logical)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const MIB: u64 = 256;

    fn claim(weight: u8, logical_mib: u64) -> Claim {
        Claim {
            weight,
            min: 2 * MIB,
            max: logical_mib * MIB,
        }
    }

    #[test]
    fn weights_1_and_4_split_the_pool_one_to_four() {
        let goals = water_fill(50 * MIB, &[claim(1, 64), claim(4, 64)]);
        assert_eq!(goals.iter().sum::<u64>(), 50 * MIB);
        assert!(goals[0].abs_diff(10 * MIB) <= 1, "{goals:?}");
        assert!(goals[1].abs_diff(40 * MIB) <= 1, "{goals:?}");
    }

    #[test]
    fn equal_weights_split_evenly_and_small_pools_give_minimums() {
        let goals = water_fill(48 * MIB, &[claim(128, 64), claim(128, 64)]);
        assert_eq!(goals, vec![24 * MIB, 24 * MIB]);
        // Exactly the minimums.
        let goals = water_fill(4 * MIB, &[claim(1, 64), claim(200, 64)]);
        assert_eq!(goals, vec![2 * MIB, 2 * MIB]);
    }

    #[test]
    fn a_partition_capped_at_its_logical_size_leaves_the_rest_to_the_others() {
        // 8 MiB logical with the heavier weight: capped at 8, the other
        // two share the remaining 92 by weight (1:3).
        let goals = water_fill(100 * MIB, &[claim(200, 8), claim(1, 512), claim(3, 512)]);
        assert_eq!(goals[0], 8 * MIB);
        assert_eq!(goals.iter().sum::<u64>(), 100 * MIB);
        assert!(goals[1].abs_diff(23 * MIB) <= 1, "{goals:?}");
        assert!(goals[2].abs_diff(69 * MIB) <= 1, "{goals:?}");
        // Everyone fits: everyone gets its logical size, the rest stays free.
        let goals = water_fill(100 * MIB, &[claim(1, 16), claim(1, 32)]);
        assert_eq!(goals, vec![16 * MIB, 32 * MIB]);
    }

    #[test]
    fn minimums_hold_against_heavy_weights_and_weight_0_gets_only_its_minimum() {
        // Weight 1 against 255 in a small pool: λw would be below the
        // minimum, the minimum holds and the heavy one gets the rest.
        let goals = water_fill(20 * MIB, &[claim(1, 64), claim(255, 64)]);
        assert_eq!(goals, vec![2 * MIB, 18 * MIB]);
        let goals = water_fill(40 * MIB, &[claim(0, 64), claim(5, 64), claim(5, 64)]);
        assert_eq!(goals, vec![2 * MIB, 19 * MIB, 19 * MIB]);
        // Only weight 0: minimums, the rest of the pool unused.
        assert_eq!(
            water_fill(40 * MIB, &[claim(0, 64), claim(0, 64)]),
            vec![2 * MIB, 2 * MIB]
        );
        // Room for everyone: still only the minimum for weight 0.
        assert_eq!(
            water_fill(400 * MIB, &[claim(0, 64), claim(1, 64)]),
            vec![2 * MIB, 64 * MIB]
        );
    }

    #[test]
    fn goals_never_exceed_the_budget_nor_leave_room_unused_when_someone_wants_it() {
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = |m: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % m
        };
        for _ in 0..2000 {
            let n = 1 + next(6) as usize;
            let claims: Vec<Claim> = (0..n)
                .map(|_| {
                    let max = 2 * MIB + next(600 * MIB);
                    Claim {
                        weight: next(256) as u8,
                        min: 2 * MIB,
                        max,
                    }
                })
                .collect();
            let mins = n as u64 * 2 * MIB;
            let budget = mins + next(1000 * MIB);
            let goals = water_fill(budget, &claims);
            let sum: u64 = goals.iter().sum();
            assert!(sum <= budget, "{claims:?} {budget} {goals:?}");
            for (c, g) in claims.iter().zip(&goals) {
                assert!(*g >= c.min && *g <= c.max, "{c:?} {g}");
            }
            let wanting = claims
                .iter()
                .zip(&goals)
                .any(|(c, g)| c.weight > 0 && g < &c.max);
            if wanting {
                assert_eq!(sum, budget, "{claims:?} {goals:?}");
            }
        }
    }

    #[test]
    fn settle_lowers_first_and_raises_only_into_free_room() {
        // A alone had the whole pool; B arrives: A is lowered at once,
        // B gets only what A does not hold any more.
        let budget = 48 * MIB;
        let a = Slot {
            goal: 24 * MIB,
            target: 48 * MIB,
            resident: 40 * MIB,
        };
        let b = Slot {
            goal: 24 * MIB,
            target: 0,
            resident: 0,
        };
        assert_eq!(settle(budget, &[b, a]), vec![8 * MIB, 24 * MIB]);
        // A reports it is under its new target: B gets the rest.
        let a = Slot {
            resident: 24 * MIB,
            target: 24 * MIB,
            ..a
        };
        let b = Slot {
            target: 8 * MIB,
            ..b
        };
        assert_eq!(settle(budget, &[b, a]), vec![24 * MIB, 24 * MIB]);
    }

    /// Pagers that do what they are told one step later: resident falls to
    /// a lowered target, grows toward the target when the guest wants more.
    #[test]
    fn the_sum_of_resident_memory_never_exceeds_the_pool_through_starts_and_stops() {
        let budget = 48 * MIB;
        struct Vm {
            claim: Claim,
            slot: Slot,
            want: u64,
        }
        let new = |weight: u8, logical: u64| Vm {
            claim: claim(weight, logical),
            slot: Slot {
                goal: 0,
                target: 0,
                resident: 0,
            },
            want: logical * MIB,
        };
        let mut vms: Vec<Vm> = vec![new(128, 64)];
        let step = |vms: &mut Vec<Vm>| {
            let claims: Vec<Claim> = vms.iter().map(|v| v.claim).collect();
            let goals = water_fill(budget, &claims);
            for (v, g) in vms.iter_mut().zip(goals) {
                v.slot.goal = g;
            }
            let slots: Vec<Slot> = vms.iter().map(|v| v.slot).collect();
            let targets = settle(budget, &slots);
            let held: u64 = vms
                .iter()
                .zip(&targets)
                .map(|(v, &t)| t.max(v.slot.resident))
                .sum();
            assert!(held <= budget, "held {held} of {budget}");
            for (v, t) in vms.iter_mut().zip(targets) {
                v.slot.target = t;
                // The pager: evict down to the target, or grow toward it.
                v.slot.resident = v.want.min(t);
            }
            let resident: u64 = vms.iter().map(|v| v.slot.resident).sum();
            assert!(resident <= budget, "resident {resident} of {budget}");
        };
        for _ in 0..3 {
            step(&mut vms);
        }
        assert_eq!(vms[0].slot.resident, 48 * MIB);
        vms.insert(0, new(128, 64));
        for _ in 0..3 {
            step(&mut vms);
        }
        assert_eq!(vms[0].slot.resident, 24 * MIB);
        assert_eq!(vms[1].slot.resident, 24 * MIB);
        vms.insert(0, new(1, 64));
        for _ in 0..4 {
            step(&mut vms);
        }
        let total: u64 = vms.iter().map(|v| v.slot.resident).sum();
        assert_eq!(total, budget);
        // The first one stops: the other two grow into its room.
        vms.remove(2);
        for _ in 0..3 {
            step(&mut vms);
        }
        assert_eq!(vms.iter().map(|v| v.slot.resident).sum::<u64>(), budget);
        // Weight 1 against 128: its minimum; the other the rest.
        assert_eq!(vms[0].slot.resident, 2 * MIB);
        assert_eq!(vms[1].slot.resident, 46 * MIB);
    }

    #[test]
    fn an_idle_cap_keeps_a_little_room_and_stays_within_bounds() {
        assert_eq!(idle_cap(10 * MIB, 4 * MIB, 2 * MIB, 64 * MIB), 14 * MIB);
        assert_eq!(idle_cap(0, MIB, 2 * MIB, 64 * MIB), 2 * MIB);
        assert_eq!(idle_cap(63 * MIB, 4 * MIB, 2 * MIB, 64 * MIB), 64 * MIB);
    }
}
