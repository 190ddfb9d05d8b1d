//! The real images under podman with deploy/compose/compose.yaml (plus compose.e2e.yaml for
//! loopback ports), minus Traefik, whose binary these machines cannot install: every route of
//! the table is served by its container, a user made with the admin command logs in, two users
//! on the two msg-node containers exchange a message, a WHEP viewer (webrtc-rs) decodes the
//! video a WHIP publisher sends through the SFU container, and when one msg-node container is
//! killed its client is refused a resume (410: the dead replica held the session) and
//! reconnects to the other, where it is reachable again.
//!
//! Images: the binaries are built on the host (debug, the shared target dir) and copied into
//! the `prebuilt` target of deploy/images/Dockerfile over a base made by
//! deploy/images/base-image (debootstrap, cached under ~/.cache/rethink/images).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use rethink_deploy_check::{deploy_dir, repo_root, routes, run};
use rethink_msg_client::{Client, Message, MessageType, Target};
use rethink_rtc_peer::{Peer, PeerConfig};
use serde_json::json;

const PROJECT: &str = "rethink-e2e";
const IMAGE: &str = "localhost/rethink:e2e";
const REDIS_IMAGE: &str = "localhost/rethink-redis:e2e";
const BASE_IMAGE: &str = "localhost/rethink-base:bookworm";
/// Host ports of compose.e2e.yaml.
const AUTH: &str = "127.0.0.1:28080";
const MSG_A: &str = "127.0.0.1:28081";
const MSG_B: &str = "127.0.0.1:28082";
const SFU: &str = "127.0.0.1:28083";
const SFU_UDP_PORT: &str = "27882";
const PASSWORD: &str = "e2e-password-1";
const GRANTS: &str = "user,rooms.publish,rooms.subscribe,room=e2e*";
const WAIT: Duration = Duration::from_secs(60);

fn podman_env() -> Vec<(String, String)> {
    let images = deploy_dir().join("images");
    vec![
        (
            "CONTAINERS_CONF".into(),
            images.join("containers.conf").display().to_string(),
        ),
        (
            "DOCKER_HOST".into(),
            "unix:///run/podman/podman.sock".into(),
        ),
        ("RETHINK_IMAGE".into(), IMAGE.into()),
        ("REDIS_IMAGE".into(), REDIS_IMAGE.into()),
        ("SFU_UDP_PORT".into(), SFU_UDP_PORT.into()),
    ]
}

/// Runs `program` with the podman environment.
fn sh(program: &str, args: &[&str], dir: &Path) -> Result<String> {
    let env = podman_env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    run(program, args, &env, dir)
}

fn compose(args: &[&str]) -> Result<String> {
    let mut all = vec![
        "-p",
        PROJECT,
        "-f",
        "compose.yaml",
        "-f",
        "compose.e2e.yaml",
    ];
    all.extend_from_slice(args);
    sh("docker-compose", &all, &deploy_dir().join("compose"))
}

/// Builds the three binaries on the host; returns their directory.
fn host_binaries() -> Result<PathBuf> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let root = repo_root();
    run(
        &cargo,
        &[
            "build",
            "-p",
            "rethink-auth",
            "-p",
            "rethink-msg-node",
            "-p",
            "rethink-sfu",
            "--bins",
        ],
        &[],
        &root,
    )?;
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| root.join("target"));
    Ok(target.join("debug"))
}

