//! A minimal CoAP server for the CoAP benchmarks: it answers every request 2.04 Changed at once
//! (a piggybacked ACK to a confirmable request, a non-confirmable answer to a non-confirmable
//! one) and stores nothing, so a client measured against it is measured, not the server.
//!
//! ```sh
//! coapsink --bind 127.0.0.1:25699 --threads 2
//! ```

use std::net::UdpSocket;

use clap::Parser;

#[derive(Parser)]
#[command(
    about = "CoAP responder that answers 2.04 to everything: the server loadgen coap is measured against"
)]
struct Args {
    #[arg(long, default_value = "127.0.0.1:25699")]
    bind: String,
    /// Threads reading the one socket.
    #[arg(long, default_value_t = 2)]
    threads: usize,
}

/// The answer to `request`, or `None` when it is not a CoAP request.
fn answer(request: &[u8], out: &mut Vec<u8>) -> bool {
    if request.len() < 4 || request[0] >> 6 != 1 {
        return false;
    }
    let kind = (request[0] >> 4) & 0x3;
    let tkl = usize::from(request[0] & 0x0F);
    if kind > 1 || tkl > 8 || request.len() < 4 + tkl {
        return false;
    }
    out.clear();
    // CON -> ACK (2) with the same message id; NON -> NON (1), same id is fine for a sink.
    let reply_kind = if kind == 0 { 2 } else { 1 };
    out.push(0x40 | (reply_kind << 4) | request[0] & 0x0F);
    out.push(0x44); // 2.04 Changed
    out.extend_from_slice(&request[2..4 + tkl]);
    true
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let socket = UdpSocket::bind(&args.bind)?;
    let threads: Vec<_> = (0..args.threads.max(1))
        .map(|_| {
            let socket = socket.try_clone()?;
            Ok(std::thread::spawn(move || {
                let (mut buf, mut out) = ([0u8; 2048], Vec::with_capacity(16));
                loop {
                    let Ok((n, peer)) = socket.recv_from(&mut buf) else {
                        continue;
                    };
                    if answer(&buf[..n], &mut out) {
                        let _ = socket.send_to(&out, peer);
                    }
                }
            }))
        })
        .collect::<std::io::Result<_>>()?;
    for t in threads {
        let _ = t.join();
    }
    Ok(())
}
