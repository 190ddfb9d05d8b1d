//! One behaviour suite, run against both event bus implementations, plus the Redis-only
//! guarantees: delivery across bus instances and subscriptions that survive a Redis restart.

mod common;

use std::sync::Arc;

use bytes::Bytes;
use common::{eventually, within};
use futures::StreamExt;
use rethink_common::bus::{
    self, BusMessage, EventBus, MemoryBus, RedisBus, Subscription, decode_event, decode_payload,
    new_event, publish_event,
};
use rethink_common::testing::RedisServer;

fn channels(names: &[&str]) -> Vec<String> {
    names.iter().map(|s| (*s).to_owned()).collect()
}

fn msg(channel: &str, payload: &'static str) -> BusMessage {
    BusMessage {
        channel: channel.to_owned(),
        payload: Bytes::from_static(payload.as_bytes()),
    }
}

async fn next(sub: &mut Subscription) -> BusMessage {
    within("a bus message", sub.recv())
        .await
        .expect("subscription ended")
}

/// A payload message with a protobuf name, as service crates define in their protos.
#[derive(Clone, PartialEq, prost::Message)]
struct Ping {
    #[prost(string, tag = "1")]
    text: String,
}

impl prost::Name for Ping {
    const NAME: &'static str = "Ping";
    const PACKAGE: &'static str = "rethink.test";
}

/// Delivers only subscribed channels, in publish order, from `publisher` to `subscriber`.
async fn delivers_subscribed_channels(publisher: Arc<dyn EventBus>, subscriber: Arc<dyn EventBus>) {
    let mut sub = subscriber.subscribe(&channels(&["a", "b"])).await.unwrap();
    publisher
        .publish("c", Bytes::from_static(b"not for us"))
        .await
        .unwrap();
    publisher
        .publish("a", Bytes::from_static(b"1"))
        .await
        .unwrap();
    publisher
        .publish("b", Bytes::from_static(b"2"))
        .await
        .unwrap();
    publisher
        .publish("a", Bytes::from_static(b"3"))
        .await
        .unwrap();
    assert_eq!(next(&mut sub).await, msg("a", "1"));
    assert_eq!(next(&mut sub).await, msg("b", "2"));
    // Subscription is also a Stream.
    let third = within("stream item", sub.next()).await.unwrap();
    assert_eq!(third, msg("a", "3"));
}

/// Every subscriber of a channel gets each message; dropping one leaves the others working.
async fn fans_out_to_every_subscriber(publisher: Arc<dyn EventBus>, subscriber: Arc<dyn EventBus>) {
    let mut first = subscriber.subscribe(&channels(&["room"])).await.unwrap();
    let mut second = subscriber
        .subscribe(&channels(&["room", "other"]))
        .await
        .unwrap();
    publisher
        .publish("room", Bytes::from_static(b"hello"))
        .await
        .unwrap();
    assert_eq!(next(&mut first).await, msg("room", "hello"));
    assert_eq!(next(&mut second).await, msg("room", "hello"));
    drop(first);
    publisher
        .publish("room", Bytes::from_static(b"again"))
        .await
        .unwrap();
    assert_eq!(next(&mut second).await, msg("room", "again"));
    // Subscribing again to a channel after dropping works.
    let mut third = subscriber.subscribe(&channels(&["room"])).await.unwrap();
    publisher
        .publish("room", Bytes::from_static(b"third"))
        .await
        .unwrap();
    assert_eq!(next(&mut third).await, msg("room", "third"));
    assert_eq!(next(&mut second).await, msg("room", "third"));
}

/// Typed envelopes round-trip through the bus.
async fn carries_event_envelopes(publisher: Arc<dyn EventBus>, subscriber: Arc<dyn EventBus>) {
    let mut sub = subscriber
        .subscribe(&channels(&[bus::topics::AUTH_REVOCATIONS]))
        .await
        .unwrap();
    let payload = Ping {
        text: "revoked".into(),
    };
    let event = new_event("test.ping", "test/1", &payload);
    assert_eq!(event.payload_type, "rethink.test.Ping");
    assert_eq!(event.id.len(), 36);
    assert!(event.time.is_some());
    publish_event(publisher.as_ref(), bus::topics::AUTH_REVOCATIONS, &event)
        .await
        .unwrap();
    let received = next(&mut sub).await;
    let decoded = decode_event(&received.payload).unwrap();
    assert_eq!(decoded, event);
    let ping: Ping = decode_payload(&decoded).unwrap().unwrap();
    assert_eq!(ping, payload);
    // A different payload type is skipped, not misread.
    let mut other = decoded.clone();
    other.payload_type = "rethink.test.Other".into();
    assert!(decode_payload::<Ping>(&other).is_none());
    // Garbage on the wire is an error, never a panic.
    assert!(decode_event(&[0xff, 0xff, 0xff]).is_err());
}

macro_rules! both_backends {
    ($($name:ident),* $(,)?) => {
        mod memory {
            use super::*;
            $(
                #[tokio::test]
                async fn $name() {
                    let bus: Arc<dyn EventBus> = Arc::new(MemoryBus::new());
                    super::$name(bus.clone(), bus).await;
                }
            )*
        }
        mod redis {
            use super::*;
            $(
                /// Publisher and subscriber are separate bus instances (separate connections).
                #[tokio::test]
                async fn $name() {
                    let server = RedisServer::start().await.unwrap();
                    let publisher: Arc<dyn EventBus> =
                        Arc::new(RedisBus::connect(&server.url()).await.unwrap());
                    let subscriber: Arc<dyn EventBus> =
                        Arc::new(RedisBus::connect(&server.url()).await.unwrap());
                    super::$name(publisher, subscriber).await;
                }
            )*
        }
    };
}

