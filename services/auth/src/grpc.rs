//! The gRPC surface `rethink.v1.Auth` for services inside the cluster.

use std::time::Duration;

use rethink_common::token::{Claims, Grants};
use rethink_proto::v1::{self as pb, auth_server};
use tonic::{Request, Response, Status};

use crate::{
    AuthError, AuthService,
    service::IssuedToken,
    users::{ApiKeyRecord, UserRecord},
};

/// Largest gRPC message accepted; auth requests are a few hundred bytes.
const MAX_MESSAGE_BYTES: usize = 64 * 1024;

/// Returns the tonic service for `rethink.v1.Auth`, ready to add to a server or routes.
pub fn server(service: AuthService) -> auth_server::AuthServer<AuthGrpc> {
    auth_server::AuthServer::new(AuthGrpc { service }).max_decoding_message_size(MAX_MESSAGE_BYTES)
}

/// Implements `rethink.v1.Auth` on top of [`AuthService`].
#[derive(Debug, Clone)]
pub struct AuthGrpc {
    service: AuthService,
}

fn token_response(issued: IssuedToken) -> pb::TokenResponse {
    pb::TokenResponse {
        token: issued.token,
        token_type: "Bearer".into(),
        expires_at: issued.claims.exp,
    }
}

fn user_message(user: &UserRecord) -> pb::User {
    pb::User {
        username: user.username.clone(),
        display_name: user.display_name.clone(),
        grants: Some((&user.grants).into()),
        created_at: user.created_at,
    }
}

fn api_key_message(key: &ApiKeyRecord) -> pb::ApiKey {
    pb::ApiKey {
        key_id: key.key_id.clone(),
        subject: key.subject.clone(),
        subjects: key.subjects.clone(),
        grants: Some((&key.grants).into()),
        created_at: key.created_at,
    }
}

impl AuthGrpc {
    async fn caller<T>(&self, request: &Request<T>) -> Result<Claims, Status> {
        self.service.verifier().verify_grpc(request).await
    }

    async fn admin<T>(&self, request: &Request<T>) -> Result<Claims, Status> {
        let claims = self.caller(request).await?;
        if !claims.grants.admin {
            return Err(AuthError::Forbidden("this operation needs the admin grant".into()).into());
        }
        Ok(claims)
    }
}

#[tonic::async_trait]
impl auth_server::Auth for AuthGrpc {
    async fn login(
        &self,
        request: Request<pb::LoginRequest>,
    ) -> Result<Response<pb::TokenResponse>, Status> {
        // gRPC is cluster-internal and reached directly: the peer is the client.
        let addr = request.remote_addr().map(|a| a.ip().to_canonical());
        let body = request.into_inner();
        let issued = self
            .service
            .login(&body.username, &body.password, addr)
            .await?;
        Ok(Response::new(token_response(issued)))
    }

    async fn mint_token(
        &self,
        request: Request<pb::MintTokenRequest>,
    ) -> Result<Response<pb::TokenResponse>, Status> {
        let body = request.into_inner();
        let requested = body.grants.as_ref().map(Grants::from);
        let ttl = (body.ttl_seconds > 0).then(|| Duration::from_secs(body.ttl_seconds as u64));
        let issued = self
            .service
            .mint_with_api_key(
                &body.key_id,
                &body.secret,
                requested.as_ref(),
                Some(&body.subject),
                Some(&body.name),
                ttl,
            )
            .await?;
        Ok(Response::new(token_response(issued)))
    }

    async fn verify(
        &self,
        request: Request<pb::VerifyRequest>,
    ) -> Result<Response<pb::VerifyResponse>, Status> {
        let claims = self.service.verify(&request.into_inner().token).await?;
        Ok(Response::new(pb::VerifyResponse {
            claims: Some((&claims).into()),
        }))
    }

    async fn revoke(
        &self,
        request: Request<pb::RevokeRequest>,
    ) -> Result<Response<pb::RevokeResponse>, Status> {
        let caller = self.caller(&request).await?;
        let token = request.into_inner().token;
        let target = if token.is_empty() {
            caller
        } else {
            let target = self.service.verify(&token).await?;
            if target.sub != caller.sub && !caller.grants.admin {
                return Err(AuthError::Forbidden(
                    "revoking another subject's token needs the admin grant".into(),
                )
                .into());
            }
            target
        };
        self.service.revoke(&target).await?;
        Ok(Response::new(pb::RevokeResponse { jti: target.jti }))
    }