/// Makes the base image (cached), stages the binaries and web files, builds both images.
fn build_images() -> Result<()> {
    let images = deploy_dir().join("images");
    sh(&images.join("base-image").to_string_lossy(), &[], &images)?;
    let bin = host_binaries()?;
    let context = std::env::temp_dir().join(format!("rethink-e2e-context-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&context);
    std::fs::create_dir_all(context.join("bin"))?;
    for name in ["rethink-auth", "rethink-msg-node", "rethink-sfu"] {
        std::fs::copy(bin.join(name), context.join("bin").join(name))
            .with_context(|| format!("copying {name}"))?;
    }
    run(
        "cp",
        &[
            "-r",
            &repo_root().join("web").to_string_lossy(),
            &context.join("web").to_string_lossy(),
        ],
        &[],
        &repo_root(),
    )?;
    let dockerfile = images.join("Dockerfile");
    for (target, tag) in [("prebuilt", IMAGE), ("redis", REDIS_IMAGE)] {
        sh(
            "podman",
            &[
                "build",
                "-q",
                "--runtime",
                "runc",
                "--target",
                target,
                "--build-arg",
                &format!("RUNTIME_BASE={BASE_IMAGE}"),
                "-f",
                &dockerfile.to_string_lossy(),
                "-t",
                tag,
                &context.to_string_lossy(),
            ],
            &images,
        )?;
    }
    let _ = std::fs::remove_dir_all(&context);
    Ok(())
}

/// Starts podman's API socket for docker-compose unless it answers already.
fn podman_socket() -> Result<()> {
    let env = deploy_dir().join("images/podman-env");
    sh(
        "bash",
        &["-c", &format!(". '{}' && podman-socket", env.display())],
        &repo_root(),
    )?;
    Ok(())
}

/// The compose project while it runs: healthchecks are run once a second (podman without
/// systemd has no timer for them), and dropping it tears everything down, volumes included.
struct Stack {
    stop: Arc<AtomicBool>,
}

impl Stack {
    fn up() -> Result<Self> {
        let _ = compose(&["down", "-v", "--remove-orphans", "-t", "2"]);
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        std::thread::spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                let names = sh(
                    "podman",
                    &[
                        "ps",
                        "--filter",
                        &format!("label=com.docker.compose.project={PROJECT}"),
                        "--format",
                        "{{.Names}}",
                    ],
                    &std::env::temp_dir(),
                )
                .unwrap_or_default();
                for name in names.lines() {
                    let _ = Command::new("podman")
                        .args(["healthcheck", "run", name])
                        .envs(podman_env())
                        .output();
                }
                std::thread::sleep(Duration::from_secs(1));
            }
        });
        let stack = Stack { stop };
        // depends_on waits for redis and auth to be healthy before the rest starts.
        compose(&[
            "up",
            "-d",
            "redis",
            "auth",
            "msg-node-a",
            "msg-node-b",
            "sfu",
        ])?;
        Ok(stack)
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Err(e) = compose(&["down", "-v", "--remove-orphans", "-t", "2"]) {
            eprintln!("compose down failed: {e}");
        }
    }
}

fn container(service: &str) -> String {
    format!("{PROJECT}_{service}_1")
}

/// Waits until `url` answers 200.
async fn ready(http: &reqwest::Client, url: &str) -> Result<()> {
    let deadline = Instant::now() + WAIT;
    loop {
        match http.get(url).send().await {
            Ok(r) if r.status() == 200 => return Ok(()),
            other if Instant::now() > deadline => bail!("{url} not ready: {other:?}"),
            _ => tokio::time::sleep(Duration::from_millis(300)).await,
        }
    }
}

