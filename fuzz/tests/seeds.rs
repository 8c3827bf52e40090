//! Every seed (`fuzz/corpus/TARGET/`) and every regression
//! (`fuzz/regressions/TARGET/`) through its target, in the default suite:
//! a crash turned regression stays fixed, and the seeds keep exercising
//! what each target is meant to reach.

use std::path::Path;

fn files(dir: &Path) -> Vec<std::path::PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<_> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

#[test]
fn seeds_and_regressions_run_clean() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for (name, target) in parvm_fuzz::TARGETS {
        let seeds = files(&root.join("corpus").join(name));
        assert!(
            !seeds.is_empty(),
            "target {name} has no seeds in fuzz/corpus/{name}/"
        );
        let regressions = files(&root.join("regressions").join(name));
        for file in seeds.iter().chain(&regressions) {
            let data = std::fs::read(file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
            eprintln!("{name}: {}", file.display());
            target(&data);
        }
    }
}

#[test]
fn every_target_has_a_cargo_fuzz_binary() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("cargo-fuzz/fuzz_targets");
    for (name, _) in parvm_fuzz::TARGETS {
        let file = dir.join(format!("{name}.rs"));
        let text =
            std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        assert!(
            text.contains(&format!("parvm_fuzz::{name}::{name}(")),
            "{} does not call parvm_fuzz::{name}::{name}",
            file.display()
        );
    }
}
