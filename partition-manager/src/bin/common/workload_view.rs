//! `parctl`'s workload commands (docs/workload.md): `set NAME cpu.KEY=VALUE`
//! (PowerVM's dynamic LPAR), the processor lines of `status`, and `top`, a
//! live table like AIX's `topas`/`lparstat`.

use anyhow::{bail, Context};
use partition_manager::client::Client;
use partition_manager::protocol::{
    CpuMode, CpuStatus, PartitionStatus, Policy, PolicyMove, ProcUnits, Request, Response,
    PAGES_PER_MIB,
};
use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// `parctl policy ...`: the workload policy (docs/workload.md, "Policy").
#[derive(clap::Subcommand, Debug)]
pub enum PolicyCmd {
    /// Replace the policy with the JSON file's (in force from the next
    /// sample; stored).
    Set { file: PathBuf },
    /// Show the policy and its last moves (`parctl --json policy show`:
    /// `{"policy", "moves"}`).
    Show,
}

impl PolicyCmd {
    pub fn request(&self) -> anyhow::Result<Request> {
        Ok(match self {
            PolicyCmd::Set { file } => {
                let text = std::fs::read_to_string(file)
                    .with_context(|| format!("cannot read policy file {}", file.display()))?;
                let policy: Policy = serde_json::from_str(&text)
                    .map_err(|e| anyhow::anyhow!("policy file {}: {e}", file.display()))?;
                policy
                    .check()
                    .map_err(|m| anyhow::anyhow!("policy file {}: {m}", file.display()))?;
                Request::PolicySet { policy }
            }
            PolicyCmd::Show => Request::PolicyShow,
        })
    }

    pub fn print(&self, answer: Response) -> anyhow::Result<()> {
        let Response::Policy { policy, moves } = answer else {
            bail!("unexpected answer from the partition manager: {answer:?}");
        };
        match self {
            PolicyCmd::Show => print_policy(&policy, &moves),
            PolicyCmd::Set { .. } => println!(
                "workload policy {}",
                if policy.enabled { "on" } else { "off" }
            ),
        }
        Ok(())
    }
}

fn print_policy(p: &Policy, moves: &[PolicyMove]) {
    println!("enabled:     {}", if p.enabled { "yes" } else { "no" });
    println!(
        "pool:        {}",
        p.pool.map_or("the host's cores".into(), |u| format!(
            "{u} processing units"
        ))
    );
    println!(
        "starved at:  {}% of the entitlement used, idle below {}%",
        p.starved_pct, p.idle_pct
    );
    println!(
        "hysteresis:  {} samples before a move, {} after it, steps of {}",
        p.hold_samples, p.cooldown_samples, p.step
    );
    for m in moves {
        println!(
            "{} {}: {} -> {} ({})",
            m.at, m.partition, m.from, m.to, m.reason
        );
    }
}

/// `parctl set NAME KEY=VALUE...` as a request.
pub fn set_request(name: &str, assignments: &[String]) -> anyhow::Result<Request> {
    let (mut entitled, mut mode, mut weight) = (None, None, None);
    if assignments.is_empty() {
        bail!(
            "nothing to set: give cpu.entitled=UNITS, cpu.mode=capped|uncapped or cpu.weight=0-255"
        );
    }
    for a in assignments {
        let Some((key, value)) = a.split_once('=') else {
            bail!("`{a}`: use KEY=VALUE (cpu.entitled, cpu.mode, cpu.weight)");
        };
        match key {
            "cpu.entitled" => {
                entitled = Some(
                    ProcUnits::parse(value).map_err(|m| anyhow::anyhow!("cpu.entitled: {m}"))?,
                )
            }
            "cpu.mode" => {
                mode = Some(match value {
                    "capped" => CpuMode::Capped,
                    "uncapped" => CpuMode::Uncapped,
                    _ => bail!("cpu.mode `{value}`: use capped or uncapped"),
                })
            }
            "cpu.weight" => {
                weight = Some(
                    value
                        .parse::<u8>()
                        .with_context(|| format!("cpu.weight `{value}`: use 0-255"))?,
                )
            }
            _ => bail!("unknown setting `{key}`: use cpu.entitled, cpu.mode or cpu.weight"),
        }
    }
    Ok(Request::SetCpu {
        name: name.to_string(),
        entitled,
        mode,
        weight,
    })
}

fn units(u: Option<ProcUnits>) -> String {
    u.map_or_else(|| "-".into(), |u| u.to_string())
}

