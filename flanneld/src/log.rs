//! Logging through `tracing`, to stderr, as text or JSON lines.
//!
//! flannel logs through klog with `-v=N`; we keep the same knob: level 0
//! shows flanneld's info, warnings and errors, 1 adds debug, 2 and more
//! trace. The libraries under us (etcd-client, tonic, h2, hyper, tower) log
//! through `tracing` too: their warnings and errors always show, their
//! detail only from `-v=2` on, so a debug session of flanneld is not drowned
//! in HTTP/2 frames. `RUST_LOG` replaces the whole filter when set, with
//! its usual `target=level` directives (`RUST_LOG=flanneld=debug,h2=info`).
//! The filter is tracing-subscriber's `Targets`, not `EnvFilter`: that one
//! adds span and field-value matching through a regex engine, which would
//! make the binary, and so the daemon's resident memory, 0.5 MiB larger.
//!
//! Text lines read well in a journal or a container log
//! (`2024-05-01T10:00:00.123Z INFO message`); JSON lines
//! (`--log-format=json`) carry the same timestamp, level, target, message
//! and fields as top-level keys, one object per line, for log collectors.

use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use tracing::level_filters::LevelFilter;
use tracing::{Dispatch, Event, Subscriber};
use tracing_subscriber::filter::{ParseError, Targets};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::FormatTime;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, MakeWriter};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;

/// The crate's own target prefix (library modules and the binary).
const OWN_TARGET: &str = "flanneld";

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    // `2024-05-01T10:00:00.123Z INFO message`
    #[default]
    Text,
    // one JSON object per line
    Json,
}

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("invalid RUST_LOG {value:?}: {source}")]
    Filter { value: String, source: ParseError },
    #[error("a logger is already installed")]
    AlreadySet(#[from] tracing::dispatcher::SetGlobalDefaultError),
}

/// Installs the process-wide logger writing to stderr. `rust_log` is the
/// value of `RUST_LOG`, which replaces the `-v` filter when not empty.
pub fn init(verbosity: u32, format: LogFormat, rust_log: Option<&str>) -> Result<(), LogError> {
    let dispatch = dispatch(filter(verbosity, rust_log)?, format, std::io::stderr);
    tracing::dispatcher::set_global_default(dispatch)?;
    Ok(())
}

/// The filter for `-v=N`, unless `RUST_LOG` says otherwise.
pub fn filter(verbosity: u32, rust_log: Option<&str>) -> Result<Targets, LogError> {
    match rust_log.map(str::trim).filter(|v| !v.is_empty()) {
        Some(value) => value.parse().map_err(|source| LogError::Filter {
            value: value.to_owned(),
            source,
        }),
        None => Ok(verbosity_filter(verbosity)),
    }
}

/// flanneld's events from info (0), debug (1) or trace (2+); the libraries'
/// from warn (0, 1), info (2), debug (3) or trace (4+).
fn verbosity_filter(verbosity: u32) -> Targets {
    let own = match verbosity {
        0 => LevelFilter::INFO,
        1 => LevelFilter::DEBUG,
        _ => LevelFilter::TRACE,
    };
    let deps = match verbosity {
        0 | 1 => LevelFilter::WARN,
        2 => LevelFilter::INFO,
        3 => LevelFilter::DEBUG,
        _ => LevelFilter::TRACE,
    };
    Targets::new()
        .with_default(deps)
        .with_target(OWN_TARGET, own)
}

/// A logger with `filter`, in `format`, writing through `writer`.
pub fn dispatch<W>(filter: Targets, format: LogFormat, writer: W) -> Dispatch
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    // `filter` decides; the builder's own level filter (info by default)
    // must let everything through to it.
    let builder = tracing_subscriber::fmt()
        .with_max_level(LevelFilter::TRACE)
        .with_writer(writer);
    match format {
        LogFormat::Text => Dispatch::new(builder.event_format(TextLine).finish().with(filter)),
        LogFormat::Json => {
            let json = builder.json().flatten_event(true).with_timer(Millis);
            Dispatch::new(json.finish().with(filter))
        }
    }
}

/// `timestamp LEVEL message fields`, with the target before the message
/// for events that are not flanneld's own.
struct TextLine;

impl<S, N> FormatEvent<S, N> for TextLine
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut w: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let meta = event.metadata();
        write!(w, "{} {} ", timestamp(SystemTime::now()), meta.level())?;
        if !is_own(meta.target()) {
            write!(w, "{}: ", meta.target())?;
        }
        ctx.format_fields(w.by_ref(), event)?;
        writeln!(w)
    }
}

fn is_own(target: &str) -> bool {
    target
        .strip_prefix(OWN_TARGET)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with("::"))
}

/// The JSON lines' timestamp: the same layout as the text lines'.
struct Millis;

