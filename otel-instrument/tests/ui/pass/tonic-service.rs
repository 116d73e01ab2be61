//! A real tonic service: the generated `TraceService` server trait of
//! opentelemetry-proto (`#[async_trait]`), served through `TraceServiceServer`.
#![deny(warnings)]
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use otel_instrument::monitored;
use tonic::{Request, Response, Status};

struct Collector;

#[tonic::async_trait]
impl TraceService for Collector {
    #[monitored(kind = server, skip_all)]
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        if request.get_ref().resource_spans.is_empty() {
            return Err(Status::invalid_argument("no spans"));
        }
        Ok(Response::new(ExportTraceServiceResponse::default()))
    }
}

fn main() {
    let _routes = tonic::service::Routes::new(TraceServiceServer::new(Collector));
}
