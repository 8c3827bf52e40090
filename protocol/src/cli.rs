//! What every parvm binary (`vmm`, `partition-manager`, `parctl`, `vios`)
//! does at its edge: logs to stderr filtered by `PARVM_LOG`, and failures
//! reported as one line.

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// Logs to stderr. `PARVM_LOG` is a level (`debug`) or per-target
/// directives (`vmm=debug,virtio_devices=info`); without it, `default`.
pub fn init_logging(default: tracing::Level) {
    let filter: tracing_subscriber::filter::Targets = std::env::var("PARVM_LOG")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| tracing_subscriber::filter::Targets::new().with_default(default));
    tracing_subscriber::registry()
        .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr))
        .with(filter)
        .init();
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
