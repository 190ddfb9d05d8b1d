//! The security probes of docs/security.md, run the way a new user would run them: against the
//! all-in-one stack that `scripts/stack` starts (here in process, on port 0), with plain HTTP, the
//! Message Node client over its WebSocket and an independent WebRTC peer. Each probe gets the
//! documented refusal.

use std::{net::SocketAddr, time::Duration};

use futures::future::join_all;
use rethink_msg_client::{Client, ClientError, Target, objects::Reporter};
use rethink_rtc_peer::{Peer, PeerConfig};
use rethink_stack::{DEMO_PASSWORD, StackConfig, StackListeners};
use serde_json::{Value, json};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(15);

struct Stack {
    http: SocketAddr,
    client: reqwest::Client,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), rethink_stack::StackError>>,
}

impl Stack {
    async fn start() -> Self {
        let listeners = StackListeners::local().await.unwrap();
        let http = listeners.http.local_addr().unwrap();
        let mut config = StackConfig::default();
        // The slow-header probe waits for this timeout; the default is 10 s.
        config.listener.header_read_timeout_ms = 1_000;
        let stop = CancellationToken::new();
        let task = tokio::spawn(rethink_stack::run(
            config,
            listeners,
            stop.clone().cancelled_owned(),
        ));
        let stack = Self {
            http,
            client: reqwest::Client::new(),
            stop,
            task,
        };
        stack.wait_ready().await;
        stack
    }

    async fn wait_ready(&self) {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let ready = self.client.get(self.url("/readyz")).send().await;
            if ready.is_ok_and(|r| r.status() == 200) {
                return;
            }
            assert!(tokio::time::Instant::now() < deadline, "stack not ready");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.http)
    }

    async fn login_status(&self, user: &str, password: &str) -> (u16, Value) {
        let response = self
            .client
            .post(self.url("/auth/login"))
            .json(&json!({"username": user, "password": password}))
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    async fn token(&self, user: &str) -> String {
        let (status, body) = self.login_status(user, DEMO_PASSWORD).await;
        assert_eq!(status, 200, "{body}");
        body["token"].as_str().unwrap().to_string()
    }

    async fn post_sdp(&self, path: &str, token: &str, sdp: &str) -> reqwest::Response {
        self.client
            .post(self.url(path))
            .bearer_auth(token)
            .header("content-type", "application/sdp")
            .body(sdp.to_string())
            .send()
            .await
            .unwrap()
    }

    async fn messages(&self, token: &str) -> Client {
        Client::connect(Target::ws(format!("ws://{}/msg", self.http)), token)
            .await
            .unwrap()
    }

    async fn stop(self) {
        self.stop.cancel();
        tokio::time::timeout(WAIT, self.task)
            .await
            .expect("stack stops")
            .unwrap()
            .unwrap();
    }
}

fn code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or_default()
}

