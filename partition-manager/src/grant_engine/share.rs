//! Shared-segment configurations (the "configuration data set"): segments,
//! standing grants of them and doorbells, checked as a whole before
//! anything changes, then applied to the table and to running partitions.

use super::*;
use parvm_protocol::SharedConfig;

impl GrantEngine {
    /// Applies `config`: creates missing segments, standing grants for
    /// each `map` entry and the doorbells, mapping and wiring them at once
    /// in running partitions. Applying the same file again changes
    /// nothing. Returns what it set up and the standing grants of running
    /// partitions, for the manager to accept now (grantee, cookie, gpa).
    #[allow(clippy::type_complexity)]
    pub(crate) fn share(
        &mut self,
        store: &Store,
        partitions: &PartitionTable,
        config: &SharedConfig,
    ) -> Result<(Shared, Vec<(String, GrantCookie, u64)>), ManagerError> {
        self.check_share(partitions, config)?;
        // 2. Segments and standing grants.
        let mut out: Shared = (Vec::new(), Vec::new(), Vec::new());
        for s in &config.segments {
            let name = segment_name(&s.owner, &s.id);
            if self.table.segment(&name).is_none() {
                let info = self.table.create_segment(
                    &s.owner,
                    &s.id,
                    s.size_kib * 1024,
                    s.gpa.map(|a| a.value()),
                    true,
                )?;
                store.put_segment(&info)?;
                self.map_owned(partitions, &s.owner, &name, false);
            }
            if let Some(seg) = self.table.segment(&name) {
                out.0.push(seg.clone());
            }
            for m in &s.map {
                let gpa = m.gpa.value();
                let existing = self
                    .table
                    .find_standing(&name, &m.partition, gpa, m.rights)
                    .cloned();
                let g = match existing {
                    Some(g) => g,
                    None => {
                        let mut g = self.table.grant(
                            &s.owner,
                            &name,
                            &m.partition,
                            m.rights,
                            now_secs(),
                        )?;
                        if let Some(row) = self.table.set_standing(g.id, gpa) {
                            g = row;
                        }
                        store.put_grant(&g)?;
                        g
                    }
                };
                out.1.push(g);
            }
        }
        // 3. Doorbells.
        for d in &config.doorbells {
            if self.table.doorbell(&d.id).is_none() {
                self.table.add_doorbell(d.clone());
                store.put_doorbell(d)?;
                self.wire_doorbell(partitions, &d.id, None);
            }
            out.2.push(d.clone());
        }
        // 4. Standing grants of running partitions are accepted now.
        let pending = out
            .1
            .iter()
            .filter(|g| g.state == GrantState::Granted)
            .filter(|g| partitions.is_attached(&g.grantee))
            .filter_map(|g| Some((g.grantee.clone(), g.cookie, g.auto_gpa?)))
            .collect();
        Ok((out, pending))
    }

    /// Step 1, the checks of a configuration: every partition known, no
    /// name twice, sizes and doorbell ends valid and matching what exists.
    fn check_share(
        &self,
        partitions: &PartitionTable,
        config: &SharedConfig,
    ) -> Result<(), ManagerError> {
        let bad = |m: String| ManagerError::BadRequest(format!("shared configuration: {m}"));
        let mut names = std::collections::HashSet::new();
        for s in &config.segments {
            partitions.known(&s.owner)?;
            let name = segment_name(&s.owner, &s.id);
            if !names.insert(name.clone()) {
                return Err(bad(format!("segment `{name}` listed twice")));
            }
            let size = s.size_kib.saturating_mul(1024);
            if let Some(existing) = self.table.segment(&name) {
                if existing.size != size {
                    return Err(ManagerError::Grant(GrantError::SegmentExists(name)));
                }
            } else if let Err(message) = parvm_protocol::grant::check_segment_size(size) {
                return Err(GrantError::TooLarge { name, message }.into());
            }
            for m in &s.map {
                partitions.known(&m.partition)?;
                if m.partition == s.owner {
                    return Err(bad(format!(
                        "segment `{name}`: the owner maps it with `gpa`, not `map`"
                    )));
                }
            }
        }
        let mut ids = std::collections::HashSet::new();
        for d in &config.doorbells {
            partitions.known(&d.from)?;
            partitions.known(&d.to)?;
            if !parvm_protocol::grant::valid_segment_id(&d.id) || !ids.insert(d.id.clone()) {
                return Err(bad(format!(
                    "doorbell id `{}` is invalid or listed twice",
                    d.id
                )));
            }
            if d.gsi.is_some() == d.vector.is_some() {
                return Err(bad(format!(
                    "doorbell `{}`: give exactly one of gsi and vector",
                    d.id
                )));
            }
            if d.vector.is_some_and(|v| v < 32) {
                return Err(bad(format!(
                    "doorbell `{}`: vector below 32 (reserved for exceptions)",
                    d.id
                )));
            }
            if d.from == d.to {
                return Err(bad(format!("doorbell `{}` rings its own partition", d.id)));
            }
            if d.ring >= parvm_protocol::grant::DOORBELLS {
                return Err(bad(format!(
                    "doorbell `{}`: ring {} (at most {})",
                    d.id,
                    d.ring,
                    parvm_protocol::grant::DOORBELLS - 1
                )));
            }
            if let Some(old) = self.table.doorbell(&d.id) {
                if old != d {
                    return Err(bad(format!("doorbell `{}` exists with other ends", d.id)));
                }
            }
        }
        Ok(())
    }
}
