//! How `parctl` prints answers as text: the partition table, one
//! partition, the grant tree (the `--json` shapes are the HTTP API's
//! bodies, docs/manager.md).

use partition_manager::protocol::{
    grant::DoorbellInfo, GrantCookie, GrantInfo, GrantState, PartitionStatus, SegmentInfo,
};

use super::pool_view::print_shared;
use super::workload_view::print_cpu;

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

pub fn status_line(s: &PartitionStatus) -> String {
    match (s.pid, &s.last_exit) {
        (Some(pid), _) => format!("{}: {} (pid {pid})", s.name, s.state),
        (None, Some(why)) => format!("{}: {} ({why})", s.name, s.state),
        (None, None) => format!("{}: {}", s.name, s.state),
    }
}

pub fn print_table(parts: &[PartitionStatus]) {
    let rows: Vec<[String; 8]> = parts
        .iter()
        .map(|p| {
            // A VIOS has no vCPUs or guest RAM of its own.
            let vios = p.kind.as_deref() == Some("vios");
            [
                p.name.clone(),
                p.kind.clone().unwrap_or_else(|| "vmm".into()),
                p.state.to_string(),
                p.pid.map(|v| v.to_string()).unwrap_or_else(|| "-".into()),
                match vios {
                    true => "-".into(),
                    false => p.vcpus.to_string(),
                },
                match (vios, &p.memory) {
                    (true, _) => "-".into(),
                    (false, Some(_)) => format!("{}M-shared", p.memory_mib),
                    (false, None) => format!("{}M", p.memory_mib),
                },
                p.restart.to_string(),
                p.last_exit.clone().unwrap_or_else(|| "-".into()),
            ]
        })
        .collect();
    let head = [
        "NAME",
        "KIND",
        "STATE",
        "PID",
        "VCPUS",
        "MEMORY",
        "RESTART",
        "LAST EXIT",
    ];
    let mut width = head.map(str::len);
    for r in &rows {
        for (w, c) in width.iter_mut().zip(r) {
            *w = (*w).max(c.len());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                s.push_str(c);
            } else {
                s.push_str(&format!("{c:<w$}  ", w = width[i]));
            }
        }
        println!("{}", s.trim_end());
    };
    line(head.to_vec());
    for r in &rows {
        line(r.iter().map(String::as_str).collect());
    }
}

pub fn print_status(s: &PartitionStatus) {
    let opt = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
    println!("name:        {}", s.name);
    println!("state:       {}", s.state);
    println!(
        "pid:         {}",
        s.pid.map(|p| p.to_string()).unwrap_or_else(|| "-".into())
    );
    println!("vcpus:       {}", s.vcpus);
    println!("memory:      {} MiB", s.memory_mib);
    println!("kernel:      {}", s.kernel);
    println!(
        "restart:     {} ({} automatic restart{})",
        s.restart,
        s.restarts,
        if s.restarts == 1 { "" } else { "s" }
    );
    println!("last exit:   {}", opt(&s.last_exit));
    println!("attached:    {}", if s.attached { "yes" } else { "no" });
    println!("console log: {}", s.console_log);
    if let Some(m) = &s.memory {
        print_shared(m);
    }
    if let Some(c) = &s.cpu {
        print_cpu(c);
    }
}

/// The doorbells of `share` and `grants`, one line each.
pub fn print_doorbells(doorbells: &[DoorbellInfo]) {
    for d in doorbells {
        println!(
            "doorbell {}: {} ring {} -> {} {}",
            d.id,
            d.from,
            d.ring,
            d.to,
            d.target()
        );
    }
}
