//! The stack starts on port 0, serves the auth routes on its one address, and stops cleanly.

use rethink_proto::v1::auth_client::AuthClient;
use rethink_stack::{DEMO_PASSWORD, StackConfig, StackListeners};
use tokio_util::sync::CancellationToken;

#[tokio::test]
async fn stack_logs_in_alice_and_shuts_down() {
    let listeners = StackListeners::local().await.unwrap();
    let http = listeners.http.local_addr().unwrap();
    let grpc = listeners.grpc.local_addr().unwrap();
    let stop = CancellationToken::new();
    let task = tokio::spawn(rethink_stack::run(
        StackConfig::default(),
        listeners,
        stop.clone().cancelled_owned(),
    ));

    let client = reqwest::Client::new();
    let response = client
        .post(format!("http://{http}/auth/login"))
        .json(&serde_json::json!({"username": "alice", "password": DEMO_PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body: serde_json::Value = response.json().await.unwrap();
    let token = body["token"].as_str().unwrap().to_string();

    let me: serde_json::Value = client
        .get(format!("http://{http}/auth/me"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(me["sub"], "user:alice");
    assert_eq!(me["name"], "Alice");

    // Ops endpoints and the JSON 404 live on the same address.
    let ready = client
        .get(format!("http://{http}/readyz"))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 200);
    let missing = client
        .get(format!("http://{http}/nowhere"))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
    let missing: serde_json::Value = missing.json().await.unwrap();
    assert_eq!(missing["error"]["code"], "not_found");

    // The gRPC port serves auth too: bob logs in there.
    let mut auth = AuthClient::connect(format!("http://{grpc}")).await.unwrap();
    let reply = auth
        .login(rethink_proto::v1::LoginRequest {
            username: "bob".into(),
            password: DEMO_PASSWORD.into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reply.token_type, "Bearer");

    stop.cancel();
    tokio::time::timeout(std::time::Duration::from_secs(10), task)
        .await
        .expect("stack stops within the drain time")
        .unwrap()
        .unwrap();
}
