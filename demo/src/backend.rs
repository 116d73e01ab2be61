//! `demo-backend`: the inventory, a tonic gRPC server.
//!
//! `ServerLayer` continues the caller's trace and opens the server span
//! (`demo.v1.Inventory/GetItem`); [`Store::get_item`] is the `#[monitored]`
//! handler inside it, and the helpers it calls carry `caller.function =
//! "get_item"` on their metrics.

use std::net::SocketAddr;
use std::time::Duration;

use otel_instrument::propagation::ServerLayer;
use otel_instrument::{Categorize, monitored};
use tonic::{Request, Response, Status};

use crate::proto::inventory_server::{Inventory, InventoryServer};
use crate::proto::{GetItemRequest, Item};
use crate::{RunError, ids};

/// `demo-backend`'s settings.
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "demo-backend",
    version,
    about = "The demo's gRPC inventory service"
)]
pub struct Settings {
    /// Where to serve gRPC (port 0: any free port; the bound address is
    /// printed as `demo-backend listening on ADDR`).
    #[arg(long, env = "DEMO_BACKEND_ADDR", default_value = "127.0.0.1:50051")]
    pub listen: SocketAddr,
    /// Also serve Prometheus `/metrics` here.
    #[arg(long, env = "DEMO_PROMETHEUS_ADDR")]
    pub prometheus: Option<SocketAddr>,
}

/// The catalogue: id, name and units in stock.
const CATALOGUE: [(&str, &str, u32); 5] = [
    ("a100", "NVIDIA A100 80GB", 12),
    ("h100", "NVIDIA H100 SXM", 4),
    ("l4", "NVIDIA L4", 40),
    (ids::SLOW, "Tape library (cold store)", 1),
    (ids::OFFLINE, "Item in the offline warehouse", 0),
];

/// The store behind the gRPC API.
#[derive(Debug, Default, Clone)]
pub struct Store {
    _private: (),
}

/// Why the warehouse could not give a stock level.
#[derive(Debug, thiserror::Error, Categorize)]
#[category(unavailable)]
#[non_exhaustive]
pub enum WarehouseError {
    /// The warehouse did not answer.
    #[error("warehouse for {0} is offline")]
    Offline(String),
}

/// The catalogue entry for `id`, or `NOT_FOUND`.
#[monitored]
fn lookup_catalogue(id: &str) -> Result<(&'static str, &'static str, u32), Status> {
    CATALOGUE
        .iter()
        .find(|(known, ..)| *known == id)
        .copied()
        .ok_or_else(|| Status::not_found(format!("no item {id:?}")))
}

/// The stock level from the item's warehouse: the cold store takes 50 ms, the
/// offline warehouse does not answer.
#[monitored]
async fn read_stock(id: &str, catalogued: u32) -> Result<u32, WarehouseError> {
    match id {
        ids::SLOW => {
            tokio::time::sleep(Duration::from_millis(50)).await;
            Ok(catalogued)
        }
        ids::OFFLINE => Err(WarehouseError::Offline(id.to_owned())),
        _ => Ok(catalogued),
    }
}

impl Store {
    /// The item `id`: `NOT_FOUND` for an unknown id, `UNAVAILABLE` when the
    /// warehouse is down.
    ///
    /// # Errors
    /// The gRPC status to answer with.
    pub async fn get_item(&self, id: &str) -> Result<Item, Status> {
        let (id, name, catalogued) = lookup_catalogue(id)?;
        let stock = read_stock(id, catalogued)
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        Ok(Item {
            id: id.to_owned(),
            name: name.to_owned(),
            stock,
        })
    }
}

/// The tonic service: thin glue from the generated trait to [`Store`].
#[derive(Debug, Default, Clone)]
pub struct InventoryApi {
    store: Store,
}

#[tonic::async_trait]
impl Inventory for InventoryApi {
    /// The gRPC handler of `GetItem`. `#[monitored]` sees the boxed future
    /// that `#[tonic::async_trait]` made of this method and measures the
    /// awaited body, not the creation of the future.
    #[monitored(skip_all)]
    async fn get_item(&self, request: Request<GetItemRequest>) -> Result<Response<Item>, Status> {
        let id = request.into_inner().id;
        self.store.get_item(&id).await.map(Response::new)
    }
}

/// Serves the inventory until Ctrl-C or SIGTERM.
///
/// # Errors
/// The address cannot be bound or the server fails.
pub async fn serve(settings: &Settings) -> Result<(), RunError> {
    let listener = tokio::net::TcpListener::bind(settings.listen)
        .await
        .map_err(|source| RunError::Bind {
            addr: settings.listen,
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| RunError::Bind {
        addr: settings.listen,
        source,
    })?;
    println!("demo-backend listening on {addr}");
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    tonic::transport::Server::builder()
        .layer(ServerLayer::new())
        .add_service(InventoryServer::new(InventoryApi::default()))
        .serve_with_incoming_shutdown(incoming, crate::shutdown_signal())
        .await
        .map_err(RunError::Grpc)
}

/// `demo-backend`'s `main`: telemetry, then [`serve`].
///
/// # Errors
/// See [`RunError`].
pub fn main(settings: &Settings) -> Result<(), RunError> {
    let runtime = crate::runtime()?;
    let guard = crate::telemetry("demo-backend", settings.prometheus, &runtime)?;
    let result = runtime.block_on(serve(settings));
    guard.shutdown();
    result
}
