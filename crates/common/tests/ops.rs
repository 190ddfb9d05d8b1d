//! The ops endpoints, graceful HTTP serving and gRPC health, over real loopback sockets.

mod common;

use std::time::Duration;

use axum::Router;
use axum::routing::get;
use common::within;
use rethink_common::lifecycle::{
    Health, Shutdown, grpc_health_and_reflection, ops_router, serve_http,
};
use tokio::net::TcpListener;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

async fn serve(
    router: Router,
    shutdown: Shutdown,
    drain: Duration,
) -> (String, tokio::task::JoinHandle<std::io::Result<()>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let task = tokio::spawn(serve_http(listener, router, shutdown, drain));
    (base, task)
}

#[tokio::test]
async fn healthz_readyz_and_metrics() {
    let health = Health::new();
    let shutdown = Shutdown::new();
    let (base, task) = serve(
        ops_router(health.clone()),
        shutdown.clone(),
        Duration::from_secs(5),
    )
    .await;
    let http = reqwest::Client::new();

    let res = within("healthz", http.get(format!("{base}/healthz")).send())
        .await
        .unwrap();
    assert_eq!(res.status(), 200);

    let res = within("readyz", http.get(format!("{base}/readyz")).send())
        .await
        .unwrap();
    assert_eq!(res.status(), 503, "a new Health starts not ready");
    health.set_ready(true);
    let res = within("readyz", http.get(format!("{base}/readyz")).send())
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    health.set_ready(false);
    let res = within("readyz", http.get(format!("{base}/readyz")).send())
        .await
        .unwrap();
    assert_eq!(res.status(), 503);

    metrics::counter!("rethink_ops_test_requests_total", "kind" => "test").increment(3);
    let res = within("metrics", http.get(format!("{base}/metrics")).send())
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let content_type = res.headers()["content-type"].to_str().unwrap().to_owned();
    assert!(content_type.starts_with("text/plain"), "{content_type}");
    let body = res.text().await.unwrap();
    assert!(
        body.contains("# TYPE rethink_ops_test_requests_total counter"),
        "{body}"
    );
    assert!(
        body.contains("rethink_ops_test_requests_total{kind=\"test\"} 3"),
        "{body}"
    );

    let res = within("404", http.get(format!("{base}/nope")).send())
        .await
        .unwrap();
    assert_eq!(res.status(), 404);

    shutdown.trigger();
    within("serve_http to return", task).await.unwrap().unwrap();
}

#[tokio::test]
async fn a_second_ops_router_shares_the_recorder() {
    // The all-in-one stack builds one router per service in one process.
    let _first = ops_router(Health::new());
    let second = ops_router(Health::new());
    let shutdown = Shutdown::new();
    let (base, task) = serve(second, shutdown.clone(), Duration::from_secs(5)).await;
    metrics::gauge!("rethink_ops_test_gauge").set(7.0);
    let body = within("metrics", reqwest::get(format!("{base}/metrics")))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(body.contains("rethink_ops_test_gauge 7"), "{body}");
    shutdown.trigger();
    within("serve_http to return", task).await.unwrap().unwrap();
}

#[tokio::test]
async fn shutdown_drains_in_flight_requests() {
    let (started_tx, started_rx) = tokio::sync::oneshot::channel::<()>();
    let started_tx = std::sync::Arc::new(std::sync::Mutex::new(Some(started_tx)));
    let (finish_tx, finish_rx) = tokio::sync::oneshot::channel::<()>();
    let finish_rx = std::sync::Arc::new(std::sync::Mutex::new(Some(finish_rx)));
    let slow = Router::new().route(
        "/slow",
        get(move || {
            let started = started_tx.lock().unwrap().take();
            let finish = finish_rx.lock().unwrap().take();
            async move {
                if let Some(started) = started {
                    let _ = started.send(());
                }
                if let Some(finish) = finish {
                    let _ = finish.await;
                }
                "done"
            }
        }),
    );
    let shutdown = Shutdown::new();
    let (base, task) = serve(slow, shutdown.clone(), Duration::from_secs(30)).await;
    let request =
        tokio::spawn(async move { reqwest::get(format!("{base}/slow")).await?.text().await });
    within("the request to start", started_rx).await.unwrap();
    shutdown.trigger();
    assert!(
        !task.is_finished(),
        "serve_http waits for the in-flight request"
    );
    finish_tx.send(()).unwrap();
    assert_eq!(
        within("the response", request).await.unwrap().unwrap(),
        "done"
    );
    within("serve_http to return", task).await.unwrap().unwrap();
}

#[tokio::test]
async fn the_drain_deadline_bounds_shutdown() {
    let (started_tx, started_rx) = tokio::sync::oneshot::channel::<()>();
    let started_tx = std::sync::Arc::new(std::sync::Mutex::new(Some(started_tx)));
    let stuck = Router::new().route(
        "/stuck",
        get(move || {
            let started = started_tx.lock().unwrap().take();
            async move {
                if let Some(started) = started {
                    let _ = started.send(());
                }
                std::future::pending::<()>().await;
            }
        }),
    );
    let shutdown = Shutdown::new();
    let (base, task) = serve(stuck, shutdown.clone(), Duration::from_millis(100)).await;
    let _request = tokio::spawn(async move { reqwest::get(format!("{base}/stuck")).await });
    within("the request to start", started_rx).await.unwrap();
    shutdown.trigger();
    within("serve_http to give up draining", task)
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn grpc_health_follows_readiness_and_reflection_is_served() {
    let health = Health::new();
    let (health_service, reflection) = grpc_health_and_reflection(&health);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = Shutdown::new();
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(health_service)
            .add_service(reflection)
            .serve_with_incoming_shutdown(
                tokio_stream::wrappers::TcpListenerStream::new(listener),
                shutdown.wait(),
            ),
    );
    let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = HealthClient::new(channel.clone());
    let status = |client: &mut HealthClient<tonic::transport::Channel>| {
        let mut client = client.clone();
        async move {
            client
                .check(HealthCheckRequest {
                    service: String::new(),
                })
                .await
                .unwrap()
                .into_inner()
                .status()
        }
    };
    // Readiness changes reach the reporter through a task; watch for them rather than sleep.
    let mut watch = client
        .watch(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    let first = within("first status", watch.message())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first.status(), ServingStatus::NotServing);
    health.set_ready(true);
    let next = within("serving", watch.message()).await.unwrap().unwrap();
    assert_eq!(next.status(), ServingStatus::Serving);
    assert_eq!(status(&mut client).await, ServingStatus::Serving);
    health.set_ready(false);
    let next = within("not serving", watch.message())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(next.status(), ServingStatus::NotServing);

    // Reflection lists the rethink services.
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    let mut reflection = ServerReflectionClient::new(channel);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = reflection
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let response = within("reflection", responses.message())
        .await
        .unwrap()
        .unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("unexpected reflection response {response:?}");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    assert!(
        names.iter().any(|n| n == "grpc.health.v1.Health"),
        "{names:?}"
    );

    // Graceful shutdown waits for open streams and connections; close ours first.
    drop((watch, responses, reflection, client));
    shutdown.trigger();
    within("the gRPC server to stop", server)
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn shutdown_clones_and_children() {
    let shutdown = Shutdown::new();
    let child = shutdown.child();
    let clone = shutdown.clone();
    assert!(!clone.is_triggered());
    child.trigger();
    assert!(
        !shutdown.is_triggered(),
        "a child does not trigger its parent"
    );
    clone.trigger();
    within("wait", shutdown.wait()).await;
    assert!(shutdown.is_triggered() && child.is_triggered());
}
