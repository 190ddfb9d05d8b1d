//! The first SIGTERM triggers shutdown and the second exits, checked on a real child process
//! (this test binary, running the ignored half below).

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(15);

fn kill(pid: u32, signal: &str) {
    let status = Command::new("kill")
        .args([signal, &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

#[test]
fn first_signal_triggers_second_exits() {
    for signal in ["-TERM", "-INT"] {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "signal_child", "--ignored", "--nocapture"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // Lines from the child, read on a thread so every wait below is bounded.
        let (tx, lines) = mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let expect = |wanted: &str| loop {
            let line = lines
                .recv_timeout(WAIT)
                .unwrap_or_else(|_| panic!("no {wanted:?} line from the child"));
            if line.trim() == wanted {
                break;
            }
        };

        expect("handlers installed");
        kill(child.id(), signal);
        expect("shutdown triggered");
        assert!(
            child.try_wait().unwrap().is_none(),
            "the first signal must not exit"
        );
        kill(child.id(), signal);
        let (done_tx, done) = mpsc::channel();
        std::thread::spawn(move || {
            let _ = done_tx.send(child.wait());
        });
        let status = done
            .recv_timeout(WAIT)
            .expect("the child did not exit")
            .unwrap();
        assert_eq!(status.code(), Some(130), "{signal}");
    }
}

/// The signalled half; run only by the test above, in its own process.
#[tokio::test]
#[ignore = "run by first_signal_triggers_second_exits in a child process"]
async fn signal_child() {
    let shutdown = rethink_common::lifecycle::shutdown_on_signals();
    println!("handlers installed");
    shutdown.wait().await;
    println!("shutdown triggered");
    std::future::pending::<()>().await;
}