both_backends!(
    delivers_subscribed_channels,
    fans_out_to_every_subscriber,
    carries_event_envelopes,
);

async fn numsub(url: &str, channel: &str) -> i64 {
    let client = ::redis::Client::open(url).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let (_, count): (String, i64) = ::redis::cmd("PUBSUB")
        .arg("NUMSUB")
        .arg(channel)
        .query_async(&mut conn)
        .await
        .unwrap();
    count
}

#[tokio::test]
async fn redis_subscription_survives_a_redis_restart() {
    let mut server = RedisServer::start().await.unwrap();
    let subscriber = RedisBus::connect(&server.url()).await.unwrap();
    let publisher = RedisBus::connect(&server.url()).await.unwrap();
    let mut sub = subscriber.subscribe(&channels(&["events"])).await.unwrap();
    publisher
        .publish("events", Bytes::from_static(b"before"))
        .await
        .unwrap();
    assert_eq!(next(&mut sub).await, msg("events", "before"));

    let mut generation = subscriber.subscriber_generation();
    let before = *generation.borrow_and_update();
    server.restart().await.unwrap();
    // The subscriber reconnects and re-subscribes by itself; await exactly that.
    within(
        "the subscriber to reconnect",
        generation.wait_for(|g| *g > before),
    )
    .await
    .unwrap();
    assert_eq!(numsub(&server.url(), "events").await, 1);

    // The same Subscription value keeps receiving; the publisher reconnects too.
    publisher
        .publish("events", Bytes::from_static(b"after"))
        .await
        .unwrap();
    assert_eq!(next(&mut sub).await, msg("events", "after"));

    // A second restart, and new subscriptions made after it, work as well.
    let before = *generation.borrow_and_update();
    server.restart().await.unwrap();
    within("the second reconnect", generation.wait_for(|g| *g > before))
        .await
        .unwrap();
    let mut late = subscriber.subscribe(&channels(&["events"])).await.unwrap();
    publisher
        .publish("events", Bytes::from_static(b"twice"))
        .await
        .unwrap();
    assert_eq!(next(&mut sub).await, msg("events", "twice"));
    assert_eq!(next(&mut late).await, msg("events", "twice"));
}

#[tokio::test]
async fn redis_subscription_made_during_an_outage_is_live_after_it() {
    let mut server = RedisServer::start().await.unwrap();
    let subscriber = RedisBus::connect(&server.url()).await.unwrap();
    let mut generation = subscriber.subscriber_generation();
    let before = *generation.borrow_and_update();
    server.stop();
    // Subscribing while Redis is down neither fails nor hangs.
    let mut sub = within(
        "subscribe during the outage",
        subscriber.subscribe(&channels(&["offline"])),
    )
    .await
    .unwrap();
    server.restart().await.unwrap();
    within("the reconnect", generation.wait_for(|g| *g > before))
        .await
        .unwrap();
    let publisher = RedisBus::connect(&server.url()).await.unwrap();
    publisher
        .publish("offline", Bytes::from_static(b"up"))
        .await
        .unwrap();
    assert_eq!(next(&mut sub).await, msg("offline", "up"));
}

#[tokio::test]
async fn redis_dropping_the_last_subscription_unsubscribes() {
    let server = RedisServer::start().await.unwrap();
    let bus = RedisBus::connect(&server.url()).await.unwrap();
    let first = bus.subscribe(&channels(&["x"])).await.unwrap();
    let second = bus.subscribe(&channels(&["x"])).await.unwrap();
    // One Redis subscription per channel and bus, however many local subscribers.
    assert_eq!(numsub(&server.url(), "x").await, 1);
    drop(first);
    drop(second);
    let url = server.url();
    eventually("the channel to be unsubscribed", || async {
        numsub(&url, "x").await == 0
    })
    .await;
}

#[tokio::test]
async fn redis_bus_connect_fails_fast_on_a_dead_address() {
    let mut server = RedisServer::start().await.unwrap();
    let url = server.url();
    server.stop();
    let result = within("connect to fail", RedisBus::connect(&url)).await;
    assert!(result.is_err());
}

#[tokio::test]
async fn redis_keepalive_pings_do_not_disturb_a_healthy_connection() {
    let server = RedisServer::start().await.unwrap();
    let options = rethink_common::bus::RedisBusOptions {
        ping_interval: std::time::Duration::from_millis(10),
    };
    let subscriber = RedisBus::connect_with(&server.url(), options)
        .await
        .unwrap();
    let publisher = RedisBus::connect(&server.url()).await.unwrap();
    let mut sub = subscriber.subscribe(&channels(&["alive"])).await.unwrap();
    let generation = subscriber.subscriber_generation();
    // Let a few dozen keepalive pings happen between messages.
    for _ in 0..5 {
        tokio::time::sleep(std::time::Duration::from_millis(60)).await;
        publisher
            .publish("alive", Bytes::from_static(b"ping"))
            .await
            .unwrap();
        assert_eq!(next(&mut sub).await, msg("alive", "ping"));
    }
    assert_eq!(
        *generation.borrow(),
        1,
        "no reconnect on a healthy connection"
    );
}
