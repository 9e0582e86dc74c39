//! `Auth.Credentials`: registry credentials for the registries the build names.

use super::*;

/// Registry credentials from docker's config (`auths`, credential helpers), as for envkit's
/// own pulls and pushes; empty (anonymous) where it has none, and for every registry the
/// build does not name.
pub(super) struct AuthService {
    pub(super) registries: Arc<std::collections::BTreeSet<String>>,
}

#[tonic::async_trait]
impl auth_server::Auth for AuthService {
    async fn credentials(
        &self,
        request: Request<CredentialsRequest>,
    ) -> Result<Response<CredentialsResponse>, Status> {
        let host = request.into_inner().host;
        // BuildKit asks for Docker Hub's credentials as registry-1.docker.io.
        let key = if host == "registry-1.docker.io" || host == "index.docker.io" {
            "docker.io".to_string()
        } else {
            host
        };
        if !self.registries.contains(&key) {
            tracing::warn!(
                "the remote BuildKit asked for credentials of {key}, which this build does not \
                 name: none given"
            );
            return Ok(Response::new(CredentialsResponse::default()));
        }
        let creds =
            tokio::task::spawn_blocking(move || crate::registry::auth::credentials_for(&key))
                .await
                .map_err(|e| Status::internal(e.to_string()))?
                .map_err(Status::internal)?;
        Ok(Response::new(match creds {
            oci_client::secrets::RegistryAuth::Basic(u, p) => CredentialsResponse {
                username: u,
                secret: p,
            },
            _ => CredentialsResponse::default(),
        }))
    }
}
