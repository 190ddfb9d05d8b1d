//! A browser watches a room through WHEP: a player page in headless Chromium, served from its
//! own origin, posts its offer to the media node's `/whep/<room>` with `fetch()` (so CORS is
//! exercised as on a real site), decodes the H264 of a Rust publisher that joined over gRPC,
//! and ends the session with `DELETE`.

mod common;

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use common::serve_page;
use rethink_common::testing::chromium::Chromium;
use rethink_rtc_peer::VideoConfig;
use rethink_testbed::{TestBed, publish_pattern};
use serde_json::{Value, json};

const ROOM: &str = "screening";
const HOUR: Duration = Duration::from_secs(3600);
const FRAMES: u64 = 30;
/// Upper bound of the media wait; reached only when something is broken.
const MEDIA_WAIT: Duration = Duration::from_secs(20);
const PLAYER: &str = include_str!("assets/whep-player.html");

#[tokio::test]
async fn a_browser_watches_a_room_through_whep() -> Result<()> {
    let bed = TestBed::start().await?;
    let sfu = bed.default_sfu("sfu-test").await?;
    let control = bed.sfu_control(&sfu).await?;
    control.create_room(ROOM).await?;
    let publisher = publish_pattern(&control, ROOM, "presenter").await?;
    let token = bed
        .token_for(
            "service:conference",
            json!({"rooms": {"subscribe": true, "names": [ROOM]}}),
            HOUR,
        )?
        .token;

    let origin = serve_page(PLAYER).await?;
    let browser = Chromium::launch().await?;
    let page = browser.open(&format!("http://{origin}/")).await?;
    let endpoint = format!("http://{}/whep/{ROOM}", sfu.http);
    let session = page
        .eval(&format!("watch({}, {})", json!(endpoint), json!(token)))
        .await
        .context("the player's WHEP POST")?;
    let session = session.as_str().unwrap_or_default().to_owned();
    assert!(
        session.starts_with(&format!("{endpoint}/whep-")),
        "session URL {session:?}"
    );

    let deadline = Instant::now() + MEDIA_WAIT;
    let video = loop {
        let video: Value = page.eval("video()").await?;
        if video["frames"].as_u64().unwrap_or(0) >= FRAMES {
            break video;
        }
        if Instant::now() > deadline {
            bail!("the player decoded too little: {video}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let pattern = VideoConfig::default();
    assert_eq!(video["width"], pattern.width, "{video}");
    assert_eq!(video["height"], pattern.height, "{video}");
    let stats = control.room_stats(ROOM).await.unwrap();
    assert_eq!(stats.participants, 2, "{stats:?}");

    let status = page.eval(&format!("stop({})", json!(token))).await?;
    assert_eq!(status, 200, "DELETE of the session");
    let stats = control.room_stats(ROOM).await.unwrap();
    assert_eq!(stats.participants, 1, "the viewer is gone: {stats:?}");

    page.close().await?;
    browser.close().await;
    publisher.close().await?;
    sfu.stop().await.unwrap();
    Ok(())
}
