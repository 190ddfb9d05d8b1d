//! [`Bearer`]: the interceptor that adds `authorization: Bearer <token>` to every call. The
//! token is shared by every clone and can be replaced at runtime ([`Bearer::set`]), so a
//! long-lived channel outlives its first token.

use std::sync::{Arc, PoisonError, RwLock};

use tonic::{
    metadata::{Ascii, MetadataValue},
    service::Interceptor,
};

use crate::error::SfuClientError;

/// Adds the current token to every request.
#[derive(Debug, Clone)]
pub struct Bearer {
    value: Arc<RwLock<MetadataValue<Ascii>>>,
}

impl Bearer {
    /// Starts with `token`.
    pub fn new(token: &str) -> Result<Self, SfuClientError> {
        Ok(Self {
            value: Arc::new(RwLock::new(header(token)?)),
        })
    }

    /// Replaces the token for every later call of every clone.
    pub fn set(&self, token: &str) -> Result<(), SfuClientError> {
        let value = header(token)?;
        *self.value.write().unwrap_or_else(PoisonError::into_inner) = value;
        Ok(())
    }

    /// Returns the `authorization` value currently sent.
    pub fn current(&self) -> MetadataValue<Ascii> {
        self.value
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

fn header(token: &str) -> Result<MetadataValue<Ascii>, SfuClientError> {
    format!("Bearer {token}")
        .parse()
        .map_err(|_| SfuClientError::BadToken)
}

impl Interceptor for Bearer {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        request
            .metadata_mut()
            .insert("authorization", self.current());
        Ok(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_clone_sends_the_newest_token() {
        let mut bearer = Bearer::new("one").unwrap();
        let clone = bearer.clone();
        clone.set("two").unwrap();
        let request = bearer.call(tonic::Request::new(())).unwrap();
        assert_eq!(
            request.metadata().get("authorization").unwrap(),
            "Bearer two"
        );
        assert!(matches!(
            Bearer::new("bad\ntoken"),
            Err(SfuClientError::BadToken)
        ));
    }
}
