//! What every parvm binary (`vmm`, `partition-manager`, `parctl`, `vios`)
//! does at its edge: logs to stderr filtered by `PARVM_LOG`, and failures
//! reported as one line.

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// Logs to stderr. `PARVM_LOG` is a level (`debug`) or per-target
/// directives (`vmm=debug,virtio_devices=info`); without it, `default`.
/// `PARVM_LOG_FORMAT=json` writes one JSON object a line (for journald or
/// a log shipper) instead of text. A value that does not parse is said
/// once, as a warning, and the default used.
pub fn init_logging(default: tracing::Level) {
    let fallback = || tracing_subscriber::filter::Targets::new().with_default(default);
    let mut warnings = Vec::new();
    let filter: tracing_subscriber::filter::Targets = match std::env::var("PARVM_LOG") {
        Ok(v) => match v.parse() {
            Ok(f) => f,
            Err(e) => {
                warnings.push(format!(
                    "PARVM_LOG=`{v}` ignored ({e}); logging at {default}"
                ));
                fallback()
            }
        },
        Err(_) => fallback(),
    };
    let json = match std::env::var("PARVM_LOG_FORMAT").as_deref() {
        Ok("json") => true,
        Ok("text") | Ok("") | Err(_) => false,
        Ok(other) => {
            warnings.push(format!(
                "PARVM_LOG_FORMAT=`{other}` ignored (text or json); logging as text"
            ));
            false
        }
    };
    let registry = tracing_subscriber::registry().with(filter);
    if json {
        registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_writer(std::io::stderr),
            )
            .init();
    } else {
        registry
            .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr))
            .init();
    }
    for w in warnings {
        tracing::warn!("{w}");
    }
}

/// The error and its causes on one line, skipping causes the message
/// already quotes.
pub fn one_line(e: &anyhow::Error) -> String {
    let mut msg = e.to_string();
    for cause in e.chain().skip(1) {
        let c = cause.to_string();
        if !msg.contains(&c) {
            msg.push_str(": ");
            msg.push_str(&c);
        }
    }
    msg.replace('\n', " ")
}

#[cfg(test)]
mod tests {
    use super::one_line;

    #[test]
    fn causes_join_on_one_line_without_repeats() {
        let e = anyhow::anyhow!("inner\nproblem").context("outer");
        assert_eq!(one_line(&e), "outer: inner problem");
        let quoted = anyhow::anyhow!("disk x").context("cannot open disk x");
        assert_eq!(one_line(&quoted), "cannot open disk x");
    }
}