impl FormatTime for Millis {
    fn format_time(&self, w: &mut Writer<'_>) -> fmt::Result {
        w.write_str(&timestamp(SystemTime::now()))
    }
}

/// RFC 3339 UTC timestamp with milliseconds.
pub fn timestamp(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (y, m, day) = civil_from_days((secs / 86_400) as i64);
    let rem = secs % 86_400;
    format!(
        "{y:04}-{m:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        d.subsec_millis()
    )
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian
/// (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    #[test]
    fn formats_utc_timestamps() {
        assert_eq!(timestamp(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let t = UNIX_EPOCH + Duration::from_millis(1_709_210_096_789);
        assert_eq!(timestamp(t), "2024-02-29T12:34:56.789Z");
    }

    /// Lines written by a logger, for inspection.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// Emits one event per level from flanneld and from two libraries, and
    /// returns the lines the logger wrote.
    fn emit(format: LogFormat, verbosity: u32, rust_log: Option<&str>) -> Vec<String> {
        let out = Captured::default();
        let writer = out.clone();
        let filter = filter(verbosity, rust_log).unwrap();
        let dispatch = dispatch(filter, format, move || writer.clone());
        tracing::dispatcher::with_default(&dispatch, || {
            crate::error!("own error {}", 1);
            crate::warn!("own warn");
            crate::info!(peers = 3, "own info");
            crate::debug!("own debug");
            tracing::trace!("own trace");
            tracing::warn!(target: "etcd_client::client", "etcd warn");
            tracing::info!(target: "tonic::transport", "tonic info");
            tracing::debug!(target: "h2::codec", "h2 debug");
            tracing::trace!(target: "hyper::proto", "hyper trace");
        });
        let bytes = out.0.lock().unwrap().clone();
        String::from_utf8(bytes)
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    fn messages(lines: &[String]) -> Vec<String> {
        lines
            .iter()
            .map(|l| l.split_once(' ').unwrap().1.to_owned())
            .collect()
    }

    #[test]
    fn text_lines_have_timestamp_level_and_message() {
        let lines = emit(LogFormat::Text, 0, None);
        for line in &lines {
            let (ts, _) = line.split_once(' ').unwrap();
            // 2024-05-01T10:00:00.123Z
            assert_eq!(ts.len(), 24, "{line}");
            let shape: String = ts
                .chars()
                .map(|c| if c.is_ascii_digit() { '0' } else { c })
                .collect();
            assert_eq!(shape, "0000-00-00T00:00:00.000Z", "{line}");
        }
        assert_eq!(
            messages(&lines),
            [
                "ERROR own error 1",
                "WARN own warn",
                "INFO own info peers=3",
                "WARN etcd_client::client: etcd warn",
            ]
        );
    }

    #[test]
    fn verbosity_adds_own_detail_before_the_libraries() {
        let at = |v| messages(&emit(LogFormat::Text, v, None));
        assert!(at(1).contains(&"DEBUG own debug".to_owned()));
        assert!(!at(1).iter().any(|l| l.contains("trace")));
        assert!(at(2).contains(&"TRACE own trace".to_owned()));
        assert!(at(2).contains(&"INFO tonic::transport: tonic info".to_owned()));
        assert!(!at(2).iter().any(|l| l.contains("h2 debug")));
        assert!(at(3).contains(&"DEBUG h2::codec: h2 debug".to_owned()));
        assert!(at(4).contains(&"TRACE hyper::proto: hyper trace".to_owned()));
    }

    #[test]
    fn rust_log_replaces_the_filter() {
        let lines = messages(&emit(LogFormat::Text, 0, Some("h2=debug")));
        assert_eq!(lines, ["DEBUG h2::codec: h2 debug"]);
        assert!(filter(0, Some("flanneld=loud")).is_err());
        // Empty counts as unset, as for the flags' environment variables.
        assert_eq!(emit(LogFormat::Text, 0, Some(" ")).len(), 4);
    }

    #[test]
    fn json_lines_parse_with_timestamp_level_target_and_message() {
        let lines = emit(LogFormat::Json, 0, None);
        let objects: Vec<serde_json::Value> = lines
            .iter()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
            .collect();
        assert_eq!(objects.len(), 4, "{lines:?}");
        let info = &objects[2];
        assert_eq!(info["level"], "INFO");
        assert_eq!(info["message"], "own info");
        assert_eq!(info["peers"], 3);
        assert_eq!(info["target"], "flanneld::log::tests");
        let ts = info["timestamp"].as_str().unwrap();
        assert!(ts.len() == 24 && ts.ends_with('Z'), "{ts}");
        assert_eq!(objects[3]["target"], "etcd_client::client");
        assert_eq!(objects[3]["level"], "WARN");
        assert_eq!(objects[3]["message"], "etcd warn");
    }
}
