//! Logs on stderr, and where their level comes from. The first of these that is set wins:
//!
//! 1. `SURVEIL_LOG`, a full `tracing` filter for every crate (for experts);
//! 2. `-q` / `-v`… on the command line;
//! 3. the configuration's `output.log_level`, raised to `debug` by `output.debug` unless a
//!    later layer set `log_level` ([`surveil_config::LoadedConfig::log_level`]);
//! 4. `warn`.
//!
//! Levels 2 to 4 apply to surveil's own crates; other crates (candle, tokenizers, …) stay at
//! `warn` (`error` when that is the level), so that `debug` shows surveil's diagnostics and not
//! a flood from the libraries under it. The configuration is only known once a command has
//! loaded it: [`init`] installs a reloadable filter from 1, 2 and 4 when the process starts,
//! and [`apply_config`] swaps in the configured level when no flag or `SURVEIL_LOG` decided.

use std::sync::OnceLock;

use surveil_config::{LoadedConfig, LogLevel};
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{reload, EnvFilter, Registry};

/// The variable holding a full filter, which overrides flags and configuration.
pub const FILTER_VAR: &str = "SURVEIL_LOG";

/// The level when neither `SURVEIL_LOG`, a flag nor a configuration says one.
const DEFAULT_LEVEL: LogLevel = LogLevel::Warn;

/// What decided the filter installed by [`init`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Decided {
    /// `SURVEIL_LOG`: nothing else changes it.
    Env,
    /// `-q` / `-v`: nothing but `SURVEIL_LOG` changes it.
    Flags,
    /// Nothing yet: the configuration may.
    Default,
}

/// The installed filter and what decided it.
struct Logging {
    decided: Decided,
    handle: reload::Handle<EnvFilter, Registry>,
}

static LOGGING: OnceLock<Logging> = OnceLock::new();

/// The level `-q` / `-v` ask for, if any (`-q` wins over `-v`).
pub fn flag_level(verbose: u8, quiet: bool) -> Option<LogLevel> {
    match (quiet, verbose) {
        (true, _) => Some(LogLevel::Error),
        (false, 0) => None,
        (false, 1) => Some(LogLevel::Info),
        (false, 2) => Some(LogLevel::Debug),
        _ => Some(LogLevel::Trace),
    }
}

/// Filter directives for surveil's crates at `level` and every other crate at `warn` (at
/// `error` when `level` is). A target directive matches every target that starts with it, so
/// `surveil` covers the binary and each `surveil_*` library crate.
pub fn scoped_directives(level: LogLevel) -> String {
    let others = level.min(LogLevel::Warn);
    format!("{},surveil={}", others.as_str(), level.as_str())
}

/// `SURVEIL_LOG` as a filter: `None` when unset or blank, `Err` with the text and the reason
/// when it does not parse.
fn env_filter(value: Option<String>) -> Option<Result<EnvFilter, (String, String)>> {
    let text = value.filter(|v| !v.trim().is_empty())?;
    Some(EnvFilter::try_new(&text).map_err(|e| (text, e.to_string())))
}

/// The filter of `level` for surveil's crates ([`scoped_directives`]).
fn level_filter(level: LogLevel) -> EnvFilter {
    // The directives are built from level names, which always parse; `new` would drop a bad
    // one rather than fail.
    EnvFilter::new(scoped_directives(level))
}

/// Install the stderr logger: `SURVEIL_LOG` if set and valid, else the level of the flags, else
/// `warn`. Called once, first thing in `main`; [`apply_config`] may change the level later.
pub fn init(verbose: u8, quiet: bool) {
    let flags = flag_level(verbose, quiet);
    let mut rejected = None;
    let (filter, decided) = match env_filter(std::env::var(FILTER_VAR).ok()) {
        Some(Ok(filter)) => (filter, Decided::Env),
        other => {
            if let Some(Err(bad)) = other {
                rejected = Some(bad);
            }
            match flags {
                Some(level) => (level_filter(level), Decided::Flags),
                None => (level_filter(DEFAULT_LEVEL), Decided::Default),
            }
        }
    };
    let (filter, handle) = reload::Layer::new(filter);
    let installed = tracing_subscriber::registry()
        .with(filter)
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                // Colour only on a terminal: logs redirected to a file or a pipe stay plain
                // text, and a non-empty NO_COLOR (https://no-color.org) turns colour off on a
                // terminal too.
                .with_ansi(
                    std::io::IsTerminal::is_terminal(&std::io::stderr())
                        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()),
                )
                .with_target(false),
        )
        .try_init()
        .is_ok();
    if installed {
        let _ = LOGGING.set(Logging { decided, handle });
    }
    if let Some((text, reason)) = rejected {
        tracing::warn!("{FILTER_VAR}={text:?} is not a valid log filter ({reason}); ignored");
    }
}

