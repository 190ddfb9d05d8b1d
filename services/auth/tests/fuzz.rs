//! Property tests: nothing that arrives from the network panics or causes a server error.

mod common;

use common::{TestAuth, test_config};
use proptest::prelude::*;
use rethink_common::token::TokenVerifier;

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn random_input_never_panics_or_500s(
        bytes in proptest::collection::vec(any::<u8>(), 0..512),
        text in "[A-Za-z0-9._-]{0,300}",
    ) {
        let runtime = runtime();
        runtime.block_on(async {
            let auth = server().await;
            let verifier: TokenVerifier = auth.service.verifier();
            let lossy = String::from_utf8_lossy(&bytes).into_owned();
            for token in [lossy.as_str(), text.as_str(), &format!("{text}.{text}.{text}")] {
                prop_assert!(verifier.verify(token).await.is_err());
            }
            for path in ["/auth/login", "/auth/token", "/auth/revoke"] {
                let (status, _, json) = auth.post_raw(path, bytes.clone()).await;
                prop_assert!((400..500).contains(&status), "{} -> {} {}", path, status, json);
                prop_assert!(json["error"]["code"].is_string());
            }
            let (status, _) = auth.get("/auth/me", Some(&text)).await;
            prop_assert_eq!(status, 401);
            Ok(())
        })?;
    }
}

fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: std::sync::OnceLock<tokio::runtime::Runtime> = std::sync::OnceLock::new();
    RUNTIME.get_or_init(|| tokio::runtime::Runtime::new().expect("runtime"))
}

/// One server for every case (started on the shared runtime, kept for the process).
async fn server() -> &'static TestAuth {
    static SERVER: tokio::sync::OnceCell<TestAuth> = tokio::sync::OnceCell::const_new();
    SERVER
        .get_or_init(|| async {
            let mut config = test_config(None);
            // Random bodies must reach the handlers, not the throttle.
            config.throttle.max_failures_per_user_addr = u32::MAX;
            config.throttle.max_failures_per_addr = u32::MAX;
            config.throttle.max_failures_per_user = u32::MAX;
            TestAuth::start(config).await
        })
        .await
}
