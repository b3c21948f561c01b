//! The conformance suite's child-process client (see `agent.rs` in the
//! library): `quorate-agent URL`, commands on stdin, JSON events on stdout.

use std::io::Write;

use quorate_conformance::agent::AgentEvent;
use tokio::io::{AsyncBufReadExt, BufReader};

fn emit(event: &AgentEvent) {
    let mut out = std::io::stdout().lock();
    // Write errors mean the driver is gone; nothing to do about it.
    let _ = writeln!(
        out,
        "{}",
        serde_json::to_string(event).expect("serialisable")
    );
    let _ = out.flush();
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let Some(url) = std::env::args().nth(1) else {
        eprintln!("usage: quorate-agent URL");
        std::process::exit(2);
    };
    let session = match async { quorate::connect(&url).await?.session().await }.await {
        Ok(s) => s,
        Err(e) => {
            emit(&AgentEvent::Error {
                message: e.to_string(),
            });
            std::process::exit(1);
        }
    };
    emit(&AgentEvent::Ready {
        session: session.id().to_owned(),
    });
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    let mut guard: Option<std::sync::Arc<quorate::LockGuard>> = None;
    let mut watcher: Option<tokio::task::JoinHandle<()>> = None;
    while let Ok(Some(line)) = lines.next_line().await {
        let (cmd, arg) = line.trim().split_once(' ').unwrap_or((line.trim(), ""));
        match cmd {
            "lock" => match session.mutex(arg).lock().await {
                Ok(g) => {
                    emit(&AgentEvent::Granted {
                        fence: g.fence().get(),
                    });
                    let g = std::sync::Arc::new(g);
                    let w = g.clone();
                    watcher = Some(tokio::spawn(async move {
                        let reason = w.lost().await;
                        emit(&AgentEvent::Lost {
                            reason: reason.to_string(),
                        });
                    }));
                    guard = Some(g);
                }
                Err(e) => emit(&AgentEvent::Error {
                    message: e.to_string(),
                }),
            },
            "write" => match &guard {
                Some(g) => emit(&AgentEvent::Write {
                    fence: g.fence().get(),
                    lost: g.is_lost(),
                }),
                None => emit(&AgentEvent::Error {
                    message: "no lock held".into(),
                }),
            },
            "release" => {
                if let Some(w) = watcher.take() {
                    w.abort();
                }
                match guard.take().map(std::sync::Arc::try_unwrap) {
                    Some(Ok(g)) => match g.release().await {
                        Ok(()) => emit(&AgentEvent::Released),
                        Err(e) => emit(&AgentEvent::Error {
                            message: e.to_string(),
                        }),
                    },
                    Some(Err(_)) => emit(&AgentEvent::Error {
                        message: "guard still shared".into(),
                    }),
                    None => emit(&AgentEvent::Error {
                        message: "no lock held".into(),
                    }),
                }
            }
            "exit" => break,
            other => emit(&AgentEvent::Error {
                message: format!("unknown command `{other}`"),
            }),
        }
    }
    if let Some(w) = watcher.take() {
        w.abort();
    }
    drop(guard);
    let _ = session.close().await;
}
