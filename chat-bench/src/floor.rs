//! `heartbeat-floor`: what a heartbeat costs a server that does nothing with it, on this
//! machine. The `idle` workload's CPU per heartbeat is the node's; this is the floor under
//! it: a child process (this binary, `floor-server`) runs a tokio runtime like the node's and
//! one task per connection that reads into a 1 KiB buffer and discards, and chat-bench sends
//! it the node's heartbeat frame (a masked WebSocket frame of the same bytes) at the same
//! rate over as many connections. What the child spends per heartbeat is the epoll wake-up,
//! the task poll and the reads, with no WebSocket, protocol or presence work: the node
//! cannot get below it without fewer wake-ups or fewer reads per heartbeat.

use std::io::Write;
use std::process::Stdio;
use std::time::{Duration, Instant};

use bytes::Bytes;
use chat_core::protocol::{ClientFrame, Heartbeat};
use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpSocket};
use tokio::process::{Child, Command};

use crate::http::Result;
use crate::proc;
use crate::workloads::{bar, report};
use crate::ws;

/// Runs the floor server: listens on an ephemeral loopback port, prints it on stdout, prints
/// `ready` once `connections` are accepted, and serves until its stdin closes (the parent
/// ended or dropped the pipe).
pub(crate) fn serve(connections: usize) -> std::process::ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("floor-server: runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    std::thread::spawn(|| {
        let _ = std::io::copy(&mut std::io::stdin().lock(), &mut std::io::sink());
        std::process::exit(0);
    });
    let served = runtime.block_on(async {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        println!("{}", listener.local_addr()?.port());
        std::io::stdout().flush()?;
        for accepted in 1.. {
            let (mut stream, _) = listener.accept().await?;
            if accepted == connections {
                println!("ready");
                std::io::stdout().flush()?;
            }
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                while stream.read(&mut buf).await.is_ok_and(|n| n > 0) {}
            });
        }
        Ok(())
    });
    match served {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err::<(), std::io::Error>(e) => {
            eprintln!("floor-server: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Starts the floor server, opens `connections` to it, sends each one the heartbeat frame
/// every `heartbeat` for `hold`, and reports the server's CPU per heartbeat and its RSS per
/// connection.
pub(crate) async fn measure(connections: usize, hold: Duration, heartbeat: Duration) -> Result<()> {
    if connections == 0 {
        return Err("heartbeat-floor needs at least one connection".into());
    }
    let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
    let mut child = Command::new(exe)
        .args(["floor-server", "--connections", &connections.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("starting the floor server: {e}"))?;
    let result = drive(&mut child, connections, hold, heartbeat).await;
    // Closing its stdin ends it; the kill is for a child that did not get that far.
    drop(child.stdin.take());
    let _ = child.start_kill();
    let _ = child.wait().await;
    result
}

async fn drive(
    child: &mut Child,
    connections: usize,
    hold: Duration,
    heartbeat: Duration,
) -> Result<()> {
    let pid = child.id().ok_or("floor server: exited at once")?;
    let stdout = child.stdout.take().ok_or("floor server: no stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let mut next_line = async || {
        lines
            .next_line()
            .await
            .map_err(|e| format!("floor server: {e}"))?
            .ok_or_else(|| "floor server: exited".to_owned())
    };
    let port = next_line().await?;
    let port: u16 = port
        .trim()
        .parse()
        .map_err(|_| format!("floor server printed {port:?}, not a port"))?;
    let server = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let frame = masked_binary(&ClientFrame::from(Heartbeat {}).encode());

    let before = proc::sample(pid).ok_or("floor server: not in /proc")?;
    let bar = bar(connections as u64, "connections");
    let mut streams = Vec::with_capacity(connections);
    for i in 0..connections {
        let socket = TcpSocket::new_v4().map_err(|e| format!("socket: {e}"))?;
        socket
            .bind(std::net::SocketAddr::new(ws::source_address(i), 0))
            .map_err(|e| format!("bind: {e}"))?;
        let stream = socket
            .connect(server)
            .await
            .map_err(|e| format!("connect {i}: {e}"))?;
        streams.push(stream);
        bar.inc(1);
    }
    bar.finish();
    // The baseline is taken once the server has accepted every connection.
    if next_line().await? != "ready" {
        return Err("floor server: expected `ready`".into());
    }
    let connected = proc::sample(pid).ok_or("floor server: gone")?;

    let start = Instant::now();
    let n = streams.len();
    let mut tasks = Vec::with_capacity(n);
    for (i, mut stream) in streams.into_iter().enumerate() {
        let frame = frame.clone();
        let phase = heartbeat.mul_f64(i as f64 / n as f64);
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep(phase).await;
            let mut tick = tokio::time::interval(heartbeat);
            let mut sent = 0u64;
            while start.elapsed() < hold {
                tick.tick().await;
                if stream.write_all(&frame).await.is_err() {
                    break;
                }
                sent += 1;
            }
            (sent, stream)
        }));
    }
    let mut beats = 0;
    let mut streams = Vec::with_capacity(n);
    for task in tasks {
        let (sent, stream) = task.await.map_err(|e| format!("sender: {e}"))?;
        beats += sent;
        streams.push(stream);
    }
    let end = proc::sample(pid).ok_or("floor server: gone")?;
    drop(streams);
    report(
        "heartbeat-floor",
        &json!({
            "connections": n,
            "hold_s": hold.as_secs(),
            "heartbeats": beats,
            "floor_rss_bytes_per_connection":
                (connected.rss_kib.saturating_sub(before.rss_kib) as f64 * 1024.0 / n as f64).round(),
            "floor_cpu_us_per_heartbeat":
                ((end.cpu_us - connected.cpu_us) as f64 / beats.max(1) as f64 * 100.0).round() / 100.0,
        }),
    );
    Ok(())
}

/// `payload` as one masked binary WebSocket frame, as a client sends it (RFC 6455 section
/// 5.2; heartbeats are a few bytes, so the 7-bit length always fits).
fn masked_binary(payload: &[u8]) -> Bytes {
    assert!(
        payload.len() < 126,
        "a heartbeat fits the short length form"
    );
    let mask = [0x37, 0xfa, 0x21, 0x3d];
    let mut frame = vec![0x82, 0x80 | payload.len() as u8];
    frame.extend_from_slice(&mask);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    Bytes::from(frame)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_heartbeat_frame_is_a_masked_binary_frame() {
        let payload = ClientFrame::from(Heartbeat {}).encode();
        let frame = masked_binary(&payload);
        assert_eq!(frame[0], 0x82, "FIN and the binary opcode");
        assert_eq!(usize::from(frame[1] & 0x7f), payload.len());
        assert_ne!(frame[1] & 0x80, 0, "client frames are masked");
        let mask = &frame[2..6];
        let unmasked: Vec<u8> = frame[6..]
            .iter()
            .enumerate()
            .map(|(i, b)| b ^ mask[i % 4])
            .collect();
        assert_eq!(unmasked, payload);
    }
}
