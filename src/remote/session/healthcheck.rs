//! `grpc.health.v1.Health/Check`: the session is alive.

use super::*;

pub(super) struct HealthService;

#[tonic::async_trait]
impl health_server::Health for HealthService {
    async fn check(
        &self,
        _: Request<HealthCheckRequest>,
    ) -> Result<Response<HealthCheckResponse>, Status> {
        Ok(Response::new(HealthCheckResponse {
            status: health::health_check_response::ServingStatus::Serving as i32,
        }))
    }
}
