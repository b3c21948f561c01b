//! Running a command while holding something (a lock, leadership, a
//! membership), with signal forwarding and loss handling.

use std::future::Future;
use std::os::unix::process::ExitStatusExt;

use quorate::LossReason;
use tokio::io::AsyncReadExt;
use tokio::process::Command;
use tokio::signal::unix::{signal, SignalKind};

use crate::{Exit, EXIT_TEMPFAIL};

/// Resolves on SIGINT or SIGTERM.
pub async fn interrupted() {
    let (Ok(mut int), Ok(mut term)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = int.recv() => {}
        _ = term.recv() => {}
    }
}

/// Resolves when stdin reaches end of file.
async fn stdin_closed() {
    let mut stdin = tokio::io::stdin();
    let mut buf = [0u8; 1024];
    loop {
        match stdin.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

/// Run `command` (or, if empty, wait for stdin to close or a signal) while
/// `lost` has not resolved. Returns the exit status to use.
///
/// # Errors
///
/// Exit 75 when `lost` resolves first (the command gets SIGTERM first);
/// exit 1 when the command cannot be started.
pub async fn run_while_held(
    command: &[String],
    env: &[(&str, String)],
    lost: impl Future<Output = LossReason>,
    what: &str,
    fence: u64,
) -> Result<u8, Exit> {
    tokio::pin!(lost);
    let Some((program, args)) = command.split_first() else {
        if fence > 0 {
            println!("holding {what} (fence {fence})");
        } else {
            println!("holding {what}");
        }
        return tokio::select! {
            _ = stdin_closed() => Ok(0),
            _ = interrupted() => Ok(0),
            reason = &mut lost => Err(lost_exit(what, &reason)),
        };
    };
    let mut child = Command::new(program)
        .args(args)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .spawn()
        .map_err(|e| Exit {
            code: 1,
            message: format!("cannot run `{program}`: {e}"),
        })?;
    let pid = child.id().map(|p| p as i32);
    let forward = |sig: i32| {
        if let Some(pid) = pid {
            // SAFETY: kill(2) on our own, not yet reaped, child.
            unsafe { libc::kill(pid, sig) };
        }
    };
    let (mut int, mut term) = match (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) {
        (Ok(i), Ok(t)) => (i, t),
        _ => {
            return Err(Exit {
                code: 1,
                message: "cannot install signal handlers".into(),
            })
        }
    };
    loop {
        tokio::select! {
            status = child.wait() => {
                let status = status.map_err(|e| Exit { code: 1, message: format!("waiting for `{program}`: {e}") })?;
                return Ok(match (status.code(), status.signal()) {
                    (Some(c), _) => c.clamp(0, 255) as u8,
                    (None, Some(s)) => (128 + s).clamp(0, 255) as u8,
                    _ => 1,
                });
            }
            _ = int.recv() => forward(libc::SIGINT),
            _ = term.recv() => forward(libc::SIGTERM),
            reason = &mut lost => {
                forward(libc::SIGTERM);
                let _ = child.wait().await;
                return Err(lost_exit(what, &reason));
            }
        }
    }
}

fn lost_exit(what: &str, reason: &LossReason) -> Exit {
    Exit {
        code: EXIT_TEMPFAIL,
        message: format!("lost {what}: {reason}"),
    }
}
