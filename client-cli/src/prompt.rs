//! Reading a password: from `DAEHWA_PASSWORD` when set, else from the terminal without echo
//! (via `stty -echo`), else one line of standard input (for pipes and scripts).

use std::io::{BufRead, IsTerminal, Write};
use std::process::{Command, Stdio};

use anyhow::{Context as _, Result, bail};

/// Environment variable holding the password for non-interactive use.
pub const PASSWORD_ENV: &str = "DAEHWA_PASSWORD";

/// Reads a password; with `confirm`, a terminal user types it twice.
pub async fn password(confirm: bool) -> Result<String> {
    if let Ok(password) = std::env::var(PASSWORD_ENV) {
        return Ok(password);
    }
    tokio::task::spawn_blocking(move || read_password(confirm))
        .await
        .context("password prompt failed")?
}

fn read_password(confirm: bool) -> Result<String> {
    let stdin = std::io::stdin();
    if !stdin.is_terminal() {
        let mut line = String::new();
        let n = stdin
            .lock()
            .read_line(&mut line)
            .context("cannot read the password")?;
        if n == 0 {
            bail!("no password given: set {PASSWORD_ENV} or type it on standard input");
        }
        return Ok(trim_newline(line));
    }
    let first = prompt_hidden("Password: ")?;
    if confirm {
        let again = prompt_hidden("Password (again): ")?;
        if again != first {
            bail!("the passwords do not match");
        }
    }
    Ok(first)
}

/// Turns terminal echo back on when dropped, even if reading failed.
struct EchoGuard;

impl Drop for EchoGuard {
    fn drop(&mut self) {
        let _ = stty("echo");
    }
}

fn stty(arg: &str) -> std::io::Result<std::process::ExitStatus> {
    Command::new("stty")
        .arg(arg)
        .stdin(Stdio::inherit())
        .status()
}

fn prompt_hidden(prompt: &str) -> Result<String> {
    let mut stderr = std::io::stderr();
    write!(stderr, "{prompt}")?;
    stderr.flush()?;
    let hidden = stty("-echo").map(|s| s.success()).unwrap_or(false);
    let guard = hidden.then_some(EchoGuard);
    let mut line = String::new();
    let read = std::io::stdin().lock().read_line(&mut line);
    drop(guard);
    if hidden {
        writeln!(stderr)?;
    }
    if read.context("cannot read the password")? == 0 {
        bail!("no password given");
    }
    Ok(trim_newline(line))
}

fn trim_newline(mut line: String) -> String {
    while line.ends_with(['\n', '\r']) {
        line.pop();
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trims_only_line_endings() {
        assert_eq!(trim_newline("pass word \r\n".into()), "pass word ");
        assert_eq!(trim_newline("x".into()), "x");
    }
}
