#![allow(clippy::unwrap_used)]
use super::*;

fn parse(s: &str) -> Result<PartitionDefinition, ConfigError> {
    PartitionDefinition::from_json(s, Path::new("/etc/parvm/p.json"))
}

#[test]
fn full_definition_parses_and_paths_are_relative_to_the_file() {
    let d = parse(
        r#"{"name":"a","vcpus":2,"memory_mib":64,"kernel":"k.elf",
            "initrd":"/abs/i","cmdline":"x y","console":"log.txt"}"#,
    )
    .unwrap();
    let c = d.validate().unwrap();
    assert_eq!(c.vcpus, 2);
    assert_eq!(c.kernel, PathBuf::from("/etc/parvm/k.elf"));
    assert_eq!(c.initrd, Some(PathBuf::from("/abs/i")));
    assert_eq!(c.console, Console::File("/etc/parvm/log.txt".into()));
}

#[test]
fn unknown_field_is_named() {
    let e = parse(r#"{"kernel":"k","memroy":5}"#)
        .unwrap_err()
        .to_string();
    assert!(e.contains("memroy"), "{e}");
    assert!(e.contains("unknown field"), "{e}");
}

#[test]
fn wrong_type_names_the_field() {
    let e = parse(r#"{"kernel":"k","vcpus":"two"}"#)
        .unwrap_err()
        .to_string();
    assert!(e.contains("field `vcpus`"), "{e}");
}

#[test]
fn broken_json_is_a_syntax_error() {
    let e = parse(r#"{"kernel":"#).unwrap_err().to_string();
    assert!(e.contains("p.json"), "{e}");
    assert!(parse("").is_err());
    assert!(parse("[]").is_err());
}

#[test]
fn ranges_are_checked() {
    for v in [0, 255, 300] {
        let d = PartitionDefinition {
            kernel: Some("k".into()),
            vcpus: Some(v),
            ..Default::default()
        };
        assert!(matches!(d.validate(), Err(ConfigError::Vcpus(_))));
    }
    let d = PartitionDefinition {
        kernel: Some("k".into()),
        memory_mib: Some(1),
        ..Default::default()
    };
    assert!(matches!(d.validate(), Err(ConfigError::Memory(1))));
    assert!(matches!(
        PartitionDefinition::default().validate(),
        Err(ConfigError::NoKernel)
    ));
    let d = PartitionDefinition {
        kernel: Some("k".into()),
        name: Some("a b".into()),
        ..Default::default()
    };
    assert!(matches!(d.validate(), Err(ConfigError::Name(_))));
}

#[test]
fn defaults_are_the_named_constants() {
    let c = PartitionDefinition {
        kernel: Some("k".into()),
        ..Default::default()
    }
    .validate()
    .unwrap();
    assert_eq!(u64::from(c.vcpus), DEFAULT_VCPUS);
    assert_eq!(c.memory_mib, DEFAULT_MEMORY_MIB);
    assert_eq!(c.name, DEFAULT_NAME);
    assert_eq!(c.cmdline, DEFAULT_CMDLINE);
}

#[test]
fn disks_parse_and_ids_are_checked() {
    let d = parse(r#"{"kernel":"k","disks":[{"id":"root","path":"r.img"},{"id":"data","path":"/d.img","read_only":true}]}"#)
        .unwrap()
        .validate()
        .unwrap();
    assert_eq!(
        d.disks[0].source,
        DiskSource::Image("/etc/parvm/r.img".into())
    );
    assert!(d.disks[1].read_only && !d.disks[0].read_only);
    let dup =
        parse(r#"{"kernel":"k","disks":[{"id":"a","path":"x"},{"id":"a","path":"y"}]}"#).unwrap();
    assert!(matches!(dup.validate(), Err(ConfigError::DuplicateDisk(_))));
    let bad = parse(r#"{"kernel":"k","disks":[{"id":"","path":"x"}]}"#).unwrap();
    assert!(matches!(bad.validate(), Err(ConfigError::DiskId(_))));
    let e = parse(r#"{"kernel":"k","disks":[{"id":"a","path":"x","size":1}]}"#).unwrap_err();
    assert!(e.to_string().contains("disks[0]"), "{e}");
    let e = parse(r#"{"kernel":"k","disks":[{"id":"a"}]}"#).unwrap_err();
    assert!(e.to_string().contains("path"), "{e}");
}

#[test]
fn vhost_user_disk_sources() {
    let d = parse(
        r#"{"kernel":"k","disks":[{"id":"a","path":"vhost-user:vios.sock"},{"id":"b","path":"vhost-user-fd:4"},{"id":"c","path":"vios:vios1/data"}]}"#,
    )
    .unwrap()
    .validate()
    .unwrap();
    assert_eq!(
        d.disks[0].source,
        DiskSource::VhostUser("/etc/parvm/vios.sock".into())
    );
    assert_eq!(d.disks[1].source, DiskSource::VhostUserFd(4));
    assert_eq!(
        d.disks[2].source,
        DiskSource::Vios {
            vios: "vios1".into(),
            disk: "data".into()
        }
    );
    // The typed source is written back as the same `path` strings.
    let back = serde_json::to_value(&d.disks).unwrap();
    assert_eq!(back[1]["path"], "vhost-user-fd:4");
    assert_eq!(back[2]["path"], "vios:vios1/data");
    for bad in [
        "vhost-user:",
        "vhost-user-fd:x",
        "vhost-user-fd:1",
        "vios:x",
        "vios:/d",
        "vios:a/",
    ] {
        // A bad source is refused where it is read, naming the field.
        let e = parse(&format!(
            r#"{{"kernel":"k","disks":[{{"id":"a","path":"{bad}"}}]}}"#
        ))
        .and_then(|d| d.validate())
        .unwrap_err();
        assert!(e.to_string().contains("disk `a`"), "{bad}: {e}");
        assert!(e.to_string().contains("disks[0]"), "{bad}: {e}");
    }
}

#[test]
fn disk_flags() {
    let d = DiskConfig::from_flag("/x.img,ro,id=boot", 0).unwrap();
    assert_eq!((d.id.as_str(), d.read_only), ("boot", true));
    assert_eq!(DiskConfig::from_flag("y.img", 3).unwrap().id, "disk3");
    for bad in ["", ",ro", "x,rw=1", "x,bogus", "vios:x"] {
        assert!(DiskConfig::from_flag(bad, 0).is_err(), "{bad}");
    }
}

#[test]
fn flags_override_the_file() {
    let file = parse(r#"{"kernel":"k","vcpus":1,"memory_mib":64}"#).unwrap();
    let flags = PartitionDefinition {
        vcpus: Some(2),
        ..Default::default()
    };
    let c = file.overridden_by(flags).validate().unwrap();
    assert_eq!((c.vcpus, c.memory_mib), (2, 64));
}

#[test]
fn manager_fields_are_typed_and_taken_out() {
    let mut d = Definition::from_json(
        r#"{"name":"a","kernel":"/k","restart":"on-failure",
            "segments":[{"id":"buf","size_kib":4,"gpa":3758096384}]}"#,
        Path::new("/p.json"),
    )
    .unwrap();
    let (restart, segments) = d.take_manager_fields();
    assert_eq!(restart, Some(RestartPolicy::OnFailure));
    assert_eq!(segments[0].gpa, Some(0xe000_0000));
    // What is left is what the VMM reads: no manager-side fields.
    let v = serde_json::to_value(&d).unwrap();
    assert!(
        v.get("restart").is_none() && v.get("segments").is_none(),
        "{v}"
    );
    for (text, want) in [
        (r#"{"restart":"always"}"#, "always"),
        (r#"{"restart":1}"#, "field `restart`"),
        (r#"{"segments":[{"id":"s","colour":1}]}"#, "colour"),
        (r#"{"segments":{"id":"s"}}"#, "field `segments`"),
    ] {
        let e = Definition::from_json(text, Path::new("p.json"))
            .unwrap_err()
            .to_string();
        assert!(e.contains(want), "{text}: {e}");
    }
}

#[test]
fn vios_definitions_are_checked() {
    let o = Path::new("/srv/v.json");
    let parse =
        |text: &str| ViosDefinition::from_json(text, o).and_then(|d| d.validate().map(|()| d));
    let d =
        parse(r#"{"kind":"vios","name":"vios1","disks":[{"id":"data","path":"d.raw"}]}"#).unwrap();
    assert_eq!(d.disks[0].path, PathBuf::from("/srv/d.raw"));
    assert!(!d.disk("data").unwrap().read_only);
    assert_eq!(d.queues(), DEFAULT_VIOS_QUEUES);
    for (text, want) in [
        (r#"{"kind":"vmm","name":"a"}"#, "expected `vios`"),
        (r#"{"name":"a","kernel":"k"}"#, "expected `vios`"),
        (r#"{"kind":"vios","name":"a b"}"#, "invalid partition name"),
        (
            r#"{"kind":"vios","name":"a","disks":[{"id":"","path":"x"}]}"#,
            "invalid disk id",
        ),
        (
            r#"{"kind":"vios","name":"a","disks":[{"id":"d","path":"x"},{"id":"d","path":"y"}]}"#,
            "duplicate disk id",
        ),
        (
            r#"{"kind":"vios","name":"a","kernel":"k"}"#,
            "unknown field `kernel`",
        ),
        (r#"{"kind":"vios","name":"a","queues":0}"#, "queues 0"),
        (r#"{"kind":"vios","name":"a","queues":17}"#, "queues 17"),
        (r#"{"kind":"vios"}"#, "name"),
        (r#"{"kind":7,"name":"a"}"#, "field `kind`"),
    ] {
        let e = parse(text).unwrap_err().to_string();
        assert!(e.contains(want), "{text}: {e}");
    }
}

#[test]
fn definitions_are_told_apart_by_kind_and_round_trip() {
    let vios = Definition::from_json(
        r#"{"kind":"vios","name":"v","disks":[{"id":"d","path":"/d","read_only":true}],"restart":"never"}"#,
        Path::new("/v.json"),
    )
    .unwrap();
    assert!(vios.is_vios() && vios.kind() == Some(VIOS_KIND) && vios.name() == Some("v"));
    let text = serde_json::to_string(&vios).unwrap();
    assert!(text.starts_with(r#"{"kind":"vios","#), "{text}");
    assert_eq!(serde_json::from_str::<Definition>(&text).unwrap(), vios);
    let Definition::Vios(v) = &vios else {
        unreachable!()
    };
    assert_eq!(v.export_names(), vec!["d:ro".to_string()]);

    let part = Definition::from_json(
        r#"{"name":"p","kernel":"/k","disks":[{"id":"a","path":"vios:v/d"}]}"#,
        Path::new("/p.json"),
    )
    .unwrap();
    assert!(!part.is_vios() && part.kind().is_none());
    let text = serde_json::to_string(&part).unwrap();
    assert!(!text.contains("kind"), "{text}");
    assert_eq!(serde_json::from_str::<Definition>(&text).unwrap(), part);
    // A VMM is not given a VIOS definition, nor the other way round.
    let e = vios.into_partition(Path::new("v.json")).unwrap_err();
    assert!(e.to_string().contains("vios --config"), "{e}");
    // Received definitions (the protocol) name the field too.
    let e = serde_json::from_str::<Definition>(r#"{"name":"a","kernal":"/k"}"#).unwrap_err();
    assert!(e.to_string().contains("kernal"), "{e}");
    assert!(serde_json::from_str::<Definition>("[1]").is_err());
}

#[test]
fn unreadable_files_are_named() {
    let e = Definition::from_file(Path::new("/nonexistent/p.json"))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("cannot read partition definition /nonexistent/p.json"),
        "{e}"
    );
}

#[test]
fn a_command_line_longer_than_the_vmm_takes_is_refused() {
    let long = "x".repeat(MAX_CMDLINE_LEN + 1);
    let d = PartitionDefinition {
        kernel: Some("k".into()),
        cmdline: Some(long),
        ..Default::default()
    };
    let e = d.validate().unwrap_err().to_string();
    assert_eq!(
        e,
        format!("cmdline is 4096 bytes; at most {MAX_CMDLINE_LEN}")
    );
    let d = PartitionDefinition {
        kernel: Some("k".into()),
        cmdline: Some("y".repeat(MAX_CMDLINE_LEN)),
        ..Default::default()
    };
    assert!(d.validate().is_ok());
}

#[test]
fn shared_memory_section_parses_and_defaults() {
    let c = parse(r#"{"kernel":"k","memory":{"mode":"shared","logical_mib":256}}"#)
        .unwrap()
        .validate()
        .unwrap();
    assert_eq!(c.memory_mib, 256);
    let s = c.shared.unwrap();
    assert_eq!(s.weight, DEFAULT_MEMORY_WEIGHT);
    assert_eq!((s.paging, s.resident_mib), (None, None));

    // memory_mib stands for the logical size; paging and the target as the
    // manager writes them.
    let d = parse(
        r#"{"kernel":"k","memory_mib":64,"memory":{"mode":"shared","weight":4,
            "paging":"vhost-user-fd:7","paging_evictor":"vhost-user-fd:8","resident_mib":16}}"#,
    )
    .unwrap();
    let text = serde_json::to_string(&d).unwrap();
    assert!(text.contains(r#""paging":"vhost-user-fd:7""#), "{text}");
    assert!(
        text.contains(r#""paging_evictor":"vhost-user-fd:8""#),
        "{text}"
    );
    let c = d.validate().unwrap();
    assert_eq!(c.memory_mib, 64);
    let s = c.shared.unwrap();
    assert_eq!(s.weight, 4);
    assert_eq!(s.paging, Some(DiskSource::VhostUserFd(7)));
    assert_eq!(s.paging_evictor, Some(DiskSource::VhostUserFd(8)));
    assert_eq!(s.resident_mib, Some(16));

    // Dedicated, spelled out, is today's behaviour.
    let c = parse(r#"{"kernel":"k","memory_mib":8,"memory":{"mode":"dedicated"}}"#)
        .unwrap()
        .validate()
        .unwrap();
    assert_eq!((c.memory_mib, c.shared), (8, None));
}

#[test]
fn broken_memory_sections_are_named() {
    let field = |json: &str| parse(json).unwrap_err().to_string();
    for (json, says) in [
        (r#"{"kernel":"k","memory":{"mode":"lent"}}"#, "mode"),
        (
            r#"{"kernel":"k","memory":{"mode":"shared","weight":256}}"#,
            "weight",
        ),
        (
            r#"{"kernel":"k","memory":{"mode":"shared","paging":"/tmp/disk.img"}}"#,
            "VIOS",
        ),
        (
            r#"{"kernel":"k","memory":{"mode":"shared","paging":"vios:nope"}}"#,
            "vios:<vios-name>",
        ),
        (
            r#"{"kernel":"k","memory":{"mode":"shared","logical":5}}"#,
            "logical",
        ),
        (r#"{"kernel":"k","memory":7}"#, "memory"),
    ] {
        let e = field(json);
        assert!(e.contains(says), "{json}: {e}");
    }
    let invalid = |json: &str| parse(json).unwrap().validate().unwrap_err().to_string();
    for (json, says) in [
        (
            r#"{"kernel":"k","memory":{"weight":3}}"#,
            "need \"mode\": \"shared\"",
        ),
        (
            r#"{"kernel":"k","memory_mib":64,"memory":{"mode":"shared","logical_mib":32}}"#,
            "differ",
        ),
        (
            r#"{"kernel":"k","memory":{"mode":"shared","logical_mib":32,"resident_mib":64}}"#,
            "above the logical size",
        ),
        (
            r#"{"kernel":"k","memory":{"mode":"shared","logical_mib":32,"resident_mib":1}}"#,
            "below the minimum",
        ),
        (
            r#"{"kernel":"k","memory":{"mode":"shared","logical_mib":1}}"#,
            "memory_mib must be",
        ),
        (
            r#"{"kernel":"k","memory":{"mode":"shared","paging_evictor":"vhost-user-fd:4"}}"#,
            "paging_evictor needs paging",
        ),
        (
            r#"{"kernel":"k","memory":{"mode":"shared","paging":"vios:v/d","paging_evictor":"vios:v/d"}}"#,
            "not vios:",
        ),
        (
            r#"{"kernel":"k","memory":{"paging_evictor":"vhost-user-fd:4"}}"#,
            "need \"mode\": \"shared\"",
        ),
    ] {
        let e = invalid(json);
        assert!(e.contains(says), "{json}: {e}");
    }
}

#[test]
fn cpu_sections_are_checked_with_the_field_named() {
    let d = parse(r#"{"kernel":"k","vcpus":2,"cpu":{"entitled":0.5,"mode":"capped","max":2}}"#)
        .unwrap();
    let cpu = d.cpu.unwrap();
    assert_eq!((cpu.entitled.0, cpu.max().0), (50, 200));
    assert!(d.clone().validate().is_ok());
    let e = parse(r#"{"kernel":"k","cpu":{"entitled":0.5,"weight":300}}"#)
        .unwrap_err()
        .to_string();
    assert!(e.contains("cpu.weight"), "{e}");
    let e = parse(r#"{"kernel":"k","vcpus":1,"cpu":{"entitled":2}}"#)
        .unwrap()
        .validate()
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("cpu: 2.00 processing units for 1 vCPU(s): at most 1.00"),
        "{e}"
    );
}

#[test]
fn on_crash_section_parses_and_is_checked() {
    let c = parse(r#"{"kernel":"k","on_crash":{"dump":"vios:vios1/dumps","then":"reboot"}}"#)
        .unwrap()
        .validate()
        .unwrap();
    let oc = c.on_crash.unwrap();
    assert_eq!(
        oc.dump,
        Some(DiskSource::Vios {
            vios: "vios1".into(),
            disk: "dumps".into()
        })
    );
    assert_eq!(oc.then, CrashAction::Reboot);
    // Defaults: no dump, stop.
    let c = parse(r#"{"kernel":"k","on_crash":{}}"#)
        .unwrap()
        .validate()
        .unwrap();
    assert_eq!(c.on_crash.unwrap(), OnCrash::default());
    // A socket path is relative to the file.
    let d = parse(r#"{"kernel":"k","on_crash":{"dump":"vhost-user:d.sock"}}"#).unwrap();
    assert_eq!(
        d.on_crash.unwrap().dump,
        Some(DiskSource::VhostUser("/etc/parvm/d.sock".into()))
    );
    let err = |json: &str| match parse(json).and_then(|d| d.validate().map(|_| ())) {
        Err(e) => e.to_string(),
        Ok(()) => panic!("accepted: {json}"),
    };
    assert!(err(r#"{"kernel":"k","on_crash":{"dump":"/img"}}"#).contains("served by a VIOS"));
    assert!(err(r#"{"kernel":"k","on_crash":{"dump":"vios:x"}}"#).contains("vios:<vios-name>"));
    assert!(err(r#"{"kernel":"k","on_crash":{"then":"explode"}}"#).contains("then"));
    assert!(err(r#"{"kernel":"k","on_crash":{"dunp":"vios:a/b"}}"#).contains("dunp"));
    assert!(err(r#"{"kernel":"k","on_crash":{"watchdog_secs":0}}"#).contains("watchdog_secs 0"));
    assert!(err(r#"{"kernel":"k","on_crash":{"watchdog_secs":999999}}"#).contains("outside"));
}
