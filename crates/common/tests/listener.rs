//! Listener bounds over real loopback sockets: slow and silent clients are cut off at the
//! header-read timeout, connections over the per-address limit are refused while others are
//! served, slow handlers get 408, and an upgraded WebSocket keeps its place in the count.

mod common;

use std::time::{Duration, Instant};

use axum::{Router, extract::ws::WebSocketUpgrade, routing::get};
use common::within;
use futures::{SinkExt, StreamExt};
use rethink_common::{
    lifecycle::Shutdown,
    listener::{ListenerLimits, serve_http},
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

fn router() -> Router {
    Router::new()
        .route("/hello", get(|| async { "hello" }))
        .route(
            "/slow",
            get(|| async {
                tokio::time::sleep(Duration::from_secs(30)).await;
                "late"
            }),
        )
        .route(
            "/ws",
            get(|ws: WebSocketUpgrade| async move {
                ws.on_upgrade(|mut socket| async move {
                    while let Some(Ok(message)) = socket.recv().await {
                        if socket.send(message).await.is_err() {
                            break;
                        }
                    }
                })
            }),
        )
}

async fn start(limits: ListenerLimits) -> (std::net::SocketAddr, Shutdown) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = Shutdown::new();
    let stop = shutdown.clone();
    tokio::spawn(async move {
        serve_http(listener, router(), stop, Duration::from_secs(1), &limits).await
    });
    (addr, shutdown)
}

/// Reads until the server closes the connection; returns what it sent.
async fn read_to_close(stream: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return out,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
    }
}

async fn get_hello(addr: std::net::SocketAddr) -> u16 {
    let response = reqwest::get(format!("http://{addr}/hello")).await.unwrap();
    response.status().as_u16()
}

#[tokio::test]
async fn clients_that_never_finish_their_headers_are_closed_at_the_timeout() {
    let limits = ListenerLimits {
        header_read_timeout_ms: 500,
        ..ListenerLimits::default()
    };
    let (addr, shutdown) = start(limits).await;
    let started = Instant::now();
    let mut sockets = Vec::new();
    for i in 0..50 {
        let mut socket = TcpStream::connect(addr).await.unwrap();
        // Half of them send part of a request, the other half nothing at all.
        if i % 2 == 0 {
            socket
                .write_all(b"GET /hello HTTP/1.1\r\nHost: x\r\n")
                .await
                .unwrap();
        }
        sockets.push(socket);
    }
    // Every socket is closed by the server (read returns end of stream), none answered 200.
    let closed = futures::future::join_all(sockets.iter_mut().map(read_to_close));
    for reply in within("all 50 closed", closed).await {
        let text = String::from_utf8_lossy(&reply);
        assert!(!text.contains("200 OK"), "{text}");
    }
    // Closed by the timeout, not by something sooner.
    assert!(started.elapsed() >= Duration::from_millis(450));
    assert_eq!(get_hello(addr).await, 200, "the server still serves");
    shutdown.trigger();
}

#[tokio::test]
async fn connections_over_the_per_address_limit_are_refused_and_freed_on_close() {
    let limits = ListenerLimits {
        max_connections_per_ip: 4,
        max_connections: 100,
        ..ListenerLimits::default()
    };
    let (addr, shutdown) = start(limits).await;
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(TcpStream::connect(addr).await.unwrap());
    }
    // The fifth is accepted by the kernel and closed by the server before any byte is read.
    let mut fifth = TcpStream::connect(addr).await.unwrap();
    let _ = fifth
        .write_all(b"GET /hello HTTP/1.1\r\nHost: x\r\n\r\n")
        .await;
    let reply = within("refused", read_to_close(&mut fifth)).await;
    assert!(reply.is_empty(), "{}", String::from_utf8_lossy(&reply));
    drop(held);
    // Places come back once the held connections close.
    common::eventually("served again", || async move {
        reqwest::get(format!("http://{addr}/hello"))
            .await
            .is_ok_and(|r| r.status() == 200)
    })
    .await;
    shutdown.trigger();
}

#[tokio::test]
async fn a_handler_that_does_not_answer_in_time_gets_408() {
    let limits = ListenerLimits {
        request_timeout_ms: 300,
        ..ListenerLimits::default()
    };
    let (addr, shutdown) = start(limits).await;
    let response = within("408", reqwest::get(format!("http://{addr}/slow")))
        .await
        .unwrap();
    assert_eq!(response.status(), 408);
    assert_eq!(get_hello(addr).await, 200);
    shutdown.trigger();
}

#[tokio::test]
async fn an_upgraded_websocket_outlives_the_request_timeout_and_keeps_its_place() {
    let limits = ListenerLimits {
        request_timeout_ms: 200,
        header_read_timeout_ms: 200,
        max_connections_per_ip: 1,
        max_connections: 10,
    };
    let (addr, shutdown) = start(limits).await;
    let (mut ws, _) = within(
        "upgrade",
        tokio_tungstenite::connect_async(format!("ws://{addr}/ws")),
    )
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(600)).await;
    ws.send(tokio_tungstenite::tungstenite::Message::text("ping"))
        .await
        .unwrap();
    let echo = within("echo", ws.next()).await.unwrap().unwrap();
    assert_eq!(echo.into_text().unwrap().as_str(), "ping");
    // The WebSocket still holds the one place this address has.
    assert!(reqwest::get(format!("http://{addr}/hello")).await.is_err());
    drop(ws);
    common::eventually("place freed", || async move {
        reqwest::get(format!("http://{addr}/hello"))
            .await
            .is_ok_and(|r| r.status() == 200)
    })
    .await;
    shutdown.trigger();
}
