//! Writing results to stdout. A closed pipe (`resnet classify ... | head`) ends the output
//! quietly instead of panicking, as Unix tools do.

use std::io::Write;

/// Writes `text` to stdout; a reader that went away is not an error.
pub fn emit(text: &str) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|_| out.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => std::process::exit(0),
        other => Ok(other?),
    }
}
