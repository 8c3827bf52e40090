//! How `parctl grants` prints segments, VIOS disks and the grant tree
//! (docs/manager.md, "Segments and grants").

use partition_manager::protocol::{GrantCookie, GrantInfo, GrantState, SegmentInfo};

pub fn print_grants(segments: &[SegmentInfo], grants: &[GrantInfo]) {
    println!(
        "SEGMENT / GRANT                         RIGHTS  STATE      GPA         FAULTS  COOKIE"
    );
    fn walk(grants: &[GrantInfo], parent: Option<GrantCookie>, segment: &str, depth: usize) {
        for g in grants
            .iter()
            .filter(|g| g.parent == parent && g.segment == segment)
        {
            let label = format!(
                "{}#{} {} -> {}",
                "  ".repeat(depth),
                g.id,
                g.grantor,
                g.grantee
            );
            let gpa = match (g.state, g.gpa) {
                (GrantState::Accepted, Some(a)) => format!("{a:#x}"),
                _ => "-".into(),
            };
            println!(
                "{label:<39} {:<7} {:<10} {gpa:<11} {:<7} {}",
                g.rights.to_string(),
                g.state.to_string(),
                g.faults,
                g.cookie
            );
            walk(grants, Some(g.cookie), segment, depth + 1);
        }
    }
    for s in segments {
        let gpa = s.gpa.map(|a| format!(" at {a:#x}")).unwrap_or_default();
        println!("{} ({} KiB{gpa})", s.name, s.size / 1024);
        walk(grants, None, &s.name, 1);
    }
    // Other resources (VIOS disks: docs/vios.md) that have grants.
    let mut others: Vec<&str> = grants
        .iter()
        .map(|g| g.segment.as_str())
        .filter(|r| !segments.iter().any(|s| s.name == *r))
        .collect();
    others.sort_unstable();
    others.dedup();
    for r in others {
        println!("{r} (VIOS disk)");
        walk(grants, None, r, 1);
    }
}