/// The processor lines of `parctl status`.
pub fn print_cpu(c: &CpuStatus) {
    match (c.entitled, c.mode) {
        (Some(e), Some(m)) => println!(
            "cpu:         {e} processing units, {m}, weight {}",
            c.weight.unwrap_or_default()
        ),
        _ => println!("cpu:         no entitlement (vCPUs unlimited)"),
    }
    println!("cpu used:    {} processing units", units(c.used));
    if let Some(g) = &c.cgroup {
        println!("cgroup:      {g}");
    }
}

/// One table of `parctl top`; `ins` holds the page-in counts of the last
/// table (to show a rate over `secs`).
fn table(parts: &[PartitionStatus], ins: &mut BTreeMap<String, u64>, secs: f64) -> String {
    let mut out = format!(
        "{:<16} {:<9} {:>4} {:>6} {:<8} {:>3} {:>6} {:>6} {:>8} {:>8} {:>8}\n",
        "NAME",
        "STATE",
        "VCPU",
        "ENT",
        "MODE",
        "WT",
        "USED",
        "%ENT",
        "MEM MiB",
        "RES MiB",
        "PGIN/s"
    );
    for p in parts.iter().filter(|p| p.kind.is_none()) {
        let cpu = p.cpu.as_ref();
        let (ent, used) = (cpu.and_then(|c| c.entitled), cpu.and_then(|c| c.used));
        let pct = match (ent, used) {
            (Some(e), Some(u)) if e.0 > 0 => format!("{:.0}", 100.0 * u.as_f64() / e.as_f64()),
            _ => "-".into(),
        };
        let (res, rate) = match &p.memory {
            Some(m) => {
                let before = ins.insert(p.name.clone(), m.page_ins);
                let rate = before.map_or("-".into(), |b| {
                    format!(
                        "{:.0}",
                        m.page_ins.saturating_sub(b) as f64 / secs.max(0.001)
                    )
                });
                (
                    format!("{:.1}", m.resident_pages as f64 / PAGES_PER_MIB as f64),
                    rate,
                )
            }
            None => (p.memory_mib.to_string(), "-".into()),
        };
        out.push_str(&format!(
            "{:<16} {:<9} {:>4} {:>6} {:<8} {:>3} {:>6} {:>6} {:>8} {:>8} {:>8}\n",
            p.name,
            p.state.to_string(),
            p.vcpus,
            units(ent),
            cpu.and_then(|c| c.mode)
                .map_or("-".into(), |m| m.to_string()),
            cpu.and_then(|c| c.weight)
                .map_or("-".into(), |w| w.to_string()),
            units(used),
            pct,
            p.memory_mib,
            res,
            rate
        ));
    }
    out
}

/// `parctl top`: the table every `interval`, `count` times (forever
/// without); on a terminal the screen is cleared between tables.
pub fn top(client: &Client, interval: Duration, count: Option<u64>) -> anyhow::Result<()> {
    let clear = std::io::stdout().is_terminal();
    let mut ins = BTreeMap::new();
    let mut last = Instant::now();
    let mut shown = 0u64;
    loop {
        let Response::List { partitions } = client.call(&Request::List)?.0 else {
            bail!("unexpected answer from the partition manager to list");
        };
        let secs = last.elapsed().as_secs_f64();
        last = Instant::now();
        let t = table(&partitions, &mut ins, secs);
        if clear {
            print!("\x1b[H\x1b[2J");
        }
        print!("{t}");
        if !clear {
            println!();
        }
        shown += 1;
        if count.is_some_and(|c| shown >= c) {
            return Ok(());
        }
        std::thread::sleep(interval);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn set_parses_each_key_and_names_what_is_wrong() {
        let r = set_request(
            "a",
            &[
                "cpu.entitled=0.5".into(),
                "cpu.mode=capped".into(),
                "cpu.weight=7".into(),
            ],
        )
        .unwrap();
        assert_eq!(
            r,
            Request::SetCpu {
                name: "a".into(),
                entitled: Some(ProcUnits(50)),
                mode: Some(CpuMode::Capped),
                weight: Some(7)
            }
        );
        for (arg, says) in [
            ("cpu.entitled=x", "cpu.entitled"),
            ("cpu.entitled=0.001", "two decimals"),
            ("cpu.mode=dedicated", "capped or uncapped"),
            ("cpu.weight=256", "0-255"),
            ("memory=5", "unknown setting"),
            ("cpu.entitled", "KEY=VALUE"),
        ] {
            let e = format!("{:#}", set_request("a", &[arg.into()]).unwrap_err());
            assert!(e.contains(says), "{arg}: {e}");
        }
        assert!(set_request("a", &[]).is_err());
    }
}