    async fn get_jwks(
        &self,
        _request: Request<pb::GetJwksRequest>,
    ) -> Result<Response<pb::GetJwksResponse>, Status> {
        let set = self.service.jwks().await?;
        let jwks_json = serde_json::to_string(&set)
            .map_err(|e| Status::from(AuthError::Internal(e.to_string())))?;
        Ok(Response::new(pb::GetJwksResponse { jwks_json }))
    }

    async fn create_user(
        &self,
        request: Request<pb::CreateUserRequest>,
    ) -> Result<Response<pb::User>, Status> {
        self.admin(&request).await?;
        let body = request.into_inner();
        let user = self
            .service
            .create_user(
                &body.username,
                &body.password,
                Some(&body.display_name),
                body.grants.as_ref().map(Grants::from),
            )
            .await?;
        Ok(Response::new(user_message(&user)))
    }

    async fn delete_user(
        &self,
        request: Request<pb::DeleteUserRequest>,
    ) -> Result<Response<pb::DeleteUserResponse>, Status> {
        self.admin(&request).await?;
        let deleted = self
            .service
            .delete_user(&request.into_inner().username)
            .await?;
        Ok(Response::new(pb::DeleteUserResponse { deleted }))
    }

    async fn set_password(
        &self,
        request: Request<pb::SetPasswordRequest>,
    ) -> Result<Response<pb::SetPasswordResponse>, Status> {
        self.admin(&request).await?;
        let body = request.into_inner();
        self.service
            .set_password(&body.username, &body.password)
            .await?;
        Ok(Response::new(pb::SetPasswordResponse {}))
    }

    async fn set_user_grants(
        &self,
        request: Request<pb::SetUserGrantsRequest>,
    ) -> Result<Response<pb::User>, Status> {
        self.admin(&request).await?;
        let body = request.into_inner();
        let grants = body.grants.as_ref().map(Grants::from).unwrap_or_default();
        let user = self.service.set_user_grants(&body.username, grants).await?;
        Ok(Response::new(user_message(&user)))
    }

    async fn list_users(
        &self,
        request: Request<pb::ListUsersRequest>,
    ) -> Result<Response<pb::ListUsersResponse>, Status> {
        self.admin(&request).await?;
        let users = self.service.users().list().await?;
        Ok(Response::new(pb::ListUsersResponse {
            users: users.iter().map(user_message).collect(),
        }))
    }

    async fn create_api_key(
        &self,
        request: Request<pb::CreateApiKeyRequest>,
    ) -> Result<Response<pb::CreateApiKeyResponse>, Status> {
        self.admin(&request).await?;
        let body = request.into_inner();
        let grants = body.grants.as_ref().map(Grants::from).unwrap_or_default();
        let (record, secret) = self
            .service
            .create_api_key(&body.subject, &body.subjects, grants)
            .await?;
        Ok(Response::new(pb::CreateApiKeyResponse {
            key_id: record.key_id,
            secret,
        }))
    }

    async fn list_api_keys(
        &self,
        request: Request<pb::ListApiKeysRequest>,
    ) -> Result<Response<pb::ListApiKeysResponse>, Status> {
        self.admin(&request).await?;
        let keys = self.service.users().list_api_keys().await?;
        Ok(Response::new(pb::ListApiKeysResponse {
            keys: keys.iter().map(api_key_message).collect(),
        }))
    }

    async fn revoke_api_key(
        &self,
        request: Request<pb::RevokeApiKeyRequest>,
    ) -> Result<Response<pb::RevokeApiKeyResponse>, Status> {
        self.admin(&request).await?;
        let revoked = self
            .service
            .revoke_api_key(&request.into_inner().key_id)
            .await?;
        Ok(Response::new(pb::RevokeApiKeyResponse { revoked }))
    }

    async fn rotate_keys(
        &self,
        request: Request<pb::RotateKeysRequest>,
    ) -> Result<Response<pb::RotateKeysResponse>, Status> {
        self.admin(&request).await?;
        let kid = self.service.keys().rotate().await?;
        Ok(Response::new(pb::RotateKeysResponse { kid }))
    }
}
