//! The shared service shape over real sockets: two parts served on one pair of ports, unknown
//! paths answered with the JSON error body, readiness off during the drain hooks while the
//! servers still answer, background tasks ending on the shutdown signal, stop hooks after the
//! servers close.

mod common;

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{Router, routing::get};
use common::within;
use jsonwebtoken::jwk::JwkSet;
use rethink_common::{
    Backends,
    lifecycle::{Listeners, Shutdown},
    listener::ListenerLimits,
    service::{ServeOptions, ServiceContext, ServiceParts, serve},
    token::{TokenVerifier, VerifierOptions},
};
use tokio::net::TcpListener;

#[tokio::test]
async fn parts_are_served_together_and_drained_in_order() {
    let listeners = Listeners {
        http: TcpListener::bind("127.0.0.1:0").await.unwrap(),
        grpc: TcpListener::bind("127.0.0.1:0").await.unwrap(),
    };
    let verifier = TokenVerifier::new(
        Arc::new(JwkSet { keys: vec![] }),
        VerifierOptions::default(),
    );
    let ctx = ServiceContext::with_verifier(Backends::memory(), verifier, &listeners)
        .await
        .unwrap();
    let base = ctx.http_url.clone();
    let log = Arc::new(Mutex::new(Vec::<String>::new()));
    let record = |what: &str| {
        let log = log.clone();
        let what = what.to_string();
        move || async move { log.lock().unwrap().push(what) }
    };
    let probe_base = base.clone();
    let probe_log = log.clone();
    let a = ServiceParts::new("a")
        .http(Router::new().route("/a", get(|| async { "a" })))
        .on_drain(move || async move {
            // During the drain, readiness is off and the routes still answer.
            let ready = reqwest::get(format!("{probe_base}/readyz")).await.unwrap();
            let route = reqwest::get(format!("{probe_base}/a")).await.unwrap();
            probe_log.lock().unwrap().push(format!(
                "drain a: readyz {} route {}",
                ready.status().as_u16(),
                route.status().as_u16()
            ));
        })
        .on_stop(record("stop a"));
    let task_stop = ctx.shutdown.clone();
    let task_log = log.clone();
    let b = ServiceParts::new("b")
        .http(Router::new().route("/b", get(|| async { "b" })))
        .task(async move {
            task_stop.wait().await;
            task_log.lock().unwrap().push("task b ended".into());
        })
        .on_stop(record("stop b"));
    let shutdown = Shutdown::new();
    let trigger = shutdown.clone();
    let server = tokio::spawn({
        let ctx = ctx.clone();
        async move {
            let options = ServeOptions {
                drain: Duration::from_secs(2),
                limits: ListenerLimits::default(),
            };
            serve(vec![a, b], listeners, &ctx, shutdown.wait(), options).await
        }
    });
    common::eventually("ready", || {
        let base = base.clone();
        async move {
            reqwest::get(format!("{base}/readyz"))
                .await
                .is_ok_and(|r| r.status() == 200)
        }
    })
    .await;
    assert_eq!(
        reqwest::get(format!("{base}/a"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
        "a"
    );
    assert_eq!(
        reqwest::get(format!("{base}/b"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
        "b"
    );
    let missing = reqwest::get(format!("{base}/nope")).await.unwrap();
    assert_eq!(missing.status(), 404);
    let body: serde_json::Value = missing.json().await.unwrap();
    assert_eq!(body["error"]["code"], "not_found");

    trigger.trigger();
    within("serve returns", server).await.unwrap().unwrap();
    let log = log.lock().unwrap().clone();
    assert_eq!(log.len(), 4, "{log:?}");
    assert_eq!(log[0], "drain a: readyz 503 route 200", "{log:?}");
    // Stop hooks run in order after the servers; the task ends on the shutdown signal, which
    // fires when the servers begin to stop, so it may come anywhere after the drain.
    let stops: Vec<&String> = log.iter().filter(|l| l.starts_with("stop")).collect();
    assert_eq!(stops, ["stop a", "stop b"], "{log:?}");
    assert!(log.contains(&"task b ended".to_string()), "{log:?}");
    assert!(
        reqwest::get(format!("{base}/a")).await.is_err(),
        "servers closed"
    );
}
