//! `surveil verdict parse`: VLM replies through the pipeline's lenient verdict parser.

use std::io::{self, Read, Write};

use anyhow::{anyhow, Context};
use surveil_orchestrator::verdict::{parse_verdict, VerdictSource};

use crate::cli::VerdictParseArgs;
use crate::Failure;

/// `surveil verdict parse`: prints one verdict JSON per reply; exit 1 when any reply could not
/// be parsed, 2 when the input cannot be read.
pub fn parse(args: &VerdictParseArgs) -> Result<(), Failure> {
    let input = read_input(args)?;
    // Each reply with its line number in the input (1 without --lines).
    let replies: Vec<(usize, &str)> = if args.lines {
        input
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
            .map(|(i, l)| (i + 1, l))
            .collect()
    } else {
        vec![(1, input.as_str())]
    };
    if replies.is_empty() {
        return Err(Failure::Runtime(anyhow!("no reply in the input")));
    }

    let mut out = io::stdout().lock();
    let mut failed = Vec::new();
    let mut closed = false;
    for &(line, reply) in &replies {
        let parsed = parse_verdict(reply);
        if let VerdictSource::ParseFailed { reason, .. } = &parsed.source {
            failed.push((line, reason.clone()));
        }
        let json = if args.lines {
            serde_json::to_string(&parsed)
        } else {
            serde_json::to_string_pretty(&parsed)
        }
        .context("formatting the verdict as JSON")?;
        if !write_line(&mut out, &json)? {
            closed = true;
            break;
        }
    }
    if closed || !flush(&mut out)? {
        // The reader went away (`| head -1`): stop quietly.
        return Ok(());
    }

    match failed.as_slice() {
        [] => Ok(()),
        [(_, reason)] if !args.lines => Err(Failure::Runtime(anyhow!(
            "the reply could not be parsed: {reason}"
        ))),
        _ => {
            let lines: Vec<String> = failed.iter().map(|(n, _)| n.to_string()).collect();
            Err(Failure::Runtime(anyhow!(
                "{} of {} replies could not be parsed (lines {})",
                failed.len(),
                replies.len(),
                lines.join(", ")
            )))
        }
    }
}

/// The whole input, from `--file` or stdin; bytes that are not UTF-8 become U+FFFD.
fn read_input(args: &VerdictParseArgs) -> Result<String, Failure> {
    let bytes = match &args.file {
        Some(path) => std::fs::read(path).map_err(|e| {
            Failure::Usage(
                anyhow::Error::new(e).context(format!("cannot read reply file {}", path.display())),
            )
        })?,
        None => {
            let mut bytes = Vec::new();
            io::stdin()
                .lock()
                .read_to_end(&mut bytes)
                .context("reading the reply from stdin")?;
            bytes
        }
    };
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// Writes one line; `false` when stdout was closed by the reader.
fn write_line(out: &mut impl Write, line: &str) -> Result<bool, Failure> {
    match writeln!(out, "{line}") {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(false),
        Err(e) => Err(Failure::Runtime(
            anyhow::Error::new(e).context("writing to stdout"),
        )),
    }
}

/// Flushes stdout; `false` when it was closed by the reader.
fn flush(out: &mut impl Write) -> Result<bool, Failure> {
    match out.flush() {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(false),
        Err(e) => Err(Failure::Runtime(
            anyhow::Error::new(e).context("writing to stdout"),
        )),
    }
}
