//! The stored definition: `show` prints it as a file `define` and
//! `update` take, `update` replaces it (or the restart policy), `edit`
//! round-trips it through an editor, and `validate` checks a file without
//! a manager.

use anyhow::{anyhow, bail, Context};
use partition_manager::client::{Client, ClientError};
use partition_manager::definition;
use partition_manager::protocol::{Definition, Request, Response, RestartPolicy};
use std::path::Path;

/// The definition with its manager-side fields put back in: the file
/// `parctl define` reads.
fn as_file(
    mut definition: Definition,
    restart: RestartPolicy,
    segments: Vec<partition_manager::protocol::SegmentSpec>,
) -> Definition {
    match &mut definition {
        Definition::Partition(d) => {
            d.restart = Some(restart);
            d.segments = (!segments.is_empty()).then_some(segments);
        }
        Definition::Vios(d) => d.restart = Some(restart),
    }
    definition
}

fn stored_file(answer: Response) -> anyhow::Result<(String, Definition)> {
    match answer {
        Response::Definition {
            name,
            definition,
            restart,
            segments,
        } => Ok((name, as_file(definition, restart, segments))),
        other => Err(ClientError::Unexpected(format!("{other:?}")).into()),
    }
}

/// `show`: the stored definition, pretty JSON.
pub fn print_stored(answer: Response) -> anyhow::Result<()> {
    let (_, file) = stored_file(answer)?;
    println!("{}", serde_json::to_string_pretty(&file)?);
    Ok(())
}

/// `update NAME [FILE] [--restart P]`.
pub fn update_request(
    name: &str,
    file: Option<&Path>,
    restart: Option<RestartPolicy>,
) -> anyhow::Result<Request> {
    let (definition, file_restart) = match file {
        Some(f) => {
            let f = definition::from_file(f)?;
            if !f.segments.is_empty() {
                bail!("`segments` cannot change with update (parctl segment create adds one)");
            }
            (Some(f.definition), f.restart)
        }
        None => (None, None),
    };
    let restart = restart.or(file_restart);
    if definition.is_none() && restart.is_none() {
        bail!("update {name}: give a definition FILE, --restart, or both");
    }
    Ok(Request::Update {
        name: name.into(),
        definition,
        restart,
    })
}

/// `validate FILE`: every check `define` makes on this side, and the
/// manager's own checks of paths and ranges, without a manager.
pub fn validate(file: &Path, json: bool) -> anyhow::Result<()> {
    let f = definition::from_file(file)?;
    let name = f.definition.name().unwrap_or_default().to_string();
    match &f.definition {
        Definition::Partition(def) => {
            definition::check(def, f.restart.unwrap_or_default())?;
        }
        Definition::Vios(def) => partition_manager::vios::check(def)
            .map_err(|e| anyhow!("partition definition {}: {e}", file.display()))?,
    }
    let kind = f.definition.kind().unwrap_or("partition");
    if json {
        println!(
            "{}",
            serde_json::json!({"valid": true, "name": name, "kind": kind, "file": file.display().to_string()})
        );
    } else {
        println!("{}: a valid {kind} definition of `{name}`", file.display());
    }
    Ok(())
}

/// `edit NAME`: the stored definition in `$VISUAL`/`$EDITOR` (a private
/// temporary file), then `update` if it changed.
pub fn edit(client: &Client, name: &str, json: bool) -> anyhow::Result<()> {
    let (answer, _) = client.call(&Request::Show { name: name.into() })?;
    let (_, stored) = stored_file(answer)?;
    let text = serde_json::to_string_pretty(&stored)? + "\n";
    let editor = std::env::var("VISUAL")
        .or_else(|_| std::env::var("EDITOR"))
        .unwrap_or_else(|_| "vi".into());
    let path = std::env::temp_dir().join(format!("parctl-edit-{name}-{}.json", std::process::id()));
    {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .with_context(|| format!("cannot create {}", path.display()))?;
        f.write_all(text.as_bytes())?;
    }
    let result = (|| {
        let status = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("{editor} \"$1\""))
            .arg("sh")
            .arg(&path)
            .status()
            .with_context(|| format!("cannot run the editor `{editor}`"))?;
        if !status.success() {
            bail!("the editor `{editor}` failed ({status}); nothing changed");
        }
        let edited = std::fs::read_to_string(&path)?;
        if edited == text {
            return Ok(None);
        }
        let f = definition::from_file(&path)?;
        let old_segments = match &stored {
            Definition::Partition(d) => d.segments.clone().unwrap_or_default(),
            Definition::Vios(_) => Vec::new(),
        };
        if f.segments != old_segments {
            bail!("`segments` cannot change with edit (parctl segment create adds one); nothing changed");
        }
        Ok(Some(Request::Update {
            name: name.into(),
            definition: Some(f.definition),
            restart: f.restart,
        }))
    })();
    let _ = std::fs::remove_file(&path);
    match result? {
        None => {
            if json {
                println!("{}", serde_json::json!({"name": name, "changed": false}));
            } else {
                println!("{name}: unchanged");
            }
        }
        Some(request) => {
            let (answer, _) = client.call(&request)?;
            if json {
                println!("{}", partition_manager::api::routes::answer_body(answer));
            } else {
                println!("updated {name}");
            }
        }
    }
    Ok(())
}