/// Log at the level the configuration asks for ([`LoadedConfig::log_level`]), unless
/// `SURVEIL_LOG` or a flag decided the level at [`init`]. Called by every command that loads a
/// configuration, once it is loaded and valid.
pub fn apply_config(loaded: &LoadedConfig) {
    let Some(logging) = LOGGING.get() else {
        return;
    };
    if logging.decided != Decided::Default {
        return;
    }
    let level = loaded.log_level();
    if let Err(e) = logging.handle.reload(level_filter(level)) {
        tracing::warn!(
            "cannot set the configured log level {}: {e}",
            level.as_str()
        );
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    use tracing_subscriber::layer::{Context, Layer};

    use super::*;

    #[test]
    fn flags_map_to_levels() {
        assert_eq!(flag_level(0, false), None);
        assert_eq!(flag_level(1, false), Some(LogLevel::Info));
        assert_eq!(flag_level(2, false), Some(LogLevel::Debug));
        assert_eq!(flag_level(5, false), Some(LogLevel::Trace));
        assert_eq!(flag_level(0, true), Some(LogLevel::Error));
        assert_eq!(
            flag_level(2, true),
            Some(LogLevel::Error),
            "-q wins over -v"
        );
    }

    #[test]
    fn directives_scope_the_level_to_surveil() {
        assert_eq!(scoped_directives(LogLevel::Debug), "warn,surveil=debug");
        assert_eq!(scoped_directives(LogLevel::Info), "warn,surveil=info");
        assert_eq!(scoped_directives(LogLevel::Warn), "warn,surveil=warn");
        assert_eq!(scoped_directives(LogLevel::Error), "error,surveil=error");
        for level in <LogLevel as surveil_config::Choice>::ALL {
            assert!(EnvFilter::try_new(scoped_directives(*level)).is_ok());
        }
    }

    #[test]
    fn blank_or_bad_surveil_log_is_not_a_filter() {
        assert!(env_filter(None).is_none());
        assert!(env_filter(Some("  ".into())).is_none());
        assert!(matches!(env_filter(Some("debug".into())), Some(Ok(_))));
        let Some(Err((text, reason))) = env_filter(Some("surveil=loud".into())) else {
            panic!("`surveil=loud` parsed");
        };
        assert_eq!(text, "surveil=loud");
        assert!(!reason.is_empty());
    }

    /// Counts the events that reach it.
    struct Count(Arc<AtomicUsize>);

    impl<S: tracing::Subscriber> Layer<S> for Count {
        fn on_event(&self, _: &tracing::Event<'_>, _: Context<'_, S>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// How many of a debug and a warn event from each of `targets`' crates pass `filter`.
    fn passed(filter: EnvFilter) -> [usize; 3] {
        let count = Arc::new(AtomicUsize::new(0));
        let subscriber = tracing_subscriber::registry()
            .with(filter)
            .with(Count(count.clone()));
        let mut seen = [0; 3];
        tracing::subscriber::with_default(subscriber, || {
            let before = count.load(Ordering::SeqCst);
            tracing::debug!(target: "surveil", "binary");
            tracing::debug!(target: "surveil_models::load::manager", "library");
            seen[0] = count.load(Ordering::SeqCst) - before;
            let before = count.load(Ordering::SeqCst);
            tracing::debug!(target: "candle_core::tensor", "third party");
            tracing::debug!(target: "tokenizers", "third party");
            seen[1] = count.load(Ordering::SeqCst) - before;
            let before = count.load(Ordering::SeqCst);
            tracing::warn!(target: "candle_core::tensor", "third party");
            seen[2] = count.load(Ordering::SeqCst) - before;
        });
        seen
    }

    #[test]
    fn debug_reaches_surveil_crates_only() {
        assert_eq!(passed(level_filter(LogLevel::Debug)), [2, 0, 1]);
        assert_eq!(passed(level_filter(LogLevel::Warn)), [0, 0, 1]);
        assert_eq!(passed(level_filter(LogLevel::Error)), [0, 0, 0]);
        // SURVEIL_LOG is used as written: every crate.
        assert_eq!(passed(EnvFilter::new("debug")), [2, 2, 1]);
    }
}
