//! `surveil`: the command-line front of the surveil libraries. It parses flags, builds the
//! configuration, calls the libraries and prints; the work itself lives in the crates.
//!
//! Exit codes: 0 success, 1 runtime failure, 2 usage or configuration error.
// `unwrap`/`expect` only in tests: code outside them reports failures as errors.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

/// `println!` for a command's report: a closed stdout (`surveil config show | head -3`) ends
/// the process quietly with status 0, as other Unix tools do, instead of panicking; any other
/// write error ends it with status 1 and a message. Commands that must finish work after
/// printing (`surveil run`) handle their own writes.
macro_rules! outln {
    ($($arg:tt)*) => {
        $crate::write_report_line(format_args!($($arg)*))
    };
}

mod cli;
mod cmd;
mod logging;

/// The body of [`outln!`].
pub(crate) fn write_report_line(args: std::fmt::Arguments<'_>) {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    let written = out
        .write_fmt(args)
        .and_then(|()| out.write_all(b"\n"))
        .and_then(|()| out.flush());
    match written {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => std::process::exit(0),
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "error: writing to stdout: {e}");
            std::process::exit(1);
        }
    }
}

use std::process::ExitCode;

use clap::Parser;

use cli::{Cli, Command, ConfigCommand, ModelsCommand, VerdictCommand};

/// An error and the exit code it maps to.
pub(crate) enum Failure {
    /// Bad flags, bad configuration: exit 2.
    Usage(anyhow::Error),
    /// Anything that went wrong while working: exit 1.
    Runtime(anyhow::Error),
}

impl From<anyhow::Error> for Failure {
    fn from(e: anyhow::Error) -> Self {
        // Configuration problems are usage errors wherever they surface.
        if e.chain()
            .any(|c| c.downcast_ref::<surveil_config::ConfigError>().is_some())
        {
            Failure::Usage(e)
        } else {
            Failure::Runtime(e)
        }
    }
}

/// Sets `RAYON_NUM_THREADS` to the physical cores of this process's CPU mask when the user has
/// not set it: the count candle would pick anyway. candle asks for its thread count on every
/// CPU matmul, and without the variable it works that count out again each time, reading and
/// parsing `/proc/cpuinfo` (1615 times in a 50-token git-base caption, counted with `strace -e
/// openat`). Runs first in `main`,
/// before any other thread exists.
fn pin_tensor_threads() {
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        std::env::set_var(
            "RAYON_NUM_THREADS",
            surveil_models::quant::physical_cores().to_string(),
        );
    }
}

fn main() -> ExitCode {
    pin_tensor_threads();
    let cli = Cli::parse();
    logging::init(cli.verbose, cli.quiet);
    let result = match &cli.command {
        Command::Config {
            command: ConfigCommand::Show(args),
        } => cmd::config::show(&cli, args),
        Command::Doctor(args) => cmd::doctor::run(&cli, args),
        Command::Memory(args) => cmd::memory::run(args),
        Command::Detect(args) => cmd::detect::run(&cli, args),
        Command::Run(args) => cmd::run::run(&cli, args),
        Command::TestSingleModel(args) => cmd::test_model::run(&cli, args),
        Command::Models {
            command: ModelsCommand::List(args),
        } => cmd::models::list(&cli, args),
        Command::Models {
            command: ModelsCommand::Synth(args),
        } => cmd::models::synth(args),
        Command::Verdict {
            command: VerdictCommand::Parse(args),
        } => cmd::verdict::parse(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Usage(e)) => {
            report_error(&e);
            ExitCode::from(2)
        }
        Err(Failure::Runtime(e)) => {
            report_error(&e);
            ExitCode::from(1)
        }
    }
}

/// Print `error: ...` on stderr; a closed stderr is not worth a panic.
fn report_error(e: &anyhow::Error) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "error: {}", chain(e));
}

/// `outer: inner: root` on one line, without backtraces. A cause that its outer message
/// already ends with (errors that print their source and also return it) is not repeated.
fn chain(e: &anyhow::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    for cause in e.chain().map(ToString::to_string) {
        if parts.last().is_some_and(|outer| outer.ends_with(&cause)) {
            continue;
        }
        parts.push(cause);
    }
    parts.join(": ")
}

#[cfg(test)]
mod tests {
    use super::chain;

    /// An error that prints its source and also returns it.
    #[derive(Debug)]
    struct Open {
        source: std::io::Error,
    }

    impl std::fmt::Display for Open {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "cannot open video clip.mp4: {}", self.source)
        }
    }

    impl std::error::Error for Open {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.source)
        }
    }

    #[test]
    fn a_cause_already_in_its_outer_message_is_said_once() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "no such file");
        let e = anyhow::Error::new(Open { source: io }).context("surveil run");
        assert_eq!(
            chain(&e),
            "surveil run: cannot open video clip.mp4: no such file"
        );
        let plain = anyhow::anyhow!("root").context("middle").context("outer");
        assert_eq!(chain(&plain), "outer: middle: root");
    }
}