/// Creates a user with the admin command inside the auth container, retrying while auth and
/// Redis come up.
async fn add_user(name: &str) -> Result<()> {
    let deadline = Instant::now() + WAIT;
    loop {
        let result = sh(
            "podman",
            &[
                "exec",
                "-e",
                &format!("RETHINK_AUTH_PASSWORD={PASSWORD}"),
                &container("auth"),
                "rethink-auth",
                "user",
                "add",
                name,
                "--grants",
                GRANTS,
            ],
            &std::env::temp_dir(),
        );
        match result {
            Ok(_) => return Ok(()),
            Err(e) if Instant::now() > deadline => return Err(e.context(format!("adding {name}"))),
            Err(e) => {
                eprintln!("user add {name} not yet: {e}");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}

async fn login(http: &reqwest::Client, name: &str) -> Result<String> {
    let response = http
        .post(format!("http://{AUTH}/auth/login"))
        .json(&json!({"username": name, "password": PASSWORD}))
        .send()
        .await?;
    let status = response.status();
    let body: serde_json::Value = response.json().await?;
    ensure!(status == 200, "login {name}: {status} {body}");
    Ok(body["token"].as_str().context("token")?.to_owned())
}

/// POSTs an SDP offer to a WHIP/WHEP endpoint; returns the answer.
async fn exchange(http: &reqwest::Client, url: &str, token: &str, offer: String) -> Result<String> {
    let response = http
        .post(url)
        .header("content-type", "application/sdp")
        .bearer_auth(token)
        .body(offer)
        .send()
        .await?;
    let status = response.status();
    let body = response.text().await?;
    ensure!(status == 201, "{url}: {status} {body}");
    Ok(body)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_compose_stack_logs_in_messages_streams_and_fails_over() -> Result<()> {
    let started = Instant::now();
    podman_socket()?;
    build_images()?;
    eprintln!("images ready after {:?}", started.elapsed());
    let _stack = Stack::up()?;
    eprintln!("compose up after {:?}", started.elapsed());
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()?;
    for addr in [AUTH, MSG_A, MSG_B, SFU] {
        ready(&http, &format!("http://{addr}/readyz")).await?;
    }

    // Every route of the table is served by the container Traefik would send it to.
    for route in routes()? {
        let addr = match route.service.as_str() {
            "auth" => AUTH,
            "msg-node" => MSG_A,
            "sfu" => SFU,
            other => bail!("route {} names unknown service {other}", route.name),
        };
        let status = http
            .get(format!("http://{addr}{}", route.probe))
            .send()
            .await?
            .status();
        assert_ne!(
            status, 404,
            "route {}: {} on {}",
            route.name, route.probe, route.service
        );
    }

    add_user("e2e-alice").await?;
    add_user("e2e-bob").await?;
    let alice_token = login(&http, "e2e-alice").await?;
    let bob_token = login(&http, "e2e-bob").await?;

    // Two users on the two msg-node containers.
    let alice = Client::connect(Target::ws(format!("ws://{MSG_A}/msg")), &alice_token).await?;
    let bob = Client::connect(Target::ws(format!("ws://{MSG_B}/msg")), &bob_token).await?;
    assert_eq!(alice.welcome().node, "msg-node-a");
    assert_eq!(bob.welcome().node, "msg-node-b");
    let alice_h = alice.register(json!({"name": "e2e"})).await?;
    let bob_h = bob.register(json!({"name": "e2e"})).await?;
    alice
        .send(
            Message::new(
                MessageType::Forward,
                &alice_h,
                &bob_h,
                json!({"text": "hi bob"}),
            )
            .with_id(1),
        )
        .await?;
    let got = tokio::time::timeout(WAIT, bob.recv()).await??;
    assert_eq!(
        (got.from.clone(), got.body["text"].clone()),
        (alice_h.clone(), json!("hi bob"))
    );
    eprintln!("message across containers after {:?}", started.elapsed());

    // Video through the SFU container: WHIP in, WHEP out, decoded.
    let publisher = Peer::new(PeerConfig::publisher("e2e-alice")).await?;
    let offer = publisher.create_offer_gathered(WAIT).await?;
    let answer = exchange(
        &http,
        &format!("http://{SFU}/whip/e2e-room"),
        &alice_token,
        offer,
    )
    .await?;
    publisher.apply_answer(&answer).await?;
    publisher.wait_connected(WAIT).await?;
    let viewer = Peer::new(PeerConfig::viewer("e2e-bob")).await?;
    let offer = viewer.create_offer_gathered(WAIT).await?;
    let answer = exchange(
        &http,
        &format!("http://{SFU}/whep/e2e-room"),
        &bob_token,
        offer,
    )
    .await?;
    assert!(
        answer.contains(&format!(" {SFU_UDP_PORT} typ host")),
        "the SFU advertises its published port: {answer}"
    );
    viewer.apply_answer(&answer).await?;
    viewer.wait_connected(WAIT).await?;
    viewer.wait_decoded(1, 30, WAIT).await?;
    eprintln!(
        "30 frames decoded from the SFU container after {:?}",
        started.elapsed()
    );
    publisher.close().await?;
    viewer.close().await?;

    // msg-node-a dies (SIGKILL, no drain): its sessions lived in its memory, so msg-node-b
    // answers the resume with 410 (nothing to hand over), and the client connects there anew,
    // registers again and is reachable.
    sh(
        "podman",
        &["kill", &container("msg-node-a")],
        &std::env::temp_dir(),
    )?;
    let closed = tokio::time::timeout(WAIT, alice.closed()).await??;
    eprintln!("alice's connection ended: {closed}");
    let fresh = login(&http, "e2e-alice").await?;
    let resumed = alice
        .resume_at(Target::ws(format!("ws://{MSG_B}/msg")), &fresh)
        .await;
    let refused = resumed.err().and_then(|e| e.code());
    assert_eq!(
        refused,
        Some(410),
        "a crashed holder's session cannot be handed over"
    );
    let alice = Client::connect(Target::ws(format!("ws://{MSG_B}/msg")), &fresh).await?;
    assert_eq!(alice.welcome().node, "msg-node-b");
    let alice_h = alice.register(json!({"name": "e2e"})).await?;
    bob.send(
        Message::new(
            MessageType::Forward,
            &bob_h,
            &alice_h,
            json!({"text": "still there?"}),
        )
        .with_id(2),
    )
    .await?;
    let got = tokio::time::timeout(WAIT, alice.recv()).await??;
    assert_eq!(got.body["text"], json!("still there?"), "{got}");
    eprintln!("reconnected on msg-node-b after {:?}", started.elapsed());
    Ok(())
}