async fn status_and_body(response: reqwest::Response) -> (u16, Value) {
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn media_sessions_need_room_grants_and_belong_to_their_opener() {
    let stack = Stack::start().await;
    let (alice, bob, carol) = (
        stack.token("alice").await,
        stack.token("bob").await,
        stack.token("carol").await,
    );
    // Alice publishes into a demo room (the demo users' grants name `demo*`).
    let publisher = Peer::new(PeerConfig::publisher("alice")).await.unwrap();
    let offer = publisher.create_offer_gathered(WAIT).await.unwrap();
    let whip = stack.post_sdp("/whip/demo-probe", &alice, &offer).await;
    assert_eq!(whip.status(), 201, "{:?}", whip.text().await);

    // A login token does not open rooms outside its grants.
    let viewer = Peer::new(PeerConfig::viewer("carol")).await.unwrap();
    let view_offer = viewer.create_offer_gathered(WAIT).await.unwrap();
    let (status, body) =
        status_and_body(stack.post_sdp("/whep/team-room", &carol, &view_offer).await).await;
    assert_eq!((status, code(&body)), (403, "forbidden"), "{body}");

    // Alice watches her room; bob may neither end nor change her session.
    let alice_viewer = Peer::new(PeerConfig::viewer("alice")).await.unwrap();
    let alice_offer = alice_viewer.create_offer_gathered(WAIT).await.unwrap();
    let whep = stack
        .post_sdp("/whep/demo-probe", &alice, &alice_offer)
        .await;
    assert_eq!(whep.status(), 201);
    let session = whep.headers()["location"].to_str().unwrap().to_string();
    let session = if session.starts_with("http") {
        session
    } else {
        stack.url(&session)
    };
    let (status, body) = status_and_body(
        stack
            .client
            .delete(&session)
            .bearer_auth(&bob)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((status, code(&body)), (403, "forbidden"), "{body}");
    let mine = stack
        .client
        .delete(&session)
        .bearer_auth(&alice)
        .send()
        .await
        .unwrap();
    assert_eq!(mine.status(), 200);
    stack.stop().await;
}

#[tokio::test]
async fn concurrent_wrong_passwords_get_at_most_the_limit_then_429() {
    let stack = Stack::start().await;
    let attempts = (0..60).map(|_| stack.login_status("alice", "wrong password"));
    let statuses: Vec<u16> = join_all(attempts)
        .await
        .into_iter()
        .map(|(s, _)| s)
        .collect();
    let refused = statuses.iter().filter(|s| **s == 401).count();
    let throttled = statuses.iter().filter(|s| **s == 429).count();
    // The default limit for one user from one address is 5 attempts per window.
    assert!(refused <= 5, "{refused} × 401 of {statuses:?}");
    assert_eq!(refused + throttled, 60, "{statuses:?}");
    stack.stop().await;
}

#[tokio::test]
async fn revocation_closes_the_message_connection_and_tokens_stay_out_of_query_strings() {
    let stack = Stack::start().await;
    let alice = stack.token("alice").await;
    // A token in the query is for WebSocket upgrades only.
    let (status, body) = status_and_body(
        stack
            .client
            .get(stack.url(&format!("/auth/me?access_token={alice}")))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((status, code(&body)), (401, "missing_token"), "{body}");

    let connection = stack.messages(&alice).await;
    let revoked = stack
        .client
        .post(stack.url("/auth/revoke"))
        .bearer_auth(&alice)
        .send()
        .await
        .unwrap();
    assert_eq!(revoked.status(), 200);
    let closed = tokio::time::timeout(Duration::from_secs(1), connection.closed())
        .await
        .expect("closed within a second of the revocation")
        .unwrap();
    assert_eq!(closed.code, 4001, "{closed:?}");
    stack.stop().await;
}

#[tokio::test]
async fn data_objects_are_private_and_malformed_frames_are_rate_limited() {
    let stack = Stack::start().await;
    let alice = stack.messages(&stack.token("alice").await).await;
    let bob = stack.messages(&stack.token("bob").await).await;
    let alice_hyperty = alice.register(json!({"name": "notes"})).await.unwrap();
    let bob_hyperty = bob.register(json!({"name": "reader"})).await.unwrap();
    let object = Reporter::create(&alice, &alice_hyperty, "notes", json!({"secret": 1}))
        .await
        .unwrap();
    match rethink_msg_client::objects::read(&bob, &bob_hyperty, object.url()).await {
        Err(ClientError::Protocol { code, .. }) => assert_eq!(code, 403),
        other => panic!("bob read alice's object: {other:?}"),
    }

    // 800 malformed frames as fast as they go: each is answered, the excess with 429.
    for _ in 0..800 {
        bob.send_text("{not json").await.unwrap();
    }
    let (mut bad, mut limited) = (0, 0);
    while bad + limited < 800 {
        // Answers whose `from`/`to` are not addresses arrive unparsed.
        let answer = async {
            tokio::select! {
                message = bob.recv() => u64::from(message.unwrap().code()),
                text = bob.recv_unparsed() => {
                    let reply: Value = serde_json::from_str(&text.unwrap()).unwrap();
                    reply["body"]["code"].as_u64().unwrap_or_default()
                }
            }
        };
        match tokio::time::timeout(WAIT, answer)
            .await
            .expect("every malformed frame is answered")
        {
            400 => bad += 1,
            429 => limited += 1,
            other => panic!("unexpected answer {other}"),
        }
    }
    assert!(limited > 0, "{bad} × 400, no 429");
    stack.stop().await;
}

#[tokio::test]
async fn clients_that_never_finish_their_headers_are_disconnected() {
    let stack = Stack::start().await;
    let mut sockets = Vec::new();
    for _ in 0..50 {
        let mut socket = TcpStream::connect(stack.http).await.unwrap();
        socket
            .write_all(b"GET /auth/me HTTP/1.1\r\n")
            .await
            .unwrap();
        sockets.push(socket);
    }
    let closed = sockets.iter_mut().map(|socket| async move {
        let mut buf = [0u8; 512];
        loop {
            match socket.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    });
    tokio::time::timeout(WAIT, join_all(closed))
        .await
        .expect("all 50 closed at the header timeout");
    stack.stop().await;
}
